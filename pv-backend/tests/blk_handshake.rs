//! The XenBus handshake of blkback, with the hostile cases of HOSTILE-INPUT.md ("XenBus handshake"): each
//! bad front end sees the back end write `error` and move to Closing, and can start over.

#[path = "common/blk_harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Env, Prepared, assert_serves};
use pv_backend::blk::BlkConfig;
use pv_backend::blk::front::FrontOptions;
use xen_abi::xenbus::XenbusState;

const T: Duration = Duration::from_secs(5);

fn opts() -> FrontOptions {
    FrontOptions::default()
}

/// Two queues.
fn two_queues() -> FrontOptions {
    FrontOptions {
        queues: Some(2),
        ..opts()
    }
}

/// A fresh store, event channels, a guest (domain 1) and blkback on a memory disk, and a front end
/// (`o`) that has published nothing yet.
fn prepared(o: FrontOptions) -> Prepared {
    Env::new().prepared(1, BlkConfig::default(), o)
}

/// A front end (`o`) publishes its keys, `break_keys` spoils them, it goes Initialised and must be
/// refused with an error containing `what`; then it starts over and connects.
fn refused_then_recovers(o: FrontOptions, what: &str, break_keys: impl FnOnce(&mut Prepared)) {
    let mut p = prepared(o);
    p.front.publish_keys();
    break_keys(&mut p);
    expect_refused(&mut p, what);
    recover(&mut p);
}

/// The front end breaks something, goes Initialised, and must see Closing with an error containing `what`.
fn expect_refused(p: &mut Prepared, what: &str) {
    p.front.set_state(XenbusState::Initialised);
    let s = p
        .front
        .wait_backend(&[XenbusState::Closing, XenbusState::Connected], T);
    assert_eq!(
        s,
        XenbusState::Closing,
        "the back end refuses the front end"
    );
    let err = p.front.backend_error().expect("an error node");
    assert!(err.contains(what), "error {err:?} should mention {what:?}");
}

/// After a refusal the front end closes, starts over and connects properly.
fn recover(p: &mut Prepared) {
    p.front.set_state(XenbusState::Closed);
    assert_eq!(
        p.front.wait_backend(&[XenbusState::Closed], T),
        XenbusState::Closed
    );
    p.front.set_state(XenbusState::Initialising);
    assert_eq!(
        p.front.wait_backend(&[XenbusState::InitWait], T),
        XenbusState::InitWait
    );
    for k in [
        "multi-queue-num-queues",
        "queue-0",
        "queue-1",
        "queue-01",
        "ring-page-order",
    ] {
        p.front.remove_key(k);
    }
    p.front.publish();
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    assert_serves(&mut p.front, 77);
}

#[test]
fn features_are_published_in_init_wait() {
    let p = prepared(opts());
    assert_eq!(p.front.backend_state(), XenbusState::InitWait);
    let b = &p.front.paths.backend;
    use pv_backend::backend::XsHandle;
    let get = |k: &str| {
        String::from_utf8(p.front.xs.read(&format!("{b}/{k}")).unwrap().unwrap()).unwrap()
    };
    assert_eq!(get("feature-flush-cache"), "1");
    assert_eq!(get("feature-barrier"), "1");
    assert_eq!(get("feature-discard"), "1");
    assert_eq!(get("discard-granularity"), "512");
    assert_eq!(get("discard-alignment"), "0");
    assert_eq!(get("feature-max-indirect-segments"), "256");
    assert_eq!(get("feature-persistent"), "1");
    assert_eq!(get("max-ring-page-order"), "4");
    assert_eq!(get("multi-queue-max-queues"), "4");
}

#[test]
fn skipped_state_initialised_is_accepted() {
    let mut p = prepared(opts());
    p.front.publish_keys();
    // Straight from Initialising to Connected.
    p.front.set_state(XenbusState::Connected);
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    assert_serves(&mut p.front, 1);
}

#[test]
fn state_changes_out_of_order_connected_before_any_key() {
    let mut p = prepared(opts());
    p.front.set_state(XenbusState::Connected);
    let s = p.front.wait_backend(&[XenbusState::Closing], T);
    assert_eq!(s, XenbusState::Closing);
    assert!(
        p.front
            .backend_error()
            .unwrap()
            .contains("ring-ref is missing")
    );
    recover(&mut p);
}

#[test]
fn state_changes_out_of_order_garbage_and_unknown_states() {
    let mut p = prepared(opts());
    for bad in ["abc", "9", "", "4 ", "-1", "99999999999999999999"] {
        p.front.write_key("state", bad);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            p.front.backend_state(),
            XenbusState::InitWait,
            "state {bad:?} changes nothing"
        );
    }
    assert!(p.front.backend_error().unwrap().contains("state"));
    p.front.publish();
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    assert_serves(&mut p.front, 2);
    // Going back to Initialised while connected is out of order and ignored.
    p.front.set_state(XenbusState::Initialised);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(p.front.backend_state(), XenbusState::Connected);
    assert_serves(&mut p.front, 3);
}

