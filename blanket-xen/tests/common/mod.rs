//! The real xenstored of `pv-backend`, serving the emulated guest's XenStore page from a thread.
#![allow(dead_code)]

pub mod blkback;
pub mod netback;
pub mod pv;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use blanket_xen::emulated::{BackendDomain, EmulatedXen};
use blanket_xen::platform::EventChannels;
use blanket_xen::xenbus::XenBus;
use pv_backend::xenstore::ring::{EventChannel, RingConnection, SharedXenstorePage};
use pv_backend::xenstore::server::{SharedStore, lock};
use pv_backend::xenstore::{ConnEvent, ConnId, Notify, Quotas, XenStore};
use xen_abi::event_channel::EvtchnPort;
use xen_abi::ring::{RawRingMemory, RingMemory};
use xen_abi::xs_wire::XsPerm;

pub const GUEST: u16 = 1;
pub const SECOND: u64 = 1_000_000_000;

struct ToGuest(BackendDomain, EvtchnPort);
impl EventChannel for ToGuest {
    fn notify(&self) {
        let _ = self.0.notify(self.1);
    }
}

/// The guest, its XenStore page and port, and xenstored serving them.
pub struct Xenstored {
    pub xen: Arc<EmulatedXen>,
    pub store: SharedStore,
    pub dom0: ConnId,
    pub page: RawRingMemory,
    pub port: EvtchnPort,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<Option<String>>>,
    kick: (BackendDomain, EvtchnPort),
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.kick.0.kick_self(self.kick.1);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

impl Xenstored {
    pub fn start(pages: usize) -> Self {
        Self::start_at(pages, 0)
    }

    /// As `start`, with every index of the XenStore page starting at `idx`.
    pub fn start_at(pages: usize, idx: u32) -> Self {
        let xen = EmulatedXen::new(GUEST, pages, 4);
        let mut st = XenStore::new(Quotas::default());
        let dom0 = st.connect(0, None);
        let home = format!("/local/domain/{GUEST}");
        st.mkdir(dom0, 0, home.as_bytes()).unwrap();
        st.set_perms(dom0, 0, home.as_bytes(), &[XsPerm::owner(GUEST)])
            .unwrap();
        let store: SharedStore = Arc::new(Mutex::new(st));
        let page = xen.alloc_pages(1).unwrap();
        for off in [2048, 2052, 2056, 2060] {
            // SAFETY: the four indices of the XenStore page, inside the page, 4-byte aligned.
            unsafe {
                std::sync::atomic::AtomicU32::from_ptr(page.as_ptr().add(off).cast::<u32>())
                    .store(idx, Ordering::Relaxed)
            };
        }
        let port = xen.alloc_unbound(0).unwrap();
        let back = BackendDomain::new(Arc::clone(&xen), 0);
        let local = back.bind_interdomain(port).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (store, stop, back) = (Arc::clone(&store), Arc::clone(&stop), back.clone());
            let ptr = page.as_ptr() as usize;
            std::thread::spawn(move || {
                // SAFETY: the page is guest memory of `xen`, kept alive by the `Arc` inside `back` for the
                // whole thread, and both sides only access it atomically.
                let shared: &SharedXenstorePage =
                    unsafe { SharedXenstorePage::from_ptr(ptr as *mut u8) };
                let kick = back.clone();
                let notify: Notify = Arc::new(move |_: ConnEvent| {
                    let _ = kick.kick_self(local);
                });
                let mut ring = RingConnection::new(
                    &mut lock(&store),
                    GUEST,
                    shared,
                    ToGuest(back.clone(), local),
                    Some(notify),
                );
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = ring.process(&mut lock(&store)) {
                        return Some(e.to_string());
                    }
                    let _ = back.wait(local, Duration::from_millis(50));
                }
                None
            })
        };
        Self {
            xen,
            store,
            dom0,
            page,
            port,
            stop,
            server: Some(server),
            kick: (back, local),
        }
    }

    pub fn client(&self) -> XenBus<Arc<EmulatedXen>, RawRingMemory> {
        XenBus::new(Arc::clone(&self.xen), self.page, self.port, 5 * SECOND).unwrap()
    }

    /// A dom0 write, as a toolstack or back-end does.
    pub fn write(&self, path: &str, value: &str) {
        lock(&self.store)
            .write(self.dom0, 0, path.as_bytes(), value.as_bytes())
            .unwrap();
    }

    pub fn read(&self, path: &str) -> Option<String> {
        lock(&self.store)
            .read(self.dom0, 0, path.as_bytes())
            .ok()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Gives the guest full access to `path`.
    pub fn give(&self, path: &str) {
        let mut st = lock(&self.store);
        let _ = st.mkdir(self.dom0, 0, path.as_bytes());
        st.set_perms(self.dom0, 0, path.as_bytes(), &[XsPerm::owner(GUEST)])
            .unwrap();
    }

    /// Lets the guest read `path` (dom0 owns it).
    pub fn let_read(&self, path: &str) {
        let mut st = lock(&self.store);
        let _ = st.mkdir(self.dom0, 0, path.as_bytes());
        st.set_perms(
            self.dom0,
            0,
            path.as_bytes(),
            &XsPerm::owner_and_reader(0, GUEST),
        )
        .unwrap();
    }
}
