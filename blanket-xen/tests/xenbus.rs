//! The xenbus client against the real xenstored of `pv-backend`, over the emulated guest's shared
//! XenStore page, and against a hostile xenstored that writes raw bytes into the page.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use blanket_xen::emulated::EmulatedXen;
use blanket_xen::platform::EventChannels;
use blanket_xen::xenbus::{FrontendDevice, WATCH_QUEUE_LEN, XBT_NIL, XenBus, XenBusError, XsPath};
use common::{SECOND, Xenstored};
use pv_backend::xenstore::ring::SharedXenstorePage;
use xen_abi::ring::{RawRingMemory, RingMemory};
use xen_abi::xenbus::{XenbusError, XenbusState};
use xen_abi::xs_wire::{XsErrno, XsType, XsWireError};

#[test]
fn read_write_mkdir_rm_directory_with_the_real_xenstored() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    xb.write(XBT_NIL, b"data/x", b"hello").unwrap();
    let mut buf = [0u8; 64];
    let n = xb.read(XBT_NIL, b"data/x", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    // Absolute paths under the home are the same nodes.
    let n = xb
        .read(XBT_NIL, b"/local/domain/1/data/x", &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(xs.read("/local/domain/1/data/x").as_deref(), Some("hello"));
    xb.mkdir(XBT_NIL, b"data/dir").unwrap();
    xb.write(XBT_NIL, b"data/y", b"").unwrap();
    let mut names: Vec<Vec<u8>> = xb
        .directory(XBT_NIL, b"data", &mut buf)
        .unwrap()
        .map(|n| n.to_vec())
        .collect();
    names.sort();
    assert_eq!(names, vec![b"dir".to_vec(), b"x".to_vec(), b"y".to_vec()]);
    xb.rm(XBT_NIL, b"data/x").unwrap();
    assert_eq!(
        xb.read(XBT_NIL, b"data/x", &mut buf),
        Err(XenBusError::Xs(XsErrno::ENOENT))
    );
    assert_eq!(xb.read_u64(XBT_NIL, b"data/x").unwrap(), None);
    xb.write(XBT_NIL, b"data/n", b"18446744073709551615")
        .unwrap();
    assert_eq!(xb.read_u64(XBT_NIL, b"data/n").unwrap(), Some(u64::MAX));
    xb.write(XBT_NIL, b"data/n", b"12a").unwrap();
    assert!(matches!(
        xb.read_u64(XBT_NIL, b"data/n"),
        Err(XenBusError::NotNumeric { .. })
    ));
    // Permissions are xenstored's: the guest may not read the toolstack's nodes.
    xs.write("/tool/secret", "x");
    assert_eq!(
        xb.read(XBT_NIL, b"/tool/secret", &mut buf),
        Err(XenBusError::Xs(XsErrno::EACCES))
    );
    // A value larger than the buffer is a typed error, and the connection goes on.
    xb.write(XBT_NIL, b"data/big", &[b'v'; 100]).unwrap();
    assert_eq!(
        xb.read(XBT_NIL, b"data/big", &mut buf),
        Err(XenBusError::BufferTooSmall {
            len: 100,
            available: 64
        })
    );
    let mut home = [0u8; 64];
    let n = xb.get_domain_path(1, &mut home).unwrap();
    assert_eq!(&home[..n], b"/local/domain/1");
    assert!(!xb.is_broken());
}

#[test]
fn requests_this_client_refuses_to_send() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let mut buf = [0u8; 8];
    assert!(matches!(
        xb.read(XBT_NIL, b"data/a\0b", &mut buf),
        Err(XenBusError::BadRequest(XsWireError::PathInvalidChar { .. }))
    ));
    assert!(matches!(
        xb.write(XBT_NIL, b"data//x", b""),
        Err(XenBusError::BadRequest(_))
    ));
    assert!(matches!(
        xb.write(XBT_NIL, b"data/x", &[0u8; 4096]),
        Err(XenBusError::BadRequest(XsWireError::PayloadTooLarge { .. }))
    ));
    assert!(matches!(
        xb.watch(b"data", b"t\0k"),
        Err(XenBusError::BadRequest(_))
    ));
    let long = vec![b'a'; 3100];
    let mut p = XsPath::<256>::default();
    assert!(matches!(
        p.push(&long),
        Err(XenBusError::PathTooLong { .. })
    ));
    // Nothing was sent: the connection is fine.
    xb.write(XBT_NIL, b"data/x", b"1").unwrap();
}

