//! Split against packed rings, with and without `VIRTIO_F_IN_ORDER`: virtio-net frames looped
//! back by DPDK's `dpdk-testpmd` (its vhost-user back-end, `net_vhost`, the one packed-ring
//! peer here: qemu-storage-daemon offers no packed ring).
//!
//! testpmd runs as `dpdk-testpmd --no-pci --no-huge -m 256 --vdev net_vhost0,iface=SOCK,queues=1
//! -- --forward-mode=io --port-topology=loop`: every frame the driver transmits comes back on
//! its receive queue. Each iteration sends a window of `WINDOW` frames (one `send`, so one
//! publish, each; a kick only when testpmd asks for one) and then busy-polls the receive queue
//! until all of them are back (yielding the CPU every 64 empty polls, so that a testpmd
//! waiting for this core on a loaded machine runs); notifications from testpmd are turned off
//! (`NetDriver::disable_notifications`), as a polling driver does. Figures are frames per
//! second looped (each one transmitted and received), at 64 and 1500 bytes.
//!
//! Four configurations: split or packed ring, `IN_ORDER` negotiated or not (testpmd offers it
//! on both layouts). One testpmd serves them all, one front-end at a time: the driver connects
//! again for each. At the end the bench prints, for each frame size, the median of 7
//! interleaved rounds (each running the four configurations for `BLANKET_BENCH_ROUND_MS`,
//! default 200 ms, one after the other) and the median of the ratios packed/split and
//! in-order/not taken within each round: load elsewhere on the machine hits both sides of a
//! paired ratio alike. testpmd's forwarding core busy-polls, so on a 2-core machine the bench
//! and testpmd take a core each.
//!
//! `cargo bench -p blanket-virtio --bench testpmd`; `BLANKET_BENCH_SECS` sets criterion's
//! measurement time (default 2). Skipped, with a message, when `dpdk-testpmd` is not installed
//! (Debian `dpdk-dev`) or does not start (it needs no hugepages with `--no-huge`).

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/testpmd.rs"]
mod testpmd;

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::net::{NetDriver, NetHdr, NetOptions};
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use testpmd::{Opts, StartError, Testpmd};

/// Frames in flight per iteration.
const WINDOW: usize = 32;
/// Frame sizes (without the virtio-net header and the FCS).
const SIZES: [usize; 2] = [64, 1500];
/// (name, packed ring, IN_ORDER).
const CONFIGS: [(&str, bool, bool); 4] = [
    ("split", false, false),
    ("split-in-order", false, true),
    ("packed", true, false),
    ("packed-in-order", true, true),
];
const VIRTIO_F_RING_PACKED: u32 = 34;
const VIRTIO_F_IN_ORDER: u32 = 35;

/// A connected driver and the frames it sends.
struct Looper {
    d: NetDriver<VhostUserTransport>,
    frames: Vec<Vec<u8>>,
    hdr: NetHdr,
    /// Frames that did not come back within a second (testpmd dropped them).
    lost: u64,
}

impl Looper {
    fn connect(pmd: &Testpmd, packed_ring: bool, in_order: bool, size: usize) -> Looper {
        // testpmd lets go of the previous front-end's connection on its own schedule.
        std::thread::sleep(Duration::from_millis(50));
        let mem = Arc::new(DmaMemory::new(16 << 20).expect("memory"));
        let t = VhostUserTransport::connect(&pmd.sock, mem).expect("connect to testpmd");
        let options = NetOptions {
            packed_ring,
            in_order,
            ..NetOptions::default()
        };
        let d = NetDriver::new(t, options).expect("driver");
        let f = d.features();
        assert_eq!(f & (1 << VIRTIO_F_RING_PACKED) != 0, packed_ring, "layout");
        assert_eq!(f & (1 << VIRTIO_F_IN_ORDER) != 0, in_order, "IN_ORDER");
        let mut l = Looper {
            d,
            frames: (0..WINDOW).map(|i| frame(size, i as u8)).collect(),
            hdr: NetHdr::default(),
            lost: 0,
        };
        l.warm_up(pmd);
        l.d.disable_notifications(0).expect("notifications off");
        l
    }

