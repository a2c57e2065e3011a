//! `xen_abi::xs_wire`: the hostile-input cases of HOSTILE-INPUT.md that concern XenStore parsing and the
//! XenStore ring, unit tests, and round trips.

use proptest::prelude::*;
use xen_abi::xs_wire::*;
use zerocopy::IntoBytes;

fn header_bytes(msg_type: u32, req_id: u32, tx_id: u32, len: u32) -> Vec<u8> {
    XsdSockmsg {
        r#type: msg_type,
        req_id,
        tx_id,
        len,
    }
    .as_bytes()
    .to_vec()
}

fn message(msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = header_bytes(msg_type, req_id, tx_id, payload.len() as u32);
    v.extend_from_slice(payload);
    v
}

/// Feeds `bytes` to a new parser in chunks of `chunk` bytes and collects everything it yields.
fn parse_all(bytes: &[u8], chunk: usize) -> Vec<Result<OwnedMessage, XsWireError>> {
    let mut parser = FrameParser::new();
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        out.extend(parser.messages(c));
        assert!(parser.buffered() <= XS_MESSAGE_MAX);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// xenstored: a header len above 4096.
// ------------------------------------------------------------------------------------------------

#[test]
fn header_len_above_4096_is_rejected() {
    let mut bytes = header_bytes(XS_READ, 1, 0, 4097);
    bytes.extend_from_slice(&[b'a'; 64]);
    assert_eq!(
        MessageRef::parse(&bytes),
        Err(XsWireError::PayloadTooLong { len: 4097 })
    );

    // The incremental parser refuses it as soon as the header is complete, buffers nothing of the
    // payload, and stays broken: the connection is out of sync.
    let mut parser = FrameParser::new();
    let (used, item) = parser.feed(&bytes);
    assert_eq!(used, XSD_SOCKMSG_SIZE);
    assert_eq!(item, Some(Err(XsWireError::PayloadTooLong { len: 4097 })));
    assert!(parser.is_broken());
    assert_eq!(parser.buffered(), 0);
    let again = message(XS_READ, 2, 0, b"/ok\0");
    assert_eq!(
        parser.feed(&again),
        (
            again.len(),
            Some(Err(XsWireError::StreamBroken { len: 4097 }))
        )
    );
    assert!(XsWireError::PayloadTooLong { len: 4097 }.is_fatal());

    // u32::MAX, the most hostile value, is refused the same way.
    let bytes = header_bytes(XS_WRITE, 1, 0, u32::MAX);
    let got = parse_all(&bytes, 3);
    assert_eq!(
        got,
        vec![Err(XsWireError::PayloadTooLong { len: u32::MAX })]
    );
}

#[test]
fn header_len_of_exactly_4096_is_accepted() {
    let mut payload = vec![b'x'; 4095];
    payload.push(0);
    let bytes = message(XS_WRITE, 9, 0, &payload);
    let (msg, used) = MessageRef::parse(&bytes).unwrap();
    assert_eq!(used, XS_MESSAGE_MAX);
    assert_eq!(msg.payload.len(), 4096);
    let got = parse_all(&bytes, 1000);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap().payload, payload);
}

// ------------------------------------------------------------------------------------------------
// xenstored: an unknown type.
// ------------------------------------------------------------------------------------------------

#[test]
fn unknown_type_is_rejected() {
    for raw in [20u32, XS_TYPE_COUNT, 0x1234, XS_INVALID, u32::MAX] {
        assert_eq!(
            XsType::try_from(raw),
            Err(XsWireError::UnknownType { msg_type: raw })
        );
        let bytes = message(raw, 77, 5, b"/x\0");
        assert_eq!(
            MessageRef::parse(&bytes),
            Err(XsWireError::UnknownMessageType {
                msg_type: raw,
                req_id: 77,
                tx_id: 5,
                len: 3
            })
        );
    }
}

