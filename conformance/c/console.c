/* Layout of the PV console page (io/console.h). */
#include "abi_table.h"
#include <xen/io/console.h>

/* The ring arrays, for sizeof and MASK_XENCONS_IDX (which takes the array). */
#define CONS_IN (((struct xencons_interface *)0)->in)
#define CONS_OUT (((struct xencons_interface *)0)->out)

static const struct abi_entry entries[] = {
    ABI_TYPE(struct xencons_interface),
    ABI_OFFSET(struct xencons_interface, in),
    ABI_OFFSET(struct xencons_interface, out),
    ABI_OFFSET(struct xencons_interface, in_cons),
    ABI_OFFSET(struct xencons_interface, in_prod),
    ABI_OFFSET(struct xencons_interface, out_cons),
    ABI_OFFSET(struct xencons_interface, out_prod),
    ABI_CONST(sizeof(XENCONS_RING_IDX)),
    ABI_CONST(sizeof(CONS_IN)),
    ABI_CONST(sizeof(CONS_OUT)),
    ABI_CONST(MASK_XENCONS_IDX(1025, CONS_IN)),
    ABI_CONST(MASK_XENCONS_IDX(4294967295u, CONS_IN)),
    ABI_CONST(MASK_XENCONS_IDX(3000, CONS_OUT)),
    ABI_CONST(MASK_XENCONS_IDX(4294967295u, CONS_OUT)),
};

ABI_TABLE(console, entries)
