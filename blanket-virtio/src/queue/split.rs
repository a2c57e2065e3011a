//! The driver side of a split virtqueue (virtio 1.2, section 2.7).
//!
//! The driver owns three areas in memory shared with the device: the descriptor table, the
//! available ring (driver → device) and the used ring (device → driver). Everything the device
//! writes (the used ring, and `avail_event`) is untrusted: each used element is copied out of
//! shared memory once, with one volatile read, and validated against the driver's *private*
//! record of what is in flight. The device can never make the driver read or write outside the
//! buffers the driver itself put in the ring.
//!
//! Ordering (section 2.7.13): descriptors and available ring entries are written first, then
//! `avail.idx` is published with a release store. The used ring is read with an acquire load of
//! `used.idx` before the used elements are read. With `VIRTIO_F_EVENT_IDX` a full fence separates
//! publishing `avail.idx` (or `used_event`) from reading the device's suppression fields.
//!
//! With `VIRTIO_F_IN_ORDER` (2.7.5, 2.7.9) descriptors are used in ring order (the free list is
//! first in first out, and completions in order put them back in that order), and the device
//! may report a batch of buffers with one used element naming the last buffer's head, moving
//! `used.idx` by the batch's size. The driver keeps the heads in the order they were made
//! available: a used id must be one of the oldest `used.idx - last_used` of them, and the
//! buffers before it in order are completed with it, "used completely" (their whole
//! device-writable length).

use std::collections::VecDeque;
use std::mem::{align_of, offset_of, size_of};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering, fence};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY, vring_avail, vring_desc, vring_used, vring_used_elem,
};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, Le16, Le32, Le64, Permissions,
};

use crate::memory::DmaMemory;

pub use super::{
    Completion, Error, MAX_INDIRECT_DESCRIPTORS, MAX_QUEUE_SIZE, QueueFeatures, QueueLayout,
    Segment, validate_queue_size,
};

/// A descriptor as laid out in memory (section 2.7.5), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Descriptor {
    addr: Le64,
    len: Le32,
    flags: Le16,
    next: Le16,
}

// SAFETY: `Descriptor` is `repr(C)`, made only of little-endian integer wrappers that are
// themselves `ByteValued`, with no padding (16 bytes, checked below): any bit pattern is valid.
unsafe impl ByteValued for Descriptor {}
const _: () = assert!(size_of::<Descriptor>() == size_of::<vring_desc>());

/// A used element as laid out in memory (section 2.7.8), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UsedElem {
    id: Le32,
    len: Le32,
}

// SAFETY: `UsedElem` is `repr(C)`, two `ByteValued` little-endian u32 wrappers, no padding (8
// bytes, checked below): any bit pattern is valid.
unsafe impl ByteValued for UsedElem {}
const _: () = assert!(size_of::<UsedElem>() == size_of::<vring_used_elem>());

/// With `INDIRECT_DESC`, the longest chain [`SplitQueue::add`] writes as direct descriptors by
/// default: a virtio-blk read or write of one buffer (header, data, status) and a discard
/// (header, range, status) take three, as in libblkio, which never uses indirect tables.
pub const DIRECT_MAX: usize = 4;

/// The driver's private view of each descriptor. Never read back from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Free, and never completed since it was last used as a member.
    Free,
    /// Free because the device completed the chain it headed: a second completion of it is a
    /// duplicate.
    Completed,
    /// The head of a chain in flight.
    Head {
        /// Ring descriptors the chain holds (1 when indirect).
        ring_descs: u16,
        /// Device-writable bytes of the whole chain.
        writable: u64,
    },
    /// A non-head member of the chain headed by `head`.
    Member { head: u16 },
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue<M: GuestMemoryBackend = GuestMemoryMmap> {
    mem: Arc<M>,
    layout: QueueLayout,
    features: QueueFeatures,
    /// One indirect table of `max_indirect` descriptors per head, or `None`.
    indirect_tables: Option<GuestAddress>,
    max_indirect: u16,
    /// With indirect descriptors: chains of up to this many segments go straight into the
    /// descriptor table while a quarter of it stays free (see [`SplitQueue::set_direct_max`]).
    direct_max: usize,
    slots: Vec<Slot>,
    /// Private copy of the `next` links the driver wrote.
    next: Vec<u16>,
    /// Free descriptors, first in first out, so a completed id is not reused at once and a
    /// duplicate completion can be told from a fresh one.
    free: VecDeque<u16>,
    /// The next avail idx to write (not yet published past `published_avail`).
    avail_idx: u16,
    /// The avail idx each head was added at, so that a used element naming a head that was
    /// added but not yet published is refused.
    avail_at: Vec<u16>,
    /// The `avail.idx` stored in the ring: the device may have seen every chain before it.
    published_avail: u16,
    /// The `avail.idx` at the last notification decision of [`SplitQueue::publish`]: the
    /// chains from it on have not been weighed against `avail_event` yet.
    notified_avail: u16,
    /// Whether [`SplitQueue::add`] stores `avail.idx` itself (the default), so that a device
    /// still processing the ring sees each chain at once, or leaves it to `publish`.
    publish_on_add: bool,
    last_used: u16,
    in_flight: u16,
    broken: bool,
    /// The host addresses of the rings (and indirect tables) when they are in memory this
    /// process maps (set by [`SplitQueue::allocate`]): the I/O path then reaches them with
    /// volatile and atomic accesses at the address, without looking the region up on every
    /// access.
    host: HostAreas,
    /// Whether `host` is used (see [`SplitQueue::set_host_view`]).
    host_view: bool,
    /// The regions of `mem` (start, bytes), taken once: `mem` is immutable behind its `Arc`, so
    /// a segment inside one of them is inside the memory without a lookup per segment.
    regions: Vec<(u64, u64)>,
    /// With `IN_ORDER`: the heads in flight, in the order they were made available.
    order: VecDeque<u16>,
    /// With `IN_ORDER`: buffers of the current batch not yet handed out, the last one's
    /// used length, and where the next descriptor in ring order is.
    batch: InOrderBatch,
}

/// Where the queue's areas are mapped in this process: (guest address, host address, bytes),
/// each inside one region of the queue's memory, indexed by [`Area`]; a host address of 0 means
/// the area is not mapped (it is then reached through `vm-memory`).
#[derive(Clone, Copy, Debug, Default)]
struct HostAreas {
    areas: [(u64, usize, usize); 4],
}

impl HostAreas {
    /// How many of the areas are mapped.
    #[cfg(test)]
    fn mapped(&self) -> usize {
        self.areas.iter().filter(|a| a.1 != 0).count()
    }
}

/// The queue's areas, each reached through its own entry of [`HostAreas`]: every access names
/// the area it is in, so finding its host address is one subtraction and one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Area {
    Desc = 0,
    Avail = 1,
    Used = 2,
    Indirect = 3,
}

