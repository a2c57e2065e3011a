/* Layout of the generic shared ring header (io/ring.h), as DEFINE_RING_TYPES lays it out for blkif. */
#include "abi_table.h"
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

static const struct abi_entry entries[] = {
    ABI_TYPE(struct blkif_sring),
    ABI_OFFSET(struct blkif_sring, req_prod),
    ABI_OFFSET(struct blkif_sring, req_event),
    ABI_OFFSET(struct blkif_sring, rsp_prod),
    ABI_OFFSET(struct blkif_sring, rsp_event),
    ABI_OFFSET(struct blkif_sring, pvt),
    ABI_OFFSET(struct blkif_sring, __pad),
    ABI_OFFSET(struct blkif_sring, ring),
    ABI_CONST(XEN_PAGE_SHIFT),
};

ABI_TABLE(ring, entries)
