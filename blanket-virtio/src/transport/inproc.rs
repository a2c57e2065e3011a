//! An in-process transport and device models, for tests.
//!
//! [`InProcessTransport`] runs a [`DeviceModel`] synchronously: a kick processes the queue at
//! once, in the caller's thread, so tests are deterministic and never sleep. [`MemBlkDevice`] is a
//! virtio-blk device over a RAM disk; set [`MemBlkDevice::hostile`] to make it misbehave in one of
//! the ways of HOSTILE-INPUT.md, to check that the driver answers with a typed error.

use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, virtio_blk_config,
};
use virtio_bindings::virtio_config::{
    VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_F_WRAP_CTR, VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE, vring_avail, vring_used, vring_used_elem,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::Transport;
use crate::memory::DmaMemory;
use crate::queue::split::{QueueLayout, Segment};

/// Errors of the in-process transport and its device models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A queue index the device does not have.
    #[error("queue {0} does not exist")]
    NoSuchQueue(u16),
    /// A queue kicked before it was set up.
    #[error("queue {0} is not set up")]
    QueueNotReady(u16),
    /// The driver's ring was malformed (a bug in the driver under test).
    #[error("malformed chain: {0}")]
    BadChain(&'static str),
    /// Shared memory access failed.
    #[error("shared memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// A config read past the config space.
    #[error("config read of {len} bytes at {offset} past the {size}-byte config space")]
    ConfigOutOfRange {
        /// Offset read.
        offset: u32,
        /// Length read.
        len: usize,
        /// Config space size.
        size: usize,
    },
    /// Duplicating a call eventfd for a new transport failed.
    #[error("cannot duplicate a call eventfd")]
    Dup(#[source] std::io::Error),
}

/// A chain as the device sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChain {
    /// Its head index, to put in the used ring.
    pub head: u16,
    /// Its buffers, in order, indirect tables resolved.
    pub segments: Vec<Segment>,
}

/// The device side of a split or packed queue: reads available buffers, writes used ones.
#[derive(Debug)]
pub struct DeviceQueue {
    layout: QueueLayout,
    last_avail: u16,
    used_idx: u16,
    /// Packed ring state: `Some` for a packed queue.
    packed: Option<PackedDeviceState>,
    /// `VIRTIO_F_IN_ORDER` was negotiated.
    in_order: bool,
}

#[derive(Debug)]
struct PackedDeviceState {
    avail_wrap: bool,
    used_wrap: bool,
    /// Ring descriptors of each chain popped and not yet completed, in order.
    popped: std::collections::VecDeque<u16>,
}

impl DeviceQueue {
    /// A device view of the split queue at `layout`.
    pub fn new(layout: QueueLayout) -> Self {
        DeviceQueue {
            layout,
            last_avail: 0,
            used_idx: 0,
            packed: None,
            in_order: false,
        }
    }

    /// A device view of the packed queue at `layout` (section 2.8).
    pub fn new_packed(layout: QueueLayout) -> Self {
        DeviceQueue {
            layout,
            last_avail: 0,
            used_idx: 0,
            packed: Some(PackedDeviceState {
                avail_wrap: true,
                used_wrap: true,
                popped: Default::default(),
            }),
            in_order: false,
        }
    }

    /// Whether `VIRTIO_F_IN_ORDER` was negotiated for this queue (the transport sets it from
    /// the driver's features): a device model may then report batches with
    /// [`DeviceQueue::push_used_batch`].
    pub fn in_order(&self) -> bool {
        self.in_order
    }

    /// Sets whether `VIRTIO_F_IN_ORDER` was negotiated.
    pub fn set_in_order(&mut self, in_order: bool) {
        self.in_order = in_order;
    }

    /// Reports the next `buffers` chains popped (in order) as used with one used element
    /// (split: written at the batch's first slot, `used.idx` moved by `buffers`, 2.7.9) or one
    /// used descriptor (packed: at the batch's first position, the ring skipped by the batch's
    /// descriptors, 2.8.8), naming `id`, which an honest in-order device sets to the last
    /// chain's head. Hostile models pass other ids or counts.
    pub fn push_used_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        buffers: u16,
        id: u32,
        len: u32,
    ) -> Result<(), Error> {
        let Some(st) = self.packed.as_mut() else {
            self.write_used_elem(mem, id, len)?;
            return self.set_used_idx(mem, self.used_idx.wrapping_add(buffers));
        };
        let mut count = 0u32;
        for _ in 0..buffers {
            count += u32::from(st.popped.pop_front().unwrap_or(1));
        }
        st.popped.push_front(count.min(u32::from(u16::MAX)) as u16);
        self.push_used_packed(mem, id, len)
    }

    fn pop_avail_packed(&mut self, mem: &GuestMemoryMmap) -> Result<Option<DeviceChain>, Error> {
        let size = self.layout.size;
        let table = self.layout.desc_table;
        let desc_at = |pos: u16| table.unchecked_add(u64::from(pos) * 16);
        let Some(st) = self.packed.as_mut() else {
            return Ok(None);
        };
        let flags = u16::from_le(
            mem.load::<u16>(
                desc_at(self.last_avail).unchecked_add(14),
                Ordering::Acquire,
            )
            .map_err(Error::Memory)?,
        );
        let avail = flags & (1 << VRING_PACKED_DESC_F_AVAIL) != 0;
        let used = flags & (1 << VRING_PACKED_DESC_F_USED) != 0;
        if avail != st.avail_wrap || used == st.avail_wrap {
            return Ok(None);
        }
        let mut segments = Vec::new();
        let mut pos = self.last_avail;
        let mut count = 0u16;
        let mut id;
        loop {
            if count >= size {
                return Err(Error::BadChain("chain longer than the ring"));
            }
            // Packed layout: the u16 at 12 is the buffer id, the one at 14 the flags.
            let (addr, len, desc_id, flags) = Self::read_desc(mem, desc_at(pos))?;
            let flags = u32::from(flags);
            count += 1;
            pos += 1;
            if pos == size {
                pos = 0;
                st.avail_wrap = !st.avail_wrap;
            }
            id = desc_id;
            if flags & VRING_DESC_F_INDIRECT != 0 {
                if count != 1 || flags & VRING_DESC_F_NEXT != 0 {
                    return Err(Error::BadChain("misplaced indirect descriptor"));
                }
                if len == 0 || len % 16 != 0 || len / 16 > 0xffff {
                    return Err(Error::BadChain("bad indirect table length"));
                }
                for i in 0..u64::from(len / 16) {
                    let (a, l, _, f) =
                        Self::read_desc(mem, GuestAddress(addr).unchecked_add(i * 16))?;
                    segments.push(Segment {
                        addr: GuestAddress(a),
                        len: l,
                        device_writable: u32::from(f) & VRING_DESC_F_WRITE != 0,
                    });
                }
                break;
            }
            segments.push(Segment {
                addr: GuestAddress(addr),
                len,
                device_writable: flags & VRING_DESC_F_WRITE != 0,
            });
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
        }
        self.last_avail = pos;
        st.popped.push_back(count);
        Ok(Some(DeviceChain { head: id, segments }))
    }

    fn push_used_packed(&mut self, mem: &GuestMemoryMmap, id: u32, len: u32) -> Result<(), Error> {
        let size = self.layout.size;
        let at = self
            .layout
            .desc_table
            .unchecked_add(u64::from(self.used_idx) * 16);
        let Some(st) = self.packed.as_mut() else {
            return Ok(());
        };
        let count = st.popped.pop_front().unwrap_or(1);
        let mut raw = [0u8; 6];
        raw[0..4].copy_from_slice(&len.to_le_bytes());
        raw[4..6].copy_from_slice(&(id as u16).to_le_bytes());
        mem.write_slice(&raw, at.unchecked_add(8))
            .map_err(Error::Memory)?;
        let flags: u16 = if st.used_wrap {
            (1 << VRING_PACKED_DESC_F_AVAIL) | (1 << VRING_PACKED_DESC_F_USED)
        } else {
            0
        };
        mem.store(u16::to_le(flags), at.unchecked_add(14), Ordering::Release)
            .map_err(Error::Memory)?;
        let next = u32::from(self.used_idx) + u32::from(count);
        if next >= u32::from(size) {
            self.used_idx = (next - u32::from(size)) as u16;
            st.used_wrap = !st.used_wrap;
        } else {
            self.used_idx = next as u16;
        }
        Ok(())
    }

    /// The queue's layout.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Where the next used element goes: `used.idx` on a split ring (the flag `false`), the
    /// next used descriptor's position and the device's wrap counter on a packed ring. Taken
    /// before pushing, for [`DeviceQueue::should_notify`].
    pub fn used_position(&self) -> (u16, bool) {
        match &self.packed {
            Some(st) => (self.used_idx, st.used_wrap),
            None => (self.used_idx, false),
        }
    }

    /// Whether the driver asks to be notified of what was used since `before` (a
    /// [`DeviceQueue::used_position`]), as a device decides it: on a split ring from
    /// `VRING_AVAIL_F_NO_INTERRUPT`, or with `event_idx` from `used_event` (2.7.10); on a
    /// packed ring from the driver event suppression area, with `DESC` the offset and wrap
    /// counter it names (2.8.10). Nothing used since `before` needs no notification.
    pub fn should_notify(
        &self,
        mem: &GuestMemoryMmap,
        before: (u16, bool),
        event_idx: bool,
    ) -> Result<bool, Error> {
        let now = self.used_position();
        if now == before {
            return Ok(false);
        }
        let size = u32::from(self.layout.size);
        let avail = self.layout.avail_ring;
        if self.packed.is_some() {
            let raw: u32 = mem.load(avail, Ordering::Acquire).map_err(Error::Memory)?;
            let raw = u32::from_le(raw);
            let (off_wrap, flags) = ((raw & 0xffff) as u16, raw >> 16);
            return Ok(match flags {
                VRING_PACKED_EVENT_FLAG_DISABLE => false,
                VRING_PACKED_EVENT_FLAG_DESC if event_idx => {
                    let line = |pos: u16, wrap: bool| u32::from(pos) + if wrap { size } else { 0 };
                    let m = 2 * size;
                    let event = line(
                        off_wrap & !(1 << VRING_PACKED_EVENT_F_WRAP_CTR),
                        off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR != 0,
                    );
                    let (old, new) = (line(before.0, before.1), line(now.0, now.1));
                    (new + 2 * m - event - 1) % m < (new + m - old) % m
                }
                // ENABLE, and reserved values: notify.
                _ => true,
            });
        }
        if event_idx {
            let at =
                avail.unchecked_add(offset_of!(vring_avail, ring) as u64 + 2 * u64::from(size));
            let event: u16 = mem.load(at, Ordering::Acquire).map_err(Error::Memory)?;
            let event = u16::from_le(event);
            let (old, new) = (before.0, now.0);
            return Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old));
        }
        let flags: u16 = mem.load(avail, Ordering::Acquire).map_err(Error::Memory)?;
        Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
    }

    /// The next chain the driver made available, if any. Every walk is bounded by the queue size.
    pub fn pop_avail(&mut self, mem: &GuestMemoryMmap) -> Result<Option<DeviceChain>, Error> {
        if self.packed.is_some() {
            return self.pop_avail_packed(mem);
        }
        let size = self.layout.size;
        let idx_addr = self
            .layout
            .avail_ring
            .unchecked_add(offset_of!(vring_avail, idx) as u64);
        let load_idx = || {
            mem.load::<u16>(idx_addr, Ordering::Acquire)
                .map(u16::from_le)
                .map_err(Error::Memory)
        };
        let mut avail_idx = load_idx()?;
        if avail_idx == self.last_avail {
            // Caught up: ask for a kick at the next buffer (avail_event, section 2.7.10), then
            // look again in case one arrived in between.
            let avail_event = self.layout.used_ring.unchecked_add(
                offset_of!(vring_used, ring) as u64
                    + size_of::<vring_used_elem>() as u64 * u64::from(size),
            );
            mem.store(u16::to_le(self.last_avail), avail_event, Ordering::Release)
                .map_err(Error::Memory)?;
            std::sync::atomic::fence(Ordering::SeqCst);
            avail_idx = load_idx()?;
            if avail_idx == self.last_avail {
                return Ok(None);
            }
        }
        if avail_idx.wrapping_sub(self.last_avail) > size {
            return Err(Error::BadChain("avail.idx more than the queue size ahead"));
        }
        let entry = self.layout.avail_ring.unchecked_add(
            offset_of!(vring_avail, ring) as u64 + 2 * u64::from(self.last_avail & (size - 1)),
        );
        let head = u16::from_le(mem.read_obj::<u16>(entry).map_err(Error::Memory)?);
        self.last_avail = self.last_avail.wrapping_add(1);
        let segments = self.walk(mem, head)?;
        Ok(Some(DeviceChain { head, segments }))
    }

    fn read_desc(mem: &GuestMemoryMmap, at: GuestAddress) -> Result<(u64, u32, u16, u16), Error> {
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, at).map_err(Error::Memory)?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes(raw[12..14].try_into().unwrap_or_default());
        let next = u16::from_le_bytes(raw[14..16].try_into().unwrap_or_default());
        Ok((addr, len, flags, next))
    }

    fn walk(&self, mem: &GuestMemoryMmap, head: u16) -> Result<Vec<Segment>, Error> {
        let size = self.layout.size;
        if head >= size {
            return Err(Error::BadChain("head out of range"));
        }
        let mut segments = Vec::new();
        let mut index = head;
        let (mut table, mut table_len) = (self.layout.desc_table, size);
        let mut indirect = false;
        for _ in
            0..=u32::from(size) + u32::from(super::super::queue::split::MAX_INDIRECT_DESCRIPTORS)
        {
            let at = table.unchecked_add(u64::from(index) * 16);
            let (addr, len, flags, next) = Self::read_desc(mem, at)?;
            if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
                if indirect || !segments.is_empty() || u32::from(flags) & VRING_DESC_F_NEXT != 0 {
                    return Err(Error::BadChain("misplaced indirect descriptor"));
                }
                if len == 0 || len % 16 != 0 || len / 16 > 0xffff {
                    return Err(Error::BadChain("bad indirect table length"));
                }
                indirect = true;
                table = GuestAddress(addr);
                table_len = (len / 16) as u16;
                index = 0;
                continue;
            }
            segments.push(Segment {
                addr: GuestAddress(addr),
                len,
                device_writable: u32::from(flags) & VRING_DESC_F_WRITE != 0,
            });
            if u32::from(flags) & VRING_DESC_F_NEXT == 0 {
                return Ok(segments);
            }
            if next >= table_len {
                return Err(Error::BadChain("next out of range"));
            }
            index = next;
        }
        Err(Error::BadChain("chain loops"))
    }

    /// Writes a used element, then publishes it with a release store of `used.idx`. The id and
    /// length are written as given: hostile models use this to lie.
    pub fn push_used(&mut self, mem: &GuestMemoryMmap, id: u32, len: u32) -> Result<(), Error> {
        if self.packed.is_some() {
            return self.push_used_packed(mem, id, len);
        }
        self.write_used_elem(mem, id, len)?;
        self.set_used_idx(mem, self.used_idx.wrapping_add(1))
    }

    /// Writes the split ring's used element at `used.idx`, without publishing it.
    fn write_used_elem(&self, mem: &GuestMemoryMmap, id: u32, len: u32) -> Result<(), Error> {
        let slot = self.used_idx & (self.layout.size - 1);
        let at = self.layout.used_ring.unchecked_add(
            offset_of!(vring_used, ring) as u64
                + size_of::<vring_used_elem>() as u64 * u64::from(slot),
        );
        let mut raw = [0u8; 8];
        raw[0..4].copy_from_slice(&id.to_le_bytes());
        raw[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&raw, at).map_err(Error::Memory)
    }

    /// Stores `used.idx` (release) without writing an element. Does nothing on a packed queue,
    /// which has no such index.
    pub fn set_used_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) -> Result<(), Error> {
        if self.packed.is_some() {
            return Ok(());
        }
        self.used_idx = idx;
        let at = self
            .layout
            .used_ring
            .unchecked_add(offset_of!(vring_used, idx) as u64);
        mem.store(u16::to_le(idx), at, Ordering::Release)
            .map_err(Error::Memory)
    }
}

