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

    fn copy_out<T: IntoBytes + Immutable>(&self, addr: u64, value: &T) -> Result<(), Errno> {
        if !self
            .layout
            .guest_writable(&self.ram, addr, size_of::<T>() as u64)
        {
            return Err(EFAULT);
        }
        self.ram.write_obj(addr, value).map_err(|_| EFAULT)
    }

    fn copy_out_bytes(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        if !self
            .layout
            .guest_writable(&self.ram, addr, bytes.len() as u64)
        {
            return Err(EFAULT);
        }
        self.ram.write(addr, bytes).map_err(|_| EFAULT)
    }

    fn is_self(&self, dom: u16) -> bool {
        dom == DOMID_SELF || dom == self.domid
    }
}

/// Serves one hypercall of `core`'s vCPU (`rsp` is the guest's stack pointer, for `iret`).
pub(crate) fn dispatch(core: &DomainCore, regs: &HypercallRegs, rsp: u64) -> Outcome {
    let Ok(inv) = regs.decode() else {
        return Outcome::Return(-ENOSYS);
    };
    let [a1, a2, a3, _a4, _a5] = inv.args;
    if inv.call == Hypercall::Iret {
        return iret(core, rsp);
    }
    let r: R = match inv.call {
        Hypercall::ConsoleIo => console_io(core, a1, a2, a3),
        Hypercall::XenVersion => xen_version(core, a1, a2),
        Hypercall::SchedOp => return sched_op(core, a1, a2),
        Hypercall::SetTimerOp => set_timer_op(core, a1),
        Hypercall::EventChannelOp => event_channel_op(core, a1, a2),
        Hypercall::GrantTableOp => grant_table_op(core, a1, a2, a3),
        Hypercall::MemoryOp => memory_op(core, a1, a2),
        Hypercall::VcpuOp => vcpu_op(a1, a2),
        Hypercall::SetCallbacks => set_callbacks(core, a1),
        Hypercall::SetTrapTable => set_trap_table(core, a1),
        Hypercall::CallbackOp => callback_op(core, a1, a2),
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

fn sched_op(core: &DomainCore, cmd: u64, arg: u64) -> Outcome {
    let r: R = match u32::try_from(cmd).unwrap_or(u32::MAX) {
        sched::SCHEDOP_yield => {
            std::thread::yield_now();
            Ok(0)
        }
        sched::SCHEDOP_block => {
            block(core, None);
            Ok(0)
        }
        sched::SCHEDOP_shutdown => match core.copy_in::<SchedShutdown>(arg) {
            Ok(s) => match ShutdownReason::try_from(s.reason) {
                Ok(reason) => return Outcome::Exit(DomainExit::Shutdown(reason)),
                Err(_) => Err(EINVAL),
            },
            Err(e) => Err(e),
        },
        sched::SCHEDOP_poll => poll(core, arg),
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

fn poll(core: &DomainCore, arg: u64) -> R {
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
    block(core, Some((&ports, req.timeout)));
    Ok(0)
}

/// Sleeps in `SCHEDOP_block` (`poll` = `None`) or `SCHEDOP_poll`: until an event is pending (an upcall, or
/// one of the polled ports), the timer or the poll timeout fires, or the domain is paused or destroyed.
/// The vCPU thread sleeps on the domain's condvar meanwhile and uses no CPU.
fn block(core: &DomainCore, poll: Option<(&[u32], Option<u64>)>) {
    core.stats.blocks.fetch_add(1, Ordering::Relaxed);
    if poll.is_none() {
        // SCHEDOP_block re-enables event delivery before it checks for events (sched.h).
        core.shared.upcall_mask().store(0, Ordering::SeqCst);
    }
    let mut c = core.lock();
    c.state = RunState::Blocked;
    loop {
        if c.destroy || c.paused {
            break;
        }
        let _ = core.fire_timer_if_due(&mut c);
        let woken = match poll {
            None => core.shared.upcall_pending(),
            Some((ports, _)) => {
                let events = core.shared.two_level();
                ports.iter().any(|&p| events.is_pending(p).unwrap_or(false))
            }
        };
        if woken {
            break;
        }
        let now = core.system_time();
        let poll_timeout = poll.and_then(|(_, t)| t);
        if poll_timeout.is_some_and(|t| now >= t) {
            break;
        }
        let deadline = [c.timer, poll_timeout].into_iter().flatten().min();
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
    c.state = RunState::Running;
    drop(c);
    core.update_time();
}

fn set_timer_op(core: &DomainCore, timeout: u64) -> R {
    core.set_timer(if timeout == 0 { None } else { Some(timeout) });
    Ok(0)
}

/// `HYPERVISOR_set_trap_table`: installs entries of the guest's virtual IDT, up to the terminating entry
/// (at most 256 are read); a null table clears it. Exceptions whose vector has an entry are bounced to the
/// handler instead of stopping the domain.
fn set_trap_table(core: &DomainCore, table: u64) -> R {
    use xen_abi::hypercall::TrapInfo;
    let mut traps = core.traps.lock().unwrap_or_else(|e| e.into_inner());
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
fn iret(core: &DomainCore, rsp: u64) -> Outcome {
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
        .upcall_mask()
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

fn set_event_callback(core: &DomainCore, address: u64) -> R {
    if address != 0 && !core.layout.guest_readable(&core.ram, address, 1) {
        return Err(EINVAL);
    }
    core.event_callback.store(address, Ordering::SeqCst);
    Ok(0)
}

/// `HYPERVISOR_set_callbacks(event, failsafe, syscall)`: the event callback is used; the failsafe and
/// syscall callbacks are accepted and not needed (no segment reloads fail, no guest user mode).
fn set_callbacks(core: &DomainCore, event: u64) -> R {
    set_event_callback(core, event)
}

fn callback_op(core: &DomainCore, cmd: u64, arg: u64) -> R {
    match cmd {
        CALLBACKOP_REGISTER => {
            let cb: CallbackRegister = core.copy_in(arg)?;
            match cb.kind {
                CALLBACKTYPE_EVENT => set_event_callback(core, cb.address),
                CALLBACKTYPE_FAILSAFE => Ok(0),
                _ => Err(EINVAL),
            }
        }
        CALLBACKOP_UNREGISTER => {
            let kind: u16 = core.copy_in(arg)?;
            match kind {
                CALLBACKTYPE_EVENT => set_event_callback(core, 0),
                _ => Err(EINVAL),
            }
        }
        _ => Err(ENOSYS),
    }
}

fn event_channel_op(core: &DomainCore, cmd: u64, arg: u64) -> R {
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
            if a.vcpu != 0 {
                return Err(ENOENT);
            }
            {
                let mut reg = host.evtchn();
                let t = reg.table(me)?;
                if t.virq_port(a.virq).is_some() {
                    return Err(EEXIST);
                }
                a.port = t.alloc(Channel::Virq(a.virq))?;
            }
            core.copy_out(arg, &a).inspect_err(|_| {
                let _ = host.evtchn().close(me, a.port);
            })?;
            Ok(0)
        }
        ev::EVTCHNOP_bind_ipi => {
            let mut a: ev::EvtchnBindIpi = core.copy_in(arg)?;
            if a.vcpu != 0 {
                return Err(ENOENT);
            }
            a.port = host.evtchn().table(me)?.alloc(Channel::Ipi)?;
            core.copy_out(arg, &a).inspect_err(|_| {
                let _ = host.evtchn().close(me, a.port);
            })?;
            Ok(0)
        }
        ev::EVTCHNOP_close => {
            let a: ev::EvtchnClose = core.copy_in(arg)?;
            host.evtchn().close(me, a.port)?;
            // A closed port is no longer pending.
            let _ = core.shared.two_level().clear_pending(a.port);
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
                Channel::Virq(v) => EvtchnStatusKind::Virq(v),
                Channel::Ipi => EvtchnStatusKind::Ipi,
            };
            a = ev::EvtchnStatus::answer(a.dom, a.port, 0, kind);
            core.copy_out(arg, &a)?;
            Ok(0)
        }
        ev::EVTCHNOP_unmask => {
            let a: ev::EvtchnUnmask = core.copy_in(arg)?;
            if a.port >= MAX_PORTS {
                return Err(EINVAL);
            }
            let _ = core
                .shared
                .two_level()
                .unmask(a.port, &core.shared.vcpu0_events());
            Ok(0)
        }
        ev::EVTCHNOP_bind_vcpu => {
            let a: ev::EvtchnBindVcpu = core.copy_in(arg)?;
            if a.vcpu != 0 {
                return Err(ENOENT);
            }
            match host.evtchn().table(me)?.get(a.port) {
                None | Some(Channel::Free) => Err(EINVAL),
                Some(_) => Ok(0),
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
                    if core.ram.discard(pfn * PAGE_SIZE, PAGE_SIZE).is_err() {
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

fn vcpu_op(cmd: u64, vcpu: u64) -> R {
    const VCPUOP_IS_UP: u64 = 3;
    if vcpu != 0 {
        return Err(ENOENT);
    }
    match cmd {
        VCPUOP_IS_UP => Ok(1),
        _ => Err(ENOSYS),
    }
}
