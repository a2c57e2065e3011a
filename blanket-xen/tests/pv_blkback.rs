//! blkfront against pv-backend's blkback (the workspace's real back-end), over the real xenstored: the
//! emulated Xen's grant mapping and event channels are adapted to pv-backend's back-end traits, as a
//! hypervisor layer would do.

mod common;

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blanket_xen::blk::{BlkConfig, BlkFront};
use blanket_xen::emulated::{BackendDomain, GrantMapping as EmuMapping};
use common::{SECOND, Xenstored};
use pv_backend::backend::{
    Doorbell, EventChannel, EventChannelError, EventChannels, GrantAccess, GrantAccessMode,
    GrantMapError, GrantMapping, GrantRelease, LocalXs, XenbusBackend, XsHandle,
};
use pv_backend::blk::{BlkBack, MemDevice};
use xen_abi::DomId;
use xen_abi::grant_table::{GrantError, GrantRef};
use xen_abi::ring::RingMemory;
use xen_abi::xenbus::XenbusState;

/// pv-backend's grant access over the emulated Xen's grant mapping.
struct Grants {
    back: BackendDomain,
    held: Mutex<HashMap<(GrantRef, bool), Vec<EmuMapping>>>,
}

impl GrantRelease for Grants {
    fn release(&self, gref: GrantRef, mode: GrantAccessMode) {
        let mut held = self.held.lock().unwrap();
        if let Some(v) = held.get_mut(&(gref, mode.is_read_only())) {
            v.pop();
        }
    }
}

struct GrantsHandle(Arc<Grants>);

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
struct Evtchns {
    back: BackendDomain,
    stop: Arc<AtomicBool>,
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

const BE: &str = "/local/domain/0/backend/vbd/1/51712";
const FE: &str = "/local/domain/1/device/vbd/51712";

#[test]
fn blkfront_drives_pv_backends_blkback() {
    let xs = Xenstored::start(300);
    // The toolstack's nodes.
    xs.let_read(BE);
    for (k, v) in [
        ("frontend", FE),
        ("frontend-id", "1"),
        ("online", "1"),
        ("state", "1"),
    ] {
        xs.write(&format!("{BE}/{k}"), v);
    }
    xs.give(FE);
    xs.write(&format!("{FE}/backend"), BE);
    xs.write(&format!("{FE}/backend-id"), "0");
    // As libxl and pv-backend's `add_vbd` do: a front-end `state` before the back-end starts (blkback
    // closes a device whose front-end has no state).
    xs.write(&format!("{FE}/state"), "1");

    let back = BackendDomain::new(Arc::clone(&xs.xen), 0);
    let stop = Arc::new(AtomicBool::new(false));
    let grants = GrantsHandle(Arc::new(Grants {
        back: back.clone(),
        held: Mutex::default(),
    }));
    let evtchns = Arc::new(Evtchns {
        back: back.clone(),
        stop: Arc::clone(&stop),
    });
    let dev = MemDevice::new(8 << 20, 512);
    let blk = BlkBack::new(
        Arc::new(grants),
        evtchns,
        Arc::new(dev.clone()),
        pv_backend::blk::BlkConfig::default(),
    );
    let thread = {
        let (store, stop) = (Arc::clone(&xs.store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let xsh: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store, 0));
            let mut be = XenbusBackend::new(xsh, BE, blk).expect("backend");
            be.start().expect("start");
            while !stop.load(Ordering::Relaxed) {
                be.poll(Duration::from_millis(10)).expect("handshake");
            }
            pv_backend::backend::XenbusDevice::disconnect(be.device_mut());
        })
    };

    let mut xb = xs.client();
    let ring = xs.xen.alloc_pages(1).unwrap();
    let pool = xs.xen.alloc_pages(33 * 8).unwrap();
    let config = BlkConfig {
        pages_per_request: 32,
        timeout_ns: 5 * SECOND,
    };
    let mut front = BlkFront::connect(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vbd/51712",
        ring,
        pool,
        config,
    )
    .unwrap();
    assert_eq!(front.info().sectors, (8 << 20) / 512);
    assert_eq!(front.info().max_indirect_segments, 256);
    assert!(
        front.uses_indirect(),
        "pv-backend's blkback offers indirect requests"
    );
    assert_eq!(xs.read(&format!("{BE}/state")).as_deref(), Some("4"));

    for (i, (sector, len)) in [
        (0u64, 512usize),
        (7, 4096),
        (100, 11 * 4096),
        (2048, 32 * 4096),
        (5000, 3 * 512),
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
            .collect();
        front.write(sector, &data).unwrap();
        assert_eq!(
            dev.read_bytes(sector * 512, len),
            data,
            "the disk holds what was written"
        );
        let mut back_buf = vec![0u8; len];
        front.read(sector, &mut back_buf).unwrap();
        assert_eq!(back_buf, data, "sector {sector}, {len} bytes");
    }
    if front.info().flush_cache {
        front.flush().unwrap();
    }
    // Many requests in flight at once.
    let ids: Vec<_> = (0..front.nr_slots())
        .map(|i| {
            front
                .submit_write(10_000 + i as u64 * 64, &vec![i as u8 + 1; 8192])
                .unwrap()
        })
        .collect();
    for id in ids {
        front.wait_for(id).unwrap();
        front.take_completion(id, &mut []).unwrap();
    }
    for i in 0..front.nr_slots() {
        assert_eq!(
            dev.read_bytes((10_000 + i as u64 * 64) * 512, 8192),
            vec![i as u8 + 1; 8192]
        );
    }
    // Every data grant was ended: only the ring's is left.
    assert_eq!(xs.xen.grant_table().granted(), 1);
    assert_eq!(front.device().state(), XenbusState::Connected);
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
}
