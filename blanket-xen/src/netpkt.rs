//! The little of a frame's headers that netfront reads: where the IPv4 or IPv6 header and the TCP or UDP
//! header are, for the TX queue's flow hash and for completing a checksum in software. Every access is
//! bounds-checked (`get`); a frame this walk does not understand is `None`, never a panic.
#![forbid(unsafe_code)]

use xen_abi::netif::toeplitz_hash;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The 40-byte Toeplitz key of Microsoft's RSS specification ("Verifying the RSS Hash Calculation"),
/// which is also Linux's and netback's default.
pub(crate) const RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3e, 0xbe, 0xac, 0x01, 0xfa,
];

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// Where a frame's layer-3 and layer-4 headers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Headers {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The offset of the source address; the destination follows it.
    pub addrs: usize,
    /// The length of one address (4 or 16).
    pub addr_len: usize,
    /// The L4 protocol (IPv6: the first next header; extension headers are not walked).
    pub proto: u8,
    /// The offset of the L4 header, if the packet is not a fragment (or a later IPv4 fragment).
    pub l4: Option<usize>,
}

/// Walks Ethernet (with at most one 802.1Q tag) to an IPv4 or IPv6 header.
pub(crate) fn headers(f: &[u8]) -> Option<Headers> {
    let mut l3 = 14;
    let mut ethertype = be16(f, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(f, 16)?;
        l3 = 18;
    }
    match ethertype {
        ETHERTYPE_IPV4 => {
            let vihl = *f.get(l3)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || f.len() < l3 + ihl {
                return None;
            }
            // More fragments, or a fragment offset: no L4 header to trust in this packet.
            let fragment = be16(f, l3 + 6)? & 0x3fff != 0;
            Some(Headers {
                v6: false,
                addrs: l3 + 12,
                addr_len: 4,
                proto: *f.get(l3 + 9)?,
                l4: (!fragment).then_some(l3 + ihl),
            })
        }
        ETHERTYPE_IPV6 => {
            if *f.get(l3)? >> 4 != 6 || f.len() < l3 + 40 {
                return None;
            }
            Some(Headers {
                v6: true,
                addrs: l3 + 8,
                addr_len: 16,
                proto: *f.get(l3 + 6)?,
                l4: Some(l3 + 40),
            })
        }
        _ => None,
    }
}

/// The TX queue of a frame among `queues`: the Toeplitz hash (the RSS key above) of its source and
/// destination addresses, followed by its source and destination ports for TCP and UDP (an IPv4
/// fragment hashes its addresses only), scaled to the queue count as Linux's `reciprocal_scale` does
/// (`hash * queues >> 32`). Frames that are not IPv4 or IPv6 go to queue 0. So every frame of one flow
/// takes the same queue, and the order within a flow is kept.
pub(crate) fn tx_queue(f: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let Some(h) = headers(f) else { return 0 };
    let mut input = [0u8; 36];
    let n = 2 * h.addr_len;
    let Some(addrs) = f.get(h.addrs..h.addrs + n) else {
        return 0;
    };
    input[..n].copy_from_slice(addrs);
    let mut len = n;
    if matches!(h.proto, IPPROTO_TCP | IPPROTO_UDP)
        && let Some(ports) = h.l4.and_then(|l4| f.get(l4..l4 + 4))
    {
        input[n..n + 4].copy_from_slice(ports);
        len += 4;
    }
    let hash = toeplitz_hash(&RSS_KEY, &input[..len]);
    ((u64::from(hash) * queues as u64) >> 32) as usize
}

/// Where a TCP or UDP checksum field is, from the start of the L4 header.
fn csum_field(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        _ => None,
    }
}

fn sum16(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Folded as it goes, so that 64 KiB of 0xffff words cannot overflow.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// For a frame with a partial checksum (netif's `NETTXF_csum_blank` / `NETRXF_csum_blank`: the TCP or
/// UDP checksum field holds the sum of the pseudo-header, as Linux's `CHECKSUM_PARTIAL`): the offset of
/// the checksum field and its final value, the complement of the ones'-complement sum of the L4 header and
/// payload. `None` if the frame is not TCP or UDP over IPv4 or IPv6, or is a fragment.
pub(crate) fn complete_checksum(f: &[u8]) -> Option<(usize, [u8; 2])> {
    let h = headers(f)?;
    let l4 = h.l4?;
    let field = l4 + csum_field(h.proto)?;
    if field + 2 > f.len() {
        return None;
    }
    let mut csum = !fold(sum16(f.get(l4..)?));
    if h.proto == IPPROTO_UDP && csum == 0 {
        // RFC 768: a computed 0 is sent as all ones.
        csum = 0xffff;
    }
    Some((field, csum.to_be_bytes()))
}

/// Whether the frame is IPv6 (for the back-end's `feature-ipv6-csum-offload`); `None` if it is neither
/// IPv4 nor IPv6.
pub(crate) fn is_ipv6(f: &[u8]) -> Option<bool> {
    headers(f).map(|h| h.v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(sport: u16, dport: u16) -> [u8; 42] {
        let mut f = [0u8; 42];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[23] = IPPROTO_UDP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn rss_verification_vector_ipv4_tcp() {
        // Microsoft's RSS verification suite: 66.9.149.187:2794 -> 161.142.100.80:1766 hashes to
        // 0x51ccc178 (the input is source address, destination address, source port, destination port).
        let input = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        assert_eq!(toeplitz_hash(&RSS_KEY, &input), 0x51cc_c178);
    }

    #[test]
    fn one_flow_one_queue_and_non_ip_on_queue_0() {
        let f = udp4(1000, 2000);
        let q = tx_queue(&f, 4);
        assert!(q < 4);
        assert_eq!(tx_queue(&f, 4), q);
        assert_eq!(tx_queue(&f, 1), 0);
        let mut arp = f;
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(tx_queue(&arp, 4), 0);
        assert_eq!(tx_queue(&f[..20], 4), 0);
    }

    #[test]
    fn udp_checksum_completed_from_the_pseudo_header_sum() {
        let mut f = udp4(1000, 2000).to_vec();
        f.extend_from_slice(b"hello");
        let udp_len = (f.len() - 34) as u16;
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        // Pseudo-header: addresses, protocol, UDP length.
        let pseudo = sum16(&f[26..34]) + u32::from(IPPROTO_UDP) + u32::from(udp_len);
        f[40..42].copy_from_slice(&fold(pseudo).to_be_bytes());
        let (field, csum) = complete_checksum(&f).unwrap();
        assert_eq!(field, 40);
        f[40..42].copy_from_slice(&csum);
        // A receiver's check: the sum over pseudo-header and datagram is all ones.
        assert_eq!(fold(pseudo + sum16(&f[34..])), 0xffff);
    }
}
