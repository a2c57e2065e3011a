//! The generic shared ring of Xen's `io/ring.h`.
//!
//! A shared ring is a region of memory (one page, or `2^ring-page-order` contiguous pages) shared by a
//! *front end*, which produces requests and consumes responses, and a *back end*, which consumes
//! requests and produces responses. It starts with a 64-byte header ([`SringHeader`]) holding four
//! free-running `u32` indices, followed by a power-of-two number of slots, each large enough for one
//! request or one response (the C `union __name##_sring_entry`).
//!
//! Each side also keeps private indices: the front end's `req_prod_pvt` and `rsp_cons`
//! ([`FrontRing`]), the back end's `rsp_prod_pvt` and `req_cons` ([`BackRing`]). Requests and responses
//! are written into slots privately and published with one index store, behind a write barrier.
//!
//! The rules here are ring.h's, to the instruction where it matters:
//!
//! - `push_*_and_check_notify` publish the producer index and then apply ring.h's event-index test:
//!   notify when `(new - event) < (new - old)`, all in wrapping `u32` arithmetic;
//! - `final_check_for_*` re-arm the event index to `cons + 1` and look once more, so no wake-up is lost
//!   before the caller sleeps;
//! - the back end's count of unconsumed requests is clamped as `XEN_RING_NR_UNCONSUMED_REQUESTS` does, so
//!   it never takes more requests than it has free response slots;
//! - a peer that produces more entries than the ring holds gets a typed error
//!   ([`RingError::RequestProdOverflow`], ring.h's `RING_REQUEST_PROD_OVERFLOW`, and its response twin),
//!   as does one whose producer index goes backwards;
//! - each entry is copied out of the ring exactly once ([`BackRing::pop_request`] returns the copy), so a
//!   peer that rewrites a slot while it is read cannot make this side see two different values (XSA-155).
//!
//! Memory ordering matches `xen_rmb`, `xen_wmb` and `xen_mb`: a producer index is loaded with `Acquire`
//! (read barrier after it), stored with `Release` (write barrier before it), and the event-index checks
//! use a full barrier.
//!
//! The ring works over any [`RingMemory`]: a page of a [`vm-memory`](https://docs.rs/vm-memory) guest
//! region (`VolatileSlice`, feature `vm-memory`, with dirty tracking), memory shared with another process
//! or a guest ([`RawRingMemory`]), or pages allocated here ([`RingPages`], feature `alloc`).

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering, fence};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A ring index (`RING_IDX`): free-running, wrapping at 2^32.
pub type RingIdx = u32;

/// The size of the shared ring header, and the offset of the first slot (`offsetof(sring, ring)`).
pub const SRING_HEADER_SIZE: usize = 64;

/// The header of a shared ring page, as `DEFINE_RING_TYPES` lays out `struct __name##_sring`.
///
/// The ring code never reads this struct as a whole (the indices are accessed atomically, one at a time);
/// it documents the layout and lets tools decode a saved page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SringHeader {
    /// The front end's published request producer index.
    pub req_prod: RingIdx,
    /// The back end wants an event when `req_prod` passes this value.
    pub req_event: RingIdx,
    /// The back end's published response producer index.
    pub rsp_prod: RingIdx,
    /// The front end wants an event when `rsp_prod` passes this value.
    pub rsp_event: RingIdx,
    /// Protocol-private bytes (`pvt`: netif's `smartpoll_active`, tapif's `msg`).
    pub pvt: [u8; 4],
    /// Padding up to 64 bytes (`__pad`).
    pub pad: [u8; 44],
}

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// A protocol carried on a shared ring: the request and response types that `DEFINE_RING_TYPES` joins in
/// one slot union.
///
/// ```
/// use xen_abi::ring::{RingProtocol, ring_entries};
/// # #[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
/// # #[repr(C)] struct Req { id: u64, op: u64 }
/// # #[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
/// # #[repr(C)] struct Rsp { id: u64 }
/// struct MyProto;
/// impl RingProtocol for MyProto {
///     type Request = Req;
///     type Response = Rsp;
/// }
/// assert_eq!(MyProto::SLOT_SIZE, 16);
/// assert_eq!(ring_entries::<MyProto>(4096), 128); // (4096 - 64) / 16 = 252, rounded down
/// ```
pub trait RingProtocol {
    /// What the front end sends.
    type Request: FromBytes + IntoBytes + Immutable + Copy;
    /// What the back end answers.
    type Response: FromBytes + IntoBytes + Immutable + Copy;
    /// The size of one slot: `sizeof(union __name##_sring_entry)`.
    const SLOT_SIZE: usize = slot_size::<Self::Request, Self::Response>();
}

/// `sizeof` of the C union of `Q` and `S`: the larger size, rounded up to the larger alignment.
pub const fn slot_size<Q, S>() -> usize {
    let size = max(size_of::<Q>(), size_of::<S>());
    let align = max(align_of::<Q>(), align_of::<S>());
    size.div_ceil(align) * align
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Rounds down to a power of two, as ring.h's `__RD32` does (0 stays 0).
pub const fn round_down_pow2(x: u32) -> u32 {
    if x == 0 { 0 } else { 1 << (31 - x.leading_zeros()) }
}

/// The number of slots that a ring of protocol `P` has in `bytes` bytes of shared memory
/// (`__CONST_RING_SIZE`/`__RING_SIZE`): the slots that fit after the header, rounded down to a power of two.
pub const fn ring_entries<P: RingProtocol + ?Sized>(bytes: usize) -> u32 {
    if bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let slots = (bytes - SRING_HEADER_SIZE) / P::SLOT_SIZE;
    let slots = if slots > u32::MAX as usize { u32::MAX } else { slots as u32 };
    round_down_pow2(slots)
}
