//! TODO(owner): `event_channel` is being written.
