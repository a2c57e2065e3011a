//! The shared ring header of `xen_abi::ring` against `io/ring.h`.

use blanket_conformance::{Entry, c_table, check, const_as, offset};
use xen_abi::ring::{SRING_HEADER_SIZE, SringHeader};

#[test]
fn sring_header_matches_ring_h() {
    let rust = [
        // The C struct ends with a one-entry array of slots; its size is the header plus one slot with the
        // union's alignment, so only the offsets of the header are compared, plus the offset of `ring`.
        offset!(SringHeader => "struct blkif_sring"."req_prod" = req_prod),
        offset!(SringHeader => "struct blkif_sring"."req_event" = req_event),
        offset!(SringHeader => "struct blkif_sring"."rsp_prod" = rsp_prod),
        offset!(SringHeader => "struct blkif_sring"."rsp_event" = rsp_event),
        offset!(SringHeader => "struct blkif_sring"."pvt" = pvt),
        offset!(SringHeader => "struct blkif_sring"."__pad" = pad),
        vec![
            Entry::new("offset:struct blkif_sring.ring", SRING_HEADER_SIZE as i64),
            Entry::new("size:struct blkif_sring", (SRING_HEADER_SIZE + 112) as i64),
            Entry::new("align:struct blkif_sring", 8),
        ],
        const_as!("XEN_PAGE_SHIFT" = xen_abi::XEN_PAGE_SHIFT),
    ]
    .concat();
    assert_eq!(size_of::<SringHeader>(), SRING_HEADER_SIZE);
    check("ring header", &c_table!(abi_table_ring), &rust);
}
