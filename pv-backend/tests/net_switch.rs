//! The virtual L2 switch: learning, flooding, ageing, bounded queues, and hostile senders.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pv_backend::net::switch::{ManualClock, Switch, SwitchConfig, SwitchPort};
use pv_backend::net::{
    Checksum, FrameMeta, Gso, GsoType, MAX_FRAME_LEN, MacAddr, NetDevice, NetError, Offloads,
    RxInfo, TxFrame,
};

const BCAST: MacAddr = [0xff; 6];

fn mac(n: u8) -> MacAddr {
    [0x02, 0, 0, 0, 0, n]
}

/// A frame from `src` to `dst` with a local-experimental ethertype and a payload made from `seed`.
fn frame(dst: MacAddr, src: MacAddr, len: usize, seed: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    let mut x = seed | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

fn recv_one(port: &mut SwitchPort) -> Option<(Vec<u8>, RxInfo)> {
    let mut buf = vec![0; MAX_FRAME_LEN];
    port.recv(&mut buf)
        .unwrap()
        .map(|info| (buf[..info.len].to_vec(), info))
}

fn recv_all(port: &mut SwitchPort) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| recv_one(port).map(|(f, _)| f)).collect()
}

fn switch() -> Switch {
    Switch::new(SwitchConfig::default()).unwrap()
}

#[test]
fn unknown_unicast_is_flooded_then_learned_unicast_goes_to_one_port() {
    let sw = switch();
    let (mut a, mut b, mut c) = (sw.add_port(), sw.add_port(), sw.add_port());
    let meta = FrameMeta::default();
    // A to B before anything is learned: flooded to B and C, not back to A.
    let f1 = frame(mac(2), mac(1), 100, 1);
    a.send(&f1, &meta).unwrap();
    assert_eq!(recv_all(&mut b), vec![f1.clone()]);
    assert_eq!(recv_all(&mut c), vec![f1.clone()]);
    assert!(recv_all(&mut a).is_empty());
    assert_eq!(sw.lookup(&mac(1)), Some(a.id()));
    // B answers A: A is known, so only A gets it; B is learned.
    let f2 = frame(mac(1), mac(2), 1514, 2);
    b.send(&f2, &meta).unwrap();
    assert_eq!(recv_all(&mut a), vec![f2]);
    assert!(
        recv_all(&mut c).is_empty(),
        "learned unicast leaked to another port"
    );
    // A to B again: unicast now.
    let f3 = frame(mac(2), mac(1), 60, 3);
    a.send(&f3, &meta).unwrap();
    assert_eq!(recv_all(&mut b), vec![f3]);
    assert!(recv_all(&mut c).is_empty());
    assert_eq!(b.stats().rx_frames, 2);
    assert_eq!(a.stats().tx_frames, 2);
}

#[test]
fn broadcast_and_multicast_are_flooded_to_every_other_port() {
    let sw = switch();
    let mut ports: Vec<_> = (0..5).map(|_| sw.add_port()).collect();
    // Learn every port's address first: group addresses must still flood.
    for (i, p) in ports.iter_mut().enumerate() {
        p.send(&frame(mac(200), mac(i as u8), 64, 0), &FrameMeta::default())
            .unwrap();
    }
    for p in ports.iter_mut() {
        recv_all(p);
    }
    let bc = frame(BCAST, mac(0), 300, 10);
    let mc = frame([0x01, 0x00, 0x5e, 0, 0, 1], mac(0), 300, 11);
    let v6mc = frame([0x33, 0x33, 0, 0, 0, 1], mac(0), 300, 12);
    for f in [&bc, &mc, &v6mc] {
        ports[0].send(f, &FrameMeta::default()).unwrap();
    }
    assert!(recv_all(&mut ports[0]).is_empty());
    for p in &mut ports[1..] {
        assert_eq!(recv_all(p), vec![bc.clone(), mc.clone(), v6mc.clone()]);
    }
}

#[test]
fn offload_metadata_passes_through_unchanged() {
    let sw = switch();
    let (mut a, mut b) = (sw.add_port(), sw.add_port());
    let f = frame(mac(2), mac(1), 9000, 5);
    let meta = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 16,
        },
        gso: Some(Gso {
            gso_type: GsoType::TcpV4,
            size: 1448,
            hdr_len: 66,
        }),
    };
    a.send(&f, &meta).unwrap();
    let (got, info) = recv_one(&mut b).unwrap();
    assert_eq!(got, f);
    assert_eq!(info.meta, meta);
    a.send(
        &f,
        &FrameMeta {
            checksum: Checksum::Validated,
            gso: None,
        },
    )
    .unwrap();
    assert_eq!(
        recv_one(&mut b).unwrap().1.meta.checksum,
        Checksum::Validated
    );
}