#[test]
fn unknown_type_carries_req_id_and_tx_id_and_the_stream_stays_in_sync() {
    let mut bytes = message(XS_INVALID, 41, 3, b"garbage\0more");
    bytes.extend(message(XS_READ, 42, 0, b"/vm\0"));
    for chunk in [1, 5, 16, 17, bytes.len()] {
        let got = parse_all(&bytes, chunk);
        assert_eq!(got.len(), 2, "chunk {chunk}");
        let err = got[0].clone().unwrap_err();
        assert_eq!(
            err,
            XsWireError::UnknownMessageType {
                msg_type: XS_INVALID,
                req_id: 41,
                tx_id: 3,
                len: 12
            }
        );
        assert!(!err.is_fatal());
        assert_eq!(err.errno(), XsErrno::ENOSYS);
        let msg = got[1].as_ref().unwrap();
        assert_eq!(
            (msg.msg_type, msg.req_id, msg.payload.as_slice()),
            (XsType::Read, 42, &b"/vm\0"[..])
        );
    }
    // The answer a server gives.
    let mut out = [0u8; 64];
    let n = encode_error(&mut out, 41, 3, err_errno()).unwrap();
    let (reply, _) = MessageRef::parse(&out[..n]).unwrap();
    assert_eq!(
        (reply.msg_type, reply.req_id, reply.tx_id, reply.payload),
        (XsType::Error, 41, 3, &b"ENOSYS\0"[..])
    );
}

fn err_errno() -> XsErrno {
    XsWireError::UnknownMessageType {
        msg_type: 20,
        req_id: 0,
        tx_id: 0,
        len: 0,
    }
    .errno()
}

#[test]
fn daemon_only_types_are_not_requests() {
    assert_eq!(
        Request::parse(XsType::WatchEvent, b"/a\0t\0"),
        Err(XsWireError::NotARequest {
            msg_type: XsType::WatchEvent
        })
    );
    assert_eq!(
        Request::parse(XsType::Error, b"EINVAL\0"),
        Err(XsWireError::NotARequest {
            msg_type: XsType::Error
        })
    );
}

// ------------------------------------------------------------------------------------------------
// xenstored: a missing NUL terminator.
// ------------------------------------------------------------------------------------------------

#[test]
fn missing_nul_terminator_is_rejected() {
    let cases: [(XsType, &[u8], usize); 10] = [
        (XsType::Read, b"/local/domain/1/name", 0),
        (XsType::Read, b"", 0),
        (XsType::Directory, b"device", 0),
        (XsType::Mkdir, b"/a", 0),
        (XsType::Rm, b"/a", 0),
        (XsType::GetPerms, b"/a", 0),
        (XsType::Write, b"/no-nul-at-all", 0),
        (XsType::Watch, b"/a\0token", 1),
        (XsType::Unwatch, b"/a", 0),
        (XsType::SetPerms, b"/a\0b0\0r1", 2),
    ];
    for (t, payload, arg) in cases {
        assert_eq!(
            Request::parse(t, payload),
            Err(XsWireError::MissingNul { msg_type: t, arg }),
            "{t} {payload:?}"
        );
    }
    assert_eq!(
        Request::parse(XsType::TransactionEnd, b"T"),
        Err(XsWireError::MissingNul {
            msg_type: XsType::TransactionEnd,
            arg: 0
        })
    );
    assert_eq!(
        WatchEvent::parse(b"/a\0tok"),
        Err(XsWireError::MissingNul {
            msg_type: XsType::WatchEvent,
            arg: 1
        })
    );
    assert_eq!(
        parse_error(b"ENOENT"),
        Err(XsWireError::MissingNul {
            msg_type: XsType::Error,
            arg: 0
        })
    );
    assert_eq!(
        XsWireError::MissingNul {
            msg_type: XsType::Read,
            arg: 0
        }
        .errno(),
        XsErrno::EINVAL
    );
}

#[test]
fn read_with_two_strings_is_rejected() {
    assert_eq!(
        Request::parse(XsType::Read, b"/a\0/b\0"),
        Err(XsWireError::WrongArgCount {
            msg_type: XsType::Read,
            expected: "exactly 1",
            found: 2
        })
    );
    assert_eq!(
        Request::parse(XsType::Unwatch, b"/a\0"),
        Err(XsWireError::WrongArgCount {
            msg_type: XsType::Unwatch,
            expected: "exactly 2",
            found: 1
        })
    );
}

