//! Unit tests of the store, through its public API.

use pv_backend::xenstore::{ConnId, Quotas, StoreError, XenStore};
use xen_abi::xs_wire::{Message, OwnedMessage, PermKind, XsErrno, XsPerm, XsType};

fn perm(kind: PermKind, domid: u16) -> XsPerm {
    XsPerm { kind, domid }
}

fn errno<T: std::fmt::Debug>(r: Result<T, StoreError>) -> XsErrno {
    r.unwrap_err().errno()
}

fn setup(quotas: Quotas, guests: &[u16]) -> (XenStore, ConnId) {
    let mut st = XenStore::new(quotas);
    let d = st.connect(0, None);
    for &g in guests {
        let home = format!("/local/domain/{g}");
        st.mkdir(d, 0, home.as_bytes()).unwrap();
        st.set_perms(d, 0, home.as_bytes(), &[perm(PermKind::None, g)])
            .unwrap();
    }
    (st, d)
}

fn events(st: &mut XenStore, c: ConnId) -> Vec<String> {
    st.take_output(c)
        .into_iter()
        .filter(|m| m.msg_type == XsType::WatchEvent)
        .map(|m| String::from_utf8_lossy(&m.payload).replace('\0', "|"))
        .collect()
}

fn request(st: &mut XenStore, c: ConnId, ty: XsType, tx: u32, payload: &[u8]) -> OwnedMessage {
    let msg = Message {
        msg_type: ty,
        req_id: 42,
        tx_id: tx,
        payload,
    };
    st.handle_message(c, &msg);
    let out = st.take_output(c);
    out.into_iter()
        .find(|m| m.msg_type != XsType::WatchEvent)
        .unwrap()
}

#[test]
fn read_write_mkdir_rm_directory() {
    let (mut st, d) = setup(Quotas::default(), &[]);
    st.write(d, 0, b"/a/b/c", b"v").unwrap();
    assert_eq!(st.read(d, 0, b"/a/b/c").unwrap(), b"v");
    assert_eq!(st.read(d, 0, b"/a/b").unwrap(), b"");
    st.mkdir(d, 0, b"/a/b/d").unwrap();
    st.mkdir(d, 0, b"/a/b/d").unwrap();
    st.write(d, 0, b"/a/b/0", b"").unwrap();
    assert_eq!(st.directory(d, 0, b"/a/b").unwrap(), ["c", "d", "0"]);
    assert_eq!(errno(st.read(d, 0, b"/nope")), XsErrno::ENOENT);
    // Removing a missing node under an existing parent is fine; under a missing parent it is not.
    st.rm(d, 0, b"/a/zz").unwrap();
    assert_eq!(errno(st.rm(d, 0, b"/q/zz")), XsErrno::ENOENT);
    assert_eq!(errno(st.rm(d, 0, b"/")), XsErrno::EINVAL);
    st.rm(d, 0, b"/a").unwrap();
    assert_eq!(errno(st.read(d, 0, b"/a/b/c")), XsErrno::ENOENT);
    assert_eq!(st.paths(), ["/", "/tool", "/tool/xenstored"]);
    st.check_tree().unwrap();
}

#[test]
fn relative_paths_are_under_the_callers_home() {
    let (mut st, d) = setup(Quotas::default(), &[3]);
    let g = st.connect(3, None);
    st.write(g, 0, b"device/vif/0/state", b"1").unwrap();
    assert_eq!(
        st.read(d, 0, b"/local/domain/3/device/vif/0/state")
            .unwrap(),
        b"1"
    );
    st.write(d, 0, b"x", b"dom0").unwrap();
    assert_eq!(st.read(d, 0, b"/local/domain/0/x").unwrap(), b"dom0");
    assert_eq!(st.get_domain_path(3), "/local/domain/3");
}

