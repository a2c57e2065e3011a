//! virtio-net against a real vhost-user-net back-end: DPDK's `dpdk-testpmd` (Debian `dpdk-dev`)
//! with a `net_vhost` port, in `io` forwarding mode with a loop topology, so every frame the
//! driver transmits comes back on its receive queue untouched. The frames must come back
//! byte-identical, in order, over split and packed rings (testpmd offers `RING_PACKED`: the
//! one real packed-ring peer here). With checksum offload negotiated, a UDP frame sent with a
//! partial checksum (`NEEDS_CSUM`) must come back either still partial with the same offsets, or
//! completed with a right checksum (DPDK 22.11 completes it in software when it dequeues).
//!
//! testpmd runs without hugepages (`--no-huge`), as the vhost-user server on a socket in a
//! temporary directory. The tests fail, saying what to install, when the binary is missing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/testpmd.rs"]
mod testpmd;

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::net::{self, NetDriver, NetOptions};
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use blanket_virtio::transport::{self, Transport};
use testpmd::{Opts, StartError, Testpmd, warm_up};

const VIRTIO_F_RING_PACKED: u32 = 34;
const VIRTIO_F_IN_ORDER: u32 = 35;
const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;

/// Starts testpmd forwarding in `mode` on a port of `queues` pairs; fails the test when it
/// cannot run.
fn start_pmd(mode: &str, queues: u16) -> Testpmd {
    match Testpmd::start(Opts {
        mode,
        queues,
        ..Opts::default()
    }) {
        Ok(t) => t,
        Err(StartError::Missing(e) | StartError::Failed(e)) => panic!("{e}"),
    }
}

fn driver(sock: &Path, packed_ring: bool) -> NetDriver<VhostUserTransport> {
    driver_with(sock, packed_ring, true)
}

fn driver_with(sock: &Path, packed_ring: bool, in_order: bool) -> NetDriver<VhostUserTransport> {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let t = VhostUserTransport::connect(sock, mem).unwrap();
    assert!(
        !t.has_config_space(),
        "testpmd's vhost-user back-end was not expected to offer CONFIG"
    );
    let mut d = NetDriver::new(
        t,
        NetOptions {
            packed_ring,
            in_order,
            ..NetOptions::default()
        },
    )
    .unwrap();
    warm_up(&mut d, 1);
    d
}

/// A frame of `len` bytes: broadcast destination, a locally administered source, an
/// experimental EtherType (0x88b5), then a payload that differs for every `seq`.
fn frame(len: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seq) as u8));
    f
}

fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

#[test]
fn frames_come_back_byte_identical_over_split_and_packed_rings() {
    // With and without IN_ORDER, which testpmd offers: with it, the driver uses descriptors in
    // ring order and takes testpmd's used batches (one used descriptor for a burst of
    // transmitted buffers on a packed ring), checking each against the order.
    for (packed, in_order) in [(false, true), (true, true), (false, false), (true, false)] {
        let pmd = start_pmd("io", 1);
        let mut d = driver_with(&pmd.sock, packed, in_order);
        assert_eq!(has(d.features(), VIRTIO_F_RING_PACKED), packed);
        assert_eq!(
            has(d.features(), VIRTIO_F_IN_ORDER),
            in_order,
            "testpmd was expected to offer IN_ORDER"
        );
        assert!(has(d.features(), VIRTIO_NET_F_MRG_RXBUF));
        // No config space: the front-end's defaults.
        assert_eq!(d.config().mac, None);
        assert_eq!(d.config().mtu, 1500);
        // One at a time, every length from the smallest to the largest frame in a stride that
        // hits both ends; more frames than the rings hold, so indices and wrap counters wrap.
        let lens: Vec<usize> = (0..600).map(|i| 60 + (i * 37) % (1514 - 60 + 1)).collect();
        for (seq, &len) in lens.iter().enumerate() {
            let f = frame(len, seq as u32);
            d.send(&f).unwrap();
            let got = d.recv_wait().unwrap_or_else(|e| {
                panic!(
                    "frame {seq} ({len} bytes, packed {packed}, in order {in_order}) did not come back: {e}\n{}",
                    pmd.logs()
                )
            });
            assert_eq!(
                got, f,
                "frame {seq} of {len} bytes, packed {packed}, in order {in_order}"
            );
        }
        // Bursts of 32 in flight, received back in order.
        for burst in 0..20u32 {
            let sent: Vec<Vec<u8>> = (0..32)
                .map(|i| {
                    frame(
                        60 + ((burst * 32 + i) as usize * 101) % 1455,
                        burst * 32 + i,
                    )
                })
                .collect();
            for f in &sent {
                d.send(f).unwrap();
            }
            for (i, f) in sent.iter().enumerate() {
                let got = d.recv_wait().unwrap();
                assert_eq!(
                    &got, f,
                    "burst {burst} frame {i}, packed {packed}, in order {in_order}"
                );
            }
        }
    }
}

