//! pv-backend's `NetDevice` over this crate's virtio-net driver, against DPDK's `dpdk-testpmd`
//! (`net_vhost` port, `io` forwarding, loop topology: what is sent comes back). Frames sent
//! through the `NetDevice` come back byte-identical and in order; a partial checksum sent as
//! metadata comes back partial with the same offsets or completed and right; a dead testpmd is
//! an error, not a hang. Skipped, with a message, when `dpdk-testpmd` is missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/testpmd.rs"]
mod testpmd;

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::net::{NetDriver, NetOptions};
use blanket_virtio::pv_backend::VirtioNet;
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use pv_backend::net::{Checksum, FrameMeta, NetDevice, NetError, TxFrame};
use testpmd::{Opts, StartError, Testpmd, warm_up};

/// Starts testpmd (`io` forwarding, one pair), or `None` with a message when it is not
/// installed.
fn start_pmd() -> Option<Testpmd> {
    match Testpmd::start(Opts {
        prefix: "bridge",
        ..Opts::default()
    }) {
        Ok(t) => Some(t),
        Err(StartError::Missing(e)) => {
            eprintln!("skipping: {e}");
            None
        }
        Err(StartError::Failed(e)) => panic!("{e}"),
    }
}

fn device(t: &Testpmd, offloads: bool) -> VirtioNet<VhostUserTransport> {
    device_with(t, offloads, None)
}

/// [`device`], with the driver's `NetOptions::reconnect`.
fn device_with(
    t: &Testpmd,
    offloads: bool,
    reconnect: Option<Duration>,
) -> VirtioNet<VhostUserTransport> {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let tr = VhostUserTransport::connect(&t.sock, mem).unwrap();
    let mut d = NetDriver::new(
        tr,
        NetOptions {
            offloads,
            timeout: Duration::from_millis(10),
            reconnect,
            ..NetOptions::default()
        },
    )
    .unwrap();
    warm_up(&mut d, 1);
    VirtioNet::new(d)
}

/// Broadcast, a local source, EtherType 0x88b5, a payload different for every `seq`.
fn frame(len: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seq) as u8));
    f
}

/// Receives one frame, waiting up to 5 s.
fn recv_one(dev: &mut VirtioNet<VhostUserTransport>, buf: &mut [u8]) -> (Vec<u8>, FrameMeta) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(info) = dev.recv(buf).unwrap() {
            return (buf[..info.len].to_vec(), info.meta);
        }
        assert!(Instant::now() < end, "no frame came back within 5 s");
        dev.wait_readable(Duration::from_millis(100)).unwrap();
    }
}

#[test]
fn frames_through_the_net_device_come_back_byte_identical() {
    let Some(t) = start_pmd() else { return };
    let mut dev = device(&t, false);
    assert!(dev.max_frame_len() >= 1514);
    let mut buf = vec![0u8; dev.max_frame_len()];
    // One at a time, sizes 60 to 1514.
    for (seq, len) in (60..=1514).step_by(97).enumerate() {
        let f = frame(len, seq as u32);
        dev.send(&f, &FrameMeta::default()).unwrap();
        let (back, meta) = recv_one(&mut dev, &mut buf);
        assert_eq!(back, f, "frame {seq} of {len} bytes came back identical");
        assert_eq!(meta.gso, None);
    }
    // Bursts of 16 through send_batch, in order.
    for burst in 0..10u32 {
        let frames: Vec<Vec<u8>> = (0..16)
            .map(|i| frame(64 + 50 * i, burst * 100 + i as u32))
            .collect();
        let tx: Vec<TxFrame<'_>> = frames
            .iter()
            .map(|f| TxFrame {
                data: f,
                meta: FrameMeta::default(),
            })
            .collect();
        let mut sent = 0;
        while sent < tx.len() {
            match dev.send_batch(&tx[sent..]) {
                Ok(n) => sent += n,
                Err(NetError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("send_batch: {e}"),
            }
        }
        for f in &frames {
            let (back, _) = recv_one(&mut dev, &mut buf);
            assert_eq!(&back, f, "burst {burst} in order");
        }
    }
    // A buffer too small keeps the frame for the next call.
    let f = frame(1000, 7777);
    dev.send(&f, &FrameMeta::default()).unwrap();
    let mut small = [0u8; 100];
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match dev.recv(&mut small) {
            Err(NetError::BufferTooSmall {
                len: 100,
                need: 1000,
            }) => break,
            Ok(None) => {
                assert!(Instant::now() < end, "the frame did not come back");
                dev.wait_readable(Duration::from_millis(100)).unwrap();
            }
            other => panic!("expected BufferTooSmall, got {other:?}"),
        }
    }
    assert_eq!(recv_one(&mut dev, &mut buf).0, f);
}

