//! The vCPU thread: runs the guest, serves its hypercalls and reports its faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use xen_abi::hypercall::HypercallRegs;

use crate::builder::{EXCEPTION_PORT, EXCEPTION_STACK_TOP, HYPERCALL_PORT, HYPERCALL_STUB_LEN};
use crate::domain::{
    self, CrashKind, CrashReport, DomainCore, DomainExit, RunState, register_kick_target,
    thread_cpu_ns, unregister_kick_target,
};
use crate::hypercall::Outcome;

enum Exit {
    Hypercall,
    Exception,
    Io(String),
    Shutdown,
    Interrupted,
    Other(String),
    Error(String),
}

/// Runs vCPU 0 of `core` until the domain ends; records the end with [`domain::finish`].
pub(crate) fn run_vcpu(core: Arc<DomainCore>, vm: VmFd, mut vcpu: VcpuFd) {
    let immediate_exit: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    register_kick_target(&core, immediate_exit);
    vcpu.set_sync_valid_reg(SyncReg::Register);
    let exit = run_loop(&core, &mut vcpu);
    unregister_kick_target(&core);
    let cpu = thread_cpu_ns();
    drop(vcpu);
    drop(vm);
    domain::finish(&core, exit, cpu);
}

fn crash(vcpu: &VcpuFd, kind: CrashKind) -> DomainExit {
    let regs = vcpu.get_regs().unwrap_or_default();
    let cs = vcpu
        .get_sregs()
        .map(|s| u64::from(s.cs.selector))
        .unwrap_or(0);
    DomainExit::Crashed(CrashReport {
        kind,
        rip: regs.rip,
        rsp: regs.rsp,
        rax: regs.rax,
        rflags: regs.rflags,
        cs,
    })
}

fn run_loop(core: &DomainCore, vcpu: &mut VcpuFd) -> DomainExit {
    loop {
        {
            let mut c = core.lock();
            loop {
                if c.destroy {
                    return DomainExit::Destroyed;
                }
                if !c.paused {
                    break;
                }
                c.state = RunState::Paused;
                c = core.cv.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            c.state = RunState::Running;
            core.fire_timer_if_due(&mut c);
        }
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == HYPERCALL_PORT => Exit::Hypercall,
            Ok(VcpuExit::IoOut(port, _)) if port == EXCEPTION_PORT => Exit::Exception,
            Ok(VcpuExit::IoOut(port, data)) => {
                Exit::Io(format!("out to port {port:#x} ({} bytes)", data.len()))
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                Exit::Io(format!("in from port {port:#x} ({} bytes)", data.len()))
            }
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::MmioRead(addr, _)) => {
                Exit::Other(format!("MMIO read at guest-physical {addr:#x}"))
            }
            Ok(VcpuExit::MmioWrite(addr, _)) => {
                Exit::Other(format!("MMIO write at guest-physical {addr:#x}"))
            }
            Ok(VcpuExit::Hlt) => Exit::Other("HLT".into()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Other(format!(
                "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            )),
            Ok(VcpuExit::InternalError) => {
                Exit::Other("KVM internal error (emulation failure)".into())
            }
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR => Exit::Interrupted,
            Err(e) if e.errno() == libc::EAGAIN => continue,
            Err(e) => Exit::Error(e.to_string()),
        };
        core.stats.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Exit::Interrupted => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Exit::Hypercall => {
                let r = vcpu.sync_regs().regs;
                let page = core.layout.kernel.hypercall_page;
                // KVM reports the exit at the `out` (or just after it): either way inside the page, at the
                // stub of the number in rax.
                let off = r.rip.wrapping_sub(page);
                let stub_ok = off < 4096
                    && matches!(off % 32, 5 | 7)
                    && off / 32 == r.rax
                    && (off % 32) < HYPERCALL_STUB_LEN;
                if !stub_ok {
                    return crash(
                        vcpu,
                        CrashKind::BadHypercall(format!(
                            "the hypercall port was written from rip {:#x}, outside the hypercall page's stubs at {page:#x} (rax {:#x}); guests must call hypercall_page + n * 32",
                            r.rip, r.rax
                        )),
                    );
                }
                core.stats.hypercalls.fetch_add(1, Ordering::Relaxed);
                let regs = HypercallRegs {
                    rax: r.rax,
                    rdi: r.rdi,
                    rsi: r.rsi,
                    rdx: r.rdx,
                    r10: r.r10,
                    r8: r.r8,
                };
                match crate::hypercall::dispatch(core, &regs) {
                    Outcome::Return(v) => {
                        vcpu.sync_regs_mut().regs.rax = v as u64;
                        vcpu.set_sync_dirty_reg(SyncReg::Register);
                    }
                    Outcome::Exit(e) => return e,
                }
            }
            Exit::Exception => {
                let r = vcpu.sync_regs().regs;
                // The stub pushed [vector, error code] over the CPU's [rip, cs, rflags, rsp, ss].
                let frame_ok =
                    r.rsp >= EXCEPTION_STACK_TOP - 0x2000 && r.rsp + 56 <= EXCEPTION_STACK_TOP;
                let word = |i: u64| {
                    if frame_ok {
                        core.ram.read_u64(r.rsp + 8 * i).unwrap_or(0)
                    } else {
                        0
                    }
                };
                let cr2 = vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
                let vector = word(0) as u8;
                return DomainExit::Crashed(CrashReport {
                    kind: CrashKind::Exception {
                        vector,
                        error_code: word(1),
                        cr2,
                    },
                    rip: word(2),
                    cs: word(3),
                    rflags: word(4),
                    rsp: word(5),
                    rax: r.rax,
                });
            }
            Exit::Shutdown => return crash(vcpu, CrashKind::TripleFault),
            Exit::Io(why) | Exit::Other(why) => return crash(vcpu, CrashKind::UnexpectedExit(why)),
            Exit::Error(why) => return crash(vcpu, CrashKind::KvmError(why)),
        }
    }
}
