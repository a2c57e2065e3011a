//! Multi-queue netback through the XenBus handshake, driven by a Rust front end on real granted
//! pages: `multi-queue-max-queues` offered, `multi-queue-num-queues` and the `queue-N` directories
//! read (and the hostile cases of HOSTILE-INPUT.md's handshake: a queue count of 0 or above the
//! maximum, duplicate or missing `queue-N` directories), a thread per queue, and received frames
//! steered to the queue that the control ring's Toeplitz hash and mapping table select.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_backend::backend::{
    Doorbell, EventChannel, GrantAccess, GrantedRing, LocalEventChannels, LocalXs, XenbusBackend,
    XsHandle,
};
use pv_backend::blk::front::{TestGuest, wait_state};
use pv_backend::net::back::{NetQueue, NetQueueConfig};
use pv_backend::net::switch::{Switch, SwitchConfig, SwitchPort};
use pv_backend::net::xenbus::{NetBack, NetBackConfig};
use pv_backend::xenstore::XenStore;
use pv_backend::xenstore::server::{SharedStore, lock};
use xen_abi::netif::{
    NET_RX_RING_SIZE, NetRxFlags, NetTxFlags, NetifCtrl, NetifRx, NetifRxRequest, NetifTx,
    NetifTxRequest, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, XEN_NETIF_CTRL_STATUS_SUCCESS,
    XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
    XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, XEN_NETIF_EXTRA_TYPE_HASH, XenNetifCtrlRequest,
    toeplitz_hash,
};
use xen_abi::ring::{FrontRing, RawRingMemory};
use xen_abi::xenbus::XenbusState;
use xen_abi::xs_wire::XsPerm;

const PAGE: usize = 4096;
const T: Duration = Duration::from_secs(5);

/// The key of Microsoft's RSS verification suite.
const RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

fn ring_memory(guest: &TestGuest, frame: u32) -> RawRingMemory {
    // SAFETY: the page belongs to the guest's memory, which the `Arc<TestGuest>` kept next to the
    // ring keeps alive; it is only accessed through the ring's atomic/volatile accesses.
    unsafe { RawRingMemory::new(NonNull::new(guest.page_ptr(frame)).unwrap(), PAGE) }
}

/// A TCPv4 frame from 10.0.0.2:`sport` to 10.0.0.1:`dport` with `payload` bytes.
fn tcp_frame(dst: [u8; 6], src: [u8; 6], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| (i * 7 + usize::from(sport)) as u8));
    f
}

/// The hash `io/netif.h` defines for a TCPv4 frame: Toeplitz over source and destination
/// addresses, then ports.
fn expected_hash(f: &[u8]) -> u32 {
    let mut input = Vec::new();
    input.extend_from_slice(&f[26..34]);
    input.extend_from_slice(&f[34..38]);
    toeplitz_hash(&RSS_KEY, &input)
}

/// One queue of a netfront: TX and RX rings in granted pages, a TX page, posted RX pages.
struct FrontQueue {
    tx: FrontRing<RawRingMemory, NetifTx>,
    rx: FrontRing<RawRingMemory, NetifRx>,
    tx_ref: u32,
    rx_ref: u32,
    tx_page: (u32, u32),
    rx_pages: Vec<(u32, u32)>,
    port: u32,
    bell: Arc<Doorbell>,
}

