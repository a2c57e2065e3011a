//! Framing: one message from a complete slice ([`MessageRef::parse`]), an incremental parser for byte
//! streams ([`FrameParser`], feature `alloc`), and serializers ([`MessageWriter`], `encode_*`).
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use zerocopy::{FromBytes, IntoBytes};

use super::{
    Request, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE, XsErrno, XsType, XsWireError, XsdSockmsg,
};

/// A complete XenStore message: a typed header and its payload, at most [`XENSTORE_PAYLOAD_MAX`] bytes
/// when it comes from a parser. `P` is `&[u8]` ([`MessageRef`]) or, with `alloc`, `Vec<u8>`
/// (`OwnedMessage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Message<P> {
    /// The type.
    pub msg_type: XsType,
    /// The request id (echoed in the reply; 0 in watch events).
    pub req_id: u32,
    /// The transaction id (0 outside transactions).
    pub tx_id: u32,
    /// The payload.
    pub payload: P,
}

/// A message borrowing its payload from the bytes it was parsed from.
pub type MessageRef<'a> = Message<&'a [u8]>;

/// A message owning its payload.
#[cfg(feature = "alloc")]
pub type OwnedMessage = Message<Vec<u8>>;

fn payload_len(len: usize) -> Result<u32, XsWireError> {
    if len > XENSTORE_PAYLOAD_MAX as usize {
        return Err(XsWireError::PayloadTooLarge { len });
    }
    // At most 4096, so it fits.
    Ok(len as u32)
}

impl<P: AsRef<[u8]>> Message<P> {
    /// The wire header, or [`XsWireError::PayloadTooLarge`] if the payload exceeds 4096 bytes.
    pub fn header(&self) -> Result<XsdSockmsg, XsWireError> {
        let len = payload_len(self.payload.as_ref().len())?;
        Ok(XsdSockmsg::new(self.msg_type, self.req_id, self.tx_id, len))
    }

    /// The length of the encoded message: 16 bytes of header and the payload.
    pub fn encoded_len(&self) -> usize {
        XSD_SOCKMSG_SIZE + self.payload.as_ref().len()
    }

    /// Writes the message into `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, XsWireError> {
        let header = self.header()?;
        let payload = self.payload.as_ref();
        let needed = self.encoded_len();
        let available = out.len();
        let Some(dst) = out.get_mut(..needed) else {
            return Err(XsWireError::BufferTooSmall { needed, available });
        };
        let (h, p) = dst.split_at_mut(XSD_SOCKMSG_SIZE);
        h.copy_from_slice(header.as_bytes());
        p.copy_from_slice(payload);
        Ok(needed)
    }

    /// The encoded message in a new `Vec`.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<Vec<u8>, XsWireError> {
        let mut v = alloc::vec![0u8; self.encoded_len()];
        self.encode(&mut v)?;
        Ok(v)
    }

    /// A borrowed view of this message.
    pub fn as_message_ref(&self) -> MessageRef<'_> {
        Message {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            payload: self.payload.as_ref(),
        }
    }

    /// Parses the payload as a request of this message's type.
    pub fn request(&self) -> Result<Request<'_>, XsWireError> {
        Request::parse(self.msg_type, self.payload.as_ref())
    }
}

impl<'a> MessageRef<'a> {
    /// Parses one message at the start of `bytes` and returns it with the number of bytes it took.
    ///
    /// Errors, in the order they are checked: fewer than 16 bytes ([`XsWireError::Truncated`]); a `len`
    /// above 4096 ([`XsWireError::PayloadTooLong`], fatal for a stream); fewer than `16 + len` bytes
    /// (`Truncated`); an unknown type ([`XsWireError::UnknownMessageType`], which carries `req_id` and
    /// `tx_id` for the error reply; the message takes `16 + len` bytes, so a stream stays in sync).
    pub fn parse(bytes: &'a [u8]) -> Result<(MessageRef<'a>, usize), XsWireError> {
        let Ok((header, rest)) = XsdSockmsg::read_from_prefix(bytes) else {
            return Err(XsWireError::Truncated {
                needed: XSD_SOCKMSG_SIZE,
                available: bytes.len(),
            });
        };
        if header.len > XENSTORE_PAYLOAD_MAX {
            return Err(XsWireError::PayloadTooLong { len: header.len });
        }
        let len = header.len as usize;
        let Some(payload) = rest.get(..len) else {
            return Err(XsWireError::Truncated {
                needed: XSD_SOCKMSG_SIZE + len,
                available: bytes.len(),
            });
        };
        let msg_type = header.msg_type()?;
        Ok((
            Message {
                msg_type,
                req_id: header.req_id,
                tx_id: header.tx_id,
                payload,
            },
            XSD_SOCKMSG_SIZE + len,
        ))
    }
}

