//! A host out of file descriptors: blkback's connection fails with an error that says so (the queue's
//! doorbell is an eventfd), the process goes on, and the same vbd connects once descriptors are free.
//!
//! Alone in its test binary: it lowers the process's `RLIMIT_NOFILE`, which would break tests running
//! beside it.

#[path = "common/blk_harness.rs"]
mod harness;

use std::fs::File;
use std::time::Duration;

use harness::{Env, assert_serves};
use pv_backend::backend::Doorbell;
use pv_backend::blk::BlkConfig;
use pv_backend::blk::front::FrontOptions;
use xen_abi::xenbus::XenbusState;

const T: Duration = Duration::from_secs(5);

fn rlimit() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the pointer, which points at `r`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

fn set_rlimit(r: &libc::rlimit) {
    // SAFETY: setrlimit reads one `rlimit` through the pointer, which points at `r`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, r) }, 0);
}

/// Uses up every file descriptor the process may open: the soft limit is lowered to a little above
/// the highest descriptor in use, and the gaps below it are filled with `/dev/null`. Dropping the
/// result frees them; the caller restores the limit.
fn exhaust_descriptors() -> Vec<File> {
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut r = rlimit();
    r.rlim_cur = highest + 8;
    set_rlimit(&r);
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                return held;
            }
        }
    }
}

#[test]
fn out_of_descriptors_fails_the_connection_not_the_process() {
    let env = Env::new();
    let mut p = env.prepared(3, BlkConfig::default(), FrontOptions::default());
    assert_eq!(p.front.backend_state(), XenbusState::InitWait);
    p.front.publish_keys();

    let saved = rlimit();
    let held = exhaust_descriptors();
    let e = Doorbell::try_new().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE));

    // The front end asks to connect while no descriptor can be made.
    p.front.set_state(XenbusState::Initialised);
    let state = p
        .front
        .wait_backend(&[XenbusState::Closing, XenbusState::Closed], T);
    drop(held);
    set_rlimit(&saved);
    assert!(
        matches!(state, XenbusState::Closing | XenbusState::Closed),
        "the back end did not refuse the connection: {state:?}"
    );
    let err = p.front.backend_error().unwrap_or_default();
    assert!(
        err.contains("doorbell") && err.contains("Too many open files"),
        "the back end's error names the doorbell's eventfd and the limit: {err:?}"
    );

    // With descriptors free again the same vbd reconnects and serves.
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
    p.front.publish();
    assert_eq!(p.front.wait_connected(T), XenbusState::Connected);
    assert_serves(&mut p.front, 5);
    assert!(Doorbell::try_new().is_ok());
}