/// IPv4/UDP with the checksum field holding the pseudo-header sum (a partial checksum).
fn udp_partial(payload: usize) -> (Vec<u8>, u16, u16) {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 9, 0x08, 0x00]);
    let total = 20 + 8 + payload;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&[169, 254, 0, 1, 169, 254, 0, 2]);
    let sum = |b: &[u8], init: u32| {
        let mut s = init;
        for c in b.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    };
    let ipsum = !(sum(&ip, 0) as u16);
    ip[10..12].copy_from_slice(&ipsum.to_be_bytes());
    f.extend_from_slice(&ip);
    let ulen = (8 + payload) as u16;
    let pseudo = sum(&[169, 254, 0, 1, 169, 254, 0, 2, 0, 17], u32::from(ulen));
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x3a]);
    f.extend_from_slice(&ulen.to_be_bytes());
    f.extend_from_slice(&(pseudo as u16).to_be_bytes());
    f.extend((0..payload).map(|i| i as u8));
    (f, 34, 6)
}

#[test]
fn a_partial_checksum_as_metadata_comes_back_partial_or_right() {
    let Some(t) = start_pmd() else { return };
    let mut dev = device(&t, true);
    if !dev.offloads().csum {
        eprintln!("skipping: testpmd did not offer VIRTIO_NET_F_CSUM");
        return;
    }
    let (f, start, offset) = udp_partial(200);
    let meta = FrameMeta {
        checksum: Checksum::Partial { start, offset },
        gso: None,
    };
    dev.send(&f, &meta).unwrap();
    let mut buf = vec![0u8; dev.max_frame_len()];
    let (back, m) = recv_one(&mut dev, &mut buf);
    assert_eq!(back.len(), f.len());
    match m.checksum {
        Checksum::Partial {
            start: s,
            offset: o,
        } => {
            assert_eq!((s, o), (start, offset));
            assert_eq!(back, f);
        }
        _ => {
            // Completed: the UDP checksum over pseudo-header and datagram must verify (sum 0xffff).
            let udp = &back[34..];
            let mut s: u32 = u32::from(u16::from_be_bytes([0, 17])) + udp.len() as u32;
            for c in [169u8, 254, 0, 1, 169, 254, 0, 2]
                .chunks(2)
                .chain(udp.chunks(2))
            {
                s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            assert_eq!(s, 0xffff, "completed UDP checksum verifies");
            assert_eq!(back[..40], f[..40], "headers unchanged");
            assert_eq!(back[42..], f[42..], "payload unchanged");
        }
    }
    // Metadata that does not fit the frame is refused before it reaches the device.
    let bad = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 5000,
        },
        gso: None,
    };
    assert!(matches!(dev.send(&f, &bad), Err(NetError::BadMeta { .. })));
    assert!(matches!(
        dev.send(&f[..10], &FrameMeta::default()),
        Err(NetError::FrameTooShort { len: 10 })
    ));
}

#[test]
fn a_killed_testpmd_is_an_error_not_a_hang() {
    let Some(mut t) = start_pmd() else {
        return;
    };
    let dev = device(&t, false);
    t.kill();
    let start = Instant::now();
    let r = dev.wait_readable(Duration::from_secs(2));
    assert!(
        matches!(r, Err(NetError::Disconnected)),
        "wait_readable after testpmd died: {r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2), "no hang");
}

#[test]
fn a_restarted_testpmd_is_reconnected_and_frames_flow_again() {
    let Some(mut t) = start_pmd() else {
        return;
    };
    let mut dev = device_with(&t, false, Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; dev.max_frame_len()];
    let f = frame(300, 1);
    dev.send(&f, &FrameMeta::default()).unwrap();
    assert_eq!(recv_one(&mut dev, &mut buf).0, f);
    t.kill();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        t.restart().unwrap();
        t
    });
    // Frames sent while it is down are lost: send until one comes back.
    let started = Instant::now();
    let mut seq = 10;
    'back: loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing came back"
        );
        seq += 1;
        let f = frame(400, seq);
        dev.send(&f, &FrameMeta::default()).unwrap();
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_millis(500) {
            if let Some(info) = dev.recv(&mut buf).unwrap() {
                assert_eq!(&buf[..info.len], &f[..]);
                break 'back;
            }
            dev.wait_readable(Duration::from_millis(100)).unwrap();
        }
    }
    let took = started.elapsed();
    let _t = restarter.join().unwrap();
    for i in 0..50u32 {
        let f = frame(60 + 29 * i as usize, 1000 + i);
        dev.send(&f, &FrameMeta::default()).unwrap();
        assert_eq!(recv_one(&mut dev, &mut buf).0, f, "frame {i}");
    }
    eprintln!("the first frame came back {took:?} after the kill");
}