/// A device the in-process transport runs.
pub trait DeviceModel {
    /// The device's feature bits.
    fn features(&self) -> u64;
    /// The device's config space.
    fn config(&self) -> Vec<u8>;
    /// How many queues it has.
    fn max_queues(&self) -> u16;
    /// The queue size limit it reports (a hostile model may report 0).
    fn max_queue_size(&self) -> u16;
    /// Processes a kick of `queue`; returns whether to notify the driver.
    fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        index: u16,
        queue: &mut DeviceQueue,
    ) -> Result<bool, Error>;
    /// Whether the device has gone away (the transport then reports `DeviceGone`).
    fn gone(&self) -> bool {
        false
    }
    /// Forgets what the device held for queue `index` (its in-flight buffers), at a queue
    /// reset. The transport forgets the queue's rings itself.
    fn reset_queue(&mut self, _index: u16) {}
    /// The device as it comes back after going away (a restarted daemon: its disk kept, its
    /// rings and requests in flight forgotten), for [`Transport::reopen`]; `None` (the
    /// default) if it does not come back.
    fn restarted(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// The in-process transport: a [`DeviceModel`] run synchronously on each kick.
#[derive(Debug)]
pub struct InProcessTransport<D: DeviceModel> {
    mem: Arc<DmaMemory>,
    device: D,
    queues: Vec<Option<DeviceQueue>>,
    signalled: Vec<bool>,
    /// Whether each queue runs: false from [`Transport::reset_queue`] until
    /// [`Transport::enable_queue`].
    enabled: Vec<bool>,
    /// Per queue, an eventfd given with [`Transport::set_call_fd`], written when the device
    /// notifies.
    calls: Vec<Option<OwnedFd>>,
    driver_features: u64,
}

impl<D: DeviceModel> InProcessTransport<D> {
    /// A transport to `device` over `mem`.
    pub fn new(mem: Arc<DmaMemory>, device: D) -> Self {
        let n = usize::from(device.max_queues());
        InProcessTransport {
            mem,
            device,
            queues: (0..n).map(|_| None).collect(),
            signalled: vec![false; n],
            enabled: vec![true; n],
            calls: (0..n).map(|_| None).collect(),
            driver_features: 0,
        }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (to change its behaviour mid-test).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The features the driver acknowledged.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Records a notification of queue `i`: [`Transport::wait`] returns at once, and the
    /// eventfd given with [`Transport::set_call_fd`] is written.
    fn signal(signalled: &mut [bool], calls: &[Option<OwnedFd>], i: usize) {
        signalled[i] = true;
        if let Some(fd) = calls.get(i).and_then(Option::as_ref) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a local to a descriptor this transport owns. An
            // eventfd at its limit or a descriptor of another kind only fails the write, and a
            // notification is a hint: the driver polls the ring anyway.
            unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }
}

impl<D: DeviceModel> Transport for InProcessTransport<D> {
    fn memory(&self) -> &Arc<DmaMemory> {
        &self.mem
    }

    fn device_features(&mut self) -> Result<u64, super::Error> {
        Ok(self.device.features())
    }

    fn set_driver_features(&mut self, features: u64) -> Result<(), super::Error> {
        self.driver_features = features;
        Ok(())
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), super::Error> {
        let config = self.device.config();
        let start = offset as usize;
        let end = start.checked_add(buf.len());
        match end {
            Some(end) if end <= config.len() => {
                buf.copy_from_slice(&config[start..end]);
                Ok(())
            }
            _ => Err(Error::ConfigOutOfRange {
                offset,
                len: buf.len(),
                size: config.len(),
            }
            .into()),
        }
    }

    fn max_queues(&mut self) -> Result<u16, super::Error> {
        Ok(self.device.max_queues())
    }

    fn max_queue_size(&mut self) -> Result<u16, super::Error> {
        Ok(self.device.max_queue_size())
    }

    fn setup_queue(&mut self, index: u16, layout: &QueueLayout) -> Result<(), super::Error> {
        let q = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?;
        let mut dq = if self.driver_features & (1 << VIRTIO_F_RING_PACKED) != 0 {
            DeviceQueue::new_packed(*layout)
        } else {
            DeviceQueue::new(*layout)
        };
        dq.set_in_order(self.driver_features & (1 << VIRTIO_F_IN_ORDER) != 0);
        *q = Some(dq);
        Ok(())
    }

    fn activate(&mut self) -> Result<(), super::Error> {
        Ok(())
    }

    fn notify(&mut self, index: u16) -> Result<(), super::Error> {
        if self.device.gone() {
            return Err(super::Error::DeviceGone("in-process device gone".into()));
        }
        if !self
            .enabled
            .get(usize::from(index))
            .copied()
            .unwrap_or(false)
        {
            return Err(Error::QueueNotReady(index).into());
        }
        let q = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?
            .as_mut()
            .ok_or(Error::QueueNotReady(index))?;
        if self.device.process(self.mem.guest_memory(), index, q)? {
            Self::signal(&mut self.signalled, &self.calls, usize::from(index));
        }
        // Then every other ready queue, so that a device can move data between queues (a
        // network loopback delivers a transmitted frame into the receive queue).
        for (i, q) in self.queues.iter_mut().enumerate() {
            if i == usize::from(index) || !self.enabled[i] {
                continue;
            }
            if let Some(q) = q.as_mut() {
                if self.device.process(self.mem.guest_memory(), i as u16, q)? {
                    Self::signal(&mut self.signalled, &self.calls, i);
                }
            }
        }
        Ok(())
    }

    fn set_call_fd(&mut self, index: u16, fd: Option<OwnedFd>) -> Result<bool, super::Error> {
        let slot = self
            .calls
            .get_mut(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?;
        *slot = fd;
        Ok(true)
    }

    fn can_reset_queue(&self) -> bool {
        let bit = 1u64 << VIRTIO_F_RING_RESET;
        self.device.features() & self.driver_features & bit != 0
    }

    fn reset_queue(&mut self, index: u16) -> Result<(), super::Error> {
        if !self.can_reset_queue() {
            return Err(super::Error::QueueResetUnsupported(index));
        }
        let q = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?;
        // The device's view of the rings goes; kicks fail until the queue is set up again.
        *q = None;
        self.enabled[usize::from(index)] = false;
        self.signalled[usize::from(index)] = false;
        self.device.reset_queue(index);
        Ok(())
    }

    fn enable_queue(&mut self, index: u16) -> Result<(), super::Error> {
        if !self.can_reset_queue() {
            return Err(super::Error::QueueResetUnsupported(index));
        }
        let i = usize::from(index);
        if self
            .queues
            .get(i)
            .ok_or(Error::NoSuchQueue(index))?
            .is_none()
        {
            return Err(Error::QueueNotReady(index).into());
        }
        self.enabled[i] = true;
        Ok(())
    }

    /// A new transport to [`DeviceModel::restarted`] over the same memory, with the call
    /// eventfds given with [`Transport::set_call_fd`] (duplicated).
    fn reopen(&self) -> Result<Self, super::Error> {
        let device = self
            .device
            .restarted()
            .ok_or_else(|| super::Error::DeviceGone("in-process device not back".into()))?;
        let mut new = Self::new(self.mem.clone(), device);
        for (slot, fd) in new.calls.iter_mut().zip(&self.calls) {
            if let Some(fd) = fd {
                *slot = Some(fd.try_clone().map_err(Error::Dup)?);
            }
        }
        Ok(new)
    }

    fn wait(&mut self, index: u16, timeout: Duration) -> Result<(), super::Error> {
        if self.device.gone() {
            return Err(super::Error::DeviceGone("in-process device gone".into()));
        }
        let s = self
            .signalled
            .get_mut(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?;
        if std::mem::take(s) {
            Ok(())
        } else {
            // Synchronous device: nothing more will come, waiting would only sleep.
            Err(super::Error::Timeout {
                queue: index,
                timeout,
            })
        }
    }
}

/// Ways [`MemBlkDevice`] can misbehave, one per virtio case of HOSTILE-INPUT.md.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Hostile {
    /// Behaves.
    #[default]
    None,
    /// Completes with an id not below the queue size.
    UsedIdOutOfRange,
    /// Completes with an id that is not in flight.
    UsedIdNotOutstanding,
    /// Completes each request after the first with the id of the previous one, which the
    /// driver already saw completed.
    UsedIdDuplicate,
    /// Completes with the id of the second descriptor of a chain.
    UsedIdMidChain,
    /// Completes with a length one larger than the writable bytes.
    UsedLenTooLarge,
    /// Moves `used.idx` ten ahead with one request in flight.
    UsedIdxJump,
    /// Never completes anything.
    NeverCompletes,
    /// Disappears (like a reset or a closed socket) when kicked.
    GoneOnKick,
    /// Executes this many requests in its life, then disappears when it takes the next one
    /// (the ones done before stay completed in the used ring).
    GoneAfter(u64),
    /// Reports this queue size limit.
    QueueSize(u16),
    /// Reports this config space instead of its own.
    Config(Vec<u8>),
    /// Writes this status byte.
    Status(u8),
    /// With `VIRTIO_F_IN_ORDER`: of the requests of each kick, completes only the last, with
    /// one used element (`used.idx` moved by one): on a split ring it names a buffer that is
    /// not the next in order.
    InOrderSkip,
    /// With `VIRTIO_F_IN_ORDER`: reports each kick's requests as one batch that runs one
    /// buffer past them (split: `used.idx` moved by one more than the requests; packed: the
    /// id after the last request's, which is not outstanding).
    InOrderOverrun,
    /// With `VIRTIO_F_IN_ORDER`: completes each kick's requests last to first, one used
    /// element each.
    InOrderReversed,
}

/// A virtio-blk device over a RAM disk.
#[derive(Clone, Debug)]
pub struct MemBlkDevice {
    /// The disk's bytes (a multiple of 512).
    pub disk: Vec<u8>,
    /// Its serial, returned by GET_ID.
    pub serial: [u8; 20],
    /// Queues offered.
    pub num_queues: u16,
    /// How it misbehaves.
    pub hostile: Hostile,
    /// Flush requests seen.
    pub flushes: u64,
    /// Offer packed rings (`VIRTIO_F_RING_PACKED`).
    pub packed: bool,
    /// Offer `VIRTIO_F_IN_ORDER`. When negotiated, each kick's completions are reported in
    /// batches of up to `in_order_batch` buffers, one used element (or descriptor) each.
    pub in_order: bool,
    /// The largest in-order batch (1: a used element per request).
    pub in_order_batch: u16,
    /// Offer `VIRTIO_F_RING_RESET` (on by default).
    pub ring_reset: bool,
    /// Queue resets seen, by queue index.
    pub queue_resets: Vec<u16>,
    /// Requests executed (over its restarts: [`DeviceModel::restarted`] keeps the count).
    pub executed: u64,
    /// Times it came back after going away.
    pub restarts: u64,
    /// Whether it comes back after going away (on by default).
    pub comes_back: bool,
    /// How it behaves once back (honest by default): a device that restarts as something
    /// else, with another config or queue size.
    pub after_restart: Hostile,
    gone: bool,
    last_completed: Option<u32>,
}

impl MemBlkDevice {
    /// A device with a zeroed disk of `sectors` 512-byte sectors and one queue.
    pub fn new(sectors: u64) -> Self {
        let mut serial = [0u8; 20];
        serial[..13].copy_from_slice(b"blanket-inmem");
        MemBlkDevice {
            disk: vec![0; (sectors * 512) as usize],
            serial,
            num_queues: 1,
            hostile: Hostile::None,
            flushes: 0,
            packed: false,
            in_order: false,
            in_order_batch: 8,
            ring_reset: true,
            queue_resets: Vec::new(),
            executed: 0,
            restarts: 0,
            comes_back: true,
            after_restart: Hostile::None,
            gone: false,
            last_completed: None,
        }
    }

    /// The config space this device reports when it behaves.
    pub fn honest_config(&self) -> Vec<u8> {
        let mut c = vec![0u8; size_of::<virtio_blk_config>()];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(
            offset_of!(virtio_blk_config, capacity),
            &(self.disk.len() as u64 / 512).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, size_max),
            &65536u32.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, seg_max),
            &126u32.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, blk_size),
            &512u32.to_le_bytes(),
        );
        put(offset_of!(virtio_blk_config, physical_block_exp), &[3]);
        put(
            offset_of!(virtio_blk_config, min_io_size),
            &1u16.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, opt_io_size),
            &8u32.to_le_bytes(),
        );
        put(offset_of!(virtio_blk_config, wce), &[1]);
        put(
            offset_of!(virtio_blk_config, num_queues),
            &self.num_queues.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_sectors),
            &(1u32 << 20).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_seg),
            &1u32.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, discard_sector_alignment),
            &8u32.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            &(1u32 << 20).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            &1u32.to_le_bytes(),
        );
        put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
        c
    }

    fn read_guest(mem: &GuestMemoryMmap, s: &Segment, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        out.resize(start + s.len as usize, 0);
        mem.read_slice(&mut out[start..], s.addr)
            .map_err(Error::Memory)
    }

    /// Runs one request; returns (status, bytes written before the status byte).
    fn execute(&mut self, mem: &GuestMemoryMmap, chain: &DeviceChain) -> Result<(u8, u32), Error> {
        let segs = &chain.segments;
        let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
            return Err(Error::BadChain("empty"));
        };
        if first.device_writable || first.len < 16 || !last.device_writable || last.len < 1 {
            return Err(Error::BadChain("no header or status"));
        }
        let mut hdr = Vec::new();
        Self::read_guest(mem, first, &mut hdr)?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let data = &segs[1..segs.len() - 1];
        let offset = sector.checked_mul(512).map(|o| o as usize);
        let mut written = 0u32;
        let ok = VIRTIO_BLK_S_OK as u8;
        let status = match kind {
            VIRTIO_BLK_T_IN => {
                let mut pos = offset.unwrap_or(usize::MAX);
                let mut status = ok;
                for s in data {
                    let end = pos.checked_add(s.len as usize);
                    match end {
                        Some(end) if s.device_writable && end <= self.disk.len() => {
                            mem.write_slice(&self.disk[pos..end], s.addr)
                                .map_err(Error::Memory)?;
                            written += s.len;
                            pos = end;
                        }
                        _ => {
                            status = VIRTIO_BLK_S_IOERR as u8;
                            break;
                        }
                    }
                }
                status
            }
            VIRTIO_BLK_T_OUT => {
                let mut buf = Vec::new();
                for s in data {
                    if s.device_writable {
                        return Err(Error::BadChain("writable data in a write"));
                    }
                    Self::read_guest(mem, s, &mut buf)?;
                }
                match offset.and_then(|o| o.checked_add(buf.len()).map(|e| (o, e))) {
                    Some((o, e)) if e <= self.disk.len() => {
                        self.disk[o..e].copy_from_slice(&buf);
                        ok
                    }
                    _ => VIRTIO_BLK_S_IOERR as u8,
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                self.flushes += 1;
                ok
            }
            VIRTIO_BLK_T_GET_ID => match data.first() {
                Some(s) if s.device_writable && s.len >= 20 => {
                    mem.write_slice(&self.serial, s.addr)
                        .map_err(Error::Memory)?;
                    written = 20;
                    ok
                }
                _ => VIRTIO_BLK_S_IOERR as u8,
            },
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let mut buf = Vec::new();
                for s in data {
                    Self::read_guest(mem, s, &mut buf)?;
                }
                let mut status = ok;
                for seg in buf.chunks_exact(16) {
                    let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                    let n = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                    let range = sector.checked_mul(512).and_then(|o| {
                        o.checked_add(u64::from(n) * 512)
                            .filter(|&e| e <= self.disk.len() as u64)
                            .map(|e| (o as usize, e as usize))
                    });
                    match range {
                        Some((o, e)) => self.disk[o..e].fill(0),
                        None => status = VIRTIO_BLK_S_IOERR as u8,
                    }
                }
                status
            }
            _ => VIRTIO_BLK_S_UNSUPP as u8,
        };
        let status = match self.hostile {
            Hostile::Status(s) => s,
            _ => status,
        };
        mem.write_slice(&[status], last.addr.unchecked_add(u64::from(last.len) - 1))
            .map_err(Error::Memory)?;
        Ok((status, written))
    }
}

