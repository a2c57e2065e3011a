//! Front-ends against the workspace's real back-ends, in one process over the emulated Xen: blkfront
//! against pv-backend's blkback (memory disk), netfront against pv-backend's netback (a switch port; the
//! peer drains another port), and xenbus reads against pv-backend's xenstored. Also prints the
//! event-channel notifications per I/O (each is an exit on a real hypervisor).
//!
//! `cargo bench -p blanket-xen --bench frontends`

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use blanket_xen::blk::{BlkConfig, BlkFront};
use blanket_xen::emulated::EmulatedXen;
use blanket_xen::net::{NetConfig, NetFeatures, NetFront, NetGso, NetRings, TxOffload};
use blanket_xen::xenbus::{XBT_NIL, XenBus};
use common::pv::{PvBlkback, PvNetback};
use common::{SECOND, Xenstored};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::net::{NetDevice, Offloads};
use xen_abi::netif::GsoType;
use xen_abi::ring::RawRingMemory;

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

/// Netfront with `Q` queues on vif `devid` of `xs`, asking for every feature.
fn netfront<const Q: usize>(
    xs: &Xenstored,
    xb: &mut XenBus<Arc<EmulatedXen>, RawRingMemory>,
    devid: u32,
) -> NetFront<Arc<EmulatedXen>, RawRingMemory, RawRingMemory, Q> {
    let rings = std::array::from_fn(|_| {
        (
            xs.xen.alloc_pages(1).unwrap(),
            xs.xen.alloc_pages(1).unwrap(),
        )
    });
    let config = NetConfig {
        rx_buffers: 32,
        tx_buffers: 64,
        timeout_ns: 10 * SECOND,
    };
    NetFront::connect_with(
        Arc::clone(&xs.xen),
        xb,
        format!("device/vif/{devid}").as_bytes(),
        NetRings::new(rings).with_ctrl(
            xs.xen.alloc_pages(1).unwrap(),
            xs.xen.alloc_pages(1).unwrap(),
        ),
        xs.xen.alloc_pages(96 * Q).unwrap(),
        config,
        NetFeatures::ALL,
    )
    .unwrap()
}

/// A UDP over IPv4 frame of 1514 bytes, flow `flow`.
fn udp(flow: u16) -> Vec<u8> {
    let mut f = vec![0u8; 1514];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0, 0x16, 0x3e, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&1500u16.to_be_bytes());
    f[23] = 17;
    f[26..34].copy_from_slice(&[169, 254, 0, 1, 169, 254, 0, 2]);
    f[34..36].copy_from_slice(&(5000 + flow).to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f
}

/// A TCP over IPv4 frame of `len` bytes whose checksum field holds the pseudo-header sum (its value
/// does not matter to a switch that takes partial checksums).
fn tcp(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0, 0x16, 0x3e, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[23] = 6;
    f[26..34].copy_from_slice(&[169, 254, 0, 1, 169, 254, 0, 2]);
    f[46] = 5 << 4;
    f
}

/// Sends `frames` with `offload` and waits until the peer has received `expect` frames.
fn burst<const Q: usize>(
    net: &mut NetFront<Arc<EmulatedXen>, RawRingMemory, RawRingMemory, Q>,
    peer: &mut pv_backend::net::switch::SwitchPort,
    frames: &[Vec<u8>],
    offload: TxOffload,
    expect: usize,
    buf: &mut [u8],
) {
    for f in frames {
        net.send_with_wait(f, offload).unwrap();
    }
    let mut got = 0;
    let t0 = std::time::Instant::now();
    while got < expect {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{got} of {expect} frames arrived"
        );
        match peer.recv(buf).unwrap() {
            Some(_) => got += 1,
            None => {
                peer.wait_readable(Duration::from_millis(100)).unwrap();
            }
        }
    }
}

