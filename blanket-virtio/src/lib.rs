//! A userspace virtio driver: the Blanket driver for KVM clouds.
//!
//! It drives a provider's virtio devices from userspace, so that a Blanket layer can put its
//! guests' I/O onto them. The pieces, bottom up:
//!
//! - [`memory::DmaMemory`]: memory shared with the device, a memfd mapped through `vm-memory`.
//! - [`queue::split::SplitQueue`] and [`queue::packed::PackedQueue`]: the driver side of split
//!   and packed virtqueues, which validate everything the device writes, behind
//!   [`queue::VirtQueue`].
//! - [`transport::Transport`]: the control plane and notifications, with a vhost-user frontend
//!   ([`transport::vhost_user::VhostUserTransport`]) and an in-process device for tests
//!   ([`transport::inproc::InProcessTransport`]).
//! - [`blk::BlkDriver`]: virtio-blk requests on top; [`net::NetDriver`]: virtio-net (queue
//!   pairs, the control queue, mergeable receive buffers, checksum and TCP segmentation
//!   offload headers).
//!
//! The device is not trusted: a device that writes garbage gets a typed error, never a panic or
//! an access outside the buffers the driver gave it.
#![warn(missing_docs)]

pub mod blk;
pub mod memory;
pub mod net;
#[cfg(feature = "pv-backend")]
pub mod pv_backend;
pub mod queue;
pub mod transport;

pub use blk::{BlkDriver, BlkOptions};
pub use memory::DmaMemory;
pub use queue::split::SplitQueue;
pub use transport::Transport;

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
