//! Validation of blkif requests: everything a front end can send, checked on a copy.
//!
//! The checks are Linux blkback's (`dispatch_rw_block_io`, `xen_blkbk_parse_indirect`,
//! `xen_vbd_translate`, `dispatch_discard_io` in `drivers/block/xen-blkback/blkback.c`), made explicit and
//! typed, and in a few places stricter (noted where they are).
#![forbid(unsafe_code)]

use super::{
    BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BLKIF_SECTOR_SIZE, BLKIF_SECTORS_PER_PAGE, BLKIF_SEGS_PER_INDIRECT_FRAME, BlkifRequest,
    BlkifRequestSegment, BlkifSector, BlkifVdev, GrantRef,
};

/// The largest `feature-max-indirect-segments` a back end may advertise: 8 indirect pages of 512 segments
/// (`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME`). No C counterpart (Linux's
/// blkback asserts the same bound at build time).
pub const INDIRECT_SEGMENTS_LIMIT: u16 =
    (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME) as u16;

/// The largest logical `sector-size` accepted by [`BlkifLimits::new`]: one page. No C counterpart. A
/// segment never spans more than a page, so with a larger logical sector no request could be aligned.
const MAX_SECTOR_SIZE: u32 = crate::XEN_PAGE_SIZE as u32;

