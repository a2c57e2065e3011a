//! The wire structures and constants of `io/netif.h`, exactly as Xen's header lays them out.
#![forbid(unsafe_code)]

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::NetifError;
use crate::ring::{RingProtocol, ring_entries};

// ---------------------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------------------

/// The number of ring slots (one request and its fragments, extras not counted) that every back end must
/// accept for one packet: `XEN_NETIF_NR_SLOTS_MIN` in `io/netif.h` (the MAX_SKB_FRAGS of old Linux kernels).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// The largest packet a front end may transmit, in bytes: `XEN_NETIF_MAX_TX_SIZE` in `io/netif.h`.
///
/// The `size` field of [`NetifTxRequest`] is a `u16`, so no packet can claim more than this.
pub const XEN_NETIF_MAX_TX_SIZE: u16 = 0xFFFF;

// ---------------------------------------------------------------------------------------------------------
// Transmit flags (`NETTXF_*`)
// ---------------------------------------------------------------------------------------------------------

/// Bit number of [`NETTXF_csum_blank`] (`_NETTXF_csum_blank` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETTXF_csum_blank: u16 = 0;
/// The protocol checksum field is blank in the packet, to be filled by the back end (hardware offload):
/// `NETTXF_csum_blank` in `io/netif.h` (Linux spells it `XEN_NETTXF_csum_blank`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETTXF_csum_blank")]
pub const NETTXF_csum_blank: u16 = 1 << _NETTXF_csum_blank;
/// Bit number of [`NETTXF_data_validated`] (`_NETTXF_data_validated` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETTXF_data_validated: u16 = 1;
/// The packet data has been validated against the protocol checksum: `NETTXF_data_validated` in
/// `io/netif.h` (Linux: `XEN_NETTXF_data_validated`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETTXF_data_validated")]
pub const NETTXF_data_validated: u16 = 1 << _NETTXF_data_validated;
/// Bit number of [`NETTXF_more_data`] (`_NETTXF_more_data` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETTXF_more_data: u16 = 2;
/// The packet continues in the next request slot: `NETTXF_more_data` in `io/netif.h` (Linux:
/// `XEN_NETTXF_more_data`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETTXF_more_data")]
pub const NETTXF_more_data: u16 = 1 << _NETTXF_more_data;
/// Bit number of [`NETTXF_extra_info`] (`_NETTXF_extra_info` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETTXF_extra_info: u16 = 3;
/// The request is followed by extra-info slot(s): `NETTXF_extra_info` in `io/netif.h` (Linux:
/// `XEN_NETTXF_extra_info`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETTXF_extra_info")]
pub const NETTXF_extra_info: u16 = 1 << _NETTXF_extra_info;

