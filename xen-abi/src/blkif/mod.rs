//! The block device protocol of Xen's `io/blkif.h` (with the protocol names of `io/protocols.h`).
//!
//! A block front end sends requests on a shared ring ([`crate::ring`]) whose slots hold one
//! [`BlkifRequest`] (`blkif_request_t`, 112 bytes) or one [`BlkifResponse`] (`blkif_response_t`). The
//! first byte of every request is its operation; requests other than read, write, barrier and flush are
//! the *same bytes* seen through another C struct: [`BlkifRequestDiscard`] for [`BLKIF_OP_DISCARD`] and
//! [`BlkifRequestIndirect`] for [`BLKIF_OP_INDIRECT`]. Here the ring request is always the raw
//! [`BlkifRequest`], and [`BlkifRequest::discard`] / [`BlkifRequest::indirect`] reinterpret a copy of it,
//! with exactly the C layout.
//!
//! A back end copies each request out of the ring once and calls [`BlkifRequest::validate`] on the copy
//! with the [`BlkifLimits`] it advertised. The answer is either a typed [`BlkifOperation`] whose every
//! segment lies within its page and whose sectors lie within the disk, or a [`BlkifError`] that says what
//! was wrong (and [`BlkifRequest::error_response`] turns it into the response Linux's blkback would send).
//! Segments of an indirect request live in separate pages: copy them out, then check them with
//! [`CheckedIndirect::check_segments`].
//!
//! A front end that runs 32-bit x86 code lays the ring out as an i386 compiler does (`protocol` node
//! `"x86_32-abi"`): `uint64_t` is 4-byte aligned, so `id` sits at offset 4 and a request is 108 bytes. The
//! [`x86_32`] module has those types and converts them into the native ones, as Linux's blkback does in
//! `blkif_get_x86_32_req`.
//!
//! # Units
//!
//! `first_sect`, `last_sect`, `sector_number` and `nr_sectors` count 512-byte sectors, whatever the
//! `sector-size` of the disk: that is what every deployed front end and Linux's blkback do (a 4096-byte
//! page holds sectors 0 to 7), and what `feature-large-sector-size` left unresolved. A disk with a larger
//! logical `sector-size` only accepts requests whose start and length are multiples of it (as blkback
//! checks against `bdev_logical_block_size`).
#![forbid(unsafe_code)]

/// The methods of `BlkifSringEntry`, the same for the native and the x86_32 layout: expanded in each module,
/// over that module's `BlkifSringEntry`, `BlkifRequest`, `BlkifResponse`, `ResponseInSlot` and `RESPONSE_REST`.
macro_rules! sring_entry_methods {
    ($slot_bytes:literal) => {
        impl BlkifSringEntry {
            /// A slot holding `req`.
            pub fn from_request(req: &BlkifRequest) -> Self {
                zerocopy::transmute!(*req)
            }

            /// A slot holding `rsp`, the bytes after the response zeroed.
            pub fn from_response(rsp: &BlkifResponse) -> Self {
                zerocopy::transmute!(ResponseInSlot {
                    rsp: *rsp,
                    rest: [0; RESPONSE_REST]
                })
            }

            /// The slot read as a request (`req`).
            pub fn request(&self) -> BlkifRequest {
                zerocopy::transmute!(*self)
            }

            /// The slot read as a response (`rsp`).
            pub fn response(&self) -> BlkifResponse {
                let view: ResponseInSlot = zerocopy::transmute!(*self);
                view.rsp
            }

            /// The raw bytes of the slot.
            pub fn as_bytes_array(&self) -> &[u8; size_of::<BlkifRequest>()] {
                &self.bytes
            }

            #[doc = concat!("A slot holding these ", $slot_bytes, " bytes (copied, for instance, out of shared memory).")]
            pub const fn from_bytes_array(bytes: [u8; size_of::<BlkifRequest>()]) -> Self {
                Self { bytes }
            }
        }
    };
}

mod validate;
pub mod x86_32;

