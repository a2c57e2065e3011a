//! The driver side of virtqueues: the split layout (virtio 1.2, section 2.7) and the packed
//! layout (section 2.8), behind the [`VirtQueue`] trait that device drivers use.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_ring::{vring_avail, vring_desc, vring_used, vring_used_elem};
use vm_memory::GuestAddress;

pub mod packed;
pub mod split;

/// The largest queue size the split layout allows (section 2.7: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// The longest indirect table this driver builds, in descriptors.
pub const MAX_INDIRECT_DESCRIPTORS: u16 = 128;

/// Errors of the virtqueues. Variants from `UsedIdxTooFarAhead` on are device misbehaviour:
/// after one of them the queue is broken and only [`VirtQueue::reset`] makes it usable again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue size is 0, not a power of two, or above 32768 (section 2.7).
    #[error("invalid queue size {0}: must be a power of two between 1 and {MAX_QUEUE_SIZE}")]
    InvalidQueueSize(u16),
    /// Allocating the rings failed.
    #[error("cannot allocate the rings")]
    Memory(#[source] crate::memory::Error),
    /// Accessing shared memory failed.
    #[error("cannot access the rings in shared memory")]
    Access(#[source] vm_memory::GuestMemoryError),
    /// A chain with no segments.
    #[error("a descriptor chain needs at least one segment")]
    EmptyChain,
    /// A chain longer than the queue (or the indirect table) can hold.
    #[error(
        "a chain of {len} segments does not fit a queue of {size} (indirect table max {max_indirect})"
    )]
    ChainTooLong {
        /// Segments asked for.
        len: usize,
        /// The queue size.
        size: u16,
        /// The longest indirect table, 0 when indirect descriptors are not in use.
        max_indirect: u16,
    },
    /// Not enough free descriptors now: wait for completions.
    #[error("queue full: {needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors needed.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A segment outside the shared memory, or whose end overflows.
    #[error("segment at {addr:#x} of {len} bytes is not inside memory shared with the device")]
    SegmentOutsideMemory {
        /// The segment's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The device published a used idx further ahead than the number of buffers in flight.
    #[error(
        "device moved used.idx to {used_idx} from {last_used} with only {in_flight} buffers in flight"
    )]
    UsedIdxTooFarAhead {
        /// The device's used.idx.
        used_idx: u16,
        /// The last used idx the driver consumed.
        last_used: u16,
        /// Buffers in flight.
        in_flight: u16,
    },
    /// A used id not below the queue size.
    #[error("used id {id} out of range for a queue of {size}")]
    UsedIdOutOfRange {
        /// The id the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used id that names a free descriptor.
    #[error("used id {0} is not outstanding")]
    UsedIdNotOutstanding(u16),
    /// A used id that names a chain the driver added but has not made available yet (its
    /// `avail.idx` was not published): the device cannot have seen it.
    #[error("used id {0} names a buffer that was never made available to the device")]
    UsedIdNotPublished(u16),
    /// A used id that names a descriptor the device already completed.
    #[error("used id {0} was already completed (duplicate completion)")]
    UsedIdDuplicate(u16),
    /// A used id in the middle of a chain (not its head).
    #[error("used id {id} is in the middle of the chain headed by {head}")]
    UsedIdNotHead {
        /// The id the device wrote.
        id: u16,
        /// The head of the chain it belongs to.
        head: u16,
    },
    /// A used len larger than the device-writable part of the chain.
    #[error("used len {len} for id {id} exceeds the {writable} device-writable bytes")]
    UsedLenTooLarge {
        /// The chain's head.
        id: u16,
        /// The length the device wrote.
        len: u32,
        /// The writable bytes in the chain.
        writable: u64,
    },
    /// With `VIRTIO_F_IN_ORDER` on a split ring, a used element naming a buffer further along
    /// than the used buffers `used.idx` accounts for: the batch it would end (every buffer from
    /// the oldest outstanding one to it, section 2.7.9) is longer than `used.idx` moved. The
    /// device used buffers out of the order they were made available.
    #[error(
        "in-order used id {id} would end a batch of {batch} buffers from {expected}, but used.idx moved by {pending}"
    )]
    UsedIdOutOfOrder {
        /// The id the device wrote.
        id: u16,
        /// The head of the oldest outstanding buffer, the next one in order.
        expected: u16,
        /// Buffers the batch would hold.
        batch: u16,
        /// Used buffers `used.idx` accounts for.
        pending: u16,
    },
    /// A packed ring descriptor marked used while nothing is in flight.
    #[error("the device marked ring position {0} used with nothing in flight")]
    SpuriousUsed(u16),
    /// An earlier device error broke the queue; reset it.
    #[error("the queue is broken by an earlier device error; reset it")]
    Broken,
}

