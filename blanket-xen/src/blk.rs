//! blkfront: the guest side of a Xen virtual block device (`io/blkif.h`).
//!
//! [`BlkFront::connect`] runs the handshake of `io/blkif.h` over xenbus:
//!
//! 1. read `<node>/backend` and `backend-id`, write `state` Initialising;
//! 2. wait for the back-end's InitWait, read what it offers before connecting (`max-ring-page-order`,
//!    `multi-queue-max-queues`);
//! 3. initialise the ring, grant it, allocate the event channel, and write `ring-ref`, `event-channel`
//!    and `protocol` in one transaction (retried on `EAGAIN`), then `state` Initialised;
//! 4. wait for the back-end's Connected, read `sectors`, `sector-size`, `info`, `feature-flush-cache`,
//!    `feature-discard` (`discard-secure`), `feature-max-indirect-segments`, `feature-persistent`, and
//!    write `state` Connected.
//!
//! Requests are built in bounce pages that the driver owns (the `pool` given to `connect`), granted to
//! the back-end for the request's lifetime: read and write (inline segments, or one indirect page of
//! segments when the back-end offers `feature-max-indirect-segments` and the request needs more than 11),
//! flush (`BLKIF_OP_FLUSH_DISKCACHE`) and discard. The caller's buffers are never granted, so a back-end
//! that keeps a grant mapped can only ever touch the driver's bounce page, which is then quarantined
//! until the back-end lets go.
//!
//! Each completion is checked against the driver's own record of the request: the `id` names a slot in
//! range, of the current generation, with a request in flight (no double completion), the `operation`
//! matches, and the status is a `BLKIF_RSP_*` value. Anything else is a typed [`BlkError`], and a ring whose
//! `rsp_prod` overflows ([`RingError::ResponseProdOverflow`](xen_abi::ring::RingError::ResponseProdOverflow)) stops the device.
//!
//! Rings of up to 16 pages are used (`ring-page-order`, lowered to the back-end's `max-ring-page-order`),
//! one queue (`multi-queue-max-queues` is read and checked, not used). Persistent grants
//! (`feature-persistent`) are used when [`BlkConfig::persistent_grants`] asks for them and the back-end
//! offers them: each bounce page is then granted once, writable, and kept granted until
//! [`BlkFront::close`]; otherwise every grant ends with its request.

use xen_abi::DomId;
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::blkif::{
    BLKIF_DISCARD_SECURE, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_SECTOR_SIZE,
    BLKIF_SEGS_PER_INDIRECT_FRAME, Blkif, BlkifLimits, BlkifRequest, BlkifRequestDiscard,
    BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, BlkifStatus, VdiskInfo,
    XEN_IO_PROTO_ABI_NATIVE,
};
use xen_abi::event_channel::EvtchnPort;
use xen_abi::grant_table::GrantRef;
use xen_abi::ring::{FrontRing, RingMemory, ring_entries};
use xen_abi::xenbus::XenbusState;
use zerocopy::IntoBytes;

use crate::front::{
    self, FrontError, backend_flag, backend_max_queues, backend_number, backend_u32,
};
use crate::platform::Platform;
use crate::shmem;
use crate::xenbus::{FrontendDevice, XBT_NIL, XenBus, XsPath, fmt_decimal, parse_u64};

/// The slots of a one-page blkif ring: 32.
pub const BLK_RING_SIZE: usize = ring_entries::<Blkif>(XEN_PAGE_SIZE) as usize;
/// The largest `ring-page-order` this driver uses (`XENBUS_MAX_RING_GRANT_ORDER` of Linux): 16 pages.
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// The most requests in flight at once (a ring of order 2 or more is capped here, to keep the driver's
/// state small for a `no_std` guest).
pub const MAX_SLOTS: usize = 128;
/// The most data pages one request may use (128 KiB).
pub const MAX_PAGES_PER_REQUEST: usize = 32;
const SECTORS_PER_PAGE: u64 = (XEN_PAGE_SIZE / BLKIF_SECTOR_SIZE as usize) as u64;

