//! The guest ring transport: a guest-side client on another thread, over a shared page.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pv_backend::xenstore::ring::{EventChannel, RingConnection, SharedXenstorePage};
use pv_backend::xenstore::server::{SharedStore, lock};
use pv_backend::xenstore::{ConnEvent, Notify, Quotas, XenStore};
use xen_abi::xs_wire::{
    FrameParser, OwnedMessage, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE,
    XsPerm, XsType, input_chunk, output_chunk,
};

/// A doorbell: an event channel a thread can wait on.
#[derive(Default)]
struct Bell(Mutex<bool>, Condvar);

impl Bell {
    fn ring(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
    fn wait(&self, timeout: Duration) {
        let g = self.0.lock().unwrap();
        let (mut g, _) = self.1.wait_timeout_while(g, timeout, |r| !*r).unwrap();
        *g = false;
    }
}

struct ToGuest(Arc<Bell>);
impl EventChannel for ToGuest {
    fn notify(&self) {
        self.0.ring();
    }
}

struct Guest {
    page: Arc<SharedXenstorePage>,
    to_server: Arc<Bell>,
    from_server: Arc<Bell>,
    parser: FrameParser,
    req_prod: u32,
    rsp_cons: u32,
}

impl Guest {
    fn send(&mut self, bytes: &[u8]) {
        let mut done = 0;
        let t0 = Instant::now();
        while done < bytes.len() {
            let cons = self.page.req_cons.load(Ordering::Acquire);
            let r = output_chunk(cons, self.req_prod).unwrap();
            let n = r.len().min(bytes.len() - done);
            for (i, b) in bytes[done..done + n].iter().enumerate() {
                self.page.req[r.start + i].store(*b, Ordering::Relaxed);
            }
            self.req_prod = self.req_prod.wrapping_add(n as u32);
            self.page.req_prod.store(self.req_prod, Ordering::Release);
            done += n;
            self.to_server.ring();
            if n == 0 {
                assert!(t0.elapsed() < Duration::from_secs(10), "request ring stuck");
                self.from_server.wait(Duration::from_millis(5));
            }
        }
    }

    fn recv(&mut self) -> OwnedMessage {
        let t0 = Instant::now();
        loop {
            let prod = self.page.rsp_prod.load(Ordering::Acquire);
            let r = input_chunk(self.rsp_cons, prod).unwrap();
            if !r.is_empty() {
                let data: Vec<u8> = r
                    .clone()
                    .map(|i| self.page.rsp[i].load(Ordering::Relaxed))
                    .collect();
                let (used, item) = self.parser.feed(&data);
                self.rsp_cons = self.rsp_cons.wrapping_add(used as u32);
                self.page.rsp_cons.store(self.rsp_cons, Ordering::Release);
                self.to_server.ring();
                if let Some(m) = item {
                    return m.unwrap();
                }
                continue;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no response");
            self.from_server.wait(Duration::from_millis(5));
        }
    }

    fn call(&mut self, ty: XsType, payload: &[u8]) -> OwnedMessage {
        let msg = OwnedMessage {
            msg_type: ty,
            req_id: 5,
            tx_id: 0,
            payload: payload.to_vec(),
        };
        self.send(&msg.to_vec().unwrap());
        loop {
            let m = self.recv();
            if m.msg_type != XsType::WatchEvent {
                assert_eq!(m.req_id, 5);
                return m;
            }
        }
    }
}

struct Harness {
    store: SharedStore,
    guest: Guest,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.guest.to_server.ring();
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// Domain `domid` with its home, served on a fresh page whose indices start at `start`.
fn harness(quotas: Quotas, domid: u16, start: u32) -> Harness {
    let mut st = XenStore::new(quotas);
    let d = st.connect(0, None);
    let home = format!("/local/domain/{domid}");
    st.mkdir(d, 0, home.as_bytes()).unwrap();
    st.set_perms(d, 0, home.as_bytes(), &[XsPerm::owner(domid)])
        .unwrap();
    let store: SharedStore = Arc::new(Mutex::new(st));
    let page = Arc::new(SharedXenstorePage::default());
    for idx in [
        &page.req_cons,
        &page.req_prod,
        &page.rsp_cons,
        &page.rsp_prod,
    ] {
        idx.store(start, Ordering::Relaxed);
    }
    let to_server = Arc::new(Bell::default());
    let from_server = Arc::new(Bell::default());
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (store, page, to_server, from_server, stop) = (
            Arc::clone(&store),
            Arc::clone(&page),
            Arc::clone(&to_server),
            Arc::clone(&from_server),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let kick = Arc::clone(&to_server);
            let notify: Notify = Arc::new(move |_: ConnEvent| kick.ring());
            let mut ring = RingConnection::new(
                &mut lock(&store),
                domid,
                &page,
                ToGuest(from_server),
                Some(notify),
            );
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = ring.process(&mut lock(&store)) {
                    return Some(e.to_string());
                }
                to_server.wait(Duration::from_millis(20));
            }
            None
        })
    };
    Harness {
        store,
        guest: Guest {
            page,
            to_server,
            from_server,
            parser: FrameParser::new(),
            req_prod: start,
            rsp_cons: start,
        },
        stop,
        server: Some(server),
    }
}

