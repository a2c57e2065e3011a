//! netfront against pv-backend's netback (the workspace's real back-end) over the real xenstored, its
//! device a port of pv-backend's virtual switch; the test is a peer on another port of the switch.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blanket_xen::net::{NetConfig, NetFront};
use common::pv::{Evtchns, Grants, GrantsHandle};
use common::{SECOND, Xenstored};
use pv_backend::backend::{LocalXs, XenbusBackend, XsHandle};
use pv_backend::net::switch::{Switch, SwitchConfig};
use pv_backend::net::xenbus::{NetBack, NetBackConfig};
use pv_backend::net::{FrameMeta, NetDevice};
use xen_abi::xenbus::XenbusState;

const BE: &str = "/local/domain/0/backend/vif/1/0";
const FE: &str = "/local/domain/1/device/vif/0";
const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

fn eth(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // a local experimental EtherType
    f.extend((14..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

#[test]
fn netfront_drives_pv_backends_netback_through_its_switch() {
    let xs = Xenstored::start(300);
    xs.let_read(BE);
    for (k, v) in [
        ("frontend", FE),
        ("frontend-id", "1"),
        ("online", "1"),
        ("state", "1"),
    ] {
        xs.write(&format!("{BE}/{k}"), v);
    }
    xs.give(FE);
    xs.write(&format!("{FE}/backend"), BE);
    xs.write(&format!("{FE}/backend-id"), "0");
    xs.write(&format!("{FE}/state"), "1");
    xs.write(&format!("{FE}/mac"), "00:16:3e:00:00:01");

    let sw = Switch::new(SwitchConfig::default()).unwrap();
    let guest_port = sw.add_port();
    let mut peer = sw.add_port();
    let back = blanket_xen::emulated::BackendDomain::new(Arc::clone(&xs.xen), 0);
    let stop = Arc::new(AtomicBool::new(false));
    let grants = GrantsHandle(Arc::new(Grants {
        back: back.clone(),
        held: Default::default(),
    }));
    let evtchns = Arc::new(Evtchns {
        back,
        stop: Arc::clone(&stop),
    });
    let nb = NetBack::new(
        Arc::new(grants),
        evtchns,
        guest_port,
        NetBackConfig::default(),
    );
    let thread = {
        let (store, stop) = (Arc::clone(&xs.store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let xsh: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store, 0));
            let mut be = XenbusBackend::new(xsh, BE, nb).expect("backend");
            be.start().expect("start");
            while !stop.load(Ordering::Relaxed) {
                be.poll(Duration::from_millis(10)).expect("handshake");
            }
            pv_backend::backend::XenbusDevice::disconnect(be.device_mut());
        })
    };

    let mut xb = xs.client();
    let tx = xs.xen.alloc_pages(1).unwrap();
    let rx = xs.xen.alloc_pages(1).unwrap();
    let config = NetConfig {
        rx_buffers: 64,
        tx_buffers: 64,
        timeout_ns: 5 * SECOND,
    };
    let pool = xs.xen.alloc_pages(128).unwrap();
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
    assert!(net.info().sg && net.info().gso_tcpv4);
    assert_eq!(net.info().mac, GUEST_MAC);
    assert_eq!(net.device().state(), XenbusState::Connected);
    assert_eq!(xs.read(&format!("{BE}/state")).as_deref(), Some("4"));

    // Peer to guest: the peer's first frame is flooded (the guest's MAC is not learned yet).
    let mut buf = vec![0u8; 65536];
    for (i, len) in [60usize, 1514, 9000, 60].into_iter().enumerate() {
        let f = eth(GUEST_MAC, PEER_MAC, len, i as u8);
        peer.send(&f, &FrameMeta::default()).unwrap();
        let n = net
            .recv_wait(&mut buf)
            .unwrap()
            .expect("the frame reaches the guest");
        assert_eq!(&buf[..n], &f[..], "frame {i} of {len} bytes");
    }
    // Guest to peer, including a multi-slot frame.
    let mut pbuf = vec![0u8; peer.max_frame_len()];
    for (i, len) in [60usize, 1514, 9000, 20_000].into_iter().enumerate() {
        let f = eth(PEER_MAC, GUEST_MAC, len, 100 + i as u8);
        net.send_wait(&f).unwrap();
        let t0 = Instant::now();
        let info = loop {
            if let Some(info) = peer.recv(&mut pbuf).unwrap() {
                break info;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "frame {i} never reached the peer"
            );
            peer.wait_readable(Duration::from_millis(10)).unwrap();
        };
        assert_eq!(&pbuf[..info.len], &f[..], "frame {i} of {len} bytes");
    }
    // A burst both ways, longer than the rings.
    for i in 0..600u32 {
        let f = eth(GUEST_MAC, PEER_MAC, 64 + (i as usize * 31) % 1400, i as u8);
        peer.send(&f, &FrameMeta::default()).unwrap();
        let n = net.recv_wait(&mut buf).unwrap().expect("frame");
        assert_eq!(&buf[..n], &f[..], "burst frame {i}");
    }
    assert_eq!(net.stats().rx_dropped, 0);
    net.reap_tx().unwrap();
    // Closing: netback disconnects and unmaps the rings, so every grant ends.
    net.close(&mut xb).unwrap();
    assert_eq!(xs.read(&format!("{FE}/state")).as_deref(), Some("6"));
    assert!(matches!(
        xs.read(&format!("{BE}/state")).as_deref(),
        Some("5" | "6")
    ));
    assert_eq!(xs.xen.grant_table().granted(), 0);
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
}
