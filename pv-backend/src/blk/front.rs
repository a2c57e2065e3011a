//! Test helpers (feature `test-utils`): a guest with memory and a grant table, the toolstack's part of
//! adding a vbd, and a Rust blkif front end that drives blkback through rings in the guest's memory.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xen_abi::DomId;
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::blkif::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, Blkif, BlkifProtocol, BlkifRequest, BlkifRequestIndirect,
    BlkifRequestSegment, BlkifResponse, BlkifX86_32, x86_32,
};
use xen_abi::grant_table::{GNTTAB_NR_RESERVED_ENTRIES, GrantRef};
use xen_abi::ring::{FrontRing, RawRingMemory, RingError, RingIdx};
use xen_abi::xenbus::XenbusState;
use xen_abi::xs_wire::XsPerm;
use zerocopy::IntoBytes;

use crate::backend::{Doorbell, GrantTableV1, LocalEventChannels, LocalXs, XsHandle};
use crate::xenstore::server::{SharedStore, lock};

/// The number of groups of 8 indirect pages a [`BlkFront`] uses in turn: the most indirect requests it
/// may have in flight.
pub const INDIRECT_GROUPS: usize = 32;

/// A guest, as far as a back end can tell: memory, a grant table, a domain id.
#[derive(Debug)]
pub struct TestGuest {
    /// The domain.
    pub domid: DomId,
    /// Its grant table (granting to `backend` domain).
    pub grants: GrantTableV1<GuestMemoryMmap>,
    next_frame: AtomicU32,
    frames: u32,
    next_gref: AtomicU32,
}

impl TestGuest {
    /// A guest with `pages` pages of memory and a grant table of `grant_frames` frames, granting to domain
    /// `backend`.
    pub fn new(domid: DomId, backend: DomId, pages: u32, grant_frames: u32) -> Arc<Self> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(0),
            pages as usize * XEN_PAGE_SIZE,
        )])
        .expect("guest memory");
        Arc::new(Self {
            domid,
            grants: GrantTableV1::new(domid, backend, grant_frames, mem),
            next_frame: AtomicU32::new(0),
            frames: pages,
            next_gref: AtomicU32::new(GNTTAB_NR_RESERVED_ENTRIES),
        })
    }

    /// A guest whose memory is `mem` (one region from guest address 0, for example a memfd that is
    /// also shared with a device), with a grant table of `grant_frames` frames granting to domain
    /// `backend`.
    pub fn with_memory(
        domid: DomId,
        backend: DomId,
        mem: GuestMemoryMmap,
        grant_frames: u32,
    ) -> Arc<Self> {
        let frames =
            u32::try_from(mem.last_addr().0 / XEN_PAGE_SIZE as u64 + 1).unwrap_or(u32::MAX);
        Arc::new(Self {
            domid,
            grants: GrantTableV1::new(domid, backend, grant_frames, mem),
            next_frame: AtomicU32::new(0),
            frames,
            next_gref: AtomicU32::new(GNTTAB_NR_RESERVED_ENTRIES),
        })
    }

    /// Its memory as [`FixedMemory`](super::FixedMemory), kept mapped by (a clone of) the guest,
    /// for [`BlkBack::with_fixed_memory`](super::BlkBack::with_fixed_memory). Not for a guest made
    /// [`with_memory`](Self::with_memory) on a memfd that the caller punches holes in.
    pub fn fixed_memory(self: &Arc<Self>) -> super::FixedMemory {
        use vm_memory::{GuestMemoryRegion, MemoryRegionAddress};
        let ranges: Vec<_> = self
            .grants
            .memory()
            .iter()
            .filter_map(|r| {
                let p = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some((std::ptr::NonNull::new(p)?, usize::try_from(r.len()).ok()?))
            })
            .collect();
        // SAFETY: the regions are mappings made by `GuestMemoryMmap` (anonymous, or the memfd given to
        // `with_memory`), unmapped only when it drops, which the guest clone held by the `FixedMemory`
        // prevents; a test guest never remaps, discards or punches its memory (a caller of
        // `with_memory` that punches its memfd must not take this).
        unsafe { super::FixedMemory::new(ranges, self.clone()) }
    }

    /// Allocates `n` contiguous pages; returns the first frame.
    pub fn alloc_pages(&self, n: u32) -> u32 {
        let f = self.next_frame.fetch_add(n, Ordering::Relaxed);
        assert!(f + n <= self.frames, "the test guest is out of memory");
        f
    }

    /// Grants `frame` to the back end; returns the new grant reference.
    pub fn grant(&self, frame: u32, readonly: bool) -> GrantRef {
        let gref = self.next_gref.fetch_add(1, Ordering::Relaxed);
        let backend = crate::backend::GrantAccess::backend_domid(&self.grants);
        self.grants
            .grant(gref, backend, frame, readonly)
            .expect("grant table full");
        gref
    }

    /// A pointer to the start of `frame`.
    pub fn page_ptr(&self, frame: u32) -> *mut u8 {
        self.grants
            .memory()
            .get_host_address(GuestAddress(u64::from(frame) * XEN_PAGE_SIZE as u64))
            .expect("frame in guest memory")
    }

    /// Writes guest memory.
    pub fn write(&self, frame: u32, offset: usize, data: &[u8]) {
        self.grants
            .memory()
            .write_slice(
                data,
                GuestAddress(u64::from(frame) * XEN_PAGE_SIZE as u64 + offset as u64),
            )
            .expect("guest write");
    }

    /// Reads guest memory.
    pub fn read(&self, frame: u32, offset: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.grants
            .memory()
            .read_slice(
                &mut v,
                GuestAddress(u64::from(frame) * XEN_PAGE_SIZE as u64 + offset as u64),
            )
            .expect("guest read");
        v
    }
}

