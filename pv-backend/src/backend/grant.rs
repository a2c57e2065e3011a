//! Guest memory plus grant access: turning a guest's grant reference into a range of its memory.
//!
//! A back end never sees a guest address. The front end *grants* it pages, by grant reference, in the
//! guest's grant table (`grant_table.h`); before the back end touches a page it asks a [`GrantAccess`]
//! for it. The implementation checks the entry as Xen's `_set_status_v1` does (type
//! `GTF_permit_access`, `domid` is the back end's domain, `GTF_readonly` against the access wanted, the
//! frame inside the guest's memory), marks it in use (`GTF_reading`, and `GTF_writing` for a writable
//! mapping) with a compare-exchange on the live `flags`/`domid` word, and returns a [`GrantMapping`].
//! While the mapping lives the guest cannot revoke the grant with the compare-exchange `grant_table.h`
//! prescribes; when the last mapping of the entry goes, the flags are cleared.
//!
//! [`GrantTableV1`] is the implementation over a version 1 grant table that lives in memory the VMM
//! gives (our hypervisor keeps a guest's grant frames in memory it controls), whose frame numbers index
//! a `vm-memory` guest memory: pseudo-physical frame `n` is guest address `n * 4096`.

use std::collections::HashMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use xen_abi::DomId;
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::grant_table::{
    GTF_reading, GTF_writing, GrantEntryHeader, GrantEntryV1, GrantError, GrantRef,
};

/// How the back end will use a granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantAccessMode {
    /// The back end only reads the page (the guest's data goes to a disk or a network): the grant may be
    /// read-only.
    ReadOnly,
    /// The back end writes into the page (disk data comes back to the guest): the grant must be writable.
    ReadWrite,
}

impl GrantAccessMode {
    /// Whether this is [`GrantAccessMode::ReadOnly`].
    pub const fn is_read_only(self) -> bool {
        matches!(self, Self::ReadOnly)
    }
}

/// Why a grant could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantMapError {
    /// The entry refused the access (bad reference, wrong type, wrong domain, read-only).
    #[error("domain {granter}: grant ref {gref}: {source}")]
    Entry {
        /// The granting domain.
        granter: DomId,
        /// The reference.
        gref: GrantRef,
        /// What the entry check said.
        #[source]
        source: GrantError,
    },
    /// The granted frame is not (wholly) inside the guest's memory.
    #[error(
        "domain {granter}: grant ref {gref} grants frame {frame:#x}, which is not a page of the guest's memory"
    )]
    FrameOutOfBounds {
        /// The granting domain.
        granter: DomId,
        /// The reference.
        gref: GrantRef,
        /// The frame in the entry.
        frame: u32,
    },
    /// The entry kept changing while it was being marked in use (a guest flipping its flags in a loop).
    #[error(
        "domain {granter}: grant ref {gref} changed under every one of {tries} compare-exchanges; giving up"
    )]
    Unstable {
        /// The granting domain.
        granter: DomId,
        /// The reference.
        gref: GrantRef,
        /// How many compare-exchanges were tried.
        tries: u32,
    },
    /// This grant access serves other domains only.
    #[error("no grant table for domain {granter} here")]
    UnknownDomain {
        /// The domain asked for.
        granter: DomId,
    },
}

impl GrantMapError {
    /// The `GNTST_*` status a hypervisor would answer for this error.
    pub fn status(&self) -> i16 {
        match self {
            Self::Entry { source, .. } => source.status(),
            Self::FrameOutOfBounds { .. } => xen_abi::grant_table::GNTST_general_error,
            Self::Unstable { .. } => xen_abi::grant_table::GNTST_eagain,
            Self::UnknownDomain { .. } => xen_abi::grant_table::GNTST_bad_domain,
        }
    }
}

/// What a [`GrantMapping`] calls when it is dropped.
pub trait GrantRelease: Send + Sync {
    /// The mapping of `gref` made with `mode` is gone.
    fn release(&self, gref: GrantRef, mode: GrantAccessMode);
}

/// One granted page, held in use: it stays valid (and the grant stays marked `GTF_reading` /
/// `GTF_writing`) until this value is dropped.
pub struct GrantMapping {
    ptr: NonNull<u8>,
    gref: GrantRef,
    mode: GrantAccessMode,
    owner: Arc<dyn GrantRelease>,
}

// SAFETY: the mapping is a pointer into guest memory that is only accessed with raw, volatile-style copies
// (the guest may change it at any time); the owner that keeps the memory alive is `Send + Sync`.
unsafe impl Send for GrantMapping {}
// SAFETY: as for `Send`: a shared reference gives nothing but the pointer.
unsafe impl Sync for GrantMapping {}

impl fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantMapping")
            .field("gref", &self.gref)
            .field("mode", &self.mode)
            .field("ptr", &self.ptr)
            .finish()
    }
}

