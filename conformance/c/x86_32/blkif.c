/* Layout of the block device protocol (io/blkif.h) as an i386 compiler lays it out: the "x86_32-abi"
 * protocol. Compiled with gcc -m32 together with ../print_main.c, which prints this table. */
#include "abi_table.h"
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

#ifndef __i386__
#error "c/x86_32/blkif.c must be compiled for i386 (gcc -m32)"
#endif

#define ABI_STRING(S) { "const:" #S "=" S, (long long)(sizeof(S) - 1) }

static const struct abi_entry entries[] = {
    ABI_TYPE(struct blkif_request_segment),
    ABI_OFFSET(struct blkif_request_segment, gref),
    ABI_OFFSET(struct blkif_request_segment, first_sect),
    ABI_OFFSET(struct blkif_request_segment, last_sect),

    ABI_TYPE(blkif_request_t),
    ABI_OFFSET(blkif_request_t, operation),
    ABI_OFFSET(blkif_request_t, nr_segments),
    ABI_OFFSET(blkif_request_t, handle),
    ABI_OFFSET(blkif_request_t, id),
    ABI_OFFSET(blkif_request_t, sector_number),
    ABI_OFFSET(blkif_request_t, seg),

    ABI_TYPE(blkif_request_discard_t),
    ABI_OFFSET(blkif_request_discard_t, operation),
    ABI_OFFSET(blkif_request_discard_t, flag),
    ABI_OFFSET(blkif_request_discard_t, handle),
    ABI_OFFSET(blkif_request_discard_t, id),
    ABI_OFFSET(blkif_request_discard_t, sector_number),
    ABI_OFFSET(blkif_request_discard_t, nr_sectors),

    ABI_TYPE(blkif_request_indirect_t),
    ABI_OFFSET(blkif_request_indirect_t, operation),
    ABI_OFFSET(blkif_request_indirect_t, indirect_op),
    ABI_OFFSET(blkif_request_indirect_t, nr_segments),
    ABI_OFFSET(blkif_request_indirect_t, id),
    ABI_OFFSET(blkif_request_indirect_t, sector_number),
    ABI_OFFSET(blkif_request_indirect_t, handle),
    ABI_OFFSET(blkif_request_indirect_t, indirect_grefs),
    ABI_OFFSET(blkif_request_indirect_t, pad),

    ABI_TYPE(blkif_response_t),
    ABI_OFFSET(blkif_response_t, id),
    ABI_OFFSET(blkif_response_t, operation),
    ABI_OFFSET(blkif_response_t, status),

    ABI_TYPE(union blkif_sring_entry),
    ABI_OFFSET(union blkif_sring_entry, req),
    ABI_OFFSET(union blkif_sring_entry, rsp),

    ABI_STRING(XEN_IO_PROTO_ABI_NATIVE),
};

const struct abi_entry *abi_table(size_t *n);
const struct abi_entry *abi_table(size_t *n)
{
    *n = sizeof(entries) / sizeof(entries[0]);
    return entries;
}