bitflags! {
    /// The `flags` of a [`NetifTxRequest`] (`NETTXF_*` in `io/netif.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct NetTxFlags: u16 {
        /// [`NETTXF_csum_blank`].
        const CSUM_BLANK = NETTXF_csum_blank;
        /// [`NETTXF_data_validated`].
        const DATA_VALIDATED = NETTXF_data_validated;
        /// [`NETTXF_more_data`].
        const MORE_DATA = NETTXF_more_data;
        /// [`NETTXF_extra_info`].
        const EXTRA_INFO = NETTXF_extra_info;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Receive flags (`NETRXF_*`)
// ---------------------------------------------------------------------------------------------------------

/// Bit number of [`NETRXF_data_validated`] (`_NETRXF_data_validated` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETRXF_data_validated: u16 = 0;
/// The packet data has been validated against the protocol checksum: `NETRXF_data_validated` in
/// `io/netif.h` (Linux: `XEN_NETRXF_data_validated`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETRXF_data_validated")]
pub const NETRXF_data_validated: u16 = 1 << _NETRXF_data_validated;
/// Bit number of [`NETRXF_csum_blank`] (`_NETRXF_csum_blank` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETRXF_csum_blank: u16 = 1;
/// The protocol checksum field is blank in the packet: `NETRXF_csum_blank` in `io/netif.h` (Linux:
/// `XEN_NETRXF_csum_blank`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETRXF_csum_blank")]
pub const NETRXF_csum_blank: u16 = 1 << _NETRXF_csum_blank;
/// Bit number of [`NETRXF_more_data`] (`_NETRXF_more_data` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETRXF_more_data: u16 = 2;
/// The packet continues in the next response slot: `NETRXF_more_data` in `io/netif.h` (Linux:
/// `XEN_NETRXF_more_data`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETRXF_more_data")]
pub const NETRXF_more_data: u16 = 1 << _NETRXF_more_data;
/// Bit number of [`NETRXF_extra_info`] (`_NETRXF_extra_info` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETRXF_extra_info: u16 = 3;
/// The response is followed by extra-info slot(s): `NETRXF_extra_info` in `io/netif.h` (Linux:
/// `XEN_NETRXF_extra_info`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETRXF_extra_info")]
pub const NETRXF_extra_info: u16 = 1 << _NETRXF_extra_info;
/// Bit number of [`NETRXF_gso_prefix`] (`_NETRXF_gso_prefix` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _NETRXF_gso_prefix: u16 = 4;
/// The packet has a GSO prefix (deprecated): `NETRXF_gso_prefix` in `io/netif.h` (Linux:
/// `XEN_NETRXF_gso_prefix`).
#[allow(non_upper_case_globals)]
#[doc(alias = "XEN_NETRXF_gso_prefix")]
pub const NETRXF_gso_prefix: u16 = 1 << _NETRXF_gso_prefix;

bitflags! {
    /// The `flags` of a [`NetifRxResponse`] (`NETRXF_*` in `io/netif.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct NetRxFlags: u16 {
        /// [`NETRXF_data_validated`].
        const DATA_VALIDATED = NETRXF_data_validated;
        /// [`NETRXF_csum_blank`].
        const CSUM_BLANK = NETRXF_csum_blank;
        /// [`NETRXF_more_data`].
        const MORE_DATA = NETRXF_more_data;
        /// [`NETRXF_extra_info`].
        const EXTRA_INFO = NETRXF_extra_info;
        /// [`NETRXF_gso_prefix`] (deprecated).
        const GSO_PREFIX = NETRXF_gso_prefix;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Extra info
// ---------------------------------------------------------------------------------------------------------

/// Extra-info type "none": never valid on the wire (`XEN_NETIF_EXTRA_TYPE_NONE` in `io/netif.h`).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// Extra-info type GSO, `u.gso` (`XEN_NETIF_EXTRA_TYPE_GSO` in `io/netif.h`).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra-info type multicast add, `u.mcast` (`XEN_NETIF_EXTRA_TYPE_MCAST_ADD` in `io/netif.h`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra-info type multicast delete, `u.mcast` (`XEN_NETIF_EXTRA_TYPE_MCAST_DEL` in `io/netif.h`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra-info type hash, `u.hash` (`XEN_NETIF_EXTRA_TYPE_HASH` in `io/netif.h`).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last extra-info type (`XEN_NETIF_EXTRA_TYPE_MAX` in `io/netif.h`): types at or above it
/// are unknown.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// Bit number of [`XEN_NETIF_EXTRA_FLAG_MORE`] (`_XEN_NETIF_EXTRA_FLAG_MORE` in `io/netif.h`).
pub const _XEN_NETIF_EXTRA_FLAG_MORE: u8 = 0;
/// Another extra-info slot follows this one (`XEN_NETIF_EXTRA_FLAG_MORE` in `io/netif.h`).
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << _XEN_NETIF_EXTRA_FLAG_MORE;

bitflags! {
    /// The `flags` of a [`NetifExtraInfo`] (`XEN_NETIF_EXTRA_FLAG_*` in `io/netif.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ExtraFlags: u8 {
        /// [`XEN_NETIF_EXTRA_FLAG_MORE`].
        const MORE = XEN_NETIF_EXTRA_FLAG_MORE;
    }
}

/// GSO type "none" (`XEN_NETIF_GSO_TYPE_NONE` in `io/netif.h`); not valid in a GSO extra.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// GSO of TCP over IPv4 (`XEN_NETIF_GSO_TYPE_TCPV4` in `io/netif.h`).
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// GSO of TCP over IPv6 (`XEN_NETIF_GSO_TYPE_TCPV6` in `io/netif.h`).
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

// ---------------------------------------------------------------------------------------------------------
// Response statuses (`NETIF_RSP_*`)
// ---------------------------------------------------------------------------------------------------------

/// The packet was dropped (`NETIF_RSP_DROPPED` in `io/netif.h`; Linux: `XEN_NETIF_RSP_DROPPED`).
#[doc(alias = "XEN_NETIF_RSP_DROPPED")]
pub const NETIF_RSP_DROPPED: i16 = -2;
/// The request failed (`NETIF_RSP_ERROR` in `io/netif.h`; Linux: `XEN_NETIF_RSP_ERROR`).
#[doc(alias = "XEN_NETIF_RSP_ERROR")]
pub const NETIF_RSP_ERROR: i16 = -1;
/// The request succeeded (`NETIF_RSP_OKAY` in `io/netif.h`; Linux: `XEN_NETIF_RSP_OKAY`).
#[doc(alias = "XEN_NETIF_RSP_OKAY")]
pub const NETIF_RSP_OKAY: i16 = 0;
/// No response: the slot held an auxiliary request such as an extra info (`NETIF_RSP_NULL` in
/// `io/netif.h`; Linux: `XEN_NETIF_RSP_NULL`).
#[doc(alias = "XEN_NETIF_RSP_NULL")]
pub const NETIF_RSP_NULL: i16 = 1;

// ---------------------------------------------------------------------------------------------------------
// Control ring constants
// ---------------------------------------------------------------------------------------------------------

/// Bit number of [`XEN_NETIF_CTRL_HASH_TYPE_IPV4`]; also the `u.hash.type` of a hash extra
/// (`_XEN_NETIF_CTRL_HASH_TYPE_IPV4` in `io/netif.h`).
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV4: u8 = 0;
/// Hash over the IPv4 source and destination addresses (`XEN_NETIF_CTRL_HASH_TYPE_IPV4` in `io/netif.h`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4;
/// Bit number of [`XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`] (`_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP` in
/// `io/netif.h`).
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u8 = 1;
/// Hash over the IPv4 addresses and TCP ports (`XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP` in `io/netif.h`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
/// Bit number of [`XEN_NETIF_CTRL_HASH_TYPE_IPV6`] (`_XEN_NETIF_CTRL_HASH_TYPE_IPV6` in `io/netif.h`).
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV6: u8 = 2;
/// Hash over the IPv6 source and destination addresses (`XEN_NETIF_CTRL_HASH_TYPE_IPV6` in `io/netif.h`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6;
/// Bit number of [`XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`] (`_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP` in
/// `io/netif.h`).
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u8 = 3;
/// Hash over the IPv6 addresses and TCP ports (`XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP` in `io/netif.h`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;

bitflags! {
    /// A set of hash types, as `SET_HASH_FLAGS` and `GET_HASH_FLAGS` carry it
    /// (`XEN_NETIF_CTRL_HASH_TYPE_*` in `io/netif.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct HashTypes: u32 {
        /// [`XEN_NETIF_CTRL_HASH_TYPE_IPV4`].
        const IPV4 = XEN_NETIF_CTRL_HASH_TYPE_IPV4;
        /// [`XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`].
        const IPV4_TCP = XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
        /// [`XEN_NETIF_CTRL_HASH_TYPE_IPV6`].
        const IPV6 = XEN_NETIF_CTRL_HASH_TYPE_IPV6;
        /// [`XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`].
        const IPV6_TCP = XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;
    }
}

