//! TODO(owner): `hypercall` is being written.