#[test]
fn a_frame_to_its_own_port_is_dropped() {
    let sw = switch();
    let (mut a, mut b) = (sw.add_port(), sw.add_port());
    a.send(&frame(BCAST, mac(1), 64, 0), &FrameMeta::default())
        .unwrap();
    recv_all(&mut b);
    // mac(1) lives on A: a frame A sends to it goes nowhere.
    a.send(&frame(mac(1), mac(3), 64, 0), &FrameMeta::default())
        .unwrap();
    assert!(recv_all(&mut a).is_empty());
    assert!(recv_all(&mut b).is_empty());
}

#[test]
fn an_address_that_moves_follows_to_its_new_port() {
    let sw = switch();
    let (mut a, mut b, mut c) = (sw.add_port(), sw.add_port(), sw.add_port());
    a.send(&frame(BCAST, mac(9), 64, 0), &FrameMeta::default())
        .unwrap();
    assert_eq!(sw.lookup(&mac(9)), Some(a.id()));
    b.send(&frame(BCAST, mac(9), 64, 0), &FrameMeta::default())
        .unwrap();
    assert_eq!(sw.lookup(&mac(9)), Some(b.id()));
    for p in [&mut a, &mut b, &mut c] {
        recv_all(p);
    }
    let f = frame(mac(9), mac(7), 64, 1);
    c.send(&f, &FrameMeta::default()).unwrap();
    assert_eq!(recv_all(&mut b), vec![f]);
    assert!(recv_all(&mut a).is_empty());
}

#[test]
fn learned_addresses_age_out() {
    let clock = Arc::new(ManualClock::default());
    let config = SwitchConfig {
        ageing: Duration::from_secs(300),
        ..SwitchConfig::default()
    };
    let sw = Switch::with_clock(config, clock.clone()).unwrap();
    let (mut a, mut b, mut c) = (sw.add_port(), sw.add_port(), sw.add_port());
    b.send(&frame(BCAST, mac(2), 64, 0), &FrameMeta::default())
        .unwrap();
    recv_all(&mut a);
    recv_all(&mut c);
    clock.advance(Duration::from_secs(299));
    assert_eq!(sw.lookup(&mac(2)), Some(b.id()));
    let f = frame(mac(2), mac(1), 64, 1);
    a.send(&f, &FrameMeta::default()).unwrap();
    assert!(recv_all(&mut c).is_empty(), "still learned at 299 s");
    assert_eq!(recv_all(&mut b), vec![f.clone()]);
    clock.advance(Duration::from_secs(2));
    assert_eq!(sw.lookup(&mac(2)), None, "not aged out at 301 s");
    a.send(&f, &FrameMeta::default()).unwrap();
    assert_eq!(recv_all(&mut c), vec![f.clone()], "an aged address floods");
    assert_eq!(recv_all(&mut b), vec![f]);
}

#[test]
fn a_dropped_port_is_forgotten() {
    let sw = switch();
    let (mut a, b, mut c) = (sw.add_port(), sw.add_port(), sw.add_port());
    let mut b = b;
    b.send(&frame(BCAST, mac(2), 64, 0), &FrameMeta::default())
        .unwrap();
    assert_eq!(sw.lookup(&mac(2)), Some(b.id()));
    recv_all(&mut b);
    drop(b);
    assert_eq!(sw.port_count(), 2);
    assert_eq!(sw.lookup(&mac(2)), None);
    recv_all(&mut a);
    recv_all(&mut c);
    let f = frame(mac(2), mac(1), 64, 1);
    a.send(&f, &FrameMeta::default()).unwrap();
    assert_eq!(recv_all(&mut c), vec![f]);
}

