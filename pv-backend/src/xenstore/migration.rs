//! Export and import of one domain's XenStore state for live migration, in the stream format of
//! Xen's `docs/designs/xenstore-migration.md` (version 1):
//!
//! - a header: `ident` `0x78656e73746f7265` ("xenstore"), `version` 1 and `flags` (bit 0: 0 for a
//!   little-endian stream), all three big-endian;
//! - records `type` (u32), `len` (u32), a body of `len` bytes, zero padding to 8 bytes; this module
//!   writes and reads `CONNECTION_DATA` (shared-ring connections only: `domid`, `tdomid`, `evtchn`,
//!   and the output not yet written to the guest), `WATCH_DATA`, `TRANSACTION_DATA` and `NODE_DATA`
//!   (committed nodes of the domain's home `/local/domain/<domid>`, parents first, then the nodes of
//!   pending transactions, with their `access` flags), and `END`. `GLOBAL_DATA`,
//!   `GLOBAL_QUOTA_DATA` and `DOMAIN_DATA` concern live update of the whole daemon and are refused.
//!
//! [`DomainState`] is the plain data; [`DomainState::decode`] checks the stream's framing (lengths,
//! padding, order, record types) and nothing is applied to a store until
//! [`XenStore::import_domain`](super::XenStore::import_domain) has checked its meaning too.

use xen_abi::DomId;
use xen_abi::xs_wire::{PermKind, XsPerm, check_abs_path};

/// `ident` of the stream header: "xenstore".
pub const XS_STREAM_IDENT: u64 = 0x7865_6e73_746f_7265;
/// The version written and accepted.
pub const XS_STREAM_VERSION: u32 = 1;
/// `END`.
pub const REC_END: u32 = 0;
/// `GLOBAL_DATA` (live update only).
pub const REC_GLOBAL_DATA: u32 = 1;
/// `CONNECTION_DATA`.
pub const REC_CONNECTION_DATA: u32 = 2;
/// `WATCH_DATA`.
pub const REC_WATCH_DATA: u32 = 3;
/// `TRANSACTION_DATA`.
pub const REC_TRANSACTION_DATA: u32 = 4;
/// `NODE_DATA`.
pub const REC_NODE_DATA: u32 = 5;
/// `conn-type` of a shared-ring connection.
pub const CONN_SHARED_RING: u16 = 0;
/// `access` bit of a transaction node: read.
pub const ACCESS_READ: u16 = 1;
/// `access` bit of a transaction node: written.
pub const ACCESS_WRITTEN: u16 = 2;
/// `flags` bit of a permission: stale, ignored when checking permissions.
pub const PERM_FLAG_STALE: u8 = 1;
/// `tdomid` when the domain has no target (`DOMID_INVALID`).
pub const DOMID_INVALID: DomId = 0x7ff4;

/// What is wrong with a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// The stream ends inside the header or a record.
    #[error("stream truncated at offset {offset}: {needed} more bytes needed")]
    Truncated {
        /// Where.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// Not a XenStore stream, or a version or flags this implementation does not read.
    #[error("bad stream header: {what}")]
    BadHeader {
        /// What.
        what: &'static str,
    },
    /// Padding or reserved bytes that are not zero.
    #[error("non-zero padding in the record at offset {offset}")]
    NonZeroPadding {
        /// The record.
        offset: usize,
    },
    /// A record type this implementation does not accept.
    #[error("record type {record_type} at offset {offset} is not accepted")]
    UnknownRecord {
        /// The type.
        record_type: u32,
        /// Where.
        offset: usize,
    },
    /// A record whose fields do not add up, or that refers to something not defined before it.
    #[error("malformed record at offset {offset}: {what}")]
    BadRecord {
        /// Where.
        offset: usize,
        /// What.
        what: String,
    },
    /// No `END` record, or data after it.
    #[error("the stream does not end with an END record")]
    NoEnd,
    /// State that a store cannot take (a node outside the domain's home, a missing parent...).
    #[error("invalid state: {what}")]
    Invalid {
        /// What.
        what: String,
    },
}