#[cfg(feature = "alloc")]
impl OwnedMessage {
    /// A message whose payload is `strings`, each followed by a NUL (a directory listing, a
    /// `path\0token\0` watch, ...).
    pub fn from_strings(
        msg_type: XsType,
        req_id: u32,
        tx_id: u32,
        strings: &[&[u8]],
    ) -> Result<Self, XsWireError> {
        let mut payload = Vec::new();
        for s in strings {
            if let Some(offset) = s.iter().position(|&b| b == 0) {
                return Err(XsWireError::InteriorNul { offset });
            }
            payload_len(payload.len() + s.len() + 1)?;
            payload.extend_from_slice(s);
            payload.push(0);
        }
        Ok(Message {
            msg_type,
            req_id,
            tx_id,
            payload,
        })
    }

    /// The success reply `OK\0` to a request of type `msg_type`.
    pub fn ok(msg_type: XsType, req_id: u32, tx_id: u32) -> Self {
        Message {
            msg_type,
            req_id,
            tx_id,
            payload: b"OK\0".to_vec(),
        }
    }

    /// The error reply `E<name>\0` (type `XS_ERROR`).
    pub fn error(req_id: u32, tx_id: u32, errno: XsErrno) -> Self {
        let mut payload = Vec::with_capacity(errno.name().len() + 1);
        payload.extend_from_slice(errno.name().as_bytes());
        payload.push(0);
        Message {
            msg_type: XsType::Error,
            req_id,
            tx_id,
            payload,
        }
    }

    /// A watch event `path\0token\0` (req_id and tx_id 0). Fails with
    /// [`XsWireError::PayloadTooLarge`] when path and token do not fit 4096 bytes; xenstored drops such
    /// events.
    pub fn watch_event(path: &[u8], token: &[u8]) -> Result<Self, XsWireError> {
        Self::from_strings(XsType::WatchEvent, 0, 0, &[path, token])
    }
}

/// Builds one message directly in a caller's buffer: the header is written by [`MessageWriter::finish`]
/// once the payload is complete.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    msg_type: XsType,
    req_id: u32,
    tx_id: u32,
    len: usize,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message in `buf`, which must hold at least the header.
    pub fn new(
        buf: &'b mut [u8],
        msg_type: XsType,
        req_id: u32,
        tx_id: u32,
    ) -> Result<Self, XsWireError> {
        if buf.len() < XSD_SOCKMSG_SIZE {
            return Err(XsWireError::BufferTooSmall {
                needed: XSD_SOCKMSG_SIZE,
                available: buf.len(),
            });
        }
        Ok(Self {
            buf,
            msg_type,
            req_id,
            tx_id,
            len: 0,
        })
    }

    /// The payload bytes written so far.
    pub fn payload_len(&self) -> usize {
        self.len
    }

    fn append(&mut self, parts: &[&[u8]]) -> Result<&mut Self, XsWireError> {
        let add: usize = parts.iter().map(|p| p.len()).sum();
        let new_len = self.len + add;
        payload_len(new_len)?;
        let needed = XSD_SOCKMSG_SIZE + new_len;
        let available = self.buf.len();
        let Some(dst) = self.buf.get_mut(XSD_SOCKMSG_SIZE + self.len..needed) else {
            return Err(XsWireError::BufferTooSmall { needed, available });
        };
        let mut at = 0;
        for p in parts {
            if let Some(d) = dst.get_mut(at..at + p.len()) {
                d.copy_from_slice(p);
            }
            at += p.len();
        }
        self.len = new_len;
        Ok(self)
    }

    /// Appends a string and its NUL. Fails on a NUL inside `s`, a payload above 4096 bytes or a full
    /// buffer, leaving the payload as it was.
    pub fn string(&mut self, s: &[u8]) -> Result<&mut Self, XsWireError> {
        if let Some(offset) = s.iter().position(|&b| b == 0) {
            return Err(XsWireError::InteriorNul { offset });
        }
        self.append(&[s, b"\0"])
    }

    /// Appends raw bytes (a binary value, which may contain NULs), without a terminator.
    pub fn bytes(&mut self, b: &[u8]) -> Result<&mut Self, XsWireError> {
        self.append(&[b])
    }

    /// Writes the header and returns the length of the whole message.
    pub fn finish(self) -> usize {
        // `append` kept the payload at most 4096 bytes.
        let header = XsdSockmsg::new(self.msg_type, self.req_id, self.tx_id, self.len as u32);
        if let Some(h) = self.buf.get_mut(..XSD_SOCKMSG_SIZE) {
            h.copy_from_slice(header.as_bytes());
        }
        XSD_SOCKMSG_SIZE + self.len
    }
}

