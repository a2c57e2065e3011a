//! `xen_abi::netif` against the netif cases of HOSTILE-INPUT.md, one test per case, plus response
//! padding (XSA-216) and proptest round trips of every encode/decode pair.

use proptest::prelude::*;
use xen_abi::netif::*;
use zerocopy::{FromBytes, IntoBytes};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

const GREF: u32 = 100;

fn req(flags: NetTxFlags, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest::new(GREF + u32::from(id), 0, flags, id, size)
}

fn more() -> NetTxFlags {
    NetTxFlags::MORE_DATA
}

fn none() -> NetTxFlags {
    NetTxFlags::empty()
}

fn extra_slot(extra: NetifExtraInfo) -> NetifTxRequest {
    NetifTxRequest::from_extra_info(&extra)
}

fn gso_extra(size: u16, gso_type: u8, more: bool) -> NetifTxRequest {
    let flags = if more {
        ExtraFlags::MORE
    } else {
        ExtraFlags::empty()
    };
    extra_slot(NetifExtraInfo::gso(
        NetifExtraInfoGso::new(size, gso_type, 0),
        flags,
    ))
}

/// Parses `slots` with the ring holding `available` slots; returns the result of the last push.
fn parse_n<const N: usize>(
    config: TxConfig,
    slots: &[NetifTxRequest],
    available: u32,
) -> Result<Option<TxParsed<N>>, NetifError> {
    let mut parser = TxPacketParser::<N>::with_config(config, available);
    parser.push_all(slots).0
}

fn parse(slots: &[NetifTxRequest]) -> Result<Option<TxParsed>, NetifError> {
    parse_n::<XEN_NETBK_LEGACY_SLOTS_MAX>(TxConfig::DEFAULT, slots, slots.len() as u32)
}

fn packet(result: Result<Option<TxParsed>, NetifError>) -> TxPacket {
    match result {
        Ok(Some(TxParsed::Packet(p))) => p,
        other => panic!("expected a packet, got {other:?}"),
    }
}

