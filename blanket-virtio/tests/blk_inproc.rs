//! virtio-blk requests against the in-process RAM-disk device.

use std::sync::Arc;
use std::time::Duration;

use blanket_virtio::blk::{self, BlkDriver, BlkOptions, DataBuf, Request, Status};
use blanket_virtio::memory::DmaMemory;
use blanket_virtio::transport::inproc::{Hostile, InProcessTransport, MemBlkDevice};
use vm_memory::Bytes;

type Driver = BlkDriver<InProcessTransport<MemBlkDevice>>;

fn driver_with(options: BlkOptions) -> Driver {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let mut dev = MemBlkDevice::new(4096);
    dev.num_queues = 4;
    BlkDriver::new(InProcessTransport::new(mem, dev), options).unwrap()
}

fn driver() -> Driver {
    driver_with(BlkOptions::default())
}

#[test]
fn config_is_read() {
    let d = driver();
    let c = d.config();
    assert_eq!(c.capacity, 4096);
    assert_eq!(c.blk_size, Some(512));
    assert_eq!(c.seg_max, Some(126));
    assert_eq!(c.size_max, Some(65536));
    assert_eq!(c.num_queues, 4);
    assert_eq!(c.writeback, Some(true));
    assert_eq!(c.topology.unwrap().physical_block_exp, 3);
    assert_eq!(c.discard.unwrap().max_segments, 1);
    assert!(c.write_zeroes.unwrap().1);
    assert!(c.flush);
    assert!(!c.read_only);
    assert_eq!(d.num_queues(), 1);
}

