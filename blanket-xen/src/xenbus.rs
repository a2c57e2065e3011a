//! The xenbus client: XenStore requests over the guest's XenStore ring page, watches, transactions, and
//! the front-end side of the XenBus state machine.
//!
//! [`XenBus`] talks to xenstored through the shared page `struct xenstore_domain_interface`
//! (`io/xs_wire.h`, `docs/misc/xenstore-ring.txt`): requests go into the `req` byte ring, replies and watch
//! events come back on `rsp`. The guest owns `req_prod` and `rsp_cons` and keeps them privately (never read
//! back from the page); xenstored's `req_cons` and `rsp_prod` are read once per pass and checked, so indices
//! that claim more than 1024 bytes give [`XenBusError::RingIndex`]. Every header is checked before its
//! payload is read (a `len` above 4096 or an unknown type is [`XenBusError::Protocol`]), payloads land in a
//! fixed 4096-byte buffer, and every wait is bounded by the client's timeout. One request is outstanding
//! at a time; watch events that arrive meanwhile are kept in a bounded queue (the oldest is dropped and
//! counted when it is full). After a fatal error the client refuses further requests
//! ([`XenBusError::Broken`]).
//!
//! [`FrontendDevice`] is the front-end half of a device's handshake: it finds the back-end
//! (`backend`, `backend-id`), writes its own `state` with only the transitions `io/xenbus.h` allows, and
//! follows the back-end's `state` with a watch.
//!
//! No allocation anywhere: the client is about 9 KiB, paths are built in [`XsPath`].

use core::sync::atomic::{Ordering, fence};