/// What can be wrong with a blkif request (or with the limits it is checked against).
///
/// [`BlkifError::status`] gives the status of the response that rejects the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlkifError {
    /// The operation code is not one this module knows: [`super::BLKIF_OP_RESERVED_1`] (4) or 7 to 255.
    #[error(
        "operation {operation} is not supported (known operations are 0 to 6, except 4, BLKIF_OP_RESERVED_1)"
    )]
    UnsupportedOperation {
        /// The operation code.
        operation: u8,
    },
    /// The operation is optional, and the back end did not offer it.
    #[error("operation {operation} needs {feature}, which this back end does not offer")]
    FeatureNotOffered {
        /// The operation code.
        operation: u8,
        /// The XenStore feature node that would offer it.
        feature: &'static str,
    },
    /// The request would write to (or discard from, or flush) a read-only disk.
    #[error("operation {operation} modifies the disk, which is read-only")]
    ReadOnly {
        /// The operation code (for an indirect request, its `indirect_op`).
        operation: u8,
    },
    /// The `indirect_op` of an indirect request is neither read nor write.
    #[error("indirect_op {indirect_op} is neither BLKIF_OP_READ (0) nor BLKIF_OP_WRITE (1)")]
    InvalidIndirectOp {
        /// The `indirect_op`.
        indirect_op: u8,
    },
    /// A read or write (direct or indirect) has no segments.
    #[error("operation {operation} has nr_segments 0 (a read or write needs at least one segment)")]
    NoSegments {
        /// The operation code (for an indirect request, its `indirect_op`).
        operation: u8,
    },
    /// A direct request has more segments than fit in it.
    #[error("nr_segments {nr_segments} is above BLKIF_MAX_SEGMENTS_PER_REQUEST (11)")]
    TooManySegments {
        /// The `nr_segments`.
        nr_segments: u8,
    },
    /// An indirect request has so many segments that they need more than
    /// [`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`] indirect pages.
    #[error(
        "indirect nr_segments {nr_segments} needs {pages} indirect pages, above \
         BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST (8 pages of 512 segments)"
    )]
    TooManyIndirectPages {
        /// The `nr_segments`.
        nr_segments: u16,
        /// The number of indirect grant references they need.
        pages: u16,
    },
    /// An indirect request has more segments than the back end's `feature-max-indirect-segments`.
    #[error("indirect nr_segments {nr_segments} is above feature-max-indirect-segments ({max})")]
    IndirectSegmentsAboveMax {
        /// The `nr_segments`.
        nr_segments: u16,
        /// The advertised maximum.
        max: u16,
    },
    /// The segments copied from the indirect pages are not `nr_segments` long.
    #[error("indirect request has nr_segments {expected}, but {got} segments were given")]
    IndirectSegmentCount {
        /// The `nr_segments` of the request.
        expected: u16,
        /// The number of segments given.
        got: usize,
    },
    /// A segment's `last_sect` lies beyond its 4096-byte page.
    #[error(
        "segment {segment}: last_sect {last_sect} is past the end of the 4096-byte page (last_sect must be < 8)"
    )]
    LastSectPastPage {
        /// The index of the segment in the request.
        segment: u16,
        /// The `last_sect`.
        last_sect: u8,
    },
    /// A segment's `first_sect` comes after its `last_sect`.
    #[error("segment {segment}: first_sect {first_sect} is after last_sect {last_sect}")]
    FirstSectAfterLastSect {
        /// The index of the segment in the request.
        segment: u16,
        /// The `first_sect`.
        first_sect: u8,
        /// The `last_sect`.
        last_sect: u8,
    },
    /// The sectors of the request run past the end of the disk (or past 2^64).
    #[error(
        "sectors {sector_number} to {sector_number} + {nr_sectors} run past the end of the disk \
         ({disk_sectors} sectors of 512 bytes)"
    )]
    PastEndOfDisk {
        /// The first sector.
        sector_number: u64,
        /// The number of sectors.
        nr_sectors: u64,
        /// The size of the disk in 512-byte sectors.
        disk_sectors: u64,
    },
    /// The first sector is not a multiple of the disk's logical `sector-size`.
    #[error(
        "sector_number {sector_number} is not aligned to the disk's sector-size of {sector_size} bytes"
    )]
    MisalignedSector {
        /// The `sector_number`.
        sector_number: u64,
        /// The disk's logical sector size in bytes.
        sector_size: u32,
    },
    /// A segment's length is not a multiple of the disk's logical `sector-size`.
    #[error(
        "segment {segment}: {nr_sectors} sectors of 512 bytes are not a multiple of the disk's sector-size \
         of {sector_size} bytes"
    )]
    MisalignedSegment {
        /// The index of the segment in the request.
        segment: u16,
        /// The segment's length in 512-byte sectors.
        nr_sectors: u8,
        /// The disk's logical sector size in bytes.
        sector_size: u32,
    },
    /// A discard's length is not a multiple of the disk's logical `sector-size`.
    #[error(
        "discard of {nr_sectors} sectors of 512 bytes is not a multiple of the sector-size of {sector_size} bytes"
    )]
    MisalignedDiscard {
        /// The `nr_sectors`.
        nr_sectors: u64,
        /// The disk's logical sector size in bytes.
        sector_size: u32,
    },
    /// A status is not a `BLKIF_RSP_*` value.
    #[error("status {status} is not a BLKIF_RSP_* value (0, -1 or -2)")]
    UnknownStatus {
        /// The status.
        status: i16,
    },
    /// [`BlkifLimits::new`]: the `sector-size` is not a power of two from 512 to 4096.
    #[error("sector-size {sector_size} is not a power of two from 512 to 4096")]
    InvalidSectorSize {
        /// The rejected sector size.
        sector_size: u32,
    },
    /// [`BlkifLimits::with_max_indirect_segments`]: more than 8 pages of segments.
    #[error("feature-max-indirect-segments {max} is above 4096 (8 indirect pages of 512 segments)")]
    MaxIndirectSegmentsTooLarge {
        /// The rejected maximum.
        max: u32,
    },
}

impl BlkifError {
    /// The status of the response that rejects a request for this error, as Linux's blkback answers:
    /// [`BLKIF_RSP_EOPNOTSUPP`] for an unknown operation or one the back end does not offer,
    /// [`BLKIF_RSP_ERROR`] for everything else.
    pub const fn status(&self) -> i16 {
        match self {
            Self::UnsupportedOperation { .. } | Self::FeatureNotOffered { .. } => {
                BLKIF_RSP_EOPNOTSUPP
            }
            _ => BLKIF_RSP_ERROR,
        }
    }
}

