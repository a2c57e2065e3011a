//! The driver side of a packed virtqueue (virtio 1.2, section 2.8).
//!
//! One descriptor ring carries both directions: the driver makes a descriptor available by
//! setting its `AVAIL` flag to the driver's wrap counter and `USED` to the inverse; the device
//! marks the first descriptor of a completed buffer used by setting both to its own wrap counter,
//! and writes the buffer id and written length there. The driver writes the head descriptor's
//! flags last, with a release store, so the device never sees a partial chain (2.8.21); it reads a
//! used descriptor's flags with an acquire load before its id and length (2.8.20), copying the
//! descriptor out once.
//!
//! Buffer ids are the driver's own (0..size). Every completion is validated against the driver's
//! private record: an id in range and outstanding, not completed twice, a length no larger than
//! the buffer's device-writable bytes. Any violation breaks the queue.
//!
//! With `VIRTIO_F_IN_ORDER` (2.8.8) the device may write one used descriptor for a batch of
//! buffers, with the id of the batch's last buffer, at the ring position of its first, and skip
//! forward by the batch's descriptors. The driver keeps the ids in the order they were made
//! available: a used id must be outstanding, and the buffers before it in that order complete
//! with it, "used completely" (their whole device-writable length). The ring positions the
//! batch skips are never read. (Unlike a split ring, where `used.idx` says how many buffers
//! were used, nothing tells an out-of-order completion from a batch here; a buffer completed
//! twice that way is caught as a duplicate.)

use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_F_WRAP_CTR, VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE, VRING_PACKED_EVENT_FLAG_ENABLE, vring_packed_desc,
    vring_packed_desc_event,
};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Le16, Le32, Le64,
    Permissions,
};

use super::{
    Completion, Error, MAX_INDIRECT_DESCRIPTORS, QueueFeatures, QueueLayout, Segment, VirtQueue,
    validate_queue_size,
};
use crate::memory::DmaMemory;

/// `AVAIL` flag bit.
const F_AVAIL: u16 = 1 << VRING_PACKED_DESC_F_AVAIL;
/// `USED` flag bit.
const F_USED: u16 = 1 << VRING_PACKED_DESC_F_USED;
/// Offset of `flags` in a packed descriptor.
const FLAGS_OFFSET: u64 = 14;

/// Bytes of the descriptor ring for `size` descriptors.
pub fn desc_ring_bytes(size: u16) -> u64 {
    size_of::<vring_packed_desc>() as u64 * u64::from(size)
}

/// Bytes of each event suppression area.
pub fn event_area_bytes() -> u64 {
    size_of::<vring_packed_desc_event>() as u64
}

/// The `in_flight_by_descs` bucket of a chain of `ring_descs` ring descriptors.
fn descs_bucket(ring_descs: u16) -> usize {
    usize::from(ring_descs.clamp(1, 4)) - 1
}

/// A packed descriptor as laid out in memory (section 2.8.13), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PackedDesc {
    addr: Le64,
    len: Le32,
    id: Le16,
    flags: Le16,
}

// SAFETY: `PackedDesc` is `repr(C)`, made of `ByteValued` little-endian integer wrappers with no
// padding (16 bytes, checked below): any bit pattern is valid.
unsafe impl ByteValued for PackedDesc {}
const _: () = assert!(size_of::<PackedDesc>() == size_of::<vring_packed_desc>());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdState {
    Free,
    Completed,
    InFlight { ring_descs: u16, writable: u64 },
}

/// The driver side of one packed virtqueue.
#[derive(Debug)]
pub struct PackedQueue<M: GuestMemory = GuestMemoryMmap> {
    mem: Arc<M>,
    layout: QueueLayout,
    features: QueueFeatures,
    indirect_tables: Option<GuestAddress>,
    max_indirect: u16,
    ids: Vec<IdState>,
    free_ids: VecDeque<u16>,
    num_free: u16,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// Descriptors made available since the last `publish`.
    added_since_publish: u16,
    in_flight: u16,
    /// The chains in flight by how many ring descriptors they take: 1, 2, 3, and 4 or more
    /// (see `enable_notifications_after`).
    in_flight_by_descs: [u16; 4],
    broken: bool,
    /// With `IN_ORDER`: the ids in flight, in the order they were made available.
    order: VecDeque<u16>,
    /// With `IN_ORDER`: buffers of the current batch not yet handed out (the last is the one
    /// the used descriptor named), and that descriptor's length.
    batch_left: u16,
    batch_len: u32,
}

