//! TODO(owner): `xen` is being written.
