//! blkfront against pv-backend's blkback (the workspace's real back-end), over the real xenstored: the
//! emulated Xen's grant mapping and event channels are adapted to pv-backend's back-end traits, as a
//! hypervisor layer would do (`common/pv.rs`).

mod common;

use std::sync::Arc;

use blanket_xen::blk::{BlkConfig, BlkFront};
use common::pv::{BE, FE, PvBlkback};
use common::{SECOND, Xenstored};
use xen_abi::xenbus::XenbusState;

#[test]
fn blkfront_drives_pv_backends_blkback() {
    let xs = Xenstored::start(300);
    let be = PvBlkback::start(&xs, 8 << 20);
    let dev = &be.dev;
    let mut xb = xs.client();
    let ring = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(33 * 8).unwrap();
    let config = BlkConfig {
        pages_per_request: 32,
        timeout_ns: 5 * SECOND,
        ..BlkConfig::default()
    };
    let mut front = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/51712",
        ring,
        pool,
        config,
    )
    .unwrap();
    assert_eq!(front.info().sectors, (8 << 20) / 512);
    assert_eq!(front.info().max_indirect_segments, 256);
    assert!(
        front.uses_indirect(),
        "pv-backend's blkback offers indirect requests"
    );
    assert_eq!(xs.read(&format!("{BE}/state")).as_deref(), Some("4"));

    for (i, (sector, len)) in [
        (0u64, 512usize),
        (7, 4096),
        (100, 11 * 4096),
        (2048, 32 * 4096),
        (5000, 3 * 512),
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
            .collect();
        front.write(sector, &data).unwrap();
        assert_eq!(
            dev.read_bytes(sector * 512, len),
            data,
            "the disk holds what was written"
        );
        let mut back_buf = vec![0u8; len];
        front.read(sector, &mut back_buf).unwrap();
        assert_eq!(back_buf, data, "sector {sector}, {len} bytes");
    }
    if front.info().flush_cache {
        front.flush().unwrap();
    }
    // Many requests in flight at once.
    let ids: Vec<_> = (0..front.nr_slots())
        .map(|i| {
            front
                .submit_write(10_000 + i as u64 * 64, &vec![i as u8 + 1; 8192])
                .unwrap()
        })
        .collect();
    for id in ids {
        front.wait_for(id).unwrap();
        front.take_completion(id, &mut []).unwrap();
    }
    for i in 0..front.nr_slots() {
        assert_eq!(
            dev.read_bytes((10_000 + i as u64 * 64) * 512, 8192),
            vec![i as u8 + 1; 8192]
        );
    }
    // Every data grant was ended: only the ring's is left.
    assert_eq!(xs.xen.grant_table().granted(), 1);
    assert_eq!(front.device().state(), XenbusState::Connected);
    // Closing: blkback disconnects and unmaps the ring, so its grant ends too.
    front.close(&mut xb).unwrap();
    assert_eq!(xs.read(&format!("{FE}/state")).as_deref(), Some("6"));
    assert!(matches!(
        xs.read(&format!("{BE}/state")).as_deref(),
        Some("5" | "6")
    ));
    assert_eq!(xs.xen.grant_table().granted(), 0);
    drop(be);
}

#[test]
fn multi_page_ring_with_more_requests_in_flight_than_one_page_holds() {
    let xs = Xenstored::start(1600);
    let be = PvBlkback::start(&xs, 8 << 20);
    let mut xb = xs.client();
    let ring = xs.xen.alloc_pages(4).unwrap();
    let pool = xs.xen.alloc_pages(11 * 64).unwrap();
    let config = BlkConfig {
        ring_page_order: 2,
        timeout_ns: 5 * SECOND,
        ..BlkConfig::default()
    };
    let mut front = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/51712",
        ring,
        pool,
        config,
    )
    .unwrap();
    assert_eq!(front.ring_page_order(), 2);
    assert_eq!(front.ring_size(), 128);
    assert_eq!(front.nr_slots(), 64);
    assert_eq!(
        xs.read(&format!("{FE}/ring-page-order")).as_deref(),
        Some("2")
    );
    for (i, r) in front.ring_refs().iter().enumerate() {
        assert_eq!(xs.read(&format!("{FE}/ring-ref{i}")), Some(r.to_string()));
    }
    assert_eq!(xs.read(&format!("{FE}/ring-ref")), None);
    for round in 0..5u8 {
        let ids: Vec<_> = (0..64u64)
            .map(|i| {
                front
                    .submit_write(i * 16, &vec![round ^ i as u8; 4096])
                    .unwrap()
            })
            .collect();
        assert_eq!(front.in_flight(), 64, "more than a one-page ring's 32");
        for id in ids {
            front.wait_for(id).unwrap();
            front.take_completion(id, &mut []).unwrap();
        }
        for i in 0..64u64 {
            assert_eq!(
                be.dev.read_bytes(i * 16 * 512, 4096),
                vec![round ^ i as u8; 4096]
            );
        }
    }
    drop(be);
}

#[test]
fn persistent_grants_with_pv_backends_blkback() {
    let xs = Xenstored::start(600);
    let be = PvBlkback::start(&xs, 8 << 20);
    let mut xb = xs.client();
    let ring = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(33 * 8).unwrap();
    let config = BlkConfig {
        pages_per_request: 32,
        persistent_grants: true,
        timeout_ns: 5 * SECOND,
        ..BlkConfig::default()
    };
    let mut front = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/51712",
        ring,
        pool,
        config,
    )
    .unwrap();
    assert!(
        front.info().persistent,
        "pv-backend offers feature-persistent"
    );
    assert!(front.uses_persistent_grants());
    assert_eq!(
        xs.read(&format!("{FE}/feature-persistent")).as_deref(),
        Some("1")
    );
    let mut granted_after_first = 0;
    for round in 0..4u8 {
        for (i, len) in [4096usize, 11 * 4096, 32 * 4096].into_iter().enumerate() {
            let sector = 1000 * i as u64;
            let data: Vec<u8> = (0..len)
                .map(|j| (j as u8) ^ round.wrapping_mul(17))
                .collect();
            front.write(sector, &data).unwrap();
            assert_eq!(be.dev.read_bytes(sector * 512, len), data);
            let mut back = vec![0u8; len];
            front.read(sector, &mut back).unwrap();
            assert_eq!(back, data);
        }
        // The same pages are used again, with the grants they already have.
        let granted = xs.xen.grant_table().granted();
        if round == 0 {
            granted_after_first = granted;
            assert!(granted > 1);
        } else {
            assert_eq!(
                granted, granted_after_first,
                "no grant is made twice for a page"
            );
        }
    }
    front.close(&mut xb).unwrap();
    assert_eq!(
        xs.xen.grant_table().granted(),
        0,
        "close ends the persistent grants"
    );
    drop(be);
}
