//! netback under load with front ends that sleep on their event channels, so that notifications per
//! packet mean something: two vifs connected through the XenBus handshake on a switch, each served by
//! netback's own queue thread (sleeping on its doorbell when idle); guest A's front end thread fills
//! its TX ring, kicks only when `push_requests_and_check_notify` says so, and sleeps on its event
//! channel when the ring is full; guest B's front end thread sleeps on its event channel until
//! packets arrive, reads them and reposts the buffers (kicking only when asked). Packets per second
//! at 64 and 1500 bytes and bytes per second of 64 KiB TCPv4 GSO packets (×8 for Gbit/s), with
//! every notification both ways counted and printed per packet delivered. A's front end is faster
//! than B's path (netback's RX copies into B's granted pages) and the switch drops what B's port
//! cannot queue, as a bridge would: the rates are of packets *received* (see `session`), and the
//! share dropped is printed.
//!
//! `cargo bench -p pv-backend --features test-utils --bench net_evented`

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::backend::{Doorbell, LocalEventChannels, LocalXs, XenbusBackend, XsHandle};
use pv_backend::blk::front::{TestGuest, wait_state};
use pv_backend::net::switch::{Switch, SwitchConfig};
use pv_backend::net::xenbus::{NetBack, NetBackConfig};
use pv_backend::xenstore::XenStore;
use pv_backend::xenstore::server::{SharedStore, lock};
use xen_abi::netif::{
    ExtraFlags, NET_RX_RING_SIZE, NET_TX_RING_SIZE, NetRxFlags, NetTxFlags, NetifExtraInfo,
    NetifExtraInfoGso, NetifRx, NetifRxRequest, NetifTx, NetifTxRequest, XEN_NETIF_GSO_TYPE_TCPV4,
};
use xen_abi::ring::{FrontRing, RawRingMemory};
use xen_abi::xenbus::XenbusState;
use xen_abi::xs_wire::XsPerm;

const PAGE: usize = 4096;

fn ring_memory(guest: &TestGuest, frame: u32) -> RawRingMemory {
    // SAFETY: a page of the guest's memory, which the `Arc<TestGuest>` held next to the ring keeps
    // alive; only the ring's atomic and volatile accesses touch it.
    unsafe { RawRingMemory::new(NonNull::new(guest.page_ptr(frame)).unwrap(), PAGE) }
}

fn tcp4(len: usize, dst: u8, src: u8) -> Vec<u8> {
    let mut f = vec![0x5a; len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14).min(65535) as u16).to_be_bytes());
    f[20..22].copy_from_slice(&[0, 0]);
    f[23] = 6;
    f[46] = 5 << 4;
    f
}

/// A netfront's rings; one TX page per TX slot (each holds the same first page of the frame: only
/// the first fragment's headers matter to netback).
struct Front {
    guest: Arc<TestGuest>,
    tx: FrontRing<RawRingMemory, NetifTx>,
    rx: FrontRing<RawRingMemory, NetifRx>,
    tx_ref: u32,
    rx_ref: u32,
    tx_grefs: Vec<u32>,
    rx_grefs: Vec<u32>,
    port: u32,
    bell: Arc<Doorbell>,
}

impl Front {
    fn new(domid: u16, evtchns: &LocalEventChannels, first_page: &[u8]) -> Self {
        let guest = TestGuest::new(domid, 0, 1024, 8);
        let (txf, rxf) = (guest.alloc_pages(1), guest.alloc_pages(1));
        let tx = FrontRing::new(ring_memory(&guest, txf)).unwrap();
        let rx = FrontRing::new(ring_memory(&guest, rxf)).unwrap();
        let tx_grefs = (0..NET_TX_RING_SIZE)
            .map(|_| {
                let f = guest.alloc_pages(1);
                guest.write(f, 0, first_page);
                guest.grant(f, true)
            })
            .collect();
        let rx_grefs = (0..NET_RX_RING_SIZE)
            .map(|_| {
                let f = guest.alloc_pages(1);
                guest.grant(f, false)
            })
            .collect();
        let (port, bell) = evtchns.alloc(domid);
        Self {
            tx_ref: guest.grant(txf, false),
            rx_ref: guest.grant(rxf, false),
            guest,
            tx,
            rx,
            tx_grefs,
            rx_grefs,
            port,
            bell,
        }
    }

    /// Queues one packet of `len` bytes (GSO if `gso`); the caller checked the free slots.
    fn queue_packet(&mut self, len: usize, gso: bool) {
        let pieces = len.div_ceil(PAGE);
        for i in 0..pieces {
            let slot = self.tx.req_prod_pvt() as usize % NET_TX_RING_SIZE as usize;
            let gref = self.tx_grefs[slot];
            let mut fl = NetTxFlags::empty();
            if i + 1 < pieces {
                fl |= NetTxFlags::MORE_DATA;
            }
            if i == 0 && gso {
                fl |= NetTxFlags::EXTRA_INFO | NetTxFlags::CSUM_BLANK;
            }
            let size = if i == 0 {
                len
            } else {
                (len - i * PAGE).min(PAGE)
            };
            self.tx
                .put_request(&NetifTxRequest::new(gref, 0, fl, slot as u16, size as u16))
                .unwrap();
            if i == 0 && gso {
                let e = NetifExtraInfo::gso(
                    NetifExtraInfoGso::new(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0),
                    ExtraFlags::empty(),
                );
                self.tx
                    .put_request(&NetifTxRequest::from_extra_info(&e))
                    .unwrap();
            }
        }
    }