#[test]
fn permissions_follow_c_xenstored() {
    let (mut st, d) = setup(Quotas::default(), &[1, 2, 3]);
    let g1 = st.connect(1, None);
    let g2 = st.connect(2, None);
    let g3 = st.connect(3, None);
    st.write(g1, 0, b"node", b"v").unwrap();
    // A node a guest creates is its own, with its parent's other entries.
    assert_eq!(
        st.get_perms(d, 0, b"/local/domain/1/node").unwrap(),
        [perm(PermKind::None, 1)]
    );
    // Others: the first entry is the default.
    assert_eq!(
        errno(st.read(g2, 0, b"/local/domain/1/node")),
        XsErrno::EACCES
    );
    st.set_perms(
        g1,
        0,
        b"node",
        &[
            perm(PermKind::Read, 1),
            perm(PermKind::Write, 2),
            perm(PermKind::None, 3),
        ],
    )
    .unwrap();
    // Domain 2 has its own entry (write only), domain 3 its own (none), others the default (read).
    assert_eq!(
        errno(st.read(g2, 0, b"/local/domain/1/node")),
        XsErrno::EACCES
    );
    st.write(g2, 0, b"/local/domain/1/node", b"w").unwrap();
    assert_eq!(
        errno(st.read(g3, 0, b"/local/domain/1/node")),
        XsErrno::EACCES
    );
    let g4 = st.connect(4, None);
    assert_eq!(st.read(g4, 0, b"/local/domain/1/node").unwrap(), b"w");
    assert_eq!(
        errno(st.write(g4, 0, b"/local/domain/1/node", b"x")),
        XsErrno::EACCES
    );
    // The owner and dom0 have everything.
    assert_eq!(st.read(g1, 0, b"node").unwrap(), b"w");
    assert_eq!(st.read(d, 0, b"/local/domain/1/node").unwrap(), b"w");
    // A missing node is ENOENT only to those who may read its nearest existing ancestor.
    assert_eq!(
        errno(st.read(g2, 0, b"/local/domain/1/zz/y")),
        XsErrno::EACCES
    );
    assert_eq!(errno(st.read(g1, 0, b"zz/y")), XsErrno::ENOENT);
    // Creating needs write access to the nearest existing ancestor.
    assert_eq!(
        errno(st.write(g2, 0, b"/local/domain/1/new", b"")),
        XsErrno::EACCES
    );
    assert_eq!(errno(st.write(g2, 0, b"/tool/x", b"")), XsErrno::EACCES);
    // Privileged operations.
    assert_eq!(errno(st.introduce(g1, 9, 1, 1)), XsErrno::EACCES);
    let reply = request(&mut st, g1, XsType::IsDomainIntroduced, 0, b"1\0");
    assert_eq!(reply.payload, b"EACCES\0");
}

#[test]
fn set_target_gives_a_device_model_its_targets_rights() {
    let (mut st, d) = setup(Quotas::default(), &[1, 2]);
    st.introduce(d, 1, 1, 1).unwrap();
    st.introduce(d, 2, 2, 2).unwrap();
    let dm = st.connect(2, None);
    st.write(d, 0, b"/local/domain/1/x", b"v").unwrap();
    assert_eq!(errno(st.read(dm, 0, b"/local/domain/1/x")), XsErrno::EACCES);
    st.set_target(d, 2, 1).unwrap();
    assert_eq!(st.read(dm, 0, b"/local/domain/1/x").unwrap(), b"v");
    assert_eq!(errno(st.set_target(d, 2, 7)), XsErrno::ENOENT);
}

#[test]
fn generation_counts_and_directory_part() {
    let (mut st, d) = setup(Quotas::default(), &[]);
    for i in 0..400 {
        st.write(d, 0, format!("/dir/child-number-{i:04}").as_bytes(), b"")
            .unwrap();
    }
    let mut names = Vec::new();
    let mut offset = 0u32;
    let mut generation = None;
    loop {
        let part = st.directory_part(d, 0, b"/dir", offset).unwrap();
        assert!(part.len() <= 4096);
        let mut strings: Vec<&[u8]> = part.split(|&b| b == 0).collect();
        strings.pop();
        let g = strings.remove(0).to_vec();
        assert_eq!(
            *generation.get_or_insert(g.clone()),
            g,
            "generation is stable"
        );
        let done = strings.last() == Some(&&b""[..]);
        for s in strings.iter().filter(|s| !s.is_empty()) {
            offset += s.len() as u32 + 1;
            names.push(String::from_utf8(s.to_vec()).unwrap());
        }
        if done {
            break;
        }
    }
    assert_eq!(names, st.directory(d, 0, b"/dir").unwrap());
    // A full DIRECTORY reply would not fit: E2BIG, as xenstored's send_reply.
    let reply = request(&mut st, d, XsType::Directory, 0, b"/dir\0");
    assert_eq!(reply.payload, b"E2BIG\0");
    // Adding a child changes the generation.
    st.write(d, 0, b"/dir/new", b"").unwrap();
    let part = st.directory_part(d, 0, b"/dir", 0).unwrap();
    assert_ne!(
        part.split(|&b| b == 0).next().unwrap(),
        generation.unwrap().as_slice()
    );
}

