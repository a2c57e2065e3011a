//! A virtio-blk driver (virtio 1.2, section 5.2) over any [`Transport`].
//!
//! Each request is a chain: a 16-byte header the device reads (`virtio_blk_outhdr`), the data
//! buffers, for discard and write-zeroes one 16-byte range (`virtio_blk_discard_write_zeroes`),
//! and a status byte the device writes. Headers, ranges and status bytes live in a per-queue
//! table in shared memory, one 64-byte slot per head descriptor, so a request needs no
//! allocation.
//!
//! [`BlkDriver::submit`], [`BlkDriver::kick`] and [`BlkDriver::poll`] are the asynchronous,
//! zero-copy interface: buffers are addresses in memory shared with the device.
//! [`BlkDriver::read`], [`BlkDriver::write`] and the other blocking helpers copy through a bounce
//! buffer and wait for the completion.

use std::mem::offset_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, virtio_blk_config,
};
use virtio_bindings::virtio_config::{
    VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::memory::DmaMemory;
use crate::queue::VirtQueue;
use crate::queue::packed::PackedQueue;
use crate::queue::split::{self, MAX_INDIRECT_DESCRIPTORS, QueueFeatures, Segment, SplitQueue};
use crate::transport::{self, Attempt, Transport};

/// The sector size of virtio-blk addresses, whatever the device's block size.
pub const SECTOR_SIZE: u64 = 512;

/// Bytes of config space the driver reads: up to `write_zeroes_may_unmap` and its padding.
pub const CONFIG_BYTES: usize = offset_of!(virtio_blk_config, max_secure_erase_sectors);

/// The tag of requests made by the blocking helpers ([`BlkDriver::read`] and others); not
/// available to [`BlkDriver::submit`].
pub const BLOCKING_TAG: u64 = u64::MAX;

/// Bytes of each request slot (header, range, status).
const SLOT_BYTES: u64 = 64;
const SLOT_RANGE: u64 = 16;
const SLOT_STATUS: u64 = 32;
// `BlkQueue::write_slot` writes the header and the range as four words before the status byte.
const _: () = assert!(SLOT_RANGE == 16 && SLOT_STATUS == 32 && SLOT_STATUS < SLOT_BYTES);

/// Errors of the virtio-blk driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// The queue failed, or the device misbehaved on it.
    #[error(transparent)]
    Queue(#[from] split::Error),
    /// Shared memory allocation failed.
    #[error("cannot allocate shared memory")]
    Memory(#[from] crate::memory::Error),
    /// Shared memory access failed.
    #[error("cannot access shared memory")]
    Access(#[source] vm_memory::GuestMemoryError),
    /// The device does not offer `VIRTIO_F_VERSION_1` (legacy devices are not supported).
    #[error("the device does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotVersion1(u64),
    /// The config space holds an impossible value.
    #[error("invalid config space: {field} = {value}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A queue index the driver did not set up.
    #[error("queue {0} does not exist ({1} queues)")]
    NoSuchQueue(u16, u16),
    /// The request is not supported by the device (feature not negotiated).
    #[error("{0} is not supported by the device")]
    Unsupported(&'static str),
    /// The device is read-only.
    #[error("the device is read-only")]
    ReadOnly,
    /// A request past the end of the disk.
    #[error("sectors {sector}..+{sectors} past the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A data length that is 0 or not a multiple of 512.
    #[error("data length {0} is not a non-zero multiple of 512")]
    BadLength(u64),
    /// Too many segments, or a segment too large, for the device's limits.
    #[error("{segments} segments (max {seg_max}) or a segment above {size_max} bytes")]
    TooManySegments {
        /// Segments asked for.
        segments: usize,
        /// The limit.
        seg_max: u32,
        /// The per-segment limit.
        size_max: u32,
    },
    /// The device completed a request with an error status.
    #[error("the device failed the request: {0:?}")]
    Status(Status),
    /// A completion for a head with no request recorded (should not happen: the queue
    /// validates heads).
    #[error("completion for head {0} without a request")]
    NoRequest(u16),
    /// The tag [`BLOCKING_TAG`] is reserved for the blocking helpers.
    #[error("tag {BLOCKING_TAG:#x} is reserved for the blocking helpers")]
    ReservedTag,
    /// [`BlkDriver::reconnect`] with a transport over other memory.
    #[error("the new transport does not share the driver's memory")]
    DifferentMemory,
    /// [`BlkDriver::reconnect`] to a device that lost a feature, queues or queue size.
    #[error("the device changed across the reconnection: {0}")]
    DeviceChanged(&'static str),
    /// The device went away and could not be reconnected to within
    /// [`BlkOptions::reconnect`]. The requests in flight are kept: a later wait tries again,
    /// and [`BlkDriver::reconnect`] with a new transport hands their tags back.
    #[error(
        "the device went away and no reconnection succeeded within {after:?} (is the back-end running?)"
    )]
    ReconnectFailed {
        /// How long reconnecting was tried.
        after: Duration,
        /// Why the last attempt failed.
        #[source]
        source: Box<Error>,
    },
    /// [`BlkDriver::wait_for`] asked for more completions than requests are in flight.
    #[error(
        "waiting for {min} completions with {in_flight} requests in flight: submit more, or wait for fewer"
    )]
    TooFewInFlight {
        /// Completions asked for.
        min: usize,
        /// Requests in flight (and completions kept), on that queue.
        in_flight: usize,
    },
    /// A length above the discard or write-zeroes limit.
    #[error("{sectors} sectors above the device's limit of {max}")]
    RangeTooLarge {
        /// Sectors asked for.
        sectors: u32,
        /// The limit.
        max: u32,
    },
}

/// The status byte of a completed request (section 5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `VIRTIO_BLK_S_OK`.
    Ok,
    /// `VIRTIO_BLK_S_IOERR`.
    IoError,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupported,
    /// Any other value: a device that does not follow the spec.
    Invalid(u8),
}

impl From<u8> for Status {
    fn from(b: u8) -> Self {
        match u32::from(b) {
            VIRTIO_BLK_S_OK => Status::Ok,
            VIRTIO_BLK_S_IOERR => Status::IoError,
            VIRTIO_BLK_S_UNSUPP => Status::Unsupported,
            _ => Status::Invalid(b),
        }
    }
}

/// The block topology (`VIRTIO_BLK_F_TOPOLOGY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// log2 of logical blocks per physical block.
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size, in blocks.
    pub min_io_size: u16,
    /// Optimal (suggested maximum) I/O size, in blocks.
    pub opt_io_size: u32,
}

/// Limits of discard or write-zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeLimits {
    /// Largest range in sectors.
    pub max_sectors: u32,
    /// Largest number of ranges in a request.
    pub max_segments: u32,
}

