//! What a front-end needs from the place it runs: event channels, grants of its own pages, frame numbers
//! of its memory, and a way to wait for an event.
//!
//! These are consumer-side traits (the driver's view, not the provider's): a PV guest implements them with
//! hypercalls (`EVTCHNOP_alloc_unbound`, `EVTCHNOP_send`, `SCHEDOP_block` or `SCHEDOP_poll`, its own grant
//! table frames); a Blanket layer on a Xen provider implements them over Linux's `/dev/xen/evtchn` and
//! `/dev/xen/gntalloc`; the tests use the emulated provider of `emulated` (feature `test-utils`).
//! Every method takes `&self` and none allocates, so a `no_std` guest can implement them without a heap.
//!
//! [`GrantTableV1`] is the part of granting that is the same everywhere a guest owns its grant table
//! (a PV guest, or any emulation of one): it fills version 1 entries in the order `grant_table.h`
//! requires and ends access only when the grantee no longer has the page mapped.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering, fence};

use xen_abi::DomId;
use xen_abi::event_channel::EvtchnPort;
use xen_abi::grant_table::{
    GNTTAB_NR_RESERVED_ENTRIES, GTF_permit_access, GTF_reading, GTF_readonly, GTF_writing,
    GrantEntryV1, GrantRef,
};
use xen_abi::ring::RingMemory;

/// A guest frame number: the frame that a grant entry names and that a back-end maps (a `gfn`; for a PV
/// guest, its machine frame).
pub type Gfn = u64;

/// What can go wrong when a front-end asks its platform for something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// Every grant reference the table can hand out is in use.
    #[error(
        "no free grant reference: all {capacity} usable entries are in use (end access to some, or give the table more frames)"
    )]
    NoFreeGrant {
        /// Usable entries (the table's entries minus the 8 reserved ones).
        capacity: u32,
    },
    /// A grant reference outside the table, or one of the reserved entries.
    #[error(
        "grant ref {gref} is not a usable entry of this grant table ({nr_entries} entries, refs 0..8 reserved)"
    )]
    BadGrantRef {
        /// The reference.
        gref: GrantRef,
        /// Entries in the table.
        nr_entries: u32,
    },
    /// Ending access to a reference this domain has not granted.
    #[error("grant ref {gref} is not granted (flags {flags:#06x}): nothing to end")]
    NotGranted {
        /// The reference.
        gref: GrantRef,
        /// Its flags.
        flags: u16,
    },
    /// The grantee still has the page mapped (`GTF_reading` or `GTF_writing`): the entry is kept, and the
    /// page must not be reused until access is ended successfully.
    #[error(
        "grant ref {gref} is still in use by the grantee (flags {flags:#06x} have GTF_reading or GTF_writing): keep the page and retry after the grantee unmaps it"
    )]
    GrantInUse {
        /// The reference.
        gref: GrantRef,
        /// Its flags.
        flags: u16,
    },
    /// A frame number that does not fit the 32-bit `frame` field of a version 1 entry.
    #[error("frame {frame:#x} does not fit the 32-bit frame field of a v1 grant entry")]
    FrameTooLarge {
        /// The frame.
        frame: Gfn,
    },
    /// Grant table memory that is not 8-byte aligned or holds no usable entry.
    #[error(
        "grant table memory of {len} bytes at {addr:#x} is unusable: it must be 8-byte aligned and hold more than 8 entries"
    )]
    BadTableMemory {
        /// Its address.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// An address that is not memory of this domain (or not a page start where one is needed).
    #[error(
        "address {addr:#x} is not page-aligned memory of this domain: only its own pages can be granted"
    )]
    NotTranslatable {
        /// The address.
        addr: usize,
    },
    /// An event channel port that is not open.
    #[error("event channel port {port} is not open")]
    BadPort {
        /// The port.
        port: EvtchnPort,
    },
    /// No event channel port is left.
    #[error("no free event channel port: close some")]
    NoFreePort,
    /// A hypercall or a `/dev/xen` call failed.
    #[error("{op} failed with error {errno}")]
    Hypercall {
        /// The operation, e.g. `"EVTCHNOP_send"`.
        op: &'static str,
        /// The (negative) Xen or Linux errno.
        errno: i32,
    },
}

/// Event channels, from the side that owns a port.
pub trait EventChannels {
    /// Allocates a port of this domain that domain `remote` may bind to (`EVTCHNOP_alloc_unbound`).
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, PlatformError>;
    /// Sends an event to the other end of `port` (`EVTCHNOP_send`).
    fn notify(&self, port: EvtchnPort) -> Result<(), PlatformError>;
    /// Closes `port` (`EVTCHNOP_close`).
    fn close(&self, port: EvtchnPort) -> Result<(), PlatformError>;
}