/// Encodes a message whose payload is `strings`, each followed by a NUL (a `DIRECTORY` reply, a
/// `WATCH` request `path\0token\0`, ...). Returns the message length.
pub fn encode_strings(
    out: &mut [u8],
    msg_type: XsType,
    req_id: u32,
    tx_id: u32,
    strings: &[&[u8]],
) -> Result<usize, XsWireError> {
    let mut w = MessageWriter::new(out, msg_type, req_id, tx_id)?;
    for s in strings {
        w.string(s)?;
    }
    Ok(w.finish())
}

/// Encodes a `WRITE` request, `path\0value` (the value is not NUL-terminated).
pub fn encode_write(
    out: &mut [u8],
    req_id: u32,
    tx_id: u32,
    path: &[u8],
    value: &[u8],
) -> Result<usize, XsWireError> {
    let mut w = MessageWriter::new(out, XsType::Write, req_id, tx_id)?;
    w.string(path)?.bytes(value)?;
    Ok(w.finish())
}

/// Encodes the success reply `OK\0` to a request of type `msg_type`.
pub fn encode_ok(
    out: &mut [u8],
    msg_type: XsType,
    req_id: u32,
    tx_id: u32,
) -> Result<usize, XsWireError> {
    encode_strings(out, msg_type, req_id, tx_id, &[b"OK"])
}

/// Encodes the error reply `E<name>\0` (type `XS_ERROR`), echoing `req_id` and `tx_id`.
pub fn encode_error(
    out: &mut [u8],
    req_id: u32,
    tx_id: u32,
    errno: XsErrno,
) -> Result<usize, XsWireError> {
    encode_strings(
        out,
        XsType::Error,
        req_id,
        tx_id,
        &[errno.name().as_bytes()],
    )
}

/// Encodes a watch event `path\0token\0` with req_id and tx_id 0. A path and token that do not fit
/// 4096 bytes give [`XsWireError::PayloadTooLarge`] (xenstored does not send such events).
pub fn encode_watch_event(out: &mut [u8], path: &[u8], token: &[u8]) -> Result<usize, XsWireError> {
    encode_strings(out, XsType::WatchEvent, 0, 0, &[path, token])
}

/// The state of a [`FrameParser`].
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Reading the header; `filled` bytes of it are in `hdr`.
    Header { filled: usize },
    /// Reading the payload of a known type into `buf`, `len` bytes in all.
    Payload {
        header: XsdSockmsg,
        msg_type: XsType,
        buf: Vec<u8>,
    },
    /// Skipping the payload of an unknown type; `remaining` bytes to go.
    Skip {
        header: XsdSockmsg,
        remaining: usize,
    },
    /// A fatal error happened: nothing more is parsed.
    Broken { len: u32 },
}

/// An incremental framing parser: feed it bytes in chunks of any size, as they come off a socket or a
/// ring, and it yields complete messages.
///
/// It holds at most one header and one payload of at most [`XENSTORE_PAYLOAD_MAX`] bytes: a header with
/// a larger `len` is refused ([`XsWireError::PayloadTooLong`]) before any payload byte is buffered, and
/// the parser is then broken for good ([`XsWireError::StreamBroken`] on every later call), as xenstored
/// drops such a connection. A message of unknown type is skipped without buffering its payload and
/// reported as [`XsWireError::UnknownMessageType`], after which parsing goes on.
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use xen_abi::xs_wire::{FrameParser, OwnedMessage, XsType};
/// let bytes = OwnedMessage::from_strings(XsType::Read, 7, 0, &[b"/vm"]).unwrap().to_vec().unwrap();
/// let mut parser = FrameParser::new();
/// let mut got = Vec::new();
/// for chunk in bytes.chunks(5) {
///     for msg in parser.messages(chunk) {
///         got.push(msg.unwrap());
///     }
/// }
/// assert_eq!(got.len(), 1);
/// assert_eq!(got[0].payload, b"/vm\0");
/// # }
/// ```
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameParser {
    hdr: [u8; XSD_SOCKMSG_SIZE],
    state: State,
}

#[cfg(feature = "alloc")]
impl Default for FrameParser {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "alloc")]
impl FrameParser {
    /// A parser at a message boundary.
    pub const fn new() -> Self {
        Self {
            hdr: [0; XSD_SOCKMSG_SIZE],
            state: State::Header { filled: 0 },
        }
    }