/// The validated config space of a virtio-blk device (section 5.2.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment (`VIRTIO_BLK_F_SIZE_MAX`; `None` also when the device reports 0).
    pub size_max: Option<u32>,
    /// Most data segments in a request (`VIRTIO_BLK_F_SEG_MAX`).
    pub seg_max: Option<u32>,
    /// Logical block size (`VIRTIO_BLK_F_BLK_SIZE`).
    pub blk_size: Option<u32>,
    /// Topology (`VIRTIO_BLK_F_TOPOLOGY`).
    pub topology: Option<Topology>,
    /// Writeback cache enabled (`VIRTIO_BLK_F_CONFIG_WCE`).
    pub writeback: Option<bool>,
    /// Number of request queues (1 without `VIRTIO_BLK_F_MQ`).
    pub num_queues: u16,
    /// Discard limits (`VIRTIO_BLK_F_DISCARD`).
    pub discard: Option<RangeLimits>,
    /// Write-zeroes limits (`VIRTIO_BLK_F_WRITE_ZEROES`), and whether it may unmap.
    pub write_zeroes: Option<(RangeLimits, bool)>,
    /// `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// `VIRTIO_BLK_F_FLUSH`.
    pub flush: bool,
}

fn bit(features: u64, b: u32) -> bool {
    features & (1u64 << b) != 0
}

fn le_u16(c: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([c[off], c[off + 1]])
}

fn le_u32(c: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([c[off], c[off + 1], c[off + 2], c[off + 3]])
}

fn le_u64(c: &[u8], off: usize) -> u64 {
    u64::from_le_bytes([
        c[off],
        c[off + 1],
        c[off + 2],
        c[off + 3],
        c[off + 4],
        c[off + 5],
        c[off + 6],
        c[off + 7],
    ])
}

impl BlkConfig {
    /// Parses and validates a config space copy under the negotiated `features`. Fields of
    /// features not negotiated are ignored.
    pub fn parse(c: &[u8; CONFIG_BYTES], features: u64) -> Result<Self, Error> {
        let invalid = |field, value: u64| Error::InvalidConfig { field, value };
        let capacity = le_u64(c, offset_of!(virtio_blk_config, capacity));
        if capacity.checked_mul(SECTOR_SIZE).is_none() {
            return Err(invalid("capacity", capacity));
        }
        let size_max = if bit(features, VIRTIO_BLK_F_SIZE_MAX) {
            // qemu-storage-daemon offers SIZE_MAX with size_max 0: read it as "no limit".
            // A limit below one sector cannot carry a request.
            match le_u32(c, offset_of!(virtio_blk_config, size_max)) {
                0 => None,
                v if v < SECTOR_SIZE as u32 => return Err(invalid("size_max", v.into())),
                v => Some(v),
            }
        } else {
            None
        };
        let seg_max = if bit(features, VIRTIO_BLK_F_SEG_MAX) {
            let v = le_u32(c, offset_of!(virtio_blk_config, seg_max));
            if v == 0 {
                return Err(invalid("seg_max", 0));
            }
            Some(v)
        } else {
            None
        };
        let blk_size = if bit(features, VIRTIO_BLK_F_BLK_SIZE) {
            let v = le_u32(c, offset_of!(virtio_blk_config, blk_size));
            if !v.is_power_of_two() || !(512..=65536).contains(&v) {
                return Err(invalid("blk_size", v.into()));
            }
            Some(v)
        } else {
            None
        };
        let topology = if bit(features, VIRTIO_BLK_F_TOPOLOGY) {
            let t = Topology {
                physical_block_exp: c[offset_of!(virtio_blk_config, physical_block_exp)],
                alignment_offset: c[offset_of!(virtio_blk_config, alignment_offset)],
                min_io_size: le_u16(c, offset_of!(virtio_blk_config, min_io_size)),
                opt_io_size: le_u32(c, offset_of!(virtio_blk_config, opt_io_size)),
            };
            if t.physical_block_exp > 16 {
                return Err(invalid("physical_block_exp", t.physical_block_exp.into()));
            }
            Some(t)
        } else {
            None
        };
        let writeback = if bit(features, VIRTIO_BLK_F_CONFIG_WCE) {
            match c[offset_of!(virtio_blk_config, wce)] {
                0 => Some(false),
                1 => Some(true),
                v => return Err(invalid("writeback", v.into())),
            }
        } else {
            None
        };
        let num_queues = if bit(features, VIRTIO_BLK_F_MQ) {
            let v = le_u16(c, offset_of!(virtio_blk_config, num_queues));
            if v == 0 {
                return Err(invalid("num_queues", 0));
            }
            v
        } else {
            1
        };
        let limits = |sectors_field, sectors_off, segs_field, segs_off| {
            let max_sectors = le_u32(c, sectors_off);
            let max_segments = le_u32(c, segs_off);
            if max_sectors == 0 {
                return Err(invalid(sectors_field, 0));
            }
            if max_segments == 0 {
                return Err(invalid(segs_field, 0));
            }
            Ok(RangeLimits {
                max_sectors,
                max_segments,
            })
        };
        let discard = if bit(features, VIRTIO_BLK_F_DISCARD) {
            Some(limits(
                "max_discard_sectors",
                offset_of!(virtio_blk_config, max_discard_sectors),
                "max_discard_seg",
                offset_of!(virtio_blk_config, max_discard_seg),
            )?)
        } else {
            None
        };
        let write_zeroes = if bit(features, VIRTIO_BLK_F_WRITE_ZEROES) {
            Some((
                limits(
                    "max_write_zeroes_sectors",
                    offset_of!(virtio_blk_config, max_write_zeroes_sectors),
                    "max_write_zeroes_seg",
                    offset_of!(virtio_blk_config, max_write_zeroes_seg),
                )?,
                c[offset_of!(virtio_blk_config, write_zeroes_may_unmap)] != 0,
            ))
        } else {
            None
        };
        Ok(BlkConfig {
            capacity,
            size_max,
            seg_max,
            blk_size,
            topology,
            writeback,
            num_queues,
            discard,
            write_zeroes,
            read_only: bit(features, VIRTIO_BLK_F_RO),
            flush: bit(features, VIRTIO_BLK_F_FLUSH),
        })
    }
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct BlkOptions {
    /// Queue size wanted (clamped to the device's limit).
    pub queue_size: u16,
    /// Queues wanted (clamped to the device's).
    pub num_queues: u16,
    /// Bytes of the bounce buffer the blocking helpers use.
    pub bounce_bytes: u32,
    /// How long the blocking helpers and [`BlkDriver::wait`] wait for a notification.
    /// `Duration::MAX` waits without a timeout (over vhost-user no timer is armed per wait,
    /// which saves the driver's thread a little CPU per sleep; a daemon that dies or closes its
    /// socket still ends the wait with [`crate::transport::Error::DeviceGone`]).
    pub timeout: Duration,
    /// Use `VIRTIO_F_EVENT_IDX` when offered.
    pub event_idx: bool,
    /// Use `VIRTIO_F_INDIRECT_DESC` when offered.
    pub indirect_desc: bool,
    /// With indirect descriptors on a split ring, requests of up to this many descriptors
    /// (a one-buffer read or write takes three) go straight into the descriptor table while it
    /// has room, longer ones through an indirect table ([`SplitQueue::set_direct_max`]; 0:
    /// every request of two or more descriptors indirect). Packed rings ignore it.
    pub direct_max: usize,
    /// Use packed rings (`VIRTIO_F_RING_PACKED`) when offered.
    pub packed_ring: bool,
    /// Use `VIRTIO_F_IN_ORDER` when offered: descriptors in ring order, and completions
    /// checked to come in the order requests were made available (batches allowed).
    pub in_order: bool,
    /// Before [`BlkDriver::wait`] sleeps on the call eventfd, it keeps polling the used ring for
    /// up to this long while two or more requests are in flight (with one, as at depth 1, it
    /// sleeps at once: its completion is a whole device round trip away). With requests
    /// streaming back a few microseconds apart, the next one usually lands within it, and the
    /// sleep, the wake-up and the device's eventfd write that ends it are saved (libblkio's
    /// `do_io` gets a similar grace from its always-armed notification: a completion signalled
    /// while it was busy makes its next `ppoll` return at once). Where completions are further
    /// apart (1 MiB reads, one every 30 us or so), a poll costs this much CPU for nothing, so
    /// after one in vain the next waits on the queue sleep at once: 2 of them, then 4, 8 and
    /// up to 16 after each further poll in vain, until a poll finds a completion.
    /// `Duration::ZERO` sleeps at once. The default is 2 us.
    pub spin: Duration,
    /// Transparent reconnection: when the device goes away (a vhost-user daemon killed or
    /// restarted: [`transport::Error::DeviceGone`] from a wait or a kick), keep trying to open
    /// a new connection to it ([`Transport::reopen`]) for up to this long, then resubmit the
    /// requests that were in flight, so that the caller sees nothing but the delay. Requests
    /// the device completed before it went are handed out, not done again; the others may
    /// have reached the disk and run once more (virtio-blk gives no ordering between requests
    /// in flight, so a caller cannot have relied on them not having run). The time counts
    /// from when the device was first found gone since it last completed a request, so a
    /// device that comes back and goes away again at once cannot keep a wait going for ever.
    /// Each attempt that fails waits a little longer before the next (5 ms, doubling up to
    /// 100 ms, the last one as time runs out); then the wait fails with
    /// [`Error::ReconnectFailed`], and the requests stay recorded for a later wait to try
    /// again. A device that comes back as another (a garbage config, fewer queues or
    /// features, a smaller queue) is refused at once. `None` (the default) reports the device
    /// gone at once, for the caller to [`BlkDriver::reconnect`].
    ///
    /// The driver then keeps a private copy of each request in flight (its type, sectors and
    /// buffers). A caller that only busy-polls ([`BlkDriver::poll`]) learns of a device gone
    /// only from a [`BlkDriver::wait`] or [`BlkDriver::kick`].
    pub reconnect: Option<Duration>,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            queue_size: 256,
            num_queues: 1,
            bounce_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
            event_idx: true,
            indirect_desc: true,
            direct_max: split::DIRECT_MAX,
            packed_ring: true,
            in_order: true,
            spin: Duration::from_micros(2),
            reconnect: None,
        }
    }
}