/// A packet of `n` data slots: the first holds 100 bytes, each fragment 10.
fn chain(n: u16) -> Vec<NetifTxRequest> {
    let total = 100 + 10 * (n - 1);
    (0..n)
        .map(|i| {
            let flags = if i + 1 < n { more() } else { none() };
            req(flags, i, if i == 0 { total } else { 10 })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// TX: chains and slot counts
// ---------------------------------------------------------------------------------------------------------

#[test]
fn well_formed_packet_is_described_exactly() {
    let slots = [
        NetifTxRequest::new(
            200,
            64,
            NetTxFlags::CSUM_BLANK | more() | NetTxFlags::EXTRA_INFO,
            7,
            3000,
        ),
        gso_extra(1448, XEN_NETIF_GSO_TYPE_TCPV4, false),
        NetifTxRequest::new(201, 0, more(), 8, 2000),
        NetifTxRequest::new(202, 100, none(), 9, 500),
    ];
    let p = packet(parse(&slots));
    assert_eq!(p.id(), 7);
    assert_eq!(p.size(), 3000);
    assert_eq!(p.slots(), 4);
    assert_eq!(p.checksum_flags(), NetTxFlags::CSUM_BLANK);
    let sizes: Vec<(u32, u16, u16)> = p
        .fragments()
        .iter()
        .map(|f| (f.gref, f.offset, f.size))
        .collect();
    assert_eq!(sizes, [(200, 64, 500), (201, 0, 2000), (202, 100, 500)]);
    assert_eq!(
        p.extras().gso(),
        Some(GsoInfo {
            size: 1448,
            gso_type: GsoType::TcpV4,
            features: 0
        })
    );
    let rsp: Vec<(u16, i16)> = p
        .responses(NetifRspStatus::Okay)
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(
        rsp,
        [
            (7, NETIF_RSP_OKAY),
            (7, NETIF_RSP_NULL),
            (8, NETIF_RSP_OKAY),
            (9, NETIF_RSP_OKAY)
        ]
    );
}

#[test]
fn missing_final_fragment_is_rejected() {
    // `more_data` left set on the last slot the ring holds.
    let mut slots = chain(3);
    slots[2].flags = more().bits();
    let mut parser: TxPacketParser = TxPacketParser::new(3);
    assert_eq!(parser.push(slots[0]), Ok(None));
    assert_eq!(parser.push(slots[1]), Ok(None));
    assert_eq!(
        parser.push(slots[2]),
        Err(NetifError::MissingFinalFragment {
            slots: 3,
            available: 3
        })
    );
    assert_eq!(parser.slots_consumed(), 3);
    // A single request with more_data and nothing after it.
    assert_eq!(
        parse(&[req(more(), 0, 100)]),
        Err(NetifError::MissingFinalFragment {
            slots: 1,
            available: 1
        })
    );
}

#[test]
fn more_than_18_slots_is_rejected() {
    assert_eq!(parse(&chain(19)), Err(NetifError::TooManySlots { max: 18 }));
}

#[test]
fn eighteen_slots_are_accepted() {
    let p = packet(parse(&chain(18)));
    assert_eq!(p.fragments().len(), 18);
    assert_eq!(p.size(), 100 + 170);
}

#[test]
fn full_ring_of_slots_is_rejected() {
    // Every slot of a 256-slot ring has more_data set: a parser allowed the whole ring still stops at the
    // last slot, and the default one stops at 19.
    let ring = NET_TX_RING_SIZE;
    assert_eq!(ring, 256);
    let slots: Vec<_> = (0..ring as u16)
        .map(|i| req(more(), i, if i == 0 { 0xFFFF } else { 1 }))
        .collect();
    assert_eq!(
        parse_n::<256>(TxConfig::DEFAULT, &slots, ring),
        Err(NetifError::MissingFinalFragment {
            slots: ring,
            available: ring
        })
    );
    assert_eq!(
        parse_n::<18>(TxConfig::DEFAULT, &slots, ring),
        Err(NetifError::TooManySlots { max: 18 })
    );
}

#[test]
fn slots_beyond_the_budget_or_after_the_end_are_refused() {
    let slots = chain(2);
    let mut parser: TxPacketParser = TxPacketParser::new(0);
    assert_eq!(
        parser.push(slots[0]),
        Err(NetifError::SlotBudgetExceeded { available: 0 })
    );
    let mut parser: TxPacketParser = TxPacketParser::new(2);
    assert!(parser.push_all(&slots).0.unwrap().is_some());
    assert!(parser.is_finished());
    assert_eq!(parser.push(slots[0]), Err(NetifError::ParserFinished));
}

// ---------------------------------------------------------------------------------------------------------
// TX: sizes and offsets
// ---------------------------------------------------------------------------------------------------------

#[test]
fn fragment_offset_plus_size_above_4096_is_rejected() {
    let slots = [
        req(more(), 0, 300),
        NetifTxRequest::new(GREF, 4000, none(), 1, 200),
    ];
    assert_eq!(
        parse(&slots),
        Err(NetifError::FragmentCrossesPage {
            fragment: 1,
            offset: 4000,
            size: 200
        })
    );
    // The first fragment, whose own size is only known at the end.
    let slots = [
        NetifTxRequest::new(GREF, 4090, more(), 0, 150),
        req(none(), 1, 50),
    ];
    assert_eq!(
        parse(&slots),
        Err(NetifError::FragmentCrossesPage {
            fragment: 0,
            offset: 4090,
            size: 100
        })
    );
    // An offset beyond the page with any size.
    let slots = [NetifTxRequest::new(GREF, 0xFFFF, none(), 0, 60)];
    assert_eq!(
        parse(&slots),
        Err(NetifError::FragmentCrossesPage {
            fragment: 0,
            offset: 0xFFFF,
            size: 60
        })
    );
    // Exactly to the end of the page is fine.
    let slots = [NetifTxRequest::new(GREF, 4096 - 60, none(), 0, 60)];
    assert_eq!(packet(parse(&slots)).fragments()[0].size, 60);
}

#[test]
fn zero_length_fragment_is_rejected() {
    let slots = [req(more(), 0, 100), req(more(), 1, 0), req(none(), 2, 10)];
    assert_eq!(
        parse(&slots),
        Err(NetifError::ZeroLengthFragment { fragment: 1 })
    );
    // The first fragment left with nothing: the fragments take the whole size.
    let slots = [req(more(), 0, 100), req(none(), 1, 100)];
    assert_eq!(
        parse(&slots),
        Err(NetifError::ZeroLengthFragment { fragment: 0 })
    );
}

#[test]
fn packet_smaller_than_14_bytes_is_rejected() {
    for size in 0..ETH_HLEN {
        assert_eq!(
            parse(&[req(none(), 0, size)]),
            Err(NetifError::PacketTooSmall { size })
        );
    }
    assert_eq!(packet(parse(&[req(none(), 0, 14)])).size(), 14);
}

#[test]
fn first_size_smaller_than_sum_of_fragments_is_rejected() {
    let slots = [req(more(), 0, 100), req(more(), 1, 60), req(none(), 2, 50)];
    assert_eq!(
        parse(&slots),
        Err(NetifError::FragmentLargerThanRemaining {
            fragment: 2,
            size: 50,
            remaining: 40
        })
    );
}

#[test]
fn headers_split_across_fragments_are_rejected_by_default() {
    // The first fragment holds 10 bytes: the Ethernet header continues in the next one.
    let slots = [req(more(), 0, 110), req(none(), 1, 100)];
    assert_eq!(
        parse(&slots),
        Err(NetifError::HeaderSplit {
            first_len: 10,
            min: ETH_HLEN
        })
    );
}

#[test]
fn headers_split_across_fragments_are_described_exactly_when_allowed() {
    let config = TxConfig {
        min_first_fragment: 1,
        ..TxConfig::DEFAULT
    };
    let slots = [req(more(), 0, 110), req(none(), 1, 100)];
    let Ok(Some(TxParsed::Packet(p))) = parse_n::<18>(config, &slots, 2) else {
        panic!("not a packet")
    };
    let sizes: Vec<u16> = p.fragments().iter().map(|f| f.size).collect();
    assert_eq!(sizes, [10, 100]);
    assert_eq!(p.size(), 110);
}

#[test]
fn packet_larger_than_max_tx_size_is_rejected() {
    // The size field is 16 bits, so XEN_NETIF_MAX_TX_SIZE (0xFFFF) is the most a packet can claim, and it
    // is accepted by default: 4095 + 15 * 4096 bytes in 16 slots.
    assert_eq!(XEN_NETIF_MAX_TX_SIZE, u16::MAX);
    let mut slots = vec![NetifTxRequest::new(
        GREF,
        1,
        more(),
        0,
        XEN_NETIF_MAX_TX_SIZE,
    )];
    slots.extend((1..16).map(|i| req(if i < 15 { more() } else { none() }, i, 4096)));
    let p = packet(parse(&slots));
    assert_eq!(p.size(), XEN_NETIF_MAX_TX_SIZE);
    assert_eq!(p.fragments()[0].size, 4095);
    // A back end may lower the maximum (to its MTU): one byte more is rejected.
    let config = TxConfig {
        max_packet_size: 1514,
        ..TxConfig::DEFAULT
    };
    assert_eq!(
        parse_n::<18>(config, &[req(none(), 0, 1515)], 1),
        Err(NetifError::PacketTooLarge {
            size: 1515,
            max: 1514
        })
    );
    assert!(
        parse_n::<18>(config, &[req(none(), 0, 1514)], 1)
            .unwrap()
            .is_some()
    );
}

#[test]
fn reserved_grant_ref_is_rejected() {
    let slots = [NetifTxRequest::new(1, 0, none(), 0, 100)];
    assert_eq!(parse(&slots), Err(NetifError::ReservedGrantRef { gref: 1 }));
    let slots = [
        req(more(), 0, 200),
        NetifTxRequest::new(7, 0, none(), 1, 100),
    ];
    assert_eq!(parse(&slots), Err(NetifError::ReservedGrantRef { gref: 7 }));
}

// ---------------------------------------------------------------------------------------------------------
// TX: extra info
// ---------------------------------------------------------------------------------------------------------

fn with_extras(extras: &[NetifTxRequest]) -> Vec<NetifTxRequest> {
    let mut slots = vec![req(NetTxFlags::EXTRA_INFO, 0, 100)];
    slots.extend_from_slice(extras);
    slots
}

#[test]
fn extra_info_of_type_0_is_rejected() {
    let extra = NetifExtraInfo {
        r#type: XEN_NETIF_EXTRA_TYPE_NONE,
        ..NetifExtraInfo::ZERO
    };
    assert_eq!(
        parse(&with_extras(&[extra_slot(extra)])),
        Err(NetifError::ExtraTypeNone)
    );
}

#[test]
fn extra_info_of_type_5_and_above_is_rejected() {
    for ty in XEN_NETIF_EXTRA_TYPE_MAX..=u8::MAX {
        let extra = NetifExtraInfo {
            r#type: ty,
            ..NetifExtraInfo::ZERO
        };
        assert_eq!(
            parse(&with_extras(&[extra_slot(extra)])),
            Err(NetifError::UnknownExtraType { extra_type: ty })
        );
    }
}

#[test]
fn chain_of_more_extras_running_off_the_ring_is_rejected() {
    // The request announces an extra and is the last slot.
    assert_eq!(
        parse(&with_extras(&[])),
        Err(NetifError::ExtraInfoRunsOffRing {
            slots: 1,
            available: 1
        })
    );
    // The extra announces another one and is the last slot.
    assert_eq!(
        parse(&with_extras(&[gso_extra(
            1000,
            XEN_NETIF_GSO_TYPE_TCPV4,
            true
        )])),
        Err(NetifError::ExtraInfoRunsOffRing {
            slots: 2,
            available: 2
        })
    );
}

#[test]
fn repeated_extra_type_is_rejected() {
    // A ring full of GSO extras, each with MORE: the second one ends it (at most one of each type, so
    // at most 4 extras per packet).
    let extras: Vec<_> = (0..255)
        .map(|_| gso_extra(1000, XEN_NETIF_GSO_TYPE_TCPV4, true))
        .collect();
    let slots = with_extras(&extras);
    let mut parser: TxPacketParser = TxPacketParser::new(slots.len() as u32);
    let (result, used) = parser.push_all(&slots);
    assert_eq!(
        result,
        Err(NetifError::DuplicateExtraType {
            extra_type: XEN_NETIF_EXTRA_TYPE_GSO
        })
    );
    assert_eq!(used, 3);
}

#[test]
fn gso_size_of_0_is_rejected() {
    let slots = with_extras(&[gso_extra(0, XEN_NETIF_GSO_TYPE_TCPV4, false)]);
    assert_eq!(parse(&slots), Err(NetifError::GsoSizeZero));
}

#[test]
fn unknown_gso_type_is_rejected() {
    for gso_type in
        (0..=u8::MAX).filter(|t| ![XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6].contains(t))
    {
        let slots = with_extras(&[gso_extra(1000, gso_type, false)]);
        assert_eq!(parse(&slots), Err(NetifError::UnknownGsoType { gso_type }));
    }
    let slots = with_extras(&[gso_extra(1000, XEN_NETIF_GSO_TYPE_TCPV6, false)]);
    assert_eq!(
        packet(parse(&slots)).extras().gso().map(|g| g.gso_type),
        Some(GsoType::TcpV6)
    );
}

#[test]
fn unknown_hash_type_or_algorithm_is_rejected() {
    let hash = |ty, alg| {
        extra_slot(NetifExtraInfo::hash(
            NetifExtraInfoHash::new(ty, alg, 1),
            ExtraFlags::empty(),
        ))
    };
    assert_eq!(
        parse(&with_extras(&[hash(4, 1)])),
        Err(NetifError::UnknownHashType { hash_type: 4 })
    );
    assert_eq!(
        parse(&with_extras(&[hash(0, 2)])),
        Err(NetifError::UnknownHashAlgorithm { algorithm: 2 })
    );
    let p = packet(parse(&with_extras(&[hash(
        _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
        1,
    )])));
    assert_eq!(
        p.extras().hash(),
        Some(HashInfo {
            hash_type: HashType::Ipv4Tcp,
            algorithm: HashAlgorithm::Toeplitz,
            value: 1
        })
    );
}

// ---------------------------------------------------------------------------------------------------------
// TX: multicast control
// ---------------------------------------------------------------------------------------------------------

fn mcast_request(add: bool, addr: MacAddr, id: u16) -> [NetifTxRequest; 2] {
    [
        NetifTxRequest::new(0, 0, NetTxFlags::EXTRA_INFO, id, 0),
        extra_slot(NetifExtraInfo::mcast(add, addr, ExtraFlags::empty())),
    ]
}

#[test]
fn flood_of_multicast_adds_is_bounded() {
    let mut filter: MulticastFilter = MulticastFilter::new();
    let mut results = Vec::new();
    for i in 0..1000u16 {
        let addr = [0x01, 0x00, 0x5e, 0, (i >> 8) as u8, i as u8];
        let Ok(Some(TxParsed::Multicast(m))) = parse(&mcast_request(true, addr, i)) else {
            panic!("not mcast")
        };
        assert_eq!(m.op(), MulticastOp::Add(addr));
        assert_eq!(m.slots(), 2);
        results.push(filter.apply(m.op()));
    }
    assert!(
        results[..XEN_NETBK_MCAST_MAX]
            .iter()
            .all(|r| *r == Ok(true))
    );
    assert!(
        results[XEN_NETBK_MCAST_MAX..]
            .iter()
            .all(|r| *r == Err(NetifError::MulticastFilterFull { max: 64 }))
    );
    assert_eq!(filter.len(), XEN_NETBK_MCAST_MAX);
    // Deleting makes room again; adding an address already there does not grow the filter.
    let first = filter.as_slice()[0];
    assert_eq!(filter.apply(MulticastOp::Del(first)), Ok(true));
    assert_eq!(filter.len(), 63);
    assert_eq!(filter.add(filter.as_slice()[0]), Ok(false));
    assert_eq!(filter.add(first), Ok(true));
}

#[test]
fn multicast_requests_that_make_no_sense_are_rejected() {
    let group = [0x01, 0, 0x5e, 0, 0, 1];
    // A unicast address.
    let unicast = [0x02, 0, 0, 0, 0, 1];
    assert_eq!(
        MulticastFilter::<4>::new().add(unicast),
        Err(NetifError::NotMulticastAddress { addr: unicast })
    );
    // Add and delete in one request.
    let slots = [
        NetifTxRequest::new(0, 0, NetTxFlags::EXTRA_INFO, 1, 0),
        extra_slot(NetifExtraInfo::mcast(true, group, ExtraFlags::MORE)),
        extra_slot(NetifExtraInfo::mcast(false, group, ExtraFlags::empty())),
    ];
    assert_eq!(parse(&slots), Err(NetifError::MulticastAddAndDel));
    // A multicast request that claims to carry data.
    let mut slots = mcast_request(true, group, 5).to_vec();
    slots[0].flags |= NETTXF_more_data;
    slots.push(req(none(), 6, 10));
    assert_eq!(parse(&slots), Err(NetifError::MulticastWithData { id: 5 }));
}

// ---------------------------------------------------------------------------------------------------------
// RX
// ---------------------------------------------------------------------------------------------------------

#[test]
fn rx_request_is_validated() {
    assert_eq!(
        NetifRxRequest::new(3, 4242).validate(),
        Ok(RxBuffer { id: 3, gref: 4242 })
    );
    assert_eq!(
        NetifRxRequest::new(3, 0).validate(),
        Err(NetifError::ReservedGrantRef { gref: 0 })
    );
}

#[test]
fn rx_response_past_the_page_is_refused() {
    assert_eq!(
        NetifRxResponse::data(1, 4000, 200, NetRxFlags::empty()),
        Err(NetifError::RxResponseCrossesPage {
            offset: 4000,
            size: 200
        })
    );
    let r = NetifRxResponse::data(
        1,
        96,
        4000,
        NetRxFlags::DATA_VALIDATED | NetRxFlags::MORE_DATA,
    )
    .unwrap();
    assert_eq!(r.as_bytes(), [1, 0, 96, 0, 0b101, 0, 0xa0, 0x0f]);
    assert_eq!(r.received(), Ok(4000));
    assert_eq!(
        NetifRxResponse::error(2, NetifRspStatus::Dropped).received(),
        Err(NETIF_RSP_DROPPED)
    );
}

#[test]
fn rx_slots_needed_counts_pages_and_extras() {
    assert_eq!(rx_slots_needed(0, false, false), 0);
    assert_eq!(rx_slots_needed(1, false, false), 1);
    assert_eq!(rx_slots_needed(4096, false, false), 1);
    assert_eq!(rx_slots_needed(4097, true, true), 4);
    assert_eq!(rx_slots_needed(65535, true, false), 17);
}

// ---------------------------------------------------------------------------------------------------------
// Control ring
// ---------------------------------------------------------------------------------------------------------

fn limits() -> CtrlLimits {
    CtrlLimits {
        hash_mapping_size: 128,
        num_queues: 4,
        ..CtrlLimits::DEFAULT
    }
}

fn ctrl(ty: u16, data: [u32; 3]) -> Result<CtrlOp, NetifError> {
    XenNetifCtrlRequest::new(9, ty, data).validate(&limits())
}

#[test]
fn ctrl_off_plus_len_overflowing_is_rejected() {
    let err = ctrl(
        XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
        [GREF, 16, u32::MAX - 8],
    )
    .unwrap_err();
    assert_eq!(
        err,
        NetifError::HashMappingOffsetOverflow {
            off: u32::MAX - 8,
            len: 16
        }
    );
    assert_eq!(err.ctrl_status(), CtrlStatus::InvalidParameter);
    // No overflow, but past the table set by SET_HASH_MAPPING_SIZE.
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [GREF, 16, 120]),
        Err(NetifError::HashMappingOutOfTable {
            off: 120,
            len: 16,
            size: 128
        })
    );
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [GREF, 16, 112]),
        Ok(CtrlOp::SetHashMapping {
            gref: GREF,
            len: 16,
            off: 112
        })
    );
}

