//! netback's software offloads on frames and metadata a guest controls: `net::gso::segment` on
//! its own, and the TX path of a [`NetQueue`] (the guest's `csum_blank` and `data_validated` flags
//! and GSO extra, the frame's headers parsed for the checksum, the checksum completed or the frame
//! segmented for a device that does not take the offload).
//!
//! Input: `[mode, size_lo, size_hi, frag, frame...]`. `mode` bit 0: TCPv6 (else TCPv4); bit 1: the
//! GSO extra is sent; bits 2-3: `csum_blank`, `data_validated`; bits 4-5: the device's offloads
//! (none, checksum only, all, checksum and TSOv4); bit 6: the GSO type in the extra is `mode >> 7`
//! plus 3 (unknown) instead. `size` is the GSO segment size; `frag` the TX fragment size
//! (`frag * 16 + 1` bytes, at most a page).
//!
//! Invariants of `segment`, checked against an independent reading of the headers: it accepts
//! exactly the frames that are TCP over the IP version the GSO type names, with whole headers and
//! a segment size of at least `MIN_SEGMENT`. Then there are `max(1, ceil(payload / size))`
//! segments, each the headers plus at most `size` bytes of payload (exactly `size` but for the
//! last), whose payloads put together are the original payload; each segment's headers are the
//! original's but for the IP length, id and checksum, the TCP sequence number, flags and checksum,
//! which are right (both checksums verify).
//!
//! Invariants of the TX path: no panic; a packet the parser accepts gets one response per slot,
//! `Okay` (and `Null` for the extra) exactly when the device got the frame; the device only gets
//! frames whose metadata its offloads allow; a `csum_blank` frame finished in software is the
//! guest's frame with a checksum that verifies; a GSO frame segmented in software arrives as the
//! segments `segment` makes.
#![no_main]

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pv_backend::backend::{EventChannel, GrantAccess, GrantedRing};
use pv_backend::blk::front::TestGuest;
use pv_backend::net::back::{NetQueue, NetQueueConfig};
use pv_backend::net::gso::{MIN_SEGMENT, SEGMENT_META, segment};
use pv_backend::net::{
    Checksum, FrameMeta, Gso, GsoType, MAX_FRAME_LEN, NetDevice, NetError, Offloads, RxInfo,
};
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::netif::{
    ExtraFlags, NetTxFlags, NetifExtraInfo, NetifExtraInfoGso, NetifRspStatus, NetifRx, NetifTx,
    NetifTxRequest, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
};
use xen_abi::ring::{FrontRing, RawRingMemory};

const DOMID: u16 = 3;
/// TX data pages: one per fragment, as many as a packet may have.
const TX_PAGES: u32 = 18;

// ---- An independent reading of a TCP GSO super-frame's headers (the oracle). ----

/// Where the headers of a frame `segment` must accept are.
#[derive(Debug, Clone, Copy)]
struct Headers {
    l3: usize,
    v4: bool,
    l4: usize,
    /// Headers up to the end of the TCP header.
    hdr: usize,
    /// The end of the IP packet.
    end: usize,
}

fn get16(f: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(i)?, *f.get(i + 1)?]))
}

/// Ethernet (one optional 802.1Q tag), then IPv4 (not a fragment) or IPv6 (behind at most 8
/// hop-by-hop, routing or destination options headers), then TCP, all inside the IP length, which
/// is inside the frame.
fn headers(f: &[u8], v6: bool) -> Option<Headers> {
    let (mut l3, mut ethertype) = (14, get16(f, 12)?);
    if ethertype == 0x8100 {
        l3 = 18;
        ethertype = get16(f, 16)?;
    }
    let (l4, end) = if !v6 {
        if ethertype != 0x0800 {
            return None;
        }
        let b = *f.get(l3)?;
        let ihl = usize::from(b & 0x0f) * 4;
        let fragment = get16(f, l3 + 6)? & 0x3fff != 0;
        if b >> 4 != 4 || ihl < 20 || fragment || *f.get(l3 + 9)? != 6 {
            return None;
        }
        (l3 + ihl, l3 + usize::from(get16(f, l3 + 2)?))
    } else {
        if ethertype != 0x86dd || *f.get(l3)? >> 4 != 6 {
            return None;
        }
        let end = l3 + 40 + usize::from(get16(f, l3 + 4)?);
        let mut next = *f.get(l3 + 6)?;
        let mut at = l3 + 40;
        let mut seen = 0;
        while matches!(next, 0 | 43 | 60) {
            if seen == 8 {
                return None;
            }
            seen += 1;
            next = *f.get(at)?;
            at += 8 * (1 + usize::from(*f.get(at + 1)?));
        }
        if next != 6 {
            return None;
        }
        (at, end)
    };
    let tcp_len = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    let hdr = l4 + tcp_len;
    (tcp_len >= 20 && hdr <= end && end <= f.len()).then_some(Headers {
        l3,
        v4: !v6,
        l4,
        hdr,
        end,
    })
}

