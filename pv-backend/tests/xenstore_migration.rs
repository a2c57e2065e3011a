//! Export and import of one domain's state, in the xenstore-migration stream format, and the
//! migration-stream cases of HOSTILE-INPUT.md that apply to it.

use pv_backend::xenstore::migration::{DomainState, MigrationError, REC_NODE_DATA};
use pv_backend::xenstore::{ConnId, Quotas, XenStore};
use xen_abi::xs_wire::{PermKind, XsErrno, XsPerm, XsType};

fn perm(kind: PermKind, domid: u16) -> XsPerm {
    XsPerm { kind, domid }
}

/// A source store where guest 5 has a home, nodes, watches, a transaction and unsent output.
fn source() -> (XenStore, ConnId, ConnId) {
    let mut st = XenStore::new(Quotas::default());
    let d = st.connect(0, None);
    st.mkdir(d, 0, b"/local/domain/5").unwrap();
    st.set_perms(d, 0, b"/local/domain/5", &[perm(PermKind::None, 5)])
        .unwrap();
    st.introduce(d, 5, 1234, 7).unwrap();
    let g = st.connect(5, None);
    st.write(g, 0, b"device/vbd/768/state", b"4").unwrap();
    st.write(g, 0, b"data/bin", b"a\0b").unwrap();
    st.set_perms(
        g,
        0,
        b"data",
        &[perm(PermKind::None, 5), perm(PermKind::Read, 0)],
    )
    .unwrap();
    st.watch(g, b"device", b"rel").unwrap();
    st.watch(g, b"/local/domain/5/data", b"abs").unwrap();
    st.take_output(g);
    let t = st.transaction_start(g).unwrap();
    st.write(g, t, b"data/pending", b"tx").unwrap();
    st.read(g, t, b"device/vbd/768/state").unwrap();
    // Output the guest has not read yet.
    st.write(d, 0, b"/local/domain/5/device/new", b"").unwrap();
    (st, g, d)
}

#[test]
fn export_import_round_trip() {
    let (src, _, _) = source();
    let state = src.export_domain(5);
    let bytes = state.encode();
    let decoded = DomainState::decode(&bytes).unwrap();
    assert_eq!(decoded, state);
    assert_eq!(decoded.connections.len(), 1);
    assert_eq!(decoded.connections[0].transactions.len(), 1);

    let mut dst = XenStore::new(Quotas::default());
    let d = dst.connect(0, None);
    let conns = dst.import_domain(&decoded, 9).unwrap();
    let g = conns[0];
    dst.check_tree().unwrap();
    // The tree, renamed, with its permissions.
    assert_eq!(dst.read(g, 0, b"device/vbd/768/state").unwrap(), b"4");
    assert_eq!(
        dst.read(d, 0, b"/local/domain/9/data/bin").unwrap(),
        b"a\0b"
    );
    assert_eq!(
        dst.get_perms(d, 0, b"/local/domain/9/data").unwrap(),
        [perm(PermKind::None, 9), perm(PermKind::Read, 0)]
    );
    // The unsent output is delivered.
    let out = dst.take_output(g);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].msg_type, XsType::WatchEvent);
    assert_eq!(out[0].payload, b"device/new\0rel\0");
    // The transaction carries on and commits (a change to data/ before would make it conflict, as
    // it would have at the source).
    let tx = decoded.connections[0].transactions[0].tx_id;
    assert_eq!(dst.read(g, tx, b"data/pending").unwrap(), b"tx");
    assert_eq!(
        dst.read(g, 0, b"data/pending").unwrap_err().errno(),
        XsErrno::ENOENT
    );
    dst.transaction_end(g, tx, true).unwrap();
    assert_eq!(dst.read(g, 0, b"data/pending").unwrap(), b"tx");
    let ev: Vec<Vec<u8>> = dst.take_output(g).into_iter().map(|m| m.payload).collect();
    // (The parent the transaction rewrote fires too: the stream does not say which node a write
    // was for, and an extra event is allowed by the protocol.)
    assert!(
        ev.contains(&b"/local/domain/9/data/pending\0abs\0".to_vec()),
        "{ev:?}"
    );
    // Watches fire, with relative paths where they were relative.
    dst.write(d, 0, b"/local/domain/9/device/x", b"").unwrap();
    dst.write(d, 0, b"/local/domain/9/data/y", b"").unwrap();
    let ev: Vec<Vec<u8>> = dst.take_output(g).into_iter().map(|m| m.payload).collect();
    assert_eq!(
        ev,
        [
            b"device/x\0rel\0".to_vec(),
            b"/local/domain/9/data/y\0abs\0".to_vec()
        ]
    );
    assert!(dst.is_domain_introduced(d, 9).unwrap());
    // The accounting is the guest's.
    assert!(dst.domain_usage(9).unwrap().0 >= 8);
}

#[test]
fn a_conflicting_transaction_still_conflicts_after_migration() {
    let (mut src, g, d) = source();
    let t = src.transaction_start(g).unwrap();
    src.read(g, t, b"data/bin").unwrap();
    src.write(d, 0, b"/local/domain/5/data/bin", b"changed")
        .unwrap();
    let state = DomainState::decode(&src.export_domain(5).encode()).unwrap();
    let mut dst = XenStore::new(Quotas::default());
    let conns = dst.import_domain(&state, 5).unwrap();
    assert_eq!(
        dst.transaction_end(conns[0], t, true).unwrap_err().errno(),
        XsErrno::EAGAIN
    );
}

