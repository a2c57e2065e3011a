//! blkfront against a test back-end built on xen-abi's `BackRing`, over the real xenstored and the emulated
//! Xen's grant mapping; hostile back-ends get typed errors.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blanket_xen::blk::{BlkConfig, BlkError, BlkFront};
use blanket_xen::emulated::EmulatedXen;
use blanket_xen::front::FrontError;
use blanket_xen::xenbus::XenBus;
use common::blkback::{BE, FE, Opts, TestBlkback};
use common::{SECOND, Xenstored};
use xen_abi::blkif::{BlkifResponse, BlkifStatus};
use xen_abi::ring::{RawRingMemory, RingError};
use xen_abi::xenbus::XenbusState;

type Front = BlkFront<Arc<EmulatedXen>, RawRingMemory, RawRingMemory>;

struct Rig {
    xs: Xenstored,
    xb: XenBus<Arc<EmulatedXen>, RawRingMemory>,
    back: Option<TestBlkback>,
}

fn rig(opts: Opts) -> Rig {
    let xs = Xenstored::start(200);
    let xb = xs.client();
    let back = TestBlkback::start(&xs, opts);
    Rig {
        xs,
        xb,
        back: Some(back),
    }
}

fn connect(r: &mut Rig, config: BlkConfig) -> Result<Front, BlkError> {
    connect_pages(r, 1, 64, config)
}

/// Connects with a ring of `ring_pages` pages and a pool of `pool_pages`.
fn connect_pages(
    r: &mut Rig,
    ring_pages: usize,
    pool_pages: usize,
    config: BlkConfig,
) -> Result<Front, BlkError> {
    let ring = r.xs.xen.alloc_pages(ring_pages).unwrap();
    let pool = r.xs.xen.alloc_pages(pool_pages).unwrap();
    BlkFront::connect(
        Arc::clone(&r.xs.xen),
        &mut r.xb,
        b"device/vbd/768",
        ring,
        pool,
        config,
    )
}

/// A rig with `opts`, connected with [`quick`].
fn connected(opts: Opts) -> (Rig, Front) {
    let mut r = rig(opts);
    let blk = connect(&mut r, quick()).unwrap();
    (r, blk)
}

fn quick() -> BlkConfig {
    BlkConfig {
        timeout_ns: SECOND,
        ..BlkConfig::default()
    }
}

