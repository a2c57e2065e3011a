//! The blkif ring of a 32-bit x86 front end (`protocol` = `"x86_32-abi"`, [`super::XEN_IO_PROTO_ABI_X86_32`]).
//!
//! These are the structs of `io/blkif.h` as an i386 compiler lays them out: `uint64_t` is only 4-byte
//! aligned there, so there is no padding before `id` (offset 4, not 8), a request is 108 bytes, a
//! response 12, and the indirect request carries the explicit `pad` that the header adds under
//! `__i386__`. `#[repr(C, packed(4))]` gives Rust the same layout; the conformance tests compare it with
//! `gcc -m32`. Being packed, their fields cannot be borrowed: copy one out first (`{ req.id }`).
//!
//! A back end serving such a front end copies each request out of its 108-byte slot, turns it into the
//! native [`super::BlkifRequest`] with [`BlkifRequest::to_native`] (what Linux's blkback does in
//! `blkif_get_x86_32_req`), validates that, and answers with [`BlkifResponse::from_native`].
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BlkifRequestSegment, BlkifSector, BlkifVdev, GrantRef,
};

/// A request in an x86_32 ring slot (`blkif_request_t` of `io/blkif.h` compiled for i386): 108 bytes,
/// `id` at offset 4.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequest {
    /// The operation, `BLKIF_OP_*`.
    pub operation: u8,
    /// The number of segments in `seg` that the request uses.
    pub nr_segments: u8,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// A private value of the front end, echoed in the response.
    pub id: u64,
    /// The first sector on the disk, in 512-byte sectors.
    pub sector_number: BlkifSector,
    /// The segments; the first `nr_segments` are used.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST as usize],
}

/// A discard request in an x86_32 ring slot (`blkif_request_discard_t` compiled for i386): 28 bytes.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`super::BLKIF_DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// A private value of the front end, echoed in the response.
    pub id: u64,
    /// The first sector to discard.
    pub sector_number: BlkifSector,
    /// The number of contiguous sectors to discard.
    pub nr_sectors: u64,
}

/// An indirect request in an x86_32 ring slot (`blkif_request_indirect_t` compiled for i386): 64 bytes,
/// with the trailing `pad` that the header declares under `__i386__`.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// The real operation: [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// The number of segments, spread over the indirect pages.
    pub nr_segments: u16,
    /// A private value of the front end, echoed in the response.
    pub id: u64,
    /// The first sector on the disk.
    pub sector_number: BlkifSector,
    /// The virtual device.
    pub handle: BlkifVdev,
    _pad0: [u8; 2],
    /// The grant references of the pages holding the segments.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// `pad` ("Make it 64 byte aligned on i386"), ignored.
    pub pad: u64,
}

/// A response in an x86_32 ring slot (`blkif_response_t` compiled for i386): 12 bytes. Build it with
/// [`BlkifResponse::new`] or [`BlkifResponse::from_native`], which zero the padding (XSA-216).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifResponse {
    /// The `id` of the request.
    pub id: u64,
    /// The operation of the request.
    pub operation: u8,
    _pad0: [u8; 1],
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

/// One slot of an x86_32 blkif ring (`union blkif_sring_entry` compiled for i386): 108 bytes, 4-byte
/// aligned.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifSringEntry {
    bytes: [u8; size_of::<BlkifRequest>()],
}

impl BlkifRequest {
    /// A request with no segments (the x86_32 twin of [`super::BlkifRequest::new`]).
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
            id,
            sector_number,
            seg: [BlkifRequestSegment::new(0, 0, 0); BLKIF_MAX_SEGMENTS_PER_REQUEST as usize],
        }
    }

    /// These bytes seen as a discard request.
    pub fn discard(&self) -> BlkifRequestDiscard {
        let view: DiscardInRequest = zerocopy::transmute!(*self);
        view.discard
    }

    /// These bytes seen as an indirect request.
    pub fn indirect(&self) -> BlkifRequestIndirect {
        let view: IndirectInRequest = zerocopy::transmute!(*self);
        view.indirect
    }

    /// The native request with the same meaning, as Linux's blkback builds it in `blkif_get_x86_32_req`:
    /// field by field for the operation's own struct, the rest zeroed. Read, write, barrier and flush
    /// requests keep all 11 segment slots (this works on a copy, so copying unused slots is harmless);
    /// discard and indirect requests keep their own fields; any other operation keeps only `operation`
    /// and `id`, which is all its error response needs.
    pub fn to_native(&self) -> super::BlkifRequest {
        let operation = self.operation;
        match operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE => {
                let mut req =
                    super::BlkifRequest::new(operation, self.handle, self.id, self.sector_number);
                req.nr_segments = self.nr_segments;
                req.seg = self.seg;
                req
            }
            BLKIF_OP_DISCARD => {
                let d = self.discard();
                super::BlkifRequestDiscard::new(
                    d.handle,
                    d.id,
                    d.sector_number,
                    d.nr_sectors,
                    d.flag,
                )
                .to_request()
            }
            BLKIF_OP_INDIRECT => {
                let i = self.indirect();
                super::BlkifRequestIndirect::new(
                    i.indirect_op,
                    i.nr_segments,
                    i.handle,
                    i.id,
                    i.sector_number,
                    i.indirect_grefs,
                )
                .to_request()
            }
            _ => super::BlkifRequest::new(operation, 0, self.id, 0),
        }
    }

    /// The x86_32 request with the same meaning as a native one (what a 32-bit front end would write):
    /// the inverse of [`BlkifRequest::to_native`], with the same per-operation rules.
    pub fn from_native(req: &super::BlkifRequest) -> Self {
        let operation = req.operation;
        match operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE => {
                let mut out = Self::new(operation, req.handle, req.id, req.sector_number);
                out.nr_segments = req.nr_segments;
                out.seg = req.seg;
                out
            }
            BLKIF_OP_DISCARD => {
                let d = req.discard();
                BlkifRequestDiscard::new(d.handle, d.id, d.sector_number, d.nr_sectors, d.flag)
                    .to_request()
            }
            BLKIF_OP_INDIRECT => {
                let i = req.indirect();
                BlkifRequestIndirect::new(
                    i.indirect_op,
                    i.nr_segments,
                    i.handle,
                    i.id,
                    i.sector_number,
                    i.indirect_grefs,
                )
                .to_request()
            }
            _ => Self::new(operation, 0, req.id, 0),
        }
    }
}

