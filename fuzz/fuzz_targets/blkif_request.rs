//! blkif requests full of hostile bytes, native and x86_32, against limits taken from the input.
//!
//! Input: 16 bytes of limits (disk size, sector size, features, feature-max-indirect-segments), 112 bytes of
//! a ring slot, then the segments of the indirect pages (8 bytes each). The slot is read both as a native
//! request and as an x86_32 one. Validation must never panic, and what it accepts must be within the limits:
//! every segment within its page, every sector within the disk, aligned to the sector size, and nothing
//! written to a read-only disk. The x86_32 conversion must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_abi::blkif::{
    BlkifLimits, BlkifOperation, BlkifRequest, BlkifRequestSegment, BlkifSringEntry,
    CheckedSegment, x86_32,
};

const LIMITS: usize = 16;
const SLOT: usize = 112;
const SLOT_32: usize = 108;

fn limits_from(b: &[u8; LIMITS]) -> BlkifLimits {
    let [d0, d1, d2, d3, d4, d5, d6, d7, shift, flags, m0, m1, ..] = *b;
    let disk = u64::from_le_bytes([d0, d1, d2, d3, d4, d5, d6, d7]);
    let limits =
        BlkifLimits::new(disk, 512 << (shift % 4)).expect("512 to 4096 are valid sector sizes");
    let max = u32::from(u16::from_le_bytes([m0, m1])) % 4097;
    limits
        .with_read_only(flags & 1 != 0)
        .with_barrier(flags & 2 != 0)
        .with_flush_cache(flags & 4 != 0)
        .with_discard(flags & 8 != 0, flags & 16 != 0)
        .with_max_indirect_segments(max)
        .expect("at most 4096")
}

fn segments_from(bytes: &[u8]) -> Vec<BlkifRequestSegment> {
    bytes
        .chunks_exact(8)
        .map(|c| BlkifRequestSegment::new(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), c[4], c[5]))
        .collect()
}

fn within_disk(limits: &BlkifLimits, sector: u64, n: u64) -> bool {
    sector
        .checked_add(n)
        .is_some_and(|end| end <= limits.disk_sectors())
}

fn assert_segment(s: &CheckedSegment, limits: &BlkifLimits) {
    assert!(s.first_sect <= s.last_sect && s.last_sect < 8);
    assert!(s.offset() + s.len() <= 4096);
    assert_eq!(s.len() % limits.sector_size() as usize, 0);
}

/// Validates `req` and checks what an accepted request promises; `segments` are the indirect pages' bytes.
fn check(req: &BlkifRequest, limits: &BlkifLimits, segments: &[BlkifRequestSegment]) {
    let spb = u64::from(limits.sector_size() / 512);
    match req.validate(limits) {
        Err(e) => {
            let rsp = req.error_response(&e);
            assert!(rsp.padding_is_zero());
            assert_eq!(rsp.id, req.id);
            assert!(rsp.status < 0);
        }
        Ok(BlkifOperation::Read(c))
        | Ok(BlkifOperation::Write(c))
        | Ok(BlkifOperation::WriteBarrier(c))
        | Ok(BlkifOperation::FlushDiskcache(c)) => {
            assert!(c.segments.len() <= 11);
            let mut total = 0u64;
            for s in &c.segments {
                assert_segment(s, limits);
                total += u64::from(s.nr_sectors());
            }
            assert_eq!(total, c.nr_sectors);
            if !c.segments.is_empty() {
                assert!(within_disk(limits, c.sector_number, c.nr_sectors));
                assert_eq!(c.sector_number % spb, 0);
            }
            assert!(req.operation == 0 || !limits.read_only());
        }
        Ok(BlkifOperation::Discard(d)) => {
            assert!(limits.feature_discard() && !limits.read_only());
            assert!(within_disk(limits, d.sector_number, d.nr_sectors));
            assert_eq!(d.sector_number % spb, 0);
            assert_eq!(d.nr_sectors % spb, 0);
        }
        Ok(BlkifOperation::Indirect(i)) => {
            assert!(i.nr_segments >= 1 && i.nr_segments <= limits.max_indirect_segments());
            assert!((1..=8).contains(&i.indirect_pages().len()));
            // Take nr_segments from the input if it has them, else what there is (a count mismatch).
            let n = usize::from(i.nr_segments).min(segments.len());
            let segs = &segments[..n];
            if let Ok(io) = i.check_segments(segs, limits) {
                assert_eq!(io.nr_segments(), usize::from(i.nr_segments));
                let mut total = 0u64;
                for s in io.segments() {
                    assert_segment(&s, limits);
                    total += u64::from(s.nr_sectors());
                }
                assert_eq!(total, io.nr_sectors);
                assert!(within_disk(limits, io.sector_number, io.nr_sectors));
                assert_eq!(io.sector_number % spb, 0);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((limits, rest)) = data.split_first_chunk::<LIMITS>() else {
        return;
    };
    let Some((slot, rest)) = rest.split_first_chunk::<SLOT>() else {
        return;
    };
    let limits = limits_from(limits);
    let segments = segments_from(rest);

    // A native front end.
    let req = BlkifSringEntry::from_bytes_array(*slot).request();
    check(&req, &limits, &segments);

    // A 32-bit front end writing the same bytes into its 108-byte slot.
    let Some((slot32, _)) = slot.split_first_chunk::<SLOT_32>() else {
        return;
    };
    let req32 = x86_32::BlkifSringEntry::from_bytes_array(*slot32).request();
    let native = req32.to_native();
    assert_eq!(native.id, { req32.id });
    assert_eq!(native.operation, req32.operation);
    assert_eq!(
        x86_32::BlkifRequest::from_native(&native).to_native(),
        native
    );
    check(&native, &limits, &segments);
});
