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

mod uring_sleep {
    //! The io_uring engine's [`BlockQueue::sleep`]: it waits in the ring, with a read of the
    //! doorbell's eventfd in the same ring, so both a ring of the doorbell and a completion end it.

    use std::ptr::NonNull;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use pv_backend::backend::Doorbell;
    use pv_backend::blk::{
        BlockDevice, BlockQueue, FileDevice, FileOptions, IoBuf, IoCompletion, IoOp, IoRequest,
    };

    struct Image(std::path::PathBuf);

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn queue(name: &str) -> (Image, Box<dyn BlockQueue>, Arc<Doorbell>) {
        let path =
            std::env::temp_dir().join(format!("blk-doorbell-{name}-{}.img", std::process::id()));
        std::fs::write(&path, vec![0xA5u8; 1 << 20]).unwrap();
        let opts = FileOptions {
            io_uring: true,
            ..FileOptions::default()
        };
        let dev = FileDevice::open(&path, opts).unwrap();
        let mut q = dev.open_queue().unwrap();
        let bell = Doorbell::new();
        q.set_doorbell(bell.clone());
        (Image(path), q, bell)
    }

    #[test]
    fn a_ring_ends_a_sleep_in_the_ring_and_is_taken() {
        let (_img, mut q, bell) = queue("ring");
        for _ in 0..50 {
            let b2 = bell.clone();
            let th = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                b2.ring();
            });
            let t = Instant::now();
            assert!(q.sleep(&bell, Duration::from_secs(5)));
            assert!(
                t.elapsed() < Duration::from_secs(4),
                "woken by the ring, not the timeout ({:?})",
                t.elapsed()
            );
            th.join().unwrap();
            // The ring was consumed by the sleep: the next sleep waits for its timeout.
            let mut out = Vec::new();
            assert_eq!(q.reap(&mut out), 0, "a doorbell read is not a completion");
        }
        let t = Instant::now();
        assert!(q.sleep(&bell, Duration::from_millis(30)));
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "no ring left over"
        );
    }

    #[test]
    fn a_completion_ends_a_sleep_in_the_ring() {
        let (_img, mut q, bell) = queue("io");
        let mut buf = vec![0u8; 2 * 4096];
        let base = buf.as_mut_ptr();
        let aligned = NonNull::new(base.wrapping_add(base.align_offset(4096))).unwrap();
        for i in 0..20u64 {
            // SAFETY: 4096 bytes from the aligned start lie inside `buf`, which outlives the read
            // (it is reaped below before the next one starts).
            let bufs = vec![unsafe { IoBuf::new(aligned, 4096) }];
            let mut batch = vec![IoRequest {
                tag: i,
                op: IoOp::Read {
                    offset: i * 4096,
                    bufs,
                },
            }];
            q.submit(&mut batch);
            let t = Instant::now();
            let mut out: Vec<IoCompletion> = Vec::new();
            while q.reap(&mut out) == 0 {
                q.sleep(&bell, Duration::from_secs(5));
                assert!(
                    t.elapsed() < Duration::from_secs(4),
                    "the completion woke it"
                );
            }
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].tag, i);
            out[0].result.as_ref().unwrap();
            // SAFETY: the read completed; the buffer is ours again.
            let got = unsafe { std::slice::from_raw_parts(aligned.as_ptr(), 4096) };
            assert!(got.iter().all(|&b| b == 0xA5));
        }
    }

    #[test]
    fn a_queue_with_a_doorbell_read_outstanding_drops() {
        let (_img, mut q, bell) = queue("drop");
        // Leaves the doorbell's read at the kernel.
        assert!(q.sleep(&bell, Duration::from_millis(5)));
        let t = Instant::now();
        drop(q);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the read was cancelled, not waited for"
        );
        // The doorbell still works for its next owner.
        bell.ring();
        assert!(bell.wait(Duration::from_secs(1)));
    }
}