/// No hash algorithm: hashing disabled (`XEN_NETIF_CTRL_HASH_ALGORITHM_NONE` in `io/netif.h`).
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
/// The Toeplitz hash (`XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ` in `io/netif.h`).
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;

/// Control type 0, never valid (`XEN_NETIF_CTRL_TYPE_INVALID` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
/// Query the supported hash types (`XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
/// Set the hash types to calculate (`XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
/// Set the hash key from a granted page (`XEN_NETIF_CTRL_TYPE_SET_HASH_KEY` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
/// Query the largest mapping table (`XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
/// Set the mapping table size (`XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
/// Set (part of) the mapping table from a granted page (`XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING` in
/// `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
/// Select the hash algorithm (`XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
/// Query how many grefs the back end keeps mapped (`XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE` in
/// `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
/// Map a list of grefs in the back end (`XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
/// Unmap a list of grefs in the back end (`XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING` in `io/netif.h`).
pub const XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;

/// The operation succeeded (`XEN_NETIF_CTRL_STATUS_SUCCESS` in `io/netif.h`).
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
/// The operation is not supported (`XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED` in `io/netif.h`).
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// A parameter is invalid (`XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER` in `io/netif.h`).
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// A size is larger than the back end supports (`XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW` in
/// `io/netif.h`).
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

/// Bit number of [`XEN_NETIF_CTRLF_GREF_readonly`] (`_XEN_NETIF_CTRLF_GREF_readonly` in `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const _XEN_NETIF_CTRLF_GREF_readonly: u16 = 0;
/// The gref of a [`XenNetifGref`] is to be mapped read-only (`XEN_NETIF_CTRLF_GREF_readonly` in
/// `io/netif.h`).
#[allow(non_upper_case_globals)]
pub const XEN_NETIF_CTRLF_GREF_readonly: u16 = 1 << _XEN_NETIF_CTRLF_GREF_readonly;

bitflags! {
    /// The `flags` of a [`XenNetifGref`] (`XEN_NETIF_CTRLF_GREF_*` in `io/netif.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct GrefFlags: u16 {
        /// [`XEN_NETIF_CTRLF_GREF_readonly`].
        const READONLY = XEN_NETIF_CTRLF_GREF_readonly;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Typed enums
// ---------------------------------------------------------------------------------------------------------

/// The type of a [`NetifExtraInfo`] (`XEN_NETIF_EXTRA_TYPE_*` in `io/netif.h`); `NONE` is not a valid
/// type on the wire and has no variant.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExtraType {
    /// [`XEN_NETIF_EXTRA_TYPE_GSO`].
    Gso = XEN_NETIF_EXTRA_TYPE_GSO,
    /// [`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`].
    McastAdd = XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
    /// [`XEN_NETIF_EXTRA_TYPE_MCAST_DEL`].
    McastDel = XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
    /// [`XEN_NETIF_EXTRA_TYPE_HASH`].
    Hash = XEN_NETIF_EXTRA_TYPE_HASH,
}

