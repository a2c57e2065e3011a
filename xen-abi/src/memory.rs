//! TODO(owner): `memory` is being written.