#[test]
fn guest_reads_writes_and_watches_over_the_ring() {
    let mut h = harness(Quotas::default(), 1, 0);
    let g = &mut h.guest;
    assert_eq!(g.call(XsType::Write, b"data/x\0hello").payload, b"OK\0");
    assert_eq!(g.call(XsType::Read, b"data/x\0").payload, b"hello");
    assert_eq!(g.call(XsType::Read, b"/tool\0").payload, b"EACCES\0");
    assert_eq!(g.call(XsType::Watch, b"data\0tok\0").payload, b"OK\0");
    assert_eq!(g.recv().payload, b"data\0tok\0");
    // A change by dom0 reaches the guest through the store's notification.
    let d = lock(&h.store).connect(0, None);
    lock(&h.store)
        .write(d, 0, b"/local/domain/1/data/y", b"")
        .unwrap();
    assert_eq!(h.guest.recv().payload, b"data/y\0tok\0");
}

#[test]
fn thousands_of_requests_wrap_the_indices_through_2_pow_32() {
    let mut h = harness(Quotas::default(), 2, u32::MAX - 700);
    for i in 0..2000u32 {
        let mut req = format!("n{}\0", i % 10).into_bytes();
        req.extend_from_slice(&[b'v'; 300]);
        assert_eq!(h.guest.call(XsType::Write, &req).payload, b"OK\0");
        let r = h
            .guest
            .call(XsType::Read, format!("n{}\0", i % 10).as_bytes());
        assert_eq!(r.payload.len(), 300);
    }
    assert!(h.guest.req_prod < 1_000_000, "the indices wrapped");
}

#[test]
fn req_prod_more_than_the_ring_size_ahead() {
    let mut h = harness(Quotas::default(), 3, 10);
    h.guest
        .page
        .req_prod
        .store(10 + XENSTORE_RING_SIZE + 1, Ordering::Release);
    h.guest.to_server.ring();
    let err = h.server.take().unwrap().join().unwrap();
    assert!(err.unwrap().contains("ring indices"));
    assert_eq!(
        h.guest.page.error.load(Ordering::Acquire),
        XENSTORE_ERROR_RINGIDX
    );
}

#[test]
fn req_prod_exactly_the_ring_size_ahead_is_a_full_ring() {
    let mut h = harness(Quotas::default(), 3, 0);
    // 1024 bytes of one request: a header announcing 1008 bytes, then the bytes.
    let mut m = Vec::new();
    for v in [XsType::Write.raw(), 1, 0, 1008] {
        m.extend_from_slice(&v.to_ne_bytes());
    }
    m.extend_from_slice(b"full\0");
    m.resize(1024, b'x');
    h.guest.send(&m);
    assert_eq!(h.guest.recv().payload, b"OK\0");
}

#[test]
fn header_len_above_4096_on_the_ring() {
    let mut h = harness(Quotas::default(), 3, 0);
    let mut m = Vec::new();
    for v in [XsType::Read.raw(), 1, 0, 5000] {
        m.extend_from_slice(&v.to_ne_bytes());
    }
    h.guest.send(&m);
    let err = h.server.take().unwrap().join().unwrap();
    assert!(err.unwrap().contains("protocol"));
    assert_eq!(
        h.guest.page.error.load(Ordering::Acquire),
        XENSTORE_ERROR_PROTO
    );
}

