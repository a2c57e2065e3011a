//! `xen_abi::netif` against `io/netif.h`: every structure (size, alignment, every field offset, the
//! members of `netif_extra_info`'s union), the ring slots, and every constant.
//!
//! Left out because they have no C counterpart in `io/netif.h`: `ETH_HLEN`, `XEN_NETBK_MCAST_MAX`,
//! `XEN_NETBK_MAX_HASH_KEY_SIZE` and `XEN_NETBK_MAX_HASH_MAPPING_SIZE` (Linux netback's own limits), and
//! the private `TxSlotAsExtra` view of a TX slot. `MAX_TX_EXTRAS`, `XEN_NETBK_LEGACY_SLOTS_MAX`,
//! `HASH_MAPPING_ENTRIES_PER_PAGE` and `GREF_MAPPING_ENTRIES_PER_PAGE` are compared with the formula
//! that derives them from the header, computed in C.

use blanket_conformance::{Entry, c_table, check, const_as, layout, offset};
use xen_abi::netif;
use xen_abi::netif::{
    NET_CTRL_RING_SIZE, NET_RX_RING_SIZE, NET_TX_RING_SIZE, NetifCtrl, NetifExtraInfo,
    NetifExtraInfoGso, NetifExtraInfoHash, NetifExtraInfoMcast, NetifExtraInfoU, NetifRx,
    NetifRxRequest, NetifRxResponse, NetifTx, NetifTxRequest, NetifTxResponse, XenNetifCtrlRequest,
    XenNetifCtrlResponse, XenNetifGref,
};
use xen_abi::ring::RingProtocol;

/// `consts!` of `blanket_conformance` for `xen_abi::netif`: the harness's own macro does not expand (its
/// path and name repetitions are nested), so the same entries are built here.
/// Size and alignment of a union member of `struct netif_extra_info` (`u`, `u.gso`, ...).
fn member<T>(name: &str) -> Vec<Entry> {
    vec![
        Entry::new(
            format!("size:struct netif_extra_info.{name}"),
            size_of::<T>() as i64,
        ),
        Entry::new(
            format!("align:struct netif_extra_info.{name}"),
            align_of::<T>() as i64,
        ),
    ]
}

/// The offset of field `field_offset` of the union member at `u`.
fn in_union(cfield: &str, field_offset: usize) -> Vec<Entry> {
    vec![Entry::new(
        format!("offset:struct netif_extra_info.{cfield}"),
        (std::mem::offset_of!(NetifExtraInfo, u) + field_offset) as i64,
    )]
}

/// The slot union of a ring: size and alignment are those of `SLOT_SIZE` and the larger alignment.
fn slot<P: RingProtocol>(c: &str) -> Vec<Entry> {
    let align = align_of::<P::Request>().max(align_of::<P::Response>());
    vec![
        Entry::new(format!("size:union {c}_sring_entry"), P::SLOT_SIZE as i64),
        Entry::new(format!("align:union {c}_sring_entry"), align as i64),
    ]
}