    /// Whether the parser is at a message boundary (no partial message held).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { filled: 0 })
    }

    /// Whether a fatal error broke the stream.
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken { .. })
    }

    /// The number of bytes of a partial message held (at most 16 + 4096).
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Header { filled } => *filled,
            State::Payload { buf, .. } => XSD_SOCKMSG_SIZE + buf.len(),
            State::Skip { header, remaining } => XSD_SOCKMSG_SIZE + header.len as usize - remaining,
            State::Broken { .. } => 0,
        }
    }

    /// Drops any partial message and any fatal error (after a ring reconnection, for example).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Consumes bytes from the start of `data`, up to the end of at most one message, and returns how
    /// many it consumed and the message (or error) completed by them, if any.
    ///
    /// Call it again with the rest of `data` until everything is consumed, or use
    /// [`FrameParser::messages`]. Once broken, the parser consumes all of `data` and returns
    /// [`XsWireError::StreamBroken`].
    pub fn feed(&mut self, data: &[u8]) -> (usize, Option<Result<OwnedMessage, XsWireError>>) {
        let mut used = 0usize;
        loop {
            match &mut self.state {
                State::Broken { len } => {
                    return (
                        data.len(),
                        Some(Err(XsWireError::StreamBroken { len: *len })),
                    );
                }
                State::Header { filled } => {
                    let rest = data.get(used..).unwrap_or_default();
                    let want = XSD_SOCKMSG_SIZE - *filled;
                    let n = want.min(rest.len());
                    if let (Some(dst), Some(src)) =
                        (self.hdr.get_mut(*filled..*filled + n), rest.get(..n))
                    {
                        dst.copy_from_slice(src);
                    }
                    *filled += n;
                    used += n;
                    if *filled < XSD_SOCKMSG_SIZE {
                        return (used, None);
                    }
                    let header = XsdSockmsg::read_from_bytes(&self.hdr[..]).unwrap_or(XsdSockmsg {
                        r#type: 0,
                        req_id: 0,
                        tx_id: 0,
                        len: 0,
                    });
                    if header.len > XENSTORE_PAYLOAD_MAX {
                        self.state = State::Broken { len: header.len };
                        return (
                            used,
                            Some(Err(XsWireError::PayloadTooLong { len: header.len })),
                        );
                    }
                    self.state = match header.msg_type() {
                        Ok(msg_type) => State::Payload {
                            header,
                            msg_type,
                            buf: Vec::with_capacity(header.len as usize),
                        },
                        Err(_) => State::Skip {
                            header,
                            remaining: header.len as usize,
                        },
                    };
                }
                State::Payload {
                    header,
                    msg_type,
                    buf,
                } => {
                    let rest = data.get(used..).unwrap_or_default();
                    let want = header.len as usize - buf.len();
                    let n = want.min(rest.len());
                    buf.extend_from_slice(rest.get(..n).unwrap_or_default());
                    used += n;
                    if buf.len() < header.len as usize {
                        return (used, None);
                    }
                    let msg = Message {
                        msg_type: *msg_type,
                        req_id: header.req_id,
                        tx_id: header.tx_id,
                        payload: core::mem::take(buf),
                    };
                    self.state = State::Header { filled: 0 };
                    return (used, Some(Ok(msg)));
                }
                State::Skip { header, remaining } => {
                    let rest = data.len() - used;
                    let n = (*remaining).min(rest);
                    *remaining -= n;
                    used += n;
                    if *remaining > 0 {
                        return (used, None);
                    }
                    let err = XsWireError::UnknownMessageType {
                        msg_type: header.r#type,
                        req_id: header.req_id,
                        tx_id: header.tx_id,
                        len: header.len,
                    };
                    self.state = State::Header { filled: 0 };
                    return (used, Some(Err(err)));
                }
            }
        }
    }

    /// An iterator over the messages (and errors) that `data` completes. After a fatal error it yields
    /// that error and stops.
    pub fn messages<'p, 'd>(&'p mut self, data: &'d [u8]) -> Messages<'p, 'd> {
        Messages {
            parser: self,
            data,
            done: false,
        }
    }
}

/// The iterator of [`FrameParser::messages`].
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct Messages<'p, 'd> {
    parser: &'p mut FrameParser,
    data: &'d [u8],
    done: bool,
}

#[cfg(feature = "alloc")]
impl Iterator for Messages<'_, '_> {
    type Item = Result<OwnedMessage, XsWireError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Each round consumes at least one byte or yields, so this ends within data.len() + 1 rounds.
        while !self.done && !self.data.is_empty() {
            let (n, item) = self.parser.feed(self.data);
            self.data = self.data.get(n..).unwrap_or_default();
            if let Some(item) = item {
                if matches!(&item, Err(e) if e.is_fatal()) {
                    self.done = true;
                }
                return Some(item);
            }
        }
        None
    }
}
