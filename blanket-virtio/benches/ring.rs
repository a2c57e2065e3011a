//! The split ring's own cost, driver side, with and without the host view of the rings
//! (`SplitQueue::set_host_view`): the I/O path reaching descriptors, available entries, indices
//! and used elements through host addresses taken once, or through `vm-memory`'s per-access
//! region lookup.
//!
//! Each iteration adds 32 chains of three segments (a virtio-blk request's header, data and
//! status; `EVENT_IDX` and indirect descriptors, or direct ones), publishes them, lets an
//! in-process device complete them (it writes a used element per chain, without reading the
//! descriptors) and pops the 32 validated completions. No other process and no system call is
//! involved, so this measures the ring code alone.
//!
//! At the end it prints, for each layout, the median of seven interleaved rounds (each running
//! both variants for `BLANKET_BENCH_ROUND_MS`, default 200 ms) in chains per second, and the
//! median of the ratios host-view / checked taken within each round.
//!
//! It also compares the split and the packed layout (both through `queue::VirtQueue`, the split
//! ring with its host view) on the same work, three ways: indirect descriptors with a device
//! that only writes used entries (the driver's cost alone), and indirect or direct chains with
//! a device that also pops each chain from the available side (walking its descriptors: the
//! in-process device model's cost is then included, the same code for both layouts, except
//! for the ring format). It prints the medians of seven interleaved rounds and the paired
//! ratio packed / split.
//!
//! Run with `cargo bench -p blanket-virtio --bench ring`.

use std::time::{Duration, Instant};

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::queue::packed::PackedQueue;
use blanket_virtio::queue::split::SplitQueue;
use blanket_virtio::queue::{QueueFeatures, Segment, VirtQueue};
use blanket_virtio::transport::inproc::DeviceQueue;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 32;

struct Ring {
    dma: DmaMemory,
    q: SplitQueue,
    dev: DeviceQueue,
    segs: [Segment; 3],
    heads: Vec<u16>,
}

impl Ring {
    fn new(indirect_desc: bool, host_view: bool) -> Ring {
        let dma = DmaMemory::new(8 << 20).unwrap();
        let features = QueueFeatures {
            event_idx: true,
            indirect_desc,
            in_order: false,
        };
        let mut q = SplitQueue::allocate(&dma, 256, features).unwrap();
        // Indirect means indirect here: short chains would otherwise be direct (DIRECT_MAX).
        q.set_direct_max(0);
        q.set_host_view(host_view);
        let dev = DeviceQueue::new(q.layout());
        let seg = |len: u32, device_writable| Segment {
            addr: dma.alloc(u64::from(len)).unwrap(),
            len,
            device_writable,
        };
        let segs = [seg(16, false), seg(4096, true), seg(1, true)];
        Ring {
            dma,
            q,
            dev,
            segs,
            heads: Vec::with_capacity(BATCH),
        }
    }

    /// One batch: add, publish, complete, pop.
    fn batch(&mut self) {
        self.heads.clear();
        for _ in 0..BATCH {
            self.heads.push(self.q.add(&self.segs).unwrap());
        }
        self.q.publish().unwrap();
        let mem = self.dma.guest_memory();
        for &h in &self.heads {
            self.dev.push_used(mem, u32::from(h), 4097).unwrap();
        }
        let mut n = 0;
        while let Some(c) = self.q.pop_used().unwrap() {
            std::hint::black_box(c);
            n += 1;
        }
        assert_eq!(n, BATCH);
    }
}

/// The same work as [`Ring`] on either layout, through [`VirtQueue`].
struct LayoutRing {
    dma: DmaMemory,
    q: Box<dyn VirtQueue>,
    dev: DeviceQueue,
    segs: [Segment; 3],
    heads: Vec<u16>,
    /// Whether the device pops each chain (walks its descriptors) before completing it.
    device_pops: bool,
}

impl LayoutRing {
    fn new(packed: bool, indirect_desc: bool, device_pops: bool) -> LayoutRing {
        let dma = DmaMemory::new(8 << 20).unwrap();
        let features = QueueFeatures {
            event_idx: true,
            indirect_desc,
            in_order: false,
        };
        let (q, dev): (Box<dyn VirtQueue>, _) = if packed {
            let q = PackedQueue::allocate(&dma, 256, features).unwrap();
            let dev = DeviceQueue::new_packed(q.layout());
            (Box::new(q), dev)
        } else {
            let mut q = SplitQueue::allocate(&dma, 256, features).unwrap();
            // As packed rings do: every chain of the "indirect" cases through a table.
            q.set_direct_max(0);
            let dev = DeviceQueue::new(q.layout());
            (Box::new(q), dev)
        };
        let seg = |len: u32, device_writable| Segment {
            addr: dma.alloc(u64::from(len)).unwrap(),
            len,
            device_writable,
        };
        let segs = [seg(16, false), seg(4096, true), seg(1, true)];
        LayoutRing {
            dma,
            q,
            dev,
            segs,
            heads: Vec::with_capacity(BATCH),
            device_pops,
        }
    }