#[test]
fn messages_larger_than_the_1024_byte_ring_stream_through_it() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    // 2000 bytes: xenstored's default node-size quota is 2048.
    let value: Vec<u8> = (0..2000).map(|i| b'a' + (i % 26) as u8).collect();
    xb.write(XBT_NIL, b"data/x", &value).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = xb.read(XBT_NIL, b"data/x", &mut buf).unwrap();
    assert_eq!(&buf[..n], &value[..]);
}

#[test]
fn transactions_commit_abort_and_conflict() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let mut buf = [0u8; 16];
    let tx = xb.transaction_start().unwrap();
    xb.write(tx, b"data/t", b"in-tx").unwrap();
    assert_eq!(
        xs.read("/local/domain/1/data/t"),
        None,
        "not visible before commit"
    );
    xb.transaction_end(tx, true).unwrap();
    assert_eq!(xs.read("/local/domain/1/data/t").as_deref(), Some("in-tx"));

    let tx = xb.transaction_start().unwrap();
    xb.write(tx, b"data/t", b"aborted").unwrap();
    xb.transaction_end(tx, false).unwrap();
    assert_eq!(xs.read("/local/domain/1/data/t").as_deref(), Some("in-tx"));

    // A conflicting write by dom0 makes the commit fail with EAGAIN.
    let tx = xb.transaction_start().unwrap();
    let n = xb.read(tx, b"data/t", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"in-tx");
    xs.write("/local/domain/1/data/t", "dom0");
    xb.write(tx, b"data/t", b"late").unwrap();
    assert_eq!(
        xb.transaction_end(tx, true),
        Err(XenBusError::Xs(XsErrno::EAGAIN))
    );
    assert_eq!(xs.read("/local/domain/1/data/t").as_deref(), Some("dom0"));
    // An unknown transaction id is xenstored's ENOENT.
    assert_eq!(
        xb.transaction_end(12345, true),
        Err(XenBusError::Xs(XsErrno::ENOENT))
    );
}

#[test]
fn watches_fire_on_changes_by_others_and_stop_after_unwatch() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let mut ev = [0u8; 256];
    xb.watch(b"data", b"tok").unwrap();
    // xenstored fires a new watch once.
    let e = xb.next_watch_event(&mut ev, 2 * SECOND).unwrap().unwrap();
    assert_eq!((e.path, e.token), (&b"data"[..], &b"tok"[..]));
    assert_eq!(xb.next_watch_event(&mut ev, 50_000_000).unwrap(), None);
    xs.write("/local/domain/1/data/y", "1");
    let e = xb.next_watch_event(&mut ev, 2 * SECOND).unwrap().unwrap();
    assert_eq!((e.path, e.token), (&b"data/y"[..], &b"tok"[..]));
    // Events that arrive while a request is outstanding are kept for later.
    xb.watch(b"/local/domain/1/other", b"abs").unwrap();
    xb.write(XBT_NIL, b"data/z", b"own write").unwrap();
    let mut seen = Vec::new();
    while let Some(e) = xb.next_watch_event(&mut ev, 200_000_000).unwrap() {
        seen.push((e.path.to_vec(), e.token.to_vec()));
    }
    assert!(seen.contains(&(b"/local/domain/1/other".to_vec(), b"abs".to_vec())));
    assert!(seen.contains(&(b"data/z".to_vec(), b"tok".to_vec())));
    xb.unwatch(b"data", b"tok").unwrap();
    xs.write("/local/domain/1/data/y", "2");
    assert_eq!(xb.next_watch_event(&mut ev, 100_000_000).unwrap(), None);
    assert_eq!(
        xb.unwatch(b"data", b"tok"),
        Err(XenBusError::Xs(XsErrno::ENOENT))
    );
}

#[test]
fn watch_event_flood_is_bounded() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let mut ev = [0u8; 256];
    xb.watch(b"data", b"tok").unwrap();
    // 100 events queue up while the guest makes one request after the other.
    for i in 0..100 {
        xs.write(&format!("/local/domain/1/data/n{i}"), "x");
    }
    std::thread::sleep(Duration::from_millis(100));
    xb.write(XBT_NIL, b"other", b"1").unwrap();
    let mut n = 0;
    while xb.next_watch_event(&mut ev, 100_000_000).unwrap().is_some() {
        n += 1;
    }
    // Whatever arrived during the request was kept up to the queue's size, the rest read after.
    assert!(
        n > 0 && xb.dropped_events() + n >= 100,
        "{n} events, {} dropped",
        xb.dropped_events()
    );
    assert!(n as usize >= WATCH_QUEUE_LEN);
}