#[test]
fn write_then_read_back() {
    for (event_idx, indirect_desc) in [(true, true), (false, false), (true, false), (false, true)] {
        let mut d = driver_with(BlkOptions {
            event_idx,
            indirect_desc,
            // Small bounce buffer: requests are split.
            bounce_bytes: 64 << 10,
            ..BlkOptions::default()
        });
        let data: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        d.write(3, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        d.read(3, &mut back).unwrap();
        assert!(
            back == data,
            "event_idx {event_idx} indirect {indirect_desc}"
        );
        let disk = &d.transport().device().disk;
        assert!(disk[3 * 512..3 * 512 + data.len()] == data[..]);
    }
}

#[test]
fn flush_discard_write_zeroes_get_id() {
    let mut d = driver();
    d.write(0, &[0xab; 8192]).unwrap();
    d.flush().unwrap();
    assert_eq!(d.transport().device().flushes, 1);
    d.discard(2, 2).unwrap();
    d.write_zeroes(8, 4, true).unwrap();
    let disk = &d.transport().device().disk;
    assert!(disk[..1024].iter().all(|&b| b == 0xab));
    assert!(disk[1024..2048].iter().all(|&b| b == 0));
    assert!(disk[2048..4096].iter().all(|&b| b == 0xab));
    assert!(disk[4096..6144].iter().all(|&b| b == 0));
    assert!(disk[6144..8192].iter().all(|&b| b == 0xab));
    let id = d.get_id().unwrap();
    assert_eq!(&id[..13], b"blanket-inmem");
}

#[test]
fn requests_are_checked_before_they_reach_the_device() {
    let mut d = driver();
    let mut buf = vec![0u8; 1024];
    assert!(matches!(
        d.read(4095, &mut buf),
        Err(blk::Error::OutOfRange {
            sector: 4095,
            sectors: 2,
            capacity: 4096
        })
    ));
    assert!(matches!(
        d.read(0, &mut buf[..100]),
        Err(blk::Error::BadLength(100))
    ));
    assert!(matches!(
        d.read(u64::MAX, &mut buf),
        Err(blk::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        d.discard(0, 0),
        Err(blk::Error::RangeTooLarge { .. })
    ));
    assert!(matches!(
        d.write_zeroes(u64::MAX - 1, 4, false),
        Err(blk::Error::OutOfRange { .. })
    ));
    let bufs = vec![
        DataBuf {
            addr: d.memory().base(),
            len: 512
        };
        200
    ];
    assert!(matches!(
        d.submit(
            0,
            &Request::Read {
                sector: 0,
                bufs: &bufs
            },
            0
        ),
        Err(blk::Error::TooManySegments { .. })
    ));
    assert!(matches!(
        d.submit(3, &Request::Flush, 0),
        Err(blk::Error::NoSuchQueue(3, 1))
    ));
    // Nothing reached the device, and the queue still works.
    d.read(0, &mut buf).unwrap();
}

#[test]
fn many_requests_in_flight_and_index_wrap() {
    let mut d = driver_with(BlkOptions {
        num_queues: 4,
        queue_size: 64,
        ..BlkOptions::default()
    });
    assert_eq!(d.num_queues(), 4);
    let mem = d.memory().clone();
    let bufs: Vec<DataBuf> = (0..32)
        .map(|_| DataBuf {
            addr: mem.alloc(4096).unwrap(),
            len: 4096,
        })
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        mem.guest_memory()
            .write_slice(&[i as u8; 4096], b.addr)
            .unwrap();
    }
    // More than 2^16 requests through a 64-entry queue: avail and used indices wrap.
    let mut out = Vec::new();
    let mut tag = 0u64;
    for round in 0..2100u64 {
        let q = (round % 4) as u16;
        for (i, b) in bufs.iter().enumerate() {
            let sector = (i as u64) * 8;
            let req = if round % 2 == 0 {
                Request::Write {
                    sector,
                    bufs: std::slice::from_ref(b),
                }
            } else {
                Request::Read {
                    sector,
                    bufs: std::slice::from_ref(b),
                }
            };
            d.submit(q, &req, tag).unwrap();
            tag += 1;
        }
        d.kick(q).unwrap();
        out.clear();
        while out.len() < bufs.len() {
            d.wait(q, &mut out).unwrap();
        }
        assert!(out.iter().all(|c| c.status == Status::Ok));
    }
    for (i, b) in bufs.iter().enumerate() {
        let mut back = [0u8; 4096];
        mem.guest_memory().read_slice(&mut back, b.addr).unwrap();
        assert!(back.iter().all(|&x| x == i as u8));
    }
}

#[test]
fn blocking_helpers_keep_other_completions_for_poll() {
    let mut d = driver();
    let buf = DataBuf {
        addr: d.memory().alloc(4096).unwrap(),
        len: 4096,
    };
    d.submit(
        0,
        &Request::Read {
            sector: 0,
            bufs: &[buf],
        },
        42,
    )
    .unwrap();
    assert!(matches!(
        d.submit(0, &Request::Flush, blk::BLOCKING_TAG),
        Err(blk::Error::ReservedTag)
    ));
    // The blocking flush publishes both; the read's completion is kept.
    d.flush().unwrap();
    let mut out = Vec::new();
    assert_eq!(d.poll(0, &mut out).unwrap(), 1);
    assert_eq!(out[0].tag, 42);
    assert_eq!(out[0].status, Status::Ok);
}

fn packed_driver(options: BlkOptions) -> Driver {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let mut dev = MemBlkDevice::new(4096);
    dev.num_queues = 2;
    dev.packed = true;
    let d = BlkDriver::new(InProcessTransport::new(mem, dev), options).unwrap();
    let packed = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_RING_PACKED;
    assert!(d.features() & packed != 0);
    d
}

#[test]
fn packed_ring_write_then_read_back() {
    for (event_idx, indirect_desc) in [(true, true), (false, false), (true, false), (false, true)] {
        let mut d = packed_driver(BlkOptions {
            event_idx,
            indirect_desc,
            queue_size: 16,
            bounce_bytes: 16 << 10,
            ..BlkOptions::default()
        });
        let data: Vec<u8> = (0..200 * 1024).map(|i| (i * 13 % 253) as u8).collect();
        d.write(5, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        d.read(5, &mut back).unwrap();
        assert!(
            back == data,
            "event_idx {event_idx} indirect {indirect_desc}"
        );
        d.flush().unwrap();
        d.discard(5, 1).unwrap();
        d.write_zeroes(6, 1, false).unwrap();
        assert_eq!(&d.get_id().unwrap()[..13], b"blanket-inmem");
        let disk = &d.transport().device().disk;
        assert!(disk[5 * 512..7 * 512].iter().all(|&b| b == 0));
        assert!(disk[7 * 512..5 * 512 + data.len()] == data[1024..]);
    }
}

#[test]
fn packed_ring_out_of_order_completions_and_wrap() {
    // Chains of 3 descriptors (no indirect) in a ring of 16: positions and wrap counters do not
    // line up with ids, and the ring wraps thousands of times.
    let mut d = packed_driver(BlkOptions {
        indirect_desc: false,
        queue_size: 16,
        ..BlkOptions::default()
    });
    let mem = d.memory().clone();
    let bufs: Vec<DataBuf> = (0..5)
        .map(|_| DataBuf {
            addr: mem.alloc(4096).unwrap(),
            len: 4096,
        })
        .collect();
    let mut out = Vec::new();
    for round in 0..3000u64 {
        for (i, b) in bufs.iter().enumerate() {
            let req = Request::Write {
                sector: i as u64 * 8,
                bufs: std::slice::from_ref(b),
            };
            d.submit(0, &req, round * 10 + i as u64).unwrap();
        }
        d.kick(0).unwrap();
        out.clear();
        while out.len() < bufs.len() {
            d.wait(0, &mut out).unwrap();
        }
        assert!(out.iter().all(|c| c.status == Status::Ok));
    }
}

fn in_order_driver(packed: bool, batch: u16, options: BlkOptions) -> Driver {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let mut dev = MemBlkDevice::new(4096);
    dev.packed = packed;
    dev.in_order = true;
    dev.in_order_batch = batch;
    let d = BlkDriver::new(InProcessTransport::new(mem, dev), options).unwrap();
    let in_order = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
    assert!(d.features() & in_order != 0);
    d
}

#[test]
fn in_order_batches_complete_every_request_once_and_wrap() {
    // The device reports completions in batches (one used element or descriptor for up to
    // `batch` requests, naming the last). Direct chains of 3 descriptors in a ring of 16 (the
    // descriptors are used in ring order and wrap at the table's end), or indirect ones; more
    // than 2^16 requests, so the indices wrap too.
    for (packed, indirect_desc, batch, rounds) in [
        (false, false, 3, 13200u64),
        (false, true, 8, 13200),
        (true, false, 3, 3000),
        (true, true, 1, 3000),
    ] {
        let mut d = in_order_driver(
            packed,
            batch,
            BlkOptions {
                indirect_desc,
                // Indirect tables for every request when they are on (short chains would
                // otherwise be direct).
                direct_max: 0,
                queue_size: 16,
                ..BlkOptions::default()
            },
        );
        let mem = d.memory().clone();
        let bufs: Vec<DataBuf> = (0..5)
            .map(|_| DataBuf {
                addr: mem.alloc(4096).unwrap(),
                len: 4096,
            })
            .collect();
        let mut out = Vec::new();
        for round in 0..rounds {
            for (i, b) in bufs.iter().enumerate() {
                let sector = i as u64 * 8;
                if round % 2 == 0 {
                    mem.guest_memory()
                        .write_slice(&[(round as u8).wrapping_add(i as u8); 4096], b.addr)
                        .unwrap();
                }
                let req = if round % 2 == 0 {
                    Request::Write {
                        sector,
                        bufs: std::slice::from_ref(b),
                    }
                } else {
                    Request::Read {
                        sector,
                        bufs: std::slice::from_ref(b),
                    }
                };
                d.submit(0, &req, round * 10 + i as u64).unwrap();
            }
            d.kick(0).unwrap();
            out.clear();
            while out.len() < bufs.len() {
                d.wait(0, &mut out).unwrap();
            }
            let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
            let want: Vec<u64> = (0..5).map(|i| round * 10 + i).collect();
            assert_eq!(tags, want, "packed {packed} batch {batch} round {round}");
            assert!(out.iter().all(|c| c.status == Status::Ok));
            if round % 2 == 1 {
                for (i, b) in bufs.iter().enumerate() {
                    let mut back = [0u8; 4096];
                    mem.guest_memory().read_slice(&mut back, b.addr).unwrap();
                    let v = ((round - 1) as u8).wrapping_add(i as u8);
                    assert!(back.iter().all(|&x| x == v), "round {round} buf {i}");
                }
            }
        }
        let mut back = vec![0u8; 4096];
        d.read(0, &mut back).unwrap();
    }
}

fn read_on(d: &mut Driver, queue: u16, sector: u64, tag: u64) -> Result<Vec<u8>, blk::Error> {
    let buf = DataBuf {
        addr: d.memory().alloc(4096).unwrap(),
        len: 4096,
    };
    let req = Request::Read {
        sector,
        bufs: std::slice::from_ref(&buf),
    };
    d.submit(queue, &req, tag)?;
    d.kick(queue)?;
    let mut out = Vec::new();
    while out.is_empty() {
        d.wait(queue, &mut out)?;
    }
    assert_eq!(out[0].tag, tag);
    assert_eq!(out[0].status, Status::Ok);
    let mut back = vec![0u8; 4096];
    d.memory()
        .guest_memory()
        .read_slice(&mut back, buf.addr)
        .unwrap();
    Ok(back)
}

#[test]
fn a_queue_broken_by_the_device_is_reset_alone() {
    use blanket_virtio::queue::Error as QueueError;
    use blanket_virtio::transport::inproc::Hostile;
    for packed in [false, true] {
        let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
        let mut dev = MemBlkDevice::new(4096);
        dev.num_queues = 2;
        dev.packed = packed;
        dev.disk[8 * 512..9 * 512].fill(0x5a);
        let mut d = BlkDriver::new(
            InProcessTransport::new(mem, dev),
            BlkOptions {
                num_queues: 2,
                ..BlkOptions::default()
            },
        )
        .unwrap();
        let ring_reset = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_RING_RESET;
        assert!(d.features() & ring_reset != 0);
        // A device error breaks queue 1.
        d.transport_mut().device_mut().hostile = Hostile::UsedLenTooLarge;
        let e = read_on(&mut d, 1, 8, 1).unwrap_err();
        assert!(
            matches!(e, blk::Error::Queue(QueueError::UsedLenTooLarge { .. })),
            "{e:?}"
        );
        assert!(matches!(
            read_on(&mut d, 1, 8, 2),
            Err(blk::Error::Queue(QueueError::Broken))
        ));
        d.transport_mut().device_mut().hostile = Hostile::None;
        // A request made available on queue 0 and not yet kicked stays there.
        let buf = DataBuf {
            addr: d.memory().alloc(4096).unwrap(),
            len: 4096,
        };
        d.submit(
            0,
            &Request::Read {
                sector: 8,
                bufs: std::slice::from_ref(&buf),
            },
            100,
        )
        .unwrap();
        // The broken request is the one lost.
        assert_eq!(d.reset_queue(1).unwrap(), [1]);
        assert_eq!(d.transport().device().queue_resets, [1]);
        d.kick(0).unwrap();
        let mut out = Vec::new();
        d.wait(0, &mut out).unwrap();
        assert_eq!((out[0].tag, out[0].status), (100, Status::Ok));
        // Queue 1 works again, from a fresh ring, and so does queue 0.
        for tag in 3..40 {
            let back = read_on(&mut d, 1, 8, tag).unwrap();
            assert!(back[..512].iter().all(|&b| b == 0x5a), "packed {packed}");
        }
        read_on(&mut d, 0, 8, 50).unwrap();
    }
}

#[test]
fn requests_in_flight_on_a_reset_queue_are_returned_as_lost() {
    use blanket_virtio::transport::inproc::Hostile;
    let mut d = driver_with(BlkOptions {
        num_queues: 2,
        ..BlkOptions::default()
    });
    d.transport_mut().device_mut().hostile = Hostile::NeverCompletes;
    let buf = DataBuf {
        addr: d.memory().alloc(4096).unwrap(),
        len: 4096,
    };
    for tag in [7, 8, 9] {
        let req = Request::Write {
            sector: tag * 8,
            bufs: std::slice::from_ref(&buf),
        };
        d.submit(1, &req, tag).unwrap();
    }
    d.kick(1).unwrap();
    let mut lost = d.reset_queue(1).unwrap();
    lost.sort();
    assert_eq!(lost, [7, 8, 9]);
    d.transport_mut().device_mut().hostile = Hostile::None;
    read_on(&mut d, 1, 0, 10).unwrap();
}

#[test]
fn queue_reset_needs_ring_reset() {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let mut dev = MemBlkDevice::new(4096);
    dev.ring_reset = false;
    let mut d = BlkDriver::new(InProcessTransport::new(mem, dev), BlkOptions::default()).unwrap();
    let e = d.reset_queue(0).unwrap_err();
    assert!(
        matches!(
            e,
            blk::Error::Transport(blanket_virtio::transport::Error::QueueResetUnsupported(0))
        ),
        "{e:?}"
    );
    assert!(matches!(
        d.reset_queue(5),
        Err(blk::Error::NoSuchQueue(5, 1))
    ));
    // Nothing was reset: the queue still works.
    read_on(&mut d, 0, 0, 1).unwrap();
}

/// Reads an eventfd's counter (0 when it was not written since the last read).
fn eventfd_count(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::os::fd::AsRawFd;
    let mut v = 0u64;
    // SAFETY: reading 8 bytes into a local from a non-blocking eventfd the test owns.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
    if n == 8 { v } else { 0 }
}

#[test]
fn the_call_fd_given_is_written_when_the_device_notifies() {
    use blanket_virtio::transport::Transport;
    use std::os::fd::FromRawFd;
    let mut d = driver();
    // SAFETY: eventfd takes integer arguments only; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let efd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    assert!(
        d.transport_mut()
            .set_call_fd(0, Some(efd.try_clone().unwrap()))
            .unwrap()
    );
    assert_eq!(eventfd_count(&efd), 0);
    d.write(0, &[7u8; 512]).unwrap();
    assert!(
        eventfd_count(&efd) >= 1,
        "the device's notification wrote it"
    );
    // Back to the transport's own: the eventfd is no longer written.
    assert!(d.transport_mut().set_call_fd(0, None).unwrap());
    d.write(0, &[8u8; 512]).unwrap();
    assert_eq!(eventfd_count(&efd), 0);
    let mut back = [0u8; 512];
    d.read(0, &mut back).unwrap();
    assert_eq!(back, [8u8; 512]);
    assert!(d.transport_mut().set_call_fd(99, None).is_err());
}

#[test]
fn wait_for_takes_at_least_min_and_refuses_more_than_in_flight() {
    for packed in [false, true] {
        let mut d = if packed {
            packed_driver(BlkOptions::default())
        } else {
            driver()
        };
        let mut out = Vec::new();
        // 0 is a poll; 1 with nothing in flight could never be met.
        assert_eq!(d.wait_for(0, &mut out, 0).unwrap(), 0);
        assert!(matches!(
            d.wait_for(0, &mut out, 1),
            Err(blk::Error::TooFewInFlight {
                min: 1,
                in_flight: 0
            })
        ));
        assert!(matches!(
            d.wait_for(9, &mut out, 1),
            Err(blk::Error::NoSuchQueue(9, _))
        ));
        let bufs: Vec<DataBuf> = (0..3)
            .map(|_| DataBuf {
                addr: d.memory().alloc(4096).unwrap(),
                len: 4096,
            })
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            let req = Request::Read {
                sector: i as u64 * 8,
                bufs: std::slice::from_ref(b),
            };
            d.submit(0, &req, i as u64).unwrap();
        }
        assert!(matches!(
            d.wait_for(0, &mut out, 4),
            Err(blk::Error::TooFewInFlight {
                min: 4,
                in_flight: 3
            })
        ));
        d.kick(0).unwrap();
        assert_eq!(d.wait_for(0, &mut out, 3).unwrap(), 3, "packed {packed}");
        out.sort_by_key(|c| c.tag);
        assert!(out.iter().map(|c| c.tag).eq(0..3));
        assert!(out.iter().all(|c| c.status == Status::Ok));
        // A completion a blocking helper kept counts as one to wait for.
        out.clear();
        let req = Request::Read {
            sector: 0,
            bufs: std::slice::from_ref(&bufs[0]),
        };
        d.submit(0, &req, 7).unwrap();
        d.flush().unwrap();
        assert_eq!(d.wait_for(0, &mut out, 1).unwrap(), 1);
        assert_eq!(out[0].tag, 7);
    }
}

