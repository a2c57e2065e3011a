//! Software segmentation of a TCP GSO super-frame, for a port, device or front end that does not take
//! GSO: the super-frame (Ethernet, an optional 802.1Q tag, IPv4 or IPv6 with up to 8 extension
//! headers, TCP) is cut into segments of at most [`Gso::size`](super::Gso::size) bytes of TCP
//! payload, each with its own headers:
//!
//! - IPv4: total length, identification (the super-frame's, plus the segment's number, wrapping),
//!   and the header checksum recomputed; IPv6: the payload length;
//! - TCP: the sequence number advanced by the payload before the segment; FIN and PSH only on the
//!   last segment, CWR only on the first (as Linux's `tcp_gso_segment`); the checksum computed in
//!   full over the pseudo-header, header and payload.
//!
//! The segments come out complete ([`Checksum::Validated`], no GSO). Everything is bounded: the
//! headers are parsed in a fixed number of steps with every access checked, and a segment size
//! below [`MIN_SEGMENT`] is refused so that one frame cannot become tens of thousands.

use super::{Checksum, FrameMeta, GsoType, ip};

/// The smallest segment size accepted (Linux's `TCP_MIN_SND_MSS`).
pub const MIN_SEGMENT: u16 = 48;

/// Why a frame could not be segmented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// The frame carries no GSO metadata.
    #[error("the frame is not a GSO frame (no GSO metadata); send it as it is")]
    NotGso,
    /// The segment size is below [`MIN_SEGMENT`].
    #[error("GSO segment size {size} is below the minimum of {MIN_SEGMENT} bytes")]
    SegmentTooSmall {
        /// The size.
        size: u16,
    },
    /// The headers are not TCP over the IP version the GSO type names, or do not fit the frame.
    #[error("GSO frame of {len} bytes: {what}")]
    BadHeaders {
        /// The frame's length.
        len: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// Where a super-frame's headers are.
struct Layout {
    l3: usize,
    v4: bool,
    /// IPv6 extension headers' length (0 for IPv4).
    ext: usize,
    l4: usize,
    tcp_len: usize,
    /// The end of the IP packet (the frame may carry padding after it).
    end: usize,
}

fn layout(f: &[u8], gso_type: GsoType) -> Result<Layout, GsoError> {
    let bad = |what| GsoError::BadHeaders { len: f.len(), what };
    let short = bad("the headers run past the frame");
    let (ethertype, l3) = ip::l3(f).ok_or(short.clone())?;
    let (v4, ext, l4, end) = match (ethertype, gso_type) {
        (ip::ETHERTYPE_IPV4, GsoType::TcpV4) => {
            let h = ip::ipv4(f, l3).map_err(|e| match e {
                ip::IpError::Short => short.clone(),
                ip::IpError::BadVersion => bad("not an IPv4 header"),
            })?;
            if h.is_fragment() {
                return Err(bad("an IPv4 fragment"));
            }
            if h.proto != ip::IPPROTO_TCP {
                return Err(bad("IPv4 but not TCP"));
            }
            (true, 0, l3 + h.ihl, l3 + h.total)
        }
        (ip::ETHERTYPE_IPV6, GsoType::TcpV6) => {
            let h = ip::ipv6(f, l3).map_err(|e| match e {
                ip::IpError::Short => short.clone(),
                ip::IpError::BadVersion => bad("not an IPv6 header"),
            })?;
            if h.next != ip::IPPROTO_TCP {
                return Err(bad("IPv6 but not TCP (or more than 8 extension headers)"));
            }
            (false, h.l4 - (l3 + 40), h.l4, l3 + 40 + h.payload)
        }
        _ => return Err(bad("the GSO type does not match the frame's IP version")),
    };
    let tcp_len = usize::from(*f.get(l4 + 12).ok_or(short.clone())? >> 4) * 4;
    if tcp_len < 20 {
        return Err(bad("TCP data offset below 5 words"));
    }
    if end > f.len() || l4 + tcp_len > end {
        return Err(bad(
            "the IP length does not cover the headers or runs past the frame",
        ));
    }
    Ok(Layout {
        l3,
        v4,
        ext,
        l4,
        tcp_len,
        end,
    })
}

/// How many segments [`segment`] makes of a frame whose TCP payload is `payload` bytes.
pub fn segment_count(payload: usize, size: u16) -> usize {
    payload.div_ceil(usize::from(size.max(1))).max(1)
}

/// Cuts a TCP GSO super-frame into complete segments (see the module's description). The
/// segments' metadata is [`Checksum::Validated`] without GSO.
pub fn segment(frame: &[u8], meta: &FrameMeta) -> Result<Vec<Vec<u8>>, GsoError> {
    let gso = meta.gso.ok_or(GsoError::NotGso)?;
    if gso.size < MIN_SEGMENT {
        return Err(GsoError::SegmentTooSmall { size: gso.size });
    }
    let l = layout(frame, gso.gso_type)?;
    let hdr = l.l4 + l.tcp_len;
    let payload = &frame[hdr..l.end];
    let mss = usize::from(gso.size);
    let n = segment_count(payload.len(), gso.size);
    let seq0 = u32::from_be_bytes([
        frame[l.l4 + 4],
        frame[l.l4 + 5],
        frame[l.l4 + 6],
        frame[l.l4 + 7],
    ]);
    let flags0 = frame[l.l4 + 13];
    let id0 = if l.v4 {
        ip::be16(frame, l.l3 + 4).unwrap_or(0)
    } else {
        0
    };
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let chunk = &payload[(k * mss).min(payload.len())..((k + 1) * mss).min(payload.len())];
        let mut s = Vec::with_capacity(hdr + chunk.len());
        s.extend_from_slice(&frame[..hdr]);
        s.extend_from_slice(chunk);
        let tcp_total = l.tcp_len + chunk.len();
        let pseudo = if l.v4 {
            let ihl = l.l4 - l.l3;
            let total = (ihl + tcp_total) as u16;
            s[l.l3 + 2..l.l3 + 4].copy_from_slice(&total.to_be_bytes());
            let id = id0.wrapping_add(k as u16);
            s[l.l3 + 4..l.l3 + 6].copy_from_slice(&id.to_be_bytes());
            s[l.l3 + 10..l.l3 + 12].copy_from_slice(&[0, 0]);
            let c = !ip::csum_fold(ip::csum_add(&s[l.l3..l.l4], 0));
            s[l.l3 + 10..l.l3 + 12].copy_from_slice(&c.to_be_bytes());
            ip::csum_add(&s[l.l3 + 12..l.l3 + 20], 6 + tcp_total as u64)
        } else {
            let plen = (l.ext + tcp_total) as u16;
            s[l.l3 + 4..l.l3 + 6].copy_from_slice(&plen.to_be_bytes());
            ip::csum_add(&s[l.l3 + 8..l.l3 + 40], 6 + tcp_total as u64)
        };
        let seq = seq0.wrapping_add((k * mss) as u32);
        s[l.l4 + 4..l.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if k + 1 < n {
            flags &= !(0x01 | 0x08); // FIN, PSH: the last segment's
        }
        if k > 0 {
            flags &= !0x80; // CWR: the first segment's
        }
        s[l.l4 + 13] = flags;
        s[l.l4 + 16..l.l4 + 18].copy_from_slice(&[0, 0]);
        let c = !ip::csum_fold(ip::csum_add(&s[l.l4..], pseudo));
        s[l.l4 + 16..l.l4 + 18].copy_from_slice(&c.to_be_bytes());
        out.push(s);
    }
    Ok(out)
}

/// The metadata of every segment [`segment`] returns.
pub const SEGMENT_META: FrameMeta = FrameMeta {
    checksum: Checksum::Validated,
    gso: None,
};
