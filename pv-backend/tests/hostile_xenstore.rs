//! The xenstored cases of HOSTILE-INPUT.md, one test each, named for the case: over a raw socket when
//! the case is about the wire, on the store when it is about a guest (socket clients are dom0).

mod common;

use std::time::{Duration, Instant};

use common::Raw;
use pv_backend::xenstore::{Quotas, StoreError, XenStore};
use xen_abi::xs_wire::{PermKind, XsErrno, XsPerm, XsType};

fn perm(kind: PermKind, domid: u16) -> XsPerm {
    XsPerm { kind, domid }
}

/// A store with guest `domid` owning its home directory, and a dom0 connection.
fn store_with_guest(quotas: Quotas, domid: u16) -> (XenStore, pv_backend::xenstore::ConnId) {
    let mut st = XenStore::new(quotas);
    let dom0 = st.connect(0, None);
    let home = format!("/local/domain/{domid}");
    st.mkdir(dom0, 0, home.as_bytes()).unwrap();
    st.set_perms(dom0, 0, home.as_bytes(), &[perm(PermKind::None, domid)])
        .unwrap();
    (st, dom0)
}

fn errno(e: StoreError) -> XsErrno {
    e.errno()
}

#[test]
fn header_len_above_4096() {
    let (sock, _) = common::start_server(Quotas::default());
    let mut c = Raw::connect(&sock);
    c.send_raw(XsType::Read.raw(), 1, 0, 4097, b"/\0");
    assert!(c.closed(), "a len above 4096 drops the connection");
    // The daemon still serves others.
    let mut d = Raw::connect(&sock);
    assert!(d.call(XsType::Directory, 0, b"/\0").is_ok());
}

#[test]
fn unknown_type() {
    let (sock, _) = common::start_server(Quotas::default());
    let mut c = Raw::connect(&sock);
    for ty in [20u32, 23, 0xffff, u32::MAX] {
        c.send_raw(ty, 9, 0, 3, b"ab\0");
        let (t, id, p) = c.reply();
        assert_eq!(
            (t, id, p.as_slice()),
            (XsType::Error.raw(), 9, &b"ENOSYS\0"[..])
        );
    }
    // Daemon-to-client types are not requests either.
    assert_eq!(
        c.call(XsType::WatchEvent, 0, b"/\0t\0"),
        Err("ENOSYS".into())
    );
    assert_eq!(c.call(XsType::Error, 0, b"EINVAL\0"), Err("ENOSYS".into()));
    assert!(c.call(XsType::Directory, 0, b"/\0").is_ok());
}

#[test]
fn missing_nul_terminator() {
    let (sock, _) = common::start_server(Quotas::default());
    let mut c = Raw::connect(&sock);
    assert_eq!(c.call(XsType::Read, 0, b"/tool"), Err("EINVAL".into()));
    assert_eq!(
        c.call(XsType::Watch, 0, b"/tool\0tok"),
        Err("EINVAL".into())
    );
    assert_eq!(c.call(XsType::Write, 0, b"/tool"), Err("EINVAL".into()));
    assert_eq!(c.call(XsType::Read, 0, b""), Err("EINVAL".into()));
    assert!(c.call(XsType::Read, 0, b"/tool\0").is_ok());
}

#[test]
fn path_longer_than_3072_absolute_or_2048_relative() {
    let (sock, _) = common::start_server(Quotas::default());
    let mut c = Raw::connect(&sock);
    // Absolute: after /local/domain/<id>/, at most 2048 bytes; never more than 3072 in all.
    let ok_abs = format!("/local/domain/1/{}\0", "a".repeat(2048 - 16 + 16));
    assert!(c.call(XsType::Write, 0, ok_abs.as_bytes()).is_ok());
    let too_long = format!("/{}\0", "a".repeat(3072));
    assert_eq!(
        c.call(XsType::Write, 0, too_long.as_bytes()),
        Err("EINVAL".into())
    );
    let counted = format!("/{}\0", "a".repeat(2048));
    assert_eq!(
        c.call(XsType::Write, 0, counted.as_bytes()),
        Err("EINVAL".into())
    );
    let rel = format!("{}\0", "a".repeat(2049));
    assert_eq!(
        c.call(XsType::Write, 0, rel.as_bytes()),
        Err("EINVAL".into())
    );
    let rel_ok = format!("{}\0", "a".repeat(2048));
    assert!(c.call(XsType::Write, 0, rel_ok.as_bytes()).is_ok());
}

