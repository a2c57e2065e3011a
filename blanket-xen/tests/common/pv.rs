//! Adapters from the emulated Xen to pv-backend's back-end traits (grant access, event channels), as a
//! hypervisor layer would write them, and pv-backend's blkback started on a thread.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use blanket_xen::emulated::{BackendDomain, GrantMapping as EmuMapping};
use pv_backend::backend::{
    Doorbell, EventChannel, EventChannelError, EventChannels, GrantAccess, GrantAccessMode,
    GrantMapError, GrantMapping, GrantRelease, LocalXs, XenbusBackend, XenbusDevice, XsHandle,
};
use pv_backend::blk::{BlkBack, MemDevice};
use xen_abi::DomId;
use xen_abi::grant_table::{GrantError, GrantRef};
use xen_abi::ring::RingMemory;

use super::Xenstored;

/// pv-backend's grant access over the emulated Xen's grant mapping.
pub struct Grants {
    pub back: BackendDomain,
    pub held: Mutex<HashMap<(GrantRef, bool), Vec<EmuMapping>>>,
}

impl GrantRelease for Grants {
    fn release(&self, gref: GrantRef, mode: GrantAccessMode) {
        let mut held = self.held.lock().unwrap();
        if let Some(v) = held.get_mut(&(gref, mode.is_read_only())) {
            v.pop();
        }
    }
}

pub struct GrantsHandle(pub Arc<Grants>);

impl GrantAccess for GrantsHandle {
    fn backend_domid(&self) -> DomId {
        self.0.back.domid()
    }
    fn map(
        &self,
        granter: DomId,
        gref: GrantRef,
        mode: GrantAccessMode,
    ) -> Result<GrantMapping, GrantMapError> {
        if granter != self.0.back.xen().domid() {
            return Err(GrantMapError::UnknownDomain { granter });
        }
        let m = self
            .0
            .back
            .map_grant(gref, mode.is_read_only())
            .map_err(|e| match e {
                blanket_xen::emulated::EmulationError::Grant { source, .. } => {
                    GrantMapError::Entry {
                        granter,
                        gref,
                        source,
                    }
                }
                _ => GrantMapError::Entry {
                    granter,
                    gref,
                    source: GrantError::BadRef {
                        gref,
                        nr_entries: 0,
                    },
                },
            })?;
        let ptr = NonNull::new(m.as_ptr()).unwrap();
        self.0
            .held
            .lock()
            .unwrap()
            .entry((gref, mode.is_read_only()))
            .or_default()
            .push(m);
        let owner: Arc<dyn GrantRelease> = self.0.clone();
        // SAFETY: the page stays mapped (and guest memory alive) until `release` drops our mapping, which
        // pv-backend's mapping does when it is dropped.
        Ok(unsafe { GrantMapping::new(ptr, gref, mode, owner) })
    }
}

/// pv-backend's event channels over the emulated Xen: a bridge thread rings the back-end's doorbell.
pub struct Evtchns {
    pub back: BackendDomain,
    pub stop: Arc<AtomicBool>,
}

struct Notifier(BackendDomain, u32);
impl EventChannel for Notifier {
    fn notify(&self) {
        let _ = self.0.notify(self.1);
    }
}