impl TryFrom<u8> for ExtraType {
    type Error = NetifError;
    fn try_from(raw: u8) -> Result<Self, NetifError> {
        match raw {
            XEN_NETIF_EXTRA_TYPE_GSO => Ok(Self::Gso),
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD => Ok(Self::McastAdd),
            XEN_NETIF_EXTRA_TYPE_MCAST_DEL => Ok(Self::McastDel),
            XEN_NETIF_EXTRA_TYPE_HASH => Ok(Self::Hash),
            XEN_NETIF_EXTRA_TYPE_NONE => Err(NetifError::ExtraTypeNone),
            other => Err(NetifError::UnknownExtraType { extra_type: other }),
        }
    }
}

/// The GSO type of a GSO extra (`XEN_NETIF_GSO_TYPE_*` in `io/netif.h`); `NONE` is not valid in a GSO
/// extra and has no variant.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GsoType {
    /// [`XEN_NETIF_GSO_TYPE_TCPV4`].
    TcpV4 = XEN_NETIF_GSO_TYPE_TCPV4,
    /// [`XEN_NETIF_GSO_TYPE_TCPV6`].
    TcpV6 = XEN_NETIF_GSO_TYPE_TCPV6,
}

impl TryFrom<u8> for GsoType {
    type Error = NetifError;
    fn try_from(raw: u8) -> Result<Self, NetifError> {
        match raw {
            XEN_NETIF_GSO_TYPE_TCPV4 => Ok(Self::TcpV4),
            XEN_NETIF_GSO_TYPE_TCPV6 => Ok(Self::TcpV6),
            other => Err(NetifError::UnknownGsoType { gso_type: other }),
        }
    }
}

/// One hash type: the `u.hash.type` of a hash extra, a bit number of [`HashTypes`]
/// (`_XEN_NETIF_CTRL_HASH_TYPE_*` in `io/netif.h`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HashType {
    /// [`_XEN_NETIF_CTRL_HASH_TYPE_IPV4`].
    Ipv4 = _XEN_NETIF_CTRL_HASH_TYPE_IPV4,
    /// [`_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`].
    Ipv4Tcp = _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
    /// [`_XEN_NETIF_CTRL_HASH_TYPE_IPV6`].
    Ipv6 = _XEN_NETIF_CTRL_HASH_TYPE_IPV6,
    /// [`_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`].
    Ipv6Tcp = _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
}

impl HashType {
    /// The [`HashTypes`] bit of this type.
    pub const fn bit(self) -> HashTypes {
        HashTypes::from_bits_retain(1 << self as u8)
    }
}

impl TryFrom<u8> for HashType {
    type Error = NetifError;
    fn try_from(raw: u8) -> Result<Self, NetifError> {
        match raw {
            _XEN_NETIF_CTRL_HASH_TYPE_IPV4 => Ok(Self::Ipv4),
            _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP => Ok(Self::Ipv4Tcp),
            _XEN_NETIF_CTRL_HASH_TYPE_IPV6 => Ok(Self::Ipv6),
            _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP => Ok(Self::Ipv6Tcp),
            other => Err(NetifError::UnknownHashType { hash_type: other }),
        }
    }
}

/// A hash algorithm (`XEN_NETIF_CTRL_HASH_ALGORITHM_*` in `io/netif.h`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum HashAlgorithm {
    /// [`XEN_NETIF_CTRL_HASH_ALGORITHM_NONE`]: hashing disabled.
    None = XEN_NETIF_CTRL_HASH_ALGORITHM_NONE,
    /// [`XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ`].
    Toeplitz = XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
}

impl TryFrom<u32> for HashAlgorithm {
    type Error = NetifError;
    fn try_from(raw: u32) -> Result<Self, NetifError> {
        match raw {
            XEN_NETIF_CTRL_HASH_ALGORITHM_NONE => Ok(Self::None),
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ => Ok(Self::Toeplitz),
            other => Err(NetifError::UnknownHashAlgorithm { algorithm: other }),
        }
    }
}

