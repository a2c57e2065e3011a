//! A device thread that scribbles random bytes over the used ring (ids, lengths, `used.idx`,
//! `avail_event`) while the driver adds buffers and polls: every outcome must be a completion or
//! a typed error, never a panic, and the queue recovers with a reset.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::queue::packed::PackedQueue;
use blanket_virtio::queue::split::SplitQueue;
use blanket_virtio::queue::{QueueFeatures, QueueLayout, Segment, VirtQueue};
use vm_memory::{Address, Bytes};

fn scribble(mem: Arc<DmaMemory>, area: (vm_memory::GuestAddress, u64), stop: Arc<AtomicBool>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x >> 32) % area.1.saturating_sub(8).max(1);
        let _ = mem
            .guest_memory()
            .write_slice(&x.to_le_bytes(), area.0.unchecked_add(off));
    }
}

fn drive(q: &mut dyn VirtQueue, dma: &DmaMemory) {
    let seg = Segment {
        addr: dma.alloc(4096).unwrap(),
        len: 4096,
        device_writable: true,
    };
    let hdr = Segment {
        addr: dma.alloc(16).unwrap(),
        len: 16,
        device_writable: false,
    };
    let (mut completions, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    // 300 ms, or longer (up to 10 s) until the scribbler, which a loaded machine may not
    // schedule at once, has made the device misbehave at least once.
    while start.elapsed() < Duration::from_millis(300)
        || (errors == 0 && start.elapsed() < Duration::from_secs(10))
    {
        if q.has_room_for(2) {
            match q.add(&[hdr, seg]) {
                Ok(_) => {}
                Err(_) => {
                    errors += 1;
                    q.reset().unwrap();
                    continue;
                }
            }
        }
        let _ = q.publish();
        loop {
            match q.pop_used() {
                Ok(Some(c)) => {
                    assert!(c.len <= 4096);
                    completions += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    errors += 1;
                    q.reset().unwrap();
                    break;
                }
            }
        }
        let _ = q.enable_notifications();
    }
    eprintln!("{completions} completions accepted, {errors} device errors caught");
    assert!(errors > 0);
}

#[test]
fn split_queue_survives_a_scribbling_device() {
    // With IN_ORDER too: batches read from scribbled elements are checked the same way.
    for in_order in [false, true] {
        let dma = Arc::new(DmaMemory::new(4 << 20).unwrap());
        let features = QueueFeatures {
            event_idx: true,
            indirect_desc: true,
            in_order,
        };
        let mut q = SplitQueue::allocate(&dma, 16, features).unwrap();
        // Every chain of two or more segments through an indirect table.
        q.set_direct_max(0);
        let l: QueueLayout = q.layout();
        let area = (l.used_ring, QueueLayout::used_ring_bytes(16));
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (dma, stop) = (dma.clone(), stop.clone());
            std::thread::spawn(move || scribble(dma, area, stop))
        };
        drive(&mut q, &dma);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}

#[test]
fn packed_queue_survives_a_scribbling_device() {
    // With IN_ORDER too: batches read from scribbled elements are checked the same way.
    for in_order in [false, true] {
        let dma = Arc::new(DmaMemory::new(4 << 20).unwrap());
        let features = QueueFeatures {
            event_idx: true,
            indirect_desc: false,
            in_order,
        };
        let mut q = PackedQueue::allocate(&dma, 16, features).unwrap();
        let l: QueueLayout = q.layout();
        // The device writes used descriptors into the descriptor ring itself.
        let area = (l.desc_table, 16 * 16);
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (dma, stop) = (dma.clone(), stop.clone());
            std::thread::spawn(move || scribble(dma, area, stop))
        };
        drive(&mut q, &dma);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