/// A request operation code (`BLKIF_OP_*` in `io/blkif.h`), except [`super::BLKIF_OP_RESERVED_1`], which no back
/// end implements.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlkifOpCode {
    /// [`BLKIF_OP_READ`].
    Read = BLKIF_OP_READ,
    /// [`BLKIF_OP_WRITE`].
    Write = BLKIF_OP_WRITE,
    /// [`BLKIF_OP_WRITE_BARRIER`].
    WriteBarrier = BLKIF_OP_WRITE_BARRIER,
    /// [`BLKIF_OP_FLUSH_DISKCACHE`].
    FlushDiskcache = BLKIF_OP_FLUSH_DISKCACHE,
    /// [`BLKIF_OP_DISCARD`].
    Discard = BLKIF_OP_DISCARD,
    /// [`BLKIF_OP_INDIRECT`].
    Indirect = BLKIF_OP_INDIRECT,
}

impl TryFrom<u8> for BlkifOpCode {
    type Error = BlkifError;

    fn try_from(operation: u8) -> Result<Self, BlkifError> {
        Ok(match operation {
            BLKIF_OP_READ => Self::Read,
            BLKIF_OP_WRITE => Self::Write,
            BLKIF_OP_WRITE_BARRIER => Self::WriteBarrier,
            BLKIF_OP_FLUSH_DISKCACHE => Self::FlushDiskcache,
            BLKIF_OP_DISCARD => Self::Discard,
            BLKIF_OP_INDIRECT => Self::Indirect,
            _ => return Err(BlkifError::UnsupportedOperation { operation }),
        })
    }
}

impl From<BlkifOpCode> for u8 {
    fn from(op: BlkifOpCode) -> u8 {
        op as u8
    }
}

/// A response status (`BLKIF_RSP_*` in `io/blkif.h`).
#[repr(i16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlkifStatus {
    /// [`BLKIF_RSP_OKAY`].
    Okay = BLKIF_RSP_OKAY,
    /// [`BLKIF_RSP_ERROR`].
    Error = BLKIF_RSP_ERROR,
    /// [`BLKIF_RSP_EOPNOTSUPP`].
    EOpNotSupp = BLKIF_RSP_EOPNOTSUPP,
}

impl TryFrom<i16> for BlkifStatus {
    type Error = BlkifError;

    fn try_from(status: i16) -> Result<Self, BlkifError> {
        Ok(match status {
            BLKIF_RSP_OKAY => Self::Okay,
            BLKIF_RSP_ERROR => Self::Error,
            BLKIF_RSP_EOPNOTSUPP => Self::EOpNotSupp,
            _ => return Err(BlkifError::UnknownStatus { status }),
        })
    }
}

impl From<BlkifStatus> for i16 {
    fn from(status: BlkifStatus) -> i16 {
        status as i16
    }
}

/// The direction of a data transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlkifDirection {
    /// From the disk into the guest's pages ([`BLKIF_OP_READ`]).
    Read,
    /// From the guest's pages to the disk ([`BLKIF_OP_WRITE`]).
    Write,
}

impl BlkifDirection {
    /// The operation code of a plain request in this direction.
    pub const fn op(self) -> u8 {
        match self {
            Self::Read => BLKIF_OP_READ,
            Self::Write => BLKIF_OP_WRITE,
        }
    }
}

/// What the back end offers, against which requests are checked: the nodes it wrote in XenStore
/// (`sectors`, `sector-size`, `mode`/`info`, `feature-*`, `discard-secure`).
///
/// All sector counts are in 512-byte sectors (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkifLimits {
    disk_sectors: u64,
    sector_size: u32,
    read_only: bool,
    feature_barrier: bool,
    feature_flush_cache: bool,
    feature_discard: bool,
    discard_secure: bool,
    max_indirect_segments: u16,
}