/// The status of a TX or RX response (`NETIF_RSP_*` in `io/netif.h`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum NetifRspStatus {
    /// [`NETIF_RSP_DROPPED`].
    Dropped = NETIF_RSP_DROPPED,
    /// [`NETIF_RSP_ERROR`].
    Error = NETIF_RSP_ERROR,
    /// [`NETIF_RSP_OKAY`].
    Okay = NETIF_RSP_OKAY,
    /// [`NETIF_RSP_NULL`].
    Null = NETIF_RSP_NULL,
}

impl TryFrom<i16> for NetifRspStatus {
    type Error = NetifError;
    fn try_from(raw: i16) -> Result<Self, NetifError> {
        match raw {
            NETIF_RSP_DROPPED => Ok(Self::Dropped),
            NETIF_RSP_ERROR => Ok(Self::Error),
            NETIF_RSP_OKAY => Ok(Self::Okay),
            NETIF_RSP_NULL => Ok(Self::Null),
            other => Err(NetifError::UnknownRspStatus { status: other }),
        }
    }
}

/// The type of a control request (`XEN_NETIF_CTRL_TYPE_*` in `io/netif.h`); `INVALID` has no variant.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CtrlType {
    /// [`XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS`].
    GetHashFlags = XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
    /// [`XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS`].
    SetHashFlags = XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
    /// [`XEN_NETIF_CTRL_TYPE_SET_HASH_KEY`].
    SetHashKey = XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
    /// [`XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE`].
    GetHashMappingSize = XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
    /// [`XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE`].
    SetHashMappingSize = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
    /// [`XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING`].
    SetHashMapping = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
    /// [`XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM`].
    SetHashAlgorithm = XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
    /// [`XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE`].
    GetGrefMappingSize = XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE,
    /// [`XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING`].
    AddGrefMapping = XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
    /// [`XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING`].
    DelGrefMapping = XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
}

impl TryFrom<u16> for CtrlType {
    type Error = NetifError;
    fn try_from(raw: u16) -> Result<Self, NetifError> {
        Ok(match raw {
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS => Self::GetHashFlags,
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS => Self::SetHashFlags,
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY => Self::SetHashKey,
            XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE => Self::GetHashMappingSize,
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE => Self::SetHashMappingSize,
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => Self::SetHashMapping,
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM => Self::SetHashAlgorithm,
            XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE => Self::GetGrefMappingSize,
            XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING => Self::AddGrefMapping,
            XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING => Self::DelGrefMapping,
            other => return Err(NetifError::UnknownCtrlType { ctrl_type: other }),
        })
    }
}

/// The status of a control response (`XEN_NETIF_CTRL_STATUS_*` in `io/netif.h`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CtrlStatus {
    /// [`XEN_NETIF_CTRL_STATUS_SUCCESS`].
    Success = XEN_NETIF_CTRL_STATUS_SUCCESS,
    /// [`XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED`].
    NotSupported = XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
    /// [`XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER`].
    InvalidParameter = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
    /// [`XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW`].
    BufferOverflow = XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
}

impl TryFrom<u32> for CtrlStatus {
    type Error = NetifError;
    fn try_from(raw: u32) -> Result<Self, NetifError> {
        Ok(match raw {
            XEN_NETIF_CTRL_STATUS_SUCCESS => Self::Success,
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED => Self::NotSupported,
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER => Self::InvalidParameter,
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW => Self::BufferOverflow,
            other => return Err(NetifError::UnknownCtrlStatus { status: other }),
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Structures
// ---------------------------------------------------------------------------------------------------------

/// A transmit request, front end to back end: `struct netif_tx_request` (`netif_tx_request_t`) in
/// `io/netif.h`. 12 bytes, the size of a TX ring slot.
///
/// The first request of a packet carries the *whole packet's* size; each following fragment carries its
/// own. A slot that follows a request with [`NETTXF_extra_info`] (or an extra with
/// [`XEN_NETIF_EXTRA_FLAG_MORE`]) holds a [`NetifExtraInfo`] instead: see
/// [`NetifTxRequest::as_extra_info`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifTxRequest {
    /// Grant reference of the page holding the data (`grant_ref_t`).
    pub gref: u32,
    /// Offset of the data within the page.
    pub offset: u16,
    /// `NETTXF_*` flags; see [`NetTxFlags`].
    pub flags: u16,
    /// Request identifier, echoed in the response.
    pub id: u16,
    /// The packet size (first request) or the fragment size (the others), in bytes.
    pub size: u16,
}

impl NetifTxRequest {
    /// A request from its fields.
    pub const fn new(gref: u32, offset: u16, flags: NetTxFlags, id: u16, size: u16) -> Self {
        Self {
            gref,
            offset,
            flags: flags.bits(),
            id,
            size,
        }
    }

    /// The request in the bytes of a TX ring slot (fields in native byte order, as a front end on the
    /// same machine wrote them).
    pub fn from_ne_bytes(bytes: [u8; 12]) -> Self {
        zerocopy::transmute!(bytes)
    }

    /// The flags, with bits that `io/netif.h` does not define kept.
    pub const fn tx_flags(&self) -> NetTxFlags {
        NetTxFlags::from_bits_retain(self.flags)
    }

    /// Reinterprets this slot as the extra info that a front end wrote into it: the first 8 bytes of the
    /// slot (`netif_extra_info_t` overlays `netif_tx_request_t`; the last 4 bytes are "padding for tx").
    ///
    /// Works on a copy of the slot, never on shared memory.
    pub fn as_extra_info(&self) -> NetifExtraInfo {
        let slot: TxSlotAsExtra = zerocopy::transmute!(*self);
        slot.extra
    }

    /// The TX slot holding `extra`, with the 4 bytes of "padding for tx" zeroed (what a front end writes).
    pub fn from_extra_info(extra: &NetifExtraInfo) -> Self {
        zerocopy::transmute!(TxSlotAsExtra {
            extra: *extra,
            tail: [0; 4]
        })
    }
}

/// A TX slot seen as an extra info followed by the 4 bytes of "padding for tx". No C counterpart.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct TxSlotAsExtra {
    extra: NetifExtraInfo,
    tail: [u8; 4],
}

/// A transmit response, back end to front end: `struct netif_tx_response` (`netif_tx_response_t`) in
/// `io/netif.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifTxResponse {
    /// The `id` of the request answered.
    pub id: u16,
    /// A `NETIF_RSP_*` status; see [`NetifRspStatus`].
    pub status: i16,
}

impl NetifTxResponse {
    /// The response to request `id` with a raw `NETIF_RSP_*` `status` (the struct has no padding to leak).
    pub const fn new(id: u16, status: i16) -> Self {
        Self { id, status }
    }

