//! The Blanket hypervisor: Xen x86-64 PV guests on KVM.
pub mod builder;
pub mod domain;
pub mod elf;
pub mod evtchn;
pub mod guest;
pub mod hypercall;
pub mod memory;
pub mod shared;
mod vcpu;
pub mod x86;

pub use domain::{
    ConsoleSink, CrashKind, CrashReport, Domain, DomainConfig, DomainError, DomainExit, Hypervisor,
    RunState, StatsSnapshot,
};
