//! Safe wrappers around the ring.h peers of `c/ring_peers.c`.
//!
//! [`CFront`] and [`CBack`] drive one end of a ring with ring.h's macros, one step at a time;
//! [`c_front_run`] and [`c_back_run`] are ring.h loops that serve `n` requests with event callbacks.

use std::ffi::c_void;
use std::marker::PhantomData;

use xen_abi::ring::{RingIdx, RingMemory};

use crate::peers::{Events, PeerStats, Proto};

/// `struct __name##_front_ring` and `__name##_back_ring` of ring.h: two private indices, `nr_ents`, `sring`.
#[repr(C)]
#[derive(Debug)]
pub struct CRingState {
    /// `req_prod_pvt` (front) or `rsp_prod_pvt` (back).
    pub prod_pvt: RingIdx,
    /// `rsp_cons` (front) or `req_cons` (back).
    pub cons: RingIdx,
    /// `nr_ents`.
    pub nr_ents: u32,
    sring: *mut c_void,
}

type EventFn = Option<unsafe extern "C" fn(*mut c_void)>;

macro_rules! c_peers {
    ($p:ident: $($name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
        /// The C functions `c_<proto>_*` of `c/ring_peers.c` for one protocol.
        #[allow(missing_docs)]
        pub mod $p {
            use super::*;
            unsafe extern "C" {
                $( pub fn $name($($arg: $ty),*) $(-> $ret)?; )*
            }
        }
    };
}

macro_rules! all_c_peers {
    ($($p:ident => [$fsize:ident, $finit:ident, $binit:ident, $fput:ident, $fpushn:ident, $fpush:ident,
        $fpop:ident, $ffinal:ident, $bserve:ident, $bpushn:ident, $bpush:ident, $bfinal:ident, $frun:ident,
        $brun:ident]),*) => {$(
        c_peers! { $p:
            $fsize() -> usize;
            $finit(r: *mut CRingState, page: *mut c_void, bytes: usize, init_shared: i32, idx: RingIdx);
            $binit(r: *mut CRingState, page: *mut c_void, bytes: usize, idx: RingIdx);
            $fput(r: *mut CRingState, i: u64) -> i32;
            $fpushn(r: *mut CRingState) -> i32;
            $fpush(r: *mut CRingState);
            $fpop(r: *mut CRingState, i: u64) -> i32;
            $ffinal(r: *mut CRingState) -> i32;
            $bserve(r: *mut CRingState, i: u64) -> i32;
            $bpushn(r: *mut CRingState) -> i32;
            $bpush(r: *mut CRingState);
            $bfinal(r: *mut CRingState) -> i32;
            $frun(page: *mut c_void, bytes: usize, n: u64, notify: EventFn, wait: EventFn, ctx: *mut c_void,
                  st: *mut PeerStats);
            $brun(page: *mut c_void, bytes: usize, n: u64, notify: EventFn, wait: EventFn, ctx: *mut c_void,
                  st: *mut PeerStats);
        }
        impl CFunctions for crate::peers::$p {
            const F: CFns = CFns {
                front_ring_size: $p::$fsize,
                front_init: $p::$finit,
                back_init: $p::$binit,
                front_put: $p::$fput,
                front_push_notify: $p::$fpushn,
                front_push: $p::$fpush,
                front_pop: $p::$fpop,
                front_final_check: $p::$ffinal,
                back_serve_one: $p::$bserve,
                back_push_notify: $p::$bpushn,
                back_push: $p::$bpush,
                back_final_check: $p::$bfinal,
                front_run: $p::$frun,
                back_run: $p::$brun,
            };
        }
    )*};
}

/// The table of C functions for one protocol.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy)]
pub struct CFns {
    pub front_ring_size: unsafe extern "C" fn() -> usize,
    pub front_init: unsafe extern "C" fn(*mut CRingState, *mut c_void, usize, i32, RingIdx),
    pub back_init: unsafe extern "C" fn(*mut CRingState, *mut c_void, usize, RingIdx),
    pub front_put: unsafe extern "C" fn(*mut CRingState, u64) -> i32,
    pub front_push_notify: unsafe extern "C" fn(*mut CRingState) -> i32,
    pub front_push: unsafe extern "C" fn(*mut CRingState),
    pub front_pop: unsafe extern "C" fn(*mut CRingState, u64) -> i32,
    pub front_final_check: unsafe extern "C" fn(*mut CRingState) -> i32,
    pub back_serve_one: unsafe extern "C" fn(*mut CRingState, u64) -> i32,
    pub back_push_notify: unsafe extern "C" fn(*mut CRingState) -> i32,
    pub back_push: unsafe extern "C" fn(*mut CRingState),
    pub back_final_check: unsafe extern "C" fn(*mut CRingState) -> i32,
    pub front_run: unsafe extern "C" fn(
        *mut c_void,
        usize,
        u64,
        EventFn,
        EventFn,
        *mut c_void,
        *mut PeerStats,
    ),
    pub back_run: unsafe extern "C" fn(
        *mut c_void,
        usize,
        u64,
        EventFn,
        EventFn,
        *mut c_void,
        *mut PeerStats,
    ),
}

/// A protocol that has C peers in `c/ring_peers.c`.
pub trait CFunctions {
    /// Its functions.
    const F: CFns;
}

all_c_peers! {
    blkif => [c_blkif_front_ring_size, c_blkif_front_init, c_blkif_back_init, c_blkif_front_put,
        c_blkif_front_push_notify, c_blkif_front_push, c_blkif_front_pop, c_blkif_front_final_check,
        c_blkif_back_serve_one, c_blkif_back_push_notify, c_blkif_back_push, c_blkif_back_final_check,
        c_blkif_front_run, c_blkif_back_run],
    netif_tx => [c_netif_tx_front_ring_size, c_netif_tx_front_init, c_netif_tx_back_init, c_netif_tx_front_put,
        c_netif_tx_front_push_notify, c_netif_tx_front_push, c_netif_tx_front_pop, c_netif_tx_front_final_check,
        c_netif_tx_back_serve_one, c_netif_tx_back_push_notify, c_netif_tx_back_push, c_netif_tx_back_final_check,
        c_netif_tx_front_run, c_netif_tx_back_run]
}

/// The outcome of taking one entry: none there, the right one, or a wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Took {
    /// Nothing to take.
    Nothing,
    /// Took the expected entry.
    Good,
    /// Took an entry that was not the expected one.
    Bad,
}

