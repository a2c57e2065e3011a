//! blanket-virtio's driver side of a split or packed virtqueue facing a device that writes whatever
//! it likes: the fuzzer plays the device (used elements, `used.idx`, packed descriptors with their
//! ids, lengths, flags and wrap bits, the event suppression fields, raw bytes anywhere the device
//! may write), interleaved with the driver adding chains, publishing, polling and resetting.
//!
//! Invariants, against a model of what the driver has in flight: no panic; every completion names
//! a buffer that was added and not completed since (the oldest one with `IN_ORDER`; on a split
//! ring with `IN_ORDER`, one that was published), with a length no larger than the buffer's
//! device-writable bytes; after a device error the queue is broken (every call says so) until it
//! is reset; the free descriptors never exceed the queue size.
//!
//! Input: `config` (bit 0: packed; bit 1: `IN_ORDER`; bit 2: `EVENT_IDX`; bit 3: `INDIRECT_DESC`;
//! bits 4-6: the queue size, `1 << min(n, 5)`; bit 7: a split ring publishes at `publish` only,
//! not as each chain is added, its default), then 8-byte steps `[op, a, b, c, d, e, f, g]`:
//! driver: 0 add a chain of `a % 4 + 1` segments (buffers from `b`, lengths from `c, d`, writable
//! bits from `e`); 1 publish; 2 poll `a % 8 + 1` times; 3 enable (`a` even: at the next
//! completion with `b` 0, else after `b` more) or disable notifications; 4 reset (the device's state too). Device: 5 write a used element (split: slot
//! `a`, id `b..=e` LE, len `f, g`) or a descriptor (packed: position `a`, id `b, c`, len `d, e`,
//! flags `f, g`); 6 set `used.idx` to `a, b` (split) or the device event area to `a..=d` (packed);
//! 7 write the 4 bytes `c..=f` at offset `a, b` of the area the device writes; 8 complete the next
//! available buffer as an honest device would, with length `a, b` (and, with `c` odd, name the
//! buffer `d` later in the ring instead).
#![no_main]

use std::collections::VecDeque;

use blanket_virtio::memory::DmaMemory;
use blanket_virtio::queue::packed::PackedQueue;
use blanket_virtio::queue::split::SplitQueue;
use blanket_virtio::queue::{Completion, QueueFeatures, QueueLayout, Segment, VirtQueue};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const BUFFERS: usize = 8;
const BUFFER_BYTES: u32 = 4096;
/// Packed descriptor flags (virtio 1.2, 2.8.1).
const F_NEXT: u16 = 1;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

/// What the driver has in flight, as the harness saw it added.
#[derive(Debug, Default)]
struct Model {
    /// (id, device-writable bytes, published), oldest first.
    in_flight: VecDeque<(u16, u64, bool)>,
    broken: bool,
}

/// The honest device's own positions.
#[derive(Debug)]
struct Device {
    /// Split: the next avail entry to read and the used idx to write. Packed: the next ring
    /// position to read and write, and its wrap counter.
    next_avail: u16,
    used_idx: u16,
    wrap: bool,
}

impl Device {
    fn new() -> Self {
        Self {
            next_avail: 0,
            used_idx: 0,
            wrap: true,
        }
    }
}

fn le16(a: u8, b: u8) -> u16 {
    u16::from_le_bytes([a, b])
}

fn write<T: vm_memory::ByteValued>(dma: &DmaMemory, addr: GuestAddress, v: T) {
    dma.guest_memory()
        .write_obj(v, addr)
        .expect("the rings are in shared memory");
}

fn read<T: vm_memory::ByteValued>(dma: &DmaMemory, addr: GuestAddress) -> T {
    dma.guest_memory()
        .read_obj(addr)
        .expect("the rings are in shared memory")
}

fn check_completion(model: &mut Model, c: Completion, in_order: bool, packed: bool) {
    let Some(at) = model.in_flight.iter().position(|&(id, ..)| id == c.head) else {
        panic!("completion of {c:?}, which is not in flight: {model:?}");
    };
    if in_order {
        assert_eq!(
            at, 0,
            "in-order completion of {c:?} before older buffers: {model:?}"
        );
    }
    let (_, writable, published) = model.in_flight.remove(at).expect("found above");
    assert!(
        u64::from(c.len) <= writable,
        "completion of {c:?} longer than its {writable} writable bytes"
    );
    // A packed ring's buffers are visible to the device as soon as they are added, and so are a
    // split ring's by default (published by `add`); with publishing deferred, only once published
    // (this target found a split ring without IN_ORDER taking a completion of an unpublished
    // chain; the queue now refuses it with `UsedIdNotPublished`).
    assert!(
        packed || published,
        "completion of {c:?}, which the device was never shown (not published)"
    );
}

struct Harness {
    dma: DmaMemory,
    layout: QueueLayout,
    size: u16,
    packed: bool,
    in_order: bool,
    /// A split ring publishes each chain as it is added.
    publish_on_add: bool,
    buffers: Vec<GuestAddress>,
    model: Model,
    device: Device,
}