#[test]
fn tricks_with_the_local_domain_prefix() {
    let (mut st, dom0) = store_with_guest(Quotas::default(), 1);
    st.mkdir(dom0, 0, b"/local/domain/2/secret").unwrap();
    let g = st.connect(1, None);
    // No `..`, no `.`, no `//`, no trailing slash.
    for p in [
        &b"/local/domain/1/../2/secret"[..],
        b"../2/secret",
        b"/local/domain/1//x",
        b"/local/domain/1/x/",
        b"./x",
    ] {
        assert_eq!(errno(st.write(g, 0, p, b"v").unwrap_err()), XsErrno::EINVAL);
    }
    // Another domain's home, however spelled, is not the guest's.
    for p in [
        &b"/local/domain/2/secret"[..],
        b"/local/domain/01/x",
        b"/local/domain/00001/x",
        b"/local/domain/1x",
    ] {
        assert_eq!(
            errno(st.write(g, 0, p, b"v").unwrap_err()),
            XsErrno::EACCES,
            "{p:?}"
        );
    }
    assert_eq!(
        errno(st.read(g, 0, b"/local/domain/2/secret").unwrap_err()),
        XsErrno::EACCES
    );
    // Its own home, absolute or relative, is the same node.
    st.write(g, 0, b"/local/domain/1/x", b"v").unwrap();
    assert_eq!(st.read(g, 0, b"x").unwrap(), b"v");
    // The prefix is not counted in the path length quota, but only for a real domid prefix.
    let mut rel = format!("{}/", "a".repeat(63)).repeat(32);
    rel.pop();
    rel.push('b');
    assert_eq!(rel.len(), 2048);
    let long = format!("/local/domain/1/{rel}");
    st.write(g, 0, long.as_bytes(), b"").unwrap();
    let long = format!("/local/domain/1/{rel}c");
    assert_eq!(
        errno(st.write(g, 0, long.as_bytes(), b"").unwrap_err()),
        XsErrno::EINVAL
    );
}

#[test]
fn client_that_never_reads_responses() {
    let quotas = Quotas {
        output_bytes: 256 * 1024,
        ..Quotas::default()
    };
    let (sock, _) = common::start_server(quotas);
    let mut setup = Raw::connect(&sock);
    let mut value = b"/big\0".to_vec();
    value.extend_from_slice(&[b'x'; 4000]);
    setup.call(XsType::Write, 0, &value).unwrap();
    let mut bad = Raw::connect(&sock);
    let flood = std::thread::spawn(move || {
        // Never reads: only the kernel buffers and its bounded queue fill, then it is dropped.
        let mut sent = 0u32;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let mut m = Vec::new();
            for v in [XsType::Read.raw(), sent, 0, 5] {
                m.extend_from_slice(&v.to_ne_bytes());
            }
            m.extend_from_slice(b"/big\0");
            if std::io::Write::write_all(&mut bad.s, &m).is_err() {
                return (sent, true);
            }
            sent += 1;
        }
        (sent, false)
    });
    // Meanwhile another client is served promptly.
    let mut good = Raw::connect(&sock);
    for _ in 0..200 {
        let t0 = Instant::now();
        good.call(XsType::Read, 0, b"/big\0").unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
    let (sent, dropped) = flood.join().unwrap();
    assert!(
        dropped,
        "the flooding client was not dropped after {sent} requests"
    );
    assert!(good.call(XsType::Read, 0, b"/big\0").is_ok());
}

#[test]
fn watch_with_a_huge_token() {
    let (sock, _) = common::start_server(Quotas::default());
    let mut c = Raw::connect(&sock);
    c.call(XsType::Mkdir, 0, b"/w\0").unwrap();
    let token = vec![b't'; 4090];
    let mut req = b"/w\0".to_vec();
    req.extend_from_slice(&token);
    req.push(0);
    c.call(XsType::Watch, 0, &req).unwrap();
    // The initial event fits (4096 bytes)...
    let (t, _, p) = c.recv().unwrap();
    assert_eq!(t, XsType::WatchEvent.raw());
    assert_eq!(p.len(), 3 + 4091);
    // ...an event for a longer path does not, and is dropped; the connection carries on.
    c.call(XsType::Write, 0, b"/w/longer-name\0v").unwrap();
    assert!(c.call(XsType::Read, 0, b"/w/longer-name\0").is_ok());
    // A guest pays for its tokens: 128 huge watches are within 2.5 MB, and the 129th is refused.
    let (mut st, _) = store_with_guest(Quotas::default(), 3);
    let g = st.connect(3, None);
    for i in 0..128 {
        st.watch(g, format!("w{i}").as_bytes(), &token).unwrap();
    }
    assert_eq!(
        errno(st.watch(g, b"w128", &token).unwrap_err()),
        XsErrno::E2BIG
    );
}