/// What can go wrong in blkfront.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlkError {
    /// The handshake or the shared ring failed (XenStore, the platform, the ring, a back-end node, the
    /// back-end's state); a back-end whose `rsp_prod` overflows stops the device.
    #[error(transparent)]
    Front(#[from] FrontError),
    /// The bounce pool cannot hold a single request.
    #[error(
        "bounce pool of {pages} pages is too small: one request needs {per_request} (set pages_per_request lower or give more pages)"
    )]
    PoolTooSmall {
        /// Pages given.
        pages: usize,
        /// Pages one request needs.
        per_request: usize,
    },
    /// Ring memory that does not hold `2^ring_page_order` pages, or an order above 4.
    #[error(
        "ring memory of {len} bytes cannot hold a ring of order {order} (2^order pages, order at most 4, page-aligned)"
    )]
    BadRingMemory {
        /// Its length.
        len: usize,
        /// The order asked for.
        order: u32,
    },
    /// A configuration value out of range.
    #[error("pages_per_request {pages} is not between 1 and {max}")]
    BadConfig {
        /// The value.
        pages: usize,
        /// The largest allowed.
        max: usize,
    },
    /// Every request slot is in flight (or quarantined).
    #[error("all {slots} request slots are in use: process completions first")]
    Busy {
        /// Slots.
        slots: usize,
    },
    /// A request outside the disk, of no sectors, or not aligned to `sector-size`.
    #[error(
        "request of {nr_sectors} sectors at sector {sector} is outside the disk of {disk_sectors} sectors or not aligned to sector-size {sector_size}"
    )]
    BadRange {
        /// First 512-byte sector.
        sector: u64,
        /// Length in 512-byte sectors.
        nr_sectors: u64,
        /// Disk size in 512-byte sectors.
        disk_sectors: u64,
        /// `sector-size`.
        sector_size: u32,
    },
    /// A request larger than one request can carry.
    #[error("request of {bytes} bytes exceeds the {max} bytes one request carries")]
    TooLarge {
        /// Bytes asked for.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A write, flush or discard to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// An operation the back-end did not offer.
    #[error("the back-end does not offer {feature}")]
    NotOffered {
        /// The feature node.
        feature: &'static str,
    },
    /// Hostile back-end: a response whose id names no slot of this driver.
    #[error("back-end answered id {id:#x}, which names no request slot (there are {slots})")]
    BadId {
        /// The id.
        id: u64,
        /// Slots.
        slots: usize,
    },
    /// Hostile back-end: a response for a request that is not in flight (never sent, or already answered).
    #[error(
        "back-end answered id {id:#x}, which is not in flight (a duplicate or stale completion)"
    )]
    NotOutstanding {
        /// The id.
        id: u64,
    },
    /// Hostile back-end: a response whose operation is not the request's.
    #[error(
        "back-end answered id {id:#x} with operation {got}, but the request was operation {want}"
    )]
    WrongOperation {
        /// The id.
        id: u64,
        /// The request's operation.
        want: u8,
        /// The response's.
        got: u8,
    },
    /// Hostile back-end: a status that is no `BLKIF_RSP_*` value; the request is completed as failed.
    #[error("back-end answered id {id:#x} with status {status}, which is no BLKIF_RSP_* value")]
    UnknownStatus {
        /// The id.
        id: u64,
        /// The status.
        status: i16,
    },
    /// The request failed (`BLKIF_RSP_ERROR`).
    #[error("the back-end failed the request (BLKIF_RSP_ERROR)")]
    IoError,
    /// The back-end does not support the request (`BLKIF_RSP_EOPNOTSUPP`).
    #[error("the back-end does not support the request (BLKIF_RSP_EOPNOTSUPP)")]
    NotSupported,
    /// The back-end still maps a page of the request after answering it: the page is quarantined.
    #[error(
        "back-end still maps a page of request {id:#x} after answering it; the page is quarantined"
    )]
    GrantStillMapped {
        /// The id.
        id: u64,
    },
    /// No completion within the timeout; the request stays in flight.
    #[error("no completion within {timeout_ns} ns; the request stays in flight")]
    Timeout {
        /// The timeout.
        timeout_ns: u64,
    },
    /// `take_completion` for a request that has not completed.
    #[error("request {id:#x} has not completed")]
    NotCompleted {
        /// The id.
        id: u64,
    },
    /// The caller's buffer is smaller than the data read.
    #[error("buffer of {available} bytes is too small for the {len} bytes read")]
    BufferTooSmall {
        /// Bytes read.
        len: usize,
        /// Buffer size.
        available: usize,
    },
    /// An earlier ring error stopped the device.
    #[error("the device is stopped by an earlier ring error")]
    Stopped,
}

front::from_front_causes!(BlkError);

/// How the driver is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkConfig {
    /// The most data pages of one request: 1 to [`MAX_PAGES_PER_REQUEST`]. Above 11 only when the back-end
    /// offers indirect requests.
    pub pages_per_request: usize,
    /// Timeout of every handshake step and blocking request, in nanoseconds.
    pub timeout_ns: u64,
    /// The `ring-page-order` wanted (0 to [`MAX_RING_PAGE_ORDER`]); the ring memory given to `connect` must
    /// hold `2^order` pages. The back-end's `max-ring-page-order` lowers it.
    pub ring_page_order: u32,
    /// Ask for persistent grants (`feature-persistent` 1): used when the back-end offers them too. Off by
    /// default, so that every grant ends with its request.
    pub persistent_grants: bool,
}

impl Default for BlkConfig {
    fn default() -> Self {
        Self {
            pages_per_request: BLKIF_MAX_SEGMENTS_PER_REQUEST as usize,
            timeout_ns: 5_000_000_000,
            ring_page_order: 0,
            persistent_grants: false,
        }
    }
}

/// The first `len` bytes of the caller's ring memory: the pages of the order actually used.
#[derive(Debug)]
pub struct RingPrefix<M> {
    mem: M,
    len: usize,
}

