//! The TX packet parser: the copied slots of one packet in, a validated packet description out.
//!
//! The wire format (`io/netif.h`, "Guest transmit"):
//!
//! ```text
//! request 1   flags = NETTXF_*, size = total packet size
//! [extra 1]   if request 1 has NETTXF_extra_info
//! [extra N]   while extra N-1 has XEN_NETIF_EXTRA_FLAG_MORE
//! request 2   if request 1 has NETTXF_more_data; size = its own size
//! request N   while request N-1 has NETTXF_more_data
//! ```
//!
//! The size of the first fragment is the total size minus the sizes of the others.
#![forbid(unsafe_code)]

use zerocopy::FromZeros;

use super::{
    ExtraFlags, ExtraType, GsoType, HashAlgorithm, HashType, MacAddr, MulticastOp, NetTxFlags,
    NetifError, NetifExtraInfo, NetifExtraInfoGso, NetifExtraInfoHash, NetifRspStatus,
    NetifTxRequest, NetifTxResponse, XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
};

/// The length of an Ethernet header (Linux `ETH_HLEN`): the smallest packet a back end accepts, and by
/// default the least the first fragment must hold. No C counterpart in `io/netif.h`.
pub const ETH_HLEN: u16 = 14;

/// The most data slots (first request plus fragments) of one packet that Linux netback accepts
/// (`XEN_NETBK_LEGACY_SLOTS_MAX`, equal to [`XEN_NETIF_NR_SLOTS_MIN`]); the default capacity of
/// [`TxPacketParser`].
pub const XEN_NETBK_LEGACY_SLOTS_MAX: usize = XEN_NETIF_NR_SLOTS_MIN;

/// The most extra-info slots one packet can carry: one of each type (`XEN_NETIF_EXTRA_TYPE_MAX - 1`).
pub const MAX_TX_EXTRAS: usize = XEN_NETIF_EXTRA_TYPE_MAX as usize - 1;

/// Grant references below this are reserved for the toolstack (`GNTTAB_NR_RESERVED_ENTRIES` in
/// `grant_table.h`); a front end never grants packet data with them.
const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

const PAGE_SIZE: u32 = crate::XEN_PAGE_SIZE as u32;

/// Policy knobs of [`TxPacketParser`] that `io/netif.h` leaves to the back end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxConfig {
    /// The largest total packet size accepted ([`XEN_NETIF_MAX_TX_SIZE`] by default; a back end without
    /// GSO may lower it to its MTU plus the Ethernet header).
    pub max_packet_size: u16,
    /// The least the first fragment must hold ([`ETH_HLEN`] by default, so that the Ethernet header is
    /// never split across fragments, as Linux netback requires). A back end that gathers headers across
    /// fragments may lower it to 1; the fragment list is exact either way.
    pub min_first_fragment: u16,
}

impl TxConfig {
    /// The defaults: packets up to [`XEN_NETIF_MAX_TX_SIZE`], first fragment at least [`ETH_HLEN`].
    pub const DEFAULT: Self = Self {
        max_packet_size: XEN_NETIF_MAX_TX_SIZE,
        min_first_fragment: ETH_HLEN,
    };
}

impl Default for TxConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One data fragment of a TX packet, within one granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TxFragment {
    /// The request id (each slot is answered with its own id).
    pub id: u16,
    /// The grant reference of the page.
    pub gref: u32,
    /// The offset of the data in the page; `offset + size <= 4096`.
    pub offset: u16,
    /// The data length, never 0. For fragment 0 this is the total size minus the other fragments.
    pub size: u16,
    /// The request's flags as sent (for fragment 0, the packet's flags).
    pub flags: u16,
}

/// Segmentation offload parameters from a GSO extra.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GsoInfo {
    /// Largest payload per segment (never 0).
    pub size: u16,
    /// The protocol.
    pub gso_type: GsoType,
    /// `XEN_NETIF_GSO_FEAT_*` bits, as sent.
    pub features: u16,
}

/// A hash computed by the front end, from a hash extra.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashInfo {
    /// What the hash covers.
    pub hash_type: HashType,
    /// How it was computed.
    pub algorithm: HashAlgorithm,
    /// The value.
    pub value: u32,
}

