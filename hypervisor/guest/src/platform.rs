//! The guest's platform: the Xen PV interface as this guest uses it (hypercalls through the hypercall page,
//! `start_info`, `shared_info`, event channels and time). The seam where `blanket-xen`'s front-ends plug in.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use xen_abi::event_channel::{self as ev, EVTCHN_2L_NR_WORDS, TwoLevel, VcpuEvents};
use xen_abi::hypercall as hc;
use xen_abi::sched::{self, SchedShutdown, ShutdownReason};
use xen_abi::xen::{PvClock, SharedInfo, StartInfo, VcpuTimeInfo};

unsafe extern "C" {
    /// The hypercall page, filled by the domain builder (`XEN_ELFNOTE_HYPERCALL_PAGE`).
    static hypercall_page: [u8; 4096];
}

/// The hypercall page's address.
pub fn hypercall_page_addr() -> u64 {
    &raw const hypercall_page as u64
}

/// Makes hypercall `nr` with five arguments, through its stub at `hypercall_page + nr * 32`.
///
/// # Safety
/// The arguments must be what hypercall `nr` expects (pointers to valid memory of the right layout).
pub unsafe fn hypercall(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let stub = (&raw const hypercall_page as u64) + nr * 32;
    let ret: i64;
    // SAFETY: the stub is `mov $nr, %eax; <trap>; ret`; like Xen's it may clobber rcx and r11 too.
    unsafe {
        asm!(
            "call r9",
            in("r9") stub,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// The guest's view of the platform.
pub struct Platform {
    pub start_info: &'static StartInfo,
    shared: *mut SharedInfo,
    pub timer_port: Option<u32>,
}

impl Platform {
    /// # Safety
    /// `start_info` must be the address the hypervisor passed in `rsi`.
    pub unsafe fn new(start_info: *const StartInfo) -> Self {
        // SAFETY: the builder mapped start_info and shared_info (virtual = machine address).
        let si = unsafe { &*start_info };
        Self {
            start_info: si,
            shared: si.shared_info as *mut SharedInfo,
            timer_port: None,
        }
    }

    /// The command line.
    pub fn cmdline(&self) -> &'static str {
        let bytes = self.start_info.cmd_line().unwrap_or(b"");
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// `HYPERVISOR_console_io(CONSOLEIO_write)`.
    pub fn console_write(&self, bytes: &[u8]) -> i64 {
        // SAFETY: the buffer is valid for `len` bytes.
        unsafe {
            hypercall(
                hc::__HYPERVISOR_console_io,
                u64::from(hc::CONSOLEIO_write),
                bytes.len() as u64,
                bytes.as_ptr() as u64,
                0,
                0,
            )
        }
    }

    /// `HYPERVISOR_xen_version(XENVER_version)`.
    pub fn xen_version(&self) -> (u16, u16) {
        // SAFETY: XENVER_version takes no buffer.
        let v = unsafe { hypercall(hc::__HYPERVISOR_xen_version, 0, 0, 0, 0, 0) };
        xen_abi::version::split_xen_version(v as u32)
    }

    fn sched_op(&self, cmd: u32, arg: u64) -> i64 {
        // SAFETY: `arg` points at the argument of `cmd`, or is unused.
        unsafe { hypercall(hc::__HYPERVISOR_sched_op, u64::from(cmd), arg, 0, 0, 0) }
    }

    /// `SCHEDOP_yield`.
    #[allow(dead_code)]
    pub fn yield_now(&self) {
        self.sched_op(sched::SCHEDOP_yield, 0);
    }

    /// `SCHEDOP_block`: sleeps until an event is pending.
    pub fn block(&self) {
        self.sched_op(sched::SCHEDOP_block, 0);
    }

    /// `SCHEDOP_shutdown`.
    pub fn shutdown(&self, reason: ShutdownReason) -> ! {
        let arg = SchedShutdown::new(reason);
        self.sched_op(sched::SCHEDOP_shutdown, &raw const arg as u64);
        // SCHEDOP_shutdown does not return; if it did, stop here.
        loop {
            self.block();
        }
    }

    /// `SCHEDOP_shutdown` with a raw reason code (may be invalid: the call then returns its error).
    pub fn shutdown_raw(&self, reason: u32) -> i64 {
        let arg = SchedShutdown { reason };
        self.sched_op(sched::SCHEDOP_shutdown, &raw const arg as u64)
    }

    /// `HYPERVISOR_set_timer_op`: a one-shot timer at absolute system time `deadline_ns` (0 cancels).
    pub fn set_timer(&self, deadline_ns: u64) -> i64 {
        // SAFETY: set_timer_op takes a value.
        unsafe { hypercall(hc::__HYPERVISOR_set_timer_op, deadline_ns, 0, 0, 0, 0) }
    }

    /// `HYPERVISOR_event_channel_op(cmd, arg)`.
    pub fn evtchn_op<T>(&self, cmd: u32, arg: &mut T) -> i64 {
        // SAFETY: `arg` is the argument structure of `cmd`.
        unsafe {
            hypercall(
                hc::__HYPERVISOR_event_channel_op,
                u64::from(cmd),
                arg as *mut T as u64,
                0,
                0,
                0,
            )
        }
    }

    /// `EVTCHNOP_bind_virq` on vCPU 0.
    pub fn bind_virq(&self, virq: u32) -> Result<u32, i64> {
        let mut a = ev::EvtchnBindVirq {
            virq,
            vcpu: 0,
            port: 0,
        };
        match self.evtchn_op(ev::EVTCHNOP_bind_virq, &mut a) {
            0 => Ok(a.port),
            e => Err(e),
        }
    }

    /// `EVTCHNOP_bind_virq` on vCPU `vcpu`.
    pub fn bind_virq_on(&self, virq: u32, vcpu: u32) -> Result<u32, i64> {
        let mut a = ev::EvtchnBindVirq {
            virq,
            vcpu,
            port: 0,
        };
        match self.evtchn_op(ev::EVTCHNOP_bind_virq, &mut a) {
            0 => Ok(a.port),
            e => Err(e),
        }
    }

    /// Binds VIRQ_TIMER (once) and returns its port.
    pub fn timer_port(&mut self) -> u32 {
        if let Some(p) = self.timer_port {
            return p;
        }
        let p = self.bind_virq(hc::VIRQ_TIMER).unwrap_or(0);
        self.timer_port = Some(p);
        p
    }

    fn shared(&self) -> &SharedInfo {
        // SAFETY: mapped by the builder; fields the hypervisor changes are read with atomics below.
        unsafe { &*self.shared }
    }

    /// The 2-level event bitmaps.
    pub fn events(&self) -> TwoLevel<'_> {
        let si = self.shared();
        // SAFETY: AtomicU64 has the layout of u64; the page is shared with the hypervisor, which uses atomics.
        let pending =
            unsafe { &*(&raw const si.evtchn_pending as *const [AtomicU64; EVTCHN_2L_NR_WORDS]) };
        // SAFETY: as above.
        let mask =
            unsafe { &*(&raw const si.evtchn_mask as *const [AtomicU64; EVTCHN_2L_NR_WORDS]) };
        TwoLevel::new(pending, mask)
    }

    /// vCPU 0's selector and upcall flag.
    pub fn vcpu_events(&self) -> VcpuEvents<'_> {
        let v = &self.shared().vcpu_info[0];
        // SAFETY: as in `events`: atomics over fields the hypervisor updates atomically.
        unsafe {
            VcpuEvents {
                pending_sel: &*(&raw const v.evtchn_pending_sel as *const AtomicU64),
                upcall_pending: &*(&raw const v.evtchn_upcall_pending
                    as *const core::sync::atomic::AtomicU8),
            }
        }
    }

    /// vCPU `n`'s selector and upcall flag.
    pub fn vcpu_events_of(&self, n: u32) -> VcpuEvents<'_> {
        let v = &self.shared().vcpu_info[n as usize % self.shared().vcpu_info.len()];
        // SAFETY: as in `events`: atomics over fields the hypervisor updates atomically.
        unsafe {
            VcpuEvents {
                pending_sel: &*(&raw const v.evtchn_pending_sel as *const AtomicU64),
                upcall_pending: &*(&raw const v.evtchn_upcall_pending
                    as *const core::sync::atomic::AtomicU8),
            }
        }
    }

    /// Takes `port`'s pending bit, and the upcall flag if nothing else is pending.
    pub fn take_event(&self, port: u32) -> bool {
        let was = self.events().clear_pending(port).unwrap_or(false);
        // Re-arm: clear the selector and upcall flag, then scan whatever else is pending (nothing is bound
        // to other handlers here, so other ports are acknowledged and dropped).
        let _ = self.events().scan(self.vcpu_events(), 64).count();
        was
    }

    /// The current system time in nanoseconds, from vCPU 0's time record and the TSC.
    pub fn time_ns(&self) -> u64 {
        let rec = &self.shared().vcpu_info[0].time;
        let clock = xen_abi::xen::read_vcpu_time(1000, || {
            // SAFETY: a volatile copy of the record, then the version again behind a fence.
            let copy: VcpuTimeInfo = unsafe { core::ptr::read_volatile(rec) };
            fence(Ordering::Acquire);
            // SAFETY: the version word of the same record.
            let after = unsafe { core::ptr::read_volatile(&raw const rec.version) };
            (copy, after)
        });
        match clock {
            Ok(PvClock { .. }) => clock.map(|c| c.system_time_at(rdtsc())).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// Reads the TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed at CPL 3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}
