//! The vCPU thread: runs the guest, serves its hypercalls and reports its faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use xen_abi::hypercall::HypercallRegs;

use crate::builder::{
    EXCEPTION_PORT, HYPERCALL_PORT, STUBS_BASE, stub_out_offset, vcpu_exception_stack_size,
    vcpu_exception_stack_top,
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

/// Runs vCPU `id` of `core` until the domain ends; records the end with [`domain::finish`].
pub(crate) fn run_vcpu(core: Arc<DomainCore>, id: u32, vm: Arc<VmFd>, mut vcpu: VcpuFd) {
    let immediate_exit: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    register_kick_target(&core, id, immediate_exit);
    vcpu.set_sync_valid_reg(SyncReg::Register);
    let mut v = Vcpu {
        id,
        fd: vcpu,
        vm: &vm,
    };
    let exit = run_loop(&core, &mut v);
    unregister_kick_target(&core, id);
    let cpu = thread_cpu_ns();
    drop(v);
    drop(vm);
    domain::finish(&core, id, exit, cpu);
}

/// One vCPU as its thread sees it.
pub(crate) struct Vcpu<'a> {
    /// The vCPU id.
    pub(crate) id: u32,
    /// Its KVM fd.
    pub(crate) fd: VcpuFd,
    /// The domain's VM.
    #[allow(dead_code)]
    pub(crate) vm: &'a VmFd,
}

