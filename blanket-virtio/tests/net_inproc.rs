//! virtio-net against the in-process loopback device, and its hostile cases.

use std::mem::offset_of;
use std::sync::Arc;

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::net::{self, NetDriver, NetOptions};
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
