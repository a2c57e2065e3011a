//! TODO(owner): `sched` is being written.