use xen_abi::DomId;
use xen_abi::event_channel::EvtchnPort;
use xen_abi::ring::RingMemory;
use xen_abi::xenbus::{XenbusError, XenbusSide, XenbusState};
use xen_abi::xs_wire::{
    WatchEvent, XENSTORE_ERROR_NONE, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR, XSD_SOCKMSG_SIZE, XsErrno, XsType, XsWireError, XsdSockmsg,
    check_path, input_chunk, output_chunk, parse_decimal, parse_error,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::platform::{EventChannels, PlatformError, WaitEvent};
use crate::shmem;

const RING: usize = XENSTORE_RING_SIZE as usize;
const REQ: usize = 0;
const RSP: usize = RING;
const REQ_CONS: usize = 2 * RING;
const REQ_PROD: usize = REQ_CONS + 4;
const RSP_CONS: usize = REQ_CONS + 8;
const RSP_PROD: usize = REQ_CONS + 12;
const SERVER_FEATURES: usize = REQ_CONS + 16;
const ERROR: usize = REQ_CONS + 24;
/// The size of `struct xenstore_domain_interface`.
const PAGE_NEED: usize = REQ_CONS + 28;

/// A transaction id: 0 is "no transaction" ([`XBT_NIL`]).
pub type TxId = u32;
/// No transaction (`XBT_NIL` in Linux and mini-os).
pub const XBT_NIL: TxId = 0;

/// The watch events kept while a request is outstanding.
pub const WATCH_QUEUE_LEN: usize = 16;
/// The largest watch event (path and token, with their NULs) the queue keeps; larger ones are dropped and
/// counted.
pub const WATCH_EVENT_MAX: usize = 256;

/// What can go wrong in the xenbus client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XenBusError {
    /// xenstored answered `XS_ERROR` with this errno (`ENOENT` for a missing node, `EAGAIN` for a
    /// transaction that must be retried, ...).
    #[error("xenstored answered {0}")]
    Xs(XsErrno),
    /// xenstored's ring indices are inconsistent (fatal).
    #[error("xenstored's ring indices are inconsistent: {0}")]
    RingIndex(#[source] XsWireError),
    /// xenstored sent a malformed message (fatal).
    #[error("xenstored broke the protocol: {0}")]
    Protocol(#[source] XsWireError),
    /// A reply for another request than the one outstanding, or of another type (fatal).
    #[error(
        "xenstored answered req_id {got_id} type {got_type} to request {want_id} of type {want_type}"
    )]
    UnexpectedReply {
        /// The request id sent.
        want_id: u32,
        /// Its type.
        want_type: u32,
        /// The reply's request id.
        got_id: u32,
        /// The reply's raw type.
        got_type: u32,
    },
    /// A reply that does not have the form its request expects (`OK`, a decimal id, ...).
    #[error("xenstored's reply to a {msg_type} request is malformed ({what})")]
    BadReply {
        /// The request type.
        msg_type: XsType,
        /// What was wrong.
        what: &'static str,
    },
    /// Nothing arrived before the timeout (fatal for requests: a late reply would be mistaken for the
    /// next one's).
    #[error("xenstored did not answer within {timeout_ns} ns")]
    Timeout {
        /// The timeout.
        timeout_ns: u64,
    },
    /// The back-end did not reach the state waited for in time (the connection itself is fine).
    #[error("the back-end stayed in state {state} for {timeout_ns} ns")]
    BackendTimeout {
        /// The last state seen.
        state: XenbusState,
        /// The timeout.
        timeout_ns: u64,
    },
    /// A request this client refuses to send: a bad path, an interior NUL, a payload above 4096 bytes.
    #[error("request not sent: {0}")]
    BadRequest(#[source] XsWireError),
    /// The caller's buffer is smaller than the value.
    #[error("the value of {len} bytes does not fit the buffer of {available} bytes")]
    BufferTooSmall {
        /// The value's length.
        len: usize,
        /// The buffer's length.
        available: usize,
    },
    /// A path longer than an [`XsPath`] holds.
    #[error("path of {len} bytes does not fit the {capacity}-byte path buffer")]
    PathTooLong {
        /// The length it would have.
        len: usize,
        /// The capacity.
        capacity: usize,
    },
    /// A node whose value should be a decimal number (or a XenBus state, a domid) is not one.
    #[error("node value is not a decimal number of the expected range ({len} bytes)")]
    NotNumeric {
        /// The value's length.
        len: usize,
    },
    /// A XenBus state that cannot be parsed, or a transition the handshake forbids.
    #[error(transparent)]
    State(#[from] XenbusError),
    /// The page given is too small to be a XenStore page.
    #[error("XenStore page of {len} bytes is too small (needs {need})")]
    PageTooSmall {
        /// Its length.
        len: usize,
        /// What it needs.
        need: usize,
    },
    /// The page given is not 4-byte aligned (its indices are `u32`).
    #[error("XenStore page at {addr:#x} is not 4-byte aligned")]
    PageMisaligned {
        /// Its address.
        addr: usize,
    },
    /// The platform failed (event channel).
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// xenstored reported that it stopped serving the ring (the page's `error` field, offered with
    /// `XENSTORE_SERVER_FEATURE_ERROR`): 1 `XENSTORE_ERROR_COMM`, 2 `XENSTORE_ERROR_RINGIDX`, 3
    /// `XENSTORE_ERROR_PROTO`. Fatal.
    #[error("xenstored stopped serving the ring with error {code} (XENSTORE_ERROR_*)")]
    ServerError {
        /// The `error` field.
        code: u32,
    },
    /// A previous fatal error left the connection unusable.
    #[error("the XenStore connection is broken by an earlier error; reconnect")]
    Broken,
}

impl XenBusError {
    /// Whether this error leaves the connection unusable.
    pub const fn is_fatal(&self) -> bool {
        matches!(
            self,
            XenBusError::RingIndex(_)
                | XenBusError::Protocol(_)
                | XenBusError::UnexpectedReply { .. }
                | XenBusError::Timeout { .. }
                | XenBusError::ServerError { .. }
                | XenBusError::Broken
        )
    }
}

/// A XenStore path built in place, without allocation.
#[derive(Clone)]
pub struct XsPath<const N: usize = 256> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> core::fmt::Debug for XsPath<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => write!(f, "XsPath({s:?})"),
            Err(_) => write!(f, "XsPath({:?})", self.as_bytes()),
        }
    }
}

impl<const N: usize> Default for XsPath<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> XsPath<N> {
    /// The path made of `parts`, concatenated.
    pub fn from_parts(parts: &[&[u8]]) -> Result<Self, XenBusError> {
        let mut p = Self::default();
        for part in parts {
            p.push(part)?;
        }
        Ok(p)
    }

    /// Appends bytes.
    pub fn push(&mut self, part: &[u8]) -> Result<&mut Self, XenBusError> {
        let len = self.len + part.len();
        let Some(dst) = self.buf.get_mut(self.len..len) else {
            return Err(XenBusError::PathTooLong { len, capacity: N });
        };
        dst.copy_from_slice(part);
        self.len = len;
        Ok(self)
    }

    /// This path, `/`, then `child`.
    pub fn join(&self, child: &[u8]) -> Result<Self, XenBusError> {
        let mut p = self.clone();
        p.push(b"/")?.push(child)?;
        Ok(p)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// A watch event: the path that changed and the watch's token, borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchEventRef<'a> {
    /// The path.
    pub path: &'a [u8],
    /// The token.
    pub token: &'a [u8],
}

/// The entries of a `DIRECTORY` reply, borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct DirEntries<'a> {
    payload: &'a [u8],
}