impl EventChannels for Evtchns {
    fn bind(
        &self,
        domid: DomId,
        port: u32,
        doorbell: Arc<Doorbell>,
    ) -> Result<Arc<dyn EventChannel>, EventChannelError> {
        let local = self
            .back
            .bind_interdomain(port)
            .map_err(|_| EventChannelError::NoSuchPort { domid, port })?;
        let (back, stop) = (self.back.clone(), Arc::clone(&self.stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match back.wait(local, Duration::from_millis(20)) {
                    Ok(blanket_xen::platform::Wake::Event) => doorbell.ring(),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Arc::new(Notifier(self.back.clone(), local)))
    }
}

pub const BE: &str = "/local/domain/0/backend/vbd/1/51712";
pub const FE: &str = "/local/domain/1/device/vbd/51712";

/// Writes the toolstack's nodes of device `kind`/`devid` of guest 1 served by dom0, and returns the
/// back-end's and front-end's paths.
fn toolstack_nodes(xs: &Xenstored, kind: &str, devid: u32) -> (String, String) {
    let be = format!("/local/domain/0/backend/{kind}/1/{devid}");
    let fe = format!("/local/domain/1/device/{kind}/{devid}");
    xs.let_read(&be);
    for (k, v) in [
        ("frontend", fe.as_str()),
        ("frontend-id", "1"),
        ("online", "1"),
        ("state", "1"),
    ] {
        xs.write(&format!("{be}/{k}"), v);
    }
    xs.give(&fe);
    xs.write(&format!("{fe}/backend"), &be);
    xs.write(&format!("{fe}/backend-id"), "0");
    // As libxl and pv-backend's `add_vbd` do: a front-end `state` before the back-end starts (blkback
    // closes a device whose front-end has no state).
    xs.write(&format!("{fe}/state"), "1");
    (be, fe)
}

/// pv-backend's grant access and event channels over the emulated Xen, for dom0; the event bridges
/// stop with `stop`.
fn adapters(xs: &Xenstored, stop: &Arc<AtomicBool>) -> (Arc<GrantsHandle>, Arc<Evtchns>) {
    let back = BackendDomain::new(Arc::clone(&xs.xen), 0);
    let grants = GrantsHandle(Arc::new(Grants {
        back: back.clone(),
        held: Mutex::default(),
    }));
    let evtchns = Arc::new(Evtchns {
        back,
        stop: Arc::clone(stop),
    });
    (Arc::new(grants), evtchns)
}

/// Serves `device` at back-end path `be` on a thread until `stop`, then returns what `done` takes from
/// it before it disconnects.
fn serve<D: XenbusDevice + Send + 'static, R: Send + 'static>(
    xs: &Xenstored,
    be: String,
    device: D,
    stop: &Arc<AtomicBool>,
    done: impl FnOnce(&mut D) -> R + Send + 'static,
) -> JoinHandle<R> {
    let (store, stop) = (Arc::clone(&xs.store), Arc::clone(stop));
    std::thread::spawn(move || {
        let xsh: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store, 0));
        let mut be = XenbusBackend::new(xsh, be, device).expect("backend");
        be.start().expect("start");
        while !stop.load(Ordering::Relaxed) {
            be.poll(Duration::from_millis(10)).expect("handshake");
        }
        let r = done(be.device_mut());
        be.device_mut().disconnect();
        r
    })
}

/// pv-backend's blkback serving vbd 51712 of the guest over a memory disk, on a thread.
pub struct PvBlkback {
    pub dev: MemDevice,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PvBlkback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl PvBlkback {
    /// Writes the toolstack's nodes and starts blkback over a memory disk of `size` bytes, for vbd 51712.
    pub fn start(xs: &Xenstored, size: u64) -> Self {
        Self::start_vbd(xs, size, 51712)
    }

    /// As `start`, for vbd `devid` (`device/vbd/<devid>`).
    pub fn start_vbd(xs: &Xenstored, size: u64, devid: u32) -> Self {
        let (be, _) = toolstack_nodes(xs, "vbd", devid);
        let stop = Arc::new(AtomicBool::new(false));
        let (grants, evtchns) = adapters(xs, &stop);
        let dev = MemDevice::new(size, 512);
        let blk = BlkBack::new(
            grants,
            evtchns,
            Arc::new(dev.clone()),
            pv_backend::blk::BlkConfig::default(),
        );
        let thread = serve(xs, be, blk, &stop, |_| ());
        Self {
            dev,
            stop,
            thread: Some(thread),
        }
    }
}

/// pv-backend's netback serving vif `devid` of the guest on a thread, its device a port of a switch
/// whose ports take `offloads`; `peer` is another port of that switch.
pub struct PvNetback {
    pub peer: pv_backend::net::switch::SwitchPort,
    stop: Arc<AtomicBool>,
    /// The back-end's thread; it returns each queue's counters when stopped.
    thread: Option<JoinHandle<Vec<pv_backend::net::back::NetQueueStats>>>,
}

impl Drop for PvNetback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl PvNetback {
    /// Writes the toolstack's nodes for vif `devid` (MAC `00:16:3e:00:00:<devid + 1>`) and starts
    /// netback offering `max_queues` queues.
    pub fn start(
        xs: &Xenstored,
        devid: u32,
        offloads: pv_backend::net::Offloads,
        max_queues: u32,
    ) -> Self {
        use pv_backend::net::switch::{Switch, SwitchConfig};
        use pv_backend::net::xenbus::{NetBack, NetBackConfig};
        let (be, fe) = toolstack_nodes(xs, "vif", devid);
        xs.write(
            &format!("{fe}/mac"),
            &format!("00:16:3e:00:00:{:02x}", devid + 1),
        );
        let sw = Switch::new(SwitchConfig {
            offloads,
            ..SwitchConfig::default()
        })
        .unwrap();
        let guest_port = sw.add_port();
        let peer = sw.add_port();
        let stop = Arc::new(AtomicBool::new(false));
        let (grants, evtchns) = adapters(xs, &stop);
        let config = NetBackConfig {
            max_queues,
            ..NetBackConfig::default()
        };
        let nb = NetBack::new(grants, evtchns, guest_port, config);
        let thread = serve(xs, be, nb, &stop, |nb| nb.queue_stats());
        Self {
            peer,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops netback and returns its queues' counters.
    pub fn stop(mut self) -> Vec<pv_backend::net::back::NetQueueStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}