#[test]
fn well_formed_requests_parse() {
    assert_eq!(
        Request::parse(XsType::Read, b"/vm\0"),
        Ok(Request::Read { path: b"/vm" })
    );
    assert_eq!(
        Request::parse(XsType::Write, b"device/vif/0/state\x004"),
        Ok(Request::Write {
            path: b"device/vif/0/state",
            value: b"4"
        })
    );
    assert_eq!(
        Request::parse(XsType::Write, b"/bin\0a\0b\0"),
        Ok(Request::Write {
            path: b"/bin",
            value: b"a\0b\0"
        })
    );
    assert_eq!(
        Request::parse(XsType::Watch, b"@releaseDomain\0tok\0"),
        Ok(Request::Watch {
            path: b"@releaseDomain",
            token: b"tok",
            depth: None
        })
    );
    assert_eq!(
        Request::parse(XsType::Watch, b"/a\0tok\x001\0"),
        Ok(Request::Watch {
            path: b"/a",
            token: b"tok",
            depth: Some(1)
        })
    );
    assert_eq!(
        Request::parse(XsType::TransactionEnd, b"F\0"),
        Ok(Request::TransactionEnd { commit: false })
    );
    assert_eq!(
        Request::parse(XsType::TransactionEnd, b"X\0"),
        Err(XsWireError::InvalidArgument {
            msg_type: XsType::TransactionEnd,
            arg: 0,
            what: "T or F"
        })
    );
    assert_eq!(
        Request::parse(XsType::Introduce, b"5\0-1\x0017\0"),
        Ok(Request::Introduce {
            domid: 5,
            gfn: -1,
            evtchn: 17
        })
    );
    assert_eq!(
        Request::parse(XsType::GetDomainPath, b"65536\0"),
        Err(XsWireError::InvalidArgument {
            msg_type: XsType::GetDomainPath,
            arg: 0,
            what: "a decimal domid 0..65535"
        })
    );
    assert_eq!(
        Request::parse(XsType::DirectoryPart, b"/a\x00100\0"),
        Ok(Request::DirectoryPart {
            path: b"/a",
            offset: 100
        })
    );
    let Ok(Request::SetPerms { path, perms }) = Request::parse(XsType::SetPerms, b"/a\0n0\0r5\0")
    else {
        panic!("SET_PERMS did not parse");
    };
    assert_eq!(path, b"/a");
    let perms: Vec<XsPerm> = perms.iter().collect();
    assert_eq!(
        perms,
        [
            XsPerm {
                kind: PermKind::None,
                domid: 0
            },
            XsPerm {
                kind: PermKind::Read,
                domid: 5
            }
        ]
    );
    // The toolstack's pair is that wire form.
    assert_eq!(perms, XsPerm::owner_and_reader(0, 5));
    let mut buf = [0u8; 6];
    assert_eq!(XsPerm::owner(7).write(&mut buf), b"n7");
    assert_eq!(
        Request::parse(XsType::SetPerms, b"/a\0x0\0"),
        Err(XsWireError::InvalidArgument {
            msg_type: XsType::SetPerms,
            arg: 1,
            what: "a permission: n, r, w or b then a domid 0..65535"
        })
    );
    assert_eq!(
        Request::parse(XsType::Control, b"check\0"),
        Ok(Request::Control {
            command: b"check",
            parameters: b""
        })
    );
    assert_eq!(parse_error(b"EAGAIN\0"), Ok(XsErrno::EAGAIN));
    assert_eq!(
        parse_error(b"EWHAT\0"),
        Err(XsWireError::UnknownErrorName { len: 6 })
    );
}

// ------------------------------------------------------------------------------------------------
// xenstored: paths longer than 3072 (absolute) or 2048 (relative) bytes.
// ------------------------------------------------------------------------------------------------

fn long_path(absolute: bool, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    if absolute {
        p.push(b'/');
    }
    while p.len() < len {
        p.push(if p.len() % 10 == 9 { b'/' } else { b'a' });
    }
    if p.last() == Some(&b'/') {
        *p.last_mut().unwrap() = b'b';
    }
    p
}

#[test]
fn path_longer_than_3072_bytes_absolute_is_rejected() {
    let p = long_path(true, 3073);
    assert_eq!(
        check_path(&p, false),
        Err(XsWireError::AbsPathTooLong { len: 3073 })
    );
    let mut payload = p.clone();
    payload.push(0);
    assert_eq!(
        Request::parse(XsType::Read, &payload),
        Err(XsWireError::AbsPathTooLong { len: 3073 })
    );
    // Even under /local/domain/N/, whose prefix xenstored does not count.
    let mut local = b"/local/domain/1/".to_vec();
    local.extend(long_path(false, 3073 - local.len()));
    assert_eq!(
        check_path(&local, false),
        Err(XsWireError::AbsPathTooLong { len: 3073 })
    );
}