impl BlkifLimits {
    /// A writable disk of `disk_sectors` 512-byte sectors with logical sector size `sector_size` bytes (a
    /// power of two from 512 to 4096), offering no optional operation.
    pub const fn new(disk_sectors: u64, sector_size: u32) -> Result<Self, BlkifError> {
        if !sector_size.is_power_of_two()
            || sector_size < BLKIF_SECTOR_SIZE
            || sector_size > MAX_SECTOR_SIZE
        {
            return Err(BlkifError::InvalidSectorSize { sector_size });
        }
        Ok(Self {
            disk_sectors,
            sector_size,
            read_only: false,
            feature_barrier: false,
            feature_flush_cache: false,
            feature_discard: false,
            discard_secure: false,
            max_indirect_segments: 0,
        })
    }

    /// Makes the disk read-only (`mode` `"r"`, [`super::VDISK_READONLY`]) or writable.
    pub const fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Offers [`BLKIF_OP_WRITE_BARRIER`] (`feature-barrier`) or not.
    pub const fn with_barrier(mut self, offered: bool) -> Self {
        self.feature_barrier = offered;
        self
    }

    /// Offers [`BLKIF_OP_FLUSH_DISKCACHE`] (`feature-flush-cache`) or not.
    pub const fn with_flush_cache(mut self, offered: bool) -> Self {
        self.feature_flush_cache = offered;
        self
    }

    /// Offers [`BLKIF_OP_DISCARD`] (`feature-discard`) or not, and secure discard (`discard-secure`).
    pub const fn with_discard(mut self, offered: bool, secure: bool) -> Self {
        self.feature_discard = offered;
        self.discard_secure = offered && secure;
        self
    }

    /// Offers [`BLKIF_OP_INDIRECT`] with up to `max` segments (`feature-max-indirect-segments`; 0 means
    /// not offered). At most [`INDIRECT_SEGMENTS_LIMIT`] (4096).
    pub const fn with_max_indirect_segments(mut self, max: u32) -> Result<Self, BlkifError> {
        if max > INDIRECT_SEGMENTS_LIMIT as u32 {
            return Err(BlkifError::MaxIndirectSegmentsTooLarge { max });
        }
        self.max_indirect_segments = max as u16;
        Ok(self)
    }

    /// The size of the disk in 512-byte sectors.
    pub const fn disk_sectors(&self) -> u64 {
        self.disk_sectors
    }

    /// The logical sector size in bytes (`sector-size`).
    pub const fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Whether the disk is read-only.
    pub const fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `feature-barrier` is offered.
    pub const fn feature_barrier(&self) -> bool {
        self.feature_barrier
    }

    /// Whether `feature-flush-cache` is offered.
    pub const fn feature_flush_cache(&self) -> bool {
        self.feature_flush_cache
    }

    /// Whether `feature-discard` is offered.
    pub const fn feature_discard(&self) -> bool {
        self.feature_discard
    }

    /// Whether `discard-secure` is offered.
    pub const fn discard_secure(&self) -> bool {
        self.discard_secure
    }

    /// `feature-max-indirect-segments` (0: indirect requests are not offered).
    pub const fn max_indirect_segments(&self) -> u16 {
        self.max_indirect_segments
    }

    /// The logical sector size in 512-byte sectors, minus one: a mask of the bits that an aligned
    /// quantity leaves clear.
    const fn align_mask(&self) -> u64 {
        (self.sector_size / BLKIF_SECTOR_SIZE) as u64 - 1
    }

    /// Checks that `[sector_number, sector_number + nr_sectors)` lies within the disk, without overflow
    /// (`xen_vbd_translate`; stricter than blkback in that an empty range must also start within the disk).
    const fn check_range(&self, sector_number: u64, nr_sectors: u64) -> Result<(), BlkifError> {
        match sector_number.checked_add(nr_sectors) {
            Some(end) if end <= self.disk_sectors => Ok(()),
            _ => Err(BlkifError::PastEndOfDisk {
                sector_number,
                nr_sectors,
                disk_sectors: self.disk_sectors,
            }),
        }
    }