fn took(v: i32) -> Took {
    match v {
        0 => Took::Nothing,
        1 => Took::Good,
        _ => Took::Bad,
    }
}

/// A front end driven by ring.h's macros.
#[derive(Debug)]
pub struct CFront<'m, P> {
    state: CRingState,
    _mem: PhantomData<&'m ()>,
    _p: PhantomData<P>,
}

/// A back end driven by ring.h's macros.
#[derive(Debug)]
pub struct CBack<'m, P> {
    state: CRingState,
    _mem: PhantomData<&'m ()>,
    _p: PhantomData<P>,
}

fn empty_state() -> CRingState {
    CRingState {
        prod_pvt: 0,
        cons: 0,
        nr_ents: 0,
        sring: std::ptr::null_mut(),
    }
}

impl<'m, P: Proto + CFunctions> CFront<'m, P> {
    /// `XEN_FRONT_RING_INIT` (when `init_shared`) or `FRONT_RING_ATTACH` at `idx`, over `mem`.
    pub fn new<M: RingMemory + 'm>(mem: M, init_shared: bool, idx: RingIdx) -> Self {
        let mut state = empty_state();
        // SAFETY: checks that the C struct is what CRingState declares.
        assert_eq!(unsafe { (P::F.front_ring_size)() }, size_of::<CRingState>());
        // SAFETY: `mem` (a `RingMemory` that lives for 'm, which the returned value carries) is valid for `len()`
        // bytes; the C code only stores the pointer and accesses the ring within `len()` bytes.
        unsafe {
            (P::F.front_init)(
                &mut state,
                mem.as_ptr().cast(),
                mem.len(),
                init_shared.into(),
                idx,
            )
        };
        Self {
            state,
            _mem: PhantomData,
            _p: PhantomData,
        }
    }
    /// The private indices.
    pub fn state(&self) -> &CRingState {
        &self.state
    }
    /// Writes request `i`; false when `RING_FULL`.
    pub fn put(&mut self, i: u64) -> bool {
        // SAFETY: the state was initialised over memory that outlives `self`.
        unsafe { (P::F.front_put)(&mut self.state, i) == 0 }
    }
    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`.
    pub fn push_notify(&mut self) -> bool {
        // SAFETY: as in `put`.
        unsafe { (P::F.front_push_notify)(&mut self.state) != 0 }
    }
    /// `RING_PUSH_REQUESTS`.
    pub fn push(&mut self) {
        // SAFETY: as in `put`.
        unsafe { (P::F.front_push)(&mut self.state) }
    }
    /// Takes the next response, expected to answer request `i`.
    pub fn pop(&mut self, i: u64) -> Took {
        // SAFETY: as in `put`.
        took(unsafe { (P::F.front_pop)(&mut self.state, i) })
    }
    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    pub fn final_check(&mut self) -> bool {
        // SAFETY: as in `put`.
        unsafe { (P::F.front_final_check)(&mut self.state) != 0 }
    }
}

impl<'m, P: Proto + CFunctions> CBack<'m, P> {
    /// `BACK_RING_ATTACH` at `idx`, over `mem`.
    pub fn new<M: RingMemory + 'm>(mem: M, idx: RingIdx) -> Self {
        let mut state = empty_state();
        // SAFETY: as in `CFront::new`.
        unsafe { (P::F.back_init)(&mut state, mem.as_ptr().cast(), mem.len(), idx) };
        Self {
            state,
            _mem: PhantomData,
            _p: PhantomData,
        }
    }
    /// The private indices.
    pub fn state(&self) -> &CRingState {
        &self.state
    }
    /// Takes the next request, expected to be request `i`, and answers it privately.
    pub fn serve_one(&mut self, i: u64) -> Took {
        // SAFETY: the state was initialised over memory that outlives `self`.
        took(unsafe { (P::F.back_serve_one)(&mut self.state, i) })
    }
    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
    pub fn push_notify(&mut self) -> bool {
        // SAFETY: as in `serve_one`.
        unsafe { (P::F.back_push_notify)(&mut self.state) != 0 }
    }
    /// `RING_PUSH_RESPONSES`.
    pub fn push(&mut self) {
        // SAFETY: as in `serve_one`.
        unsafe { (P::F.back_push)(&mut self.state) }
    }
    /// `RING_FINAL_CHECK_FOR_REQUESTS`.
    pub fn final_check(&mut self) -> bool {
        // SAFETY: as in `serve_one`.
        unsafe { (P::F.back_final_check)(&mut self.state) != 0 }
    }
}

unsafe extern "C" fn event_notify<E: Events>(ctx: *mut c_void) {
    // SAFETY: `ctx` is the `&E` passed by `c_front_run`/`c_back_run`, alive for the whole call.
    unsafe { &*ctx.cast::<E>() }.notify();
}

unsafe extern "C" fn event_wait<E: Events>(ctx: *mut c_void) {
    // SAFETY: as in `event_notify`.
    unsafe { &*ctx.cast::<E>() }.wait();
}

fn run_c<M: RingMemory, E: Events>(
    f: unsafe extern "C" fn(*mut c_void, usize, u64, EventFn, EventFn, *mut c_void, *mut PeerStats),
    mem: &M,
    n: u64,
    events: Option<&E>,
) -> PeerStats {
    let mut stats = PeerStats::default();
    let (notify, wait, ctx): (EventFn, EventFn, *mut c_void) = match events {
        Some(e) => (
            Some(event_notify::<E>),
            Some(event_wait::<E>),
            std::ptr::from_ref(e).cast_mut().cast(),
        ),
        None => (None, None, std::ptr::null_mut()),
    };
    // SAFETY: the memory is valid for `len()` bytes during the call; `ctx` is a live `&E` (or null with no
    // callbacks), and the callbacks only use it as `&E`; `stats` is a valid out-pointer.
    unsafe {
        f(
            mem.as_ptr().cast(),
            mem.len(),
            n,
            notify,
            wait,
            ctx,
            &mut stats,
        )
    };
    stats
}

/// ring.h's front loop: sends requests `0..n` and checks their responses. With `events`, it notifies and
/// sleeps through them; without, it spins.
pub fn c_front_run<P: CFunctions, M: RingMemory, E: Events>(
    mem: &M,
    n: u64,
    events: Option<&E>,
) -> PeerStats {
    run_c(P::F.front_run, mem, n, events)
}

/// ring.h's back loop: answers `n` requests, checking each.
pub fn c_back_run<P: CFunctions, M: RingMemory, E: Events>(
    mem: &M,
    n: u64,
    events: Option<&E>,
) -> PeerStats {
    run_c(P::F.back_run, mem, n, events)
}

unsafe extern "C" {
    fn c_blkif_single_thread(page: *mut c_void, bytes: usize, rounds: u64, batch: u32) -> u64;
}

/// ring.h on one thread: `rounds` rounds of `batch` blkif requests put, pushed, served, answered and
/// collected, all inlined C. Returns the number of wrong entries seen (0 when all is well).
pub fn c_blkif_single_thread_run<M: RingMemory>(mem: &M, rounds: u64, batch: u32) -> u64 {
    // SAFETY: the memory is valid for `len()` bytes during the call, and nothing else uses it meanwhile
    // (it is `&M`, but the caller gives the ring to this call alone).
    unsafe { c_blkif_single_thread(mem.as_ptr().cast(), mem.len(), rounds, batch) }
}

unsafe extern "C" {
    fn c_blkif_front_put_batch(r: *mut CRingState, i: u64, n: u32) -> u32;
    fn c_blkif_back_serve_batch(r: *mut CRingState, i: u64, n: u32, bad: *mut u64) -> u32;
    fn c_blkif_front_collect_batch(r: *mut CRingState, i: u64, n: u32, bad: *mut u64) -> u32;
}

impl CFront<'_, crate::peers::blkif> {
    /// ring.h, inlined in C: puts requests `i..i + n` (as many as fit) and pushes them with the notify check.
    /// Returns how many were put.
    pub fn put_batch(&mut self, i: u64, n: u32) -> u32 {
        // SAFETY: the state was initialised over memory that outlives `self`.
        unsafe { c_blkif_front_put_batch(&mut self.state, i, n) }
    }
    /// ring.h, inlined in C: collects up to `n` responses, expected to answer requests `i..`; counts wrong
    /// ones in `bad`. Returns how many were collected.
    pub fn collect_batch(&mut self, i: u64, n: u32, bad: &mut u64) -> u32 {
        // SAFETY: as in `put_batch`; `bad` is a valid out-pointer.
        unsafe { c_blkif_front_collect_batch(&mut self.state, i, n, bad) }
    }
}

impl CBack<'_, crate::peers::blkif> {
    /// ring.h, inlined in C: serves up to `n` requests, expected to be requests `i..`, and pushes the responses
    /// with the notify check; counts wrong ones in `bad`. Returns how many were served.
    pub fn serve_batch(&mut self, i: u64, n: u32, bad: &mut u64) -> u32 {
        // SAFETY: the state was initialised over memory that outlives `self`; `bad` is a valid out-pointer.
        unsafe { c_blkif_back_serve_batch(&mut self.state, i, n, bad) }
    }
}