impl GrantMapping {
    /// A mapping of `gref` at `ptr`, released through `owner` when dropped.
    ///
    /// # Safety
    ///
    /// `ptr` must stay valid for reads (and, for [`GrantAccessMode::ReadWrite`], writes) of 4096 bytes, by
    /// any thread, until `owner.release` is called; the memory may change under the back end at any time
    /// and is never used as an ordinary Rust object.
    pub unsafe fn new(
        ptr: NonNull<u8>,
        gref: GrantRef,
        mode: GrantAccessMode,
        owner: Arc<dyn GrantRelease>,
    ) -> Self {
        Self {
            ptr,
            gref,
            mode,
            owner,
        }
    }

    /// The start of the 4096-byte page.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The grant reference.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }

    /// The access it was mapped with.
    pub fn mode(&self) -> GrantAccessMode {
        self.mode
    }

    /// Copies `out.len()` bytes from `offset` in the page (clamped to the page), once, and returns how many
    /// were copied.
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> usize {
        let Some(avail) = XEN_PAGE_SIZE.checked_sub(offset) else {
            return 0;
        };
        let n = out.len().min(avail);
        // SAFETY: `offset + n <= 4096`, inside the page that `new`'s contract keeps valid for reads; the
        // destination is a distinct Rust buffer of at least `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), n)
        };
        n
    }

    /// Copies `data` into the page at `offset` (clamped to the page) and returns how many bytes were
    /// copied; nothing for a read-only mapping.
    pub fn write_from(&self, offset: usize, data: &[u8]) -> usize {
        if self.mode.is_read_only() {
            return 0;
        }
        let Some(avail) = XEN_PAGE_SIZE.checked_sub(offset) else {
            return 0;
        };
        let n = data.len().min(avail);
        // SAFETY: `offset + n <= 4096`, inside the page that `new`'s contract keeps valid for writes of a
        // read-write mapping; the source is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), n) };
        n
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        self.owner.release(self.gref, self.mode);
    }
}

/// Guest memory plus grant access: what a back end needs to reach the pages a front end granted it.
pub trait GrantAccess: Send + Sync {
    /// The domain the back end runs as: the `domid` a grant entry must name.
    fn backend_domid(&self) -> DomId;

    /// Checks entry `gref` of domain `granter`'s grant table for `mode`, marks it in use, and returns the
    /// page. Each call is one mapping: mapping a grant twice needs two releases.
    fn map(
        &self,
        granter: DomId,
        gref: GrantRef,
        mode: GrantAccessMode,
    ) -> Result<GrantMapping, GrantMapError>;
}

impl<T: GrantAccess + ?Sized> GrantAccess for Arc<T> {
    fn backend_domid(&self) -> DomId {
        (**self).backend_domid()
    }
    fn map(
        &self,
        granter: DomId,
        gref: GrantRef,
        mode: GrantAccessMode,
    ) -> Result<GrantMapping, GrantMapError> {
        (**self).map(granter, gref, mode)
    }
}

/// How many compare-exchanges [`GrantTableV1::map`] tries before it reports [`GrantMapError::Unstable`]
/// (Xen retries without bound; a bound keeps a hostile guest from pinning a back-end thread).
pub const GRANT_CAS_TRIES: u32 = 64;

/// Memory holding a version 1 grant table, shared with the guest that owns it.
#[derive(Debug)]
enum TableMemory {
    /// Memory given by the VMM.
    Raw { ptr: NonNull<u8>, frames: u32 },
    /// Memory allocated here (zeroed), for tests, benchmarks and VMMs that keep the table themselves.
    Owned(Box<[AtomicU32]>),
}

#[derive(Default, Clone, Copy, Debug)]
struct Pins {
    readers: u32,
    writers: u32,
}

struct TableInner<M> {
    granter: DomId,
    backend: DomId,
    table: TableMemory,
    memory: M,
    /// Mappings per entry, as Xen's pin counts: the flags are cleared when the last one goes.
    pins: Mutex<HashMap<GrantRef, Pins>>,
}

// SAFETY: the table memory is only accessed with atomic operations; the raw pointer variant's validity is
// the promise of `GrantTableV1::from_raw`; `M` is `Send + Sync`.
unsafe impl<M: Send + Sync> Send for TableInner<M> {}
// SAFETY: as for `Send`.
unsafe impl<M: Send + Sync> Sync for TableInner<M> {}

impl<M> TableInner<M> {
    fn nr_entries(&self) -> u32 {
        match &self.table {
            TableMemory::Raw { frames, .. } => xen_abi::grant_table::nr_entries_v1(*frames),
            TableMemory::Owned(words) => u32::try_from(words.len() / 2).unwrap_or(u32::MAX),
        }
    }

