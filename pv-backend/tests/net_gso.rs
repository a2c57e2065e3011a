//! Software GSO segmentation (`net::gso`), field by field: TCPv4 and TCPv6 super-frames cut into
//! MSS-sized segments with their IP lengths and ids, TCP sequence numbers, flags (CWR only on the
//! first, FIN and PSH only on the last) and checksums checked independently, and the payload put
//! back together byte-identical. And the hostile inputs: each a typed error, never a panic.

use proptest::prelude::*;
use pv_backend::net::gso::{GsoError, MIN_SEGMENT, segment};
use pv_backend::net::{Checksum, FrameMeta, Gso, GsoType};

fn sum(data: &[u8], mut s: u64) -> u64 {
    for c in data.chunks(2) {
        s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn be32(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

const CWR: u8 = 0x80;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

fn eth(f: &mut Vec<u8>, ethertype: u16) {
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ethertype.to_be_bytes());
}

fn tcp(f: &mut Vec<u8>, seq: u32, flags: u8) {
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&77u32.to_be_bytes());
    // Data offset 8 words: 12 bytes of options (NOP NOP timestamp).
    f.extend_from_slice(&[0x80, flags, 0x10, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 + i / 7) as u8).collect()
}

fn tcp4(len: usize, seq: u32, id: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    eth(&mut f, 0x0800);
    let total = (20 + 32 + len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, 6, 0xde, 0xad, 10, 0, 0, 1, 10, 0, 0, 2]);
    tcp(&mut f, seq, flags);
    f.extend(payload(len));
    f
}

/// TCPv6 behind a hop-by-hop options header (8 bytes).
fn tcp6(len: usize, seq: u32, flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    eth(&mut f, 0x86dd);
    let plen = (8 + 32 + len) as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[0, 64]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop: next TCP, PadN
    tcp(&mut f, seq, flags);
    f.extend(payload(len));
    f
}

fn meta(gso_type: GsoType, size: u16) -> FrameMeta {
    FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 16,
        },
        gso: Some(Gso {
            gso_type,
            size,
            hdr_len: 0,
        }),
    }
}

/// Checks the TCP part of segment `k` of `n` and returns its payload.
fn check_tcp(
    s: &[u8],
    l4: usize,
    pseudo: u64,
    k: usize,
    n: usize,
    seq: u32,
    mss: usize,
) -> Vec<u8> {
    assert_eq!(
        be32(s, l4 + 4),
        seq.wrapping_add((k * mss) as u32),
        "segment {k}: sequence"
    );
    assert_eq!(be32(s, l4 + 8), 77, "segment {k}: ack");
    let flags = s[l4 + 13];
    assert_eq!(flags & ACK, ACK);
    assert_eq!(
        flags & CWR != 0,
        k == 0,
        "segment {k}: CWR only on the first"
    );
    assert_eq!(
        flags & FIN != 0,
        k + 1 == n,
        "segment {k}: FIN only on the last"
    );
    assert_eq!(
        flags & PSH != 0,
        k + 1 == n,
        "segment {k}: PSH only on the last"
    );
    let tcp_len = s.len() - l4;
    let c = fold(sum(&s[l4..], pseudo + 6 + tcp_len as u64));
    assert_eq!(c, 0xffff, "segment {k}: TCP checksum");
    let data = &s[l4 + 32..];
    if k + 1 < n {
        assert_eq!(data.len(), mss, "segment {k}: payload size");
    }
    data.to_vec()
}

#[test]
fn tcp4_super_frame_segmented_field_by_field() {
    let (len, mss, seq, id) = (10_000, 1448, 0xffff_f000, 0xfffe);
    let f = tcp4(len, seq, id, ACK | PSH | FIN | CWR);
    let segs = segment(&f, &meta(GsoType::TcpV4, mss as u16)).unwrap();
    let n = len.div_ceil(mss);
    assert_eq!(segs.len(), n);
    let mut all = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        assert_eq!(&s[..14], &f[..14], "segment {k}: Ethernet header");
        assert_eq!(
            be16(s, 16) as usize,
            s.len() - 14,
            "segment {k}: IPv4 total length"
        );
        assert_eq!(
            be16(s, 18),
            id.wrapping_add(k as u16),
            "segment {k}: IPv4 id"
        );
        assert_eq!(
            fold(sum(&s[14..34], 0)),
            0xffff,
            "segment {k}: IPv4 header checksum"
        );
        assert_eq!(
            &s[20..24],
            &[0x40, 0, 64, 6],
            "segment {k}: DF, TTL, protocol"
        );
        let pseudo = sum(&s[26..34], 0);
        all.extend(check_tcp(s, 34, pseudo, k, n, seq, mss));
    }
    assert!(all == f[66..], "the reassembled payload differs");
}

