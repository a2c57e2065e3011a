//! The Xen paravirtual (PV) ABI, as zero-copy `no_std` Rust types.
//!
//! `xen-abi` describes what crosses the boundary between a Xen PV guest, the hypervisor and the back-ends
//! that serve the guest's devices: the generic shared ring of `io/ring.h`, the block (`blkif`), network
//! (`netif`) and console protocols, the XenStore wire protocol, grant tables, event channels, and the
//! `start_info`/`shared_info` pages. Every `#[repr(C)]` type here has the same size, alignment and field
//! offsets as the C declaration in Xen's public headers, and every constant has the same value; the
//! workspace's `conformance` crate checks this by compiling C against the headers of `libxen-dev`.
//!
//! Everything a guest can write is untrusted. The types derive [`zerocopy`]'s traits so that they can be
//! copied out of shared memory once (never read twice, see XSA-155) and the modules offer typed
//! validation (`validate`, `new_checked`, ...) that turns hostile bytes into a typed error rather than a
//! panic.
//!
//! # Features
//!
//! - `alloc`: owned XenStore messages and the incremental framing parser.
//! - `std`: implies `alloc`.
//! - `vm-memory`: shared rings over [`vm-memory`](https://docs.rs/vm-memory) guest memory.
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod ring;

pub mod blkif;
pub mod console;
pub mod netif;
pub mod xenbus;
pub mod xs_wire;

pub mod event_channel;
pub mod grant_table;
pub mod hvm_start_info;
pub mod hypercall;
pub mod memory;
pub mod sched;
pub mod version;
pub mod xen;

/// The page size of every ring protocol and hypercall interface: 4096 bytes, whatever the host's page size
/// (`XEN_PAGE_SHIFT` in `io/ring.h`).
pub const XEN_PAGE_SIZE: usize = 1 << XEN_PAGE_SHIFT;
/// `XEN_PAGE_SHIFT` from `io/ring.h`.
pub const XEN_PAGE_SHIFT: usize = 12;

/// A domain identifier (`domid_t` in `xen.h`).
pub type DomId = u16;

/// The examples of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
