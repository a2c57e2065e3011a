//! The store: nodes, permissions, generation counts, transactions, watches, domains and quotas, with
//! the rules of Xen 4.17's C xenstored (`tools/xenstore/xenstored_{core,transaction,watch,domain}.c`
//! and `docs/misc/xenstore.txt`).
//!
//! [`XenStore`] is transport-independent: a transport registers each client with
//! [`XenStore::connect`], feeds it requests ([`XenStore::handle_message`] or the typed methods such as
//! [`XenStore::read`]) and takes the responses and watch events queued for the client with
//! [`XenStore::take_output`], when the store calls the client's [`Notify`]. `XenStore` does no locking
//! and no I/O; a transport that serves clients from several threads puts it behind a mutex.
//!
//! Every walk over the tree is iterative and bounded by the number of nodes, so no path depth can
//! exhaust the stack.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use tracing::{debug, info, warn};
use xen_abi::DomId;
use xen_abi::xs_wire::{
    LOCAL_DOMAIN_PREFIX, MessageRef, OwnedMessage, PathKind, PermKind, Request,
    XS_SPECIAL_INTRODUCE_DOMAIN, XS_SPECIAL_RELEASE_DOMAIN, XsErrno, XsPerm, XsType, XsWireError,
    check_path, domain_path, is_child, local_domain_prefix_len, resolve_path_string,
};

use super::quota::Quotas;

/// `XS_PERM_READ` of C xenstored: the caller may read.
const PERM_READ: u8 = 1;
/// `XS_PERM_WRITE`: the caller may write.
const PERM_WRITE: u8 = 2;
/// `XS_PERM_OWNER`: the caller owns the node (may change its permissions).
const PERM_OWNER: u8 = 4;
/// Everything.
const PERM_ALL: u8 = PERM_READ | PERM_WRITE | PERM_OWNER;

/// `DOMID_FIRST_RESERVED` (`xen.h`): domids from here on are not domains.
const DOMID_FIRST_RESERVED: DomId = 0x7ff0;

/// The size of the record header C xenstored stores per node (`struct xs_tdb_record_hdr`).
const RECORD_HEADER: usize = 24;
/// The size of one permission in a C xenstored record (`struct xs_permissions`).
const RECORD_PERM: usize = 8;

/// Everything a store operation can fail with. [`StoreError::errno`] gives the `XS_ERROR` to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The request's payload or path is malformed.
    #[error("malformed request: {0}")]
    Wire(#[from] XsWireError),
    /// No such node (or transaction, or domain).
    #[error("{what} does not exist")]
    NoEntry {
        /// What was looked for.
        what: String,
    },
    /// The caller may not do this to this node.
    #[error("domain {domid} may not access {path}")]
    Access {
        /// The caller.
        domid: DomId,
        /// The node.
        path: String,
    },
    /// An operation reserved to privileged domains.
    #[error("domain {domid} is not privileged: {op} refused")]
    NotPrivileged {
        /// The caller.
        domid: DomId,
        /// The operation.
        op: &'static str,
    },
    /// An unprivileged domain tried to give a node away.
    #[error("domain {domid} may not change the owner of {path} to {new_owner}")]
    OwnerChange {
        /// The caller.
        domid: DomId,
        /// The node.
        path: String,
        /// The owner it asked for.
        new_owner: DomId,
    },
    /// A quota answered with `ENOSPC` (nodes, transactions, nodes per transaction, permissions, node
    /// size).
    #[error("domain {domid} is over its {quota} quota of {limit}")]
    Quota {
        /// The caller.
        domid: DomId,
        /// Which quota.
        quota: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The watch quota (`E2BIG`, as `do_watch`).
    #[error("domain {domid} already has {limit} watches")]
    TooManyWatches {
        /// The caller.
        domid: DomId,
        /// The quota.
        limit: usize,
    },
    /// The memory quota (`ENOMEM`).
    #[error("domain {domid} would use {needed} bytes, above its memory quota of {limit}")]
    Memory {
        /// The caller.
        domid: DomId,
        /// What it would use.
        needed: usize,
        /// The quota.
        limit: usize,
    },
    /// The watch exists already.
    #[error("watch on {path} exists already")]
    WatchExists {
        /// The watched path.
        path: String,
    },
    /// A transaction conflicted with another change and was discarded.
    #[error("transaction {tx_id} conflicts with a change to {path}")]
    Conflict {
        /// The transaction.
        tx_id: u32,
        /// The first node found changed.
        path: String,
    },
    /// A reply would not fit in 4096 bytes (`E2BIG`, as `send_reply`).
    #[error("reply of {len} bytes is above XENSTORE_PAYLOAD_MAX")]
    ReplyTooBig {
        /// Its length.
        len: usize,
    },
    /// A value that is not valid for this operation (`EINVAL`).
    #[error("invalid argument: {what}")]
    Invalid {
        /// What is wrong.
        what: String,
    },
    /// A message type that is not a request, or a feature this store lacks (`ENOSYS`).
    #[error("not supported: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// The connection id is not (or no longer) connected.
    #[error("connection {0:?} is not connected")]
    NoConnection(ConnId),
}

impl StoreError {
    /// The errno C xenstored answers for this error.
    pub fn errno(&self) -> XsErrno {
        match self {
            StoreError::Wire(e) => e.errno(),
            StoreError::NoEntry { .. } | StoreError::NoConnection(_) => XsErrno::ENOENT,
            StoreError::Access { .. } | StoreError::NotPrivileged { .. } => XsErrno::EACCES,
            StoreError::OwnerChange { .. } => XsErrno::EPERM,
            StoreError::Quota { .. } => XsErrno::ENOSPC,
            StoreError::TooManyWatches { .. } | StoreError::ReplyTooBig { .. } => XsErrno::E2BIG,
            StoreError::Memory { .. } => XsErrno::ENOMEM,
            StoreError::WatchExists { .. } => XsErrno::EEXIST,
            StoreError::Conflict { .. } => XsErrno::EAGAIN,
            StoreError::Invalid { .. } => XsErrno::EINVAL,
            StoreError::Unsupported { .. } => XsErrno::ENOSYS,
        }
    }
}

fn no_entry(what: impl Into<String>) -> StoreError {
    StoreError::NoEntry { what: what.into() }
}

/// Identifies one client of a [`XenStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the store tells a transport about one of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Responses or watch events are queued: call [`XenStore::take_output`].
    Output,
    /// The connection must be closed (it is over its output quota, or its domain was released).
    Close,
}

/// How a transport is told about its connection, called with the store borrowed: do not call back
/// into the store from it (wake a thread instead).
pub type Notify = Arc<dyn Fn(ConnEvent) + Send + Sync>;

/// One permission entry of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Perm {
    kind: PermKind,
    domid: DomId,
    /// `XS_PERM_IGNORE`: the domain went away after the entry was set (XSA-322).
    ignore: bool,
}

impl Perm {
    fn bits(&self) -> u8 {
        match self.kind {
            PermKind::Read => PERM_READ,
            PermKind::Write => PERM_WRITE,
            PermKind::Both => PERM_READ | PERM_WRITE,
            _ => 0,
        }
    }
}

impl From<XsPerm> for Perm {
    fn from(p: XsPerm) -> Self {
        Perm {
            kind: p.kind,
            domid: p.domid,
            ignore: false,
        }
    }
}

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    value: Vec<u8>,
    /// Never empty: the first entry is the owner and the default for other domains.
    perms: Vec<Perm>,
    /// Child names, in creation order (as C xenstored lists them).
    children: Vec<String>,
    /// The store generation of the last change (`node->generation`).
    generation: u64,
}

impl Node {
    fn record_size(&self) -> usize {
        RECORD_HEADER
            + RECORD_PERM * self.perms.len()
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }
}

fn owner_only(domid: DomId) -> Vec<Perm> {
    vec![Perm {
        kind: PermKind::None,
        domid,
        ignore: false,
    }]
}

/// What xenstored knows about a domain.
#[derive(Clone, Debug)]
struct Domain {
    /// The store generation when xenstored first heard of it: permissions set before it are
    /// someone else's (XSA-322).
    generation: u64,
    introduced: bool,
    gfn: i64,
    evtchn: u32,
    target: Option<DomId>,
    nodes: usize,
    memory: usize,
}

#[derive(Clone, Debug)]
struct Watch {
    /// Absolute, or special (`@...`).
    path: String,
    token: Vec<u8>,
    /// Events strip the caller's `/local/domain/<domid>/`.
    relative: bool,
}

impl Watch {
    fn memory(&self) -> usize {
        self.path.len() + self.token.len()
    }
}

/// A change to fire watches for.
#[derive(Clone, Debug)]
struct Change {
    path: String,
    /// Only watches on exactly this path fire (a node removed below the removed one).
    exact: bool,
    /// The permissions of the node when it changed (for a removal, before it).
    perms: Vec<Perm>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Transaction {
    /// Each node read or written, as it was when first touched (`None`: absent).
    accessed: HashMap<String, Option<Node>>,
    /// The transaction's own version of the nodes it changed (`None`: removed).
    changes: HashMap<String, Option<Node>>,
    events: Vec<Change>,
    /// Node and memory charges per domain, applied at commit.
    delta: HashMap<DomId, (i64, i64)>,
    /// Restored from a migration stream in a state that already conflicted: fails with `EAGAIN`.
    doomed: bool,
}

struct Conn {
    domid: DomId,
    watches: Vec<Watch>,
    transactions: HashMap<u32, Transaction>,
    next_tx: u32,
    out: VecDeque<OwnedMessage>,
    out_bytes: usize,
    queued_events: usize,
    /// Payloads of the watch events in `out`, to merge duplicates (XSA-326).
    queued_payloads: HashSet<Vec<u8>>,
    dropped_events: u64,
    dead: bool,
    notify: Option<Notify>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("domid", &self.domid)
            .field("watches", &self.watches.len())
            .field("transactions", &self.transactions.len())
            .field("queued", &self.out.len())
            .field("dead", &self.dead)
            .finish()
    }
}

