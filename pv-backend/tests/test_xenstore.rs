//! Xen's own test suite, `test-xenstore` from xen-utils-4.17, against our daemon through
//! `XENSTORED_PATH`. It fails (it does not skip) when the program is missing.
//!
//! The random mode runs for 10 s here to keep `cargo test` short; `scripts/test` (the README's test command)
//! sets `XS_TEST_RANDOM_SECS=60` for the issue's full minute.

mod common;

use std::process::Command;

use pv_backend::xenstore::Quotas;

const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";

fn run(args: &[&str]) -> String {
    let (path, store) = common::start_server(Quotas::default());
    let out = Command::new(common::tool(TEST_XENSTORE))
        .args(args)
        .env("XENSTORED_PATH", &path)
        .output()
        .expect("run test-xenstore");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "test-xenstore {args:?} failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("failed"), "{text}");
    // It cleans up after itself: only the initial tree and dom0's empty home remain.
    let st = pv_backend::xenstore::server::lock(&store);
    st.check_tree().unwrap();
    assert!(
        !st.paths().iter().any(|p| p.contains("xenstore-test/")),
        "{:?}",
        st.paths()
    );
    text
}

#[test]
fn every_test() {
    let text = run(&[]);
    for name in [
        "read 1",
        "read 2000",
        "write 1",
        "write 2000",
        "dir",
        "rm node",
        "rm dir",
        "ta empty",
        "ta empty x",
        "ta rmw",
        "ta rmw x",
        "ta err",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name:<10}:"))),
            "{name} did not run:\n{text}"
        );
    }
}

#[test]
fn every_test_ten_iterations() {
    run(&["-i", "10"]);
}

#[test]
fn random_mode() {
    let secs = std::env::var("XS_TEST_RANDOM_SECS").unwrap_or_else(|_| "10".into());
    run(&["-r", &secs]);
}