/// The XenStore directories of one vbd.
#[derive(Debug, Clone)]
pub struct VbdPaths {
    /// `/local/domain/0/backend/vbd/<domid>/<devid>`.
    pub backend: String,
    /// `/local/domain/<domid>/device/vbd/<devid>`.
    pub frontend: String,
}

/// Does the toolstack's part of adding vbd `devid` to domain `domid` (back end in domain 0): both
/// directories with their cross references and permissions, both states Initialising.
pub fn add_vbd(store: &SharedStore, domid: DomId, devid: u32) -> VbdPaths {
    let backend = format!("/local/domain/0/backend/vbd/{domid}/{devid}");
    let frontend = format!("/local/domain/{domid}/device/vbd/{devid}");
    let mut s = lock(store);
    let c = s.connect(0, None);
    let w = |s: &mut crate::xenstore::XenStore, p: &str, v: &str| {
        s.write(c, 0, p.as_bytes(), v.as_bytes())
            .expect("toolstack write")
    };
    w(&mut s, &format!("{backend}/frontend"), &frontend);
    w(
        &mut s,
        &format!("{backend}/frontend-id"),
        &domid.to_string(),
    );
    w(&mut s, &format!("{backend}/online"), "1");
    w(&mut s, &format!("{backend}/state"), "1");
    w(&mut s, &format!("{frontend}/backend"), &backend);
    w(&mut s, &format!("{frontend}/backend-id"), "0");
    w(&mut s, &format!("{frontend}/state"), "1");
    let back_perms = XsPerm::owner_and_reader(0, domid);
    let front_perms = XsPerm::owner_and_reader(domid, 0);
    for p in ["frontend", "frontend-id", "online", "state"] {
        s.set_perms(c, 0, format!("{backend}/{p}").as_bytes(), &back_perms)
            .expect("perms");
    }
    s.set_perms(c, 0, backend.as_bytes(), &back_perms)
        .expect("perms");
    for p in ["backend", "backend-id", "state"] {
        s.set_perms(c, 0, format!("{frontend}/{p}").as_bytes(), &front_perms)
            .expect("perms");
    }
    s.set_perms(c, 0, frontend.as_bytes(), &front_perms)
        .expect("perms");
    s.disconnect(c);
    VbdPaths { backend, frontend }
}