    /// The response to request `id` with a typed status.
    pub const fn from_status(id: u16, status: NetifRspStatus) -> Self {
        Self {
            id,
            status: status as i16,
        }
    }

    /// The typed status, or an error for a value `io/netif.h` does not define.
    pub fn rsp_status(&self) -> Result<NetifRspStatus, NetifError> {
        NetifRspStatus::try_from(self.status)
    }
}

/// A receive request, front end to back end: `struct netif_rx_request` (`netif_rx_request_t`) in
/// `io/netif.h`. It offers the back end a granted page to receive into.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifRxRequest {
    /// Request identifier, echoed in the response.
    pub id: u16,
    /// Explicit padding in the C struct (`pad`); its value means nothing.
    pub pad: u16,
    /// Grant reference of the page to receive into (`grant_ref_t`).
    pub gref: u32,
}

impl NetifRxRequest {
    /// A request from its fields, `pad` zeroed.
    pub const fn new(id: u16, gref: u32) -> Self {
        Self { id, pad: 0, gref }
    }

    /// The request in the bytes of an RX ring slot (fields in native byte order).
    pub fn from_ne_bytes(bytes: [u8; 8]) -> Self {
        zerocopy::transmute!(bytes)
    }
}

/// A receive response, back end to front end: `struct netif_rx_response` (`netif_rx_response_t`) in
/// `io/netif.h`. 8 bytes, the size of an RX ring slot; a slot after a response with
/// [`NETRXF_extra_info`] holds a [`NetifExtraInfo`] instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifRxResponse {
    /// The `id` of the request whose page was filled.
    pub id: u16,
    /// Offset of the data within the page.
    pub offset: u16,
    /// `NETRXF_*` flags; see [`NetRxFlags`].
    pub flags: u16,
    /// Negative: a `NETIF_RSP_*` error; otherwise the number of bytes received.
    pub status: i16,
}

impl NetifRxResponse {
    /// The response slot holding `extra` (the extra info overlays the whole 8-byte response).
    pub fn from_extra_info(extra: &NetifExtraInfo) -> Self {
        zerocopy::transmute!(*extra)
    }

    /// Reinterprets this response slot as an extra info (what a front end does after a response with
    /// [`NETRXF_extra_info`]).
    pub fn as_extra_info(&self) -> NetifExtraInfo {
        zerocopy::transmute!(*self)
    }

    /// The flags, with bits that `io/netif.h` does not define kept.
    pub const fn rx_flags(&self) -> NetRxFlags {
        NetRxFlags::from_bits_retain(self.flags)
    }
}

/// The type-specific part of a [`NetifExtraInfo`]: the 6-byte, 2-aligned C union `u` of
/// `struct netif_extra_info` in `io/netif.h` (members `gso`, `mcast`, `hash` and `pad[3]`).
///
/// It is kept as raw bytes; the typed views [`NetifExtraInfoGso`], [`NetifExtraInfoMcast`] and
/// [`NetifExtraInfoHash`] have the C layout of the union's members and are read or written whole.
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifExtraInfoU {
    /// The union's bytes.
    pub bytes: [u8; 6],
}

