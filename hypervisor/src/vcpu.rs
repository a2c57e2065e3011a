//! The vCPU thread: runs the guest, serves its hypercalls and reports its faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use xen_abi::hypercall::HypercallRegs;

use crate::builder::{
    EXCEPTION_PORT, EXCEPTION_STACK_TOP, HYPERCALL_PORT, STUBS_BASE, stub_out_offset,
};
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

/// Delivers an event upcall if one is due: the guest registered an event callback, an upcall is pending
/// and not masked. Xen's x86-64 bounce frame goes on the guest's stack (16-byte aligned, as Xen does):
/// `rcx, r11, rip, cs (saved upcall mask in bits 32-39), rflags, rsp, ss`, lowest first; the guest continues
/// at the callback with the upcall masked.
fn bounce_upcall(core: &DomainCore, vcpu: &mut VcpuFd) -> Result<bool, String> {
    let cb = core.event_callback.load(Ordering::SeqCst);
    let mask = core.shared.upcall_mask();
    if cb == 0 || !core.shared.upcall_pending() || mask.load(Ordering::SeqCst) != 0 {
        return Ok(false);
    }
    let regs = vcpu.sync_regs().regs;
    if (STUBS_BASE..STUBS_BASE + crate::memory::PAGE_SIZE).contains(&regs.rip) {
        // Kicked while in a ring-0 exception stub (the only ring-0 code): deliver once the exception has
        // been bounced or reported and the vCPU is back in ring 3.
        return Ok(false);
    }
    let top = regs.rsp & !0xf;
    let frame = top.wrapping_sub(56);
    if top < 56 || !core.layout.guest_writable(&core.ram, frame, 56) {
        return Err(format!(
            "cannot deliver an event upcall: the guest's stack pointer {:#x} is not writable guest memory",
            regs.rsp
        ));
    }
    let words = [
        regs.rcx,
        regs.r11,
        regs.rip,
        u64::from(crate::x86::FLAT_RING3_CS64),
        regs.rflags,
        regs.rsp,
        u64::from(crate::x86::FLAT_RING3_SS64),
    ];
    let mut bytes = [0u8; 56];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    core.ram.write(frame, &bytes).map_err(|e| e.to_string())?;
    mask.store(1, Ordering::SeqCst);
    let r = &mut vcpu.sync_regs_mut().regs;
    r.rsp = frame;
    r.rip = cb;
    r.rflags &= !(1 << 8); // TF
    vcpu.set_sync_dirty_reg(SyncReg::Register);
    core.stats.upcalls.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}