impl DeviceModel for MemBlkDevice {
    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_CONFIG_WCE
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if self.ring_reset {
            f |= 1 << VIRTIO_F_RING_RESET;
        }
        if self.num_queues > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.packed {
            f |= 1 << VIRTIO_F_RING_PACKED;
        }
        if self.in_order {
            f |= 1 << VIRTIO_F_IN_ORDER;
        }
        // A chain's middle is only visible without indirect descriptors.
        if self.hostile != Hostile::UsedIdMidChain {
            f |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        f
    }

    fn config(&self) -> Vec<u8> {
        match &self.hostile {
            Hostile::Config(c) => c.clone(),
            _ => self.honest_config(),
        }
    }

    fn max_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        match self.hostile {
            Hostile::QueueSize(s) => s,
            _ => 256,
        }
    }

    fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        _index: u16,
        queue: &mut DeviceQueue,
    ) -> Result<bool, Error> {
        let size = u32::from(queue.layout().size);
        let mut any = false;
        // With IN_ORDER: (head, used length) of the requests run, reported in batches below.
        let mut done: Vec<(u32, u32)> = Vec::new();
        while let Some(chain) = queue.pop_avail(mem)? {
            if self.hostile == Hostile::GoneOnKick {
                self.gone = true;
                return Ok(false);
            }
            if self.hostile == Hostile::NeverCompletes {
                continue;
            }
            if let Hostile::GoneAfter(n) = self.hostile {
                if self.executed >= n {
                    // The chain is dropped unfinished; the ones before are reported below.
                    self.gone = true;
                    break;
                }
            }
            let (_, written) = self.execute(mem, &chain)?;
            self.executed += 1;
            let len = written + 1;
            let head = u32::from(chain.head);
            let writable: u32 = chain
                .segments
                .iter()
                .filter(|s| s.device_writable)
                .map(|s| s.len)
                .sum();
            any = true;
            if queue.in_order() {
                done.push((head, len));
                continue;
            }
            match self.hostile {
                Hostile::UsedIdOutOfRange => queue.push_used(mem, size + 7, len)?,
                Hostile::UsedIdNotOutstanding => {
                    queue.push_used(mem, (head + size / 2) % size, len)?
                }
                Hostile::UsedIdDuplicate => {
                    let id = self.last_completed.unwrap_or(head);
                    queue.push_used(mem, id, len)?;
                }
                Hostile::UsedIdMidChain => queue.push_used(mem, (head + 1) % size, len)?,
                Hostile::UsedLenTooLarge => queue.push_used(mem, head, writable + 1)?,
                Hostile::UsedIdxJump => {
                    queue.push_used(mem, head, len)?;
                    let idx = queue.used_idx.wrapping_add(9);
                    queue.set_used_idx(mem, idx)?;
                }
                _ => queue.push_used(mem, head, len)?,
            }
            self.last_completed = Some(head);
        }
        if let Some(&(last, last_len)) = done.last() {
            let n = done.len() as u16;
            match self.hostile {
                Hostile::InOrderSkip => queue.push_used_batch(mem, 1, last, last_len)?,
                Hostile::InOrderOverrun => {
                    if queue.packed.is_some() {
                        queue.push_used_batch(mem, n, (last + 1) % size, last_len)?;
                    } else {
                        queue.push_used_batch(mem, n + 1, last, last_len)?;
                    }
                }
                Hostile::InOrderReversed => {
                    for &(head, len) in done.iter().rev() {
                        queue.push_used(mem, head, len)?;
                    }
                }
                _ => {
                    // Honest batches: one used element per `in_order_batch` requests, naming
                    // the batch's last.
                    for batch in done.chunks(usize::from(self.in_order_batch.max(1))) {
                        if let Some(&(id, len)) = batch.last() {
                            queue.push_used_batch(mem, batch.len() as u16, id, len)?;
                        }
                    }
                }
            }
            self.last_completed = Some(last);
        }
        Ok(any)
    }

    fn gone(&self) -> bool {
        self.gone
    }

    fn reset_queue(&mut self, index: u16) {
        self.queue_resets.push(index);
    }

    /// Comes back (unless `comes_back` is off) as `after_restart` says, with its disk,
    /// serial, offers and counters, and nothing in flight.
    fn restarted(&self) -> Option<Self> {
        if !self.comes_back {
            return None;
        }
        let mut d = self.clone();
        d.gone = false;
        d.hostile = self.after_restart.clone();
        d.last_completed = None;
        d.restarts += 1;
        Some(d)
    }
}