fn crash(v: &Vcpu<'_>, kind: CrashKind) -> DomainExit {
    let vcpu = &v.fd;
    let regs = vcpu.get_regs().unwrap_or_default();
    let cs = vcpu
        .get_sregs()
        .map(|s| u64::from(s.cs.selector))
        .unwrap_or(0);
    DomainExit::Crashed(CrashReport {
        vcpu: v.id,
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
fn bounce_upcall(core: &DomainCore, id: u32, vcpu: &mut VcpuFd) -> Result<bool, String> {
    let cb = core.event_callback[id as usize].load(Ordering::SeqCst);
    let mask = core.shared.upcall_mask(id);
    if cb == 0 || !core.shared.upcall_pending(id) || mask.load(Ordering::SeqCst) != 0 {
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
    if top < 56 || !core.guest_writable(frame, 56) {
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
    id: u32,
    regs: &kvm_bindings::kvm_regs,
    frame: [u64; 7],
    cr2: u64,
) -> Result<Option<(u64, u64, u64)>, String> {
    let [vector, error_code, rip, cs, rflags, rsp, ss] = frame;
    let Some((handler, flags)) = core.traps[id as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner())[(vector & 0xff) as usize]
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
    if top < len || !core.guest_writable(at, len) {
        return Err(format!(
            "cannot bounce exception {vector} to the guest's handler {handler:#x}: its stack pointer {rsp:#x} is not writable guest memory"
        ));
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    core.ram.write(at, &bytes).map_err(|e| e.to_string())?;
    if vector == 14 {
        core.shared.set_cr2(id, cr2);
    }
    if flags & 4 != 0 {
        core.shared.upcall_mask(id).store(1, Ordering::SeqCst);
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

/// Waits until vCPU `id` may run (up, not paused); loads a context given by `VCPUOP_initialise` first.
/// Returns `Some(exit)` if the domain is being destroyed.
fn wait_runnable(core: &DomainCore, v: &mut Vcpu<'_>) -> Result<(), DomainExit> {
    let id = v.id as usize;
    let mut c = core.lock();
    loop {
        if c.destroy {
            return Err(DomainExit::Destroyed);
        }
        let up = c.vcpus[id].up;
        if !c.paused && up {
            break;
        }
        let st = if up {
            RunState::Paused
        } else {
            RunState::Created
        };
        c.vcpus[id].state = Some(st);
        if id == 0 {
            c.state = st;
        }
        c = core.cv.wait(c).unwrap_or_else(|e| e.into_inner());
    }
    c.vcpus[id].state = Some(RunState::Running);
    if id == 0 {
        c.state = RunState::Running;
    }
    let pending = c.vcpus[id].pending.take();
    let flush = std::mem::take(&mut c.vcpus[id].flush);
    if let Some(n) = core.fire_timer_if_due(&mut c, v.id) {
        drop(c);
        core.after_send(n, v.id);
    } else {
        drop(c);
    }
    if let Some(ctx) = pending {
        if let Err(why) = load_context(v, &ctx) {
            return Err(crash(v, CrashKind::KvmError(why)));
        }
    } else if flush && let Err(why) = crate::hypercall::flush_tlb(&v.fd) {
        return Err(crash(v, CrashKind::KvmError(why)));
    }
    Ok(())
}

/// Loads a validated `VCPUOP_initialise` context into the vCPU.
fn load_context(v: &mut Vcpu<'_>, ctx: &crate::hypercall::InitialState) -> Result<(), String> {
    let mut s = v.fd.get_sregs().map_err(|e| e.to_string())?;
    s.cr3 = ctx.cr3;
    s.fs.base = ctx.fs_base;
    s.gs.base = ctx.gs_base;
    v.fd.set_sregs(&s).map_err(|e| e.to_string())?;
    v.fd.set_regs(&ctx.regs).map_err(|e| e.to_string())?;
    // The registers just set are what sync_regs holds from now on.
    v.fd.sync_regs_mut().regs = ctx.regs;
    v.fd.set_sync_dirty_reg(SyncReg::Register);
    Ok(())
}

fn run_loop(core: &DomainCore, v: &mut Vcpu<'_>) -> DomainExit {
    let id = v.id;
    if let Err(e) = wait_runnable(core, v) {
        return e;
    }
    // The guest's ring-3 segments, as the builder set them: where a bounced exception continues.
    let ring3 = match v.fd.get_sregs() {
        Ok(s) => s,
        Err(e) => return crash(v, CrashKind::KvmError(format!("KVM_GET_SREGS: {e}"))),
    };
    // Whether the last exit was a hypercall's `out`, which KVM completes (moving rip past it) on the next
    // KVM_RUN.
    let mut pio_pending = false;
    loop {
        if pio_pending && core.lock().vcpus[id as usize].pending.is_some() {
            // A new context replaces the registers: complete the `out` first.
            let vcpu = &mut v.fd;
            vcpu.set_kvm_immediate_exit(1);
            let _ = vcpu.run();
            vcpu.set_kvm_immediate_exit(0);
            pio_pending = false;
        }
        if let Err(e) = wait_runnable(core, v) {
            return e;
        }
        if core.event_callback[id as usize].load(Ordering::SeqCst) != 0
            && core.shared.upcall_pending(id)
        {
            let vcpu = &mut v.fd;
            if pio_pending {
                // Let KVM complete the `out` first (rip moves past it), without running the guest.
                vcpu.set_kvm_immediate_exit(1);
                let _ = vcpu.run();
                vcpu.set_kvm_immediate_exit(0);
                pio_pending = false;
            }
            if let Err(why) = bounce_upcall(core, id, vcpu) {
                return crash(v, CrashKind::Failsafe(why));
            }
        }
        let vcpu = &mut v.fd;
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
                        v,
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
                match crate::hypercall::dispatch(core, id, &regs, r.rsp) {
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
                    Outcome::Crash(why) => return crash(v, CrashKind::BadHypercall(why)),
                }
            }
            Exit::Exception => {
                let r = vcpu.sync_regs().regs;
                // The stub pushed [vector, error code] over the CPU's [rip, cs, rflags, rsp, ss].
                let top = vcpu_exception_stack_top(id);
                let frame_ok = r.rsp >= top - vcpu_exception_stack_size(id) && r.rsp + 56 <= top;
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
                match bounce_exception(core, id, &r, frame, cr2) {
                    Ok(Some((rip, rsp, rflags))) => {
                        if let Err(why) = leave_stub(vcpu, &ring3, rip, rsp, rflags) {
                            return crash(v, CrashKind::KvmError(why));
                        }
                        pio_pending = false;
                        continue;
                    }
                    Ok(None) => {}
                    Err(why) => return crash(v, CrashKind::Failsafe(why)),
                }
                return DomainExit::Crashed(CrashReport {
                    vcpu: id,
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
            Exit::Shutdown => return crash(v, CrashKind::TripleFault),
            Exit::Io(why) | Exit::Other(why) => return crash(v, CrashKind::UnexpectedExit(why)),
            Exit::Error(why) => return crash(v, CrashKind::KvmError(why)),
        }
    }
}