/// Granting pages of this domain's own memory to another domain.
pub trait GrantAccess {
    /// Grants `domid` access to `frame`, read-only or writable, and returns the reference to send it.
    fn grant_access(
        &self,
        domid: DomId,
        frame: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError>;
    /// Ends the access granted by `gref`, and frees the reference. Fails with
    /// [`PlatformError::GrantInUse`] while the grantee has the page mapped: the reference stays granted,
    /// and the page must not be reused before a later call succeeds.
    fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError>;
}

/// Frame numbers of this domain's memory.
pub trait Translate {
    /// The frame of the page that starts at `addr` (a virtual address of this domain).
    fn frame_of(&self, addr: usize) -> Result<Gfn, PlatformError>;
}

/// Why [`WaitEvent::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// An event was pending on the port (and is now cleared).
    Event,
    /// The timeout passed first.
    TimedOut,
}

/// Waiting for events, with a clock so that every wait of a driver is bounded.
pub trait WaitEvent {
    /// Waits until an event is pending on `port` or `timeout_ns` nanoseconds pass, and clears the pending
    /// event. An event that arrived before the call returns at once (events are level-triggered pending
    /// bits, as Xen's are), so "check the ring, then wait" loses no wake-up.
    fn wait(&self, port: EvtchnPort, timeout_ns: u64) -> Result<Wake, PlatformError>;
    /// Waits until an event is pending on any of `ports` or `timeout_ns` nanoseconds pass, and clears the
    /// pending events of `ports` (`SCHEDOP_poll` takes such a list). The default looks at each port in
    /// turn and waits on them one at a time, at most a millisecond each: a platform that can wait on
    /// several ports at once should override it.
    fn wait_any(&self, ports: &[EvtchnPort], timeout_ns: u64) -> Result<Wake, PlatformError> {
        match ports {
            [] => Ok(Wake::TimedOut),
            [port] => self.wait(*port, timeout_ns),
            _ => {
                let deadline = self.now_ns().saturating_add(timeout_ns);
                // Bounded by the deadline.
                loop {
                    let mut woke = false;
                    for p in ports {
                        woke |= self.wait(*p, 0)? == Wake::Event;
                    }
                    if woke {
                        return Ok(Wake::Event);
                    }
                    let now = self.now_ns();
                    if now >= deadline {
                        return Ok(Wake::TimedOut);
                    }
                    for p in ports {
                        let now = self.now_ns();
                        if self.wait(*p, deadline.saturating_sub(now).min(1_000_000))?
                            == Wake::Event
                        {
                            return Ok(Wake::Event);
                        }
                    }
                }
            }
        }
    }
    /// A monotonic clock in nanoseconds (a PV guest reads Xen's system time).
    fn now_ns(&self) -> u64;
}

/// Everything a front-end needs: joined by a blanket impl, so implement the four traits.
pub trait Platform: EventChannels + GrantAccess + Translate + WaitEvent {}

impl<T: EventChannels + GrantAccess + Translate + WaitEvent + ?Sized> Platform for T {}

macro_rules! forward_platform {
    ($($ptr:ty),*) => {$(
        impl<T: EventChannels + ?Sized> EventChannels for $ptr {
            fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, PlatformError> {
                (**self).alloc_unbound(remote)
            }
            fn notify(&self, port: EvtchnPort) -> Result<(), PlatformError> {
                (**self).notify(port)
            }
            fn close(&self, port: EvtchnPort) -> Result<(), PlatformError> {
                (**self).close(port)
            }
        }

        impl<T: GrantAccess + ?Sized> GrantAccess for $ptr {
            fn grant_access(
                &self,
                domid: DomId,
                frame: Gfn,
                readonly: bool,
            ) -> Result<GrantRef, PlatformError> {
                (**self).grant_access(domid, frame, readonly)
            }
            fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError> {
                (**self).end_access(gref)
            }
        }

        impl<T: Translate + ?Sized> Translate for $ptr {
            fn frame_of(&self, addr: usize) -> Result<Gfn, PlatformError> {
                (**self).frame_of(addr)
            }
        }

        impl<T: WaitEvent + ?Sized> WaitEvent for $ptr {
            fn wait(&self, port: EvtchnPort, timeout_ns: u64) -> Result<Wake, PlatformError> {
                (**self).wait(port, timeout_ns)
            }
            fn wait_any(&self, ports: &[EvtchnPort], timeout_ns: u64) -> Result<Wake, PlatformError> {
                (**self).wait_any(ports, timeout_ns)
            }
            fn now_ns(&self) -> u64 {
                (**self).now_ns()
            }
        }
    )*};
}

