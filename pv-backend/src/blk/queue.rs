//! One blkif ring served: requests copied out once, validated with `xen_abi::blkif`, turned into
//! [`IoRequest`]s on granted pages, answered in the slot.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use xen_abi::DomId;
use xen_abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BLKIF_SECTOR_SIZE, BLKIF_SEGS_PER_INDIRECT_FRAME, Blkif, BlkifDirection, BlkifLimits,
    BlkifOperation, BlkifProtocol, BlkifRequest, BlkifRequestSegment, BlkifResponse, BlkifX86_32,
    CheckedSegment, x86_32,
};
use xen_abi::grant_table::GrantRef;
use xen_abi::ring::{BackRing, RingError, RingIdx};
use zerocopy::FromBytes;

use super::device::{BlockInfo, BlockQueue, IoBuf, IoCompletion, IoOp, IoRequest};
use crate::backend::{
    Doorbell, EventChannel, GrantAccess, GrantAccessMode, GrantMapping, GrantedRing,
};

/// Counters of one queue, shared with whoever wants to watch it.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Requests taken off the ring.
    pub requests: AtomicU64,
    /// Responses put on the ring.
    pub responses: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
    /// Events sent to the front end.
    pub notifications: AtomicU64,
    /// Times the queue went to sleep on its doorbell.
    pub sleeps: AtomicU64,
}

impl QueueStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// A snapshot: (requests, responses, errors, notifications, sleeps).
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.responses.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.notifications.load(Ordering::Relaxed),
            self.sleeps.load(Ordering::Relaxed),
        )
    }
}

/// A blkif ring of either layout.
#[derive(Debug)]
enum AnyRing {
    Native(BackRing<GrantedRing, Blkif>),
    X86_32(BackRing<GrantedRing, BlkifX86_32>),
}

impl AnyRing {
    fn pop(&mut self) -> Result<Option<BlkifRequest>, RingError> {
        match self {
            Self::Native(r) => r.pop_request(),
            Self::X86_32(r) => Ok(r.pop_request()?.map(|q| q.to_native())),
        }
    }
    fn put(&mut self, rsp: &BlkifResponse) -> Result<(), RingError> {
        match self {
            Self::Native(r) => r.put_response(rsp),
            Self::X86_32(r) => r.put_response(&x86_32::BlkifResponse::from_native(rsp)),
        }
    }
    fn push_and_check_notify(&mut self) -> bool {
        match self {
            Self::Native(r) => r.push_responses_and_check_notify(),
            Self::X86_32(r) => r.push_responses_and_check_notify(),
        }
    }
    fn final_check(&mut self) -> Result<bool, RingError> {
        match self {
            Self::Native(r) => r.final_check_for_requests(),
            Self::X86_32(r) => r.final_check_for_requests(),
        }
    }
    fn size(&self) -> u32 {
        match self {
            Self::Native(r) => r.size(),
            Self::X86_32(r) => r.size(),
        }
    }
}

/// What a queue needs to know besides its ring.
#[derive(Clone, Copy, Debug)]
pub struct QueueParams {
    /// What requests are checked against.
    pub limits: BlkifLimits,
    /// Keep grants mapped across requests (`feature-persistent`, both sides).
    pub persistent: bool,
    /// At most this many persistent grants per queue (Linux's `max_persistent_grants`, 1056).
    pub max_persistent_grants: usize,
    /// How long an idle queue keeps looking at the ring and the device before it sleeps.
    pub poll_time: Duration,
}

/// How long an idle queue polls before it sleeps, adapted as KVM's halt polling adapts its window
/// (`virt/kvm/kvm_main.c`: `grow_halt_poll_ns`, `shrink_halt_poll_ns`): after a sleep that ended within
/// the maximum (a longer poll would have seen the work without a wake-up) the window doubles, from
/// 10 µs, up to the maximum; after one that outlasted the maximum (polling would not have helped) it
/// halves, to zero below 10 µs. A poll that finds work leaves it as it is. So a queue whose waits are
/// longer than the maximum (a disk slower than the window, a front end that thinks) stops spending a CPU
/// on polls that never pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PollWindow {
    current: Duration,
    max: Duration,
}