    fn post_rx(&mut self) {
        while self.rx.free_requests() > 0 {
            let id = (self.rx.req_prod_pvt() % NET_RX_RING_SIZE) as u16;
            self.rx
                .put_request(&NetifRxRequest::new(id, self.rx_grefs[usize::from(id)]))
                .unwrap();
        }
    }
}

/// The toolstack's nodes for vif 0 of `domid`; returns (backend, frontend) paths.
fn add_vif(store: &SharedStore, domid: u16) -> (String, String) {
    let be = format!("/local/domain/0/backend/vif/{domid}/0");
    let fe = format!("/local/domain/{domid}/device/vif/0");
    let mut s = lock(store);
    let c = s.connect(0, None);
    for (p, v) in [
        (format!("{be}/frontend"), fe.clone()),
        (format!("{be}/frontend-id"), domid.to_string()),
        (format!("{be}/state"), "1".into()),
        (format!("{fe}/state"), "1".into()),
    ] {
        s.write(c, 0, p.as_bytes(), v.as_bytes()).unwrap();
    }
    for p in ["", "/frontend", "/frontend-id", "/state"] {
        s.set_perms(
            c,
            0,
            format!("{be}{p}").as_bytes(),
            &XsPerm::owner_and_reader(0, domid),
        )
        .unwrap();
    }
    for p in ["", "/state"] {
        s.set_perms(
            c,
            0,
            format!("{fe}{p}").as_bytes(),
            &XsPerm::owner_and_reader(domid, 0),
        )
        .unwrap();
    }
    s.disconnect(c);
    (be, fe)
}

/// Connects `front`'s vif through the handshake; returns the back end's thread's stop flag.
fn connect(
    store: &SharedStore,
    evtchns: &Arc<LocalEventChannels>,
    sw: &Switch,
    front: &Front,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let domid = front.guest.domid;
    let (be, fe) = add_vif(store, domid);
    let nb = NetBack::new(
        Arc::new(front.guest.grants.clone()),
        evtchns.clone(),
        sw.add_port(),
        NetBackConfig::default(),
    );
    let bxs: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store.clone(), 0));
    let mut backend = XenbusBackend::new(bxs, &be, nb).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        backend.start().unwrap();
        while !s.load(Ordering::Relaxed) {
            let _ = backend.poll(Duration::from_millis(20));
        }
        pv_backend::backend::XenbusDevice::disconnect(backend.device_mut());
    });
    let xs = LocalXs::connect(store.clone(), domid);
    wait_state(
        &xs,
        &format!("{be}/state"),
        &[XenbusState::InitWait],
        Duration::from_secs(5),
    );
    for (k, v) in [
        ("tx-ring-ref", front.tx_ref.to_string()),
        ("rx-ring-ref", front.rx_ref.to_string()),
        ("event-channel", front.port.to_string()),
        ("request-rx-copy", "1".into()),
        ("feature-rx-notify", "1".into()),
        ("feature-gso-tcpv4", "1".into()),
        ("state", "3".into()),
    ] {
        xs.write(&format!("{fe}/{k}"), v.as_bytes()).unwrap();
    }
    let st = wait_state(
        &xs,
        &format!("{be}/state"),
        &[XenbusState::Connected],
        Duration::from_secs(5),
    );
    assert_eq!(st, XenbusState::Connected);
    (stop, t)
}

#[derive(Default, Clone, Copy)]
struct Counts {
    sent: u64,
    received: u64,
    a_kicks: u64,
    b_kicks: u64,
    a_sleeps: u64,
    b_sleeps: u64,
}