/// One permission of a node, with the stale flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermState {
    /// The permission.
    pub perm: XsPerm,
    /// The domain went away: the entry is ignored (XSA-322).
    pub stale: bool,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Its absolute path.
    pub path: String,
    /// Its value.
    pub value: Vec<u8>,
    /// Its permissions, the owner first; empty for a node a transaction deleted.
    pub perms: Vec<PermState>,
}

/// A node as a pending transaction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxNodeState {
    /// The node (no permissions: deleted in the transaction, or absent when read).
    pub node: NodeState,
    /// [`ACCESS_READ`] | [`ACCESS_WRITTEN`].
    pub access: u16,
}

/// A pending transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionState {
    /// Its id, as the guest knows it.
    pub tx_id: u32,
    /// The nodes it accessed.
    pub nodes: Vec<TxNodeState>,
}

/// A watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchState {
    /// The path as the guest gave it (relative or absolute, or special).
    pub path: String,
    /// The token.
    pub token: Vec<u8>,
}

/// One connection of the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionState {
    /// Non-zero; names the connection in the stream.
    pub conn_id: u32,
    /// The domain the connection speaks for.
    pub domid: DomId,
    /// The domain it acts for after `SET_TARGET`.
    pub target: Option<DomId>,
    /// Its event channel port.
    pub evtchn: u32,
    /// Encoded responses and events not yet written to the guest.
    pub pending_output: Vec<u8>,
    /// Its watches.
    pub watches: Vec<WatchState>,
    /// Its open transactions.
    pub transactions: Vec<TransactionState>,
}

/// One domain's XenStore state.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DomainState {
    /// Its connections.
    pub connections: Vec<ConnectionState>,
    /// The committed nodes of its home, parents first.
    pub nodes: Vec<NodeState>,
}

fn pad8(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
        v.push(0);
    }
}

fn record(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    pad8(out);
}