impl<'a> Iterator for DirEntries<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = self.payload.iter().position(|&b| b == 0)?;
        let (name, rest) = self.payload.split_at(end);
        self.payload = rest.get(1..).unwrap_or(&[]);
        Some(name)
    }
}

#[derive(Clone, Copy)]
struct QueuedEvent {
    bytes: [u8; WATCH_EVENT_MAX],
    path_len: usize,
    token_len: usize,
}

/// A xenbus client over a guest's XenStore page.
pub struct XenBus<P, M> {
    platform: P,
    page: M,
    port: EvtchnPort,
    timeout_ns: u64,
    req_id: u32,
    req_prod: u32,
    rsp_cons: u32,
    broken: bool,
    payload: [u8; XENSTORE_PAYLOAD_MAX as usize],
    events: [QueuedEvent; WATCH_QUEUE_LEN],
    ev_head: usize,
    ev_len: usize,
    dropped: u64,
}

impl<P, M> core::fmt::Debug for XenBus<P, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenBus")
            .field("port", &self.port)
            .field("req_prod", &self.req_prod)
            .field("rsp_cons", &self.rsp_cons)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// How a reply to a request is delivered.
enum Reply<'o> {
    /// Copy the payload into this buffer.
    Into(&'o mut [u8]),
    /// Expect `OK`.
    Ok,
    /// Keep it in the client's payload buffer.
    Keep,
}

