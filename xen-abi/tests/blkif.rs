//! `xen_abi::blkif`: the hostile-input cases of HOSTILE-INPUT.md ("blkif"), one test per case, plus
//! round trips and properties of validation.
//!
//! Not here: "an invalid grant ref", "a grant revoked during the I/O" and "one element of a batched grant
//! map failing" belong to the grant table; `io/blkif.h` declares no grant reference invalid, so blkif
//! passes every `gref` through.

use proptest::prelude::*;
use xen_abi::blkif::{
    self, BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_RESERVED_1,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BlkifDirection, BlkifError, BlkifLimits, BlkifOpCode, BlkifOperation, BlkifProtocol,
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse,
    BlkifSringEntry, BlkifStatus, CheckedSegment, x86_32,
};
use zerocopy::{FromBytes, IntoBytes};

const DISK: u64 = 1 << 20; // 512 MiB in 512-byte sectors

fn limits() -> BlkifLimits {
    BlkifLimits::new(DISK, 512)
        .unwrap()
        .with_barrier(true)
        .with_flush_cache(true)
        .with_discard(true, true)
        .with_max_indirect_segments(256)
        .unwrap()
}

fn full_page(gref: u32) -> BlkifRequestSegment {
    BlkifRequestSegment::new(gref, 0, 7)
}

fn rw(op: u8, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    BlkifRequest::with_segments(op, 0x51, 0xdead_beef, sector, segs).unwrap()
}

fn indirect(op: u8, nr_segments: u16, sector: u64) -> BlkifRequest {
    BlkifRequestIndirect::new(
        op,
        nr_segments,
        0x51,
        42,
        sector,
        [10, 11, 12, 13, 14, 15, 16, 17],
    )
    .to_request()
}

/// A request with `nr_segments` forced to a raw value (as a hostile front end writes it).
fn with_nr_segments(mut req: BlkifRequest, nr_segments: u8) -> BlkifRequest {
    req.nr_segments = nr_segments;
    req
}

// ---------------------------------------------------------------------------------------------------------
// nr_segments of 0, 12, 255
// ---------------------------------------------------------------------------------------------------------

#[test]
fn nr_segments_zero_on_read_is_rejected() {
    let req = rw(BLKIF_OP_READ, 0, &[]);
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::NoSegments {
            operation: BLKIF_OP_READ
        })
    );
}

#[test]
fn nr_segments_zero_on_write_is_rejected() {
    let req = rw(BLKIF_OP_WRITE, 0, &[]);
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::NoSegments {
            operation: BLKIF_OP_WRITE
        })
    );
}

#[test]
fn nr_segments_zero_on_flush_and_barrier_is_accepted() {
    for op in [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER] {
        let got = rw(op, 0, &[]).validate(&limits()).unwrap();
        let (BlkifOperation::FlushDiskcache(c) | BlkifOperation::WriteBarrier(c)) = got else {
            panic!("operation {op} gave {got:?}");
        };
        assert!(c.segments.is_empty());
        assert_eq!(c.nr_sectors, 0);
    }
}

#[test]
fn nr_segments_12_is_rejected() {
    for op in [
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
        BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE,
    ] {
        let req = with_nr_segments(rw(op, 0, &[full_page(1); 11]), 12);
        assert_eq!(
            req.validate(&limits()),
            Err(BlkifError::TooManySegments { nr_segments: 12 })
        );
    }
}

#[test]
fn nr_segments_255_is_rejected() {
    let req = with_nr_segments(rw(BLKIF_OP_READ, 0, &[full_page(1); 11]), 255);
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::TooManySegments { nr_segments: 255 })
    );
}

#[test]
fn nr_segments_11_is_accepted() {
    let req = rw(BLKIF_OP_WRITE, 8, &[full_page(1); 11]);
    let BlkifOperation::Write(c) = req.validate(&limits()).unwrap() else {
        panic!("not a write")
    };
    assert_eq!(c.segments.len(), 11);
    assert_eq!(c.nr_sectors, 88);
    assert_eq!(c.sector_number, 8);
    assert_eq!(c.handle, 0x51);
}

#[test]
fn push_segment_stops_at_11() {
    let mut req = rw(BLKIF_OP_READ, 0, &[full_page(1); 11]);
    assert_eq!(
        req.push_segment(full_page(2)),
        Err(BlkifError::TooManySegments { nr_segments: 12 })
    );
    assert_eq!(req.nr_segments, 11);
}

// ---------------------------------------------------------------------------------------------------------
// Indirect requests
// ---------------------------------------------------------------------------------------------------------

#[test]
fn indirect_nr_segments_zero_is_rejected() {
    let req = indirect(BLKIF_OP_READ, 0, 0);
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::NoSegments {
            operation: BLKIF_OP_READ
        })
    );
}

#[test]
fn indirect_nr_segments_above_advertised_maximum_is_rejected() {
    let req = indirect(BLKIF_OP_READ, 257, 0);
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::IndirectSegmentsAboveMax {
            nr_segments: 257,
            max: 256
        })
    );
    // At the maximum it is accepted.
    let BlkifOperation::Indirect(i) = indirect(BLKIF_OP_READ, 256, 0).validate(&limits()).unwrap()
    else {
        panic!("not indirect")
    };
    assert_eq!(i.nr_segments, 256);
    assert_eq!(i.nr_pages(), 1);
}