impl From<BlkifRequest> for super::BlkifRequest {
    fn from(req: BlkifRequest) -> Self {
        req.to_native()
    }
}

impl From<super::BlkifRequest> for BlkifRequest {
    fn from(req: super::BlkifRequest) -> Self {
        Self::from_native(&req)
    }
}

impl BlkifRequestDiscard {
    /// A discard request (the x86_32 twin of [`super::BlkifRequestDiscard::new`]).
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
            id,
            sector_number,
            nr_sectors,
        }
    }

    /// The x86_32 ring request holding this discard, the rest of the slot zeroed.
    pub fn to_request(&self) -> BlkifRequest {
        zerocopy::transmute!(DiscardInRequest {
            discard: *self,
            rest: [0; DISCARD_REST]
        })
    }
}

impl BlkifRequestIndirect {
    /// An indirect request with zeroed padding (the x86_32 twin of [`super::BlkifRequestIndirect::new`]).
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
            id,
            sector_number,
            handle,
            _pad0: [0; 2],
            indirect_grefs,
            pad: 0,
        }
    }

    /// The x86_32 ring request holding this indirect request, the rest of the slot zeroed.
    pub fn to_request(&self) -> BlkifRequest {
        zerocopy::transmute!(IndirectInRequest {
            indirect: *self,
            rest: [0; INDIRECT_REST]
        })
    }
}

impl BlkifResponse {
    /// A response with zeroed padding.
    pub const fn new(id: u64, operation: u8, status: i16) -> Self {
        Self {
            id,
            operation,
            _pad0: [0; 1],
            status,
        }
    }

    /// The x86_32 form of a native response, padding zeroed.
    pub const fn from_native(rsp: &super::BlkifResponse) -> Self {
        Self::new(rsp.id, rsp.operation, rsp.status)
    }

    /// The native form of this response, padding zeroed.
    pub const fn to_native(&self) -> super::BlkifResponse {
        super::BlkifResponse::new(self.id, self.operation, self.status)
    }

    /// Whether the padding byte is zero (a response built by [`BlkifResponse::new`] always is).
    pub fn padding_is_zero(&self) -> bool {
        self._pad0 == [0; 1]
    }
}

impl From<super::BlkifResponse> for BlkifResponse {
    fn from(rsp: super::BlkifResponse) -> Self {
        Self::from_native(&rsp)
    }
}

impl From<BlkifResponse> for super::BlkifResponse {
    fn from(rsp: BlkifResponse) -> Self {
        rsp.to_native()
    }
}

sring_entry_methods!("108");

// Prefix views for `zerocopy::transmute!`; no C counterpart.
const DISCARD_REST: usize = size_of::<BlkifRequest>() - size_of::<BlkifRequestDiscard>();
const INDIRECT_REST: usize = size_of::<BlkifRequest>() - size_of::<BlkifRequestIndirect>();
const RESPONSE_REST: usize = size_of::<BlkifSringEntry>() - size_of::<BlkifResponse>();

#[repr(C, packed(4))]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct DiscardInRequest {
    discard: BlkifRequestDiscard,
    rest: [u8; DISCARD_REST],
}

#[repr(C, packed(4))]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct IndirectInRequest {
    indirect: BlkifRequestIndirect,
    rest: [u8; INDIRECT_REST],
}

#[repr(C, packed(4))]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable)]
struct ResponseInSlot {
    rsp: BlkifResponse,
    rest: [u8; RESPONSE_REST],
}

const _: () = {
    assert!(size_of::<BlkifRequest>() == 108 && align_of::<BlkifRequest>() == 4);
    assert!(size_of::<BlkifRequestDiscard>() == 28);
    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(size_of::<BlkifResponse>() == 12);
    assert!(size_of::<BlkifSringEntry>() == 108);
};