impl<P: EventChannels + WaitEvent, M: RingMemory> XenBus<P, M> {
    /// A client over the XenStore page `page` (from `start_info.store_mfn`) and the event channel `port`
    /// (`start_info.store_evtchn`). Every request and wait gives up after `timeout_ns`. The guest's own
    /// indices start from what the page holds (zero on a fresh domain), and are checked against
    /// xenstored's.
    pub fn new(
        platform: P,
        page: M,
        port: EvtchnPort,
        timeout_ns: u64,
    ) -> Result<Self, XenBusError> {
        if page.len() < PAGE_NEED {
            return Err(XenBusError::PageTooSmall {
                len: page.len(),
                need: PAGE_NEED,
            });
        }
        let addr = page.as_ptr() as usize;
        if addr % 4 != 0 {
            return Err(XenBusError::PageMisaligned { addr });
        }
        let req_prod = shmem::atomic_u32(&page, REQ_PROD).load(Ordering::Acquire);
        let rsp_cons = shmem::atomic_u32(&page, RSP_CONS).load(Ordering::Acquire);
        let empty = QueuedEvent {
            bytes: [0; WATCH_EVENT_MAX],
            path_len: 0,
            token_len: 0,
        };
        Ok(Self {
            platform,
            page,
            port,
            timeout_ns,
            req_id: 0,
            req_prod,
            rsp_cons,
            broken: false,
            payload: [0; XENSTORE_PAYLOAD_MAX as usize],
            events: [empty; WATCH_QUEUE_LEN],
            ev_head: 0,
            ev_len: 0,
            dropped: 0,
        })
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The timeout of every request and wait, in nanoseconds.
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    /// Watch events dropped because the queue was full or they were larger than [`WATCH_EVENT_MAX`].
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Whether a fatal error ended the connection.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fatal<T>(&mut self, e: XenBusError) -> Result<T, XenBusError> {
        if e.is_fatal() {
            self.broken = true;
        }
        Err(e)
    }

    fn deadline(&self) -> u64 {
        self.platform.now_ns().saturating_add(self.timeout_ns)
    }

    /// Waits for an event until `deadline`; false when it passed. Before sleeping, looks at the page's
    /// `error` field, which xenstored sets when it stops serving the ring.
    fn wait_until(&mut self, deadline: u64) -> Result<bool, XenBusError> {
        let features = shmem::atomic_u32(&self.page, SERVER_FEATURES).load(Ordering::Acquire);
        if features & XENSTORE_SERVER_FEATURE_ERROR != 0 {
            let code = shmem::atomic_u32(&self.page, ERROR).load(Ordering::Acquire);
            if code != XENSTORE_ERROR_NONE {
                return self.fatal(XenBusError::ServerError { code });
            }
        }
        let now = self.platform.now_ns();
        if now >= deadline {
            return Ok(false);
        }
        self.platform.wait(self.port, deadline - now)?;
        Ok(true)
    }

    /// Writes `data` into the request ring, waiting for room until `deadline`.
    fn put(&mut self, mut data: &[u8], deadline: u64) -> Result<(), XenBusError> {
        while !data.is_empty() {
            // xenstored's index, copied once and checked.
            let cons = shmem::atomic_u32(&self.page, REQ_CONS).load(Ordering::Acquire);
            let chunk = match output_chunk(cons, self.req_prod) {
                Ok(c) => c,
                Err(e) => return self.fatal(XenBusError::RingIndex(e)),
            };
            let n = chunk.len().min(data.len());
            if n == 0 {
                if !self.wait_until(deadline)? {
                    return self.fatal(XenBusError::Timeout {
                        timeout_ns: self.timeout_ns,
                    });
                }
                continue;
            }
            let (now, rest) = data.split_at(n);
            shmem::write(&self.page, REQ + chunk.start, now);
            // `wmb()`: the bytes before the index that publishes them.
            fence(Ordering::Release);
            self.req_prod = self.req_prod.wrapping_add(n as u32);
            shmem::atomic_u32(&self.page, REQ_PROD).store(self.req_prod, Ordering::Release);
            self.page.mark_dirty(REQ_PROD, 4);
            self.platform.notify(self.port)?;
            data = rest;
        }
        Ok(())
    }

    /// Reads exactly `out.len()` bytes from the response ring, waiting until `deadline`. Returns false if
    /// nothing at all arrived before the deadline and `out` is untouched (`idle_ok`), so a caller waiting for
    /// watch events can tell "nothing came" from a message cut short.
    fn get(&mut self, out: &mut [u8], deadline: u64, idle_ok: bool) -> Result<bool, XenBusError> {
        let mut done = 0;
        while done < out.len() {
            let prod = shmem::atomic_u32(&self.page, RSP_PROD).load(Ordering::Acquire);
            let chunk = match input_chunk(self.rsp_cons, prod) {
                Ok(c) => c,
                Err(e) => return self.fatal(XenBusError::RingIndex(e)),
            };
            let n = chunk.len().min(out.len() - done);
            if n == 0 {
                if !self.wait_until(deadline)? {
                    if done == 0 && idle_ok {
                        return Ok(false);
                    }
                    return self.fatal(XenBusError::Timeout {
                        timeout_ns: self.timeout_ns,
                    });
                }
                continue;
            }
            if let Some(dst) = out.get_mut(done..done + n) {
                shmem::read(&self.page, RSP + chunk.start, dst);
            }
            // `mb()`: finish reading the bytes before giving their room back.
            fence(Ordering::SeqCst);
            self.rsp_cons = self.rsp_cons.wrapping_add(n as u32);
            shmem::atomic_u32(&self.page, RSP_CONS).store(self.rsp_cons, Ordering::Release);
            self.page.mark_dirty(RSP_CONS, 4);
            self.platform.notify(self.port)?;
            done += n;
        }
        Ok(true)
    }

    /// Reads one message: the header, checked, then its payload into `self.payload`. `None` when nothing
    /// arrived before the deadline and `idle_ok`.
    fn get_message(
        &mut self,
        deadline: u64,
        idle_ok: bool,
    ) -> Result<Option<(XsdSockmsg, XsType)>, XenBusError> {
        let mut hdr = [0u8; XSD_SOCKMSG_SIZE];
        if !self.get(&mut hdr, deadline, idle_ok)? {
            return Ok(None);
        }
        let Ok(header) = XsdSockmsg::read_from_bytes(&hdr[..]) else {
            return self.fatal(XenBusError::Protocol(XsWireError::Truncated {
                needed: XSD_SOCKMSG_SIZE,
                available: 0,
            }));
        };
        let ty = match header.validate() {
            Ok(t) => t,
            Err(e) => return self.fatal(XenBusError::Protocol(e)),
        };
        let len = header.len as usize;
        let mut payload = [0u8; XENSTORE_PAYLOAD_MAX as usize];
        // `len <= 4096` was checked by `validate`.
        if let Some(dst) = payload.get_mut(..len) {
            self.get(dst, deadline, false)?;
        }
        self.payload = payload;
        if ty == XsType::WatchEvent {
            self.queue_event(len);
        }
        Ok(Some((header, ty)))
    }

    fn queue_event(&mut self, len: usize) {
        let Some(payload) = self.payload.get(..len) else {
            return;
        };
        let Ok(ev) = WatchEvent::parse(payload) else {
            self.dropped += 1;
            return;
        };
        let (plen, tlen) = (ev.path.len(), ev.token.len());
        if plen + tlen > WATCH_EVENT_MAX {
            self.dropped += 1;
            return;
        }
        if self.ev_len == WATCH_QUEUE_LEN {
            self.ev_head = (self.ev_head + 1) % WATCH_QUEUE_LEN;
            self.ev_len -= 1;
            self.dropped += 1;
        }
        let slot = &mut self.events[(self.ev_head + self.ev_len) % WATCH_QUEUE_LEN];
        slot.bytes[..plen].copy_from_slice(ev.path);
        slot.bytes[plen..plen + tlen].copy_from_slice(ev.token);
        slot.path_len = plen;
        slot.token_len = tlen;
        self.ev_len += 1;
    }

    /// Sends one request made of `parts` and waits for its reply.
    fn request(
        &mut self,
        ty: XsType,
        tx: TxId,
        parts: &[&[u8]],
        reply: Reply<'_>,
    ) -> Result<usize, XenBusError> {
        if self.broken {
            return Err(XenBusError::Broken);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > XENSTORE_PAYLOAD_MAX as usize {
            return Err(XenBusError::BadRequest(XsWireError::PayloadTooLarge {
                len,
            }));
        }
        self.req_id = self.req_id.wrapping_add(1);
        let req_id = self.req_id;
        let deadline = self.deadline();
        let header = XsdSockmsg::new(ty, req_id, tx, len as u32);
        self.put(header.as_bytes(), deadline)?;
        for p in parts {
            self.put(p, deadline)?;
        }
        // Bounded: every message takes bytes from the ring, and the deadline ends the wait; watch events
        // in between are queued (bounded) and the loop goes on.
        loop {
            let Some((h, got)) = self.get_message(deadline, false)? else {
                return self.fatal(XenBusError::Timeout {
                    timeout_ns: self.timeout_ns,
                });
            };
            if got == XsType::WatchEvent {
                continue;
            }
            if h.req_id != req_id || (got != ty && got != XsType::Error) {
                return self.fatal(XenBusError::UnexpectedReply {
                    want_id: req_id,
                    want_type: ty.raw(),
                    got_id: h.req_id,
                    got_type: h.r#type,
                });
            }
            let n = h.len as usize;
            let payload = self.payload.get(..n).unwrap_or(&[]);
            if got == XsType::Error {
                return match parse_error(payload) {
                    Ok(errno) => Err(XenBusError::Xs(errno)),
                    Err(e) => self.fatal(XenBusError::Protocol(e)),
                };
            }
            return match reply {
                Reply::Ok if payload == b"OK\0" => Ok(0),
                Reply::Ok => Err(XenBusError::BadReply {
                    msg_type: ty,
                    what: "expected OK",
                }),
                Reply::Keep => Ok(n),
                Reply::Into(out) => match out.get_mut(..n) {
                    Some(dst) => {
                        dst.copy_from_slice(payload);
                        Ok(n)
                    }
                    None => Err(XenBusError::BufferTooSmall {
                        len: n,
                        available: out.len(),
                    }),
                },
            };
        }
    }

    fn checked(path: &[u8], special: bool) -> Result<(), XenBusError> {
        check_path(path, special)
            .map(|_| ())
            .map_err(XenBusError::BadRequest)
    }

    /// Reads the value of `path` into `out` and returns its length (`XS_READ`).
    pub fn read(&mut self, tx: TxId, path: &[u8], out: &mut [u8]) -> Result<usize, XenBusError> {
        Self::checked(path, false)?;
        self.request(XsType::Read, tx, &[path, b"\0"], Reply::Into(out))
    }

    /// Reads a decimal value (`sectors`, `ring-ref`, `backend-id`, ...); `None` when the node is missing.
    pub fn read_u64(&mut self, tx: TxId, path: &[u8]) -> Result<Option<u64>, XenBusError> {
        let mut buf = [0u8; 24];
        let n = match self.read(tx, path, &mut buf) {
            Ok(n) => n,
            Err(XenBusError::Xs(XsErrno::ENOENT)) => return Ok(None),
            Err(XenBusError::BufferTooSmall { len, .. }) => {
                return Err(XenBusError::NotNumeric { len });
            }
            Err(e) => return Err(e),
        };
        parse_u64(&buf[..n]).map(Some)
    }

    /// Writes `value` at `path`, creating it and its parents (`XS_WRITE`).
    pub fn write(&mut self, tx: TxId, path: &[u8], value: &[u8]) -> Result<(), XenBusError> {
        Self::checked(path, false)?;
        self.request(XsType::Write, tx, &[path, b"\0", value], Reply::Ok)
            .map(|_| ())
    }

    /// Creates `path` with an empty value if it does not exist (`XS_MKDIR`).
    pub fn mkdir(&mut self, tx: TxId, path: &[u8]) -> Result<(), XenBusError> {
        Self::checked(path, false)?;
        self.request(XsType::Mkdir, tx, &[path, b"\0"], Reply::Ok)
            .map(|_| ())
    }

    /// Removes `path` and everything below it (`XS_RM`).
    pub fn rm(&mut self, tx: TxId, path: &[u8]) -> Result<(), XenBusError> {
        Self::checked(path, false)?;
        self.request(XsType::Rm, tx, &[path, b"\0"], Reply::Ok)
            .map(|_| ())
    }

    /// Lists the children of `path` (`XS_DIRECTORY`); the names are copied into `out`.
    pub fn directory<'o>(
        &mut self,
        tx: TxId,
        path: &[u8],
        out: &'o mut [u8],
    ) -> Result<DirEntries<'o>, XenBusError> {
        Self::checked(path, false)?;
        let n = self.request(XsType::Directory, tx, &[path, b"\0"], Reply::Into(out))?;
        Ok(DirEntries {
            payload: out.get(..n).unwrap_or(&[]),
        })
    }

