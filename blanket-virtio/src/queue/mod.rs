//! The driver side of virtqueues.
//!
//! Only the split layout (virtio 1.2, section 2.7) is implemented so far.

pub mod split;
