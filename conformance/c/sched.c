/* HYPERVISOR_sched_op (sched.h), x86-64. */
#include "abi_table.h"
#include <xen/xen.h>
#include <xen/sched.h>

static const struct abi_entry entries[] = {
    ABI_CONST(SCHEDOP_yield),
    ABI_CONST(SCHEDOP_block),
    ABI_CONST(SCHEDOP_shutdown),
    ABI_CONST(SCHEDOP_poll),
    ABI_CONST(SCHEDOP_remote_shutdown),
    ABI_CONST(SCHEDOP_shutdown_code),
    ABI_CONST(SCHEDOP_watchdog),
    ABI_CONST(SCHEDOP_pin_override),
    ABI_CONST(SHUTDOWN_poweroff),
    ABI_CONST(SHUTDOWN_reboot),
    ABI_CONST(SHUTDOWN_suspend),
    ABI_CONST(SHUTDOWN_crash),
    ABI_CONST(SHUTDOWN_watchdog),
    ABI_CONST(SHUTDOWN_soft_reset),
    ABI_CONST(SHUTDOWN_MAX),

    ABI_TYPE(struct sched_shutdown),
    ABI_OFFSET(struct sched_shutdown, reason),

    ABI_TYPE(struct sched_poll),
    ABI_OFFSET(struct sched_poll, ports),
    ABI_OFFSET(struct sched_poll, nr_ports),
    ABI_OFFSET(struct sched_poll, timeout),
    { "size:sched_poll.ports", (long long)sizeof(((struct sched_poll *)0)->ports) },

    ABI_TYPE(struct sched_remote_shutdown),
    ABI_OFFSET(struct sched_remote_shutdown, domain_id),
    ABI_OFFSET(struct sched_remote_shutdown, reason),

    ABI_TYPE(struct sched_watchdog),
    ABI_OFFSET(struct sched_watchdog, id),
    ABI_OFFSET(struct sched_watchdog, timeout),

    ABI_TYPE(struct sched_pin_override),
    ABI_OFFSET(struct sched_pin_override, pcpu),
};

ABI_TABLE(sched, entries)