fn cstr(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

fn node_body(conn_id: u32, tx_id: u32, access: u16, node: &NodeState) -> Vec<u8> {
    let path = cstr(node.path.as_bytes());
    let mut b = Vec::new();
    b.extend_from_slice(&conn_id.to_le_bytes());
    b.extend_from_slice(&tx_id.to_le_bytes());
    b.extend_from_slice(&(path.len() as u16).to_le_bytes());
    b.extend_from_slice(&(node.value.len() as u16).to_le_bytes());
    b.extend_from_slice(&access.to_le_bytes());
    b.extend_from_slice(&(node.perms.len() as u16).to_le_bytes());
    for p in &node.perms {
        b.push(p.perm.kind.letter());
        b.push(if p.stale { PERM_FLAG_STALE } else { 0 });
        b.extend_from_slice(&p.perm.domid.to_le_bytes());
    }
    b.extend_from_slice(&path);
    b.extend_from_slice(&node.value);
    b
}

impl DomainState {
    /// The stream: header, records, `END`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&XS_STREAM_IDENT.to_be_bytes());
        out.extend_from_slice(&XS_STREAM_VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for c in &self.connections {
            let mut b = Vec::new();
            b.extend_from_slice(&c.conn_id.to_le_bytes());
            b.extend_from_slice(&CONN_SHARED_RING.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&c.domid.to_le_bytes());
            b.extend_from_slice(&c.target.unwrap_or(DOMID_INVALID).to_le_bytes());
            b.extend_from_slice(&c.evtchn.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&(c.pending_output.len() as u32).to_le_bytes());
            b.extend_from_slice(&c.pending_output);
            record(&mut out, REC_CONNECTION_DATA, &b);
        }
        for n in &self.nodes {
            record(&mut out, REC_NODE_DATA, &node_body(0, 0, 0, n));
        }
        for c in &self.connections {
            for w in &c.watches {
                let (p, t) = (cstr(w.path.as_bytes()), cstr(&w.token));
                let mut b = Vec::new();
                b.extend_from_slice(&c.conn_id.to_le_bytes());
                b.extend_from_slice(&(p.len() as u16).to_le_bytes());
                b.extend_from_slice(&(t.len() as u16).to_le_bytes());
                b.extend_from_slice(&p);
                b.extend_from_slice(&t);
                record(&mut out, REC_WATCH_DATA, &b);
            }
            for t in &c.transactions {
                let mut b = Vec::new();
                b.extend_from_slice(&c.conn_id.to_le_bytes());
                b.extend_from_slice(&t.tx_id.to_le_bytes());
                record(&mut out, REC_TRANSACTION_DATA, &b);
                for n in &t.nodes {
                    record(
                        &mut out,
                        REC_NODE_DATA,
                        &node_body(c.conn_id, t.tx_id, n.access, &n.node),
                    );
                }
            }
        }
        record(&mut out, REC_END, &[]);
        out
    }

    /// Parses and checks a stream. Every length is checked against the bytes there are, padding
    /// must be zero, records may only refer to connections and transactions defined before them, and
    /// nothing may follow `END`.
    pub fn decode(stream: &[u8]) -> Result<Self, MigrationError> {
        let mut r = Reader { b: stream, at: 0 };
        if r.u64_be()? != XS_STREAM_IDENT {
            return Err(MigrationError::BadHeader {
                what: "not a xenstore stream",
            });
        }
        if r.u32_be()? != XS_STREAM_VERSION {
            return Err(MigrationError::BadHeader {
                what: "version is not 1",
            });
        }
        if r.u32_be()? != 0 {
            return Err(MigrationError::BadHeader {
                what: "big-endian or reserved flags",
            });
        }
        let mut state = DomainState::default();
        loop {
            let offset = r.at;
            let ty = r.u32()?;
            let len = r.u32()? as usize;
            let body = r.take(len)?;
            let padded = len.div_ceil(8) * 8;
            let pad = r.take(padded - len)?;
            if pad.iter().any(|&b| b != 0) {
                return Err(MigrationError::NonZeroPadding { offset });
            }
            let mut b = Reader { b: body, at: 0 };
            let bad = |what: &str| MigrationError::BadRecord {
                offset,
                what: what.to_owned(),
            };
            match ty {
                REC_END => {
                    if len != 0 || r.at != stream.len() {
                        return Err(MigrationError::NoEnd);
                    }
                    return Ok(state);
                }
                REC_CONNECTION_DATA => {
                    let conn_id = b.u32()?;
                    if b.u16()? != CONN_SHARED_RING || b.u16()? != 0 {
                        return Err(bad("only shared-ring connections migrate"));
                    }
                    let domid = b.u16()?;
                    let tdomid = b.u16()?;
                    let evtchn = b.u32()?;
                    let in_len = b.u16()?;
                    let _resp_len = b.u16()?;
                    let out_len = b.u32()? as usize;
                    if in_len != 0 {
                        return Err(bad("unprocessed input is not accepted"));
                    }
                    let pending_output = b.take(out_len)?.to_vec();
                    b.end(offset)?;
                    if conn_id == 0 || state.connections.iter().any(|c| c.conn_id == conn_id) {
                        return Err(bad("conn-id 0 or defined twice"));
                    }
                    state.connections.push(ConnectionState {
                        conn_id,
                        domid,
                        target: (tdomid != DOMID_INVALID).then_some(tdomid),
                        evtchn,
                        pending_output,
                        watches: Vec::new(),
                        transactions: Vec::new(),
                    });
                }
                REC_WATCH_DATA => {
                    let conn_id = b.u32()?;
                    let plen = b.u16()? as usize;
                    let tlen = b.u16()? as usize;
                    let path = b.cstr(plen, offset)?;
                    let token = b.cstr(tlen, offset)?.to_vec();
                    b.end(offset)?;
                    let path = String::from_utf8(path.to_vec()).map_err(|_| bad("path"))?;
                    let c = state
                        .connections
                        .iter_mut()
                        .find(|c| c.conn_id == conn_id)
                        .ok_or_else(|| bad("watch of an unknown connection"))?;
                    c.watches.push(WatchState { path, token });
                }
                REC_TRANSACTION_DATA => {
                    let conn_id = b.u32()?;
                    let tx_id = b.u32()?;
                    b.end(offset)?;
                    let c = state
                        .connections
                        .iter_mut()
                        .find(|c| c.conn_id == conn_id)
                        .ok_or_else(|| bad("transaction of an unknown connection"))?;
                    if tx_id == 0 || c.transactions.iter().any(|t| t.tx_id == tx_id) {
                        return Err(bad("tx-id 0 or defined twice"));
                    }
                    c.transactions.push(TransactionState {
                        tx_id,
                        nodes: Vec::new(),
                    });
                }
                REC_NODE_DATA => {
                    let conn_id = b.u32()?;
                    let tx_id = b.u32()?;
                    let plen = b.u16()? as usize;
                    let vlen = b.u16()? as usize;
                    let access = b.u16()?;
                    let count = b.u16()? as usize;
                    let mut perms = Vec::with_capacity(count.min(64));
                    for _ in 0..count {
                        let letter = b.u8()?;
                        let flags = b.u8()?;
                        let domid = b.u16()?;
                        let kind = match letter {
                            b'n' => PermKind::None,
                            b'r' => PermKind::Read,
                            b'w' => PermKind::Write,
                            b'b' => PermKind::Both,
                            _ => return Err(bad("permission letter")),
                        };
                        if flags & !PERM_FLAG_STALE != 0 {
                            return Err(bad("permission flags"));
                        }
                        perms.push(PermState {
                            perm: XsPerm { kind, domid },
                            stale: flags & PERM_FLAG_STALE != 0,
                        });
                    }
                    let path = b.cstr(plen, offset)?;
                    let value = b.take(vlen)?.to_vec();
                    b.end(offset)?;
                    check_abs_path(path).map_err(|e| bad(&format!("node path: {e}")))?;
                    let node = NodeState {
                        path: String::from_utf8(path.to_vec()).map_err(|_| bad("path"))?,
                        value,
                        perms,
                    };
                    if conn_id == 0 {
                        if node.perms.is_empty() {
                            return Err(bad("a committed node without permissions"));
                        }
                        state.nodes.push(node);
                    } else {
                        if access & !(ACCESS_READ | ACCESS_WRITTEN) != 0 {
                            return Err(bad("access flags"));
                        }
                        let t = state
                            .connections
                            .iter_mut()
                            .find(|c| c.conn_id == conn_id)
                            .and_then(|c| c.transactions.iter_mut().find(|t| t.tx_id == tx_id))
                            .ok_or_else(|| bad("node of an unknown transaction"))?;
                        t.nodes.push(TxNodeState { node, access });
                    }
                }
                other => {
                    return Err(MigrationError::UnknownRecord {
                        record_type: other,
                        offset,
                    });
                }
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MigrationError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(MigrationError::Truncated {
                offset: self.at,
                needed: n - (self.b.len() - self.at),
            }),
        }
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], MigrationError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, MigrationError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, MigrationError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, MigrationError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u32_be(&mut self) -> Result<u32, MigrationError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64_be(&mut self) -> Result<u64, MigrationError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    /// A string of `len` bytes whose last is its NUL, the only NUL.
    fn cstr(&mut self, len: usize, offset: usize) -> Result<&'a [u8], MigrationError> {
        let s = self.take(len)?;
        match s.split_last() {
            Some((0, body)) if !body.contains(&0) => Ok(body),
            _ => Err(MigrationError::BadRecord {
                offset,
                what: "a string without its NUL terminator".into(),
            }),
        }
    }
    fn end(&self, offset: usize) -> Result<(), MigrationError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(MigrationError::BadRecord {
                offset,
                what: format!("{} bytes after the fields", self.b.len() - self.at),
            })
        }
    }
}
