//! The hypercalls: decoding the registers, copying arguments in and results out of guest memory (checked
//! against what the guest may read or write), and serving each call with Xen's numbers and layouts.
//!
//! A pointer that is not inside guest memory the guest itself may access gives `-EFAULT`; an unknown
//! hypercall or sub-command gives `-ENOSYS` (or `-EINVAL` where Xen says so), never a hypervisor crash.
#![allow(non_upper_case_globals)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use xen_abi::event_channel::{self as ev, EvtchnStatusKind};
use xen_abi::grant_table as gt;
use xen_abi::hypercall::{Hypercall, HypercallRegs};
use xen_abi::sched::{self, SchedPoll, SchedShutdown, ShutdownReason};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::builder::MAX_GRANT_FRAMES;
use crate::domain::{DomainCore, DomainExit, RunState};
use crate::evtchn::*;
use crate::memory::PAGE_SIZE;

/// What serving a hypercall decided.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Return this value in `rax` (a negative errno for an error).
    Return(i64),
    /// The domain ends.
    Exit(DomainExit),
    /// `HYPERVISOR_iret`: load these registers (the call does not return).
    Iret(IretFrame),
    /// The call broke the ABI in a way that stops the guest.
    Crash(String),
}

/// What `HYPERVISOR_iret` restores: `struct iret_context` of `arch-x86/xen-x86_64.h` without the segment
/// selectors (which must be the flat ring-3 ones) and `flags`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IretFrame {
    pub(crate) rax: u64,
    pub(crate) r11: u64,
    pub(crate) rcx: u64,
    pub(crate) rip: u64,
    pub(crate) rflags: u64,
    pub(crate) rsp: u64,
}

/// The Xen version this hypervisor reports (`XENVER_version`): 4.17, the version of the headers `xen-abi`
/// is checked against.
pub const XEN_VERSION: (u16, u16) = (4, 17);
/// `HYPERVISOR_VIRT_START` of x86-64 PV, reported by `XENVER_platform_parameters`.
pub const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// The largest `console_io` write served in one call.
pub const CONSOLE_IO_MAX: u64 = 64 << 10;

type R = Result<i64, Errno>;

impl DomainCore {
    fn copy_in<T: FromBytes + IntoBytes>(&self, addr: u64) -> Result<T, Errno> {
        if !self
            .layout
            .guest_readable(&self.ram, addr, size_of::<T>() as u64)
        {
            return Err(EFAULT);
        }
        self.ram.read_obj(addr).map_err(|_| EFAULT)
    }

    /// Whether the guest may write `addr..addr+len`: guest memory it may read, and none of its page
    /// tables. Everything the hypervisor writes on a guest's behalf is checked with this.
    pub(crate) fn guest_writable(&self, addr: u64, len: u64) -> bool {
        self.layout.guest_writable(&self.ram, addr, len)
    }

    fn copy_out<T: IntoBytes + Immutable>(&self, addr: u64, value: &T) -> Result<(), Errno> {
        if !self.guest_writable(addr, size_of::<T>() as u64) {
            return Err(EFAULT);
        }
        self.ram.write_obj(addr, value).map_err(|_| EFAULT)
    }

    fn copy_out_bytes(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        if !self.guest_writable(addr, bytes.len() as u64) {
            return Err(EFAULT);
        }
        self.ram.write(addr, bytes).map_err(|_| EFAULT)
    }

    fn is_self(&self, dom: u16) -> bool {
        dom == DOMID_SELF || dom == self.domid
    }
}

/// Serves one hypercall of `core`'s vCPU `vcpu` (`rsp` is the guest's stack pointer, for `iret`).
pub(crate) fn dispatch(core: &DomainCore, vcpu: u32, regs: &HypercallRegs, rsp: u64) -> Outcome {
    let Ok(inv) = regs.decode() else {
        return Outcome::Return(-ENOSYS);
    };
    let [a1, a2, a3, _a4, _a5] = inv.args;
    if inv.call == Hypercall::Iret {
        return iret(core, vcpu, rsp);
    }
    let r: R = match inv.call {
        Hypercall::ConsoleIo => console_io(core, a1, a2, a3),
        Hypercall::XenVersion => xen_version(core, a1, a2),
        Hypercall::SchedOp => return sched_op(core, vcpu, a1, a2),
        Hypercall::SetTimerOp => set_timer_op(core, vcpu, a1),
        Hypercall::EventChannelOp => event_channel_op(core, vcpu, a1, a2),
        Hypercall::GrantTableOp => grant_table_op(core, a1, a2, a3),
        Hypercall::MemoryOp => memory_op(core, a1, a2),
        Hypercall::VcpuOp => vcpu_op(core, vcpu, a1, a2, a3),
        Hypercall::SetCallbacks => set_callbacks(core, vcpu, a1),
        Hypercall::SetTrapTable => set_trap_table(core, vcpu, a1),
        Hypercall::CallbackOp => callback_op(core, vcpu, a1, a2),
        _ => Err(ENOSYS),
    };
    Outcome::Return(r.unwrap_or_else(|e| -e))
}