#[test]
fn ctrl_len_above_1024_is_rejected() {
    let big = CtrlLimits {
        hash_mapping_size: u32::MAX,
        ..limits()
    };
    let request =
        XenNetifCtrlRequest::new(1, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [GREF, 1025, 0]);
    assert_eq!(
        request.validate(&big),
        Err(NetifError::HashMappingLenTooLarge {
            len: 1025,
            max: 1024
        })
    );
    let request =
        XenNetifCtrlRequest::new(1, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [GREF, 1024, 0]);
    assert!(request.validate(&big).is_ok());
    // The other sizes with a limit: the key (40 octets), the table (128 entries), gref lists (one page).
    let err = ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [GREF, 41, 0]).unwrap_err();
    assert_eq!(err, NetifError::HashKeyTooLarge { len: 41, max: 40 });
    assert_eq!(err.ctrl_status(), CtrlStatus::BufferOverflow);
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [GREF, 40, 0]),
        Ok(CtrlOp::SetHashKey {
            gref: GREF,
            len: 40
        })
    );
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [129, 0, 0]),
        Err(NetifError::HashMappingSizeTooLarge {
            size: 129,
            max: 128
        })
    );
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING, [0, GREF, 513]),
        Err(NetifError::GrefListTooLarge {
            count: 513,
            max: 512
        })
    );
}