#[test]
fn frontend_state_machine_follows_the_backend() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let be = "/local/domain/0/backend/vbd/1/768";
    xs.let_read(be);
    xs.write(&format!("{be}/state"), "1");
    xs.give("/local/domain/1/device/vbd/768");
    xs.write("/local/domain/1/device/vbd/768/backend", be);
    xs.write("/local/domain/1/device/vbd/768/backend-id", "0");
    let mut dev = FrontendDevice::probe(&mut xb, b"device/vbd/768").unwrap();
    assert_eq!(dev.backend().as_bytes(), be.as_bytes());
    assert_eq!(dev.backend_id(), 0);
    assert_eq!(
        xs.read("/local/domain/1/device/vbd/768/state").as_deref(),
        Some("1")
    );
    // Out-of-order own transitions are refused before anything is written.
    assert!(matches!(
        dev.switch_state(&mut xb, XBT_NIL, XenbusState::Connected),
        Err(XenBusError::State(XenbusError::IllegalTransition { .. }))
    ));
    assert_eq!(
        xs.read("/local/domain/1/device/vbd/768/state").as_deref(),
        Some("1")
    );
    // The back-end moves to InitWait later; the front-end waits for it with a watch.
    let store = Arc::clone(&xs.store);
    let dom0 = xs.dom0;
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        pv_backend::xenstore::server::lock(&store)
            .write(dom0, 0, b"/local/domain/0/backend/vbd/1/768/state", b"2")
            .unwrap();
    });
    let s = dev
        .wait_for_backend(
            &mut xb,
            |s| s == XenbusState::InitWait,
            |s| s.is_closing_or_closed() && s != XenbusState::Unknown,
            5 * SECOND,
        )
        .unwrap();
    t.join().unwrap();
    assert_eq!(s, XenbusState::InitWait);
    dev.switch_state(&mut xb, XBT_NIL, XenbusState::Initialised)
        .unwrap();
    // A back-end that closes instead of connecting is reported, naming the state.
    xs.write(&format!("{be}/state"), "5");
    let err = dev
        .wait_for_backend(
            &mut xb,
            |s| s == XenbusState::Connected,
            |s| s.is_closing_or_closed(),
            5 * SECOND,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        XenBusError::State(XenbusError::IllegalTransition {
            to: XenbusState::Closing,
            ..
        })
    ));
    // A garbage back-end state is a typed error.
    xs.write(&format!("{be}/state"), "nine");
    assert!(matches!(
        dev.backend_state(&mut xb),
        Err(XenBusError::State(XenbusError::NotNumeric { .. }))
    ));
    xs.write(&format!("{be}/state"), "2");
    let err = dev
        .wait_for_backend(
            &mut xb,
            |s| s == XenbusState::Connected,
            |_| false,
            200_000_000,
        )
        .unwrap_err();
    assert_eq!(
        err,
        XenBusError::BackendTimeout {
            state: XenbusState::InitWait,
            timeout_ns: 200_000_000
        }
    );
    dev.switch_state(&mut xb, XBT_NIL, XenbusState::Closing)
        .unwrap();
    dev.switch_state(&mut xb, XBT_NIL, XenbusState::Closed)
        .unwrap();
    assert_eq!(
        xs.read("/local/domain/1/device/vbd/768/state").as_deref(),
        Some("6")
    );
    assert!(!xb.is_broken());
}