fn console_io(core: &DomainCore, cmd: u64, count: u64, buf: u64) -> R {
    const CONSOLEIO_WRITE: u64 = xen_abi::hypercall::CONSOLEIO_write as u64;
    const CONSOLEIO_READ: u64 = xen_abi::hypercall::CONSOLEIO_read as u64;
    match cmd {
        CONSOLEIO_WRITE => {
            if count > CONSOLE_IO_MAX {
                return Err(EINVAL);
            }
            if !core.layout.guest_readable(&core.ram, buf, count) {
                return Err(EFAULT);
            }
            let mut bytes = vec![0u8; count as usize];
            core.ram.read(buf, &mut bytes).map_err(|_| EFAULT)?;
            core.console_write(&bytes);
            Ok(0)
        }
        // No console input: nothing to read.
        CONSOLEIO_READ => Ok(0),
        _ => Err(ENOSYS),
    }
}

fn c_field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

fn xen_version(core: &DomainCore, cmd: u64, arg: u64) -> R {
    use xen_abi::version::*;
    let Ok(cmd) = u32::try_from(cmd) else {
        return Err(ENOSYS);
    };
    match cmd {
        XENVER_version => Ok(i64::from(xen_version_value(XEN_VERSION.0, XEN_VERSION.1))),
        XENVER_extraversion => {
            core.copy_out(arg, &c_field::<XEN_EXTRAVERSION_LEN>(".0-blanket"))?;
            Ok(0)
        }
        XENVER_compile_info => {
            let mut info = XenCompileInfo::new_zeroed();
            info.compiler = c_field("rustc");
            info.compile_by = c_field("blanket");
            info.compile_domain = c_field("blanket-rs");
            info.compile_date = c_field(env!("CARGO_PKG_VERSION"));
            core.copy_out(arg, &info)?;
            Ok(0)
        }
        XENVER_capabilities => {
            core.copy_out(arg, &c_field::<XEN_CAPABILITIES_INFO_LEN>("xen-3.0-x86_64"))?;
            Ok(0)
        }
        XENVER_changeset => {
            core.copy_out(
                arg,
                &c_field::<XEN_CHANGESET_INFO_LEN>("blanket-hypervisor"),
            )?;
            Ok(0)
        }
        XENVER_platform_parameters => {
            core.copy_out(arg, &HYPERVISOR_VIRT_START)?;
            Ok(0)
        }
        XENVER_get_features => {
            // struct xen_feature_info { unsigned int submap_idx; uint32_t submap; }: no features.
            let idx: u32 = core.copy_in(arg)?;
            let _ = idx;
            core.copy_out(arg + 4, &0u32)?;
            Ok(0)
        }
        XENVER_pagesize => Ok(PAGE_SIZE as i64),
        XENVER_guest_handle => {
            core.copy_out(arg, &[0u8; 16])?;
            Ok(0)
        }
        // Privileged (dom0) queries.
        XENVER_commandline | XENVER_build_id => Err(EPERM),
        _ => Err(ENOSYS),
    }
}

fn sched_op(core: &DomainCore, vcpu: u32, cmd: u64, arg: u64) -> Outcome {
    let r: R = match u32::try_from(cmd).unwrap_or(u32::MAX) {
        sched::SCHEDOP_yield => {
            std::thread::yield_now();
            Ok(0)
        }
        sched::SCHEDOP_block => {
            block(core, vcpu, None);
            Ok(0)
        }
        sched::SCHEDOP_shutdown => match core.copy_in::<SchedShutdown>(arg) {
            Ok(s) => match ShutdownReason::try_from(s.reason) {
                Ok(reason) => return Outcome::Exit(DomainExit::Shutdown(reason)),
                Err(_) => Err(EINVAL),
            },
            Err(e) => Err(e),
        },
        sched::SCHEDOP_poll => poll(core, vcpu, arg),
        sched::SCHEDOP_shutdown_code => core.copy_in::<SchedShutdown>(arg).and_then(|s| {
            ShutdownReason::try_from(s.reason)
                .map(|_| 0)
                .map_err(|_| EINVAL)
        }),
        sched::SCHEDOP_remote_shutdown => Err(EPERM),
        _ => Err(ENOSYS),
    };
    Outcome::Return(r.unwrap_or_else(|e| -e))
}

fn poll(core: &DomainCore, vcpu: u32, arg: u64) -> R {
    let p: SchedPoll = core.copy_in(arg)?;
    let req = p
        .validate(sched::SCHED_POLL_MAX_PORTS)
        .map_err(|_| EINVAL)?;
    if !core
        .layout
        .guest_readable(&core.ram, req.ports, req.ports_len)
    {
        return Err(EFAULT);
    }
    let mut ports = vec![0u32; req.nr_ports as usize];
    core.ram
        .read(req.ports, ports.as_mut_bytes())
        .map_err(|_| EFAULT)?;
    if ports.iter().any(|&p| p >= MAX_PORTS) {
        return Err(EINVAL);
    }
    block(core, vcpu, Some((&ports, req.timeout)));
    Ok(0)
}

/// The longest a vCPU thread serves a [`BlockedService`](crate::BlockedService) in one block: a kick from
/// another vCPU of the guest on the same device is taken when that wait ends.
const BLOCKED_SERVICE_BUDGET: Duration = Duration::from_millis(1);