#[test]
fn indirect_nr_segments_65535_is_rejected() {
    let limits = limits().with_max_indirect_segments(4096).unwrap();
    let req = indirect(BLKIF_OP_WRITE, 65535, 0);
    assert_eq!(
        req.validate(&limits),
        Err(BlkifError::TooManyIndirectPages {
            nr_segments: 65535,
            pages: 128
        })
    );
}

#[test]
fn indirect_op_not_read_or_write_is_rejected() {
    for op in 2..=u8::MAX {
        let req = indirect(op, 8, 0);
        assert_eq!(
            req.validate(&limits()),
            Err(BlkifError::InvalidIndirectOp { indirect_op: op })
        );
        // The response echoes indirect_op, as blkback's fail_response does.
        let rsp = req.error_response(&BlkifError::InvalidIndirectOp { indirect_op: op });
        assert_eq!(
            (rsp.id, rsp.operation, rsp.status),
            (42, op, BLKIF_RSP_ERROR)
        );
    }
}

#[test]
fn more_than_8_indirect_grefs_is_rejected() {
    // The most a back end may advertise is 8 pages of 512 segments; one more segment needs a 9th page.
    let limits = limits().with_max_indirect_segments(4096).unwrap();
    assert_eq!(
        indirect(BLKIF_OP_READ, 4097, 0).validate(&limits),
        Err(BlkifError::TooManyIndirectPages {
            nr_segments: 4097,
            pages: 9
        })
    );
    let BlkifOperation::Indirect(i) = indirect(BLKIF_OP_READ, 4096, 0).validate(&limits).unwrap()
    else {
        panic!("not indirect")
    };
    assert_eq!(i.nr_pages(), BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    assert_eq!(i.indirect_pages(), &[10, 11, 12, 13, 14, 15, 16, 17]);
    // And the limits cannot advertise more.
    assert_eq!(
        BlkifLimits::new(DISK, 512)
            .unwrap()
            .with_max_indirect_segments(4097),
        Err(BlkifError::MaxIndirectSegmentsTooLarge { max: 4097 })
    );
}

#[test]
fn indirect_not_offered_is_eopnotsupp() {
    let limits = BlkifLimits::new(DISK, 512).unwrap();
    let req = indirect(BLKIF_OP_READ, 8, 0);
    let err = req.validate(&limits).unwrap_err();
    assert_eq!(
        err,
        BlkifError::FeatureNotOffered {
            operation: BLKIF_OP_INDIRECT,
            feature: "feature-max-indirect-segments"
        }
    );
    assert_eq!(err.status(), BLKIF_RSP_EOPNOTSUPP);
}

#[test]
fn indirect_pages_and_segments_per_page() {
    let limits = limits().with_max_indirect_segments(4096).unwrap();
    let BlkifOperation::Indirect(i) = indirect(BLKIF_OP_READ, 1025, 0).validate(&limits).unwrap()
    else {
        panic!("not indirect")
    };
    assert_eq!(i.nr_pages(), 3);
    assert_eq!(i.indirect_pages(), &[10, 11, 12]);
    assert_eq!(
        (0..5).map(|p| i.segments_in_page(p)).collect::<Vec<_>>(),
        vec![512, 512, 1, 0, 0]
    );
    assert_eq!(i.segments_in_page(usize::MAX), 0);
}

fn checked_indirect(
    op: u8,
    nr_segments: u16,
    sector: u64,
    limits: &BlkifLimits,
) -> blkif::CheckedIndirect {
    match indirect(op, nr_segments, sector).validate(limits).unwrap() {
        BlkifOperation::Indirect(i) => i,
        other => panic!("not indirect: {other:?}"),
    }
}

#[test]
fn indirect_segments_are_checked_and_summed() {
    let i = checked_indirect(BLKIF_OP_WRITE, 3, 16, &limits());
    let segs = [
        full_page(1),
        BlkifRequestSegment::new(2, 2, 5),
        BlkifRequestSegment::new(3, 7, 7),
    ];
    let io = i.check_segments(&segs, &limits()).unwrap();
    assert_eq!(io.direction, BlkifDirection::Write);
    assert_eq!(io.nr_sectors, 8 + 4 + 1);
    assert_eq!(io.sector_number, 16);
    assert_eq!(io.nr_segments(), 3);
    let got: Vec<_> = io
        .segments()
        .map(|s| (s.gref, s.offset(), s.len()))
        .collect();
    assert_eq!(got, vec![(1, 0, 4096), (2, 1024, 2048), (3, 3584, 512)]);
}

#[test]
fn indirect_segment_count_differing_from_nr_segments_is_rejected() {
    let i = checked_indirect(BLKIF_OP_READ, 3, 0, &limits());
    for n in [0usize, 2, 4] {
        let segs = vec![full_page(1); n];
        assert_eq!(
            i.check_segments(&segs, &limits()),
            Err(BlkifError::IndirectSegmentCount {
                expected: 3,
                got: n
            })
        );
    }
}

#[test]
fn indirect_first_sect_after_last_sect_is_rejected() {
    // Past the first indirect page: the segment index counts across pages.
    let limits = limits().with_max_indirect_segments(1024).unwrap();
    let i = checked_indirect(BLKIF_OP_READ, 600, 0, &limits);
    let mut segs = vec![full_page(1); 600];
    segs[599] = BlkifRequestSegment::new(1, 6, 5);
    assert_eq!(
        i.check_segments(&segs, &limits),
        Err(BlkifError::FirstSectAfterLastSect {
            segment: 599,
            first_sect: 6,
            last_sect: 5
        })
    );
}

#[test]
fn indirect_last_sect_8_or_more_is_rejected() {
    let i = checked_indirect(BLKIF_OP_READ, 2, 0, &limits());
    let segs = [full_page(1), BlkifRequestSegment::new(1, 0, 8)];
    assert_eq!(
        i.check_segments(&segs, &limits()),
        Err(BlkifError::LastSectPastPage {
            segment: 1,
            last_sect: 8
        })
    );
}

#[test]
fn indirect_past_end_of_disk_is_rejected() {
    let i = checked_indirect(BLKIF_OP_READ, 2, DISK - 8, &limits());
    let segs = [full_page(1), full_page(2)];
    assert_eq!(
        i.check_segments(&segs, &limits()),
        Err(BlkifError::PastEndOfDisk {
            sector_number: DISK - 8,
            nr_sectors: 16,
            disk_sectors: DISK
        })
    );
    let i = checked_indirect(BLKIF_OP_READ, 1, u64::MAX - 3, &limits());
    assert_eq!(
        i.check_segments(&segs[..1], &limits()),
        Err(BlkifError::PastEndOfDisk {
            sector_number: u64::MAX - 3,
            nr_sectors: 8,
            disk_sectors: DISK
        })
    );
}

#[test]
fn indirect_segment_not_aligned_to_sector_size_is_rejected() {
    let limits = BlkifLimits::new(DISK, 4096)
        .unwrap()
        .with_max_indirect_segments(64)
        .unwrap();
    let i = checked_indirect(BLKIF_OP_READ, 2, 8, &limits);
    let segs = [full_page(1), BlkifRequestSegment::new(2, 0, 3)];
    assert_eq!(
        i.check_segments(&segs, &limits),
        Err(BlkifError::MisalignedSegment {
            segment: 1,
            nr_sectors: 4,
            sector_size: 4096
        })
    );
    let i = checked_indirect(BLKIF_OP_READ, 1, 4, &limits);
    assert_eq!(
        i.check_segments(&segs[..1], &limits),
        Err(BlkifError::MisalignedSector {
            sector_number: 4,
            sector_size: 4096
        })
    );
}

#[test]
fn indirect_write_to_read_only_vbd_is_rejected() {
    let ro = limits().with_read_only(true);
    assert_eq!(
        indirect(BLKIF_OP_WRITE, 4, 0).validate(&ro),
        Err(BlkifError::ReadOnly {
            operation: BLKIF_OP_WRITE
        })
    );
    assert!(indirect(BLKIF_OP_READ, 4, 0).validate(&ro).is_ok());
}

// ---------------------------------------------------------------------------------------------------------
// Segments within their page
// ---------------------------------------------------------------------------------------------------------

#[test]
fn first_sect_after_last_sect_is_rejected() {
    let req = rw(
        BLKIF_OP_READ,
        0,
        &[
            full_page(1),
            full_page(2),
            BlkifRequestSegment::new(3, 7, 0),
        ],
    );
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::FirstSectAfterLastSect {
            segment: 2,
            first_sect: 7,
            last_sect: 0
        })
    );
}