// SAFETY: a prefix of memory that `M` promises valid for atomic and volatile access; the pointer is `M`'s,
// and `len` never exceeds `M`'s length (checked in `BlkFront::connect`).
unsafe impl<M: RingMemory> RingMemory for RingPrefix<M> {
    fn as_ptr(&self) -> *mut u8 {
        self.mem.as_ptr()
    }
    fn len(&self) -> usize {
        self.len.min(self.mem.len())
    }
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.mem.mark_dirty(offset, len);
    }
}

/// What the back-end offers, as read during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkInfo {
    /// The size in 512-byte sectors (`sectors`).
    pub sectors: u64,
    /// The logical sector size in bytes (`sector-size`).
    pub sector_size: u32,
    /// `info` (`VDISK_*`).
    pub info: VdiskInfo,
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `discard-secure`.
    pub discard_secure: bool,
    /// `feature-max-indirect-segments` (0: none).
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `max-ring-page-order` (0 when absent).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues` (1 when absent).
    pub max_queues: u32,
}

impl BlkInfo {
    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.info.contains(VdiskInfo::READONLY)
    }
}

/// The id of a request submitted to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request.
    pub id: RequestId,
    /// The status the back-end gave (an unknown status is reported as `Error`).
    pub status: BlkifStatus,
    /// Bytes read into the caller's buffer (reads with status `Okay`), else 0.
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    InFlight,
    Done(BlkifStatus),
    /// Answered, but a page is still mapped by the back-end: not reused until it is let go.
    Quarantined,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    generation: u32,
    operation: u8,
    /// Bytes the request transfers (reads are copied out of the bounce pages on completion).
    bytes: usize,
    grefs: [GrantRef; MAX_PAGES_PER_REQUEST + 1],
    ngrefs: usize,
    /// With persistent grants: bit `i` set when page `i` of the slot is granted (its ref in `grefs[i]`).
    persistent: u64,
}

const FREE_SLOT: Slot = Slot {
    state: SlotState::Free,
    generation: 0,
    operation: 0,
    bytes: 0,
    grefs: [0; MAX_PAGES_PER_REQUEST + 1],
    ngrefs: 0,
    persistent: 0,
};

/// A connected blkfront.
pub struct BlkFront<P, M, B> {
    platform: P,
    ring: FrontRing<RingPrefix<M>, Blkif>,
    ring_refs: [GrantRef; 1 << MAX_RING_PAGE_ORDER],
    ring_order: u32,
    port: EvtchnPort,
    device: FrontendDevice,
    handle: u16,
    info: BlkInfo,
    pool: B,
    pages_per_slot: usize,
    max_segments: usize,
    indirect: bool,
    nr_slots: usize,
    slots: [Slot; MAX_SLOTS],
    timeout_ns: u64,
    stopped: bool,
    persistent: bool,
}

impl<P, M, B> core::fmt::Debug for BlkFront<P, M, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkFront")
            .field("device", &self.device)
            .field("info", &self.info)
            .field("ring_refs", &&self.ring_refs[..1 << self.ring_order])
            .field("port", &self.port)
            .field("nr_slots", &self.nr_slots)
            .field("max_segments", &self.max_segments)
            .finish_non_exhaustive()
    }
}

impl<P: Platform, M: RingMemory, B: RingMemory> BlkFront<P, M, B> {
    /// Connects to the back-end of the vbd at `node` (for example `device/vbd/768`), with `ring_page` (one
    /// page of this domain's memory) as the shared ring and `pool` (pages of this domain's memory) as bounce
    /// pages: `pages_per_request` pages per request slot, plus one for indirect segments when needed.
    ///
    /// On an error after the ring was published, its grants are ended where the back-end let go; a page it
    /// still maps stays granted and must not be reused (treat the ring memory as lost to the back-end).
    pub fn connect<XM: RingMemory>(
        platform: P,
        xb: &mut XenBus<P, XM>,
        node: &[u8],
        ring_page: M,
        pool: B,
        config: BlkConfig,
    ) -> Result<Self, BlkError> {
        if config.pages_per_request == 0 || config.pages_per_request > MAX_PAGES_PER_REQUEST {
            return Err(BlkError::BadConfig {
                pages: config.pages_per_request,
                max: MAX_PAGES_PER_REQUEST,
            });
        }
        let want_order = config.ring_page_order;
        if want_order > MAX_RING_PAGE_ORDER
            || ring_page.len() < XEN_PAGE_SIZE << want_order
            || (ring_page.as_ptr() as usize) % XEN_PAGE_SIZE != 0
        {
            return Err(BlkError::BadRingMemory {
                len: ring_page.len(),
                order: want_order,
            });
        }
        let timeout = config.timeout_ns;
        let mut dev = FrontendDevice::probe(xb, node)?;
        let handle = node
            .rsplit(|&b| b == b'/')
            .next()
            .and_then(|n| parse_u64(n).ok())
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(0);
        let backend_id: DomId = dev.backend_id();

        // 2. The back-end publishes its features and waits for us.
        front::wait_for_backend_features(xb, &mut dev, timeout)?;
        let max_ring_page_order = backend_u32(xb, &dev, "max-ring-page-order", 0)?;
        let max_queues = backend_max_queues(xb, &dev)?;

        // 3. The ring, its grants and event channel, published in one transaction.
        let order = want_order.min(max_ring_page_order);
        let ring = FrontRing::<RingPrefix<M>, Blkif>::new(RingPrefix {
            mem: ring_page,
            len: XEN_PAGE_SIZE << order,
        })?;
        let nr_ring_pages = 1usize << order;
        let mut ring_refs = [0; 1 << MAX_RING_PAGE_ORDER];
        let base = ring.memory().as_ptr() as usize;
        let mut granted = 0;
        let mut port = None;
        let setup = (|| -> Result<(), BlkError> {
            for (i, r) in ring_refs.iter_mut().take(nr_ring_pages).enumerate() {
                let frame = platform.frame_of(base + i * XEN_PAGE_SIZE)?;
                *r = platform.grant_access(backend_id, frame, false)?;
                granted += 1;
            }
            port = Some(platform.alloc_unbound(backend_id)?);
            Ok(())
        })();
        let cleanup = |platform: &P, port: Option<EvtchnPort>, refs: &[GrantRef]| {
            if let Some(p) = port {
                let _ = platform.close(p);
            }
            for r in refs {
                let _ = platform.end_access(*r);
            }
        };
        if let Err(e) = setup {
            cleanup(&platform, port, &ring_refs[..granted]);
            return Err(e);
        }
        let port = port.unwrap_or(0);
        let refs = &ring_refs[..nr_ring_pages];
        if let Err(e) = Self::publish(xb, &dev, refs, order, port, config.persistent_grants) {
            cleanup(&platform, Some(port), refs);
            return Err(e);
        }
        if let Err(e) = dev.switch_state(xb, XBT_NIL, XenbusState::Initialised) {
            cleanup(&platform, Some(port), refs);
            return Err(e.into());
        }

        // 4. The back-end connects; read the disk's properties.
        let result = (|| {
            front::wait_for_backend_connected(xb, &mut dev, timeout)?;
            Self::read_info(xb, &dev, max_ring_page_order, max_queues)
        })();
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let _ = dev.switch_state(xb, XBT_NIL, XenbusState::Closing);
                cleanup(&platform, Some(port), refs);
                return Err(e);
            }
        };

        let indirect = info.max_indirect_segments > u32::from(BLKIF_MAX_SEGMENTS_PER_REQUEST)
            && config.pages_per_request > usize::from(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let max_segments = if indirect {
            config
                .pages_per_request
                .min(info.max_indirect_segments as usize)
                .min(BLKIF_SEGS_PER_INDIRECT_FRAME)
        } else {
            config
                .pages_per_request
                .min(usize::from(BLKIF_MAX_SEGMENTS_PER_REQUEST))
        };
        let pages_per_slot = max_segments + usize::from(indirect);
        let pool_pages = pool.len() / XEN_PAGE_SIZE;
        let nr_slots = (pool_pages / pages_per_slot)
            .min(ring.size() as usize)
            .min(MAX_SLOTS);
        if nr_slots == 0 || (pool.as_ptr() as usize) % XEN_PAGE_SIZE != 0 {
            let _ = dev.switch_state(xb, XBT_NIL, XenbusState::Closing);
            cleanup(&platform, Some(port), refs);
            return Err(BlkError::PoolTooSmall {
                pages: pool_pages,
                per_request: pages_per_slot,
            });
        }
        if let Err(e) = dev.switch_state(xb, XBT_NIL, XenbusState::Connected) {
            cleanup(&platform, Some(port), refs);
            return Err(e.into());
        }
        Ok(Self {
            platform,
            ring,
            ring_refs,
            ring_order: order,
            port,
            device: dev,
            handle,
            info,
            pool,
            pages_per_slot,
            max_segments,
            indirect,
            nr_slots,
            slots: [FREE_SLOT; MAX_SLOTS],
            timeout_ns: timeout,
            stopped: false,
            persistent: config.persistent_grants && info.persistent,
        })
    }

    fn publish<XM: RingMemory>(
        xb: &mut XenBus<P, XM>,
        dev: &FrontendDevice,
        ring_refs: &[GrantRef],
        order: u32,
        port: EvtchnPort,
        persistent: bool,
    ) -> Result<(), BlkError> {
        let node = dev.node();
        let (ec, proto, pers, ord) = (
            node.join(b"event-channel")?,
            node.join(b"protocol")?,
            node.join(b"feature-persistent")?,
            node.join(b"ring-page-order")?,
        );
        let mut b = [0u8; 20];
        let port_s = fmt_decimal(u64::from(port), &mut b);
        Ok(front::in_transaction(xb, |xb, tx| {
            if order == 0 {
                let mut a = [0u8; 20];
                let r = fmt_decimal(u64::from(ring_refs[0]), &mut a);
                xb.write(tx, node.join(b"ring-ref")?.as_bytes(), r)?;
            } else {
                let mut o = [0u8; 20];
                xb.write(tx, ord.as_bytes(), fmt_decimal(u64::from(order), &mut o))?;
                for (i, gref) in ring_refs.iter().enumerate() {
                    let (mut a, mut k) = ([0u8; 20], [0u8; 20]);
                    let key =
                        XsPath::<32>::from_parts(&[b"ring-ref", fmt_decimal(i as u64, &mut k)])?;
                    let r = fmt_decimal(u64::from(*gref), &mut a);
                    xb.write(tx, node.join(key.as_bytes())?.as_bytes(), r)?;
                }
            }
            xb.write(tx, ec.as_bytes(), port_s)?;
            xb.write(tx, proto.as_bytes(), XEN_IO_PROTO_ABI_NATIVE.as_bytes())?;
            xb.write(tx, pers.as_bytes(), if persistent { b"1" } else { b"0" })
        })?)
    }

    fn read_info<XM: RingMemory>(
        xb: &mut XenBus<P, XM>,
        dev: &FrontendDevice,
        max_ring_page_order: u32,
        max_queues: u32,
    ) -> Result<BlkInfo, BlkError> {
        let missing = |key| FrontError::BadNode {
            key,
            what: "missing",
        };
        let sectors = backend_number(xb, dev, "sectors")?.ok_or(missing("sectors"))?;
        if backend_number(xb, dev, "sector-size")?.is_none() {
            return Err(missing("sector-size").into());
        }
        let sector_size = backend_u32(xb, dev, "sector-size", 0)?;
        if BlkifLimits::new(sectors, sector_size).is_err() {
            return Err(FrontError::BadNode {
                key: "sector-size",
                what: "not a power of two from 512 to 4096",
            }
            .into());
        }
        let info = backend_u32(xb, dev, "info", 0)?;
        let flush_cache = backend_flag(xb, dev, "feature-flush-cache")?;
        let discard = backend_flag(xb, dev, "feature-discard")?;
        let discard_secure = discard && backend_flag(xb, dev, "discard-secure")?;
        let max_indirect_segments = backend_u32(xb, dev, "feature-max-indirect-segments", 0)?;
        let persistent = backend_flag(xb, dev, "feature-persistent")?;
        Ok(BlkInfo {
            sectors,
            sector_size,
            info: VdiskInfo::from_bits_retain(info),
            flush_cache,
            discard,
            discard_secure,
            max_indirect_segments,
            persistent,
            max_ring_page_order,
            max_queues,
        })
    }

    /// Sets the timeout of the blocking calls from now on, in nanoseconds.
    pub fn set_timeout_ns(&mut self, timeout_ns: u64) {
        self.timeout_ns = timeout_ns;
    }

    /// What the back-end offers.
    pub fn info(&self) -> &BlkInfo {
        &self.info
    }

    /// The xenbus device.
    pub fn device(&self) -> &FrontendDevice {
        &self.device
    }

    /// The most bytes one request carries.
    pub fn max_request_bytes(&self) -> usize {
        self.max_segments * XEN_PAGE_SIZE
    }

    /// Whether requests above 11 segments go out as indirect requests.
    pub fn uses_indirect(&self) -> bool {
        self.indirect
    }

    /// Request slots (requests that can be in flight at once).
    pub fn nr_slots(&self) -> usize {
        self.nr_slots
    }

    /// The ring's (first) grant reference and the event channel.
    pub fn ring_ref_and_port(&self) -> (GrantRef, EvtchnPort) {
        (self.ring_refs[0], self.port)
    }

    /// The grant references of the ring's pages.
    pub fn ring_refs(&self) -> &[GrantRef] {
        &self.ring_refs[..1 << self.ring_order]
    }

    /// The `ring-page-order` in use.
    pub fn ring_page_order(&self) -> u32 {
        self.ring_order
    }

    /// Whether persistent grants are in use.
    pub fn uses_persistent_grants(&self) -> bool {
        self.persistent
    }

    /// The ring's slots.
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::InFlight)
            .count()
    }

    fn check_range(&self, sector: u64, nr_sectors: u64) -> Result<(), BlkError> {
        let align = u64::from(self.info.sector_size / BLKIF_SECTOR_SIZE) - 1;
        let ok = nr_sectors > 0
            && sector & align == 0
            && nr_sectors & align == 0
            && sector
                .checked_add(nr_sectors)
                .is_some_and(|end| end <= self.info.sectors);
        if ok {
            Ok(())
        } else {
            Err(BlkError::BadRange {
                sector,
                nr_sectors,
                disk_sectors: self.info.sectors,
                sector_size: self.info.sector_size,
            })
        }
    }

    fn free_slot(&mut self) -> Result<usize, BlkError> {
        if self.stopped {
            return Err(BlkError::Stopped);
        }
        if self.ring.is_full() {
            return Err(BlkError::Busy {
                slots: self.nr_slots,
            });
        }
        self.slots
            .iter()
            .take(self.nr_slots)
            .position(|s| s.state == SlotState::Free)
            .ok_or(BlkError::Busy {
                slots: self.nr_slots,
            })
    }

    fn page_offset(&self, slot: usize, page: usize) -> usize {
        (slot * self.pages_per_slot + page) * XEN_PAGE_SIZE
    }

    fn id_of(&self, slot: usize) -> u64 {
        (u64::from(self.slots[slot].generation) << 32) | slot as u64
    }

    /// Grants the slot's first `n` pages (and records the refs); on failure ends what was granted.
    fn grant_pages(&mut self, slot: usize, n: usize, readonly: bool) -> Result<(), BlkError> {
        if self.persistent {
            for page in 0..n {
                self.persistent_page(slot, page)?;
            }
            return Ok(());
        }
        let backend = self.device.backend_id();
        self.slots[slot].ngrefs = 0;
        for page in 0..n {
            let addr = self.pool.as_ptr() as usize + self.page_offset(slot, page);
            let granted = self
                .platform
                .frame_of(addr)
                .and_then(|f| self.platform.grant_access(backend, f, readonly));
            match granted {
                Ok(gref) => {
                    let s = &mut self.slots[slot];
                    s.grefs[s.ngrefs] = gref;
                    s.ngrefs += 1;
                }
                Err(e) => {
                    self.end_grants(slot);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// With persistent grants: the ref of page `page` of the slot, granted (writable) the first time.
    fn persistent_page(&mut self, slot: usize, page: usize) -> Result<GrantRef, BlkError> {
        let s = self.slots[slot];
        if s.persistent & (1 << page) != 0 {
            return Ok(s.grefs[page]);
        }
        let addr = self.pool.as_ptr() as usize + self.page_offset(slot, page);
        let backend = self.device.backend_id();
        let gref = self
            .platform
            .frame_of(addr)
            .and_then(|f| self.platform.grant_access(backend, f, false))?;
        let s = &mut self.slots[slot];
        s.grefs[page] = gref;
        s.persistent |= 1 << page;
        Ok(gref)
    }

    /// Ends every grant of the slot; false if some page is still mapped (those refs are kept).
    fn end_grants(&mut self, slot: usize) -> bool {
        if self.persistent {
            // Kept for the next request; ended by `close`.
            return true;
        }
        let s = &mut self.slots[slot];
        let mut kept = 0;
        for i in 0..s.ngrefs {
            let gref = s.grefs[i];
            if self.platform.end_access(gref).is_err() {
                s.grefs[kept] = gref;
                kept += 1;
            }
        }
        s.ngrefs = kept;
        kept == 0
    }

    fn push(
        &mut self,
        slot: usize,
        req: &BlkifRequest,
        operation: u8,
        bytes: usize,
    ) -> Result<RequestId, BlkError> {
        let id = self.id_of(slot);
        let mut req = *req;
        req.id = id;
        if let Err(e) = self.ring.put_request(&req) {
            // Not sent: give the pages back.
            self.end_grants(slot);
            return Err(e.into());
        }
        let s = &mut self.slots[slot];
        s.state = SlotState::InFlight;
        s.operation = operation;
        s.bytes = bytes;
        if self.ring.push_requests_and_check_notify() {
            self.platform.notify(self.port)?;
        }
        Ok(RequestId(id))
    }

    fn submit_rw(
        &mut self,
        write: Option<&[u8]>,
        sector: u64,
        bytes: usize,
    ) -> Result<RequestId, BlkError> {
        let nr_sectors = (bytes / BLKIF_SECTOR_SIZE as usize) as u64;
        if bytes % BLKIF_SECTOR_SIZE as usize != 0 {
            return Err(BlkError::BadRange {
                sector,
                nr_sectors,
                disk_sectors: self.info.sectors,
                sector_size: self.info.sector_size,
            });
        }
        self.check_range(sector, nr_sectors)?;
        if bytes > self.max_request_bytes() {
            return Err(BlkError::TooLarge {
                bytes,
                max: self.max_request_bytes(),
            });
        }
        let slot = self.free_slot()?;
        let npages = bytes.div_ceil(XEN_PAGE_SIZE);
        if let Some(data) = write {
            shmem::write(&self.pool, self.page_offset(slot, 0), data);
        }
        let op = if write.is_some() {
            BLKIF_OP_WRITE
        } else {
            BLKIF_OP_READ
        };
        // The back-end reads the pages of a write and writes those of a read.
        self.grant_pages(slot, npages, write.is_some())?;
        let mut segs = [BlkifRequestSegment::new(0, 0, 0); MAX_PAGES_PER_REQUEST];
        let mut left = nr_sectors;
        for (i, seg) in segs.iter_mut().take(npages).enumerate() {
            let n = left.min(SECTORS_PER_PAGE);
            *seg = BlkifRequestSegment::new(self.slots[slot].grefs[i], 0, (n - 1) as u8);
            left -= n;
        }
        let req = if npages <= usize::from(BLKIF_MAX_SEGMENTS_PER_REQUEST) {
            BlkifRequest::with_segments(op, self.handle, 0, sector, &segs[..npages])
                .unwrap_or_else(|_| BlkifRequest::new(op, self.handle, 0, sector))
        } else {
            // One indirect page, the slot's last, holds the segments.
            let ind = self.pages_per_slot - 1;
            shmem::write(
                &self.pool,
                self.page_offset(slot, ind),
                segs[..npages].as_bytes(),
            );
            let gref = if self.persistent {
                self.persistent_page(slot, ind)?
            } else {
                let addr = self.pool.as_ptr() as usize + self.page_offset(slot, ind);
                let backend = self.device.backend_id();
                let gref = match self
                    .platform
                    .frame_of(addr)
                    .and_then(|f| self.platform.grant_access(backend, f, true))
                {
                    Ok(g) => g,
                    Err(e) => {
                        self.end_grants(slot);
                        return Err(e.into());
                    }
                };
                let s = &mut self.slots[slot];
                s.grefs[s.ngrefs] = gref;
                s.ngrefs += 1;
                gref
            };
            let mut grefs = [0; 8];
            grefs[0] = gref;
            BlkifRequestIndirect::new(op, npages as u16, self.handle, 0, sector, grefs).to_request()
        };
        self.push(slot, &req, op, bytes)
    }

    /// Submits a read of `bytes` bytes from 512-byte sector `sector`; the data is copied out by
    /// [`take_completion`](Self::take_completion).
    pub fn submit_read(&mut self, sector: u64, bytes: usize) -> Result<RequestId, BlkError> {
        self.submit_rw(None, sector, bytes)
    }

    /// Submits a write of `data` at 512-byte sector `sector` (the data is copied into bounce pages now).
    pub fn submit_write(&mut self, sector: u64, data: &[u8]) -> Result<RequestId, BlkError> {
        if self.info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        self.submit_rw(Some(data), sector, data.len())
    }

    /// Submits a cache flush (`BLKIF_OP_FLUSH_DISKCACHE`, no data).
    pub fn submit_flush(&mut self) -> Result<RequestId, BlkError> {
        if self.info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        if !self.info.flush_cache {
            return Err(BlkError::NotOffered {
                feature: "feature-flush-cache",
            });
        }
        let slot = self.free_slot()?;
        if !self.persistent {
            self.slots[slot].ngrefs = 0;
        }
        let req = BlkifRequest::new(BLKIF_OP_FLUSH_DISKCACHE, self.handle, 0, 0);
        self.push(slot, &req, BLKIF_OP_FLUSH_DISKCACHE, 0)
    }

    /// Submits a discard of `nr_sectors` 512-byte sectors from `sector`; `secure` asks for a secure erase
    /// (only sent when the back-end offers `discard-secure`).
    pub fn submit_discard(
        &mut self,
        sector: u64,
        nr_sectors: u64,
        secure: bool,
    ) -> Result<RequestId, BlkError> {
        if self.info.read_only() {
            return Err(BlkError::ReadOnly);
        }
        if !self.info.discard {
            return Err(BlkError::NotOffered {
                feature: "feature-discard",
            });
        }
        if secure && !self.info.discard_secure {
            return Err(BlkError::NotOffered {
                feature: "discard-secure",
            });
        }
        self.check_range(sector, nr_sectors)?;
        let slot = self.free_slot()?;
        if !self.persistent {
            self.slots[slot].ngrefs = 0;
        }
        let flag = if secure { BLKIF_DISCARD_SECURE } else { 0 };
        let req = BlkifRequestDiscard::new(self.handle, 0, sector, nr_sectors, flag).to_request();
        self.push(slot, &req, BLKIF_OP_DISCARD, 0)
    }

    /// Checks one response against the slot it names and completes that slot.
    fn complete(&mut self, rsp: &BlkifResponse) -> Result<(), BlkError> {
        let id = rsp.id;
        let slot = (id & 0xffff_ffff) as usize;
        if slot >= self.nr_slots {
            return Err(BlkError::BadId {
                id,
                slots: self.nr_slots,
            });
        }
        let s = self.slots[slot];
        if s.state != SlotState::InFlight || u64::from(s.generation) != id >> 32 {
            return Err(BlkError::NotOutstanding { id });
        }
        if rsp.operation != s.operation {
            // Not completed: the real answer may still come; the back-end is broken either way.
            return Err(BlkError::WrongOperation {
                id,
                want: s.operation,
                got: rsp.operation,
            });
        }
        let status = BlkifStatus::try_from(rsp.status);
        let all_ended = self.end_grants(slot);
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        if !all_ended {
            s.state = SlotState::Quarantined;
            return Err(BlkError::GrantStillMapped { id });
        }
        match status {
            Ok(st) => {
                s.state = SlotState::Done(st);
                Ok(())
            }
            Err(_) => {
                s.state = SlotState::Done(BlkifStatus::Error);
                Err(BlkError::UnknownStatus {
                    id,
                    status: rsp.status,
                })
            }
        }
    }

    /// Takes the responses the back-end published, checks each, and records the completions. Returns how
    /// many requests completed; the first hostile response is returned as an error after the ring is
    /// drained (call again to go on). A ring error stops the device.
    pub fn process(&mut self) -> Result<usize, BlkError> {
        if self.stopped {
            return Err(BlkError::Stopped);
        }
        let mut done = 0;
        let mut first_err = None;
        // Bounded: at most the ring's in-flight requests can be answered (the ring checks rsp_prod), and
        // each round consumes one.
        loop {
            match self.ring.pop_response() {
                Err(e) => {
                    self.stopped = true;
                    return Err(e.into());
                }
                Ok(Some(rsp)) => match self.complete(&rsp) {
                    Ok(()) => done += 1,
                    Err(e) => {
                        if matches!(e, BlkError::UnknownStatus { .. }) {
                            done += 1;
                        }
                        first_err.get_or_insert(e);
                    }
                },
                Ok(None) => match self.ring.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.stopped = true;
                        return Err(e.into());
                    }
                },
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Whether request `id` has completed (after [`process`](Self::process)).
    pub fn is_completed(&self, id: RequestId) -> bool {
        let slot = (id.0 & 0xffff_ffff) as usize;
        self.slots.get(slot).is_some_and(|s| {
            matches!(s.state, SlotState::Done(_))
                && u64::from(s.generation.wrapping_sub(1)) == id.0 >> 32
        })
    }

    /// Takes the completion of request `id`, copying a read's data into `out`, and frees its slot.
    pub fn take_completion(
        &mut self,
        id: RequestId,
        out: &mut [u8],
    ) -> Result<Completion, BlkError> {
        if !self.is_completed(id) {
            return Err(BlkError::NotCompleted { id: id.0 });
        }
        let slot = (id.0 & 0xffff_ffff) as usize;
        let s = self.slots[slot];
        let SlotState::Done(status) = s.state else {
            return Err(BlkError::NotCompleted { id: id.0 });
        };
        let mut bytes = 0;
        if s.operation == BLKIF_OP_READ && status == BlkifStatus::Okay {
            let available = out.len();
            let Some(dst) = out.get_mut(..s.bytes) else {
                return Err(BlkError::BufferTooSmall {
                    len: s.bytes,
                    available,
                });
            };
            shmem::read(&self.pool, self.page_offset(slot, 0), dst);
            bytes = s.bytes;
        }
        self.slots[slot].state = SlotState::Free;
        Ok(Completion { id, status, bytes })
    }

    /// Tries again to end the grants of quarantined requests; returns how many slots were freed.
    pub fn retry_quarantined(&mut self) -> usize {
        let mut freed = 0;
        for slot in 0..self.nr_slots {
            if self.slots[slot].state == SlotState::Quarantined && self.end_grants(slot) {
                self.slots[slot].state = SlotState::Free;
                freed += 1;
            }
        }
        freed
    }

    /// Waits until request `id` completes (processing every response meanwhile), within the timeout.
    pub fn wait_for(&mut self, id: RequestId) -> Result<(), BlkError> {
        let deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
        // Bounded by the deadline.
        loop {
            self.process()?;
            if self.is_completed(id) {
                return Ok(());
            }
            let now = self.platform.now_ns();
            if now >= deadline {
                return Err(BlkError::Timeout {
                    timeout_ns: self.timeout_ns,
                });
            }
            self.platform.wait(self.port, deadline - now)?;
        }
    }

    fn finish(&mut self, id: RequestId, out: &mut [u8]) -> Result<usize, BlkError> {
        self.wait_for(id)?;
        let c = self.take_completion(id, out)?;
        match c.status {
            BlkifStatus::Okay => Ok(c.bytes),
            BlkifStatus::EOpNotSupp => Err(BlkError::NotSupported),
            _ => Err(BlkError::IoError),
        }
    }

    /// Reads `buf.len()` bytes from 512-byte sector `sector`, waiting for the completion.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let id = self.submit_read(sector, buf.len())?;
        self.finish(id, buf).map(|_| ())
    }

    /// Writes `data` at 512-byte sector `sector`, waiting for the completion.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        let id = self.submit_write(sector, data)?;
        self.finish(id, &mut []).map(|_| ())
    }

    /// Flushes the back-end's cache, waiting for the completion.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        let id = self.submit_flush()?;
        self.finish(id, &mut []).map(|_| ())
    }

    /// Discards sectors, waiting for the completion.
    pub fn discard(&mut self, sector: u64, nr_sectors: u64, secure: bool) -> Result<(), BlkError> {
        let id = self.submit_discard(sector, nr_sectors, secure)?;
        self.finish(id, &mut []).map(|_| ())
    }

    /// Closes the device: `state` Closing, then Closed, the event channel closed, and the ring's grants and
    /// any persistent grants ended (if the back-end still maps one of them, the grant error is returned and
    /// that memory must not be reused).
    pub fn close<XM: RingMemory>(mut self, xb: &mut XenBus<P, XM>) -> Result<(), BlkError> {
        front::close_device(xb, &mut self.device, self.timeout_ns)?;
        self.platform.close(self.port)?;
        let mut first = Ok(());
        for slot in 0..self.nr_slots {
            let s = self.slots[slot];
            for page in 0..self.pages_per_slot {
                if s.persistent & (1 << page) != 0
                    && let Err(e) = self.platform.end_access(s.grefs[page])
                    && first.is_ok()
                {
                    first = Err(e.into());
                }
            }
        }
        for r in &self.ring_refs[..1 << self.ring_order] {
            self.platform.end_access(*r)?;
        }
        first
    }
}
