//! TODO(owner): `blkif` is being written.
