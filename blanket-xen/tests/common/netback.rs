//! A test netback: the back-end half of the vif handshake over the real xenstored, TX parsed with
//! xen-abi's `TxPacketParser`, RX by copy into the guest's posted pages, grants mapped through the
//! emulated Xen. Hooks let a test make it hostile.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blanket_xen::emulated::BackendDomain;
use pv_backend::xenstore::server::lock;
use xen_abi::netif::{
    NetRxFlags, NetifExtraInfo, NetifRspStatus, NetifRx, NetifRxResponse, NetifTx, NetifTxResponse,
    TxPacketParser, TxParsed,
};
use xen_abi::ring::{BackRing, RingMemory};

use super::Xenstored;

pub const BE: &str = "/local/domain/0/backend/vif/1/0";
pub const FE: &str = "/local/domain/1/device/vif/0";
pub const MAC: &str = "00:16:3e:01:02:03";

pub type RxMangle = Box<dyn FnMut(u64, NetifRxResponse) -> NetifRxResponse + Send>;
pub type TxMangle = Box<dyn FnMut(u64, NetifTxResponse) -> NetifTxResponse + Send>;

pub struct Opts {
    pub rx_copy: bool,
    pub sg: bool,
    pub mac: Option<&'static str>,
    pub initwait_nodes: Vec<(&'static str, &'static str)>,
    /// Answer each TX packet (false: consume and never answer).
    pub answer_tx: bool,
    /// Put every frame sent back on the RX side.
    pub echo: bool,
    pub rx_mangle: Option<RxMangle>,
    pub tx_mangle: Option<TxMangle>,
    /// After the first TX answer, publish `rsp_prod` 50 ahead.
    pub tx_rsp_prod_jump: bool,
    /// Put this extra after the first slot of every received packet (`NETRXF_extra_info`).
    pub rx_extra: Option<NetifExtraInfo>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            rx_copy: true,
            sg: true,
            mac: Some(MAC),
            initwait_nodes: Vec::new(),
            answer_tx: true,
            echo: false,
            rx_mangle: None,
            tx_mangle: None,
            tx_rsp_prod_jump: false,
            rx_extra: None,
        }
    }
}

pub struct TestNetback {
    /// Frames the guest sent.
    pub outbox: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Frames to deliver to the guest.
    pub inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    back: BackendDomain,
    port: Arc<AtomicU32>,
}

impl Drop for TestNetback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The toolstack's nodes of vif 0 of domain 1 (back-end at [`BE`], front-end at [`FE`]), both in
/// Initialising, and the front-end's `mac` when given.
pub fn vif_nodes(xs: &Xenstored, mac: Option<&str>) {
    xs.let_read(BE);
    xs.write(&format!("{BE}/state"), "1");
    xs.write(&format!("{BE}/frontend"), FE);
    xs.write(&format!("{BE}/frontend-id"), "1");
    xs.give(FE);
    xs.write(&format!("{FE}/backend"), BE);
    xs.write(&format!("{FE}/backend-id"), "0");
    xs.write(&format!("{FE}/state"), "1");
    if let Some(mac) = mac {
        xs.write(&format!("{FE}/mac"), mac);
    }
}