#[test]
fn node_quota_is_enospc_and_dom0_is_unlimited() {
    let q = Quotas {
        nodes: 5,
        ..Quotas::default()
    };
    let (mut st, d) = setup(q, &[1]);
    let g = st.connect(1, None);
    // The home directory counts: 4 more.
    for i in 0..4 {
        st.write(g, 0, format!("n{i}").as_bytes(), b"").unwrap();
    }
    assert_eq!(errno(st.write(g, 0, b"n4", b"")), XsErrno::ENOSPC);
    // Several nodes at once: all or nothing.
    st.rm(g, 0, b"n3").unwrap();
    assert_eq!(errno(st.write(g, 0, b"x/y", b"")), XsErrno::ENOSPC);
    assert_eq!(errno(st.read(g, 0, b"x")), XsErrno::ENOENT);
    // Modifying is fine at the quota; other guests are unaffected; dom0 is unlimited.
    st.write(g, 0, b"n0", b"new").unwrap();
    for i in 0..20 {
        st.write(d, 0, format!("/local/domain/0/n{i}").as_bytes(), b"")
            .unwrap();
    }
    // In a transaction, the quota is checked as it goes.
    let t = st.transaction_start(g).unwrap();
    st.write(g, t, b"t1", b"").unwrap();
    assert_eq!(errno(st.write(g, t, b"t2", b"")), XsErrno::ENOSPC);
}

