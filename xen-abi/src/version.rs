//! TODO(owner): `version` is being written.
