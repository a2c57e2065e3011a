//! The back end's doorbell: never loses a ring, sleeps until rung or timed out, and wakes for a write to
//! its eventfd (as an io_uring completion makes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pv_backend::backend::Doorbell;

#[test]
fn a_ring_before_the_wait_is_not_lost() {
    let d = Doorbell::new();
    d.ring();
    d.ring();
    assert!(d.wait(Duration::from_secs(5)), "returns at once");
    assert!(!d.take(), "two rings are one wake-up");
    assert_eq!(d.rings(), 2);
}

#[test]
fn a_wait_without_a_ring_times_out() {
    let d = Doorbell::new();
    let t = Instant::now();
    assert!(!d.wait(Duration::from_millis(30)));
    assert!(t.elapsed() >= Duration::from_millis(25));
}

#[test]
fn a_ring_from_another_thread_wakes_the_sleeper() {
    for _ in 0..200 {
        let d = Doorbell::new();
        let d2: Arc<Doorbell> = d.clone();
        let th = std::thread::spawn(move || d2.ring());
        assert!(d.wait(Duration::from_secs(5)), "woken, not timed out");
        th.join().unwrap();
    }
}

#[test]
fn a_write_to_the_eventfd_wakes_the_sleeper() {
    let d = Doorbell::new();
    let fd = d.as_raw_fd();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to the doorbell's eventfd, which outlives the thread.
        unsafe { libc::write(fd, (&raw const one).cast(), 8) };
    });
    let t = Instant::now();
    assert!(d.wait(Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(4));
    th.join().unwrap();
}