    /// Word `i` of the table (entry `gref` is words `2 * gref` (flags, domid) and `2 * gref + 1` (frame)).
    fn word(&self, i: usize) -> &AtomicU32 {
        match &self.table {
            TableMemory::Raw { ptr, .. } => {
                // SAFETY: callers pass `i < 2 * nr_entries`, inside the `frames * 4096` bytes that
                // `from_raw`'s contract keeps valid for atomic access; the memory is 4-byte aligned (checked
                // there) and only ever accessed atomically.
                unsafe { AtomicU32::from_ptr(ptr.as_ptr().cast::<u32>().add(i)) }
            }
            TableMemory::Owned(words) => &words[i],
        }
    }

    fn header_word(&self, gref: GrantRef) -> Result<&AtomicU32, GrantError> {
        let index = xen_abi::grant_table::check_ref(gref, self.nr_entries())?;
        Ok(self.word(index * 2))
    }
}

/// A version 1 grant table in shared memory, whose frames index `vm-memory` guest memory `M`.
///
/// The back end's side ([`GrantAccess`]) and, for a VMM that plays the guest's part (tests, benchmarks,
/// front ends emulated in the host), the guest's side: [`grant`](Self::grant) and
/// [`revoke`](Self::revoke) as `grant_table.h` tells a guest to do them.
pub struct GrantTableV1<M> {
    inner: Arc<TableInner<M>>,
}