#[test]
fn path_longer_than_2048_bytes_relative_is_rejected() {
    let p = long_path(false, 2049);
    assert_eq!(
        check_path(&p, false),
        Err(XsWireError::RelPathTooLong { len: 2049 })
    );
    let mut buf = vec![0u8; 8192];
    assert_eq!(
        resolve_path(&p, 7, &mut buf),
        Err(XsWireError::RelPathTooLong { len: 2049 })
    );
    // 2048 is fine, and the resolved path passes xenstored's counted limit.
    let p = long_path(false, 2048);
    let resolved = resolve_path(&p, 65535, &mut buf).unwrap();
    assert_eq!(resolved.len(), "/local/domain/65535/".len() + 2048);
    assert_eq!(check_path(resolved, false), Ok(PathKind::Absolute));
}

#[test]
fn absolute_path_outside_local_domain_is_counted_whole_as_xenstored_does() {
    // xenstored (since 4.15) allows at most 2048 bytes after a /local/domain/<domid>/ prefix, and
    // 2048 in all for other paths.
    let p = long_path(true, 2049);
    assert_eq!(
        check_path(&p, false),
        Err(XsWireError::PathTooLong {
            len: 2049,
            counted: 2049
        })
    );
    let mut local = b"/local/domain/12/".to_vec();
    local.extend(long_path(false, 2048));
    assert_eq!(check_path(&local, false), Ok(PathKind::Absolute));
    local.push(b'x');
    assert_eq!(
        check_path(&local, false),
        Err(XsWireError::PathTooLong {
            len: local.len(),
            counted: 2049
        })
    );
    // A six-digit "domid" is not a domain prefix: the whole path counts.
    let mut fake = b"/local/domain/123456/".to_vec();
    fake.extend(long_path(false, 2040));
    assert_eq!(
        check_path(&fake, false),
        Err(XsWireError::PathTooLong {
            len: fake.len(),
            counted: fake.len()
        })
    );
}

// ------------------------------------------------------------------------------------------------
// xenstored: tricks with the /local/domain/ prefix.
// ------------------------------------------------------------------------------------------------

#[test]
fn local_domain_prefix_tricks_are_rejected() {
    let mut buf = [0u8; 256];
    // No `.`/`..` semantics in XenStore: '.' is not a path byte, so xenstored refuses these (EINVAL).
    assert_eq!(
        check_path(b"/local/domain/1/../0", false),
        Err(XsWireError::PathInvalidChar {
            offset: 16,
            byte: b'.'
        })
    );
    assert_eq!(
        resolve_path(b"../0/secret", 1, &mut buf),
        Err(XsWireError::PathInvalidChar {
            offset: 0,
            byte: b'.'
        })
    );
    assert_eq!(
        resolve_path(b"./x", 1, &mut buf),
        Err(XsWireError::PathInvalidChar {
            offset: 0,
            byte: b'.'
        })
    );
    // Empty components and trailing slashes.
    assert_eq!(
        check_path(b"/local/domain//0", false),
        Err(XsWireError::PathDoubleSlash { offset: 14 })
    );
    assert_eq!(
        check_path(b"/local/domain/0/", false),
        Err(XsWireError::PathTrailingSlash { len: 16 })
    );
    assert_eq!(resolve_path(b"", 1, &mut buf), Err(XsWireError::EmptyPath));
    assert_eq!(
        resolve_path(b"x//y", 1, &mut buf),
        Err(XsWireError::PathDoubleSlash { offset: 2 })
    );
    assert_eq!(
        resolve_path(b"x/", 1, &mut buf),
        Err(XsWireError::PathTrailingSlash { len: 2 })
    );
    // A relative path cannot climb out of the caller's home: it always lands below it.
    assert_eq!(
        resolve_path(b"local/domain/0", 1, &mut buf).unwrap(),
        b"/local/domain/1/local/domain/0"
    );
    // Other bytes that could confuse a prefix check.
    assert_eq!(
        check_path(b"/local/domain/ 1", false),
        Err(XsWireError::PathInvalidChar {
            offset: 14,
            byte: b' '
        })
    );
    assert_eq!(
        check_path(b"/local/domain/+1", false),
        Err(XsWireError::PathInvalidChar {
            offset: 14,
            byte: b'+'
        })
    );
    assert_eq!(
        check_path(b"/local\0/domain", false),
        Err(XsWireError::PathInvalidChar { offset: 6, byte: 0 })
    );
    // Special paths only where allowed, and only with path bytes.
    assert_eq!(
        resolve_path(b"@releaseDomain", 1, &mut buf),
        Err(XsWireError::SpecialPathNotAllowed { len: 14 })
    );
    assert_eq!(
        resolve_watch_path(b"@releaseDomain", 1, &mut buf).unwrap(),
        b"@releaseDomain"
    );
    assert_eq!(
        check_path(b"@releaseDomain/../x", true),
        Err(XsWireError::PathInvalidChar {
            offset: 15,
            byte: b'.'
        })
    );
    assert_eq!(
        check_abs_path(b"local/domain/0"),
        Err(XsWireError::RelativePathNotAllowed { len: 14 })
    );
    // The root is the only path that may end in '/'.
    assert_eq!(check_path(b"/", false), Ok(PathKind::Absolute));
}

