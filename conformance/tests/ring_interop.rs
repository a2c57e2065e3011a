//! xen-abi's ring against ring.h's own macros (`c/ring_peers.c`), for blkif and netif's tx ring.
//!
//! - Lock-step: the same script of ring operations runs with a C front and C back (the reference: what ring.h
//!   produces), C front and Rust back, Rust front and C back, and Rust on both ends. Every result (notify
//!   decisions, final checks, the entries taken) and the shared indices after every step must be identical.
//! - Concurrent: one thread per end on one shared page, sleeping on emulated event channels only after a final
//!   check, as a real front and back end do. Every request must be answered correctly; a lost wake-up would hang,
//!   and fails the test instead.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use blanket_conformance::peers::{
    Events, PeerStats, Proto, blkif, netif_tx, rust_back_run, rust_front_run,
};
use blanket_conformance::ring_c::{CBack, CFront, CFunctions, Took, c_back_run, c_front_run};
use proptest::prelude::*;
use xen_abi::ring::{BackRing, FrontRing, RingIdx, RingMemory, RingPages, SharedIndices};

// ---------------------------------------------------------------------------------------------------------
// Lock-step

trait FrontStep {
    fn put(&mut self, i: u64) -> bool;
    fn push_notify(&mut self) -> bool;
    fn push(&mut self);
    fn pop(&mut self, i: u64) -> Took;
    fn final_check(&mut self) -> bool;
}

trait BackStep {
    fn serve_one(&mut self, i: u64) -> Took;
    fn push_notify(&mut self) -> bool;
    fn push(&mut self);
    fn final_check(&mut self) -> bool;
}

impl<P: Proto + CFunctions> FrontStep for CFront<'_, P> {
    fn put(&mut self, i: u64) -> bool {
        CFront::put(self, i)
    }
    fn push_notify(&mut self) -> bool {
        CFront::push_notify(self)
    }
    fn push(&mut self) {
        CFront::push(self)
    }
    fn pop(&mut self, i: u64) -> Took {
        CFront::pop(self, i)
    }
    fn final_check(&mut self) -> bool {
        CFront::final_check(self)
    }
}

impl<P: Proto + CFunctions> BackStep for CBack<'_, P> {
    fn serve_one(&mut self, i: u64) -> Took {
        CBack::serve_one(self, i)
    }
    fn push_notify(&mut self) -> bool {
        CBack::push_notify(self)
    }
    fn push(&mut self) {
        CBack::push(self)
    }
    fn final_check(&mut self) -> bool {
        CBack::final_check(self)
    }
}

impl<M: RingMemory, P: Proto> FrontStep for FrontRing<M, P> {
    fn put(&mut self, i: u64) -> bool {
        self.put_request(&P::make_request(i)).is_ok()
    }
    fn push_notify(&mut self) -> bool {
        self.push_requests_and_check_notify()
    }
    fn push(&mut self) {
        self.push_requests()
    }
    fn pop(&mut self, i: u64) -> Took {
        match self.pop_response().expect("a well-behaved back end") {
            None => Took::Nothing,
            Some(rsp) if P::response_ok(i, &rsp) => Took::Good,
            Some(_) => Took::Bad,
        }
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_responses()
            .expect("a well-behaved back end")
    }
}

impl<M: RingMemory, P: Proto> BackStep for BackRing<M, P> {
    fn serve_one(&mut self, i: u64) -> Took {
        match self.pop_request().expect("a well-behaved front end") {
            None => Took::Nothing,
            Some(req) => {
                let ok = P::request_ok(i, &req);
                self.put_response(&P::make_response(&req, ok))
                    .expect("a request to answer");
                if ok { Took::Good } else { Took::Bad }
            }
        }
    }
    fn push_notify(&mut self) -> bool {
        self.push_responses_and_check_notify()
    }
    fn push(&mut self) {
        self.push_responses()
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_requests()
            .expect("a well-behaved front end")
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Put(u8),
    Push,
    PushNotify,
    Serve(u8),
    PushRsp,
    PushRspNotify,
    Collect(u8),
    FinalReq,
    FinalRsp,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u8..70).prop_map(Op::Put),
        1 => Just(Op::Push),
        3 => Just(Op::PushNotify),
        1 => (1u8..70).prop_map(Op::Serve),
        1 => Just(Op::PushRsp),
        3 => Just(Op::PushRspNotify),
        1 => (1u8..70).prop_map(Op::Collect),
        2 => Just(Op::FinalReq),
        2 => Just(Op::FinalRsp),
    ]
}

/// One step's observable outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    result: Vec<u64>,
    shared: SharedIndices,
}

fn indices(pages: &RingPages) -> SharedIndices {
    let mem: &RingPages = pages;
    // SAFETY: the header's first 16 bytes are four u32 indices; read atomically like both ends do.
    let read = |off: usize| unsafe {
        std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(off).cast())
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    SharedIndices {
        req_prod: read(0),
        req_event: read(4),
        rsp_prod: read(8),
        rsp_event: read(12),
    }
}

