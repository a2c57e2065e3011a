//! TODO(owner): `xenbus` is being written.