#[test]
fn missing_keys_ring_ref() {
    refused_then_recovers(opts(), "ring-ref is missing", |p| {
        p.front.remove_key("ring-ref")
    });
}

#[test]
fn missing_keys_event_channel() {
    refused_then_recovers(opts(), "event-channel is missing", |p| {
        p.front.remove_key("event-channel")
    });
}

#[test]
fn non_numeric_keys() {
    for (key, value) in [
        ("ring-ref", "12a"),
        ("ring-ref", "-1"),
        ("ring-ref", "99999999999"),
        ("ring-ref", ""),
        ("event-channel", "0x10"),
        ("event-channel", " 5"),
        ("multi-queue-num-queues", "two"),
        ("ring-page-order", "1.0"),
    ] {
        refused_then_recovers(opts(), "not a decimal number", |p| {
            p.front.write_key(key, value)
        });
    }
}

#[test]
fn queue_count_of_zero() {
    refused_then_recovers(opts(), "multi-queue-num-queues is 0", |p| {
        p.front.write_key("multi-queue-num-queues", "0")
    });
}

#[test]
fn queue_count_above_the_maximum() {
    refused_then_recovers(opts(), "multi-queue-num-queues is 5", |p| {
        p.front.write_key("multi-queue-num-queues", "5")
    });
}

#[test]
fn ring_page_order_above_the_maximum() {
    refused_then_recovers(opts(), "above max-ring-page-order", |p| {
        p.front.write_key("ring-page-order", "5")
    });
}

#[test]
fn duplicate_queue_directories() {
    refused_then_recovers(two_queues(), "both name queue 1", |p| {
        let r = p.front.queues[1].ring_refs[0].to_string();
        p.front.write_key("queue-01/ring-ref", &r);
        let port = p.front.queues[1].port.to_string();
        p.front.write_key("queue-01/event-channel", &port);
    });
}

#[test]
fn missing_queue_directory() {
    refused_then_recovers(two_queues(), "queue-1 is missing", |p| {
        p.front.remove_key("queue-1")
    });
}

#[test]
fn unknown_protocol() {
    refused_then_recovers(opts(), "sparc-abi", |p| {
        p.front.write_key("protocol", "sparc-abi")
    });
}

#[test]
fn ring_granted_read_only_or_to_another_domain() {
    refused_then_recovers(opts(), "read-only", |p| {
        let frame = p.guest.alloc_pages(1);
        let ro = p.guest.grant(frame, true);
        p.front.write_key("ring-ref", &ro.to_string());
    });
    refused_then_recovers(opts(), "granted to domain 7", |p| {
        let frame = p.guest.alloc_pages(1);
        let gref = 4000;
        p.guest.grants.grant(gref, 7, frame, false).unwrap();
        p.front.write_key("ring-ref", &gref.to_string());
    });
}

#[test]
fn the_same_ring_ref_for_two_queues() {
    refused_then_recovers(two_queues(), "given twice", |p| {
        let r = p.front.queues[0].ring_refs[0].to_string();
        p.front.write_key("queue-1/ring-ref", &r);
    });
}

#[test]
fn reconnection_after_closing_and_closed() {
    let mut p = prepared(opts());
    p.front.publish();
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    assert_serves(&mut p.front, 5);
    let old_ring = p.front.queues[0].ring_refs[0];
    assert_ne!(
        p.guest.grants.entry(old_ring).unwrap().flags & xen_abi::grant_table::GTF_reading,
        0,
        "the ring page is mapped while connected"
    );
    p.front.set_state(XenbusState::Closing);
    assert_eq!(
        p.front.wait_backend(&[XenbusState::Closing], T),
        XenbusState::Closing
    );
    p.front.set_state(XenbusState::Closed);
    assert_eq!(
        p.front.wait_backend(&[XenbusState::Closed], T),
        XenbusState::Closed
    );
    let e = p.guest.grants.entry(old_ring).unwrap();
    assert_eq!(
        e.flags & (xen_abi::grant_table::GTF_reading | xen_abi::grant_table::GTF_writing),
        0,
        "unmapped when closed"
    );
    p.guest
        .grants
        .revoke(old_ring)
        .expect("the guest can revoke its ring now");
    // Persistent data grants are released too.
    for &g in &p.front.buf_grefs[..3] {
        assert_eq!(
            p.guest.grants.entry(g).unwrap().flags & xen_abi::grant_table::GTF_reading,
            0
        );
    }
    p.front.set_state(XenbusState::Initialising);
    assert_eq!(
        p.front.wait_backend(&[XenbusState::InitWait], T),
        XenbusState::InitWait
    );
    p.front.publish();
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    let mut back = vec![0; 3 * 4096];
    assert!(p.front.read(16, &mut back).iter().all(|&s| s == 0));
    assert_eq!(
        back,
        harness::pattern(5, 3 * 4096),
        "the data survived the reconnection"
    );
}

#[test]
fn front_end_state_node_removed_closes_the_back_end() {
    let mut p = prepared(opts());
    p.front.publish();
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    p.front.remove_key("state");
    assert_eq!(
        p.front.wait_backend(&[XenbusState::Closed], T),
        XenbusState::Closed
    );
}