#[test]
fn frontend_follows_a_backend_that_closes() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let be = "/local/domain/0/backend/vbd/1/51712";
    let fe = "/local/domain/1/device/vbd/51712";
    xs.let_read(be);
    xs.write(&format!("{be}/state"), "4");
    xs.give(fe);
    xs.write(&format!("{fe}/backend"), be);
    xs.write(&format!("{fe}/backend-id"), "0");
    let mut dev = FrontendDevice::probe(&mut xb, b"device/vbd/51712").unwrap();
    dev.switch_state(&mut xb, XBT_NIL, XenbusState::Initialised)
        .unwrap();
    dev.switch_state(&mut xb, XBT_NIL, XenbusState::Connected)
        .unwrap();
    // A live back-end changes nothing.
    assert_eq!(dev.follow_backend(&mut xb).unwrap(), XenbusState::Connected);
    assert_eq!(dev.state(), XenbusState::Connected);
    xs.write(&format!("{be}/state"), "5");
    assert_eq!(dev.follow_backend(&mut xb).unwrap(), XenbusState::Closing);
    assert_eq!(xs.read(&format!("{fe}/state")).as_deref(), Some("5"));
    xs.write(&format!("{be}/state"), "6");
    assert_eq!(dev.follow_backend(&mut xb).unwrap(), XenbusState::Closed);
    assert_eq!(xs.read(&format!("{fe}/state")).as_deref(), Some("6"));
    // A back-end whose node disappears (the toolstack removed it) is gone: the front-end closes too.
    dev.switch_state(&mut xb, XBT_NIL, XenbusState::Initialising)
        .unwrap();
    lock_rm(&xs, be);
    assert_eq!(dev.follow_backend(&mut xb).unwrap(), XenbusState::Unknown);
    assert_eq!(dev.state(), XenbusState::Closed);
}

fn lock_rm(xs: &Xenstored, path: &str) {
    pv_backend::xenstore::server::lock(&xs.store)
        .rm(xs.dom0, 0, path.as_bytes())
        .unwrap();
}

#[test]
fn probe_rejects_missing_or_garbage_backend_nodes() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    xs.give("/local/domain/1/device/vbd/1");
    assert_eq!(
        FrontendDevice::probe(&mut xb, b"device/vbd/1").unwrap_err(),
        XenBusError::Xs(XsErrno::ENOENT)
    );
    xs.write("/local/domain/1/device/vbd/1/backend", "relative/path");
    assert!(matches!(
        FrontendDevice::probe(&mut xb, b"device/vbd/1"),
        Err(XenBusError::BadReply { .. })
    ));
    xs.write(
        "/local/domain/1/device/vbd/1/backend",
        "/local/domain/0/backend/vbd/1/1",
    );
    xs.write("/local/domain/1/device/vbd/1/backend-id", "70000");
    assert!(matches!(
        FrontendDevice::probe(&mut xb, b"device/vbd/1"),
        Err(XenBusError::NotNumeric { .. })
    ));
    xs.write("/local/domain/1/device/vbd/1/backend-id", "-1");
    assert!(matches!(
        FrontendDevice::probe(&mut xb, b"device/vbd/1"),
        Err(XenBusError::NotNumeric { .. })
    ));
}

// ---- A hostile xenstored: raw bytes in the page, no daemon. ----

struct Hostile {
    xen: Arc<EmulatedXen>,
    page: RawRingMemory,
    port: u32,
}

impl Hostile {
    fn new() -> Self {
        let xen = EmulatedXen::new(1, 2, 1);
        let page = xen.alloc_pages(1).unwrap();
        let port = xen.alloc_unbound(0).unwrap();
        Self { xen, page, port }
    }
    fn shared(&self) -> &SharedXenstorePage {
        // SAFETY: the page is guest memory of `self.xen`, alive as long as `self`; access is atomic only.
        unsafe { SharedXenstorePage::from_ptr(self.page.as_ptr()) }
    }
    fn client(&self, timeout_ns: u64) -> XenBus<Arc<EmulatedXen>, RawRingMemory> {
        XenBus::new(Arc::clone(&self.xen), self.page, self.port, timeout_ns).unwrap()
    }
    /// Queues raw bytes as xenstored's output.
    fn respond(&self, bytes: &[u8]) {
        let p = self.shared();
        let prod = p.rsp_prod.load(Ordering::Relaxed);
        for (i, b) in bytes.iter().enumerate() {
            p.rsp[(prod as usize + i) % 1024].store(*b, Ordering::Relaxed);
        }
        p.rsp_prod
            .store(prod.wrapping_add(bytes.len() as u32), Ordering::Release);
    }
    fn message(ty: u32, req_id: u32, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [ty, req_id, 0, len] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        m.extend_from_slice(payload);
        m
    }
}

#[test]
fn rsp_prod_more_than_the_ring_size_ahead() {
    let h = Hostile::new();
    h.shared().rsp_prod.store(1025, Ordering::Release);
    let mut xb = h.client(SECOND);
    let mut buf = [0u8; 8];
    assert!(matches!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::RingIndex(XsWireError::RingIndexOverflow {
            used: 1025,
            ..
        }))
    ));
    assert!(xb.is_broken());
    assert_eq!(xb.read(XBT_NIL, b"x", &mut buf), Err(XenBusError::Broken));
}