/// Where a frame's TCP or UDP header and its checksum field are: Ethernet (one optional 802.1Q
/// tag), IPv4 (not a fragment, its length covering its header) or IPv6 (behind at most 8
/// hop-by-hop, routing or destination options headers, its payload length covering them), and
/// where its IP datagram ends (the field must lie inside it).
fn l4_checksum(f: &[u8]) -> Option<(usize, usize, usize)> {
    let (mut l3, mut ethertype) = (14, get16(f, 12)?);
    if ethertype == 0x8100 {
        l3 = 18;
        ethertype = get16(f, 16)?;
    }
    let (start, proto) = match ethertype {
        0x0800 => {
            let b = *f.get(l3)?;
            let ihl = usize::from(b & 0x0f) * 4;
            let total = usize::from(get16(f, l3 + 2)?);
            if b >> 4 != 4 || ihl < 20 || get16(f, l3 + 6)? & 0x3fff != 0 || total < ihl {
                return None;
            }
            f.get(l3 + 12..l3 + 20)?;
            (l3 + ihl, *f.get(l3 + 9)?)
        }
        0x86dd => {
            if *f.get(l3)? >> 4 != 6 {
                return None;
            }
            let payload = usize::from(get16(f, l3 + 4)?);
            let mut next = *f.get(l3 + 6)?;
            let mut at = l3 + 40;
            let mut seen = 0;
            while matches!(next, 0 | 43 | 60) && seen < 8 {
                seen += 1;
                next = *f.get(at)?;
                at += 8 * (1 + usize::from(*f.get(at + 1)?));
            }
            f.get(l3 + 8..l3 + 40)?;
            if at - (l3 + 40) > payload {
                return None;
            }
            (at, next)
        }
        _ => return None,
    };
    let field = start
        + match proto {
            6 => 16,
            17 => 6,
            _ => return None,
        };
    // The checksum covers the IP datagram (its length as the header says, within the frame),
    // not the Ethernet padding after it.
    let end = match ethertype {
        0x0800 => l3 + usize::from(get16(f, l3 + 2)?),
        _ => l3 + 40 + usize::from(get16(f, l3 + 4)?),
    }
    .min(f.len());
    (field + 2 <= end).then_some((start, field, end))
}

fn ones_sum(data: &[u8], mut sum: u64) -> u64 {
    for c in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn be32(f: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]])
}

/// Checks `segment`'s answer for `frame` against the oracle; returns the segments.
fn check_segment(frame: &[u8], meta: &FrameMeta) -> Option<Vec<Vec<u8>>> {
    let result = segment(frame, meta);
    let Some(gso) = meta.gso else {
        assert!(
            result.is_err(),
            "a frame without GSO metadata was segmented"
        );
        return None;
    };
    let expect = headers(frame, gso.gso_type == GsoType::TcpV6);
    let segs = match (result, expect) {
        (Err(_), None) => return None,
        (Err(e), Some(h)) if gso.size >= MIN_SEGMENT => {
            panic!("a well-formed super-frame ({h:?}) was refused: {e}")
        }
        (Err(_), Some(_)) => return None,
        (Ok(_), None) => panic!("a frame without whole TCP headers was segmented"),
        (Ok(_), Some(_)) if gso.size < MIN_SEGMENT => {
            panic!("segment size {} below the minimum was accepted", gso.size)
        }
        (Ok(s), Some(h)) => {
            check_segments(frame, h, gso.size, &s);
            s
        }
    };
    Some(segs)
}