/// Where the three areas of a virtqueue are, and its size. For a packed ring (section 2.8) the
/// descriptor ring is `desc_table`, the driver event suppression area `avail_ring` and the device
/// event suppression area `used_ring`, as transports (vhost-user, virtio-pci) name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table (16-byte aligned).
    pub desc_table: GuestAddress,
    /// Available ring (2-byte aligned).
    pub avail_ring: GuestAddress,
    /// Used ring (4-byte aligned).
    pub used_ring: GuestAddress,
    /// The packed layout (`VIRTIO_F_RING_PACKED`). Transports need it: vhost-user's
    /// `SET_VRING_BASE` carries a packed ring's wrap counters in bit 15.
    pub packed: bool,
}

impl QueueLayout {
    /// Bytes of the descriptor table for `size` descriptors (section 2.7).
    pub fn desc_table_bytes(size: u16) -> u64 {
        size_of::<vring_desc>() as u64 * u64::from(size)
    }

    /// Bytes of the available ring, with `used_event`.
    pub fn avail_ring_bytes(size: u16) -> u64 {
        offset_of!(vring_avail, ring) as u64 + 2 * u64::from(size) + 2
    }

    /// Bytes of the used ring, with `avail_event`.
    pub fn used_ring_bytes(size: u16) -> u64 {
        offset_of!(vring_used, ring) as u64
            + size_of::<vring_used_elem>() as u64 * u64::from(size)
            + 2
    }
}

/// Checks a queue size: non-zero, a power of two, at most 32768.
pub fn validate_queue_size(size: u16) -> Result<u16, Error> {
    if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
        return Err(Error::InvalidQueueSize(size));
    }
    Ok(size)
}

/// The ring features that change how the driver uses the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFeatures {
    /// `VIRTIO_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub indirect_desc: bool,
    /// `VIRTIO_F_IN_ORDER` was negotiated: the device uses buffers in the order they were made
    /// available and may report a batch with one used element (split, 2.7.9) or one used
    /// descriptor (packed, 2.8.8) naming the batch's last buffer. The driver then uses
    /// descriptors in ring order, and checks every completion against that order.
    pub in_order: bool,
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its address in memory shared with the device.
    pub addr: GuestAddress,
    /// Its length in bytes.
    pub len: u32,
    /// The device writes it (`VRING_DESC_F_WRITE`), else the device reads it.
    pub device_writable: bool,
}

/// A validated completion: the head of a chain the driver added, and how many bytes the device
/// says it wrote (at most the chain's device-writable bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The id returned by [`VirtQueue::add`] (a split ring's head descriptor index, a packed
    /// ring's buffer id).
    pub head: u16,
    /// The used length, already checked against the writable bytes.
    pub len: u32,
}

/// What a device driver needs from a virtqueue, whatever its layout.
pub trait VirtQueue: std::fmt::Debug + Send {
    /// The ring addresses and size, to give to the device.
    fn layout(&self) -> QueueLayout;
    /// Free descriptors.
    fn free_descriptors(&self) -> usize;
    /// Whether a chain of `segments` can be added now.
    fn has_room_for(&self, segments: usize) -> bool;
    /// The id the next [`VirtQueue::add`] returns, if there is room.
    fn next_head(&self) -> Option<u16>;
    /// Adds a chain; returns the id its [`Completion`] will carry.
    fn add(&mut self, segments: &[Segment]) -> Result<u16, Error>;
    /// Makes the added chains visible, and says whether to notify the device.
    fn publish(&mut self) -> Result<bool, Error>;
    /// The next validated completion, if any.
    fn pop_used(&mut self) -> Result<Option<Completion>, Error>;
    /// Asks for a notification at the next completion; says whether one is already pending.
    fn enable_notifications(&mut self) -> Result<bool, Error>;
    /// Asks for a notification once `n` more buffers are used (at most: a layout or feature
    /// set that cannot count them notifies at the next one); says whether used buffers are
    /// already pending. The default is [`VirtQueue::enable_notifications`].
    fn enable_notifications_after(&mut self, n: u16) -> Result<bool, Error> {
        let _ = n;
        self.enable_notifications()
    }
    /// Asks the device not to notify (a hint).
    fn disable_notifications(&mut self) -> Result<(), Error>;
    /// Forgets everything in flight and zeroes the rings (after a device reset).
    fn reset(&mut self) -> Result<(), Error>;
    /// Whether an earlier device error broke the queue.
    fn is_broken(&self) -> bool;
}
