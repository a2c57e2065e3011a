//! `HYPERVISOR_sched_op`: yield, block, shutdown, poll and friends (`sched.h`), x86-64 layout.
//!
//! The sub-command is [`SchedOp`] (`SCHEDOP_*`); its argument is one of the structures here, copied out
//! of guest memory once and then validated: [`SchedShutdown::reason`] and
//! [`SchedRemoteShutdown::reason`] decode the [`ShutdownReason`], [`SchedPoll::validate`] bounds the port
//! list.
#![forbid(unsafe_code)]
#![allow(non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::DomId;
use crate::hypercall::abi_enum;

/// The errors of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `SCHEDOP_*` command that `sched.h` does not define.
    #[error("unknown sched_op cmd {0} (sched.h defines 0-7)")]
    UnknownSchedOp(u32),
    /// A `SHUTDOWN_*` reason that `sched.h` does not define.
    #[error("unknown shutdown reason {0} (sched.h defines 0-5, SHUTDOWN_MAX is 5)")]
    UnknownShutdownReason(u32),
    /// `sched_poll.nr_ports` above the limit.
    #[error("sched_poll nr_ports {nr_ports} is above the limit of {max} ports")]
    TooManyPollPorts {
        /// The guest's `nr_ports`.
        nr_ports: u32,
        /// The limit.
        max: u32,
    },
    /// `sched_poll.ports` is a null handle with ports to read.
    #[error("sched_poll ports is a null guest handle but nr_ports is {0}")]
    NullPollPorts(u32),
    /// The port array runs past the end of the address space.
    #[error(
        "sched_poll ports array at {ports:#x} with {nr_ports} 4-byte ports wraps past the end of the address space"
    )]
    PollPortsOverflow {
        /// The guest's `ports` handle.
        ports: u64,
        /// The guest's `nr_ports`.
        nr_ports: u32,
    },
}

/// The error of this module, under a name that says where it comes from.
pub type SchedError = Error;

/// `SCHEDOP_yield` in `sched.h`: voluntarily yield the CPU.
pub const SCHEDOP_yield: u32 = 0;
/// `SCHEDOP_block` in `sched.h`: block until an event arrives.
pub const SCHEDOP_block: u32 = 1;
/// `SCHEDOP_shutdown` in `sched.h`: stop executing this domain (`struct sched_shutdown`).
pub const SCHEDOP_shutdown: u32 = 2;
/// `SCHEDOP_poll` in `sched.h`: block until one of a set of ports is pending (`struct sched_poll`).
pub const SCHEDOP_poll: u32 = 3;
/// `SCHEDOP_remote_shutdown` in `sched.h`: shut another domain down (`struct sched_remote_shutdown`).
pub const SCHEDOP_remote_shutdown: u32 = 4;
/// `SCHEDOP_shutdown_code` in `sched.h`: record the shutdown code without shutting down.
pub const SCHEDOP_shutdown_code: u32 = 5;
/// `SCHEDOP_watchdog` in `sched.h`: set up or kick a watchdog (`struct sched_watchdog`).
pub const SCHEDOP_watchdog: u32 = 6;
/// `SCHEDOP_pin_override` in `sched.h`: pin the vCPU to a physical CPU temporarily (`struct
/// sched_pin_override`).
pub const SCHEDOP_pin_override: u32 = 7;

abi_enum! {
    /// The sub-command of `HYPERVISOR_sched_op` (`enum sched_op`, `SCHEDOP_*` in `sched.h`).
    pub enum SchedOp: u32, |raw| Error::UnknownSchedOp(raw);
    {
        /// `SCHEDOP_yield`.
        Yield = SCHEDOP_yield,
        /// `SCHEDOP_block`.
        Block = SCHEDOP_block,
        /// `SCHEDOP_shutdown`.
        Shutdown = SCHEDOP_shutdown,
        /// `SCHEDOP_poll`.
        Poll = SCHEDOP_poll,
        /// `SCHEDOP_remote_shutdown`.
        RemoteShutdown = SCHEDOP_remote_shutdown,
        /// `SCHEDOP_shutdown_code`.
        ShutdownCode = SCHEDOP_shutdown_code,
        /// `SCHEDOP_watchdog`.
        Watchdog = SCHEDOP_watchdog,
        /// `SCHEDOP_pin_override`.
        PinOverride = SCHEDOP_pin_override,
    }
}

/// `SHUTDOWN_poweroff` in `sched.h`: the domain exited normally; clean up and kill.
pub const SHUTDOWN_poweroff: u32 = 0;
/// `SHUTDOWN_reboot` in `sched.h`: clean up, kill, and restart.
pub const SHUTDOWN_reboot: u32 = 1;
/// `SHUTDOWN_suspend` in `sched.h`: clean up, save suspend info, kill.
pub const SHUTDOWN_suspend: u32 = 2;
/// `SHUTDOWN_crash` in `sched.h`: the domain crashed.
pub const SHUTDOWN_crash: u32 = 3;
/// `SHUTDOWN_watchdog` in `sched.h`: restart because the watchdog expired.
pub const SHUTDOWN_watchdog: u32 = 4;
/// `SHUTDOWN_soft_reset` in `sched.h`: reset the domain without tearing it down.
pub const SHUTDOWN_soft_reset: u32 = 5;
/// `SHUTDOWN_MAX` in `sched.h`: the largest valid reason.
pub const SHUTDOWN_MAX: u32 = 5;

