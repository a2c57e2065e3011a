/* The XenBus device states (io/xenbus.h). */
#include "abi_table.h"
#include <xen/io/xenbus.h>

static const struct abi_entry entries[] = {
    ABI_TYPE(XenbusState),
    ABI_CONST(XenbusStateUnknown),
    ABI_CONST(XenbusStateInitialising),
    ABI_CONST(XenbusStateInitWait),
    ABI_CONST(XenbusStateInitialised),
    ABI_CONST(XenbusStateConnected),
    ABI_CONST(XenbusStateClosing),
    ABI_CONST(XenbusStateClosed),
    ABI_CONST(XenbusStateReconfiguring),
    ABI_CONST(XenbusStateReconfigured),
};

ABI_TABLE(xenbus, entries)
