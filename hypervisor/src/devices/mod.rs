//! Devices of guests: the host's xenstored, the console rings, and the seams through which pv-backend's
//! back-ends reach guests (their pages and grant tables in guest memory, and domain 0's event channels).
//!
//! pv-backend knows nothing about KVM: it asks for grant access ([`pv_backend::backend::GrantAccess`]), event
//! channels ([`pv_backend::backend::EventChannels`]) and memory that shared rings live in
//! ([`xen_abi::ring::RingMemory`]). This module gives it those over a running [`Domain`]:
//!
//! - [`GuestPage`]: pages of a guest's memory, kept mapped by an owned clone of the guest's `vm-memory`
//!   regions (so a back-end thread can never outlive the mapping it uses);
//! - [`Dom0Evtchns`] and [`Dom0Port`]: interdomain channels between the guest and domain 0, where the
//!   back-ends live, through [`Hypervisor::dom0_bind_interdomain`] and [`Hypervisor::dom0_send`];
//! - [`grant_table`]: pv-backend's v1 grant table over the guest's own grant frames (those that
//!   `GNTTABOP_setup_table` hands out), so every grant a back-end maps is checked against the entry the
//!   guest wrote;
//! - [`xenstored`]: one xenstored per host, serving each guest's XenStore page;
//! - [`console`]: the PV console ring (`start_info.console.domU`), served by pv-backend's console back-end;
//! - [`vhost_user`]: a vbd on a vhost-user-blk device through blanket-virtio, with zero copy.

pub mod console;
pub mod vhost_user;
pub mod xenstored;

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pv_backend::backend::{Doorbell, EventChannel, EventChannelError, EventChannels, GrantTableV1};
use pv_backend::blk::InlineDevice;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xen_abi::DomId;

use crate::builder::MAX_GRANT_FRAMES;
use crate::domain::{BlockedService, Domain, Hypervisor};
use crate::memory::PAGE_SIZE;

/// The errors of attaching devices to a domain.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A page range that is not inside the guest's memory.
    #[error(
        "guest frames {gfn:#x}+{pages} are not inside the guest's memory; the domain's layout is broken"
    )]
    BadFrame {
        /// The first frame.
        gfn: u64,
        /// How many.
        pages: u64,
    },
    /// Domain 0 could not bind a guest's port.
    #[error(
        "binding port {port} of domain {domid} to domain 0 failed with Xen errno {errno}: the port must be unbound and offered to domain 0"
    )]
    Bind {
        /// The guest.
        domid: DomId,
        /// Its port.
        port: u32,
        /// The errno.
        errno: i64,
    },
    /// The store refused an operation.
    #[error("xenstored refused {what}: {source}")]
    Store {
        /// What was asked.
        what: String,
        /// Why.
        #[source]
        source: pv_backend::xenstore::StoreError,
    },
    /// The console back-end could not start.
    #[error("the console of domain {domid} could not be served: {source}")]
    Console {
        /// The guest.
        domid: DomId,
        /// Why.
        #[source]
        source: pv_backend::console::ConsoleError,
    },
    /// A vhost-user-blk device could not be set up.
    #[error(
        "the vhost-user-blk device on {socket}: {what}; is a vhost-user-blk export (such as qemu-storage-daemon's) listening there?"
    )]
    VhostUser {
        /// Its socket.
        socket: std::path::PathBuf,
        /// What failed, and why.
        what: String,
    },
    /// A host resource (a thread, a file, a pty, a socket) could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `pages` pages of a guest's memory from frame `gfn` (the P2M is the identity, so a frame is also the
/// guest-physical page number), for a back-end to use as a shared ring or page.
///
/// It owns a clone of the guest's `vm-memory` regions, which are reference counted: the mapping stays valid
/// for as long as the `GuestPage` lives, even if the [`Domain`] is dropped first.
pub struct GuestPage {
    _mem: GuestMemoryMmap,
    ptr: NonNull<u8>,
    len: usize,
}

impl std::fmt::Debug for GuestPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestPage")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the page is only accessed through volatile and atomic operations (the RingMemory contract), and
// the mapping it points into is kept alive by the owned memory clone; both may be used from any thread.
unsafe impl Send for GuestPage {}
// SAFETY: as for Send: shared access is atomic or volatile only.
unsafe impl Sync for GuestPage {}