abi_enum! {
    /// Why a domain shuts down (`enum sched_shutdown_reason`, `SHUTDOWN_*` in `sched.h`).
    pub enum ShutdownReason: u32, |raw| Error::UnknownShutdownReason(raw);
    {
        /// `SHUTDOWN_poweroff`.
        Poweroff = SHUTDOWN_poweroff,
        /// `SHUTDOWN_reboot`.
        Reboot = SHUTDOWN_reboot,
        /// `SHUTDOWN_suspend`.
        Suspend = SHUTDOWN_suspend,
        /// `SHUTDOWN_crash`.
        Crash = SHUTDOWN_crash,
        /// `SHUTDOWN_watchdog`.
        Watchdog = SHUTDOWN_watchdog,
        /// `SHUTDOWN_soft_reset`.
        SoftReset = SHUTDOWN_soft_reset,
    }
}

/// The argument of `SCHEDOP_shutdown` and `SCHEDOP_shutdown_code`: `struct sched_shutdown` in `sched.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedShutdown {
    /// The reason (`SHUTDOWN_*`).
    pub reason: u32,
}

impl SchedShutdown {
    /// The argument for `reason`.
    pub const fn new(reason: ShutdownReason) -> Self {
        Self {
            reason: reason.raw(),
        }
    }

    /// Decodes the reason of this copy.
    pub fn reason(&self) -> Result<ShutdownReason, Error> {
        ShutdownReason::try_from(self.reason)
    }
}

/// The largest `nr_ports` Xen accepts in `SCHEDOP_poll` (it fails larger counts with `-EINVAL`). No C
/// constant: the limit lives in Xen's scheduler.
pub const SCHED_POLL_MAX_PORTS: u32 = 128;

/// The argument of `SCHEDOP_poll`: `struct sched_poll` in `sched.h`, x86-64 layout (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedPoll {
    /// Guest handle (pointer) to an array of `nr_ports` `evtchn_port_t` (`u32`).
    pub ports: u64,
    /// The number of ports.
    pub nr_ports: u32,
    _pad0: [u8; 4],
    /// Absolute system time (ns) at which to stop waiting; 0 for no timeout.
    pub timeout: u64,
}

/// A validated [`SchedPoll`]: where the port array is and how long it is. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollRequest {
    /// The guest address of the port array.
    pub ports: u64,
    /// The number of ports, at most the caller's limit.
    pub nr_ports: u32,
    /// The length of the port array in bytes (`nr_ports * 4`).
    pub ports_len: u64,
    /// The timeout (absolute system time in ns), `None` for none.
    pub timeout: Option<u64>,
}

impl SchedPoll {
    /// The argument, its padding zeroed.
    pub const fn new(ports: u64, nr_ports: u32, timeout: u64) -> Self {
        Self {
            ports,
            nr_ports,
            _pad0: [0; 4],
            timeout,
        }
    }

    /// Validates this copy: at most `max_ports` ports (Xen uses [`SCHED_POLL_MAX_PORTS`]), a non-null
    /// array if there are ports, and an array that does not wrap around the address space.
    pub fn validate(&self, max_ports: u32) -> Result<PollRequest, Error> {
        let nr_ports = self.nr_ports;
        if nr_ports > max_ports {
            return Err(Error::TooManyPollPorts {
                nr_ports,
                max: max_ports,
            });
        }
        if nr_ports > 0 && self.ports == 0 {
            return Err(Error::NullPollPorts(nr_ports));
        }
        let ports_len = u64::from(nr_ports) * 4;
        if self.ports.checked_add(ports_len).is_none() {
            return Err(Error::PollPortsOverflow {
                ports: self.ports,
                nr_ports,
            });
        }
        Ok(PollRequest {
            ports: self.ports,
            nr_ports,
            ports_len,
            timeout: if self.timeout == 0 {
                None
            } else {
                Some(self.timeout)
            },
        })
    }
}

/// The argument of `SCHEDOP_remote_shutdown`: `struct sched_remote_shutdown` in `sched.h` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedRemoteShutdown {
    /// The domain to shut down.
    pub domain_id: DomId,
    _pad0: [u8; 2],
    /// The reason (`SHUTDOWN_*`).
    pub reason: u32,
}

impl SchedRemoteShutdown {
    /// The argument, its padding zeroed.
    pub const fn new(domain_id: DomId, reason: ShutdownReason) -> Self {
        Self {
            domain_id,
            _pad0: [0; 2],
            reason: reason.raw(),
        }
    }

    /// Decodes the reason of this copy.
    pub fn reason(&self) -> Result<ShutdownReason, Error> {
        ShutdownReason::try_from(self.reason)
    }
}

/// The argument of `SCHEDOP_watchdog`: `struct sched_watchdog` in `sched.h` (8 bytes).
///
/// `id == 0` allocates a watchdog with `timeout` seconds and returns its id; a non-zero `id` kicks that
/// watchdog, or destroys it when `timeout` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedWatchdog {
    /// The watchdog id (0: allocate a new one).
    pub id: u32,
    /// The timeout in seconds (0 with a non-zero id: destroy).
    pub timeout: u32,
}

/// The argument of `SCHEDOP_pin_override`: `struct sched_pin_override` in `sched.h` (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedPinOverride {
    /// The physical CPU to pin to; negative to remove the override.
    pub pcpu: i32,
}