/// A driver that reconnects by itself, over a device that goes away after `after` requests
/// and comes back (its disk kept) when the transport reopens it.
fn reconnecting_driver(packed: bool, after: u64, event_idx: bool) -> Driver {
    let mem = Arc::new(DmaMemory::new(16 << 20).unwrap());
    let mut dev = MemBlkDevice::new(4096);
    dev.packed = packed;
    dev.hostile = Hostile::GoneAfter(after);
    let options = BlkOptions {
        reconnect: Some(Duration::from_secs(1)),
        event_idx,
        ..BlkOptions::default()
    };
    BlkDriver::new(InProcessTransport::new(mem, dev), options).unwrap()
}

#[test]
fn a_device_gone_mid_batch_is_reconnected_and_the_rest_resubmitted() {
    for packed in [false, true] {
        let mut d = reconnecting_driver(packed, 3, true);
        let bufs: Vec<DataBuf> = (0..8u8)
            .map(|i| {
                let addr = d.memory().alloc(4096).unwrap();
                d.memory()
                    .guest_memory()
                    .write_slice(&[0x10 + i; 4096], addr)
                    .unwrap();
                DataBuf { addr, len: 4096 }
            })
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            let req = Request::Write {
                sector: i as u64 * 8,
                bufs: std::slice::from_ref(b),
            };
            d.submit(0, &req, i as u64).unwrap();
        }
        // The device runs 3 of them and goes away with the fourth; the wait that then finds
        // it gone reconnects, takes the 3 from the old ring and resubmits the other 5.
        d.kick(0).unwrap();
        let mut out = Vec::new();
        assert_eq!(d.wait_for(0, &mut out, 8).unwrap(), 8, "packed {packed}");
        out.sort_by_key(|c| c.tag);
        assert!(out.iter().map(|c| c.tag).eq(0..8), "{out:?}");
        assert!(out.iter().all(|c| c.status == Status::Ok));
        assert_eq!(d.reconnections(), 1);
        let dev = d.transport().device();
        assert_eq!(dev.restarts, 1);
        // Each write ran once: the 3 done before the device went were not done again.
        assert_eq!(dev.executed, 8, "packed {packed}");
        for i in 0..8u8 {
            let o = usize::from(i) * 4096;
            assert!(dev.disk[o..o + 4096].iter().all(|&b| b == 0x10 + i));
        }
        // Nothing more is in flight, and the new device serves the next requests.
        assert_eq!(d.poll(0, &mut out).unwrap(), 0);
        let mut back = [0u8; 4096];
        d.read(8 * 5, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0x15));
    }
}

