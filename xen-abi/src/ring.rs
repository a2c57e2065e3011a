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
//! or a guest ([`RawRingMemory`]), or pages allocated here (`RingPages`, feature `alloc`).

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
    if x == 0 {
        0
    } else {
        1 << (31 - x.leading_zeros())
    }
}

/// The number of slots that a ring of protocol `P` has in `bytes` bytes of shared memory
/// (`__CONST_RING_SIZE`/`__RING_SIZE`): the slots that fit after the header, rounded down to a power of two.
pub const fn ring_entries<P: RingProtocol + ?Sized>(bytes: usize) -> u32 {
    if bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let slots = (bytes - SRING_HEADER_SIZE) / P::SLOT_SIZE;
    let slots = if slots > u32::MAX as usize {
        u32::MAX
    } else {
        slots as u32
    };
    round_down_pow2(slots)
}

/// What can go wrong on a shared ring. Every variant that names a peer comes from that peer's indices in
/// shared memory, which it controls: the caller should treat the peer as broken and stop serving the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The memory cannot hold the header and at least one slot.
    #[error(
        "shared ring memory of {len} bytes is too small: it needs at least {need} (64-byte header and one slot)"
    )]
    TooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The memory does not start at a suitable boundary for the indices and slots.
    #[error("shared ring memory at {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The start address.
        addr: usize,
        /// The alignment needed.
        align: usize,
    },
    /// The front end has no free slot: every slot holds a request that has no response yet.
    #[error("the ring is full: all {size} slots hold requests without a response")]
    Full {
        /// Slots in the ring.
        size: u32,
    },
    /// The back end tried to respond when every consumed request already has a response.
    #[error(
        "no request to answer: {rsp_prod_pvt} responses produced for {req_cons} requests consumed"
    )]
    NoRequestToAnswer {
        /// Responses produced so far.
        rsp_prod_pvt: RingIdx,
        /// Requests consumed so far.
        req_cons: RingIdx,
    },
    /// Ill-behaved front end: its `req_prod` claims more requests than the ring can hold
    /// (`RING_REQUEST_PROD_OVERFLOW`).
    #[error(
        "ill-behaved front end: req_prod {req_prod} is {} past the last response {rsp_prod_pvt}, more than the \
         {size} slots of the ring",
        req_prod.wrapping_sub(*rsp_prod_pvt)
    )]
    RequestProdOverflow {
        /// The `req_prod` read from shared memory.
        req_prod: RingIdx,
        /// The back end's private response producer.
        rsp_prod_pvt: RingIdx,
        /// Slots in the ring.
        size: u32,
    },
    /// Ill-behaved front end: its `req_prod` moved back behind requests the back end already consumed.
    #[error("ill-behaved front end: req_prod {req_prod} went back behind req_cons {req_cons}")]
    RequestProdBehind {
        /// The `req_prod` read from shared memory.
        req_prod: RingIdx,
        /// The back end's private request consumer.
        req_cons: RingIdx,
    },
    /// Ill-behaved back end: its `rsp_prod` claims responses to requests that were never pushed
    /// (this includes ring.h's `RING_RESPONSE_PROD_OVERFLOW`, and an `rsp_prod` that moved backwards).
    #[error(
        "ill-behaved back end: rsp_prod {rsp_prod} is {} past rsp_cons {rsp_cons}, but only {} requests are \
         outstanding",
        rsp_prod.wrapping_sub(*rsp_cons),
        req_prod_pvt.wrapping_sub(*rsp_cons)
    )]
    ResponseProdOverflow {
        /// The `rsp_prod` read from shared memory.
        rsp_prod: RingIdx,
        /// The front end's private response consumer.
        rsp_cons: RingIdx,
        /// The front end's private request producer.
        req_prod_pvt: RingIdx,
    },
}