/// A port that never drains: its queue stops at its bound and drops, while the sender never
/// waits and another port receives every frame, in order and intact.
#[test]
fn a_stuck_port_does_not_block_the_others() {
    let config = SwitchConfig {
        queue_frames: 64,
        queue_bytes: 1 << 20,
        ..SwitchConfig::default()
    };
    let sw = Switch::new(config).unwrap();
    let (mut a, mut b, stuck) = (sw.add_port(), sw.add_port(), sw.add_port());
    const N: u32 = 20_000;
    let received = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut buf = vec![0; MAX_FRAME_LEN];
            let mut i = 0u32;
            let t0 = Instant::now();
            while i < N {
                assert!(t0.elapsed() < Duration::from_secs(30), "receiver starved");
                if !b.wait_readable(Duration::from_millis(50)).unwrap() {
                    continue;
                }
                while let Some(info) = b.recv(&mut buf).unwrap() {
                    assert!(
                        buf[..info.len] == frame(BCAST, mac(1), 60 + (i % 1400) as usize, i)[..],
                        "frame {i} differs"
                    );
                    i += 1;
                    received.store(u64::from(i), Ordering::Release);
                }
            }
            done.store(true, Ordering::Release);
        });
        for i in 0..N {
            // Pace the sender to the live receiver's queue (not the stuck one's).
            while u64::from(i) - received.load(Ordering::Acquire) >= 32 {
                std::thread::yield_now();
            }
            a.send(
                &frame(BCAST, mac(1), 60 + (i % 1400) as usize, i),
                &FrameMeta::default(),
            )
            .unwrap();
        }
        rx.join().unwrap();
    });
    assert!(done.load(Ordering::Acquire));
    let st = stuck.stats();
    assert_eq!(st.rx_queued, 64);
    assert_eq!(st.dropped, u64::from(N) - 64);
    assert_eq!(stuck.queued().0, 64);
    assert_eq!(b.stats().dropped, 0);
    assert_eq!(b.stats().rx_frames, u64::from(N));
    let _ = &mut a;
}

#[test]
fn a_port_queue_is_bounded_in_bytes_too() {
    let config = SwitchConfig {
        queue_frames: 1000,
        queue_bytes: MAX_FRAME_LEN * 2,
        ..SwitchConfig::default()
    };
    let sw = Switch::new(config).unwrap();
    let (mut a, b) = (sw.add_port(), sw.add_port());
    for i in 0..10 {
        a.send(&frame(BCAST, mac(1), 60_000, i), &FrameMeta::default())
            .unwrap();
    }
    let (frames, bytes) = b.queued();
    assert_eq!(frames, 2);
    assert!(bytes <= MAX_FRAME_LEN * 2);
    assert_eq!(b.stats().dropped, 8);
}

/// A guest sending from ever new source addresses cannot grow the forwarding table past its bound,
/// and the addresses learned before keep working.
#[test]
fn hostile_random_source_mac_flood_keeps_the_table_bounded() {
    let config = SwitchConfig {
        max_fdb_entries: 64,
        queue_frames: 4,
        ..SwitchConfig::default()
    };
    let sw = Switch::new(config).unwrap();
    let (mut a, mut b, mut c) = (sw.add_port(), sw.add_port(), sw.add_port());
    b.send(&frame(BCAST, mac(2), 64, 0), &FrameMeta::default())
        .unwrap();
    for i in 0..50_000u32 {
        let src = [
            0x02,
            0xee,
            (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ];
        a.send(&frame(mac(200), src, 64, i), &FrameMeta::default())
            .unwrap();
        assert!(sw.fdb_len() <= 64);
    }
    recv_all(&mut a);
    recv_all(&mut b);
    recv_all(&mut c);
    let f = frame(mac(2), mac(3), 64, 7);
    c.send(&f, &FrameMeta::default()).unwrap();
    assert_eq!(recv_all(&mut b), vec![f]);
    assert!(recv_all(&mut a).is_empty());
}

#[test]
fn hostile_frames_and_metadata_are_refused_with_typed_errors() {
    let sw = switch();
    let (mut a, mut b) = (sw.add_port(), sw.add_port());
    let ok = FrameMeta::default();
    assert!(matches!(
        a.send(&[0u8; 13], &ok),
        Err(NetError::FrameTooShort { len: 13 })
    ));
    let long = vec![0u8; MAX_FRAME_LEN + 1];
    assert!(matches!(
        a.send(&long, &ok),
        Err(NetError::FrameTooLong { len, max }) if len == MAX_FRAME_LEN + 1 && max == MAX_FRAME_LEN
    ));
    let f = frame(mac(2), mac(1), 100, 1);
    let outside = FrameMeta {
        checksum: Checksum::Partial {
            start: 90,
            offset: 9,
        },
        gso: None,
    };
    let e = a.send(&f, &outside).unwrap_err();
    assert!(matches!(e, NetError::BadMeta { .. }), "{e}");
    assert!(e.to_string().contains("start 90 + offset 9"), "{e}");
    let gso0 = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 16,
        },
        gso: Some(Gso {
            gso_type: GsoType::TcpV6,
            size: 0,
            hdr_len: 0,
        }),
    };
    assert!(matches!(a.send(&f, &gso0), Err(NetError::BadMeta { .. })));
    let gso_no_csum = FrameMeta {
        checksum: Checksum::None,
        gso: Some(Gso {
            gso_type: GsoType::TcpV4,
            size: 1000,
            hdr_len: 0,
        }),
    };
    assert!(matches!(
        a.send(&f, &gso_no_csum),
        Err(NetError::BadMeta { .. })
    ));
    assert!(recv_all(&mut b).is_empty(), "a refused frame was delivered");
    // A switch without offloads refuses partial checksums.
    let plain = Switch::new(SwitchConfig {
        offloads: Offloads::NONE,
        ..SwitchConfig::default()
    })
    .unwrap();
    let mut p = plain.add_port();
    let partial = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 6,
        },
        gso: None,
    };
    assert!(matches!(
        p.send(&f, &partial),
        Err(NetError::Unsupported { .. })
    ));
}

