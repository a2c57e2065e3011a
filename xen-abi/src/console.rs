//! TODO(owner): `console` is being written.