/// Memory that holds a shared ring, and that the other end reads and writes concurrently.
///
/// # Safety
///
/// Implementors promise that [`as_ptr`](Self::as_ptr) returns the same pointer every time, valid for volatile
/// and atomic reads and writes of [`len`](Self::len) bytes for as long as the implementor lives, and that
/// this memory is not used by Rust code as an ordinary (non-atomic, non-volatile) Rust object.
pub unsafe trait RingMemory {
    /// The start of the ring (the header).
    fn as_ptr(&self) -> *mut u8;
    /// The length in bytes: one page, or `2^order` pages for multi-page rings.
    fn len(&self) -> usize;
    /// Whether [`len`](Self::len) is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Called after this end has written `len` bytes at `offset` (a slot or an index), so that memory
    /// with dirty tracking can record it for live migration. The default does nothing.
    #[inline(always)]
    fn mark_dirty(&self, offset: usize, len: usize) {
        let _ = (offset, len);
    }
}

/// Ring memory given as a raw pointer and a length: a guest page mapped into this process, or memory
/// shared with another process.
#[derive(Debug, Clone, Copy)]
pub struct RawRingMemory {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawRingMemory {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for volatile and atomic reads and writes of `len` bytes for as long as the value
    /// (and any ring built over it) is used, and Rust code must not use that memory as an ordinary object
    /// meanwhile.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize) -> Self {
        Self { ptr, len }
    }
}

// SAFETY: `new`'s contract makes the caller guarantee that the pointer stays valid for `len` bytes of
// concurrent volatile/atomic access while the value is used.
unsafe impl RingMemory for RawRingMemory {
    #[inline(always)]
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }
}

// SAFETY: the memory is only accessed with atomic and volatile operations, which are valid from any thread;
// the caller of `new` promised the memory stays valid.
unsafe impl Send for RawRingMemory {}
// SAFETY: as for `Send`: shared references allow nothing but atomic and volatile access.
unsafe impl Sync for RawRingMemory {}

#[cfg(feature = "alloc")]
mod pages {
    use super::RingMemory;
    use crate::XEN_PAGE_SIZE;
    use alloc::boxed::Box;
    use core::cell::UnsafeCell;

    #[repr(C, align(4096))]
    struct Page(UnsafeCell<[u8; XEN_PAGE_SIZE]>);

    /// Zeroed, page-aligned memory for a ring owned by this process, shared between threads: tests, benchmarks,
    /// and rings that both ends serve from one process (`&RingPages` is a [`RingMemory`]).
    pub struct RingPages {
        pages: Box<[Page]>,
    }

    impl RingPages {
        /// `2^order` zeroed pages (ring-page-order `order`).
        ///
        /// # Panics
        ///
        /// If `order` is above 16 (a 256 MiB ring; Xen allows at most order 4 for blkif and netif).
        pub fn new(order: u32) -> Self {
            assert!(order <= 16, "ring-page-order {order} is not reasonable");
            let pages = (0..1usize << order)
                .map(|_| Page(UnsafeCell::new([0; XEN_PAGE_SIZE])))
                .collect();
            Self { pages }
        }
    }

    impl core::fmt::Debug for RingPages {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("RingPages")
                .field("pages", &self.pages.len())
                .finish()
        }
    }

    // SAFETY: the pages are contiguous (a boxed slice of page-sized, page-aligned elements) and live as long as
    // the `RingPages` that the reference borrows; `UnsafeCell` allows mutation through the shared reference.
    unsafe impl RingMemory for &RingPages {
        #[inline(always)]
        fn as_ptr(&self) -> *mut u8 {
            self.pages.as_ptr().cast::<u8>().cast_mut()
        }
        #[inline(always)]
        fn len(&self) -> usize {
            self.pages.len() * XEN_PAGE_SIZE
        }
    }

    // SAFETY: the contents are only accessed through `RingMemory`, i.e. with atomic and volatile operations,
    // which are valid from any thread.
    unsafe impl Sync for RingPages {}
}

#[cfg(feature = "alloc")]
pub use pages::RingPages;

