//! The shared ring: behaviour, and the hostile cases of HOSTILE-INPUT.md ("Shared rings").

use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use xen_abi::ring::{
    BackRing, FrontRing, RingError, RingIdx, RingPages, RingProtocol, SRING_HEADER_SIZE,
    ring_entries,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Req {
    id: u64,
    a: u64,
    b: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Rsp {
    id: u64,
    sum: u64,
}

struct Test;
impl RingProtocol for Test {
    type Request = Req;
    type Response = Rsp;
}

/// 4032 bytes / 24-byte slots = 168 slots, rounded down to 128.
const SIZE: u32 = 128;

fn req(id: u64) -> Req {
    Req {
        id,
        a: id * 3,
        b: id ^ 0x5555,
    }
}

fn rsp_for(r: &Req) -> Rsp {
    Rsp {
        id: r.id,
        sum: r.a.wrapping_add(r.b),
    }
}

/// Writes a shared index behind the ring's back, as a hostile peer would.
fn poke_index(pages: &RingPages, offset: usize, value: u32) {
    use xen_abi::ring::RingMemory;
    let mem: &RingPages = pages;
    // SAFETY: offset < 16 is inside the page; the memory is only accessed atomically/volatilely.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(offset).cast()) }
        .store(value, Ordering::SeqCst);
}

#[test]
fn slot_size_and_entries_follow_ring_h() {
    assert_eq!(Test::SLOT_SIZE, 24);
    assert_eq!(ring_entries::<Test>(4096), SIZE);
    assert_eq!(ring_entries::<Test>(4096 * 2), 256);
    assert_eq!(ring_entries::<Test>(SRING_HEADER_SIZE), 0);
    let pages = RingPages::new(0);
    let front = FrontRing::<_, Test>::new(&pages).unwrap();
    assert_eq!(front.size(), SIZE);
    let idx = front.shared_indices();
    assert_eq!(
        (idx.req_prod, idx.req_event, idx.rsp_prod, idx.rsp_event),
        (0, 1, 0, 1)
    );
}

#[test]
fn too_small_and_misaligned_memory_is_rejected() {
    let mut buf = vec![0u64; 512];
    let ptr = std::ptr::NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `buf` outlives the ring and is only used through it.
    let small = unsafe { xen_abi::ring::RawRingMemory::new(ptr, 80) };
    assert_eq!(
        FrontRing::<_, Test>::new(small).unwrap_err(),
        RingError::TooSmall {
            len: 80,
            need: SRING_HEADER_SIZE + 24
        }
    );
    // SAFETY: as above; one byte in, 4095 bytes remain in the buffer.
    let odd = unsafe { xen_abi::ring::RawRingMemory::new(ptr.add(1), 4095) };
    assert!(matches!(
        FrontRing::<_, Test>::new(odd),
        Err(RingError::Misaligned { align: 8, .. })
    ));
}

#[test]
fn requests_and_responses_round_trip_with_notifications() {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();

    // The back end starts with req_event = 1: the first push notifies.
    front.put_request(&req(1)).unwrap();
    assert!(front.push_requests_and_check_notify());
    // A second push before the back end re-arms: no notification.
    front.put_request(&req(2)).unwrap();
    assert!(!front.push_requests_and_check_notify());

    assert_eq!(back.unconsumed_requests().unwrap(), 2);
    let mut got = Vec::new();
    while let Some(r) = back.pop_request().unwrap() {
        got.push(r);
        back.put_response(&rsp_for(&r)).unwrap();
    }
    assert_eq!(got, vec![req(1), req(2)]);
    assert!(
        back.push_responses_and_check_notify(),
        "rsp_event is 1: the first responses notify"
    );
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(
        back.shared_indices().req_event,
        3,
        "re-armed at req_cons + 1"
    );

    // Now a push must notify again.
    front.put_request(&req(3)).unwrap();
    assert!(front.push_requests_and_check_notify());

    assert_eq!(front.pop_response().unwrap(), Some(rsp_for(&req(1))));
    assert_eq!(front.pop_response().unwrap(), Some(rsp_for(&req(2))));
    assert_eq!(front.pop_response().unwrap(), None);
    assert!(!front.final_check_for_responses().unwrap());
    assert_eq!(front.shared_indices().rsp_event, 3);
}

#[test]
fn ring_full_is_a_typed_error_and_clears_after_responses() {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    for i in 0..SIZE {
        front.put_request(&req(i.into())).unwrap();
    }
    assert!(front.is_full());
    assert_eq!(
        front.put_request(&req(999)),
        Err(RingError::Full { size: SIZE })
    );
    front.push_requests();
    let r = back.pop_request().unwrap().unwrap();
    back.put_response(&rsp_for(&r)).unwrap();
    back.push_responses();
    assert_eq!(front.pop_response().unwrap(), Some(rsp_for(&req(0))));
    assert_eq!(front.free_requests(), 1);
    front.put_request(&req(999)).unwrap();
}

#[test]
fn responding_without_a_request_is_a_typed_error() {
    let pages = RingPages::new(0);
    let _front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    assert_eq!(
        back.put_response(&Rsp { id: 0, sum: 0 }),
        Err(RingError::NoRequestToAnswer {
            rsp_prod_pvt: 0,
            req_cons: 0
        })
    );
}

#[test]
fn req_prod_exactly_ring_size_ahead_is_served() {
    let pages = RingPages::new(0);
    let _front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    poke_index(&pages, 0, SIZE);
    assert_eq!(back.unconsumed_requests().unwrap(), SIZE);
    let mut n = 0;
    while back.pop_request().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, SIZE);
}

#[test]
fn req_prod_ring_size_plus_one_ahead_is_rejected() {
    let pages = RingPages::new(0);
    let _front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    poke_index(&pages, 0, SIZE + 1);
    let err = RingError::RequestProdOverflow {
        req_prod: SIZE + 1,
        rsp_prod_pvt: 0,
        size: SIZE,
    };
    assert_eq!(back.unconsumed_requests(), Err(err));
    assert_eq!(back.pop_request(), Err(err));
    assert_eq!(back.final_check_for_requests(), Err(err));
    assert!(
        err.to_string().contains("129 past the last response 0"),
        "{err}"
    );
}

#[test]
fn req_prod_behind_req_cons_is_rejected() {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    for i in 0..5 {
        front.put_request(&req(i)).unwrap();
    }
    front.push_requests();
    for _ in 0..5 {
        back.pop_request().unwrap().unwrap();
    }
    poke_index(&pages, 0, 3);
    assert_eq!(
        back.pop_request(),
        Err(RingError::RequestProdBehind {
            req_prod: 3,
            req_cons: 5
        })
    );
    // Far behind (wrapped): the overflow check catches it first.
    poke_index(&pages, 0, u32::MAX);
    assert!(matches!(
        back.pop_request(),
        Err(RingError::RequestProdOverflow { .. })
    ));
}

#[test]
fn back_end_never_takes_more_requests_than_free_response_slots() {
    // A front end that never consumes responses: the back end holds at most SIZE requests in flight, and a
    // req_prod that claims more is an error, not more work.
    let pages = RingPages::new(0);
    let _front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    poke_index(&pages, 0, SIZE);
    let mut in_flight = Vec::new();
    while let Some(r) = back.pop_request().unwrap() {
        in_flight.push(r);
    }
    assert_eq!(in_flight.len(), SIZE as usize);
    assert_eq!(back.unconsumed_requests().unwrap(), 0);
    assert_eq!(
        back.pop_request().unwrap(),
        None,
        "RING_REQUEST_CONS_OVERFLOW"
    );
    // One response frees one slot: exactly one more request may come.
    back.put_response(&rsp_for(&in_flight[0])).unwrap();
    back.push_responses();
    poke_index(&pages, 0, SIZE + 1);
    assert_eq!(back.unconsumed_requests().unwrap(), 1);
    assert!(back.pop_request().unwrap().is_some());
    assert_eq!(back.pop_request().unwrap(), None);
    poke_index(&pages, 0, SIZE + 2);
    assert_eq!(
        back.pop_request(),
        Err(RingError::RequestProdOverflow {
            req_prod: SIZE + 2,
            rsp_prod_pvt: 1,
            size: SIZE
        })
    );
}

#[test]
fn a_front_end_that_never_consumes_responses_only_fills_its_own_ring() {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    let mut served = 0;
    for round in 0..3 {
        while front.put_request(&req(round)).is_ok() {}
        front.push_requests();
        while let Some(r) = back.pop_request().unwrap() {
            back.put_response(&rsp_for(&r)).unwrap();
            served += 1;
        }
        back.push_responses();
        assert!(!back.final_check_for_requests().unwrap());
    }
    assert_eq!(
        served, SIZE,
        "nothing more is served until responses are consumed"
    );
}

#[test]
fn rsp_prod_beyond_outstanding_requests_is_rejected() {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    front.put_request(&req(1)).unwrap();
    front.push_requests();
    poke_index(&pages, 8, 2);
    let err = RingError::ResponseProdOverflow {
        rsp_prod: 2,
        rsp_cons: 0,
        req_prod_pvt: 1,
    };
    assert_eq!(front.pop_response(), Err(err));
    // Ring-size + 1 ahead (RING_RESPONSE_PROD_OVERFLOW) and backwards are the same error.
    poke_index(&pages, 8, SIZE + 1);
    assert!(matches!(
        front.pop_response(),
        Err(RingError::ResponseProdOverflow { .. })
    ));
    poke_index(&pages, 8, u32::MAX);
    assert!(matches!(
        front.final_check_for_responses(),
        Err(RingError::ResponseProdOverflow { .. })
    ));
}

fn run_through(start: RingIdx, count: u32) {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    poke_index(&pages, 0, start);
    poke_index(&pages, 8, start);
    let mut front_at = FrontRing::<_, Test>::attach(&pages, start).unwrap();
    let _ = &mut front;
    let mut back = BackRing::<_, Test>::attach(&pages, start).unwrap();
    let mut next = 0u64;
    let mut done = 0u64;
    while done < u64::from(count) {
        for _ in 0..7 {
            if front_at.put_request(&req(next)).is_ok() {
                next += 1;
            }
        }
        front_at.push_requests_and_check_notify();
        while let Some(r) = back.pop_request().unwrap() {
            back.put_response(&rsp_for(&r)).unwrap();
        }
        back.push_responses_and_check_notify();
        while let Some(r) = front_at.pop_response().unwrap() {
            assert_eq!(r, rsp_for(&req(done)));
            done += 1;
        }
    }
    assert_eq!(front_at.rsp_cons(), start.wrapping_add(done as u32));
}

#[test]
fn indices_wrap_through_2_pow_31() {
    run_through((1 << 31) - 100, 1000);
}

#[test]
fn indices_wrap_through_2_pow_32() {
    run_through(u32::MAX - 100, 1000);
}

#[test]
fn garbage_event_indices_only_change_notifications() {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    for garbage in [0, u32::MAX, 0x8000_0000, 12345] {
        poke_index(&pages, 4, garbage);
        poke_index(&pages, 12, garbage);
        front.put_request(&req(1)).unwrap();
        let _ = front.push_requests_and_check_notify();
        let r = back.pop_request().unwrap().unwrap();
        back.put_response(&rsp_for(&r)).unwrap();
        let _ = back.push_responses_and_check_notify();
        assert_eq!(front.pop_response().unwrap(), Some(rsp_for(&r)));
    }
}

#[test]
fn request_changed_by_another_thread_is_copied_once() {
    // A hostile front end rewrites the slots continuously while the back end pops them. Each popped request is
    // a private copy: later writes to the slot cannot change it, and nothing panics.
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            use xen_abi::ring::RingMemory;
            let mem: &RingPages = &pages;
            let mut x = 0u8;
            while !stop.load(Ordering::Relaxed) {
                for off in (SRING_HEADER_SIZE..4096).step_by(8) {
                    // SAFETY: inside the page, volatile like the ring's own accesses.
                    unsafe { mem.as_ptr().add(off).write_volatile(x) };
                }
                x = x.wrapping_add(1);
            }
        });
        for _ in 0..200 {
            while front.put_request(&req(7)).is_ok() {}
            front.push_requests();
            while let Some(r) = back.pop_request().unwrap() {
                let copy = r;
                std::hint::black_box(&r);
                assert_eq!(copy, r);
                back.put_response(&Rsp { id: r.id, sum: 0 }).unwrap();
            }
            back.push_responses();
            while front.pop_response().unwrap().is_some() {}
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn ring_over_vm_memory_marks_written_slots_dirty() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
    let mem: GuestMemoryMmap<AtomicBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * 4096)]).unwrap();
    let page = GuestAddress(2 * 4096);
    let slice = mem.get_slice(page, 4096).unwrap();
    let mut front = FrontRing::<_, Test>::new(slice).unwrap();
    let mut back = BackRing::<_, Test>::new(mem.get_slice(page, 4096).unwrap()).unwrap();
    front.put_request(&req(5)).unwrap();
    front.push_requests();
    let r = back.pop_request().unwrap().unwrap();
    assert_eq!(r, req(5));
    back.put_response(&rsp_for(&r)).unwrap();
    back.push_responses();
    let region = mem.find_region(page).unwrap();
    assert!(
        region.bitmap().dirty_at(2 * 4096),
        "header and slots written through the ring are dirty"
    );
    assert!(!region.bitmap().dirty_at(0), "other pages stay clean");
    assert_eq!(front.pop_response().unwrap(), Some(rsp_for(&req(5))));
}