#[test]
fn guest_that_never_consumes_responses() {
    let mut h = harness(Quotas::default(), 4, 0);
    let d = lock(&h.store).connect(0, None);
    lock(&h.store)
        .write(d, 0, b"/local/domain/4/v", &[b'x'; 1000])
        .unwrap();
    // Send 60 small requests without reading a single response.
    let mut bytes = Vec::new();
    for i in 0..60u32 {
        let m = OwnedMessage {
            msg_type: XsType::Read,
            req_id: i,
            tx_id: 0,
            payload: b"v\0".to_vec(),
        };
        bytes.extend_from_slice(&m.to_vec().unwrap());
    }
    let before = Instant::now();
    // 60 * 18 bytes fits the request ring with the responses blocked: the send completes.
    for chunk in bytes.chunks(512) {
        h.guest.send(chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    // The server stopped reading at the outstanding quota instead of queueing everything.
    let cons = h.guest.page.req_cons.load(Ordering::Acquire);
    assert!(cons < bytes.len() as u32, "all {cons} bytes were read");
    // Others are not affected.
    let t0 = Instant::now();
    lock(&h.store).write(d, 0, b"/other", b"x").unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    // Once the guest reads, everything is answered.
    for i in 0..60u32 {
        let m = h.guest.recv();
        assert_eq!(m.req_id, i);
        assert_eq!(m.payload.len(), 1000);
    }
    assert!(before.elapsed() < Duration::from_secs(10));
}

#[test]
fn req_prod_behind_req_cons() {
    let mut h = harness(Quotas::default(), 3, 100);
    h.guest.page.req_prod.store(99, Ordering::Release);
    h.guest.to_server.ring();
    let err = h.server.take().unwrap().join().unwrap();
    assert!(err.unwrap().contains("ring indices"));
    assert_eq!(
        h.guest.page.error.load(Ordering::Acquire),
        XENSTORE_ERROR_RINGIDX
    );
}

#[test]
fn rsp_cons_set_to_garbage() {
    let mut h = harness(Quotas::default(), 3, 0);
    // The guest claims to have consumed responses that were never produced.
    h.guest.page.rsp_cons.store(5000, Ordering::Release);
    let m = OwnedMessage {
        msg_type: XsType::Read,
        req_id: 1,
        tx_id: 0,
        payload: b"/\0".to_vec(),
    };
    h.guest.send(&m.to_vec().unwrap());
    let err = h.server.take().unwrap().join().unwrap();
    assert!(err.unwrap().contains("ring indices"));
    assert_eq!(
        h.guest.page.error.load(Ordering::Acquire),
        XENSTORE_ERROR_RINGIDX
    );
    // The store is unharmed.
    let d = lock(&h.store).connect(0, None);
    assert!(lock(&h.store).read(d, 0, b"/local/domain/3").is_ok());
}

#[test]
fn events_that_bring_no_work_and_event_floods() {
    let mut h = harness(Quotas::default(), 5, 0);
    let rsp_before = h.guest.page.rsp_prod.load(Ordering::Acquire);
    // A flood of notifications with nothing on the ring.
    let t0 = Instant::now();
    for _ in 0..100_000 {
        h.guest.to_server.ring();
    }
    std::thread::sleep(Duration::from_millis(50));
    // Nothing was consumed or answered, the server is alive, and it still serves real work promptly.
    assert_eq!(h.guest.page.req_cons.load(Ordering::Acquire), 0);
    assert_eq!(h.guest.page.rsp_prod.load(Ordering::Acquire), rsp_before);
    assert!(!h.server.as_ref().unwrap().is_finished());
    assert_eq!(h.guest.call(XsType::Write, b"x\0y").payload, b"OK\0");
    assert_eq!(h.guest.call(XsType::Read, b"x\0").payload, b"y");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn request_bytes_and_indices_changed_by_another_thread_while_read() {
    let h = harness(Quotas::default(), 6, 0);
    let d = lock(&h.store).connect(0, None);
    lock(&h.store)
        .write(d, 0, b"/local/domain/7/keep", b"safe")
        .unwrap();
    // A scribbler rewrites the request ring and req_prod as fast as it can while the server reads them.
    let page = Arc::clone(&h.guest.page);
    let kick = Arc::clone(&h.guest.to_server);
    let scribbling = Arc::new(AtomicBool::new(true));
    let scribbler = {
        let scribbling = Arc::clone(&scribbling);
        std::thread::spawn(move || {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut prod = 0u32;
            while scribbling.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % page.req.len();
                page.req[i].store(x as u8, Ordering::Relaxed);
                if x % 64 == 0 {
                    // Mostly plausible forward steps, sometimes garbage.
                    prod = if x % 512 == 0 {
                        (x >> 32) as u32
                    } else {
                        prod.wrapping_add((x >> 40) as u32 % 64)
                    };
                    page.req_prod.store(prod, Ordering::Release);
                    kick.ring();
                }
            }
        })
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        // Other domains keep being served meanwhile.
        lock(&h.store)
            .write(d, 0, b"/local/domain/7/tick", b"1")
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    scribbling.store(false, Ordering::Relaxed);
    scribbler.join().unwrap();
    // The server either closed the ring with an error code or is still serving: never a panic or a hang.
    let mut h = h;
    h.stop.store(true, Ordering::Relaxed);
    h.guest.to_server.ring();
    let outcome = h
        .server
        .take()
        .unwrap()
        .join()
        .expect("the server panicked");
    if let Some(e) = outcome {
        let error = h.guest.page.error.load(Ordering::Acquire);
        assert!(e.contains("domain 6"), "unexpected error: {e}");
        assert_ne!(
            error, 0,
            "the server stopped ({e}) without flagging the ring"
        );
    }
    let store = Arc::clone(&h.store);
    drop(h);
    assert_eq!(
        lock(&store).read(d, 0, b"/local/domain/7/keep").unwrap(),
        b"safe"
    );
}