#[cfg(feature = "vm-memory")]
// SAFETY: a `VolatileSlice` is valid for volatile access of `len()` bytes for its lifetime (its constructor's
// contract), the pointer is fixed, and guest memory is never an ordinary Rust object. Writes are reported to
// the slice's dirty bitmap.
unsafe impl<B: vm_memory::bitmap::BitmapSlice> RingMemory for vm_memory::VolatileSlice<'_, B> {
    #[inline(always)]
    fn as_ptr(&self) -> *mut u8 {
        self.ptr_guard_mut().as_ptr()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        vm_memory::VolatileSlice::len(self)
    }
    #[inline(always)]
    fn mark_dirty(&self, offset: usize, len: usize) {
        vm_memory::bitmap::Bitmap::mark_dirty(self.bitmap(), offset, len);
    }
}

/// Copies a `T` out of shared memory with volatile loads of the widest size its alignment allows, so that the
/// copy is made exactly once (the compiler may neither re-read nor elide it) and as fast as `memcpy`.
///
/// # Safety
///
/// `src` must be valid for reads of `size_of::<T>()` bytes and aligned for `T`; any bytes must be a valid `T`.
#[inline(always)]
unsafe fn volatile_read<T: FromBytes>(src: *const T) -> T {
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    let dst = out.as_mut_ptr().cast::<u8>();
    let src = src.cast::<u8>();
    let mut i = 0;
    macro_rules! chunks {
        ($ty:ty) => {
            if align_of::<T>() >= align_of::<$ty>() {
                while i + size_of::<$ty>() <= size_of::<T>() {
                    // SAFETY: `i + size_of::<$ty>()` is within `T`; `src` is aligned for `T`, hence for `$ty` at
                    // every multiple of its size; the destination is a local buffer of `T`'s size.
                    unsafe { dst.add(i).cast::<$ty>().write_unaligned(src.add(i).cast::<$ty>().read_volatile()) };
                    i += size_of::<$ty>();
                }
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    chunks!(Sse);
    chunks!(u64);
    chunks!(u32);
    chunks!(u16);
    chunks!(u8);
    // SAFETY: every byte of `out` was written above, and any bytes are a valid `T` (`FromBytes`).
    unsafe { out.assume_init() }
}

/// Writes `value` into shared memory with volatile stores of the widest size its alignment allows.
///
/// # Safety
///
/// `dst` must be valid for writes of `size_of::<T>()` bytes and aligned for `T`.
#[inline(always)]
unsafe fn volatile_write<T: IntoBytes + Immutable>(dst: *mut T, value: &T) {
    let src = value.as_bytes().as_ptr();
    let dst = dst.cast::<u8>();
    let mut i = 0;
    macro_rules! chunks {
        ($ty:ty) => {
            if align_of::<T>() >= align_of::<$ty>() {
                while i + size_of::<$ty>() <= size_of::<T>() {
                    // SAFETY: within `T` on both sides; `dst` is aligned for `T`, hence for `$ty` here; the source
                    // is read unaligned from `value`'s bytes.
                    unsafe { dst.add(i).cast::<$ty>().write_volatile(src.add(i).cast::<$ty>().read_unaligned()) };
                    i += size_of::<$ty>();
                }
            }
        };
    }
    chunks!(u64);
    chunks!(u32);
    chunks!(u16);
    chunks!(u8);
}

/// 16 bytes that one SSE instruction loads, at any alignment: the widest volatile load of the slot copies on
/// x86-64. (Stores stay 8 bytes wide: a 16-byte load of a value just built with 8-byte stores would stall on
/// store forwarding.)
#[cfg(target_arch = "x86_64")]
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Sse(core::arch::x86_64::__m128i);

/// The full barrier of `xen_mb()`: orders earlier stores before later loads.
///
/// On x86-64 this is a locked add of zero to the top of the stack, as Xen's own `xen_mb()` does (cheaper than
/// `mfence`, and a full barrier for ordinary memory); elsewhere a sequentially consistent fence.
#[inline(always)]
fn xen_mb() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a locked add of 0 to the word at the stack pointer: it leaves that memory unchanged, touches only
    // this thread's stack (valid and writable; without `nostack` the compiler keeps the red zone free), and
    // only has the side effect of ordering memory accesses, like `fence(SeqCst)`.
    unsafe {
        core::arch::asm!("lock or dword ptr [rsp], 0")
    };
    #[cfg(not(target_arch = "x86_64"))]
    fence(Ordering::SeqCst);
}

/// The pieces both ends share: the memory, its base pointer and the ring size.
struct Shared<M, P: ?Sized> {
    mem: M,
    base: NonNull<u8>,
    /// `nr_ents`: the number of slots, a power of two.
    size: u32,
    _protocol: PhantomData<fn() -> P>,
}

impl<M: RingMemory, P: RingProtocol + ?Sized> Shared<M, P> {
    fn new(mem: M) -> Result<Self, RingError> {
        let len = mem.len();
        let need = SRING_HEADER_SIZE + P::SLOT_SIZE;
        if len < need {
            return Err(RingError::TooSmall { len, need });
        }
        let base =
            NonNull::new(mem.as_ptr()).ok_or(RingError::Misaligned { addr: 0, align: 64 })?;
        // Slots follow the 64-byte header; 64-byte alignment of the start covers the indices and any slot type.
        let align = max(max(align_of::<P::Request>(), align_of::<P::Response>()), 4);
        if (base.as_ptr() as usize) % align != 0 {
            return Err(RingError::Misaligned {
                addr: base.as_ptr() as usize,
                align,
            });
        }
        let size = ring_entries::<P>(len);
        Ok(Self {
            mem,
            base,
            size,
            _protocol: PhantomData,
        })
    }

    #[inline(always)]
    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the four header offsets (< 16), inside the checked length; the header start
        // is 4-byte aligned (checked in `new`); `RingMemory` promises the memory is valid for atomic access for
        // as long as `self.mem` lives, which outlives the returned reference.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    #[inline(always)]
    fn slot_offset(&self, idx: RingIdx) -> usize {
        SRING_HEADER_SIZE + (idx & (self.size - 1)) as usize * P::SLOT_SIZE
    }

    /// Copies the entry of type `T` out of slot `idx`, with one volatile read (`RING_COPY_*`).
    #[inline(always)]
    fn read_slot<T: FromBytes>(&self, idx: RingIdx) -> T {
        let offset = self.slot_offset(idx);
        // SAFETY: the slot lies within the first `size` slots, which fit in the memory (`ring_entries`); the
        // slot offset is a multiple of the slot size past the 64-byte header, so it is aligned for `T` (the slot
        // size is a multiple of the alignment of the request and response types, and so is 64); any bytes are a
        // valid `T` (`FromBytes`).
        unsafe { volatile_read(self.base.as_ptr().add(offset).cast::<T>()) }
    }

    /// Writes `value` into slot `idx`, with one volatile write.
    #[inline(always)]
    fn write_slot<T: IntoBytes + Immutable + Copy>(&self, idx: RingIdx, value: &T) {
        let offset = self.slot_offset(idx);
        // SAFETY: as in `read_slot`: in bounds and aligned. The slot is owned by this end until the producer
        // index is published, and the memory is valid for writes.
        unsafe { volatile_write(self.base.as_ptr().add(offset).cast::<T>(), value) };
        self.mem.mark_dirty(offset, size_of::<T>());
    }

    /// Publishes a producer index, and applies ring.h's event-index test when `event` is given.
    #[inline(always)]
    fn publish(&self, prod: usize, event: usize, new: RingIdx) -> bool {
        let old = self.index(prod).load(Ordering::Relaxed);
        // `xen_wmb()` then the store: the peer sees the entries before the index.
        self.index(prod).store(new, Ordering::Release);
        self.mem.mark_dirty(prod, 4);
        // `xen_mb()`: the peer sees the new index before we read its event index.
        xen_mb();
        let event = self.index(event).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Sets an event index to `cons + 1` and issues `xen_mb()`, the middle of `RING_FINAL_CHECK_FOR_*`.
    #[inline(always)]
    fn arm_event(&self, event: usize, cons: RingIdx) {
        self.index(event)
            .store(cons.wrapping_add(1), Ordering::Relaxed);
        self.mem.mark_dirty(event, 4);
        xen_mb();
    }
}

/// The front end of a shared ring: it produces requests and consumes responses.
pub struct FrontRing<M, P: ?Sized> {
    shared: Shared<M, P>,
    req_prod_pvt: RingIdx,
    rsp_cons: RingIdx,
    /// The last validated `rsp_prod` (responses up to here may be consumed without reading it again).
    rsp_prod_seen: RingIdx,
}

/// The back end of a shared ring: it consumes requests and produces responses.
pub struct BackRing<M, P: ?Sized> {
    shared: Shared<M, P>,
    rsp_prod_pvt: RingIdx,
    req_cons: RingIdx,
    /// The last validated `req_prod`.
    req_prod_seen: RingIdx,
}

// SAFETY: the rings hold the memory `M` plus a pointer derived from it; all access to that pointer is atomic or
// volatile, so moving the ring to another thread is as safe as moving `M`.
unsafe impl<M: RingMemory + Send, P: ?Sized> Send for FrontRing<M, P> {}
// SAFETY: as for `FrontRing`.
unsafe impl<M: RingMemory + Send, P: ?Sized> Send for BackRing<M, P> {}

impl<M, P: ?Sized> core::fmt::Debug for FrontRing<M, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrontRing")
            .field("size", &self.shared.size)
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("rsp_cons", &self.rsp_cons)
            .finish_non_exhaustive()
    }
}

impl<M, P: ?Sized> core::fmt::Debug for BackRing<M, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackRing")
            .field("size", &self.shared.size)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("req_cons", &self.req_cons)
            .finish_non_exhaustive()
    }
}