#[test]
fn testpmd_killed_gives_device_gone_not_a_hang() {
    let mut pmd = start_pmd("io", 1);
    let mut d = driver(&pmd.sock, false);
    let f = frame(100, 1);
    d.send(&f).unwrap();
    assert_eq!(d.recv_wait().unwrap(), f);
    pmd.kill();
    let started = Instant::now();
    match d.recv_wait() {
        Err(net::Error::Transport(transport::Error::DeviceGone(_))) => {}
        other => panic!("expected DeviceGone after testpmd was killed, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn testpmd_restarted_is_reconnected_and_frames_loop_again() {
    for packed_ring in [false, true] {
        let mut pmd = start_pmd("io", 1);
        let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
        let t = VhostUserTransport::connect(&pmd.sock, mem).unwrap();
        let options = NetOptions {
            packed_ring,
            timeout: Duration::from_millis(500),
            reconnect: Some(Duration::from_secs(30)),
            ..NetOptions::default()
        };
        let mut d = NetDriver::new(t, options).unwrap();
        warm_up(&mut d, 1);
        let f = frame(200, 1);
        d.send(&f).unwrap();
        assert_eq!(d.recv_wait().unwrap(), f);
        // Killed, then started again on the same socket (it takes a second or two): the
        // driver's wait finds it gone and reconnects by itself.
        pmd.kill();
        let restarter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            pmd.restart().unwrap();
            pmd
        });
        let started = Instant::now();
        let mut seq = 100;
        // Frames sent while it is down, or before it forwards again, are lost, as on a link
        // that went down: send until one comes back.
        let back = loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no frame came back within 60 s"
            );
            seq += 1;
            let f = frame(300, seq);
            d.send(&f).unwrap();
            match d.recv_wait() {
                Ok(got) => break (got, f),
                Err(net::Error::Transport(transport::Error::Timeout { .. })) => continue,
                Err(e) => panic!("packed {packed_ring}: {e:?}"),
            }
        };
        let took = started.elapsed();
        let _pmd = restarter.join().unwrap();
        assert_eq!(back.0, back.1);
        assert_eq!(d.reconnections(), 1);
        // And it goes on: frames of every size come back in order.
        for i in 0..100u32 {
            let f = frame(60 + (i as usize * 14) % 1455, 1000 + i);
            d.send(&f).unwrap();
            assert_eq!(d.recv_wait().unwrap(), f, "frame {i}");
        }
        eprintln!("packed {packed_ring}: the first frame came back {took:?} after the kill");
    }
}

/// An IPv4/UDP frame of `len` bytes whose UDP checksum field holds the pseudo-header sum, as a
/// stack leaves it for the device (`NEEDS_CSUM` at 34, offset 6).
fn udp_frame(len: usize, seq: u32) -> Vec<u8> {
    let mut f = frame(len, seq);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14..34].fill(0);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let ip_csum = !fold(sum16(&f[14..34]));
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&4001u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    let pseudo = sum16(&f[26..34]) + 17 + u32::from(udp_len);
    f[40..42].copy_from_slice(&fold(pseudo).to_be_bytes());
    f
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Whether the UDP checksum of an IPv4/UDP frame is right.
fn udp_checksum_ok(f: &[u8]) -> bool {
    let udp_len = u16::from_be_bytes([f[38], f[39]]);
    fold(sum16(&f[26..34]) + 17 + u32::from(udp_len) + sum16(&f[34..])) == 0xffff
}

