//! TODO(owner): `xs_wire` is being written.