/// A snapshot of the four shared indices, for diagnostics and migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedIndices {
    /// `req_prod`.
    pub req_prod: RingIdx,
    /// `req_event`.
    pub req_event: RingIdx,
    /// `rsp_prod`.
    pub rsp_prod: RingIdx,
    /// `rsp_event`.
    pub rsp_event: RingIdx,
}

impl<M: RingMemory, P: RingProtocol + ?Sized> Shared<M, P> {
    fn indices(&self) -> SharedIndices {
        SharedIndices {
            req_prod: self.index(REQ_PROD).load(Ordering::Acquire),
            req_event: self.index(REQ_EVENT).load(Ordering::Acquire),
            rsp_prod: self.index(RSP_PROD).load(Ordering::Acquire),
            rsp_event: self.index(RSP_EVENT).load(Ordering::Acquire),
        }
    }
}

impl<M: RingMemory, P: RingProtocol + ?Sized> FrontRing<M, P> {
    /// Initialises the shared header (`SHARED_RING_INIT`: indices 0, event indices 1, padding zeroed) and
    /// attaches at index 0: `XEN_FRONT_RING_INIT`. A front end does this once, before granting the ring.
    pub fn new(mem: M) -> Result<Self, RingError> {
        let shared = Shared::new(mem)?;
        shared.index(REQ_PROD).store(0, Ordering::Relaxed);
        shared.index(RSP_PROD).store(0, Ordering::Relaxed);
        shared.index(REQ_EVENT).store(1, Ordering::Relaxed);
        shared.index(RSP_EVENT).store(1, Ordering::Relaxed);
        // SAFETY: bytes 16..64 of the header are inside the checked memory; a volatile write of zeroes there is
        // what `SHARED_RING_INIT` does with memset.
        unsafe {
            shared
                .base
                .as_ptr()
                .add(16)
                .cast::<[u8; 48]>()
                .write_volatile([0; 48])
        };
        shared.mem.mark_dirty(0, SRING_HEADER_SIZE);
        fence(Ordering::Release);
        Ok(Self::with_shared(shared, 0))
    }

