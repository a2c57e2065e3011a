//! The virtio cases of HOSTILE-INPUT.md ("our driver facing a device we do not trust"), one test
//! each, against the in-process [`MemBlkDevice`] set to misbehave. Each expects a typed error:
//! never a panic, a hang, or an access outside the driver's buffers.

use std::mem::offset_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_virtio::blk::{self, BlkDriver, BlkOptions, CONFIG_BYTES, Status};
use blanket_virtio::memory::DmaMemory;
use blanket_virtio::queue::split;
use blanket_virtio::transport::inproc::{Hostile, InProcessTransport, MemBlkDevice};
use blanket_virtio::transport::{self, Transport};
use virtio_bindings::virtio_blk::virtio_blk_config;

type Driver = BlkDriver<InProcessTransport<MemBlkDevice>>;

fn device(hostile: Hostile) -> InProcessTransport<MemBlkDevice> {
    let mem = Arc::new(DmaMemory::new(8 << 20).unwrap());
    let mut dev = MemBlkDevice::new(2048);
    dev.num_queues = 2;
    dev.hostile = hostile;
    InProcessTransport::new(mem, dev)
}

fn driver(hostile: Hostile) -> Driver {
    BlkDriver::new(device(hostile), BlkOptions::default()).unwrap()
}

/// Runs a 4 KiB read and returns the queue error it ended with.
fn read_queue_error(d: &mut Driver) -> split::Error {
    let mut buf = [0u8; 4096];
    match d.read(8, &mut buf) {
        Err(blk::Error::Queue(e)) => e,
        other => panic!("expected a queue error, got {other:?}"),
    }
}

fn expect_broken_afterwards(d: &mut Driver) {
    let mut buf = [0u8; 512];
    assert!(matches!(
        d.read(0, &mut buf),
        Err(blk::Error::Queue(split::Error::Broken))
    ));
}