/// Who is asking.
#[derive(Clone, Copy, Debug)]
struct Caller {
    domid: DomId,
    privileged: bool,
    target: Option<DomId>,
}

/// A XenStore: the tree, the domains it knows, and its clients.
#[derive(Debug)]
pub struct XenStore {
    nodes: HashMap<String, Node>,
    /// Permissions of `@introduceDomain` and `@releaseDomain`.
    special: HashMap<String, Vec<Perm>>,
    domains: HashMap<DomId, Domain>,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    next_gen: u64,
    quotas: Quotas,
}

impl Default for XenStore {
    fn default() -> Self {
        Self::new(Quotas::default())
    }
}

/// The parent of an absolute path other than `/`.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn charge_of(path: &str, node: &Node) -> i64 {
    (path.len() + node.record_size()) as i64
}

/// Whether the permission entry of `domid` on a node of generation `generation` still means that
/// domain: dom0, or a domain xenstored knew before the node last changed (`chk_domain_generation`).
fn entry_valid(domains: &HashMap<DomId, Domain>, domid: DomId, generation: u64) -> bool {
    domid == 0
        || domains
            .get(&domid)
            .is_some_and(|d| d.generation <= generation)
}

/// The owner of a node: stale owners are replaced by dom0, as `domain_adjust_node_perms`.
fn effective_owner(domains: &HashMap<DomId, Domain>, node: &Node) -> DomId {
    let owner = node.perms[0].domid;
    if entry_valid(domains, owner, node.generation) {
        owner
    } else {
        0
    }
}

/// `perm_for_conn`: the access `caller` has to a node with `perms`, last changed at `generation`.
fn perm_for(
    domains: &HashMap<DomId, Domain>,
    caller: &Caller,
    perms: &[Perm],
    generation: u64,
) -> u8 {
    let Some(first) = perms.first() else {
        return 0;
    };
    let owner = if entry_valid(domains, first.domid, generation) {
        first.domid
    } else {
        0
    };
    if caller.privileged || owner == caller.domid || caller.target == Some(owner) {
        return PERM_ALL;
    }
    for p in &perms[1..] {
        if p.ignore || !entry_valid(domains, p.domid, generation) {
            continue;
        }
        if p.domid == caller.domid || caller.target == Some(p.domid) {
            return p.bits();
        }
    }
    first.bits()
}

/// Marks entries of domains that went away as ignored and gives a node whose owner went away to dom0,
/// before the node is written with a new generation (`domain_adjust_node_perms`).
fn adjust_perms(domains: &HashMap<DomId, Domain>, node: &mut Node) {
    let generation = node.generation;
    if !entry_valid(domains, node.perms[0].domid, generation) {
        node.perms[0].domid = 0;
    }
    for p in node.perms.iter_mut().skip(1) {
        if !p.ignore && !entry_valid(domains, p.domid, generation) {
            p.ignore = true;
        }
    }
}

/// The tree as one operation sees it: the store itself, or a transaction's view of it.
struct Env<'s> {
    nodes: &'s mut HashMap<String, Node>,
    tx: Option<&'s mut Transaction>,
    domains: &'s HashMap<DomId, Domain>,
    quotas: &'s Quotas,
    caller: Caller,
    next_gen: &'s mut u64,
    changes: Vec<Change>,
    /// Node and memory charges per owner made by this operation.
    delta: Vec<(DomId, i64, i64)>,
}

