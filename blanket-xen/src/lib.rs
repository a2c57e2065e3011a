//! Xen PV front-end drivers in `no_std` Rust: a xenbus client, the PV console, blkfront and netfront, over
//! [`xen_abi`].
//!
//! The same driver code runs in three places, and only the [`platform`] underneath changes:
//!
//! 1. **Inside a PV guest** (Blanket's own `no_std` mini-OS, entered at CPL 3 on KVM): the platform is
//!    made of hypercalls (`EVTCHNOP_alloc_unbound`/`send`, `SCHEDOP_poll`, Xen's system time) and the
//!    guest's own grant table frames, written with [`platform::GrantTableV1`].
//! 2. **In a Blanket layer on a Xen provider**: the layer is itself a Xen guest of the provider and drives
//!    the provider's back-ends with these front-ends, its platform built over Linux's `/dev/xen/evtchn`,
//!    `/dev/xen/gntalloc` and `/dev/xen/xenbus` (not written yet).
//! 3. **Against an emulated provider**, for tests and demos: feature `test-utils` gives
//!    `emulated::EmulatedXen` (guest pages, a grant table, event channels, grant mapping on threads),
//!    and the tests talk to the workspace's real xenstored (`pv-backend`) over a shared XenStore page.
//!
//! Everything a back-end or xenstored writes into shared memory is copied once and checked: a hostile
//! peer gets a typed error, never a panic, a hang (every wait is bounded by a timeout) or an access outside
//! the shared pages.
//!
//! # Features
//!
//! - `alloc`, `std`: passed to `xen-abi`; the drivers themselves never allocate.
//! - `test-utils`: the emulated provider (`std`, threads).
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod blk;
pub mod console;
pub mod front;
pub mod net;
mod netpkt;
pub mod platform;
mod shmem;
pub mod xenbus;

#[cfg(feature = "test-utils")]
pub mod emulated;

/// The examples of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
