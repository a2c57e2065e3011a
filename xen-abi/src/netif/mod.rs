//! The network device protocol of Xen's `io/netif.h`: the TX, RX and control rings, their wire structures
//! and constants, and validation of everything a guest front end writes.
//!
//! # What is here
//!
//! - The wire structures ([`NetifTxRequest`], [`NetifTxResponse`], [`NetifRxRequest`],
//!   [`NetifRxResponse`], [`NetifExtraInfo`] with typed views of its union, [`XenNetifCtrlRequest`],
//!   [`XenNetifCtrlResponse`], [`XenNetifGref`]) with the C layout, every constant of the header under its
//!   C name (`NETTXF_more_data`, `XEN_NETIF_EXTRA_TYPE_GSO`, ...), `bitflags` types for the flag fields
//!   and typed enums for the enumerations.
//! - The ring protocols [`NetifTx`], [`NetifRx`] and [`NetifCtrl`] for [`crate::ring`].
//! - [`TxPacketParser`]: the back end feeds it the copied TX slots of one packet, one at a time, with the
//!   number of slots the ring holds; it returns a [`TxParsed`] description (bounded fragment list, extras,
//!   sizes, checksum flags) or a [`NetifError`]. It never reads shared memory and never allocates.
//! - [`MulticastFilter`]: a bounded set of multicast addresses (`XEN_NETBK_MCAST_MAX` = 64, as Linux).
//! - [`XenNetifCtrlRequest::validate`]: a copied control request to a typed [`CtrlOp`], with
//!   [`validate_hash_mapping`] for the mapping table the back end copied from the granted page.
//! - RX helpers: [`NetifRxRequest::validate`], [`NetifRxResponse::data`], [`rx_slots_needed`].
//!
//! # Limits that `io/netif.h` does not define
//!
//! Linux netback's limits are used as defaults and are named after it: [`XEN_NETBK_LEGACY_SLOTS_MAX`],
//! [`XEN_NETBK_MCAST_MAX`], [`XEN_NETBK_MAX_HASH_KEY_SIZE`], [`XEN_NETBK_MAX_HASH_MAPPING_SIZE`], plus
//! [`ETH_HLEN`] and the per-page entry counts [`HASH_MAPPING_ENTRIES_PER_PAGE`] and
//! [`GREF_MAPPING_ENTRIES_PER_PAGE`].
#![forbid(unsafe_code)]

mod ctrl;
mod mcast;
mod rx;
mod tx;
mod wire;

pub use ctrl::*;
pub use mcast::*;
pub use rx::*;
pub use tx::*;
pub use wire::*;