impl Env<'_> {
    fn limited(&self) -> bool {
        !self.caller.privileged
    }

    fn base_gen(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.generation)
    }

    /// Looks a node up. In a transaction, the first access takes a snapshot of the node (or of its
    /// absence) that later reads see and the commit checks (`access_node`).
    fn get(&mut self, path: &str) -> Result<Option<&Node>, StoreError> {
        let limit = self.limited().then_some(self.quotas.transaction_nodes);
        let domid = self.caller.domid;
        let Env { nodes, tx, .. } = self;
        let Some(tx) = tx.as_deref_mut() else {
            return Ok(nodes.get(path));
        };
        if tx.changes.contains_key(path) {
            return Ok(tx.changes.get(path).and_then(Option::as_ref));
        }
        if !tx.accessed.contains_key(path) {
            if let Some(limit) = limit {
                if tx.accessed.len() >= limit {
                    return Err(StoreError::Quota {
                        domid,
                        quota: "transaction-nodes",
                        limit,
                    });
                }
            }
            tx.accessed
                .insert(path.to_owned(), nodes.get(path).cloned());
        }
        Ok(tx.accessed.get(path).and_then(Option::as_ref))
    }

    fn get_cloned(&mut self, path: &str) -> Result<Option<Node>, StoreError> {
        Ok(self.get(path)?.cloned())
    }

    fn perm(&self, node: &Node) -> u8 {
        perm_for(self.domains, &self.caller, &node.perms, node.generation)
    }

    fn owner(&self, node: &Node) -> DomId {
        effective_owner(self.domains, node)
    }

    fn charge(&mut self, path: &str, old: Option<&Node>, new: Option<&Node>) {
        if let Some(old) = old {
            let owner = self.owner(old);
            self.delta.push((owner, -1, -charge_of(path, old)));
        }
        if let Some(new) = new {
            let owner = self.owner(new);
            self.delta.push((owner, 1, charge_of(path, new)));
        }
    }

    /// Writes a node (the caller charged it); in the store, it gets a new generation.
    fn put(&mut self, path: &str, mut node: Node) {
        match self.tx.as_deref_mut() {
            Some(tx) => {
                tx.changes.insert(path.to_owned(), Some(node));
            }
            None => {
                node.generation = *self.next_gen;
                *self.next_gen += 1;
                self.nodes.insert(path.to_owned(), node);
            }
        }
    }

    fn del(&mut self, path: &str) {
        match self.tx.as_deref_mut() {
            Some(tx) => {
                tx.changes.insert(path.to_owned(), None);
            }
            None => {
                self.nodes.remove(path);
            }
        }
    }

    fn access_error(&self, path: &str) -> StoreError {
        StoreError::Access {
            domid: self.caller.domid,
            path: path.to_owned(),
        }
    }

    /// A node the caller may access with `perm`, or the error C xenstored's `get_node` gives:
    /// `EACCES` for a node it may not access, and for a missing node `ENOENT` only if it may access
    /// the nearest existing ancestor (`errno_from_parents`).
    fn get_checked(&mut self, path: &str, perm: u8) -> Result<Node, StoreError> {
        match self.get_cloned(path)? {
            Some(node) if self.perm(&node) & perm == perm => Ok(node),
            Some(_) => Err(self.access_error(path)),
            None => Err(self.error_from_parents(path, perm)?),
        }
    }

    fn error_from_parents(&mut self, path: &str, perm: u8) -> Result<StoreError, StoreError> {
        let mut cur = path;
        // Each step shortens the path; the root always exists.
        while cur != "/" {
            cur = parent(cur);
            if let Some(node) = self.get_cloned(cur)? {
                return Ok(if self.perm(&node) & perm == perm {
                    no_entry(path)
                } else {
                    self.access_error(path)
                });
            }
        }
        Ok(no_entry(path))
    }

    fn usage(&self, domid: DomId) -> (i64, i64) {
        let (mut nodes, mut mem) = self
            .domains
            .get(&domid)
            .map_or((0, 0), |d| (d.nodes as i64, d.memory as i64));
        if let Some(tx) = self.tx.as_deref() {
            if let Some((n, m)) = tx.delta.get(&domid) {
                nodes += n;
                mem += m;
            }
        }
        for (d, n, m) in &self.delta {
            if *d == domid {
                nodes += n;
                mem += m;
            }
        }
        (nodes, mem)
    }

    fn check_size(&self, node: &Node) -> Result<(), StoreError> {
        if self.limited() && node.record_size() > self.quotas.node_size {
            return Err(StoreError::Quota {
                domid: self.caller.domid,
                quota: "node-size",
                limit: self.quotas.node_size,
            });
        }
        Ok(())
    }

    /// Checks the caller's node and memory quotas after this operation's charges.
    fn check_usage(&self) -> Result<(), StoreError> {
        if !self.limited() {
            return Ok(());
        }
        let domid = self.caller.domid;
        let (nodes, mem) = self.usage(domid);
        let grew = |f: fn(&(DomId, i64, i64)) -> i64| {
            self.delta
                .iter()
                .filter(|d| d.0 == domid)
                .map(f)
                .sum::<i64>()
                > 0
        };
        if grew(|d| d.1) && nodes > self.quotas.nodes as i64 {
            return Err(StoreError::Quota {
                domid,
                quota: "nodes",
                limit: self.quotas.nodes,
            });
        }
        if grew(|d| d.2) && mem > self.quotas.memory as i64 {
            return Err(StoreError::Memory {
                domid,
                needed: mem.max(0) as usize,
                limit: self.quotas.memory,
            });
        }
        Ok(())
    }

    fn change(&mut self, path: &str, exact: bool, perms: Vec<Perm>, generation: u64) {
        self.changes.push(Change {
            path: path.to_owned(),
            exact,
            perms,
            generation,
        });
    }

    /// Creates `path` with `value` and any missing ancestors (`create_node`). The nearest existing
    /// ancestor must be writable.
    fn create(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut missing = vec![path.to_owned()];
        let mut cur = parent(path).to_owned();
        let anchor = loop {
            match self.get_cloned(&cur)? {
                Some(node) => break node,
                None => {
                    let next = parent(&cur).to_owned();
                    missing.push(std::mem::replace(&mut cur, next));
                }
            }
        };
        if self.perm(&anchor) & PERM_WRITE == 0 {
            return Err(self.access_error(path));
        }
        // Build every node first, check quotas, then write: nothing is half created.
        let mut writes: Vec<(String, Option<Node>, Node)> = Vec::with_capacity(missing.len() + 1);
        let mut parent_path = cur;
        let mut parent_old = Some(anchor.clone());
        let mut parent_node = anchor;
        adjust_perms(self.domains, &mut parent_node);
        for p in missing.iter().rev() {
            let mut perms = parent_node.perms.clone();
            if self.limited() {
                perms[0].domid = self.caller.domid;
            }
            let node = Node {
                value: if p == path {
                    value.to_vec()
                } else {
                    Vec::new()
                },
                perms,
                children: Vec::new(),
                // The generation it will get: every domain known now is older.
                generation: *self.next_gen,
            };
            parent_node.children.push(basename(p).to_owned());
            writes.push((parent_path, parent_old.take(), parent_node));
            parent_path = p.clone();
            parent_node = node;
        }
        writes.push((parent_path, None, parent_node));
        for (p, old, new) in &writes {
            self.check_size(new)?;
            self.charge(p, old.as_ref(), Some(new));
        }
        self.check_usage()?;
        let new_perms = writes.last().map(|w| w.2.perms.clone()).unwrap_or_default();
        for (p, _, new) in writes {
            self.put(&p, new);
        }
        let generation = self.base_gen(path).unwrap_or(0);
        self.change(path, false, new_perms, generation);
        Ok(())
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        match self.get_cloned(path)? {
            Some(old) => {
                if self.perm(&old) & PERM_WRITE == 0 {
                    return Err(self.access_error(path));
                }
                let mut node = old.clone();
                adjust_perms(self.domains, &mut node);
                node.value = value.to_vec();
                self.check_size(&node)?;
                self.charge(path, Some(&old), Some(&node));
                self.check_usage()?;
                let perms = node.perms.clone();
                self.put(path, node);
                let generation = self.base_gen(path).unwrap_or(0);
                self.change(path, false, perms, generation);
                Ok(())
            }
            None => match self.error_from_parents(path, PERM_WRITE)? {
                StoreError::NoEntry { .. } => self.create(path, value),
                e => Err(e),
            },
        }
    }

    fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        match self.get_checked(path, PERM_WRITE) {
            Ok(_) => Ok(()),
            Err(StoreError::NoEntry { .. }) => self.create(path, b""),
            Err(e) => Err(e),
        }
    }

    fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        if path == "/" {
            return Err(StoreError::Invalid {
                what: "the root cannot be removed".into(),
            });
        }
        let root = match self.get_checked(path, PERM_WRITE) {
            Ok(node) => node,
            Err(StoreError::NoEntry { .. }) => {
                // Removing a missing node is fine if its parent exists (`do_rm`).
                return if self.get(parent(path))?.is_some() {
                    Ok(())
                } else {
                    Err(no_entry(path))
                };
            }
            Err(e) => return Err(e),
        };
        // Collect the subtree without recursion.
        let mut doomed: Vec<(String, Node)> = Vec::new();
        let mut stack = vec![(path.to_owned(), root)];
        while let Some((p, node)) = stack.pop() {
            for child in &node.children {
                let cp = join(&p, child);
                if let Some(c) = self.get_cloned(&cp)? {
                    stack.push((cp, c));
                }
            }
            doomed.push((p, node));
        }
        let parent_path = parent(path).to_owned();
        let Some(old_parent) = self.get_cloned(&parent_path)? else {
            return Err(no_entry(parent_path));
        };
        let mut new_parent = old_parent.clone();
        adjust_perms(self.domains, &mut new_parent);
        let name = basename(path);
        new_parent.children.retain(|c| c != name);
        self.charge(&parent_path, Some(&old_parent), Some(&new_parent));
        self.put(&parent_path, new_parent);
        for (p, node) in &doomed {
            self.charge(p, Some(node), None);
            self.change(p, p != path, node.perms.clone(), node.generation);
            self.del(p);
        }
        Ok(())
    }

    fn set_perms(&mut self, path: &str, perms: Vec<Perm>) -> Result<(), StoreError> {
        let old = self.get_checked(path, PERM_WRITE | PERM_OWNER)?;
        if self.limited() {
            if perms.len() > self.quotas.perms_per_node {
                return Err(StoreError::Quota {
                    domid: self.caller.domid,
                    quota: "permissions",
                    limit: self.quotas.perms_per_node,
                });
            }
            let owner = self.owner(&old);
            if perms[0].domid != owner {
                return Err(StoreError::OwnerChange {
                    domid: self.caller.domid,
                    path: path.to_owned(),
                    new_owner: perms[0].domid,
                });
            }
        }
        let mut node = old.clone();
        node.perms = perms;
        self.check_size(&node)?;
        // The new owner is valid from this write on: charge it with a generation past every domain.
        let mut charged = node.clone();
        charged.generation = *self.next_gen;
        self.charge(path, Some(&old), Some(&charged));
        self.check_usage()?;
        self.put(path, node);
        let generation = self.base_gen(path).unwrap_or(0);
        self.change(path, false, old.perms, generation);
        Ok(())
    }
}

/// The result of a successful request: the payload of the reply.
type Reply = Vec<u8>;

fn ok_reply() -> Reply {
    b"OK\0".to_vec()
}

impl XenStore {
    /// A store holding `/`, `/tool` and `/tool/xenstored`, owned by dom0 and unreadable by others, as
    /// C xenstored's `setup_structure`.
    pub fn new(quotas: Quotas) -> Self {
        let mut store = Self {
            nodes: HashMap::new(),
            special: HashMap::new(),
            domains: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            next_gen: 1,
            quotas,
        };
        for (path, child) in [("/", Some("tool")), ("/tool", Some("xenstored"))] {
            store.nodes.insert(
                path.to_owned(),
                Node {
                    value: Vec::new(),
                    perms: owner_only(0),
                    children: child.map(|c| vec![c.to_owned()]).unwrap_or_default(),
                    generation: 0,
                },
            );
        }
        store.nodes.insert(
            "/tool/xenstored".to_owned(),
            Node {
                value: Vec::new(),
                perms: owner_only(0),
                children: Vec::new(),
                generation: 0,
            },
        );
        for special in [XS_SPECIAL_INTRODUCE_DOMAIN, XS_SPECIAL_RELEASE_DOMAIN] {
            store.special.insert(special.to_owned(), owner_only(0));
        }
        store
    }

    /// The quotas in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Changes the quotas; they apply from the next request on.
    pub fn set_quotas(&mut self, quotas: Quotas) {
        self.quotas = quotas;
    }

    /// The number of nodes in the tree.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes and memory charged to `domid`, if the store knows the domain.
    pub fn domain_usage(&self, domid: DomId) -> Option<(usize, usize)> {
        self.domains.get(&domid).map(|d| (d.nodes, d.memory))
    }

    fn ensure_domain(&mut self, domid: DomId) {
        if domid == 0 {
            return;
        }
        if !self.domains.contains_key(&domid) {
            let generation = self.next_gen;
            self.next_gen += 1;
            self.domains.insert(
                domid,
                Domain {
                    generation,
                    introduced: false,
                    gfn: 0,
                    evtchn: 0,
                    target: None,
                    nodes: 0,
                    memory: 0,
                },
            );
        }
    }