#[test]
fn watch_on_root_over_unreadable_nodes_xsa_115() {
    let (mut st, dom0) = store_with_guest(Quotas::default(), 1);
    let g = st.connect(1, None);
    st.watch(g, b"/", b"root").unwrap();
    st.take_output(g);
    st.write(dom0, 0, b"/secret/key", b"v").unwrap();
    st.write(dom0, 0, b"/local/domain/2/private", b"v").unwrap();
    st.rm(dom0, 0, b"/secret").unwrap();
    assert!(
        st.take_output(g).is_empty(),
        "a guest saw a node it cannot read"
    );
    // Its own nodes, and nodes it may read, it does see.
    st.write(dom0, 0, b"/local/domain/1/mine", b"v").unwrap();
    st.write(dom0, 0, b"/shared", b"v").unwrap();
    st.set_perms(
        dom0,
        0,
        b"/shared",
        &[perm(PermKind::None, 0), perm(PermKind::Read, 1)],
    )
    .unwrap();
    let events: Vec<Vec<u8>> = st.take_output(g).into_iter().map(|m| m.payload).collect();
    assert_eq!(
        events,
        vec![
            b"/local/domain/1/mine\0root\0".to_vec(),
            b"/shared\0root\0".to_vec()
        ]
    );
}

#[test]
fn reset_watches_in_a_loop() {
    let (sock, store) = common::start_server(Quotas::default());
    let mut c = Raw::connect(&sock);
    for i in 0..2000u32 {
        c.call(XsType::Watch, 0, format!("/a{}\0t\0", i % 7).as_bytes())
            .unwrap();
        c.call(XsType::TransactionStart, 0, b"\0").unwrap();
        c.call(XsType::ResetWatches, 0, b"\0").unwrap();
    }
    // Nothing is left behind: no watch fires, no transaction is open.
    c.call(XsType::Write, 0, b"/a1\0v").unwrap();
    assert_eq!(
        c.call(XsType::TransactionEnd, 1, b"T\0"),
        Err("ENOENT".into())
    );
    let (mut st, _) = store_with_guest(Quotas::default(), 4);
    let g = st.connect(4, None);
    let before = st.domain_usage(4).unwrap();
    for _ in 0..1000 {
        st.watch(g, b"x", b"t").unwrap();
        st.reset_watches(g).unwrap();
    }
    assert_eq!(
        st.domain_usage(4).unwrap(),
        before,
        "watch memory is given back"
    );
    drop(store);
}

#[test]
fn transactions_above_the_quota() {
    let (mut st, _) = store_with_guest(Quotas::default(), 1);
    let g = st.connect(1, None);
    let ids: Vec<u32> = (0..10).map(|_| st.transaction_start(g).unwrap()).collect();
    assert_eq!(errno(st.transaction_start(g).unwrap_err()), XsErrno::ENOSPC);
    st.transaction_end(g, ids[0], false).unwrap();
    st.transaction_start(g).unwrap();
    // Dom0 is unlimited.
    let d = st.connect(0, None);
    for _ in 0..100 {
        st.transaction_start(d).unwrap();
    }
}