    const fn check_start_aligned(&self, sector_number: u64) -> Result<(), BlkifError> {
        if sector_number & self.align_mask() != 0 {
            return Err(BlkifError::MisalignedSector {
                sector_number,
                sector_size: self.sector_size,
            });
        }
        Ok(())
    }

    const fn check_segment_aligned(&self, segment: u16, nr_sectors: u8) -> Result<(), BlkifError> {
        if nr_sectors as u64 & self.align_mask() != 0 {
            return Err(BlkifError::MisalignedSegment {
                segment,
                nr_sectors,
                sector_size: self.sector_size,
            });
        }
        Ok(())
    }
}

/// A segment whose sectors lie within its 4096-byte page: `first_sect <= last_sect < 8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CheckedSegment {
    /// The grant reference of the page (not checked here: the grant table does that when it maps it).
    pub gref: GrantRef,
    /// The first sector in the page (inclusive).
    pub first_sect: u8,
    /// The last sector in the page (inclusive).
    pub last_sect: u8,
}

impl CheckedSegment {
    /// Checks one segment; `index` is its position in the request, for the error.
    pub const fn check(index: u16, seg: &BlkifRequestSegment) -> Result<Self, BlkifError> {
        let (first_sect, last_sect) = (seg.first_sect, seg.last_sect);
        if last_sect >= BLKIF_SECTORS_PER_PAGE {
            return Err(BlkifError::LastSectPastPage {
                segment: index,
                last_sect,
            });
        }
        if first_sect > last_sect {
            return Err(BlkifError::FirstSectAfterLastSect {
                segment: index,
                first_sect,
                last_sect,
            });
        }
        Ok(Self {
            gref: seg.gref,
            first_sect,
            last_sect,
        })
    }

    /// The number of 512-byte sectors transferred: 1 to 8.
    pub const fn nr_sectors(&self) -> u8 {
        self.last_sect - self.first_sect + 1
    }

    /// The offset of the data in the page, in bytes: below 4096.
    pub const fn offset(&self) -> usize {
        self.first_sect as usize * BLKIF_SECTOR_SIZE as usize
    }

    /// The length of the data in bytes: `offset() + len() <= 4096`.
    pub const fn len(&self) -> usize {
        self.nr_sectors() as usize * BLKIF_SECTOR_SIZE as usize
    }

    /// Always false: a segment holds at least one sector.
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// The checked segments of a direct request: at most [`BLKIF_MAX_SEGMENTS_PER_REQUEST`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentList {
    segs: [CheckedSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST as usize],
    len: u8,
}

impl SegmentList {
    const EMPTY: CheckedSegment = CheckedSegment {
        gref: 0,
        first_sect: 0,
        last_sect: 0,
    };

    /// The segments, in request order.
    pub fn as_slice(&self) -> &[CheckedSegment] {
        self.segs.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The number of segments.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are no segments (a flush or barrier without data).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An iterator over the segments.
    pub fn iter(&self) -> core::slice::Iter<'_, CheckedSegment> {
        self.as_slice().iter()
    }
}

impl<'a> IntoIterator for &'a SegmentList {
    type Item = &'a CheckedSegment;
    type IntoIter = core::slice::Iter<'a, CheckedSegment>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A checked read, write, barrier or flush request with inline segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedRw {
    /// The virtual device.
    pub handle: BlkifVdev,
    /// The first sector (meaningless when there are no segments).
    pub sector_number: BlkifSector,
    /// The total length in 512-byte sectors: `sector_number + nr_sectors` is within the disk.
    pub nr_sectors: u64,
    /// The segments (none only for a barrier or flush without data).
    pub segments: SegmentList,
}

/// A checked discard request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedDiscard {
    /// The virtual device.
    pub handle: BlkifVdev,
    /// The first sector to discard.
    pub sector_number: BlkifSector,
    /// The number of sectors to discard: `sector_number + nr_sectors` is within the disk.
    pub nr_sectors: u64,
    /// Whether the discard must be secure: the request's [`BLKIF_DISCARD_SECURE`] flag, if the back end
    /// offers `discard-secure` (otherwise the flag is ignored, as `io/blkif.h` says).
    pub secure: bool,
}