impl PollWindow {
    const START: Duration = Duration::from_micros(10);

    fn new(max: Duration) -> Self {
        Self { current: max, max }
    }

    fn current(&self) -> Duration {
        self.current
    }

    /// The queue slept, and was idle for `idle` in all (its poll and its sleep).
    fn slept(&mut self, idle: Duration) {
        if idle > self.max {
            self.current /= 2;
            if self.current < Self::START {
                self.current = Duration::ZERO;
            }
        } else {
            self.current = (self.current * 2).max(Self::START).min(self.max);
        }
    }
}

/// Why a queue stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The front end broke the ring (its `req_prod` overflowed or went back).
    #[error("domain {domid}: the front end broke the ring: {source}")]
    Ring {
        /// The front end.
        domid: DomId,
        /// What it did.
        #[source]
        source: RingError,
    },
    /// The ring has no slot.
    #[error("the ring memory holds no slot")]
    Empty,
}

struct Inflight {
    id: u64,
    operation: u8,
    _mappings: Vec<GrantMapping>,
    /// Flush after this write completes (barrier and flush-cache with data).
    then_flush: bool,
    /// It changes the disk (a write, discard or flush): a barrier waits for it.
    write: bool,
}

/// A barrier waiting for the writes before it to finish.
struct Deferred {
    id: u64,
    operation: u8,
    direction_data: Option<(u64, Vec<CheckedSegment>)>,
}

/// Persistent grants with references below this are also found by index
/// (`QueueServer::persistent_pages`, at most this many words); above it, in the hash map only.
const DENSE_GREFS: usize = 1 << 15;

/// One blkif ring and the device queue behind it.
pub struct QueueServer {
    domid: DomId,
    ring: AnyRing,
    grants: Arc<dyn GrantAccess>,
    /// The device queue (blkback's inline mode, `super::inline`, quiets, arms and waits in it too).
    pub(super) dev: Box<dyn BlockQueue>,
    evtchn: Arc<dyn EventChannel>,
    doorbell: Arc<Doorbell>,
    params: QueueParams,
    info: BlockInfo,
    inflight: super::TagMap<Inflight>,
    next_tag: u64,
    persistent: super::GrefMap<GrantMapping>,
    /// The page address of each persistent grant below [`DENSE_GREFS`], indexed by its grant
    /// reference (0: none): a front end's buffer grants are mostly consecutive small numbers, so the
    /// 256 segments of a 1 MiB request are looked up in a few cache lines instead of 256 probes into
    /// the hash map (measured: the probe's load was four fifths of `start_rw`'s time). Grown on
    /// demand, so at most `DENSE_GREFS` words per queue whatever the front end sends.
    persistent_pages: Vec<usize>,
    /// A barrier waiting for earlier writes.
    deferred: Option<Deferred>,
    /// The barrier at the device (its write, then its flush).
    ordered_tag: Option<u64>,
    /// Requests that change the disk, taken off the ring while a barrier is pending or at the device:
    /// they start, in order, when it completes. Bounded by the ring: each is a consumed request not yet
    /// answered.
    held: std::collections::VecDeque<BlkifRequest>,
    batch: Vec<IoRequest>,
    completions: Vec<IoCompletion>,
    unpushed: bool,
    stats: Arc<QueueStats>,
    /// How long to poll while requests are in flight (see [`QueueServer::with_in_flight_poll_time`]).
    in_flight_poll: Duration,
}

impl std::fmt::Debug for QueueServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueServer")
            .field("domid", &self.domid)
            .field("ring", &self.ring)
            .field("inflight", &self.inflight.len())
            .finish_non_exhaustive()
    }
}

