//! `xen_abi::blkif` against `io/blkif.h` and `io/protocols.h`: the native (x86_64) layout against the C
//! compiler of the build, and the `x86_32` layout against `gcc -m32`.
//!
//! Left out of both tables because they have no C counterpart: `BLKIF_SECTOR_SIZE`,
//! `BLKIF_SECTORS_PER_PAGE`, `INDIRECT_SEGMENTS_LIMIT`, and the private `_pad` fields.
//! `BLKIF_SEGS_PER_INDIRECT_FRAME` is compared with the header's formula, computed in C.

use blanket_conformance::{Entry, c_table, check, layout, x86_32_table};
use xen_abi::blkif::{
    self, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BlkifResponse, BlkifSringEntry, x86_32,
};

/// Constants of `xen_abi::blkif` whose Rust name equals the C name. (The harness's `consts!` cannot
/// expand a module path of two segments with more than two names: its module path repeats inside the
/// repetition over the names.)
/// The `io/protocols.h` strings, as the C tables encode them: the contents in the key, the length as
/// the value.
fn string(cname: &str, value: &str) -> Vec<Entry> {
    vec![Entry::new(
        format!("const:{cname}={value}"),
        value.len() as i64,
    )]
}

/// The slot union: its size and alignment, and both members at offset 0 (`from_request` and
/// `from_response` put them there).
fn slot<T>(req_offset: usize, rsp_offset: usize) -> Vec<Entry> {
    vec![
        Entry::new("size:union blkif_sring_entry", size_of::<T>() as i64),
        Entry::new("align:union blkif_sring_entry", align_of::<T>() as i64),
        Entry::new("offset:union blkif_sring_entry.req", req_offset as i64),
        Entry::new("offset:union blkif_sring_entry.rsp", rsp_offset as i64),
    ]
}

#[test]
fn native_layout_matches_blkif_h() {
    let rust = [
        layout!(BlkifRequestSegment => "struct blkif_request_segment" { gref, first_sect, last_sect }),
        layout!(BlkifRequest => "blkif_request_t" {
            operation, nr_segments, handle, id, sector_number, seg
        }),
        layout!(BlkifRequestDiscard => "blkif_request_discard_t" {
            operation, flag, handle, id, sector_number, nr_sectors
        }),
        layout!(BlkifRequestIndirect => "blkif_request_indirect_t" {
            operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs
        }),
        layout!(BlkifResponse => "blkif_response_t" { id, operation, status }),
        slot::<BlkifSringEntry>(0, 0),
        blanket_conformance::consts!(xen_abi::blkif;
            BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_RESERVED_1, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT,
            BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
            BLKIF_SEGS_PER_INDIRECT_FRAME, BLKIF_DISCARD_SECURE,
            BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
            VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY,
        ),
        string("XEN_IO_PROTO_ABI_X86_32", blkif::XEN_IO_PROTO_ABI_X86_32),
        string("XEN_IO_PROTO_ABI_X86_64", blkif::XEN_IO_PROTO_ABI_X86_64),
        string("XEN_IO_PROTO_ABI_ARM", blkif::XEN_IO_PROTO_ABI_ARM),
        string("XEN_IO_PROTO_ABI_NATIVE", blkif::XEN_IO_PROTO_ABI_NATIVE),
    ]
    .concat();
    check("blkif (native)", &c_table!(abi_table_blkif), &rust);
}

#[test]
fn x86_32_layout_matches_blkif_h_compiled_for_i386() {
    let rust = [
        // The segment has the same layout on i386; the x86_32 requests reuse the native type.
        layout!(BlkifRequestSegment => "struct blkif_request_segment" { gref, first_sect, last_sect }),
        layout!(x86_32::BlkifRequest => "blkif_request_t" {
            operation, nr_segments, handle, id, sector_number, seg
        }),
        layout!(x86_32::BlkifRequestDiscard => "blkif_request_discard_t" {
            operation, flag, handle, id, sector_number, nr_sectors
        }),
        layout!(x86_32::BlkifRequestIndirect => "blkif_request_indirect_t" {
            operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs, pad
        }),
        layout!(x86_32::BlkifResponse => "blkif_response_t" { id, operation, status }),
        slot::<x86_32::BlkifSringEntry>(0, 0),
        // An i386 build names its own protocol "x86_32-abi".
        string("XEN_IO_PROTO_ABI_NATIVE", blkif::XEN_IO_PROTO_ABI_X86_32),
    ]
    .concat();
    check(
        "blkif (x86_32)",
        &x86_32_table(env!("ABI_X86_32_BLKIF")),
        &rust,
    );
}

#[test]
fn ring_slots_match_the_union_sizes() {
    use xen_abi::ring::RingProtocol;
    assert_eq!(blkif::Blkif::SLOT_SIZE, size_of::<BlkifSringEntry>());
    assert_eq!(
        blkif::BlkifX86_32::SLOT_SIZE,
        size_of::<x86_32::BlkifSringEntry>()
    );
}