impl GuestPage {
    /// Frames `gfn..gfn+pages` of `mem`.
    pub fn new(mem: &GuestMemoryMmap, gfn: u64, pages: u64) -> Result<Self, DeviceError> {
        let bad = || DeviceError::BadFrame { gfn, pages };
        let addr = gfn.checked_mul(PAGE_SIZE).ok_or_else(bad)?;
        let len = pages.checked_mul(PAGE_SIZE).ok_or_else(bad)?;
        if pages == 0 {
            return Err(bad());
        }
        // One slice: the range must lie inside one region, so it is contiguous in the host mapping.
        let slice = mem
            .get_slice(GuestAddress(addr), len as usize)
            .map_err(|_| bad())?;
        let ptr = NonNull::new(slice.ptr_guard_mut().as_ptr()).ok_or_else(bad)?;
        Ok(Self {
            _mem: mem.clone(),
            ptr,
            len: len as usize,
        })
    }

    /// The host address of the first byte.
    pub fn host_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

// SAFETY: `ptr..ptr+len` is inside a mapping of guest memory (checked by `get_slice` in `new`), kept mapped by
// the owned clone of the regions for as long as this value lives; it is shared with the guest, and this
// crate accesses it only through the RingMemory users' volatile and atomic accesses.
unsafe impl xen_abi::ring::RingMemory for GuestPage {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Domain 0's end of an interdomain channel with a guest: [`notify`](EventChannel::notify) sends the guest
/// an event (`EVTCHNOP_send` by domain 0); dropping it closes the port (the guest's end becomes unbound).
pub struct Dom0Port {
    hv: Hypervisor,
    port: u32,
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for Dom0Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dom0Port")
            .field("port", &self.port)
            .finish()
    }
}

impl Dom0Port {
    /// Binds port `port` of guest `domid` (offered to domain 0): every event the guest sends on it rings
    /// `doorbell`. `sent` counts the events domain 0 sends back.
    pub fn bind(
        hv: &Hypervisor,
        domid: DomId,
        port: u32,
        doorbell: Arc<Doorbell>,
        sent: Arc<AtomicU64>,
    ) -> Result<Self, DeviceError> {
        Self::bind_with(hv, domid, port, sent, move |_| doorbell.ring())
    }

    /// Binds port `port` of guest `domid`: every event the guest sends on it calls `on_event` on the
    /// sender's vCPU thread.
    fn bind_with(
        hv: &Hypervisor,
        domid: DomId,
        port: u32,
        sent: Arc<AtomicU64>,
        on_event: impl Fn(u32) + Send + Sync + 'static,
    ) -> Result<Self, DeviceError> {
        let local = hv
            .dom0_bind_interdomain(domid, port, on_event)
            .map_err(|errno| DeviceError::Bind { domid, port, errno })?;
        Ok(Self {
            hv: hv.clone(),
            port: local,
            sent,
        })
    }

    /// Domain 0's port number.
    pub fn port(&self) -> u32 {
        self.port
    }
}

impl EventChannel for Dom0Port {
    fn notify(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let _ = self.hv.dom0_send(self.port);
    }
}

impl Drop for Dom0Port {
    fn drop(&mut self) {
        let _ = self.hv.dom0_close(self.port);
    }
}

/// pv-backend's event channels for back-ends in domain 0: a guest's port is bound with
/// `EVTCHNOP_bind_interdomain`; the guest's events ring the back-end's doorbell on the sender's vCPU thread.
#[derive(Clone)]
pub struct Dom0Evtchns {
    hv: Hypervisor,
    /// Events domain 0 sent to guests through ports bound here (back-end notifications).
    pub sent: Arc<AtomicU64>,
    /// The blkback device whose queues take the guest's kicks inline ([`Dom0Evtchns::kicking_inline`]).
    inline: Option<InlineKicks>,
}

/// Where a blkback device served inline ([`pv_backend::blk::BlkConfig::inline`]) takes the guest's
/// kicks: set once the `BlkBack` exists ([`InlineKicks::set`]), since it is made with its event channels.
#[derive(Clone, Debug)]
pub struct InlineKicks {
    dev: Arc<std::sync::OnceLock<InlineDevice>>,
    served: Arc<AtomicU64>,
}

impl InlineKicks {
    /// Kicks not yet taken by any device; `served` counts those a queue serves inline.
    pub fn new(served: Arc<AtomicU64>) -> Self {
        Self {
            dev: Arc::default(),
            served,
        }
    }

