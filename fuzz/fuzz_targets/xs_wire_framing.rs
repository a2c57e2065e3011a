//! The XenStore framing parser, fed hostile bytes in chunks of hostile sizes.
//!
//! Input: one byte `k`, then `k % 16 + 1` chunk sizes (one byte each, size `b + 1`), then the byte stream,
//! fed to `FrameParser` in chunks of those sizes, cycling. Nothing may panic. Every message yielded must be
//! within the limits (payload at most 4096 bytes, the parser never holding more than one message), must
//! re-serialize to exactly the bytes it was parsed from, and must agree with the slice parser; its
//! payload is checked against its type's argument shape, and every path a valid request carries must
//! pass the path rules and resolve under `/local/domain/<domid>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_abi::xs_wire::{
    FrameParser, MessageRef, OwnedMessage, Request, WatchEvent, XENSTORE_PAYLOAD_MAX,
    XS_MESSAGE_MAX, XSD_SOCKMSG_SIZE, XsType, XsWireError, check_path, parse_error,
    resolve_watch_path,
};

fn check_request_paths(req: &Request<'_>) {
    let paths: &[&[u8]] = match req {
        Request::Directory { path }
        | Request::Read { path }
        | Request::GetPerms { path }
        | Request::Mkdir { path }
        | Request::Rm { path }
        | Request::DirectoryPart { path, .. }
        | Request::Watch { path, .. }
        | Request::Unwatch { path, .. }
        | Request::Write { path, .. }
        | Request::SetPerms { path, .. } => &[*path],
        _ => &[],
    };
    for path in paths {
        assert!(
            check_path(path, true).is_ok(),
            "a parsed request carries an invalid path"
        );
        let mut buf = [0u8; 4096];
        let resolved = resolve_watch_path(path, 7, &mut buf).expect("a valid path resolves");
        assert!(
            check_path(resolved, true).is_ok(),
            "a resolved path is invalid"
        );
    }
}

fn check_message(msg: &OwnedMessage, raw: &[u8]) {
    assert!(msg.payload.len() <= XENSTORE_PAYLOAD_MAX as usize);
    // Re-serializing gives the same bytes, and the slice parser agrees.
    assert_eq!(msg.to_vec().expect("a parsed message re-encodes"), raw);
    let (r, used) = MessageRef::parse(raw).expect("the slice parser accepts it too");
    assert_eq!(used, raw.len());
    assert_eq!(r, msg.as_message_ref());
    // The payload as its type's argument shape.
    match msg.msg_type {
        XsType::WatchEvent => {
            if let Ok(ev) = WatchEvent::parse(&msg.payload) {
                assert!(check_path(ev.path, true).is_ok());
            }
        }
        XsType::Error => {
            let _ = parse_error(&msg.payload);
        }
        t => {
            if let Ok(req) = Request::parse(t, &msg.payload) {
                check_request_paths(&req);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let n_sizes = usize::from(k % 16) + 1;
    if rest.len() < n_sizes {
        return;
    }
    let (sizes, stream) = rest.split_at(n_sizes);

    let mut parser = FrameParser::new();
    // Where the message being parsed started in `stream`, and how far the parser has consumed.
    let mut start = 0usize;
    let mut pos = 0usize;
    let mut i = 0usize;
    'chunks: while pos < stream.len() {
        let size = usize::from(sizes[i % sizes.len()]) + 1;
        i += 1;
        let end = (pos + size).min(stream.len());
        let mut chunk = &stream[pos..end];
        while !chunk.is_empty() {
            let (used, item) = parser.feed(chunk);
            assert!(
                used > 0 && used <= chunk.len(),
                "the parser must make progress"
            );
            chunk = &chunk[used..];
            pos += used;
            assert!(parser.buffered() <= XS_MESSAGE_MAX);
            match item {
                None => {}
                Some(Ok(msg)) => {
                    check_message(&msg, &stream[start..pos]);
                    start = pos;
                }
                Some(Err(XsWireError::UnknownMessageType { len, .. })) => {
                    assert_eq!(pos - start, XSD_SOCKMSG_SIZE + len as usize);
                    start = pos;
                }
                Some(Err(e)) => {
                    assert!(e.is_fatal(), "only fatal errors may stop the stream: {e}");
                    assert!(parser.is_broken());
                    break 'chunks;
                }
            }
        }
    }
});