#[test]
fn partial_checksum_offload_through_testpmd() {
    use blanket_virtio::net::NetHdr;
    const VIRTIO_NET_F_CSUM: u32 = 0;
    const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
    let pmd = start_pmd("io", 1);
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let t = VhostUserTransport::connect(&pmd.sock, mem).unwrap();
    let mut d = NetDriver::new(
        t,
        NetOptions {
            offloads: true,
            packed_ring: false,
            ..NetOptions::default()
        },
    )
    .unwrap();
    warm_up(&mut d, 1);
    assert!(has(d.features(), VIRTIO_NET_F_CSUM));
    assert!(has(d.features(), VIRTIO_NET_F_GUEST_CSUM));
    for (seq, len) in [60usize, 61, 200, 1000, 1514].into_iter().enumerate() {
        let f = udp_frame(len, seq as u32);
        let hdr = NetHdr::partial_csum(34, 6);
        d.send_with_hdr(&f, &hdr).unwrap();
        let (got_hdr, got) = d.recv_wait_with_hdr().unwrap_or_else(|e| {
            panic!(
                "frame {seq} ({len} bytes) did not come back: {e}\n{}",
                pmd.logs()
            )
        });
        if got_hdr.flags & NetHdr::NEEDS_CSUM != 0 {
            // Still partial: the same frame, the same checksum offsets.
            assert_eq!(got, f, "frame {seq}");
            assert_eq!((got_hdr.csum_start, got_hdr.csum_offset), (34, 6));
        } else {
            // Completed on the way: the payload unchanged and the checksum right.
            assert_eq!(got[..40], f[..40], "frame {seq}");
            assert_eq!(got[42..], f[42..], "frame {seq}");
            assert!(
                udp_checksum_ok(&got),
                "frame {seq}: wrong UDP checksum {got_hdr:?}"
            );
        }
    }
}

#[test]
fn two_queue_pairs_each_loop_back_through_testpmd() {
    const VIRTIO_NET_F_MQ: u32 = 22;
    let pmd = start_pmd("io", 2);
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let t = VhostUserTransport::connect(&pmd.sock, mem).unwrap();
    let mut d = NetDriver::new(
        t,
        NetOptions {
            queue_pairs: 2,
            ..NetOptions::default()
        },
    )
    .unwrap();
    warm_up(&mut d, 2);
    assert!(has(d.features(), VIRTIO_NET_F_MQ));
    assert_eq!(d.queue_pairs(), 2);
    // No control queue over vhost-user: the front-end enabled both pairs itself.
    assert!(!d.has_control_queue());
    assert_eq!(d.active_queue_pairs(), 2);
    for seq in 0..200u32 {
        let pair = (seq % 2) as u16;
        let f = frame(60 + (seq as usize * 53) % 1455, seq);
        d.send_on(pair, &f, &blanket_virtio::net::NetHdr::default())
            .unwrap();
        let (_, got) = d.recv_wait_on(pair).unwrap_or_else(|e| {
            panic!(
                "frame {seq} on pair {pair} did not come back: {e}\n{}",
                pmd.logs()
            )
        });
        assert_eq!(got, f, "frame {seq} on pair {pair}");
    }
}

#[test]
fn a_queue_pair_is_reset_and_loops_back_again() {
    // The pair's rings are stopped with GET_VRING_BASE and given again (the front-end's part
    // of a queue reset; testpmd's vhost back-end does not offer VIRTIO_F_RING_RESET itself).
    // testpmd then serves them from fresh rings, and the other pair runs on.
    const VIRTIO_F_RING_RESET: u32 = 40;
    for packed in [false, true] {
        let pmd = start_pmd("io", 2);
        let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
        let mut t = VhostUserTransport::connect(&pmd.sock, mem).unwrap();
        eprintln!(
            "testpmd offers {:#x}; RING_RESET {}",
            t.device_features().unwrap(),
            has(t.device_features().unwrap(), VIRTIO_F_RING_RESET)
        );
        let mut d = NetDriver::new(
            t,
            NetOptions {
                queue_pairs: 2,
                packed_ring: packed,
                ..NetOptions::default()
            },
        )
        .unwrap();
        warm_up(&mut d, 2);
        assert_eq!(d.active_queue_pairs(), 2);
        let hdr = blanket_virtio::net::NetHdr::default();
        let mut seq = 0u32;
        let round_trip = |d: &mut NetDriver<VhostUserTransport>, pair: u16, seq: &mut u32| {
            let f = frame(60 + (*seq as usize * 53) % 1455, *seq);
            *seq += 1;
            d.send_on(pair, &f, &hdr).unwrap();
            let (_, got) = d.recv_wait_on(pair).unwrap_or_else(|e| {
                panic!(
                    "frame {seq} on pair {pair} (packed {packed}) did not come back: {e}\n{}",
                    pmd.logs()
                )
            });
            assert_eq!(got, f, "frame {seq} on pair {pair}, packed {packed}");
        };
        for i in 0..100 {
            round_trip(&mut d, i % 2, &mut seq);
        }
        for reset in [1u16, 0, 1] {
            d.reset_queue_pair(reset).unwrap();
            // testpmd stops and starts its port around the ring stop: the same start-up race.
            warm_up(&mut d, 2);
            // More frames than a ring holds on each pair after each reset.
            for i in 0..600 {
                round_trip(&mut d, (i + reset) % 2, &mut seq);
            }
        }
    }
}