/// The peer sends `frames`; the guest receives them all.
fn receive<const Q: usize>(
    net: &mut NetFront<Arc<EmulatedXen>, RawRingMemory, RawRingMemory, Q>,
    peer: &mut pv_backend::net::switch::SwitchPort,
    frames: &[Vec<u8>],
    buf: &mut [u8],
) {
    for f in frames {
        peer.send(f, &pv_backend::net::FrameMeta::default())
            .unwrap();
    }
    for _ in frames {
        net.recv_wait(buf)
            .unwrap()
            .expect("the frame reaches the guest");
    }
}

fn netfronts(c: &mut Criterion) {
    let xs = Xenstored::start(1200);
    let mut xb = xs.client();
    let mut be1 = PvNetback::start(&xs, 0, Offloads::ALL, 4);
    let mut be4 = PvNetback::start(&xs, 1, Offloads::ALL, 4);
    let mut q1 = netfront::<1>(&xs, &mut xb, 0);
    let mut q4 = netfront::<4>(&xs, &mut xb, 1);
    assert_eq!((q1.queues(), q4.queues()), (1, 4));
    let mut buf = vec![0u8; be1.peer.max_frame_len()];
    let flows: Vec<Vec<u8>> = (0..64).map(udp).collect();
    let plain = TxOffload::default();

    let mut g = c.benchmark_group("netfront_vs_pv_netback");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    // 64 frames of 1514 bytes in 64 flows, to the peer: one queue and four, interleaved by criterion's
    // order within the group (same run, same machine state).
    g.throughput(Throughput::Bytes(64 * 1514));
    g.bench_function("tx_64x1514_q1", |b| {
        b.iter(|| burst(&mut q1, &mut be1.peer, &flows, plain, 64, &mut buf))
    });
    g.bench_function("tx_64x1514_q4", |b| {
        b.iter(|| burst(&mut q4, &mut be4.peer, &flows, plain, 64, &mut buf))
    });
    // 64 KiB of TCP as one GSO frame (the switch takes GSO, so it arrives whole), against the same bytes
    // as 45 frames of at most 1514 bytes.
    let big = [tcp(65535)];
    let gso = TxOffload {
        gso: Some(NetGso {
            gso_type: GsoType::TcpV4,
            size: 1460,
        }),
        ..TxOffload::default()
    };
    let small: Vec<Vec<u8>> = (0..45).map(|_| tcp(1514)).collect();
    g.throughput(Throughput::Bytes(65535));
    g.bench_function("tx_64k_gso", |b| {
        b.iter(|| burst(&mut q1, &mut be1.peer, &big, gso, 1, &mut buf))
    });
    g.bench_function("tx_64k_as_45_frames", |b| {
        b.iter(|| burst(&mut q1, &mut be1.peer, &small, plain, 45, &mut buf))
    });
    // The peer sends 64 TCP frames of 1514 bytes in 64 flows to the guest, which receives them: on one
    // queue, and on four (netback steering by the hash netfront set on the control ring).
    let to_guest: Vec<Vec<u8>> = (0..64u16)
        .map(|flow| {
            let mut f = tcp(1514);
            f[..6].copy_from_slice(&[0, 0x16, 0x3e, 0, 0, 1]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            f[34..36].copy_from_slice(&(6000 + flow).to_be_bytes());
            f
        })
        .collect();
    g.throughput(Throughput::Bytes(64 * 1514));
    g.bench_function("rx_64x1514_q1", |b| {
        b.iter(|| receive(&mut q1, &mut be1.peer, &to_guest, &mut buf))
    });
    g.bench_function("rx_64x1514_q4", |b| {
        b.iter(|| receive(&mut q4, &mut be4.peer, &to_guest, &mut buf))
    });
    g.finish();
    assert!(q4.info().negotiated.ctrl_ring);
    let per_queue: Vec<u64> = (0..4)
        .map(|q| q4.queue_stats(q).unwrap().rx_packets)
        .collect();
    eprintln!("netfront with 4 queues: packets received per queue {per_queue:?}");
    q1.close(&mut xb).unwrap();
    q4.close(&mut xb).unwrap();
}

criterion_group!(benches, frontends, netfronts);
criterion_main!(benches);
