//! netfront against a test netback (xen-abi's `BackRing` and `TxPacketParser`) over the real xenstored and
//! the emulated Xen's grant mapping; hostile back-ends get typed errors.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_xen::emulated::EmulatedXen;
use blanket_xen::front::FrontError;
use blanket_xen::net::{NetConfig, NetError, NetFeatures, NetFront, NetRings};
use blanket_xen::xenbus::XenBus;
use common::netback::{FE, Opts, TestNetback};
use common::{SECOND, Xenstored};
use xen_abi::netif::{
    ExtraFlags, NetRxFlags, NetifExtraInfo, NetifExtraInfoGso, NetifExtraInfoHash, NetifRxResponse,
    NetifTxResponse,
};
use xen_abi::ring::{RawRingMemory, RingError};
use xen_abi::xenbus::XenbusState;

type Front = NetFront<Arc<EmulatedXen>, RawRingMemory, RawRingMemory>;

struct Rig {
    xs: Xenstored,
    xb: XenBus<Arc<EmulatedXen>, RawRingMemory>,
    back: Option<TestNetback>,
}

fn rig(opts: Opts) -> Rig {
    let xs = Xenstored::start(200);
    let xb = xs.client();
    let back = TestNetback::start(&xs, opts);
    Rig {
        xs,
        xb,
        back: Some(back),
    }
}

fn connect(r: &mut Rig, config: NetConfig) -> Result<Front, NetError> {
    let tx = r.xs.xen.alloc_pages(1).unwrap();
    let rx = r.xs.xen.alloc_pages(1).unwrap();
    let pool =
        r.xs.xen
            .alloc_pages(config.rx_buffers + config.tx_buffers)
            .unwrap();
    NetFront::connect(
        Arc::clone(&r.xs.xen),
        &mut r.xb,
        b"device/vif/0",
        tx,
        rx,
        pool,
        config,
    )
}