impl NetifExtraInfoU {
    /// The union read as `u.gso`.
    pub fn gso(&self) -> NetifExtraInfoGso {
        zerocopy::transmute!(self.bytes)
    }

    /// The union read as `u.mcast`.
    pub const fn mcast(&self) -> NetifExtraInfoMcast {
        NetifExtraInfoMcast { addr: self.bytes }
    }

    /// The union read as `u.hash`.
    pub fn hash(&self) -> NetifExtraInfoHash {
        zerocopy::transmute!(self.bytes)
    }

    /// The union read as `u.pad`, three native-endian `u16`.
    pub fn pad(&self) -> [u16; 3] {
        zerocopy::transmute!(self.bytes)
    }

    /// The union holding `u.gso`.
    pub fn from_gso(gso: NetifExtraInfoGso) -> Self {
        Self {
            bytes: zerocopy::transmute!(gso),
        }
    }

    /// The union holding `u.mcast`.
    pub const fn from_mcast(mcast: NetifExtraInfoMcast) -> Self {
        Self { bytes: mcast.addr }
    }

    /// The union holding `u.hash`.
    pub fn from_hash(hash: NetifExtraInfoHash) -> Self {
        Self {
            bytes: zerocopy::transmute!(hash),
        }
    }
}

/// `u.gso` of `struct netif_extra_info` in `io/netif.h`: segmentation offload parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifExtraInfoGso {
    /// Largest payload of each segment (the TCP MSS).
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`; see [`GsoType`].
    pub r#type: u8,
    /// Explicit padding in the C struct (`pad`); zero in what we write.
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*` bits (none are defined by `io/netif.h`).
    pub features: u16,
}

impl NetifExtraInfoGso {
    /// A GSO view, `pad` zeroed.
    pub const fn new(size: u16, gso_type: u8, features: u16) -> Self {
        Self {
            size,
            r#type: gso_type,
            pad: 0,
            features,
        }
    }
}

/// `u.mcast` of `struct netif_extra_info` in `io/netif.h`: a multicast address to add or remove.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifExtraInfoMcast {
    /// The Ethernet address.
    pub addr: [u8; 6],
}

/// `u.hash` of `struct netif_extra_info` in `io/netif.h`: a hash value computed by the sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifExtraInfoHash {
    /// The hash type, one of `_XEN_NETIF_CTRL_HASH_TYPE_*`; see [`HashType`].
    pub r#type: u8,
    /// The algorithm, one of `XEN_NETIF_CTRL_HASH_ALGORITHM_*`; see [`HashAlgorithm`].
    pub algorithm: u8,
    /// The hash value, least significant byte first.
    pub value: [u8; 4],
}

impl NetifExtraInfoHash {
    /// A hash view; `value` is stored least significant byte first.
    pub const fn new(hash_type: u8, algorithm: u8, value: u32) -> Self {
        Self {
            r#type: hash_type,
            algorithm,
            value: value.to_le_bytes(),
        }
    }
}

/// An extra-info segment: `struct netif_extra_info` (`netif_extra_info_t`) in `io/netif.h`. 8 bytes, so
/// that it fits in a TX request slot and in an RX response slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`; see [`ExtraType`].
    pub r#type: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`; see [`ExtraFlags`].
    pub flags: u8,
    /// The type-specific union.
    pub u: NetifExtraInfoU,
}

impl NetifExtraInfo {
    /// All zeroes (type `NONE`, invalid on the wire).
    pub const ZERO: Self = Self {
        r#type: 0,
        flags: 0,
        u: NetifExtraInfoU { bytes: [0; 6] },
    };

    /// A GSO extra.
    pub fn gso(gso: NetifExtraInfoGso, flags: ExtraFlags) -> Self {
        Self {
            r#type: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: flags.bits(),
            u: NetifExtraInfoU::from_gso(gso),
        }
    }

    /// A multicast-add (`add == true`) or multicast-delete extra for `addr`.
    pub const fn mcast(add: bool, addr: [u8; 6], flags: ExtraFlags) -> Self {
        let r#type = if add {
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD
        } else {
            XEN_NETIF_EXTRA_TYPE_MCAST_DEL
        };
        Self {
            r#type,
            flags: flags.bits(),
            u: NetifExtraInfoU { bytes: addr },
        }
    }

    /// A hash extra.
    pub fn hash(hash: NetifExtraInfoHash, flags: ExtraFlags) -> Self {
        Self {
            r#type: XEN_NETIF_EXTRA_TYPE_HASH,
            flags: flags.bits(),
            u: NetifExtraInfoU::from_hash(hash),
        }
    }

    /// The flags, with bits that `io/netif.h` does not define kept.
    pub const fn extra_flags(&self) -> ExtraFlags {
        ExtraFlags::from_bits_retain(self.flags)
    }
}