/// A validated extra-info segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxExtra {
    /// `XEN_NETIF_EXTRA_TYPE_GSO`.
    Gso(GsoInfo),
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`.
    McastAdd(MacAddr),
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`.
    McastDel(MacAddr),
    /// `XEN_NETIF_EXTRA_TYPE_HASH`.
    Hash(HashInfo),
}

impl TxExtra {
    /// Validates a copied extra info: a known type, and for GSO a non-zero size and a known GSO type, for
    /// hash a known hash type and algorithm. The `MORE` flag is the caller's business.
    pub fn parse(extra: &NetifExtraInfo) -> Result<Self, NetifError> {
        Ok(match ExtraType::try_from(extra.r#type)? {
            ExtraType::Gso => {
                let gso = extra.u.gso();
                if gso.size == 0 {
                    return Err(NetifError::GsoSizeZero);
                }
                Self::Gso(GsoInfo {
                    size: gso.size,
                    gso_type: GsoType::try_from(gso.r#type)?,
                    features: gso.features,
                })
            }
            ExtraType::McastAdd => Self::McastAdd(extra.u.mcast().addr),
            ExtraType::McastDel => Self::McastDel(extra.u.mcast().addr),
            ExtraType::Hash => {
                let hash = extra.u.hash();
                Self::Hash(HashInfo {
                    hash_type: HashType::try_from(hash.r#type)?,
                    algorithm: HashAlgorithm::try_from(u32::from(hash.algorithm))?,
                    value: u32::from_le_bytes(hash.value),
                })
            }
        })
    }

    /// The type of this extra.
    pub const fn extra_type(&self) -> ExtraType {
        match self {
            Self::Gso(_) => ExtraType::Gso,
            Self::McastAdd(_) => ExtraType::McastAdd,
            Self::McastDel(_) => ExtraType::McastDel,
            Self::Hash(_) => ExtraType::Hash,
        }
    }

    /// The wire form, with `XEN_NETIF_EXTRA_FLAG_MORE` if `more`, and every pad byte zero.
    pub fn to_extra_info(&self, more: bool) -> NetifExtraInfo {
        let flags = if more {
            ExtraFlags::MORE
        } else {
            ExtraFlags::empty()
        };
        match *self {
            Self::Gso(g) => NetifExtraInfo::gso(
                NetifExtraInfoGso::new(g.size, g.gso_type as u8, g.features),
                flags,
            ),
            Self::McastAdd(addr) => NetifExtraInfo::mcast(true, addr, flags),
            Self::McastDel(addr) => NetifExtraInfo::mcast(false, addr, flags),
            Self::Hash(h) => NetifExtraInfo::hash(
                NetifExtraInfoHash::new(h.hash_type as u8, h.algorithm as u8, h.value),
                flags,
            ),
        }
    }
}

/// The extras of one packet, in the order they were sent; at most one of each type.
#[derive(Clone, Copy, Debug)]
pub struct TxExtras {
    list: [TxExtra; MAX_TX_EXTRAS],
    len: usize,
}

const FILLER: TxExtra = TxExtra::McastAdd([0; 6]);

impl TxExtras {
    /// No extras.
    pub const fn new() -> Self {
        Self {
            list: [FILLER; MAX_TX_EXTRAS],
            len: 0,
        }
    }

    /// Appends `extra`; an error if one of the same type is already there, or if it would put a
    /// multicast add and a multicast delete in one request.
    pub fn push(&mut self, extra: TxExtra) -> Result<(), NetifError> {
        let ty = extra.extra_type();
        if self.as_slice().iter().any(|e| e.extra_type() == ty) {
            return Err(NetifError::DuplicateExtraType {
                extra_type: ty as u8,
            });
        }
        let is_mcast = |t: ExtraType| matches!(t, ExtraType::McastAdd | ExtraType::McastDel);
        if is_mcast(ty) && self.as_slice().iter().any(|e| is_mcast(e.extra_type())) {
            return Err(NetifError::MulticastAddAndDel);
        }
        // One of each type at most, so there is always room; `get_mut` keeps this panic-free regardless.
        let slot = self
            .list
            .get_mut(self.len)
            .ok_or(NetifError::DuplicateExtraType {
                extra_type: ty as u8,
            })?;
        *slot = extra;
        self.len += 1;
        Ok(())
    }

    /// The extras, in order.
    pub fn as_slice(&self) -> &[TxExtra] {
        self.list.get(..self.len).unwrap_or(&[])
    }

    /// The number of extras.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The GSO extra, if any.
    pub fn gso(&self) -> Option<GsoInfo> {
        self.as_slice().iter().find_map(|e| {
            if let TxExtra::Gso(g) = e {
                Some(*g)
            } else {
                None
            }
        })
    }

    /// The hash extra, if any.
    pub fn hash(&self) -> Option<HashInfo> {
        self.as_slice().iter().find_map(|e| {
            if let TxExtra::Hash(h) = e {
                Some(*h)
            } else {
                None
            }
        })
    }

    /// The multicast operation, if any (at most one per request).
    pub fn multicast(&self) -> Option<MulticastOp> {
        self.as_slice().iter().find_map(|e| match e {
            TxExtra::McastAdd(a) => Some(MulticastOp::Add(*a)),
            TxExtra::McastDel(a) => Some(MulticastOp::Del(*a)),
            _ => None,
        })
    }

    fn write_slots(&self, out: &mut [NetifTxRequest]) -> usize {
        let n = self.len;
        for (i, (slot, extra)) in out.iter_mut().zip(self.as_slice()).enumerate() {
            *slot = NetifTxRequest::from_extra_info(&extra.to_extra_info(i + 1 < n));
        }
        n.min(out.len())
    }
}

impl Default for TxExtras {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for TxExtras {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for TxExtras {}

/// A validated TX packet: what the back end needs to copy it out of the granted pages and answer it.
///
/// Invariants (checked by the parser): 1 to `N` fragments, each with `0 < size` and
/// `offset + size <= 4096`; the fragment sizes add up to [`size`](Self::size); `ETH_HLEN <= size <=
/// max_packet_size`; the first fragment holds at least `min_first_fragment` bytes; no reserved gref.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPacket<const N: usize = XEN_NETBK_LEGACY_SLOTS_MAX> {
    size: u16,
    extras: TxExtras,
    fragments: [TxFragment; N],
    nr_fragments: usize,
    slots: u32,
}

impl<const N: usize> TxPacket<N> {
    /// The first request's id.
    pub fn id(&self) -> u16 {
        self.fragments().first().map_or(0, |f| f.id)
    }

    /// The total packet size in bytes.
    pub const fn size(&self) -> u16 {
        self.size
    }

    /// The first request's flags as sent.
    pub fn flags(&self) -> NetTxFlags {
        NetTxFlags::from_bits_retain(self.fragments().first().map_or(0, |f| f.flags))
    }

    /// The checksum offload flags: `NETTXF_csum_blank` and `NETTXF_data_validated`.
    pub fn checksum_flags(&self) -> NetTxFlags {
        self.flags() & (NetTxFlags::CSUM_BLANK | NetTxFlags::DATA_VALIDATED)
    }

    /// The fragments, first request first; their sizes add up to [`size`](Self::size).
    pub fn fragments(&self) -> &[TxFragment] {
        self.fragments.get(..self.nr_fragments).unwrap_or(&[])
    }

    /// The extras.
    pub const fn extras(&self) -> &TxExtras {
        &self.extras
    }

    /// The number of ring slots the packet used (requests and extras): the number of responses it needs.
    pub const fn slots(&self) -> u32 {
        self.slots
    }

    /// The responses for every slot of the packet, in ring order: `status` for the first request and for
    /// each fragment (with its own id), `NETIF_RSP_NULL` for each extra slot (with the first request's
    /// id), as Linux netback answers.
    pub fn responses(&self, status: NetifRspStatus) -> TxResponses {
        TxResponses::new(self.id(), status, self.extras.len(), self.fragment_ids())
    }

    fn fragment_ids(&self) -> TxResponseIds {
        let mut out = TxResponseIds::NONE;
        for (slot, f) in out.ids.iter_mut().zip(self.fragments().iter().skip(1)) {
            *slot = f.id;
            out.len += 1;
        }
        out
    }

    /// Writes the packet's slots into `out` (a front end's view: first request with the total size,
    /// extras with `MORE` chained and pad bytes zeroed, then the fragments), and returns how many it
    /// wrote. Parsing the result gives this packet back.
    pub fn to_slots(&self, out: &mut [NetifTxRequest]) -> Result<usize, NetifError> {
        let needed = self.nr_fragments + self.extras.len();
        if out.len() < needed {
            return Err(NetifError::SlotBufferTooShort {
                needed,
                len: out.len(),
            });
        }
        let frags = self.fragments();
        let Some((first, rest)) = frags.split_first() else {
            return Ok(0);
        };
        let (head, tail) = out.split_at_mut(1 + self.extras.len());
        if let Some((slot0, extra_slots)) = head.split_first_mut() {
            *slot0 = NetifTxRequest {
                gref: first.gref,
                offset: first.offset,
                flags: first.flags,
                id: first.id,
                size: self.size,
            };
            self.extras.write_slots(extra_slots);
        }
        for (slot, f) in tail.iter_mut().zip(rest) {
            *slot = NetifTxRequest {
                gref: f.gref,
                offset: f.offset,
                flags: f.flags,
                id: f.id,
                size: f.size,
            };
        }
        Ok(needed)
    }
}

/// A multicast control request: a dummy TX request whose extras carry `XEN_NETIF_EXTRA_TYPE_MCAST_ADD` or
/// `_DEL` (`io/netif.h`, "feature-multicast-control"). It carries no data: its size, gref and offset are
/// not used, and it must not have `NETTXF_more_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxMulticast {
    request: NetifTxRequest,
    extras: TxExtras,
    op: MulticastOp,
}

impl TxMulticast {
    /// The request id.
    pub const fn id(&self) -> u16 {
        self.request.id
    }

    /// The operation to apply to the vif's [`MulticastFilter`](super::MulticastFilter).
    pub const fn op(&self) -> MulticastOp {
        self.op
    }

    /// The request as sent.
    pub const fn request(&self) -> &NetifTxRequest {
        &self.request
    }

    /// All the extras of the request (the multicast one and any other).
    pub const fn extras(&self) -> &TxExtras {
        &self.extras
    }

    /// The number of ring slots used: the request and its extras.
    pub const fn slots(&self) -> u32 {
        1 + self.extras.len() as u32
    }

    /// The responses for every slot: `status` for the request, `NETIF_RSP_NULL` for each extra.
    pub fn responses(&self, status: NetifRspStatus) -> TxResponses {
        TxResponses::new(
            self.request.id,
            status,
            self.extras.len(),
            TxResponseIds::NONE,
        )
    }

    /// Writes the request and its extras into `out`; returns how many slots it wrote.
    pub fn to_slots(&self, out: &mut [NetifTxRequest]) -> Result<usize, NetifError> {
        let needed = 1 + self.extras.len();
        match out.split_first_mut() {
            Some((slot0, rest)) if rest.len() >= self.extras.len() => {
                *slot0 = self.request;
                self.extras.write_slots(rest);
                Ok(needed)
            }
            _ => Err(NetifError::SlotBufferTooShort {
                needed,
                len: out.len(),
            }),
        }
    }
}

/// What one TX packet's slots describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxParsed<const N: usize = XEN_NETBK_LEGACY_SLOTS_MAX> {
    /// A packet to transmit.
    Packet(TxPacket<N>),
    /// A multicast filter update, nothing to transmit.
    Multicast(TxMulticast),
}

impl<const N: usize> TxParsed<N> {
    /// The first request's id.
    pub fn id(&self) -> u16 {
        match self {
            Self::Packet(p) => p.id(),
            Self::Multicast(m) => m.id(),
        }
    }