#[test]
fn local_domain_prefix_length() {
    assert_eq!(local_domain_prefix_len(b"/local/domain/0/x"), 16);
    assert_eq!(local_domain_prefix_len(b"/local/domain/65535/x"), 20);
    assert_eq!(local_domain_prefix_len(b"/local/domain/00001/x"), 20);
    assert_eq!(local_domain_prefix_len(b"/local/domain/123456/x"), 0);
    assert_eq!(local_domain_prefix_len(b"/local/domain/1"), 0);
    assert_eq!(local_domain_prefix_len(b"/local/domain//x"), 0);
    assert_eq!(local_domain_prefix_len(b"/vm/1/x"), 0);
}

#[test]
fn domain_path_and_is_child() {
    let mut buf = [0u8; DOMAIN_PATH_MAX];
    assert_eq!(
        write_domain_path(65535, &mut buf).unwrap(),
        b"/local/domain/65535"
    );
    assert_eq!(write_domain_path(0, &mut buf).unwrap(), b"/local/domain/0");
    assert_eq!(domain_path(7), "/local/domain/7");
    assert_eq!(
        write_domain_path(1, &mut [0u8; 10]),
        Err(XsWireError::BufferTooSmall {
            needed: 15,
            available: 10
        })
    );
    assert!(is_child(b"/a/b", b"/a"));
    assert!(is_child(b"/a", b"/a"));
    assert!(is_child(b"/a", b"/"));
    assert!(!is_child(b"/ab", b"/a"));
    assert!(!is_child(b"/a", b"/a/b"));
}

// ------------------------------------------------------------------------------------------------
// xenstored: a watch with a huge token.
// ------------------------------------------------------------------------------------------------

#[test]
fn watch_with_huge_token_is_rejected() {
    // A token that makes the WATCH payload exceed 4096 cannot be sent...
    let token = vec![b't'; 4096];
    let mut out = vec![0u8; 3 * XS_MESSAGE_MAX];
    assert_eq!(
        encode_strings(&mut out, XsType::Watch, 1, 0, &[b"/a", &token]),
        Err(XsWireError::PayloadTooLarge {
            len: 2 + 1 + 4096 + 1
        })
    );
    assert_eq!(
        OwnedMessage::from_strings(XsType::Watch, 1, 0, &[b"/a", &token]),
        Err(XsWireError::PayloadTooLarge { len: 4100 })
    );
    // ...and a hostile client that sends one anyway has its header refused.
    let mut payload = b"/a\0".to_vec();
    payload.extend_from_slice(&token);
    payload.push(0);
    let bytes = message(XS_WATCH, 1, 0, &payload);
    assert_eq!(
        parse_all(&bytes, 512)[0],
        Err(XsWireError::PayloadTooLong { len: 4100 })
    );
    // The largest token that fits is accepted, but no event with a longer path can carry it.
    let token = vec![b't'; 4096 - 3 - 1];
    let mut payload = b"/a\0".to_vec();
    payload.extend_from_slice(&token);
    payload.push(0);
    assert_eq!(
        Request::parse(XsType::Watch, &payload),
        Ok(Request::Watch {
            path: b"/a",
            token: &token,
            depth: None
        })
    );
    assert!(encode_watch_event(&mut out, b"/a", &token).is_ok());
    assert_eq!(
        encode_watch_event(&mut out, b"/a/b", &token),
        Err(XsWireError::PayloadTooLarge { len: 4098 })
    );
    assert_eq!(
        OwnedMessage::watch_event(b"/a/b", &token),
        Err(XsWireError::PayloadTooLarge { len: 4098 })
    );
}