/// A data buffer in memory shared with the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataBuf {
    /// Its address.
    pub addr: GuestAddress,
    /// Its length.
    pub len: u32,
}

/// A virtio-blk request.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// `VIRTIO_BLK_T_IN`: read from `sector` into the buffers.
    Read {
        /// First sector.
        sector: u64,
        /// Buffers, filled in order.
        bufs: &'a [DataBuf],
    },
    /// `VIRTIO_BLK_T_OUT`: write the buffers at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Buffers, written in order.
        bufs: &'a [DataBuf],
    },
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the 20-byte serial into `buf` (at least 20 bytes).
    GetId {
        /// Where the serial goes.
        buf: DataBuf,
    },
    /// `VIRTIO_BLK_T_DISCARD` of one range.
    Discard {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u32,
    },
    /// `VIRTIO_BLK_T_WRITE_ZEROES` of one range.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u32,
        /// Let the device unmap (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`).
        unmap: bool,
    },
}

/// A completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkCompletion {
    /// The tag given to [`BlkDriver::submit`].
    pub tag: u64,
    /// The status byte.
    pub status: Status,
    /// Bytes the device says it wrote, status byte included (validated against the buffers).
    pub len: u32,
}

/// The most data segments in a request, and the largest segment, under `config`.
fn segment_limits(config: &BlkConfig, indirect: bool, queue_size: u16) -> (usize, u32) {
    // Header, optional range, status: data gets what is left of a chain.
    let chain_max = if indirect {
        usize::from(MAX_INDIRECT_DESCRIPTORS)
    } else {
        usize::from(queue_size)
    };
    let mut max_segments = chain_max.saturating_sub(3).max(1);
    if let Some(s) = config.seg_max {
        max_segments = max_segments.min(s as usize);
    }
    let segment_bytes = config.size_max.unwrap_or(u32::MAX) & !(SECTOR_SIZE as u32 - 1);
    (max_segments, segment_bytes)
}

/// A discard or write-zeroes range: first sector, sectors, flags.
type RangeSeg = (u64, u32, u32);

#[derive(Debug)]
struct BlkQueue {
    vq: Box<dyn VirtQueue>,
    slots: GuestAddress,
    /// The host address of `slots` (`size * SLOT_BYTES` bytes in one region of the driver's
    /// memory), so the I/O path writes headers and reads status bytes without a region lookup.
    slots_host: Option<usize>,
    tags: Vec<Option<u64>>,
    /// Requests in flight (the `Some` entries of `tags`).
    in_flight: usize,
    /// The polls before sleeping ([`BlkOptions::spin`]) back off after one in vain: the
    /// waits to skip the poll after the last one that found nothing (doubled by each such
    /// poll up to [`SPIN_BACKOFF_MAX`], 0 again after one that found a completion)...
    spin_backoff: u8,
    /// ... and how many of them are left.
    spin_skip: u8,
    /// With [`BlkOptions::reconnect`], a copy of each request in flight, by head (empty
    /// otherwise), to resubmit after a reconnection.
    records: Vec<Record>,
    /// Completions taken from the ring but not handed out yet: a blocking helper's wait saw
    /// them (queue 0), or they were in the ring when the device went away.
    stashed: Vec<BlkCompletion>,
}

/// What [`BlkDriver::submit`] put into a chain, kept to put it again after a reconnection.
#[derive(Clone, Debug, Default)]
struct Record {
    kind: u32,
    sector: u64,
    range: Option<RangeSeg>,
    bufs: Vec<DataBuf>,
}

/// The most waits that sleep at once after polls in vain (see `BlkQueue::spin_backoff`).
const SPIN_BACKOFF_MAX: u8 = 16;