/// How the front end connects.
#[derive(Debug, Clone, Copy)]
pub struct FrontOptions {
    /// The ring layout to use (and to write as `protocol`).
    pub protocol: BlkifProtocol,
    /// `ring-page-order` to write (None: a one-page ring with `ring-ref`).
    pub ring_page_order: Option<u32>,
    /// `multi-queue-num-queues` to write (None: one queue, keys in the front end's directory).
    pub queues: Option<u32>,
    /// Write `feature-persistent` = 1.
    pub persistent: bool,
    /// Pages of data buffer, granted writable once.
    pub buffer_pages: u32,
    /// Use indirect requests for transfers of more than 11 pages when the back end offers them.
    pub indirect: bool,
}

impl Default for FrontOptions {
    fn default() -> Self {
        Self {
            protocol: BlkifProtocol::X86_64,
            ring_page_order: None,
            queues: None,
            persistent: true,
            buffer_pages: 256,
            indirect: true,
        }
    }
}

enum AnyFront {
    Native(FrontRing<RawRingMemory, Blkif>),
    X86_32(FrontRing<RawRingMemory, BlkifX86_32>),
}

impl AnyFront {
    fn put(&mut self, req: &BlkifRequest) -> Result<(), RingError> {
        match self {
            Self::Native(r) => r.put_request(req),
            Self::X86_32(r) => r.put_request(&x86_32::BlkifRequest::from_native(req)),
        }
    }
    fn push_check(&mut self) -> bool {
        match self {
            Self::Native(r) => r.push_requests_and_check_notify(),
            Self::X86_32(r) => r.push_requests_and_check_notify(),
        }
    }
    fn pop(&mut self) -> Result<Option<BlkifResponse>, RingError> {
        match self {
            Self::Native(r) => r.pop_response(),
            Self::X86_32(r) => Ok(r.pop_response()?.map(|x| x.to_native())),
        }
    }
    fn final_check(&mut self) -> Result<bool, RingError> {
        match self {
            Self::Native(r) => r.final_check_for_responses(),
            Self::X86_32(r) => r.final_check_for_responses(),
        }
    }
    fn free(&self) -> u32 {
        match self {
            Self::Native(r) => r.free_requests(),
            Self::X86_32(r) => r.free_requests(),
        }
    }
    fn size(&self) -> u32 {
        match self {
            Self::Native(r) => r.size(),
            Self::X86_32(r) => r.size(),
        }
    }
}

/// One queue of the front end.
pub struct FrontQueue {
    ring: AnyFront,
    /// The first frame of the ring's pages.
    pub ring_frame: u32,
    /// The ring's grant references.
    pub ring_refs: Vec<GrantRef>,
    /// The event channel port.
    pub port: u32,
    /// Rung by the back end's notifications.
    pub doorbell: Arc<Doorbell>,
    /// Events this front end sent.
    pub kicks: u64,
}

impl std::fmt::Debug for FrontQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontQueue")
            .field("port", &self.port)
            .field("kicks", &self.kicks)
            .finish_non_exhaustive()
    }
}

/// A blkif front end in the host, for tests and benchmarks.
pub struct BlkFront {
    /// The guest.
    pub guest: Arc<TestGuest>,
    /// Its XenStore connection (as the guest's domain).
    pub xs: Arc<LocalXs>,
    /// The event channels.
    pub evtchns: Arc<LocalEventChannels>,
    /// The vbd's directories.
    pub paths: VbdPaths,
    /// The queues.
    pub queues: Vec<FrontQueue>,
    /// The data buffer: first frame.
    pub buf_frame: u32,
    /// The data buffer's grant references, one per page (writable).
    pub buf_grefs: Vec<GrantRef>,
    /// Pages for indirect segment lists, and their (read-only) grants: [`INDIRECT_GROUPS`] groups of 8,
    /// used in turn by [`BlkFront::indirect_request`].
    pub indirect_frames: Vec<(u32, GrantRef)>,
    next_group: usize,
    /// `sectors` (512-byte units).
    pub sectors: u64,
    /// `sector-size`.
    pub sector_size: u32,
    /// `feature-max-indirect-segments` (0 if not offered).
    pub max_indirect: u32,
    opts: FrontOptions,
    next_id: u64,
}