    /// Starts a transaction (`XS_TRANSACTION_START`).
    pub fn transaction_start(&mut self) -> Result<TxId, XenBusError> {
        let n = self.request(XsType::TransactionStart, XBT_NIL, &[b"\0"], Reply::Keep)?;
        let reply = self.payload.get(..n).unwrap_or(&[]);
        let digits = reply.strip_suffix(b"\0").unwrap_or(reply);
        match parse_decimal(digits) {
            Some(tx) if tx != XBT_NIL => Ok(tx),
            _ => Err(XenBusError::BadReply {
                msg_type: XsType::TransactionStart,
                what: "expected a non-zero decimal transaction id",
            }),
        }
    }

    /// Commits (`commit`) or aborts a transaction (`XS_TRANSACTION_END`). A conflict is
    /// `Err(XenBusError::Xs(XsErrno::EAGAIN))`: start again.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XenBusError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(XsType::TransactionEnd, tx, &[arg], Reply::Ok)
            .map(|_| ())
    }

    /// Watches `path` (and everything below it) with `token` (`XS_WATCH`). xenstored fires the watch once
    /// at once; events are read with [`next_watch_event`](Self::next_watch_event).
    pub fn watch(&mut self, path: &[u8], token: &[u8]) -> Result<(), XenBusError> {
        Self::checked(path, true)?;
        if let Some(offset) = token.iter().position(|&b| b == 0) {
            return Err(XenBusError::BadRequest(XsWireError::InteriorNul { offset }));
        }
        self.request(
            XsType::Watch,
            XBT_NIL,
            &[path, b"\0", token, b"\0"],
            Reply::Ok,
        )
        .map(|_| ())
    }

    /// Removes a watch (`XS_UNWATCH`). Queued events of that watch stay queued.
    pub fn unwatch(&mut self, path: &[u8], token: &[u8]) -> Result<(), XenBusError> {
        Self::checked(path, true)?;
        if let Some(offset) = token.iter().position(|&b| b == 0) {
            return Err(XenBusError::BadRequest(XsWireError::InteriorNul { offset }));
        }
        self.request(
            XsType::Unwatch,
            XBT_NIL,
            &[path, b"\0", token, b"\0"],
            Reply::Ok,
        )
        .map(|_| ())
    }

    /// Drops every watch and transaction of this connection (`XS_RESET_WATCHES`), as a guest does when it
    /// (re)starts, so that watches of an earlier kernel do not fire into this one.
    pub fn reset_watches(&mut self) -> Result<(), XenBusError> {
        self.request(XsType::ResetWatches, XBT_NIL, &[], Reply::Ok)
            .map(|_| ())
    }

    /// The home path of domain `domid` (`XS_GET_DOMAIN_PATH`), copied into `out`.
    pub fn get_domain_path(&mut self, domid: DomId, out: &mut [u8]) -> Result<usize, XenBusError> {
        let mut digits = [0u8; 5];
        let d = fmt_decimal(u64::from(domid), &mut digits);
        let n = self.request(
            XsType::GetDomainPath,
            XBT_NIL,
            &[d, b"\0"],
            Reply::Into(out),
        )?;
        // The reply is NUL-terminated.
        Ok(if out.get(n.wrapping_sub(1)) == Some(&0) {
            n - 1
        } else {
            n
        })
    }

    /// The next watch event, copied into `out`: a queued one, or one read from the ring within `timeout_ns`
    /// (`Ok(None)` when none came). Only watch events may arrive while no request is outstanding; anything
    /// else is [`XenBusError::UnexpectedReply`].
    pub fn next_watch_event<'o>(
        &mut self,
        out: &'o mut [u8],
        timeout_ns: u64,
    ) -> Result<Option<WatchEventRef<'o>>, XenBusError> {
        if self.broken {
            return Err(XenBusError::Broken);
        }
        if self.ev_len == 0 {
            let deadline = self.platform.now_ns().saturating_add(timeout_ns);
            match self.get_message(deadline, true)? {
                None => return Ok(None),
                Some((_, XsType::WatchEvent)) => {}
                Some((h, _)) => {
                    return self.fatal(XenBusError::UnexpectedReply {
                        want_id: 0,
                        want_type: XsType::WatchEvent.raw(),
                        got_id: h.req_id,
                        got_type: h.r#type,
                    });
                }
            }
            if self.ev_len == 0 {
                // A malformed or oversized event: dropped and counted.
                return Ok(None);
            }
        }
        let ev = self.events[self.ev_head];
        let (plen, tlen) = (ev.path_len, ev.token_len);
        let available = out.len();
        let Some(dst) = out.get_mut(..plen + tlen) else {
            return Err(XenBusError::BufferTooSmall {
                len: plen + tlen,
                available,
            });
        };
        dst.copy_from_slice(&ev.bytes[..plen + tlen]);
        self.ev_head = (self.ev_head + 1) % WATCH_QUEUE_LEN;
        self.ev_len -= 1;
        let (path, token) = dst.split_at(plen);
        Ok(Some(WatchEventRef { path, token }))
    }
}

