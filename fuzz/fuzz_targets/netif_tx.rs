//! netif TX slots and control requests full of hostile bytes.
//!
//! Input: 4 bytes of settings (slot budget as `u16`, TX config bits, number of queues), 16 bytes of a
//! control request, then the TX ring: 12-byte slots fed to `TxPacketParser`, packet after packet, while
//! the budget lasts. Nothing may panic, and what is accepted must hold its invariants: fragments within
//! their pages and non-empty, sizes adding up to the packet size, slot counts matching what was consumed,
//! the serializer writing slots that parse back to the same packet; a control operation within its
//! limits and re-encoding to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_abi::netif::{
    CtrlLimits, CtrlOp, ETH_HLEN, NetifRspStatus, NetifTxRequest, TxConfig, TxPacketParser,
    TxParsed, XEN_NETBK_LEGACY_SLOTS_MAX, XenNetifCtrlRequest, XenNetifCtrlResponse,
    validate_hash_mapping,
};

const SETTINGS: usize = 4;
const CTRL: usize = 16;
const SLOT: usize = 12;

fn check_ctrl(bytes: &[u8], num_queues: u32, mapping_size: u32) {
    let Ok(raw) = <[u8; CTRL]>::try_from(bytes) else {
        return;
    };
    let request = XenNetifCtrlRequest::from_ne_bytes(raw);
    let limits = CtrlLimits {
        hash_mapping_size: mapping_size,
        num_queues,
        ..CtrlLimits::DEFAULT
    };
    let result = request.validate(&limits);
    let _ = XenNetifCtrlResponse::from_result(&request, result.map(|_| 0));
    let Ok(op) = result else { return };
    assert_eq!(
        op.to_request(request.id).validate(&limits),
        Ok(op),
        "{request:?}"
    );
    match op {
        CtrlOp::SetHashKey { len, .. } => assert!(len <= limits.max_hash_key_size),
        CtrlOp::SetHashMappingSize { size } => assert!(size <= limits.max_hash_mapping_size),
        CtrlOp::SetHashMapping { len, off, .. } => {
            assert!(len <= 1024);
            assert!(u64::from(off) + u64::from(len) <= u64::from(mapping_size));
        }
        CtrlOp::GetGrefMappingSize { queue }
        | CtrlOp::AddGrefMapping { queue, .. }
        | CtrlOp::DelGrefMapping { queue, .. } => assert!(queue < num_queues),
        _ => {}
    }
    // The request's own words as a mapping table.
    if validate_hash_mapping(&request.data, num_queues).is_ok() {
        assert!(request.data.iter().all(|&q| q < num_queues));
    }
}

fn check_packet(parsed: &TxParsed, slots: &[NetifTxRequest], config: TxConfig) {
    assert_eq!(parsed.slots() as usize, slots.len());
    assert_eq!(parsed.responses(NetifRspStatus::Okay).count(), slots.len());
    match parsed {
        TxParsed::Packet(p) => {
            let frags = p.fragments();
            assert!(!frags.is_empty() && frags.len() <= XEN_NETBK_LEGACY_SLOTS_MAX);
            assert!(p.size() >= ETH_HLEN && p.size() <= config.max_packet_size);
            let sum: u32 = frags.iter().map(|f| u32::from(f.size)).sum();
            assert_eq!(
                sum,
                u32::from(p.size()),
                "fragment sizes add up to the packet size"
            );
            for f in frags {
                assert!(f.size > 0);
                assert!(
                    u32::from(f.offset) + u32::from(f.size) <= 4096,
                    "fragment within its page"
                );
                assert!(f.gref >= 8);
            }
            assert!(frags[0].size >= config.min_first_fragment);
            assert_eq!(p.slots() as usize, frags.len() + p.extras().len());
        }
        TxParsed::Multicast(m) => {
            assert_eq!(m.slots() as usize, 1 + m.extras().len());
            assert!(m.extras().multicast().is_some());
        }
    }
    // What the serializer writes parses back to the same thing.
    let mut out = vec![NetifTxRequest::from_ne_bytes([0; SLOT]); slots.len()];
    assert_eq!(parsed.to_slots(&mut out), Ok(slots.len()));
    let mut again: TxPacketParser = TxPacketParser::with_config(config, out.len() as u32);
    let (result, used) = again.push_all(&out);
    assert_eq!(used, out.len());
    assert_eq!(result, Ok(Some(*parsed)));
}

fuzz_target!(|data: &[u8]| {
    let Some((settings, rest)) = data.split_first_chunk::<SETTINGS>() else {
        return;
    };
    let [b0, b1, cfg, queues] = *settings;
    let budget = u32::from(u16::from_le_bytes([b0, b1])) % 300;
    let config = TxConfig {
        max_packet_size: if cfg & 1 != 0 { 1514 } else { u16::MAX },
        min_first_fragment: if cfg & 2 != 0 { 1 } else { ETH_HLEN },
    };
    let num_queues = u32::from(queues % 9);
    let (ctrl, ring) = rest.split_at(rest.len().min(CTRL));
    check_ctrl(ctrl, num_queues, u32::from(cfg) * 2);

    let slots: Vec<NetifTxRequest> = ring
        .chunks_exact(SLOT)
        .filter_map(|c| <[u8; SLOT]>::try_from(c).ok())
        .map(NetifTxRequest::from_ne_bytes)
        .collect();
    let mut left = budget;
    let mut pos = 0usize;
    // Packet after packet, as a back end walks its ring; each parse is bounded by the budget left.
    while pos < slots.len() && left > 0 {
        let mut parser: TxPacketParser = TxPacketParser::with_config(config, left);
        let (result, used) = parser.push_all(&slots[pos..]);
        assert!(used >= 1 && used as u32 <= left);
        assert_eq!(parser.slots_consumed() as usize, used);
        match result {
            Ok(Some(parsed)) => check_packet(&parsed, &slots[pos..pos + used], config),
            Ok(None) => assert_eq!(
                pos + used,
                slots.len(),
                "only a short input leaves a packet open"
            ),
            Err(_) => break,
        }
        pos += used;
        left -= used as u32;
    }
});
