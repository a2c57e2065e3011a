/* Layout of the block device protocol (io/blkif.h) as an i386 compiler lays it out: the "x86_32-abi"
 * protocol. Compiled with gcc -m32 together with ../print_main.c, which prints this table. */
#include "abi_table.h"
#include "blkif_layout.h"
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

#ifndef __i386__
#error "c/x86_32/blkif.c must be compiled for i386 (gcc -m32)"
#endif

#define ABI_STRING(S) { "const:" #S "=" S, (long long)(sizeof(S) - 1) }

static const struct abi_entry entries[] = {
    BLKIF_LAYOUT_ENTRIES
    /* Only the i386 layout has this explicit padding field. */
    ABI_OFFSET(blkif_request_indirect_t, pad),

    ABI_STRING(XEN_IO_PROTO_ABI_NATIVE),
};

const struct abi_entry *abi_table(size_t *n);
const struct abi_entry *abi_table(size_t *n)
{
    *n = sizeof(entries) / sizeof(entries[0]);
    return entries;
}