#[test]
fn a_receive_buffer_too_small_keeps_the_frame() {
    let sw = switch();
    let (mut a, mut b) = (sw.add_port(), sw.add_port());
    let f = frame(BCAST, mac(1), 1000, 1);
    a.send(&f, &FrameMeta::default()).unwrap();
    let mut small = [0u8; 999];
    assert!(matches!(
        b.recv(&mut small),
        Err(NetError::BufferTooSmall {
            len: 999,
            need: 1000
        })
    ));
    assert_eq!(recv_all(&mut b), vec![f]);
}

#[test]
fn batches_send_and_receive_in_order() {
    let sw = switch();
    let (mut a, mut b) = (sw.add_port(), sw.add_port());
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| frame(BCAST, mac(1), 64 + i, i as u32))
        .collect();
    let mut batch: Vec<TxFrame<'_>> = frames
        .iter()
        .map(|f| TxFrame {
            data: f,
            meta: FrameMeta::default(),
        })
        .collect();
    let short = [0u8; 10];
    batch.insert(
        30,
        TxFrame {
            data: &short,
            meta: FrameMeta::default(),
        },
    );
    // The batch stops at the bad frame.
    assert_eq!(a.send_batch(&batch).unwrap(), 30);
    assert_eq!(a.send_batch(&batch[31..]).unwrap(), 10);
    let mut bufs = vec![vec![0u8; MAX_FRAME_LEN]; 16];
    let mut got = Vec::new();
    loop {
        let infos = b.recv_batch(&mut bufs).unwrap();
        if infos.is_empty() {
            break;
        }
        for (buf, info) in bufs.iter().zip(&infos) {
            got.push(buf[..info.len].to_vec());
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn wait_readable_wakes_on_a_frame_from_another_thread() {
    let sw = switch();
    let (mut a, b) = (sw.add_port(), sw.add_port());
    assert!(!b.wait_readable(Duration::from_millis(1)).unwrap());
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            a.send(&frame(BCAST, mac(1), 64, 0), &FrameMeta::default())
                .unwrap();
        });
        assert!(b.wait_readable(Duration::from_secs(10)).unwrap());
    });
}

#[test]
fn a_configuration_that_cannot_work_is_refused() {
    for bad in [
        SwitchConfig {
            queue_frames: 0,
            ..SwitchConfig::default()
        },
        SwitchConfig {
            queue_bytes: 100,
            ..SwitchConfig::default()
        },
        SwitchConfig {
            max_fdb_entries: 0,
            ..SwitchConfig::default()
        },
    ] {
        assert!(Switch::new(bad).is_err(), "{bad:?}");
    }
}

/// A port's waker is called for every frame queued for it (netback sleeps on it), and not for
/// frames that go elsewhere or are dropped at a full queue.
#[test]
fn a_port_waker_is_called_for_each_frame_queued() {
    let sw = Switch::new(SwitchConfig {
        queue_frames: 4,
        ..SwitchConfig::default()
    })
    .unwrap();
    let (mut a, mut b, mut c) = (sw.add_port(), sw.add_port(), sw.add_port());
    let woken = Arc::new(AtomicU64::new(0));
    let w = woken.clone();
    assert!(b.set_rx_waker(Arc::new(move || {
        w.fetch_add(1, Ordering::Relaxed);
    })));
    // C is learned; A's frames to C do not wake B.
    c.send(&frame(BCAST, mac(3), 64, 0), &FrameMeta::default())
        .unwrap();
    assert_eq!(woken.load(Ordering::Relaxed), 1);
    a.send(&frame(mac(3), mac(1), 64, 1), &FrameMeta::default())
        .unwrap();
    assert_eq!(woken.load(Ordering::Relaxed), 1);
    // Broadcasts wake B until its queue is full (4 frames), then are dropped silently.
    for i in 0..10 {
        a.send(&frame(BCAST, mac(1), 64, i), &FrameMeta::default())
            .unwrap();
    }
    assert_eq!(woken.load(Ordering::Relaxed), 4);
    assert_eq!(b.stats().dropped, 7);
    recv_all(&mut c);
}