forward_platform!(&T);
#[cfg(feature = "alloc")]
forward_platform!(alloc::sync::Arc<T>, alloc::boxed::Box<T>);

/// The most entries [`GrantTableV1`] manages: 16 frames of 512 entries.
pub const GRANT_TABLE_V1_MAX_ENTRIES: u32 = 8192;
const BITMAP_WORDS: usize = (GRANT_TABLE_V1_MAX_ENTRIES / 64) as usize;
const ENTRY_SIZE: usize = size_of::<GrantEntryV1>();
const FLAGS: usize = 0;
const DOMID: usize = 2;
const FRAME: usize = 4;

/// A domain's own version 1 grant table, in shared memory that the hypervisor (or the emulated one) reads.
///
/// [`grant`](Self::grant) writes `frame` and `domid`, issues a write barrier, then writes `flags`, so the
/// hypervisor never sees a valid entry with stale contents (`grant_table.h`). [`end`](Self::end) clears
/// `flags` with a compare-exchange that fails while `GTF_reading` or `GTF_writing` is set, so a page the
/// grantee still maps is never reclaimed (Linux's `gnttab_end_foreign_access_ref_v1`). Which references
/// are free is kept in a private bitmap, never in the shared table. Allocation-free; `&self` everywhere,
/// with atomic claims, so several drivers may share one table.
pub struct GrantTableV1<M> {
    mem: M,
    nr_entries: u32,
    used: [AtomicU64; BITMAP_WORDS],
    hint: AtomicU32,
}

impl<M> core::fmt::Debug for GrantTableV1<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GrantTableV1")
            .field("nr_entries", &self.nr_entries)
            .finish_non_exhaustive()
    }
}

impl<M: RingMemory> GrantTableV1<M> {
    /// A table over `mem` (its frames, as registered with `GNTTABOP_setup_table`), with every usable entry
    /// free. Entries past [`GRANT_TABLE_V1_MAX_ENTRIES`] are not used. The entries are not cleared: a fresh
    /// table is zero, as Xen gives it.
    pub fn new(mem: M) -> Result<Self, PlatformError> {
        let addr = mem.as_ptr() as usize;
        let len = mem.len();
        let nr_entries = u32::try_from(len / ENTRY_SIZE)
            .unwrap_or(u32::MAX)
            .min(GRANT_TABLE_V1_MAX_ENTRIES);
        if addr % 8 != 0 || addr == 0 || nr_entries <= GNTTAB_NR_RESERVED_ENTRIES {
            return Err(PlatformError::BadTableMemory { addr, len });
        }
        Ok(Self {
            mem,
            nr_entries,
            used: core::array::from_fn(|_| AtomicU64::new(0)),
            hint: AtomicU32::new(GNTTAB_NR_RESERVED_ENTRIES),
        })
    }

    /// The number of entries, reserved ones included.
    pub fn nr_entries(&self) -> u32 {
        self.nr_entries
    }