impl FrontQueue {
    fn new(guest: &TestGuest, evtchns: &LocalEventChannels) -> Self {
        let (txf, rxf) = (guest.alloc_pages(1), guest.alloc_pages(1));
        let tx = FrontRing::new(ring_memory(guest, txf)).unwrap();
        let rx = FrontRing::new(ring_memory(guest, rxf)).unwrap();
        let tx_page = guest.alloc_pages(1);
        let rx_pages = (0..NET_RX_RING_SIZE)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, false))
            })
            .collect();
        let (port, bell) = evtchns.alloc(guest.domid);
        Self {
            tx,
            rx,
            tx_ref: guest.grant(txf, false),
            rx_ref: guest.grant(rxf, false),
            tx_page: (tx_page, guest.grant(tx_page, true)),
            rx_pages,
            port,
            bell,
        }
    }

    fn post_rx(&mut self) {
        let mut id = 0u16;
        while self.rx.free_requests() > 0 {
            let gref = self.rx_pages[usize::from(id)].1;
            self.rx.put_request(&NetifRxRequest::new(id, gref)).unwrap();
            id += 1;
        }
        self.rx.push_requests();
    }

    /// Sends one frame of at most a page and waits for its response.
    fn send(&mut self, guest: &TestGuest, evtchns: &LocalEventChannels, f: &[u8]) {
        guest.write(self.tx_page.0, 0, f);
        self.tx
            .put_request(&NetifTxRequest::new(
                self.tx_page.1,
                0,
                NetTxFlags::empty(),
                1,
                f.len() as u16,
            ))
            .unwrap();
        self.tx.push_requests();
        evtchns.send(guest.domid, self.port);
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.tx.pop_response().unwrap() {
                assert_eq!(r.status, 0);
                return;
            }
            assert!(t0.elapsed() < T, "no TX response");
            self.bell.wait(Duration::from_millis(5));
        }
    }

    /// The next received frame (one slot) and its hash extra, if one arrives within `wait`.
    fn recv(&mut self, guest: &TestGuest, wait: Duration) -> Option<(Vec<u8>, Option<u32>)> {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.rx.pop_response().unwrap() {
                let size = r.received().expect("an error response") as usize;
                let data = guest.read(self.rx_pages[usize::from(r.id)].0, 0, size);
                assert!(!r.rx_flags().contains(NetRxFlags::MORE_DATA));
                let hash = r.rx_flags().contains(NetRxFlags::EXTRA_INFO).then(|| {
                    let e = self.rx.pop_response().unwrap().unwrap().as_extra_info();
                    assert_eq!(e.r#type, XEN_NETIF_EXTRA_TYPE_HASH);
                    u32::from_le_bytes(e.u.hash().value)
                });
                return Some((data, hash));
            }
            if t0.elapsed() >= wait {
                return None;
            }
            self.bell.wait(Duration::from_millis(2));
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
        (format!("{fe}/backend"), be.clone()),
        (format!("{fe}/backend-id"), "0".into()),
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
    for p in ["", "/backend", "/backend-id", "/state"] {
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

/// A multi-queue vif: a guest, its queues, a control ring, and the back end on a thread.
struct MqVif {
    guest: Arc<TestGuest>,
    queues: Vec<FrontQueue>,
    ctrl: FrontRing<RawRingMemory, NetifCtrl>,
    ctrl_port: u32,
    ctrl_data: (u32, u32),
    be: String,
    fe: String,
    xs: LocalXs,
    netback: Arc<Mutex<Option<Vec<u64>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MqVif {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts netback (offering `max` queues) for a guest with `queues` queue rings and waits for
/// InitWait. The front end's keys are written by the caller.
fn mq_vif(
    store: &SharedStore,
    evtchns: &Arc<LocalEventChannels>,
    port: SwitchPort,
    domid: u16,
    max: u32,
    queues: usize,
) -> MqVif {
    let guest = TestGuest::new(domid, 0, 2048, 8);
    let (be, fe) = add_vif(store, domid);
    let nb = NetBack::new(
        Arc::new(guest.grants.clone()),
        evtchns.clone(),
        port,
        NetBackConfig {
            max_queues: max,
            ..NetBackConfig::default()
        },
    );
    let bxs: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store.clone(), 0));
    let mut backend = XenbusBackend::new(bxs, &be, nb).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let netback = Arc::new(Mutex::new(None));
    let (s, nbs) = (stop.clone(), netback.clone());
    let thread = std::thread::spawn(move || {
        backend.start().unwrap();
        while !s.load(Ordering::Relaxed) {
            let _ = backend.poll(Duration::from_millis(5));
            let steered = backend.device().steered();
            *nbs.lock().unwrap() = Some(steered);
        }
        pv_backend::backend::XenbusDevice::disconnect(backend.device_mut());
    });
    let xs = LocalXs::connect(store.clone(), domid);
    let st = wait_state(&xs, &format!("{be}/state"), &[XenbusState::InitWait], T);
    assert_eq!(st, XenbusState::InitWait);
    assert_eq!(
        xs.read(&format!("{be}/multi-queue-max-queues")).unwrap(),
        Some(max.to_string().into_bytes())
    );
    let queues = (0..queues)
        .map(|_| FrontQueue::new(&guest, evtchns))
        .collect();
    let cf = guest.alloc_pages(1);
    let ctrl = FrontRing::new(ring_memory(&guest, cf)).unwrap();
    let ctrl_ref = guest.grant(cf, false);
    let (ctrl_port, _) = evtchns.alloc(domid);
    let df = guest.alloc_pages(1);
    let ctrl_data = (df, guest.grant(df, true));
    for (k, v) in [
        ("request-rx-copy", "1".to_string()),
        ("ctrl-ring-ref", ctrl_ref.to_string()),
        ("event-channel-ctrl", ctrl_port.to_string()),
    ] {
        xs.write(&format!("{fe}/{k}"), v.as_bytes()).unwrap();
    }
    MqVif {
        guest,
        queues,
        ctrl,
        ctrl_port,
        ctrl_data,
        be,
        fe,
        xs,
        netback,
        stop,
        thread: Some(thread),
    }
}

impl MqVif {
    fn write(&self, key: &str, value: &str) {
        self.xs
            .write(&format!("{}/{key}", self.fe), value.as_bytes())
            .unwrap();
    }

    /// Writes queue `i`'s keys into directory `dir`.
    fn write_queue(&self, i: usize, dir: &str) {
        let q = &self.queues[i];
        for (k, v) in [
            ("tx-ring-ref", q.tx_ref),
            ("rx-ring-ref", q.rx_ref),
            ("event-channel", q.port),
        ] {
            let key = if dir.is_empty() {
                k.to_owned()
            } else {
                format!("{dir}/{k}")
            };
            self.write(&key, &v.to_string());
        }
    }

    fn initialised(&self) {
        self.write("state", "3");
    }

    fn wait_backend(&self, want: &[XenbusState]) -> XenbusState {
        wait_state(&self.xs, &format!("{}/state", self.be), want, T)
    }

    fn backend_error(&self) -> String {
        let e = self
            .xs
            .read(&format!("{}/error", self.be))
            .unwrap()
            .unwrap_or_default();
        String::from_utf8_lossy(&e).into_owned()
    }

    /// One control request; returns its status.
    fn ctrl_call(&mut self, evtchns: &LocalEventChannels, ty: u16, data: [u32; 3]) -> u32 {
        self.ctrl
            .put_request(&XenNetifCtrlRequest::new(ty, ty, data))
            .unwrap();
        self.ctrl.push_requests();
        evtchns.send(self.guest.domid, self.ctrl_port);
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.ctrl.pop_response().unwrap() {
                assert_eq!(r.r#type, ty);
                return r.status;
            }
            assert!(t0.elapsed() < T, "no control response");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A plain single-queue guest on the switch, driven by hand.
struct Peer {
    guest: Arc<TestGuest>,
    q: FrontQueue,
    back: NetQueue<GrantedRing, SwitchPort>,
}

#[derive(Default)]
struct Counter(AtomicU64);
impl EventChannel for Counter {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Peer {
    fn new(port: SwitchPort, domid: u16) -> Self {
        let guest = TestGuest::new(domid, 0, 1024, 4);
        let evtchns = LocalEventChannels::new();
        let q = FrontQueue::new(&guest, &evtchns);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
        let tx = GrantedRing::map(&*grants, domid, &[q.tx_ref]).unwrap();
        let rx = GrantedRing::map(&*grants, domid, &[q.rx_ref]).unwrap();
        let ev: Arc<dyn EventChannel> = Arc::new(Counter::default());
        let back = NetQueue::new(
            domid,
            grants,
            tx,
            rx,
            ev.clone(),
            ev,
            port,
            NetQueueConfig::default(),
        )
        .unwrap();
        Self { guest, q, back }
    }

    /// Sends a frame (of at most a page) and lets netback put it on the switch.
    fn send(&mut self, f: &[u8]) {
        self.guest.write(self.q.tx_page.0, 0, f);
        self.q
            .tx
            .put_request(&NetifTxRequest::new(
                self.q.tx_page.1,
                0,
                NetTxFlags::empty(),
                1,
                f.len() as u16,
            ))
            .unwrap();
        self.q.tx.push_requests();
        while self.back.process(Instant::now()).unwrap() {}
        let r = self.q.tx.pop_response().unwrap().expect("no TX response");
        assert_eq!(r.status, 0);
    }
}

fn setup(max: u32, queues: usize) -> (SharedStore, Arc<LocalEventChannels>, Switch, MqVif) {
    let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
    let evtchns = LocalEventChannels::new();
    let sw = Switch::new(SwitchConfig::default()).unwrap();
    let v = mq_vif(&store, &evtchns, sw.add_port(), 1, max, queues);
    (store, evtchns, sw, v)
}

#[test]
fn four_queues_steer_received_frames_by_the_toeplitz_hash_and_mapping_table() {
    let (_store, evtchns, sw, mut v) = setup(4, 4);
    v.write("multi-queue-num-queues", "4");
    for i in 0..4 {
        v.write_queue(i, &format!("queue-{i}"));
    }
    v.initialised();
    assert_eq!(
        v.wait_backend(&[XenbusState::Connected]),
        XenbusState::Connected
    );
    for q in &mut v.queues {
        q.post_rx();
        evtchns.send(1, q.port);
    }
    // Toeplitz over IPv4 + TCP ports, Microsoft's key, an 8-entry table mapping to every queue in
    // an order that is not the identity.
    let ok = XEN_NETIF_CTRL_STATUS_SUCCESS;
    let mapping: [u32; 8] = [2, 0, 3, 1, 1, 3, 0, 2];
    let (df, dref) = v.ctrl_data;
    assert_eq!(
        v.ctrl_call(&evtchns, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [1, 0, 0]),
        ok
    );
    let flags = XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
    assert_eq!(
        v.ctrl_call(&evtchns, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [flags, 0, 0]),
        ok
    );
    v.guest.write(df, 0, &RSS_KEY);
    assert_eq!(
        v.ctrl_call(&evtchns, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [dref, 40, 0]),
        ok
    );
    assert_eq!(
        v.ctrl_call(
            &evtchns,
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
            [8, 0, 0]
        ),
        ok
    );
    let bytes: Vec<u8> = mapping.iter().flat_map(|m| m.to_ne_bytes()).collect();
    v.guest.write(df, 0, &bytes);
    assert_eq!(
        v.ctrl_call(&evtchns, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [dref, 8, 0]),
        ok
    );
    // A mapping value naming a fifth queue is refused (num_queues is 4).
    v.guest.write(df, 0, &4u32.to_ne_bytes());
    assert_ne!(
        v.ctrl_call(&evtchns, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [dref, 1, 0]),
        ok
    );

    // Each of A's queues sends to B (so the switch learns A's MAC on every queue's TX).
    let mut b = Peer::new(sw.add_port(), 2);
    b.q.post_rx();
    for i in 0..4 {
        let f = tcp_frame(mac(2), mac(1), 1000 + i as u16, 80, 100);
        v.queues[i].send(&v.guest, &evtchns, &f);
    }
    while b.back.process(Instant::now()).unwrap() {}
    let mut got = 0;
    while b.q.recv(&b.guest, Duration::ZERO).is_some() {
        got += 1;
    }
    assert_eq!(got, 4, "B received {got} of the 4 frames A's queues sent");

    // B sends 40 flows to A; each must arrive on the queue its hash maps to, with the hash extra.
    let mut per_queue = [0usize; 4];
    for flow in 0..40u16 {
        let f = tcp_frame(
            mac(1),
            mac(2),
            40000 + flow * 13,
            5000 + flow,
            64 + usize::from(flow),
        );
        let h = expected_hash(&f);
        let want = mapping[h as usize % 8] as usize;
        b.send(&f);
        let (data, hash) = v.queues[want]
            .recv(&v.guest, T)
            .unwrap_or_else(|| panic!("flow {flow} (hash {h:#x}) did not reach queue {want}"));
        assert!(data == f, "flow {flow}: the frame differs");
        assert_eq!(hash, Some(h), "flow {flow}: hash extra");
        for (i, q) in v.queues.iter_mut().enumerate() {
            if i != want {
                assert!(
                    q.recv(&v.guest, Duration::ZERO).is_none(),
                    "flow {flow} also reached queue {i}"
                );
            }
        }
        per_queue[want] += 1;
        v.queues[want].post_rx();
        evtchns.send(1, v.queues[want].port);
    }
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "every queue got flows: {per_queue:?}"
    );
    let steered = v.netback.lock().unwrap().clone().unwrap_or_default();
    assert_eq!(steered.len(), 4, "{steered:?}");
}

#[test]
fn a_front_end_without_multi_queue_keys_gets_one_queue() {
    let (_store, evtchns, sw, mut v) = setup(4, 1);
    v.write_queue(0, "");
    v.initialised();
    assert_eq!(
        v.wait_backend(&[XenbusState::Connected]),
        XenbusState::Connected
    );
    v.queues[0].post_rx();
    evtchns.send(1, v.queues[0].port);
    let mut b = Peer::new(sw.add_port(), 2);
    let f = tcp_frame(mac(1), mac(2), 1, 2, 300);
    b.send(&f);
    let (data, hash) = v.queues[0].recv(&v.guest, T).expect("nothing received");
    assert!(data == f);
    assert_eq!(hash, None, "no hash was configured");
}

/// The back end must refuse with `want` in its error node, and move to Closing.
fn refused(v: &MqVif, want: &str) {
    let st = v.wait_backend(&[XenbusState::Closing, XenbusState::Closed]);
    assert!(
        matches!(st, XenbusState::Closing | XenbusState::Closed),
        "{st:?}"
    );
    let err = v.backend_error();
    assert!(err.contains(want), "error node: {err:?}, wanted {want:?}");
}

#[test]
fn hostile_queue_count_0() {
    let (_s, _e, _sw, v) = setup(4, 1);
    v.write("multi-queue-num-queues", "0");
    v.write_queue(0, "queue-0");
    v.initialised();
    refused(&v, "multi-queue-num-queues is 0");
}

#[test]
fn hostile_queue_count_above_the_maximum() {
    let (_s, _e, _sw, v) = setup(2, 3);
    v.write("multi-queue-num-queues", "3");
    for i in 0..3 {
        v.write_queue(i, &format!("queue-{i}"));
    }
    v.initialised();
    refused(
        &v,
        "multi-queue-num-queues is 3; it must be 1 to multi-queue-max-queues (2)",
    );
}

#[test]
fn hostile_duplicate_queue_directories() {
    let (_s, _e, _sw, v) = setup(4, 3);
    v.write("multi-queue-num-queues", "2");
    v.write_queue(0, "queue-0");
    v.write_queue(1, "queue-1");
    v.write_queue(2, "queue-01");
    v.initialised();
    refused(&v, "both name queue 1");
}

#[test]
fn hostile_missing_queue_directory() {
    let (_s, _e, _sw, v) = setup(4, 3);
    v.write("multi-queue-num-queues", "3");
    v.write_queue(0, "queue-0");
    v.write_queue(2, "queue-2");
    v.initialised();
    refused(&v, "queue-1 is missing");
}

#[test]
fn hostile_queue_directory_without_its_ring_ref() {
    let (_s, _e, _sw, v) = setup(4, 2);
    v.write("multi-queue-num-queues", "2");
    v.write_queue(0, "queue-0");
    v.write("queue-1/rx-ring-ref", &v.queues[1].rx_ref.to_string());
    v.write("queue-1/event-channel", &v.queues[1].port.to_string());
    v.initialised();
    refused(&v, "queue-1/tx-ring-ref is missing");
}