fn check_segments(frame: &[u8], h: Headers, size: u16, segs: &[Vec<u8>]) {
    let mss = usize::from(size);
    let payload = &frame[h.hdr..h.end];
    let n = payload.len().div_ceil(mss).max(1);
    assert_eq!(segs.len(), n, "segment count for {} bytes", payload.len());
    let (l3, l4) = (h.l3, h.l4);
    let seq0 = be32(frame, l4 + 4);
    let flags0 = frame[l4 + 13];
    let id0 = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
    let mut joined = Vec::with_capacity(payload.len());
    for (k, s) in segs.iter().enumerate() {
        assert!(s.len() >= h.hdr, "segment {k} shorter than the headers");
        let data = &s[h.hdr..];
        assert!(data.len() <= mss, "segment {k}: {} bytes > mss", data.len());
        if k + 1 < n {
            assert_eq!(data.len(), mss, "segment {k} (not the last) is short");
        }
        joined.extend_from_slice(data);
        // The headers are the original's outside the fields segmentation rewrites.
        let mut rewritten = vec![l4 + 4..l4 + 8, l4 + 13..l4 + 14, l4 + 16..l4 + 18];
        if h.v4 {
            rewritten.extend([l3 + 2..l3 + 6, l3 + 10..l3 + 12]);
        } else {
            rewritten.push(l3 + 4..l3 + 6);
        }
        for i in 0..h.hdr {
            if !rewritten.iter().any(|r| r.contains(&i)) {
                assert_eq!(s[i], frame[i], "segment {k}: header byte {i} changed");
            }
        }
        let tcp_len = s.len() - l4;
        let pseudo = if h.v4 {
            assert_eq!(
                usize::from(u16::from_be_bytes([s[l3 + 2], s[l3 + 3]])),
                s.len() - l3,
                "segment {k}: IPv4 total length"
            );
            assert_eq!(
                u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]),
                id0.wrapping_add(k as u16),
                "segment {k}: IPv4 id"
            );
            assert_eq!(
                fold(ones_sum(&s[l3..l4], 0)),
                0xffff,
                "segment {k}: IPv4 header checksum"
            );
            ones_sum(&s[l3 + 12..l3 + 20], 6 + tcp_len as u64)
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([s[l3 + 4], s[l3 + 5]])),
                s.len() - l3 - 40,
                "segment {k}: IPv6 payload length"
            );
            ones_sum(&s[l3 + 8..l3 + 40], 6 + tcp_len as u64)
        };
        assert_eq!(
            be32(s, l4 + 4),
            seq0.wrapping_add((k * mss) as u32),
            "segment {k}: sequence number"
        );
        let mut flags = flags0;
        if k + 1 < n {
            flags &= !0x09; // FIN and PSH only on the last
        }
        if k > 0 {
            flags &= !0x80; // CWR only on the first
        }
        assert_eq!(s[l4 + 13], flags, "segment {k}: TCP flags");
        assert_eq!(
            fold(ones_sum(&s[l4..], pseudo)),
            0xffff,
            "segment {k}: TCP checksum"
        );
    }
    assert_eq!(
        joined, payload,
        "the segments' payloads are not the payload"
    );
}

// ---- The TX path: a netfront on granted pages, netback over a device that records. ----

struct Quiet;
impl EventChannel for Quiet {
    fn notify(&self) {}
}

/// A device that takes every frame its offloads allow and keeps them.
struct Recorder {
    offloads: Offloads,
    sent: Vec<(Vec<u8>, FrameMeta)>,
}

impl NetDevice for Recorder {
    fn offloads(&self) -> Offloads {
        self.offloads
    }
    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }
    fn send(&mut self, frame: &[u8], meta: &FrameMeta) -> Result<(), NetError> {
        assert!(
            self.offloads.allows(meta).is_ok(),
            "the device got metadata it does not take: {meta:?}"
        );
        assert!(
            frame.len() <= MAX_FRAME_LEN,
            "a frame of {} bytes",
            frame.len()
        );
        meta.validate(frame.len())
            .expect("the device got metadata that does not fit its frame");
        self.sent.push((frame.to_vec(), *meta));
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Result<Option<RxInfo>, NetError> {
        Ok(None)
    }
    fn wait_readable(&self, _timeout: Duration) -> Result<bool, NetError> {
        Ok(false)
    }
}

fn ring_memory(guest: &TestGuest, frame: u32) -> RawRingMemory {
    // SAFETY: the page is the guest's, and the `Arc<TestGuest>` held by the caller outlives the
    // ring; it is only accessed through the ring's atomic and volatile accesses.
    unsafe {
        RawRingMemory::new(
            NonNull::new(guest.page_ptr(frame)).expect("a page"),
            XEN_PAGE_SIZE,
        )
    }
}