#[test]
fn node_size_perms_and_memory_quotas() {
    let (mut st, d) = setup(Quotas::default(), &[1]);
    let g = st.connect(1, None);
    assert_eq!(errno(st.write(g, 0, b"big", &[0u8; 2048])), XsErrno::ENOSPC);
    st.write(g, 0, b"big", &[0u8; 1000]).unwrap();
    st.write(d, 0, b"/local/domain/1/bigger", &[0u8; 4000])
        .unwrap();
    let q = Quotas {
        memory: 8000,
        ..Quotas::default()
    };
    let (mut st, _) = setup(q, &[1]);
    let g = st.connect(1, None);
    let mut i = 0;
    let e = loop {
        match st.write(g, 0, format!("m{i}").as_bytes(), &[1u8; 1500]) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(e.errno(), XsErrno::ENOMEM);
    assert!((4..=5).contains(&i), "{i}");
}

#[test]
fn transactions_conflict_with_eagain() {
    let (mut st, d) = setup(Quotas::default(), &[]);
    st.write(d, 0, b"/x", b"a").unwrap();
    let t = st.transaction_start(d).unwrap();
    assert_eq!(st.read(d, t, b"/x").unwrap(), b"a");
    st.write(d, 0, b"/x", b"b").unwrap();
    // The transaction sees its snapshot.
    assert_eq!(st.read(d, t, b"/x").unwrap(), b"a");
    st.write(d, t, b"/x", b"c").unwrap();
    assert_eq!(errno(st.transaction_end(d, t, true)), XsErrno::EAGAIN);
    assert_eq!(st.read(d, 0, b"/x").unwrap(), b"b");
    // Gone either way.
    assert_eq!(errno(st.transaction_end(d, t, true)), XsErrno::ENOENT);
    // Disjoint transactions both commit; an abort changes nothing.
    let t1 = st.transaction_start(d).unwrap();
    let t2 = st.transaction_start(d).unwrap();
    st.write(d, t1, b"/x/p", b"1").unwrap();
    st.write(d, t2, b"/y", b"2").unwrap();
    st.transaction_end(d, t1, true).unwrap();
    st.transaction_end(d, t2, true).unwrap();
    let t3 = st.transaction_start(d).unwrap();
    st.rm(d, t3, b"/x").unwrap();
    st.transaction_end(d, t3, false).unwrap();
    assert_eq!(st.read(d, 0, b"/x/p").unwrap(), b"1");
    // An unknown transaction id is ENOENT.
    assert_eq!(errno(st.read(d, 99, b"/x")), XsErrno::ENOENT);
}

#[test]
fn watches_fire_for_the_node_and_below_with_an_initial_event() {
    let (mut st, d) = setup(Quotas::default(), &[1]);
    let w = st.connect(0, None);
    st.watch(w, b"/a", b"tok").unwrap();
    assert_eq!(events(&mut st, w), ["/a|tok|"]);
    st.write(d, 0, b"/a/b/c", b"").unwrap();
    st.write(d, 0, b"/ab", b"").unwrap();
    st.write(d, 0, b"/a", b"v").unwrap();
    assert_eq!(events(&mut st, w), ["/a/b/c|tok|", "/a|tok|"]);
    // Removing a parent fires the watch with the watch's own path.
    st.watch(w, b"/a/b/c", b"deep").unwrap();
    events(&mut st, w);
    st.rm(d, 0, b"/a").unwrap();
    let mut ev = events(&mut st, w);
    ev.sort();
    assert_eq!(ev, ["/a/b/c|deep|", "/a|tok|"]);
    // Transactions fire at commit only.
    let t = st.transaction_start(d).unwrap();
    st.write(d, t, b"/a/x", b"").unwrap();
    assert!(events(&mut st, w).is_empty());
    st.transaction_end(d, t, true).unwrap();
    assert_eq!(events(&mut st, w), ["/a/x|tok|"]);
    // Duplicates and unknown unwatches.
    assert_eq!(errno(st.watch(w, b"/a", b"tok")), XsErrno::EEXIST);
    st.unwatch(w, b"/a", b"tok").unwrap();
    assert_eq!(errno(st.unwatch(w, b"/a", b"tok")), XsErrno::ENOENT);
    // A relative watch gets relative paths.
    let g = st.connect(1, None);
    st.watch(g, b"dev", b"r").unwrap();
    st.write(d, 0, b"/local/domain/1/dev/x", b"").unwrap();
    assert_eq!(events(&mut st, g), ["dev|r|", "dev/x|r|"]);
}

#[test]
fn watch_reply_comes_before_the_initial_event() {
    let (mut st, _) = setup(Quotas::default(), &[]);
    let w = st.connect(0, None);
    st.handle_message(
        w,
        &Message {
            msg_type: XsType::Watch,
            req_id: 1,
            tx_id: 0,
            payload: &b"/p\0t\0"[..],
        },
    );
    let out = st.take_output(w);
    assert_eq!(out[0].msg_type, XsType::Watch);
    assert_eq!(out[0].payload, b"OK\0");
    assert_eq!(out[1].msg_type, XsType::WatchEvent);
    assert_eq!(out[1].payload, b"/p\0t\0");
}

#[test]
fn special_watches_introduce_and_release() {
    let (mut st, d) = setup(Quotas::default(), &[1, 2]);
    let w = st.connect(0, None);
    st.watch(w, b"@introduceDomain", b"i").unwrap();
    st.watch(w, b"@releaseDomain", b"r").unwrap();
    let g = st.connect(2, None);
    st.watch(g, b"@releaseDomain", b"g").unwrap();
    events(&mut st, w);
    events(&mut st, g);
    st.introduce(d, 1, 10, 3).unwrap();
    assert_eq!(events(&mut st, w), ["@introduceDomain|i|"]);
    let reply = request(&mut st, d, XsType::IsDomainIntroduced, 0, b"1\0");
    assert_eq!(reply.payload, b"T\0");
    st.release(d, 1).unwrap();
    assert_eq!(events(&mut st, w), ["@releaseDomain|r|"]);
    // Unprivileged watchers only see special events when allowed to.
    assert!(events(&mut st, g).is_empty());
    st.set_perms(
        d,
        0,
        b"@releaseDomain",
        &[perm(PermKind::None, 0), perm(PermKind::Read, 2)],
    )
    .unwrap();
    st.introduce(d, 1, 10, 3).unwrap();
    st.release(d, 1).unwrap();
    assert_eq!(events(&mut st, g), ["@releaseDomain|g|"]);
    assert_eq!(errno(st.release(d, 1)), XsErrno::ENOENT);
    let reply = request(&mut st, d, XsType::IsDomainIntroduced, 0, b"1\0");
    assert_eq!(reply.payload, b"F\0");
}

#[test]
fn pending_events_are_merged_and_bounded_xsa_326() {
    let q = Quotas {
        pending_events: 10,
        ..Quotas::default()
    };
    let (mut st, d) = setup(q, &[1]);
    let g = st.connect(1, None);
    st.watch(g, b"/local/domain/1", b"t").unwrap();
    st.take_output(g);
    for _ in 0..100 {
        st.write(d, 0, b"/local/domain/1/same", b"v").unwrap();
    }
    assert_eq!(events(&mut st, g), ["/local/domain/1/same|t|"]);
    for i in 0..100 {
        st.write(d, 0, format!("/local/domain/1/n{i}").as_bytes(), b"v")
            .unwrap();
    }
    assert_eq!(events(&mut st, g).len(), 10);
    assert_eq!(st.dropped_events(g), 90);
}

#[test]
fn replies_on_the_wire() {
    let (mut st, d) = setup(Quotas::default(), &[]);
    let r = request(&mut st, d, XsType::GetDomainPath, 0, b"7\0");
    assert_eq!(
        (r.req_id, r.payload.as_slice()),
        (42, &b"/local/domain/7\0"[..])
    );
    let r = request(&mut st, d, XsType::TransactionStart, 0, b"\0");
    assert_eq!(r.payload, b"1\0");
    let r = request(&mut st, d, XsType::Write, 1, b"/t\0val");
    assert_eq!((r.tx_id, r.payload.as_slice()), (1, &b"OK\0"[..]));
    let r = request(&mut st, d, XsType::TransactionEnd, 1, b"T\0");
    assert_eq!(r.payload, b"OK\0");
    let r = request(&mut st, d, XsType::Read, 0, b"/t\0");
    assert_eq!(r.payload, b"val");
    let r = request(&mut st, d, XsType::GetPerms, 0, b"/t\0");
    assert_eq!(r.payload, b"n0\0");
    let r = request(&mut st, d, XsType::SetPerms, 0, b"/t\0n0\0r5\0");
    assert_eq!(r.payload, b"OK\0");
    let r = request(&mut st, d, XsType::GetPerms, 0, b"/t\0");
    assert_eq!(r.payload, b"n0\0r5\0");
    let r = request(&mut st, d, XsType::SetPerms, 0, b"/t\0x0\0");
    assert_eq!(r.payload, b"EINVAL\0");
    let r = request(&mut st, d, XsType::Control, 0, b"help\0");
    assert!(String::from_utf8_lossy(&r.payload).contains("quota"));
    let r = request(&mut st, d, XsType::Control, 0, b"quota\0set\0nodes\x007\0");
    assert_eq!(r.payload, b"OK\0");
    assert_eq!(st.quotas().nodes, 7);
    let r = request(&mut st, d, XsType::Control, 0, b"check\0");
    assert_eq!(r.payload, b"OK\0");
    let r = request(&mut st, d, XsType::Control, 0, b"bogus\0");
    assert_eq!(r.payload, b"EINVAL\0");
    let r = request(&mut st, d, XsType::Resume, 0, b"3\0");
    assert_eq!(r.payload, b"ENOENT\0");
    let r = request(&mut st, d, XsType::Introduce, 0, b"3\x00123\x004\0");
    assert_eq!(r.payload, b"OK\0");
    let r = request(&mut st, d, XsType::Resume, 0, b"3\0");
    assert_eq!(r.payload, b"OK\0");
}