impl<M> Clone for GrantTableV1<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M> fmt::Debug for GrantTableV1<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantTableV1")
            .field("granter", &self.inner.granter)
            .field("backend", &self.inner.backend)
            .field("entries", &self.inner.nr_entries())
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> GrantTableV1<M> {
    /// A zeroed table of `frames` frames (512 entries each) for domain `granter`'s memory `memory`,
    /// served to back ends running as domain `backend`.
    pub fn new(granter: DomId, backend: DomId, frames: u32, memory: M) -> Self {
        let words = xen_abi::grant_table::nr_entries_v1(frames) as usize * 2;
        let table = TableMemory::Owned((0..words).map(|_| AtomicU32::new(0)).collect());
        Self::with_table(granter, backend, table, memory)
    }

    /// A table in memory that the VMM gives: `frames` frames at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be 4-byte aligned and valid for atomic reads and writes of `frames * 4096` bytes for as
    /// long as this table or any mapping made from it lives, and never be used as an ordinary Rust object.
    pub unsafe fn from_raw(
        granter: DomId,
        backend: DomId,
        ptr: NonNull<u8>,
        frames: u32,
        memory: M,
    ) -> Self {
        assert!(
            ptr.as_ptr().align_offset(4) == 0,
            "grant table memory at {ptr:p} is not 4-byte aligned"
        );
        Self::with_table(granter, backend, TableMemory::Raw { ptr, frames }, memory)
    }

    fn with_table(granter: DomId, backend: DomId, table: TableMemory, memory: M) -> Self {
        Self {
            inner: Arc::new(TableInner {
                granter,
                backend,
                table,
                memory,
                pins: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.inner.memory
    }

    /// The number of entries.
    pub fn nr_entries(&self) -> u32 {
        self.inner.nr_entries()
    }

    /// The guest's side: fills entry `gref` to grant `grantee` access to `frame` (domid and frame first,
    /// then the flags, behind a release barrier, as `grant_table.h` prescribes).
    pub fn grant(
        &self,
        gref: GrantRef,
        grantee: DomId,
        frame: u32,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let hdr = self.inner.header_word(gref)?;
        let entry = GrantEntryV1::permit_access(grantee, frame, readonly);
        let i = gref as usize * 2;
        self.inner.word(i + 1).store(frame, Ordering::Relaxed);
        // domid first (flags still 0), then flags with release ordering.
        let without_flags = GrantEntryHeader {
            flags: 0,
            domid: grantee,
        };
        hdr.store(without_flags.to_word(), Ordering::Release);
        hdr.store(entry.header().to_word(), Ordering::Release);
        Ok(())
    }

    /// The guest's side: revokes entry `gref` with a compare-exchange that fails while the entry is in use
    /// (`GTF_reading`/`GTF_writing` set), as a well-behaved guest must.
    pub fn revoke(&self, gref: GrantRef) -> Result<(), GrantError> {
        let hdr = self.inner.header_word(gref)?;
        let old = hdr.load(Ordering::Acquire);
        let new = GrantEntryHeader::from_word(old).revoke()?;
        hdr.compare_exchange(old, new.to_word(), Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|now| GrantError::InUse {
                flags: GrantEntryHeader::from_word(now).flags,
            })
    }

    /// The guest's side, misbehaving: overwrites entry `gref`'s flags and domid without looking (a hostile
    /// guest revoking a grant that is in use).
    pub fn force_header(&self, gref: GrantRef, header: GrantEntryHeader) -> Result<(), GrantError> {
        self.inner
            .header_word(gref)?
            .store(header.to_word(), Ordering::Release);
        Ok(())
    }

    /// A copy of entry `gref` as it is now.
    pub fn entry(&self, gref: GrantRef) -> Result<GrantEntryV1, GrantError> {
        let hdr =
            GrantEntryHeader::from_word(self.inner.header_word(gref)?.load(Ordering::Acquire));
        let frame = self
            .inner
            .word(gref as usize * 2 + 1)
            .load(Ordering::Acquire);
        Ok(GrantEntryV1 {
            flags: hdr.flags,
            domid: hdr.domid,
            frame,
        })
    }
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> GrantRelease for TableInner<M> {
    fn release(&self, gref: GrantRef, mode: GrantAccessMode) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pins.get_mut(&gref) else {
            return;
        };
        p.readers = p.readers.saturating_sub(1);
        if !mode.is_read_only() {
            p.writers = p.writers.saturating_sub(1);
        }
        let clear = if p.readers == 0 {
            GTF_reading | GTF_writing
        } else if p.writers == 0 {
            GTF_writing
        } else {
            0
        };
        if p.readers == 0 {
            pins.remove(&gref);
        }
        if let Ok(hdr) = self.header_word(gref) {
            // Clearing bits needs no loop: an atomic AND keeps whatever else the guest wrote.
            let mask = GrantEntryHeader {
                flags: clear,
                domid: 0,
            }
            .to_word();
            hdr.fetch_and(!mask, Ordering::AcqRel);
        }
        drop(pins);
        if !mode.is_read_only() {
            // The back end wrote into the page: tell dirty tracking (live migration).
            let frame = self.word(gref as usize * 2 + 1).load(Ordering::Relaxed);
            if let Ok(slice) = self.memory.get_slice(
                GuestAddress(u64::from(frame) * XEN_PAGE_SIZE as u64),
                XEN_PAGE_SIZE,
            ) {
                slice.bitmap().mark_dirty(0, XEN_PAGE_SIZE);
            }
        }
    }
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> GrantAccess for GrantTableV1<M> {
    fn backend_domid(&self) -> DomId {
        self.inner.backend
    }

    fn map(
        &self,
        granter: DomId,
        gref: GrantRef,
        mode: GrantAccessMode,
    ) -> Result<GrantMapping, GrantMapError> {
        let inner = &self.inner;
        if granter != inner.granter {
            return Err(GrantMapError::UnknownDomain { granter });
        }
        let entry_err = |source| GrantMapError::Entry {
            granter,
            gref,
            source,
        };
        let hdr = inner.header_word(gref).map_err(entry_err)?;
        let readonly = mode.is_read_only();
        let mut pins = inner.pins.lock().unwrap_or_else(|e| e.into_inner());
        // Mark the entry in use: a compare-exchange on the (flags, domid) word, recomputed from the new
        // value when the guest changed it meanwhile (Xen's `_set_status_v1`).
        let mut old = hdr.load(Ordering::Acquire);
        let mut tries = 0;
        loop {
            let new = GrantEntryHeader::from_word(old)
                .begin_map(inner.backend, readonly)
                .map_err(entry_err)?;
            match hdr.compare_exchange(old, new.to_word(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => {
                    tries += 1;
                    if tries >= GRANT_CAS_TRIES {
                        return Err(GrantMapError::Unstable {
                            granter,
                            gref,
                            tries,
                        });
                    }
                    old = now;
                }
            }
        }
        let p = pins.entry(gref).or_default();
        p.readers += 1;
        if !readonly {
            p.writers += 1;
        }
        drop(pins);
        // Only now read the frame, once.
        let frame = inner.word(gref as usize * 2 + 1).load(Ordering::Acquire);
        let owner: Arc<dyn GrantRelease> = self.inner.clone();
        let ptr = inner
            .memory
            .get_slice(
                GuestAddress(u64::from(frame) * XEN_PAGE_SIZE as u64),
                XEN_PAGE_SIZE,
            )
            .ok()
            .and_then(|s| NonNull::new(s.ptr_guard_mut().as_ptr()));
        let Some(ptr) = ptr else {
            owner.release(gref, mode);
            return Err(GrantMapError::FrameOutOfBounds {
                granter,
                gref,
                frame,
            });
        };
        // SAFETY: the page is a whole 4096-byte slice of the guest memory `M`, which the `Arc` in `owner`
        // keeps alive (vm-memory regions are never unmapped while the collection lives); the grant is
        // marked in use until `owner.release` runs in `GrantMapping::drop`.
        Ok(unsafe { GrantMapping::new(ptr, gref, mode, owner) })
    }
}
