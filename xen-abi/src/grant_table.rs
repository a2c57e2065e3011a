//! TODO(owner): `grant_table` is being written.
