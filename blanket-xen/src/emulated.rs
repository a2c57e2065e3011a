//! An emulated Xen provider for tests (feature `test-utils`): one guest domain's pages, its version 1
//! grant table, event channels between the guest and back-end domains, and grant mapping as the
//! hypervisor does it, all in one process, shared between threads.
//!
//! The guest side is [`EmulatedXen`] itself: it implements [`Platform`](crate::platform::Platform) for the
//! guest domain, so the front-ends run on it unchanged. A back-end thread uses a [`BackendDomain`]: it binds
//! to the guest's unbound ports, sends and waits for events, and maps the guest's grants
//! ([`BackendDomain::map_grant`]), which checks the entry and sets `GTF_reading`/`GTF_writing` with a
//! compare-exchange, as Xen's `_set_status_v1` does, and clears them when the [`GrantMapping`] is dropped.

use std::boxed::Box;
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec::Vec;

use xen_abi::grant_table::{GrantEntryHeader, GrantError, GrantRef, MapsLeft};
use xen_abi::ring::{RawRingMemory, RingMemory};
use xen_abi::{DomId, XEN_PAGE_SIZE, event_channel::EvtchnPort};

use crate::platform::{
    EventChannels, Gfn, GrantAccess, GrantTableV1, PlatformError, Translate, WaitEvent, Wake,
};

/// The frame number of the guest's first page (frames below it are not guest memory, so a frame of 0
/// from a confused driver is caught).
pub const FIRST_GFN: Gfn = 0x1000;

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; XEN_PAGE_SIZE]>);

/// Zeroed page-aligned memory, only ever accessed through raw pointers.
struct Pages(Box<[Page]>);

// SAFETY: the pages are only accessed through raw pointers with atomic or volatile operations (or by the
// drivers and back-ends through `RingMemory`, whose users promise the same), never as Rust references.
unsafe impl Sync for Pages {}
// SAFETY: as for `Sync`.
unsafe impl Send for Pages {}

impl Pages {
    fn new(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| Page(UnsafeCell::new([0; XEN_PAGE_SIZE])))
                .collect(),
        )
    }
    fn base(&self) -> *mut u8 {
        self.0.as_ptr().cast::<u8>().cast_mut()
    }
    fn len(&self) -> usize {
        self.0.len() * XEN_PAGE_SIZE
    }
}

#[derive(Debug, Clone)]
struct Port {
    owner: DomId,
    remote_dom: DomId,
    peer: Option<EvtchnPort>,
    pending: bool,
}

#[derive(Debug, Default)]
struct Ports {
    /// Index `p - 1` is port `p`; `None` once closed.
    ports: Vec<Option<Port>>,
}

/// What an emulated back-end can get wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmulationError {
    /// The grant entry refused the mapping.
    #[error("grant ref {gref}: {source}")]
    Grant {
        /// The reference.
        gref: GrantRef,
        /// Why.
        #[source]
        source: GrantError,
    },
    /// The reference is outside the guest's grant table.
    #[error("grant ref {gref} is outside the guest's grant table of {nr_entries} entries")]
    BadRef {
        /// The reference.
        gref: GrantRef,
        /// Entries in the table.
        nr_entries: u32,
    },
    /// The granted frame is not a frame of the guest.
    #[error("grant ref {gref} names frame {frame:#x}, which is not guest memory")]
    BadFrame {
        /// The reference.
        gref: GrantRef,
        /// The frame.
        frame: u32,
    },
    /// An event channel operation failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// One guest domain on an emulated Xen.
pub struct EmulatedXen {
    domid: DomId,
    memory: Pages,
    next_page: Mutex<usize>,
    table: GrantTableV1<RawRingMemory>,
    _table_pages: Pages,
    ports: Mutex<Ports>,
    bell: Condvar,
    maps: Mutex<HashMap<GrantRef, (u32, u32)>>,
    notifies: AtomicU64,
    start: Instant,
}