#[test]
fn rsp_prod_behind_rsp_cons() {
    let h = Hostile::new();
    let p = h.shared();
    for i in [&p.req_cons, &p.req_prod, &p.rsp_cons, &p.rsp_prod] {
        i.store(500, Ordering::Relaxed);
    }
    p.rsp_prod.store(499, Ordering::Release);
    let mut xb = h.client(SECOND);
    assert!(matches!(
        xb.write(XBT_NIL, b"x", b""),
        Err(XenBusError::RingIndex(_))
    ));
}

#[test]
fn req_cons_set_to_garbage() {
    let h = Hostile::new();
    h.shared().req_cons.store(0x8000_0000, Ordering::Release);
    let mut xb = h.client(SECOND);
    assert!(matches!(
        xb.write(XBT_NIL, b"x", b""),
        Err(XenBusError::RingIndex(_))
    ));
}

#[test]
fn reply_header_len_above_4096() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Read.raw(), 1, 5000, b""));
    let mut xb = h.client(SECOND);
    let mut buf = [0u8; 8];
    assert_eq!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::Protocol(XsWireError::PayloadTooLong {
            len: 5000
        }))
    );
    assert!(xb.is_broken());
}

#[test]
fn reply_of_an_unknown_type() {
    let h = Hostile::new();
    h.respond(&Hostile::message(20, 1, 0, b""));
    let mut xb = h.client(SECOND);
    let mut buf = [0u8; 8];
    assert!(matches!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::Protocol(XsWireError::UnknownMessageType {
            msg_type: 20,
            ..
        }))
    ));
}

#[test]
fn reply_to_another_request_id_or_type() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Read.raw(), 7, 2, b"hi"));
    let mut xb = h.client(SECOND);
    let mut buf = [0u8; 8];
    assert_eq!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::UnexpectedReply {
            want_id: 1,
            want_type: 2,
            got_id: 7,
            got_type: 2
        })
    );
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Write.raw(), 1, 3, b"OK\0"));
    let mut xb = h.client(SECOND);
    assert!(matches!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::UnexpectedReply { .. })
    ));
}

#[test]
fn error_reply_with_an_unknown_errno_name() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Error.raw(), 1, 6, b"EWHAT\0"));
    let mut xb = h.client(SECOND);
    let mut buf = [0u8; 8];
    assert!(matches!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::Protocol(_))
    ));
}

#[test]
fn write_reply_that_is_not_ok() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Write.raw(), 1, 3, b"NO\0"));
    let mut xb = h.client(SECOND);
    assert!(matches!(
        xb.write(XBT_NIL, b"x", b""),
        Err(XenBusError::BadReply { .. })
    ));
    // Not fatal: the stream is in sync.
    assert!(!xb.is_broken());
}

#[test]
fn transaction_start_reply_that_is_not_a_number() {
    let h = Hostile::new();
    h.respond(&Hostile::message(
        XsType::TransactionStart.raw(),
        1,
        3,
        b"x1\0",
    ));
    let mut xb = h.client(SECOND);
    assert!(matches!(
        xb.transaction_start(),
        Err(XenBusError::BadReply { .. })
    ));
}

#[test]
fn xenstored_reports_an_error_in_the_page() {
    let h = Hostile::new();
    let p = h.shared();
    p.server_features.store(2, Ordering::Relaxed);
    p.error.store(1, Ordering::Release);
    let mut xb = h.client(10 * SECOND);
    let mut buf = [0u8; 8];
    let t0 = std::time::Instant::now();
    assert_eq!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::ServerError { code: 1 })
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "reported at once, not after the timeout"
    );
    assert!(xb.is_broken());
}