impl Harness {
    fn add(&mut self, q: &mut dyn VirtQueue, [a, b, c, d, e]: [u8; 5]) {
        let n = usize::from(a % 4) + 1;
        let lens = le16(c, d);
        let segments: Vec<Segment> = (0..n)
            .map(|i| Segment {
                addr: self.buffers[(usize::from(b) + i) % BUFFERS],
                len: u32::from(lens.rotate_left(5 * i as u32)) % (BUFFER_BYTES + 1),
                device_writable: e >> i & 1 != 0,
            })
            .collect();
        let writable: u64 = segments
            .iter()
            .filter(|s| s.device_writable)
            .map(|s| u64::from(s.len))
            .sum();
        match q.add(&segments) {
            Ok(id) => {
                assert!(!self.model.broken, "a broken queue took a chain");
                assert!(id < self.size);
                assert!(
                    self.model.in_flight.iter().all(|&(i, ..)| i != id),
                    "id {id} handed out while in flight"
                );
                self.model
                    .in_flight
                    .push_back((id, writable, self.publish_on_add));
            }
            Err(blanket_virtio::queue::Error::Broken) => assert!(self.model.broken),
            Err(e) => assert!(
                !self.model.broken,
                "a broken queue said {e} instead of Broken"
            ),
        }
    }

    fn poll(&mut self, q: &mut dyn VirtQueue, times: u8) {
        for _ in 0..times {
            match q.pop_used() {
                Ok(Some(c)) => {
                    assert!(!self.model.broken, "a broken queue completed {c:?}");
                    check_completion(&mut self.model, c, self.in_order, self.packed);
                }
                Ok(None) => {
                    assert!(!self.model.broken, "a broken queue polled fine");
                    break;
                }
                Err(blanket_virtio::queue::Error::Broken) => {
                    assert!(self.model.broken, "Broken before any device error");
                    break;
                }
                Err(e) => {
                    assert!(
                        !self.model.broken,
                        "a broken queue said {e} instead of Broken"
                    );
                    assert!(q.is_broken(), "{e} left the queue usable");
                    self.model.broken = true;
                    break;
                }
            }
        }
    }

    /// Split: the used element at `slot`. Packed: the descriptor at ring position `slot`.
    fn elem_addr(&self, slot: u16) -> GuestAddress {
        let slot = u64::from(slot & (self.size - 1));
        if self.packed {
            GuestAddress(self.layout.desc_table.0 + 16 * slot)
        } else {
            GuestAddress(self.layout.used_ring.0 + 4 + 8 * slot)
        }
    }

    /// The bytes the device may write: a split ring's used ring, or a packed ring's descriptors
    /// and device event area.
    fn device_area(&self) -> Vec<(GuestAddress, u64)> {
        if self.packed {
            vec![
                (self.layout.desc_table, 16 * u64::from(self.size)),
                (self.layout.used_ring, 4),
            ]
        } else {
            vec![(
                self.layout.used_ring,
                QueueLayout::used_ring_bytes(self.size),
            )]
        }
    }

    fn poke(&self, off: u16, bytes: [u8; 4]) {
        let area = self.device_area();
        let total: u64 = area.iter().map(|a| a.1).sum();
        let mut off = u64::from(off) % total;
        for (base, len) in area {
            if off < len {
                let at = off.min(len.saturating_sub(4));
                let n = (len - at).min(4) as usize;
                dma_write(&self.dma, GuestAddress(base.0 + at), &bytes[..n]);
                return;
            }
            off -= len;
        }
    }

    /// Completes the next buffer the driver made available, as a device would; with `skip`, the
    /// used element names a buffer further along instead.
    fn honest(&mut self, len: u32, skip: Option<u8>) {
        if self.packed {
            let pos = self.device.next_avail;
            let at = self.elem_addr(pos);
            let flags: u16 = read(&self.dma, GuestAddress(at.0 + 14));
            let avail = flags & F_AVAIL != 0;
            let used = flags & F_USED != 0;
            if avail != self.device.wrap || used == self.device.wrap {
                return; // nothing available there
            }
            let mut id: u16 = read(&self.dma, GuestAddress(at.0 + 12));
            // The chain's length, following NEXT (bounded by the ring).
            let mut n = 1u16;
            let mut f = flags;
            while f & F_NEXT != 0 && n < self.size {
                f = read(&self.dma, GuestAddress(self.elem_addr(pos + n).0 + 14));
                n += 1;
            }
            if let Some(k) = skip {
                id = self
                    .model
                    .in_flight
                    .get(usize::from(k) % self.model.in_flight.len().max(1))
                    .map_or(id, |e| e.0);
            }
            let wrap_bits = if self.device.wrap {
                F_AVAIL | F_USED
            } else {
                0
            };
            write(&self.dma, GuestAddress(at.0 + 8), len);
            write(&self.dma, GuestAddress(at.0 + 12), id);
            write(&self.dma, GuestAddress(at.0 + 14), wrap_bits);
            let next = u32::from(pos) + u32::from(n);
            if next >= u32::from(self.size) {
                self.device.wrap = !self.device.wrap;
            }
            self.device.next_avail = (next % u32::from(self.size)) as u16;
        } else {
            let avail_idx: u16 = read(&self.dma, GuestAddress(self.layout.avail_ring.0 + 2));
            if avail_idx == self.device.next_avail {
                return;
            }
            let slot = u64::from(self.device.next_avail & (self.size - 1));
            let mut id = u32::from(read::<u16>(
                &self.dma,
                GuestAddress(self.layout.avail_ring.0 + 4 + 2 * slot),
            ));
            if let Some(k) = skip {
                let ahead = u16::from(k) % avail_idx.wrapping_sub(self.device.next_avail);
                let slot = u64::from(self.device.next_avail.wrapping_add(ahead) & (self.size - 1));
                id = u32::from(read::<u16>(
                    &self.dma,
                    GuestAddress(self.layout.avail_ring.0 + 4 + 2 * slot),
                ));
            }
            let at = self.elem_addr(self.device.used_idx);
            write(&self.dma, at, id);
            write(&self.dma, GuestAddress(at.0 + 4), len);
            self.device.next_avail = self.device.next_avail.wrapping_add(1);
            self.device.used_idx = self.device.used_idx.wrapping_add(1);
            write(
                &self.dma,
                GuestAddress(self.layout.used_ring.0 + 2),
                self.device.used_idx,
            );
        }
    }
}

