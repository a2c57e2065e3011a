/* Layout and constants of the XenStore wire protocol (io/xs_wire.h). */
#include "abi_table.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xen/io/xs_wire.h>

static const struct abi_entry entries[] = {
    ABI_TYPE(struct xsd_sockmsg),
    ABI_OFFSET(struct xsd_sockmsg, type),
    ABI_OFFSET(struct xsd_sockmsg, req_id),
    ABI_OFFSET(struct xsd_sockmsg, tx_id),
    ABI_OFFSET(struct xsd_sockmsg, len),

    ABI_TYPE(struct xenstore_domain_interface),
    ABI_OFFSET(struct xenstore_domain_interface, req),
    ABI_OFFSET(struct xenstore_domain_interface, rsp),
    ABI_OFFSET(struct xenstore_domain_interface, req_cons),
    ABI_OFFSET(struct xenstore_domain_interface, req_prod),
    ABI_OFFSET(struct xenstore_domain_interface, rsp_cons),
    ABI_OFFSET(struct xenstore_domain_interface, rsp_prod),
    ABI_OFFSET(struct xenstore_domain_interface, server_features),
    ABI_OFFSET(struct xenstore_domain_interface, connection),
    ABI_OFFSET(struct xenstore_domain_interface, error),

    ABI_CONST(XS_CONTROL),
    ABI_CONST(XS_DEBUG),
    ABI_CONST(XS_DIRECTORY),
    ABI_CONST(XS_READ),
    ABI_CONST(XS_GET_PERMS),
    ABI_CONST(XS_WATCH),
    ABI_CONST(XS_UNWATCH),
    ABI_CONST(XS_TRANSACTION_START),
    ABI_CONST(XS_TRANSACTION_END),
    ABI_CONST(XS_INTRODUCE),
    ABI_CONST(XS_RELEASE),
    ABI_CONST(XS_GET_DOMAIN_PATH),
    ABI_CONST(XS_WRITE),
    ABI_CONST(XS_MKDIR),
    ABI_CONST(XS_RM),
    ABI_CONST(XS_SET_PERMS),
    ABI_CONST(XS_WATCH_EVENT),
    ABI_CONST(XS_ERROR),
    ABI_CONST(XS_IS_DOMAIN_INTRODUCED),
    ABI_CONST(XS_RESUME),
    ABI_CONST(XS_SET_TARGET),
    ABI_CONST(XS_RESET_WATCHES),
    ABI_CONST(XS_DIRECTORY_PART),
    ABI_CONST(XS_TYPE_COUNT),
    ABI_CONST(XS_INVALID),

    ABI_CONST(XS_WATCH_PATH),
    ABI_CONST(XS_WATCH_TOKEN),

    ABI_CONST(XENSTORE_RING_SIZE),
    ABI_CONST(sizeof(XENSTORE_RING_IDX)),
    ABI_CONST(MASK_XENSTORE_IDX(0)),
    ABI_CONST(MASK_XENSTORE_IDX(1023)),
    ABI_CONST(MASK_XENSTORE_IDX(1024)),
    ABI_CONST(MASK_XENSTORE_IDX(4294967295u)),
    ABI_CONST(XENSTORE_PAYLOAD_MAX),
    ABI_CONST(XENSTORE_ABS_PATH_MAX),
    ABI_CONST(XENSTORE_REL_PATH_MAX),
    ABI_CONST(XENSTORE_SERVER_FEATURE_RECONNECTION),
    ABI_CONST(XENSTORE_SERVER_FEATURE_ERROR),
    ABI_CONST(XENSTORE_CONNECTED),
    ABI_CONST(XENSTORE_RECONNECT),
    ABI_CONST(XENSTORE_ERROR_NONE),
    ABI_CONST(XENSTORE_ERROR_COMM),
    ABI_CONST(XENSTORE_ERROR_RINGIDX),
    ABI_CONST(XENSTORE_ERROR_PROTO),

    ABI_CONST(sizeof(xsd_errors) / sizeof(xsd_errors[0])),
};

ABI_TABLE(xs_wire, entries)

/*
 * The strings of xs_wire.h, which a constant table cannot hold: built at run time into
 *   "xsd_errors[I]=NAME" -> errnum   (the order, the names and the numbers of the errno table)
 *   "str:XS_WRITE_*=VALUE" -> strlen (the legacy write flag strings)
 */
#define N_ERRORS (sizeof(xsd_errors) / sizeof(xsd_errors[0]))
#define N_STRINGS (N_ERRORS + 3)

static struct abi_entry string_entries[N_STRINGS];
static char string_names[N_STRINGS][64];

static void add_string(size_t i, const char *key, const char *value)
{
    snprintf(string_names[i], sizeof(string_names[i]), "str:%s=%s", key, value);
    string_entries[i].name = string_names[i];
    string_entries[i].value = (long long)strlen(value);
}

const struct abi_entry *abi_table_xs_wire_strings(size_t *n);
const struct abi_entry *abi_table_xs_wire_strings(size_t *n)
{
    size_t i;

    for (i = 0; i < N_ERRORS; i++) {
        snprintf(string_names[i], sizeof(string_names[i]), "xsd_errors[%zu]=%s", i, xsd_errors[i].errstring);
        string_entries[i].name = string_names[i];
        string_entries[i].value = xsd_errors[i].errnum;
    }
    add_string(N_ERRORS, "XS_WRITE_NONE", XS_WRITE_NONE);
    add_string(N_ERRORS + 1, "XS_WRITE_CREATE", XS_WRITE_CREATE);
    add_string(N_ERRORS + 2, "XS_WRITE_CREATE_EXCL", XS_WRITE_CREATE_EXCL);
    *n = N_STRINGS;
    return string_entries;
}
