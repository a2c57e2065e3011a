//! The guest transport: the XenStore page (`struct xenstore_domain_interface`, `io/xs_wire.h`,
//! `docs/misc/xenstore-ring.txt`) shared with a guest, and an event channel to kick it.
//!
//! The page is seen as [`SharedXenstorePage`]: the same layout as
//! [`xen_abi::xs_wire::XenstoreDomainInterface`], with atomic fields, since
//! the guest writes it while we read it. [`RingConnection`] serves one domain's page:
//!
//! - the indices we own (`req_cons`, `rsp_prod`) are kept privately and only ever written to the
//!   page, never read back; the guest's (`req_prod`, `rsp_cons`) are read once per pass and checked
//!   with the byte-ring helpers of `xs_wire` (a guest claiming more than 1024 bytes gets
//!   `XENSTORE_ERROR_RINGIDX` and is no longer served);
//! - requests are read one message at a time and only while the store accepts more from this
//!   domain ([`XenStore::can_accept_request`], the outstanding-requests quota), so a guest that
//!   never consumes its responses stops being read and holds a bounded queue;
//! - a header with `len` above 4096 gets `XENSTORE_ERROR_PROTO`.
//!
//! The hypervisor side is abstracted by [`EventChannel`]; call [`RingConnection::process`] whenever
//! the guest's event channel fires and whenever the store notifies output for the connection.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering, fence};

use tracing::warn;
use xen_abi::DomId;
use xen_abi::xs_wire::{
    FrameParser, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR, XenstoreDomainInterface, XsErrno, XsWireError, input_chunk,
    output_chunk,
};

use super::store::{ConnId, Notify, XenStore};

const RING: usize = XENSTORE_RING_SIZE as usize;

/// The XenStore page with atomic fields: `struct xenstore_domain_interface` as both sides of a
/// shared mapping see it.
#[repr(C)]
#[derive(Debug)]
pub struct SharedXenstorePage {
    /// Requests to xenstored.
    pub req: [AtomicU8; RING],
    /// Replies and watch events.
    pub rsp: [AtomicU8; RING],
    /// xenstored's consumer index into `req`.
    pub req_cons: AtomicU32,
    /// The guest's producer index into `req`.
    pub req_prod: AtomicU32,
    /// The guest's consumer index into `rsp`.
    pub rsp_cons: AtomicU32,
    /// xenstored's producer index into `rsp`.
    pub rsp_prod: AtomicU32,
    /// `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: AtomicU32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: AtomicU32,
    /// `XENSTORE_ERROR_*`.
    pub error: AtomicU32,
}

const _: () = assert!(size_of::<SharedXenstorePage>() == size_of::<XenstoreDomainInterface>());
const _: () = assert!(align_of::<SharedXenstorePage>() == align_of::<XenstoreDomainInterface>());

impl Default for SharedXenstorePage {
    fn default() -> Self {
        Self {
            req: std::array::from_fn(|_| AtomicU8::new(0)),
            rsp: std::array::from_fn(|_| AtomicU8::new(0)),
            req_cons: AtomicU32::new(0),
            req_prod: AtomicU32::new(0),
            rsp_cons: AtomicU32::new(0),
            rsp_prod: AtomicU32::new(0),
            server_features: AtomicU32::new(0),
            connection: AtomicU32::new(0),
            error: AtomicU32::new(0),
        }
    }
}

impl SharedXenstorePage {
    /// Views a mapped XenStore page.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a readable and writable mapping of at least
    /// `size_of::<SharedXenstorePage>()` bytes, aligned to 4, that stays mapped for `'a`, and that
    /// nothing accesses during `'a` other than through atomic operations (the other side of a shared
    /// page, a guest, does its own word and byte accesses, which is what atomics model).
    pub unsafe fn from_ptr<'a>(ptr: *mut u8) -> &'a SharedXenstorePage {
        // SAFETY: the caller guarantees the size, alignment, lifetime and atomic-only access; every
        // bit pattern is valid for the atomic integers of the struct.
        unsafe { &*ptr.cast::<SharedXenstorePage>() }
    }

    /// Copies `out.len()` bytes of a ring from byte offset `start` (no wrap: the caller splits).
    fn read_bytes(ring: &[AtomicU8; RING], start: usize, out: &mut [u8]) {
        for (o, b) in out.iter_mut().zip(ring.iter().skip(start)) {
            *o = b.load(Ordering::Relaxed);
        }
    }

    fn write_bytes(ring: &[AtomicU8; RING], start: usize, data: &[u8]) {
        for (d, b) in data.iter().zip(ring.iter().skip(start)) {
            b.store(*d, Ordering::Relaxed);
        }
    }
}

/// Kicks the other end of an event channel (`EVTCHNOP_send`), implemented by the hypervisor layer.
pub trait EventChannel: Send + Sync {
    /// Notifies the guest.
    fn notify(&self);
}

/// What can go wrong on a guest's ring; each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The guest's indices are inconsistent (`XENSTORE_ERROR_RINGIDX`).
    #[error("domain {domid}: inconsistent ring indices")]
    RingIndex {
        /// The domain.
        domid: DomId,
        /// The check that failed.
        #[source]
        source: XsWireError,
    },
    /// The guest broke the protocol (`XENSTORE_ERROR_PROTO`).
    #[error("domain {domid}: protocol violation")]
    Protocol {
        /// The domain.
        domid: DomId,
        /// What was wrong.
        #[source]
        source: XsWireError,
    },
    /// The store closed the connection (the domain was released).
    #[error("domain {domid}: connection closed")]
    Closed {
        /// The domain.
        domid: DomId,
    },
}