fn unchanged_after(bytes: &[u8]) -> MigrationError {
    let mut dst = XenStore::new(Quotas::default());
    let before = dst.paths();
    let err = match DomainState::decode(bytes) {
        Err(e) => e,
        Ok(state) => dst.import_domain(&state, 9).unwrap_err(),
    };
    assert_eq!(dst.paths(), before, "a rejected stream changed the store");
    err
}

#[test]
fn truncated_stream() {
    let bytes = source().0.export_domain(5).encode();
    for len in 0..bytes.len() {
        let e = unchanged_after(&bytes[..len]);
        assert!(
            matches!(e, MigrationError::Truncated { .. } | MigrationError::NoEnd),
            "{len}: {e}"
        );
    }
}

#[test]
fn record_length_past_the_end() {
    let mut bytes = source().0.export_domain(5).encode();
    // The first record's len, made huge.
    bytes[20..24].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(matches!(
        unchanged_after(&bytes),
        MigrationError::Truncated { .. }
    ));
}

#[test]
fn non_zero_padding() {
    let bytes = source().0.export_domain(5).encode();
    // Find a record with padding and dirty it.
    let mut at = 16;
    loop {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let padded = len.div_ceil(8) * 8;
        if padded > len {
            let mut b = bytes.clone();
            b[at + 8 + len] = 1;
            assert!(matches!(
                unchanged_after(&b),
                MigrationError::NonZeroPadding { .. }
            ));
            return;
        }
        at += 8 + padded;
    }
}

#[test]
fn unknown_record_types() {
    let bytes = source().0.export_domain(5).encode();
    for ty in [1u32, 6, 7, 8, 9, 0xffff_ffff] {
        let mut b = bytes.clone();
        b[16..20].copy_from_slice(&ty.to_le_bytes());
        assert!(matches!(
            unchanged_after(&b),
            MigrationError::UnknownRecord { .. }
        ));
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(
        unchanged_after(&b),
        MigrationError::BadHeader { .. }
    ));
    let mut b = bytes.clone();
    b[15] = 1;
    assert!(matches!(
        unchanged_after(&b),
        MigrationError::BadHeader { .. }
    ));
}

#[test]
fn records_out_of_order() {
    let mut state = source().0.export_domain(5);
    // A child before its parent.
    let last = state.nodes.pop().unwrap();
    assert!(last.path.matches('/').count() > 4);
    state.nodes.insert(1, last);
    assert!(matches!(
        unchanged_after(&state.encode()),
        MigrationError::Invalid { .. }
    ));
    // A watch before its connection: move the first node record before the connection record.
    let bytes = source().0.export_domain(5).encode();
    let conn_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let conn_end = 16 + 8 + conn_len.div_ceil(8) * 8;
    let mut rest = bytes[conn_end..].to_vec();
    // Drop every record after the connection but keep the END: then watches refer to nothing.
    let mut reordered = bytes[..16].to_vec();
    let mut at = 0;
    let mut watch = None;
    while at < rest.len() {
        let ty = u32::from_le_bytes(rest[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(rest[at + 4..at + 8].try_into().unwrap()) as usize;
        let end = at + 8 + len.div_ceil(8) * 8;
        if ty == 3 && watch.is_none() {
            watch = Some(rest[at..end].to_vec());
        }
        at = end;
    }
    reordered.extend_from_slice(&watch.unwrap());
    reordered.extend_from_slice(&bytes[16..conn_end]);
    rest.clear();
    reordered.extend_from_slice(&[0u8; 8]);
    assert!(matches!(
        unchanged_after(&reordered),
        MigrationError::BadRecord { .. }
    ));
}

#[test]
fn nodes_outside_the_domains_home_are_refused() {
    let mut state = source().0.export_domain(5);
    state.nodes[1].path = "/local/domain/0/evil".into();
    assert!(matches!(
        unchanged_after(&state.encode()),
        MigrationError::Invalid { .. }
    ));
    let mut state = source().0.export_domain(5);
    state.connections[0].transactions[0].nodes[0].node.path = "/tool/evil".into();
    state.connections[0].transactions[0].nodes[0].access = 3;
    assert!(matches!(
        unchanged_after(&state.encode()),
        MigrationError::Invalid { .. }
    ));
    // A committed node without permissions.
    let mut bytes = source().0.export_domain(5).encode();
    let mut at = 16;
    loop {
        let ty = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if ty == REC_NODE_DATA {
            // perm-count := 0 leaves bytes after the fields: refused either way.
            bytes[at + 8 + 14..at + 8 + 16].copy_from_slice(&0u16.to_le_bytes());
            break;
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    assert!(matches!(
        unchanged_after(&bytes),
        MigrationError::BadRecord { .. }
    ));
}

/// The seed of the `xenstore_migration` fuzz target (`fuzz/corpus/xenstore_migration/seed-0`) is this
/// test's source stream; the test fails when the committed seed differs (the format changed), and
/// `BLANKET_WRITE_FUZZ_SEEDS=1` writes it anew.
#[test]
fn fuzz_seed_is_current() {
    let (src, _, _) = source();
    let bytes = src.export_domain(5).encode();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/xenstore_migration/seed-0");
    if std::env::var_os("BLANKET_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with BLANKET_WRITE_FUZZ_SEEDS=1 to write it",
            path.display()
        )
    });
    assert_eq!(
        committed, bytes,
        "the xenstore_migration fuzz seed is stale"
    );
}