impl PackedQueue<GuestMemoryMmap> {
    /// Allocates the ring, the two event suppression areas and, with `INDIRECT_DESC`, one
    /// indirect table per buffer id, from `dma`.
    pub fn allocate(dma: &DmaMemory, size: u16, features: QueueFeatures) -> Result<Self, Error> {
        let size = validate_queue_size(size)?;
        let desc_table = dma.alloc(desc_ring_bytes(size)).map_err(Error::Memory)?;
        let avail_ring = dma.alloc(event_area_bytes()).map_err(Error::Memory)?;
        let used_ring = dma.alloc(event_area_bytes()).map_err(Error::Memory)?;
        let indirect = if features.indirect_desc {
            let bytes = u64::from(size)
                * u64::from(MAX_INDIRECT_DESCRIPTORS)
                * size_of::<PackedDesc>() as u64;
            Some(dma.alloc(bytes).map_err(Error::Memory)?)
        } else {
            None
        };
        let layout = QueueLayout {
            size,
            desc_table,
            avail_ring,
            used_ring,
            packed: true,
        };
        Self::new(dma.guest_memory().clone(), layout, features, indirect)
    }
}

impl<M: GuestMemory> PackedQueue<M> {
    /// A queue over areas already placed in `mem` (see [`QueueLayout`] for which is which).
    /// `indirect_tables`, needed for `features.indirect_desc`, is room for
    /// `layout.size * MAX_INDIRECT_DESCRIPTORS` descriptors. The areas are zeroed.
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
        let mut q = PackedQueue {
            mem,
            layout: QueueLayout {
                packed: true,
                ..layout
            },
            features,
            indirect_tables,
            max_indirect: if features.indirect_desc {
                MAX_INDIRECT_DESCRIPTORS
            } else {
                0
            },
            ids: vec![IdState::Free; usize::from(size)],
            free_ids: (0..size).collect(),
            num_free: size,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            added_since_publish: 0,
            in_flight: 0,
            in_flight_by_descs: [0; 4],
            broken: false,
            order: VecDeque::new(),
            batch_left: 0,
            batch_len: 0,
        };
        q.zero_areas()?;
        Ok(q)
    }

    fn zero_areas(&mut self) -> Result<(), Error> {
        let l = self.layout;
        for (addr, len) in [
            (l.desc_table, desc_ring_bytes(l.size)),
            (l.avail_ring, event_area_bytes()),
            (l.used_ring, event_area_bytes()),
        ] {
            let zeroes = vec![0u8; len as usize];
            self.mem.write_slice(&zeroes, addr).map_err(Error::Access)?;
        }
        Ok(())
    }

    /// Chains added and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    fn desc_addr(&self, position: u16) -> GuestAddress {
        self.layout
            .desc_table
            .unchecked_add(u64::from(position) * size_of::<PackedDesc>() as u64)
    }

    fn ring_flags(&self, writable: bool, next: bool, indirect: bool, wrap: bool) -> u16 {
        let mut f = 0u32;
        if writable {
            f |= VRING_DESC_F_WRITE;
        }
        if next {
            f |= VRING_DESC_F_NEXT;
        }
        if indirect {
            f |= VRING_DESC_F_INDIRECT;
        }
        let wrap_bits = if wrap { F_AVAIL } else { F_USED };
        f as u16 | wrap_bits
    }

    fn write_desc(
        &self,
        at: GuestAddress,
        addr: u64,
        len: u32,
        id: u16,
        flags: u16,
    ) -> Result<(), Error> {
        let d = PackedDesc {
            addr: Le64::from(addr),
            len: Le32::from(len),
            id: Le16::from(id),
            flags: Le16::from(flags),
        };
        self.mem.write_obj(d, at).map_err(Error::Access)
    }

    fn add_inner(
        &mut self,
        segments: &[Segment],
        id: u16,
        use_indirect: bool,
    ) -> Result<u16, Error> {
        let size = self.layout.size;
        let head_pos = self.next_avail;
        let head_wrap = self.avail_wrap;
        let head_flags;
        let ring_descs;
        if use_indirect {
            let tables = self.indirect_tables.ok_or(Error::ChainTooLong {
                len: segments.len(),
                size,
                max_indirect: 0,
            })?;
            let entry = size_of::<PackedDesc>() as u64;
            let table = tables.unchecked_add(u64::from(id) * u64::from(self.max_indirect) * entry);
            // Indirect table entries: consecutive, only the WRITE flag matters (2.8.19).
            for (i, s) in segments.iter().enumerate() {
                let flags = if s.device_writable {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                self.write_desc(
                    table.unchecked_add(i as u64 * entry),
                    s.addr.0,
                    s.len,
                    id,
                    flags,
                )?;
            }
            let len = (segments.len() as u64 * entry) as u32;
            head_flags = self.ring_flags(false, false, true, head_wrap);
            self.write_desc(self.desc_addr(head_pos), table.0, len, id, 0)?;
            ring_descs = 1u16;
        } else {
            let mut pos = head_pos;
            let mut wrap = head_wrap;
            let mut flags0 = 0;
            for (i, s) in segments.iter().enumerate() {
                let next = i + 1 < segments.len();
                let flags = self.ring_flags(s.device_writable, next, false, wrap);
                if i == 0 {
                    // The head's flags are written last (below).
                    flags0 = flags;
                    self.write_desc(self.desc_addr(pos), s.addr.0, s.len, id, 0)?;
                } else {
                    self.write_desc(self.desc_addr(pos), s.addr.0, s.len, id, flags)?;
                }
                pos += 1;
                if pos == size {
                    pos = 0;
                    wrap = !wrap;
                }
            }
            head_flags = flags0;
            ring_descs = segments.len() as u16;
        }
        // Make the chain available: the head's flags, last, with release ordering (2.8.21).
        self.mem
            .store(
                u16::to_le(head_flags),
                self.desc_addr(head_pos).unchecked_add(FLAGS_OFFSET),
                Ordering::Release,
            )
            .map_err(Error::Access)?;
        let advanced = u32::from(head_pos) + u32::from(ring_descs);
        if advanced >= u32::from(size) {
            self.next_avail = (advanced - u32::from(size)) as u16;
            self.avail_wrap = !self.avail_wrap;
        } else {
            self.next_avail = advanced as u16;
        }
        self.num_free -= ring_descs;
        self.added_since_publish = self.added_since_publish.saturating_add(ring_descs);
        Ok(ring_descs)
    }

    fn event_area(&self, area: GuestAddress) -> Result<(u16, u16), Error> {
        let raw: u32 = self.mem.read_obj(area).map_err(Error::Access)?;
        let raw = u32::from_le(raw);
        Ok(((raw & 0xffff) as u16, (raw >> 16) as u16))
    }

    fn write_driver_event(&self, off_wrap: u16, flags: u16) -> Result<(), Error> {
        let raw = u32::from(off_wrap) | (u32::from(flags) << 16);
        self.mem
            .store(u32::to_le(raw), self.layout.avail_ring, Ordering::Release)
            .map_err(Error::Access)
    }

    fn used_at_next(&self) -> Result<bool, Error> {
        let flags = u16::from_le(
            self.mem
                .load::<u16>(
                    self.desc_addr(self.next_used).unchecked_add(FLAGS_OFFSET),
                    Ordering::Acquire,
                )
                .map_err(Error::Access)?,
        );
        let avail = flags & F_AVAIL != 0;
        let used = flags & F_USED != 0;
        Ok(avail == self.used_wrap && used == self.used_wrap)
    }

    fn pop_used_inner(&mut self) -> Result<Option<Completion>, Error> {
        if self.features.in_order {
            return self.pop_used_in_order();
        }
        // Acquire on the flags: the id and len below were written before them (2.8.20).
        if !self.used_at_next()? {
            return Ok(None);
        }
        if self.in_flight == 0 {
            return Err(Error::SpuriousUsed(self.next_used));
        }
        // One copy of the used descriptor; only the copy is looked at.
        let d: PackedDesc = self
            .mem
            .read_obj(self.desc_addr(self.next_used))
            .map_err(Error::Access)?;
        let id = d.id.to_native();
        let len = d.len.to_native();
        let size = self.layout.size;
        if id >= size {
            return Err(Error::UsedIdOutOfRange {
                id: id.into(),
                size,
            });
        }
        let (ring_descs, writable) = match self.ids[usize::from(id)] {
            IdState::InFlight {
                ring_descs,
                writable,
            } => (ring_descs, writable),
            IdState::Completed => return Err(Error::UsedIdDuplicate(id)),
            IdState::Free => return Err(Error::UsedIdNotOutstanding(id)),
        };
        // "Element Length is reserved for used descriptors without the VIRTQ_DESC_F_WRITE
        // flag, and is ignored by drivers" (2.8.4): a buffer the device only reads carries no
        // length (DPDK's vhost writes the bytes it read there), and reports 0.
        let len = if writable == 0 { 0 } else { len };
        if u64::from(len) > writable {
            return Err(Error::UsedLenTooLarge { id, len, writable });
        }
        self.complete(id, ring_descs);
        Ok(Some(Completion { head: id, len }))
    }

    /// Frees buffer `id` and moves the used position past its `ring_descs` descriptors.
    fn complete(&mut self, id: u16, ring_descs: u16) {
        let size = self.layout.size;
        self.ids[usize::from(id)] = IdState::Completed;
        self.free_ids.push_back(id);
        self.num_free += ring_descs;
        self.in_flight -= 1;
        self.in_flight_by_descs[descs_bucket(ring_descs)] -= 1;
        let advanced = u32::from(self.next_used) + u32::from(ring_descs);
        if advanced >= u32::from(size) {
            self.next_used = (advanced - u32::from(size)) as u16;
            self.used_wrap = !self.used_wrap;
        } else {
            self.next_used = advanced as u16;
        }
    }

    /// `pop_used` with `IN_ORDER` (2.8.8): at the start of a batch, the used descriptor at the
    /// oldest buffer's position is copied out once; its id must be outstanding, and every
    /// buffer from the oldest up to it is part of the batch. The batch is handed out one
    /// completion at a time, oldest first, without reading the ring again (the positions it
    /// skips hold no used descriptors): the buffers before the named one carry their whole
    /// device-writable length, the named one the descriptor's length.
    fn pop_used_in_order(&mut self) -> Result<Option<Completion>, Error> {
        if self.batch_left == 0 {
            // Acquire on the flags: the id and len below were written before them (2.8.20).
            if !self.used_at_next()? {
                return Ok(None);
            }
            if self.in_flight == 0 {
                return Err(Error::SpuriousUsed(self.next_used));
            }
            let d: PackedDesc = self
                .mem
                .read_obj(self.desc_addr(self.next_used))
                .map_err(Error::Access)?;
            let id = d.id.to_native();
            let size = self.layout.size;
            if id >= size {
                return Err(Error::UsedIdOutOfRange {
                    id: id.into(),
                    size,
                });
            }
            let writable = match self.ids[usize::from(id)] {
                IdState::InFlight { writable, .. } => writable,
                IdState::Completed => return Err(Error::UsedIdDuplicate(id)),
                IdState::Free => return Err(Error::UsedIdNotOutstanding(id)),
            };
            // In flight means in `order`: the batch ends there.
            let Some(at) = self.order.iter().position(|&i| i == id) else {
                return Err(Error::UsedIdNotOutstanding(id));
            };
            // The length is reserved for a buffer the device only reads (2.8.4).
            let len = if writable == 0 { 0 } else { d.len.to_native() };
            if u64::from(len) > writable {
                return Err(Error::UsedLenTooLarge { id, len, writable });
            }
            self.batch_left = at as u16 + 1;
            self.batch_len = len;
        }
        let Some(id) = self.order.pop_front() else {
            return Err(Error::SpuriousUsed(self.next_used));
        };
        let IdState::InFlight {
            ring_descs,
            writable,
        } = self.ids[usize::from(id)]
        else {
            return Err(Error::UsedIdNotOutstanding(id));
        };
        self.batch_left -= 1;
        let len = if self.batch_left == 0 {
            self.batch_len
        } else {
            // Skipped buffers are used completely (2.8.8).
            u32::try_from(writable).unwrap_or(u32::MAX)
        };
        self.complete(id, ring_descs);
        Ok(Some(Completion { head: id, len }))
    }
}

