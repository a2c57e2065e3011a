//! Xen PV back-ends for any VMM.
//!
//! - [`xenstore`]: a xenstored: the store, permissions, watches, transactions and quotas of Xen's C daemon,
//!   served over the Unix socket of libxenstore and over guests' shared rings, with export and import of
//!   a domain's state for live migration.
//! - [`console`]: the PV console back end: a guest's `xencons_interface` to a log file, a pty or a Unix
//!   socket, rate-limited as xenconsoled is.
//! - [`net`]: the bottom of netback: the [`net::NetDevice`] trait, a Linux TAP device and a port on an
//!   in-process virtual L2 switch.
//! - [`backend`]: the back-end framework: grant access over guest memory, event channels, a XenStore handle
//!   and the back end's side of the XenBus handshake, generic over the device.
//! - [`blk`]: blkback over a `BlockDevice` (a raw image file, memory).
#![warn(missing_docs)]

pub mod backend;
pub mod blk;
pub mod console;
pub mod net;
pub mod xenstore;