/// Parses a decimal `u64` (ASCII digits only, at most 20, one trailing NUL tolerated).
pub fn parse_u64(value: &[u8]) -> Result<u64, XenBusError> {
    let digits = value.strip_suffix(b"\0").unwrap_or(value);
    let bad = XenBusError::NotNumeric { len: value.len() };
    if digits.is_empty() || digits.len() > 20 {
        return Err(bad);
    }
    let mut v: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(bad);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(bad)?;
    }
    Ok(v)
}

/// Formats `v` in decimal into `buf` (20 bytes hold any `u64`) and returns the digits.
pub fn fmt_decimal(mut v: u64, buf: &mut [u8]) -> &[u8] {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    let digits = &tmp[i..];
    let n = digits.len().min(buf.len());
    buf[..n].copy_from_slice(&digits[..n]);
    &buf[..n]
}

/// The front-end half of a XenBus device: its node (`device/vbd/768`), its back-end, and its state.
#[derive(Debug, Clone)]
pub struct FrontendDevice {
    node: XsPath,
    backend: XsPath,
    backend_id: DomId,
    state: XenbusState,
}

impl FrontendDevice {
    /// Finds the back-end of the device at `node` (relative to the domain's home, or absolute): reads
    /// `<node>/backend` (an absolute path) and `<node>/backend-id` (a domid), and writes `<node>/state`
    /// Initialising.
    pub fn probe<P: EventChannels + WaitEvent, M: RingMemory>(
        xb: &mut XenBus<P, M>,
        node: &[u8],
    ) -> Result<Self, XenBusError> {
        let node = XsPath::from_parts(&[node])?;
        let mut buf = [0u8; 256];
        let n = xb.read(XBT_NIL, node.join(b"backend")?.as_bytes(), &mut buf)?;
        let path = buf.get(..n).unwrap_or(&[]);
        let path = path.strip_suffix(b"\0").unwrap_or(path);
        if path.first() != Some(&b'/') || check_path(path, false).is_err() {
            return Err(XenBusError::BadReply {
                msg_type: XsType::Read,
                what: "backend is not an absolute XenStore path",
            });
        }
        let backend = XsPath::from_parts(&[path])?;
        let id = xb
            .read_u64(XBT_NIL, node.join(b"backend-id")?.as_bytes())?
            .ok_or(XenBusError::Xs(XsErrno::ENOENT))?;
        let backend_id = DomId::try_from(id).map_err(|_| XenBusError::NotNumeric { len: 8 })?;
        let mut dev = Self {
            node,
            backend,
            backend_id,
            state: XenbusState::Unknown,
        };
        dev.switch_state(xb, XBT_NIL, XenbusState::Initialising)?;
        Ok(dev)
    }