    /// The number of ring slots used.
    pub const fn slots(&self) -> u32 {
        match self {
            Self::Packet(p) => p.slots(),
            Self::Multicast(m) => m.slots(),
        }
    }

    /// The responses for every slot, in ring order.
    pub fn responses(&self, status: NetifRspStatus) -> TxResponses {
        match self {
            Self::Packet(p) => p.responses(status),
            Self::Multicast(m) => m.responses(status),
        }
    }

    /// Writes the slots back (see [`TxPacket::to_slots`]).
    pub fn to_slots(&self, out: &mut [NetifTxRequest]) -> Result<usize, NetifError> {
        match self {
            Self::Packet(p) => p.to_slots(out),
            Self::Multicast(m) => m.to_slots(out),
        }
    }
}

const MAX_RESPONSE_IDS: usize = 256;

/// The ids of a packet's fragments after the first, in ring order (none for a multicast request).
#[derive(Clone, Copy, Debug)]
struct TxResponseIds {
    ids: [u16; MAX_RESPONSE_IDS],
    len: usize,
}

impl TxResponseIds {
    const NONE: Self = Self {
        ids: [0; MAX_RESPONSE_IDS],
        len: 0,
    };
}

/// The responses of one packet, in ring order (see [`TxPacket::responses`]).
#[derive(Clone, Debug)]
pub struct TxResponses {
    id: u16,
    status: NetifRspStatus,
    extras: usize,
    ids: TxResponseIds,
    pos: usize,
}

impl TxResponses {
    fn new(id: u16, status: NetifRspStatus, extras: usize, ids: TxResponseIds) -> Self {
        Self {
            id,
            status,
            extras,
            ids,
            pos: 0,
        }
    }