#[test]
fn tcp6_super_frame_behind_an_extension_header_segmented_field_by_field() {
    let (len, mss, seq) = (20_001, 1220, 7);
    let f = tcp6(len, seq, ACK | FIN | PSH | CWR);
    let segs = segment(&f, &meta(GsoType::TcpV6, mss as u16)).unwrap();
    let n = len.div_ceil(mss);
    assert_eq!(segs.len(), n);
    let mut all = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        assert_eq!(
            &s[..62],
            &f[..62]
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 18 || i == 19 { s[i] } else { *b })
                .collect::<Vec<_>>()[..]
        );
        assert_eq!(
            be16(s, 18) as usize,
            s.len() - 54,
            "segment {k}: IPv6 payload length"
        );
        let pseudo = sum(&s[22..54], 0);
        all.extend(check_tcp(s, 62, pseudo, k, n, seq, mss));
    }
    assert!(all == f[94..], "the reassembled payload differs");
}

#[test]
fn a_super_frame_that_fits_one_segment_stays_one() {
    let f = tcp4(100, 1, 1, ACK | FIN);
    let segs = segment(&f, &meta(GsoType::TcpV4, 1448)).unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0][47], ACK | FIN);
    assert_eq!(&segs[0][66..], &f[66..]);
}

#[test]
fn hostile_gso_segment_size_below_the_minimum() {
    let f = tcp4(1000, 1, 1, ACK);
    assert_eq!(
        segment(&f, &meta(GsoType::TcpV4, MIN_SEGMENT - 1)),
        Err(GsoError::SegmentTooSmall {
            size: MIN_SEGMENT - 1
        })
    );
    assert_eq!(segment(&f, &FrameMeta::default()), Err(GsoError::NotGso));
}

#[test]
fn hostile_gso_type_not_matching_the_ip_version() {
    assert!(matches!(
        segment(&tcp4(1000, 1, 1, ACK), &meta(GsoType::TcpV6, 1000)),
        Err(GsoError::BadHeaders { .. })
    ));
    assert!(matches!(
        segment(&tcp6(1000, 1, ACK), &meta(GsoType::TcpV4, 1000)),
        Err(GsoError::BadHeaders { .. })
    ));
}

#[test]
fn hostile_gso_headers_that_lie_about_lengths() {
    // An IPv4 total length past the frame, one shorter than the headers, a TCP data offset below
    // 5, a UDP packet, a fragment, and every truncation of a good frame.
    let good = tcp4(3000, 1, 1, ACK);
    let m = meta(GsoType::TcpV4, 1000);
    let mut bad = Vec::new();
    let mut f = good.clone();
    f[16..18].copy_from_slice(&4000u16.to_be_bytes());
    bad.push(f);
    let mut f = good.clone();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    bad.push(f);
    let mut f = good.clone();
    f[46] = 0x40;
    bad.push(f);
    let mut f = good.clone();
    f[23] = 17;
    bad.push(f);
    let mut f = good.clone();
    f[20] = 0x20; // more fragments
    bad.push(f);
    for f in &bad {
        assert!(
            matches!(segment(f, &m), Err(GsoError::BadHeaders { .. })),
            "{:?}",
            segment(f, &m).map(|s| s.len())
        );
    }
    for cut in 0..66 {
        assert!(segment(&good[..cut], &m).is_err(), "truncated at {cut}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary bytes (and arbitrary damage to a good frame) never panic, and whatever comes out
    /// is bounded by the input.
    #[test]
    fn hostile_gso_arbitrary_frames_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        pos in 14usize..66, val in any::<u8>(), size in 0u16..2000, v6 in any::<bool>(),
    ) {
        let ty = if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
        let _ = segment(&bytes, &meta(ty, size));
        let mut f = if v6 { tcp6(2000, 5, ACK) } else { tcp4(2000, 5, 5, ACK) };
        f[pos] = val;
        if let Ok(segs) = segment(&f, &meta(ty, size)) {
            let total: usize = segs.iter().map(|s| s.len()).sum();
            prop_assert!(segs.len() <= 2000 / usize::from(MIN_SEGMENT) + 1);
            prop_assert!(total <= f.len() * (1 + segs.len()));
        }
    }
}
