//! One xenstored per host: pv-backend's [`XenStore`], shared by every domain, serving each guest's XenStore
//! page (`start_info.store_mfn`, `store_evtchn`) with [`RingConnection`], and, if asked, Xen's tools through a
//! Unix socket ([`UnixServer`]).
//!
//! [`Xenstored::introduce`] does what `xl create` and C xenstored do together: it writes the guest's home
//! (`/local/domain/<domid>`, owned by the guest, readable by domain 0, with `name` and `domid`), introduces
//! the domain (`@introduceDomain` fires), binds domain 0 to the guest's store port, and starts a thread that
//! serves the page whenever the guest's event or the store's output rings its doorbell. Dropping the
//! returned [`StoreRing`] stops the thread and releases the domain (`@releaseDomain` fires; its nodes'
//! permissions no longer apply to a later domain with the same id).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pv_backend::backend::Doorbell;
use pv_backend::xenstore::ring::{RingConnection, SharedXenstorePage};
use pv_backend::xenstore::server::{SharedStore, UnixServer, lock};
use pv_backend::xenstore::{ConnEvent, Quotas, XenStore};
use xen_abi::DomId;
use xen_abi::xs_wire::XsPerm;

use super::{DeviceError, Dom0Port, GuestPage};
use crate::domain::{Domain, Hypervisor};
use crate::memory::PAGE_SIZE;

/// The longest a ring thread sleeps without an event (the doorbell wakes it for every event and for stop).
const IDLE_WAIT: Duration = Duration::from_secs(2);

/// The host's xenstored.
#[derive(Clone)]
pub struct Xenstored {
    store: SharedStore,
}

impl std::fmt::Debug for Xenstored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xenstored").finish_non_exhaustive()
    }
}

impl Default for Xenstored {
    fn default() -> Self {
        Self::new()
    }
}

impl Xenstored {
    /// An empty store with C xenstored's default quotas.
    pub fn new() -> Self {
        Self {
            store: Arc::new(std::sync::Mutex::new(XenStore::new(Quotas::default()))),
        }
    }