    fn total(&self) -> usize {
        1 + self.extras + self.ids.len
    }
}

impl Iterator for TxResponses {
    type Item = NetifTxResponse;

    fn next(&mut self) -> Option<NetifTxResponse> {
        let pos = self.pos;
        if pos >= self.total() {
            return None;
        }
        self.pos += 1;
        if pos == 0 {
            return Some(NetifTxResponse::from_status(self.id, self.status));
        }
        if pos <= self.extras {
            return Some(NetifTxResponse::from_status(self.id, NetifRspStatus::Null));
        }
        let id = *self.ids.ids.get(pos - 1 - self.extras)?;
        Some(NetifTxResponse::from_status(id, self.status))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total().saturating_sub(self.pos);
        (left, Some(left))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    First,
    Extras,
    Fragments,
    Done,
}

/// Parses one TX packet from its slots, fed one at a time as the back end copies them off the ring.
///
/// `N` is the most data slots (first request plus fragments) a packet may use: 18
/// ([`XEN_NETBK_LEGACY_SLOTS_MAX`]) by default; storage is `[TxFragment; N]`, no allocation. Extras do
/// not count towards `N` (there are at most [`MAX_TX_EXTRAS`], one of each type).
///
/// The caller says how many slots the ring holds for this packet (`req_prod - req_cons`, already checked
/// against the ring size): a slot that announces another one (`NETTXF_more_data`, `NETTXF_extra_info`,
/// `XEN_NETIF_EXTRA_FLAG_MORE`) when none is left is an error *at that slot*, so a chain that runs off the
/// ring (a missing final fragment, a full ring's worth of `more_data`) is caught without waiting.
///
/// After it returns a packet or an error the parser is finished; use a new one for the next packet. On
/// an error, the back end decides what to do with the slots consumed so far
/// ([`slots_consumed`](Self::slots_consumed)): Linux answers them with `NETIF_RSP_ERROR` and, for most
/// of these errors, disconnects the front end.
///
/// ```
/// use xen_abi::netif::{NetTxFlags, NetifTxRequest, TxPacketParser, TxParsed};
/// let slots = [
///     NetifTxRequest::new(100, 0, NetTxFlags::MORE_DATA, 1, 1500),
///     NetifTxRequest::new(101, 0, NetTxFlags::empty(), 2, 500),
/// ];
/// let mut parser: TxPacketParser = TxPacketParser::new(slots.len() as u32);
/// assert_eq!(parser.push(slots[0]), Ok(None));
/// let Ok(Some(TxParsed::Packet(p))) = parser.push(slots[1]) else { panic!() };
/// assert_eq!(p.size(), 1500);
/// assert_eq!(p.fragments()[0].size, 1000);
/// assert_eq!(p.fragments()[1].size, 500);
/// ```
#[derive(Clone, Debug)]
pub struct TxPacketParser<const N: usize = XEN_NETBK_LEGACY_SLOTS_MAX> {
    config: TxConfig,
    available: u32,
    consumed: u32,
    state: State,
    first: NetifTxRequest,
    remaining: u16,
    extras: TxExtras,
    fragments: [TxFragment; N],
    nr_fragments: usize,
}

impl<const N: usize> TxPacketParser<N> {
    const CAPACITY_OK: () = assert!(
        N >= 1 && N <= MAX_RESPONSE_IDS,
        "N must be between 1 and 256"
    );