#[derive(Debug, Clone)]
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
        (1u8..40).prop_map(Op::Put),
        Just(Op::Push),
        Just(Op::PushNotify),
        (1u8..40).prop_map(Op::Serve),
        Just(Op::PushRsp),
        Just(Op::PushRspNotify),
        (1u8..40).prop_map(Op::Collect),
        Just(Op::FinalReq),
        Just(Op::FinalRsp),
    ]
}

proptest! {
    /// Any interleaving of well-behaved operations: every request is answered in order, nothing is lost or
    /// duplicated, and a side whose final check found no work is notified by the next push that brings work.
    #[test]
    fn model_every_request_answered_in_order(start in any::<u32>(), ops in proptest::collection::vec(op(), 1..200)) {
        let pages = RingPages::new(0);
        let _init = FrontRing::<_, Test>::new(&pages).unwrap();
        poke_index(&pages, 0, start);
        poke_index(&pages, 8, start);
        poke_index(&pages, 4, start.wrapping_add(1));
        poke_index(&pages, 12, start.wrapping_add(1));
        let mut front = FrontRing::<_, Test>::attach(&pages, start).unwrap();
        let mut back = BackRing::<_, Test>::attach(&pages, start).unwrap();
        let (mut sent, mut answered, mut collected) = (0u64, 0u64, 0u64);
        let (mut back_waiting, mut front_waiting) = (true, true);
        for op in ops {
            match op {
                Op::Put(n) => for _ in 0..n {
                    if front.put_request(&req(sent)).is_ok() { sent += 1; }
                },
                Op::Push => front.push_requests(),
                Op::PushNotify => {
                    let had_work_before = back.unconsumed_requests().unwrap() > 0;
                    let notify = front.push_requests_and_check_notify();
                    if back_waiting && !had_work_before && back.unconsumed_requests().unwrap() > 0 {
                        prop_assert!(notify, "a sleeping back end must be woken");
                    }
                    if notify { back_waiting = false; }
                }
                Op::Serve(n) => for _ in 0..n {
                    match back.pop_request().unwrap() {
                        Some(r) => {
                            prop_assert_eq!(r, req(answered));
                            back_waiting = false;
                            back.put_response(&rsp_for(&r)).unwrap();
                            answered += 1;
                        }
                        None => break,
                    }
                },
                Op::PushRsp => back.push_responses(),
                Op::PushRspNotify => {
                    let had = front.unconsumed_responses().unwrap() > 0;
                    let notify = back.push_responses_and_check_notify();
                    if front_waiting && !had && front.unconsumed_responses().unwrap() > 0 {
                        prop_assert!(notify, "a sleeping front end must be woken");
                    }
                    if notify { front_waiting = false; }
                }
                Op::Collect(n) => for _ in 0..n {
                    match front.pop_response().unwrap() {
                        Some(r) => {
                            prop_assert_eq!(r, rsp_for(&req(collected)));
                            collected += 1;
                            front_waiting = false;
                        }
                        None => break,
                    }
                },
                Op::FinalReq => if !back.final_check_for_requests().unwrap() { back_waiting = true; },
                Op::FinalRsp => if !front.final_check_for_responses().unwrap() { front_waiting = true; },
            }
            prop_assert!(collected <= answered && answered <= sent);
            prop_assert!(sent - collected <= u64::from(SIZE));
        }
    }
}

#[test]
fn events_that_bring_no_work_change_nothing() {
    // The back end is woken (say by an event flood) with nothing published: each wake-up finds no request,
    // re-arms the same event index, and leaves every index as it was.
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, Test>::new(&pages).unwrap();
    let mut back = BackRing::<_, Test>::new(&pages).unwrap();
    front.put_request(&req(1)).unwrap();
    front.push_requests();
    let r = back.pop_request().unwrap().unwrap();
    back.put_response(&rsp_for(&r)).unwrap();
    back.push_responses();
    let before = back.shared_indices();
    for _ in 0..100_000 {
        assert_eq!(back.pop_request().unwrap(), None);
        assert!(!back.final_check_for_requests().unwrap());
    }
    let after = back.shared_indices();
    assert_eq!(after.req_event, 2, "armed at req_cons + 1");
    assert_eq!(
        (after.req_prod, after.rsp_prod, after.rsp_event),
        (before.req_prod, before.rsp_prod, before.rsp_event)
    );
    assert_eq!((back.req_cons(), back.rsp_prod_pvt()), (1, 1));
}
