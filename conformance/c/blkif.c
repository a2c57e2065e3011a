/* Layout and constants of the block device protocol (io/blkif.h, io/protocols.h), native x86_64. */
#include "abi_table.h"
#include "blkif_layout.h"
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

/* Not in io/blkif.h under this name: the header's formula in the comment on BLKIF_OP_INDIRECT
 * (PAGE_SIZE / sizeof(struct blkif_request_segment)); Linux's blkback names it so. */
#define BLKIF_SEGS_PER_INDIRECT_FRAME ((1 << XEN_PAGE_SHIFT) / sizeof(struct blkif_request_segment))

/* The io/protocols.h strings go in as their contents (in the key) and their lengths (the value). */
#define ABI_STRING(S) { "const:" #S "=" S, (long long)(sizeof(S) - 1) }

static const struct abi_entry entries[] = {
    BLKIF_LAYOUT_ENTRIES

    ABI_CONST(BLKIF_OP_READ),
    ABI_CONST(BLKIF_OP_WRITE),
    ABI_CONST(BLKIF_OP_WRITE_BARRIER),
    ABI_CONST(BLKIF_OP_FLUSH_DISKCACHE),
    ABI_CONST(BLKIF_OP_RESERVED_1),
    ABI_CONST(BLKIF_OP_DISCARD),
    ABI_CONST(BLKIF_OP_INDIRECT),
    ABI_CONST(BLKIF_MAX_SEGMENTS_PER_REQUEST),
    ABI_CONST(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    ABI_CONST(BLKIF_SEGS_PER_INDIRECT_FRAME),
    ABI_CONST(BLKIF_DISCARD_SECURE),
    ABI_CONST(BLKIF_RSP_EOPNOTSUPP),
    ABI_CONST(BLKIF_RSP_ERROR),
    ABI_CONST(BLKIF_RSP_OKAY),
    ABI_CONST(VDISK_CDROM),
    ABI_CONST(VDISK_REMOVABLE),
    ABI_CONST(VDISK_READONLY),

    ABI_STRING(XEN_IO_PROTO_ABI_X86_32),
    ABI_STRING(XEN_IO_PROTO_ABI_X86_64),
    ABI_STRING(XEN_IO_PROTO_ABI_ARM),
    ABI_STRING(XEN_IO_PROTO_ABI_NATIVE),
};

ABI_TABLE(blkif, entries)
