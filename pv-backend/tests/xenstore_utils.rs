//! The xenstore-utils commands against our daemon, through `XENSTORED_PATH`. They fail (they do not
//! skip) when the commands are missing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pv_backend::xenstore::Quotas;

fn xs(sock: &Path, cmd: &str, args: &[&str]) -> Output {
    Command::new(common::tool(&format!("/usr/bin/{cmd}")))
        .args(args)
        .env("XENSTORED_PATH", sock)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

fn ok(sock: &Path, cmd: &str, args: &[&str]) -> String {
    let out = xs(sock, cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn write_read_ls_list_rm_exists() {
    let (sock, _store) = common::start_server(Quotas::default());
    ok(
        &sock,
        "xenstore-write",
        &["/vm/1/name", "guest", "/vm/1/uuid", "abc"],
    );
    assert_eq!(ok(&sock, "xenstore-read", &["/vm/1/name"]), "guest\n");
    let list = ok(&sock, "xenstore-list", &["/vm/1"]);
    assert_eq!(list, "name\nuuid\n");
    let ls = ok(&sock, "xenstore-ls", &["/vm"]);
    assert!(ls.contains("name = \"guest\""), "{ls}");
    assert!(
        xs(&sock, "xenstore-exists", &["/vm/1/name"])
            .status
            .success()
    );
    assert!(!xs(&sock, "xenstore-exists", &["/vm/2"]).status.success());
    ok(&sock, "xenstore-rm", &["/vm/1"]);
    assert!(
        !xs(&sock, "xenstore-exists", &["/vm/1/name"])
            .status
            .success()
    );
    assert!(!xs(&sock, "xenstore-read", &["/vm/1/name"]).status.success());
    // Relative paths are dom0's home.
    ok(&sock, "xenstore-write", &["rel", "x"]);
    assert_eq!(ok(&sock, "xenstore-read", &["/local/domain/0/rel"]), "x\n");
}

#[test]
fn chmod_and_ls_p() {
    let (sock, _store) = common::start_server(Quotas::default());
    ok(&sock, "xenstore-write", &["/data/a/b", "1"]);
    ok(&sock, "xenstore-chmod", &["/data/a", "n0", "r1", "b2"]);
    let ls = ok(&sock, "xenstore-ls", &["-p", "/data"]);
    assert!(ls.contains("(n0,r1,b2)"), "{ls}");
    ok(&sock, "xenstore-chmod", &["-r", "/data", "b3"]);
    let ls = ok(&sock, "xenstore-ls", &["-p", "/data"]);
    assert!(ls.contains("(b3)") && !ls.contains("r1"), "{ls}");
}

#[test]
fn watch_reports_changes() {
    let (sock, _store) = common::start_server(Quotas::default());
    ok(&sock, "xenstore-write", &["/w", ""]);
    let mut child = Command::new(common::tool("/usr/bin/xenstore-watch"))
        .args(["-n", "3", "/w"])
        .env("XENSTORED_PATH", &sock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run xenstore-watch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The initial event, then one per change.
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    ok(&sock, "xenstore-write", &["/w/x", "1"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w/x");
    std::thread::sleep(Duration::from_millis(50));
    ok(&sock, "xenstore-rm", &["/w"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    assert!(child.wait().unwrap().success());
}