fn run_script(
    pages: &RingPages,
    front: &mut dyn FrontStep,
    back: &mut dyn BackStep,
    ops: &[Op],
) -> Vec<Step> {
    let (mut sent, mut served, mut collected) = (0u64, 0u64, 0u64);
    let mut trace = Vec::new();
    for &op in ops {
        let mut result = Vec::new();
        match op {
            Op::Put(n) => {
                for _ in 0..n {
                    if front.put(sent) {
                        sent += 1;
                        result.push(1);
                    } else {
                        result.push(0);
                    }
                }
            }
            Op::Push => front.push(),
            Op::PushNotify => result.push(front.push_notify().into()),
            Op::Serve(n) => {
                for _ in 0..n {
                    match back.serve_one(served) {
                        Took::Nothing => {
                            result.push(0);
                            break;
                        }
                        Took::Good => {
                            served += 1;
                            result.push(1);
                        }
                        Took::Bad => panic!("request {served} arrived corrupted"),
                    }
                }
            }
            Op::PushRsp => back.push(),
            Op::PushRspNotify => result.push(back.push_notify().into()),
            Op::Collect(n) => {
                for _ in 0..n {
                    match front.pop(collected) {
                        Took::Nothing => {
                            result.push(0);
                            break;
                        }
                        Took::Good => {
                            collected += 1;
                            result.push(1);
                        }
                        Took::Bad => panic!("response {collected} arrived corrupted"),
                    }
                }
            }
            Op::FinalReq => result.push(back.final_check().into()),
            Op::FinalRsp => result.push(front.final_check().into()),
        }
        trace.push(Step {
            result,
            shared: indices(pages),
        });
    }
    trace
}