    /// A parser with the default [`TxConfig`], for a packet that may use at most `available` slots.
    pub fn new(available: u32) -> Self {
        Self::with_config(TxConfig::DEFAULT, available)
    }

    /// A parser with `config`, for a packet that may use at most `available` slots.
    pub fn with_config(config: TxConfig, available: u32) -> Self {
        let () = Self::CAPACITY_OK;
        Self {
            config,
            available,
            consumed: 0,
            state: State::First,
            first: NetifTxRequest::new_zeroed(),
            remaining: 0,
            extras: TxExtras::new(),
            fragments: [TxFragment::default(); N],
            nr_fragments: 0,
        }
    }

    /// The slots pushed so far (including one that caused an error).
    pub const fn slots_consumed(&self) -> u32 {
        self.consumed
    }

    /// Whether the parser returned a packet or an error.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next slot (a copy, taken once from the ring). Returns `Ok(None)` when more slots are
    /// needed, `Ok(Some(_))` when the packet is complete, or an error.
    pub fn push(&mut self, slot: NetifTxRequest) -> Result<Option<TxParsed<N>>, NetifError> {
        if self.state == State::Done {
            return Err(NetifError::ParserFinished);
        }
        if self.consumed >= self.available {
            self.state = State::Done;
            return Err(NetifError::SlotBudgetExceeded {
                available: self.available,
            });
        }
        self.consumed += 1;
        let result = match self.state {
            State::First => self.on_first(slot),
            State::Extras => self.on_extra(slot),
            State::Fragments => self.on_fragment(slot),
            State::Done => Err(NetifError::ParserFinished),
        };
        if !matches!(result, Ok(None)) {
            self.state = State::Done;
        }
        result
    }