    /// One batch: add, publish, (pop,) complete, pop the completions.
    fn batch(&mut self) {
        self.heads.clear();
        for _ in 0..BATCH {
            self.heads.push(self.q.add(&self.segs).unwrap());
        }
        self.q.publish().unwrap();
        let mem = self.dma.guest_memory();
        if self.device_pops {
            while let Some(chain) = self.dev.pop_avail(mem).unwrap() {
                self.dev
                    .push_used(mem, u32::from(chain.head), 4097)
                    .unwrap();
            }
        } else {
            for &h in &self.heads {
                self.dev.push_used(mem, u32::from(h), 4097).unwrap();
            }
        }
        let mut n = 0;
        while let Some(c) = self.q.pop_used().unwrap() {
            std::hint::black_box(c);
            n += 1;
        }
        assert_eq!(n, BATCH);
    }

    fn chains_per_second(&mut self, time: Duration) -> f64 {
        let started = Instant::now();
        let mut chains = 0u64;
        while started.elapsed() < time {
            self.batch();
            chains += BATCH as u64;
        }
        chains as f64 / started.elapsed().as_secs_f64()
    }
}

/// The split-vs-packed cases: (name, indirect descriptors, device pops the chains).
const LAYOUT_CASES: [(&str, bool, bool); 3] = [
    ("indirect", true, false),
    ("indirect+pop", true, true),
    ("direct+pop", false, true),
];

fn chains_per_second(r: &mut Ring, time: Duration) -> f64 {
    let started = Instant::now();
    let mut chains = 0u64;
    while started.elapsed() < time {
        r.batch();
        chains += BATCH as u64;
    }
    chains as f64 / started.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let layouts = [("indirect", true), ("direct", false)];
    for (name, indirect) in layouts {
        let mut g = c.benchmark_group(format!("split-ring/{name}"));
        g.throughput(Throughput::Elements(BATCH as u64));
        for (variant, host_view) in [("host-view", true), ("checked", false)] {
            let mut r = Ring::new(indirect, host_view);
            g.bench_function(variant, |b| b.iter(|| r.batch()));
        }
        g.finish();
    }
    for (name, indirect, pops) in LAYOUT_CASES {
        let mut g = c.benchmark_group(format!("ring-layout/{name}"));
        g.throughput(Throughput::Elements(BATCH as u64));
        for (variant, packed) in [("split", false), ("packed", true)] {
            let mut r = LayoutRing::new(packed, indirect, pops);
            g.bench_function(variant, |b| b.iter(|| r.batch()));
        }
        g.finish();
    }
    let round = Duration::from_millis(
        std::env::var("BLANKET_BENCH_ROUND_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    println!("\nsplit ring, driver side: median of 7 interleaved rounds");
    println!(
        "{:<9} {:>16} {:>16} {:>18}",
        "layout", "host-view", "checked", "host-view/checked"
    );
    for (name, indirect) in layouts {
        let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        let mut host = Ring::new(indirect, true);
        let mut checked = Ring::new(indirect, false);
        for _ in 0..7 {
            let x = chains_per_second(&mut host, round);
            let y = chains_per_second(&mut checked, round);
            a.push(x);
            b.push(y);
            ratio.push(x / y);
        }
        println!(
            "{:<9} {:>11.2} M/s {:>11.2} M/s {:>18.3}",
            name,
            median(&mut a) / 1e6,
            median(&mut b) / 1e6,
            median(&mut ratio)
        );
    }
    println!("\nsplit and packed rings, driver side: median of 7 interleaved rounds");
    println!(
        "{:<13} {:>12} {:>12} {:>13}",
        "case", "split", "packed", "packed/split"
    );
    for (name, indirect, pops) in LAYOUT_CASES {
        let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        let mut split = LayoutRing::new(false, indirect, pops);
        let mut packed = LayoutRing::new(true, indirect, pops);
        for _ in 0..7 {
            let x = split.chains_per_second(round);
            let y = packed.chains_per_second(round);
            a.push(x);
            b.push(y);
            ratio.push(y / x);
        }
        println!(
            "{:<13} {:>8.2} M/s {:>8.2} M/s {:>13.3}",
            name,
            median(&mut a) / 1e6,
            median(&mut b) / 1e6,
            median(&mut ratio)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