impl std::fmt::Debug for BlkFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkFront")
            .field("paths", &self.paths)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Waits until `path` reads as one of `want` (or `timeout` passes); returns what it last read.
pub fn wait_state(
    xs: &dyn XsHandle,
    path: &str,
    want: &[XenbusState],
    timeout: Duration,
) -> XenbusState {
    let end = Instant::now() + timeout;
    loop {
        let s = xs
            .read(path)
            .ok()
            .flatten()
            .and_then(|v| XenbusState::from_xenstore(&v).ok())
            .unwrap_or(XenbusState::Unknown);
        if want.contains(&s) || Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl BlkFront {
    /// Sets up rings, grants and XenStore keys in `guest` for the vbd at `paths`, moves to Initialised and
    /// waits (up to 5 s) for the back end to connect. Returns the front end even if the back end did not
    /// connect (check [`BlkFront::backend_state`]).
    pub fn connect(
        guest: Arc<TestGuest>,
        store: &SharedStore,
        evtchns: Arc<LocalEventChannels>,
        paths: VbdPaths,
        opts: FrontOptions,
    ) -> Self {
        let mut front = Self::prepare(guest, store, evtchns, paths, opts);
        front.publish();
        front.wait_connected(Duration::from_secs(5));
        front
    }

    /// Waits (up to 5 s) for the back end's InitWait and allocates the data buffers, but publishes
    /// nothing: a test then writes keys itself, or calls [`publish_keys`](Self::publish_keys).
    pub fn prepare(
        guest: Arc<TestGuest>,
        store: &SharedStore,
        evtchns: Arc<LocalEventChannels>,
        paths: VbdPaths,
        opts: FrontOptions,
    ) -> Self {
        let xs = Arc::new(LocalXs::connect(store.clone(), guest.domid));
        let bstate = format!("{}/state", paths.backend);
        wait_state(
            &*xs,
            &bstate,
            &[XenbusState::InitWait],
            Duration::from_secs(5),
        );
        let max_indirect = read_u32(
            &*xs,
            &format!("{}/feature-max-indirect-segments", paths.backend),
        );
        let buf_frame = guest.alloc_pages(opts.buffer_pages);
        let buf_grefs = (0..opts.buffer_pages)
            .map(|i| guest.grant(buf_frame + i, false))
            .collect();
        let indirect_frames = (0..(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * INDIRECT_GROUPS) as u32)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, true))
            })
            .collect();
        Self {
            guest,
            xs,
            evtchns,
            paths,
            queues: Vec::new(),
            buf_frame,
            buf_grefs,
            indirect_frames,
            sectors: 0,
            sector_size: 512,
            max_indirect,
            opts,
            next_id: 1,
            next_group: 0,
        }
    }

    /// Builds the rings and writes every key, then Initialised (no waiting).
    pub fn publish(&mut self) {
        self.publish_keys();
        self.set_state(XenbusState::Initialised);
    }

    /// Builds new rings and writes every key, but not the state.
    pub fn publish_keys(&mut self) {
        let nq = self.opts.queues.unwrap_or(1);
        let order = self.opts.ring_page_order.unwrap_or(0);
        let f = self.paths.frontend.clone();
        self.queues.clear();
        for q in 0..nq {
            let dir = if self.opts.queues.is_some() {
                format!("{f}/queue-{q}")
            } else {
                f.clone()
            };
            let npages = 1u32 << order;
            let frame = self.guest.alloc_pages(npages);
            let refs: Vec<GrantRef> = (0..npages)
                .map(|i| self.guest.grant(frame + i, false))
                .collect();
            let ptr = NonNull::new(self.guest.page_ptr(frame)).expect("ring page");
            // SAFETY: the pages are contiguous guest memory (one mmap region) that lives as long as the guest,
            // which this front end holds; they are only accessed through the ring.
            let mem = unsafe { RawRingMemory::new(ptr, npages as usize * XEN_PAGE_SIZE) };
            let ring = if self.opts.protocol.is_x86_32() {
                AnyFront::X86_32(FrontRing::new(mem).expect("ring"))
            } else {
                AnyFront::Native(FrontRing::new(mem).expect("ring"))
            };
            let (port, doorbell) = self.evtchns.alloc(self.guest.domid);
            let w = |k: &str, v: String| {
                self.xs
                    .write(&format!("{dir}/{k}"), v.as_bytes())
                    .expect("write")
            };
            if self.opts.ring_page_order.is_some() {
                for (i, r) in refs.iter().enumerate() {
                    w(&format!("ring-ref{i}"), r.to_string());
                }
            } else {
                w("ring-ref", refs[0].to_string());
            }
            w("event-channel", port.to_string());
            self.queues.push(FrontQueue {
                ring,
                ring_frame: frame,
                ring_refs: refs,
                port,
                doorbell,
                kicks: 0,
            });
        }
        let w = |k: &str, v: String| {
            self.xs
                .write(&format!("{f}/{k}"), v.as_bytes())
                .expect("write")
        };
        if let Some(o) = self.opts.ring_page_order {
            w("ring-page-order", o.to_string());
        }
        if let Some(n) = self.opts.queues {
            w("multi-queue-num-queues", n.to_string());
        }
        w("protocol", self.opts.protocol.name().to_owned());
        w(
            "feature-persistent",
            if self.opts.persistent { "1" } else { "0" }.to_owned(),
        );
    }

    /// Writes `value` at `key` of the front end's directory.
    pub fn write_key(&self, key: &str, value: &str) {
        self.xs
            .write(&format!("{}/{key}", self.paths.frontend), value.as_bytes())
            .expect("write");
    }

    /// Removes `key` of the front end's directory.
    pub fn remove_key(&self, key: &str) {
        self.xs
            .rm(&format!("{}/{key}", self.paths.frontend))
            .expect("rm");
    }

    /// Waits for the back end to reach one of `want`; returns its state.
    pub fn wait_backend(&self, want: &[XenbusState], timeout: Duration) -> XenbusState {
        wait_state(
            &*self.xs,
            &format!("{}/state", self.paths.backend),
            want,
            timeout,
        )
    }

    /// Waits for the back end to be Connected (then reads `sectors` and `sector-size`, and moves to
    /// Connected); returns the back end's state.
    pub fn wait_connected(&mut self, timeout: Duration) -> XenbusState {
        let b = self.paths.backend.clone();
        let s = wait_state(
            &*self.xs,
            &format!("{b}/state"),
            &[
                XenbusState::Connected,
                XenbusState::Closing,
                XenbusState::Closed,
            ],
            timeout,
        );
        if s == XenbusState::Connected {
            self.sectors = u64::from(read_u32(&*self.xs, &format!("{b}/sectors")));
            self.sector_size = read_u32(&*self.xs, &format!("{b}/sector-size")).max(512);
            self.set_state(XenbusState::Connected);
        }
        s
    }

    /// Writes the front end's state.
    pub fn set_state(&self, s: XenbusState) {
        self.xs
            .write(
                &format!("{}/state", self.paths.frontend),
                s.as_xenstore().as_bytes(),
            )
            .expect("write state");
    }

    /// The back end's state.
    pub fn backend_state(&self) -> XenbusState {
        self.xs
            .read(&format!("{}/state", self.paths.backend))
            .ok()
            .flatten()
            .and_then(|v| XenbusState::from_xenstore(&v).ok())
            .unwrap_or(XenbusState::Unknown)
    }

    /// The back end's `error` node, if any.
    pub fn backend_error(&self) -> Option<String> {
        self.xs
            .read(&format!("{}/error", self.paths.backend))
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Free request slots of queue `q`.
    pub fn free(&self, q: usize) -> u32 {
        self.queues[q].ring.free()
    }

    /// Slots of queue `q`'s ring.
    pub fn ring_size(&self, q: usize) -> u32 {
        self.queues[q].ring.size()
    }

    /// Puts a request on queue `q`'s ring (not yet published).
    pub fn put(&mut self, q: usize, req: &BlkifRequest) -> Result<(), RingError> {
        self.queues[q].ring.put(req)
    }

    /// Publishes queue `q`'s requests and notifies the back end if it asked for it.
    pub fn kick(&mut self, q: usize) {
        let fq = &mut self.queues[q];
        if fq.ring.push_check() {
            fq.kicks += 1;
            self.evtchns.send(self.guest.domid, fq.port);
        }
    }

    /// Publishes queue `q`'s requests without sending the event: returns whether ring.h says the back
    /// end wants one (the caller delivers it, as a hypervisor calling
    /// [`InlineQueue::notify`](crate::blk::InlineQueue::notify) for a kick does), counted in `kicks`.
    pub fn push(&mut self, q: usize) -> bool {
        let fq = &mut self.queues[q];
        let notify = fq.ring.push_check();
        if notify {
            fq.kicks += 1;
        }
        notify
    }

    /// ring.h's final check for responses on queue `q` (what a front end does before it sleeps): sets
    /// `rsp_event` so that the back end's next response sends an event, and returns whether responses
    /// arrived meanwhile.
    pub fn final_check(&mut self, q: usize) -> Result<bool, RingError> {
        self.queues[q].ring.final_check()
    }

    /// Takes the responses waiting on queue `q`.
    pub fn poll(&mut self, q: usize, out: &mut Vec<BlkifResponse>) -> Result<usize, RingError> {
        let mut n = 0;
        while let Some(r) = self.queues[q].ring.pop()? {
            out.push(r);
            n += 1;
        }
        Ok(n)
    }

    /// Collects `want` responses from queue `q`, sleeping on the event channel in between, for at most
    /// `timeout`.
    pub fn wait(&mut self, q: usize, want: usize, timeout: Duration) -> Vec<BlkifResponse> {
        let mut out = Vec::new();
        self.wait_into(q, want, timeout, &mut out);
        out
    }

    /// [`wait`](Self::wait) into `out` (appended to; nothing allocated when it has room): returns
    /// how many responses were added.
    pub fn wait_into(
        &mut self,
        q: usize,
        want: usize,
        timeout: Duration,
        out: &mut Vec<BlkifResponse>,
    ) -> usize {
        let first = out.len();
        let want = first + want;
        // The clock is read only if the front end has to sleep.
        let mut end = None;
        while out.len() < want {
            self.poll(q, out).expect("back end broke the ring");
            if out.len() >= want {
                break;
            }
            if self.queues[q].ring.final_check().expect("ring") {
                continue;
            }
            let now = Instant::now();
            let end = *end.get_or_insert(now + timeout);
            if now >= end {
                break;
            }
            self.queues[q]
                .doorbell
                .wait((end - now).min(Duration::from_millis(50)));
        }
        out.len() - first
    }

    /// Puts one read or write request on queue `q`'s ring (not yet published) for `len` bytes of the
    /// data buffer from page `first_page` at `sector`, with the caller's `id` (as Linux's blkfront
    /// uses its shadow slot as the id): direct when it fits in 11 segments, else one indirect request
    /// (which must be offered and hold them). Unlike [`queue_rw`](Self::queue_rw) nothing is
    /// allocated: the segments are built on the stack or straight into the indirect page.
    pub fn put_rw(
        &mut self,
        q: usize,
        op: u8,
        sector: u64,
        first_page: usize,
        len: usize,
        id: u64,
    ) {
        let pages = len.div_ceil(XEN_PAGE_SIZE);
        let seg = |i: usize| {
            let n = (len - i * XEN_PAGE_SIZE).min(XEN_PAGE_SIZE);
            BlkifRequestSegment::new(
                self.buf_grefs[first_page + i],
                0,
                ((n / 512).max(1) - 1) as u8,
            )
        };
        let req = if pages <= BLKIF_MAX_SEGMENTS_PER_REQUEST as usize {
            let mut req = BlkifRequest::new(op, 0, id, sector);
            for i in 0..pages {
                req.push_segment(seg(i)).expect("segments");
            }
            req
        } else {
            assert!(
                self.opts.indirect && pages <= self.max_indirect as usize,
                "{pages} segments need indirect requests of that size"
            );
            let group = self.next_group % INDIRECT_GROUPS;
            self.next_group += 1;
            let mut grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            let per_page = XEN_PAGE_SIZE / std::mem::size_of::<BlkifRequestSegment>();
            let mut chunk = [BlkifRequestSegment::new(0, 0, 0); 512];
            for (k, gref) in grefs.iter_mut().enumerate().take(pages.div_ceil(per_page)) {
                let (frame, g) =
                    self.indirect_frames[group * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST + k];
                let n = (pages - k * per_page).min(per_page);
                for (j, c) in chunk[..n].iter_mut().enumerate() {
                    *c = seg(k * per_page + j);
                }
                self.guest.write(frame, 0, chunk[..n].as_bytes());
                *gref = g;
            }
            BlkifRequestIndirect::new(op, pages as u16, 0, id, sector, grefs).to_request()
        };
        self.put(q, &req).expect("ring full");
    }

    /// Sends `req` on queue `q` and waits (1 s) for its one response.
    pub fn roundtrip(&mut self, q: usize, req: &BlkifRequest) -> Option<BlkifResponse> {
        self.put(q, req).expect("ring full");
        self.kick(q);
        self.wait(q, 1, Duration::from_secs(2)).pop()
    }

    /// The segments covering `len` bytes of the data buffer from page `first_page` (whole pages, the last
    /// one partial in 512-byte sectors).
    pub fn segments(&self, first_page: usize, len: usize) -> Vec<BlkifRequestSegment> {
        let mut v = Vec::new();
        let mut left = len;
        let mut page = first_page;
        while left > 0 {
            let n = left.min(XEN_PAGE_SIZE);
            let last = (n / 512).max(1) - 1;
            v.push(BlkifRequestSegment::new(
                self.buf_grefs[page],
                0,
                last as u8,
            ));
            left -= n;
            page += 1;
        }
        v
    }

    /// Builds the request(s) for a transfer of `segs` at `sector` (direct when they fit in 11 segments,
    /// indirect otherwise when offered), puts them on queue `q` and returns their ids.
    pub fn queue_rw(
        &mut self,
        q: usize,
        op: u8,
        sector: u64,
        segs: &[BlkifRequestSegment],
    ) -> Vec<u64> {
        let mut ids = Vec::new();
        let max = if self.opts.indirect && self.max_indirect > 0 {
            self.max_indirect as usize
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST as usize
        };
        let mut sector = sector;
        for chunk in segs.chunks(max) {
            let id = self.next_id();
            let req = if chunk.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST as usize {
                BlkifRequest::with_segments(op, 0, id, sector, chunk).expect("segments")
            } else {
                self.indirect_request(op, id, sector, chunk)
            };
            self.put(q, &req).expect("ring full");
            ids.push(id);
            let sectors: u64 = chunk
                .iter()
                .map(|s| u64::from(s.last_sect - s.first_sect) + 1)
                .sum();
            sector += sectors;
        }
        ids
    }

    /// An indirect request for `segs`, written into the indirect pages.
    ///
    /// Each call uses the next group of indirect pages, so at most [`INDIRECT_GROUPS`] indirect requests
    /// may be in flight at once.
    pub fn indirect_request(
        &mut self,
        op: u8,
        id: u64,
        sector: u64,
        segs: &[BlkifRequestSegment],
    ) -> BlkifRequest {
        let group = self.next_group % INDIRECT_GROUPS;
        self.next_group += 1;
        let mut grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
        for (i, chunk) in segs
            .chunks(512)
            .take(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
            .enumerate()
        {
            let (frame, gref) =
                self.indirect_frames[group * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST + i];
            self.guest.write(frame, 0, chunk.as_bytes());
            grefs[i] = gref;
        }
        let nr = u16::try_from(segs.len()).unwrap_or(u16::MAX);
        BlkifRequestIndirect::new(op, nr, 0, id, sector, grefs).to_request()
    }

    fn transfer(&mut self, op: u8, sector: u64, len: usize) -> Vec<BlkifResponse> {
        let segs = self.segments(0, len);
        let ids = self.queue_rw(0, op, sector, &segs);
        self.kick(0);
        self.wait(0, ids.len(), Duration::from_secs(10))
    }

    /// Reads `buf.len()` bytes (a multiple of 512, at most the data buffer) at `sector`; returns the
    /// statuses of the requests (all 0 when it worked).
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Vec<i16> {
        let rsps = self.transfer(BLKIF_OP_READ, sector, buf.len());
        let data = self.guest.read(self.buf_frame, 0, buf.len());
        buf.copy_from_slice(&data);
        rsps.iter().map(|r| r.status).collect()
    }

    /// Writes `data` (a multiple of 512 bytes, at most the data buffer) at `sector`; returns the statuses.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Vec<i16> {
        self.guest.write(self.buf_frame, 0, data);
        self.transfer(BLKIF_OP_WRITE, sector, data.len())
            .iter()
            .map(|r| r.status)
            .collect()
    }

    /// The raw bytes of the slot at ring index `idx` of queue `q` (for checking response padding).
    pub fn slot_bytes(&self, q: usize, idx: RingIdx) -> Vec<u8> {
        let fq = &self.queues[q];
        let slot = if self.opts.protocol.is_x86_32() {
            108
        } else {
            112
        };
        let off = 64 + (idx % fq.ring.size()) as usize * slot;
        self.guest.read(fq.ring_frame, off, slot)
    }

    /// A pointer to the shared ring header of queue `q` (for tests that play a hostile front end).
    pub fn sring(&self, q: usize) -> *mut u8 {
        self.guest.page_ptr(self.queues[q].ring_frame)
    }

    /// The request id used for indirect requests' operation field.
    pub const INDIRECT: u8 = BLKIF_OP_INDIRECT;
}

