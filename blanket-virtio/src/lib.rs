//! A userspace virtio driver: the Blanket driver for KVM clouds.
#![warn(missing_docs)]