    /// Feeds slots until the packet is complete or fails; returns the result and the number of slots
    /// used. `Ok(None)` means `slots` ended before the packet did (only if `slots` is shorter than the
    /// available count).
    pub fn push_all(
        &mut self,
        slots: &[NetifTxRequest],
    ) -> (Result<Option<TxParsed<N>>, NetifError>, usize) {
        for (i, slot) in slots.iter().enumerate() {
            match self.push(*slot) {
                Ok(None) => continue,
                other => return (other, i + 1),
            }
        }
        (Ok(None), slots.len())
    }

    fn need_next(
        &self,
        runs_off: fn(u32, u32) -> NetifError,
    ) -> Result<Option<TxParsed<N>>, NetifError> {
        if self.consumed >= self.available {
            Err(runs_off(self.consumed, self.available))
        } else {
            Ok(None)
        }
    }

    fn missing_fragment(slots: u32, available: u32) -> NetifError {
        NetifError::MissingFinalFragment { slots, available }
    }

    fn missing_extra(slots: u32, available: u32) -> NetifError {
        NetifError::ExtraInfoRunsOffRing { slots, available }
    }

    fn on_first(&mut self, slot: NetifTxRequest) -> Result<Option<TxParsed<N>>, NetifError> {
        self.first = slot;
        self.remaining = slot.size;
        let first = self
            .fragments
            .first_mut()
            .ok_or(NetifError::TooManySlots { max: N })?;
        // The first fragment's own size is known only at the end.
        *first = TxFragment {
            id: slot.id,
            gref: slot.gref,
            offset: slot.offset,
            size: 0,
            flags: slot.flags,
        };
        self.nr_fragments = 1;
        let flags = slot.tx_flags();
        if flags.contains(NetTxFlags::EXTRA_INFO) {
            self.state = State::Extras;
            self.need_next(Self::missing_extra)
        } else {
            self.after_extras()
        }
    }