fn read_u32(xs: &dyn XsHandle, path: &str) -> u32 {
    xs.read(path)
        .ok()
        .flatten()
        .and_then(|v| xen_abi::xs_wire::parse_decimal(&v))
        .unwrap_or(0)
}

/// A running back end for one vbd: the handshake served on a thread until dropped.
pub struct BackendThread {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The back end's queue counters, refreshed by the thread after each connect.
    pub stats: Arc<Mutex<Vec<Arc<super::QueueStats>>>>,
}

impl std::fmt::Debug for BackendThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendThread").finish_non_exhaustive()
    }
}

impl BackendThread {
    /// Starts blkback for the vbd at `backend_path` on its own thread.
    pub fn spawn(store: &SharedStore, backend_path: &str, blk: super::BlkBack) -> Self {
        let xs: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store.clone(), 0));
        let mut be = crate::backend::XenbusBackend::new(xs, backend_path, blk).expect("backend");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats: Arc<Mutex<Vec<Arc<super::QueueStats>>>> = Arc::default();
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            be.start().expect("start");
            while !s.load(Ordering::Relaxed) {
                if let Err(e) = be.poll(Duration::from_millis(10)) {
                    tracing::warn!(error = %e, "handshake");
                }
                let now = be.device().stats();
                let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
                if g.len() != now.len() || g.iter().zip(&now).any(|(a, b)| !Arc::ptr_eq(a, b)) {
                    *g = now;
                }
            }
            crate::backend::XenbusDevice::disconnect(be.device_mut());
        });
        Self {
            stop,
            thread: Some(thread),
            stats,
        }
    }

    /// Sums a counter over the queues: (requests, responses, errors, notifications, sleeps).
    pub fn totals(&self) -> (u64, u64, u64, u64, u64) {
        let g = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        g.iter()
            .map(|s| s.snapshot())
            .fold((0, 0, 0, 0, 0), |a, b| {
                (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3, a.4 + b.4)
            })
    }
}

impl Drop for BackendThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