/// A checked indirect request, before its segments are read: the direction, segment count and indirect
/// pages are valid. Map [`CheckedIndirect::indirect_pages`], copy [`CheckedIndirect::segments_in_page`]
/// segments out of each, and check them with [`CheckedIndirect::check_segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedIndirect {
    /// Read or write.
    pub direction: BlkifDirection,
    /// The number of segments: 1 to `feature-max-indirect-segments`.
    pub nr_segments: u16,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// The first sector.
    pub sector_number: BlkifSector,
    /// `indirect_grefs` as sent, all 8; only the first [`CheckedIndirect::nr_pages`] are used.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

impl CheckedIndirect {
    /// The number of indirect pages: `ceil(nr_segments / 512)`, 1 to 8.
    pub const fn nr_pages(&self) -> usize {
        (self.nr_segments as usize).div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME)
    }

    /// The grant references of the indirect pages that hold the segments.
    pub fn indirect_pages(&self) -> &[GrantRef] {
        self.indirect_grefs.get(..self.nr_pages()).unwrap_or(&[])
    }

    /// How many segments to read from indirect page `page` (0 past the last page): 512 from every page
    /// but the last.
    pub const fn segments_in_page(&self, page: usize) -> usize {
        let before = page.saturating_mul(BLKIF_SEGS_PER_INDIRECT_FRAME);
        let left = (self.nr_segments as usize).saturating_sub(before);
        if left < BLKIF_SEGS_PER_INDIRECT_FRAME {
            left
        } else {
            BLKIF_SEGS_PER_INDIRECT_FRAME
        }
    }

    /// Checks the segments copied out of the indirect pages (exactly `nr_segments` of them, in order):
    /// each within its page, their total within the disk, start and lengths aligned to `sector-size`
    /// (`xen_blkbk_parse_indirect`, then `xen_vbd_translate`).
    pub fn check_segments<'a>(
        &self,
        segments: &'a [BlkifRequestSegment],
        limits: &BlkifLimits,
    ) -> Result<CheckedIndirectIo<'a>, BlkifError> {
        if segments.len() != usize::from(self.nr_segments) {
            return Err(BlkifError::IndirectSegmentCount {
                expected: self.nr_segments,
                got: segments.len(),
            });
        }
        // Bounded: nr_segments <= INDIRECT_SEGMENTS_LIMIT (4096), so at most 4096 steps and 32768 sectors.
        let nr_sectors = check_segment_slice(segments, limits)?;
        limits.check_range(self.sector_number, nr_sectors)?;
        limits.check_start_aligned(self.sector_number)?;
        Ok(CheckedIndirectIo {
            direction: self.direction,
            handle: self.handle,
            sector_number: self.sector_number,
            nr_sectors,
            segments,
        })
    }
}

/// An indirect request whose segments have been checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedIndirectIo<'a> {
    /// Read or write.
    pub direction: BlkifDirection,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// The first sector.
    pub sector_number: BlkifSector,
    /// The total length in 512-byte sectors: `sector_number + nr_sectors` is within the disk.
    pub nr_sectors: u64,
    segments: &'a [BlkifRequestSegment],
}

impl<'a> CheckedIndirectIo<'a> {
    /// The number of segments.
    pub const fn nr_segments(&self) -> usize {
        self.segments.len()
    }

    /// The checked segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = CheckedSegment> + 'a {
        // Every segment was checked when this value was made, so none is dropped here.
        self.segments
            .iter()
            .filter_map(|s| CheckedSegment::check(0, s).ok())
    }
}

