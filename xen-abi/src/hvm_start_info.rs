//! TODO(owner): `hvm_start_info` is being written.
