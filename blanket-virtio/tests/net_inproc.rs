//! virtio-net against the in-process loopback device, and its hostile cases.

use std::mem::offset_of;
use std::sync::Arc;

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::net::{self, NetDriver, NetHdr, NetOptions};
use blanket_virtio::transport::inproc::{InProcessTransport, MemNetDevice, NetHostile};
use virtio_bindings::virtio_net::virtio_net_config;

fn driver(dev: MemNetDevice) -> Result<NetDriver<InProcessTransport<MemNetDevice>>, net::Error> {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    NetDriver::new(InProcessTransport::new(mem, dev), NetOptions::default())
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

#[test]
fn loopback_split_and_packed_with_and_without_mergeable_buffers() {
    for (packed, mergeable) in [(false, true), (true, true), (false, false), (true, false)] {
        let mut dev = MemNetDevice::new();
        dev.packed = packed;
        dev.mergeable = mergeable;
        let mut d = driver(dev).unwrap();
        assert_eq!(d.config().mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert!(d.config().link_up);
        assert_eq!(d.config().mtu, 1500);
        // More frames than the ring holds, so buffers are recycled and indices wrap.
        for i in 0..600usize {
            let f = frame(14 + i % 1500, i as u8 | 1);
            d.send(&f).unwrap();
            assert_eq!(
                d.recv_wait().unwrap(),
                f,
                "packed {packed} mergeable {mergeable}"
            );
        }
        assert_eq!(d.transport().device().sent.len(), 600);
    }
}

#[test]
fn jumbo_frames_span_mergeable_buffers() {
    let mut dev = MemNetDevice::new();
    dev.mtu = 9000;
    let mut d = driver(dev).unwrap();
    let f = frame(9014, 7);
    d.send(&f).unwrap();
    assert_eq!(d.recv_wait().unwrap(), f);
    assert!(matches!(
        d.send(&frame(9015, 1)),
        Err(net::Error::BadFrameLength { len: 9015, .. })
    ));
    assert!(matches!(
        d.send(&[0; 13]),
        Err(net::Error::BadFrameLength { len: 13, .. })
    ));
}

#[test]
fn jumbo_mtu_without_mergeable_buffers_is_refused() {
    let mut dev = MemNetDevice::new();
    dev.mtu = 9000;
    dev.mergeable = false;
    assert!(matches!(
        driver(dev),
        Err(net::Error::InvalidConfig {
            field: "mtu",
            value: 9000
        })
    ));
}

#[test]
fn rx_used_len_shorter_than_the_header() {
    let mut dev = MemNetDevice::new();
    dev.hostile = NetHostile::ShortRx;
    let mut d = driver(dev).unwrap();
    d.send(&frame(60, 3)).unwrap();
    assert!(matches!(
        d.recv_wait(),
        Err(net::Error::ShortRxBuffer { len: 3, .. })
    ));
}

#[test]
fn rx_num_buffers_zero() {
    let mut dev = MemNetDevice::new();
    dev.hostile = NetHostile::NumBuffersZero;
    let mut d = driver(dev).unwrap();
    d.send(&frame(60, 3)).unwrap();
    assert!(matches!(
        d.recv_wait(),
        Err(net::Error::BadNumBuffers { num_buffers: 0, .. })
    ));
}

#[test]
fn rx_num_buffers_more_than_completed() {
    let mut dev = MemNetDevice::new();
    dev.hostile = NetHostile::NumBuffersTooMany;
    let mut d = driver(dev).unwrap();
    d.send(&frame(60, 3)).unwrap();
    assert!(matches!(
        d.recv_wait(),
        Err(net::Error::BadNumBuffers {
            num_buffers: 6,
            available: 1
        })
    ));
}

fn garbage_config(edit: impl FnOnce(&mut Vec<u8>)) -> net::Error {
    let mut dev = MemNetDevice::new();
    let mut c = dev.honest_config();
    edit(&mut c);
    dev.hostile = NetHostile::Config(c);
    driver(dev).unwrap_err()
}

#[test]
fn config_space_with_garbage() {
    let e = garbage_config(|c| c[offset_of!(virtio_net_config, mtu)..][..2].fill(0));
    assert!(
        matches!(
            e,
            net::Error::InvalidConfig {
                field: "mtu",
                value: 0
            }
        ),
        "{e:?}"
    );
    let e = garbage_config(|c| c[offset_of!(virtio_net_config, mac)] = 0x01);
    assert!(
        matches!(e, net::Error::InvalidConfig { field: "mac", .. }),
        "{e:?}"
    );
    let e = garbage_config(|c| c[offset_of!(virtio_net_config, status)..][..2].fill(0xff));
    assert!(
        matches!(
            e,
            net::Error::InvalidConfig {
                field: "status",
                ..
            }
        ),
        "{e:?}"
    );
    let e = garbage_config(|c| c.truncate(4));
    assert!(matches!(e, net::Error::Transport(_)), "{e:?}");
}

// ---- Checksum and segmentation offload headers (5.1.6.2, 5.1.6.4). ----

fn offload_driver(
    dev: MemNetDevice,
) -> Result<NetDriver<InProcessTransport<MemNetDevice>>, net::Error> {
    let mem = Arc::new(DmaMemory::new(32 << 20).unwrap());
    NetDriver::new(
        InProcessTransport::new(mem, dev),
        NetOptions {
            offloads: true,
            ..NetOptions::default()
        },
    )
}

fn offload_device() -> MemNetDevice {
    let mut dev = MemNetDevice::new();
    dev.offloads = true;
    dev
}

/// An IPv4/UDP frame of `len` bytes whose UDP checksum field holds the pseudo-header sum, as a
/// stack leaves it for the device (`NEEDS_CSUM` at 34, offset 6).
fn udp_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = frame(len, seed);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let udp_len = ip_len - 20;
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

#[test]
fn offloads_are_negotiated_only_when_asked() {
    use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4};
    let d = driver(offload_device()).unwrap();
    assert_eq!(d.features() & (1 << VIRTIO_NET_F_CSUM), 0);
    let d = offload_driver(offload_device()).unwrap();
    assert_ne!(d.features() & (1 << VIRTIO_NET_F_CSUM), 0);
    assert_ne!(d.features() & (1 << VIRTIO_NET_F_GUEST_TSO4), 0);
    // Without mergeable buffers, no GUEST_TSO (64 KiB frames would not fit a buffer).
    let mut dev = offload_device();
    dev.mergeable = false;
    let d = offload_driver(dev).unwrap();
    assert_eq!(d.features() & (1 << VIRTIO_NET_F_GUEST_TSO4), 0);
    // A device that offers none: a header asking for a checksum is refused.
    let mut d = offload_driver(MemNetDevice::new()).unwrap();
    let f = udp_frame(100, 3);
    assert!(matches!(
        d.send_with_hdr(&f, &NetHdr::partial_csum(34, 6)),
        Err(net::Error::BadTxHeader { why, .. }) if why.contains("CSUM")
    ));
}

#[test]
fn partial_checksum_goes_out_and_comes_back_partial() {
    for packed in [false, true] {
        let mut dev = offload_device();
        dev.packed = packed;
        let mut d = offload_driver(dev).unwrap();
        let f = udp_frame(300, 5);
        let hdr = NetHdr::partial_csum(34, 6);
        d.send_with_hdr(&f, &hdr).unwrap();
        let (got_hdr, got) = d.recv_wait_with_hdr().unwrap();
        assert_eq!(got, f);
        assert_eq!(got_hdr, hdr);
        assert_eq!(d.transport().device().sent_headers[0], hdr.to_bytes()[..10]);
        // Completing it as a receiver would gives a valid UDP checksum.
        let mut done = got.clone();
        let at = usize::from(hdr.csum_start + hdr.csum_offset);
        let c = !fold(sum16(&done[usize::from(hdr.csum_start)..]));
        done[at..at + 2].copy_from_slice(&c.to_be_bytes());
        let pseudo = sum16(&done[26..34]) + 17 + u32::from(300u16 - 34);
        assert_eq!(fold(pseudo + sum16(&done[34..])), 0xffff);
    }
}

#[test]
fn gso_frames_of_64k_go_out_and_come_back_over_mergeable_buffers() {
    let mut d = offload_driver(offload_device()).unwrap();
    let hdr = NetHdr {
        flags: NetHdr::NEEDS_CSUM,
        gso_type: NetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    // More than the 64 KiB transmit slots, so they are reclaimed and reused.
    for i in 0..(net::GSO_TX_SLOTS + 4) {
        let f = frame(net::MAX_GSO_FRAME - i, i as u8 | 1);
        d.send_with_hdr(&f, &hdr).unwrap();
        let (h, got) = d.recv_wait_with_hdr().unwrap();
        assert_eq!(h, hdr);
        assert_eq!(got, f, "GSO frame {i}");
    }
    assert!(matches!(
        d.send_with_hdr(&frame(net::MAX_GSO_FRAME + 1, 1), &hdr),
        Err(net::Error::BadFrameLength { .. })
    ));
}

#[test]
fn tx_headers_the_features_or_the_frame_do_not_allow_are_refused() {
    let mut d = offload_driver(offload_device()).unwrap();
    let f = udp_frame(200, 9);
    let gso = NetHdr {
        flags: NetHdr::NEEDS_CSUM,
        gso_type: NetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let cases = [
        (NetHdr::partial_csum(190, 10), "outside the frame"),
        (
            NetHdr {
                flags: NetHdr::DATA_VALID,
                ..NetHdr::default()
            },
            "only NEEDS_CSUM",
        ),
        (NetHdr { flags: 0, ..gso }, "needs NEEDS_CSUM"),
        (NetHdr { gso_size: 0, ..gso }, "gso_size"),
        (
            NetHdr {
                gso_type: 3, // UDP (UFO), not negotiated
                ..gso
            },
            "GSO type",
        ),
        (
            NetHdr {
                gso_type: NetHdr::GSO_TCPV4 | NetHdr::GSO_ECN,
                ..gso
            },
            "GSO type",
        ),
        (
            NetHdr {
                hdr_len: 201,
                ..gso
            },
            "hdr_len",
        ),
    ];
    for (hdr, why) in cases {
        match d.send_with_hdr(&f, &hdr) {
            Err(net::Error::BadTxHeader { why: w, .. }) => assert!(w.contains(why), "{w}"),
            other => panic!("{hdr:?}: expected BadTxHeader ({why}), got {other:?}"),
        }
    }
    // Above the MTU without GSO.
    assert!(matches!(
        d.send_with_hdr(&frame(1515, 1), &NetHdr::default()),
        Err(net::Error::BadFrameLength { len: 1515, .. })
    ));
    // Nothing reached the device.
    assert!(d.transport().device().sent.is_empty());
}

fn hostile_rx_header(h: NetHdr, offloads: bool, len: usize) -> net::Error {
    let mut dev = if offloads {
        offload_device()
    } else {
        MemNetDevice::new()
    };
    dev.hostile = NetHostile::RxHeader(h.to_bytes()[..10].try_into().unwrap());
    let mut d = offload_driver(dev).unwrap();
    let hdr = if len > 1514 {
        NetHdr {
            flags: NetHdr::NEEDS_CSUM,
            gso_type: NetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    } else {
        NetHdr::default()
    };
    d.send_with_hdr(&frame(len, 7), &hdr).unwrap();
    d.recv_wait_with_hdr().unwrap_err()
}

fn rx_why(e: net::Error) -> &'static str {
    match e {
        net::Error::BadRxHeader { why, .. } => why,
        other => panic!("expected BadRxHeader, got {other:?}"),
    }
}

#[test]
fn rx_checksum_flags_without_guest_csum() {
    let e = hostile_rx_header(NetHdr::partial_csum(34, 6), false, 100);
    assert!(rx_why(e).contains("GUEST_CSUM"));
}

#[test]
fn rx_checksum_field_outside_the_frame() {
    let e = hostile_rx_header(NetHdr::partial_csum(99, 0), true, 100);
    assert!(rx_why(e).contains("outside the frame"));
    let e = hostile_rx_header(NetHdr::partial_csum(u16::MAX, u16::MAX), true, 100);
    assert!(rx_why(e).contains("outside the frame"));
}

#[test]
fn rx_unknown_flags() {
    let e = hostile_rx_header(
        NetHdr {
            flags: 0x80,
            ..NetHdr::default()
        },
        true,
        100,
    );
    assert!(rx_why(e).contains("flags"));
}

#[test]
fn rx_gso_type_not_negotiated() {
    let udp = NetHdr {
        gso_type: 3,
        gso_size: 1000,
        ..NetHdr::partial_csum(34, 6)
    };
    assert!(rx_why(hostile_rx_header(udp, true, 100)).contains("GSO type"));
    let tcp = NetHdr {
        gso_type: NetHdr::GSO_TCPV4,
        ..udp
    };
    // TSO is not negotiated without the offload features.
    let e = hostile_rx_header(tcp, false, 100);
    assert!(matches!(e, net::Error::BadRxHeader { .. }), "{e:?}");
}

#[test]
fn rx_gso_without_needs_csum_or_gso_size() {
    let h = NetHdr {
        gso_type: NetHdr::GSO_TCPV4,
        gso_size: 1448,
        ..NetHdr::default()
    };
    assert!(rx_why(hostile_rx_header(h, true, 100)).contains("NEEDS_CSUM"));
    let h = NetHdr {
        gso_size: 0,
        gso_type: NetHdr::GSO_TCPV4,
        ..NetHdr::partial_csum(34, 16)
    };
    assert!(rx_why(hostile_rx_header(h, true, 100)).contains("gso_size"));
}

#[test]
fn rx_frame_above_the_mtu_without_gso() {
    // A 64 KiB frame delivered with a header claiming no segmentation.
    let e = hostile_rx_header(NetHdr::default(), true, 9000);
    assert!(
        matches!(
            e,
            net::Error::FrameTooLong {
                len: 9000,
                max: 1514
            }
        ),
        "{e:?}"
    );
}

// ---- Multi-queue and the control queue (5.1.6.5). ----

fn ctrl_device(queue_pairs: u16) -> MemNetDevice {
    let mut dev = MemNetDevice::new();
    dev.ctrl = true;
    dev.queue_pairs = queue_pairs;
    dev
}

fn driver_with_pairs(
    dev: MemNetDevice,
    queue_pairs: u16,
) -> Result<NetDriver<InProcessTransport<MemNetDevice>>, net::Error> {
    let mem = Arc::new(DmaMemory::new(32 << 20).unwrap());
    NetDriver::new(
        InProcessTransport::new(mem, dev),
        NetOptions {
            queue_pairs,
            ..NetOptions::default()
        },
    )
}

#[test]
fn control_queue_sets_rx_modes_and_the_mac() {
    for packed in [false, true] {
        let mut dev = ctrl_device(1);
        dev.packed = packed;
        let mut d = driver(dev).unwrap();
        assert!(d.has_control_queue());
        d.set_promisc(true).unwrap();
        assert!(d.transport().device().promisc);
        d.set_allmulti(true).unwrap();
        d.set_promisc(false).unwrap();
        let dev = d.transport().device();
        assert!(!dev.promisc && dev.allmulti);
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        d.set_mac(mac).unwrap();
        assert_eq!(d.transport().device().mac, mac);
        assert_eq!(d.config().mac, Some(mac));
        assert!(matches!(
            d.set_mac([0x01, 0, 0, 0, 0, 1]),
            Err(net::Error::MulticastMac(_))
        ));
        // Four commands reached the device, the multicast address did not.
        assert_eq!(d.transport().device().commands.len(), 4);
        // Data still flows.
        let f = frame(100, 3);
        d.send(&f).unwrap();
        assert_eq!(d.recv_wait().unwrap(), f);
        // More commands than the control ring holds: indices wrap.
        for i in 0..300 {
            d.set_allmulti(i % 2 == 0).unwrap();
        }
    }
}

#[test]
fn without_a_control_queue_commands_are_refused() {
    let mut d = driver(MemNetDevice::new()).unwrap();
    assert!(!d.has_control_queue());
    assert!(matches!(
        d.set_promisc(true),
        Err(net::Error::NoControlQueue)
    ));
    assert!(matches!(
        d.set_queue_pairs(1),
        Err(net::Error::NoControlQueue)
    ));
    // A control queue but no MQ.
    let mut d = driver(ctrl_device(1)).unwrap();
    assert!(matches!(
        d.set_queue_pairs(1),
        Err(net::Error::NotNegotiated("VIRTIO_NET_F_MQ"))
    ));
}

#[test]
fn multi_queue_pairs_each_loop_back_and_the_pair_count_is_set() {
    let mut d = driver_with_pairs(ctrl_device(4), 3).unwrap();
    assert_eq!(d.config().max_queue_pairs, 4);
    assert_eq!(d.queue_pairs(), 3);
    assert_eq!(d.active_queue_pairs(), 3);
    assert_eq!(d.transport().device().active_pairs, 3);
    for round in 0..100u32 {
        for pair in 0..3u16 {
            let f = frame(
                60 + (round as usize * 7 + usize::from(pair)) % 1400,
                pair as u8 + 1,
            );
            d.send_on(pair, &f, &NetHdr::default()).unwrap();
            let (_, got) = d.recv_wait_on(pair).unwrap();
            assert_eq!(got, f, "round {round} pair {pair}");
        }
    }
    d.set_queue_pairs(2).unwrap();
    assert_eq!(d.transport().device().active_pairs, 2);
    assert!(matches!(
        d.set_queue_pairs(4),
        Err(net::Error::NoSuchPair { pair: 4, pairs: 3 })
    ));
    assert!(matches!(
        d.set_queue_pairs(0),
        Err(net::Error::NoSuchPair { pair: 0, .. })
    ));
    assert!(matches!(
        d.send_on(3, &frame(60, 1), &NetHdr::default()),
        Err(net::Error::NoSuchPair { pair: 3, pairs: 3 })
    ));
    // Asking for more pairs than the device has gives the device's.
    let d = driver_with_pairs(ctrl_device(2), 8).unwrap();
    assert_eq!(d.queue_pairs(), 2);
}

#[test]
fn control_ack_err_is_a_refusal() {
    let mut dev = ctrl_device(1);
    dev.hostile = NetHostile::CtrlAck(1);
    let mut d = driver(dev).unwrap();
    assert!(matches!(
        d.set_promisc(true),
        Err(net::Error::CommandFailed {
            class: 0,
            command: 0
        })
    ));
}

#[test]
fn control_ack_with_garbage() {
    let mut dev = ctrl_device(1);
    dev.hostile = NetHostile::CtrlAck(0x5a);
    let mut d = driver(dev).unwrap();
    assert!(matches!(
        d.set_allmulti(true),
        Err(net::Error::BadAck {
            ack: 0x5a,
            len: 1,
            ..
        })
    ));
    // The queue is still usable: the next command gets its own (garbage) answer, not a hang.
    assert!(matches!(
        d.set_promisc(true),
        Err(net::Error::BadAck { .. })
    ));
}

#[test]
fn config_max_virtqueue_pairs_with_garbage() {
    for bad in [0u16, 0x8001, u16::MAX] {
        let mut dev = ctrl_device(2);
        let mut c = dev.honest_config();
        c[offset_of!(virtio_net_config, max_virtqueue_pairs)..][..2]
            .copy_from_slice(&bad.to_le_bytes());
        dev.hostile = NetHostile::Config(c);
        let e = driver_with_pairs(dev, 2).unwrap_err();
        assert!(
            matches!(e, net::Error::InvalidConfig { field: "max_virtqueue_pairs", value } if value == u64::from(bad)),
            "{e:?}"
        );
    }
}

#[test]
fn a_queue_pair_is_reset_alone() {
    for packed in [false, true] {
        let mut dev = ctrl_device(2);
        dev.packed = packed;
        let mut d = driver_with_pairs(dev, 2).unwrap();
        let hdr = NetHdr::default();
        // A device error on pair 1's receive queue.
        d.transport_mut().device_mut().hostile = NetHostile::ShortRx;
        d.send_on(1, &frame(60, 3), &hdr).unwrap();
        assert!(matches!(
            d.recv_wait_on(1),
            Err(net::Error::ShortRxBuffer { len: 3, .. })
        ));
        d.transport_mut().device_mut().hostile = NetHostile::None;
        // A frame for pair 0 that the device holds until pair 0 posts buffers again is not
        // touched by pair 1's reset.
        let f0 = frame(70, 5);
        d.send_on(0, &f0, &hdr).unwrap();
        d.reset_queue_pair(1).unwrap();
        assert_eq!(d.recv_wait_on(0).unwrap().1, f0, "packed {packed}");
        // Both pairs carry frames again, more than a ring holds.
        for i in 0..600usize {
            let pair = (i % 2) as u16;
            let f = frame(60 + i % 1400, i as u8 | 1);
            d.send_on(pair, &f, &hdr).unwrap();
            assert_eq!(
                d.recv_wait_on(pair).unwrap().1,
                f,
                "packed {packed} frame {i}"
            );
        }
        // The control queue was not reset.
        d.set_promisc(true).unwrap();
        assert!(d.transport().device().promisc);
    }
}

#[test]
fn a_polling_driver_turns_notifications_off_and_still_receives() {
    for packed in [false, true] {
        let mut dev = MemNetDevice::new();
        dev.packed = packed;
        let mut d = driver(dev).unwrap();
        d.disable_notifications(0).unwrap();
        for i in 0..300usize {
            let f = frame(60 + i % 1000, i as u8 | 1);
            d.send(&f).unwrap();
            assert_eq!(d.recv().unwrap(), Some(f), "packed {packed}, frame {i}");
        }
        assert!(matches!(
            d.disable_notifications(1),
            Err(net::Error::NoSuchPair { pair: 1, .. })
        ));
    }
}

// ---- Reconnection. ----

#[test]
fn a_reconnection_sets_the_control_state_again_and_frames_flow_on_every_pair() {
    for packed in [false, true] {
        let mut dev = ctrl_device(3);
        dev.packed = packed;
        let mut d = driver_with_pairs(dev, 3).unwrap();
        d.set_promisc(true).unwrap();
        d.set_allmulti(false).unwrap();
        let mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        d.set_mac(mac).unwrap();
        d.set_queue_pairs(2).unwrap();
        // A frame sent and not read is lost with the old device.
        d.send(&frame(80, 1)).unwrap();
        // A new device, as a restarted back-end is: fresh state, nothing in flight.
        let mut fresh = ctrl_device(3);
        fresh.packed = packed;
        let mem = d.memory().clone();
        d.reconnect(InProcessTransport::new(mem, fresh)).unwrap();
        assert_eq!(d.reconnections(), 1);
        let dev = d.transport().device();
        assert!(dev.promisc && !dev.allmulti, "packed {packed}");
        assert_eq!(dev.mac, mac);
        assert_eq!(dev.active_pairs, 2);
        assert_eq!(dev.commands.len(), 4, "{:?}", dev.commands);
        assert_eq!(d.config().mac, Some(mac));
        // Every pair set up loops back, and the lost frame does not come back.
        for pair in 0..3u16 {
            let f = frame(100 + usize::from(pair), 10 + pair as u8);
            d.send_on(pair, &f, &NetHdr::default()).unwrap();
            assert_eq!(d.recv_wait_on(pair).unwrap().1, f, "pair {pair}");
        }
        assert!(d.recv().unwrap().is_none());
    }
}

#[test]
fn a_reconnection_to_a_device_that_changed_is_refused() {
    let mut d = driver_with_pairs(ctrl_device(2), 2).unwrap();
    let mem = d.memory().clone();
    // Fewer pairs than set up.
    let e = d
        .reconnect(InProcessTransport::new(mem.clone(), ctrl_device(1)))
        .unwrap_err();
    assert!(matches!(e, net::Error::DeviceChanged(_)), "{e:?}");
    // A larger MTU than the transmit slots were made for.
    let mut big = ctrl_device(2);
    big.mtu = 9000;
    let e = d.reconnect(InProcessTransport::new(mem, big)).unwrap_err();
    assert!(matches!(e, net::Error::DeviceChanged("mtu")), "{e:?}");
    // Other memory.
    let other = Arc::new(DmaMemory::new(32 << 20).unwrap());
    let e = d
        .reconnect(InProcessTransport::new(other, ctrl_device(2)))
        .unwrap_err();
    assert!(matches!(e, net::Error::DifferentMemory), "{e:?}");
    assert_eq!(d.reconnections(), 0);
}