impl BlkQueue {
    /// The host address of `len` bytes at `offset` into the slots, if they are mapped: `host`
    /// maps the `size * SLOT_BYTES` bytes of the slots, one region of the driver's memory
    /// (checked with `get_slice` when it was taken), which stays mapped while the driver holds
    /// its `Arc` of the memory; the bytes returned lie within them.
    #[inline]
    fn slot_ptr(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let host = self.slots_host?;
        // One tag per slot: the queue's size, without a call through the `dyn VirtQueue`.
        let size = self.tags.len();
        let offset = usize::try_from(offset).ok()?;
        if offset.checked_add(len)? > size * SLOT_BYTES as usize {
            return None;
        }
        Some((host + offset) as *mut u8)
    }

    /// The host view of `len` bytes at `offset` into the slots, if it is mapped.
    fn slot_slice(&self, offset: u64, len: usize) -> Option<VolatileSlice<'_>> {
        let p = self.slot_ptr(offset, len)?;
        // SAFETY: `host` maps the `size * SLOT_BYTES` bytes of the slots, one region of the
        // driver's memory (checked with `get_slice` when it was taken), and `offset + len` is
        // within them. The driver holds an `Arc` of that memory for as long as the queue
        // lives, and its regions are never unmapped or moved while it lives. The device shares
        // the slots, so only volatile accesses are made to them, which `VolatileSlice` does.
        Some(unsafe { VolatileSlice::new(p, len) })
    }

    /// Writes slot `head`'s request header, its range (zeroed when `range` is `None`) and the
    /// status byte `0xff` (bytes 0 to 32 of the slot, the ones a chain can name) with four
    /// volatile 8-byte stores and one byte store, when the slots are mapped and 8-byte aligned.
    /// Returns `false` (nothing written) otherwise.
    #[inline]
    fn write_slot(&self, head: u16, kind: u32, sector: u64, range: Option<RangeSeg>) -> bool {
        let Some(p) = self.slot_ptr(u64::from(head) * SLOT_BYTES, SLOT_STATUS as usize + 1) else {
            return false;
        };
        if p as usize % 8 != 0 {
            return false;
        }
        let (rs, rn) = match range {
            Some((s, n, flags)) => (s, u64::from(n) | u64::from(flags) << 32),
            None => (0, 0),
        };
        let words = [
            u64::from(kind).to_le(),
            sector.to_le(),
            rs.to_le(),
            rn.to_le(),
        ];
        // SAFETY: `slot_ptr` checked that the `SLOT_STATUS + 1` bytes at `p` lie inside the
        // slots, mapped for as long as the queue lives (see `slot_ptr`); `p` is 8-byte
        // aligned (checked above) and `SLOT_STATUS` is 32, so the four words end where the
        // status byte starts. The device shares the slots: the stores are volatile.
        unsafe {
            std::ptr::write_volatile(p.cast::<[u64; 4]>(), words);
            std::ptr::write_volatile(p.add(SLOT_STATUS as usize), 0xff);
        }
        true
    }
}

/// A virtio-blk driver.
#[derive(Debug)]
pub struct BlkDriver<T: Transport> {
    transport: T,
    mem: Arc<DmaMemory>,
    features: u64,
    config: BlkConfig,
    queues: Vec<BlkQueue>,
    bounce: GuestAddress,
    bounce_bytes: u32,
    max_segments: usize,
    segment_bytes: u32,
    timeout: Duration,
    /// See [`BlkOptions::spin`].
    spin: Duration,
    /// See [`BlkOptions::reconnect`].
    reconnect: Option<Duration>,
    /// Transparent reconnections made.
    reconnections: u64,
    /// When the device was first found gone since it last completed a request: the time
    /// allowed to reconnect counts from then, so that a device that comes back and goes away
    /// again at once, over and over, cannot keep a wait going for ever.
    gone_since: Option<Instant>,
    /// Scratch for the chain [`BlkDriver::submit`] builds.
    segs: Vec<Segment>,
}