impl<M: GuestMemory + std::fmt::Debug + Send + Sync> VirtQueue for PackedQueue<M> {
    fn layout(&self) -> QueueLayout {
        self.layout
    }

    fn free_descriptors(&self) -> usize {
        usize::from(self.num_free)
    }

    fn has_room_for(&self, segments: usize) -> bool {
        let needed = if self.features.indirect_desc && segments > 1 {
            1
        } else {
            segments
        };
        needed <= usize::from(self.num_free) && !self.free_ids.is_empty()
    }

    fn next_head(&self) -> Option<u16> {
        self.free_ids.front().copied()
    }

    fn add(&mut self, segments: &[Segment]) -> Result<u16, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let n = segments.len();
        if n == 0 {
            return Err(Error::EmptyChain);
        }
        let use_indirect = self.features.indirect_desc && n > 1;
        if (use_indirect && n > usize::from(self.max_indirect))
            || (!use_indirect && n > usize::from(self.layout.size))
        {
            return Err(Error::ChainTooLong {
                len: n,
                size: self.layout.size,
                max_indirect: self.max_indirect,
            });
        }
        let needed = if use_indirect { 1 } else { n };
        if needed > usize::from(self.num_free) || self.free_ids.is_empty() {
            return Err(Error::QueueFull {
                needed,
                free: usize::from(self.num_free),
            });
        }
        let mut writable = 0u64;
        for s in segments {
            if !self
                .mem
                .check_range(s.addr, s.len as usize, Permissions::ReadWrite)
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
        let id = self.free_ids.pop_front().ok_or(Error::QueueFull {
            needed,
            free: usize::from(self.num_free),
        })?;
        match self.add_inner(segments, id, use_indirect) {
            Ok(ring_descs) => {
                self.ids[usize::from(id)] = IdState::InFlight {
                    ring_descs,
                    writable,
                };
                if self.features.in_order {
                    self.order.push_back(id);
                }
                self.in_flight += 1;
                self.in_flight_by_descs[descs_bucket(ring_descs)] += 1;
                Ok(id)
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// The chains are already visible (their head flags were stored in `add`); this decides
    /// whether to notify, from the device event suppression area (2.8.10). With `DESC`, the
    /// device names a ring position and wrap counter; a garbage value only costs a spurious or a
    /// missed kick.
    fn publish(&mut self) -> Result<bool, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let added = std::mem::take(&mut self.added_since_publish);
        if added == 0 {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        let (off_wrap, flags) = self.event_area(self.layout.used_ring)?;
        match u32::from(flags) {
            VRING_PACKED_EVENT_FLAG_ENABLE => Ok(true),
            VRING_PACKED_EVENT_FLAG_DISABLE => Ok(false),
            VRING_PACKED_EVENT_FLAG_DESC if self.features.event_idx => {
                let size = u32::from(self.layout.size);
                // Positions on a line of 2 * size: the event, and the published range.
                let line = |pos: u16, wrap: bool| u32::from(pos) + if wrap { size } else { 0 };
                let event_wrap = off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR != 0;
                let event_pos = off_wrap & !(1 << VRING_PACKED_EVENT_F_WRAP_CTR);
                if u32::from(event_pos) >= size {
                    return Ok(true);
                }
                let new = line(self.next_avail, self.avail_wrap);
                let old = (new + 2 * size - u32::from(added)) % (2 * size);
                let event = line(event_pos, event_wrap);
                // vring_need_event on a ring of 2 * size positions.
                let m = 2 * size;
                Ok((new + m - event - 1) % m < (new + m - old) % m)
            }
            // Reserved values, or DESC without EVENT_IDX: notify, to be safe.
            _ => Ok(true),
        }
    }

    fn pop_used(&mut self) -> Result<Option<Completion>, Error> {
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

    fn enable_notifications(&mut self) -> Result<bool, Error> {
        self.enable_notifications_after(1)
    }

    /// With `EVENT_IDX`, the event offset is placed where the used descriptor of the `n`-th
    /// completion from now can be at the earliest: each completion moves the used position
    /// past its chain's ring descriptors (2.8.6), and the chains complete in any order, so
    /// the offset is `n - 1` times the fewest ring descriptors of a chain in flight past the
    /// next used position. The device notifies when it writes a used descriptor at or past
    /// it (2.8.10): at the `n`-th completion when the chains in flight are alike (all
    /// indirect, or the same requests), before it when they are not, never after.
    fn enable_notifications_after(&mut self, n: u16) -> Result<bool, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.features.event_idx {
            // Fewer than `size` descriptors are in flight after the next used one, so the
            // offset is less than one lap ahead. At the next completion (`n` 1, every plain
            // `enable_notifications`) it is the next used position itself.
            let ahead = match n {
                0 | 1 => 0,
                n => {
                    let fewest = self
                        .in_flight_by_descs
                        .iter()
                        .position(|&c| c > 0)
                        .map_or(1, |b| b as u32 + 1);
                    u32::from(n - 1) * fewest
                }
            };
            let size = u32::from(self.layout.size);
            let mut pos = u32::from(self.next_used) + ahead.min(size - 1);
            let mut wrap = self.used_wrap;
            if pos >= size {
                pos -= size;
                wrap = !wrap;
            }
            let off_wrap = pos as u16 | (u16::from(wrap) << VRING_PACKED_EVENT_F_WRAP_CTR);
            self.write_driver_event(off_wrap, VRING_PACKED_EVENT_FLAG_DESC as u16)?;
        } else {
            self.write_driver_event(0, VRING_PACKED_EVENT_FLAG_ENABLE as u16)?;
        }
        fence(Ordering::SeqCst);
        // In the middle of an in-order batch the rest is already used.
        Ok(self.batch_left > 0 || self.used_at_next()?)
    }

    fn disable_notifications(&mut self) -> Result<(), Error> {
        self.write_driver_event(0, VRING_PACKED_EVENT_FLAG_DISABLE as u16)
    }

    fn reset(&mut self) -> Result<(), Error> {
        let size = self.layout.size;
        self.ids.fill(IdState::Free);
        self.free_ids = (0..size).collect();
        self.num_free = size;
        self.next_avail = 0;
        self.avail_wrap = true;
        self.next_used = 0;
        self.used_wrap = true;
        self.added_since_publish = 0;
        self.in_flight = 0;
        self.in_flight_by_descs = [0; 4];
        self.broken = false;
        self.order.clear();
        self.batch_left = 0;
        self.zero_areas()
    }

    fn is_broken(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(event_idx: bool) -> (DmaMemory, PackedQueue) {
        let dma = DmaMemory::new(1 << 20).unwrap();
        let features = QueueFeatures {
            event_idx,
            indirect_desc: false,
            in_order: false,
        };
        let q = PackedQueue::allocate(&dma, 8, features).unwrap();
        (dma, q)
    }

    fn seg(dma: &DmaMemory) -> Segment {
        Segment {
            addr: dma.alloc(512).unwrap(),
            len: 512,
            device_writable: true,
        }
    }

    #[test]
    fn device_event_suppression_desc_mode() {
        let (dma, mut q) = queue(true);
        let s = seg(&dma);
        // The device asks for a kick once position 2 of the first lap is made available.
        let raw = (2u32 | 1 << 15) | (VRING_PACKED_EVENT_FLAG_DESC << 16);
        dma.guest_memory()
            .write_obj(raw.to_le(), q.layout().used_ring)
            .unwrap();
        q.add(&[s]).unwrap();
        assert!(!q.publish().unwrap());
        q.add(&[s]).unwrap();
        q.add(&[s]).unwrap();
        assert!(q.publish().unwrap());
        // DISABLE: never.
        let raw = VRING_PACKED_EVENT_FLAG_DISABLE << 16;
        dma.guest_memory()
            .write_obj(raw.to_le(), q.layout().used_ring)
            .unwrap();
        q.add(&[s]).unwrap();
        assert!(!q.publish().unwrap());
    }

    #[test]
    fn the_length_of_a_device_readable_buffer_is_ignored() {
        use crate::transport::inproc::DeviceQueue;
        let (dma, mut q) = queue(false);
        let mut dev = DeviceQueue::new_packed(q.layout());
        let readable = Segment {
            device_writable: false,
            ..seg(&dma)
        };
        let id = q.add(&[readable]).unwrap();
        q.publish().unwrap();
        let chain = dev.pop_avail(dma.guest_memory()).unwrap().unwrap();
        // Reserved for a buffer without VIRTQ_DESC_F_WRITE: whatever is there is ignored.
        dev.push_used(dma.guest_memory(), chain.head.into(), 0xdead_beef)
            .unwrap();
        assert_eq!(q.pop_used().unwrap(), Some(Completion { head: id, len: 0 }));
        // A writable buffer's length is still checked.
        let id = q.add(&[seg(&dma)]).unwrap();
        q.publish().unwrap();
        let chain = dev.pop_avail(dma.guest_memory()).unwrap().unwrap();
        dev.push_used(dma.guest_memory(), chain.head.into(), 513)
            .unwrap();
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedLenTooLarge {
                id: i,
                len: 513,
                writable: 512
            }) if i == id
        ));
    }

    #[test]
    fn in_order_batch_skips_the_batch_positions() {
        use crate::transport::inproc::DeviceQueue;
        let dma = DmaMemory::new(1 << 20).unwrap();
        let features = QueueFeatures {
            event_idx: true,
            indirect_desc: false,
            in_order: true,
        };
        let mut q = PackedQueue::allocate(&dma, 8, features).unwrap();
        let mut dev = DeviceQueue::new_packed(q.layout());
        let mem = dma.guest_memory();
        let two = |dma: &DmaMemory| {
            [
                Segment {
                    addr: dma.alloc(16).unwrap(),
                    len: 16,
                    device_writable: false,
                },
                seg(dma),
            ]
        };
        // Lap after lap: three buffers of 2 descriptors, reported as one batch naming the
        // third, then one more on its own; positions and wrap counters move by 6 then 2.
        for lap in 0..20u32 {
            let ids: Vec<u16> = (0..3).map(|_| q.add(&two(&dma)).unwrap()).collect();
            q.publish().unwrap();
            for _ in 0..3 {
                dev.pop_avail(mem).unwrap().unwrap();
            }
            dev.push_used_batch(mem, 3, ids[2].into(), 5).unwrap();
            assert!(q.enable_notifications().unwrap());
            let got: Vec<(u16, u32)> = std::iter::from_fn(|| q.pop_used().unwrap())
                .map(|c| (c.head, c.len))
                .collect();
            assert_eq!(
                got,
                [(ids[0], 512), (ids[1], 512), (ids[2], 5)],
                "lap {lap}"
            );
            let id = q.add(&two(&dma)).unwrap();
            q.publish().unwrap();
            dev.pop_avail(mem).unwrap().unwrap();
            dev.push_used_batch(mem, 1, id.into(), 1).unwrap();
            assert_eq!(q.pop_used().unwrap(), Some(Completion { head: id, len: 1 }));
            assert_eq!(q.pop_used().unwrap(), None);
            assert!(!q.enable_notifications().unwrap());
        }
    }

    #[test]
    fn in_order_buffer_completed_again_after_a_batch_is_a_duplicate() {
        use crate::transport::inproc::DeviceQueue;
        let dma = DmaMemory::new(1 << 20).unwrap();
        let features = QueueFeatures {
            event_idx: false,
            indirect_desc: false,
            in_order: true,
        };
        let mut q = PackedQueue::allocate(&dma, 8, features).unwrap();
        let mut dev = DeviceQueue::new_packed(q.layout());
        let mem = dma.guest_memory();
        let a = q.add(&[seg(&dma)]).unwrap();
        let b = q.add(&[seg(&dma)]).unwrap();
        q.add(&[seg(&dma)]).unwrap();
        q.publish().unwrap();
        for _ in 0..3 {
            dev.pop_avail(mem).unwrap().unwrap();
        }
        // Out of order: b, then a. b's descriptor is a batch of a and b.
        dev.push_used(mem, b.into(), 0).unwrap();
        dev.push_used(mem, a.into(), 0).unwrap();
        assert_eq!(q.pop_used().unwrap().map(|c| c.head), Some(a));
        assert_eq!(q.pop_used().unwrap().map(|c| c.head), Some(b));
        // The device's second descriptor sits in the batch's skipped positions, unread; the
        // third, at the driver's next position, names a again.
        dev.push_used(mem, a.into(), 0).unwrap();
        assert!(matches!(q.pop_used(), Err(Error::UsedIdDuplicate(i)) if i == a));
    }

    #[test]
    fn a_used_descriptor_with_nothing_in_flight_is_refused() {
        let (dma, mut q) = queue(false);
        // Flags AVAIL | USED at position 0: "used" for the first lap.
        let flags: u16 = F_AVAIL | F_USED;
        dma.guest_memory()
            .write_obj(
                flags.to_le(),
                q.layout().desc_table.unchecked_add(FLAGS_OFFSET),
            )
            .unwrap();
        assert!(matches!(q.pop_used(), Err(Error::SpuriousUsed(0))));
        assert!(q.is_broken());
        q.reset().unwrap();
        assert_eq!(q.pop_used().unwrap(), None);
    }
}