    /// Attaches to a ring that is already in use, with both private indices at `idx`
    /// (`FRONT_RING_ATTACH`), as after a live migration. The shared header is not touched.
    pub fn attach(mem: M, idx: RingIdx) -> Result<Self, RingError> {
        Ok(Self::with_shared(Shared::new(mem)?, idx))
    }

    fn with_shared(shared: Shared<M, P>, idx: RingIdx) -> Self {
        Self {
            shared,
            req_prod_pvt: idx,
            rsp_cons: idx,
            rsp_prod_seen: idx,
        }
    }

    /// The number of slots (`RING_SIZE`).
    #[inline]
    pub fn size(&self) -> u32 {
        self.shared.size
    }

    /// The private request producer (`req_prod_pvt`).
    #[inline]
    pub fn req_prod_pvt(&self) -> RingIdx {
        self.req_prod_pvt
    }

    /// The private response consumer (`rsp_cons`).
    #[inline]
    pub fn rsp_cons(&self) -> RingIdx {
        self.rsp_cons
    }

    /// The shared indices as they are now.
    pub fn shared_indices(&self) -> SharedIndices {
        self.shared.indices()
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.shared.mem
    }

    /// Free slots for new requests (`RING_FREE_REQUESTS`).
    #[inline]
    pub fn free_requests(&self) -> u32 {
        self.shared.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Whether no slot is free (`RING_FULL`).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes a request into the next slot, privately: the back end sees it after
    /// [`push_requests`](Self::push_requests) or [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    #[inline]
    pub fn put_request(&mut self, req: &P::Request) -> Result<(), RingError> {
        if self.is_full() {
            return Err(RingError::Full {
                size: self.shared.size,
            });
        }
        self.shared.write_slot(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the requests written so far (`RING_PUSH_REQUESTS`), without the notification check.
    #[inline]
    pub fn push_requests(&mut self) {
        self.shared
            .index(REQ_PROD)
            .store(self.req_prod_pvt, Ordering::Release);
        self.shared.mem.mark_dirty(REQ_PROD, 4);
    }

    /// Publishes the requests written so far and says whether the back end must be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`): true when `req_event` lies in the newly published range.
    #[inline]
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        self.shared.publish(REQ_PROD, REQ_EVENT, self.req_prod_pvt)
    }

    /// Reads and checks the back end's `rsp_prod`.
    #[inline]
    fn load_rsp_prod(&mut self) -> Result<RingIdx, RingError> {
        // Acquire: the read barrier of ring.h consumers (`rp = rsp_prod; xen_rmb();`).
        let rsp_prod = self.shared.index(RSP_PROD).load(Ordering::Acquire);
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        if rsp_prod.wrapping_sub(self.rsp_cons) > outstanding {
            return Err(RingError::ResponseProdOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                req_prod_pvt: self.req_prod_pvt,
            });
        }
        self.rsp_prod_seen = rsp_prod;
        Ok(rsp_prod)
    }

    /// The number of responses published and not yet consumed (`XEN_RING_NR_UNCONSUMED_RESPONSES`), after
    /// checking that the back end does not claim more than were requested.
    #[inline]
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        Ok(self.load_rsp_prod()?.wrapping_sub(self.rsp_cons))
    }