impl<T: Transport> BlkDriver<T> {
    /// Negotiates features, reads and validates the config, and sets up the queues.
    pub fn new(mut transport: T, options: BlkOptions) -> Result<Self, Error> {
        let mem = transport.memory().clone();
        let offered = transport.device_features()?;
        if !bit(offered, VIRTIO_F_VERSION_1) {
            return Err(Error::NotVersion1(offered));
        }
        let mut wanted = 1u64 << VIRTIO_F_VERSION_1;
        for b in [
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_BLK_F_RO,
        ] {
            wanted |= 1 << b;
        }
        if options.event_idx {
            wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if options.indirect_desc {
            wanted |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        if options.packed_ring {
            wanted |= 1 << VIRTIO_F_RING_PACKED;
        }
        if options.in_order {
            wanted |= 1 << VIRTIO_F_IN_ORDER;
        }
        // Per-queue reset (BlkDriver::reset_queue), when the device has it.
        wanted |= 1 << VIRTIO_F_RING_RESET;
        let features = offered & wanted;
        transport.set_driver_features(features)?;

        let mut raw = [0u8; CONFIG_BYTES];
        transport.read_config(0, &mut raw)?;
        let config = BlkConfig::parse(&raw, features)?;

        let max_size = split::validate_queue_size(transport.max_queue_size()?)?;
        let size = split::validate_queue_size(options.queue_size.min(max_size))?;
        let nq = options
            .num_queues
            .max(1)
            .min(config.num_queues)
            .min(transport.max_queues()?.max(1));
        let qf = QueueFeatures {
            event_idx: bit(features, VIRTIO_RING_F_EVENT_IDX),
            indirect_desc: bit(features, VIRTIO_RING_F_INDIRECT_DESC),
            in_order: bit(features, VIRTIO_F_IN_ORDER),
        };
        let mut queues = Vec::with_capacity(usize::from(nq));
        for i in 0..nq {
            let vq: Box<dyn VirtQueue> = if bit(features, VIRTIO_F_RING_PACKED) {
                Box::new(PackedQueue::allocate(&mem, size, qf)?)
            } else {
                let mut q = SplitQueue::allocate(&mem, size, qf)?;
                q.set_direct_max(options.direct_max);
                Box::new(q)
            };
            transport.setup_queue(i, &vq.layout())?;
            let slots = mem.alloc(u64::from(size) * SLOT_BYTES)?;
            let bytes = usize::from(size) * SLOT_BYTES as usize;
            let slots_host = match mem.guest_memory().get_slice(slots, bytes) {
                Ok(_) => mem
                    .guest_memory()
                    .get_host_address(slots)
                    .ok()
                    .map(|p| p as usize),
                Err(_) => None,
            };
            queues.push(BlkQueue {
                vq,
                slots,
                slots_host,
                tags: vec![None; usize::from(size)],
                in_flight: 0,
                spin_backoff: 0,
                spin_skip: 0,
                records: if options.reconnect.is_some() {
                    vec![Record::default(); usize::from(size)]
                } else {
                    Vec::new()
                },
                stashed: Vec::new(),
            });
        }
        transport.activate()?;

        let (max_segments, segment_bytes) = segment_limits(&config, qf.indirect_desc, size);
        let bounce_bytes = options.bounce_bytes.max(SECTOR_SIZE as u32) & !(4095);
        let bounce = mem.alloc(u64::from(bounce_bytes.max(4096)))?;
        Ok(BlkDriver {
            transport,
            mem,
            features,
            config,
            queues,
            bounce,
            bounce_bytes: bounce_bytes.max(4096),
            max_segments,
            segment_bytes,
            timeout: options.timeout,
            spin: options.spin,
            reconnect: options.reconnect,
            reconnections: 0,
            gone_since: None,
            segs: Vec::new(),
        })
    }

    /// Carries on with `transport`, a new connection to the same device after the old one went
    /// away (a restarted vhost-user daemon), sharing the same memory. The rings are reset and
    /// given to the device again, with the same features. Returns the tags of the requests that
    /// were in flight: they are lost (they may or may not have reached the disk) and are to be
    /// resubmitted by the caller.
    ///
    /// The old device must no longer use the rings: with vhost-user, its socket closed.
    pub fn reconnect(&mut self, transport: T) -> Result<Vec<u64>, Error> {
        self.reattach(transport)?;
        let mut lost = Vec::new();
        for q in &mut self.queues {
            lost.extend(q.tags.iter_mut().filter_map(Option::take));
            q.in_flight = 0;
        }
        lost.retain(|&t| t != BLOCKING_TAG);
        Ok(lost)
    }

    /// Checks that `transport` reaches the same device, resets the rings and gives them to it:
    /// the requests in flight keep their tags (and records), for the caller to drop or
    /// resubmit.
    fn reattach(&mut self, mut transport: T) -> Result<(), Error> {
        if !Arc::ptr_eq(transport.memory(), &self.mem) {
            return Err(Error::DifferentMemory);
        }
        let offered = transport.device_features()?;
        if offered & self.features != self.features {
            return Err(Error::DeviceChanged("features"));
        }
        transport.set_driver_features(self.features)?;
        let mut raw = [0u8; CONFIG_BYTES];
        transport.read_config(0, &mut raw)?;
        let config = BlkConfig::parse(&raw, self.features)?;
        let nq = self.num_queues();
        if config.num_queues < nq || transport.max_queues()? < nq {
            return Err(Error::DeviceChanged("number of queues"));
        }
        let size = self.queues.first().map_or(0, |q| q.vq.layout().size);
        if transport.max_queue_size()? < size {
            return Err(Error::DeviceChanged("queue size"));
        }
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.vq.reset()?;
            transport.setup_queue(i as u16, &q.vq.layout())?;
        }
        transport.activate()?;
        let indirect = bit(self.features, VIRTIO_RING_F_INDIRECT_DESC);
        (self.max_segments, self.segment_bytes) = segment_limits(&config, indirect, size);
        self.transport = transport;
        self.config = config;
        Ok(())
    }

    /// For a caller that found the device gone by other means (one that watches the
    /// vhost-user socket itself, as the `pv-backend` bridge does): with
    /// [`BlkOptions::reconnect`], takes what the device completed before it went (handed out
    /// by the next poll or wait), reconnects and resubmits the requests in flight, as a wait
    /// that finds the device gone does; fails with [`Error::ReconnectFailed`] when the time
    /// runs out. Without it, fails with [`transport::Error::DeviceGone`].
    pub fn recover(&mut self) -> Result<(), Error> {
        let gone = transport::Error::DeviceGone("found gone by the driver's caller".into());
        self.recover_from(gone.into())
    }

    /// After the device went away (`gone`), with [`BlkOptions::reconnect`]: takes what it
    /// completed before it went (stashed on each queue, to be handed out), reconnects within
    /// the time allowed, and resubmits the rest. Without it, returns `gone`.
    fn recover_from(&mut self, gone: Error) -> Result<(), Error> {
        let Some(limit) = self.reconnect else {
            return Err(gone);
        };
        // Taken out while the attempts borrow the driver; completions the old rings still
        // hold are the old device's work, not the new one's, so they do not clear it.
        let mut gone_since = self.gone_since.take();
        let timed_out = |e| Error::ReconnectFailed {
            after: limit,
            source: Box::new(e),
        };
        let r = transport::reconnect_within(
            "virtio-blk device",
            limit,
            &mut gone_since,
            gone,
            timed_out,
            || {
                for i in 0..self.num_queues() {
                    let mut done = Vec::new();
                    // A ring the device left broken keeps the rest: they are resubmitted.
                    let _ = self.poll_ring(i, &mut done);
                    self.queues[usize::from(i)].stashed.append(&mut done);
                }
                match self.transport.reopen() {
                    // A request stays recorded until its completion is taken: a device gone
                    // again during the resubmission gets them all at the next attempt.
                    Ok(t) => match self.reattach(t).and_then(|()| self.resubmit()) {
                        Ok(_) => Attempt::Done,
                        // Another device, or a broken one: trying again will not help.
                        Err(
                            e @ (Error::DeviceChanged(_)
                            | Error::DifferentMemory
                            | Error::InvalidConfig { .. }
                            | Error::NotVersion1(_)),
                        ) => Attempt::Fail(e),
                        Err(e) => Attempt::Again(e),
                    },
                    Err(transport::Error::ReconnectUnsupported) => Attempt::Unsupported,
                    Err(e) => Attempt::Again(e.into()),
                }
            },
        );
        self.gone_since = gone_since;
        r.map(|_| self.reconnections += 1)
    }

    /// Puts the recorded requests in flight onto the new rings and kicks every queue; returns
    /// how many. A request stays recorded until its completion is taken, so this can run
    /// again if the device goes away during it.
    fn resubmit(&mut self) -> Result<usize, Error> {
        // A device back with smaller segment limits would refuse some: none is taken then.
        let fits = |r: &Record| {
            r.bufs.len() <= self.max_segments && r.bufs.iter().all(|b| b.len <= self.segment_bytes)
        };
        let all_fit = self.queues.iter().all(|q| {
            q.tags
                .iter()
                .zip(&q.records)
                .all(|(t, r)| t.is_none() || fits(r))
        });
        if !all_fit {
            return Err(Error::DeviceChanged("segment limits"));
        }
        let mut n = 0;
        for i in 0..self.num_queues() {
            let q = &mut self.queues[usize::from(i)];
            let pending: Vec<(u64, Record)> = q
                .tags
                .iter_mut()
                .zip(q.records.iter_mut())
                .filter_map(|(t, r)| Some((t.take()?, std::mem::take(r))))
                .collect();
            q.in_flight = 0;
            for (tag, r) in pending {
                self.add_chain(i, r.kind, r.sector, &r.bufs, r.range, tag)?;
                n += 1;
            }
        }
        for i in 0..self.num_queues() {
            if self.queues[usize::from(i)].vq.publish()? {
                self.transport.notify(i)?;
            }
        }
        Ok(n)
    }

    /// Resets queue `queue` alone and starts it again, empty, while the other queues keep
    /// running (virtio 1.2, 2.6.1; over vhost-user the ring is stopped with `GET_VRING_BASE`
    /// and given again). This is how a queue that a device error broke is made usable without
    /// resetting the device. Returns the tags of the requests that were in flight on it: they
    /// are lost (they may or may not have reached the disk) and are to be resubmitted by the
    /// caller. Fails with [`transport::Error::QueueResetUnsupported`] when the transport or the
    /// device cannot reset one queue (`VIRTIO_F_RING_RESET` not offered).
    pub fn reset_queue(&mut self, queue: u16) -> Result<Vec<u64>, Error> {
        let nq = self.num_queues();
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(Error::NoSuchQueue(queue, nq))?;
        if !self.transport.can_reset_queue() {
            return Err(transport::Error::QueueResetUnsupported(queue).into());
        }
        self.transport.reset_queue(queue)?;
        // The device no longer uses the rings: they can be zeroed and given again.
        let mut lost: Vec<u64> = q.tags.iter_mut().filter_map(Option::take).collect();
        q.in_flight = 0;
        q.vq.reset()?;
        self.transport.setup_queue(queue, &q.vq.layout())?;
        self.transport.enable_queue(queue)?;
        lost.retain(|&t| t != BLOCKING_TAG);
        Ok(lost)
    }

    /// How many times the driver reconnected to the device by itself
    /// ([`BlkOptions::reconnect`]).
    pub fn reconnections(&self) -> u64 {
        self.reconnections
    }

    /// The validated config.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Number of queues set up.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The memory shared with the device, where [`DataBuf`]s must point.
    pub fn memory(&self) -> &Arc<DmaMemory> {
        &self.mem
    }

    /// The most data segments one request may have.
    pub fn max_segments(&self) -> usize {
        self.max_segments
    }

    fn check_range(&self, sector: u64, sectors: u64) -> Result<(), Error> {
        match sector.checked_add(sectors) {
            Some(end) if end <= self.config.capacity => Ok(()),
            _ => Err(Error::OutOfRange {
                sector,
                sectors,
                capacity: self.config.capacity,
            }),
        }
    }

    fn check_data(&self, sector: u64, bufs: &[DataBuf]) -> Result<(), Error> {
        let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if total == 0 || total % SECTOR_SIZE != 0 {
            return Err(Error::BadLength(total));
        }
        if bufs.len() > self.max_segments || bufs.iter().any(|b| b.len > self.segment_bytes) {
            return Err(Error::TooManySegments {
                segments: bufs.len(),
                seg_max: self.max_segments as u32,
                size_max: self.segment_bytes,
            });
        }
        self.check_range(sector, total / SECTOR_SIZE)
    }

    fn check_limits(limits: RangeLimits, sectors: u32) -> Result<(), Error> {
        if sectors == 0 || sectors > limits.max_sectors {
            return Err(Error::RangeTooLarge {
                sectors,
                max: limits.max_sectors,
            });
        }
        Ok(())
    }

    /// Adds a request to queue `queue` without notifying the device (see [`Self::kick`]).
    /// `tag` comes back in its [`BlkCompletion`]; [`BLOCKING_TAG`] is reserved.
    pub fn submit(&mut self, queue: u16, req: &Request<'_>, tag: u64) -> Result<(), Error> {
        if tag == BLOCKING_TAG {
            return Err(Error::ReservedTag);
        }
        self.submit_tagged(queue, req, tag)
    }

    fn submit_tagged(&mut self, queue: u16, req: &Request<'_>, tag: u64) -> Result<(), Error> {
        let nq = self.num_queues();
        if queue >= nq {
            return Err(Error::NoSuchQueue(queue, nq));
        }
        let (kind, sector, bufs, range): (u32, u64, &[DataBuf], Option<RangeSeg>) = match *req {
            Request::Read { sector, bufs } => {
                self.check_data(sector, bufs)?;
                (VIRTIO_BLK_T_IN, sector, bufs, None)
            }
            Request::Write { sector, bufs } => {
                if self.config.read_only {
                    return Err(Error::ReadOnly);
                }
                self.check_data(sector, bufs)?;
                (VIRTIO_BLK_T_OUT, sector, bufs, None)
            }
            Request::Flush => {
                if !self.config.flush {
                    return Err(Error::Unsupported("flush"));
                }
                (VIRTIO_BLK_T_FLUSH, 0, &[], None)
            }
            Request::GetId { ref buf } => {
                if buf.len < VIRTIO_BLK_ID_BYTES {
                    return Err(Error::BadLength(buf.len.into()));
                }
                (VIRTIO_BLK_T_GET_ID, 0, std::slice::from_ref(buf), None)
            }
            Request::Discard { sector, sectors } => {
                if self.config.read_only {
                    return Err(Error::ReadOnly);
                }
                let limits = self.config.discard.ok_or(Error::Unsupported("discard"))?;
                Self::check_limits(limits, sectors)?;
                self.check_range(sector, sectors.into())?;
                (VIRTIO_BLK_T_DISCARD, 0, &[], Some((sector, sectors, 0)))
            }
            Request::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => {
                if self.config.read_only {
                    return Err(Error::ReadOnly);
                }
                let (limits, may_unmap) = self
                    .config
                    .write_zeroes
                    .ok_or(Error::Unsupported("write-zeroes"))?;
                Self::check_limits(limits, sectors)?;
                self.check_range(sector, sectors.into())?;
                let flags = if unmap && may_unmap {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                } else {
                    0
                };
                (
                    VIRTIO_BLK_T_WRITE_ZEROES,
                    0,
                    &[],
                    Some((sector, sectors, flags)),
                )
            }
        };
        self.add_chain(queue, kind, sector, bufs, range, tag)
    }

    /// Writes the slot of a checked request and adds its chain to `queue` (in range).
    fn add_chain(
        &mut self,
        queue: u16,
        kind: u32,
        sector: u64,
        bufs: &[DataBuf],
        range: Option<RangeSeg>,
        tag: u64,
    ) -> Result<(), Error> {
        let data_writable = matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        let q = &mut self.queues[usize::from(queue)];
        let segments_needed = bufs.len() + 2 + usize::from(range.is_some());
        if !q.vq.has_room_for(segments_needed) {
            return Err(split::Error::QueueFull {
                needed: segments_needed,
                free: q.vq.free_descriptors(),
            }
            .into());
        }
        let head = q.vq.next_head().ok_or(split::Error::QueueFull {
            needed: segments_needed,
            free: 0,
        })?;
        let slot = q.slots.unchecked_add(u64::from(head) * SLOT_BYTES);
        // The slot is written whole, zeroed where unused (no stale bytes reach the device):
        // through the host view of the slots in place, or else as below.
        if !q.write_slot(head, kind, sector, range) {
            let mut bytes = [0u8; SLOT_BYTES as usize];
            bytes[0..4].copy_from_slice(&kind.to_le_bytes());
            bytes[8..16].copy_from_slice(&sector.to_le_bytes());
            if let Some((s, n, flags)) = range {
                bytes[16..24].copy_from_slice(&s.to_le_bytes());
                bytes[24..28].copy_from_slice(&n.to_le_bytes());
                bytes[28..32].copy_from_slice(&flags.to_le_bytes());
            }
            bytes[SLOT_STATUS as usize] = 0xff;
            // The host view of the slots, or one bounds-checked slice of the region, without the
            // region iterator of `Bytes::write_slice`: this is the I/O path.
            match q.slot_slice(u64::from(head) * SLOT_BYTES, bytes.len()) {
                Some(s) => s
                    .write_slice(&bytes, 0)
                    .map_err(|e| Error::Access(e.into()))?,
                None => self
                    .mem
                    .guest_memory()
                    .get_slice(slot, bytes.len())
                    .and_then(|s| s.write_slice(&bytes, 0).map_err(Into::into))
                    .map_err(Error::Access)?,
            }
        }

        // The chain is built in a buffer kept across requests: no allocation per request.
        let segs = &mut self.segs;
        segs.clear();
        segs.push(Segment {
            addr: slot,
            len: 16,
            device_writable: false,
        });
        segs.extend(bufs.iter().map(|b| Segment {
            addr: b.addr,
            len: b.len,
            device_writable: data_writable,
        }));
        if range.is_some() {
            segs.push(Segment {
                addr: slot.unchecked_add(SLOT_RANGE),
                len: 16,
                device_writable: false,
            });
        }
        segs.push(Segment {
            addr: slot.unchecked_add(SLOT_STATUS),
            len: 1,
            device_writable: true,
        });
        let added = q.vq.add(segs)?;
        debug_assert_eq!(added, head);
        q.tags[usize::from(added)] = Some(tag);
        q.in_flight += 1;
        if let Some(r) = q.records.get_mut(usize::from(added)) {
            r.kind = kind;
            r.sector = sector;
            r.range = range;
            r.bufs.clear();
            r.bufs.extend_from_slice(bufs);
        }
        Ok(())
    }

    /// Publishes the submitted requests of `queue` and notifies the device if it asked for it.
    pub fn kick(&mut self, queue: u16) -> Result<(), Error> {
        let nq = self.num_queues();
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(Error::NoSuchQueue(queue, nq))?;
        if q.vq.publish()? {
            match self.transport.notify(queue) {
                Err(e @ transport::Error::DeviceGone(_)) => self.recover_from(e.into())?,
                r => r?,
            }
        }
        Ok(())
    }

    /// Hands out the completions of `queue` taken from its ring before (see
    /// `BlkQueue::stashed`).
    fn take_stashed(&mut self, queue: u16, out: &mut Vec<BlkCompletion>) -> usize {
        let Some(q) = self.queues.get_mut(usize::from(queue)) else {
            return 0;
        };
        let n = q.stashed.len();
        out.append(&mut q.stashed);
        n
    }

    /// Appends the completions of `queue` to `out`; returns how many.
    pub fn poll(&mut self, queue: u16, out: &mut Vec<BlkCompletion>) -> Result<usize, Error> {
        let stashed = self.take_stashed(queue, out);
        Ok(stashed + self.poll_ring(queue, out)?)
    }

    fn poll_ring(&mut self, queue: u16, out: &mut Vec<BlkCompletion>) -> Result<usize, Error> {
        let nq = self.num_queues();
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(Error::NoSuchQueue(queue, nq))?;
        let mut n = 0;
        while let Some(c) = q.vq.pop_used()? {
            let tag = q.tags[usize::from(c.head)]
                .take()
                .ok_or(Error::NoRequest(c.head))?;
            q.in_flight -= 1;
            let offset = u64::from(c.head) * SLOT_BYTES + SLOT_STATUS;
            let status: u8 = match q.slot_ptr(offset, 1) {
                // SAFETY: `slot_ptr` checked that the byte lies inside the slots, mapped while
                // the queue lives; the device writes it, so it is read once, volatile.
                Some(p) => unsafe { std::ptr::read_volatile(p) },
                None => self
                    .mem
                    .guest_memory()
                    .get_slice(q.slots.unchecked_add(offset), 1)
                    .and_then(|s| s.read_obj(0).map_err(Into::into))
                    .map_err(Error::Access)?,
            };
            out.push(BlkCompletion {
                tag,
                status: status.into(),
                len: c.len,
            });
            n += 1;
        }
        if n > 0 {
            // The device works: a later loss gets the whole time to reconnect again.
            self.gone_since = None;
        }
        Ok(n)
    }

    /// Asks the device not to notify completions on `queue`, for a caller that busy-polls it
    /// with [`Self::poll`] (a hint: the device may still notify). [`Self::wait`] turns
    /// notifications back on when it has to sleep.
    pub fn disable_notifications(&mut self, queue: u16) -> Result<(), Error> {
        let nq = self.num_queues();
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(Error::NoSuchQueue(queue, nq))?;
        q.vq.disable_notifications()?;
        Ok(())
    }

    /// Asks the device to notify completions on `queue` again (after
    /// [`Self::disable_notifications`]), for a caller about to sleep on the call eventfd itself
    /// (one given with [`Transport::set_call_fd`]). Returns whether completions are in the used
    /// ring already, looked at after a full fence: then the caller should poll, not sleep.
    pub fn enable_notifications(&mut self, queue: u16) -> Result<bool, Error> {
        let nq = self.num_queues();
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(Error::NoSuchQueue(queue, nq))?;
        let ring = q.vq.enable_notifications()?;
        Ok(ring || !q.stashed.is_empty())
    }

    /// Waits for at least one completion on `queue` (or the timeout), then polls. With nothing
    /// in flight it sleeps until the timeout, or until the device goes away
    /// ([`transport::Error::DeviceGone`]); [`Self::wait_for`] refuses that.
    pub fn wait(&mut self, queue: u16, out: &mut Vec<BlkCompletion>) -> Result<usize, Error> {
        let stashed = self.take_stashed(queue, out);
        self.wait_ring(queue, out, 1, stashed)
    }

    /// Waits until at least `min` completions of `queue` are appended to `out` (or the
    /// timeout), then polls; returns how many were appended. libblkio's `min_completions`.
    ///
    /// With `VIRTIO_F_EVENT_IDX`, the device is asked to notify only when the last of the
    /// `min` is used (split: `used_event` set ahead; packed: the event offset set as far ahead
    /// as the shortest chain in flight allows, exact when the requests are alike), so it skips
    /// the notifications, and the wake-ups, of the ones before: a caller that can use
    /// completions in batches (a deep queue of large requests, whose device is the bottleneck)
    /// saves the device an eventfd write per request. Without it the device notifies each
    /// one, and the driver sleeps again until there are `min`. `min` 0 is a [`Self::poll`]; a `min` above
    /// the requests in flight is [`Error::TooFewInFlight`], as it could never be met. The
    /// timeout ([`BlkOptions::timeout`]) is for each sleep.
    pub fn wait_for(
        &mut self,
        queue: u16,
        out: &mut Vec<BlkCompletion>,
        min: usize,
    ) -> Result<usize, Error> {
        let got = self.take_stashed(queue, out);
        let nq = self.num_queues();
        let in_flight = self
            .queues
            .get(usize::from(queue))
            .ok_or(Error::NoSuchQueue(queue, nq))?
            .in_flight;
        if min > got + in_flight {
            return Err(Error::TooFewInFlight {
                min,
                in_flight: got + in_flight,
            });
        }
        self.wait_ring(queue, out, min, got)
    }

    /// [`Self::wait_for`] without the blocking helpers' stash: until `got` (appended already)
    /// and those appended now make at least `min`.
    fn wait_ring(
        &mut self,
        queue: u16,
        out: &mut Vec<BlkCompletion>,
        min: usize,
        mut got: usize,
    ) -> Result<usize, Error> {
        // Polled until then before sleeping (see `BlkOptions::spin`); taken at the first look
        // that finds too few, unless the polls are backing off; `None` also once it is over.
        let mut spin_until: Option<Instant> = None;
        let mut spin_from = None;
        let mut first = true;
        loop {
            got += self.poll_ring(queue, out)?;
            let q = &mut self.queues[usize::from(queue)];
            if got >= min {
                if spin_from.is_some_and(|from| got > from) {
                    q.spin_backoff = 0;
                }
                return Ok(got);
            }
            if std::mem::take(&mut first) && !self.spin.is_zero() && q.in_flight > 1 {
                if q.spin_skip > 0 {
                    q.spin_skip -= 1;
                } else {
                    spin_until = Some(Instant::now() + self.spin);
                    spin_from = Some(got);
                }
            }
            if let Some(until) = spin_until {
                if Instant::now() < until {
                    std::hint::spin_loop();
                    continue;
                }
                spin_until = None;
                if spin_from.take() == Some(got) {
                    // In vain: sleep at once in the next waits, for longer each time.
                    q.spin_backoff = (q.spin_backoff.max(1) * 2).min(SPIN_BACKOFF_MAX);
                    q.spin_skip = q.spin_backoff;
                } else {
                    q.spin_backoff = 0;
                }
            }
            // Fewer than 2^16 are ever in flight (the queue's size bounds them).
            let need = u16::try_from(min - got).unwrap_or(u16::MAX);
            if q.vq.enable_notifications_after(need)? {
                continue;
            }
            match self.transport.wait(queue, self.timeout) {
                Err(e @ transport::Error::DeviceGone(_)) => {
                    self.recover_from(e.into())?;
                    // What the device completed before it went.
                    got += self.take_stashed(queue, out);
                }
                r => r?,
            }
        }
    }

    /// Submits one request on queue 0, kicks, and waits for its completion. Other completions
    /// seen meanwhile are kept for the next [`Self::poll`].
    ///
    /// After an error (a timeout, a device gone) the request may still be in flight, and the
    /// device may still write into the bounce buffer: the driver should then be dropped.
    fn run(&mut self, req: &Request<'_>) -> Result<BlkCompletion, Error> {
        self.submit_tagged(0, req, BLOCKING_TAG)?;
        self.kick(0)?;
        let mut out = Vec::new();
        loop {
            self.wait_ring(0, &mut out, 1, 0)?;
            let mut mine = None;
            for c in out.drain(..) {
                if c.tag == BLOCKING_TAG {
                    mine = Some(c);
                } else {
                    self.queues[0].stashed.push(c);
                }
            }
            if let Some(c) = mine {
                return match c.status {
                    Status::Ok => Ok(c),
                    s => Err(Error::Status(s)),
                };
            }
        }
    }

    /// The bounce buffer split into segments for a `len`-byte transfer.
    fn bounce_bufs(&self, len: u32) -> Vec<DataBuf> {
        let mut bufs = Vec::new();
        let mut off = 0u32;
        while off < len {
            let n = (len - off).min(self.segment_bytes);
            bufs.push(DataBuf {
                addr: self.bounce.unchecked_add(u64::from(off)),
                len: n,
            });
            off += n;
        }
        bufs
    }

    /// Bytes one blocking request moves at most.
    fn chunk_bytes(&self) -> u32 {
        let by_segments = (self.max_segments as u64 * u64::from(self.segment_bytes))
            .min(u64::from(u32::MAX)) as u32;
        self.bounce_bytes.min(by_segments) & !(SECTOR_SIZE as u32 - 1)
    }

    /// Reads `buf.len()` bytes (a multiple of 512) at `sector`, through the bounce buffer.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        if buf.is_empty() || buf.len() as u64 % SECTOR_SIZE != 0 {
            return Err(Error::BadLength(buf.len() as u64));
        }
        self.check_range(sector, buf.len() as u64 / SECTOR_SIZE)?;
        let chunk = self.chunk_bytes() as usize;
        let mut sector = sector;
        for part in buf.chunks_mut(chunk) {
            let bufs = self.bounce_bufs(part.len() as u32);
            self.run(&Request::Read {
                sector,
                bufs: &bufs,
            })?;
            self.mem
                .guest_memory()
                .read_slice(part, self.bounce)
                .map_err(Error::Access)?;
            sector += part.len() as u64 / SECTOR_SIZE;
        }
        Ok(())
    }

    /// Writes `buf` (a multiple of 512 bytes) at `sector`, through the bounce buffer.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        if buf.is_empty() || buf.len() as u64 % SECTOR_SIZE != 0 {
            return Err(Error::BadLength(buf.len() as u64));
        }
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(sector, buf.len() as u64 / SECTOR_SIZE)?;
        let chunk = self.chunk_bytes() as usize;
        let mut sector = sector;
        for part in buf.chunks(chunk) {
            self.mem
                .guest_memory()
                .write_slice(part, self.bounce)
                .map_err(Error::Access)?;
            let bufs = self.bounce_bufs(part.len() as u32);
            self.run(&Request::Write {
                sector,
                bufs: &bufs,
            })?;
            sector += part.len() as u64 / SECTOR_SIZE;
        }
        Ok(())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.run(&Request::Flush).map(|_| ())
    }

    /// Discards `sectors` sectors at `sector`.
    pub fn discard(&mut self, sector: u64, sectors: u32) -> Result<(), Error> {
        self.run(&Request::Discard { sector, sectors }).map(|_| ())
    }

    /// Writes zeroes over `sectors` sectors at `sector`, letting the device unmap if `unmap`.
    pub fn write_zeroes(&mut self, sector: u64, sectors: u32, unmap: bool) -> Result<(), Error> {
        self.run(&Request::WriteZeroes {
            sector,
            sectors,
            unmap,
        })
        .map(|_| ())
    }

    /// The device's serial (`VIRTIO_BLK_T_GET_ID`): 20 bytes, NUL-padded.
    pub fn get_id(&mut self) -> Result<[u8; 20], Error> {
        self.run(&Request::GetId {
            buf: DataBuf {
                addr: self.bounce,
                len: VIRTIO_BLK_ID_BYTES,
            },
        })?;
        let mut id = [0u8; 20];
        self.mem
            .guest_memory()
            .read_slice(&mut id, self.bounce)
            .map_err(Error::Access)?;
        Ok(id)
    }
}