    /// The store, shared with pv-backend's back-ends ([`pv_backend::backend::LocalXs`]).
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Serves the store on a Unix socket at `path` (libxenstore's protocol: `XENSTORED_PATH=path
    /// xenstore-ls`), on a thread that runs for the rest of the process.
    pub fn serve_unix(&self, path: impl AsRef<Path>) -> Result<(), DeviceError> {
        let path = path.as_ref();
        let server = UnixServer::bind(path, self.store.clone()).map_err(|e| DeviceError::Io {
            what: format!("binding xenstored's socket {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::thread::Builder::new()
            .name("xenstored-unix".into())
            .spawn(move || {
                let _ = server.serve();
            })
            .map_err(|source| DeviceError::Io {
                what: "starting xenstored's socket thread".into(),
                source,
            })?;
        Ok(())
    }

    /// Reads `path` as domain 0 (`None` if it does not exist).
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let mut s = lock(&self.store);
        let c = s.connect(0, None);
        let v = s.read(c, 0, path.as_bytes()).ok();
        s.disconnect(c);
        v
    }

    /// Writes `path` as domain 0, then gives it the permissions `perms` (the first entry is the owner and
    /// the default), creating parents as needed.
    pub fn write_with_perms(
        &self,
        path: &str,
        value: &[u8],
        perms: &[XsPerm],
    ) -> Result<(), DeviceError> {
        let mut s = lock(&self.store);
        let c = s.connect(0, None);
        let r = s
            .write(c, 0, path.as_bytes(), value)
            .and_then(|()| {
                if perms.is_empty() {
                    Ok(())
                } else {
                    s.set_perms(c, 0, path.as_bytes(), perms)
                }
            })
            .map_err(|source| DeviceError::Store {
                what: format!("writing {path}"),
                source,
            });
        s.disconnect(c);
        r
    }

    /// Removes `path` and everything below it, as domain 0 (nothing if it does not exist).
    pub fn rm(&self, path: &str) {
        let mut s = lock(&self.store);
        let c = s.connect(0, None);
        let _ = s.rm(c, 0, path.as_bytes());
        s.disconnect(c);
    }

    /// Every path in the store (for tests and tools).
    pub fn paths(&self) -> Vec<String> {
        lock(&self.store).paths()
    }

    /// Introduces `domain` and serves its XenStore page until the returned handle is dropped.
    pub fn introduce(&self, hv: &Hypervisor, domain: &Domain) -> Result<StoreRing, DeviceError> {
        let domid = domain.domid();
        let gfn = domain.layout().xenstore / PAGE_SIZE;
        let page = GuestPage::new(domain.memory().memory(), gfn, 1)?;
        let evtchn = super::boot_ports(domain)?.0;
        let home = format!("/local/domain/{domid}");
        let owner = XsPerm::owner_and_reader(domid, 0);
        let readable = XsPerm::owner_and_reader(0, domid);
        self.write_with_perms(&home, b"", &owner)?;
        self.write_with_perms(&format!("{home}/name"), domain.name().as_bytes(), &readable)?;
        self.write_with_perms(
            &format!("{home}/domid"),
            domid.to_string().as_bytes(),
            &readable,
        )?;
        for dir in ["device", "data", "control"] {
            self.write_with_perms(&format!("{home}/{dir}"), b"", &owner)?;
        }

        let doorbell = Doorbell::try_new().map_err(|source| DeviceError::Io {
            what: "the XenStore ring's doorbell (an eventfd)".into(),
            source,
        })?;
        let port = Dom0Port::bind(hv, domid, evtchn, doorbell.clone(), Arc::default())?;
        let closed = Arc::new(AtomicBool::new(false));
        let conn = {
            let mut s = lock(&self.store);
            let c0 = s.connect(0, None);
            let r = s.introduce(c0, domid, gfn as i64, evtchn);
            s.disconnect(c0);
            r.map_err(|source| DeviceError::Store {
                what: format!("introducing domain {domid}"),
                source,
            })?;
            s.connect(domid, None)
        };
        let notify = {
            let (db, closed) = (doorbell.clone(), closed.clone());
            Arc::new(move |ev: ConnEvent| {
                if ev == ConnEvent::Close {
                    closed.store(true, Ordering::SeqCst);
                }
                db.ring();
            })
        };
        lock(&self.store).set_notify(conn, Some(notify));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let thread = {
            let (store, stop, db, requests) = (
                self.store.clone(),
                stop.clone(),
                doorbell.clone(),
                requests.clone(),
            );
            std::thread::Builder::new()
                .name(format!("xs-ring-{domid}"))
                .spawn(move || serve_ring(store, page, port, conn, domid, db, stop, requests))
                .map_err(|source| DeviceError::Io {
                    what: "starting the XenStore ring thread".into(),
                    source,
                })?
        };
        Ok(StoreRing {
            store: self.store.clone(),
            domid,
            stop,
            doorbell,
            thread: Some(thread),
            wakeups: requests,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_ring(
    store: SharedStore,
    page: GuestPage,
    port: Dom0Port,
    conn: pv_backend::xenstore::ConnId,
    domid: DomId,
    doorbell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    wakeups: Arc<AtomicU64>,
) {
    // SAFETY: the page is one page of guest memory (4 KiB, page-aligned), kept mapped by `page`, which
    // outlives `shared` (both live in this function); the guest accesses it concurrently, and this side only
    // through the atomics of SharedXenstorePage.
    let shared: &SharedXenstorePage =
        unsafe { SharedXenstorePage::from_ptr(page.host_ptr().as_ptr()) };
    let mut ring = RingConnection::attach(conn, domid, shared, port);
    while !stop.load(Ordering::SeqCst) {
        let r = ring.process(&mut lock(&store));
        if let Err(e) = r {
            tracing::warn!(domid, %e, "XenStore ring stopped");
            break;
        }
        doorbell.wait(IDLE_WAIT);
        wakeups.fetch_add(1, Ordering::Relaxed);
    }
    // Wait to be stopped, so the page stays owned by this thread until the domain is released.
    while !stop.load(Ordering::SeqCst) {
        doorbell.wait(IDLE_WAIT);
    }
}

/// A domain's XenStore connection, served on a thread; dropping it releases the domain.
pub struct StoreRing {
    store: SharedStore,
    domid: DomId,
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
    thread: Option<JoinHandle<()>>,
    wakeups: Arc<AtomicU64>,
}

impl std::fmt::Debug for StoreRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRing")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

impl StoreRing {
    /// The domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// How many times the ring thread woke up.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

impl Drop for StoreRing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.doorbell.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        lock(&self.store).destroy_domain(self.domid);
    }
}
