//! `xen_abi::sched` against `sched.h`.

use blanket_conformance::{Entry, c_table, check, layout};
#[allow(clippy::wildcard_imports)]
use xen_abi::sched::*;

/// Constants whose Rust name equals the C name, from the module imported above.
#[test]
fn sched_h_matches() {
    let poll = SchedPoll::new(0, 0, 0);
    let rust = [
        blanket_conformance::consts!(
            SCHEDOP_yield,
            SCHEDOP_block,
            SCHEDOP_shutdown,
            SCHEDOP_poll,
            SCHEDOP_remote_shutdown,
            SCHEDOP_shutdown_code,
            SCHEDOP_watchdog,
            SCHEDOP_pin_override,
            SHUTDOWN_poweroff,
            SHUTDOWN_reboot,
            SHUTDOWN_suspend,
            SHUTDOWN_crash,
            SHUTDOWN_watchdog,
            SHUTDOWN_soft_reset,
            SHUTDOWN_MAX,
        ),
        layout!(SchedShutdown => "struct sched_shutdown" { reason }),
        layout!(SchedPoll => "struct sched_poll" { ports, nr_ports, timeout }),
        vec![Entry::new(
            "size:sched_poll.ports",
            size_of_val(&poll.ports) as i64,
        )],
        layout!(SchedRemoteShutdown => "struct sched_remote_shutdown" { domain_id, reason }),
        layout!(SchedWatchdog => "struct sched_watchdog" { id, timeout }),
        layout!(SchedPinOverride => "struct sched_pin_override" { pcpu }),
    ]
    .concat();
    check("sched", &c_table!(abi_table_sched), &rust);
}

/// The typed enums cover exactly the C values.
#[test]
fn enums_cover_every_c_value() {
    let c = c_table!(abi_table_sched);
    let values = |prefix: &str| -> Vec<u32> {
        c.iter()
            .filter(|e| e.key.starts_with(prefix) && e.key != "const:SHUTDOWN_MAX")
            .map(|e| e.value as u32)
            .collect()
    };
    let ops = values("const:SCHEDOP_");
    assert_eq!(ops.len(), SchedOp::ALL.len());
    for v in ops {
        assert_eq!(SchedOp::try_from(v).map(u32::from), Ok(v));
    }
    let reasons = values("const:SHUTDOWN_");
    assert_eq!(reasons.len(), ShutdownReason::ALL.len());
    for v in reasons {
        assert_eq!(ShutdownReason::try_from(v).map(u32::from), Ok(v));
    }
    assert_eq!(
        ShutdownReason::try_from(SHUTDOWN_MAX + 1),
        Err(SchedError::UnknownShutdownReason(SHUTDOWN_MAX + 1))
    );
}
