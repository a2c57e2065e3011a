//! Peers that write random bytes where they may write: the driver returns a typed error or a result,
//! never panics, never waits past its timeout, and never touches memory outside what it shares.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blanket_xen::blk::{BlkConfig, BlkFront};
use blanket_xen::emulated::EmulatedXen;
use blanket_xen::net::{NetConfig, NetFront};
use blanket_xen::platform::EventChannels;
use blanket_xen::xenbus::{XBT_NIL, XenBus};
use common::{Xenstored, blkback, netback};
use proptest::prelude::*;
use pv_backend::xenstore::ring::SharedXenstorePage;
use xen_abi::blkif::BlkifResponse;
use xen_abi::netif::NetifRxResponse;
use xen_abi::ring::RingMemory;

/// A small deterministic generator for the scribbling back-ends.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever xenstored leaves in the response ring and its indices, a request ends with a result or a
    /// typed error within the timeout.
    #[test]
    fn xenstored_scribbling_on_the_response_ring(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        rsp_prod in any::<u32>(),
        req_cons in any::<u32>(),
        start in any::<u32>(),
        header_ok in any::<bool>(),
    ) {
        let xen = EmulatedXen::new(1, 2, 1);
        let page = xen.alloc_pages(1).unwrap();
        let port = xen.alloc_unbound(0).unwrap();
        // SAFETY: the page is guest memory of `xen`, alive for the whole case; atomic access only.
        let p = unsafe { SharedXenstorePage::from_ptr(page.as_ptr()) };
        for i in [&p.req_prod, &p.rsp_cons] {
            i.store(start, Ordering::Relaxed);
        }
        let mut bytes = bytes;
        if header_ok && bytes.len() >= 16 {
            // A plausible header for request 1, so that payload handling is reached too.
            bytes[..4].copy_from_slice(&2u32.to_ne_bytes());
            bytes[4..8].copy_from_slice(&1u32.to_ne_bytes());
            let len = (bytes.len() as u32 - 16).min(u32::from(bytes[8]));
            bytes[12..16].copy_from_slice(&len.to_ne_bytes());
        }
        for (i, b) in bytes.iter().enumerate() {
            p.rsp[(start as usize + i) % 1024].store(*b, Ordering::Relaxed);
        }
        p.req_cons.store(if header_ok { start } else { req_cons }, Ordering::Relaxed);
        p.rsp_prod.store(if header_ok { start.wrapping_add(bytes.len() as u32) } else { rsp_prod }, Ordering::Release);
        let mut xb = XenBus::new(Arc::clone(&xen), page, port, 2_000_000).unwrap();
        let mut buf = [0u8; 64];
        let t0 = Instant::now();
        let _ = xb.read(XBT_NIL, b"data/x", &mut buf);
        let mut ev = [0u8; 300];
        let _ = xb.next_watch_event(&mut ev, 1_000_000);
        prop_assert!(t0.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn blkback_scribbling_on_responses() {
    let mut rng = Lcg(42);
    let opts = blkback::Opts {
        mangle: Some(Box::new(move |_, _, rsp| {
            let r = rng.next();
            Some(match r % 8 {
                0 => BlkifResponse::new(rng.next() << 20 | rng.next(), rsp.operation, rsp.status),
                1 => BlkifResponse::new(rsp.id, (rng.next() % 256) as u8, rsp.status),
                2 => BlkifResponse::new(rsp.id, rsp.operation, rng.next() as i16),
                3 => return None,
                _ => rsp,
            })
        })),
        ..blkback::Opts::default()
    };
    let xs = Xenstored::start(200);
    let mut xb = xs.client();
    let _back = blkback::TestBlkback::start(&xs, opts);
    let ring = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(64).unwrap();
    let config = BlkConfig {
        timeout_ns: 20_000_000,
        ..BlkConfig::default()
    };
    let mut blk = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/768",
        ring,
        pool,
        config,
    )
    .unwrap();
    blk.set_timeout_ns(20_000_000);
    let (mut ok, mut errors) = (0, 0);
    let t0 = Instant::now();
    for i in 0..300u64 {
        let data = [i as u8; 4096];
        match blk.write((i % 200) * 8, &data) {
            Ok(()) => ok += 1,
            Err(_) => errors += 1,
        }
        // Slots lost to requests the back-end never answered are gone for good; keep going while any
        // is left.
        if blk.in_flight() == blk.nr_slots() {
            break;
        }
    }
    assert!(ok > 0 && errors > 0, "{ok} good, {errors} refused");
    assert!(t0.elapsed() < Duration::from_secs(30));
    // Every grant still held belongs to a request still in flight (or the ring).
    assert!(xs.xen.grant_table().granted() as usize <= 1 + blk.in_flight());
}

#[test]
fn netback_scribbling_on_rx_responses() {
    let mut rng = Lcg(7);
    let opts = netback::Opts {
        rx_mangle: Some(Box::new(move |_, mut rsp: NetifRxResponse| {
            match rng.next() % 6 {
                0 => rsp.id = rng.next() as u16,
                1 => rsp.offset = rng.next() as u16,
                2 => rsp.flags = rng.next() as u16,
                3 => rsp.status = rng.next() as i16,
                _ => {}
            }
            rsp
        })),
        ..netback::Opts::default()
    };
    let xs = Xenstored::start(200);
    let mut xb = xs.client();
    let back = netback::TestNetback::start(&xs, opts);
    let tx = xs.xen.alloc_pages(1).unwrap();
    let rx = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(64).unwrap();
    let config = NetConfig {
        rx_buffers: 32,
        tx_buffers: 32,
        timeout_ns: 5_000_000,
    };
    let mut net = NetFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vif/0",
        tx,
        rx,
        pool,
        config,
    )
    .unwrap();
    net.set_timeout_ns(5_000_000);
    let mut buf = vec![0u8; 65536];
    let (mut ok, mut errors) = (0, 0);
    let t0 = Instant::now();
    for i in 0..150usize {
        back.deliver(vec![i as u8; 60 + (i * 97) % 6000]);
        loop {
            match net.recv_wait(&mut buf) {
                Ok(Some(_)) => ok += 1,
                Ok(None) => break,
                Err(_) => errors += 1,
            }
        }
    }
    assert!(ok > 0 && errors > 0, "{ok} good, {errors} refused");
    assert!(t0.elapsed() < Duration::from_secs(30));
}