    /// Copies the next response out of the ring, once, or returns `None` when there is none.
    #[inline]
    pub fn pop_response(&mut self) -> Result<Option<P::Response>, RingError> {
        if self.rsp_cons == self.rsp_prod_seen && self.load_rsp_prod()? == self.rsp_cons {
            return Ok(None);
        }
        let rsp = self.shared.read_slot::<P::Response>(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Whether responses are waiting; if not, asks for an event on the next one and looks again, so that a
    /// response published meanwhile is not missed (`RING_FINAL_CHECK_FOR_RESPONSES`). Call it before sleeping.
    #[inline]
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? != 0 {
            return Ok(true);
        }
        self.shared.arm_event(RSP_EVENT, self.rsp_cons);
        Ok(self.unconsumed_responses()? != 0)
    }
}

impl<M: RingMemory, P: RingProtocol + ?Sized> BackRing<M, P> {
    /// Attaches to a ring that the front end initialised, at index 0 (`BACK_RING_INIT`).
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::attach(mem, 0)
    }

    /// Attaches with both private indices at `idx` (`BACK_RING_ATTACH`), as after a live migration.
    pub fn attach(mem: M, idx: RingIdx) -> Result<Self, RingError> {
        Ok(Self {
            shared: Shared::new(mem)?,
            rsp_prod_pvt: idx,
            req_cons: idx,
            req_prod_seen: idx,
        })
    }