/// Everything that can be wrong with what a netif front end wrote, or with a request to build a
/// response. One enum for the whole module; each message names the offending value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetifError {
    // ---- TX packet parsing ----
    /// A slot was pushed into a parser that already returned a packet or an error.
    #[error(
        "the TX packet parser already finished (it returned a packet or an error); start a new one"
    )]
    ParserFinished,
    /// More slots were pushed than the caller said the ring holds.
    #[error("slot pushed beyond the {available} slots the ring holds for this packet")]
    SlotBudgetExceeded {
        /// The number of slots the caller said were available.
        available: u32,
    },
    /// A fragment had `NETTXF_more_data` set but the ring holds no further slot: the final fragment is
    /// missing (the chain runs off the ring).
    #[error(
        "slot {slots} has NETTXF_more_data set but the ring holds only {available} slots for this packet: \
         the final fragment is missing"
    )]
    MissingFinalFragment {
        /// Slots consumed so far, including the one that asked for more.
        slots: u32,
        /// Slots that the ring held.
        available: u32,
    },
    /// A request with `NETTXF_extra_info`, or an extra with `XEN_NETIF_EXTRA_FLAG_MORE`, was the last slot
    /// on the ring: the chain of extras runs off the ring.
    #[error(
        "slot {slots} announces another extra-info slot but the ring holds only {available} slots for this \
         packet"
    )]
    ExtraInfoRunsOffRing {
        /// Slots consumed so far, including the one that asked for more.
        slots: u32,
        /// Slots that the ring held.
        available: u32,
    },
    /// The packet uses more data slots (request and fragments, extras not counted) than allowed.
    #[error("the packet uses more than {max} data slots")]
    TooManySlots {
        /// The maximum (`XEN_NETBK_LEGACY_SLOTS_MAX` = 18 by default).
        max: usize,
    },
    /// A fragment's data runs past the end of its 4096-byte page.
    #[error(
        "fragment {fragment}: offset {offset} plus size {size} is past the end of the 4096-byte page"
    )]
    FragmentCrossesPage {
        /// Index of the fragment in the packet (0 is the first request).
        fragment: usize,
        /// Its offset.
        offset: u16,
        /// Its size (for fragment 0, the total size minus the other fragments).
        size: u16,
    },
    /// A fragment carries no data.
    #[error("fragment {fragment} has size 0")]
    ZeroLengthFragment {
        /// Index of the fragment in the packet (0 is the first request).
        fragment: usize,
    },
    /// The packet is shorter than an Ethernet header.
    #[error("packet size {size} is smaller than an Ethernet header (ETH_HLEN = 14)")]
    PacketTooSmall {
        /// The total size from the first request.
        size: u16,
    },
    /// The packet is larger than the back end accepts.
    #[error("packet size {size} is larger than the maximum {max}")]
    PacketTooLarge {
        /// The total size from the first request.
        size: u16,
        /// The configured maximum (`XEN_NETIF_MAX_TX_SIZE` by default).
        max: u16,
    },
    /// A fragment is larger than what remains of the total size announced by the first request: the first
    /// size is smaller than the sum of the fragments.
    #[error(
        "fragment {fragment}: size {size} is larger than the {remaining} bytes left of the packet size \
         announced by the first request"
    )]
    FragmentLargerThanRemaining {
        /// Index of the fragment.
        fragment: usize,
        /// Its size.
        size: u16,
        /// What remained of the first request's size before it.
        remaining: u16,
    },
    /// The first fragment holds fewer bytes than the configured minimum, so the headers are split across
    /// fragments.
    #[error(
        "the first fragment holds {first_len} bytes, fewer than the {min} required: headers split across fragments"
    )]
    HeaderSplit {
        /// The first fragment's own length.
        first_len: u16,
        /// The configured minimum (`ETH_HLEN` by default).
        min: u16,
    },
    /// An extra info of type 0 (`XEN_NETIF_EXTRA_TYPE_NONE`), which is never valid.
    #[error("extra-info type 0 (XEN_NETIF_EXTRA_TYPE_NONE) is never valid")]
    ExtraTypeNone,
    /// An extra info of a type that `io/netif.h` does not define.
    #[error("unknown extra-info type {extra_type} (types are 1 to 4)")]
    UnknownExtraType {
        /// The type.
        extra_type: u8,
    },
    /// Two extras of the same type in one packet.
    #[error("extra-info type {extra_type} appears twice in one packet")]
    DuplicateExtraType {
        /// The repeated type.
        extra_type: u8,
    },
    /// A GSO extra with segment size 0.
    #[error("GSO extra with segment size 0")]
    GsoSizeZero,
    /// A GSO extra of an unknown (or `NONE`) GSO type.
    #[error("GSO extra with GSO type {gso_type} (valid: 1 TCPv4, 2 TCPv6)")]
    UnknownGsoType {
        /// The GSO type.
        gso_type: u8,
    },
    /// A hash type outside `_XEN_NETIF_CTRL_HASH_TYPE_*`.
    #[error("unknown hash type {hash_type} (valid: 0 to 3)")]
    UnknownHashType {
        /// The hash type.
        hash_type: u8,
    },
    /// A hash algorithm outside `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    #[error("unknown hash algorithm {algorithm} (valid: 0 none, 1 Toeplitz)")]
    UnknownHashAlgorithm {
        /// The algorithm.
        algorithm: u32,
    },
    /// One request carries both a multicast add and a multicast delete.
    #[error(
        "one request carries both XEN_NETIF_EXTRA_TYPE_MCAST_ADD and XEN_NETIF_EXTRA_TYPE_MCAST_DEL"
    )]
    MulticastAddAndDel,
    /// A multicast control request (a dummy request with an MCAST extra) has `NETTXF_more_data` set.
    #[error("multicast control request {id} has NETTXF_more_data set")]
    MulticastWithData {
        /// The request id.
        id: u16,
    },
    /// A multicast filter operation on an address without the group bit.
    #[error("{addr:02x?} is not a multicast address")]
    NotMulticastAddress {
        /// The address.
        addr: [u8; 6],
    },
    /// The multicast filter is full.
    #[error("multicast filter full: it holds {max} addresses")]
    MulticastFilterFull {
        /// The filter's capacity.
        max: usize,
    },
    /// A data grant reference in the range that `grant_table.h` reserves for the toolstack.
    #[error("grant reference {gref} is reserved (below GNTTAB_NR_RESERVED_ENTRIES = 8)")]
    ReservedGrantRef {
        /// The grant reference.
        gref: u32,
    },
    /// An output slice is too short for the slots of a packet.
    #[error("{needed} slots needed but the output holds {len}")]
    SlotBufferTooShort {
        /// Slots needed.
        needed: usize,
        /// Slots available.
        len: usize,
    },

    // ---- statuses and RX ----
    /// A `NETIF_RSP_*` value that `io/netif.h` does not define.
    #[error("unknown netif response status {status}")]
    UnknownRspStatus {
        /// The status.
        status: i16,
    },
    /// An RX response whose data would run past the end of the page.
    #[error("RX response: offset {offset} plus size {size} is past the end of the 4096-byte page")]
    RxResponseCrossesPage {
        /// The offset.
        offset: u16,
        /// The size.
        size: u16,
    },

    // ---- control ring ----
    /// A control request of an unknown type (or `XEN_NETIF_CTRL_TYPE_INVALID`).
    #[error("unknown control request type {ctrl_type} (valid: 1 to 10)")]
    UnknownCtrlType {
        /// The type.
        ctrl_type: u16,
    },
    /// A `XEN_NETIF_CTRL_STATUS_*` value that `io/netif.h` does not define.
    #[error("unknown control status {status}")]
    UnknownCtrlStatus {
        /// The status.
        status: u32,
    },
    /// `SET_HASH_FLAGS` with bits outside `XEN_NETIF_CTRL_HASH_TYPE_*`.
    #[error("SET_HASH_FLAGS: flags {flags:#x} have bits outside the hash types (valid mask 0xf)")]
    UnknownHashFlags {
        /// The flags.
        flags: u32,
    },
    /// `SET_HASH_KEY` with a key larger than the back end supports.
    #[error("SET_HASH_KEY: key size {len} is larger than the maximum {max}")]
    HashKeyTooLarge {
        /// The key size.
        len: u32,
        /// The maximum (`XEN_NETBK_MAX_HASH_KEY_SIZE` = 40 by default).
        max: u32,
    },
    /// `SET_HASH_MAPPING_SIZE` with a table larger than the back end supports.
    #[error("SET_HASH_MAPPING_SIZE: table size {size} is larger than the maximum {max}")]
    HashMappingSizeTooLarge {
        /// The size.
        size: u32,
        /// The maximum (`XEN_NETBK_MAX_HASH_MAPPING_SIZE` = 128 by default).
        max: u32,
    },
    /// `SET_HASH_MAPPING` with more entries than one granted page holds.
    #[error("SET_HASH_MAPPING: {len} entries do not fit in one page (at most {max})")]
    HashMappingLenTooLarge {
        /// The entry count.
        len: u32,
        /// The maximum ([`HASH_MAPPING_ENTRIES_PER_PAGE`] = 1024).
        max: u32,
    },
    /// `SET_HASH_MAPPING` whose `off + len` overflows.
    #[error("SET_HASH_MAPPING: offset {off} plus length {len} overflows")]
    HashMappingOffsetOverflow {
        /// The offset.
        off: u32,
        /// The length.
        len: u32,
    },
    /// `SET_HASH_MAPPING` whose sub-table runs past the end of the table.
    #[error("SET_HASH_MAPPING: offset {off} plus length {len} is past the table size {size}")]
    HashMappingOutOfTable {
        /// The offset.
        off: u32,
        /// The length.
        len: u32,
        /// The table size set by `SET_HASH_MAPPING_SIZE`.
        size: u32,
    },
    /// A mapping table entry names a queue that does not exist.
    #[error("hash mapping entry {index}: queue {queue} is not below the {num_queues} queues")]
    HashMappingQueueOutOfRange {
        /// Index of the entry.
        index: usize,
        /// The queue it names.
        queue: u32,
        /// The number of queues.
        num_queues: u32,
    },
    /// The bytes copied for a mapping table are fewer than its entries need.
    #[error("hash mapping of {len} entries needs {} bytes but {bytes} were given", *len as usize * 4)]
    HashMappingBytesTooShort {
        /// The entry count.
        len: u32,
        /// The bytes given.
        bytes: usize,
    },
    /// A control request names a queue that does not exist.
    #[error("queue index {queue} is not below the {num_queues} queues")]
    CtrlQueueOutOfRange {
        /// The queue index.
        queue: u32,
        /// The number of queues.
        num_queues: u32,
    },
    /// `ADD_GREF_MAPPING`/`DEL_GREF_MAPPING` with more entries than one granted page holds.
    #[error("gref mapping list of {count} entries does not fit in one page (at most {max})")]
    GrefListTooLarge {
        /// The entry count.
        count: u32,
        /// The maximum ([`GREF_MAPPING_ENTRIES_PER_PAGE`] = 512).
        max: u32,
    },
}

impl NetifError {
    /// The `XEN_NETIF_CTRL_STATUS_*` to answer a control request that failed with this error: unknown
    /// types are `NOT_SUPPORTED`, a key larger than supported is `BUFFER_OVERFLOW` (as `io/netif.h` says
    /// for `SET_HASH_KEY`), everything else is `INVALID_PARAMETER`.
    pub const fn ctrl_status(&self) -> CtrlStatus {
        match self {
            Self::UnknownCtrlType { .. } => CtrlStatus::NotSupported,
            Self::HashKeyTooLarge { .. } => CtrlStatus::BufferOverflow,
            _ => CtrlStatus::InvalidParameter,
        }
    }
}