#[test]
fn a_kick_or_a_blocking_helper_that_finds_the_device_gone_reconnects() {
    // Without EVENT_IDX every kick notifies the device (with it, a device that took a
    // request and went may have asked for none).
    let mut d = reconnecting_driver(false, 2, false);
    d.write(0, &[0x21; 512]).unwrap();
    d.write(1, &[0x22; 512]).unwrap();
    // The device goes away when it takes the third write: the blocking helper's wait finds it
    // gone, reconnects and resubmits it.
    d.write(2, &[0x23; 512]).unwrap();
    assert_eq!(d.reconnections(), 1);
    // The restarted device runs one more request and goes away with the next; a kick then
    // finds it gone, with the one it did still unread in the used ring.
    d.transport_mut().device_mut().hostile = Hostile::GoneAfter(4);
    let bufs: Vec<DataBuf> = (0..3)
        .map(|_| DataBuf {
            addr: d.memory().alloc(512).unwrap(),
            len: 512,
        })
        .collect();
    let read = |d: &mut Driver, tag: u64| {
        let req = Request::Read {
            sector: tag - 5,
            bufs: std::slice::from_ref(&bufs[tag as usize - 5]),
        };
        d.submit(0, &req, tag).unwrap();
    };
    read(&mut d, 5);
    read(&mut d, 6);
    d.kick(0).unwrap();
    assert_eq!(d.reconnections(), 1);
    read(&mut d, 7);
    d.kick(0).unwrap();
    assert_eq!(d.reconnections(), 2);
    let mut out = Vec::new();
    assert_eq!(d.wait_for(0, &mut out, 3).unwrap(), 3);
    out.sort_by_key(|c| c.tag);
    assert_eq!(
        out.iter().map(|c| (c.tag, c.status)).collect::<Vec<_>>(),
        [(5, Status::Ok), (6, Status::Ok), (7, Status::Ok)]
    );
    for (b, p) in bufs.iter().zip([0x21u8, 0x22, 0x23]) {
        let mut back = [0u8; 512];
        d.memory()
            .guest_memory()
            .read_slice(&mut back, b.addr)
            .unwrap();
        assert!(back.iter().all(|&x| x == p));
    }
    // 3 writes, the read done before the device went (handed out, not run again), and the
    // two resubmitted.
    let dev = d.transport().device();
    assert_eq!((dev.restarts, dev.executed), (2, 6));
}