/// Bounces an exception to the guest's handler from `set_trap_table`, as Xen does for PV guests: Xen's
/// x86-64 frame `rcx, r11, [error code], rip, cs, rflags, rsp, ss` goes on the guest's stack (16-byte
/// aligned), CR2 into `vcpu_info.arch.cr2` for a page fault, events are masked if the entry says so.
/// Returns where the vCPU continues (`rip`, `rsp`, `rflags`, in ring 3), or `None` if there is no handler
/// (or the fault did not come from the guest's ring 3), so the caller stops the domain.
fn bounce_exception(
    core: &DomainCore,
    regs: &kvm_bindings::kvm_regs,
    frame: [u64; 7],
    cr2: u64,
) -> Result<Option<(u64, u64, u64)>, String> {
    let [vector, error_code, rip, cs, rflags, rsp, ss] = frame;
    let Some((handler, flags)) =
        core.traps.lock().unwrap_or_else(|e| e.into_inner())[(vector & 0xff) as usize]
    else {
        return Ok(None);
    };
    if cs != u64::from(crate::x86::FLAT_RING3_CS64) || vector > 31 {
        return Ok(None);
    }
    let mut words = vec![regs.rcx, regs.r11];
    if crate::x86::vector_has_error_code(vector as u8) {
        words.push(error_code);
    }
    words.extend_from_slice(&[rip, cs, rflags, rsp, ss]);
    let len = words.len() as u64 * 8;
    let top = rsp & !0xf;
    let at = top.wrapping_sub(len);
    if top < len || !core.layout.guest_writable(&core.ram, at, len) {
        return Err(format!(
            "cannot bounce exception {vector} to the guest's handler {handler:#x}: its stack pointer {rsp:#x} is not writable guest memory"
        ));
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    core.ram.write(at, &bytes).map_err(|e| e.to_string())?;
    if vector == 14 {
        core.shared.set_cr2(cr2);
    }
    if flags & 4 != 0 {
        core.shared.upcall_mask().store(1, Ordering::SeqCst);
    }
    core.stats.bounces.fetch_add(1, Ordering::Relaxed);
    Ok(Some((handler, at, rflags & !(1 << 8))))
}

/// Moves the vCPU out of a ring-0 exception stub straight to ring-3 code at `rip` with `rsp` and `rflags`
/// (cheaper than letting the stub's emulated `iretq` run, and it never leaves the vCPU in ring 0 when an
/// upcall is delivered next).
fn leave_stub(
    vcpu: &mut VcpuFd,
    ring3: &kvm_bindings::kvm_sregs,
    rip: u64,
    rsp: u64,
    rflags: u64,
) -> Result<(), String> {
    // Let KVM complete the stub's `out` first, without running the guest.
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
    let mut s = vcpu.get_sregs().map_err(|e| e.to_string())?;
    s.cs = ring3.cs;
    s.ss = ring3.ss;
    vcpu.set_sregs(&s).map_err(|e| e.to_string())?;
    let r = &mut vcpu.sync_regs_mut().regs;
    r.rip = rip;
    r.rsp = rsp;
    r.rflags = rflags;
    vcpu.set_sync_dirty_reg(SyncReg::Register);
    Ok(())
}

fn run_loop(core: &DomainCore, vcpu: &mut VcpuFd) -> DomainExit {
    // The guest's ring-3 segments, as the builder set them: where a bounced exception continues.
    let ring3 = match vcpu.get_sregs() {
        Ok(s) => s,
        Err(e) => return crash(vcpu, CrashKind::KvmError(format!("KVM_GET_SREGS: {e}"))),
    };
    // Whether the last exit was a hypercall's `out`, which KVM completes (moving rip past it) on the next
    // KVM_RUN.
    let mut pio_pending = false;
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
            let _ = core.fire_timer_if_due(&mut c);
        }
        if core.event_callback.load(Ordering::SeqCst) != 0 && core.shared.upcall_pending() {
            if pio_pending {
                // Let KVM complete the `out` first (rip moves past it), without running the guest.
                vcpu.set_kvm_immediate_exit(1);
                let _ = vcpu.run();
                vcpu.set_kvm_immediate_exit(0);
                pio_pending = false;
            }
            if let Err(why) = bounce_upcall(core, vcpu) {
                return crash(vcpu, CrashKind::Failsafe(why));
            }
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
        pio_pending = matches!(exit, Exit::Hypercall);
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
                let out_at = stub_out_offset(r.rax);
                let stub_ok = off < 4096
                    && off / 32 == r.rax
                    && matches!(off % 32, o if o == out_at || o == out_at + 2);
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
                match crate::hypercall::dispatch(core, &regs, r.rsp) {
                    Outcome::Return(v) => {
                        vcpu.sync_regs_mut().regs.rax = v as u64;
                        vcpu.set_sync_dirty_reg(SyncReg::Register);
                    }
                    Outcome::Exit(e) => return e,
                    Outcome::Iret(f) => {
                        // Complete the `out` first (KVM moves rip past it), then load the frame.
                        vcpu.set_kvm_immediate_exit(1);
                        let _ = vcpu.run();
                        vcpu.set_kvm_immediate_exit(0);
                        pio_pending = false;
                        let regs = &mut vcpu.sync_regs_mut().regs;
                        regs.rax = f.rax;
                        regs.r11 = f.r11;
                        regs.rcx = f.rcx;
                        regs.rip = f.rip;
                        regs.rsp = f.rsp;
                        regs.rflags = f.rflags;
                        vcpu.set_sync_dirty_reg(SyncReg::Register);
                        continue;
                    }
                    Outcome::Crash(why) => return crash(vcpu, CrashKind::BadHypercall(why)),
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
                let frame = [
                    word(0),
                    word(1),
                    word(2),
                    word(3),
                    word(4),
                    word(5),
                    word(6),
                ];
                let vector = frame[0] as u8;
                match bounce_exception(core, &r, frame, cr2) {
                    Ok(Some((rip, rsp, rflags))) => {
                        if let Err(why) = leave_stub(vcpu, &ring3, rip, rsp, rflags) {
                            return crash(vcpu, CrashKind::KvmError(why));
                        }
                        pio_pending = false;
                        continue;
                    }
                    Ok(None) => {}
                    Err(why) => return crash(vcpu, CrashKind::Failsafe(why)),
                }
                return DomainExit::Crashed(CrashReport {
                    kind: CrashKind::Exception {
                        vector,
                        error_code: frame[1],
                        cr2,
                    },
                    rip: frame[2],
                    cs: frame[3],
                    rflags: frame[4],
                    rsp: frame[5],
                    rax: r.rax,
                });
            }
            Exit::Shutdown => return crash(vcpu, CrashKind::TripleFault),
            Exit::Io(why) | Exit::Other(why) => return crash(vcpu, CrashKind::UnexpectedExit(why)),
            Exit::Error(why) => return crash(vcpu, CrashKind::KvmError(why)),
        }
    }
}