pub use validate::{
    BlkifDirection, BlkifError, BlkifLimits, BlkifOpCode, BlkifOperation, BlkifStatus,
    CheckedDiscard, CheckedIndirect, CheckedIndirectIo, CheckedRw, CheckedSegment,
    INDIRECT_SEGMENTS_LIMIT, SegmentList,
};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::RingProtocol;

/// A grant reference (`grant_ref_t` in `grant_table.h`, a `uint32_t`).
pub type GrantRef = u32;
/// A virtual device handle (`blkif_vdev_t` in `io/blkif.h`, a `uint16_t`).
pub type BlkifVdev = u16;
/// A sector number (`blkif_sector_t` in `io/blkif.h`, a `uint64_t`), counted in 512-byte sectors.
pub type BlkifSector = u64;

// ---------------------------------------------------------------------------------------------------------
// Constants of io/blkif.h
// ---------------------------------------------------------------------------------------------------------

/// Read from the disk into the segments (`BLKIF_OP_READ` in `io/blkif.h`).
pub const BLKIF_OP_READ: u8 = 0;
/// Write the segments to the disk (`BLKIF_OP_WRITE` in `io/blkif.h`).
pub const BLKIF_OP_WRITE: u8 = 1;
/// A write that is ordered after every earlier write and before every later one (`BLKIF_OP_WRITE_BARRIER`
/// in `io/blkif.h`); optional, offered by `feature-barrier`.
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Commit the disk's volatile cache to stable storage, with an optional write (`BLKIF_OP_FLUSH_DISKCACHE`
/// in `io/blkif.h`); optional, offered by `feature-flush-cache`.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved for a SLES device-specific command packet (`BLKIF_OP_RESERVED_1` in `io/blkif.h`); never
/// accepted here.
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard (trim, unmap) a range of sectors (`BLKIF_OP_DISCARD` in `io/blkif.h`), a
/// [`BlkifRequestDiscard`]; optional, offered by `feature-discard`.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// A read or write whose segments sit in separate granted pages (`BLKIF_OP_INDIRECT` in `io/blkif.h`), a
/// [`BlkifRequestIndirect`]; optional, offered by `feature-max-indirect-segments`.
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// The most segments a request carries inline (`BLKIF_MAX_SEGMENTS_PER_REQUEST` in `io/blkif.h`).
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: u8 = 11;
/// The most indirect pages one indirect request may use (`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` in
/// `io/blkif.h`), the length of `indirect_grefs`.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// How many [`BlkifRequestSegment`]s one indirect page holds: `PAGE_SIZE / sizeof(struct
/// blkif_request_segment)`, as the comment on `BLKIF_OP_INDIRECT` in `io/blkif.h` computes it (the name is
/// Linux's; the header has only the formula).
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize =
    crate::XEN_PAGE_SIZE / size_of::<BlkifRequestSegment>();

/// Ask for a secure discard in [`BlkifRequestDiscard::flag`] (`BLKIF_DISCARD_SECURE` in `io/blkif.h`);
/// ignored unless the back end offers `discard-secure`.
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// The operation is not supported (`BLKIF_RSP_EOPNOTSUPP` in `io/blkif.h`).
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// The operation failed (`BLKIF_RSP_ERROR` in `io/blkif.h`, `-EIO`).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// The operation succeeded (`BLKIF_RSP_OKAY` in `io/blkif.h`).
pub const BLKIF_RSP_OKAY: i16 = 0;

/// The disk is a CD-ROM (`VDISK_CDROM` in `io/blkif.h`, a bit of the back end's `info` node).
pub const VDISK_CDROM: u32 = 0x1;
/// The medium is removable (`VDISK_REMOVABLE` in `io/blkif.h`).
pub const VDISK_REMOVABLE: u32 = 0x2;
/// The disk is read-only (`VDISK_READONLY` in `io/blkif.h`).
pub const VDISK_READONLY: u32 = 0x4;