fn dma_write(dma: &DmaMemory, addr: GuestAddress, bytes: &[u8]) {
    dma.guest_memory()
        .write_slice(bytes, addr)
        .expect("the device area is in shared memory");
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, script)) = data.split_first() else {
        return;
    };
    let packed = config & 1 != 0;
    let features = QueueFeatures {
        in_order: config & 2 != 0,
        event_idx: config & 4 != 0,
        indirect_desc: config & 8 != 0,
    };
    let size = 1u16 << ((config >> 4) & 7).min(5);
    let dma = DmaMemory::new(1 << 20).expect("1 MiB of shared memory");
    let publish_on_add = config & 0x80 == 0;
    let mut q: Box<dyn VirtQueue> = if packed {
        Box::new(PackedQueue::allocate(&dma, size, features).expect("a packed queue"))
    } else {
        let mut q = SplitQueue::allocate(&dma, size, features).expect("a split queue");
        q.set_publish_on_add(publish_on_add)
            .expect("nothing to publish yet");
        Box::new(q)
    };
    let buffers = (0..BUFFERS)
        .map(|_| dma.alloc(u64::from(BUFFER_BYTES)).expect("a buffer"))
        .collect();
    let mut h = Harness {
        layout: q.layout(),
        dma,
        size,
        packed,
        in_order: features.in_order,
        publish_on_add,
        buffers,
        model: Model::default(),
        device: Device::new(),
    };
    for step in script.chunks_exact(8).take(256) {
        let [op, a, b, c, d, e, f, g] = <[u8; 8]>::try_from(step).expect("8-byte steps");
        match op % 9 {
            0 => h.add(&mut *q, [a, b, c, d, e]),
            1 => match q.publish() {
                Ok(_) => {
                    assert!(!h.model.broken, "a broken queue published");
                    for x in &mut h.model.in_flight {
                        x.2 = true;
                    }
                }
                Err(_) => assert!(h.model.broken, "publish failed on a working queue"),
            },
            2 => h.poll(&mut *q, a % 8 + 1),
            3 => {
                if a % 2 == 0 {
                    // `b` 0: at the next completion; else after `b` more (a batch wait).
                    let r = if b == 0 {
                        q.enable_notifications()
                    } else {
                        q.enable_notifications_after(u16::from(b))
                    };
                    assert_eq!(r.is_err(), h.model.broken, "enable_notifications: {r:?}");
                } else {
                    let _ = q.disable_notifications();
                }
            }
            4 => {
                q.reset().expect("reset");
                assert!(!q.is_broken());
                h.model = Model::default();
                h.device = Device::new();
            }
            5 => {
                let at = h.elem_addr(u16::from(a));
                if packed {
                    write(&h.dma, GuestAddress(at.0 + 8), u32::from(le16(d, e)));
                    write(&h.dma, GuestAddress(at.0 + 12), le16(b, c));
                    write(&h.dma, GuestAddress(at.0 + 14), le16(f, g));
                } else {
                    write(&h.dma, at, u32::from_le_bytes([b, c, d, e]));
                    write(&h.dma, GuestAddress(at.0 + 4), u32::from(le16(f, g)));
                }
            }
            6 => {
                if packed {
                    write(&h.dma, h.layout.used_ring, u32::from_le_bytes([a, b, c, d]));
                } else {
                    write(&h.dma, GuestAddress(h.layout.used_ring.0 + 2), le16(a, b));
                }
            }
            7 => h.poke(le16(a, b), [c, d, e, f]),
            _ => h.honest(u32::from(le16(a, b)), (c % 2 == 1).then_some(d)),
        }
        assert_eq!(q.is_broken(), h.model.broken, "is_broken disagrees");
        assert!(q.free_descriptors() <= usize::from(size));
        let _ = g;
    }
});