fn quick() -> NetConfig {
    NetConfig {
        rx_buffers: 32,
        tx_buffers: 32,
        timeout_ns: SECOND,
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn back(r: &Rig) -> &TestNetback {
    r.back.as_ref().unwrap()
}

fn wait_outbox(r: &Rig, n: usize) -> Vec<Vec<u8>> {
    let t0 = Instant::now();
    while back(r).outbox.lock().unwrap().len() < n && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    back(r).outbox.lock().unwrap().clone()
}

#[test]
fn handshake_publishes_both_rings() {
    let mut r = rig(Opts::default());
    let net = connect(&mut r, quick()).unwrap();
    assert_eq!(net.info().mac, [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]);
    assert!(net.info().sg);
    let (tx_ref, rx_ref, port) = net.rings_and_port();
    assert_eq!(
        r.xs.read(&format!("{FE}/tx-ring-ref")),
        Some(tx_ref.to_string())
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/rx-ring-ref")),
        Some(rx_ref.to_string())
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/event-channel")),
        Some(port.to_string())
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/request-rx-copy")).as_deref(),
        Some("1")
    );
    assert_eq!(
        r.xs.read(&format!("{FE}/feature-rx-notify")).as_deref(),
        Some("1")
    );
    assert_eq!(r.xs.read(&format!("{FE}/feature-sg")).as_deref(), Some("1"));
    assert_eq!(r.xs.read(&format!("{FE}/state")).as_deref(), Some("4"));
    assert_eq!(net.device().state(), XenbusState::Connected);
    assert_eq!(net.max_frame(), 65535);
}

#[test]
fn four_queues_asked_of_a_backend_without_multi_queue_use_one() {
    // The test netback offers neither multi-queue-max-queues nor split event channels.
    let mut r = rig(Opts::default());
    let rings = std::array::from_fn(|_| {
        (
            r.xs.xen.alloc_pages(1).unwrap(),
            r.xs.xen.alloc_pages(1).unwrap(),
        )
    });
    let config = NetConfig {
        rx_buffers: 16,
        tx_buffers: 16,
        ..quick()
    };
    let pool = r.xs.xen.alloc_pages(4 * 32).unwrap();
    let mut net: NetFront<_, _, _, 4> = NetFront::connect_with(
        Arc::clone(&r.xs.xen),
        &mut r.xb,
        b"device/vif/0",
        NetRings::new(rings),
        pool,
        config,
        NetFeatures::ALL,
    )
    .unwrap();
    assert_eq!((net.info().max_queues, net.queues()), (1, 1));
    assert!(!net.info().negotiated.split_event_channels);
    assert_eq!(r.xs.read(&format!("{FE}/multi-queue-num-queues")), None);
    assert!(r.xs.read(&format!("{FE}/event-channel")).is_some());
    assert!(r.xs.read(&format!("{FE}/queue-0/tx-ring-ref")).is_none());
    let f = frame(1514, 4);
    net.send_wait(&f).unwrap();
    assert_eq!(wait_outbox(&r, 1), vec![f]);
}

#[test]
fn frames_sent_reach_the_backend_whole() {
    let mut r = rig(Opts::default());
    let mut net = connect(&mut r, quick()).unwrap();
    let frames = [
        frame(60, 1),
        frame(1514, 2),
        frame(4096, 3),
        frame(9000, 4),
        frame(65535, 5),
    ];
    for f in &frames {
        net.send_wait(f).unwrap();
    }
    assert_eq!(wait_outbox(&r, frames.len()), frames.to_vec());
    assert_eq!(net.stats().tx_packets, 5);
}

#[test]
fn frames_received_whole_including_multi_slot_ones() {
    let mut r = rig(Opts::default());
    let mut net = connect(&mut r, quick()).unwrap();
    let frames = [frame(60, 1), frame(1514, 2), frame(9000, 3), frame(4096, 4)];
    for f in &frames {
        back(&r).deliver(f.clone());
    }
    let mut buf = vec![0u8; 65536];
    for f in &frames {
        let n = net
            .recv_wait(&mut buf)
            .unwrap()
            .expect("a frame within 1 s");
        assert_eq!(&buf[..n], &f[..]);
    }
    assert_eq!(net.stats().rx_packets, 4);
}

#[test]
fn echo_many_frames_wraps_both_rings() {
    let mut r = rig(Opts {
        echo: true,
        ..Opts::default()
    });
    let mut net = connect(&mut r, quick()).unwrap();
    let mut buf = vec![0u8; 65536];
    for i in 0..700u32 {
        let f = frame(64 + (i as usize * 37) % 3000, i as u8);
        net.send_wait(&f).unwrap();
        let n = net.recv_wait(&mut buf).unwrap().expect("the echo");
        assert_eq!(&buf[..n], &f[..], "frame {i}");
    }
    assert_eq!(net.stats().rx_dropped, 0);
}

#[test]
fn frames_this_driver_will_not_send() {
    let mut r = rig(Opts::default());
    let mut net = connect(&mut r, quick()).unwrap();
    assert_eq!(
        net.send(&[0u8; 13]),
        Err(NetError::BadFrame {
            len: 13,
            max: 65535
        })
    );
    assert_eq!(
        net.send(&vec![0u8; 65536]),
        Err(NetError::BadFrame {
            len: 65536,
            max: 65535
        })
    );
    net.send(&[0u8; 14]).unwrap();
}

#[test]
fn without_feature_sg_frames_fit_one_page() {
    let mut r = rig(Opts {
        sg: false,
        ..Opts::default()
    });
    let mut net = connect(&mut r, quick()).unwrap();
    assert_eq!(net.max_frame(), 4096);
    assert_eq!(r.xs.read(&format!("{FE}/feature-sg")).as_deref(), Some("0"));
    assert!(matches!(
        net.send(&frame(5000, 0)),
        Err(NetError::BadFrame { .. })
    ));
    net.send(&frame(4096, 0)).unwrap();
    assert_eq!(wait_outbox(&r, 1), vec![frame(4096, 0)]);
}

#[test]
fn backend_without_rx_copy() {
    let mut r = rig(Opts {
        rx_copy: false,
        ..Opts::default()
    });
    assert_eq!(
        connect(&mut r, quick()).unwrap_err(),
        NetError::NotOffered {
            feature: "feature-rx-copy"
        }
    );
}

#[test]
fn missing_or_garbage_mac() {
    let mut r = rig(Opts {
        mac: None,
        ..Opts::default()
    });
    assert_eq!(
        connect(&mut r, quick()).unwrap_err(),
        NetError::Front(FrontError::BadNode {
            key: "mac",
            what: "missing"
        })
    );
    for bad in [
        "00:16:3e:01:02",
        "00:16:3e:01:02:0g",
        "00-16-3e-01-02-03",
        "00:16:3e:01:02:03:04",
    ] {
        let mut r = rig(Opts {
            mac: Some(bad),
            ..Opts::default()
        });
        assert!(
            matches!(
                connect(&mut r, quick()),
                Err(NetError::Front(FrontError::BadNode { key: "mac", .. }))
            ),
            "{bad}"
        );
    }
}

#[test]
fn queue_count_of_zero() {
    let mut r = rig(Opts {
        initwait_nodes: vec![("multi-queue-max-queues", "0")],
        ..Opts::default()
    });
    assert!(matches!(
        connect(&mut r, quick()),
        Err(NetError::Front(FrontError::BadNode {
            key: "multi-queue-max-queues",
            ..
        }))
    ));
}

#[test]
fn pool_too_small() {
    let mut r = rig(Opts::default());
    let tx = r.xs.xen.alloc_pages(1).unwrap();
    let rx = r.xs.xen.alloc_pages(1).unwrap();
    let pool = r.xs.xen.alloc_pages(10).unwrap();
    let e = NetFront::connect(
        Arc::clone(&r.xs.xen),
        &mut r.xb,
        b"device/vif/0",
        tx,
        rx,
        pool,
        quick(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        NetError::BadPool {
            rx: 32,
            tx: 32,
            need: 64,
            pages: 10
        }
    );
}

// ---- Hostile RX ----

fn rx_hostile(f: impl FnMut(u64, NetifRxResponse) -> NetifRxResponse + Send + 'static) -> Rig {
    rig(Opts {
        rx_mangle: Some(Box::new(f)),
        ..Opts::default()
    })
}

/// Receives until a frame or an error arrives; then checks that the next good frame still gets through.
fn expect_rx_error(r: &mut Rig, bad: Vec<u8>) -> NetError {
    let mut net = connect(r, quick()).unwrap();
    let mut buf = vec![0u8; 65536];
    back(r).deliver(bad);
    let e = net.recv_wait(&mut buf).unwrap_err();
    assert_eq!(net.stats().rx_dropped, 1);
    let good = frame(100, 9);
    back(r).deliver(good.clone());
    let n = net
        .recv_wait(&mut buf)
        .unwrap()
        .expect("the next frame gets through");
    assert_eq!(&buf[..n], &good[..]);
    e
}

#[test]
fn rx_response_with_another_requests_id() {
    let mut r = rx_hostile(|n, mut rsp| {
        if n == 0 {
            rsp.id = rsp.id.wrapping_add(1);
        }
        rsp
    });
    assert!(matches!(
        expect_rx_error(&mut r, frame(60, 0)),
        NetError::BadRxId { .. }
    ));
}

#[test]
fn rx_fragment_offset_plus_size_above_4096() {
    let mut r = rx_hostile(|n, mut rsp| {
        if n == 0 {
            rsp.offset = 4000;
        }
        rsp
    });
    assert_eq!(
        expect_rx_error(&mut r, frame(200, 0)),
        NetError::BadRxFragment {
            offset: 4000,
            size: 200
        }
    );
}

#[test]
fn rx_error_status() {
    let mut r = rx_hostile(|n, rsp| {
        if n == 0 {
            NetifRxResponse::error(rsp.id, xen_abi::netif::NetifRspStatus::Error)
        } else {
            rsp
        }
    });
    assert_eq!(
        expect_rx_error(&mut r, frame(60, 0)),
        NetError::RxStatus { status: -1 }
    );
}

#[test]
fn rx_packet_smaller_than_14_bytes() {
    let mut r = rig(Opts::default());
    assert_eq!(
        expect_rx_error(&mut r, frame(10, 0)),
        NetError::RxRunt { len: 10 }
    );
}

#[test]
fn rx_packet_larger_than_the_callers_buffer() {
    let mut r = rig(Opts::default());
    let mut net = connect(&mut r, quick()).unwrap();
    back(&r).deliver(frame(3000, 1));
    let mut small = vec![0u8; 100];
    assert_eq!(
        net.recv_wait(&mut small),
        Err(NetError::BufferTooSmall {
            len: 3000,
            available: 100
        })
    );
}

#[test]
fn rx_extra_info_of_type_0_and_5() {
    for bad_type in [0u8, 5] {
        // A two-slot packet whose first slot claims an extra, and whose second slot is that extra.
        let mut r = rx_hostile(move |n, mut rsp| match n {
            0 => {
                rsp.flags =
                    (NetRxFlags::from_bits_retain(rsp.flags) | NetRxFlags::EXTRA_INFO).bits();
                rsp
            }
            1 => {
                let mut e = NetifExtraInfo::ZERO;
                e.r#type = bad_type;
                NetifRxResponse::from_extra_info(&e)
            }
            _ => rsp,
        });
        // 4096 + 100 bytes: the second slot (the "extra") ends the packet, since extras carry no MORE.
        let e = expect_rx_error_two_slots(&mut r);
        assert_eq!(
            e,
            NetError::BadRxExtra {
                extra_type: bad_type
            }
        );
    }
}

#[test]
fn rx_gso_extra_of_size_0_or_an_unknown_gso_type() {
    for (size, gso_type) in [(0u16, 1u8), (1448, 0), (1448, 3)] {
        // As above: the first slot claims an extra, the second is a GSO extra with a bad size or type.
        let mut r = rx_hostile(move |n, mut rsp| match n {
            0 => {
                rsp.flags =
                    (NetRxFlags::from_bits_retain(rsp.flags) | NetRxFlags::EXTRA_INFO).bits();
                rsp
            }
            1 => NetifRxResponse::from_extra_info(&NetifExtraInfo::gso(
                NetifExtraInfoGso::new(size, gso_type, 0),
                ExtraFlags::empty(),
            )),
            _ => rsp,
        });
        assert_eq!(
            expect_rx_error_two_slots(&mut r),
            NetError::BadRxGso { gso_type, size }
        );
    }
}

#[test]
fn one_slot_packets_with_an_extra_each_arrive_whole() {
    // A hash extra after the only slot of each packet: the next packet starts after the extra.
    let extra = NetifExtraInfo::hash(
        NetifExtraInfoHash::new(1, 1, 0x1234_5678),
        ExtraFlags::empty(),
    );
    let mut r = rig(Opts {
        rx_extra: Some(extra),
        ..Opts::default()
    });
    let mut net = connect(&mut r, quick()).unwrap();
    let frames = [frame(60, 1), frame(100, 2), frame(5000, 3), frame(61, 4)];
    let mut buf = vec![0u8; 65536];
    for f in &frames {
        back(&r).deliver(f.clone());
    }
    for (i, f) in frames.iter().enumerate() {
        let n = net.recv_wait(&mut buf).unwrap().expect("the frame arrives");
        assert_eq!(&buf[..n], &f[..], "frame {i}");
    }
    assert_eq!(net.stats().rx_dropped, 0);
}

fn expect_rx_error_two_slots(r: &mut Rig) -> NetError {
    let mut net = connect(r, quick()).unwrap();
    let mut buf = vec![0u8; 65536];
    // The first slot has MORE (4096 bytes of 4196), so the extra is followed by nothing: make the chain end
    // by delivering a final one-slot frame that the driver reads as the last fragment.
    back(r).deliver(frame(4196, 0));
    back(r).deliver(frame(60, 1));
    let e = net.recv_wait(&mut buf).unwrap_err();
    let good = frame(100, 9);
    back(r).deliver(good.clone());
    let n = net
        .recv_wait(&mut buf)
        .unwrap()
        .expect("the next frame gets through");
    assert_eq!(&buf[..n], &good[..]);
    e
}

#[test]
fn rx_missing_final_fragment_does_not_starve_the_ring() {
    // Every slot of the first 60 one-slot frames claims more data: a chain of 60 slots, longer than the 32
    // buffers posted, that only ends with frame 60. The driver drops it and keeps its buffers cycling.
    let mut r = rx_hostile(|n, mut rsp| {
        if n < 60 {
            rsp.flags |= NetRxFlags::MORE_DATA.bits();
        }
        rsp
    });
    let mut net = connect(&mut r, quick()).unwrap();
    let mut buf = vec![0u8; 65536];
    for i in 0..61 {
        back(&r).deliver(frame(60, i));
    }
    let t0 = Instant::now();
    let err = loop {
        match net.recv(&mut buf) {
            Err(e) => break e,
            Ok(Some(_)) => panic!("no frame of the broken chain may be delivered"),
            Ok(None) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "stuck: the ring starved"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    assert_eq!(err, NetError::RxTooManySlots { max: 18 });
    let good = frame(100, 9);
    back(&r).deliver(good.clone());
    let n = net
        .recv_wait(&mut buf)
        .unwrap()
        .expect("the next frame gets through");
    assert_eq!(&buf[..n], &good[..]);
}

// ---- Hostile TX ----

fn tx_hostile(f: impl FnMut(u64, NetifTxResponse) -> NetifTxResponse + Send + 'static) -> Rig {
    rig(Opts {
        tx_mangle: Some(Box::new(f)),
        ..Opts::default()
    })
}

fn reap_error(r: &mut Rig) -> NetError {
    let mut net = connect(r, quick()).unwrap();
    net.send(&frame(60, 0)).unwrap();
    wait_outbox(r, 1);
    let t0 = Instant::now();
    loop {
        match net.reap_tx() {
            Err(e) => return e,
            Ok(_) => {
                assert!(t0.elapsed() < Duration::from_secs(5), "no error");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[test]
fn tx_response_id_not_in_flight() {
    let mut r = tx_hostile(|_, rsp| NetifTxResponse::new(rsp.id + 7, 0));
    assert!(matches!(reap_error(&mut r), NetError::BadTxId { .. }));
    // Met while sending, the hostile response is counted and the send goes on.
    let mut r = tx_hostile(|_, rsp| NetifTxResponse::new(rsp.id + 7, 0));
    let mut net = connect(&mut r, quick()).unwrap();
    net.send(&frame(60, 0)).unwrap();
    wait_outbox(&r, 1);
    let t0 = Instant::now();
    while net.stats().tx_bad_responses == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1));
        net.send(&frame(60, 1)).unwrap();
    }
}

#[test]
fn tx_response_status_null_or_unknown() {
    let mut r = tx_hostile(|_, rsp| NetifTxResponse::new(rsp.id, 1));
    assert!(matches!(
        reap_error(&mut r),
        NetError::BadTxStatus { status: 1, .. }
    ));
    let mut r = tx_hostile(|_, rsp| NetifTxResponse::new(rsp.id, -9));
    assert!(matches!(
        reap_error(&mut r),
        NetError::BadTxStatus { status: -9, .. }
    ));
}

#[test]
fn tx_rsp_prod_more_than_the_requests_in_flight() {
    let mut r = rig(Opts {
        tx_rsp_prod_jump: true,
        ..Opts::default()
    });
    assert!(matches!(
        reap_error(&mut r),
        NetError::Front(FrontError::Ring(RingError::ResponseProdOverflow { .. }))
    ));
}

#[test]
fn backend_that_never_answers_tx() {
    let mut r = rig(Opts {
        answer_tx: false,
        ..Opts::default()
    });
    let mut net = connect(
        &mut r,
        NetConfig {
            rx_buffers: 8,
            tx_buffers: 4,
            timeout_ns: 100_000_000,
        },
    )
    .unwrap();
    for i in 0..4 {
        net.send(&frame(60, i)).unwrap();
    }
    assert_eq!(
        net.send(&frame(60, 9)),
        Err(NetError::TxFull { needed: 1, free: 0 })
    );
    let t0 = Instant::now();
    assert!(matches!(
        net.send_wait(&frame(60, 9)),
        Err(NetError::TxFull { .. })
    ));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(net.tx_in_flight(), 4);
}

#[test]
fn event_flood_without_work() {
    let mut r = rig(Opts::default());
    let mut net = connect(&mut r, quick()).unwrap();
    // A guest-side flood of events on its own port is harmless; and no frame is invented.
    let mut buf = vec![0u8; 2048];
    for _ in 0..1000 {
        blanket_xen::platform::EventChannels::notify(&*r.xs.xen, net.rings_and_port().2).unwrap();
    }
    assert_eq!(net.recv(&mut buf).unwrap(), None);
    assert_eq!(net.reap_tx().unwrap(), 0);
}