#[test]
fn last_sect_8_or_more_is_rejected() {
    for last in [8u8, 9, 255] {
        let req = rw(
            BLKIF_OP_WRITE,
            0,
            &[
                full_page(1),
                full_page(2),
                full_page(3),
                BlkifRequestSegment::new(4, 0, last),
            ],
        );
        let err = req.validate(&limits()).unwrap_err();
        assert_eq!(
            err,
            BlkifError::LastSectPastPage {
                segment: 3,
                last_sect: last
            }
        );
        if last == 9 {
            assert_eq!(
                err.to_string(),
                "segment 3: last_sect 9 is past the end of the 4096-byte page (last_sect must be < 8)"
            );
        }
    }
}

#[test]
fn segments_past_nr_segments_are_ignored() {
    // Garbage in unused slots does not matter.
    let mut req = rw(BLKIF_OP_READ, 0, &[full_page(1)]);
    req.seg[5] = BlkifRequestSegment::new(9, 200, 100);
    assert!(req.validate(&limits()).is_ok());
}

#[test]
fn checked_segment_offset_and_length() {
    for first in 0..8u8 {
        for last in first..8u8 {
            let s = CheckedSegment::check(0, &BlkifRequestSegment::new(5, first, last)).unwrap();
            assert_eq!(s.offset(), usize::from(first) * 512);
            assert_eq!(s.len(), usize::from(last - first + 1) * 512);
            assert!(s.offset() + s.len() <= 4096);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Sectors within the disk, aligned
// ---------------------------------------------------------------------------------------------------------

#[test]
fn sector_plus_length_past_end_of_disk_is_rejected() {
    let req = rw(BLKIF_OP_READ, DISK - 15, &[full_page(1), full_page(2)]);
    assert_eq!(
        req.validate(&limits()),
        Err(BlkifError::PastEndOfDisk {
            sector_number: DISK - 15,
            nr_sectors: 16,
            disk_sectors: DISK
        })
    );
    // Ending exactly at the end is fine.
    assert!(
        rw(BLKIF_OP_READ, DISK - 16, &[full_page(1), full_page(2)])
            .validate(&limits())
            .is_ok()
    );
    // Starting past the end of the disk.
    let req = rw(BLKIF_OP_READ, DISK, &[full_page(1)]);
    assert!(matches!(
        req.validate(&limits()),
        Err(BlkifError::PastEndOfDisk { .. })
    ));
}

#[test]
fn sector_plus_length_overflowing_u64_is_rejected() {
    for sector in [u64::MAX, u64::MAX - 7, u64::MAX - 4] {
        let req = rw(BLKIF_OP_WRITE, sector, &[full_page(1)]);
        assert_eq!(
            req.validate(&limits()),
            Err(BlkifError::PastEndOfDisk {
                sector_number: sector,
                nr_sectors: 8,
                disk_sectors: DISK
            })
        );
    }
    // Even on a disk of 2^64 - 1 sectors.
    let huge = BlkifLimits::new(u64::MAX, 512).unwrap();
    let req = rw(BLKIF_OP_READ, u64::MAX - 4, &[full_page(1)]);
    assert!(matches!(
        req.validate(&huge),
        Err(BlkifError::PastEndOfDisk { .. })
    ));
    assert!(
        rw(BLKIF_OP_READ, u64::MAX - 8, &[full_page(1)])
            .validate(&huge)
            .is_ok()
    );
}

#[test]
fn sector_not_aligned_to_sector_size_is_rejected() {
    let limits = BlkifLimits::new(DISK, 4096).unwrap();
    let req = rw(BLKIF_OP_READ, 1, &[full_page(1)]);
    assert_eq!(
        req.validate(&limits),
        Err(BlkifError::MisalignedSector {
            sector_number: 1,
            sector_size: 4096
        })
    );
    // A start that is aligned with a segment that is not a whole logical sector.
    let req = rw(
        BLKIF_OP_READ,
        8,
        &[full_page(1), BlkifRequestSegment::new(2, 0, 6)],
    );
    assert_eq!(
        req.validate(&limits),
        Err(BlkifError::MisalignedSegment {
            segment: 1,
            nr_sectors: 7,
            sector_size: 4096
        })
    );
    // 1024-byte sectors: two 512-byte sectors at a time.
    let limits = BlkifLimits::new(DISK, 1024).unwrap();
    assert!(
        rw(BLKIF_OP_READ, 2, &[BlkifRequestSegment::new(1, 2, 5)])
            .validate(&limits)
            .is_ok()
    );
    assert!(matches!(
        rw(BLKIF_OP_READ, 2, &[BlkifRequestSegment::new(1, 2, 4)]).validate(&limits),
        Err(BlkifError::MisalignedSegment { .. })
    ));
}

#[test]
fn sector_size_must_be_a_power_of_two_from_512_to_4096() {
    for bad in [0u32, 1, 256, 511, 513, 768, 1000, 8192, u32::MAX] {
        assert_eq!(
            BlkifLimits::new(DISK, bad),
            Err(BlkifError::InvalidSectorSize { sector_size: bad })
        );
    }
    for good in [512u32, 1024, 2048, 4096] {
        assert_eq!(BlkifLimits::new(DISK, good).unwrap().sector_size(), good);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Discard
// ---------------------------------------------------------------------------------------------------------

fn discard(sector: u64, nr_sectors: u64, flag: u8) -> BlkifRequest {
    BlkifRequestDiscard::new(3, 77, sector, nr_sectors, flag).to_request()
}

#[test]
fn discard_of_2_pow_64_sectors_is_rejected() {
    // The largest count a u64 holds, from sector 0 (past the disk) and from sector 1 (past 2^64).
    for sector in [0u64, 1, DISK] {
        assert_eq!(
            discard(sector, u64::MAX, 0).validate(&limits()),
            Err(BlkifError::PastEndOfDisk {
                sector_number: sector,
                nr_sectors: u64::MAX,
                disk_sectors: DISK
            })
        );
    }
    let huge = BlkifLimits::new(u64::MAX, 512)
        .unwrap()
        .with_discard(true, false);
    assert!(matches!(
        discard(1, u64::MAX, 0).validate(&huge),
        Err(BlkifError::PastEndOfDisk { .. })
    ));
}

#[test]
fn discard_within_disk_is_accepted() {
    let BlkifOperation::Discard(d) = discard(8, DISK - 8, BLKIF_DISCARD_SECURE)
        .validate(&limits())
        .unwrap()
    else {
        panic!("not a discard")
    };
    assert_eq!(
        (d.handle, d.sector_number, d.nr_sectors, d.secure),
        (3, 8, DISK - 8, true)
    );
}

#[test]
fn discard_secure_flag_is_ignored_unless_offered() {
    let limits = limits().with_discard(true, false);
    let BlkifOperation::Discard(d) = discard(0, 8, BLKIF_DISCARD_SECURE | 0x80)
        .validate(&limits)
        .unwrap()
    else {
        panic!("not a discard")
    };
    assert!(!d.secure);
}

#[test]
fn discard_not_aligned_to_sector_size_is_rejected() {
    let limits = BlkifLimits::new(DISK, 4096)
        .unwrap()
        .with_discard(true, false);
    assert_eq!(
        discard(4, 8, 0).validate(&limits),
        Err(BlkifError::MisalignedSector {
            sector_number: 4,
            sector_size: 4096
        })
    );
    assert_eq!(
        discard(8, 12, 0).validate(&limits),
        Err(BlkifError::MisalignedDiscard {
            nr_sectors: 12,
            sector_size: 4096
        })
    );
}

#[test]
fn discard_not_offered_is_eopnotsupp() {
    let limits = BlkifLimits::new(DISK, 512).unwrap();
    let err = discard(0, 8, 0).validate(&limits).unwrap_err();
    assert_eq!(
        err,
        BlkifError::FeatureNotOffered {
            operation: BLKIF_OP_DISCARD,
            feature: "feature-discard"
        }
    );
    assert_eq!(err.status(), BLKIF_RSP_EOPNOTSUPP);
}

// ---------------------------------------------------------------------------------------------------------
// Read-only disks, unknown and optional operations
// ---------------------------------------------------------------------------------------------------------

#[test]
fn write_to_read_only_vbd_is_rejected() {
    let ro = limits().with_read_only(true);
    let seg = [full_page(1)];
    // blkback's xen_vbd_translate refuses every operation but read on a read-only vbd: writes, barriers and
    // flushes (REQ_OP_WRITE with a preflush) and discards.
    for (req, op) in [
        (rw(BLKIF_OP_WRITE, 0, &seg), BLKIF_OP_WRITE),
        (rw(BLKIF_OP_WRITE_BARRIER, 0, &seg), BLKIF_OP_WRITE_BARRIER),
        (
            rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]),
            BLKIF_OP_FLUSH_DISKCACHE,
        ),
        (discard(0, 8, 0), BLKIF_OP_DISCARD),
    ] {
        let err = req.validate(&ro).unwrap_err();
        assert_eq!(err, BlkifError::ReadOnly { operation: op });
        assert_eq!(req.error_response(&err).status, BLKIF_RSP_ERROR);
    }
    assert!(matches!(
        rw(BLKIF_OP_READ, 0, &seg).validate(&ro),
        Ok(BlkifOperation::Read(_))
    ));
}

#[test]
fn unknown_operation_codes_4_and_7_to_255_are_rejected() {
    for op in core::iter::once(BLKIF_OP_RESERVED_1).chain(7..=u8::MAX) {
        let req = rw(op, 0, &[full_page(1)]);
        let err = req.validate(&limits()).unwrap_err();
        assert_eq!(err, BlkifError::UnsupportedOperation { operation: op });
        assert_eq!(BlkifOpCode::try_from(op), Err(err));
        // blkback answers BLKIF_RSP_EOPNOTSUPP, echoing id and operation.
        let rsp = req.error_response(&err);
        assert_eq!(
            (rsp.id, rsp.operation, rsp.status),
            (0xdead_beef, op, BLKIF_RSP_EOPNOTSUPP)
        );
    }
}

#[test]
fn barrier_and_flush_not_offered_are_eopnotsupp() {
    let limits = BlkifLimits::new(DISK, 512).unwrap();
    for (op, feature) in [
        (BLKIF_OP_WRITE_BARRIER, "feature-barrier"),
        (BLKIF_OP_FLUSH_DISKCACHE, "feature-flush-cache"),
    ] {
        let err = rw(op, 0, &[]).validate(&limits).unwrap_err();
        assert_eq!(
            err,
            BlkifError::FeatureNotOffered {
                operation: op,
                feature
            }
        );
        assert_eq!(err.status(), BLKIF_RSP_EOPNOTSUPP);
    }
}

#[test]
fn flush_with_data_is_checked_like_a_write() {
    let req = rw(BLKIF_OP_FLUSH_DISKCACHE, DISK - 4, &[full_page(1)]);
    assert!(matches!(
        req.validate(&limits()),
        Err(BlkifError::PastEndOfDisk { .. })
    ));
    let req = rw(
        BLKIF_OP_FLUSH_DISKCACHE,
        0,
        &[BlkifRequestSegment::new(1, 3, 2)],
    );
    assert!(matches!(
        req.validate(&limits()),
        Err(BlkifError::FirstSectAfterLastSect { .. })
    ));
}

#[test]
fn op_codes_and_statuses_convert() {
    for (raw, op) in [
        (0u8, BlkifOpCode::Read),
        (1, BlkifOpCode::Write),
        (2, BlkifOpCode::WriteBarrier),
        (3, BlkifOpCode::FlushDiskcache),
        (5, BlkifOpCode::Discard),
        (6, BlkifOpCode::Indirect),
    ] {
        assert_eq!(BlkifOpCode::try_from(raw), Ok(op));
        assert_eq!(u8::from(op), raw);
    }
    for (raw, st) in [
        (0i16, BlkifStatus::Okay),
        (-1, BlkifStatus::Error),
        (-2, BlkifStatus::EOpNotSupp),
    ] {
        assert_eq!(BlkifStatus::try_from(raw), Ok(st));
        assert_eq!(i16::from(st), raw);
    }
    assert_eq!(
        BlkifStatus::try_from(-3),
        Err(BlkifError::UnknownStatus { status: -3 })
    );
    assert_eq!(BlkifDirection::Read.op(), BLKIF_OP_READ);
    assert_eq!(BlkifDirection::Write.op(), BLKIF_OP_WRITE);
}

#[test]
fn protocol_names() {
    assert_eq!(
        BlkifProtocol::from_name("x86_32-abi"),
        Some(BlkifProtocol::X86_32)
    );
    assert_eq!(
        BlkifProtocol::from_name("x86_64-abi"),
        Some(BlkifProtocol::X86_64)
    );
    assert_eq!(
        BlkifProtocol::from_name("arm-abi"),
        Some(BlkifProtocol::Arm)
    );
    assert_eq!(BlkifProtocol::from_name("x86_32-abi\0"), None);
    assert_eq!(BlkifProtocol::from_name(""), None);
    for p in [
        BlkifProtocol::X86_32,
        BlkifProtocol::X86_64,
        BlkifProtocol::Arm,
    ] {
        assert_eq!(BlkifProtocol::from_name(p.name()), Some(p));
        assert_eq!(p.is_x86_32(), p == BlkifProtocol::X86_32);
    }
}

// ---------------------------------------------------------------------------------------------------------
// x86_32 front ends
// ---------------------------------------------------------------------------------------------------------

#[test]
fn x86_32_front_end_requests_decode_equal_to_native() {
    let segs = [
        full_page(7),
        BlkifRequestSegment::new(8, 1, 6),
        BlkifRequestSegment::new(9, 4, 4),
    ];
    let natives = [
        rw(BLKIF_OP_READ, 64, &segs),
        rw(BLKIF_OP_WRITE, 128, &segs),
        rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]),
        rw(BLKIF_OP_WRITE_BARRIER, 8, &segs[..1]),
        discard(16, 32, BLKIF_DISCARD_SECURE),
        indirect(BLKIF_OP_WRITE, 100, 256),
        indirect(9, 100, 256),
        BlkifRequest::new(BLKIF_OP_RESERVED_1, 0, 0xdead_beef, 0),
        BlkifRequest::new(200, 0, u64::MAX, 0),
    ];
    for native in natives {
        // What a 32-bit front end writes into its 108-byte slot, built field by field.
        let x32 = match native.operation {
            BLKIF_OP_DISCARD => {
                let d = native.discard();
                x86_32::BlkifRequestDiscard::new(
                    d.handle,
                    d.id,
                    d.sector_number,
                    d.nr_sectors,
                    d.flag,
                )
                .to_request()
            }
            BLKIF_OP_INDIRECT => {
                let i = native.indirect();
                x86_32::BlkifRequestIndirect::new(
                    i.indirect_op,
                    i.nr_segments,
                    i.handle,
                    i.id,
                    i.sector_number,
                    i.indirect_grefs,
                )
                .to_request()
            }
            op if op <= BLKIF_OP_FLUSH_DISKCACHE => {
                let mut r =
                    x86_32::BlkifRequest::new(op, native.handle, native.id, native.sector_number);
                r.nr_segments = native.nr_segments;
                r.seg = native.seg;
                r
            }
            op => x86_32::BlkifRequest::new(op, 0, native.id, 0),
        };
        // Through the slot bytes, as a back end reads them.
        let slot = x86_32::BlkifSringEntry::read_from_bytes(x32.as_bytes()).unwrap();
        let decoded = slot.request().to_native();
        assert_eq!(decoded, native, "operation {}", native.operation);
        assert_eq!(decoded.validate(&limits()), native.validate(&limits()));
        assert_eq!(x86_32::BlkifRequest::from_native(&native), x32);
    }
}

#[test]
fn x86_32_request_fields_sit_where_i386_puts_them() {
    let mut r = x86_32::BlkifRequest::new(
        BLKIF_OP_READ,
        0x0102,
        0x1122_3344_5566_7788,
        0x99aa_bbcc_ddee_ff00,
    );
    r.nr_segments = 1;
    let b = r.as_bytes();
    assert_eq!(b.len(), 108);
    assert_eq!(&b[2..4], &0x0102u16.to_ne_bytes());
    assert_eq!(&b[4..12], &0x1122_3344_5566_7788u64.to_ne_bytes());
    assert_eq!(&b[12..20], &0x99aa_bbcc_ddee_ff00u64.to_ne_bytes());
}

// ---------------------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------------------

#[test]
fn response_padding_is_zero() {
    let rsp = BlkifResponse::new(u64::MAX, 0xff, -1);
    let b = rsp.as_bytes();
    assert_eq!(b.len(), 16);
    assert_eq!(b[9], 0, "padding after operation");
    assert_eq!(&b[12..16], &[0; 4], "tail padding");
    assert!(rsp.padding_is_zero());
    // Placed in a slot over an old request full of bytes, the rest of the slot is zeroed too.
    let slot = BlkifSringEntry::from_response(&rsp);
    assert!(slot.as_bytes()[16..].iter().all(|&x| x == 0));
    assert_eq!(slot.response(), rsp);

    let r32 = x86_32::BlkifResponse::from_native(&rsp);
    let b = r32.as_bytes();
    assert_eq!(b.len(), 12);
    assert_eq!(b[9], 0);
    assert!(r32.padding_is_zero());
    let slot = x86_32::BlkifSringEntry::from_response(&r32);
    assert!(slot.as_bytes()[12..].iter().all(|&x| x == 0));
    assert_eq!(slot.response().to_native(), rsp);

    // A response read from hostile bytes reports its padding.
    let mut raw = [0u8; 16];
    raw[13] = 1;
    assert!(
        !BlkifResponse::read_from_bytes(&raw)
            .unwrap()
            .padding_is_zero()
    );
}

#[test]
fn indirect_response_carries_indirect_op() {
    let req = indirect(BLKIF_OP_WRITE, 4, 0);
    assert_eq!(req.response_operation(), BLKIF_OP_WRITE);
    let rsp = req.response(BLKIF_RSP_OKAY);
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (42, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    );
    let req = rw(BLKIF_OP_READ, 0, &[]);
    assert_eq!(req.response_operation(), BLKIF_OP_READ);
}

// ---------------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------------

fn any_segment() -> impl Strategy<Value = BlkifRequestSegment> {
    (any::<u32>(), any::<u8>(), any::<u8>()).prop_map(|(g, f, l)| BlkifRequestSegment::new(g, f, l))
}

fn valid_segment() -> impl Strategy<Value = BlkifRequestSegment> {
    (any::<u32>(), 0u8..8)
        .prop_flat_map(|(g, f)| (Just(g), Just(f), f..8u8))
        .prop_map(|(g, f, l)| BlkifRequestSegment::new(g, f, l))
}

fn any_native_request() -> impl Strategy<Value = BlkifRequest> {
    proptest::collection::vec(any::<u8>(), 112)
        .prop_map(|b| BlkifRequest::read_from_bytes(&b).unwrap())
}

fn any_x86_32_request() -> impl Strategy<Value = x86_32::BlkifRequest> {
    proptest::collection::vec(any::<u8>(), 108)
        .prop_map(|b| x86_32::BlkifRequest::read_from_bytes(&b).unwrap())
}

/// Limits: any disk size, any valid sector size, any features.
fn any_limits() -> impl Strategy<Value = BlkifLimits> {
    (any::<u64>(), 0u32..4, any::<[bool; 5]>(), 0u32..=4096).prop_map(|(disk, shift, f, max)| {
        BlkifLimits::new(disk, 512 << shift)
            .unwrap()
            .with_read_only(f[0])
            .with_barrier(f[1])
            .with_flush_cache(f[2])
            .with_discard(f[3], f[4])
            .with_max_indirect_segments(max)
            .unwrap()
    })
}

/// Checks what a successful validation promises.
fn assert_within(op: &BlkifOperation, limits: &BlkifLimits) {
    let spb = u64::from(limits.sector_size() / 512);
    let within = |sector: u64, n: u64| {
        sector
            .checked_add(n)
            .is_some_and(|end| end <= limits.disk_sectors())
    };
    match op {
        BlkifOperation::Read(c)
        | BlkifOperation::Write(c)
        | BlkifOperation::WriteBarrier(c)
        | BlkifOperation::FlushDiskcache(c) => {
            assert!(c.segments.len() <= 11);
            let total: u64 = c.segments.iter().map(|s| u64::from(s.nr_sectors())).sum();
            assert_eq!(total, c.nr_sectors);
            for s in &c.segments {
                assert!(s.offset() + s.len() <= 4096);
                assert_eq!(u64::from(s.nr_sectors()) % spb, 0);
            }
            if !c.segments.is_empty() {
                assert!(within(c.sector_number, c.nr_sectors));
                assert_eq!(c.sector_number % spb, 0);
            }
            if !matches!(op, BlkifOperation::Read(_)) {
                assert!(!limits.read_only());
            }
        }
        BlkifOperation::Discard(d) => {
            assert!(limits.feature_discard() && !limits.read_only());
            assert!(within(d.sector_number, d.nr_sectors));
            assert!(!d.secure || limits.discard_secure());
        }
        BlkifOperation::Indirect(i) => {
            assert!(i.nr_segments >= 1 && i.nr_segments <= limits.max_indirect_segments());
            assert!(i.nr_pages() >= 1 && i.nr_pages() <= 8);
            assert_eq!(i.indirect_pages().len(), i.nr_pages());
            assert_eq!(
                (0..9).map(|p| i.segments_in_page(p)).sum::<usize>(),
                usize::from(i.nr_segments)
            );
        }
    }
}

proptest! {
    #[test]
    fn request_bytes_round_trip(req in any_native_request()) {
        prop_assert_eq!(BlkifRequest::read_from_bytes(req.as_bytes()).unwrap(), req);
        let slot = BlkifSringEntry::from_request(&req);
        prop_assert_eq!(slot.as_bytes(), req.as_bytes());
        prop_assert_eq!(slot.request(), req);
        // The discard and indirect views are the same bytes.
        let (d, i) = (req.discard(), req.indirect());
        prop_assert_eq!(d.as_bytes(), &req.as_bytes()[..32]);
        prop_assert_eq!(i.as_bytes(), &req.as_bytes()[..64]);
    }

    #[test]
    fn x86_32_request_bytes_round_trip(req in any_x86_32_request()) {
        prop_assert_eq!(x86_32::BlkifRequest::read_from_bytes(req.as_bytes()).unwrap(), req);
        let slot = x86_32::BlkifSringEntry::from_request(&req);
        prop_assert_eq!(slot.request(), req);
        let (d, i) = (req.discard(), req.indirect());
        prop_assert_eq!(d.as_bytes(), &req.as_bytes()[..28]);
        prop_assert_eq!(i.as_bytes(), &req.as_bytes()[..64]);
    }

    #[test]
    fn discard_and_indirect_round_trip(
        handle: u16, id: u64, sector: u64, n: u64, flag: u8, op: u8, nseg: u16, grefs: [u32; 8],
    ) {
        let d = BlkifRequestDiscard::new(handle, id, sector, n, flag);
        prop_assert_eq!(d.to_request().discard(), d);
        prop_assert_eq!(d.to_request().id, id);
        let i = BlkifRequestIndirect::new(op, nseg, handle, id, sector, grefs);
        prop_assert_eq!(i.to_request().indirect(), i);
        prop_assert_eq!(i.to_request().id, id);
        let d32 = x86_32::BlkifRequestDiscard::new(handle, id, sector, n, flag);
        prop_assert_eq!(d32.to_request().discard(), d32);
        let i32 = x86_32::BlkifRequestIndirect::new(op, nseg, handle, id, sector, grefs);
        prop_assert_eq!(i32.to_request().indirect(), i32);
    }

    #[test]
    fn response_round_trip(id: u64, op: u8, status: i16) {
        let rsp = BlkifResponse::new(id, op, status);
        prop_assert_eq!(BlkifResponse::read_from_bytes(rsp.as_bytes()).unwrap(), rsp);
        prop_assert_eq!(BlkifSringEntry::from_response(&rsp).response(), rsp);
        let r32 = x86_32::BlkifResponse::from(rsp);
        prop_assert_eq!(x86_32::BlkifResponse::read_from_bytes(r32.as_bytes()).unwrap(), r32);
        prop_assert_eq!(BlkifResponse::from(r32), rsp);
        prop_assert!(rsp.padding_is_zero() && r32.padding_is_zero());
    }

    #[test]
    fn x86_32_conversion_preserves_fields(req in any_x86_32_request()) {
        let native = req.to_native();
        prop_assert_eq!(native.operation, req.operation);
        prop_assert_eq!(native.id, req.id);
        match req.operation {
            0..=3 => {
                prop_assert_eq!(native.nr_segments, req.nr_segments);
                prop_assert_eq!(native.handle, req.handle);
                prop_assert_eq!(native.sector_number, req.sector_number);
                prop_assert_eq!(native.seg, req.seg);
            }
            5 => {
                let (d, d32) = (native.discard(), req.discard());
                prop_assert_eq!(
                    (d.flag, d.handle, d.id, d.sector_number, d.nr_sectors),
                    (d32.flag, d32.handle, d32.id, d32.sector_number, d32.nr_sectors)
                );
            }
            6 => {
                let (i, i32) = (native.indirect(), req.indirect());
                prop_assert_eq!(
                    (i.indirect_op, i.nr_segments, i.handle, i.id, i.sector_number, i.indirect_grefs),
                    (i32.indirect_op, i32.nr_segments, i32.handle, i32.id, i32.sector_number, i32.indirect_grefs)
                );
            }
            _ => {}
        }
        // And back: the meaningful fields survive the round trip.
        prop_assert_eq!(x86_32::BlkifRequest::from_native(&native).to_native(), native);
        // The native padding is zero after conversion.
        prop_assert_eq!(&native.as_bytes()[4..8], &[0u8; 4]);
    }

    #[test]
    fn validation_never_panics_and_keeps_its_promises(req in any_native_request(), limits in any_limits()) {
        if let Ok(op) = req.validate(&limits) {
            assert_within(&op, &limits);
        }
        // The same request from a 32-bit front end is judged the same way.
        let x32 = x86_32::BlkifRequest::from_native(&req);
        prop_assert_eq!(x32.to_native().validate(&limits), req.validate(&limits));
    }

    #[test]
    fn validation_accepts_requests_within_limits(
        op in 0u8..2,
        segs in proptest::collection::vec(valid_segment(), 1..=11),
        start in any::<u64>(),
        disk in 88u64..u64::MAX,
    ) {
        let limits = BlkifLimits::new(disk, 512).unwrap();
        let total: u64 = segs.iter().map(|s| u64::from(s.last_sect - s.first_sect + 1)).sum();
        let sector = start % (disk - total + 1);
        let req = BlkifRequest::with_segments(op, 1, 2, sector, &segs).unwrap();
        let got = req.validate(&limits);
        prop_assert!(got.is_ok(), "{:?}", got);
        let got = got.unwrap();
        assert_within(&got, &limits);
        let (BlkifOperation::Read(c) | BlkifOperation::Write(c)) = got else { panic!("{got:?}") };
        prop_assert_eq!(c.nr_sectors, total);
        prop_assert_eq!(c.segments.len(), segs.len());
    }

    #[test]
    fn validation_accepts_indirect_requests_within_limits(
        op in 0u8..2,
        segs in proptest::collection::vec(valid_segment(), 1..=600),
        start in any::<u64>(),
        disk in 4800u64..u64::MAX,
    ) {
        let limits = BlkifLimits::new(disk, 512).unwrap().with_max_indirect_segments(4096).unwrap();
        let total: u64 = segs.iter().map(|s| u64::from(s.last_sect - s.first_sect + 1)).sum();
        let sector = start % (disk - total + 1);
        let nseg = u16::try_from(segs.len()).unwrap();
        let req = indirect(op, nseg, sector);
        let BlkifOperation::Indirect(i) = req.validate(&limits).unwrap() else { panic!("not indirect") };
        assert_within(&BlkifOperation::Indirect(i), &limits);
        let io = i.check_segments(&segs, &limits).unwrap();
        prop_assert_eq!(io.nr_sectors, total);
        prop_assert_eq!(io.segments().count(), segs.len());
        prop_assert!(io.sector_number.checked_add(io.nr_sectors).is_some_and(|e| e <= disk));
    }

    #[test]
    fn validation_accepts_discards_within_limits(start in any::<u64>(), n in any::<u64>(), disk: u64, flag: u8) {
        let limits = BlkifLimits::new(disk, 512).unwrap().with_discard(true, true);
        let n = n % (disk.saturating_add(1)).max(1);
        let sector = if disk - n == u64::MAX { start } else { start % (disk - n + 1) };
        let got = discard(sector, n, flag).validate(&limits).unwrap();
        assert_within(&got, &limits);
    }

    #[test]
    fn indirect_segment_checks_never_panic(
        segs in proptest::collection::vec(any_segment(), 0..=40),
        nseg in 1u16..=40,
        limits in any_limits(),
        sector: u64,
    ) {
        let Ok(limits) = limits.with_max_indirect_segments(40) else { unreachable!() };
        if let Ok(BlkifOperation::Indirect(i)) = indirect(0, nseg, sector).validate(&limits) {
            if let Ok(io) = i.check_segments(&segs, &limits) {
                prop_assert_eq!(io.segments().count(), usize::from(nseg));
                prop_assert!(io.sector_number.checked_add(io.nr_sectors).is_some_and(|e| e <= limits.disk_sectors()));
            }
        }
    }
}