/// Sends `n` packets from A to B with both front ends on their own threads; returns the time until
/// B has them all. When some were dropped (B saw nothing for 50 ms after A sent its last), it returns
/// the time until B's last packet scaled by `n / received`: the time `n` packets take at the rate
/// that was delivered, so that criterion's packets per second are packets received per second.
fn session(
    evtchns: &Arc<LocalEventChannels>,
    a: &Mutex<Front>,
    b: &Mutex<Front>,
    n: u64,
    len: usize,
    gso: bool,
    counts: &Mutex<Counts>,
) -> Duration {
    let slots = len.div_ceil(PAGE) as u32 + u32::from(gso);
    let t0 = Instant::now();
    let done_sending = AtomicBool::new(false);
    let last_rx = Mutex::new((t0, 0u64));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut a = a.lock().unwrap();
            let domid = a.guest.domid;
            let (mut sent, mut kicks, mut sleeps) = (0, 0, 0);
            while sent < n {
                while sent < n && a.tx.free_requests() >= slots {
                    a.queue_packet(len, gso);
                    sent += 1;
                }
                if a.tx.push_requests_and_check_notify() {
                    evtchns.send(domid, a.port);
                    kicks += 1;
                }
                while a.tx.pop_response().unwrap().is_some() {}
                if a.tx.free_requests() < slots && !a.tx.final_check_for_responses().unwrap() {
                    sleeps += 1;
                    a.bell.wait(Duration::from_millis(100));
                }
            }
            done_sending.store(true, Ordering::Release);
            let mut c = counts.lock().unwrap();
            c.sent += sent;
            c.a_kicks += kicks;
            c.a_sleeps += sleeps;
        });
        s.spawn(|| {
            let mut b = b.lock().unwrap();
            let domid = b.guest.domid;
            let (mut got, mut kicks, mut sleeps) = (0u64, 0, 0);
            let mut idle_since: Option<Instant> = None;
            while got < n {
                let mut slots = 0;
                while let Some(r) = b.rx.pop_response().unwrap() {
                    slots += 1;
                    if r.rx_flags().contains(NetRxFlags::EXTRA_INFO) {
                        b.rx.pop_response().unwrap();
                    }
                    if !r.rx_flags().contains(NetRxFlags::MORE_DATA) {
                        got += 1;
                    }
                }
                if slots > 0 {
                    idle_since = None;
                    *last_rx.lock().unwrap() = (Instant::now(), got);
                    b.post_rx();
                    if b.rx.push_requests_and_check_notify() {
                        evtchns.send(domid, b.port);
                        kicks += 1;
                    }
                    continue;
                }
                if !b.rx.final_check_for_responses().unwrap() {
                    if done_sending.load(Ordering::Acquire) {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(50) {
                            break;
                        }
                    }
                    sleeps += 1;
                    b.bell.wait(Duration::from_millis(20));
                }
            }
            let mut c = counts.lock().unwrap();
            c.received += got;
            c.b_kicks += kicks;
            c.b_sleeps += sleeps;
        });
    });
    let (last, got) = *last_rx.lock().unwrap();
    let took = last.duration_since(t0);
    if got >= n || got == 0 {
        took
    } else {
        took.mul_f64(n as f64 / got as f64)
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("netback_evented");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for (name, len, gso, per_iter) in [
        ("64", 64usize, false, 256u64),
        ("1500", 1500, false, 256),
        ("gso64k", 65_535, true, 32),
    ] {
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let first = tcp4(len, 2, 1);
        let first = &first[..first.len().min(PAGE)];
        let mut a = Front::new(1, &evtchns, first);
        let mut b = Front::new(2, &evtchns, &tcp4(64, 1, 2));
        b.post_rx();
        b.rx.push_requests();
        let (sa, ta) = connect(&store, &evtchns, &sw, &a);
        let (sb, tb) = connect(&store, &evtchns, &sw, &b);
        // B sends one frame so that the switch learns its address and A's frames are unicast.
        b.queue_packet(64, false);
        b.tx.push_requests();
        evtchns.send(2, b.port);
        std::thread::sleep(Duration::from_millis(50));
        while b.tx.pop_response().unwrap().is_some() {}
        // A's ring: drop what B's frame left there.
        a.post_rx();
        a.rx.push_requests();
        evtchns.send(1, a.port);
        let (a, b) = (Mutex::new(a), Mutex::new(b));
        let counts = Mutex::new(Counts::default());
        if gso {
            g.throughput(Throughput::Bytes(per_iter * len as u64));
        } else {
            g.throughput(Throughput::Elements(per_iter));
        }
        g.bench_function(BenchmarkId::new("netback", name), |bench| {
            bench
                .iter_custom(|iters| session(&evtchns, &a, &b, iters * per_iter, len, gso, &counts))
        });
        let c = *counts.lock().unwrap();
        let (pa, pb) = (a.lock().unwrap().port, b.lock().unwrap().port);
        let to_a = evtchns.notifications_to_front(1, pa);
        let to_b = evtchns.notifications_to_front(2, pb);
        let per = |x: u64| x as f64 / c.received.max(1) as f64;
        eprintln!(
            "netback_evented {name}: {} sent, {} received ({:.2}% dropped); per packet received: \
             A kicks {:.4}, TX-response events to A {:.4}, RX events to B {:.4}, B kicks (buffers \
             posted) {:.4}; front-end sleeps: A {}, B {}",
            c.sent,
            c.received,
            100.0 * (c.sent - c.received.min(c.sent)) as f64 / c.sent.max(1) as f64,
            per(c.a_kicks),
            per(to_a),
            per(to_b),
            per(c.b_kicks),
            c.a_sleeps,
            c.b_sleeps,
        );
        sa.store(true, Ordering::Relaxed);
        sb.store(true, Ordering::Relaxed);
        let _ = ta.join();
        let _ = tb.join();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