/// Ways [`MemNetDevice`] can misbehave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetHostile {
    /// Behaves.
    #[default]
    None,
    /// Completes a receive buffer with fewer bytes than the virtio-net header.
    ShortRx,
    /// Writes `num_buffers` 0.
    NumBuffersZero,
    /// Writes a `num_buffers` larger than the buffers it completes.
    NumBuffersTooMany,
    /// Reports this config space instead of its own.
    Config(Vec<u8>),
    /// Writes these first ten bytes of `virtio_net_hdr_v1` (flags, gso_type, hdr_len,
    /// gso_size, csum_start, csum_offset) in every receive header.
    RxHeader([u8; 10]),
    /// Answers every control command with this ack byte (1 is `VIRTIO_NET_ERR`; anything but
    /// 0 and 1 is garbage).
    CtrlAck(u8),
}

/// A virtio-net device that loops transmitted frames back to the receive queue (queue 0 is
/// receive, queue 1 transmit).
#[derive(Debug)]
pub struct MemNetDevice {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u16,
    /// Offer `VIRTIO_NET_F_MRG_RXBUF`.
    pub mergeable: bool,
    /// Offer packed rings.
    pub packed: bool,
    /// Offer checksum and TCP segmentation offloads (`CSUM`, `GUEST_CSUM`, `HOST_TSO4`/`6`,
    /// `GUEST_TSO4`/`6`). The loopback hands each frame back with the header it was sent with,
    /// as a switch between two guests does: a partial checksum stays partial.
    pub offloads: bool,
    /// Queue pairs (`max_virtqueue_pairs`; above 1, `VIRTIO_NET_F_MQ` is offered). Each
    /// pair loops back to itself.
    pub queue_pairs: u16,
    /// Offer the control queue, with `CTRL_RX` and `CTRL_MAC_ADDR` (and `MQ`'s command).
    pub ctrl: bool,
    /// Promiscuous mode, as the control queue set it.
    pub promisc: bool,
    /// All-multicast mode, as the control queue set it.
    pub allmulti: bool,
    /// Queue pairs in use, as the control queue set them.
    pub active_pairs: u16,
    /// How it misbehaves.
    pub hostile: NetHostile,
    /// Every frame transmitted, without its header.
    pub sent: Vec<Vec<u8>>,
    /// The first ten bytes of the header of every frame transmitted (without `num_buffers`).
    pub sent_headers: Vec<[u8; 10]>,
    /// Every control command received: class, command, data.
    pub commands: Vec<(u8, u8, Vec<u8>)>,
    pending: Vec<std::collections::VecDeque<([u8; 10], Vec<u8>)>>,
}