/// Sets up a ring at `start` (all four indices as after SHARED_RING_INIT, shifted), and runs the script with
/// the chosen implementations of each end.
fn lock_step<P>(start: RingIdx, ops: &[Op], c_front: bool, c_back: bool) -> Vec<Step>
where
    P: Proto + CFunctions,
{
    let pages = RingPages::new(0);
    {
        // Initialise with ring.h, then move every index to `start` as if the ring had been used that long.
        let _init = CFront::<P>::new(&pages, true, 0);
        let mem: &RingPages = &pages;
        for (off, v) in [
            (0, start),
            (4, start.wrapping_add(1)),
            (8, start),
            (12, start.wrapping_add(1)),
        ] {
            // SAFETY: offsets within the header; atomic access, as both ends use.
            unsafe { std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(off).cast()) }
                .store(v, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let mem: &RingPages = &pages;
    let mut cf;
    let mut rf;
    let front: &mut dyn FrontStep = if c_front {
        cf = CFront::<P>::new(mem, false, start);
        &mut cf
    } else {
        rf = FrontRing::<_, P>::attach(mem, start).unwrap();
        &mut rf
    };
    let mut cb;
    let mut rb;
    let back: &mut dyn BackStep = if c_back {
        cb = CBack::<P>::new(mem, start);
        &mut cb
    } else {
        rb = BackRing::<_, P>::attach(mem, start).unwrap();
        &mut rb
    };
    run_script(&pages, front, back, ops)
}

fn all_four_agree<P>(start: RingIdx, ops: &[Op]) -> Result<(), TestCaseError>
where
    P: Proto + CFunctions,
{
    let reference = lock_step::<P>(start, ops, true, true);
    for (c_front, c_back) in [(true, false), (false, true), (false, false)] {
        let got = lock_step::<P>(start, ops, c_front, c_back);
        for (k, (want, have)) in reference.iter().zip(&got).enumerate() {
            prop_assert_eq!(
                want,
                have,
                "step {} ({:?}) differs from ring.h with a {} front end and a {} back end",
                k,
                ops[k],
                if c_front { "C" } else { "Rust" },
                if c_back { "C" } else { "Rust" }
            );
        }
    }
    Ok(())
}

fn interesting_start() -> impl Strategy<Value = RingIdx> {
    prop_oneof![
        Just(0u32),
        Just((1u32 << 31) - 50),
        Just(u32::MAX - 50),
        any::<u32>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn blkif_lock_step_equals_ring_h(start in interesting_start(), ops in proptest::collection::vec(op(), 1..120)) {
        all_four_agree::<blkif>(start, &ops)?;
    }

    #[test]
    fn netif_tx_lock_step_equals_ring_h(start in interesting_start(), ops in proptest::collection::vec(op(), 1..120)) {
        all_four_agree::<netif_tx>(start, &ops)?;
    }
}

#[test]
fn front_ring_init_writes_the_header_that_ring_h_writes() {
    let c_pages = RingPages::new(0);
    let r_pages = RingPages::new(0);
    let fill = |p: &RingPages| {
        let mem: &RingPages = p;
        for off in 0..64 {
            // SAFETY: the header of a page we own; volatile like the ring's accesses.
            unsafe { mem.as_ptr().add(off).write_volatile(0xAA) };
        }
    };
    fill(&c_pages);
    fill(&r_pages);
    let c = CFront::<blkif>::new(&c_pages, true, 0);
    let r = FrontRing::<_, blkif>::new(&r_pages).unwrap();
    let header = |p: &RingPages| {
        let mem: &RingPages = p;
        // SAFETY: reading the 64-byte header of a page we own.
        (0..64)
            .map(|off| unsafe { mem.as_ptr().add(off).read_volatile() })
            .collect::<Vec<u8>>()
    };
    assert_eq!(header(&c_pages), header(&r_pages));
    assert_eq!(c.state().nr_ents, r.size(), "__RING_SIZE");
    assert_eq!(
        r.size(),
        32,
        "blkif: (4096 - 64) / 112 = 36, rounded down to 32"
    );
    let multi = RingPages::new(2);
    let c = CFront::<netif_tx>::new(&multi, true, 0);
    let r = FrontRing::<_, netif_tx>::new(&multi).unwrap();
    assert_eq!(
        c.state().nr_ents,
        r.size(),
        "__RING_SIZE of a 4-page netif tx ring"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Concurrent

/// One direction of an event channel: a pending flag and a condition variable.
#[derive(Default)]
struct Channel {
    pending: Mutex<bool>,
    cond: Condvar,
    sent: std::sync::atomic::AtomicU64,
}

/// The two event channels of a ring, seen from one end.
struct End<'a> {
    to_me: &'a Channel,
    to_peer: &'a Channel,
}

impl Events for End<'_> {
    fn notify(&self) {
        self.to_peer
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.to_peer.pending.lock().unwrap() = true;
        self.to_peer.cond.notify_one();
    }
    fn wait(&self) {
        let guard = self.to_me.pending.lock().unwrap();
        let (mut guard, timeout) = self
            .to_me
            .cond
            .wait_timeout_while(guard, Duration::from_secs(30), |pending| !*pending)
            .unwrap();
        if timeout.timed_out() {
            // A panic cannot unwind through the C loop that may be calling us.
            eprintln!("lost wake-up: an end slept 30 s after a final check without being notified");
            std::process::abort();
        }
        *guard = false;
    }
}

const N: u64 = 300_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    C,
    Rust,
}

fn concurrent<P>(front: Impl, back: Impl) -> (PeerStats, PeerStats)
where
    P: Proto + CFunctions,
{
    let pages = RingPages::new(0);
    FrontRing::<_, P>::new(&pages).unwrap();
    let (to_front, to_back) = (Channel::default(), Channel::default());
    let front_end = End {
        to_me: &to_front,
        to_peer: &to_back,
    };
    let back_end = End {
        to_me: &to_back,
        to_peer: &to_front,
    };
    let (fs, bs) = std::thread::scope(|s| {
        let b = s.spawn(|| match back {
            Impl::C => c_back_run::<P, _, _>(&&pages, N, Some(&back_end)),
            Impl::Rust => rust_back_run::<P, _, _>(&pages, N, Some(&back_end)).unwrap(),
        });
        let f = match front {
            Impl::C => c_front_run::<P, _, _>(&&pages, N, Some(&front_end)),
            Impl::Rust => rust_front_run::<P, _, _>(&pages, N, Some(&front_end)).unwrap(),
        };
        (f, b.join().unwrap())
    });
    assert_eq!(
        (fs.done, fs.bad),
        (N, 0),
        "{front:?} front end: every response correct"
    );
    assert_eq!(
        (bs.done, bs.bad),
        (N, 0),
        "{back:?} back end: every request correct"
    );
    assert_eq!(
        fs.notifications,
        to_back.sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(
        bs.notifications,
        to_front.sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(fs.notifications >= 1 && bs.notifications >= 1);
    // Event-index suppression: far fewer notifications than requests.
    assert!(
        fs.notifications < N / 2 && bs.notifications < N / 2,
        "{fs:?} {bs:?}"
    );
    eprintln!(
        "{} {front:?} front / {back:?} back: {N} requests, notifications front->back {} back->front {}, \
         sleeps front {} back {}",
        std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or_default(),
        fs.notifications,
        bs.notifications,
        fs.waits,
        bs.waits
    );
    (fs, bs)
}

#[test]
fn blkif_c_front_rust_back_concurrent() {
    concurrent::<blkif>(Impl::C, Impl::Rust);
}

#[test]
fn blkif_rust_front_c_back_concurrent() {
    concurrent::<blkif>(Impl::Rust, Impl::C);
}

#[test]
fn netif_tx_c_front_rust_back_concurrent() {
    concurrent::<netif_tx>(Impl::C, Impl::Rust);
}

#[test]
fn netif_tx_rust_front_c_back_concurrent() {
    concurrent::<netif_tx>(Impl::Rust, Impl::C);
}

#[test]
fn blkif_c_reference_and_rust_only_concurrent() {
    concurrent::<blkif>(Impl::C, Impl::C);
    concurrent::<blkif>(Impl::Rust, Impl::Rust);
}