/// One entry of the list that `ADD_GREF_MAPPING`/`DEL_GREF_MAPPING` point to: `struct xen_netif_gref` in
/// `io/netif.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenNetifGref {
    /// The grant reference (`grant_ref_t`, IN).
    pub r#ref: u32,
    /// `XEN_NETIF_CTRLF_GREF_*` flags (IN); see [`GrefFlags`].
    pub flags: u16,
    /// A `XEN_NETIF_CTRL_STATUS_*` value (OUT).
    pub status: u16,
}

/// A control request, front end to back end: `struct xen_netif_ctrl_request` in `io/netif.h`.
///
/// Validate a copy with [`XenNetifCtrlRequest::validate`](super::XenNetifCtrlRequest::validate).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenNetifCtrlRequest {
    /// Request identifier, echoed in the response.
    pub id: u16,
    /// `XEN_NETIF_CTRL_TYPE_*`; see [`CtrlType`].
    pub r#type: u16,
    /// Type-specific arguments.
    pub data: [u32; 3],
}

/// A control response, back end to front end: `struct xen_netif_ctrl_response` in `io/netif.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenNetifCtrlResponse {
    /// The `id` of the request answered.
    pub id: u16,
    /// The `type` of the request answered.
    pub r#type: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`; see [`CtrlStatus`].
    pub status: u32,
    /// Type-specific result.
    pub data: u32,
}

impl XenNetifCtrlResponse {
    /// The response to `request` (its `id` and `type` echoed) with `status` and `data`. The struct has no
    /// padding to leak.
    pub const fn new(request: &XenNetifCtrlRequest, status: CtrlStatus, data: u32) -> Self {
        Self {
            id: request.id,
            r#type: request.r#type,
            status: status as u32,
            data,
        }
    }

    /// The typed status, or an error for a value `io/netif.h` does not define.
    pub fn ctrl_status(&self) -> Result<CtrlStatus, NetifError> {
        CtrlStatus::try_from(self.status)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ring protocols
// ---------------------------------------------------------------------------------------------------------

/// The transmit ring: `DEFINE_RING_TYPES(netif_tx, struct netif_tx_request, struct netif_tx_response)` in
/// `io/netif.h`. 12-byte slots.
#[derive(Clone, Copy, Debug)]
pub struct NetifTx;

impl RingProtocol for NetifTx {
    type Request = NetifTxRequest;
    type Response = NetifTxResponse;
}

/// The receive ring: `DEFINE_RING_TYPES(netif_rx, struct netif_rx_request, struct netif_rx_response)` in
/// `io/netif.h`. 8-byte slots.
#[derive(Clone, Copy, Debug)]
pub struct NetifRx;

impl RingProtocol for NetifRx {
    type Request = NetifRxRequest;
    type Response = NetifRxResponse;
}

/// The control ring: `DEFINE_RING_TYPES(xen_netif_ctrl, struct xen_netif_ctrl_request, struct
/// xen_netif_ctrl_response)` in `io/netif.h`. 16-byte slots.
#[derive(Clone, Copy, Debug)]
pub struct NetifCtrl;

impl RingProtocol for NetifCtrl {
    type Request = XenNetifCtrlRequest;
    type Response = XenNetifCtrlResponse;
}

/// Slots in a one-page TX ring (Linux's `XEN_NETIF_TX_RING_SIZE`, `__CONST_RING_SIZE(xen_netif_tx,
/// XEN_PAGE_SIZE)`): 256.
pub const NET_TX_RING_SIZE: u32 = ring_entries::<NetifTx>(crate::XEN_PAGE_SIZE);
/// Slots in a one-page RX ring (Linux's `XEN_NETIF_RX_RING_SIZE`): 256.
pub const NET_RX_RING_SIZE: u32 = ring_entries::<NetifRx>(crate::XEN_PAGE_SIZE);
/// Slots in a one-page control ring (`__CONST_RING_SIZE(xen_netif_ctrl, XEN_PAGE_SIZE)`): 128.
pub const NET_CTRL_RING_SIZE: u32 = ring_entries::<NetifCtrl>(crate::XEN_PAGE_SIZE);

// The extra info must fit in a TX request slot and be exactly an RX response slot (`io/netif.h`: "This
// structure needs to fit within both netif_tx_request_t and netif_rx_response_t").
const _: () = assert!(size_of::<NetifExtraInfo>() <= size_of::<NetifTxRequest>());
const _: () = assert!(size_of::<NetifExtraInfo>() == size_of::<NetifRxResponse>());
const _: () = assert!(size_of::<NetifExtraInfoU>() == 6 && align_of::<NetifExtraInfoU>() == 2);