impl TestNetback {
    pub fn start(xs: &Xenstored, mut opts: Opts) -> Self {
        vif_nodes(xs, opts.mac);
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let inbox = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let back = BackendDomain::new(Arc::clone(&xs.xen), 0);
        let port = Arc::new(AtomicU32::new(0));
        let thread = {
            let (store, dom0) = (Arc::clone(&xs.store), xs.dom0);
            let (outbox, inbox, stop, back, port_out) = (
                Arc::clone(&outbox),
                Arc::clone(&inbox),
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
                w("feature-rx-copy", if opts.rx_copy { "1" } else { "0" })?;
                w("feature-sg", if opts.sg { "1" } else { "0" })?;
                w("multi-queue-max-queues", "1")?;
                for (k, v) in &opts.initwait_nodes {
                    w(k, v)?;
                }
                w("state", "2")?;
                let t0 = Instant::now();
                while r(format!("{FE}/state")).as_deref() != Some("3") {
                    if t0.elapsed() > Duration::from_secs(5) || stop.load(Ordering::Relaxed) {
                        return Err("front-end never Initialised".into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let num = |k: &str| -> Result<u32, String> {
                    r(format!("{FE}/{k}"))
                        .ok_or(k.to_string())?
                        .parse()
                        .map_err(|_| k.to_string())
                };
                let (tx_ref, rx_ref, evtchn) = (
                    num("tx-ring-ref")?,
                    num("rx-ring-ref")?,
                    num("event-channel")?,
                );
                if num("request-rx-copy")? != 1 {
                    return Err("request-rx-copy".into());
                }
                let tx_page = back.map_grant(tx_ref, false).map_err(|e| e.to_string())?;
                let tx_rsp_prod = {
                    // SAFETY: rsp_prod, at offset 8 of the mapped ring page, 4-byte aligned.
                    unsafe { AtomicU32::from_ptr(tx_page.as_ptr().add(8).cast::<u32>()) }
                };
                let mut tx = BackRing::<_, NetifTx>::new(tx_page).map_err(|e| e.to_string())?;
                let rx_page = back.map_grant(rx_ref, false).map_err(|e| e.to_string())?;
                let mut rx = BackRing::<_, NetifRx>::new(rx_page).map_err(|e| e.to_string())?;
                let local = back.bind_interdomain(evtchn).map_err(|e| e.to_string())?;
                port_out.store(local, Ordering::Relaxed);
                w("state", "4")?;
                let (mut ntx, mut nrx) = (0u64, 0u64);
                let mut jumped = false;
                while !stop.load(Ordering::Relaxed) {
                    let mut notify = false;
                    // TX: whole packets.
                    loop {
                        let avail = tx.unconsumed_requests().map_err(|e| e.to_string())?;
                        if avail == 0 {
                            break;
                        }
                        let mut parser = TxPacketParser::<18>::new(avail);
                        let parsed = loop {
                            let req = tx
                                .pop_request()
                                .map_err(|e| e.to_string())?
                                .ok_or("short")?;
                            if let Some(p) = parser.push(req).map_err(|e| e.to_string())? {
                                break p;
                            }
                        };
                        let TxParsed::Packet(p) = parsed else {
                            return Err("unexpected multicast".into());
                        };
                        let mut frame = Vec::new();
                        for f in p.fragments() {
                            let m = back.map_grant(f.gref, true).map_err(|e| e.to_string())?;
                            let mut bytes = vec![0u8; usize::from(f.size)];
                            m.read(usize::from(f.offset), &mut bytes);
                            frame.extend_from_slice(&bytes);
                        }
                        if opts.echo {
                            inbox.lock().unwrap().push_back(frame.clone());
                        }
                        outbox.lock().unwrap().push(frame);
                        if opts.answer_tx {
                            for rsp in p.responses(NetifRspStatus::Okay) {
                                let rsp = match opts.tx_mangle.as_mut() {
                                    Some(m) => m(ntx, rsp),
                                    None => rsp,
                                };
                                ntx += 1;
                                tx.put_response(&rsp).map_err(|e| e.to_string())?;
                            }
                            notify |= tx.push_responses_and_check_notify();
                            if opts.tx_rsp_prod_jump && !jumped {
                                jumped = true;
                                let v = tx_rsp_prod.load(Ordering::Relaxed);
                                tx_rsp_prod.store(v.wrapping_add(50), Ordering::Release);
                                notify = true;
                            }
                        }
                    }
                    // RX: whole packets, when the guest posted enough pages.
                    loop {
                        let Some(len) = inbox.lock().unwrap().front().map(Vec::len) else {
                            break;
                        };
                        let slots =
                            len.div_ceil(4096).max(1) as u32 + u32::from(opts.rx_extra.is_some());
                        if rx.unconsumed_requests().map_err(|e| e.to_string())? < slots {
                            break;
                        }
                        let frame = inbox.lock().unwrap().pop_front().unwrap();
                        let chunks: Vec<&[u8]> = if frame.is_empty() {
                            vec![&[][..]]
                        } else {
                            frame.chunks(4096).collect()
                        };
                        let last = chunks.len() - 1;
                        for (i, chunk) in chunks.into_iter().enumerate() {
                            let req = rx
                                .pop_request()
                                .map_err(|e| e.to_string())?
                                .ok_or("rx short")?;
                            let buf = req.validate().map_err(|e| e.to_string())?;
                            let m = back.map_grant(buf.gref, false).map_err(|e| e.to_string())?;
                            m.write(0, chunk);
                            let mut flags = if i < last {
                                NetRxFlags::MORE_DATA
                            } else {
                                NetRxFlags::empty()
                            };
                            if i == 0 && opts.rx_extra.is_some() {
                                flags |= NetRxFlags::EXTRA_INFO;
                            }
                            let rsp = NetifRxResponse::data(buf.id, 0, chunk.len() as u16, flags)
                                .map_err(|e| e.to_string())?;
                            let rsp = match opts.rx_mangle.as_mut() {
                                Some(m) => m(nrx, rsp),
                                None => rsp,
                            };
                            nrx += 1;
                            rx.put_response(&rsp).map_err(|e| e.to_string())?;
                            if i == 0
                                && let Some(extra) = opts.rx_extra
                            {
                                // The extra takes the next slot; its request's buffer is not used.
                                rx.pop_request()
                                    .map_err(|e| e.to_string())?
                                    .ok_or("rx short")?;
                                rx.put_response(&NetifRxResponse::from_extra_info(&extra))
                                    .map_err(|e| e.to_string())?;
                            }
                        }
                        notify |= rx.push_responses_and_check_notify();
                    }
                    if notify {
                        back.notify(local).map_err(|e| e.to_string())?;
                    }
                    let more_tx = tx.final_check_for_requests().map_err(|e| e.to_string())?;
                    if !more_tx {
                        let _ = back.wait(local, Duration::from_millis(5));
                    }
                }
                Ok(())
            })
        };
        Self {
            outbox,
            inbox,
            stop,
            thread: Some(thread),
            back,
            port,
        }
    }

    /// Wakes the back-end thread (after queueing RX frames).
    pub fn kick(&self) {
        let p = self.port.load(Ordering::Relaxed);
        if p != 0 {
            let _ = self.back.kick_self(p);
        }
    }

    pub fn deliver(&self, frame: Vec<u8>) {
        self.inbox.lock().unwrap().push_back(frame);
        self.kick();
    }

    pub fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.kick();
        self.thread.take().unwrap().join().unwrap()
    }
}