/// One domain's XenStore page, served for a [`XenStore`].
#[derive(Debug)]
pub struct RingConnection<'p, E> {
    page: &'p SharedXenstorePage,
    evtchn: E,
    domid: DomId,
    conn: ConnId,
    parser: FrameParser,
    /// Our indices, never read back from the page.
    req_cons: u32,
    rsp_prod: u32,
    /// Encoded output not yet in the ring.
    pending: Vec<u8>,
    failed: bool,
}

impl<'p, E: EventChannel> RingConnection<'p, E> {
    /// Connects domain `domid`'s page to `store`. The indices we own start from what the page holds
    /// now (as after `XS_INTRODUCE`); `notify` is told when output is queued.
    pub fn new(
        store: &mut XenStore,
        domid: DomId,
        page: &'p SharedXenstorePage,
        evtchn: E,
        notify: Option<Notify>,
    ) -> Self {
        let conn = store.connect(domid, notify);
        Self::attach(conn, domid, page, evtchn)
    }

    /// Serves an existing store connection of domain `domid` (one restored by
    /// [`XenStore::import_domain`]) on its page.
    pub fn attach(conn: ConnId, domid: DomId, page: &'p SharedXenstorePage, evtchn: E) -> Self {
        page.server_features
            .store(XENSTORE_SERVER_FEATURE_ERROR, Ordering::Relaxed);
        Self {
            page,
            evtchn,
            domid,
            conn,
            parser: FrameParser::new(),
            req_cons: page.req_cons.load(Ordering::Relaxed),
            rsp_prod: page.rsp_prod.load(Ordering::Relaxed),
            pending: Vec::new(),
            failed: false,
        }
    }

    /// The store connection of this domain.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    fn fail(&mut self, code: u32, err: RingError) -> RingError {
        warn!(domid = self.domid, %err, "XenStore ring stopped");
        self.failed = true;
        self.page.error.store(code, Ordering::Release);
        self.evtchn.notify();
        err
    }

    /// Reads the requests the guest queued (while the store accepts them), answers them, and writes
    /// what fits of the queued output. Returns whether anything moved.
    pub fn process(&mut self, store: &mut XenStore) -> Result<bool, RingError> {
        if self.failed || store.is_closed(self.conn) {
            return Err(RingError::Closed { domid: self.domid });
        }
        let mut moved = false;
        let mut chunk = [0u8; RING];
        while store.can_accept_request(self.conn) {
            // Copy the guest's index once, then read the bytes it covers.
            let prod = self.page.req_prod.load(Ordering::Acquire);
            let range = match input_chunk(self.req_cons, prod) {
                Ok(r) => r,
                Err(source) => {
                    let domid = self.domid;
                    return Err(self.fail(
                        XENSTORE_ERROR_RINGIDX,
                        RingError::RingIndex { domid, source },
                    ));
                }
            };
            if range.is_empty() {
                break;
            }
            let data = &mut chunk[..range.len()];
            SharedXenstorePage::read_bytes(&self.page.req, range.start, data);
            // At most one message per round, so the outstanding quota is honoured.
            let (used, item) = self.parser.feed(data);
            self.req_cons = self.req_cons.wrapping_add(used as u32);
            self.page.req_cons.store(self.req_cons, Ordering::Release);
            moved = true;
            match item {
                None => {}
                Some(Ok(msg)) => store.handle_message(self.conn, &msg.as_message_ref()),
                Some(Err(XsWireError::UnknownMessageType { req_id, tx_id, .. })) => {
                    store.reply_error(self.conn, req_id, tx_id, XsErrno::ENOSYS);
                }
                Some(Err(source)) => {
                    let domid = self.domid;
                    return Err(
                        self.fail(XENSTORE_ERROR_PROTO, RingError::Protocol { domid, source })
                    );
                }
            }
        }
        moved |= self.flush(store)?;
        if moved {
            self.evtchn.notify();
        }
        Ok(moved)
    }

    /// Writes queued output into the response ring, as much as fits. Output is only taken from the
    /// store once the previous batch is in the ring, so a guest that does not consume responses
    /// leaves them queued in the store, where the outstanding-requests quota sees them.
    fn flush(&mut self, store: &mut XenStore) -> Result<bool, RingError> {
        let mut moved = false;
        loop {
            if self.pending.is_empty() {
                for m in store.take_output(self.conn) {
                    if let Ok(v) = m.to_vec() {
                        self.pending.extend_from_slice(&v);
                    }
                }
                if self.pending.is_empty() {
                    return Ok(moved);
                }
            }
            let cons = self.page.rsp_cons.load(Ordering::Acquire);
            let range = match output_chunk(cons, self.rsp_prod) {
                Ok(r) => r,
                Err(source) => {
                    let domid = self.domid;
                    return Err(self.fail(
                        XENSTORE_ERROR_RINGIDX,
                        RingError::RingIndex { domid, source },
                    ));
                }
            };
            let n = range.len().min(self.pending.len());
            if n == 0 {
                return Ok(moved);
            }
            SharedXenstorePage::write_bytes(&self.page.rsp, range.start, &self.pending[..n]);
            fence(Ordering::Release);
            self.rsp_prod = self.rsp_prod.wrapping_add(n as u32);
            self.page.rsp_prod.store(self.rsp_prod, Ordering::Release);
            self.pending.drain(..n);
            moved = true;
        }
    }

    /// Bytes of output waiting for room in the response ring.
    pub fn pending_output(&self) -> usize {
        self.pending.len()
    }
}