impl QueueServer {
    /// Serves `ring` (in `protocol`'s layout) of domain `domid`, attached at index `idx` (0 for a new
    /// ring; the saved position after a migration), with the device queue `dev`. `doorbell` is rung by the
    /// guest's events and is given to the device for its completions.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        domid: DomId,
        ring: GrantedRing,
        protocol: BlkifProtocol,
        idx: RingIdx,
        grants: Arc<dyn GrantAccess>,
        mut dev: Box<dyn BlockQueue>,
        evtchn: Arc<dyn EventChannel>,
        doorbell: Arc<Doorbell>,
        info: BlockInfo,
        params: QueueParams,
    ) -> Result<Self, QueueError> {
        let ring_err = |source| QueueError::Ring { domid, source };
        let ring = if protocol.is_x86_32() {
            AnyRing::X86_32(BackRing::attach(ring, idx).map_err(ring_err)?)
        } else {
            AnyRing::Native(BackRing::attach(ring, idx).map_err(ring_err)?)
        };
        if ring.size() == 0 {
            return Err(QueueError::Empty);
        }
        dev.set_doorbell(doorbell.clone());
        Ok(Self {
            domid,
            ring,
            grants,
            dev,
            evtchn,
            doorbell,
            params,
            info,
            inflight: super::TagMap::default(),
            next_tag: 1,
            persistent: super::GrefMap::default(),
            persistent_pages: Vec::new(),
            deferred: None,
            ordered_tag: None,
            held: std::collections::VecDeque::new(),
            batch: Vec::new(),
            completions: Vec::new(),
            unpushed: false,
            stats: Arc::default(),
            in_flight_poll: params.poll_time,
        })
    }

    /// Keeps polling for up to `t` without progress while requests are in flight at the device, rather
    /// than for [`QueueParams::poll_time`] (the default): a completion is then seen without a wake-up.
    /// A zero `t` keeps `poll_time`.
    #[must_use]
    pub fn with_in_flight_poll_time(mut self, t: Duration) -> Self {
        self.in_flight_poll = t.max(self.params.poll_time);
        self
    }

    /// The queue's counters.
    pub fn stats(&self) -> Arc<QueueStats> {
        self.stats.clone()
    }

    /// The number of slots of the ring.
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    /// The number of persistent grants held.
    pub fn persistent_grants(&self) -> usize {
        self.persistent.len()
    }

    fn respond(&mut self, id: u64, operation: u8, status: i16) {
        let rsp = BlkifResponse::new(id, operation, status);
        // Every response answers a consumed request (one per request), so the ring has its slot.
        if self.ring.put(&rsp).is_ok() {
            QueueStats::add(&self.stats.responses, 1);
            if status != BLKIF_RSP_OKAY {
                QueueStats::add(&self.stats.errors, 1);
            }
            self.unpushed = true;
        }
    }

    /// A barrier is pending or at the device: later writes wait (`io/blkif.h`: "All writes issued
    /// after the barrier request must not execute until after the completion of the barrier
    /// request"); reads do not.
    fn barrier_active(&self) -> bool {
        self.deferred.is_some() || self.ordered_tag.is_some()
    }

    /// Whether a write (of any kind) is at the device: a pending barrier waits until none is ("All
    /// writes issued prior to a request with the BLKIF_OP_WRITE_BARRIER operation code must be
    /// completed prior to the execution of the barrier request").
    fn writes_in_flight(&self) -> bool {
        self.inflight.values().any(|f| f.write)
    }

    /// Does everything that can be done now without waiting: takes requests, submits them, reaps
    /// completions, answers. Returns whether anything happened.
    pub fn pump(&mut self) -> Result<bool, QueueError> {
        let mut progress = false;
        let max = self.ring.size() as usize;
        while self.inflight.len() + self.held.len() < max {
            match self.ring.pop() {
                Ok(Some(req)) => {
                    progress = true;
                    QueueStats::add(&self.stats.requests, 1);
                    if self.barrier_active() && req.response_operation() != BLKIF_OP_READ {
                        self.held.push_back(req);
                    } else {
                        self.handle(req);
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    self.flush_responses();
                    return Err(QueueError::Ring {
                        domid: self.domid,
                        source,
                    });
                }
            }
        }
        if !self.batch.is_empty() {
            self.dev.submit(&mut self.batch);
        }
        progress |= self.reap();
        // A barrier starts once the writes before it are done; the writes held behind it start once it
        // is done. Each round either starts something or ends the loop, and `held` only shrinks.
        loop {
            if self.deferred.is_some() && !self.writes_in_flight() {
                self.start_deferred();
            } else if !self.barrier_active() && !self.held.is_empty() {
                while !self.barrier_active() {
                    let Some(req) = self.held.pop_front() else {
                        break;
                    };
                    self.handle(req);
                }
                if !self.batch.is_empty() {
                    self.dev.submit(&mut self.batch);
                }
            } else {
                break;
            }
            progress = true;
            self.reap();
        }
        self.flush_responses();
        Ok(progress)
    }

    fn flush_responses(&mut self) {
        if self.unpushed {
            self.unpushed = false;
            if self.ring.push_and_check_notify() {
                QueueStats::add(&self.stats.notifications, 1);
                self.evtchn.notify();
            }
        }
    }

    fn reap(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.completions);
        let mut any = false;
        while self.dev.reap(&mut done) > 0 {
            any = true;
            for c in done.drain(..) {
                self.complete(c);
            }
            if !self.batch.is_empty() {
                self.dev.submit(&mut self.batch);
            }
        }
        self.completions = done;
        any
    }

    fn complete(&mut self, c: IoCompletion) {
        let Some(mut f) = self.inflight.remove(&c.tag) else {
            return;
        };
        if let Err(e) = &c.result {
            tracing::debug!(domid = self.domid, id = f.id, error = %e, "I/O failed");
        }
        if c.result.is_ok() && f.then_flush {
            f.then_flush = false;
            self.batch.push(IoRequest {
                tag: c.tag,
                op: IoOp::Flush,
            });
            self.inflight.insert(c.tag, f);
            return;
        }
        if self.ordered_tag == Some(c.tag) {
            self.ordered_tag = None;
        }
        let status = if c.result.is_ok() {
            BLKIF_RSP_OKAY
        } else {
            BLKIF_RSP_ERROR
        };
        self.respond(f.id, f.operation, status);
    }

    fn handle(&mut self, req: BlkifRequest) {
        let op = match req.validate(&self.params.limits) {
            Ok(op) => op,
            Err(e) => {
                tracing::debug!(domid = self.domid, id = req.id, error = %e, "request refused");
                let rsp = req.error_response(&e);
                self.respond(rsp.id, rsp.operation, rsp.status);
                return;
            }
        };
        match op {
            BlkifOperation::Read(rw) => self.start_rw(
                req.id,
                BLKIF_OP_READ,
                BlkifDirection::Read,
                rw.sector_number,
                rw.segments.as_slice(),
                false,
            ),
            BlkifOperation::Write(rw) => self.start_rw(
                req.id,
                BLKIF_OP_WRITE,
                BlkifDirection::Write,
                rw.sector_number,
                rw.segments.as_slice(),
                false,
            ),
            BlkifOperation::WriteBarrier(rw) => {
                let data = (!rw.segments.is_empty())
                    .then(|| (rw.sector_number, rw.segments.as_slice().to_vec()));
                self.deferred = Some(Deferred {
                    id: req.id,
                    operation: req.operation,
                    direction_data: data,
                });
            }
            // A flush commits what has completed (`io/blkif.h`: "Commit any uncommitted contents of the
            // backing device's volatile cache"), so it waits for nothing: the front end waits for the
            // writes it means before it flushes. Its data, if any, is written first.
            BlkifOperation::FlushDiskcache(rw) if !rw.segments.is_empty() => self.start_rw(
                req.id,
                req.operation,
                BlkifDirection::Write,
                rw.sector_number,
                rw.segments.as_slice(),
                true,
            ),
            BlkifOperation::FlushDiskcache(_) => {
                let tag = self.tag();
                self.inflight.insert(
                    tag,
                    Inflight {
                        id: req.id,
                        operation: req.operation,
                        _mappings: Vec::new(),
                        then_flush: false,
                        write: true,
                    },
                );
                self.batch.push(IoRequest {
                    tag,
                    op: IoOp::Flush,
                });
            }
            BlkifOperation::Discard(d) => {
                let offset = d.sector_number.saturating_mul(u64::from(BLKIF_SECTOR_SIZE));
                let len = d.nr_sectors.saturating_mul(u64::from(BLKIF_SECTOR_SIZE));
                let tag = self.tag();
                self.inflight.insert(
                    tag,
                    Inflight {
                        id: req.id,
                        operation: BLKIF_OP_DISCARD,
                        _mappings: Vec::new(),
                        then_flush: false,
                        write: true,
                    },
                );
                self.batch.push(IoRequest {
                    tag,
                    op: IoOp::Discard { offset, len },
                });
            }
            BlkifOperation::Indirect(ind) => {
                let operation = req.response_operation();
                // Copy the segments out of the indirect pages once, then check the copy.
                let mut segs: Vec<BlkifRequestSegment> =
                    Vec::with_capacity(usize::from(ind.nr_segments));
                let mut raw = vec![0u8; BLKIF_SEGS_PER_INDIRECT_FRAME * 8];
                for (page, &gref) in ind.indirect_pages().iter().enumerate() {
                    let m = match self.grants.map(self.domid, gref, GrantAccessMode::ReadOnly) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::debug!(domid = self.domid, id = req.id, error = %e, "indirect page");
                            self.respond(req.id, operation, BLKIF_RSP_ERROR);
                            return;
                        }
                    };
                    let n = ind.segments_in_page(page);
                    let bytes = &mut raw[..n * 8];
                    m.read_into(0, bytes);
                    if let Ok(s) = <[BlkifRequestSegment]>::ref_from_bytes(bytes) {
                        segs.extend_from_slice(s);
                    }
                }
                match ind.check_segments(&segs, &self.params.limits) {
                    Ok(io) => {
                        let checked: Vec<CheckedSegment> = io.segments().collect();
                        self.start_rw(
                            req.id,
                            operation,
                            io.direction,
                            io.sector_number,
                            &checked,
                            false,
                        );
                    }
                    Err(e) => {
                        tracing::debug!(domid = self.domid, id = req.id, error = %e, "indirect request refused");
                        self.respond(req.id, operation, e.status());
                    }
                }
            }
        }
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        t
    }

    fn start_deferred(&mut self) {
        let Some(d) = self.deferred.take() else {
            return;
        };
        match d.direction_data {
            Some((sector, segs)) => {
                let tag = self.next_tag;
                self.start_rw(
                    d.id,
                    d.operation,
                    BlkifDirection::Write,
                    sector,
                    &segs,
                    true,
                );
                if self.inflight.contains_key(&tag) {
                    self.ordered_tag = Some(tag);
                }
            }
            None => {
                let tag = self.tag();
                self.inflight.insert(
                    tag,
                    Inflight {
                        id: d.id,
                        operation: d.operation,
                        _mappings: Vec::new(),
                        then_flush: false,
                        write: true,
                    },
                );
                self.ordered_tag = Some(tag);
                self.batch.push(IoRequest {
                    tag,
                    op: IoOp::Flush,
                });
            }
        }
        if !self.batch.is_empty() {
            self.dev.submit(&mut self.batch);
        }
    }

    /// Maps a segment's page: a persistent grant when there is (or may be) one, else a mapping for this
    /// request only. Returns the page pointer and, for the latter, the mapping to hold.
    fn map_segment(
        &mut self,
        gref: GrantRef,
        mode: GrantAccessMode,
    ) -> Result<(NonNull<u8>, Option<GrantMapping>), crate::backend::GrantMapError> {
        if self.params.persistent {
            let dense = (gref as usize) < DENSE_GREFS;
            if dense {
                if let Some(p) = self
                    .persistent_pages
                    .get(gref as usize)
                    .and_then(|&a| NonNull::new(a as *mut u8))
                {
                    return Ok((p, None));
                }
            } else if let Some(m) = self.persistent.get(&gref) {
                if let Some(p) = NonNull::new(m.as_ptr()) {
                    return Ok((p, None));
                }
            }
            if self.persistent.len() < self.params.max_persistent_grants {
                if let Ok(m) = self
                    .grants
                    .map(self.domid, gref, GrantAccessMode::ReadWrite)
                {
                    if let Some(p) = NonNull::new(m.as_ptr()) {
                        if dense {
                            let i = gref as usize;
                            if i >= self.persistent_pages.len() {
                                let len = (i + 1).next_power_of_two().min(DENSE_GREFS);
                                self.persistent_pages.resize(len, 0);
                            }
                            self.persistent_pages[i] = p.as_ptr() as usize;
                        }
                        // A gref already there (it could not be: it would have been found) would
                        // drop the old mapping here; the page address above is the new one's.
                        self.persistent.insert(gref, m);
                        return Ok((p, None));
                    }
                }
            }
        }
        let m = self.grants.map(self.domid, gref, mode)?;
        match NonNull::new(m.as_ptr()) {
            Some(p) => Ok((p, Some(m))),
            None => Err(crate::backend::GrantMapError::UnknownDomain {
                granter: self.domid,
            }),
        }
    }

    fn start_rw(
        &mut self,
        id: u64,
        operation: u8,
        direction: BlkifDirection,
        sector: u64,
        segments: &[CheckedSegment],
        then_flush: bool,
    ) {
        let mode = match direction {
            BlkifDirection::Read => GrantAccessMode::ReadWrite,
            BlkifDirection::Write => GrantAccessMode::ReadOnly,
        };
        let mut mappings = Vec::new();
        let mut bufs = Vec::with_capacity(segments.len());
        for seg in segments {
            match self.map_segment(seg.gref, mode) {
                Ok((page, m)) => {
                    if let Some(m) = m {
                        mappings.push(m);
                    }
                    // SAFETY: `offset() + len() <= 4096` (a checked segment), inside the mapped page, which
                    // stays mapped until this request's completion is reaped: its mapping is in `mappings`,
                    // held by the in-flight entry, or in the persistent grants, which are dropped only after
                    // the device has no request in flight.
                    let buf = unsafe {
                        IoBuf::new(
                            NonNull::new_unchecked(page.as_ptr().add(seg.offset())),
                            seg.len(),
                        )
                    };
                    // Segments on adjacent bytes (consecutive pages of a contiguous guest buffer)
                    // go to the device as one buffer: fewer iovecs for the kernel to walk.
                    if !bufs
                        .last_mut()
                        .is_some_and(|last: &mut IoBuf| last.merge(&buf))
                    {
                        bufs.push(buf);
                    }
                }
                Err(e) => {
                    tracing::debug!(domid = self.domid, id, error = %e, "segment grant refused");
                    drop(mappings);
                    self.respond(id, operation, BLKIF_RSP_ERROR);
                    return;
                }
            }
        }
        let offset = sector.saturating_mul(u64::from(BLKIF_SECTOR_SIZE));
        let op = match direction {
            BlkifDirection::Read => IoOp::Read { offset, bufs },
            BlkifDirection::Write => IoOp::Write { offset, bufs },
        };
        let tag = self.tag();
        self.inflight.insert(
            tag,
            Inflight {
                id,
                operation,
                _mappings: mappings,
                then_flush,
                write: direction == BlkifDirection::Write,
            },
        );
        self.batch.push(IoRequest { tag, op });
    }

    /// Serves the ring until `stop` is set or the front end breaks it: works while there is work, polls
    /// for up to [`QueueParams::poll_time`] when there is none (or the in-flight poll time while
    /// requests are at the device; zero by default, and the windows adapt), then re-arms `req_event`
    /// (the final check) and sleeps on the doorbell. Waits for the device's in-flight requests before
    /// returning, so no mapping is released while the device still uses it.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), QueueError> {
        self.dev.quiet();
        let r = self.serve(stop);
        self.drain();
        r
    }

    fn serve(&mut self, stop: &AtomicBool) -> Result<(), QueueError> {
        // When the queue went idle, and whether requests were at the device then.
        let mut idle: Option<(std::time::Instant, bool)> = None;
        let mut windows = [
            PollWindow::new(self.params.poll_time),
            PollWindow::new(self.in_flight_poll),
        ];
        // Without polling (the default) the queue reads no clock: it sleeps as soon as it is idle.
        let polling = !self.params.poll_time.is_zero() || !self.in_flight_poll.is_zero();
        while !stop.load(Ordering::Acquire) {
            if self.pump()? {
                idle = None;
                continue;
            }
            let mut slept_from = None;
            if polling {
                let (since, busy) = *idle
                    .get_or_insert_with(|| (std::time::Instant::now(), !self.inflight.is_empty()));
                if since.elapsed() < windows[usize::from(busy)].current() {
                    std::hint::spin_loop();
                    continue;
                }
                idle = None;
                slept_from = Some((since, busy));
            }
            if self.final_check()? {
                continue;
            }
            if !self.dev.sleep(&self.doorbell, Duration::from_millis(200)) {
                continue;
            }
            QueueStats::add(&self.stats.sleeps, 1);
            if let Some((since, busy)) = slept_from {
                windows[usize::from(busy)].slept(since.elapsed());
            }
        }
        Ok(())
    }

    fn drain(&mut self) {
        // Bounded by the device: every submitted request completes (a file I/O or a memory copy).
        while self.dev.in_flight() > 0 {
            if !self.reap() {
                self.dev.sleep(&self.doorbell, Duration::from_millis(10));
            }
        }
        self.flush_responses();
        self.inflight.clear();
        self.persistent_pages.clear();
        self.persistent.clear();
    }

    /// The device properties this queue serves.
    pub fn info(&self) -> &BlockInfo {
        &self.info
    }

    // The pieces of `serve` that blkback's inline mode (`super::inline`) puts together itself.

    /// Whether requests are at the device (or completed there and not yet answered).
    pub(super) fn busy(&self) -> bool {
        !self.inflight.is_empty() || self.dev.in_flight() > 0
    }

    /// Re-arms `req_event` (ring.h's final check); returns whether requests arrived meanwhile.
    pub(super) fn final_check(&mut self) -> Result<bool, QueueError> {
        self.ring.final_check().map_err(|source| QueueError::Ring {
            domid: self.domid,
            source,
        })
    }

    /// Counts a sleep of the queue thread on its doorbell outside the device.
    pub(super) fn count_sleep(&self) {
        QueueStats::add(&self.stats.sleeps, 1);
    }

    /// Waits for the device's in-flight requests and drops every mapping ([`run`](Self::run)'s end).
    pub(super) fn finish(&mut self) {
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::PollWindow;
    use std::time::Duration;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_poll_window_shrinks_to_zero_after_long_sleeps_and_grows_back_after_short_ones() {
        let mut w = PollWindow::new(50 * US);
        assert_eq!(w.current(), 50 * US);
        for want_ns in [25_000, 12_500, 0, 0] {
            w.slept(80 * US);
            assert_eq!(w.current(), Duration::from_nanos(want_ns));
        }
        for want in [10, 20, 40, 50, 50] {
            w.slept(30 * US);
            assert_eq!(w.current(), want * US);
        }
        // A sleep of exactly the maximum would have been caught by a full window.
        w.slept(80 * US);
        w.slept(50 * US);
        assert_eq!(w.current(), 50 * US);
    }

    #[test]
    fn a_zero_poll_window_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        w.slept(US);
        assert_eq!(w.current(), Duration::ZERO);
        w.slept(Duration::from_secs(1));
        assert_eq!(w.current(), Duration::ZERO);
    }
}
