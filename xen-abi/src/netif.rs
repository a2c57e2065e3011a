//! TODO(owner): `netif` is being written.