    /// Registers a client speaking for `domid`. Domain 0 is privileged (every Unix socket client is
    /// dom0); others get their domain's quotas and permissions. `notify` is called when output is
    /// queued for the client or when it must be closed.
    pub fn connect(&mut self, domid: DomId, notify: Option<Notify>) -> ConnId {
        self.ensure_domain(domid);
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                watches: Vec::new(),
                transactions: HashMap::new(),
                next_tx: 1,
                out: VecDeque::new(),
                out_bytes: 0,
                queued_events: 0,
                queued_payloads: HashSet::new(),
                dropped_events: 0,
                dead: false,
                notify,
            },
        );
        debug!(conn = id.0, domid, "connected");
        id
    }

    /// Forgets a client: its watches and open transactions go with it.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            let mem: usize = c.watches.iter().map(Watch::memory).sum();
            if let Some(d) = self.domains.get_mut(&c.domid) {
                d.memory = d.memory.saturating_sub(mem);
            }
            debug!(conn = conn.0, domid = c.domid, "disconnected");
        }
    }

    /// Whether the client was told to close ([`ConnEvent::Close`]) or is gone.
    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_none_or(|c| c.dead)
    }

    /// Whether the transport may read the client's next request: an unprivileged client with
    /// [`Quotas::outstanding`] responses or events still queued is not read until it consumes them
    /// (`domain_can_read`).
    pub fn can_accept_request(&self, conn: ConnId) -> bool {
        match self.conns.get(&conn) {
            Some(c) => !c.dead && (c.domid == 0 || c.out.len() < self.quotas.outstanding),
            None => false,
        }
    }

    /// Takes everything queued for the client, in order.
    pub fn take_output(&mut self, conn: ConnId) -> Vec<OwnedMessage> {
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.out_bytes = 0;
                c.queued_events = 0;
                c.queued_payloads.clear();
                c.out.drain(..).collect()
            }
            None => Vec::new(),
        }
    }

    /// The number of watch events dropped for the client because too many were queued.
    pub fn dropped_events(&self, conn: ConnId) -> u64 {
        self.conns.get(&conn).map_or(0, |c| c.dropped_events)
    }

    fn caller(&self, conn: ConnId) -> Result<Caller, StoreError> {
        let c = self
            .conns
            .get(&conn)
            .ok_or(StoreError::NoConnection(conn))?;
        Ok(self.caller_for(c.domid))
    }

    fn caller_for(&self, domid: DomId) -> Caller {
        Caller {
            domid,
            privileged: domid == 0,
            target: self.domains.get(&domid).and_then(|d| d.target),
        }
    }

    fn resolve(&self, caller: &Caller, path: &[u8]) -> Result<String, StoreError> {
        let resolved = resolve_path_string(path, caller.domid)?;
        if !caller.privileged {
            let counted = resolved.len() - local_domain_prefix_len(resolved.as_bytes());
            if counted > self.quotas.path_len {
                return Err(StoreError::Invalid {
                    what: format!(
                        "path of {counted} bytes is above the path-max quota {}",
                        self.quotas.path_len
                    ),
                });
            }
        }
        Ok(resolved)
    }

    /// Runs a tree operation in the store (`tx_id` 0) or in a transaction of the caller.
    fn with_env<R>(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        op: impl FnOnce(&mut Env<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let caller = self.caller(conn)?;
        let mut tx = if tx_id == 0 {
            None
        } else {
            let c = self
                .conns
                .get_mut(&conn)
                .ok_or(StoreError::NoConnection(conn))?;
            Some(
                c.transactions
                    .remove(&tx_id)
                    .ok_or_else(|| no_entry(format!("transaction {tx_id}")))?,
            )
        };
        let mut env = Env {
            nodes: &mut self.nodes,
            tx: tx.as_mut(),
            domains: &self.domains,
            quotas: &self.quotas,
            caller,
            next_gen: &mut self.next_gen,
            changes: Vec::new(),
            delta: Vec::new(),
        };
        let result = op(&mut env);
        let Env { changes, delta, .. } = env;
        match tx {
            Some(mut tx) => {
                if result.is_ok() {
                    for (d, n, m) in delta {
                        let e = tx.delta.entry(d).or_default();
                        e.0 += n;
                        e.1 += m;
                    }
                    tx.events.extend(changes);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.transactions.insert(tx_id, tx);
                }
            }
            None => {
                if result.is_ok() {
                    self.apply_delta(delta);
                    self.fire(changes);
                }
            }
        }
        result
    }

    fn apply_delta(&mut self, delta: impl IntoIterator<Item = (DomId, i64, i64)>) {
        for (domid, n, m) in delta {
            if let Some(d) = self.domains.get_mut(&domid) {
                d.nodes = (d.nodes as i64 + n).max(0) as usize;
                d.memory = (d.memory as i64 + m).max(0) as usize;
            }
        }
    }

    /// `READ`: the value of a node.
    pub fn read(&mut self, conn: ConnId, tx_id: u32, path: &[u8]) -> Result<Vec<u8>, StoreError> {
        let path = self.resolve(&self.caller(conn)?, path)?;
        self.with_env(conn, tx_id, |env| {
            Ok(env.get_checked(&path, PERM_READ)?.value)
        })
    }

    /// `WRITE`: sets the value of a node, creating it and its missing ancestors.
    pub fn write(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        path: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.resolve(&self.caller(conn)?, path)?;
        self.with_env(conn, tx_id, |env| env.write(&path, value))
    }

    /// `MKDIR`: creates a node with an empty value unless it exists.
    pub fn mkdir(&mut self, conn: ConnId, tx_id: u32, path: &[u8]) -> Result<(), StoreError> {
        let path = self.resolve(&self.caller(conn)?, path)?;
        self.with_env(conn, tx_id, |env| env.mkdir(&path))
    }

    /// `RM`: removes a node and everything below it.
    pub fn rm(&mut self, conn: ConnId, tx_id: u32, path: &[u8]) -> Result<(), StoreError> {
        let path = self.resolve(&self.caller(conn)?, path)?;
        self.with_env(conn, tx_id, |env| env.rm(&path))
    }

    /// `DIRECTORY`: the names of a node's children.
    pub fn directory(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        path: &[u8],
    ) -> Result<Vec<String>, StoreError> {
        let path = self.resolve(&self.caller(conn)?, path)?;
        self.with_env(conn, tx_id, |env| {
            Ok(env.get_checked(&path, PERM_READ)?.children)
        })
    }

    /// `DIRECTORY_PART`: the reply payload, `<generation>\0` then the NUL-terminated child names from
    /// byte `offset` of the list on, as many as fit, and a final empty name when the list ends.
    pub fn directory_part(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        path: &[u8],
        offset: u32,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.resolve(&self.caller(conn)?, path)?;
        let node = self.with_env(conn, tx_id, |env| env.get_checked(&path, PERM_READ))?;
        let mut list = Vec::new();
        for c in &node.children {
            list.extend_from_slice(c.as_bytes());
            list.push(0);
        }
        let mut out = format!("{}", node.generation).into_bytes();
        out.push(0);
        let offset = offset as usize;
        if offset >= list.len() {
            out.push(0);
            return Ok(out);
        }
        let max = xen_abi::xs_wire::XENSTORE_PAYLOAD_MAX as usize - out.len() - 1;
        let mut end = offset;
        // Whole names only: advance name by name while they fit.
        while end < list.len() {
            let len = list[end..].iter().position(|&b| b == 0).unwrap_or(0) + 1;
            if end + len - offset > max {
                break;
            }
            end += len;
        }
        out.extend_from_slice(&list[offset..end]);
        if end == list.len() {
            out.push(0);
        }
        Ok(out)
    }

    /// `GET_PERMS`: the permissions of a node, the owner first (entries of domains that went away
    /// are not shown).
    pub fn get_perms(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        path: &[u8],
    ) -> Result<Vec<XsPerm>, StoreError> {
        let caller = self.caller(conn)?;
        let perms = if path.first() == Some(&b'@') {
            check_path(path, true)?;
            let name = String::from_utf8_lossy(path).into_owned();
            self.special
                .get(&name)
                .cloned()
                .ok_or_else(|| no_entry(name))?
        } else {
            let path = self.resolve(&caller, path)?;
            let mut node = self.with_env(conn, tx_id, |env| env.get_checked(&path, PERM_READ))?;
            adjust_perms(&self.domains, &mut node);
            node.perms
        };
        Ok(perms
            .iter()
            .filter(|p| !p.ignore)
            .map(|p| XsPerm {
                kind: p.kind,
                domid: p.domid,
            })
            .collect())
    }

    /// `SET_PERMS`: the caller must own the node (or be privileged); unprivileged callers may not
    /// change the owner.
    pub fn set_perms(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        path: &[u8],
        perms: &[XsPerm],
    ) -> Result<(), StoreError> {
        let caller = self.caller(conn)?;
        if perms.is_empty() {
            return Err(StoreError::Invalid {
                what: "no permissions".into(),
            });
        }
        // Domains named here exist from now on (`domain_alloc_permrefs`).
        for p in perms {
            if p.domid >= DOMID_FIRST_RESERVED {
                return Err(StoreError::Invalid {
                    what: format!("domid {} is reserved", p.domid),
                });
            }
        }
        if caller.privileged {
            for p in perms {
                self.ensure_domain(p.domid);
            }
        }
        let new: Vec<Perm> = perms.iter().copied().map(Perm::from).collect();
        if path.first() == Some(&b'@') {
            check_path(path, true)?;
            let name = String::from_utf8_lossy(path).into_owned();
            let old = self.special.get(&name).ok_or_else(|| no_entry(&name))?;
            let bits = perm_for(&self.domains, &caller, old, u64::MAX);
            if bits & (PERM_WRITE | PERM_OWNER) != PERM_WRITE | PERM_OWNER {
                return Err(StoreError::Access {
                    domid: caller.domid,
                    path: name,
                });
            }
            self.special.insert(name, new);
            return Ok(());
        }
        let path = self.resolve(&caller, path)?;
        self.with_env(conn, tx_id, |env| env.set_perms(&path, new))
    }

    /// `WATCH`: adds a watch and queues its initial event (after the caller's reply, when called
    /// through [`XenStore::handle_message`]).
    pub fn watch(&mut self, conn: ConnId, path: &[u8], token: &[u8]) -> Result<(), StoreError> {
        let ev = OwnedMessage::watch_event(path, token)?;
        self.add_watch(conn, path, token)?;
        self.queue_event(conn, ev);
        Ok(())
    }

    fn add_watch(&mut self, conn: ConnId, path: &[u8], token: &[u8]) -> Result<(), StoreError> {
        let caller = self.caller(conn)?;
        let (resolved, relative) = match check_path(path, true)? {
            PathKind::Special => (String::from_utf8_lossy(path).into_owned(), false),
            kind => (self.resolve(&caller, path)?, kind == PathKind::Relative),
        };
        if token.contains(&0) {
            return Err(StoreError::Invalid {
                what: "token with a NUL".into(),
            });
        }
        let watch = Watch {
            path: resolved,
            token: token.to_vec(),
            relative,
        };
        let domid = caller.domid;
        let c = self
            .conns
            .get(&conn)
            .ok_or(StoreError::NoConnection(conn))?;
        if c.watches
            .iter()
            .any(|w| w.path == watch.path && w.token == watch.token)
        {
            return Err(StoreError::WatchExists { path: watch.path });
        }
        if !caller.privileged {
            let count: usize = self
                .conns
                .values()
                .filter(|c| c.domid == domid)
                .map(|c| c.watches.len())
                .sum();
            if count >= self.quotas.watches {
                return Err(StoreError::TooManyWatches {
                    domid,
                    limit: self.quotas.watches,
                });
            }
            let mem = self.domains.get(&domid).map_or(0, |d| d.memory) + watch.memory();
            if mem > self.quotas.memory {
                return Err(StoreError::Memory {
                    domid,
                    needed: mem,
                    limit: self.quotas.memory,
                });
            }
        }
        if let Some(d) = self.domains.get_mut(&domid) {
            d.memory += watch.memory();
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.watches.push(watch);
        }
        Ok(())
    }

    /// `UNWATCH`: removes a watch.
    pub fn unwatch(&mut self, conn: ConnId, path: &[u8], token: &[u8]) -> Result<(), StoreError> {
        let caller = self.caller(conn)?;
        let resolved = match check_path(path, true)? {
            PathKind::Special => String::from_utf8_lossy(path).into_owned(),
            _ => self.resolve(&caller, path)?,
        };
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StoreError::NoConnection(conn))?;
        let Some(i) = c
            .watches
            .iter()
            .position(|w| w.path == resolved && w.token == token)
        else {
            return Err(no_entry(format!("watch on {resolved}")));
        };
        let w = c.watches.remove(i);
        if let Some(d) = self.domains.get_mut(&caller.domid) {
            d.memory = d.memory.saturating_sub(w.memory());
        }
        Ok(())
    }

    /// `RESET_WATCHES`: drops every watch and transaction of the client.
    pub fn reset_watches(&mut self, conn: ConnId) -> Result<(), StoreError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StoreError::NoConnection(conn))?;
        let mem: usize = c.watches.iter().map(Watch::memory).sum();
        c.watches.clear();
        c.transactions.clear();
        let domid = c.domid;
        if let Some(d) = self.domains.get_mut(&domid) {
            d.memory = d.memory.saturating_sub(mem);
        }
        Ok(())
    }

    /// `TRANSACTION_START`: a new transaction id.
    pub fn transaction_start(&mut self, conn: ConnId) -> Result<u32, StoreError> {
        let caller = self.caller(conn)?;
        let limit = self.quotas.transactions;
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StoreError::NoConnection(conn))?;
        if !caller.privileged && c.transactions.len() >= limit {
            return Err(StoreError::Quota {
                domid: caller.domid,
                quota: "transactions",
                limit,
            });
        }
        // Ids are not reused while in use; 0 means "no transaction".
        let mut id = c.next_tx;
        while id == 0 || c.transactions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        c.transactions.insert(id, Transaction::default());
        Ok(id)
    }

    /// `TRANSACTION_END`: commits (`commit`) or aborts a transaction. A commit fails with `EAGAIN`
    /// ([`StoreError::Conflict`]) when a node the transaction accessed changed meanwhile; the
    /// transaction is gone either way.
    pub fn transaction_end(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        commit: bool,
    ) -> Result<(), StoreError> {
        let caller = self.caller(conn)?;
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StoreError::NoConnection(conn))?;
        let tx = c
            .transactions
            .remove(&tx_id)
            .ok_or_else(|| no_entry(format!("transaction {tx_id}")))?;
        if !commit {
            return Ok(());
        }
        if tx.doomed {
            return Err(StoreError::Conflict {
                tx_id,
                path: "(restored)".into(),
            });
        }
        for (path, seen) in &tx.accessed {
            if self.nodes.get(path).map(|n| n.generation) != seen.as_ref().map(|n| n.generation) {
                return Err(StoreError::Conflict {
                    tx_id,
                    path: path.clone(),
                });
            }
        }
        if !caller.privileged {
            if let (Some((n, m)), Some(d)) =
                (tx.delta.get(&caller.domid), self.domains.get(&caller.domid))
            {
                if *n > 0 && d.nodes as i64 + n > self.quotas.nodes as i64 {
                    return Err(StoreError::Quota {
                        domid: caller.domid,
                        quota: "nodes",
                        limit: self.quotas.nodes,
                    });
                }
                if *m > 0 && d.memory as i64 + m > self.quotas.memory as i64 {
                    return Err(StoreError::Memory {
                        domid: caller.domid,
                        needed: (d.memory as i64 + m) as usize,
                        limit: self.quotas.memory,
                    });
                }
            }
        }
        let Transaction {
            changes,
            mut events,
            delta,
            ..
        } = tx;
        for (path, node) in changes {
            match node {
                Some(mut node) => {
                    node.generation = self.next_gen;
                    self.next_gen += 1;
                    self.nodes.insert(path, node);
                }
                None => {
                    self.nodes.remove(&path);
                }
            }
        }
        for e in &mut events {
            if let Some(n) = self.nodes.get(&e.path) {
                e.generation = n.generation;
            }
        }
        self.apply_delta(delta.into_iter().map(|(d, (n, m))| (d, n, m)));
        self.fire(events);
        Ok(())
    }

    /// Queues a watch event for a client, merging it with an identical event still queued and
    /// dropping it when an unprivileged client already has [`Quotas::pending_events`] queued
    /// (XSA-326).
    fn queue_event(&mut self, conn: ConnId, ev: OwnedMessage) {
        let limit = self.quotas.pending_events;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.queued_payloads.contains(&ev.payload) {
            return;
        }
        if c.domid != 0 && c.queued_events >= limit {
            c.dropped_events += 1;
            return;
        }
        c.queued_events += 1;
        c.queued_payloads.insert(ev.payload.clone());
        Self::push(c, ev, self.quotas.output_bytes);
    }

    fn push(c: &mut Conn, msg: OwnedMessage, max_bytes: usize) {
        if c.dead {
            return;
        }
        c.out_bytes += msg.encoded_len();
        c.out.push_back(msg);
        if c.out_bytes > max_bytes {
            warn!(
                domid = c.domid,
                bytes = c.out_bytes,
                "client does not read its output: closing it"
            );
            c.dead = true;
            c.out.clear();
            if let Some(n) = &c.notify {
                n(ConnEvent::Close);
            }
        } else if let Some(n) = &c.notify {
            n(ConnEvent::Output);
        }
    }

    /// Queues the events of `changes` for every watch they fire, to clients allowed to see them.
    fn fire(&mut self, changes: Vec<Change>) {
        let mut queued: Vec<(ConnId, OwnedMessage)> = Vec::new();
        for change in &changes {
            let special = change.path.starts_with('@');
            for (id, c) in &self.conns {
                if c.watches.is_empty() || c.dead {
                    continue;
                }
                let caller = self.caller_for(c.domid);
                for w in &c.watches {
                    // As `fire_watches` in 4.17: a removal fires each removed node exactly, so a
                    // watch below a removed node fires for its own path if that node existed.
                    let fires = if change.exact {
                        w.path == change.path
                    } else {
                        is_child(change.path.as_bytes(), w.path.as_bytes())
                    };
                    if !fires {
                        continue;
                    }
                    let event_path = &change.path;
                    let allowed = if special {
                        self.special.get(&change.path).is_some_and(|p| {
                            perm_for(&self.domains, &caller, p, u64::MAX) & PERM_READ != 0
                        })
                    } else {
                        self.watch_permitted(&caller, event_path, change)
                    };
                    if !allowed {
                        continue;
                    }
                    let shown = if w.relative {
                        let home = format!("{}/", domain_path(c.domid));
                        event_path.strip_prefix(&home).unwrap_or(event_path)
                    } else {
                        event_path.as_str()
                    };
                    match OwnedMessage::watch_event(shown.as_bytes(), &w.token) {
                        Ok(ev) => queued.push((*id, ev)),
                        Err(e) => debug!(%e, "watch event does not fit a message: dropped"),
                    }
                }
            }
        }
        for (id, ev) in queued {
            self.queue_event(id, ev);
        }
    }

    /// `watch_permitted` (XSA-115): a client sees an event for a node it can read, as it was when it
    /// changed or as it is now, or whose parent it can read.
    fn watch_permitted(&self, caller: &Caller, path: &str, change: &Change) -> bool {
        if caller.privileged
            || perm_for(&self.domains, caller, &change.perms, change.generation) & PERM_READ != 0
        {
            return true;
        }
        let readable = |p: &str| {
            self.nodes.get(p).is_some_and(|n| {
                perm_for(&self.domains, caller, &n.perms, n.generation) & PERM_READ != 0
            })
        };
        readable(path) || (path != "/" && readable(parent(path)))
    }

    fn fire_special(&mut self, name: &str) {
        let perms = self.special.get(name).cloned().unwrap_or_default();
        self.fire(vec![Change {
            path: name.to_owned(),
            exact: false,
            perms,
            generation: u64::MAX,
        }]);
    }

    fn check_domid(domid: DomId) -> Result<(), StoreError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(StoreError::Invalid {
                what: format!("domid {domid} is not a guest domain"),
            });
        }
        Ok(())
    }

    fn require_privilege(&self, conn: ConnId, op: &'static str) -> Result<(), StoreError> {
        let caller = self.caller(conn)?;
        if caller.privileged {
            Ok(())
        } else {
            Err(StoreError::NotPrivileged {
                domid: caller.domid,
                op,
            })
        }
    }

    /// `INTRODUCE`: xenstored starts talking to `domid` through the page at `gfn` and the event
    /// channel `evtchn`; fires `@introduceDomain`. (The ring transport maps the page; a store alone
    /// records the domain.)
    pub fn introduce(
        &mut self,
        conn: ConnId,
        domid: DomId,
        gfn: i64,
        evtchn: u32,
    ) -> Result<(), StoreError> {
        self.require_privilege(conn, "INTRODUCE")?;
        Self::check_domid(domid)?;
        if evtchn == 0 {
            return Err(StoreError::Invalid {
                what: "event channel 0".into(),
            });
        }
        self.ensure_domain(domid);
        let Some(d) = self.domains.get_mut(&domid) else {
            return Err(no_entry(format!("domain {domid}")));
        };
        let first = !d.introduced;
        d.introduced = true;
        d.gfn = gfn;
        d.evtchn = evtchn;
        if first {
            info!(domid, gfn, evtchn, "domain introduced");
            self.fire_special(XS_SPECIAL_INTRODUCE_DOMAIN);
        }
        Ok(())
    }

    fn introduced(&self, domid: DomId) -> Result<(), StoreError> {
        Self::check_domid(domid)?;
        match self.domains.get(&domid) {
            Some(d) if d.introduced => Ok(()),
            _ => Err(no_entry(format!("domain {domid}"))),
        }
    }

    /// `RELEASE`: xenstored forgets `domid`: its connections are closed, its watches and
    /// transactions dropped, and permissions naming it no longer apply to a later domain with the
    /// same id (XSA-322). Fires `@releaseDomain`.
    pub fn release(&mut self, conn: ConnId, domid: DomId) -> Result<(), StoreError> {
        self.require_privilege(conn, "RELEASE")?;
        self.introduced(domid)?;
        self.destroy_domain(domid);
        Ok(())
    }

    /// Forgets `domid` as [`XenStore::release`] does, for a VMM that saw the domain die.
    pub fn destroy_domain(&mut self, domid: DomId) {
        if domid == 0 {
            return;
        }
        let closing: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for id in closing {
            if let Some(c) = self.conns.get_mut(&id) {
                c.dead = true;
                c.out.clear();
                if let Some(n) = &c.notify {
                    n(ConnEvent::Close);
                }
            }
            self.disconnect(id);
        }
        for d in self.domains.values_mut() {
            if d.target == Some(domid) {
                d.target = None;
            }
        }
        if self.domains.remove(&domid).is_some() {
            info!(domid, "domain released");
        }
        self.fire_special(XS_SPECIAL_RELEASE_DOMAIN);
    }

    /// `IS_DOMAIN_INTRODUCED`: whether xenstored talks to `domid` (dom0 always).
    pub fn is_domain_introduced(&self, conn: ConnId, domid: DomId) -> Result<bool, StoreError> {
        self.require_privilege(conn, "IS_DOMAIN_INTRODUCED")?;
        Ok(domid == 0 || self.domains.get(&domid).is_some_and(|d| d.introduced))
    }

    /// `GET_DOMAIN_PATH`: `/local/domain/<domid>`.
    pub fn get_domain_path(&self, domid: DomId) -> String {
        domain_path(domid)
    }

    /// `RESUME`: the domain resumed after a suspension; nothing to undo in this store beyond
    /// checking it is introduced.
    pub fn resume(&mut self, conn: ConnId, domid: DomId) -> Result<(), StoreError> {
        self.require_privilege(conn, "RESUME")?;
        self.introduced(domid)
    }

    /// `SET_TARGET`: `domid` (a device model) gets the rights of `target` over `target`'s nodes.
    pub fn set_target(
        &mut self,
        conn: ConnId,
        domid: DomId,
        target: DomId,
    ) -> Result<(), StoreError> {
        self.require_privilege(conn, "SET_TARGET")?;
        self.introduced(domid)?;
        self.introduced(target)?;
        if let Some(d) = self.domains.get_mut(&domid) {
            d.target = Some(target);
        }
        Ok(())
    }

    /// `CONTROL`: `help`, `print <text>`, `check`, `log`, `quota [<name> <value>|<domid>]`,
    /// `memreport`. Others get `EINVAL`, as in C xenstored.
    pub fn control(
        &mut self,
        conn: ConnId,
        command: &[u8],
        parameters: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.require_privilege(conn, "CONTROL")?;
        let args: Vec<String> = xen_abi::xs_wire::Strings::new(parameters)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let text = match command {
            b"help" => "Available commands:\n\
                        check\n\
                        help\n\
                        log [on|off|+<switch>|-<switch>]\n\
                        memreport\n\
                        print <string>\n\
                        quota [set <name> <val>|<domid>]\n"
                .to_owned(),
            b"print" => {
                info!(message = %args.join(" "), "xenstore-control print");
                return Ok(ok_reply());
            }
            b"check" => {
                self.check_tree()?;
                return Ok(ok_reply());
            }
            b"log" => return Ok(ok_reply()),
            b"memreport" => {
                let mut s = format!(
                    "nodes: {}\nconnections: {}\n",
                    self.nodes.len(),
                    self.conns.len()
                );
                let mut ids: Vec<_> = self.domains.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    let d = &self.domains[&id];
                    let _ = writeln!(s, "domain {id}: {} nodes, {} bytes", d.nodes, d.memory);
                }
                s
            }
            b"quota" => match args.as_slice() {
                [] => self.quotas.to_string(),
                [set, name, value] if set == "set" => {
                    let v = value.parse::<usize>().map_err(|_| StoreError::Invalid {
                        what: format!("quota value {value:?}"),
                    })?;
                    self.quotas.set(name, v).map_err(|e| StoreError::Invalid {
                        what: e.to_string(),
                    })?;
                    return Ok(ok_reply());
                }
                [domid] => {
                    let id = domid.parse::<DomId>().map_err(|_| StoreError::Invalid {
                        what: format!("domid {domid:?}"),
                    })?;
                    let d = self
                        .domains
                        .get(&id)
                        .ok_or_else(|| no_entry(format!("domain {id}")))?;
                    let watches: usize = self
                        .conns
                        .values()
                        .filter(|c| c.domid == id)
                        .map(|c| c.watches.len())
                        .sum();
                    format!(
                        "nodes: {}\nwatches: {watches}\nmemory: {}\n",
                        d.nodes, d.memory
                    )
                }
                _ => {
                    return Err(StoreError::Invalid {
                        what: "quota arguments".into(),
                    });
                }
            },
            other => {
                return Err(StoreError::Invalid {
                    what: format!(
                        "unknown control command {:?}",
                        String::from_utf8_lossy(other)
                    ),
                });
            }
        };
        let mut out = text.into_bytes();
        out.push(0);
        Ok(out)
    }

    /// Checks that every child a node lists exists and every node but `/` is listed by its parent
    /// (`xenstore-control check`).
    pub fn check_tree(&self) -> Result<(), StoreError> {
        for (path, node) in &self.nodes {
            for c in &node.children {
                let cp = join(path, c);
                if !self.nodes.contains_key(&cp) {
                    return Err(StoreError::Invalid {
                        what: format!("{path} lists a missing child {c}"),
                    });
                }
            }
            if path != "/" {
                let listed = self
                    .nodes
                    .get(parent(path))
                    .is_some_and(|p| p.children.iter().any(|c| c == basename(path)));
                if !listed {
                    return Err(StoreError::Invalid {
                        what: format!("{path} is not listed by its parent"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Answers one request from a client: its reply (and, for `WATCH`, the initial event) is queued
    /// for [`XenStore::take_output`].
    pub fn handle_message(&mut self, conn: ConnId, msg: &MessageRef<'_>) {
        let result = self.dispatch(conn, msg);
        let reply = match result {
            Ok(payload) if payload.len() > xen_abi::xs_wire::XENSTORE_PAYLOAD_MAX as usize => {
                OwnedMessage::error(msg.req_id, msg.tx_id, XsErrno::E2BIG)
            }
            Ok(payload) => OwnedMessage {
                msg_type: msg.msg_type,
                req_id: msg.req_id,
                tx_id: msg.tx_id,
                payload,
            },
            Err(e) => {
                debug!(conn = conn.0, op = %msg.msg_type, %e, "request failed");
                OwnedMessage::error(msg.req_id, msg.tx_id, e.errno())
            }
        };
        let is_watch_ok = msg.msg_type == XsType::Watch && reply.msg_type == XsType::Watch;
        self.reply(conn, reply);
        if is_watch_ok {
            // The initial event follows the reply.
            if let Ok(Request::Watch { path, token, .. }) = msg.request() {
                if let Ok(ev) = OwnedMessage::watch_event(path, token) {
                    self.queue_event(conn, ev);
                }
            }
        }
    }

    /// Queues an `XS_ERROR` for a request the transport could not pass on (an unknown type).
    pub fn reply_error(&mut self, conn: ConnId, req_id: u32, tx_id: u32, errno: XsErrno) {
        self.reply(conn, OwnedMessage::error(req_id, tx_id, errno));
    }

    fn reply(&mut self, conn: ConnId, msg: OwnedMessage) {
        let max = self.quotas.output_bytes;
        if let Some(c) = self.conns.get_mut(&conn) {
            Self::push(c, msg, max);
        }
    }

    fn dispatch(&mut self, conn: ConnId, msg: &MessageRef<'_>) -> Result<Reply, StoreError> {
        let caller = self.caller(conn)?;
        if !msg.msg_type.is_request() {
            return Err(StoreError::Unsupported {
                what: format!("{} is not a request", msg.msg_type),
            });
        }
        if msg.msg_type.is_privileged() && !caller.privileged {
            return Err(StoreError::NotPrivileged {
                domid: caller.domid,
                op: msg.msg_type.name(),
            });
        }
        let tx = msg.tx_id;
        Ok(match msg.request()? {
            Request::Read { path } => self.read(conn, tx, path)?,
            Request::Write { path, value } => {
                self.write(conn, tx, path, value)?;
                ok_reply()
            }
            Request::Mkdir { path } => {
                self.mkdir(conn, tx, path)?;
                ok_reply()
            }
            Request::Rm { path } => {
                self.rm(conn, tx, path)?;
                ok_reply()
            }
            Request::Directory { path } => {
                let mut out = Vec::new();
                for c in self.directory(conn, tx, path)? {
                    out.extend_from_slice(c.as_bytes());
                    out.push(0);
                }
                if out.len() > xen_abi::xs_wire::XENSTORE_PAYLOAD_MAX as usize {
                    return Err(StoreError::ReplyTooBig { len: out.len() });
                }
                out
            }
            Request::DirectoryPart { path, offset } => {
                self.directory_part(conn, tx, path, offset)?
            }
            Request::GetPerms { path } => {
                let mut out = Vec::new();
                for p in self.get_perms(conn, tx, path)? {
                    let mut buf = [0u8; 6];
                    out.extend_from_slice(p.write(&mut buf));
                    out.push(0);
                }
                out
            }
            Request::SetPerms { path, perms } => {
                let perms: Vec<XsPerm> = perms.iter().collect();
                self.set_perms(conn, tx, path, &perms)?;
                ok_reply()
            }
            Request::Watch { path, token, .. } => {
                self.add_watch(conn, path, token)?;
                ok_reply()
            }
            Request::Unwatch { path, token } => {
                self.unwatch(conn, path, token)?;
                ok_reply()
            }
            Request::ResetWatches => {
                self.reset_watches(conn)?;
                ok_reply()
            }
            Request::TransactionStart => {
                let mut out = self.transaction_start(conn)?.to_string().into_bytes();
                out.push(0);
                out
            }
            Request::TransactionEnd { commit } => {
                self.transaction_end(conn, tx, commit)?;
                ok_reply()
            }
            Request::Introduce { domid, gfn, evtchn } => {
                self.introduce(conn, domid, gfn, evtchn)?;
                ok_reply()
            }
            Request::Release { domid } => {
                self.release(conn, domid)?;
                ok_reply()
            }
            Request::GetDomainPath { domid } => {
                let mut out = self.get_domain_path(domid).into_bytes();
                out.push(0);
                out
            }
            Request::IsDomainIntroduced { domid } => {
                if self.is_domain_introduced(conn, domid)? {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                }
            }
            Request::Resume { domid } => {
                self.resume(conn, domid)?;
                ok_reply()
            }
            Request::SetTarget { domid, target } => {
                self.set_target(conn, domid, target)?;
                ok_reply()
            }
            Request::Control {
                command,
                parameters,
            } => self.control(conn, command, parameters)?,
            _ => {
                return Err(StoreError::Unsupported {
                    what: format!("{}", msg.msg_type),
                });
            }
        })
    }

    /// Every node path, sorted (for tests and debugging).
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.keys().cloned().collect();
        v.sort();
        v
    }

    /// The home path prefix of a domain, with its trailing slash.
    pub fn home_prefix(domid: DomId) -> String {
        format!("{LOCAL_DOMAIN_PREFIX}{domid}/")
    }
}

// ---------------------------------------------------------------------------------------------------
// Migration: export and import of one domain's state (see the `migration` module for the format).
// ---------------------------------------------------------------------------------------------------

use super::migration::{
    ACCESS_READ, ACCESS_WRITTEN, ConnectionState, DomainState, MigrationError, NodeState,
    PermState, TransactionState, TxNodeState, WatchState,
};

fn invalid(what: impl Into<String>) -> MigrationError {
    MigrationError::Invalid { what: what.into() }
}

/// A node of a restored transaction: its path, `access` flags, and its state (`None`: absent).
type TxEntry = (String, u16, Option<Node>);

/// The largest value a node can have: what one `WRITE` can carry.
const VALUE_MAX: usize = xen_abi::xs_wire::XENSTORE_PAYLOAD_MAX as usize;

impl XenStore {
    fn node_state(&self, path: &str, node: &Node) -> NodeState {
        NodeState {
            path: path.to_owned(),
            value: node.value.clone(),
            perms: node
                .perms
                .iter()
                .map(|p| PermState {
                    perm: XsPerm {
                        kind: p.kind,
                        domid: p.domid,
                    },
                    stale: p.ignore || !entry_valid(&self.domains, p.domid, node.generation),
                })
                .collect(),
        }
    }

    /// Sets (or clears) the notification of a connection, for a transport that attaches to a
    /// connection created by [`XenStore::import_domain`].
    pub fn set_notify(&mut self, conn: ConnId, notify: Option<Notify>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.notify = notify;
        }
    }

    /// The state of domain `domid` for live migration: the nodes of its home, parents first, and
    /// each of its connections with its watches, open transactions and unsent output.
    pub fn export_domain(&self, domid: DomId) -> DomainState {
        let home = domain_path(domid);
        let mut nodes = Vec::new();
        let mut queue = VecDeque::from([home.clone()]);
        while let Some(p) = queue.pop_front() {
            if let Some(n) = self.nodes.get(&p) {
                nodes.push(self.node_state(&p, n));
                queue.extend(n.children.iter().map(|c| join(&p, c)));
            }
        }
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid && !c.dead)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        let d = self.domains.get(&domid);
        let prefix = format!("{home}/");
        let connections = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let c = &self.conns[id];
                let mut pending_output = Vec::new();
                for m in &c.out {
                    if let Ok(v) = m.to_vec() {
                        pending_output.extend_from_slice(&v);
                    }
                }
                let watches = c
                    .watches
                    .iter()
                    .map(|w| WatchState {
                        path: if w.relative {
                            w.path.strip_prefix(&prefix).unwrap_or(&w.path).to_owned()
                        } else {
                            w.path.clone()
                        },
                        token: w.token.clone(),
                    })
                    .collect();
                let mut tx_ids: Vec<u32> = c.transactions.keys().copied().collect();
                tx_ids.sort_unstable();
                let transactions = tx_ids
                    .into_iter()
                    .map(|tx_id| self.transaction_state(tx_id, &c.transactions[&tx_id]))
                    .collect();
                ConnectionState {
                    conn_id: i as u32 + 1,
                    domid,
                    target: d.and_then(|d| d.target),
                    evtchn: d.map_or(0, |d| d.evtchn),
                    pending_output,
                    watches,
                    transactions,
                }
            })
            .collect();
        DomainState { connections, nodes }
    }

    fn transaction_state(&self, tx_id: u32, tx: &Transaction) -> TransactionState {
        let absent = |path: &str| NodeState {
            path: path.to_owned(),
            value: Vec::new(),
            perms: Vec::new(),
        };
        let mut paths: Vec<&String> = tx.accessed.keys().collect();
        paths.sort();
        let mut nodes = Vec::new();
        for path in paths {
            let seen = &tx.accessed[path];
            let current = self.nodes.get(path);
            if current.map(|n| n.generation) != seen.as_ref().map(|n| n.generation) {
                // Already conflicting: a read entry that will not match the importer's store
                // makes the restored transaction fail with EAGAIN too.
                let stale = match (seen, current) {
                    (Some(n), None) => self.node_state(path, n),
                    _ => NodeState {
                        value: b"\0stale".to_vec(),
                        ..absent(path)
                    },
                };
                return TransactionState {
                    tx_id,
                    nodes: vec![TxNodeState {
                        node: stale,
                        access: ACCESS_READ,
                    }],
                };
            }
            let (node, access) = match tx.changes.get(path) {
                Some(Some(n)) => (self.node_state(path, n), ACCESS_READ | ACCESS_WRITTEN),
                Some(None) => (absent(path), ACCESS_READ | ACCESS_WRITTEN),
                None => (
                    seen.as_ref()
                        .map_or_else(|| absent(path), |n| self.node_state(path, n)),
                    ACCESS_READ,
                ),
            };
            nodes.push(TxNodeState { node, access });
        }
        TransactionState { tx_id, nodes }
    }

    /// Restores a domain's state exported by [`XenStore::export_domain`] (possibly by another
    /// store) as domain `domid`: its home and the permissions naming it are renamed from the
    /// exported domain's. Everything is checked before anything changes: on error the store is as
    /// it was. Returns the restored connections, in the stream's order; attach a transport to each
    /// (and [`XenStore::set_notify`]).
    pub fn import_domain(
        &mut self,
        state: &DomainState,
        domid: DomId,
    ) -> Result<Vec<ConnId>, MigrationError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(invalid(format!("domid {domid} is not a guest domain")));
        }
        let old = match (state.connections.first(), state.nodes.first()) {
            (Some(c), _) => c.domid,
            (None, Some(n)) => n
                .path
                .strip_prefix(LOCAL_DOMAIN_PREFIX)
                .and_then(|s| s.parse::<DomId>().ok())
                .ok_or_else(|| invalid(format!("{} is not a domain's home", n.path)))?,
            (None, None) => return Ok(Vec::new()),
        };
        let old_home = domain_path(old);
        let new_home = domain_path(domid);
        let rename_path = |p: &str| -> Result<String, MigrationError> {
            if p == old_home {
                Ok(new_home.clone())
            } else if let Some(rest) = p.strip_prefix(&format!("{old_home}/")) {
                let renamed = format!("{new_home}/{rest}");
                check_path(renamed.as_bytes(), false)
                    .map_err(|e| invalid(format!("{renamed}: {e}")))?;
                Ok(renamed)
            } else {
                Err(invalid(format!("{p} is outside {old_home}")))
            }
        };
        let rename_perms = |perms: &[PermState]| -> Result<Vec<Perm>, MigrationError> {
            if perms.len() > 64 {
                return Err(invalid("more than 64 permissions on a node"));
            }
            Ok(perms
                .iter()
                .map(|p| Perm {
                    kind: p.perm.kind,
                    domid: if p.perm.domid == old {
                        domid
                    } else {
                        p.perm.domid
                    },
                    ignore: p.stale,
                })
                .collect())
        };
        // Committed nodes: the home first, each parent before its children.
        let mut nodes: Vec<(String, Node)> = Vec::with_capacity(state.nodes.len());
        let mut seen: HashSet<String> = HashSet::new();
        for (i, n) in state.nodes.iter().enumerate() {
            let path = rename_path(&n.path)?;
            if i == 0 && path != new_home {
                return Err(invalid("the first node is not the domain's home"));
            }
            if i > 0 && !seen.contains(parent(&path)) {
                return Err(invalid(format!("{path} comes before its parent")));
            }
            if !seen.insert(path.clone()) {
                return Err(invalid(format!("{path} is in the stream twice")));
            }
            if n.value.len() > VALUE_MAX {
                return Err(invalid(format!("{path} has a value above 4096 bytes")));
            }
            let perms = rename_perms(&n.perms)?;
            if perms.is_empty() {
                return Err(invalid(format!("{path} has no permissions")));
            }
            nodes.push((
                path,
                Node {
                    value: n.value.clone(),
                    perms,
                    children: Vec::new(),
                    generation: 0,
                },
            ));
        }
        // Connections: watches, transactions, output.
        struct Restored {
            watches: Vec<Watch>,
            transactions: Vec<(u32, Vec<TxEntry>)>,
            out: Vec<OwnedMessage>,
            evtchn: u32,
            target: Option<DomId>,
        }
        let mut restored = Vec::new();
        for c in &state.connections {
            if c.domid != old {
                return Err(invalid("connections of several domains"));
            }
            let mut watches = Vec::new();
            for w in &c.watches {
                let kind = check_path(w.path.as_bytes(), true)
                    .map_err(|e| invalid(format!("watch {}: {e}", w.path)))?;
                let path = match kind {
                    PathKind::Special => w.path.clone(),
                    PathKind::Relative => format!("{new_home}/{}", w.path),
                    // Absolute watches in the old home follow it.
                    PathKind::Absolute => rename_path(&w.path).unwrap_or_else(|_| w.path.clone()),
                };
                watches.push(Watch {
                    path,
                    token: w.token.clone(),
                    relative: kind == PathKind::Relative,
                });
            }
            let mut transactions = Vec::new();
            for t in &c.transactions {
                let mut entries = Vec::new();
                for n in &t.nodes {
                    let written = n.access & ACCESS_WRITTEN != 0;
                    let path = if written {
                        rename_path(&n.node.path)?
                    } else {
                        rename_path(&n.node.path).or_else(|_| {
                            check_path(n.node.path.as_bytes(), false)
                                .map(|_| n.node.path.clone())
                                .map_err(|e| invalid(format!("{}: {e}", n.node.path)))
                        })?
                    };
                    if n.node.value.len() > VALUE_MAX {
                        return Err(invalid(format!("{path} has a value above 4096 bytes")));
                    }
                    let perms = rename_perms(&n.node.perms)?;
                    let node = (!perms.is_empty()).then(|| Node {
                        value: n.node.value.clone(),
                        perms,
                        children: Vec::new(),
                        generation: 0,
                    });
                    entries.push((path, n.access, node));
                }
                transactions.push((t.tx_id, entries));
            }
            let mut parser = xen_abi::xs_wire::FrameParser::new();
            let mut out = Vec::new();
            for m in parser.messages(&c.pending_output) {
                out.push(m.map_err(|e| invalid(format!("pending output: {e}")))?);
            }
            if !parser.is_idle() {
                return Err(invalid("pending output ends inside a message"));
            }
            restored.push(Restored {
                watches,
                transactions,
                out,
                evtchn: c.evtchn,
                target: c.target,
            });
        }

        // Everything checked: apply.
        self.ensure_domain(domid);
        let ancestors: Vec<String> = {
            let mut v = Vec::new();
            let mut p = parent(&new_home).to_owned();
            while !self.nodes.contains_key(&p) {
                let next = parent(&p).to_owned();
                v.push(std::mem::replace(&mut p, next));
            }
            v
        };
        for p in ancestors.iter().rev().chain(nodes.iter().map(|(p, _)| p)) {
            let par = parent(p).to_owned();
            if let Some(pn) = self.nodes.get_mut(&par) {
                let name = basename(p);
                if !pn.children.iter().any(|c| c == name) {
                    pn.children.push(name.to_owned());
                    pn.generation = self.next_gen;
                    self.next_gen += 1;
                }
            }
            if !self.nodes.contains_key(p) {
                self.nodes.insert(
                    p.clone(),
                    Node {
                        value: Vec::new(),
                        perms: owner_only(0),
                        children: Vec::new(),
                        generation: 0,
                    },
                );
            }
        }
        for (path, mut node) in nodes {
            node.generation = self.next_gen;
            self.next_gen += 1;
            let old_node = self.nodes.get(&path).cloned();
            if let Some(o) = &old_node {
                node.children = o.children.clone();
                let owner = effective_owner(&self.domains, o);
                self.apply_delta([(owner, -1, -charge_of(&path, o))]);
            }
            let owner = effective_owner(&self.domains, &node);
            self.apply_delta([(owner, 1, charge_of(&path, &node))]);
            self.nodes.insert(path, node);
        }
        let mut conns = Vec::new();
        for r in restored {
            let id = self.connect(domid, None);
            let mut txs = HashMap::new();
            let mut max_tx = 0;
            for (tx_id, entries) in r.transactions {
                let mut tx = Transaction::default();
                for (path, access, node) in entries {
                    let current = self.nodes.get(&path).cloned();
                    if access & ACCESS_WRITTEN != 0 {
                        // Its generation when committed is later than the domain's.
                        let node = node.map(|n| Node {
                            generation: self.next_gen,
                            ..n
                        });
                        // Its watches fire at commit, as for a change made here.
                        let perms = node
                            .as_ref()
                            .or(current.as_ref())
                            .map(|n| n.perms.clone())
                            .unwrap_or_else(|| owner_only(0));
                        tx.events.push(Change {
                            path: path.clone(),
                            exact: false,
                            perms,
                            generation: self.next_gen,
                        });
                        tx.changes.insert(path.clone(), node);
                    } else {
                        let same = match (&node, &current) {
                            (None, None) => true,
                            (Some(a), Some(b)) => a.value == b.value && a.perms == b.perms,
                            _ => false,
                        };
                        tx.doomed |= !same;
                    }
                    tx.accessed.insert(path, current);
                }
                max_tx = max_tx.max(tx_id);
                txs.insert(tx_id, tx);
            }
            let mem: usize = r.watches.iter().map(Watch::memory).sum();
            if let Some(c) = self.conns.get_mut(&id) {
                c.watches = r.watches;
                c.transactions = txs;
                c.next_tx = max_tx.wrapping_add(1);
                for m in r.out {
                    c.out_bytes += m.encoded_len();
                    c.out.push_back(m);
                }
            }
            if let Some(d) = self.domains.get_mut(&domid) {
                d.memory += mem;
                d.introduced = true;
                d.evtchn = r.evtchn;
                d.target = r.target.filter(|t| *t != old);
            }
            conns.push(id);
        }
        info!(
            from = old,
            to = domid,
            connections = conns.len(),
            "domain state imported"
        );
        Ok(conns)
    }
}