    fn after_extras(&mut self) -> Result<Option<TxParsed<N>>, NetifError> {
        if self.first.tx_flags().contains(NetTxFlags::MORE_DATA) {
            if self.extras.multicast().is_some() {
                return Err(NetifError::MulticastWithData { id: self.first.id });
            }
            self.state = State::Fragments;
            self.need_next(Self::missing_fragment)
        } else {
            self.finish().map(Some)
        }
    }

    fn on_extra(&mut self, slot: NetifTxRequest) -> Result<Option<TxParsed<N>>, NetifError> {
        let extra = slot.as_extra_info();
        self.extras.push(TxExtra::parse(&extra)?)?;
        if extra.extra_flags().contains(ExtraFlags::MORE) {
            self.need_next(Self::missing_extra)
        } else {
            self.after_extras()
        }
    }

    fn on_fragment(&mut self, slot: NetifTxRequest) -> Result<Option<TxParsed<N>>, NetifError> {
        let index = self.nr_fragments;
        if index >= N {
            return Err(NetifError::TooManySlots { max: N });
        }
        check_fragment(index, slot.gref, slot.offset, slot.size)?;
        if slot.size > self.remaining {
            return Err(NetifError::FragmentLargerThanRemaining {
                fragment: index,
                size: slot.size,
                remaining: self.remaining,
            });
        }
        self.remaining -= slot.size;
        let frag = self
            .fragments
            .get_mut(index)
            .ok_or(NetifError::TooManySlots { max: N })?;
        *frag = TxFragment {
            id: slot.id,
            gref: slot.gref,
            offset: slot.offset,
            size: slot.size,
            flags: slot.flags,
        };
        self.nr_fragments = index + 1;
        if slot.tx_flags().contains(NetTxFlags::MORE_DATA) {
            self.need_next(Self::missing_fragment)
        } else {
            self.finish().map(Some)
        }
    }

    fn finish(&mut self) -> Result<TxParsed<N>, NetifError> {
        if let Some(op) = self.extras.multicast() {
            return Ok(TxParsed::Multicast(TxMulticast {
                request: self.first,
                extras: self.extras,
                op,
            }));
        }
        let size = self.first.size;
        if size < ETH_HLEN {
            return Err(NetifError::PacketTooSmall { size });
        }
        if size > self.config.max_packet_size {
            return Err(NetifError::PacketTooLarge {
                size,
                max: self.config.max_packet_size,
            });
        }
        let first_len = self.remaining;
        check_fragment(0, self.first.gref, self.first.offset, first_len)?;
        if first_len < self.config.min_first_fragment {
            return Err(NetifError::HeaderSplit {
                first_len,
                min: self.config.min_first_fragment,
            });
        }
        if let Some(first) = self.fragments.first_mut() {
            first.size = first_len;
        }
        let extra_slots = self.extras.len() as u32;
        Ok(TxParsed::Packet(TxPacket {
            size,
            extras: self.extras,
            fragments: self.fragments,
            nr_fragments: self.nr_fragments,
            slots: self.nr_fragments as u32 + extra_slots,
        }))
    }
}

fn check_fragment(fragment: usize, gref: u32, offset: u16, size: u16) -> Result<(), NetifError> {
    if size == 0 {
        return Err(NetifError::ZeroLengthFragment { fragment });
    }
    if u32::from(offset) + u32::from(size) > PAGE_SIZE {
        return Err(NetifError::FragmentCrossesPage {
            fragment,
            offset,
            size,
        });
    }
    if gref < GNTTAB_NR_RESERVED_ENTRIES {
        return Err(NetifError::ReservedGrantRef { gref });
    }
    Ok(())
}

// `size` is a u16, so a packet can never claim more than XEN_NETIF_MAX_TX_SIZE bytes.
const _: () = assert!(u16::MAX == XEN_NETIF_MAX_TX_SIZE);