    /// The memory of the table.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn field16(&self, gref: GrantRef, off: usize) -> &AtomicU16 {
        debug_assert!(gref < self.nr_entries);
        // SAFETY: `gref < nr_entries`, so the entry lies within the memory (`nr_entries <= len / 8`); the base
        // is 8-byte aligned, so `off` 0 or 2 is 2-byte aligned; `RingMemory` promises the memory is valid for
        // atomic access while `self.mem` lives, which outlives the reference.
        unsafe {
            AtomicU16::from_ptr(
                self.mem
                    .as_ptr()
                    .add(gref as usize * ENTRY_SIZE + off)
                    .cast::<u16>(),
            )
        }
    }

    fn frame_field(&self, gref: GrantRef) -> &AtomicU32 {
        debug_assert!(gref < self.nr_entries);
        // SAFETY: as in `field16`, at offset 4 (4-byte aligned).
        unsafe {
            AtomicU32::from_ptr(
                self.mem
                    .as_ptr()
                    .add(gref as usize * ENTRY_SIZE + FRAME)
                    .cast::<u32>(),
            )
        }
    }

    fn check(&self, gref: GrantRef) -> Result<(), PlatformError> {
        if gref < GNTTAB_NR_RESERVED_ENTRIES || gref >= self.nr_entries {
            return Err(PlatformError::BadGrantRef {
                gref,
                nr_entries: self.nr_entries,
            });
        }
        Ok(())
    }

    fn claim(&self) -> Result<GrantRef, PlatformError> {
        let start = self.hint.load(Ordering::Relaxed).min(self.nr_entries - 1);
        // Bounded: one pass over the table.
        for step in 0..self.nr_entries {
            let gref = (start + step) % self.nr_entries;
            if gref < GNTTAB_NR_RESERVED_ENTRIES {
                continue;
            }
            let (word, bit) = ((gref / 64) as usize, gref % 64);
            let Some(w) = self.used.get(word) else {
                continue;
            };
            if w.fetch_or(1 << bit, Ordering::Acquire) & (1 << bit) == 0 {
                self.hint.store(gref + 1, Ordering::Relaxed);
                return Ok(gref);
            }
        }
        Err(PlatformError::NoFreeGrant {
            capacity: self.nr_entries - GNTTAB_NR_RESERVED_ENTRIES,
        })
    }

    fn release(&self, gref: GrantRef) {
        if let Some(w) = self.used.get((gref / 64) as usize) {
            w.fetch_and(!(1 << (gref % 64)), Ordering::Release);
        }
    }

    /// Grants `domid` access to `frame`: frame and domid first, a write barrier, then the flags.
    pub fn grant(
        &self,
        domid: DomId,
        frame: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError> {
        let frame32 = u32::try_from(frame).map_err(|_| PlatformError::FrameTooLarge { frame })?;
        let gref = self.claim()?;
        self.frame_field(gref).store(frame32, Ordering::Relaxed);
        self.field16(gref, DOMID).store(domid, Ordering::Relaxed);
        self.mem.mark_dirty(gref as usize * ENTRY_SIZE + DOMID, 6);
        // `wmb()`: the hypervisor must see frame and domid before the flags that make the entry valid.
        fence(Ordering::Release);
        let flags = if readonly {
            GTF_permit_access | GTF_readonly
        } else {
            GTF_permit_access
        };
        self.field16(gref, FLAGS).store(flags, Ordering::Release);
        self.mem.mark_dirty(gref as usize * ENTRY_SIZE + FLAGS, 2);
        Ok(gref)
    }

    /// Ends access through `gref` and frees it, unless the grantee still maps the page
    /// ([`PlatformError::GrantInUse`]: the entry stays as it is, try again later).
    pub fn end(&self, gref: GrantRef) -> Result<(), PlatformError> {
        self.check(gref)?;
        let claimed = self
            .used
            .get((gref / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (gref % 64)) != 0);
        let cell = self.field16(gref, FLAGS);
        let mut flags = cell.load(Ordering::Acquire);
        if !claimed || flags & 3 != GTF_permit_access {
            return Err(PlatformError::NotGranted { gref, flags });
        }
        // Bounded in practice: the exchange only fails when the hypervisor changed the flags meanwhile,
        // which it does once per map or unmap; a peer cannot loop us for ever because every failed round
        // that finds the entry in use returns.
        loop {
            if flags & (GTF_reading | GTF_writing) != 0 {
                return Err(PlatformError::GrantInUse { gref, flags });
            }
            match cell.compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => flags = now,
            }
        }
        self.mem.mark_dirty(gref as usize * ENTRY_SIZE + FLAGS, 2);
        self.release(gref);
        Ok(())
    }

    /// A copy of entry `gref`, read field by field (for diagnostics and tests).
    pub fn entry(&self, gref: GrantRef) -> Option<GrantEntryV1> {
        if gref >= self.nr_entries {
            return None;
        }
        Some(GrantEntryV1 {
            flags: self.field16(gref, FLAGS).load(Ordering::Acquire),
            domid: self.field16(gref, DOMID).load(Ordering::Relaxed),
            frame: self.frame_field(gref).load(Ordering::Relaxed),
        })
    }

    /// The flags word of entry `gref`, as an atomic, for an emulated hypervisor that sets `GTF_reading` and
    /// `GTF_writing` with a compare-exchange (feature `test-utils`).
    #[cfg(feature = "test-utils")]
    pub(crate) fn flags_cell(&self, gref: GrantRef) -> Option<&AtomicU16> {
        (gref < self.nr_entries).then(|| self.field16(gref, FLAGS))
    }

    /// How many references are granted now.
    pub fn granted(&self) -> u32 {
        self.used
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}

impl<M: RingMemory> GrantAccess for GrantTableV1<M> {
    fn grant_access(
        &self,
        domid: DomId,
        frame: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError> {
        self.grant(domid, frame, readonly)
    }
    fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError> {
        self.end(gref)
    }
}