/// A checked request: what the back end is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkifOperation {
    /// [`BLKIF_OP_READ`], with 1 to 11 segments.
    Read(CheckedRw),
    /// [`BLKIF_OP_WRITE`], with 1 to 11 segments; the disk is writable.
    Write(CheckedRw),
    /// [`BLKIF_OP_WRITE_BARRIER`], with 0 to 11 segments of data to write; offered and writable.
    WriteBarrier(CheckedRw),
    /// [`BLKIF_OP_FLUSH_DISKCACHE`], with 0 to 11 segments of data to write; offered and writable.
    FlushDiskcache(CheckedRw),
    /// [`BLKIF_OP_DISCARD`]; offered and writable.
    Discard(CheckedDiscard),
    /// [`BLKIF_OP_INDIRECT`]; its segments are checked later with [`CheckedIndirect::check_segments`].
    Indirect(CheckedIndirect),
}

impl BlkifRequest {
    /// Checks a request copied out of the ring against what the back end offers, and describes it.
    ///
    /// The checks, in order: the operation is known ([`BlkifError::UnsupportedOperation`] for 4 and 7 to
    /// 255, as blkback answers with `BLKIF_RSP_EOPNOTSUPP`); an optional operation is offered; nothing
    /// modifies a read-only disk (writes, barriers, flushes, discards: blkback's `xen_vbd_translate`
    /// refuses every operation but read); segment counts (1 to 11 for read and write, 0 to 11 for barrier
    /// and flush, 1 to `feature-max-indirect-segments` and at most 8 pages for indirect); every segment
    /// within its page; the sectors within the disk, without overflow; the start and every segment's
    /// length aligned to the logical `sector-size`.
    ///
    /// Bounded: at most 11 segments are looked at.
    pub fn validate(&self, limits: &BlkifLimits) -> Result<BlkifOperation, BlkifError> {
        let operation = self.operation;
        match BlkifOpCode::try_from(operation)? {
            BlkifOpCode::Read => self.check_rw(limits, false).map(BlkifOperation::Read),
            BlkifOpCode::Write => {
                check_writable(limits, operation)?;
                self.check_rw(limits, false).map(BlkifOperation::Write)
            }
            BlkifOpCode::WriteBarrier => {
                check_offered(limits.feature_barrier, operation, "feature-barrier")?;
                check_writable(limits, operation)?;
                self.check_rw(limits, true)
                    .map(BlkifOperation::WriteBarrier)
            }
            BlkifOpCode::FlushDiskcache => {
                check_offered(limits.feature_flush_cache, operation, "feature-flush-cache")?;
                check_writable(limits, operation)?;
                self.check_rw(limits, true)
                    .map(BlkifOperation::FlushDiskcache)
            }
            BlkifOpCode::Discard => {
                check_offered(limits.feature_discard, operation, "feature-discard")?;
                check_writable(limits, operation)?;
                self.check_discard(limits).map(BlkifOperation::Discard)
            }
            BlkifOpCode::Indirect => {
                check_offered(
                    limits.max_indirect_segments > 0,
                    operation,
                    "feature-max-indirect-segments",
                )?;
                self.check_indirect(limits).map(BlkifOperation::Indirect)
            }
        }
    }