/// The batch an in-order used element reported (section 2.7.9), handed out one completion at a
/// time.
#[derive(Clone, Copy, Debug, Default)]
struct InOrderBatch {
    /// Buffers of the batch still to complete (the last of them is the one the element named).
    left: u16,
    /// The used length the element carried, for its own buffer.
    len: u32,
    /// The descriptor the next chain must start at (ring order, 2.7.5).
    next_desc: u16,
}

impl SplitQueue<GuestMemoryMmap> {
    /// Allocates the rings (each on its own pages) and, with `INDIRECT_DESC`, one indirect table
    /// per descriptor, from `dma`.
    pub fn allocate(dma: &DmaMemory, size: u16, features: QueueFeatures) -> Result<Self, Error> {
        let size = validate_queue_size(size)?;
        let desc_table = dma
            .alloc(QueueLayout::desc_table_bytes(size))
            .map_err(Error::Memory)?;
        let avail_ring = dma
            .alloc(QueueLayout::avail_ring_bytes(size))
            .map_err(Error::Memory)?;
        let used_ring = dma
            .alloc(QueueLayout::used_ring_bytes(size))
            .map_err(Error::Memory)?;
        let indirect = if features.indirect_desc {
            let bytes = u64::from(size)
                * u64::from(MAX_INDIRECT_DESCRIPTORS)
                * size_of::<Descriptor>() as u64;
            Some(dma.alloc(bytes).map_err(Error::Memory)?)
        } else {
            None
        };
        let layout = QueueLayout {
            size,
            desc_table,
            avail_ring,
            used_ring,
            packed: false,
        };
        let mut q = Self::new(dma.guest_memory().clone(), layout, features, indirect)?;
        let mut areas = vec![
            (Area::Desc, desc_table, QueueLayout::desc_table_bytes(size)),
            (Area::Avail, avail_ring, QueueLayout::avail_ring_bytes(size)),
            (Area::Used, used_ring, QueueLayout::used_ring_bytes(size)),
        ];
        if let Some(t) = indirect {
            areas.push((
                Area::Indirect,
                t,
                u64::from(size)
                    * u64::from(MAX_INDIRECT_DESCRIPTORS)
                    * size_of::<Descriptor>() as u64,
            ));
        }
        for (area, addr, len) in areas {
            // Inside one mapped region (get_slice checks it), whose mapping stays while `q.mem`
            // holds the memory.
            let mem = dma.guest_memory();
            if mem.get_slice(addr, len as usize).is_err() {
                continue;
            }
            if let Ok(host) = mem.get_host_address(addr) {
                // The fast path writes descriptors (8-byte fields) and indices in place: an
                // area whose host address is not 16-byte aligned (never, for page-aligned
                // allocations) stays on vm-memory's path.
                if host as usize % 16 == 0 {
                    q.host.areas[area as usize] = (addr.0, host as usize, len as usize);
                }
            }
        }
        Ok(q)
    }
}

impl<M: GuestMemoryBackend> SplitQueue<M> {
    /// A queue over rings already placed in `mem`. `indirect_tables`, needed when
    /// `features.indirect_desc`, is room for `layout.size * MAX_INDIRECT_DESCRIPTORS`
    /// descriptors. The rings are zeroed.
    pub fn new(
        mem: Arc<M>,
        layout: QueueLayout,
        mut features: QueueFeatures,
        indirect_tables: Option<GuestAddress>,
    ) -> Result<Self, Error> {
        let size = validate_queue_size(layout.size)?;
        if indirect_tables.is_none() {
            features.indirect_desc = false;
        }
        let regions = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let mut q = SplitQueue {
            regions,
            mem,
            layout: QueueLayout {
                packed: false,
                ..layout
            },
            features,
            indirect_tables,
            max_indirect: if features.indirect_desc {
                MAX_INDIRECT_DESCRIPTORS
            } else {
                0
            },
            direct_max: DIRECT_MAX,
            slots: vec![Slot::Free; usize::from(size)],
            next: vec![0; usize::from(size)],
            free: (0..size).collect(),
            avail_idx: 0,
            avail_at: vec![0; usize::from(size)],
            published_avail: 0,
            notified_avail: 0,
            publish_on_add: true,
            last_used: 0,
            in_flight: 0,
            broken: false,
            host: HostAreas::default(),
            host_view: true,
            order: VecDeque::new(),
            batch: InOrderBatch::default(),
        };
        q.zero_rings()?;
        Ok(q)
    }

    fn zero_rings(&mut self) -> Result<(), Error> {
        let l = self.layout;
        for (addr, len) in [
            (l.desc_table, QueueLayout::desc_table_bytes(l.size)),
            (l.avail_ring, QueueLayout::avail_ring_bytes(l.size)),
            (l.used_ring, QueueLayout::used_ring_bytes(l.size)),
        ] {
            let zeroes = vec![0u8; len as usize];
            self.mem.write_slice(&zeroes, addr).map_err(Error::Access)?;
        }
        Ok(())
    }

    /// Forgets everything in flight and zeroes the rings, for use after a device reset (the
    /// device must not be using the rings any more).
    pub fn reset(&mut self) -> Result<(), Error> {
        let size = self.layout.size;
        self.slots.fill(Slot::Free);
        self.free = (0..size).collect();
        self.avail_idx = 0;
        self.published_avail = 0;
        self.notified_avail = 0;
        self.last_used = 0;
        self.in_flight = 0;
        self.broken = false;
        self.order.clear();
        self.batch = InOrderBatch::default();
        self.zero_rings()
    }

    /// The ring addresses and size, to give to the device.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Whether the I/O path reaches the rings through the host addresses taken by
    /// [`SplitQueue::allocate`] (`true`, the default) or through `vm-memory`'s per-access
    /// region lookup (`false`). Both are bounds-checked and give the same results; the switch
    /// exists to measure the difference (`benches/ring.rs`).
    pub fn set_host_view(&mut self, on: bool) {
        self.host_view = on;
    }