/// Sleeps in `SCHEDOP_block` (`poll` = `None`) or `SCHEDOP_poll`: until an event is pending (an upcall, or
/// one of the polled ports), the timer or the poll timeout fires, or the domain is paused or destroyed.
/// The vCPU thread sleeps on the domain's condvar meanwhile and uses no CPU. A vCPU taken down
/// (`VCPUOP_down`) returns too, and then waits in its thread until it is up again.
fn block(core: &DomainCore, vcpu: u32, poll: Option<(&[u32], Option<u64>)>) {
    core.stats.blocks.fetch_add(1, Ordering::Relaxed);
    if poll.is_none() {
        // SCHEDOP_block re-enables event delivery before it checks for events (sched.h).
        core.shared.upcall_mask(vcpu).store(0, Ordering::SeqCst);
    }
    let id = vcpu as usize;
    let mut c = core.lock();
    c.vcpus[id].state = Some(RunState::Blocked);
    if id == 0 {
        c.state = RunState::Blocked;
    }
    let woken = || match poll {
        None => core.shared.upcall_pending(vcpu),
        Some((ports, _)) => {
            let events = core.shared.two_level();
            ports.iter().any(|&p| events.is_pending(p).unwrap_or(false))
        }
    };
    let services = core
        .blocked_services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !services.is_empty() && !woken() {
        // Domain 0's work this vCPU waits for, done here (blkback's inline serving): bounded by the
        // vCPU's timer and the poll timeout, and given up as soon as an event is pending or the domain
        // is paused or destroyed (an event or a pause kicks this thread meanwhile: `serving_blocked`).
        let now = core.system_time();
        let until = [c.vcpus[id].timer, poll.and_then(|(_, t)| t)]
            .into_iter()
            .flatten()
            .min()
            .map_or(BLOCKED_SERVICE_BUDGET, |d| {
                Duration::from_nanos(d.saturating_sub(now))
            })
            .min(BLOCKED_SERVICE_BUDGET);
        drop(c);
        let wake = || {
            woken() || {
                let c = core.lock();
                c.destroy || c.paused || !c.vcpus[id].up
            }
        };
        let mut served = false;
        core.serving_blocked[id].store(true, Ordering::SeqCst);
        for s in services.iter() {
            served |= s.serve_blocked(until, &wake);
        }
        core.serving_blocked[id].store(false, Ordering::SeqCst);
        if served {
            core.stats.blocks_served.fetch_add(1, Ordering::Relaxed);
        }
        c = core.lock();
    }
    loop {
        if c.destroy || c.paused || !c.vcpus[id].up {
            break;
        }
        if let Some(n) = core.fire_timer_if_due(&mut c, vcpu) {
            // Our own timer: other vCPUs only need waking if it was bound elsewhere (it is not).
            let _ = n;
        }
        if woken() {
            break;
        }
        let now = core.system_time();
        let poll_timeout = poll.and_then(|(_, t)| t);
        if poll_timeout.is_some_and(|t| now >= t) {
            break;
        }
        let deadline = [c.vcpus[id].timer, poll_timeout]
            .into_iter()
            .flatten()
            .min();
        c = match deadline {
            Some(d) => {
                let wait = Duration::from_nanos(d.saturating_sub(now).max(1));
                core.cv
                    .wait_timeout(c, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => core.cv.wait(c).unwrap_or_else(|e| e.into_inner()),
        };
    }
    c.vcpus[id].state = Some(RunState::Running);
    if id == 0 {
        c.state = RunState::Running;
    }
}

fn set_timer_op(core: &DomainCore, vcpu: u32, timeout: u64) -> R {
    core.set_timer(vcpu, if timeout == 0 { None } else { Some(timeout) });
    Ok(0)
}

/// `HYPERVISOR_set_trap_table`: installs entries of the guest's virtual IDT, up to the terminating entry
/// (at most 256 are read); a null table clears it. Exceptions whose vector has an entry are bounced to the
/// handler instead of stopping the domain.
fn set_trap_table(core: &DomainCore, vcpu: u32, table: u64) -> R {
    use xen_abi::hypercall::TrapInfo;
    let mut traps = core.traps[vcpu as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if table == 0 {
        *traps = [None; 256];
        return Ok(0);
    }
    let size = size_of::<TrapInfo>() as u64;
    for i in 0..=256u64 {
        let t: TrapInfo = core.copy_in(table + i * size)?;
        if t.is_terminator() {
            return Ok(0);
        }
        t.validate().map_err(|_| EINVAL)?;
        if t.cs != crate::x86::FLAT_RING3_CS64
            || !core.layout.guest_readable(&core.ram, t.address, 1)
        {
            return Err(EINVAL);
        }
        traps[usize::from(t.vector)] = Some((t.address, t.flags));
    }
    Err(EINVAL)
}

/// The RFLAGS bits a guest may set through `iret`: CF, PF, AF, ZF, SF, TF, DF, OF, AC and ID (with IF and
/// the reserved bit 1 always set; IOPL, NT, RF, VM, VIF and VIP never).
const IRET_RFLAGS: u64 =
    0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4_0000 | 0x20_0000;

/// `HYPERVISOR_iret`: pops `struct iret_context` (`rax, r11, rcx, flags, rip, cs, rflags, rsp, ss`) from
/// the guest's stack, as the iret stub left it, and returns to it; the upcall mask becomes the inverse of
/// the frame's IF, as in Xen. A frame outside guest memory or with other than the flat ring-3 selectors
/// stops the domain (Xen crashes it too).
fn iret(core: &DomainCore, vcpu: u32, rsp: u64) -> Outcome {
    let mut words = [0u64; 9];
    if !core.layout.guest_readable(&core.ram, rsp, 72)
        || core.ram.read(rsp, words.as_mut_bytes()).is_err()
    {
        return Outcome::Crash(format!(
            "HYPERVISOR_iret: the frame at rsp {rsp:#x} is not readable guest memory"
        ));
    }
    let [rax, r11, rcx, _flags, rip, cs, rflags, new_rsp, ss] = words;
    let (cs, ss) = (cs & 0xffff, ss & 0xffff);
    if cs != u64::from(crate::x86::FLAT_RING3_CS64)
        || (ss != u64::from(crate::x86::FLAT_RING3_SS64) && ss != 0)
    {
        return Outcome::Crash(format!(
            "HYPERVISOR_iret: cs {cs:#x} / ss {ss:#x} are not the flat ring-3 selectors 0xe033 / 0xe02b"
        ));
    }
    core.shared
        .upcall_mask(vcpu)
        .store(u8::from(rflags & (1 << 9) == 0), Ordering::SeqCst);
    Outcome::Iret(IretFrame {
        rax,
        r11,
        rcx,
        rip,
        rflags: (rflags & IRET_RFLAGS) | 0x202,
        rsp: new_rsp,
    })
}

/// `CALLBACKTYPE_event` in `callback.h`.
pub const CALLBACKTYPE_EVENT: u16 = 0;
/// `CALLBACKTYPE_failsafe` in `callback.h`.
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
/// `CALLBACKOP_register` in `callback.h`.
pub const CALLBACKOP_REGISTER: u64 = 0;
/// `CALLBACKOP_unregister` in `callback.h`.
pub const CALLBACKOP_UNREGISTER: u64 = 1;

/// `struct callback_register` in `callback.h` (x86-64: `xen_callback_t` is an address).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable)]
struct CallbackRegister {
    kind: u16,
    flags: u16,
    _pad: u32,
    address: u64,
}

fn set_event_callback(core: &DomainCore, vcpu: u32, address: u64) -> R {
    if address != 0 && !core.layout.guest_readable(&core.ram, address, 1) {
        return Err(EINVAL);
    }
    core.event_callback[vcpu as usize].store(address, Ordering::SeqCst);
    Ok(0)
}

/// `HYPERVISOR_set_callbacks(event, failsafe, syscall)`: the event callback is used; the failsafe and
/// syscall callbacks are accepted and not needed (no segment reloads fail, no guest user mode).
fn set_callbacks(core: &DomainCore, vcpu: u32, event: u64) -> R {
    set_event_callback(core, vcpu, event)
}

fn callback_op(core: &DomainCore, vcpu: u32, cmd: u64, arg: u64) -> R {
    match cmd {
        CALLBACKOP_REGISTER => {
            let cb: CallbackRegister = core.copy_in(arg)?;
            match cb.kind {
                CALLBACKTYPE_EVENT => set_event_callback(core, vcpu, cb.address),
                CALLBACKTYPE_FAILSAFE => Ok(0),
                _ => Err(EINVAL),
            }
        }
        CALLBACKOP_UNREGISTER => {
            let kind: u16 = core.copy_in(arg)?;
            match kind {
                CALLBACKTYPE_EVENT => set_event_callback(core, vcpu, 0),
                _ => Err(EINVAL),
            }
        }
        _ => Err(ENOSYS),
    }
}

fn event_channel_op(core: &DomainCore, vcpu: u32, cmd: u64, arg: u64) -> R {
    let Some(host) = core.host.upgrade() else {
        return Err(ESRCH);
    };
    let me = core.domid;
    match u32::try_from(cmd).unwrap_or(u32::MAX) {
        ev::EVTCHNOP_alloc_unbound => {
            let mut a: ev::EvtchnAllocUnbound = core.copy_in(arg)?;
            if !core.is_self(a.dom) {
                return Err(EPERM);
            }
            let remote = if a.remote_dom == DOMID_SELF {
                me
            } else {
                a.remote_dom
            };
            a.port = host
                .evtchn()
                .table(me)?
                .alloc(Channel::Unbound { remote })?;
            core.copy_out(arg, &a).inspect_err(|_| {
                let _ = host.evtchn().close(me, a.port);
            })?;
            Ok(0)
        }
        ev::EVTCHNOP_bind_interdomain => {
            let mut a: ev::EvtchnBindInterdomain = core.copy_in(arg)?;
            let remote = if a.remote_dom == DOMID_SELF {
                me
            } else {
                a.remote_dom
            };
            a.local_port = host.evtchn().bind_interdomain(me, remote, a.remote_port)?;
            core.copy_out(arg, &a).inspect_err(|_| {
                let _ = host.evtchn().close(me, a.local_port);
            })?;
            Ok(0)
        }
        ev::EVTCHNOP_bind_virq => {
            let mut a: ev::EvtchnBindVirq = core.copy_in(arg)?;
            if a.virq >= NR_VIRQS {
                return Err(EINVAL);
            }
            if a.vcpu >= core.nr_vcpus {
                return Err(ENOENT);
            }
            // Global VIRQs are bound on vCPU 0 (event_channel.h); per-vCPU ones on any.
            let per_vcpu =
                xen_abi::hypercall::Virq::try_from(a.virq).is_ok_and(|v| v.is_per_vcpu());
            if a.vcpu != 0 && !per_vcpu {
                return Err(EINVAL);
            }
            {
                let mut reg = host.evtchn();
                let t = reg.table(me)?;
                if t.virq_port(a.virq, a.vcpu).is_some() {
                    return Err(EEXIST);
                }
                a.port = t.alloc(Channel::Virq {
                    virq: a.virq,
                    vcpu: a.vcpu,
                })?;
            }
            core.set_port_vcpu(a.port, a.vcpu);
            core.copy_out(arg, &a).inspect_err(|_| {
                let _ = host.evtchn().close(me, a.port);
            })?;
            Ok(0)
        }
        ev::EVTCHNOP_bind_ipi => {
            let mut a: ev::EvtchnBindIpi = core.copy_in(arg)?;
            if a.vcpu >= core.nr_vcpus {
                return Err(ENOENT);
            }
            a.port = host
                .evtchn()
                .table(me)?
                .alloc(Channel::Ipi { vcpu: a.vcpu })?;
            core.set_port_vcpu(a.port, a.vcpu);
            core.copy_out(arg, &a).inspect_err(|_| {
                let _ = host.evtchn().close(me, a.port);
            })?;
            Ok(0)
        }
        ev::EVTCHNOP_close => {
            let a: ev::EvtchnClose = core.copy_in(arg)?;
            host.evtchn().close(me, a.port)?;
            // A closed port is no longer pending, and notifies vCPU 0 when it is reused.
            let _ = core.shared.two_level().clear_pending(a.port);
            core.set_port_vcpu(a.port, 0);
            Ok(0)
        }
        ev::EVTCHNOP_send => {
            let a: ev::EvtchnSend = core.copy_in(arg)?;
            let target = host.evtchn().send_target(me, a.port)?;
            if let Some((dom, port)) = target {
                if dom == me {
                    core.deliver(port);
                } else if dom == 0 {
                    // Domain 0 is the Blanket layer: its back-ends' handlers.
                    host.dom0_event(port);
                } else if let Some(peer) = host.domain(dom) {
                    peer.deliver(port);
                }
            }
            Ok(0)
        }
        ev::EVTCHNOP_status => {
            let mut a: ev::EvtchnStatus = core.copy_in(arg)?;
            if !core.is_self(a.dom) {
                return Err(EPERM);
            }
            let ch = host.evtchn().table(me)?.get(a.port).ok_or(EINVAL)?;
            let kind = match ch {
                Channel::Free => EvtchnStatusKind::Closed,
                Channel::Unbound { remote } => EvtchnStatusKind::Unbound { dom: remote },
                Channel::Interdomain {
                    remote,
                    remote_port,
                } => EvtchnStatusKind::Interdomain {
                    dom: remote,
                    port: remote_port,
                },
                Channel::Virq { virq, .. } => EvtchnStatusKind::Virq(virq),
                Channel::Ipi { .. } => EvtchnStatusKind::Ipi,
            };
            a = ev::EvtchnStatus::answer(a.dom, a.port, core.port_vcpu(a.port), kind);
            core.copy_out(arg, &a)?;
            Ok(0)
        }
        ev::EVTCHNOP_unmask => {
            let a: ev::EvtchnUnmask = core.copy_in(arg)?;
            if a.port >= MAX_PORTS {
                return Err(EINVAL);
            }
            let target = core.port_vcpu(a.port);
            if let Ok(n) = core
                .shared
                .two_level()
                .unmask(a.port, &core.shared.vcpu_events(target))
            {
                // The event now pending on another vCPU wakes it.
                if target != vcpu {
                    core.after_send(n, target);
                }
            }
            Ok(0)
        }
        ev::EVTCHNOP_bind_vcpu => {
            let a: ev::EvtchnBindVcpu = core.copy_in(arg)?;
            if a.vcpu >= core.nr_vcpus {
                return Err(ENOENT);
            }
            // Xen moves interdomain, unbound and global VIRQ ports; per-vCPU VIRQs and IPIs stay.
            match host.evtchn().table(me)?.get(a.port) {
                None | Some(Channel::Free) => Err(EINVAL),
                Some(Channel::Ipi { .. }) => Err(EINVAL),
                Some(Channel::Virq { virq, .. })
                    if xen_abi::hypercall::Virq::try_from(virq).is_ok_and(|v| v.is_per_vcpu()) =>
                {
                    Err(EINVAL)
                }
                Some(_) => {
                    core.set_port_vcpu(a.port, a.vcpu);
                    Ok(0)
                }
            }
        }
        ev::EVTCHNOP_reset => {
            let a: ev::EvtchnReset = core.copy_in(arg)?;
            if !core.is_self(a.dom) {
                return Err(EPERM);
            }
            let mut reg = host.evtchn();
            let ports: Vec<u32> = reg.table(me)?.used().map(|(p, _)| p).collect();
            for p in ports {
                let _ = reg.close(me, p);
                core.set_port_vcpu(p, 0);
            }
            Ok(0)
        }
        _ => Err(ENOSYS),
    }
}

/// The most entries one `grant_table_op` call may carry.
pub const GNTTAB_MAX_COUNT: u64 = 16;

fn grant_table_op(core: &DomainCore, cmd: u64, uop: u64, count: u64) -> R {
    if count > GNTTAB_MAX_COUNT {
        return Err(EINVAL);
    }
    match u32::try_from(cmd).unwrap_or(u32::MAX) {
        gt::GNTTABOP_setup_table => {
            let size = size_of::<gt::GnttabSetupTable>() as u64;
            for i in 0..count {
                let at = uop + i * size;
                let mut op: gt::GnttabSetupTable = core.copy_in(at)?;
                op.status = if !core.is_self(op.dom) {
                    gt::GNTST_permission_denied
                } else if op.nr_frames > MAX_GRANT_FRAMES {
                    gt::GNTST_general_error
                } else {
                    let base = core.layout.grant_frames / PAGE_SIZE;
                    let frames: Vec<u64> = (0..u64::from(op.nr_frames)).map(|f| base + f).collect();
                    match core.copy_out_bytes(op.frame_list, frames.as_bytes()) {
                        Ok(()) => {
                            core.grant_frames
                                .fetch_max(u64::from(op.nr_frames), Ordering::SeqCst);
                            0
                        }
                        Err(_) => gt::GNTST_bad_virt_addr,
                    }
                };
                core.copy_out(at, &op)?;
            }
            Ok(0)
        }
        gt::GNTTABOP_query_size => {
            let size = size_of::<gt::GnttabQuerySize>() as u64;
            for i in 0..count {
                let at = uop + i * size;
                let mut op: gt::GnttabQuerySize = core.copy_in(at)?;
                if core.is_self(op.dom) {
                    op.nr_frames = core.grant_frames.load(Ordering::SeqCst) as u32;
                    op.max_nr_frames = MAX_GRANT_FRAMES;
                    op.status = 0;
                } else {
                    op.status = gt::GNTST_permission_denied;
                }
                core.copy_out(at, &op)?;
            }
            Ok(0)
        }
        gt::GNTTABOP_set_version => {
            if count != 1 {
                return Err(EINVAL);
            }
            let mut op: gt::GnttabSetVersion = core.copy_in(uop)?;
            let wanted = op.version;
            op.version = 1;
            core.copy_out(uop, &op)?;
            match wanted {
                0 | 1 => Ok(0),
                2 => Err(EOPNOTSUPP),
                _ => Err(EINVAL),
            }
        }
        _ => Err(ENOSYS),
    }
}

/// The most extents one `decrease_reservation` or `populate_physmap` call handles (order 0 only).
pub const MAX_BALLOON_EXTENTS: u64 = 512;

fn memory_op(core: &DomainCore, cmd: u64, arg: u64) -> R {
    use xen_abi::memory::*;
    // MEMOP_CMD_MASK: the low 6 bits are the command, the rest a continuation start extent.
    match (cmd & 0x3f) as u32 {
        XENMEM_current_reservation | XENMEM_maximum_reservation => {
            let dom: u16 = core.copy_in(arg)?;
            if !core.is_self(dom) {
                return Err(EPERM);
            }
            if (cmd & 0x3f) as u32 == XENMEM_maximum_reservation {
                return Ok(core.ram.nr_pages() as i64);
            }
            let ballooned = core
                .ballooned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64;
            Ok((core.ram.nr_pages() - ballooned) as i64)
        }
        XENMEM_maximum_ram_page => Ok(core.ram.nr_pages() as i64),
        op @ (XENMEM_decrease_reservation | XENMEM_populate_physmap) => {
            let r: XenMemoryReservation = core.copy_in(arg)?;
            let limits = ReservationLimits {
                max_extent_order: 0,
                max_nr_extents: MAX_BALLOON_EXTENTS,
            };
            let res = r.validate(&limits).map_err(|_| EINVAL)?;
            if !core.is_self(res.domid) {
                return Err(EPERM);
            }
            let list_len = res.nr_extents * 8;
            let readable = core
                .layout
                .guest_readable(&core.ram, res.extent_start, list_len);
            if res.nr_extents > 0 && !readable {
                return Err(EFAULT);
            }
            let mut pfns = vec![0u64; res.nr_extents as usize];
            core.ram
                .read(res.extent_start, pfns.as_mut_bytes())
                .map_err(|_| EFAULT)?;
            let first_free = core.layout.free_start / PAGE_SIZE;
            let mut set = core.ballooned.lock().unwrap_or_else(|e| e.into_inner());
            let mut done = 0i64;
            for pfn in pfns {
                if op == XENMEM_decrease_reservation {
                    // Only the guest's free memory can go back: not the kernel, boot structures or tables.
                    if pfn < first_free || pfn >= core.ram.nr_pages() || set.contains(&pfn) {
                        break;
                    }
                    // A page registered with a back end's io_uring stays the memfd's: zero it instead
                    // (it still reads as zero, but its memory is not returned).
                    let given_back = if core.ram_pinned.load(Ordering::SeqCst) {
                        core.ram
                            .write(pfn * PAGE_SIZE, &[0u8; PAGE_SIZE as usize])
                            .is_ok()
                    } else {
                        core.ram.discard(pfn * PAGE_SIZE, PAGE_SIZE).is_ok()
                    };
                    if !given_back {
                        break;
                    }
                    set.insert(pfn);
                } else if !set.remove(&pfn) {
                    // populate_physmap: only frames given back before come back (their mfn is their pfn).
                    break;
                }
                done += 1;
            }
            Ok(done)
        }
        _ => Err(ENOSYS),
    }
}

/// `struct vcpu_guest_context` of `arch-x86/xen.h` (x86-64): its size and the offsets of the fields this
/// hypervisor reads, checked against the C header with `offsetof` (gcc, Xen 4.17 headers).
pub mod guest_context {
    /// `sizeof(struct vcpu_guest_context)`.
    pub const SIZE: usize = 5168;
    /// `flags` (`VGCF_*`).
    pub const FLAGS: usize = 512;
    /// `user_regs` (`struct cpu_user_regs`, 200 bytes).
    pub const USER_REGS: usize = 520;
    /// `trap_ctxt[256]` (`struct trap_info`, 16 bytes each).
    pub const TRAP_CTXT: usize = 720;
    /// `ldt_ents`.
    pub const LDT_ENTS: usize = 4824;
    /// `gdt_ents`.
    pub const GDT_ENTS: usize = 4960;
    /// `kernel_ss`.
    pub const KERNEL_SS: usize = 4968;
    /// `ctrlreg[8]`.
    pub const CTRLREG: usize = 4984;
    /// `debugreg[8]`.
    pub const DEBUGREG: usize = 5048;
    /// `event_callback_eip`.
    pub const EVENT_CALLBACK_EIP: usize = 5112;
    /// `fs_base`.
    pub const FS_BASE: usize = 5144;
    /// `gs_base_kernel`.
    pub const GS_BASE_KERNEL: usize = 5152;
    /// Offsets inside `cpu_user_regs`: `r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx,
    /// rsi, rdi` are the first 15 words; then `error_code`/`entry_vector`, `rip`, `cs`, `rflags`, `rsp`,
    /// `ss`, `es`, `ds`, `fs`, `gs`.
    pub const REG_RIP: usize = 128;
    /// `cpu_user_regs.cs` (16 bits; `saved_upcall_mask` follows).
    pub const REG_CS: usize = 136;
    /// `cpu_user_regs.rflags`.
    pub const REG_RFLAGS: usize = 144;
    /// `cpu_user_regs.rsp`.
    pub const REG_RSP: usize = 152;
    /// `cpu_user_regs.ss`.
    pub const REG_SS: usize = 160;
    /// `cpu_user_regs.es`; `ds`, `fs` and `gs` follow, 8 bytes apart.
    pub const REG_ES: usize = 168;
    /// `VGCF_i387_valid`, `VGCF_in_kernel`, `VGCF_failsafe_disables_events`,
    /// `VGCF_syscall_disables_events` and `VGCF_online`: the flags a context may carry.
    pub const KNOWN_FLAGS: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5);
}

/// What `VCPUOP_initialise` gives a vCPU, validated: loaded by the vCPU's thread when it is brought up.
#[derive(Debug, Clone)]
pub(crate) struct InitialState {
    pub(crate) regs: kvm_bindings::kvm_regs,
    pub(crate) cr3: u64,
    pub(crate) fs_base: u64,
    pub(crate) gs_base: u64,
}

fn is_canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == 0x1_ffff
}

/// Validates a copied `vcpu_guest_context` (`ctx`, [`guest_context::SIZE`] bytes) for vCPU `vcpu`:
/// flat ring-3 selectors only (code `FLAT_RING3_CS64`, stack `FLAT_RING3_SS64`, data null or
/// `FLAT_RING3_DS32`), `rip` in guest memory the guest may read, `rsp` in memory it may write, `cr3` one of
/// its validated top-level page tables, no LDT, no GDT of its own, no debug registers, only known flags,
/// trap-table entries and the event callback inside guest memory, canonical segment bases. Anything else
/// is `-EINVAL`, as Xen's `arch_set_info_guest` refuses what it cannot honour.
fn validate_context(
    core: &DomainCore,
    ctx: &[u8],
) -> Result<(InitialState, crate::domain::TrapTable, u64), Errno> {
    use guest_context as gc;
    let word = |off: usize| -> u64 {
        ctx.get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(u64::MAX)
    };
    let reg = |off: usize| word(gc::USER_REGS + off);
    if word(gc::FLAGS) & !gc::KNOWN_FLAGS != 0 {
        return Err(EINVAL);
    }
    let cs = reg(gc::REG_CS) & 0xffff;
    let ss = reg(gc::REG_SS) & 0xffff;
    if cs != u64::from(crate::x86::FLAT_RING3_CS64) || ss != u64::from(crate::x86::FLAT_RING3_SS64)
    {
        return Err(EINVAL);
    }
    for i in 0..4 {
        let sel = reg(gc::REG_ES + 8 * i) & 0xffff;
        if sel != 0 && sel != u64::from(crate::x86::FLAT_RING3_SS64) {
            return Err(EINVAL);
        }
    }
    let kernel_ss = word(gc::KERNEL_SS) & 0xffff;
    if kernel_ss != 0 && kernel_ss != u64::from(crate::x86::FLAT_RING3_SS64) {
        return Err(EINVAL);
    }
    let (rip, rsp) = (reg(gc::REG_RIP), reg(gc::REG_RSP));
    if !core.layout.guest_readable(&core.ram, rip, 1) || rsp < 8 || !core.guest_writable(rsp - 8, 8)
    {
        return Err(EINVAL);
    }
    if word(gc::LDT_ENTS) != 0 || word(gc::GDT_ENTS) != 0 {
        return Err(EINVAL);
    }
    if (0..8).any(|i| word(gc::DEBUGREG + 8 * i) != 0) {
        return Err(EINVAL);
    }
    let cr3 = word(gc::CTRLREG + 3 * 8);
    if !core.valid_root(cr3) {
        return Err(EINVAL);
    }
    let callback = word(gc::EVENT_CALLBACK_EIP);
    if callback != 0 && !core.layout.guest_readable(&core.ram, callback, 1) {
        return Err(EINVAL);
    }
    let (fs_base, gs_base) = (word(gc::FS_BASE), word(gc::GS_BASE_KERNEL));
    if !is_canonical(fs_base) || !is_canonical(gs_base) {
        return Err(EINVAL);
    }
    let mut traps = [None; 256];
    for (v, slot) in traps.iter_mut().enumerate() {
        let at = gc::TRAP_CTXT + v * 16;
        let flags = ctx.get(at + 1).copied().unwrap_or(0);
        let tcs = u64::from(u16::from_le_bytes([
            ctx.get(at + 2).copied().unwrap_or(0),
            ctx.get(at + 3).copied().unwrap_or(0),
        ]));
        let address = word(at + 8);
        if address == 0 {
            continue;
        }
        if tcs != u64::from(crate::x86::FLAT_RING3_CS64)
            || !core.layout.guest_readable(&core.ram, address, 1)
        {
            return Err(EINVAL);
        }
        *slot = Some((address, flags));
    }
    let g = |i: usize| reg(8 * i);
    let regs = kvm_bindings::kvm_regs {
        r15: g(0),
        r14: g(1),
        r13: g(2),
        r12: g(3),
        rbp: g(4),
        rbx: g(5),
        r11: g(6),
        r10: g(7),
        r9: g(8),
        r8: g(9),
        rax: g(10),
        rcx: g(11),
        rdx: g(12),
        rsi: g(13),
        rdi: g(14),
        rip,
        rsp,
        rflags: (reg(gc::REG_RFLAGS) & IRET_RFLAGS) | 0x202,
    };
    Ok((
        InitialState {
            regs,
            cr3,
            fs_base,
            gs_base,
        },
        traps,
        callback,
    ))
}

/// `VCPUOP_*` in `vcpu.h`.
pub mod vcpuop {
    /// `VCPUOP_initialise`.
    pub const INITIALISE: u64 = 0;
    /// `VCPUOP_up`.
    pub const UP: u64 = 1;
    /// `VCPUOP_down`.
    pub const DOWN: u64 = 2;
    /// `VCPUOP_is_up`.
    pub const IS_UP: u64 = 3;
    /// `VCPUOP_set_singleshot_timer`.
    pub const SET_SINGLESHOT_TIMER: u64 = 8;
    /// `VCPUOP_stop_singleshot_timer`.
    pub const STOP_SINGLESHOT_TIMER: u64 = 9;
    /// `VCPU_SSHOTTMR_future`: fail with `-ETIME` if the deadline has passed.
    pub const SSHOTTMR_FUTURE: u32 = 1;
}

/// `ETIME`.
const ETIME: Errno = 62;

/// `struct vcpu_set_singleshot_timer` in `vcpu.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable)]
struct SingleshotTimer {
    timeout_abs_ns: u64,
    flags: u32,
    _pad: u32,
}

/// `HYPERVISOR_vcpu_op(cmd, vcpuid, arg)` from vCPU `caller`.
fn vcpu_op(core: &DomainCore, caller: u32, cmd: u64, target: u64, arg: u64) -> R {
    if target >= u64::from(core.nr_vcpus) {
        return Err(ENOENT);
    }
    let t = target as u32;
    let id = target as usize;
    match cmd {
        vcpuop::INITIALISE => {
            if !core
                .layout
                .guest_readable(&core.ram, arg, guest_context::SIZE as u64)
            {
                return Err(EFAULT);
            }
            let mut ctx = vec![0u8; guest_context::SIZE];
            core.ram.read(arg, &mut ctx).map_err(|_| EFAULT)?;
            let (state, traps, callback) = validate_context(core, &ctx)?;
            let mut c = core.lock();
            if c.vcpus[id].initialised {
                return Err(EEXIST);
            }
            c.vcpus[id].initialised = true;
            c.vcpus[id].pending = Some(Box::new(state));
            drop(c);
            *core.traps[id].lock().unwrap_or_else(|e| e.into_inner()) = traps;
            core.event_callback[id].store(callback, Ordering::SeqCst);
            Ok(0)
        }
        vcpuop::UP => {
            let mut c = core.lock();
            if !c.vcpus[id].initialised {
                return Err(EINVAL);
            }
            c.vcpus[id].up = true;
            drop(c);
            core.cv.notify_all();
            Ok(0)
        }
        vcpuop::DOWN => {
            core.lock().vcpus[id].up = false;
            if t != caller {
                core.kick(t);
            }
            Ok(0)
        }
        vcpuop::IS_UP => Ok(i64::from(core.lock().vcpus[id].up)),
        vcpuop::SET_SINGLESHOT_TIMER => {
            if t != caller {
                return Err(EINVAL);
            }
            let st: SingleshotTimer = core.copy_in(arg)?;
            if st.flags & vcpuop::SSHOTTMR_FUTURE != 0 && st.timeout_abs_ns < core.system_time() {
                return Err(ETIME);
            }
            core.set_timer(t, Some(st.timeout_abs_ns));
            Ok(0)
        }
        vcpuop::STOP_SINGLESHOT_TIMER => {
            if t != caller {
                return Err(EINVAL);
            }
            core.set_timer(t, None);
            Ok(0)
        }
        _ => Err(ENOSYS),
    }
}

/// Makes the vCPU flush its TLB (and, under shadow paging, drop its shadow of the guest's page tables):
/// `KVM_SET_SREGS` with a changed CR3 resets the vCPU's MMU context, so CR3 is set to the same root with
/// PWT toggled and back.
pub(crate) fn flush_tlb(fd: &kvm_ioctls::VcpuFd) -> Result<(), String> {
    let mut s = fd.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let cr3 = s.cr3;
    s.cr3 = cr3 ^ (1 << 3);
    fd.set_sregs(&s)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    s.cr3 = cr3;
    fd.set_sregs(&s)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    Ok(())
}