#[test]
fn transaction_touching_more_than_1024_nodes() {
    let (mut st, dom0) = store_with_guest(Quotas::default(), 1);
    for i in 0..1100 {
        st.write(dom0, 0, format!("/local/domain/1/n{i}").as_bytes(), b"")
            .unwrap();
    }
    let g = st.connect(1, None);
    let t = st.transaction_start(g).unwrap();
    let mut failed_at = None;
    for i in 0..1100 {
        if let Err(e) = st.read(g, t, format!("n{i}").as_bytes()) {
            assert_eq!(e.errno(), XsErrno::ENOSPC);
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(failed_at, Some(1024));
    // A removal of a bigger subtree inside a transaction is refused the same way.
    let t2 = st.transaction_start(g).unwrap();
    assert_eq!(
        errno(st.rm(g, t2, b"/local/domain/1").unwrap_err()),
        XsErrno::ENOSPC
    );
    st.transaction_end(g, t2, true).unwrap();
    assert_eq!(st.directory(g, 0, b"/local/domain/1").unwrap().len(), 1100);
}

#[test]
fn create_then_delete_inside_one_transaction() {
    let (mut st, _) = store_with_guest(Quotas::default(), 1);
    let g = st.connect(1, None);
    let before = st.domain_usage(1).unwrap();
    let t = st.transaction_start(g).unwrap();
    st.write(g, t, b"a/b/c", b"v").unwrap();
    assert_eq!(st.read(g, t, b"a/b/c").unwrap(), b"v");
    assert_eq!(errno(st.read(g, 0, b"a/b/c").unwrap_err()), XsErrno::ENOENT);
    st.rm(g, t, b"a").unwrap();
    assert_eq!(errno(st.read(g, t, b"a").unwrap_err()), XsErrno::ENOENT);
    st.transaction_end(g, t, true).unwrap();
    assert_eq!(errno(st.read(g, 0, b"a").unwrap_err()), XsErrno::ENOENT);
    assert_eq!(st.domain_usage(1).unwrap(), before);
    st.check_tree().unwrap();
}

#[test]
fn owner_or_permission_change_by_an_unprivileged_guest() {
    let (mut st, dom0) = store_with_guest(Quotas::default(), 1);
    st.mkdir(dom0, 0, b"/local/domain/2").unwrap();
    let g = st.connect(1, None);
    st.write(g, 0, b"mine", b"v").unwrap();
    // Giving its node away is EPERM; granting others access is fine.
    let e = st
        .set_perms(g, 0, b"mine", &[perm(PermKind::None, 2)])
        .unwrap_err();
    assert_eq!(e.errno(), XsErrno::EPERM);
    st.set_perms(
        g,
        0,
        b"mine",
        &[perm(PermKind::None, 1), perm(PermKind::Read, 2)],
    )
    .unwrap();
    // Someone else's node: EACCES, even with write access to it.
    st.write(dom0, 0, b"/local/domain/1/theirs", b"v").unwrap();
    st.set_perms(
        dom0,
        0,
        b"/local/domain/1/theirs",
        &[perm(PermKind::Both, 0)],
    )
    .unwrap();
    let e = st
        .set_perms(g, 0, b"theirs", &[perm(PermKind::Both, 1)])
        .unwrap_err();
    assert_eq!(e.errno(), XsErrno::EACCES);
    let e = st
        .set_perms(g, 0, b"/tool", &[perm(PermKind::Both, 1)])
        .unwrap_err();
    assert_eq!(e.errno(), XsErrno::EACCES);
    // Special nodes, too.
    let e = st
        .set_perms(g, 0, b"@releaseDomain", &[perm(PermKind::Read, 1)])
        .unwrap_err();
    assert_eq!(e.errno(), XsErrno::EACCES);
    // And more than 5 entries is over quota.
    let many: Vec<XsPerm> = (1..=6).map(|d| perm(PermKind::Read, d)).collect();
    let mut many = many;
    many[0] = perm(PermKind::None, 1);
    assert_eq!(
        errno(st.set_perms(g, 0, b"mine", &many).unwrap_err()),
        XsErrno::ENOSPC
    );
}

#[test]
fn deeply_nested_paths() {
    // On a thread with a small stack: no operation recurses over the depth of a path.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let mut st = XenStore::default();
            let d = st.connect(0, None);
            let deep = format!("/{}", vec!["a"; 1500].join("/"));
            assert!(deep.len() <= 3072);
            let deep = &deep[..deep.len().min(2048)];
            let deep = deep.trim_end_matches('/');
            st.write(d, 0, deep.as_bytes(), b"bottom").unwrap();
            assert_eq!(st.read(d, 0, deep.as_bytes()).unwrap(), b"bottom");
            st.watch(d, b"/a", b"t").unwrap();
            let t = st.transaction_start(d).unwrap();
            st.rm(d, t, b"/a").unwrap();
            st.transaction_end(d, t, true).unwrap();
            st.check_tree().unwrap();
            assert_eq!(st.node_count(), 3);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn domid_reused_after_the_domain_was_destroyed_xsa_322() {
    let (mut st, dom0) = store_with_guest(Quotas::default(), 5);
    st.introduce(dom0, 5, 100, 1).unwrap();
    st.write(dom0, 0, b"/shared/data", b"v").unwrap();
    st.set_perms(
        dom0,
        0,
        b"/shared/data",
        &[perm(PermKind::None, 0), perm(PermKind::Both, 5)],
    )
    .unwrap();
    let old = st.connect(5, None);
    st.write(old, 0, b"owned", b"v").unwrap();
    assert!(st.read(old, 0, b"/shared/data").is_ok());
    st.release(dom0, 5).unwrap();
    assert!(st.is_closed(old));
    // A new domain 5 inherits nothing from the old one.
    st.introduce(dom0, 5, 200, 2).unwrap();
    let new = st.connect(5, None);
    assert_eq!(
        errno(st.read(new, 0, b"/shared/data").unwrap_err()),
        XsErrno::EACCES
    );
    assert_eq!(
        errno(st.read(new, 0, b"/local/domain/5/owned").unwrap_err()),
        XsErrno::EACCES
    );
    let perms = st.get_perms(dom0, 0, b"/shared/data").unwrap();
    assert_eq!(perms, vec![perm(PermKind::None, 0)]);
    // Once the toolstack grants it again, it has access.
    st.set_perms(
        dom0,
        0,
        b"/shared/data",
        &[perm(PermKind::None, 0), perm(PermKind::Read, 5)],
    )
    .unwrap();
    assert!(st.read(new, 0, b"/shared/data").is_ok());
}