#[test]
fn real_xenstored_stops_serving_after_a_protocol_violation() {
    // The guest's own bytes break the protocol (a header announcing 5000 bytes): pv-backend's xenstored
    // sets XENSTORE_ERROR_PROTO in the page, and the client reports it instead of waiting for a reply.
    let xs = Xenstored::start(4);
    let p = unsafe_shared(&xs);
    let mut header = Vec::new();
    for v in [XsType::Read.raw(), 1, 0, 5000] {
        header.extend_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in header.iter().enumerate() {
        p.req[i].store(*b, Ordering::Relaxed);
    }
    p.req_prod.store(16, Ordering::Release);
    let mut xb = xs.client();
    blanket_xen::platform::EventChannels::notify(&*xs.xen, xs.port).unwrap();
    let mut buf = [0u8; 8];
    let t0 = std::time::Instant::now();
    assert_eq!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::ServerError { code: 3 })
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn reset_watches_drops_every_watch() {
    let xs = Xenstored::start(4);
    let mut xb = xs.client();
    let mut ev = [0u8; 256];
    xb.watch(b"data", b"tok").unwrap();
    assert!(xb.next_watch_event(&mut ev, 2 * SECOND).unwrap().is_some());
    xb.reset_watches().unwrap();
    xs.write("/local/domain/1/data/y", "1");
    assert_eq!(xb.next_watch_event(&mut ev, 100_000_000).unwrap(), None);
}

#[test]
fn xenstored_that_never_answers() {
    let h = Hostile::new();
    let mut xb = h.client(100_000_000);
    let mut buf = [0u8; 8];
    let t0 = std::time::Instant::now();
    assert_eq!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::Timeout {
            timeout_ns: 100_000_000
        })
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn xenstored_that_never_consumes_requests() {
    let h = Hostile::new();
    let mut xb = h.client(100_000_000);
    // 4000 bytes cannot go into a 1024-byte ring that nobody empties.
    assert_eq!(
        xb.write(XBT_NIL, b"x", &[b'v'; 4000]),
        Err(XenBusError::Timeout {
            timeout_ns: 100_000_000
        })
    );
}

#[test]
fn reply_cut_short_times_out() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Read.raw(), 1, 100, b"only ten.."));
    let mut xb = h.client(100_000_000);
    let mut buf = [0u8; 128];
    assert!(matches!(
        xb.read(XBT_NIL, b"x", &mut buf),
        Err(XenBusError::Timeout { .. })
    ));
}

#[test]
fn unsolicited_reply_while_waiting_for_watch_events() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::Read.raw(), 0, 0, b""));
    let mut xb = h.client(SECOND);
    let mut ev = [0u8; 64];
    assert!(matches!(
        xb.next_watch_event(&mut ev, SECOND),
        Err(XenBusError::UnexpectedReply { .. })
    ));
}

#[test]
fn malformed_and_oversized_watch_events_are_dropped() {
    let h = Hostile::new();
    h.respond(&Hostile::message(XsType::WatchEvent.raw(), 0, 4, b"abc\0"));
    let big = [vec![b'p'; 300], b"\0tok\0".to_vec()].concat();
    h.respond(&Hostile::message(
        XsType::WatchEvent.raw(),
        0,
        big.len() as u32,
        &big,
    ));
    h.respond(&Hostile::message(
        XsType::WatchEvent.raw(),
        0,
        6,
        b"p\0tok\0",
    ));
    let mut xb = h.client(SECOND);
    let mut ev = [0u8; 64];
    assert_eq!(xb.next_watch_event(&mut ev, SECOND).unwrap(), None);
    assert_eq!(xb.next_watch_event(&mut ev, SECOND).unwrap(), None);
    let e = xb.next_watch_event(&mut ev, SECOND).unwrap().unwrap();
    assert_eq!((e.path, e.token), (&b"p"[..], &b"tok"[..]));
    assert_eq!(xb.dropped_events(), 2);
}

#[test]
fn indices_that_wrap_through_2_pow_32() {
    let xs = Xenstored::start_at(4, u32::MAX - 300);
    let mut xb = xs.client();
    let mut buf = [0u8; 256];
    for i in 0..200u32 {
        let v = format!("{i:0>200}");
        xb.write(XBT_NIL, b"data/w", v.as_bytes()).unwrap();
        let n = xb.read(XBT_NIL, b"data/w", &mut buf).unwrap();
        assert_eq!(&buf[..n], v.as_bytes());
    }
    let p = unsafe_shared(&xs);
    assert!(
        p.req_prod.load(Ordering::Relaxed) < 1_000_000,
        "the indices wrapped"
    );
    assert!(!xb.is_broken());
}

fn unsafe_shared(xs: &Xenstored) -> &SharedXenstorePage {
    // SAFETY: the page is guest memory of `xs.xen`, alive as long as `xs`; access is atomic only.
    unsafe { SharedXenstorePage::from_ptr(xs.page.as_ptr()) }
}
