/* Layouts and constants of event_channel.h (x86_64), for conformance/tests/layout_event_channel.rs. */
#include "abi_table.h"
#include <xen/xen.h>
#include <xen/event_channel.h>

#define MEMBER_SIZE(T, M) sizeof(((T *)0)->M)
#define MEMBER_ALIGN(T, M) _Alignof(__typeof__(((T *)0)->M))

static const struct abi_entry entries[] = {
    ABI_CONST(sizeof(evtchn_port_t)),
    ABI_CONST(sizeof(event_word_t)),

    ABI_TYPE(struct evtchn_alloc_unbound),
    ABI_OFFSET(struct evtchn_alloc_unbound, dom),
    ABI_OFFSET(struct evtchn_alloc_unbound, remote_dom),
    ABI_OFFSET(struct evtchn_alloc_unbound, port),

    ABI_TYPE(struct evtchn_bind_interdomain),
    ABI_OFFSET(struct evtchn_bind_interdomain, remote_dom),
    ABI_OFFSET(struct evtchn_bind_interdomain, remote_port),
    ABI_OFFSET(struct evtchn_bind_interdomain, local_port),

    ABI_TYPE(struct evtchn_bind_virq),
    ABI_OFFSET(struct evtchn_bind_virq, virq),
    ABI_OFFSET(struct evtchn_bind_virq, vcpu),
    ABI_OFFSET(struct evtchn_bind_virq, port),

    ABI_TYPE(struct evtchn_bind_pirq),
    ABI_OFFSET(struct evtchn_bind_pirq, pirq),
    ABI_OFFSET(struct evtchn_bind_pirq, flags),
    ABI_OFFSET(struct evtchn_bind_pirq, port),

    ABI_TYPE(struct evtchn_bind_ipi),
    ABI_OFFSET(struct evtchn_bind_ipi, vcpu),
    ABI_OFFSET(struct evtchn_bind_ipi, port),

    ABI_TYPE(struct evtchn_close),
    ABI_OFFSET(struct evtchn_close, port),

    ABI_TYPE(struct evtchn_send),
    ABI_OFFSET(struct evtchn_send, port),

    ABI_TYPE(struct evtchn_status),
    ABI_OFFSET(struct evtchn_status, dom),
    ABI_OFFSET(struct evtchn_status, port),
    ABI_OFFSET(struct evtchn_status, status),
    ABI_OFFSET(struct evtchn_status, vcpu),
    ABI_OFFSET(struct evtchn_status, u),
    { "size:struct evtchn_status.u", MEMBER_SIZE(struct evtchn_status, u) },
    { "align:struct evtchn_status.u", MEMBER_ALIGN(struct evtchn_status, u) },
    ABI_OFFSET(struct evtchn_status, u.unbound.dom),
    { "size:struct evtchn_status.u.interdomain", MEMBER_SIZE(struct evtchn_status, u.interdomain) },
    { "align:struct evtchn_status.u.interdomain", MEMBER_ALIGN(struct evtchn_status, u.interdomain) },
    ABI_OFFSET(struct evtchn_status, u.interdomain.dom),
    ABI_OFFSET(struct evtchn_status, u.interdomain.port),
    ABI_OFFSET(struct evtchn_status, u.pirq),
    ABI_OFFSET(struct evtchn_status, u.virq),

    ABI_TYPE(struct evtchn_bind_vcpu),
    ABI_OFFSET(struct evtchn_bind_vcpu, port),
    ABI_OFFSET(struct evtchn_bind_vcpu, vcpu),

    ABI_TYPE(struct evtchn_unmask),
    ABI_OFFSET(struct evtchn_unmask, port),

    ABI_TYPE(struct evtchn_reset),
    ABI_OFFSET(struct evtchn_reset, dom),

    ABI_TYPE(struct evtchn_init_control),
    ABI_OFFSET(struct evtchn_init_control, control_gfn),
    ABI_OFFSET(struct evtchn_init_control, offset),
    ABI_OFFSET(struct evtchn_init_control, vcpu),
    ABI_OFFSET(struct evtchn_init_control, link_bits),
    ABI_OFFSET(struct evtchn_init_control, _pad),

    ABI_TYPE(struct evtchn_expand_array),
    ABI_OFFSET(struct evtchn_expand_array, array_gfn),

    ABI_TYPE(struct evtchn_set_priority),
    ABI_OFFSET(struct evtchn_set_priority, port),
    ABI_OFFSET(struct evtchn_set_priority, priority),

    ABI_TYPE(struct evtchn_op),
    ABI_OFFSET(struct evtchn_op, cmd),
    ABI_OFFSET(struct evtchn_op, u),
    { "size:struct evtchn_op.u", MEMBER_SIZE(struct evtchn_op, u) },

    ABI_TYPE(struct evtchn_fifo_control_block),
    ABI_OFFSET(struct evtchn_fifo_control_block, ready),
    ABI_OFFSET(struct evtchn_fifo_control_block, _rsvd),
    ABI_OFFSET(struct evtchn_fifo_control_block, head),

    ABI_CONST(EVTCHNOP_bind_interdomain),
    ABI_CONST(EVTCHNOP_bind_virq),
    ABI_CONST(EVTCHNOP_bind_pirq),
    ABI_CONST(EVTCHNOP_close),
    ABI_CONST(EVTCHNOP_send),
    ABI_CONST(EVTCHNOP_status),
    ABI_CONST(EVTCHNOP_alloc_unbound),
    ABI_CONST(EVTCHNOP_bind_ipi),
    ABI_CONST(EVTCHNOP_bind_vcpu),
    ABI_CONST(EVTCHNOP_unmask),
    ABI_CONST(EVTCHNOP_reset),
    ABI_CONST(EVTCHNOP_init_control),
    ABI_CONST(EVTCHNOP_expand_array),
    ABI_CONST(EVTCHNOP_set_priority),

    ABI_CONST(BIND_PIRQ__WILL_SHARE),

    ABI_CONST(EVTCHNSTAT_closed),
    ABI_CONST(EVTCHNSTAT_unbound),
    ABI_CONST(EVTCHNSTAT_interdomain),
    ABI_CONST(EVTCHNSTAT_pirq),
    ABI_CONST(EVTCHNSTAT_virq),
    ABI_CONST(EVTCHNSTAT_ipi),

    ABI_CONST(EVTCHN_2L_NR_CHANNELS),
    /* The 2-level bitmaps, as shared_info lays them out. */
    { "const:sizeof(xen_ulong_t) * 8", sizeof(xen_ulong_t) * 8 },

    ABI_CONST(EVTCHN_FIFO_PRIORITY_MAX),
    ABI_CONST(EVTCHN_FIFO_PRIORITY_DEFAULT),
    ABI_CONST(EVTCHN_FIFO_PRIORITY_MIN),
    ABI_CONST(EVTCHN_FIFO_MAX_QUEUES),
    ABI_CONST(EVTCHN_FIFO_PENDING),
    ABI_CONST(EVTCHN_FIFO_MASKED),
    ABI_CONST(EVTCHN_FIFO_LINKED),
    ABI_CONST(EVTCHN_FIFO_BUSY),
    ABI_CONST(EVTCHN_FIFO_LINK_BITS),
    ABI_CONST(EVTCHN_FIFO_LINK_MASK),
    ABI_CONST(EVTCHN_FIFO_NR_CHANNELS),
};

ABI_TABLE(event_channel, entries)
