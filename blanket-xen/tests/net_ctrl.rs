//! netfront's control ring against a hostile back-end (over the real xenstored and the emulated Xen's
//! grant mapping) that offers two queues and the control ring, and then refuses, misanswers or ignores
//! the first control request. (The well-behaved case is tested against pv-backend's netback in
//! `tests/pv_netback.rs`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blanket_xen::emulated::BackendDomain;
use blanket_xen::net::{NetConfig, NetError, NetFeatures, NetFront, NetRings};
use common::netback::{BE, FE, MAC, vif_nodes};
use common::{SECOND, Xenstored};
use pv_backend::xenstore::server::lock;
use xen_abi::netif::{NetifCtrl, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XenNetifCtrlResponse};
use xen_abi::ring::BackRing;

#[derive(Clone, Copy)]
enum Answer {
    /// `XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED`.
    Refuse,
    /// Success, for another id.
    OtherId,
    /// Nothing.
    Never,
}

/// A back-end that connects after reading the control ring's keys, and answers its first request so.
fn hostile_backend(xs: &Xenstored, answer: Answer, stop: Arc<AtomicBool>) -> JoinHandle<String> {
    vif_nodes(xs, Some(MAC));
    let (store, dom0) = (Arc::clone(&xs.store), xs.dom0);
    let back = BackendDomain::new(Arc::clone(&xs.xen), 0);
    std::thread::spawn(move || {
        let w = |k: &str, v: &str| {
            lock(&store)
                .write(dom0, 0, format!("{BE}/{k}").as_bytes(), v.as_bytes())
                .unwrap()
        };
        let r = |k: &str| -> Option<String> {
            lock(&store)
                .read(dom0, 0, format!("{FE}/{k}").as_bytes())
                .ok()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        for (k, v) in [
            ("feature-rx-copy", "1"),
            ("feature-sg", "1"),
            ("multi-queue-max-queues", "2"),
            ("feature-ctrl-ring", "1"),
            ("state", "2"),
        ] {
            w(k, v);
        }
        let t0 = Instant::now();
        while r("state").as_deref() != Some("3") {
            assert!(t0.elapsed() < Duration::from_secs(5), "never Initialised");
            std::thread::sleep(Duration::from_millis(2));
        }
        let num = |k: &str| -> u32 { r(k).unwrap_or_else(|| panic!("{k}")).parse().unwrap() };
        let mapping = back.map_grant(num("ctrl-ring-ref"), false).unwrap();
        let mut ring = BackRing::<_, NetifCtrl>::new(mapping).unwrap();
        let port = back.bind_interdomain(num("event-channel-ctrl")).unwrap();
        w("state", "4");
        while !stop.load(Ordering::Relaxed) {
            if let Some(req) = ring.pop_request().unwrap() {
                let rsp = match answer {
                    Answer::Refuse => XenNetifCtrlResponse {
                        id: req.id,
                        r#type: req.r#type,
                        status: 1,
                        data: 0,
                    },
                    Answer::OtherId => XenNetifCtrlResponse {
                        id: req.id.wrapping_add(7),
                        r#type: req.r#type,
                        status: 0,
                        data: 0,
                    },
                    Answer::Never => continue,
                };
                ring.put_response(&rsp).unwrap();
                ring.push_responses();
                back.notify(port).unwrap();
            }
            let _ = back.wait(port, Duration::from_millis(5));
        }
        r("state").unwrap_or_default()
    })
}

fn connect_error(answer: Answer) -> (NetError, String) {
    let xs = Xenstored::start(200);
    let mut xb = xs.client();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = hostile_backend(&xs, answer, Arc::clone(&stop));
    let page = || xs.xen.alloc_pages(1).unwrap();
    let rings = NetRings::new([(page(), page()), (page(), page())]).with_ctrl(page(), page());
    let config = NetConfig {
        rx_buffers: 8,
        tx_buffers: 8,
        timeout_ns: SECOND / 2,
    };
    let e = NetFront::connect_with(
        Arc::clone(&xs.xen),
        &mut xb,
        b"device/vif/0",
        rings,
        xs.xen.alloc_pages(32).unwrap(),
        config,
        NetFeatures::ALL,
    )
    .unwrap_err();
    stop.store(true, Ordering::Relaxed);
    (e, thread.join().unwrap())
}

#[test]
fn control_request_refused() {
    let (e, state) = connect_error(Answer::Refuse);
    assert_eq!(
        e,
        NetError::CtrlRefused {
            ctrl_type: XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
            status: 1
        }
    );
    assert_eq!(
        state, "5",
        "the front-end closes instead of half-connecting"
    );
}

#[test]
fn control_response_for_another_request() {
    let (e, state) = connect_error(Answer::OtherId);
    assert_eq!(e, NetError::BadCtrlId { want: 0, got: 7 });
    assert_eq!(state, "5");
}

#[test]
fn control_request_never_answered() {
    let (e, state) = connect_error(Answer::Never);
    assert_eq!(
        e,
        NetError::CtrlTimeout {
            ctrl_type: XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM
        }
    );
    assert_eq!(state, "5");
}