impl MemNetDevice {
    /// A loopback device with MTU 1500 and mergeable receive buffers.
    pub fn new() -> Self {
        MemNetDevice {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: 1500,
            mergeable: true,
            packed: false,
            offloads: false,
            queue_pairs: 1,
            ctrl: false,
            promisc: false,
            allmulti: false,
            active_pairs: 1,
            hostile: NetHostile::None,
            sent: Vec::new(),
            sent_headers: Vec::new(),
            commands: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The config space this device reports when it behaves.
    pub fn honest_config(&self) -> Vec<u8> {
        use virtio_bindings::virtio_net::virtio_net_config;
        let mut c = vec![0u8; size_of::<virtio_net_config>()];
        c[offset_of!(virtio_net_config, mac)..][..6].copy_from_slice(&self.mac);
        c[offset_of!(virtio_net_config, status)..][..2].copy_from_slice(&1u16.to_le_bytes());
        c[offset_of!(virtio_net_config, max_virtqueue_pairs)..][..2]
            .copy_from_slice(&self.queue_pairs.to_le_bytes());
        c[offset_of!(virtio_net_config, mtu)..][..2].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn pending(&mut self, pair: usize) -> &mut std::collections::VecDeque<([u8; 10], Vec<u8>)> {
        if self.pending.len() <= pair {
            self.pending.resize_with(pair + 1, Default::default);
        }
        &mut self.pending[pair]
    }

    /// Runs the control commands made available (5.1.6.5).
    fn control(&mut self, mem: &GuestMemoryMmap, queue: &mut DeviceQueue) -> Result<bool, Error> {
        use virtio_bindings::virtio_net::{
            VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI,
            VIRTIO_NET_CTRL_RX_PROMISC,
        };
        let mut any = false;
        while let Some(chain) = queue.pop_avail(mem)? {
            let mut bytes = Vec::new();
            for s in chain.segments.iter().filter(|s| !s.device_writable) {
                Self::read_segment(mem, s, &mut bytes)?;
            }
            let ok = if bytes.len() >= 2 {
                let (class, cmd, data) = (bytes[0], bytes[1], &bytes[2..]);
                self.commands.push((class, cmd, data.to_vec()));
                match (u32::from(class), u32::from(cmd), data) {
                    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, [on @ (0 | 1)]) => {
                        self.promisc = *on == 1;
                        true
                    }
                    (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, [on @ (0 | 1)]) => {
                        self.allmulti = *on == 1;
                        true
                    }
                    (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, mac) if mac.len() == 6 => {
                        self.mac.copy_from_slice(mac);
                        true
                    }
                    (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [lo, hi]) => {
                        let n = u16::from_le_bytes([*lo, *hi]);
                        let fits = (1..=self.queue_pairs).contains(&n);
                        if fits {
                            self.active_pairs = n;
                        }
                        fits
                    }
                    _ => false,
                }
            } else {
                false
            };
            let ack = match self.hostile {
                NetHostile::CtrlAck(a) => a,
                _ => u8::from(!ok),
            };
            let written = match chain.segments.iter().rev().find(|s| s.device_writable) {
                Some(s) => {
                    mem.write_slice(&[ack], s.addr).map_err(Error::Memory)?;
                    1
                }
                None => 0,
            };
            queue.push_used(mem, u32::from(chain.head), written)?;
            any = true;
        }
        Ok(any)
    }

    fn deliver(
        &mut self,
        pair: usize,
        mem: &GuestMemoryMmap,
        rx: &mut DeviceQueue,
    ) -> Result<bool, Error> {
        const HDR: usize = 12;
        let mut any = false;
        let mergeable = self.mergeable;
        let hostile = self.hostile.clone();
        let pending = self.pending(pair);
        while let Some((hdr, frame)) = pending.front() {
            // Gather enough receive buffers for header and frame.
            let need = HDR + frame.len();
            let mut chains = Vec::new();
            let mut room = 0usize;
            while room < need {
                match rx.pop_avail(mem)? {
                    Some(c) => {
                        room += c.segments.iter().map(|s| s.len as usize).sum::<usize>();
                        chains.push(c);
                    }
                    None => break,
                }
                if !mergeable {
                    break;
                }
            }
            if room < need || chains.is_empty() {
                // Not enough buffers: a real device would wait; drop the frame.
                pending.pop_front();
                continue;
            }
            let mut data = vec![0u8; HDR];
            data[..10].copy_from_slice(hdr);
            if let NetHostile::RxHeader(h) = &hostile {
                data[..10].copy_from_slice(h);
            }
            let num_buffers = match hostile {
                NetHostile::NumBuffersZero => 0u16,
                NetHostile::NumBuffersTooMany => chains.len() as u16 + 5,
                _ => chains.len() as u16,
            };
            data[10..12].copy_from_slice(&num_buffers.to_le_bytes());
            data.extend_from_slice(frame);
            let mut off = 0usize;
            for c in &chains {
                let mut written = 0u32;
                for s in &c.segments {
                    let n = (data.len() - off).min(s.len as usize);
                    mem.write_slice(&data[off..off + n], s.addr)
                        .map_err(Error::Memory)?;
                    off += n;
                    written += n as u32;
                }
                if hostile == NetHostile::ShortRx {
                    written = 3;
                }
                rx.push_used(mem, u32::from(c.head), written)?;
            }
            pending.pop_front();
            any = true;
        }
        Ok(any)
    }
}

impl Default for MemNetDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceModel for MemNetDevice {
    fn features(&self) -> u64 {
        use virtio_bindings::virtio_net::{
            VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
        };
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_F_RING_RESET
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MTU;
        if self.mergeable {
            f |= 1 << VIRTIO_NET_F_MRG_RXBUF;
        }
        if self.packed {
            f |= 1 << VIRTIO_F_RING_PACKED;
        }
        if self.ctrl {
            use virtio_bindings::virtio_net::{
                VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ,
            };
            f |= 1 << VIRTIO_NET_F_CTRL_VQ
                | 1 << VIRTIO_NET_F_CTRL_RX
                | 1 << VIRTIO_NET_F_CTRL_MAC_ADDR;
        }
        if self.queue_pairs > 1 {
            f |= 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MQ;
        }
        if self.offloads {
            use virtio_bindings::virtio_net::{
                VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
            };
            f |= 1 << VIRTIO_NET_F_CSUM
                | 1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_HOST_TSO4
                | 1 << VIRTIO_NET_F_HOST_TSO6
                | 1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6;
        }
        f
    }

    fn config(&self) -> Vec<u8> {
        match &self.hostile {
            NetHostile::Config(c) => c.clone(),
            _ => self.honest_config(),
        }
    }

    fn max_queues(&self) -> u16 {
        2 * self.queue_pairs + u16::from(self.ctrl)
    }

    fn max_queue_size(&self) -> u16 {
        256
    }

    fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        index: u16,
        queue: &mut DeviceQueue,
    ) -> Result<bool, Error> {
        if index == 2 * self.queue_pairs {
            return self.control(mem, queue);
        }
        let pair = usize::from(index / 2);
        if index % 2 == 1 {
            let mut any = false;
            while let Some(chain) = queue.pop_avail(mem)? {
                let mut bytes = Vec::new();
                for s in &chain.segments {
                    Self::read_segment(mem, s, &mut bytes)?;
                }
                if bytes.len() >= 12 {
                    let frame = bytes.split_off(12);
                    let mut hdr = [0u8; 10];
                    hdr.copy_from_slice(&bytes[..10]);
                    self.sent.push(frame.clone());
                    self.sent_headers.push(hdr);
                    self.pending(pair).push_back((hdr, frame));
                }
                queue.push_used(mem, u32::from(chain.head), 0)?;
                any = true;
            }
            Ok(any)
        } else {
            self.deliver(pair, mem, queue)
        }
    }

    fn reset_queue(&mut self, index: u16) {
        // Frames of the pair waiting for receive buffers are the device's in-flight state.
        if index < 2 * self.queue_pairs {
            self.pending(usize::from(index / 2)).clear();
        }
    }
}

impl MemNetDevice {
    fn read_segment(mem: &GuestMemoryMmap, s: &Segment, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        out.resize(start + s.len as usize, 0);
        mem.read_slice(&mut out[start..], s.addr)
            .map_err(Error::Memory)
    }
}
