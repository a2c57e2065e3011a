//! Notification suppression, driver side against the device's rule: the driver's
//! `enable_notifications_after(n)` (what `BlkDriver::wait_for` sets before it sleeps) is read by
//! the in-process device model's `DeviceQueue::should_notify`, which decides as a device does
//! (split: `used_event`, virtio 1.2 2.7.10; packed: the driver event suppression area, 2.8.10).
//! The device completes one chain at a time and asks after each whether to notify: with chains
//! alike it must notify at the `n`-th and not before; with chains of mixed lengths on a packed
//! ring, no later than the `n`-th. Many rounds, so the rings and wrap counters go round.

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::queue::packed::PackedQueue;
use blanket_virtio::queue::split::SplitQueue;
use blanket_virtio::queue::{QueueFeatures, Segment, VirtQueue};
use blanket_virtio::transport::inproc::DeviceQueue;

const SIZE: u16 = 16;

fn pair(packed: bool, indirect_desc: bool) -> (DmaMemory, Box<dyn VirtQueue>, DeviceQueue) {
    let dma = DmaMemory::new(4 << 20).unwrap();
    let f = QueueFeatures {
        event_idx: true,
        indirect_desc,
        in_order: false,
    };
    let (q, dev): (Box<dyn VirtQueue>, _) = if packed {
        let q = PackedQueue::allocate(&dma, SIZE, f).unwrap();
        let dev = DeviceQueue::new_packed(q.layout());
        (Box::new(q), dev)
    } else {
        let q = SplitQueue::allocate(&dma, SIZE, f).unwrap();
        let dev = DeviceQueue::new(q.layout());
        (Box::new(q), dev)
    };
    (dma, q, dev)
}

/// A chain of `n` 512-byte segments, the last device-writable.
fn chain(dma: &DmaMemory, n: usize) -> Vec<Segment> {
    (0..n)
        .map(|i| Segment {
            addr: dma.alloc(512).unwrap(),
            len: 512,
            device_writable: i + 1 == n,
        })
        .collect()
}

/// Runs `rounds` rounds: the driver fills the ring with chains of `lens` segments (in turn),
/// asks to be notified after `want` completions, and the device completes one chain at a time
/// until it decides to notify. Returns, per round, (asked for, notified at).
fn rounds(packed: bool, indirect: bool, lens: &[usize], want: u16, n: usize) -> Vec<(u16, u16)> {
    let (dma, mut q, mut dev) = pair(packed, indirect);
    let mem = dma.guest_memory().clone();
    let chains: Vec<Vec<Segment>> = lens.iter().map(|&l| chain(&dma, l)).collect();
    let mut next = 0usize;
    let mut seen = Vec::new();
    for _ in 0..n {
        while q.has_room_for(chains[next % chains.len()].len()) {
            q.add(&chains[next % chains.len()]).unwrap();
            next += 1;
        }
        q.publish().unwrap();
        let in_flight = SIZE as usize - q.free_descriptors();
        assert!(in_flight > 0);
        // Nothing is used yet: the driver may sleep.
        assert!(!q.enable_notifications_after(want).unwrap());
        let mut done = 0u16;
        let notified_at = loop {
            let before = dev.used_position();
            let c = dev
                .pop_avail(&mem)
                .unwrap()
                .expect("the device ran dry before it notified");
            dev.push_used(&mem, u32::from(c.head), 0).unwrap();
            done += 1;
            if dev.should_notify(&mem, before, true).unwrap() {
                break done;
            }
        };
        seen.push((want, notified_at));
        // The driver takes what was used, as `wait_for` does once woken.
        for _ in 0..notified_at {
            assert!(q.pop_used().unwrap().is_some());
        }
        assert!(q.pop_used().unwrap().is_none());
    }
    seen
}

#[test]
fn chains_alike_are_notified_at_the_nth_completion() {
    for packed in [false, true] {
        // Indirect (one ring descriptor each on a packed ring), direct single descriptors,
        // and direct chains of three (a virtio-blk read without indirect descriptors).
        for (indirect, len) in [(true, 3), (false, 1), (false, 3)] {
            let want = if len == 3 && !indirect { 3 } else { 4 };
            let seen = rounds(packed, indirect, &[len], want, 40);
            assert!(
                seen.iter().all(|&(w, at)| at == w),
                "packed {packed}, indirect {indirect}, {len} segments: {seen:?}"
            );
        }
        // One at a time: the first completion.
        let seen = rounds(packed, false, &[1], 1, 20);
        assert!(seen.iter().all(|&(_, at)| at == 1), "{seen:?}");
    }
}

#[test]
fn chains_of_mixed_lengths_are_notified_no_later_than_the_nth() {
    // A packed ring counts ring descriptors, not chains: with chains of 1 and 3 descriptors in
    // flight the offset is placed for the shortest, so the notification may come early, never
    // late. A split ring counts chains and is exact.
    for packed in [false, true] {
        let seen = rounds(packed, false, &[1, 3, 3], 3, 60);
        assert!(
            seen.iter().all(|&(w, at)| at >= 1 && at <= w),
            "packed {packed}: {seen:?}"
        );
        if !packed {
            assert!(seen.iter().all(|&(w, at)| at == w), "{seen:?}");
        }
    }
}
