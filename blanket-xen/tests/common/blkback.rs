//! A test blkback: the back-end half of the handshake over the real xenstored, and a RAM disk served
//! from the guest's ring with xen-abi's `BackRing`, mapping the guest's grants through the emulated Xen.
//! Hooks let a test make it hostile.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blanket_xen::emulated::{BackendDomain, GrantMapping};
use pv_backend::xenstore::server::lock;
use xen_abi::blkif::{
    BLKIF_RSP_OKAY, Blkif, BlkifLimits, BlkifOperation, BlkifRequest, BlkifRequestSegment,
    BlkifResponse, CheckedSegment,
};
use xen_abi::ring::{BackRing, RingMemory};
use zerocopy::FromBytes;

use super::Xenstored;

pub const BE: &str = "/local/domain/0/backend/vbd/1/768";
pub const FE: &str = "/local/domain/1/device/vbd/768";

/// Rewrites (or drops, with `None`) the response to the `n`th request.
pub type Mangle = Box<dyn FnMut(u64, &BlkifRequest, BlkifResponse) -> Option<BlkifResponse> + Send>;

pub struct Opts {
    pub sectors: u64,
    pub sector_size: u32,
    pub info: u32,
    pub flush: bool,
    pub discard: bool,
    pub discard_secure: bool,
    pub max_indirect: u32,
    /// Written after the defaults at InitWait (overrides them).
    pub initwait_nodes: Vec<(&'static str, &'static str)>,
    /// Written after the defaults before Connected.
    pub connected_nodes: Vec<(&'static str, &'static str)>,
    /// Nodes removed before Connected.
    pub remove_nodes: Vec<&'static str>,
    /// Instead of InitWait, write this state and stop.
    pub first_state: Option<&'static str>,
    pub mangle: Option<Mangle>,
    /// Keep every grant mapped after answering.
    pub hold_grants: bool,
    /// After answering the first request, publish `rsp_prod` 100 ahead.
    pub rsp_prod_jump: bool,
    /// Write garbage into `req_event` after every pass (the back-end's event index).
    pub garbage_req_event: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            sectors: 2048,
            sector_size: 512,
            info: 0,
            flush: true,
            discard: true,
            discard_secure: false,
            max_indirect: 0,
            initwait_nodes: Vec::new(),
            connected_nodes: Vec::new(),
            remove_nodes: Vec::new(),
            first_state: None,
            mangle: None,
            hold_grants: false,
            rsp_prod_jump: false,
            garbage_req_event: false,
        }
    }
}

pub struct TestBlkback {
    pub disk: Arc<Mutex<Vec<u8>>>,
    /// The operation of every request served, in order.
    pub ops: Arc<Mutex<Vec<u8>>>,
    pub requests: Arc<AtomicU32>,
    pub held: Arc<Mutex<Vec<GrantMapping>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    back: BackendDomain,
    port: Arc<AtomicU32>,
}