    /// The device whose queues take the kicks ([`BlkBack::inline`](pv_backend::blk::BlkBack::inline));
    /// a second call is ignored.
    pub fn set(&self, dev: InlineDevice) {
        let _ = self.dev.set(dev);
    }

    /// The guest kicked the port whose events ring `doorbell`: served by its queue on this (the guest's
    /// vCPU) thread when nobody serves it, else the doorbell is rung, as without inline serving.
    fn kick(&self, doorbell: &Arc<Doorbell>) {
        match self.dev.get().and_then(|d| d.notify_kick(doorbell)) {
            Some(true) => {
                self.served.fetch_add(1, Ordering::Relaxed);
            }
            // The queue was busy: `notify` rang its doorbell.
            Some(false) => {}
            None => doorbell.ring(),
        }
    }
}

impl BlockedService for InlineDevice {
    fn serve_blocked(&self, budget: Duration, wake: &dyn Fn() -> bool) -> bool {
        // One budget for all the queues, not one each.
        let end = std::time::Instant::now() + budget;
        let mut served = false;
        for i in 0..self.len() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(q) = self.queue(i) {
                served |= q.block(left, wake);
            }
        }
        served
    }
}

impl std::fmt::Debug for Dom0Evtchns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dom0Evtchns").finish_non_exhaustive()
    }
}

impl Dom0Evtchns {
    /// Event channels of domain 0 on `hv`.
    pub fn new(hv: &Hypervisor) -> Self {
        Self {
            hv: hv.clone(),
            sent: Arc::default(),
            inline: None,
        }
    }

    /// The same channels (and counter), for a blkback device served inline: the guest's kick on a port
    /// bound through them is served on the guest's vCPU thread by the queue behind it (see
    /// [`InlineQueue::notify`](pv_backend::blk::InlineQueue::notify)) once `kicks` is set.
    pub fn kicking_inline(&self, kicks: InlineKicks) -> Self {
        Self {
            inline: Some(kicks),
            ..self.clone()
        }
    }
}

impl EventChannels for Dom0Evtchns {
    fn bind(
        &self,
        domid: DomId,
        port: u32,
        doorbell: Arc<Doorbell>,
    ) -> Result<Arc<dyn EventChannel>, EventChannelError> {
        let sent = self.sent.clone();
        let p = match self.inline.clone() {
            Some(kicks) => {
                Dom0Port::bind_with(&self.hv, domid, port, sent, move |_| kicks.kick(&doorbell))
            }
            None => Dom0Port::bind(&self.hv, domid, port, doorbell, sent),
        }
        .map_err(|_| EventChannelError::NoSuchPort { domid, port })?;
        Ok(Arc::new(p))
    }
}

/// The guest's XenStore and console ports, `start_info.store_evtchn` and `console.domU.evtchn`, as the builder
/// wrote them (read before the domain starts, since the guest may overwrite its `start_info`).
pub fn boot_ports(domain: &Domain) -> Result<(u32, u32), DeviceError> {
    let si: xen_abi::xen::StartInfo = domain
        .memory()
        .read_obj(domain.layout().start_info)
        .map_err(|_| DeviceError::BadFrame {
            gfn: domain.layout().start_info / PAGE_SIZE,
            pages: 1,
        })?;
    Ok((si.store_evtchn, si.console.domu().evtchn))
}

/// pv-backend's grant access to `domain`'s grant table: the [`MAX_GRANT_FRAMES`] frames that
/// `GNTTABOP_setup_table` gives the guest, in its memory, served to back-ends in domain 0.
pub fn grant_table(domain: &Domain) -> Result<GrantTableV1<GuestMemoryMmap>, DeviceError> {
    let mem = domain.memory().memory();
    let gfn = domain.layout().grant_frames / PAGE_SIZE;
    let page = GuestPage::new(mem, gfn, u64::from(MAX_GRANT_FRAMES))?;
    // SAFETY: the frames are page-aligned (so 4-byte aligned) guest memory inside the mapping, which the
    // table's own clone of the regions keeps mapped for as long as the table or a mapping made from it
    // lives; the memory is shared with the guest and accessed only atomically here.
    Ok(unsafe {
        GrantTableV1::from_raw(
            domain.domid(),
            0,
            page.host_ptr(),
            MAX_GRANT_FRAMES,
            mem.clone(),
        )
    })
}
