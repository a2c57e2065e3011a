//! Frames per second through the virtual L2 switch, port to port (learned unicast), at 64 and
//! 1500 bytes and for a 64 KiB GSO super-frame; in batches of 32 from one thread, and with the
//! sender and the receiver on two threads (the receiver polls 2000 times before it sleeps). Also a broadcast to 8 ports (one shared copy per
//! frame) and the cost of a plain `Vec` copy of the same bytes, the floor a switch can reach.
//!
//! `cargo bench -p pv-backend --bench net_switch`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::net::switch::{Switch, SwitchConfig, SwitchPort};
use pv_backend::net::{
    Checksum, FrameMeta, Gso, GsoType, MAX_FRAME_LEN, NetDevice, RxInfo, TxFrame,
};

const BATCH: usize = 32;

fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0x5a; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn pair() -> (Switch, SwitchPort, SwitchPort) {
    let sw = Switch::new(SwitchConfig::default()).unwrap();
    let (mut a, mut b) = (sw.add_port(), sw.add_port());
    let mut buf = vec![0; MAX_FRAME_LEN];
    // Learn both addresses.
    a.send(
        &frame([0xff; 6], [2, 0, 0, 0, 0, 1], 64),
        &FrameMeta::default(),
    )
    .unwrap();
    b.send(
        &frame([0xff; 6], [2, 0, 0, 0, 0, 2], 64),
        &FrameMeta::default(),
    )
    .unwrap();
    while a.recv(&mut buf).unwrap().is_some() {}
    while b.recv(&mut buf).unwrap().is_some() {}
    (sw, a, b)
}

fn gso_meta() -> FrameMeta {
    FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 16,
        },
        gso: Some(Gso {
            gso_type: GsoType::TcpV4,
            size: 1448,
            hdr_len: 66,
        }),
    }
}

fn unicast(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch_unicast_one_thread");
    for (name, len, meta) in [
        ("64", 64usize, FrameMeta::default()),
        ("1500", 1500, FrameMeta::default()),
        ("gso64k", 65_000, gso_meta()),
    ] {
        let (_sw, mut a, mut b) = pair();
        let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], len);
        let batch: Vec<TxFrame<'_>> = (0..BATCH).map(|_| TxFrame { data: &f, meta }).collect();
        let mut bufs = vec![vec![0u8; MAX_FRAME_LEN]; BATCH];
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::new("switch", name), |bench| {
            bench.iter(|| {
                assert_eq!(a.send_batch(&batch).unwrap(), BATCH);
                let got: Vec<RxInfo> = b.recv_batch(&mut bufs).unwrap();
                assert_eq!(got.len(), BATCH);
            })
        });
        // The floor: copying the same bytes twice (into the queue, out to the receiver).
        let mut out = vec![0u8; MAX_FRAME_LEN];
        g.bench_function(BenchmarkId::new("two_copies", name), |bench| {
            bench.iter(|| {
                for _ in 0..BATCH {
                    let q: Vec<u8> = black_box(&f).clone();
                    out[..q.len()].copy_from_slice(&q);
                    black_box(&out);
                }
            })
        });
    }
    g.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch_unicast_two_threads");
    for len in [64usize, 1500] {
        let (_sw, mut a, mut b) = pair();
        let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], len);
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(len), |bench| {
            bench.iter_custom(|iters| {
                let received = AtomicU64::new(0);
                std::thread::scope(|s| {
                    let rx = s.spawn(|| {
                        let mut buf = vec![0u8; MAX_FRAME_LEN];
                        let mut got = 0u64;
                        let mut idle = 0u32;
                        while got < iters {
                            match b.recv(&mut buf).unwrap() {
                                Some(_) => {
                                    got += 1;
                                    idle = 0;
                                    received.store(got, Ordering::Release);
                                }
                                // Keep polling a while before sleeping, as a busy back end does.
                                None if idle < 2000 => {
                                    idle += 1;
                                    std::hint::spin_loop();
                                }
                                None => {
                                    idle = 0;
                                    b.wait_readable(Duration::from_millis(10)).unwrap();
                                }
                            }
                        }
                    });
                    let t0 = Instant::now();
                    for sent in 0..iters {
                        // Stay within the receiver's queue (1024 frames), so nothing is dropped.
                        while sent - received.load(Ordering::Acquire) >= 512 {
                            std::hint::spin_loop();
                        }
                        a.send(&f, &FrameMeta::default()).unwrap();
                    }
                    rx.join().unwrap();
                    t0.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch_broadcast_8_ports");
    let sw = Switch::new(SwitchConfig::default()).unwrap();
    let mut a = sw.add_port();
    let mut others: Vec<SwitchPort> = (0..8).map(|_| sw.add_port()).collect();
    let f = frame([0xff; 6], [2, 0, 0, 0, 0, 1], 1500);
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("1500", |bench| {
        bench.iter(|| {
            for _ in 0..BATCH {
                a.send(&f, &FrameMeta::default()).unwrap();
            }
            for p in others.iter_mut() {
                for _ in 0..BATCH {
                    p.recv(&mut buf).unwrap().unwrap();
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, unicast, two_threads, broadcast);
criterion_main!(benches);