    /// Whether [`SplitQueue::add`] publishes each chain as it adds it (`true`, the default:
    /// one release store of `avail.idx` per chain, as libblkio's virtio-driver does, so that a
    /// device that is processing the ring picks the chain up without waiting for the next
    /// [`SplitQueue::publish`]), or leaves `avail.idx` to `publish` (`false`: the chains of a
    /// batch become visible together). Either way `publish` decides the notification for
    /// every chain added since its last call. Changing it publishes what was added so far.
    pub fn set_publish_on_add(&mut self, on: bool) -> Result<(), Error> {
        self.publish_on_add = on;
        if on && self.published_avail != self.avail_idx {
            self.store_avail_idx()?;
        }
        Ok(())
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// The features in use.
    pub fn features(&self) -> QueueFeatures {
        self.features
    }

    /// Chains added and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Whether an earlier device error broke the queue.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// With `INDIRECT_DESC`, chains of up to `n` segments are written as direct descriptors
    /// while that leaves a quarter of the table free (an indirect table costs the device one
    /// more translation and read per request, and the driver one more descriptor write);
    /// longer chains, and short ones once the table is that full, use an indirect table, one
    /// descriptor each. A full queue then holds fewer requests than with indirect tables
    /// only (its size): at least 7/16 of its size with chains of four, half with three. The
    /// default is [`DIRECT_MAX`]; 0 or 1 makes every chain of two or more segments indirect.
    /// Without `INDIRECT_DESC` every chain is direct whatever this says.
    pub fn set_direct_max(&mut self, n: usize) {
        self.direct_max = n;
    }

    /// Whether a chain of `segments` goes through an indirect table, with `free` descriptors
    /// free: a short chain is direct if a quarter of the table stays free after it.
    #[inline]
    fn use_indirect(&self, segments: usize, free: usize) -> bool {
        self.features.indirect_desc
            && segments > 1
            && (segments > self.direct_max || free < segments + usize::from(self.layout.size / 4))
    }

    /// Ring descriptors a chain of `segments` needs.
    fn ring_descs_for(&self, segments: usize) -> usize {
        if self.use_indirect(segments, self.free.len()) {
            1
        } else {
            segments
        }
    }

    /// The head index the next [`SplitQueue::add`] will use, if a descriptor is free. Lets a
    /// caller place per-request data (such as a virtio-blk header) in a slot named by the head.
    pub fn next_head(&self) -> Option<u16> {
        self.free.front().copied()
    }

    /// Whether a chain of `segments` can be added now.
    pub fn has_room_for(&self, segments: usize) -> bool {
        self.ring_descs_for(segments) <= self.free.len()
    }

    /// Writes a chain and its available ring entry and, unless
    /// [`SplitQueue::set_publish_on_add`] turned it off, publishes it (a release store of
    /// `avail.idx`). It does not notify the device: call [`SplitQueue::publish`] (once per
    /// batch), which also publishes a deferred batch. Returns the head index, which
    /// [`Completion::head`] will name.
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let n = segments.len();
        if n == 0 {
            return Err(Error::EmptyChain);
        }
        let use_indirect = self.use_indirect(n, self.free.len());
        if (use_indirect && n > usize::from(self.max_indirect))
            || (!use_indirect && n > usize::from(self.layout.size))
        {
            return Err(Error::ChainTooLong {
                len: n,
                size: self.layout.size,
                max_indirect: self.max_indirect,
            });
        }
        let ring_descs = if use_indirect { 1 } else { n };
        if ring_descs > self.free.len() {
            return Err(Error::QueueFull {
                needed: ring_descs,
                free: self.free.len(),
            });
        }
        let mut writable = 0u64;
        for s in segments {
            // Inside one region (the regions taken at creation, then one lookup), or else
            // across regions (vm-memory's walk).
            if !self.in_one_region(s)
                && self.mem.get_slice(s.addr, s.len as usize).is_err()
                && !GuestMemory::check_range(
                    &*self.mem,
                    s.addr,
                    s.len as usize,
                    Permissions::ReadWrite,
                )
            {
                return Err(Error::SegmentOutsideMemory {
                    addr: s.addr.0,
                    len: s.len,
                });
            }
            if s.device_writable {
                writable += u64::from(s.len);
            }
        }

        // Take the descriptors now; on a memory error below the queue is left broken (our own
        // memory failed, which does not happen with a valid mapping).
        let head = self.free.pop_front().ok_or(Error::QueueFull {
            needed: ring_descs,
            free: 0,
        })?;
        let result = if use_indirect {
            self.write_indirect(head, segments)
        } else {
            self.write_direct(head, segments)
        };
        if let Err(e) = result {
            self.broken = true;
            return Err(e);
        }
        self.slots[usize::from(head)] = Slot::Head {
            ring_descs: ring_descs as u16,
            writable,
        };
        if self.features.in_order {
            // Ring order (2.7.5): the free list hands descriptors out in the order completions
            // in order gave them back, which is the table's order, wrapping at its end.
            debug_assert_eq!(head, self.batch.next_desc);
            self.batch.next_desc =
                ((u32::from(head) + ring_descs as u32) % u32::from(self.layout.size)) as u16;
            self.order.push_back(head);
        }

        // The available ring entry, then (by default) avail.idx with release ordering: the
        // descriptors and the entry are visible to the device before the index that hands
        // them over (2.7.13).
        let slot = self.avail_idx & (self.layout.size - 1);
        let entry = self
            .layout
            .avail_ring
            .unchecked_add(offset_of!(vring_avail, ring) as u64 + 2 * u64::from(slot));
        self.put(Area::Avail, Le16::from(head), entry)?;
        self.avail_at[usize::from(head)] = self.avail_idx;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.in_flight += 1;
        if self.publish_on_add {
            self.store_avail_idx()?;
        }
        Ok(head)
    }

    /// Whether `s` lies inside one region of the memory (and starts inside it).
    #[inline]
    fn in_one_region(&self, s: &Segment) -> bool {
        self.regions.iter().any(|&(start, len)| {
            s.addr
                .0
                .checked_sub(start)
                .is_some_and(|off| off < len && u64::from(s.len) <= len - off)
        })
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        self.layout
            .desc_table
            .unchecked_add(u64::from(index) * size_of::<Descriptor>() as u64)
    }

    fn write_desc(
        &self,
        area: Area,
        at: GuestAddress,
        s: &Segment,
        flags: u32,
        next: u16,
    ) -> Result<(), Error> {
        let flags = flags
            | if s.device_writable {
                VRING_DESC_F_WRITE
            } else {
                0
            };
        let d = Descriptor {
            addr: Le64::from(s.addr.0),
            len: Le32::from(s.len),
            flags: Le16::from(flags as u16),
            next: Le16::from(next),
        };
        self.put(area, d, at)
    }

