/* Layout and constants of the network device protocol (io/netif.h). */
#include "abi_table.h"
#include <xen/io/ring.h>
#define XEN_NETIF_DEFINE_TOEPLITZ
#include <xen/io/netif.h>

/* The header's own Toeplitz hash, for the Rust one to be compared with. */
uint32_t netif_c_toeplitz_hash(const uint8_t *key, unsigned int keylen, const uint8_t *buf, unsigned int buflen);
uint32_t netif_c_toeplitz_hash(const uint8_t *key, unsigned int keylen, const uint8_t *buf, unsigned int buflen)
{
    return xen_netif_toeplitz_hash(key, keylen, buf, buflen);
}

/* The anonymous members of netif_extra_info's union have no type name: size and alignment by expression. */
#define ABI_MEMBER(T, M) \
    { "size:" #T "." #M, (long long)sizeof(((T *)0)->M) }, \
    { "align:" #T "." #M, (long long)_Alignof(__typeof__(((T *)0)->M)) }

/* A constant derived from the header by a formula, under a name that Rust gives it. */
#define ABI_DERIVED(NAME, EXPR) { "const:" #NAME, (long long)(EXPR) }

static const struct abi_entry entries[] = {
    ABI_TYPE(struct netif_tx_request),
    ABI_OFFSET(struct netif_tx_request, gref),
    ABI_OFFSET(struct netif_tx_request, offset),
    ABI_OFFSET(struct netif_tx_request, flags),
    ABI_OFFSET(struct netif_tx_request, id),
    ABI_OFFSET(struct netif_tx_request, size),

    ABI_TYPE(struct netif_tx_response),
    ABI_OFFSET(struct netif_tx_response, id),
    ABI_OFFSET(struct netif_tx_response, status),

    ABI_TYPE(struct netif_rx_request),
    ABI_OFFSET(struct netif_rx_request, id),
    ABI_OFFSET(struct netif_rx_request, pad),
    ABI_OFFSET(struct netif_rx_request, gref),

    ABI_TYPE(struct netif_rx_response),
    ABI_OFFSET(struct netif_rx_response, id),
    ABI_OFFSET(struct netif_rx_response, offset),
    ABI_OFFSET(struct netif_rx_response, flags),
    ABI_OFFSET(struct netif_rx_response, status),

    ABI_TYPE(struct netif_extra_info),
    ABI_OFFSET(struct netif_extra_info, type),
    ABI_OFFSET(struct netif_extra_info, flags),
    ABI_OFFSET(struct netif_extra_info, u),
    ABI_MEMBER(struct netif_extra_info, u),
    ABI_MEMBER(struct netif_extra_info, u.gso),
    ABI_MEMBER(struct netif_extra_info, u.mcast),
    ABI_MEMBER(struct netif_extra_info, u.hash),
    ABI_MEMBER(struct netif_extra_info, u.pad),
    ABI_OFFSET(struct netif_extra_info, u.gso.size),
    ABI_OFFSET(struct netif_extra_info, u.gso.type),
    ABI_OFFSET(struct netif_extra_info, u.gso.pad),
    ABI_OFFSET(struct netif_extra_info, u.gso.features),
    ABI_OFFSET(struct netif_extra_info, u.mcast.addr),
    ABI_OFFSET(struct netif_extra_info, u.hash.type),
    ABI_OFFSET(struct netif_extra_info, u.hash.algorithm),
    ABI_OFFSET(struct netif_extra_info, u.hash.value),
    ABI_OFFSET(struct netif_extra_info, u.pad),

    ABI_TYPE(struct xen_netif_ctrl_request),
    ABI_OFFSET(struct xen_netif_ctrl_request, id),
    ABI_OFFSET(struct xen_netif_ctrl_request, type),
    ABI_OFFSET(struct xen_netif_ctrl_request, data),

    ABI_TYPE(struct xen_netif_ctrl_response),
    ABI_OFFSET(struct xen_netif_ctrl_response, id),
    ABI_OFFSET(struct xen_netif_ctrl_response, type),
    ABI_OFFSET(struct xen_netif_ctrl_response, status),
    ABI_OFFSET(struct xen_netif_ctrl_response, data),

    ABI_TYPE(struct xen_netif_gref),
    ABI_OFFSET(struct xen_netif_gref, ref),
    ABI_OFFSET(struct xen_netif_gref, flags),
    ABI_OFFSET(struct xen_netif_gref, status),

    /* The slots of the three rings, and how many fit in one page. */
    ABI_TYPE(union netif_tx_sring_entry),
    ABI_TYPE(union netif_rx_sring_entry),
    ABI_TYPE(union xen_netif_ctrl_sring_entry),
    ABI_CONST(__CONST_RING_SIZE(netif_tx, 4096)),
    ABI_CONST(__CONST_RING_SIZE(netif_rx, 4096)),
    ABI_CONST(__CONST_RING_SIZE(xen_netif_ctrl, 4096)),

    ABI_CONST(XEN_NETIF_NR_SLOTS_MIN),
    ABI_CONST(XEN_NETIF_MAX_TX_SIZE),

    ABI_CONST(_NETTXF_csum_blank),
    ABI_CONST(NETTXF_csum_blank),
    ABI_CONST(_NETTXF_data_validated),
    ABI_CONST(NETTXF_data_validated),
    ABI_CONST(_NETTXF_more_data),
    ABI_CONST(NETTXF_more_data),
    ABI_CONST(_NETTXF_extra_info),
    ABI_CONST(NETTXF_extra_info),

    ABI_CONST(_NETRXF_data_validated),
    ABI_CONST(NETRXF_data_validated),
    ABI_CONST(_NETRXF_csum_blank),
    ABI_CONST(NETRXF_csum_blank),
    ABI_CONST(_NETRXF_more_data),
    ABI_CONST(NETRXF_more_data),
    ABI_CONST(_NETRXF_extra_info),
    ABI_CONST(NETRXF_extra_info),
    ABI_CONST(_NETRXF_gso_prefix),
    ABI_CONST(NETRXF_gso_prefix),

    ABI_CONST(XEN_NETIF_EXTRA_TYPE_NONE),
    ABI_CONST(XEN_NETIF_EXTRA_TYPE_GSO),
    ABI_CONST(XEN_NETIF_EXTRA_TYPE_MCAST_ADD),
    ABI_CONST(XEN_NETIF_EXTRA_TYPE_MCAST_DEL),
    ABI_CONST(XEN_NETIF_EXTRA_TYPE_HASH),
    ABI_CONST(XEN_NETIF_EXTRA_TYPE_MAX),
    ABI_CONST(_XEN_NETIF_EXTRA_FLAG_MORE),
    ABI_CONST(XEN_NETIF_EXTRA_FLAG_MORE),

    ABI_CONST(XEN_NETIF_GSO_TYPE_NONE),
    ABI_CONST(XEN_NETIF_GSO_TYPE_TCPV4),
    ABI_CONST(XEN_NETIF_GSO_TYPE_TCPV6),

    ABI_CONST(NETIF_RSP_DROPPED),
    ABI_CONST(NETIF_RSP_ERROR),
    ABI_CONST(NETIF_RSP_OKAY),
    ABI_CONST(NETIF_RSP_NULL),

    ABI_CONST(_XEN_NETIF_CTRL_HASH_TYPE_IPV4),
    ABI_CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV4),
    ABI_CONST(_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP),
    ABI_CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP),
    ABI_CONST(_XEN_NETIF_CTRL_HASH_TYPE_IPV6),
    ABI_CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV6),
    ABI_CONST(_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP),
    ABI_CONST(XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP),
    ABI_CONST(XEN_NETIF_CTRL_HASH_ALGORITHM_NONE),
    ABI_CONST(XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ),

    ABI_CONST(XEN_NETIF_CTRL_TYPE_INVALID),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING),
    ABI_CONST(XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING),

    ABI_CONST(XEN_NETIF_CTRL_STATUS_SUCCESS),
    ABI_CONST(XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED),
    ABI_CONST(XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER),
    ABI_CONST(XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW),

    ABI_CONST(_XEN_NETIF_CTRLF_GREF_readonly),
    ABI_CONST(XEN_NETIF_CTRLF_GREF_readonly),

    /* Limits with no name in the header, derived from it as the Rust side defines them. */
    ABI_DERIVED(MAX_TX_EXTRAS, XEN_NETIF_EXTRA_TYPE_MAX - 1),
    ABI_DERIVED(XEN_NETBK_LEGACY_SLOTS_MAX, XEN_NETIF_NR_SLOTS_MIN),
    ABI_DERIVED(HASH_MAPPING_ENTRIES_PER_PAGE, (1 << XEN_PAGE_SHIFT) / sizeof(uint32_t)),
    ABI_DERIVED(GREF_MAPPING_ENTRIES_PER_PAGE, (1 << XEN_PAGE_SHIFT) / sizeof(struct xen_netif_gref)),
};

ABI_TABLE(netif, entries)