/// The size of the sectors that `first_sect`, `last_sect`, `sector_number` and `nr_sectors` count: 512
/// bytes. No C counterpart (blkif.h and blkback write it as `<< 9`).
pub const BLKIF_SECTOR_SIZE: u32 = 512;
/// The number of 512-byte sectors in a 4096-byte page: a segment's `last_sect` must be below this. No C
/// counterpart (blkback writes `XEN_PAGE_SIZE >> 9`).
pub const BLKIF_SECTORS_PER_PAGE: u8 = (crate::XEN_PAGE_SIZE / BLKIF_SECTOR_SIZE as usize) as u8;

// ---------------------------------------------------------------------------------------------------------
// Constants of io/protocols.h
// ---------------------------------------------------------------------------------------------------------

/// The ring layout of a 32-bit x86 front end (`XEN_IO_PROTO_ABI_X86_32` in `io/protocols.h`): see
/// [`x86_32`].
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// The ring layout of a 64-bit x86 front end (`XEN_IO_PROTO_ABI_X86_64` in `io/protocols.h`): the native
/// types of this module.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// The ring layout of an Arm front end (`XEN_IO_PROTO_ABI_ARM` in `io/protocols.h`): the same layout as
/// x86_64 (64-bit integers are 8-byte aligned on both Arm ABIs).
pub const XEN_IO_PROTO_ABI_ARM: &str = "arm-abi";
/// The protocol of the architecture this crate is built for (`XEN_IO_PROTO_ABI_NATIVE` in
/// `io/protocols.h`), and the default of the front end's `protocol` node.
#[cfg(target_arch = "x86")]
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_X86_32;
/// The protocol of the architecture this crate is built for (`XEN_IO_PROTO_ABI_NATIVE` in
/// `io/protocols.h`), and the default of the front end's `protocol` node.
#[cfg(target_arch = "x86_64")]
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_X86_64;
/// The protocol of the architecture this crate is built for (`XEN_IO_PROTO_ABI_NATIVE` in
/// `io/protocols.h`), and the default of the front end's `protocol` node.
#[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_ARM;

/// The ring ABI a front end names in its `protocol` node (`XEN_IO_PROTO_ABI_*` in `io/protocols.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlkifProtocol {
    /// `"x86_32-abi"`: the [`x86_32`] types ([`BlkifX86_32`]).
    X86_32,
    /// `"x86_64-abi"`: the native types of this module ([`Blkif`]).
    X86_64,
    /// `"arm-abi"`: laid out as x86_64, the native types of this module ([`Blkif`]).
    Arm,
}

impl BlkifProtocol {
    /// The protocol named by the value of a `protocol` node, or `None` for a name `io/protocols.h` does
    /// not define. A missing node means [`XEN_IO_PROTO_ABI_NATIVE`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            XEN_IO_PROTO_ABI_X86_32 => Some(Self::X86_32),
            XEN_IO_PROTO_ABI_X86_64 => Some(Self::X86_64),
            XEN_IO_PROTO_ABI_ARM => Some(Self::Arm),
            _ => None,
        }
    }

    /// The name of the protocol, as written in a `protocol` node.
    pub const fn name(self) -> &'static str {
        match self {
            Self::X86_32 => XEN_IO_PROTO_ABI_X86_32,
            Self::X86_64 => XEN_IO_PROTO_ABI_X86_64,
            Self::Arm => XEN_IO_PROTO_ABI_ARM,
        }
    }

    /// Whether requests in this protocol use the [`x86_32`] layout rather than the native (x86_64) one.
    pub const fn is_x86_32(self) -> bool {
        matches!(self, Self::X86_32)
    }
}

