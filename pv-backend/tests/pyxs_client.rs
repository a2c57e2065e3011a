//! pyxs (python3-pyxs), a Python XenStore client, against our daemon. It fails (it does not skip)
//! when /usr/bin/python3 cannot import pyxs.

mod common;

use std::process::Command;

use pv_backend::xenstore::Quotas;

const SCRIPT: &str = r#"
import sys
from pyxs import Client
with Client(unix_socket_path=sys.argv[1]) as c:
    c.write(b"/py/a", b"1")
    assert c.read(b"/py/a") == b"1"
    c.mkdir(b"/py/dir")
    assert sorted(c.list(b"/py")) == [b"a", b"dir"]
    assert c.exists(b"/py/a") and not c.exists(b"/py/zz")
    c.set_perms(b"/py/a", [b"n0", b"r3"])
    assert c.get_perms(b"/py/a") == [b"n0", b"r3"]
    assert c.get_domain_path(7) == b"/local/domain/7"
    assert c.is_domain_introduced(0)
    c.transaction()
    c.write(b"/py/t", b"x")
    c.commit()
    assert c.read(b"/py/t") == b"x"
    with c.monitor() as m:
        m.watch(b"/py", b"tok")
        events = m.wait()
        assert next(events) == (b"/py", b"tok")
        c2 = Client(unix_socket_path=sys.argv[1])
        c2.connect()
        c2.write(b"/py/b", b"2")
        assert next(events) == (b"/py/b", b"tok")
        c2.close()
    c.delete(b"/py")
    assert not c.exists(b"/py")
print("pyxs ok")
"#;

#[test]
fn pyxs_client_works() {
    let (sock, _store) = common::start_server(Quotas::default());
    let python = common::tool("/usr/bin/python3");
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&sock)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pyxs failed (is python3-pyxs installed?):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pyxs ok"));
}