    /// The device's node.
    pub fn node(&self) -> &XsPath {
        &self.node
    }

    /// The back-end's node.
    pub fn backend(&self) -> &XsPath {
        &self.backend
    }

    /// The back-end's domain.
    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }

    /// The front-end state last written.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Writes `<node>/state`, if the front-end may go from its current state to `next`
    /// ([`XenbusError::IllegalTransition`] otherwise).
    pub fn switch_state<P: EventChannels + WaitEvent, M: RingMemory>(
        &mut self,
        xb: &mut XenBus<P, M>,
        tx: TxId,
        next: XenbusState,
    ) -> Result<(), XenBusError> {
        self.state.check_transition(XenbusSide::Frontend, next)?;
        xb.write(
            tx,
            self.node.join(b"state")?.as_bytes(),
            next.as_xenstore().as_bytes(),
        )?;
        self.state = next;
        Ok(())
    }

    /// Reads the back-end's state; a missing (or unreadable) node is Unknown.
    pub fn backend_state<P: EventChannels + WaitEvent, M: RingMemory>(
        &self,
        xb: &mut XenBus<P, M>,
    ) -> Result<XenbusState, XenBusError> {
        let mut buf = [0u8; 24];
        match xb.read(XBT_NIL, self.backend.join(b"state")?.as_bytes(), &mut buf) {
            Ok(n) => Ok(XenbusState::from_xenstore(&buf[..n])?),
            // As Linux's `xenbus_read_driver_state`: a node that is gone (or that the toolstack's removal
            // of its parent made unreadable) is Unknown.
            Err(XenBusError::Xs(XsErrno::ENOENT | XsErrno::EACCES)) => Ok(XenbusState::Unknown),
            Err(XenBusError::BufferTooSmall { len, .. }) => {
                Err(XenbusError::TooLong { len }.into())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a decimal node of the back-end (`sectors`, `feature-*`, ...); `None` when it is missing.
    pub fn backend_u64<P: EventChannels + WaitEvent, M: RingMemory>(
        &self,
        xb: &mut XenBus<P, M>,
        key: &[u8],
    ) -> Result<Option<u64>, XenBusError> {
        xb.read_u64(XBT_NIL, self.backend.join(key)?.as_bytes())
    }

    /// Follows a back-end that is going away, as Linux's front-ends do on a `state` watch: when the
    /// back-end is Closing, the front-end goes to Closing; when it is Closed (or its `state` node is gone),
    /// the front-end goes to Closing and then Closed. Returns the back-end's state. A live back-end
    /// changes nothing.
    pub fn follow_backend<P: EventChannels + WaitEvent, M: RingMemory>(
        &mut self,
        xb: &mut XenBus<P, M>,
    ) -> Result<XenbusState, XenBusError> {
        let backend = self.backend_state(xb)?;
        let front = self.state;
        match backend {
            XenbusState::Closing if !front.is_closing_or_closed() => {
                self.switch_state(xb, XBT_NIL, XenbusState::Closing)?;
            }
            XenbusState::Closed | XenbusState::Unknown if front != XenbusState::Closed => {
                if front != XenbusState::Closing {
                    self.switch_state(xb, XBT_NIL, XenbusState::Closing)?;
                }
                self.switch_state(xb, XBT_NIL, XenbusState::Closed)?;
            }
            _ => {}
        }
        Ok(backend)
    }

    /// Follows the back-end's state with a watch on `<backend>/state` until `done` accepts it, or `fail`
    /// does (then [`XenbusError::IllegalTransition`] names the unexpected state), within `timeout_ns`.
    pub fn wait_for_backend<P: EventChannels + WaitEvent, M: RingMemory>(
        &self,
        xb: &mut XenBus<P, M>,
        done: impl Fn(XenbusState) -> bool,
        fail: impl Fn(XenbusState) -> bool,
        timeout_ns: u64,
    ) -> Result<XenbusState, XenBusError> {
        let path = self.backend.join(b"state")?;
        let token: &[u8] = b"blanket-xen-backend-state";
        xb.watch(path.as_bytes(), token)?;
        let deadline = xb.platform().now_ns().saturating_add(timeout_ns);
        let result = (|| {
            let mut ev = [0u8; WATCH_EVENT_MAX];
            // Bounded by the deadline: each round either sees a new state or waits for an event.
            loop {
                let state = self.backend_state(xb)?;
                if done(state) {
                    return Ok(state);
                }
                if fail(state) {
                    return Err(XenBusError::State(XenbusError::IllegalTransition {
                        side: XenbusSide::Backend,
                        from: self.state,
                        to: state,
                    }));
                }
                let now = xb.platform().now_ns();
                if now >= deadline {
                    return Err(XenBusError::BackendTimeout { state, timeout_ns });
                }
                // Any event wakes us to look again; the state itself is read above.
                xb.next_watch_event(&mut ev, deadline - now)?;
            }
        })();
        // Best effort: a broken connection cannot unwatch.
        if !xb.is_broken() {
            let _ = xb.unwatch(path.as_bytes(), token);
        }
        result
    }
}