/// [`quick`] with requests of up to `pages` pages.
fn pages_per_request(pages: usize) -> BlkConfig {
    BlkConfig {
        pages_per_request: pages,
        ..quick()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn handshake_publishes_the_ring_and_reads_the_disk() {
    let (r, blk) = connected(Opts {
        discard_secure: true,
        ..Opts::default()
    });
    let info = *blk.info();
    assert_eq!((info.sectors, info.sector_size), (2048, 512));
    assert!(info.flush_cache && info.discard && info.discard_secure && !info.read_only());
    assert_eq!(
        (
            info.max_indirect_segments,
            info.max_ring_page_order,
            info.max_queues
        ),
        (0, 0, 1)
    );
    let (ring_ref, port) = blk.ring_ref_and_port();
    assert_eq!(
        r.xs.read(&format!("{FE}/ring-ref")),
        Some(ring_ref.to_string())
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/event-channel")),
        Some(port.to_string())
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/protocol")).as_deref(),
        Some("x86_64-abi")
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/feature-persistent")).as_deref(),
        Some("0")
    );
    assert_eq!(r.xs.read(&format!("{FE}/state")).as_deref(), Some("4"));
    assert_eq!(blk.device().state(), XenbusState::Connected);
    assert_eq!(blk.nr_slots(), 5, "64 pool pages / 11 pages per request");
    // The ring page is granted to the back-end, and mapped by it.
    let e = r.xs.xen.grant_table().entry(ring_ref).unwrap();
    assert_eq!(e.domid, 0);
    assert_ne!(e.flags & xen_abi::grant_table::GTF_writing, 0);
}

#[test]
fn write_then_read_back_one_page_and_eleven_pages() {
    let (r, mut blk) = connected(Opts::default());
    let data = pattern(4096, 1);
    blk.write(8, &data).unwrap();
    assert_eq!(
        &r.back.as_ref().unwrap().disk.lock().unwrap()[8 * 512..8 * 512 + 4096],
        &data[..]
    );
    let mut back = vec![0u8; 4096];
    blk.read(8, &mut back).unwrap();
    assert_eq!(back, data);
    // 11 pages, the most inline segments, and a partial last page.
    let data = pattern(11 * 4096 - 1024, 7);
    blk.write(100, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    blk.read(100, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(matches!(
        blk.write(0, &vec![0u8; 12 * 4096]),
        Err(BlkError::TooLarge { .. })
    ));
    assert_eq!(*r.back.as_ref().unwrap().ops.lock().unwrap(), [1, 0, 1, 0]);
    // Every grant of a completed request is ended: only the ring's is left.
    assert_eq!(r.xs.xen.grant_table().granted(), 1);
}

#[test]
fn indirect_requests_when_the_backend_offers_them() {
    let mut r = rig(Opts {
        max_indirect: 32,
        ..Opts::default()
    });
    let mut blk = connect(&mut r, pages_per_request(32)).unwrap();
    assert!(blk.uses_indirect());
    assert_eq!(blk.max_request_bytes(), 32 * 4096);
    let data = pattern(32 * 4096, 3);
    blk.write(256, &data).unwrap();
    assert_eq!(
        &r.back.as_ref().unwrap().disk.lock().unwrap()[256 * 512..256 * 512 + data.len()],
        &data[..]
    );
    let mut back = vec![0u8; data.len()];
    blk.read(256, &mut back).unwrap();
    assert_eq!(back, data);
    // Short requests still go inline.
    blk.write(0, &pattern(512, 9)).unwrap();
    assert_eq!(
        *r.back.as_ref().unwrap().ops.lock().unwrap(),
        [6, 6, 1],
        "indirect, indirect, write"
    );
    assert_eq!(r.xs.xen.grant_table().granted(), 1);
}

#[test]
fn without_indirect_support_requests_stay_at_eleven_segments() {
    let mut r = rig(Opts::default());
    let blk = connect(&mut r, pages_per_request(32)).unwrap();
    assert!(!blk.uses_indirect());
    assert_eq!(blk.max_request_bytes(), 11 * 4096);
}

#[test]
fn flush_and_discard() {
    let mut r = rig(Opts::default());
    let mut blk = connect(&mut r, quick()).unwrap();
    blk.write(0, &pattern(8192, 5)).unwrap();
    blk.flush().unwrap();
    blk.discard(0, 8, false).unwrap();
    let mut back = vec![0u8; 8192];
    blk.read(0, &mut back).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert_eq!(&back[4096..], &pattern(8192, 5)[4096..]);
    assert!(matches!(
        blk.discard(0, 8, true),
        Err(BlkError::NotOffered {
            feature: "discard-secure"
        })
    ));
}

#[test]
fn flush_and_discard_not_offered() {
    let (_r, mut blk) = connected(Opts {
        flush: false,
        discard: false,
        ..Opts::default()
    });
    assert_eq!(
        blk.flush(),
        Err(BlkError::NotOffered {
            feature: "feature-flush-cache"
        })
    );
    assert_eq!(
        blk.discard(0, 8, false),
        Err(BlkError::NotOffered {
            feature: "feature-discard"
        })
    );
}

#[test]
fn requests_outside_the_disk_or_misaligned() {
    let (r, mut blk) = connected(Opts {
        sectors: 64,
        sector_size: 4096,
        ..Opts::default()
    });
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        blk.read(64, &mut buf),
        Err(BlkError::BadRange { .. })
    ));
    assert!(matches!(
        blk.read(60, &mut vec![0u8; 8192]),
        Err(BlkError::BadRange { .. })
    ));
    assert!(
        matches!(blk.read(1, &mut buf), Err(BlkError::BadRange { .. })),
        "not aligned to 4096"
    );
    assert!(matches!(
        blk.read(0, &mut [0u8; 512]),
        Err(BlkError::BadRange { .. })
    ));
    assert!(matches!(
        blk.read(0, &mut []),
        Err(BlkError::BadRange { .. })
    ));
    assert!(matches!(
        blk.discard(0, u64::MAX, false),
        Err(BlkError::BadRange { .. })
    ));
    assert!(matches!(
        blk.discard(u64::MAX - 7, 8, false),
        Err(BlkError::BadRange { .. })
    ));
    blk.read(56, &mut buf).unwrap();
    assert_eq!(
        r.back.as_ref().unwrap().requests.load(Ordering::Relaxed),
        1,
        "nothing bad was sent"
    );
}

#[test]
fn read_only_disk_refuses_writes_locally() {
    let (_r, mut blk) = connected(Opts {
        info: 4,
        ..Opts::default()
    });
    assert!(blk.info().read_only());
    assert_eq!(blk.write(0, &[0u8; 512]), Err(BlkError::ReadOnly));
    assert_eq!(blk.flush(), Err(BlkError::ReadOnly));
    let mut buf = [0u8; 512];
    blk.read(0, &mut buf).unwrap();
}

#[test]
fn many_requests_in_flight_then_completed_in_any_order() {
    let (_r, mut blk) = connected(Opts::default());
    for round in 0..20u8 {
        let mut ids = Vec::new();
        for i in 0..blk.nr_slots() {
            ids.push(
                blk.submit_write((i * 16) as u64, &pattern(4096, round + i as u8))
                    .unwrap(),
            );
        }
        assert!(matches!(blk.submit_flush(), Err(BlkError::Busy { .. })));
        for id in ids.iter().rev() {
            blk.wait_for(*id).unwrap();
            let c = blk.take_completion(*id, &mut []).unwrap();
            assert_eq!(c.status, BlkifStatus::Okay);
        }
        let mut ids = Vec::new();
        for i in 0..blk.nr_slots() {
            ids.push(blk.submit_read((i * 16) as u64, 4096).unwrap());
        }
        for (i, id) in ids.iter().enumerate() {
            blk.wait_for(*id).unwrap();
            let mut buf = vec![0u8; 4096];
            let c = blk.take_completion(*id, &mut buf).unwrap();
            assert_eq!(c.bytes, 4096);
            assert_eq!(buf, pattern(4096, round + i as u8));
        }
        // A completion is taken once.
        assert!(matches!(
            blk.take_completion(ids[0], &mut []),
            Err(BlkError::NotCompleted { .. })
        ));
    }
    assert_eq!(blk.in_flight(), 0);
}

// ---- Hostile back-ends ----

fn mangled(
    f: impl FnMut(u64, &xen_abi::blkif::BlkifRequest, BlkifResponse) -> Option<BlkifResponse>
    + Send
    + 'static,
) -> Opts {
    Opts {
        mangle: Some(Box::new(f)),
        ..Opts::default()
    }
}

#[test]
fn response_id_out_of_range() {
    let (_r, mut blk) = connected(mangled(|_, _, rsp| {
        Some(BlkifResponse::new(rsp.id | 0x7fff, rsp.operation, 0))
    }));
    assert!(matches!(
        blk.write(0, &[1u8; 512]),
        Err(BlkError::BadId { slots: 5, .. })
    ));
    assert_eq!(blk.in_flight(), 1, "the real request is still in flight");
}

#[test]
fn duplicate_completion_of_one_request() {
    // The response to the second request carries the first one's id again.
    let mut first = 0u64;
    let (_r, mut blk) = connected(mangled(move |n, req, rsp| {
        if n == 0 {
            first = req.id;
            Some(rsp)
        } else {
            Some(BlkifResponse::new(first, rsp.operation, 0))
        }
    }));
    let a = blk.submit_write(0, &[1u8; 512]).unwrap();
    blk.wait_for(a).unwrap();
    let b = blk.submit_write(8, &[2u8; 512]).unwrap();
    assert_eq!(blk.wait_for(b), Err(BlkError::NotOutstanding { id: a.0 }));
    // b is still in flight, a's completion is intact.
    assert!(!blk.is_completed(b));
    assert_eq!(blk.in_flight(), 1);
    assert_eq!(
        blk.take_completion(a, &mut []).unwrap().status,
        BlkifStatus::Okay
    );
}

#[test]
fn response_for_a_request_not_in_flight() {
    // Every request is answered twice: the second copy (a stale id) must be refused.
    let mut prev: Option<BlkifResponse> = None;
    let (_r, mut blk) = connected(mangled(move |_, _, rsp| {
        // Answer request n with the response of request n-1 (then its own id is never answered).
        let out = prev.unwrap_or(rsp);
        prev = Some(rsp);
        Some(out)
    }));
    blk.write(0, &[1u8; 512]).unwrap();
    let id = blk.submit_write(8, &[2u8; 512]).unwrap();
    // The back-end answers the first request's id again.
    let err = blk.wait_for(id).unwrap_err();
    assert!(matches!(err, BlkError::NotOutstanding { .. }), "{err}");
    assert!(!blk.is_completed(id));
}

#[test]
fn response_with_an_unknown_status() {
    let (r, mut blk) = connected(mangled(|_, _, rsp| {
        Some(BlkifResponse::new(rsp.id, rsp.operation, 5))
    }));
    let id = blk.submit_write(0, &[1u8; 512]).unwrap();
    let err = blk.wait_for(id).unwrap_err();
    assert!(matches!(err, BlkError::UnknownStatus { status: 5, .. }));
    // The request is completed as failed, its grants ended.
    assert!(blk.is_completed(id));
    assert_eq!(
        blk.take_completion(id, &mut []).unwrap().status,
        BlkifStatus::Error
    );
    assert_eq!(r.xs.xen.grant_table().granted(), 1);
}

#[test]
fn response_with_the_wrong_operation() {
    let (_r, mut blk) = connected(mangled(|_, _, rsp| Some(BlkifResponse::new(rsp.id, 3, 0))));
    assert!(matches!(
        blk.write(0, &[1u8; 512]),
        Err(BlkError::WrongOperation {
            want: 1,
            got: 3,
            ..
        })
    ));
}

#[test]
fn error_and_eopnotsupp_statuses() {
    let (_r, mut blk) = connected(mangled(|n, _, rsp| {
        Some(BlkifResponse::new(
            rsp.id,
            rsp.operation,
            if n == 0 { -1 } else { -2 },
        ))
    }));
    assert_eq!(blk.write(0, &[1u8; 512]), Err(BlkError::IoError));
    assert_eq!(blk.flush(), Err(BlkError::NotSupported));
}

#[test]
fn rsp_prod_more_than_the_outstanding_requests() {
    let (_r, mut blk) = connected(Opts {
        rsp_prod_jump: true,
        ..Opts::default()
    });
    let err = blk.write(0, &[1u8; 512]).unwrap_err();
    assert!(
        matches!(
            err,
            BlkError::Front(FrontError::Ring(RingError::ResponseProdOverflow { .. }))
        ),
        "{err}"
    );
    assert_eq!(blk.write(0, &[1u8; 512]), Err(BlkError::Stopped));
    assert_eq!(blk.process(), Err(BlkError::Stopped));
}

#[test]
fn req_event_set_to_garbage() {
    // The back-end's event index decides only whether we notify; a polling back-end still serves us, and
    // nothing in the front-end trusts the value.
    let (_r, mut blk) = connected(Opts {
        garbage_req_event: true,
        ..Opts::default()
    });
    for i in 0..50u64 {
        let data = pattern(4096, i as u8);
        blk.write(i * 8, &data).unwrap();
        let mut back = vec![0u8; 4096];
        blk.read(i * 8, &mut back).unwrap();
        assert_eq!(back, data);
    }
}

#[test]
fn backend_that_never_responds() {
    let mut r = rig(mangled(|_, _, _| None));
    let mut blk = connect(
        &mut r,
        BlkConfig {
            timeout_ns: 200_000_000,
            ..BlkConfig::default()
        },
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(
        blk.write(0, &[1u8; 512]),
        Err(BlkError::Timeout {
            timeout_ns: 200_000_000
        })
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(3));
    // The request stays in flight, its page still granted: nothing is reused under the back-end.
    assert_eq!(blk.in_flight(), 1);
    assert_eq!(r.xs.xen.grant_table().granted(), 2);
}

#[test]
fn backend_that_keeps_a_grant_mapped_after_answering() {
    let mut r = rig(Opts {
        hold_grants: true,
        ..Opts::default()
    });
    let mut blk = connect(&mut r, quick()).unwrap();
    let err = blk.write(0, &[1u8; 4096]).unwrap_err();
    assert!(matches!(err, BlkError::GrantStillMapped { .. }), "{err}");
    assert_eq!(blk.retry_quarantined(), 0, "still mapped");
    assert_eq!(r.xs.xen.grant_table().granted(), 2);
    r.back.as_ref().unwrap().held.lock().unwrap().clear();
    assert_eq!(blk.retry_quarantined(), 1);
    assert_eq!(r.xs.xen.grant_table().granted(), 1);
}

#[test]
fn event_flood_without_responses() {
    let (r, mut blk) = connected(Opts::default());
    let (back, local) = r.back.as_ref().unwrap().local_port();
    for _ in 0..1000 {
        back.notify(local).unwrap();
    }
    assert_eq!(blk.process().unwrap(), 0);
    blk.write(0, &[1u8; 512]).unwrap();
}

#[test]
fn close_after_the_backend_closed() {
    let (mut r, blk) = connected(Opts::default());
    let (ring_ref, _) = blk.ring_ref_and_port();
    r.back.take().unwrap().finish().unwrap();
    r.xs.write(&format!("{BE}/state"), "6");
    // The test back-end dropped its mapping of the ring when it stopped.
    blk.close(&mut r.xb).unwrap();
    assert_eq!(r.xs.read(&format!("{FE}/state")).as_deref(), Some("6"));
    assert_eq!(r.xs.xen.grant_table().entry(ring_ref).unwrap().flags, 0);
}

// ---- Hostile handshakes ----

fn handshake_error(opts: Opts) -> BlkError {
    let mut r = rig(opts);
    connect(&mut r, quick()).unwrap_err()
}

#[test]
fn backend_connected_before_the_ring_is_published() {
    let e = handshake_error(Opts {
        first_state: Some("4"),
        ..Opts::default()
    });
    assert_eq!(
        e,
        BlkError::Front(FrontError::BackendState {
            state: XenbusState::Connected,
            front: XenbusState::Initialising
        })
    );
}

#[test]
fn backend_closed_during_the_handshake() {
    let e = handshake_error(Opts {
        first_state: Some("6"),
        ..Opts::default()
    });
    assert!(matches!(
        e,
        BlkError::Front(FrontError::BackendState {
            state: XenbusState::Closed,
            ..
        })
    ));
}

#[test]
fn backend_that_never_leaves_initialising() {
    let e = handshake_error(Opts {
        first_state: Some("1"),
        ..Opts::default()
    });
    assert!(
        matches!(
            e,
            BlkError::Front(FrontError::XenBus(
                blanket_xen::xenbus::XenBusError::BackendTimeout { .. }
            ))
        ),
        "{e}"
    );
}

/// The node a handshake with `opts` refuses, and what it says is wrong with it.
fn bad_node(opts: Opts) -> (&'static str, &'static str) {
    match handshake_error(opts) {
        BlkError::Front(FrontError::BadNode { key, what }) => (key, what),
        e => panic!("{e}: not a bad node"),
    }
}

/// Opts with `key` = `value` written when the back-end connects.
fn connected_node(key: &'static str, value: &'static str) -> Opts {
    Opts {
        connected_nodes: vec![(key, value)],
        ..Opts::default()
    }
}

/// Opts with `key` = `value` written at the back-end's InitWait.
fn initwait_node(key: &'static str, value: &'static str) -> Opts {
    Opts {
        initwait_nodes: vec![(key, value)],
        ..Opts::default()
    }
}

#[test]
fn missing_sectors_node() {
    let opts = Opts {
        remove_nodes: vec!["sectors"],
        ..Opts::default()
    };
    assert_eq!(bad_node(opts), ("sectors", "missing"));
}

#[test]
fn non_numeric_sectors_node() {
    assert_eq!(bad_node(connected_node("sectors", "lots")).0, "sectors");
}

#[test]
fn sector_size_not_a_power_of_two() {
    for size in ["1000", "99999999999"] {
        assert_eq!(
            bad_node(connected_node("sector-size", size)).0,
            "sector-size",
            "{size}"
        );
    }
}

#[test]
fn non_numeric_feature_nodes() {
    assert_eq!(
        bad_node(connected_node("feature-flush-cache", "yes")).0,
        "feature-flush-cache"
    );
    assert_eq!(
        bad_node(initwait_node("max-ring-page-order", "x")).0,
        "max-ring-page-order"
    );
}

#[test]
fn queue_count_of_zero() {
    assert_eq!(
        bad_node(initwait_node("multi-queue-max-queues", "0")),
        ("multi-queue-max-queues", "0 (at least one queue is needed)")
    );
}

#[test]
fn huge_ring_page_order_and_queue_count_are_read_but_not_used() {
    let mut r = rig(Opts {
        initwait_nodes: vec![
            ("max-ring-page-order", "200"),
            ("multi-queue-max-queues", "4000000"),
        ],
        ..Opts::default()
    });
    let mut blk = connect(&mut r, quick()).unwrap();
    assert_eq!(
        (blk.info().max_ring_page_order, blk.info().max_queues),
        (200, 4_000_000)
    );
    blk.write(0, &[1u8; 512]).unwrap();
}

#[test]
fn max_indirect_segments_above_what_the_pool_allows() {
    let mut r = rig(Opts {
        max_indirect: 4096,
        ..Opts::default()
    });
    let mut blk = connect(&mut r, pages_per_request(20)).unwrap();
    assert_eq!(blk.max_request_bytes(), 20 * 4096);
    let data = pattern(20 * 4096, 2);
    blk.write(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    blk.read(0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn ring_page_order_is_lowered_to_what_the_backend_offers() {
    // The test back-end offers max-ring-page-order 0.
    let mut r = rig(Opts::default());
    let config = BlkConfig {
        ring_page_order: 2,
        ..quick()
    };
    let mut blk = connect_pages(&mut r, 4, 64, config).unwrap();
    assert_eq!((blk.ring_page_order(), blk.ring_size()), (0, 32));
    assert_eq!(r.xs.read(&format!("{FE}/ring-page-order")), None);
    blk.write(0, &[7u8; 512]).unwrap();
}

#[test]
fn persistent_grants_asked_for_but_not_offered() {
    let mut r = rig(Opts::default());
    let config = BlkConfig {
        persistent_grants: true,
        ..quick()
    };
    let mut blk = connect(&mut r, config).unwrap();
    assert_eq!(
        r.xs.read(&format!("{FE}/feature-persistent")).as_deref(),
        Some("1")
    );
    assert!(!blk.info().persistent && !blk.uses_persistent_grants());
    blk.write(0, &[1u8; 4096]).unwrap();
    assert_eq!(
        r.xs.xen.grant_table().granted(),
        1,
        "every grant ended with its request"
    );
}

#[test]
fn ring_memory_too_small_for_the_order() {
    let mut r = rig(Opts::default());
    let config = BlkConfig {
        ring_page_order: 2,
        ..quick()
    };
    let e = connect_pages(&mut r, 2, 64, config).unwrap_err();
    assert_eq!(
        e,
        BlkError::BadRingMemory {
            len: 8192,
            order: 2
        }
    );
    let config = BlkConfig {
        ring_page_order: 5,
        ..quick()
    };
    let e = connect_pages(&mut r, 1, 64, config).unwrap_err();
    assert!(matches!(e, BlkError::BadRingMemory { order: 5, .. }));
}

#[test]
fn pool_too_small_for_one_request() {
    let mut r = rig(Opts::default());
    let e = connect_pages(&mut r, 1, 2, quick()).unwrap_err();
    assert_eq!(
        e,
        BlkError::PoolTooSmall {
            pages: 2,
            per_request: 11
        }
    );
    // The front-end closed instead of leaving the back-end waiting.
    assert_eq!(r.xs.read(&format!("{FE}/state")).as_deref(), Some("5"));
    assert_eq!(
        r.xs.xen.grant_table().granted(),
        1,
        "only the ring, still mapped by the back-end"
    );
}