bitflags::bitflags! {
    /// The back end's `info` node: attributes of the disk (`VDISK_*` in `io/blkif.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VdiskInfo: u32 {
        /// [`VDISK_CDROM`].
        const CDROM = VDISK_CDROM;
        /// [`VDISK_REMOVABLE`].
        const REMOVABLE = VDISK_REMOVABLE;
        /// [`VDISK_READONLY`].
        const READONLY = VDISK_READONLY;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Structures
// ---------------------------------------------------------------------------------------------------------

/// One segment of a request: a granted 4096-byte page and the inclusive range of 512-byte sectors in it
/// to transfer (`struct blkif_request_segment` in `io/blkif.h`). The layout is the same on x86_32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestSegment {
    /// The grant reference of the I/O page.
    pub gref: GrantRef,
    /// The first sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// The last sector of the page to transfer (inclusive).
    pub last_sect: u8,
    _pad0: [u8; 2],
}

impl BlkifRequestSegment {
    /// A segment with zeroed padding.
    pub const fn new(gref: GrantRef, first_sect: u8, last_sect: u8) -> Self {
        Self {
            gref,
            first_sect,
            last_sect,
            _pad0: [0; 2],
        }
    }
}

/// A request as it sits in a ring slot (`struct blkif_request`, `blkif_request_t` in `io/blkif.h`): the
/// layout of read, write, barrier and flush requests, with up to 11 inline segments. Discard and indirect
/// requests are other views of the same bytes: [`BlkifRequest::discard`], [`BlkifRequest::indirect`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequest {
    /// The operation, `BLKIF_OP_*`.
    pub operation: u8,
    /// The number of segments in `seg` that the request uses.
    pub nr_segments: u8,
    /// The virtual device (only for read/write requests).
    pub handle: BlkifVdev,
    _pad0: [u8; 4],
    /// A private value of the front end, echoed in the response. It sits at the same offset in every
    /// request type.
    pub id: u64,
    /// The first sector on the disk (read/write only), in 512-byte sectors.
    pub sector_number: BlkifSector,
    /// The segments; the first `nr_segments` are used.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST as usize],
}

impl BlkifRequest {
    /// A request with no segments and zeroed padding: a flush, a barrier without data, or the start of a
    /// read or write built with [`BlkifRequest::push_segment`].
    pub const fn new(
        operation: u8,
        handle: BlkifVdev,
        id: u64,
        sector_number: BlkifSector,
    ) -> Self {
        Self {
            operation,
            nr_segments: 0,
            handle,
            _pad0: [0; 4],
            id,
            sector_number,
            seg: [BlkifRequestSegment::new(0, 0, 0); BLKIF_MAX_SEGMENTS_PER_REQUEST as usize],
        }
    }

    /// A read, write, barrier or flush request with the given segments; fails with
    /// [`BlkifError::TooManySegments`] for more than [`BLKIF_MAX_SEGMENTS_PER_REQUEST`]. The segments
    /// themselves are not checked (that is [`BlkifRequest::validate`]'s job).
    pub fn with_segments(
        operation: u8,
        handle: BlkifVdev,
        id: u64,
        sector_number: BlkifSector,
        segments: &[BlkifRequestSegment],
    ) -> Result<Self, BlkifError> {
        let mut req = Self::new(operation, handle, id, sector_number);
        for s in segments {
            req.push_segment(*s)?;
        }
        Ok(req)
    }

    /// Appends a segment and counts it in `nr_segments`; fails with [`BlkifError::TooManySegments`] when
    /// the request already has [`BLKIF_MAX_SEGMENTS_PER_REQUEST`] (or, after a hostile `nr_segments`, more).
    pub fn push_segment(&mut self, segment: BlkifRequestSegment) -> Result<(), BlkifError> {
        let n = self.nr_segments;
        match self.seg.get_mut(usize::from(n)) {
            Some(slot) => {
                *slot = segment;
                self.nr_segments = n + 1;
                Ok(())
            }
            None => Err(BlkifError::TooManySegments {
                nr_segments: n.saturating_add(1),
            }),
        }
    }

    /// The first `nr_segments` segments, or all 11 when `nr_segments` is larger (unchecked: for building
    /// and printing requests; a back end uses [`BlkifRequest::validate`]).
    pub fn segments(&self) -> &[BlkifRequestSegment] {
        let n = usize::from(self.nr_segments).min(self.seg.len());
        self.seg.get(..n).unwrap_or(&[])
    }