// ------------------------------------------------------------------------------------------------
// Shared rings, as they apply to the XenStore page.
// ------------------------------------------------------------------------------------------------

#[test]
fn req_prod_exactly_ring_size_ahead_is_a_full_ring() {
    for cons in [0u32, 5, 0x7fff_fff0, u32::MAX - 3] {
        let prod = cons.wrapping_add(XENSTORE_RING_SIZE);
        assert_eq!(ring_used(cons, prod), Ok(1024));
        assert_eq!(ring_free(cons, prod), Ok(0));
        assert!(output_chunk(cons, prod).unwrap().is_empty());
        assert_eq!(
            input_chunk(cons, prod).unwrap().len(),
            1024 - mask_xenstore_idx(cons) as usize
        );
    }
}

#[test]
fn req_prod_ring_size_plus_one_ahead_is_rejected() {
    let cons = 100u32;
    let prod = cons + XENSTORE_RING_SIZE + 1;
    let err = XsWireError::RingIndexOverflow {
        cons,
        prod,
        used: 1025,
        size: 1024,
    };
    assert_eq!(ring_used(cons, prod), Err(err));
    assert_eq!(input_chunk(cons, prod), Err(err));
    assert_eq!(output_chunk(cons, prod), Err(err));
    let ring = [0u8; 1024];
    assert_eq!(copy_from_ring(&ring, cons, prod, &mut [0u8; 8]), Err(err));
    assert!(err.is_fatal());
}

#[test]
fn req_prod_behind_req_cons_is_rejected() {
    let (cons, prod) = (1000u32, 999u32);
    assert_eq!(
        ring_used(cons, prod),
        Err(XsWireError::RingIndexOverflow {
            cons,
            prod,
            used: u32::MAX,
            size: 1024
        })
    );
    let mut ring = [0u8; 1024];
    assert!(copy_to_ring(&mut ring, cons, prod, b"x").is_err());
}

#[test]
fn indices_that_wrap_through_2_31_and_2_32() {
    for start in [0x7fff_fe00u32, u32::MAX - 500] {
        let mut ring = [0u8; 1024];
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let prod = start;
        let cons = start;
        let n = copy_to_ring(&mut ring, cons, prod, &data).unwrap();
        assert_eq!(n, 1000);
        let prod = prod.wrapping_add(n as u32);
        assert_eq!(ring_used(cons, prod), Ok(1000));
        let mut out = vec![0u8; 2000];
        let m = copy_from_ring(&ring, cons, prod, &mut out).unwrap();
        assert_eq!(&out[..m], &data[..]);
    }
}

#[test]
fn a_front_end_that_never_consumes_responses_keeps_the_ring_full() {
    let mut ring = [0u8; 1024];
    let (cons, mut prod) = (0u32, 0u32);
    let data = [7u8; 300];
    let mut total = 0;
    // Bounded: the producer stops at 1024 bytes, however often it tries.
    for _ in 0..10 {
        let n = copy_to_ring(&mut ring, cons, prod, &data).unwrap();
        prod = prod.wrapping_add(n as u32);
        total += n;
    }
    assert_eq!(total, 1024);
    assert_eq!(ring_free(cons, prod), Ok(0));
    assert_eq!(copy_to_ring(&mut ring, cons, prod, &data), Ok(0));
}

// ------------------------------------------------------------------------------------------------
// Types and tables.
// ------------------------------------------------------------------------------------------------