impl core::fmt::Debug for EmulatedXen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EmulatedXen")
            .field("domid", &self.domid)
            .field("pages", &self.memory.0.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmulatedXen {
    /// Guest domain `domid` with `pages` pages of memory and a grant table of `table_frames` frames
    /// (512 entries each).
    pub fn new(domid: DomId, pages: usize, table_frames: usize) -> Arc<Self> {
        let table_pages = Pages::new(table_frames.max(1));
        // SAFETY: the table pages live as long as `self` (the field is dropped after `table`, and neither
        // is moved out), are page-aligned and only accessed atomically by `GrantTableV1`.
        let table_mem = unsafe {
            RawRingMemory::new(
                NonNull::new(table_pages.base()).unwrap_or(NonNull::dangling()),
                table_pages.len(),
            )
        };
        let table = GrantTableV1::new(table_mem).unwrap_or_else(|e| panic!("grant table: {e}"));
        Arc::new(Self {
            domid,
            memory: Pages::new(pages),
            next_page: Mutex::new(0),
            table,
            _table_pages: table_pages,
            ports: Mutex::default(),
            bell: Condvar::new(),
            maps: Mutex::default(),
            notifies: AtomicU64::new(0),
            start: Instant::now(),
        })
    }

    /// The guest's domain id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The guest's grant table.
    pub fn grant_table(&self) -> &GrantTableV1<RawRingMemory> {
        &self.table
    }

    /// Takes `n` fresh zeroed pages of guest memory (as a domain builder or the guest's page allocator
    /// would), or `None` when the guest has no more.
    pub fn alloc_pages(&self, n: usize) -> Option<RawRingMemory> {
        let mut next = lock(&self.next_page);
        let end = next.checked_add(n)?;
        if end > self.memory.0.len() || n == 0 {
            return None;
        }
        let offset = *next * XEN_PAGE_SIZE;
        *next = end;
        // SAFETY: the range lies within the guest memory, which lives as long as `self`; callers hold the
        // `Arc<EmulatedXen>` while they use the pages (the tests do), and the memory is only accessed through
        // `RingMemory`'s atomic and volatile rules.
        Some(unsafe {
            RawRingMemory::new(
                NonNull::new(self.memory.base().add(offset)).unwrap_or(NonNull::dangling()),
                n * XEN_PAGE_SIZE,
            )
        })
    }

    fn frame_ptr(&self, frame: Gfn) -> Option<*mut u8> {
        let index = usize::try_from(frame.checked_sub(FIRST_GFN)?).ok()?;
        if index >= self.memory.0.len() {
            return None;
        }
        // SAFETY: `index` is a page of the guest memory.
        Some(unsafe { self.memory.base().add(index * XEN_PAGE_SIZE) })
    }

    /// How many events were sent on all ports so far (to count notifications in tests).
    pub fn notify_count(&self) -> u64 {
        self.notifies.load(Ordering::Relaxed)
    }

    fn port_alloc(&self, owner: DomId, remote_dom: DomId, peer: Option<EvtchnPort>) -> EvtchnPort {
        let mut p = lock(&self.ports);
        p.ports.push(Some(Port {
            owner,
            remote_dom,
            peer,
            pending: false,
        }));
        p.ports.len() as EvtchnPort
    }

    fn port_mut(p: &mut Ports, owner: DomId, port: EvtchnPort) -> Result<&mut Port, PlatformError> {
        match p.ports.get_mut((port as usize).wrapping_sub(1)) {
            Some(Some(state)) if state.owner == owner => Ok(state),
            _ => Err(PlatformError::BadPort { port }),
        }
    }

    fn send(&self, owner: DomId, port: EvtchnPort) -> Result<(), PlatformError> {
        let mut p = lock(&self.ports);
        let peer = Self::port_mut(&mut p, owner, port)?.peer;
        if let Some(peer) = peer
            && let Some(Some(state)) = p.ports.get_mut((peer as usize).wrapping_sub(1))
        {
            state.pending = true;
            self.notifies.fetch_add(1, Ordering::Relaxed);
            self.bell.notify_all();
        }
        Ok(())
    }

    fn wait_on(
        &self,
        owner: DomId,
        port: EvtchnPort,
        timeout_ns: u64,
    ) -> Result<Wake, PlatformError> {
        self.wait_on_any(owner, &[port], timeout_ns)
    }

    fn wait_on_any(
        &self,
        owner: DomId,
        ports: &[EvtchnPort],
        timeout_ns: u64,
    ) -> Result<Wake, PlatformError> {
        let deadline = Instant::now() + Duration::from_nanos(timeout_ns);
        let mut p = lock(&self.ports);
        loop {
            let mut woke = false;
            for port in ports {
                let state = Self::port_mut(&mut p, owner, *port)?;
                woke |= core::mem::take(&mut state.pending);
            }
            if woke {
                return Ok(Wake::Event);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Wake::TimedOut);
            }
            p = self
                .bell
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn close_port(&self, owner: DomId, port: EvtchnPort) -> Result<(), PlatformError> {
        let mut p = lock(&self.ports);
        let peer = Self::port_mut(&mut p, owner, port)?.peer;
        if let Some(slot) = p.ports.get_mut((port as usize).wrapping_sub(1)) {
            *slot = None;
        }
        // The peer goes back to unbound, as in Xen.
        if let Some(peer) = peer
            && let Some(Some(state)) = p.ports.get_mut((peer as usize).wrapping_sub(1))
        {
            state.peer = None;
        }
        self.bell.notify_all();
        Ok(())
    }
}

impl EventChannels for EmulatedXen {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, PlatformError> {
        Ok(self.port_alloc(self.domid, remote, None))
    }
    fn notify(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        self.send(self.domid, port)
    }
    fn close(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        self.close_port(self.domid, port)
    }
}

impl GrantAccess for EmulatedXen {
    fn grant_access(
        &self,
        domid: DomId,
        frame: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError> {
        self.table.grant(domid, frame, readonly)
    }
    fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError> {
        self.table.end(gref)
    }
}

impl Translate for EmulatedXen {
    fn frame_of(&self, addr: usize) -> Result<Gfn, PlatformError> {
        let base = self.memory.base() as usize;
        match addr.checked_sub(base) {
            Some(off) if off < self.memory.len() && off % XEN_PAGE_SIZE == 0 => {
                Ok(FIRST_GFN + (off / XEN_PAGE_SIZE) as Gfn)
            }
            _ => Err(PlatformError::NotTranslatable { addr }),
        }
    }
}

impl WaitEvent for EmulatedXen {
    fn wait(&self, port: EvtchnPort, timeout_ns: u64) -> Result<Wake, PlatformError> {
        self.wait_on(self.domid, port, timeout_ns)
    }
    fn wait_any(&self, ports: &[EvtchnPort], timeout_ns: u64) -> Result<Wake, PlatformError> {
        self.wait_on_any(self.domid, ports, timeout_ns)
    }
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A back-end domain on the emulated Xen: it binds to the guest's ports and maps its grants.
#[derive(Debug, Clone)]
pub struct BackendDomain {
    xen: Arc<EmulatedXen>,
    domid: DomId,
}

impl BackendDomain {
    /// Domain `domid` (0 for dom0) serving the guest of `xen`.
    pub fn new(xen: Arc<EmulatedXen>, domid: DomId) -> Self {
        Self { xen, domid }
    }

    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The emulated Xen.
    pub fn xen(&self) -> &Arc<EmulatedXen> {
        &self.xen
    }

    /// Binds a local port to the guest's unbound `remote_port` (`EVTCHNOP_bind_interdomain`). Fails unless
    /// the guest allocated that port for this domain and it is still unbound.
    pub fn bind_interdomain(&self, remote_port: EvtchnPort) -> Result<EvtchnPort, PlatformError> {
        let guest = self.xen.domid;
        {
            let mut p = lock(&self.xen.ports);
            let state = EmulatedXen::port_mut(&mut p, guest, remote_port)?;
            if state.remote_dom != self.domid || state.peer.is_some() {
                return Err(PlatformError::BadPort { port: remote_port });
            }
        }
        let local = self.xen.port_alloc(self.domid, guest, Some(remote_port));
        let mut p = lock(&self.xen.ports);
        EmulatedXen::port_mut(&mut p, guest, remote_port)?.peer = Some(local);
        Ok(local)
    }

    /// Sends an event on a local port.
    pub fn notify(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        self.xen.send(self.domid, port)
    }

    /// Waits for an event on a local port, as [`WaitEvent::wait`].
    pub fn wait(&self, port: EvtchnPort, timeout: Duration) -> Result<Wake, PlatformError> {
        self.xen.wait_on(
            self.domid,
            port,
            u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
        )
    }

    /// Marks an event pending on one of this domain's own ports, to wake a thread that waits on it (as a
    /// back-end's other event sources do; Xen has no such call).
    pub fn kick_self(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        let mut p = lock(&self.xen.ports);
        EmulatedXen::port_mut(&mut p, self.domid, port)?.pending = true;
        self.xen.bell.notify_all();
        Ok(())
    }

    /// Closes a local port.
    pub fn close(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        self.xen.close_port(self.domid, port)
    }

    /// Maps the guest's grant `gref`, as `GNTTABOP_map_grant_ref` does: the entry must permit access to this
    /// domain (and writes, unless `readonly`); `GTF_reading` (and `GTF_writing`) are set with a
    /// compare-exchange before the frame is read, and cleared when the mapping is dropped.
    pub fn map_grant(
        &self,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<GrantMapping, EmulationError> {
        let table = &self.xen.table;
        let nr_entries = table.nr_entries();
        let cell = table
            .flags_cell(gref)
            .ok_or(EmulationError::BadRef { gref, nr_entries })?;
        let mut maps = lock(&self.xen.maps);
        // Bounded: the guest changes the flags at most a few times while we retry; give up after many.
        let mut flags = cell.load(Ordering::Acquire);
        let mut tries = 0;
        loop {
            let domid = table.entry(gref).map(|e| e.domid).unwrap_or(0);
            let hdr = GrantEntryHeader { flags, domid };
            let new = hdr
                .begin_map(self.domid, readonly)
                .map_err(|source| EmulationError::Grant { gref, source })?;
            match cell.compare_exchange(flags, new.flags, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => flags = now,
            }
            tries += 1;
            if tries > 1000 {
                return Err(EmulationError::Grant {
                    gref,
                    source: GrantError::InUse { flags },
                });
            }
        }
        let frame = table.entry(gref).map(|e| e.frame).unwrap_or(0);
        let Some(ptr) = self.xen.frame_ptr(Gfn::from(frame)) else {
            Self::unmap_flags(cell, &mut maps, gref, readonly);
            return Err(EmulationError::BadFrame { gref, frame });
        };
        let counts = maps.entry(gref).or_insert((0, 0));
        if readonly {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        Ok(GrantMapping {
            xen: Arc::clone(&self.xen),
            gref,
            readonly,
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
        })
    }

    fn unmap_flags(
        cell: &core::sync::atomic::AtomicU16,
        maps: &mut HashMap<GrantRef, (u32, u32)>,
        gref: GrantRef,
        _readonly: bool,
    ) {
        let (ro, rw) = maps.get(&gref).copied().unwrap_or((0, 0));
        let left = if rw > 0 {
            MapsLeft::Writable
        } else if ro > 0 {
            MapsLeft::ReadOnly
        } else {
            MapsLeft::None
        };
        let mut flags = cell.load(Ordering::Acquire);
        loop {
            let new = GrantEntryHeader { flags, domid: 0 }.end_map(left).flags;
            match cell.compare_exchange(flags, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => flags = now,
            }
        }
    }
}

/// A guest page mapped by a back-end through a grant. It is ring memory (a back-end builds its `BackRing`
/// over a mapped ring page) and is unmapped when dropped.
pub struct GrantMapping {
    xen: Arc<EmulatedXen>,
    gref: GrantRef,
    readonly: bool,
    ptr: NonNull<u8>,
}

impl core::fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GrantMapping")
            .field("gref", &self.gref)
            .field("readonly", &self.readonly)
            .finish_non_exhaustive()
    }
}

// SAFETY: the page is guest memory that lives as long as the `Arc<EmulatedXen>` held here; it is accessed
// only with atomic and volatile operations.
unsafe impl Send for GrantMapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for GrantMapping {}

// SAFETY: the pointer is a page of guest memory kept alive by `self.xen`, fixed, and valid for volatile and
// atomic access of one page.
unsafe impl RingMemory for GrantMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        XEN_PAGE_SIZE
    }
}

impl GrantMapping {
    /// The grant reference.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }

    /// Copies the page's bytes at `offset` into `out` (volatile reads, clamped to the page).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(XEN_PAGE_SIZE.saturating_sub(offset));
        for (i, o) in out.iter_mut().take(n).enumerate() {
            // SAFETY: `offset + i < XEN_PAGE_SIZE`, inside the mapped page.
            *o = unsafe { self.ptr.as_ptr().add(offset + i).read_volatile() };
        }
        n
    }

    /// Writes `data` into the page at `offset` (volatile writes, clamped to the page). A read-only mapping
    /// writes nothing and returns 0.
    pub fn write(&self, offset: usize, data: &[u8]) -> usize {
        if self.readonly {
            return 0;
        }
        let n = data.len().min(XEN_PAGE_SIZE.saturating_sub(offset));
        for (i, d) in data.iter().take(n).enumerate() {
            // SAFETY: `offset + i < XEN_PAGE_SIZE`, inside the mapped page, which is writable.
            unsafe { self.ptr.as_ptr().add(offset + i).write_volatile(*d) };
        }
        n
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        let mut maps = lock(&self.xen.maps);
        if let Some(c) = maps.get_mut(&self.gref) {
            if self.readonly {
                c.0 = c.0.saturating_sub(1);
            } else {
                c.1 = c.1.saturating_sub(1);
            }
        }
        if let Some(cell) = self.xen.table.flags_cell(self.gref) {
            BackendDomain::unmap_flags(cell, &mut maps, self.gref, self.readonly);
        }
        if maps.get(&self.gref) == Some(&(0, 0)) {
            maps.remove(&self.gref);
        }
    }
}