    /// These bytes seen as a discard request (`blkif_request_discard_t`), as C does with a cast.
    pub fn discard(&self) -> BlkifRequestDiscard {
        let view: DiscardInRequest = zerocopy::transmute!(*self);
        view.discard
    }

    /// These bytes seen as an indirect request (`blkif_request_indirect_t`), as C does with a cast.
    pub fn indirect(&self) -> BlkifRequestIndirect {
        let view: IndirectInRequest = zerocopy::transmute!(*self);
        view.indirect
    }

    /// The operation that the response to this request carries: `operation`, except for an indirect
    /// request, whose response carries its `indirect_op` (as Linux's blkback and blkfront do).
    pub fn response_operation(&self) -> u8 {
        if self.operation == BLKIF_OP_INDIRECT {
            self.indirect().indirect_op
        } else {
            self.operation
        }
    }

    /// The response to this request with the given status (`BLKIF_RSP_*`), with zeroed padding.
    pub fn response(&self, status: i16) -> BlkifResponse {
        BlkifResponse::new(self.id, self.response_operation(), status)
    }

    /// The response that rejects this request for `error`: status [`BlkifError::status`]
    /// ([`BLKIF_RSP_EOPNOTSUPP`] or [`BLKIF_RSP_ERROR`]).
    pub fn error_response(&self, error: &BlkifError) -> BlkifResponse {
        self.response(error.status())
    }
}

/// A discard request (`struct blkif_request_discard`, `blkif_request_discard_t` in `io/blkif.h`): the
/// bytes of a [`BlkifRequest`] whose operation is [`BLKIF_OP_DISCARD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// The virtual device.
    pub handle: BlkifVdev,
    _pad0: [u8; 4],
    /// A private value of the front end, echoed in the response.
    pub id: u64,
    /// The first sector to discard, in 512-byte sectors.
    pub sector_number: BlkifSector,
    /// The number of contiguous sectors to discard.
    pub nr_sectors: u64,
}

impl BlkifRequestDiscard {
    /// A discard request with zeroed padding.
    pub const fn new(
        handle: BlkifVdev,
        id: u64,
        sector_number: BlkifSector,
        nr_sectors: u64,
        flag: u8,
    ) -> Self {
        Self {
            operation: BLKIF_OP_DISCARD,
            flag,
            handle,
            _pad0: [0; 4],
            id,
            sector_number,
            nr_sectors,
        }
    }

    /// The ring request holding this discard, the rest of the slot zeroed.
    pub fn to_request(&self) -> BlkifRequest {
        zerocopy::transmute!(DiscardInRequest {
            discard: *self,
            rest: [0; DISCARD_REST]
        })
    }
}

/// An indirect request (`struct blkif_request_indirect`, `blkif_request_indirect_t` in `io/blkif.h`): the
/// bytes of a [`BlkifRequest`] whose operation is [`BLKIF_OP_INDIRECT`]. Its segments sit in the pages
/// granted by the first `ceil(nr_segments / 512)` entries of `indirect_grefs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// The real operation: [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// The number of segments, spread over the indirect pages.
    pub nr_segments: u16,
    _pad0: [u8; 4],
    /// A private value of the front end, echoed in the response.
    pub id: u64,
    /// The first sector on the disk, in 512-byte sectors.
    pub sector_number: BlkifSector,
    /// The virtual device.
    pub handle: BlkifVdev,
    _pad1: [u8; 2],
    /// The grant references of the pages holding the segments.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    _pad2: [u8; 4],
}

impl BlkifRequestIndirect {
    /// An indirect request with zeroed padding.
    pub const fn new(
        indirect_op: u8,
        nr_segments: u16,
        handle: BlkifVdev,
        id: u64,
        sector_number: BlkifSector,
        indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    ) -> Self {
        Self {
            operation: BLKIF_OP_INDIRECT,
            indirect_op,
            nr_segments,
            _pad0: [0; 4],
            id,
            sector_number,
            handle,
            _pad1: [0; 2],
            indirect_grefs,
            _pad2: [0; 4],
        }
    }