    /// Waits until testpmd forwards (it starts after the handshake, on its own schedule):
    /// sends a frame until one comes back, then drains late copies.
    fn warm_up(&mut self, pmd: &Testpmd) {
        let deadline = Instant::now() + Duration::from_secs(20);
        'probe: loop {
            assert!(
                Instant::now() < deadline,
                "testpmd forwarded nothing in 20 s:\n{}",
                pmd.logs()
            );
            self.d.send_on(0, &self.frames[0], &self.hdr).expect("send");
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(300) {
                if self.d.recv_on(0).expect("recv").is_some() {
                    break 'probe;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_millis(100) {
            let _ = self.d.recv_on(0).expect("recv");
        }
    }

    /// One window: `WINDOW` frames sent, then received back.
    fn window(&mut self) {
        for f in &self.frames {
            self.d.send_on(0, f, &self.hdr).expect("send");
        }
        let mut got = 0;
        let mut empty = 0u32;
        let started = Instant::now();
        while got < WINDOW {
            match self.d.recv_on(0).expect("recv") {
                Some((_, f)) => {
                    debug_assert_eq!(f.len(), self.frames[got].len());
                    std::hint::black_box(f);
                    got += 1;
                }
                None if started.elapsed() > Duration::from_secs(1) => {
                    self.lost += (WINDOW - got) as u64;
                    return;
                }
                None => {
                    // On a loaded machine testpmd may wait for this core: let it run now and
                    // then (a quiet machine returns at once).
                    empty += 1;
                    if empty % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// Frames looped per second over `time`.
    fn pps(&mut self, time: Duration) -> f64 {
        self.window();
        let started = Instant::now();
        let mut frames = 0u64;
        while started.elapsed() < time {
            self.window();
            frames += WINDOW as u64;
        }
        frames as f64 / started.elapsed().as_secs_f64()
    }
}

/// A frame of `len` bytes: broadcast destination, a locally administered source, an
/// experimental EtherType (0x88b5), a payload that differs by `seq`.
fn frame(len: usize, seq: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seq)));
    f
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let pmd = match Testpmd::start(Opts {
        memory_mb: 512,
        mbufs: 16384,
        prefix: "blanket-bench",
        ..Opts::default()
    }) {
        Ok(p) => p,
        Err(StartError::Missing(why) | StartError::Failed(why)) => {
            eprintln!("skipping the testpmd bench: {why}");
            return;
        }
    };
    let secs = std::env::var("BLANKET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut lost = 0u64;
    for size in SIZES {
        let mut g = c.benchmark_group(format!("virtio-net-testpmd/loop-{size}B"));
        g.measurement_time(Duration::from_secs(secs))
            .warm_up_time(Duration::from_millis(500))
            .sample_size(10)
            .throughput(Throughput::Elements(WINDOW as u64));
        for (name, packed, in_order) in CONFIGS {
            let mut l = Looper::connect(&pmd, packed, in_order, size);
            g.bench_function(BenchmarkId::new(name, format!("window{WINDOW}")), |b| {
                b.iter(|| l.window())
            });
            lost += l.lost;
        }
        g.finish();
    }

    let round = Duration::from_millis(
        std::env::var("BLANKET_BENCH_ROUND_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    println!(
        "\nvirtio-net through dpdk-testpmd (io forwarding, loop), {WINDOW} frames in flight: \
         median of 7 interleaved rounds, frames looped per second"
    );
    println!(
        "{:<6} {:>10} {:>15} {:>10} {:>16} {:>13} {:>14} {:>16} {:>17}",
        "size",
        "split",
        "split-in-order",
        "packed",
        "packed-in-order",
        "packed/split",
        "packed/split",
        "in-order/not",
        "in-order/not"
    );
    println!(
        "{:<6} {:>10} {:>15} {:>10} {:>16} {:>13} {:>14} {:>16} {:>17}",
        "", "", "", "", "", "", "(in order)", "(split)", "(packed)"
    );
    for size in SIZES {
        let mut each: [Vec<f64>; 4] = Default::default();
        let mut ratios: [Vec<f64>; 4] = Default::default();
        for _ in 0..7 {
            let mut r = [0.0; 4];
            for (i, (_, packed, in_order)) in CONFIGS.into_iter().enumerate() {
                let mut l = Looper::connect(&pmd, packed, in_order, size);
                r[i] = l.pps(round);
                lost += l.lost;
                each[i].push(r[i]);
            }
            ratios[0].push(r[2] / r[0]);
            ratios[1].push(r[3] / r[1]);
            ratios[2].push(r[1] / r[0]);
            ratios[3].push(r[3] / r[2]);
        }
        let m: Vec<f64> = each.iter_mut().map(|v| median(v)).collect();
        println!(
            "{:<6} {:>8.0}k {:>14.0}k {:>9.0}k {:>15.0}k {:>13.2} {:>14.2} {:>16.2} {:>17.2}",
            format!("{size}B"),
            m[0] / 1e3,
            m[1] / 1e3,
            m[2] / 1e3,
            m[3] / 1e3,
            median(&mut ratios[0]),
            median(&mut ratios[1]),
            median(&mut ratios[2]),
            median(&mut ratios[3]),
        );
    }
    if lost > 0 {
        println!("{lost} frames did not come back (testpmd dropped them)");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