#[test]
fn types_round_trip_and_names() {
    for t in XsType::ALL {
        assert_eq!(XsType::try_from(t.raw()), Ok(t));
    }
    assert_eq!(XsType::ResetWatches.raw(), 21);
    assert_eq!(XsType::DirectoryPart.name(), "DIRECTORY_PART");
    assert_eq!(XS_DEBUG, XS_CONTROL);
    assert!(XsType::Introduce.is_privileged());
    assert!(!XsType::Read.is_privileged());
}

#[test]
fn errno_table_lookups_both_ways() {
    assert_eq!(XsErrno::from_name(b"ENOENT"), Some(XsErrno::ENOENT));
    assert_eq!(XsErrno::from_errnum(2), Some(XsErrno::ENOENT));
    assert_eq!(
        XsErrno::try_from(9999),
        Err(XsWireError::UnknownErrno { errnum: 9999 })
    );
    assert_eq!(XsErrno::from_errnum_or_einval(9999), XsErrno::EINVAL);
    assert_eq!(XsErrno::from_name(b"enoent"), None);
    assert_eq!(
        XSD_ERRORS[0],
        XsdErrors {
            errnum: 22,
            errstring: "EINVAL"
        }
    );
    assert_eq!(
        XSD_ERRORS[15],
        XsdErrors {
            errnum: 1,
            errstring: "EPERM"
        }
    );
}

#[test]
fn ok_and_error_replies() {
    let mut out = [0u8; 64];
    let n = encode_ok(&mut out, XsType::Write, 3, 9).unwrap();
    assert_eq!(&out[16..n], b"OK\0");
    assert_eq!(
        OwnedMessage::ok(XsType::Write, 3, 9).to_vec().unwrap(),
        &out[..n]
    );
    let n = encode_error(&mut out, 3, 9, XsErrno::ENOENT).unwrap();
    assert_eq!(
        OwnedMessage::error(3, 9, XsErrno::ENOENT).to_vec().unwrap(),
        &out[..n]
    );
    assert_eq!(parse_error(&out[16..n]), Ok(XsErrno::ENOENT));
    assert_eq!(
        encode_ok(&mut out[..17], XsType::Write, 3, 9),
        Err(XsWireError::BufferTooSmall {
            needed: 19,
            available: 17
        })
    );
    let mut w = MessageWriter::new(&mut out, XsType::Write, 0, 0).unwrap();
    assert_eq!(
        w.string(b"a\0b").err(),
        Some(XsWireError::InteriorNul { offset: 1 })
    );
    assert_eq!(w.payload_len(), 0);
}

#[test]
fn truncated_messages_are_reported() {
    let bytes = message(XS_READ, 1, 0, b"/abc\0");
    assert_eq!(
        MessageRef::parse(&bytes[..10]),
        Err(XsWireError::Truncated {
            needed: 16,
            available: 10
        })
    );
    assert_eq!(
        MessageRef::parse(&bytes[..18]),
        Err(XsWireError::Truncated {
            needed: 21,
            available: 18
        })
    );
    // The incremental parser just waits.
    let mut parser = FrameParser::new();
    assert_eq!(parser.feed(&bytes[..18]), (18, None));
    assert_eq!(parser.buffered(), 18);
    let (n, item) = parser.feed(&bytes[18..]);
    assert_eq!(n, 3);
    assert_eq!(item.unwrap().unwrap().payload, b"/abc\0");
    assert!(parser.is_idle());
}

// ------------------------------------------------------------------------------------------------
// Round trips.
// ------------------------------------------------------------------------------------------------

fn any_type() -> impl Strategy<Value = XsType> {
    prop::sample::select(XsType::ALL.to_vec())
}

fn any_message() -> impl Strategy<Value = OwnedMessage> {
    (
        any_type(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..=4096),
    )
        .prop_map(|(msg_type, req_id, tx_id, payload)| Message {
            msg_type,
            req_id,
            tx_id,
            payload,
        })
}

fn path_component() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9_@-]{0,11}"
}