    /// The ring request holding this indirect request, the rest of the slot zeroed.
    pub fn to_request(&self) -> BlkifRequest {
        zerocopy::transmute!(IndirectInRequest {
            indirect: *self,
            rest: [0; INDIRECT_REST]
        })
    }
}

/// A response (`struct blkif_response`, `blkif_response_t` in `io/blkif.h`). Build it with
/// [`BlkifResponse::new`], which zeroes the padding, so that no stale host bytes reach the guest (XSA-216).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifResponse {
    /// The `id` of the request.
    pub id: u64,
    /// The operation of the request (for an indirect request, its `indirect_op`).
    pub operation: u8,
    _pad0: [u8; 1],
    /// `BLKIF_RSP_*`.
    pub status: i16,
    _pad1: [u8; 4],
}

impl BlkifResponse {
    /// A response with zeroed padding.
    pub const fn new(id: u64, operation: u8, status: i16) -> Self {
        Self {
            id,
            operation,
            _pad0: [0; 1],
            status,
            _pad1: [0; 4],
        }
    }

    /// Whether every padding byte is zero (a response built by [`BlkifResponse::new`] always is).
    pub fn padding_is_zero(&self) -> bool {
        self._pad0 == [0; 1] && self._pad1 == [0; 4]
    }
}

/// One slot of the blkif ring (`union blkif_sring_entry` in `io/blkif.h`, made by `DEFINE_RING_TYPES`):
/// 112 bytes, 8-byte aligned, holding a request or a response.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifSringEntry {
    bytes: [u8; size_of::<BlkifRequest>()],
}

sring_entry_methods!("112");

/// The native blkif ring protocol (`DEFINE_RING_TYPES(blkif, ...)` in `io/blkif.h`): `"x86_64-abi"` and
/// `"arm-abi"` front ends. Slots are 112 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blkif;

impl RingProtocol for Blkif {
    type Request = BlkifRequest;
    type Response = BlkifResponse;
}

/// The blkif ring protocol of an `"x86_32-abi"` front end: [`x86_32::BlkifRequest`] and
/// [`x86_32::BlkifResponse`] in 108-byte slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifX86_32;

impl RingProtocol for BlkifX86_32 {
    type Request = x86_32::BlkifRequest;
    type Response = x86_32::BlkifResponse;
}

// Helpers that let `zerocopy::transmute!` view a prefix of a request or slot, checked at compile time.
// No C counterpart.
const DISCARD_REST: usize = size_of::<BlkifRequest>() - size_of::<BlkifRequestDiscard>();
const INDIRECT_REST: usize = size_of::<BlkifRequest>() - size_of::<BlkifRequestIndirect>();
const RESPONSE_REST: usize = size_of::<BlkifSringEntry>() - size_of::<BlkifResponse>();

#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct DiscardInRequest {
    discard: BlkifRequestDiscard,
    rest: [u8; DISCARD_REST],
}

#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct IndirectInRequest {
    indirect: BlkifRequestIndirect,
    rest: [u8; INDIRECT_REST],
}

#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct ResponseInSlot {
    rsp: BlkifResponse,
    rest: [u8; RESPONSE_REST],
}

const _: () = {
    assert!(size_of::<BlkifRequestSegment>() == 8);
    assert!(size_of::<BlkifRequest>() == 112);
    assert!(size_of::<BlkifRequestDiscard>() == 32);
    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(size_of::<BlkifResponse>() == 16);
    assert!(size_of::<BlkifSringEntry>() == 112);
    assert!(<Blkif as RingProtocol>::SLOT_SIZE == 112);
    assert!(<BlkifX86_32 as RingProtocol>::SLOT_SIZE == 108);
    assert!(BLKIF_SEGS_PER_INDIRECT_FRAME == 512);
    assert!(BLKIF_SECTORS_PER_PAGE == 8);
};
