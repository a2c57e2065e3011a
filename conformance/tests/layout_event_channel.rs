//! `xen_abi::event_channel` against `event_channel.h` (x86_64 layout).
//!
//! Left out because they have no C counterpart: `BITS_PER_EVTCHN_WORD` (Xen-internal), `EVTCHN_OP_ARGS_SIZE`
//! (compared as `sizeof` of the union of `struct evtchn_op`), the private `_pad` fields, and the 2-level
//! bitmap types. `EVTCHN_2L_NR_WORDS` is compared with `sizeof(xen_ulong_t) * 8`, the length of
//! `shared_info.evtchn_pending`. `EVTCHNOP_reset_cont` is Xen-internal (`#ifdef __XEN__`).

use blanket_conformance::{Entry, c_table, check, const_as, consts, layout};
use xen_abi::event_channel::{
    EVTCHN_2L_NR_WORDS, EVTCHN_OP_ARGS_SIZE, EventWord, EvtchnAllocUnbound, EvtchnBindInterdomain,
    EvtchnBindIpi, EvtchnBindPirq, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnExpandArray,
    EvtchnFifoControlBlock, EvtchnInitControl, EvtchnOp, EvtchnPort, EvtchnReset, EvtchnSend,
    EvtchnSetPriority, EvtchnStatus, EvtchnStatusInterdomain, EvtchnStatusU, EvtchnUnmask,
};

#[test]
fn layout_matches_event_channel_h() {
    let u = core::mem::offset_of!(EvtchnStatus, u);
    let rust = [
        const_as!("sizeof(evtchn_port_t)" = size_of::<EvtchnPort>()),
        const_as!("sizeof(event_word_t)" = size_of::<EventWord>()),
        layout!(EvtchnAllocUnbound => "struct evtchn_alloc_unbound" { dom, remote_dom, port }),
        layout!(EvtchnBindInterdomain => "struct evtchn_bind_interdomain" { remote_dom, remote_port, local_port }),
        layout!(EvtchnBindVirq => "struct evtchn_bind_virq" { virq, vcpu, port }),
        layout!(EvtchnBindPirq => "struct evtchn_bind_pirq" { pirq, flags, port }),
        layout!(EvtchnBindIpi => "struct evtchn_bind_ipi" { vcpu, port }),
        layout!(EvtchnClose => "struct evtchn_close" { port }),
        layout!(EvtchnSend => "struct evtchn_send" { port }),
        layout!(EvtchnStatus => "struct evtchn_status" { dom, port, status, vcpu, u }),
        vec![
            Entry::new("size:struct evtchn_status.u", size_of::<EvtchnStatusU>() as i64),
            Entry::new("align:struct evtchn_status.u", align_of::<EvtchnStatusU>() as i64),
            // `unbound.dom`, `pirq` and `virq` are the first bytes of the union (`EvtchnStatusU::unbound`,
            // `irq`); `interdomain` is the `EvtchnStatusInterdomain` view.
            Entry::new("offset:struct evtchn_status.u.unbound.dom", u as i64),
            Entry::new("offset:struct evtchn_status.u.pirq", u as i64),
            Entry::new("offset:struct evtchn_status.u.virq", u as i64),
            Entry::new("size:struct evtchn_status.u.interdomain", size_of::<EvtchnStatusInterdomain>() as i64),
            Entry::new("align:struct evtchn_status.u.interdomain", align_of::<EvtchnStatusInterdomain>() as i64),
            Entry::new(
                "offset:struct evtchn_status.u.interdomain.dom",
                (u + core::mem::offset_of!(EvtchnStatusInterdomain, dom)) as i64,
            ),
            Entry::new(
                "offset:struct evtchn_status.u.interdomain.port",
                (u + core::mem::offset_of!(EvtchnStatusInterdomain, port)) as i64,
            ),
        ],
        layout!(EvtchnBindVcpu => "struct evtchn_bind_vcpu" { port, vcpu }),
        layout!(EvtchnUnmask => "struct evtchn_unmask" { port }),
        layout!(EvtchnReset => "struct evtchn_reset" { dom }),
        layout!(EvtchnInitControl => "struct evtchn_init_control" { control_gfn, offset, vcpu, link_bits, _pad }),
        layout!(EvtchnExpandArray => "struct evtchn_expand_array" { array_gfn }),
        layout!(EvtchnSetPriority => "struct evtchn_set_priority" { port, priority }),
        layout!(EvtchnOp => "struct evtchn_op" { cmd, u }),
        vec![Entry::new("size:struct evtchn_op.u", EVTCHN_OP_ARGS_SIZE as i64)],
        layout!(EvtchnFifoControlBlock => "struct evtchn_fifo_control_block" { ready, _rsvd, head }),
        consts!(xen_abi::event_channel;
            EVTCHNOP_bind_interdomain, EVTCHNOP_bind_virq, EVTCHNOP_bind_pirq, EVTCHNOP_close, EVTCHNOP_send,
            EVTCHNOP_status, EVTCHNOP_alloc_unbound, EVTCHNOP_bind_ipi, EVTCHNOP_bind_vcpu, EVTCHNOP_unmask,
            EVTCHNOP_reset, EVTCHNOP_init_control, EVTCHNOP_expand_array, EVTCHNOP_set_priority,
            BIND_PIRQ__WILL_SHARE,
            EVTCHNSTAT_closed, EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain, EVTCHNSTAT_pirq, EVTCHNSTAT_virq,
            EVTCHNSTAT_ipi,
            EVTCHN_2L_NR_CHANNELS,
            EVTCHN_FIFO_PRIORITY_MAX, EVTCHN_FIFO_PRIORITY_DEFAULT, EVTCHN_FIFO_PRIORITY_MIN,
            EVTCHN_FIFO_MAX_QUEUES, EVTCHN_FIFO_PENDING, EVTCHN_FIFO_MASKED, EVTCHN_FIFO_LINKED,
            EVTCHN_FIFO_BUSY, EVTCHN_FIFO_LINK_BITS, EVTCHN_FIFO_LINK_MASK, EVTCHN_FIFO_NR_CHANNELS,
        ),
        const_as!("sizeof(xen_ulong_t) * 8" = EVTCHN_2L_NR_WORDS),
    ]
    .concat();
    check("event_channel", &c_table!(abi_table_event_channel), &rust);
}
