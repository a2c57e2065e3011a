//! Front-ends against the workspace's real back-ends, in one process over the emulated Xen: blkfront
//! against pv-backend's blkback (memory disk), and xenbus reads against pv-backend's xenstored. Also
//! prints the event-channel notifications per I/O (each is an exit on a real hypervisor).
//!
//! `cargo bench -p blanket-xen --bench frontends`

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use blanket_xen::blk::{BlkConfig, BlkFront};
use blanket_xen::xenbus::XBT_NIL;
use common::pv::PvBlkback;
use common::{SECOND, Xenstored};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn frontends(c: &mut Criterion) {
    let xs = Xenstored::start(600);
    let _be = PvBlkback::start(&xs, 64 << 20);
    let mut xb = xs.client();
    let ring = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(33 * 8).unwrap();
    let config = BlkConfig {
        pages_per_request: 32,
        timeout_ns: 10 * SECOND,
        ..BlkConfig::default()
    };
    let mut blk = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/51712",
        ring,
        pool,
        config,
    )
    .unwrap();
    let qd = blk.nr_slots();
    let mut buf = vec![0u8; 128 * 1024];

    let mut g = c.benchmark_group("blkfront_vs_pv_blkback");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    g.throughput(Throughput::Elements(1));
    let mut sector = 0u64;
    g.bench_function("4k_read_qd1", |b| {
        b.iter(|| {
            sector = (sector + 8) % (60 << 11);
            blk.read(sector, &mut buf[..4096]).unwrap();
        })
    });
    g.throughput(Throughput::Elements(qd as u64));
    g.bench_function(format!("4k_read_qd{qd}"), |b| {
        b.iter(|| {
            let ids: Vec<_> = (0..qd)
                .map(|i| blk.submit_read(i as u64 * 8, 4096).unwrap())
                .collect();
            for id in ids {
                blk.wait_for(id).unwrap();
                blk.take_completion(id, &mut buf).unwrap();
            }
        })
    });
    g.throughput(Throughput::Bytes(128 * 1024));
    g.bench_function("128k_write_qd1", |b| {
        b.iter(|| blk.write(4096, &buf[..128 * 1024]).unwrap())
    });
    g.finish();

    // The same requests on a second vbd with persistent grants, in the same run.
    let _be2 = PvBlkback::start_vbd(&xs, 64 << 20, 51728);
    let ring = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(33 * 8).unwrap();
    let mut pblk = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/51728",
        ring,
        pool,
        BlkConfig {
            persistent_grants: true,
            ..config
        },
    )
    .unwrap();
    assert!(pblk.uses_persistent_grants());
    let mut g = c.benchmark_group("blkfront_vs_pv_blkback_persistent");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    g.throughput(Throughput::Elements(1));
    let mut sector = 0u64;
    g.bench_function("4k_read_qd1", |b| {
        b.iter(|| {
            sector = (sector + 8) % (60 << 11);
            pblk.read(sector, &mut buf[..4096]).unwrap();
        })
    });
    g.throughput(Throughput::Bytes(128 * 1024));
    g.bench_function("128k_write_qd1", |b| {
        b.iter(|| pblk.write(4096, &buf[..128 * 1024]).unwrap())
    });
    g.finish();

    // Notifications per I/O, both directions together, at QD 1 and at full depth.
    let n = 2000;
    let before = xs.xen.notify_count();
    for i in 0..n {
        blk.read(i * 8, &mut buf[..4096]).unwrap();
    }
    let qd1 = (xs.xen.notify_count() - before) as f64 / n as f64;
    let before = xs.xen.notify_count();
    for _ in 0..n / qd as u64 {
        let ids: Vec<_> = (0..qd)
            .map(|i| blk.submit_read(i as u64 * 8, 4096).unwrap())
            .collect();
        for id in ids {
            blk.wait_for(id).unwrap();
            blk.take_completion(id, &mut buf).unwrap();
        }
    }
    let qdn = (xs.xen.notify_count() - before) as f64 / (n / qd as u64 * qd as u64) as f64;
    eprintln!(
        "blkfront vs pv-backend blkback: {qd1:.2} notifications per 4k read at QD 1, {qdn:.2} at QD {qd}"
    );

    let mut g = c.benchmark_group("xenbus_vs_pv_xenstored");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    xb.write(XBT_NIL, b"data/bench", b"value").unwrap();
    let mut v = [0u8; 64];
    g.bench_function("read_round_trip", |b| {
        b.iter(|| xb.read(XBT_NIL, b"data/bench", &mut v).unwrap())
    });
    g.bench_function("write_round_trip", |b| {
        b.iter(|| xb.write(XBT_NIL, b"data/bench", b"value").unwrap())
    });
    g.finish();
}

criterion_group!(benches, frontends);
criterion_main!(benches);