#[test]
fn ctrl_mapping_value_of_at_least_num_queues_is_rejected() {
    let mut table = [0u32, 1, 2, 3, 0, 1];
    assert_eq!(validate_hash_mapping(&table, 4), Ok(()));
    table[4] = 4;
    assert_eq!(
        validate_hash_mapping(&table, 4),
        Err(NetifError::HashMappingQueueOutOfRange {
            index: 4,
            queue: 4,
            num_queues: 4
        })
    );
    // On the copied page bytes.
    let mut page = [0u8; 4096];
    page[..24].copy_from_slice(table.as_bytes());
    assert_eq!(
        validate_hash_mapping_bytes(&page, 6, 4),
        Err(NetifError::HashMappingQueueOutOfRange {
            index: 4,
            queue: 4,
            num_queues: 4
        })
    );
    assert_eq!(
        validate_hash_mapping_bytes(&page, 4, 4).map(<[u8]>::len),
        Ok(16)
    );
    assert_eq!(
        validate_hash_mapping_bytes(&page[..8], 4, 4),
        Err(NetifError::HashMappingBytesTooShort { len: 4, bytes: 8 })
    );
    assert_eq!(
        validate_hash_mapping_bytes(&page, 1025, 4),
        Err(NetifError::HashMappingLenTooLarge {
            len: 1025,
            max: 1024
        })
    );
    // Queue indexes in requests.
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE, [4, 0, 0]),
        Err(NetifError::CtrlQueueOutOfRange {
            queue: 4,
            num_queues: 4
        })
    );
}