    fn write_direct(&mut self, head: u16, segments: &[Segment]) -> Result<(), Error> {
        let mut current = head;
        for (i, s) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let next = if last {
                0
            } else {
                // Room was checked in `add`.
                let next = self.free.pop_front().ok_or(Error::QueueFull {
                    needed: segments.len(),
                    free: 0,
                })?;
                self.slots[usize::from(next)] = Slot::Member { head };
                next
            };
            self.next[usize::from(current)] = next;
            let flags = if last { 0 } else { VRING_DESC_F_NEXT };
            self.write_desc(Area::Desc, self.desc_addr(current), s, flags, next)?;
            current = next;
        }
        Ok(())
    }

    fn write_indirect(&mut self, head: u16, segments: &[Segment]) -> Result<(), Error> {
        let Some(tables) = self.indirect_tables else {
            return Err(Error::ChainTooLong {
                len: segments.len(),
                size: self.layout.size,
                max_indirect: 0,
            });
        };
        let entry = size_of::<Descriptor>() as u64;
        let table = tables.unchecked_add(u64::from(head) * u64::from(self.max_indirect) * entry);
        for (i, s) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let flags = if last { 0 } else { VRING_DESC_F_NEXT };
            let next = if last { 0 } else { (i + 1) as u16 };
            self.write_desc(
                Area::Indirect,
                table.unchecked_add(i as u64 * entry),
                s,
                flags,
                next,
            )?;
        }
        let table_seg = Segment {
            addr: table,
            len: (segments.len() as u64 * entry) as u32,
            device_writable: false,
        };
        self.next[usize::from(head)] = 0;
        self.write_desc(
            Area::Desc,
            self.desc_addr(head),
            &table_seg,
            VRING_DESC_F_INDIRECT,
            0,
        )
    }

    /// Publishes the chains added and not yet published (with a release store of `avail.idx`;
    /// by default [`SplitQueue::add`] already did), and says whether the device wants a
    /// notification for the chains added since the last call (section 2.7.10: `avail_event`
    /// with `EVENT_IDX`, else the `NO_NOTIFY` flag). The device controls those fields: a wrong
    /// value only costs a spurious or a missed kick, never memory safety.
    pub fn publish(&mut self) -> Result<bool, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let old = self.notified_avail;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        if self.published_avail != new {
            self.store_avail_idx()?;
        }
        self.notified_avail = new;
        // Order the avail.idx store before the loads of the device's suppression fields.
        fence(Ordering::SeqCst);
        if self.features.event_idx {
            let event = self.load16(Area::Used, self.avail_event_addr(), Ordering::Acquire)?;
            Ok(need_event(event, new, old))
        } else {
            let flags_addr = self
                .layout
                .used_ring
                .unchecked_add(offset_of!(vring_used, flags) as u64);
            let flags = self.load16(Area::Used, flags_addr, Ordering::Acquire)?;
            Ok(u32::from(flags) & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Stores `avail.idx` (release: the entries and descriptors before it are visible first).
    #[inline]
    fn store_avail_idx(&mut self) -> Result<(), Error> {
        let idx_addr = self
            .layout
            .avail_ring
            .unchecked_add(offset_of!(vring_avail, idx) as u64);
        self.store16(Area::Avail, self.avail_idx, idx_addr, Ordering::Release)?;
        self.published_avail = self.avail_idx;
        Ok(())
    }

    fn avail_event_addr(&self) -> GuestAddress {
        self.layout.used_ring.unchecked_add(
            offset_of!(vring_used, ring) as u64
                + size_of::<vring_used_elem>() as u64 * u64::from(self.layout.size),
        )
    }

    fn used_event_addr(&self) -> GuestAddress {
        self.layout
            .avail_ring
            .unchecked_add(offset_of!(vring_avail, ring) as u64 + 2 * u64::from(self.layout.size))
    }

    fn used_idx(&self) -> Result<u16, Error> {
        let addr = self
            .layout
            .used_ring
            .unchecked_add(offset_of!(vring_used, idx) as u64);
        self.load16(Area::Used, addr, Ordering::Acquire)
    }

    /// The host address of `len` bytes at `addr` in `area`, aligned to `align`, when the area is
    /// mapped in this process (taken at [`SplitQueue::allocate`]) and the bytes lie inside it:
    /// one subtraction and one comparison, with no region lookup.
    #[inline]
    fn host_ptr(&self, area: Area, addr: GuestAddress, len: usize, align: usize) -> Option<usize> {
        if !self.host_view {
            return None;
        }
        let (gpa, host, area_len) = self.host.areas[area as usize];
        if host == 0 {
            return None;
        }
        let off = usize::try_from(addr.0.checked_sub(gpa)?).ok()?;
        if off.checked_add(len)? > area_len {
            return None;
        }
        let p = host + off;
        (p % align == 0).then_some(p)
    }

    /// Writes `v` at `addr` in `area`: one volatile store through the host view of the rings
    /// when there is one, else one bounds-checked slice of the region (`get_slice`, without the
    /// region iterator `Bytes::write_obj` goes through on every call).
    #[inline]
    fn put<T: ByteValued>(&self, area: Area, v: T, addr: GuestAddress) -> Result<(), Error> {
        if let Some(p) = self.host_ptr(area, addr, size_of::<T>(), align_of::<T>()) {
            // SAFETY: `p..p + size_of::<T>()` lies inside one area of the rings, mapped in this
            // process as part of one region of `self.mem` (checked with `get_slice` when the
            // address was taken); `self.mem` is an `Arc` of the `GuestMemoryMmap` that maps it,
            // whose regions are never unmapped or moved while it lives, and the queue holds it.
            // `p` is aligned for `T` (checked by `host_ptr`), and `T: ByteValued` has no
            // invalid bit patterns. The device shares the memory, so the access is volatile.
            unsafe { std::ptr::write_volatile(p as *mut T, v) };
            return Ok(());
        }
        self.mem
            .get_slice(addr, size_of::<T>())
            .and_then(|s| s.write_obj(v, 0).map_err(Into::into))
            .map_err(Error::Access)
    }

    /// Reads a `T` at `addr` in `area`, as [`Self::put`] writes: one volatile copy.
    #[inline]
    fn get<T: ByteValued>(&self, area: Area, addr: GuestAddress) -> Result<T, Error> {
        if let Some(p) = self.host_ptr(area, addr, size_of::<T>(), align_of::<T>()) {
            // SAFETY: as in `put`: `p` is inside a mapped area of the rings that lives as long
            // as the queue, aligned for `T`, and any bit pattern is a valid `T` (`ByteValued`);
            // the device may write it concurrently, so it is read once, volatile.
            return Ok(unsafe { std::ptr::read_volatile(p as *const T) });
        }
        self.mem
            .get_slice(addr, size_of::<T>())
            .and_then(|s| s.read_obj(0).map_err(Into::into))
            .map_err(Error::Access)
    }

    /// The `AtomicU16` at `p`.
    ///
    /// # Safety
    ///
    /// `p` must come from [`Self::host_ptr`] with a length and alignment of 2.
    #[inline]
    unsafe fn atomic16(&self, p: usize) -> &AtomicU16 {
        // SAFETY: by the caller's contract `p` is 2-byte aligned and inside a mapped area of
        // the rings that lives as long as `self` (see `put`); `AtomicU16` has the size and
        // alignment of `u16`, and every bit pattern is valid. The device accesses these index
        // and flags fields atomically too (virtio 2.7.13).
        unsafe { &*(p as *const AtomicU16) }
    }

    /// Stores a little-endian `u16` index or flags field at `addr` in `area` with `order`.
    #[inline]
    fn store16(
        &self,
        area: Area,
        v: u16,
        addr: GuestAddress,
        order: Ordering,
    ) -> Result<(), Error> {
        match self.host_ptr(area, addr, 2, 2) {
            Some(p) => {
                // SAFETY: `p` comes from `host_ptr` with length and alignment 2.
                unsafe { self.atomic16(p) }.store(u16::to_le(v), order);
                Ok(())
            }
            None => self
                .mem
                .store(u16::to_le(v), addr, order)
                .map_err(Error::Access),
        }
    }

    /// Loads a little-endian `u16` index or flags field at `addr` in `area` with `order`.
    #[inline]
    fn load16(&self, area: Area, addr: GuestAddress, order: Ordering) -> Result<u16, Error> {
        let v = match self.host_ptr(area, addr, 2, 2) {
            // SAFETY: `p` comes from `host_ptr` with length and alignment 2.
            Some(p) => unsafe { self.atomic16(p) }.load(order),
            None => self.mem.load::<u16>(addr, order).map_err(Error::Access)?,
        };
        Ok(u16::from_le(v))
    }

    /// Takes the next used element, if any, validated: an id in range, outstanding, at the head
    /// of a chain, not completed twice, with a length no larger than the writable bytes. Any
    /// violation breaks the queue.
    pub fn pop_used(&mut self) -> Result<Option<Completion>, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        match self.pop_used_inner() {
            Ok(c) => Ok(c),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    fn pop_used_inner(&mut self) -> Result<Option<Completion>, Error> {
        if self.features.in_order {
            return self.pop_used_in_order();
        }
        let Some((_, unpublished)) = self.used_pending()? else {
            return Ok(None);
        };
        // One volatile copy of the element; only the copy is looked at from here on.
        let (id, len) = self.read_used_elem(self.last_used)?;
        let (writable, ring_descs) = self.outstanding_head(id)?;
        let id = id as u16;
        // A head added after the last publish is not the device's to complete.
        if self.avail_at[usize::from(id)].wrapping_sub(self.published_avail) < unpublished {
            return Err(Error::UsedIdNotPublished(id));
        }
        if u64::from(len) > writable {
            return Err(Error::UsedLenTooLarge { id, len, writable });
        }
        self.complete(id, ring_descs);
        Ok(Some(Completion { head: id, len }))
    }

    /// How many used elements the device added since `last_used` (`None` if none) and how many
    /// buffers in flight are not published yet. `used.idx` may move only by the published
    /// buffers in flight: only those can have been used.
    fn used_pending(&self) -> Result<Option<(u16, u16)>, Error> {
        // Acquire: the used elements read next were written before this idx (section 2.7.13).
        let used_idx = self.used_idx()?;
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        let unpublished = self.avail_idx.wrapping_sub(self.published_avail);
        let published = self.in_flight - unpublished;
        if pending > published {
            return Err(Error::UsedIdxTooFarAhead {
                used_idx,
                last_used: self.last_used,
                in_flight: published,
            });
        }
        Ok(Some((pending, unpublished)))
    }

    /// Frees the chain headed by `id` by walking our private links, bounded by the count we
    /// recorded, and moves past one used element.
    fn complete(&mut self, id: u16, ring_descs: u16) {
        let mut current = id;
        for i in 0..ring_descs {
            let next = self.next[usize::from(current)];
            self.slots[usize::from(current)] = if i == 0 { Slot::Completed } else { Slot::Free };
            self.free.push_back(current);
            current = next;
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight -= 1;
    }

    /// `pop_used` with `IN_ORDER` (section 2.7.9): at the start of a batch, one used element is
    /// read at `last_used`; its id must be one of the oldest `used.idx - last_used` heads in
    /// flight (in the order they were made available, and published), and every buffer up to
    /// it is part of the batch. The batch is then handed out one completion at a time, oldest
    /// first, without reading the ring again: the buffers before the named one carry their
    /// whole device-writable length ("used completely"), the named one the element's length.
    fn pop_used_in_order(&mut self) -> Result<Option<Completion>, Error> {
        if self.batch.left == 0 {
            let Some((pending, _)) = self.used_pending()? else {
                return Ok(None);
            };
            // One volatile copy of the element; only the copy is looked at from here on.
            let (id, len) = self.read_used_elem(self.last_used)?;
            let (writable, _) = self.outstanding_head(id)?;
            let id = id as u16;
            let expected = self.order.front().copied().unwrap_or(id);
            // The batch ends at `id`: its position among the oldest `pending` heads.
            let Some(at) = self
                .order
                .iter()
                .take(usize::from(pending))
                .position(|&h| h == id)
            else {
                let batch = self
                    .order
                    .iter()
                    .position(|&h| h == id)
                    .map_or(u16::MAX, |p| (p + 1) as u16);
                return Err(Error::UsedIdOutOfOrder {
                    id,
                    expected,
                    batch,
                    pending,
                });
            };
            if u64::from(len) > writable {
                return Err(Error::UsedLenTooLarge { id, len, writable });
            }
            self.batch.left = at as u16 + 1;
            self.batch.len = len;
        }
        // The oldest buffer in flight: the next of the batch. Its slot is a head (it was made
        // available and not completed), which `order` and `slots` agree on.
        let Some(head) = self.order.pop_front() else {
            return Err(Error::SpuriousUsed(self.last_used));
        };
        let Slot::Head {
            ring_descs,
            writable,
        } = self.slots[usize::from(head)]
        else {
            return Err(Error::UsedIdNotOutstanding(head));
        };
        self.batch.left -= 1;
        let len = if self.batch.left == 0 {
            self.batch.len
        } else {
            // Skipped buffers "are assumed to have been used (read or written) by the device
            // completely" (2.7.9).
            u32::try_from(writable).unwrap_or(u32::MAX)
        };
        self.complete(head, ring_descs);
        Ok(Some(Completion { head, len }))
    }

    /// Copies the used element at `index` (mod the size) out of the ring, once.
    fn read_used_elem(&self, index: u16) -> Result<(u32, u32), Error> {
        let slot = index & (self.layout.size - 1);
        let elem_addr = self.layout.used_ring.unchecked_add(
            offset_of!(vring_used, ring) as u64
                + size_of::<vring_used_elem>() as u64 * u64::from(slot),
        );
        let elem: UsedElem = self.get(Area::Used, elem_addr)?;
        Ok((elem.id.to_native(), elem.len.to_native()))
    }

    /// Checks that `id` names the head of a chain in flight; gives its writable bytes and ring
    /// descriptors.
    fn outstanding_head(&self, id: u32) -> Result<(u64, u16), Error> {
        if id >= u32::from(self.layout.size) {
            return Err(Error::UsedIdOutOfRange {
                id,
                size: self.layout.size,
            });
        }
        let id = id as u16;
        match self.slots[usize::from(id)] {
            Slot::Head {
                ring_descs,
                writable,
            } => Ok((writable, ring_descs)),
            Slot::Member { head } => Err(Error::UsedIdNotHead { id, head }),
            Slot::Completed => Err(Error::UsedIdDuplicate(id)),
            Slot::Free => Err(Error::UsedIdNotOutstanding(id)),
        }
    }

    /// Asks the device for a notification at the next used buffer (`used_event` with
    /// `EVENT_IDX`, else clearing `NO_INTERRUPT`), then says whether used buffers are already
    /// pending, in which case the caller must not sleep waiting for one.
    pub fn enable_notifications(&mut self) -> Result<bool, Error> {
        self.enable_notifications_after(1)
    }

    /// Asks the device for a notification once `n` more buffers are used (`used_event` set
    /// `n - 1` past the last one popped, so the device skips the notifications before the
    /// `n`th; without `EVENT_IDX` it notifies at the next one, as `n` 1). Then says whether
    /// used buffers are already pending: the caller should pop them, not sleep, and ask again
    /// for what it still waits for. `n` 0 is taken as 1.
    pub fn enable_notifications_after(&mut self, n: u16) -> Result<bool, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.features.event_idx {
            self.store16(
                Area::Avail,
                self.last_used.wrapping_add(n.max(1) - 1),
                self.used_event_addr(),
                Ordering::Release,
            )?;
        } else {
            self.set_avail_flags(0)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.used_idx()? != self.last_used)
    }

    /// Asks the device not to notify (a hint; the device may notify anyway). Used while polling.
    pub fn disable_notifications(&mut self) -> Result<(), Error> {
        if self.features.event_idx {
            // used_event one behind last_used: the device notifies only after 2^16 completions.
            self.store16(
                Area::Avail,
                self.last_used.wrapping_sub(1),
                self.used_event_addr(),
                Ordering::Relaxed,
            )
        } else {
            self.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16)
        }
    }

    fn set_avail_flags(&self, flags: u16) -> Result<(), Error> {
        let addr = self
            .layout
            .avail_ring
            .unchecked_add(offset_of!(vring_avail, flags) as u64);
        self.store16(Area::Avail, flags, addr, Ordering::Relaxed)
    }
}

impl<M: GuestMemoryBackend + std::fmt::Debug + Send + Sync> super::VirtQueue for SplitQueue<M> {
    fn layout(&self) -> QueueLayout {
        SplitQueue::layout(self)
    }
    fn free_descriptors(&self) -> usize {
        SplitQueue::free_descriptors(self)
    }
    fn has_room_for(&self, segments: usize) -> bool {
        SplitQueue::has_room_for(self, segments)
    }
    fn next_head(&self) -> Option<u16> {
        SplitQueue::next_head(self)
    }
    fn add(&mut self, segments: &[Segment]) -> Result<u16, Error> {
        SplitQueue::add(self, segments)
    }
    fn publish(&mut self) -> Result<bool, Error> {
        SplitQueue::publish(self)
    }
    fn pop_used(&mut self) -> Result<Option<Completion>, Error> {
        SplitQueue::pop_used(self)
    }
    fn enable_notifications(&mut self) -> Result<bool, Error> {
        SplitQueue::enable_notifications(self)
    }
    fn enable_notifications_after(&mut self, n: u16) -> Result<bool, Error> {
        SplitQueue::enable_notifications_after(self, n)
    }
    fn disable_notifications(&mut self) -> Result<(), Error> {
        SplitQueue::disable_notifications(self)
    }
    fn reset(&mut self) -> Result<(), Error> {
        SplitQueue::reset(self)
    }
    fn is_broken(&self) -> bool {
        SplitQueue::is_broken(self)
    }
}

/// `vring_need_event` of section 2.7.10: whether moving an index from `old` to `new` crossed
/// `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::inproc::DeviceQueue;

    fn queue(size: u16, features: QueueFeatures) -> (DmaMemory, SplitQueue, DeviceQueue) {
        let dma = DmaMemory::new(4 << 20).unwrap();
        let q = SplitQueue::allocate(&dma, size, features).unwrap();
        let dev = DeviceQueue::new(q.layout());
        (dma, q, dev)
    }

    fn seg(dma: &DmaMemory, len: u32, device_writable: bool) -> Segment {
        Segment {
            addr: dma.alloc(u64::from(len)).unwrap(),
            len,
            device_writable,
        }
    }

    #[test]
    fn queue_size_must_be_a_non_zero_power_of_two() {
        for bad in [0u16, 3, 6, 1000, 32769, 65535] {
            assert!(
                matches!(validate_queue_size(bad), Err(Error::InvalidQueueSize(s)) if s == bad)
            );
        }
        for good in [1u16, 2, 256, 32768] {
            assert_eq!(validate_queue_size(good).unwrap(), good);
        }
    }

    #[test]
    fn need_event_matches_the_spec() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(10, 10, 0));
        // Across the wrap.
        assert!(need_event(65535, 2, 65534));
        assert!(!need_event(3, 2, 65534));
    }

    #[test]
    fn direct_and_indirect_chains_reach_the_device_intact() {
        // Through the host view of the rings and through vm-memory's checked accesses.
        for (indirect_desc, host_view) in
            [(false, true), (true, true), (false, false), (true, false)]
        {
            let (dma, mut q, mut dev) = queue(
                8,
                QueueFeatures {
                    event_idx: true,
                    indirect_desc,
                    in_order: false,
                },
            );
            assert_eq!(q.host.mapped(), if indirect_desc { 4 } else { 3 });
            q.set_host_view(host_view);
            // Indirect for a chain of three (by default it would be direct).
            q.set_direct_max(0);
            let segs = [
                seg(&dma, 16, false),
                seg(&dma, 4096, true),
                seg(&dma, 1, true),
            ];
            let head = q.add(&segs).unwrap();
            assert!(q.publish().unwrap(), "first publish must notify");
            let mem = dma.guest_memory();
            let chain = dev.pop_avail(mem).unwrap().unwrap();
            assert_eq!(chain.head, head);
            assert_eq!(chain.segments, segs);
            assert_eq!(q.free_descriptors(), if indirect_desc { 7 } else { 5 });
            dev.push_used(mem, u32::from(head), 4097).unwrap();
            assert_eq!(q.pop_used().unwrap(), Some(Completion { head, len: 4097 }));
            assert_eq!(q.pop_used().unwrap(), None);
            assert_eq!(q.free_descriptors(), 8);
            assert_eq!(q.in_flight(), 0);
        }
    }

    #[test]
    fn used_len_is_checked_against_writable_bytes_only() {
        let (dma, mut q, mut dev) = queue(4, QueueFeatures::default());
        let head = q.add(&[seg(&dma, 4096, false)]).unwrap();
        q.publish().unwrap();
        let mem = dma.guest_memory();
        dev.pop_avail(mem).unwrap().unwrap();
        dev.push_used(mem, u32::from(head), 1).unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedLenTooLarge {
                len: 1,
                writable: 0,
                ..
            })
        ));
        assert!(q.is_broken());
        assert!(matches!(q.add(&[seg(&dma, 1, true)]), Err(Error::Broken)));
        q.reset().unwrap();
        assert!(!q.is_broken());
        assert_eq!(q.free_descriptors(), 4);
    }

    #[test]
    fn a_completion_of_a_buffer_never_made_available_is_refused() {
        // Found by the virtio_used_ring fuzz target: without IN_ORDER, a used element naming a
        // chain that was added but not yet published was taken as its completion, and its
        // descriptors freed while the next publish would still hand the stale entry out.
        // Chains are published at `publish` only here, so that one can be added unpublished.
        let (dma, mut q, mut dev) = queue(8, QueueFeatures::default());
        q.set_publish_on_add(false).unwrap();
        let mem = dma.guest_memory();
        let a = q.add(&[seg(&dma, 512, true)]).unwrap();
        q.publish().unwrap();
        dev.pop_avail(mem).unwrap().unwrap();
        let b = q.add(&[seg(&dma, 512, true)]).unwrap();
        // The device completes A honestly: fine, with B still unpublished.
        dev.push_used(mem, u32::from(a), 512).unwrap();
        assert_eq!(
            q.pop_used().unwrap(),
            Some(Completion { head: a, len: 512 })
        );
        // Now it names B, which it was never given (used.idx moved by one, B in flight).
        dev.push_used(mem, u32::from(b), 0).unwrap();
        assert!(
            matches!(
                q.pop_used(),
                Err(Error::UsedIdxTooFarAhead { in_flight: 0, .. })
            ),
            "no published buffer is outstanding"
        );
        assert!(q.is_broken());

        // With a published buffer outstanding too, naming the unpublished one is caught by id.
        q.reset().unwrap();
        assert!(!q.publish_on_add, "reset keeps the publishing mode");
        let mut dev = DeviceQueue::new(q.layout());
        let a = q.add(&[seg(&dma, 512, true)]).unwrap();
        q.publish().unwrap();
        dev.pop_avail(mem).unwrap().unwrap();
        let b = q.add(&[seg(&dma, 512, true)]).unwrap();
        assert_ne!(a, b);
        dev.push_used(mem, u32::from(b), 0).unwrap();
        assert!(matches!(q.pop_used(), Err(Error::UsedIdNotPublished(id)) if id == b));
        assert!(q.is_broken());
    }

    #[test]
    fn chains_are_published_as_they_are_added_and_notified_once_per_batch() {
        let (dma, mut q, mut dev) = queue(
            8,
            QueueFeatures {
                event_idx: true,
                indirect_desc: false,
                in_order: false,
            },
        );
        let mem = dma.guest_memory();
        let idx_addr = q
            .layout()
            .avail_ring
            .unchecked_add(offset_of!(vring_avail, idx) as u64);
        let avail_idx = || u16::from_le(mem.load::<u16>(idx_addr, Ordering::Acquire).unwrap());
        let a = q.add(&[seg(&dma, 512, true)]).unwrap();
        assert_eq!(avail_idx(), 1, "published by add");
        // A device processing the ring takes it and completes it before any publish: an
        // honest completion, taken as one.
        assert_eq!(dev.pop_avail(mem).unwrap().unwrap().head, a);
        dev.push_used(mem, u32::from(a), 100).unwrap();
        assert_eq!(
            q.pop_used().unwrap(),
            Some(Completion { head: a, len: 100 })
        );
        let b = q.add(&[seg(&dma, 512, true)]).unwrap();
        assert_eq!(avail_idx(), 2);
        // The device asked for a kick when avail.idx passes 0 (its initial avail_event): the
        // decision covers both chains added since the last one.
        assert!(q.publish().unwrap());
        assert!(!q.publish().unwrap(), "nothing added since");
        // A used id for a descriptor that was never added is still refused.
        dev.pop_avail(mem).unwrap().unwrap();
        dev.push_used(mem, u32::from(b) + 1, 0).unwrap();
        assert!(matches!(q.pop_used(), Err(Error::UsedIdNotOutstanding(_))));

        // Deferred, then switched back on: what was added is published by the switch.
        q.reset().unwrap();
        q.set_publish_on_add(false).unwrap();
        q.add(&[seg(&dma, 512, true)]).unwrap();
        q.add(&[seg(&dma, 512, true)]).unwrap();
        assert_eq!(avail_idx(), 0, "deferred to publish");
        q.set_publish_on_add(true).unwrap();
        assert_eq!(avail_idx(), 2);
        assert!(q.publish().unwrap());
    }

    #[test]
    fn short_chains_are_direct_while_the_table_has_room_and_indirect_after() {
        let (dma, mut q, mut dev) = queue(
            8,
            QueueFeatures {
                event_idx: true,
                indirect_desc: true,
                in_order: false,
            },
        );
        let mem = dma.guest_memory();
        let three = [
            seg(&dma, 16, false),
            seg(&dma, 4096, true),
            seg(&dma, 1, true),
        ];
        let five = [seg(&dma, 16, false); 5];
        // Three descriptors each while a quarter of the table (2) stays free: 8 -> 5 -> 2.
        let a = q.add(&three).unwrap();
        assert_eq!(q.free_descriptors(), 5);
        let b = q.add(&three).unwrap();
        assert_eq!(q.free_descriptors(), 2);
        // Two free: the next chain of three goes indirect (one descriptor), as does any chain
        // longer than DIRECT_MAX.
        assert!(q.has_room_for(3));
        let c = q.add(&three).unwrap();
        assert_eq!(q.free_descriptors(), 1);
        let d = q.add(&five).unwrap();
        assert_eq!(q.free_descriptors(), 0);
        assert!(!q.has_room_for(1));
        q.publish().unwrap();
        for (head, segs) in [(a, &three[..]), (b, &three), (c, &three), (d, &five)] {
            let chain = dev.pop_avail(mem).unwrap().unwrap();
            assert_eq!(chain.head, head);
            assert_eq!(chain.segments, segs);
        }
        // The middle of a direct chain is not a head, whatever the device says.
        dev.push_used(mem, u32::from(q.next[usize::from(a)]), 0)
            .unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedIdNotHead { head, .. }) if head == a
        ));
        q.reset().unwrap();
        let mut dev = DeviceQueue::new(q.layout());
        // Completed in any order, every descriptor comes back.
        let heads: Vec<u16> = (0..4)
            .map(|i| q.add(if i == 3 { &five[..] } else { &three[..] }).unwrap())
            .collect();
        q.publish().unwrap();
        for _ in 0..4 {
            dev.pop_avail(mem).unwrap().unwrap();
        }
        for &h in heads.iter().rev() {
            dev.push_used(mem, u32::from(h), 0).unwrap();
        }
        let mut n = 0;
        while let Some(c) = q.pop_used().unwrap() {
            assert!(heads.contains(&c.head));
            n += 1;
        }
        assert_eq!(n, 4);
        assert_eq!(q.free_descriptors(), 8);
    }

    #[test]
    fn full_queue_and_oversized_chains_are_refused() {
        let (dma, mut q, _dev) = queue(4, QueueFeatures::default());
        let s = seg(&dma, 512, true);
        assert!(matches!(q.add(&[]), Err(Error::EmptyChain)));
        assert!(matches!(
            q.add(&[s; 5]),
            Err(Error::ChainTooLong { len: 5, .. })
        ));
        q.add(&[s; 3]).unwrap();
        assert!(matches!(
            q.add(&[s; 2]),
            Err(Error::QueueFull { needed: 2, free: 1 })
        ));
        let outside = Segment {
            addr: GuestAddress(0x1000),
            len: 16,
            device_writable: false,
        };
        assert!(matches!(
            q.add(&[outside]),
            Err(Error::SegmentOutsideMemory { .. })
        ));
    }

    const IN_ORDER: QueueFeatures = QueueFeatures {
        event_idx: true,
        indirect_desc: false,
        in_order: true,
    };

    #[test]
    fn in_order_batches_complete_in_order_with_skipped_buffers_used_completely() {
        let (dma, mut q, mut dev) = queue(8, IN_ORDER);
        let mem = dma.guest_memory();
        // Chains of 2 descriptors: heads 0, 2, 4, 6.
        let mut heads = Vec::new();
        for _ in 0..4 {
            heads.push(
                q.add(&[seg(&dma, 16, false), seg(&dma, 100, true)])
                    .unwrap(),
            );
        }
        assert_eq!(heads, [0, 2, 4, 6]);
        q.publish().unwrap();
        for _ in 0..4 {
            dev.pop_avail(mem).unwrap().unwrap();
        }
        // Two batches before the driver looks: [0, 2] named by 2, then [4, 6] named by 6.
        dev.push_used_batch(mem, 2, 2, 7).unwrap();
        dev.push_used_batch(mem, 2, 6, 9).unwrap();
        let mut got = Vec::new();
        while let Some(c) = q.pop_used().unwrap() {
            got.push((c.head, c.len));
        }
        assert_eq!(got, [(0, 100), (2, 7), (4, 100), (6, 9)]);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.free_descriptors(), 8);
        // Ring order goes on from where it was, and a chain wraps at the table's end.
        let a = q.add(&[seg(&dma, 16, false)]).unwrap();
        let b = q
            .add(&[seg(&dma, 16, false), seg(&dma, 8, true), seg(&dma, 8, true)])
            .unwrap();
        assert_eq!((a, b), (0, 1));
        for _ in 0..4 {
            q.add(&[seg(&dma, 16, false)]).unwrap();
        }
        q.publish().unwrap();
        for _ in 0..6 {
            dev.pop_avail(mem).unwrap().unwrap();
        }
        dev.push_used_batch(mem, 6, 7, 0).unwrap();
        let mut n = 0;
        while q.pop_used().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 6);
        let segs = [seg(&dma, 16, false), seg(&dma, 8, true), seg(&dma, 8, true)];
        // Next in ring order is 0; then 1, 2, 3 ... with a wrap: place a chain at 6, 7, 0.
        for _ in 0..6 {
            q.add(&[seg(&dma, 16, false)]).unwrap();
        }
        q.publish().unwrap();
        for _ in 0..6 {
            dev.pop_avail(mem).unwrap().unwrap();
        }
        dev.push_used_batch(mem, 6, 5, 0).unwrap();
        while q.pop_used().unwrap().is_some() {}
        let head = q.add(&segs).unwrap();
        assert_eq!(head, 6);
        q.publish().unwrap();
        let chain = dev.pop_avail(mem).unwrap().unwrap();
        assert_eq!(chain.head, 6);
        assert_eq!(chain.segments, segs);
        assert_eq!(q.next[6], 7);
        assert_eq!(q.next[7], 0);
    }

    #[test]
    fn in_order_used_id_beyond_used_idx_is_out_of_order() {
        let (dma, mut q, mut dev) = queue(8, IN_ORDER);
        let mem = dma.guest_memory();
        for _ in 0..3 {
            q.add(&[seg(&dma, 64, true)]).unwrap();
        }
        q.publish().unwrap();
        // Head 2 with used.idx moved by 2: a batch of 3 would be needed.
        dev.push_used_batch(mem, 2, 2, 64).unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedIdOutOfOrder {
                id: 2,
                expected: 0,
                batch: 3,
                pending: 2
            })
        ));
        assert!(q.is_broken());
    }

    #[test]
    fn in_order_used_buffers_cannot_include_unpublished_ones() {
        let (dma, mut q, mut dev) = queue(8, IN_ORDER);
        q.set_publish_on_add(false).unwrap();
        let mem = dma.guest_memory();
        q.add(&[seg(&dma, 64, true)]).unwrap();
        q.publish().unwrap();
        // Added, not published: the device cannot have used it.
        q.add(&[seg(&dma, 64, true)]).unwrap();
        dev.push_used_batch(mem, 2, 1, 64).unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedIdxTooFarAhead {
                used_idx: 2,
                last_used: 0,
                in_flight: 1
            })
        ));
    }

    #[test]
    fn in_order_batch_length_is_checked_for_the_named_buffer() {
        let (dma, mut q, mut dev) = queue(8, IN_ORDER);
        let mem = dma.guest_memory();
        q.add(&[seg(&dma, 64, true)]).unwrap();
        q.add(&[seg(&dma, 32, true)]).unwrap();
        q.publish().unwrap();
        dev.push_used_batch(mem, 2, 1, 33).unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedLenTooLarge {
                id: 1,
                len: 33,
                writable: 32
            })
        ));
    }

    #[test]
    fn suppressed_notifications_are_honoured() {
        let (dma, mut q, _dev) = queue(
            8,
            QueueFeatures {
                event_idx: true,
                indirect_desc: false,
                in_order: false,
            },
        );
        let mem = dma.guest_memory();
        // The device says: kick me when avail.idx passes 3.
        let avail_event = q.avail_event_addr();
        mem.store(u16::to_le(3), avail_event, Ordering::SeqCst)
            .unwrap();
        let s = seg(&dma, 512, true);
        q.add(&[s]).unwrap();
        assert!(!q.publish().unwrap());
        q.add(&[s]).unwrap();
        q.add(&[s]).unwrap();
        assert!(!q.publish().unwrap());
        q.add(&[s]).unwrap();
        assert!(q.publish().unwrap());
        // Nothing new: no kick.
        assert!(!q.publish().unwrap());
    }
}