proptest! {
    #[test]
    fn serializer_to_parser_round_trip_in_arbitrary_chunks(
        msgs in prop::collection::vec(any_message(), 1..6),
        cuts in prop::collection::vec(1usize..5000, 1..20),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(m.to_vec().unwrap());
        }
        let mut parser = FrameParser::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            for item in parser.messages(&rest[..n]) {
                got.push(item.unwrap());
            }
            prop_assert!(parser.buffered() <= XS_MESSAGE_MAX);
            rest = &rest[n..];
        }
        prop_assert!(parser.is_idle());
        prop_assert_eq!(&got, &msgs);

        // The slice parser agrees, message by message.
        let mut rest = &stream[..];
        for m in &msgs {
            let (r, used) = MessageRef::parse(rest).unwrap();
            prop_assert_eq!(r, m.as_message_ref());
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn writer_and_owned_strings_agree(
        msg_type in any_type(), req_id in any::<u32>(), tx_id in any::<u32>(),
        strings in prop::collection::vec(prop::collection::vec(1u8..=255, 0..300), 0..8),
    ) {
        let refs: Vec<&[u8]> = strings.iter().map(|s| s.as_slice()).collect();
        let owned = OwnedMessage::from_strings(msg_type, req_id, tx_id, &refs).unwrap();
        let mut buf = vec![0u8; XS_MESSAGE_MAX];
        let n = encode_strings(&mut buf, msg_type, req_id, tx_id, &refs).unwrap();
        prop_assert_eq!(&owned.to_vec().unwrap()[..], &buf[..n]);
        let (parsed, used) = MessageRef::parse(&buf[..n]).unwrap();
        prop_assert_eq!(used, n);
        let back: Vec<&[u8]> = Strings::new(parsed.payload).collect();
        prop_assert_eq!(back, refs);
    }

    #[test]
    fn header_bytes_round_trip(t in any::<u32>(), r in any::<u32>(), x in any::<u32>(), l in any::<u32>()) {
        let h = XsdSockmsg { r#type: t, req_id: r, tx_id: x, len: l };
        let bytes = h.as_bytes().to_vec();
        prop_assert_eq!(<XsdSockmsg as zerocopy::FromBytes>::read_from_bytes(&bytes[..]).unwrap(), h);
    }

    #[test]
    fn relative_paths_resolve_below_the_callers_home(
        parts in prop::collection::vec(path_component(), 1..6), domid in any::<u16>(),
    ) {
        let rel = parts.join("/");
        let s = resolve_path_string(rel.as_bytes(), domid).unwrap();
        prop_assert_eq!(&s, &format!("/local/domain/{domid}/{rel}"));
        prop_assert_eq!(check_path(s.as_bytes(), false), Ok(PathKind::Absolute));
        prop_assert!(is_child(s.as_bytes(), domain_path(domid).as_bytes()));
        let mut buf = [0u8; 256];
        prop_assert_eq!(resolve_path(rel.as_bytes(), domid, &mut buf).unwrap(), s.as_bytes());
        // Absolute paths stay as they are.
        let abs = format!("/{rel}");
        prop_assert_eq!(resolve_path_string(abs.as_bytes(), domid).unwrap(), abs);
    }

    #[test]
    fn path_checks_never_panic_and_match_the_rules(path in prop::collection::vec(any::<u8>(), 0..64)) {
        let ok = check_path(&path, true).is_ok();
        let valid_bytes = path.iter().all(|&b| xen_abi::xs_wire::is_path_byte(b));
        let no_double = !path.windows(2).any(|w| w == b"//");
        let trailing_ok = path == b"/" || path.last() != Some(&b'/');
        let special_ok = path.first() != Some(&b'@') || path.len() > 1;
        prop_assert_eq!(ok, !path.is_empty() && valid_bytes && no_double && trailing_ok && special_ok);
    }

    #[test]
    fn byte_ring_round_trip(start in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..1500)) {
        let mut ring = [0u8; 1024];
        let n = copy_to_ring(&mut ring, start, start, &data).unwrap();
        prop_assert_eq!(n, data.len().min(1024));
        let mut out = vec![0u8; 1024];
        let m = copy_from_ring(&ring, start, start.wrapping_add(n as u32), &mut out).unwrap();
        prop_assert_eq!(&out[..m], &data[..n]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..300), cut in 1usize..40) {
        let _ = MessageRef::parse(&bytes);
        for t in XsType::ALL {
            let _ = Request::parse(t, &bytes);
        }
        let _ = WatchEvent::parse(&bytes);
        let _ = parse_error(&bytes);
        let _ = parse_all(&bytes, cut);
    }
}