impl Drop for TestBlkback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let p = self.port.load(Ordering::Relaxed);
        if p != 0 {
            let _ = self.back.kick_self(p);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TestBlkback {
    /// Writes the device's nodes (as a toolstack does) and starts the back-end thread.
    pub fn start(xs: &Xenstored, mut opts: Opts) -> Self {
        xs.let_read(BE);
        xs.write(&format!("{BE}/state"), "1");
        xs.write(&format!("{BE}/frontend"), FE);
        xs.give(FE);
        xs.write(&format!("{FE}/backend"), BE);
        xs.write(&format!("{FE}/backend-id"), "0");
        let disk = Arc::new(Mutex::new(vec![0u8; (opts.sectors * 512) as usize]));
        let requests = Arc::new(AtomicU32::new(0));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let back = BackendDomain::new(std::sync::Arc::clone(&xs.xen), 0);
        let port = Arc::new(AtomicU32::new(0));
        let thread = {
            let (store, dom0) = (Arc::clone(&xs.store), xs.dom0);
            let ops = Arc::clone(&ops);
            let (disk, requests, held, stop, back, port_out) = (
                Arc::clone(&disk),
                Arc::clone(&requests),
                Arc::clone(&held),
                Arc::clone(&stop),
                back.clone(),
                Arc::clone(&port),
            );
            std::thread::spawn(move || -> Result<(), String> {
                let w = |k: &str, v: &str| {
                    lock(&store)
                        .write(dom0, 0, format!("{BE}/{k}").as_bytes(), v.as_bytes())
                        .map_err(|e| e.to_string())
                };
                let r = |path: String| -> Option<String> {
                    lock(&store)
                        .read(dom0, 0, path.as_bytes())
                        .ok()
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                };
                w(
                    "feature-max-indirect-segments",
                    &opts.max_indirect.to_string(),
                )?;
                w("max-ring-page-order", "0")?;
                w("multi-queue-max-queues", "1")?;
                for (k, v) in &opts.initwait_nodes {
                    w(k, v)?;
                }
                if let Some(s) = opts.first_state {
                    return w("state", s);
                }
                w("state", "2")?;
                // Wait for the front-end's ring.
                let t0 = Instant::now();
                while r(format!("{FE}/state")).as_deref() != Some("3") {
                    if t0.elapsed() > Duration::from_secs(5) || stop.load(Ordering::Relaxed) {
                        return Err("front-end never Initialised".into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let ring_ref: u32 = r(format!("{FE}/ring-ref"))
                    .ok_or("ring-ref")?
                    .parse()
                    .map_err(|_| "ring-ref")?;
                let evtchn: u32 = r(format!("{FE}/event-channel"))
                    .ok_or("event-channel")?
                    .parse()
                    .map_err(|_| "evtchn")?;
                if r(format!("{FE}/protocol")).as_deref() != Some("x86_64-abi") {
                    return Err("protocol".into());
                }
                let ring_page = back.map_grant(ring_ref, false).map_err(|e| e.to_string())?;
                let rsp_prod_cell = {
                    // SAFETY: rsp_prod, at offset 8 of the mapped ring page, 4-byte aligned.
                    unsafe { AtomicU32::from_ptr(ring_page.as_ptr().add(8).cast::<u32>()) }
                };
                let req_event_cell = {
                    // SAFETY: req_event, at offset 4 of the mapped ring page, 4-byte aligned.
                    unsafe { AtomicU32::from_ptr(ring_page.as_ptr().add(4).cast::<u32>()) }
                };
                let mut ring = BackRing::<_, Blkif>::new(ring_page).map_err(|e| e.to_string())?;
                let mut garbage = 0x9e37_79b9u32;
                let local = back.bind_interdomain(evtchn).map_err(|e| e.to_string())?;
                port_out.store(local, Ordering::Relaxed);
                w("sectors", &opts.sectors.to_string())?;
                w("sector-size", &opts.sector_size.to_string())?;
                w("info", &opts.info.to_string())?;
                w("feature-flush-cache", if opts.flush { "1" } else { "0" })?;
                w("feature-discard", if opts.discard { "1" } else { "0" })?;
                w(
                    "discard-secure",
                    if opts.discard_secure { "1" } else { "0" },
                )?;
                for (k, v) in &opts.connected_nodes {
                    w(k, v)?;
                }
                for k in &opts.remove_nodes {
                    let _ = lock(&store).rm(dom0, 0, format!("{BE}/{k}").as_bytes());
                }
                w("state", "4")?;
                let limits = BlkifLimits::new(opts.sectors, opts.sector_size)
                    .map_err(|e| e.to_string())?
                    .with_read_only(opts.info & 4 != 0)
                    .with_flush_cache(opts.flush)
                    .with_discard(opts.discard, opts.discard_secure)
                    .with_max_indirect_segments(opts.max_indirect)
                    .map_err(|e| e.to_string())?;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut answered = false;
                    while let Some(req) = ring.pop_request().map_err(|e| e.to_string())? {
                        requests.fetch_add(1, Ordering::Relaxed);
                        ops.lock().unwrap().push(req.operation);
                        let mut maps = Vec::new();
                        let rsp = serve(&back, &req, &limits, &disk, &mut maps);
                        let rsp = match opts.mangle.as_mut() {
                            Some(m) => m(n, &req, rsp),
                            None => Some(rsp),
                        };
                        n += 1;
                        if opts.hold_grants {
                            held.lock().unwrap().extend(maps);
                        }
                        if let Some(rsp) = rsp {
                            ring.put_response(&rsp).map_err(|e| e.to_string())?;
                            answered = true;
                        }
                    }
                    if answered {
                        let notify = ring.push_responses_and_check_notify();
                        if opts.rsp_prod_jump {
                            let p = rsp_prod_cell.load(Ordering::Relaxed);
                            rsp_prod_cell.store(p.wrapping_add(100), Ordering::Release);
                        }
                        if notify || opts.rsp_prod_jump {
                            back.notify(local).map_err(|e| e.to_string())?;
                        }
                    }
                    let more = ring.final_check_for_requests().map_err(|e| e.to_string())?;
                    if opts.garbage_req_event {
                        garbage = garbage
                            .wrapping_mul(747_796_405)
                            .wrapping_add(2_891_336_453);
                        req_event_cell.store(garbage, Ordering::Release);
                    }
                    if !more {
                        let _ = back.wait(local, Duration::from_millis(20));
                    }
                }
                Ok(())
            })
        };
        Self {
            disk,
            ops,
            requests,
            held,
            stop,
            thread: Some(thread),
            back,
            port,
        }
    }

    /// The back-end's event channel port, once bound, and its domain.
    pub fn local_port(&self) -> (BackendDomain, u32) {
        (self.back.clone(), self.port.load(Ordering::Relaxed))
    }

    /// Stops the thread and returns its result.
    pub fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let p = self.port.load(Ordering::Relaxed);
        if p != 0 {
            let _ = self.back.kick_self(p);
        }
        self.thread.take().unwrap().join().unwrap()
    }
}

fn copy_segments(
    back: &BackendDomain,
    segs: impl Iterator<Item = CheckedSegment>,
    mut sector: u64,
    write: bool,
    disk: &Mutex<Vec<u8>>,
    maps: &mut Vec<GrantMapping>,
) -> Result<(), ()> {
    let mut disk = disk.lock().unwrap();
    for seg in segs {
        // A write's pages are read by the back-end: map them read-only.
        let m = back.map_grant(seg.gref, write).map_err(|_| ())?;
        let at = (sector * 512) as usize;
        let range = at..at + seg.len();
        if write {
            m.read(seg.offset(), &mut disk[range]);
        } else {
            m.write(seg.offset(), &disk[range]);
        }
        sector += u64::from(seg.nr_sectors());
        maps.push(m);
    }
    Ok(())
}

/// Serves one request on the RAM disk, as blkback would.
fn serve(
    back: &BackendDomain,
    req: &BlkifRequest,
    limits: &BlkifLimits,
    disk: &Mutex<Vec<u8>>,
    maps: &mut Vec<GrantMapping>,
) -> BlkifResponse {
    let op = match req.validate(limits) {
        Ok(op) => op,
        Err(e) => return req.error_response(&e),
    };
    let ok = match op {
        BlkifOperation::Read(rw) => copy_segments(
            back,
            rw.segments.iter().copied(),
            rw.sector_number,
            false,
            disk,
            maps,
        ),
        BlkifOperation::Write(rw) => copy_segments(
            back,
            rw.segments.iter().copied(),
            rw.sector_number,
            true,
            disk,
            maps,
        ),
        BlkifOperation::FlushDiskcache(_) | BlkifOperation::WriteBarrier(_) => Ok(()),
        BlkifOperation::Discard(d) => {
            let mut disk = disk.lock().unwrap();
            let at = (d.sector_number * 512) as usize;
            disk[at..at + (d.nr_sectors * 512) as usize].fill(0);
            Ok(())
        }
        BlkifOperation::Indirect(ind) => (|| {
            let mut segs = Vec::new();
            for (page, gref) in ind.indirect_pages().iter().enumerate() {
                let m = back.map_grant(*gref, true).map_err(|_| ())?;
                let mut bytes = vec![0u8; ind.segments_in_page(page) * 8];
                m.read(0, &mut bytes);
                segs.extend(
                    <[BlkifRequestSegment]>::ref_from_bytes(&bytes[..])
                        .map_err(|_| ())?
                        .iter()
                        .copied(),
                );
                maps.push(m);
            }
            let io = ind.check_segments(&segs, limits).map_err(|_| ())?;
            let write = io.direction == xen_abi::blkif::BlkifDirection::Write;
            copy_segments(back, io.segments(), io.sector_number, write, disk, maps)
        })(),
    };
    match ok {
        Ok(()) => req.response(BLKIF_RSP_OKAY),
        Err(()) => req.response(xen_abi::blkif::BLKIF_RSP_ERROR),
    }
}