    /// The number of slots (`RING_SIZE`).
    #[inline]
    pub fn size(&self) -> u32 {
        self.shared.size
    }

    /// The private response producer (`rsp_prod_pvt`).
    #[inline]
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// The private request consumer (`req_cons`).
    #[inline]
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// The shared indices as they are now.
    pub fn shared_indices(&self) -> SharedIndices {
        self.shared.indices()
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.shared.mem
    }

    /// Reads and checks the front end's `req_prod`.
    #[inline]
    fn load_req_prod(&mut self) -> Result<RingIdx, RingError> {
        // Acquire: ring.h's `rp = req_prod; xen_rmb();`.
        let req_prod = self.shared.index(REQ_PROD).load(Ordering::Acquire);
        let published = req_prod.wrapping_sub(self.rsp_prod_pvt);
        if published > self.shared.size {
            return Err(RingError::RequestProdOverflow {
                req_prod,
                rsp_prod_pvt: self.rsp_prod_pvt,
                size: self.shared.size,
            });
        }
        if published < self.req_cons.wrapping_sub(self.rsp_prod_pvt) {
            return Err(RingError::RequestProdBehind {
                req_prod,
                req_cons: self.req_cons,
            });
        }
        self.req_prod_seen = req_prod;
        Ok(req_prod)
    }

    /// The number of requests that may be consumed now (`XEN_RING_NR_UNCONSUMED_REQUESTS`): those published
    /// and not consumed, clamped to the free response slots, after checking `req_prod` for overflow
    /// (`RING_REQUEST_PROD_OVERFLOW`) and for going backwards.
    #[inline]
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        let req = self.load_req_prod()?.wrapping_sub(self.req_cons);
        let rsp = self.shared.size - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        Ok(req.min(rsp))
    }

    /// Copies the next request out of the ring, once, or returns `None` when there is none (or when every
    /// response slot is taken by a request still in flight, `RING_REQUEST_CONS_OVERFLOW`).
    #[inline]
    pub fn pop_request(&mut self) -> Result<Option<P::Request>, RingError> {
        if self.req_cons == self.req_prod_seen && self.load_req_prod()? == self.req_cons {
            return Ok(None);
        }
        if self.req_cons.wrapping_sub(self.rsp_prod_pvt) >= self.shared.size {
            return Ok(None);
        }
        let req = self.shared.read_slot::<P::Request>(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes a response into the next slot, privately: the front end sees it after
    /// [`push_responses`](Self::push_responses) or [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    ///
    /// The slot is written whole from `rsp`, whose type has no implicit padding (`IntoBytes`), so nothing of
    /// this process leaks into the ring (XSA-216) as long as the response's padding fields are zero.
    #[inline]
    pub fn put_response(&mut self, rsp: &P::Response) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer {
                rsp_prod_pvt: self.rsp_prod_pvt,
                req_cons: self.req_cons,
            });
        }
        self.shared.write_slot(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses written so far (`RING_PUSH_RESPONSES`), without the notification check.
    #[inline]
    pub fn push_responses(&mut self) {
        self.shared
            .index(RSP_PROD)
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.shared.mem.mark_dirty(RSP_PROD, 4);
    }

    /// Publishes the responses written so far and says whether the front end must be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    #[inline]
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        self.shared.publish(RSP_PROD, RSP_EVENT, self.rsp_prod_pvt)
    }

    /// Whether requests are waiting; if not, asks for an event on the next one and looks again
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). Call it before sleeping.
    #[inline]
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? != 0 {
            return Ok(true);
        }
        self.shared.arm_event(REQ_EVENT, self.req_cons);
        Ok(self.unconsumed_requests()? != 0)
    }
}