#[test]
fn native_layout_matches_netif_h() {
    use std::mem::offset_of;
    let rust = [
        layout!(NetifTxRequest => "struct netif_tx_request" { gref, offset, flags, id, size }),
        layout!(NetifTxResponse => "struct netif_tx_response" { id, status }),
        layout!(NetifRxRequest => "struct netif_rx_request" { id, pad, gref }),
        layout!(NetifRxResponse => "struct netif_rx_response" { id, offset, flags, status }),
        layout!(NetifExtraInfo => "struct netif_extra_info" { flags, u }),
        offset!(NetifExtraInfo => "struct netif_extra_info"."type" = r#type),
        member::<NetifExtraInfoU>("u"),
        member::<NetifExtraInfoGso>("u.gso"),
        member::<NetifExtraInfoMcast>("u.mcast"),
        member::<NetifExtraInfoHash>("u.hash"),
        member::<[u16; 3]>("u.pad"),
        in_union("u.gso.size", offset_of!(NetifExtraInfoGso, size)),
        in_union("u.gso.type", offset_of!(NetifExtraInfoGso, r#type)),
        in_union("u.gso.pad", offset_of!(NetifExtraInfoGso, pad)),
        in_union("u.gso.features", offset_of!(NetifExtraInfoGso, features)),
        in_union("u.mcast.addr", offset_of!(NetifExtraInfoMcast, addr)),
        in_union("u.hash.type", offset_of!(NetifExtraInfoHash, r#type)),
        in_union(
            "u.hash.algorithm",
            offset_of!(NetifExtraInfoHash, algorithm),
        ),
        in_union("u.hash.value", offset_of!(NetifExtraInfoHash, value)),
        in_union("u.pad", offset_of!(NetifExtraInfoU, bytes)),
        layout!(XenNetifCtrlRequest => "struct xen_netif_ctrl_request" { id, data }),
        offset!(XenNetifCtrlRequest => "struct xen_netif_ctrl_request"."type" = r#type),
        layout!(XenNetifCtrlResponse => "struct xen_netif_ctrl_response" { id, status, data }),
        offset!(XenNetifCtrlResponse => "struct xen_netif_ctrl_response"."type" = r#type),
        layout!(XenNetifGref => "struct xen_netif_gref" { flags, status }),
        offset!(XenNetifGref => "struct xen_netif_gref"."ref" = r#ref),
        slot::<NetifTx>("netif_tx"),
        slot::<NetifRx>("netif_rx"),
        slot::<NetifCtrl>("xen_netif_ctrl"),
        const_as!("__CONST_RING_SIZE(netif_tx, 4096)" = NET_TX_RING_SIZE),
        const_as!("__CONST_RING_SIZE(netif_rx, 4096)" = NET_RX_RING_SIZE),
        const_as!("__CONST_RING_SIZE(xen_netif_ctrl, 4096)" = NET_CTRL_RING_SIZE),
        blanket_conformance::consts!(xen_abi::netif;
            XEN_NETIF_NR_SLOTS_MIN,
            XEN_NETIF_MAX_TX_SIZE,
            _NETTXF_csum_blank,
            NETTXF_csum_blank,
            _NETTXF_data_validated,
            NETTXF_data_validated,
            _NETTXF_more_data,
            NETTXF_more_data,
            _NETTXF_extra_info,
            NETTXF_extra_info,
            _NETRXF_data_validated,
            NETRXF_data_validated,
            _NETRXF_csum_blank,
            NETRXF_csum_blank,
            _NETRXF_more_data,
            NETRXF_more_data,
            _NETRXF_extra_info,
            NETRXF_extra_info,
            _NETRXF_gso_prefix,
            NETRXF_gso_prefix,
            XEN_NETIF_EXTRA_TYPE_NONE,
            XEN_NETIF_EXTRA_TYPE_GSO,
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
            XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
            XEN_NETIF_EXTRA_TYPE_HASH,
            XEN_NETIF_EXTRA_TYPE_MAX,
            _XEN_NETIF_EXTRA_FLAG_MORE,
            XEN_NETIF_EXTRA_FLAG_MORE,
            XEN_NETIF_GSO_TYPE_NONE,
            XEN_NETIF_GSO_TYPE_TCPV4,
            XEN_NETIF_GSO_TYPE_TCPV6,
            NETIF_RSP_DROPPED,
            NETIF_RSP_ERROR,
            NETIF_RSP_OKAY,
            NETIF_RSP_NULL,
            _XEN_NETIF_CTRL_HASH_TYPE_IPV4,
            XEN_NETIF_CTRL_HASH_TYPE_IPV4,
            _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
            XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
            _XEN_NETIF_CTRL_HASH_TYPE_IPV6,
            XEN_NETIF_CTRL_HASH_TYPE_IPV6,
            _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
            XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
            XEN_NETIF_CTRL_HASH_ALGORITHM_NONE,
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
            XEN_NETIF_CTRL_TYPE_INVALID,
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
            XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
            XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE,
            XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
            XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
            XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
            _XEN_NETIF_CTRLF_GREF_readonly,
            XEN_NETIF_CTRLF_GREF_readonly,
            MAX_TX_EXTRAS,
            XEN_NETBK_LEGACY_SLOTS_MAX,
            HASH_MAPPING_ENTRIES_PER_PAGE,
            GREF_MAPPING_ENTRIES_PER_PAGE,
        ),
    ]
    .concat();
    check("netif", &c_table!(abi_table_netif), &rust);
}

#[test]
fn typed_enums_and_flags_use_the_header_values() {
    use xen_abi::netif::*;
    // Each enum discriminant and flag bit is the constant checked above; a mismatch here would be a typo.
    assert_eq!(ExtraType::Hash as u8, XEN_NETIF_EXTRA_TYPE_HASH);
    assert_eq!(GsoType::TcpV6 as u8, XEN_NETIF_GSO_TYPE_TCPV6);
    assert_eq!(
        HashType::Ipv6Tcp.bit().bits(),
        XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP
    );
    assert_eq!(HashTypes::all().bits(), 0xf);
    assert_eq!(NetTxFlags::all().bits(), 0xf);
    assert_eq!(NetRxFlags::all().bits(), 0x1f);
    assert_eq!(
        CtrlType::DelGrefMapping as u16,
        XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING
    );
    assert_eq!(
        CtrlStatus::BufferOverflow as u32,
        XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW
    );
    assert_eq!(NetifRspStatus::Null as i16, NETIF_RSP_NULL);
}

unsafe extern "C" {
    fn netif_c_toeplitz_hash(key: *const u8, keylen: u32, buf: *const u8, buflen: u32) -> u32;
}

fn c_toeplitz(key: &[u8], buf: &[u8]) -> u32 {
    // SAFETY: the C function reads exactly `keylen` bytes of `key` and `buflen` bytes of `buf`, which are
    // the lengths of the two live slices; it keeps no pointer after returning.
    unsafe {
        netif_c_toeplitz_hash(
            key.as_ptr(),
            key.len() as u32,
            buf.as_ptr(),
            buf.len() as u32,
        )
    }
}

#[test]
fn toeplitz_hash_matches_netif_h() {
    // The Microsoft RSS verification key and its first IPv4 example (66.9.149.187 -> 161.142.100.80).
    let key: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];
    let ipv4 = [66, 9, 149, 187, 161, 142, 100, 80];
    assert_eq!(c_toeplitz(&key, &ipv4), 0x323e_8fc2);
    assert_eq!(netif::toeplitz_hash(&key, &ipv4), 0x323e_8fc2);
}

proptest::proptest! {
    #[test]
    fn toeplitz_hash_equals_the_header_code(
        key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
        buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        proptest::prop_assert_eq!(netif::toeplitz_hash(&key, &buf), c_toeplitz(&key, &buf));
    }
}