    fn check_rw(&self, limits: &BlkifLimits, may_be_empty: bool) -> Result<CheckedRw, BlkifError> {
        let nr_segments = self.nr_segments;
        if nr_segments == 0 && !may_be_empty {
            return Err(BlkifError::NoSegments {
                operation: self.operation,
            });
        }
        if nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            return Err(BlkifError::TooManySegments { nr_segments });
        }
        let mut segments = SegmentList {
            segs: [SegmentList::EMPTY; BLKIF_MAX_SEGMENTS_PER_REQUEST as usize],
            len: 0,
        };
        let mut nr_sectors: u64 = 0;
        let raw = self.seg.get(..usize::from(nr_segments)).unwrap_or(&[]);
        for (i, (seg, out)) in raw.iter().zip(segments.segs.iter_mut()).enumerate() {
            let checked = CheckedSegment::check(segment_index(i), seg)?;
            nr_sectors = nr_sectors.saturating_add(u64::from(checked.nr_sectors())); // at most 11 * 8
            *out = checked;
        }
        segments.len = nr_segments;
        if nr_segments > 0 {
            limits.check_range(self.sector_number, nr_sectors)?;
            limits.check_start_aligned(self.sector_number)?;
            for (i, seg) in segments.iter().enumerate() {
                limits.check_segment_aligned(segment_index(i), seg.nr_sectors())?;
            }
        }
        Ok(CheckedRw {
            handle: self.handle,
            sector_number: self.sector_number,
            nr_sectors,
            segments,
        })
    }

    fn check_discard(&self, limits: &BlkifLimits) -> Result<CheckedDiscard, BlkifError> {
        let d = self.discard();
        limits.check_range(d.sector_number, d.nr_sectors)?;
        limits.check_start_aligned(d.sector_number)?;
        if d.nr_sectors & limits.align_mask() != 0 {
            return Err(BlkifError::MisalignedDiscard {
                nr_sectors: d.nr_sectors,
                sector_size: limits.sector_size,
            });
        }
        Ok(CheckedDiscard {
            handle: d.handle,
            sector_number: d.sector_number,
            nr_sectors: d.nr_sectors,
            secure: limits.discard_secure && d.flag & BLKIF_DISCARD_SECURE != 0,
        })
    }

    fn check_indirect(&self, limits: &BlkifLimits) -> Result<CheckedIndirect, BlkifError> {
        let i = self.indirect();
        let direction = match i.indirect_op {
            BLKIF_OP_READ => BlkifDirection::Read,
            BLKIF_OP_WRITE => BlkifDirection::Write,
            indirect_op => return Err(BlkifError::InvalidIndirectOp { indirect_op }),
        };
        if direction == BlkifDirection::Write {
            check_writable(limits, i.indirect_op)?;
        }
        let nr_segments = i.nr_segments;
        if nr_segments == 0 {
            return Err(BlkifError::NoSegments {
                operation: i.indirect_op,
            });
        }
        let pages = usize::from(nr_segments).div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME);
        if pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
            // pages <= 65535 / 512 + 1 = 128, so the conversion is exact.
            let pages = u16::try_from(pages).unwrap_or(u16::MAX);
            return Err(BlkifError::TooManyIndirectPages { nr_segments, pages });
        }
        if nr_segments > limits.max_indirect_segments {
            return Err(BlkifError::IndirectSegmentsAboveMax {
                nr_segments,
                max: limits.max_indirect_segments,
            });
        }
        Ok(CheckedIndirect {
            direction,
            nr_segments,
            handle: i.handle,
            sector_number: i.sector_number,
            indirect_grefs: i.indirect_grefs,
        })
    }
}

const fn check_offered(
    offered: bool,
    operation: u8,
    feature: &'static str,
) -> Result<(), BlkifError> {
    if offered {
        Ok(())
    } else {
        Err(BlkifError::FeatureNotOffered { operation, feature })
    }
}

const fn check_writable(limits: &BlkifLimits, operation: u8) -> Result<(), BlkifError> {
    if limits.read_only {
        Err(BlkifError::ReadOnly { operation })
    } else {
        Ok(())
    }
}

/// Checks each segment of an indirect request and returns their total in 512-byte sectors.
fn check_segment_slice(
    segments: &[BlkifRequestSegment],
    limits: &BlkifLimits,
) -> Result<u64, BlkifError> {
    let mut nr_sectors: u64 = 0;
    for (i, seg) in segments.iter().enumerate() {
        let index = segment_index(i);
        let checked = CheckedSegment::check(index, seg)?;
        limits.check_segment_aligned(index, checked.nr_sectors())?;
        nr_sectors = nr_sectors.saturating_add(u64::from(checked.nr_sectors()));
    }
    Ok(nr_sectors)
}

/// A segment's position as reported in errors; positions are below 4096 wherever they are computed.
fn segment_index(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}