#[test]
fn ctrl_unknown_type_is_rejected() {
    for ty in [XEN_NETIF_CTRL_TYPE_INVALID]
        .into_iter()
        .chain(11..=u16::MAX)
    {
        let err = ctrl(ty, [0; 3]).unwrap_err();
        assert_eq!(err, NetifError::UnknownCtrlType { ctrl_type: ty });
        assert_eq!(err.ctrl_status(), CtrlStatus::NotSupported);
    }
}

#[test]
fn ctrl_unknown_flags_or_algorithm_are_rejected() {
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [0x10, 0, 0]),
        Err(NetifError::UnknownHashFlags { flags: 0x10 })
    );
    assert_eq!(
        ctrl(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [2, 0, 0]),
        Err(NetifError::UnknownHashAlgorithm { algorithm: 2 })
    );
}

// ---------------------------------------------------------------------------------------------------------
// Padding (XSA-216) and slot reinterpretation
// ---------------------------------------------------------------------------------------------------------

#[test]
fn responses_and_extras_carry_no_stray_bytes() {
    assert_eq!(
        NetifTxResponse::from_status(0x1234, NetifRspStatus::Error).as_bytes(),
        [0x34, 0x12, 0xff, 0xff]
    );
    let request = XenNetifCtrlRequest::new(0x0102, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [7, 7, 7]);
    let rsp = XenNetifCtrlResponse::from_result(&request, Ok(0xf));
    assert_eq!(rsp.as_bytes(), [2, 1, 1, 0, 0, 0, 0, 0, 0xf, 0, 0, 0]);
    let rsp = XenNetifCtrlResponse::from_result(
        &request,
        Err(NetifError::UnknownCtrlType { ctrl_type: 99 }),
    );
    assert_eq!(rsp.as_bytes(), [2, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    // The GSO view's pad byte, and the TX slot's 4 bytes of "padding for tx", are zero.
    let gso = NetifExtraInfo::gso(
        NetifExtraInfoGso::new(0x5a5, XEN_NETIF_GSO_TYPE_TCPV4, 0),
        ExtraFlags::MORE,
    );
    assert_eq!(
        NetifTxRequest::from_extra_info(&gso).as_bytes(),
        [1, 1, 0xa5, 5, 1, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        NetifRxRequest::new(5, 9).as_bytes(),
        [5, 0, 0, 0, 9, 0, 0, 0]
    );
    assert_eq!(
        NetifRxResponse::from_extra_info(&gso).as_bytes(),
        gso.as_bytes()
    );
}

#[test]
fn tx_slot_reinterprets_as_extra_info() {
    // The bytes a front end wrote into a TX slot for a hash extra.
    let bytes = [4u8, 0, 1, 1, 0x78, 0x56, 0x34, 0x12, 0xaa, 0xbb, 0xcc, 0xdd];
    let slot = NetifTxRequest::read_from_bytes(&bytes).unwrap();
    let extra = slot.as_extra_info();
    assert_eq!(extra.as_bytes(), &bytes[..8]);
    assert_eq!(extra.r#type, XEN_NETIF_EXTRA_TYPE_HASH);
    assert_eq!(extra.u.hash().value, [0x78, 0x56, 0x34, 0x12]);
    assert_eq!(
        TxExtra::parse(&extra),
        Ok(TxExtra::Hash(HashInfo {
            hash_type: HashType::Ipv4Tcp,
            algorithm: HashAlgorithm::Toeplitz,
            value: 0x1234_5678
        }))
    );
}

// ---------------------------------------------------------------------------------------------------------
// proptest: round trips
// ---------------------------------------------------------------------------------------------------------

fn bytes_round_trip<
    T: FromBytes + IntoBytes + zerocopy::Immutable + PartialEq + core::fmt::Debug,
>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let value = T::read_from_bytes(bytes).map_err(|_| TestCaseError::fail("wrong length"))?;
    prop_assert_eq!(value.as_bytes(), bytes);
    let again =
        T::read_from_bytes(value.as_bytes()).map_err(|_| TestCaseError::fail("wrong length"))?;
    prop_assert_eq!(again, value);
    Ok(())
}

fn arb_extra() -> impl Strategy<Value = TxExtra> {
    prop_oneof![
        (
            1..=u16::MAX,
            prop_oneof![Just(GsoType::TcpV4), Just(GsoType::TcpV6)],
            any::<u16>()
        )
            .prop_map(|(size, gso_type, features)| TxExtra::Gso(GsoInfo {
                size,
                gso_type,
                features
            })),
        (
            prop_oneof![
                Just(HashType::Ipv4),
                Just(HashType::Ipv4Tcp),
                Just(HashType::Ipv6),
                Just(HashType::Ipv6Tcp)
            ],
            prop_oneof![Just(HashAlgorithm::None), Just(HashAlgorithm::Toeplitz)],
            any::<u32>()
        )
            .prop_map(|(hash_type, algorithm, value)| TxExtra::Hash(HashInfo {
                hash_type,
                algorithm,
                value
            })),
        any::<[u8; 6]>().prop_map(TxExtra::McastAdd),
        any::<[u8; 6]>().prop_map(TxExtra::McastDel),
    ]
}

fn arb_ctrl_op() -> impl Strategy<Value = CtrlOp> {
    prop_oneof![
        Just(CtrlOp::GetHashFlags),
        (0u32..16).prop_map(|f| CtrlOp::SetHashFlags {
            flags: HashTypes::from_bits_retain(f)
        }),
        (any::<u32>(), 0u32..=40).prop_map(|(gref, len)| CtrlOp::SetHashKey { gref, len }),
        Just(CtrlOp::GetHashMappingSize),
        (0u32..=128).prop_map(|size| CtrlOp::SetHashMappingSize { size }),
        (any::<u32>(), 0u32..=128)
            .prop_flat_map(|(gref, len)| (Just(gref), Just(len), 0..=128 - len))
            .prop_map(|(gref, len, off)| CtrlOp::SetHashMapping { gref, len, off }),
        prop_oneof![Just(HashAlgorithm::None), Just(HashAlgorithm::Toeplitz)]
            .prop_map(|algorithm| CtrlOp::SetHashAlgorithm { algorithm }),
        (0u32..4).prop_map(|queue| CtrlOp::GetGrefMappingSize { queue }),
        (0u32..4, any::<u32>(), 0u32..=512)
            .prop_map(|(queue, gref, count)| CtrlOp::AddGrefMapping { queue, gref, count }),
        (0u32..4, any::<u32>(), 0u32..=512)
            .prop_map(|(queue, gref, count)| CtrlOp::DelGrefMapping { queue, gref, count }),
    ]
}

/// A valid data fragment: gref not reserved, 0 < size, offset + size <= 4096.
fn arb_fragment() -> impl Strategy<Value = (u32, u16, u16, u16)> {
    (8u32..=u32::MAX, any::<u16>(), 1u16..=4096)
        .prop_flat_map(|(gref, id, size)| (Just(gref), 0..=4096 - size, Just(size), Just(id)))
}

/// A generated valid packet: first request (gref, offset, own size >= 14, id, checksum flags), up to 4
/// extras of distinct non-multicast types, and up to 17 more fragments with a total within 0xFFFF.
#[derive(Debug, Clone)]
struct GenPacket {
    first: (u32, u16, u16, u16),
    csum: NetTxFlags,
    extras: Vec<TxExtra>,
    rest: Vec<(u32, u16, u16, u16)>,
}

fn arb_packet() -> impl Strategy<Value = GenPacket> {
    (
        (8u32..=u32::MAX, any::<u16>(), 14u16..=4096)
            .prop_flat_map(|(gref, id, size)| (Just(gref), 0..=4096 - size, Just(size), Just(id))),
        (0u16..4).prop_map(NetTxFlags::from_bits_retain),
        proptest::option::of(arb_extra().prop_filter("gso", |e| matches!(e, TxExtra::Gso(_)))),
        proptest::option::of(arb_extra().prop_filter("hash", |e| matches!(e, TxExtra::Hash(_)))),
        any::<bool>(),
        proptest::collection::vec(arb_fragment(), 0..=17),
    )
        .prop_map(|(first, csum, gso, hash, hash_first, rest)| {
            let mut extras: Vec<TxExtra> = gso.into_iter().chain(hash).collect();
            if hash_first {
                extras.reverse();
            }
            // Keep the total within 0xFFFF by dropping fragments from the end.
            let mut total = u32::from(first.2);
            let rest = rest
                .into_iter()
                .take_while(|f| {
                    total += u32::from(f.2);
                    total <= 0xFFFF
                })
                .collect();
            GenPacket {
                first,
                csum,
                extras,
                rest,
            }
        })
}

fn gen_slots(g: &GenPacket) -> Vec<NetifTxRequest> {
    let total: u16 = g.first.2 + g.rest.iter().map(|f| f.2).sum::<u16>();
    let mut flags = g.csum;
    flags.set(NetTxFlags::EXTRA_INFO, !g.extras.is_empty());
    flags.set(NetTxFlags::MORE_DATA, !g.rest.is_empty());
    let mut slots = vec![NetifTxRequest::new(
        g.first.0, g.first.1, flags, g.first.3, total,
    )];
    for (i, e) in g.extras.iter().enumerate() {
        slots.push(NetifTxRequest::from_extra_info(
            &e.to_extra_info(i + 1 < g.extras.len()),
        ));
    }
    for (i, &(gref, offset, size, id)) in g.rest.iter().enumerate() {
        let flags = if i + 1 < g.rest.len() { more() } else { none() };
        slots.push(NetifTxRequest::new(gref, offset, flags, id, size));
    }
    slots
}

proptest! {
    #[test]
    fn tx_request_bytes_round_trip(bytes in any::<[u8; 12]>()) {
        bytes_round_trip::<NetifTxRequest>(&bytes)?;
        prop_assert_eq!(NetifTxRequest::from_ne_bytes(bytes).as_bytes().to_vec(), bytes.to_vec());
    }

    #[test]
    fn small_structs_bytes_round_trip(b4 in any::<[u8; 4]>(), b8 in any::<[u8; 8]>(), b6 in any::<[u8; 6]>()) {
        bytes_round_trip::<NetifTxResponse>(&b4)?;
        bytes_round_trip::<NetifRxRequest>(&b8)?;
        prop_assert_eq!(NetifRxRequest::from_ne_bytes(b8).as_bytes().to_vec(), b8.to_vec());
        bytes_round_trip::<NetifRxResponse>(&b8)?;
        bytes_round_trip::<NetifExtraInfo>(&b8)?;
        bytes_round_trip::<XenNetifGref>(&b8)?;
        bytes_round_trip::<NetifExtraInfoU>(&b6)?;
        bytes_round_trip::<NetifExtraInfoGso>(&b6)?;
        bytes_round_trip::<NetifExtraInfoMcast>(&b6)?;
        bytes_round_trip::<NetifExtraInfoHash>(&b6)?;
    }

    #[test]
    fn ctrl_structs_bytes_round_trip(b16 in any::<[u8; 16]>(), b12 in any::<[u8; 12]>()) {
        bytes_round_trip::<XenNetifCtrlRequest>(&b16)?;
        prop_assert_eq!(XenNetifCtrlRequest::from_ne_bytes(b16).as_bytes().to_vec(), b16.to_vec());
        bytes_round_trip::<XenNetifCtrlResponse>(&b12)?;
    }

    #[test]
    fn extra_info_round_trips_through_tx_and_rx_slots(bytes in any::<[u8; 8]>()) {
        let extra = NetifExtraInfo::read_from_bytes(&bytes).unwrap();
        let tx = NetifTxRequest::from_extra_info(&extra);
        prop_assert_eq!(tx.as_extra_info(), extra);
        prop_assert_eq!(&tx.as_bytes()[8..], &[0u8; 4]);
        prop_assert_eq!(NetifRxResponse::from_extra_info(&extra).as_extra_info(), extra);
        // The union views write back the same bytes.
        prop_assert_eq!(NetifExtraInfoU::from_gso(extra.u.gso()), extra.u);
        prop_assert_eq!(NetifExtraInfoU::from_hash(extra.u.hash()), extra.u);
        prop_assert_eq!(NetifExtraInfoU::from_mcast(extra.u.mcast()), extra.u);
    }

    #[test]
    fn tx_extra_round_trips(extra in arb_extra(), more in any::<bool>()) {
        let wire = extra.to_extra_info(more);
        prop_assert_eq!(wire.extra_flags().contains(ExtraFlags::MORE), more);
        prop_assert_eq!(TxExtra::parse(&wire), Ok(extra));
    }

    #[test]
    fn ctrl_op_round_trips(op in arb_ctrl_op(), id in any::<u16>()) {
        let request = op.to_request(id);
        prop_assert_eq!(request.id, id);
        prop_assert_eq!(request.r#type, op.ctrl_type() as u16);
        prop_assert_eq!(request.validate(&limits()), Ok(op));
    }

    #[test]
    fn generated_packet_parses_back_exactly(g in arb_packet()) {
        let slots = gen_slots(&g);
        let mut parser: TxPacketParser = TxPacketParser::new(slots.len() as u32);
        let (result, used) = parser.push_all(&slots);
        prop_assert_eq!(used, slots.len());
        let Ok(Some(TxParsed::Packet(p))) = result else {
            return Err(TestCaseError::fail(format!("not a packet: {result:?}")));
        };
        let frags: Vec<(u32, u16, u16, u16)> = p.fragments().iter().map(|f| (f.gref, f.offset, f.size, f.id)).collect();
        let want: Vec<_> = core::iter::once(g.first).chain(g.rest.iter().copied()).collect();
        prop_assert_eq!(frags, want);
        prop_assert_eq!(p.extras().as_slice(), &g.extras[..]);
        prop_assert_eq!(p.checksum_flags(), g.csum);
        prop_assert_eq!(p.id(), g.first.3);
        prop_assert_eq!(p.slots() as usize, slots.len());
        prop_assert_eq!(p.responses(NetifRspStatus::Okay).count(), slots.len());
        // And the serializer writes the same slots back.
        let mut out = vec![NetifTxRequest::new(0, 0, none(), 0, 0); slots.len()];
        prop_assert_eq!(p.to_slots(&mut out), Ok(slots.len()));
        prop_assert_eq!(out, slots);
    }

    #[test]
    fn generated_multicast_request_parses_back_exactly(add in any::<bool>(), addr in any::<[u8; 6]>(), id in any::<u16>()) {
        let slots = mcast_request(add, addr, id);
        let Ok(Some(TxParsed::Multicast(m))) = parse(&slots) else {
            return Err(TestCaseError::fail("not a multicast request"));
        };
        prop_assert_eq!(m.op(), if add { MulticastOp::Add(addr) } else { MulticastOp::Del(addr) });
        prop_assert_eq!(m.id(), id);
        let mut out = [NetifTxRequest::new(0, 0, none(), 0, 0); 2];
        prop_assert_eq!(m.to_slots(&mut out), Ok(2));
        prop_assert_eq!(out, slots);
    }

    #[test]
    fn arbitrary_slots_never_panic_and_successes_hold_their_invariants(
        raw in proptest::collection::vec(any::<[u8; 12]>(), 1..40),
        budget in 0u32..48,
    ) {
        let slots: Vec<NetifTxRequest> = raw.iter().map(|b| NetifTxRequest::read_from_bytes(b).unwrap()).collect();
        let mut parser: TxPacketParser = TxPacketParser::new(budget);
        let (result, used) = parser.push_all(&slots);
        prop_assert!(used as u32 <= budget.max(1));
        if let Ok(Some(TxParsed::Packet(p))) = result {
            prop_assert!(!p.fragments().is_empty() && p.fragments().len() <= XEN_NETBK_LEGACY_SLOTS_MAX);
            prop_assert!(p.size() >= ETH_HLEN);
            let sum: u32 = p.fragments().iter().map(|f| u32::from(f.size)).sum();
            prop_assert_eq!(sum, u32::from(p.size()));
            for f in p.fragments() {
                prop_assert!(f.size > 0 && u32::from(f.offset) + u32::from(f.size) <= 4096);
            }
            prop_assert_eq!(p.slots() as usize, used);
        }
    }
}