#[test]
fn used_id_out_of_range() {
    let mut d = driver(Hostile::UsedIdOutOfRange);
    let e = read_queue_error(&mut d);
    assert!(
        matches!(e, split::Error::UsedIdOutOfRange { id: 263, size: 256 }),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn used_id_not_outstanding() {
    let mut d = driver(Hostile::UsedIdNotOutstanding);
    let e = read_queue_error(&mut d);
    assert!(
        matches!(e, split::Error::UsedIdNotOutstanding(128)),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn used_id_duplicate() {
    let mut d = driver(Hostile::UsedIdDuplicate);
    // The first completion is genuine; the request succeeds.
    let mut buf = [0u8; 4096];
    d.read(8, &mut buf).unwrap();
    // The second request (head 1) is "completed" as head 0 again.
    let e = read_queue_error(&mut d);
    assert!(matches!(e, split::Error::UsedIdDuplicate(0)), "{e:?}");
    expect_broken_afterwards(&mut d);
}

#[test]
fn used_id_in_middle_of_chain() {
    let mut d = driver(Hostile::UsedIdMidChain);
    let e = read_queue_error(&mut d);
    assert!(
        matches!(e, split::Error::UsedIdNotHead { id: 1, head: 0 }),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn used_len_larger_than_buffer() {
    let mut d = driver(Hostile::UsedLenTooLarge);
    let e = read_queue_error(&mut d);
    // 4096 bytes of data and the status byte are device-writable.
    assert!(
        matches!(
            e,
            split::Error::UsedLenTooLarge {
                id: 0,
                len: 4098,
                writable: 4097
            }
        ),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn used_idx_further_ahead_than_in_flight() {
    let mut d = driver(Hostile::UsedIdxJump);
    // One request in flight, used.idx moved by 10: seen before any element is consumed.
    let e = read_queue_error(&mut d);
    assert!(
        matches!(
            e,
            split::Error::UsedIdxTooFarAhead {
                used_idx: 10,
                last_used: 0,
                in_flight: 1
            }
        ),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

fn garbage_config(edit: impl FnOnce(&mut Vec<u8>)) -> blk::Error {
    let mut honest = MemBlkDevice::new(2048);
    honest.num_queues = 2;
    let mut c = honest.honest_config();
    edit(&mut c);
    BlkDriver::new(device(Hostile::Config(c)), BlkOptions::default()).unwrap_err()
}

fn put(c: &mut [u8], off: usize, bytes: &[u8]) {
    c[off..off + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn config_space_with_garbage_capacity() {
    let e = garbage_config(|c| {
        put(
            c,
            offset_of!(virtio_blk_config, capacity),
            &u64::MAX.to_le_bytes(),
        )
    });
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "capacity",
                value: u64::MAX
            }
        ),
        "{e:?}"
    );
}

#[test]
fn config_space_with_garbage_blk_size() {
    let e = garbage_config(|c| {
        put(
            c,
            offset_of!(virtio_blk_config, blk_size),
            &3u32.to_le_bytes(),
        )
    });
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "blk_size",
                value: 3
            }
        ),
        "{e:?}"
    );
}

#[test]
fn config_space_with_garbage_num_queues() {
    let e = garbage_config(|c| put(c, offset_of!(virtio_blk_config, num_queues), &[0, 0]));
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "num_queues",
                value: 0
            }
        ),
        "{e:?}"
    );
}

#[test]
fn config_space_with_garbage_seg_max_size_max_wce_discard() {
    let e = garbage_config(|c| put(c, offset_of!(virtio_blk_config, seg_max), &[0; 4]));
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "seg_max",
                ..
            }
        ),
        "{e:?}"
    );
    let e = garbage_config(|c| put(c, offset_of!(virtio_blk_config, size_max), &[1, 0, 0, 0]));
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "size_max",
                ..
            }
        ),
        "{e:?}"
    );
    let e = garbage_config(|c| put(c, offset_of!(virtio_blk_config, wce), &[7]));
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "writeback",
                value: 7
            }
        ),
        "{e:?}"
    );
    let e = garbage_config(|c| put(c, offset_of!(virtio_blk_config, physical_block_exp), &[200]));
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "physical_block_exp",
                ..
            }
        ),
        "{e:?}"
    );
    let e = garbage_config(|c| {
        put(
            c,
            offset_of!(virtio_blk_config, max_discard_sectors),
            &[0; 4],
        )
    });
    assert!(
        matches!(
            e,
            blk::Error::InvalidConfig {
                field: "max_discard_sectors",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn config_space_all_ones_is_rejected() {
    let e = garbage_config(|c| c.fill(0xff));
    assert!(matches!(e, blk::Error::InvalidConfig { .. }), "{e:?}");
}

#[test]
fn config_space_too_short() {
    let e = garbage_config(|c| c.truncate(CONFIG_BYTES - 1));
    assert!(
        matches!(e, blk::Error::Transport(transport::Error::InProcess(_))),
        "{e:?}"
    );
}

#[test]
fn device_resets_in_the_middle_of_a_request() {
    let mut d = driver(Hostile::GoneOnKick);
    let mut buf = [0u8; 4096];
    let e = d.read(0, &mut buf).unwrap_err();
    assert!(
        matches!(e, blk::Error::Transport(transport::Error::DeviceGone(_))),
        "{e:?}"
    );
}

/// A driver that reconnects by itself, within `limit`, to a device that goes away with its
/// first request and comes back as `after` says (`None`: not at all).
fn reconnecting(after: Option<Hostile>, limit: Duration) -> Driver {
    let mut t = device(Hostile::GoneOnKick);
    let dev = t.device_mut();
    dev.comes_back = after.is_some();
    dev.after_restart = after.unwrap_or_default();
    let options = BlkOptions {
        reconnect: Some(limit),
        ..BlkOptions::default()
    };
    BlkDriver::new(t, options).unwrap()
}

#[test]
fn a_device_that_does_not_come_back_fails_the_wait_after_the_limit() {
    let limit = Duration::from_millis(50);
    let mut d = reconnecting(None, limit);
    let started = Instant::now();
    let e = d.read(0, &mut [0u8; 512]).unwrap_err();
    let took = started.elapsed();
    match &e {
        blk::Error::ReconnectFailed { after, source } => {
            assert_eq!(*after, limit);
            assert!(
                matches!(
                    **source,
                    blk::Error::Transport(transport::Error::DeviceGone(_))
                ),
                "{source:?}"
            );
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert!(took >= limit && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(d.reconnections(), 0);
}

#[test]
fn a_device_that_comes_back_as_another_is_refused_without_retrying() {
    let mut honest = MemBlkDevice::new(2048);
    honest.num_queues = 2;
    let mut garbage = honest.honest_config();
    garbage.fill(0xff);
    // The limit is far off: a refusal comes at once, not when it runs out.
    let limit = Duration::from_secs(30);
    for after in [Hostile::Config(garbage), Hostile::QueueSize(16)] {
        let mut d = reconnecting(Some(after.clone()), limit);
        let started = Instant::now();
        let e = d.read(0, &mut [0u8; 512]).unwrap_err();
        match after {
            Hostile::QueueSize(_) => assert!(
                matches!(e, blk::Error::DeviceChanged("queue size")),
                "{e:?}"
            ),
            _ => assert!(matches!(e, blk::Error::InvalidConfig { .. }), "{e:?}"),
        }
        assert!(started.elapsed() < limit / 2, "retried until the limit");
        assert_eq!(d.reconnections(), 0);
    }
}

#[test]
fn a_device_that_goes_away_again_at_once_cannot_keep_a_wait_going() {
    // Every time it comes back it takes the request and goes away again, completing nothing:
    // each reconnection succeeds, but the time allowed counts from the first loss.
    let limit = Duration::from_millis(200);
    let mut d = reconnecting(Some(Hostile::GoneOnKick), limit);
    let started = Instant::now();
    let e = d.read(0, &mut [0u8; 512]).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, blk::Error::ReconnectFailed { .. }), "{e:?}");
    assert!(took >= limit && took < Duration::from_secs(5), "{took:?}");
    assert!(d.reconnections() >= 1, "{}", d.reconnections());
    assert!(d.transport().device().restarts >= 1);
}

#[test]
fn device_never_completes_times_out() {
    let mut d = driver(Hostile::NeverCompletes);
    let mut buf = [0u8; 4096];
    let e = d.read(0, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            blk::Error::Transport(transport::Error::Timeout { queue: 0, .. })
        ),
        "{e:?}"
    );
}

#[test]
fn wait_polls_for_its_spin_then_sleeps_and_still_ends_when_nothing_completes() {
    use blanket_virtio::blk::{DataBuf, Request};
    use std::time::{Duration, Instant};
    let spin = Duration::from_millis(50);
    let mut d = BlkDriver::new(
        device(Hostile::NeverCompletes),
        BlkOptions {
            spin,
            ..BlkOptions::default()
        },
    )
    .unwrap();
    let mem = d.memory().clone();
    let buf = |_| DataBuf {
        addr: mem.alloc(4096).unwrap(),
        len: 4096,
    };
    let bufs: Vec<DataBuf> = (0..2).map(buf).collect();
    let mut out = Vec::new();
    // Submits a read of `bufs[i]` (if any), kicks, and times the wait, which must end in the
    // transport's timeout (this device never completes).
    let mut wait_for = |i: Option<usize>| {
        if let Some(i) = i {
            d.submit(
                0,
                &Request::Read {
                    sector: 8 * i as u64,
                    bufs: &bufs[i..i + 1],
                },
                i as u64 + 1,
            )
            .unwrap();
            d.kick(0).unwrap();
        }
        let t = Instant::now();
        let e = d.wait(0, &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                blk::Error::Transport(transport::Error::Timeout { queue: 0, .. })
            ),
            "{e:?}"
        );
        t.elapsed()
    };
    // One request in flight: its completion is a whole round trip away, no polling.
    assert!(wait_for(Some(0)) < spin, "one request in flight: no spin");
    // Two in flight: the used ring is polled for the spin, then the wait goes to the transport
    // (which, for this device, times out at once).
    let polled = |took: Duration| {
        assert!(took >= spin, "polled {took:?}, less than the spin");
        assert!(took < spin * 20, "polled {took:?}, far beyond the spin");
    };
    polled(wait_for(Some(1)));
    // A poll in vain backs off: the next 2 waits sleep at once, then one polls again, in vain
    // again, and the next 4 sleep at once; and so on, doubling up to 16.
    for skipped in [2, 4, 8, 16, 16] {
        for k in 0..skipped {
            let took = wait_for(None);
            assert!(
                took < spin,
                "wait {k} after a poll in vain polled for {took:?}"
            );
        }
        polled(wait_for(None));
    }
    assert!(out.is_empty());
}

#[test]
fn queue_size_of_zero() {
    let e = BlkDriver::new(device(Hostile::QueueSize(0)), BlkOptions::default()).unwrap_err();
    assert!(
        matches!(e, blk::Error::Queue(split::Error::InvalidQueueSize(0))),
        "{e:?}"
    );
}

#[test]
fn queue_size_not_a_power_of_two() {
    for size in [3u16, 100, 255, 257, 65535] {
        let e =
            BlkDriver::new(device(Hostile::QueueSize(size)), BlkOptions::default()).unwrap_err();
        assert!(
            matches!(e, blk::Error::Queue(split::Error::InvalidQueueSize(s)) if s == size),
            "{e:?}"
        );
    }
}

#[test]
fn status_byte_with_garbage() {
    let mut d = driver(Hostile::Status(0x42));
    let mut buf = [0u8; 512];
    let e = d.read(0, &mut buf).unwrap_err();
    assert!(
        matches!(e, blk::Error::Status(Status::Invalid(0x42))),
        "{e:?}"
    );
}

#[test]
fn a_misbehaving_device_cannot_reach_other_queues() {
    // Queue 1 stays usable while queue 0 is broken.
    let t = device(Hostile::UsedIdOutOfRange);
    let opts = BlkOptions {
        num_queues: 2,
        ..BlkOptions::default()
    };
    let mut d = BlkDriver::new(t, opts).unwrap();
    assert_eq!(d.num_queues(), 2);
    let _ = read_queue_error(&mut d);
    d.transport_mut().device_mut().hostile = Hostile::None;
    let buf = blk::DataBuf {
        addr: d.memory().alloc(4096).unwrap(),
        len: 4096,
    };
    d.submit(
        1,
        &blk::Request::Read {
            sector: 0,
            bufs: &[buf],
        },
        7,
    )
    .unwrap();
    d.kick(1).unwrap();
    let mut out = Vec::new();
    d.wait(1, &mut out).unwrap();
    assert_eq!(out[0].tag, 7);
    assert_eq!(out[0].status, Status::Ok);
    let _ = d.transport().memory();
}

/// The same cases on a packed ring (section 2.8), where the device writes buffer ids.
fn packed_driver(hostile: Hostile) -> Driver {
    let mem = Arc::new(DmaMemory::new(8 << 20).unwrap());
    let mut dev = MemBlkDevice::new(2048);
    dev.packed = true;
    dev.hostile = hostile;
    BlkDriver::new(InProcessTransport::new(mem, dev), BlkOptions::default()).unwrap()
}

#[test]
fn packed_used_id_out_of_range() {
    let mut d = packed_driver(Hostile::UsedIdOutOfRange);
    let e = read_queue_error(&mut d);
    assert!(
        matches!(e, split::Error::UsedIdOutOfRange { id: 263, size: 256 }),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn packed_used_id_not_outstanding() {
    let mut d = packed_driver(Hostile::UsedIdNotOutstanding);
    let e = read_queue_error(&mut d);
    assert!(
        matches!(e, split::Error::UsedIdNotOutstanding(128)),
        "{e:?}"
    );
}

#[test]
fn packed_used_id_duplicate() {
    let mut d = packed_driver(Hostile::UsedIdDuplicate);
    let mut buf = [0u8; 4096];
    d.read(8, &mut buf).unwrap();
    let e = read_queue_error(&mut d);
    assert!(matches!(e, split::Error::UsedIdDuplicate(0)), "{e:?}");
}

#[test]
fn packed_used_len_larger_than_buffer() {
    let mut d = packed_driver(Hostile::UsedLenTooLarge);
    let e = read_queue_error(&mut d);
    assert!(
        matches!(
            e,
            split::Error::UsedLenTooLarge {
                id: 0,
                len: 4098,
                writable: 4097
            }
        ),
        "{e:?}"
    );
}

#[test]
fn packed_queue_size_not_a_power_of_two() {
    let mem = Arc::new(DmaMemory::new(8 << 20).unwrap());
    let mut dev = MemBlkDevice::new(2048);
    dev.packed = true;
    dev.hostile = Hostile::QueueSize(0);
    let e = BlkDriver::new(InProcessTransport::new(mem, dev), BlkOptions::default()).unwrap_err();
    assert!(
        matches!(e, blk::Error::Queue(split::Error::InvalidQueueSize(0))),
        "{e:?}"
    );
}

/// A driver over a device that offers `VIRTIO_F_IN_ORDER` (split or packed), which is
/// negotiated.
fn in_order_driver(hostile: Hostile, packed: bool) -> Driver {
    let mem = Arc::new(DmaMemory::new(8 << 20).unwrap());
    let mut dev = MemBlkDevice::new(2048);
    dev.packed = packed;
    dev.in_order = true;
    dev.hostile = hostile;
    // Every read through an indirect table (one descriptor each), so that heads are 0, 1, 2...
    let options = BlkOptions {
        direct_max: 0,
        ..BlkOptions::default()
    };
    let d = BlkDriver::new(InProcessTransport::new(mem, dev), options).unwrap();
    let in_order = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
    assert!(d.features() & in_order != 0, "IN_ORDER not negotiated");
    d
}

/// Submits `n` 4 KiB reads (tags 0..n) in one kick and collects completions until `n` came or
/// the queue failed.
fn reads_in_one_kick(d: &mut Driver, n: usize) -> Result<Vec<blk::BlkCompletion>, blk::Error> {
    let mem = d.memory().clone();
    for i in 0..n {
        let buf = blk::DataBuf {
            addr: mem.alloc(4096).unwrap(),
            len: 4096,
        };
        let req = blk::Request::Read {
            sector: 8 * i as u64,
            bufs: &[buf],
        };
        d.submit(0, &req, i as u64)?;
    }
    d.kick(0)?;
    let mut out = Vec::new();
    while out.len() < n {
        d.wait(0, &mut out)?;
    }
    Ok(out)
}

#[test]
fn in_order_used_id_not_next_in_order() {
    // Two reads in flight (heads 0 and 1); the device reports head 1 with used.idx moved by
    // one: head 0, the next in order, was skipped.
    let mut d = in_order_driver(Hostile::InOrderSkip, false);
    let e = reads_in_one_kick(&mut d, 2).unwrap_err();
    assert!(
        matches!(
            e,
            blk::Error::Queue(split::Error::UsedIdOutOfOrder {
                id: 1,
                expected: 0,
                batch: 2,
                pending: 1
            })
        ),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn in_order_batch_past_outstanding() {
    // Three reads in flight; the device reports them as a batch of four.
    let mut d = in_order_driver(Hostile::InOrderOverrun, false);
    let e = reads_in_one_kick(&mut d, 3).unwrap_err();
    assert!(
        matches!(
            e,
            blk::Error::Queue(split::Error::UsedIdxTooFarAhead {
                used_idx: 4,
                last_used: 0,
                in_flight: 3
            })
        ),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn in_order_reversed_completions_are_one_batch() {
    // Used elements written last to first: the first names the last request, so it reports
    // them all as one batch, and the elements after it are skipped, as 2.7.9 says. Each
    // request completes exactly once.
    for packed in [false, true] {
        let mut d = in_order_driver(Hostile::InOrderReversed, packed);
        for _ in 0..3 {
            let mut out = reads_in_one_kick(&mut d, 5).unwrap();
            out.sort_by_key(|c| c.tag);
            let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
            assert_eq!(tags, [0, 1, 2, 3, 4], "packed {packed}");
            assert!(out.iter().all(|c| c.status == Status::Ok));
            let mut more = Vec::new();
            assert_eq!(d.poll(0, &mut more).unwrap(), 0, "packed {packed}");
        }
    }
}

#[test]
fn packed_in_order_batch_past_outstanding() {
    // Three reads in flight (ids 0 to 2); the device names id 3, which is not outstanding.
    let mut d = in_order_driver(Hostile::InOrderOverrun, true);
    let e = reads_in_one_kick(&mut d, 3).unwrap_err();
    assert!(
        matches!(e, blk::Error::Queue(split::Error::UsedIdNotOutstanding(3))),
        "{e:?}"
    );
    expect_broken_afterwards(&mut d);
}

#[test]
fn packed_in_order_skip_is_taken_as_a_batch() {
    // On a packed ring nothing counts the used buffers: a used descriptor naming the second
    // of two buffers at the first one's position is a batch of both (2.8.8), and both
    // complete, once.
    let mut d = in_order_driver(Hostile::InOrderSkip, true);
    let out = reads_in_one_kick(&mut d, 2).unwrap();
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [0, 1]);
    let mut more = Vec::new();
    assert_eq!(d.poll(0, &mut more).unwrap(), 0);
}
