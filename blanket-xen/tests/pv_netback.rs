//! netfront against pv-backend's netback (the workspace's real back-end) over the real xenstored, its
//! device a port of pv-backend's virtual switch; the test is a peer on another port of the switch.
//! Multi-queue, split event channels, checksum offload and GSO, each checked in the store and by the
//! frames that arrive.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_xen::emulated::EmulatedXen;
use blanket_xen::net::{NetConfig, NetFeatures, NetFront, NetGso, NetRings, RxMeta, TxOffload};
use blanket_xen::xenbus::XenBus;
use common::pv::PvNetback;
use common::{SECOND, Xenstored};
use pv_backend::net::back::NetQueueStats;
use pv_backend::net::{Checksum, FrameMeta, Gso, GsoType, NetDevice, Offloads, RxInfo};
use xen_abi::ring::RawRingMemory;
use xen_abi::xenbus::XenbusState;

const BE: &str = "/local/domain/0/backend/vif/1/0";
const FE: &str = "/local/domain/1/device/vif/0";
const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

type Front<const Q: usize> = NetFront<Arc<EmulatedXen>, RawRingMemory, RawRingMemory, Q>;

fn eth(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // a local experimental EtherType
    f.extend((14..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// The guest's xenstored, pv-backend's netback on a thread (its device a switch port) and the peer's
/// port on the same switch.
struct Rig {
    xs: Xenstored,
    xb: XenBus<Arc<EmulatedXen>, RawRingMemory>,
    back: PvNetback,
}

impl Rig {
    /// A switch whose ports take `offloads`, and netback offering `max_queues` queues for vif 0.
    fn start(offloads: Offloads, max_queues: u32) -> Self {
        let xs = Xenstored::start(600);
        let back = PvNetback::start(&xs, 0, offloads, max_queues);
        let xb = xs.client();
        Self { xs, xb, back }
    }

    fn connect<const Q: usize>(&mut self, features: NetFeatures) -> Front<Q> {
        let config = NetConfig {
            rx_buffers: 64,
            tx_buffers: 64,
            timeout_ns: 5 * SECOND,
        };
        let page = || self.xs.xen.alloc_pages(1).unwrap();
        let rings =
            NetRings::new(std::array::from_fn(|_| (page(), page()))).with_ctrl(page(), page());
        let pool = self.xs.xen.alloc_pages(128 * Q).unwrap();
        let net = NetFront::connect_with(
            Arc::clone(&self.xs.xen),
            &mut self.xb,
            b"device/vif/0",
            rings,
            pool,
            config,
            features,
        )
        .unwrap();
        assert_eq!(net.info().mac, GUEST_MAC);
        assert_eq!(net.device().state(), XenbusState::Connected);
        assert_eq!(self.xs.read(&format!("{BE}/state")).as_deref(), Some("4"));
        net
    }

    fn fe(&self, key: &str) -> Option<String> {
        self.xs.read(&format!("{FE}/{key}"))
    }

    /// The next frame the peer receives (within 5 s).
    fn peer_recv(&mut self) -> (Vec<u8>, RxInfo) {
        let mut buf = vec![0u8; self.back.peer.max_frame_len()];
        let t0 = Instant::now();
        loop {
            if let Some(info) = self.back.peer.recv(&mut buf).unwrap() {
                buf.truncate(info.len);
                return (buf, info);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no frame reached the peer"
            );
            self.back
                .peer
                .wait_readable(Duration::from_millis(10))
                .unwrap();
        }
    }

    /// Closes the front-end, checks every grant ended, stops netback and returns its queues' counters.
    fn finish<const Q: usize>(mut self, mut net: Front<Q>) -> Vec<NetQueueStats> {
        net.reap_tx().unwrap();
        // Closing: netback disconnects and unmaps the rings, so every grant ends.
        net.close(&mut self.xb).unwrap();
        assert_eq!(self.fe("state").as_deref(), Some("6"));
        assert!(matches!(
            self.xs.read(&format!("{BE}/state")).as_deref(),
            Some("5" | "6")
        ));
        assert_eq!(self.xs.xen.grant_table().granted(), 0);
        self.back.stop()
    }
}

fn recv_meta<const Q: usize>(net: &mut Front<Q>, buf: &mut [u8]) -> RxMeta {
    net.recv_meta_wait(buf)
        .unwrap()
        .expect("the frame reaches the guest")
}

#[test]
fn netfront_drives_pv_backends_netback_through_its_switch() {
    let mut r = Rig::start(Offloads::ALL, 4);
    let mut net = r.connect::<1>(NetFeatures::BASIC);
    assert!(net.info().sg && net.info().gso_tcpv4 && net.info().gso_tcpv6);
    assert_eq!((net.info().max_queues, net.queues()), (4, 1));
    // One queue: the keys in the device's own directory, no queue count.
    assert!(r.fe("tx-ring-ref").is_some() && r.fe("rx-ring-ref").is_some());
    assert_eq!(r.fe("multi-queue-num-queues"), None);
    assert_eq!(r.fe("request-rx-copy").as_deref(), Some("1"));
    assert_eq!(r.fe("feature-rx-notify").as_deref(), Some("1"));
    assert_eq!(r.fe("feature-sg").as_deref(), Some("1"));

    // Peer to guest: the peer's first frame is flooded (the guest's MAC is not learned yet).
    let mut buf = vec![0u8; 65536];
    for (i, len) in [60usize, 1514, 9000, 60].into_iter().enumerate() {
        let f = eth(GUEST_MAC, PEER_MAC, len, i as u8);
        r.back.peer.send(&f, &FrameMeta::default()).unwrap();
        let n = net
            .recv_wait(&mut buf)
            .unwrap()
            .expect("the frame reaches the guest");
        assert_eq!(&buf[..n], &f[..], "frame {i} of {len} bytes");
    }
    // Guest to peer, including a multi-slot frame.
    for (i, len) in [60usize, 1514, 9000, 20_000].into_iter().enumerate() {
        let f = eth(PEER_MAC, GUEST_MAC, len, 100 + i as u8);
        net.send_wait(&f).unwrap();
        let (got, _) = r.peer_recv();
        assert_eq!(got, f, "frame {i} of {len} bytes");
    }
    // A burst both ways, longer than the rings.
    for i in 0..600u32 {
        let f = eth(GUEST_MAC, PEER_MAC, 64 + (i as usize * 31) % 1400, i as u8);
        r.back.peer.send(&f, &FrameMeta::default()).unwrap();
        let n = net.recv_wait(&mut buf).unwrap().expect("frame");
        assert_eq!(&buf[..n], &f[..], "burst frame {i}");
    }
    assert_eq!(net.stats().rx_dropped, 0);
    r.finish(net);
}

#[test]
fn split_event_channels_when_offered_and_asked_for() {
    for split in [true, false] {
        let mut r = Rig::start(Offloads::ALL, 1);
        let mut net = r.connect::<1>(NetFeatures {
            split_event_channels: split,
            ..NetFeatures::BASIC
        });
        assert!(net.info().split_event_channels, "netback offers them");
        assert_eq!(net.info().negotiated.split_event_channels, split);
        let (_, _, tx_port, rx_port) = net.queue_rings_and_ports(0).unwrap();
        let key = |k: &str| r.fe(k).map(|v| v.parse::<u32>().unwrap());
        if split {
            assert_ne!(tx_port, rx_port);
            assert_eq!(key("event-channel-tx"), Some(tx_port));
            assert_eq!(key("event-channel-rx"), Some(rx_port));
            assert_eq!(key("event-channel"), None);
        } else {
            assert_eq!(tx_port, rx_port);
            assert_eq!(key("event-channel"), Some(tx_port));
            assert_eq!(key("event-channel-tx"), None);
        }
        // Traffic both ways wakes the right ports: a wait on the RX port alone must see the RX event.
        let mut buf = vec![0u8; 2048];
        for i in 0..50u8 {
            let f = eth(GUEST_MAC, PEER_MAC, 100 + usize::from(i), i);
            r.back.peer.send(&f, &FrameMeta::default()).unwrap();
            let n = net.recv_wait(&mut buf).unwrap().expect("frame");
            assert_eq!(&buf[..n], &f[..]);
            let f = eth(PEER_MAC, GUEST_MAC, 200 + usize::from(i), i);
            net.send_wait(&f).unwrap();
            assert_eq!(r.peer_recv().0, f);
        }
        r.finish(net);
    }
}

/// A UDP over IPv4 frame from `sport` to `dport`, `payload` bytes long.
fn udp4(dst: [u8; 6], src: [u8; 6], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 42 + payload];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[169, 254, 0, 1]);
    f[30..34].copy_from_slice(&[169, 254, 0, 2]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(sport as u8);
    }
    let h = ip_csum(&f[14..34]);
    f[24..26].copy_from_slice(&h.to_be_bytes());
    f
}

/// A TCP frame over IPv4 or IPv6 with `payload` bytes, its checksum field holding the pseudo-header
/// sum (a partial checksum, as Linux's `CHECKSUM_PARTIAL`).
fn tcp_partial(v6: bool, payload: usize, seed: u8) -> Vec<u8> {
    let l3 = 14;
    let l4 = if v6 { l3 + 40 } else { l3 + 20 };
    let mut f = vec![0u8; l4 + 20 + payload];
    f[..6].copy_from_slice(&PEER_MAC);
    f[6..12].copy_from_slice(&GUEST_MAC);
    if v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[l3] = 0x60;
        f[l3 + 4..l3 + 6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        f[l3 + 6] = 6;
        f[l3 + 7] = 64;
        f[l3 + 8] = 0xfe;
        f[l3 + 9] = 0x80;
        f[l3 + 23] = 1;
        f[l3 + 24] = 0xfe;
        f[l3 + 25] = 0x80;
        f[l3 + 39] = 2;
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[l3 + 6] = 0x40; // don't fragment
        f[l3 + 8] = 64;
        f[l3 + 9] = 6;
        f[l3 + 12..l3 + 16].copy_from_slice(&[169, 254, 0, 2]);
        f[l3 + 16..l3 + 20].copy_from_slice(&[169, 254, 0, 1]);
        let h = ip_csum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&h.to_be_bytes());
    }
    f[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&80u16.to_be_bytes());
    f[l4 + 4..l4 + 8].copy_from_slice(&1_000_000u32.to_be_bytes());
    f[l4 + 12] = 5 << 4;
    f[l4 + 13] = 0x18; // PSH, ACK
    f[l4 + 14..l4 + 16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in f[l4 + 20..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(seed);
    }
    let pseudo = fold(pseudo_sum(&f, v6));
    f[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
    f
}

fn sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn ip_csum(header: &[u8]) -> u16 {
    !fold(sum(header))
}

/// The pseudo-header sum of the IPv4 or IPv6 packet in `f` (its L4 length from the IP header).
fn pseudo_sum(f: &[u8], v6: bool) -> u64 {
    if v6 {
        let len = u64::from(u16::from_be_bytes([f[18], f[19]]));
        sum(&f[22..54]) + u64::from(f[20]) + len
    } else {
        let ihl = usize::from(f[14] & 15) * 4;
        let len = u64::from(u16::from_be_bytes([f[16], f[17]])) - ihl as u64;
        sum(&f[26..34]) + u64::from(f[23]) + len
    }
}

/// Whether the TCP or UDP checksum of `f` is right (a receiver's check over pseudo-header and
/// segment).
fn l4_checksum_ok(f: &[u8]) -> bool {
    let v6 = f[12..14] == [0x86, 0xdd];
    let l4 = if v6 {
        54
    } else {
        14 + usize::from(f[14] & 15) * 4
    };
    fold(pseudo_sum(f, v6) + sum(&f[l4..])) == 0xffff
}

#[test]
fn four_queues_carry_every_flow_and_every_queue_some() {
    let mut r = Rig::start(Offloads::ALL, 4);
    let mut net = r.connect::<4>(NetFeatures {
        ctrl_ring: true,
        ..NetFeatures::BASIC
    });
    assert_eq!((net.info().max_queues, net.queues()), (4, 4));
    assert!(net.info().negotiated.ctrl_ring);
    assert!(r.fe("ctrl-ring-ref").is_some() && r.fe("event-channel-ctrl").is_some());
    // The keys as Linux's xen-netfront writes them: the count, and each queue's directory.
    assert_eq!(r.fe("multi-queue-num-queues").as_deref(), Some("4"));
    assert_eq!(r.fe("tx-ring-ref"), None);
    for q in 0..4 {
        let (tx_ref, rx_ref, tx_port, rx_port) = net.queue_rings_and_ports(q).unwrap();
        let key = |k: &str| r.fe(&format!("queue-{q}/{k}"));
        assert_eq!(key("tx-ring-ref"), Some(tx_ref.to_string()));
        assert_eq!(key("rx-ring-ref"), Some(rx_ref.to_string()));
        assert_eq!(key("event-channel-tx"), Some(tx_port.to_string()));
        assert_eq!(key("event-channel-rx"), Some(rx_port.to_string()));
    }
    // 32 UDP flows, 5 frames each, interleaved; each must arrive whole and a flow's frames in order.
    let mut sent = Vec::new();
    for round in 0..5u16 {
        for flow in 0..32u16 {
            let f = udp4(
                PEER_MAC,
                GUEST_MAC,
                5000 + flow,
                53,
                100 + usize::from(round),
            );
            net.send_wait(&f).unwrap();
            sent.push(f);
        }
    }
    let mut last_round = [None::<usize>; 32];
    for i in 0..sent.len() {
        let (got, _) = r.peer_recv();
        // netback's queues interleave at the switch port: find the frame, and check order per flow.
        assert!(sent.contains(&got), "frame {i} arrived changed");
        let flow = usize::from(u16::from_be_bytes([got[34], got[35]]) - 5000);
        let round = got.len() - 142;
        assert!(
            last_round[flow].is_none_or(|r| r < round),
            "flow {flow}: round {round} after {:?}",
            last_round[flow]
        );
        last_round[flow] = Some(round);
    }
    assert!(
        last_round.iter().all(|r| *r == Some(4)),
        "every frame arrived once"
    );
    let per_queue: Vec<u64> = (0..4)
        .map(|q| net.queue_stats(q).unwrap().tx_packets)
        .collect();
    assert_eq!(per_queue.iter().sum::<u64>(), 160);
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "every queue sends: {per_queue:?}"
    );
    // The flow hash is stable: each flow's frames went to one queue, as many as netback saw on it.
    for flow in 0..32u16 {
        let a = net.tx_queue_of(&udp4(PEER_MAC, GUEST_MAC, 5000 + flow, 53, 100));
        let b = net.tx_queue_of(&udp4(PEER_MAC, GUEST_MAC, 5000 + flow, 53, 104));
        assert_eq!(a, b);
    }
    // Peer to guest: netback steers each TCP flow by the hash netfront set on the control ring, so every
    // queue receives some; recv looks at every queue.
    let mut buf = vec![0u8; 2048];
    let mut rx_queues = [0u32; 4];
    for i in 0..32u16 {
        let mut f = tcp_partial(false, 200, i as u8);
        f[..6].copy_from_slice(&GUEST_MAC);
        f[6..12].copy_from_slice(&PEER_MAC);
        f[34..36].copy_from_slice(&(7000 + i).to_be_bytes());
        r.back.peer.send(&f, &FrameMeta::default()).unwrap();
        let m = recv_meta(&mut net, &mut buf);
        assert_eq!(&buf[..m.len], &f[..], "frame {i}");
        rx_queues[m.queue] += 1;
    }
    assert!(
        rx_queues.iter().all(|&n| n > 0),
        "every queue receives: {rx_queues:?}"
    );
    let rx_per_queue: Vec<u64> = (0..4)
        .map(|q| net.queue_stats(q).unwrap().rx_packets)
        .collect();
    assert_eq!(rx_per_queue, rx_queues.map(u64::from).to_vec());
    let back = r.finish(net);
    assert_eq!(back.len(), 4);
    let back_tx: Vec<u64> = back.iter().map(|s| s.tx_packets).collect();
    assert_eq!(back_tx, per_queue, "netback saw each queue's frames");
}

#[test]
fn partial_checksums_arrive_correct() {
    // A switch without checksum offload: netback completes a guest's partial checksum in software.
    let mut r = Rig::start(Offloads::NONE, 1);
    let mut net = r.connect::<1>(NetFeatures::ALL);
    assert!(net.info().negotiated.csum_offload);
    assert_eq!(r.fe("feature-no-csum-offload").as_deref(), Some("0"));
    assert_eq!(r.fe("feature-ipv6-csum-offload").as_deref(), Some("1"));
    for v6 in [false, true] {
        let f = tcp_partial(v6, 1000, 3);
        assert!(!l4_checksum_ok(&f));
        net.send_with_wait(
            &f,
            TxOffload {
                csum_blank: true,
                ..TxOffload::default()
            },
        )
        .unwrap();
        let (got, _) = r.peer_recv();
        assert!(
            l4_checksum_ok(&got),
            "v6 {v6}: the peer gets a correct checksum"
        );
        assert_eq!(got[..50], f[..50], "v6 {v6}: the headers are as sent");
        let l4 = if v6 { 54 } else { 34 };
        assert_eq!(
            got[l4 + 20..],
            f[l4 + 20..],
            "v6 {v6}: the payload is as sent"
        );
    }
    assert_eq!(
        net.stats().csum_completed,
        0,
        "netback did it, not netfront"
    );
    r.finish(net);

    // Peer to guest, partial: with checksum offload the guest gets the frame as sent and the flag;
    // without (`feature-no-csum-offload`), netback completes the checksum before the frame reaches
    // the guest, so netfront has none to complete.
    for features in [NetFeatures::ALL, NetFeatures::BASIC] {
        let mut r = Rig::start(Offloads::ALL, 1);
        let mut net = r.connect::<1>(features);
        if !features.csum_offload {
            assert_eq!(r.fe("feature-no-csum-offload").as_deref(), Some("1"));
        }
        let mut buf = vec![0u8; 4096];
        for v6 in [false, true] {
            let mut f = tcp_partial(v6, 700, 9);
            f[..6].copy_from_slice(&GUEST_MAC);
            f[6..12].copy_from_slice(&PEER_MAC);
            let start = if v6 { 54 } else { 34 };
            let meta = FrameMeta {
                checksum: Checksum::Partial { start, offset: 16 },
                gso: None,
            };
            r.back.peer.send(&f, &meta).unwrap();
            let m = recv_meta(&mut net, &mut buf);
            let got = &buf[..m.len];
            if features.csum_offload {
                assert!(m.csum_blank && m.data_validated);
                assert_eq!(got, &f[..]);
            } else {
                assert!(!m.csum_blank);
                assert!(l4_checksum_ok(got), "v6 {v6}: netback completed it");
                let field = usize::from(start) + 16;
                assert_eq!(got[..field], f[..field]);
                assert_eq!(got[field + 2..], f[field + 2..]);
            }
        }
        assert_eq!(
            net.stats().csum_completed,
            0,
            "netback completed them, not netfront"
        );
        r.finish(net);
    }
}

/// The TCP payload of a frame.
fn tcp_payload(f: &[u8]) -> &[u8] {
    let v6 = f[12..14] == [0x86, 0xdd];
    let l4 = if v6 {
        54
    } else {
        14 + usize::from(f[14] & 15) * 4
    };
    &f[l4 + usize::from(f[l4 + 12] >> 4) * 4..]
}

#[test]
fn a_64k_tcp_frame_through_netbacks_gso_path() {
    let mss = 1448u16;
    // Guest to peer: intact with GSO metadata to a switch that takes GSO, segmented by netback for one
    // that does not.
    for offloads in [Offloads::ALL, Offloads::NONE] {
        let mut r = Rig::start(offloads, 1);
        let mut net = r.connect::<1>(NetFeatures::ALL);
        assert!(net.info().negotiated.gso);
        assert_eq!(r.fe("feature-gso-tcpv4").as_deref(), Some("1"));
        assert_eq!(r.fe("feature-gso-tcpv6").as_deref(), Some("1"));
        for v6 in [false, true] {
            let hdr = if v6 { 74 } else { 54 };
            let f = tcp_partial(v6, 65535 - hdr, 1);
            assert_eq!(f.len(), 65535);
            let gso_type = if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
            net.send_with_wait(
                &f,
                TxOffload {
                    gso: Some(NetGso {
                        gso_type,
                        size: mss,
                    }),
                    ..TxOffload::default()
                },
            )
            .unwrap();
            if offloads.tso4 {
                let (got, info) = r.peer_recv();
                assert_eq!(got, f, "v6 {v6}: intact");
                assert_eq!(
                    info.meta.gso.map(|g| (g.gso_type, g.size)),
                    Some((gso_type, mss))
                );
            } else {
                let mut payload = Vec::new();
                let want = tcp_payload(&f);
                while payload.len() < want.len() {
                    let (seg, info) = r.peer_recv();
                    assert!(info.meta.gso.is_none());
                    assert!(seg.len() <= hdr + usize::from(mss), "v6 {v6}: a segment");
                    assert!(l4_checksum_ok(&seg), "v6 {v6}: the segment's checksum");
                    payload.extend_from_slice(tcp_payload(&seg));
                }
                assert_eq!(payload, want, "v6 {v6}: the segments carry the payload");
            }
        }
        r.finish(net);
    }

    // Peer to guest: intact with the GSO extra when GSO is negotiated, segmented by netback otherwise.
    for features in [NetFeatures::ALL, NetFeatures::BASIC] {
        let mut r = Rig::start(Offloads::ALL, 1);
        let mut net = r.connect::<1>(features);
        if !features.gso {
            assert_eq!(r.fe("feature-gso-tcpv4").as_deref(), Some("0"));
        }
        let mut buf = vec![0u8; 65536 + 14];
        for v6 in [false, true] {
            let hdr = if v6 { 74 } else { 54 };
            let mut f = tcp_partial(v6, 65535 - hdr, 2);
            f[..6].copy_from_slice(&GUEST_MAC);
            f[6..12].copy_from_slice(&PEER_MAC);
            let gso_type = if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
            let meta = FrameMeta {
                checksum: Checksum::Partial {
                    start: hdr as u16 - 20,
                    offset: 16,
                },
                gso: Some(Gso {
                    gso_type,
                    size: mss,
                    hdr_len: hdr as u16,
                }),
            };
            r.back.peer.send(&f, &meta).unwrap();
            if features.gso {
                let m = recv_meta(&mut net, &mut buf);
                assert_eq!(&buf[..m.len], &f[..], "v6 {v6}: intact");
                let g = m.gso.expect("the GSO extra");
                assert_eq!((g.gso_type, g.size), (gso_type, mss));
                assert!(m.csum_blank);
            } else {
                let mut payload = Vec::new();
                let want = tcp_payload(&f).to_vec();
                while payload.len() < want.len() {
                    let m = recv_meta(&mut net, &mut buf);
                    let seg = &buf[..m.len];
                    assert!(m.gso.is_none());
                    assert!(seg.len() <= hdr + usize::from(mss));
                    assert!(l4_checksum_ok(seg), "v6 {v6}: the segment's checksum");
                    payload.extend_from_slice(tcp_payload(seg));
                }
                assert_eq!(payload, want, "v6 {v6}: the segments carry the payload");
            }
        }
        assert_eq!(net.stats().rx_dropped, 0);
        r.finish(net);
    }
}