struct TxCase {
    gso_type: u8,
    gso: bool,
    flags: NetTxFlags,
    size: u16,
    frag: usize,
    offloads: Offloads,
}

fn tx_path(case: &TxCase, frame: &[u8]) {
    if frame.is_empty() || frame.len() > (case.frag * TX_PAGES as usize).min(usize::from(u16::MAX))
    {
        return;
    }
    let guest = TestGuest::new(DOMID, 0, TX_PAGES + 2, 1);
    let (txf, rxf) = (guest.alloc_pages(1), guest.alloc_pages(1));
    let mut tx = FrontRing::<_, NetifTx>::new(ring_memory(&guest, txf)).expect("a TX ring");
    let _rx = FrontRing::<_, NetifRx>::new(ring_memory(&guest, rxf)).expect("an RX ring");
    let (tx_ref, rx_ref) = (guest.grant(txf, false), guest.grant(rxf, false));
    let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
    let txm = GrantedRing::map(&*grants, DOMID, &[tx_ref]).expect("the TX ring maps");
    let rxm = GrantedRing::map(&*grants, DOMID, &[rx_ref]).expect("the RX ring maps");
    let ev: Arc<dyn EventChannel> = Arc::new(Quiet);
    let device = Recorder {
        offloads: case.offloads,
        sent: Vec::new(),
    };
    let mut back = NetQueue::new(
        DOMID,
        grants,
        txm,
        rxm,
        ev.clone(),
        ev,
        device,
        NetQueueConfig::default(),
    )
    .expect("netback attaches");

    // The frame in fragments of `frag` bytes, each at the start of its own page.
    let mut slots = 0usize;
    for (i, piece) in frame.chunks(case.frag).enumerate() {
        let f = guest.alloc_pages(1);
        guest.write(f, 0, piece);
        let gref = guest.grant(f, true);
        let mut flags = if i == 0 {
            case.flags
        } else {
            NetTxFlags::empty()
        };
        if (i + 1) * case.frag < frame.len() {
            flags |= NetTxFlags::MORE_DATA;
        }
        if i == 0 && case.gso {
            flags |= NetTxFlags::EXTRA_INFO;
        }
        let size = if i == 0 { frame.len() } else { piece.len() };
        tx.put_request(&NetifTxRequest::new(gref, 0, flags, i as u16, size as u16))
            .expect("room on the ring");
        slots += 1;
        if i == 0 && case.gso {
            let e = NetifExtraInfo::gso(
                NetifExtraInfoGso::new(case.size, case.gso_type, 0),
                ExtraFlags::empty(),
            );
            tx.put_request(&NetifTxRequest::from_extra_info(&e))
                .expect("room on the ring");
            slots += 1;
        }
    }
    tx.push_requests();

    if back.process_tx().is_err() {
        // The parser refused the packet (a GSO size of 0, an unknown GSO type, ...): the queue is
        // disconnected, as Linux netback does.
        assert!(back.is_disconnected());
        return;
    }
    let statuses: Vec<i16> =
        std::iter::from_fn(|| tx.pop_response().expect("well-formed responses"))
            .map(|r| r.status)
            .collect();
    assert_eq!(statuses.len(), slots, "one response per slot");
    let sent = std::mem::take(&mut back.device_mut().sent);
    let okay = !sent.is_empty();
    for (i, &s) in statuses.iter().enumerate() {
        let want = if case.gso && i == 1 {
            NetifRspStatus::Null
        } else if okay {
            NetifRspStatus::Okay
        } else {
            NetifRspStatus::Error
        };
        assert_eq!(
            s,
            want as i16,
            "slot {i}'s status (device got {} frames)",
            sent.len()
        );
    }
    if !okay {
        return;
    }

    let gso_meta = if case.gso {
        let t = if case.gso_type == XEN_NETIF_GSO_TYPE_TCPV6 {
            GsoType::TcpV6
        } else {
            GsoType::TcpV4
        };
        Some(Gso {
            gso_type: t,
            size: case.size,
            hdr_len: 0,
        })
    } else {
        None
    };
    let wants_csum = case.flags.contains(NetTxFlags::CSUM_BLANK) || case.gso;
    let (first, first_meta) = &sent[0];
    match first_meta.gso {
        Some(g) => {
            // Passed through with the guest's GSO: the frame is the guest's, but for the
            // checksum field, which holds the pseudo-header sum.
            assert_eq!(Some(g), gso_meta);
            assert_eq!(sent.len(), 1);
            assert_eq!(first.len(), frame.len());
        }
        None if gso_meta.is_some() => {
            // Segmented in software: what `segment` makes of the frame as netback fixed it up,
            // which it must accept.
            for (s, m) in &sent {
                assert_eq!(*m, SEGMENT_META, "a software segment's metadata");
                assert!(s.len() <= MAX_FRAME_LEN);
            }
            let h = headers(frame, case.gso_type == XEN_NETIF_GSO_TYPE_TCPV6)
                .expect("a frame netback segmented has whole TCP headers");
            // netback may have put the pseudo-header sum into the TCP checksum field first; the
            // check ignores that field, which every segment recomputes.
            let segs: Vec<Vec<u8>> = sent.into_iter().map(|(s, _)| s).collect();
            check_segments(frame, h, case.size, &segs);
        }
        None => {
            assert_eq!(sent.len(), 1);
            assert_eq!(first.len(), frame.len(), "the frame's length changed");
            match first_meta.checksum {
                Checksum::Validated if case.flags.contains(NetTxFlags::CSUM_BLANK) => {
                    // Completed in software: only the checksum field changed, and it verifies
                    // (over the guest's pseudo-header sum, which the field held).
                    let (start, field, end) =
                        l4_checksum(frame).expect("a completed checksum has TCP or UDP headers");
                    for i in (0..frame.len()).filter(|&i| first[i] != frame[i]) {
                        assert!(
                            (field..field + 2).contains(&i),
                            "byte {i} changed, outside the checksum field at {field}"
                        );
                    }
                    let pseudo = u16::from_be_bytes([frame[field], frame[field + 1]]);
                    assert_eq!(
                        fold(ones_sum(&first[start..end], u64::from(pseudo))),
                        0xffff,
                        "the completed checksum does not verify"
                    );
                }
                Checksum::Partial { start, offset } => {
                    assert!(wants_csum && case.offloads.csum);
                    assert_eq!(
                        l4_checksum(frame).map(|(start, field, _)| (start, field)),
                        Some((usize::from(start), usize::from(start) + usize::from(offset)))
                    );
                    assert_eq!(first, frame);
                }
                Checksum::Validated => {
                    assert!(case.flags.contains(NetTxFlags::DATA_VALIDATED));
                    assert_eq!(first, frame);
                }
                Checksum::None => {
                    assert!(!wants_csum && !case.flags.contains(NetTxFlags::DATA_VALIDATED));
                    assert_eq!(first, frame);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, s0, s1, frag, frame @ ..] = data else {
        return;
    };
    let v6 = mode & 1 != 0;
    let size = u16::from_le_bytes([*s0, *s1]);
    let gso_type = if mode & 0x40 != 0 {
        3 + (mode >> 7)
    } else if v6 {
        XEN_NETIF_GSO_TYPE_TCPV6
    } else {
        XEN_NETIF_GSO_TYPE_TCPV4
    };
    let gso = mode & 2 != 0;

    // `segment` alone, with the metadata as given.
    let meta = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 16,
        },
        gso: gso.then_some(Gso {
            gso_type: if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
            size,
            hdr_len: 0,
        }),
    };
    let _ = check_segment(frame, &meta);

    // The same frame sent by a guest.
    let mut flags = NetTxFlags::empty();
    if mode & 4 != 0 {
        flags |= NetTxFlags::CSUM_BLANK;
    }
    if mode & 8 != 0 {
        flags |= NetTxFlags::DATA_VALIDATED;
    }
    let offloads = match (mode >> 4) & 3 {
        0 => Offloads::NONE,
        1 => Offloads {
            csum: true,
            ..Offloads::NONE
        },
        2 => Offloads::ALL,
        _ => Offloads {
            csum: true,
            tso4: true,
            tso6: false,
        },
    };
    let case = TxCase {
        gso_type,
        gso,
        flags,
        size,
        frag: (usize::from(*frag) * 16 + 1).min(XEN_PAGE_SIZE),
        offloads,
    };
    tx_path(&case, frame);
});
