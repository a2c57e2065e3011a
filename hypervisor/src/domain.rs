//! Domains: creation, the vCPU thread, pause and unpause, shutdown, crash reports and destruction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use xen_abi::DomId;
use xen_abi::sched::ShutdownReason;
use xen_abi::xen::PvClockScale;

use crate::builder::{self, BootPorts, BuildError, Layout};
use crate::evtchn::{Channel, EvtchnRegistry};
use crate::memory::{GuestRam, MemoryError};
use crate::shared::SharedInfoView;
use crate::x86;

/// The errors of creating and controlling domains.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// `/dev/kvm` could not be opened or a KVM ioctl failed while setting up.
    #[error(
        "KVM: {what} failed: {source}; is /dev/kvm present and accessible (root or the kvm group)?"
    )]
    Kvm {
        /// The step that failed.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The domain could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A configuration value is invalid.
    #[error("invalid domain configuration: {0}")]
    Config(String),
    /// No domain id is free.
    #[error("no free domain id: {0} domains exist")]
    NoDomId(usize),
    /// The vCPU thread could not be started.
    #[error("starting the vCPU thread of {name} failed: {source}")]
    Thread {
        /// The domain.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `start` was called twice.
    #[error("domain {0} was started already")]
    AlreadyStarted(String),
}

/// Called with the domain's name and each complete line its console prints (without the newline).
pub type ConsoleSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What a domain is made of.
#[derive(Clone)]
pub struct DomainConfig {
    /// The domain's name (shown in console prefixes and reports).
    pub name: String,
    /// Guest memory in bytes (a multiple of 4096).
    pub memory: u64,
    /// The kernel command line (`start_info.cmd_line`).
    pub cmdline: String,
    /// The kernel: an x86-64 ELF PV image with a `XEN_ELFNOTE_HYPERCALL_PAGE` note.
    pub kernel: Arc<[u8]>,
    /// Where complete console lines go; `None` keeps them only in [`Domain::console_output`].
    pub console: Option<ConsoleSink>,
    /// Whether exceptions reach the hypervisor's ring-0 stubs, which report them (vector, error code, rip).
    /// Without (`false`), the IDT is empty, so any exception becomes a triple fault (`KVM_EXIT_SHUTDOWN`):
    /// how a triple fault is produced on purpose, since a ring-3 guest cannot break the real tables.
    pub exception_reports: bool,
    /// The number of vCPUs (1 to [`MAX_VCPUS`](crate::builder::MAX_VCPUS)). vCPU 0 starts at the entry
    /// point; the guest brings up the others with `VCPUOP_initialise` and `VCPUOP_up`. Each has its own
    /// thread.
    pub vcpus: u32,
}

impl std::fmt::Debug for DomainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainConfig")
            .field("name", &self.name)
            .field("memory", &self.memory)
            .field("cmdline", &self.cmdline)
            .field("kernel_len", &self.kernel.len())
            .field("vcpus", &self.vcpus)
            .finish()
    }
}

impl DomainConfig {
    /// A configuration for `kernel` with 32 MiB of memory, an empty command line and no console sink.
    pub fn new(name: impl Into<String>, kernel: Arc<[u8]>) -> Self {
        Self {
            name: name.into(),
            memory: 32 << 20,
            cmdline: String::new(),
            kernel,
            console: None,
            exception_reports: true,
            vcpus: 1,
        }
    }
}

/// Why a guest was stopped by the hypervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault (or another shutdown condition of the CPU).
    TripleFault,
    /// An exception the guest has no handler for (vector, error code, `cr2` for a page fault).
    Exception {
        /// The vector (0-255).
        vector: u8,
        /// The error code the CPU pushed, or 0.
        error_code: u64,
        /// CR2 (the faulting address of a page fault).
        cr2: u64,
    },
    /// A hypercall trap that broke the ABI (for example, the hypercall port written from outside the
    /// hypercall page).
    BadHypercall(String),
    /// A VM exit that a PV guest cannot cause legitimately.
    UnexpectedExit(String),
    /// KVM failed to run the vCPU.
    KvmError(String),
    /// An event upcall could not be delivered (Xen would call the failsafe callback or crash the domain).
    Failsafe(String),
}

/// The report of a crashed guest: what happened and the registers of interest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// The vCPU it happened on (the whole domain is stopped).
    pub vcpu: u32,
    /// What happened.
    pub kind: CrashKind,
    /// The guest's `rip` at the fault.
    pub rip: u64,
    /// The guest's `rsp` at the fault.
    pub rsp: u64,
    /// `rax`.
    pub rax: u64,
    /// `rflags`.
    pub rflags: u64,
    /// The code segment selector at the fault.
    pub cs: u64,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            CrashKind::TripleFault => write!(f, "triple fault")?,
            CrashKind::Exception {
                vector,
                error_code,
                cr2,
            } => {
                write!(
                    f,
                    "unhandled exception {} (vector {vector}",
                    exception_name(*vector)
                )?;
                if x86::vector_has_error_code(*vector) {
                    write!(f, ", error code {error_code:#x}")?;
                }
                if *vector == 14 {
                    write!(f, ", cr2 {cr2:#x}")?;
                }
                write!(f, ")")?;
            }
            CrashKind::BadHypercall(why) => write!(f, "bad hypercall: {why}")?,
            CrashKind::UnexpectedExit(why) => write!(f, "unexpected VM exit: {why}")?,
            CrashKind::KvmError(why) => write!(f, "KVM_RUN failed: {why}")?,
            CrashKind::Failsafe(why) => write!(f, "{why}")?,
        }
        write!(
            f,
            " at rip {:#x} (cs {:#x}), rsp {:#x}, rax {:#x}, rflags {:#x}, on vCPU {}",
            self.rip, self.cs, self.rsp, self.rax, self.rflags, self.vcpu
        )
    }
}

/// The mnemonic of an exception vector (SDM vol. 3A table 6-1).
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        _ => "interrupt",
    }
}

/// How a domain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainExit {
    /// The guest called `SCHEDOP_shutdown` with this reason.
    Shutdown(ShutdownReason),
    /// The hypervisor stopped the guest.
    Crashed(CrashReport),
    /// [`Domain::destroy`] stopped it.
    Destroyed,
}

impl std::fmt::Display for DomainExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainExit::Shutdown(r) => write!(f, "shutdown ({})", shutdown_name(*r)),
            DomainExit::Crashed(c) => write!(f, "crashed: {c}"),
            DomainExit::Destroyed => write!(f, "destroyed"),
        }
    }
}

/// The `SHUTDOWN_*` name of a reason.
pub fn shutdown_name(r: ShutdownReason) -> &'static str {
    match r {
        ShutdownReason::Poweroff => "poweroff",
        ShutdownReason::Reboot => "reboot",
        ShutdownReason::Suspend => "suspend",
        ShutdownReason::Crash => "crash",
        ShutdownReason::Watchdog => "watchdog",
        ShutdownReason::SoftReset => "soft_reset",
        _ => "unknown",
    }
}

/// The run state of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running guest code (or in the hypervisor for it).
    Running,
    /// In `SCHEDOP_block` or `SCHEDOP_poll`, waiting for an event or its timer.
    Blocked,
    /// Paused by [`Domain::pause`].
    Paused,
    /// Ended; see [`Domain::wait`].
    Dead,
}

/// Counters of a domain.
#[derive(Debug, Default)]
pub struct Stats {
    /// VM exits (every return from `KVM_RUN`).
    pub exits: AtomicU64,
    /// Hypercalls served.
    pub hypercalls: AtomicU64,
    /// Times the vCPU slept in `SCHEDOP_block` or `SCHEDOP_poll`.
    pub blocks: AtomicU64,
    /// Blocks in which a [`BlockedService`] did work on the vCPU thread.
    pub blocks_served: AtomicU64,
    /// Bytes written to the console (accepted by the rate limit).
    pub console_bytes: AtomicU64,
    /// Event upcalls delivered into the guest's callback.
    pub upcalls: AtomicU64,
    /// Console bytes dropped by the rate limit.
    pub console_dropped: AtomicU64,
    /// Exceptions bounced to the guest's handlers.
    pub bounces: AtomicU64,
}

/// A snapshot of [`Stats`] and timings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// VM exits.
    pub exits: u64,
    /// Hypercalls.
    pub hypercalls: u64,
    /// Blocks.
    pub blocks: u64,
    /// Blocks in which a [`BlockedService`] did work on the vCPU thread.
    pub blocks_served: u64,
    /// Console bytes.
    pub console_bytes: u64,
    /// Event upcalls delivered.
    pub upcalls: u64,
    /// Console bytes dropped by the rate limit.
    pub console_dropped: u64,
    /// Exceptions bounced to the guest's handlers.
    pub bounces: u64,
    /// CPU time the vCPU threads used, in nanoseconds (their thread CPU clocks, summed; per vCPU in
    /// [`Domain::vcpu_cpu_ns`]).
    pub cpu_ns: u64,
    /// Wall time from start to end (or to now).
    pub run_ns: u64,
}

/// The state of one vCPU, under the domain's lock.
#[derive(Default)]
pub(crate) struct VcpuCtl {
    /// Runnable (`VCPUOP_up`; vCPU 0 from the start), not down.
    pub(crate) up: bool,
    /// Given a context (`VCPUOP_initialise`; vCPU 0 by the builder).
    pub(crate) initialised: bool,
    /// The context of `VCPUOP_initialise`, loaded by the vCPU's thread before it first runs.
    pub(crate) pending: Option<Box<crate::hypercall::InitialState>>,
    /// The one-shot timer (`set_timer_op`, `VCPUOP_set_singleshot_timer`), a system time.
    pub(crate) timer: Option<u64>,
    /// Running, blocked, paused or down.
    pub(crate) state: Option<RunState>,
    /// The thread's CPU time, once it ended.
    pub(crate) cpu_ns: u64,
    /// The vCPU must flush its TLB before it next enters the guest.
    pub(crate) flush: bool,
}

pub(crate) struct Control {
    pub(crate) paused: bool,
    pub(crate) destroy: bool,
    pub(crate) vcpus: Vec<VcpuCtl>,
    /// vCPU threads still running.
    pub(crate) live: u32,
    pub(crate) state: RunState,
    pub(crate) exit: Option<DomainExit>,
    pub(crate) started: Option<Instant>,
    pub(crate) ended: Option<Instant>,
    pub(crate) cpu_ns: u64,
}

/// Console output kept per domain for [`Domain::console_output`].
pub const CONSOLE_KEEP: usize = 64 << 10;

pub(crate) struct Console {
    line: Vec<u8>,
    kept: Vec<u8>,
    /// Token bucket of the rate limit, in bytes.
    tokens: u64,
    last_refill: Instant,
    /// Bytes dropped since the limit last started to bite.
    dropped: u64,
}

impl Console {
    fn new() -> Self {
        Self {
            line: Vec::new(),
            kept: Vec::new(),
            tokens: CONSOLE_BURST,
            last_refill: Instant::now(),
            dropped: 0,
        }
    }
}

/// The console rate limit, as xenconsoled has one: a guest may print this many bytes a second...
pub const CONSOLE_RATE: u64 = 256 << 10;
/// ...after a burst of this many.
pub const CONSOLE_BURST: u64 = 1 << 20;

pub(crate) struct Clock {
    pub(crate) scale: PvClockScale,
    /// Guest TSC minus host TSC.
    pub(crate) tsc_offset: u64,
    /// The guest TSC at system time 0 (the domain's creation).
    pub(crate) tsc0: u64,
}

/// A vCPU's virtual IDT: per vector, the handler's address and the `trap_info` flags.
pub(crate) type TrapTable = [Option<(u64, u8)>; 256];

/// The state of one domain shared by its vCPU thread, its handle and other domains.
pub(crate) struct DomainCore {
    pub(crate) name: String,
    pub(crate) domid: DomId,
    pub(crate) ram: GuestRam,
    pub(crate) layout: Layout,
    pub(crate) shared: SharedInfoView,
    pub(crate) host: Weak<HostInner>,
    pub(crate) ctl: Mutex<Control>,
    pub(crate) cv: Condvar,
    /// The number of vCPUs.
    pub(crate) nr_vcpus: u32,
    /// Per vCPU, its thread while it runs (the target of [`kick`](Self::kick)).
    pub(crate) kick_thread: Vec<Mutex<Option<libc::pthread_t>>>,
    /// Per event-channel port, the vCPU it notifies (`bind_virq`, `bind_ipi`, `bind_vcpu`; 0 otherwise).
    pub(crate) port_vcpu: Vec<std::sync::atomic::AtomicU32>,
    pub(crate) stats: Stats,
    pub(crate) console: Mutex<Console>,
    pub(crate) sink: Option<ConsoleSink>,
    pub(crate) clock: Clock,
    pub(crate) grant_frames: AtomicU64,
    /// Per vCPU, the guest's virtual IDT (`set_trap_table`): per vector, the handler and the `trap_info`
    /// flags.
    pub(crate) traps: Vec<Mutex<TrapTable>>,
    /// Frames the guest gave back (`XENMEM_decrease_reservation`), their memory returned to the host.
    pub(crate) ballooned: Mutex<std::collections::BTreeSet<u64>>,
    /// The guest's memory is registered with a back end's io_uring ([`Domain::fixed_memory`]): its
    /// pages must stay the memfd's, so a frame given back is zeroed rather than punched out.
    pub(crate) ram_pinned: AtomicBool,
    /// Per vCPU, the event callback's address (`CALLBACKTYPE_event`), 0 if none.
    pub(crate) event_callback: Vec<AtomicU64>,
    /// Domain 0's work that a vCPU thread does while its guest blocks ([`Domain::add_blocked_service`]).
    pub(crate) blocked_services: Mutex<Arc<[Arc<dyn BlockedService>]>>,
    /// Per vCPU, whether its thread is in a [`BlockedService`] (maybe asleep in a device): an event for it
    /// then kicks the thread (the signal ends that sleep with `EINTR`), so the event is not held up.
    pub(crate) serving_blocked: Vec<AtomicBool>,
}

/// Work of domain 0 (the Blanket layer) that a vCPU thread of the guest does itself while the guest blocks
/// in `SCHEDOP_block` or `SCHEDOP_poll`, instead of another thread waking to do it and then waking the vCPU:
/// blkback's inline serving ([`pv_backend::blk::InlineDevice`]) sleeps in the disk's io_uring there and
/// answers the guest's requests as they complete. Added with [`Domain::add_blocked_service`].
pub trait BlockedService: Send + Sync {
    /// Serves, for at most `budget`, what the guest waits for; returns early once `wake()` holds (an
    /// event is pending for the vCPU, or the domain is paused or destroyed). Returns whether it did
    /// anything; the vCPU then blocks as before until its event.
    fn serve_blocked(&self, budget: Duration, wake: &dyn Fn() -> bool) -> bool;
}

impl DomainCore {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Control> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `cr3` names one of the domain's validated top-level page tables (a context's `ctrlreg[3]`).
    pub(crate) fn valid_root(&self, cr3: u64) -> bool {
        cr3 == self.layout.pt_base
    }

    /// The domain's system time: nanoseconds since it was created.
    ///
    /// Computed from the TSC exactly as the guest computes it from its time record (one snapshot taken at
    /// creation, never moved), so the two views agree and neither goes backwards.
    pub(crate) fn system_time(&self) -> u64 {
        let tsc = host_tsc().wrapping_add(self.clock.tsc_offset);
        self.clock.scale.scale(tsc.saturating_sub(self.clock.tsc0))
    }

    /// Wakes vCPU `vcpu`: out of a block (condvar) and out of `KVM_RUN` (a signal).
    pub(crate) fn kick(&self, vcpu: u32) {
        self.cv.notify_all();
        let Some(slot) = self.kick_thread.get(vcpu as usize) else {
            return;
        };
        if let Some(t) = *slot.lock().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: `t` is the vCPU thread, which clears `kick_thread` under this lock before it exits,
            // so it is alive; the signal's handler is installed before the thread is registered.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Whether the calling thread is vCPU `vcpu`'s.
    fn on_vcpu_thread(&self, vcpu: u32) -> bool {
        self.kick_thread.get(vcpu as usize).is_some_and(|slot| {
            // SAFETY: pthread_self has no preconditions; pthread_equal compares two thread ids.
            (*slot.lock().unwrap_or_else(|e| e.into_inner()))
                .is_some_and(|t| unsafe { libc::pthread_equal(t, libc::pthread_self()) } != 0)
        })
    }

    /// Wakes every vCPU (to pause, destroy or stop the domain).
    pub(crate) fn kick_all(&self) {
        for v in 0..self.nr_vcpus {
            self.kick(v);
        }
    }

    /// The vCPU `port` notifies.
    pub(crate) fn port_vcpu(&self, port: u32) -> u32 {
        self.port_vcpu
            .get(port as usize)
            .map(|v| v.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// Sets the vCPU `port` notifies.
    pub(crate) fn set_port_vcpu(&self, port: u32, vcpu: u32) {
        if let Some(v) = self.port_vcpu.get(port as usize) {
            v.store(vcpu, Ordering::SeqCst);
        }
    }

    /// Marks `port` pending for this domain and wakes the vCPU it is bound to: out of a block or poll (any
    /// newly pending port, masked or not, since `SCHEDOP_poll` waits on masked ports), and out of guest code
    /// when an upcall became pending and the guest registered an event callback on that vCPU.
    pub(crate) fn deliver(&self, port: u32) {
        let events = self.shared.two_level();
        let vcpu = self.port_vcpu(port);
        if let Ok(n) = events.send(port, &self.shared.vcpu_events(vcpu)) {
            self.after_send(n, vcpu);
        }
    }

    pub(crate) fn after_send(&self, n: xen_abi::event_channel::Notify, vcpu: u32) {
        use xen_abi::event_channel::Notify;
        if n == Notify::AlreadyPending {
            return;
        }
        // Take the lock so a vCPU about to sleep sees either the bit or this notification.
        let running = self
            .lock()
            .vcpus
            .get(vcpu as usize)
            .is_some_and(|v| v.state == Some(RunState::Running));
        self.cv.notify_all();
        let cb = self
            .event_callback
            .get(vcpu as usize)
            .map(|c| c.load(Ordering::SeqCst))
            .unwrap_or(0);
        // Not its own thread: the service's own answers are sent from there, awake.
        let serving = self
            .serving_blocked
            .get(vcpu as usize)
            .is_some_and(|s| s.load(Ordering::SeqCst))
            && !self.on_vcpu_thread(vcpu);
        if (running && n == Notify::Upcall && cb != 0) || serving {
            self.kick(vcpu);
        }
    }

    /// Fires vCPU `vcpu`'s timer from the host's timer thread if it is still the one set for `deadline`.
    pub(crate) fn timer_expired(&self, vcpu: u32, deadline: u64) {
        let mut c = self.lock();
        if c.vcpus.get(vcpu as usize).and_then(|v| v.timer) != Some(deadline) {
            return;
        }
        let now = self.system_time();
        if now < deadline {
            // The host's monotonic clock and the TSC disagree slightly: come back when it is due.
            drop(c);
            if let Some(host) = self.host.upgrade() {
                host.timers.add(
                    Instant::now() + Duration::from_nanos(deadline - now),
                    self.domid,
                    vcpu,
                    deadline,
                );
            }
            return;
        }
        let n = self.fire_timer_if_due(&mut c, vcpu);
        drop(c);
        if let Some(n) = n {
            self.after_send(n, vcpu);
        }
    }

    /// Appends console bytes: whole lines go to the sink; everything (up to [`CONSOLE_KEEP`]) is kept.
    /// Output beyond [`CONSOLE_RATE`] (after a [`CONSOLE_BURST`]) is dropped and counted, with one line
    /// saying so when it starts and one saying how much was lost when it ends.
    pub(crate) fn console_write(&self, bytes: &[u8]) {
        let mut c = self.console.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill =
            now.duration_since(c.last_refill).as_micros() as u64 * CONSOLE_RATE / 1_000_000;
        if refill > 0 {
            c.tokens = (c.tokens + refill).min(CONSOLE_BURST);
            c.last_refill = now;
        }
        let take = (bytes.len() as u64).min(c.tokens) as usize;
        c.tokens -= take as u64;
        let dropped = bytes.len() - take;
        if dropped > 0 {
            if c.dropped == 0
                && let Some(sink) = &self.sink
            {
                sink(
                    &self.name,
                    &format!("[console output over {CONSOLE_RATE} bytes/s: dropping]"),
                );
            }
            c.dropped += dropped as u64;
            self.stats
                .console_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        } else if c.dropped > 0 {
            if let Some(sink) = &self.sink {
                sink(
                    &self.name,
                    &format!("[console: {} bytes dropped]", c.dropped),
                );
            }
            c.dropped = 0;
        }
        let bytes = &bytes[..take];
        self.stats
            .console_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let room = CONSOLE_KEEP.saturating_sub(c.kept.len());
        c.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&c.line).into_owned();
                c.line.clear();
                if let Some(sink) = &self.sink {
                    sink(&self.name, &line);
                }
            } else if c.line.len() < 4096 {
                c.line.push(b);
            }
        }
    }

    fn flush_console(&self) {
        let mut c = self.console.lock().unwrap_or_else(|e| e.into_inner());
        if !c.line.is_empty() {
            let line = String::from_utf8_lossy(&c.line).into_owned();
            c.line.clear();
            if let Some(sink) = &self.sink {
                sink(&self.name, &line);
            }
        }
    }

    /// Publishes the vCPUs' time records from the host TSC (one record, the same for every vCPU).
    pub(crate) fn update_time(&self) {
        for v in 0..self.nr_vcpus {
            self.shared
                .write_time(v, self.clock.tsc0, 0, self.clock.scale);
        }
    }

    /// Fires vCPU `vcpu`'s one-shot timer if it is due: its VIRQ_TIMER becomes pending (the caller, holding
    /// the lock, wakes whoever must be woken with the returned [`Notify`](xen_abi::event_channel::Notify)).
    pub(crate) fn fire_timer_if_due(
        &self,
        ctl: &mut Control,
        vcpu: u32,
    ) -> Option<xen_abi::event_channel::Notify> {
        let slot = ctl.vcpus.get_mut(vcpu as usize)?;
        let deadline = slot.timer?;
        if self.system_time() < deadline {
            return None;
        }
        slot.timer = None;
        let host = self.host.upgrade()?;
        let port = host
            .evtchn()
            .table(self.domid)
            .ok()
            .and_then(|t| t.virq_port(xen_abi::hypercall::VIRQ_TIMER, vcpu))?;
        self.shared
            .two_level()
            .send(port, &self.shared.vcpu_events(vcpu))
            .ok()
    }

    /// Sets (or with `None` cancels) vCPU `vcpu`'s one-shot timer, at a system time in nanoseconds.
    pub(crate) fn set_timer(&self, vcpu: u32, deadline: Option<u64>) {
        if let Some(slot) = self.lock().vcpus.get_mut(vcpu as usize) {
            slot.timer = deadline;
        }
        if let (Some(d), Some(host)) = (deadline, self.host.upgrade()) {
            let wait = Duration::from_nanos(d.saturating_sub(self.system_time()));
            host.timers.add(Instant::now() + wait, self.domid, vcpu, d);
        }
    }
}

fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Called with the domain-0 port an event arrived on.
pub type Dom0Handler = Arc<dyn Fn(u32) + Send + Sync>;

pub(crate) struct HostInner {
    kvm: Kvm,
    pub(crate) timers: Arc<crate::timer::TimerQueue>,
    evtchn: Mutex<EvtchnRegistry>,
    domains: Mutex<HashMap<DomId, Weak<DomainCore>>>,
    /// The domid given last (Xen's rover): ids are handed out in increasing order, wrapping, so that a
    /// destroyed domain's id is not reused at once (a restarted guest gets a new one, as under Xen).
    last_domid: std::sync::atomic::AtomicU16,
    /// Domain 0's event handlers, by dom0 port: how the Blanket layer's back-ends hear guests' events.
    dom0_handlers: Mutex<HashMap<u32, Dom0Handler>>,
}

impl HostInner {
    pub(crate) fn evtchn(&self) -> MutexGuard<'_, EvtchnRegistry> {
        self.evtchn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs domain 0's handler for `port`, if one is registered.
    pub(crate) fn dom0_event(&self, port: u32) {
        let h = self
            .dom0_handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&port)
            .cloned();
        if let Some(h) = h {
            h(port);
        }
    }

    pub(crate) fn domain(&self, id: DomId) -> Option<Arc<DomainCore>> {
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(Weak::upgrade)
    }
}

/// The hypervisor: owns `/dev/kvm`, hands out domain ids, connects domains' event channels and runs the
/// timer thread.
///
/// [`Hypervisor::new`] installs a process-wide handler for `SIGRTMIN + 7`, the signal that kicks a vCPU
/// thread out of `KVM_RUN` (to pause it, destroy it or deliver an upcall): an embedding program must leave
/// that signal alone.
#[derive(Clone)]
pub struct Hypervisor {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor").finish_non_exhaustive()
    }
}

/// The first domain id given to guests (0 is the Blanket layer itself, as dom0 is in Xen).
pub const FIRST_DOMID: DomId = 1;
/// The largest domain id (`DOMID_FIRST_RESERVED - 1` of `xen.h`).
pub const MAX_DOMID: DomId = 0x7fef;

impl Hypervisor {
    /// Opens `/dev/kvm`.
    pub fn new() -> Result<Self, DomainError> {
        let kvm = Kvm::new().map_err(|source| DomainError::Kvm {
            what: "opening /dev/kvm",
            source,
        })?;
        install_kick_handler();
        let mut evtchn = EvtchnRegistry::default();
        evtchn.add_domain(0);
        let timers = Arc::new(crate::timer::TimerQueue::default());
        let inner = Arc::new(HostInner {
            kvm,
            timers: timers.clone(),
            evtchn: Mutex::new(evtchn),
            domains: Mutex::new(HashMap::new()),
            last_domid: std::sync::atomic::AtomicU16::new(0),
            dom0_handlers: Mutex::new(HashMap::new()),
        });
        crate::timer::start(timers, Arc::downgrade(&inner)).map_err(|source| {
            DomainError::Thread {
                name: "timer".into(),
                source,
            }
        })?;
        Ok(Self { inner })
    }

    /// Domain 0 (the Blanket layer, where back-ends live) offers a new port to `remote`, which binds it with
    /// `EVTCHNOP_bind_interdomain(0, port)`; `on_event` runs (on the sender's vCPU thread: keep it short)
    /// for every event the guest sends on it. Returns the dom0 port, or a Xen errno.
    pub fn dom0_alloc_unbound(
        &self,
        remote: DomId,
        on_event: impl Fn(u32) + Send + Sync + 'static,
    ) -> Result<u32, i64> {
        let port = self
            .inner
            .evtchn()
            .table(0)?
            .alloc(Channel::Unbound { remote })?;
        self.inner
            .dom0_handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, Arc::new(on_event));
        Ok(port)
    }

    /// Domain 0 binds to `remote_port` of `remote`, which the guest offered to domain 0 (for example its
    /// `start_info.store_evtchn` or `console.domU.evtchn`, or one it allocated with `alloc_unbound`);
    /// `on_event` runs for every event the guest sends. Returns the dom0 port, or a Xen errno.
    pub fn dom0_bind_interdomain(
        &self,
        remote: DomId,
        remote_port: u32,
        on_event: impl Fn(u32) + Send + Sync + 'static,
    ) -> Result<u32, i64> {
        let port = self
            .inner
            .evtchn()
            .bind_interdomain(0, remote, remote_port)?;
        self.inner
            .dom0_handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, Arc::new(on_event));
        Ok(port)
    }

    /// Domain 0 sends an event on its `port` (as a back-end notifies its front-end); an unbound port drops
    /// it, as in Xen. Returns a Xen errno for a port that is not in use.
    pub fn dom0_send(&self, port: u32) -> Result<(), i64> {
        let target = self.inner.evtchn().send_target(0, port)?;
        if let Some((dom, p)) = target {
            if dom == 0 {
                self.inner.dom0_event(p);
            } else if let Some(d) = self.inner.domain(dom) {
                d.deliver(p);
            }
        }
        Ok(())
    }

    /// Domain 0 closes its `port` (the guest's end goes back to unbound).
    pub fn dom0_close(&self, port: u32) -> Result<(), i64> {
        self.inner.evtchn().close(0, port)?;
        self.inner
            .dom0_handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
        Ok(())
    }

    /// Creates and builds a domain (not started: see [`Domain::start`]).
    pub fn create_domain(&self, config: DomainConfig) -> Result<Domain, DomainError> {
        let domid = {
            let mut doms = self.inner.domains.lock().unwrap_or_else(|e| e.into_inner());
            doms.retain(|_, d| d.strong_count() > 0);
            // After the last one given, wrapping to FIRST_DOMID; bounded by the id space.
            let last = self.inner.last_domid.load(Ordering::Relaxed);
            let id = (last.saturating_add(1).max(FIRST_DOMID)..=MAX_DOMID)
                .chain(FIRST_DOMID..=last.min(MAX_DOMID))
                .find(|id| !doms.contains_key(id))
                .ok_or(DomainError::NoDomId(doms.len()))?;
            self.inner.last_domid.store(id, Ordering::Relaxed);
            doms.insert(id, Weak::new());
            id
        };
        let result = self.build_domain(domid, config);
        if result.is_err() {
            self.inner
                .domains
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&domid);
        }
        result
    }

    fn build_domain(&self, domid: DomId, config: DomainConfig) -> Result<Domain, DomainError> {
        let k = |what: &'static str| move |source| DomainError::Kvm { what, source };
        if config.vcpus == 0 || config.vcpus > builder::MAX_VCPUS {
            return Err(DomainError::Config(format!(
                "{} vCPUs: a domain has 1 to {} vCPUs (the vcpu_info slots of shared_info)",
                config.vcpus,
                builder::MAX_VCPUS
            )));
        }
        let ram = GuestRam::new(&config.name, config.memory)?;
        // The XenStore and console channels are offered to domain 0 (the Blanket layer's back-ends).
        let ports = {
            let mut ev = self.inner.evtchn();
            ev.add_domain(domid);
            let t = ev
                .table(domid)
                .map_err(|e| DomainError::Config(format!("event table: {e}")))?;
            let xenstore = t.alloc(Channel::Unbound { remote: 0 }).unwrap_or(0);
            let console = t.alloc(Channel::Unbound { remote: 0 }).unwrap_or(0);
            BootPorts { xenstore, console }
        };
        let layout = match builder::build(&ram, &config.kernel, &config.cmdline, ports) {
            Ok(l) => l,
            Err(e) => {
                self.inner.evtchn().remove_domain(domid);
                return Err(e.into());
            }
        };
        let vm = self.inner.kvm.create_vm().map_err(k("KVM_CREATE_VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.host_base() as u64,
        };
        // SAFETY: the region is guest memory's mapping, which lives in the DomainCore as long as the VM
        // (the VmFd is moved into the vCPU thread, which holds an Arc of the core).
        unsafe { vm.set_user_memory_region(region) }.map_err(k("KVM_SET_USER_MEMORY_REGION"))?;
        let cpuid = self
            .inner
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(k("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for n in 0..config.vcpus {
            let vcpu = vm.create_vcpu(u64::from(n)).map_err(k("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(&cpuid).map_err(k("KVM_SET_CPUID2"))?;
            let mut sregs = vcpu.get_sregs().map_err(k("KVM_GET_SREGS"))?;
            x86::setup_sregs(
                &mut sregs,
                layout.pt_base,
                builder::GDT_BASE,
                builder::IDT_BASE,
                builder::vcpu_tss(n),
            );
            sregs.tr.selector = builder::vcpu_tss_selector(n);
            sregs.tr.limit = (x86::TSS_SIZE + 32 - 1) as u32;
            if !config.exception_reports {
                sregs.idt.limit = 0;
            }
            vcpu.set_sregs(&sregs).map_err(k("KVM_SET_SREGS"))?;
            if n == 0 {
                let mut regs = vcpu.get_regs().map_err(k("KVM_GET_REGS"))?;
                regs.rip = layout.kernel.entry;
                regs.rsp = layout.stack_top;
                regs.rsi = layout.start_info;
                regs.rflags = x86::RFLAGS_GUEST & !x86::RFLAGS_IOPL;
                vcpu.set_regs(&regs).map_err(k("KVM_SET_REGS"))?;
            }
            vcpus.push(vcpu);
        }
        let vcpu = &vcpus[0];
        let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
        let scale = PvClockScale::from_tsc_hz(u64::from(tsc_khz) * 1000)
            .map_err(|e| DomainError::Config(format!("TSC frequency {tsc_khz} kHz: {e}")))?;
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: 0x10,
            ..Default::default()
        }])
        .map_err(|e| DomainError::Config(format!("MSR list: {e:?}")))?;
        let host_now = host_tsc();
        vcpu.get_msrs(&mut msrs)
            .map_err(k("KVM_GET_MSRS(IA32_TSC)"))?;
        let guest_tsc = msrs.as_slice().first().map(|e| e.data).unwrap_or(host_now);
        let shared = SharedInfoView::new(&ram, layout.shared_info)?;
        let core = Arc::new(DomainCore {
            name: config.name.clone(),
            domid,
            shared,
            layout,
            ram,
            host: Arc::downgrade(&self.inner),
            ctl: Mutex::new(Control {
                paused: false,
                destroy: false,
                vcpus: (0..config.vcpus)
                    .map(|n| VcpuCtl {
                        up: n == 0,
                        initialised: n == 0,
                        ..Default::default()
                    })
                    .collect(),
                live: 0,
                state: RunState::Created,
                exit: None,
                started: None,
                ended: None,
                cpu_ns: 0,
            }),
            cv: Condvar::new(),
            nr_vcpus: config.vcpus,
            kick_thread: (0..config.vcpus).map(|_| Mutex::new(None)).collect(),
            port_vcpu: (0..crate::evtchn::MAX_PORTS)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            stats: Stats::default(),
            console: Mutex::new(Console::new()),
            sink: config.console.clone(),
            clock: Clock {
                scale,
                tsc_offset: guest_tsc.wrapping_sub(host_now),
                tsc0: guest_tsc,
            },
            grant_frames: AtomicU64::new(0),
            event_callback: (0..config.vcpus).map(|_| AtomicU64::new(0)).collect(),
            ballooned: Mutex::new(std::collections::BTreeSet::new()),
            ram_pinned: AtomicBool::new(false),
            traps: (0..config.vcpus).map(|_| Mutex::new([None; 256])).collect(),
            blocked_services: Mutex::new(Arc::new([])),
            serving_blocked: (0..config.vcpus).map(|_| AtomicBool::new(false)).collect(),
        });
        core.update_time();
        if let Ok(wall) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            core.shared
                .write_wallclock(wall.as_secs(), wall.subsec_nanos());
        }
        self.inner
            .domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid, Arc::downgrade(&core));
        Ok(Domain {
            core,
            vm: Some(Arc::new(vm)),
            vcpus,
            threads: Vec::new(),
            started: AtomicBool::new(false),
        })
    }
}

/// The errors of resolving a grant reference for domain 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantResolveError {
    /// The entry does not grant this access (bad reference, wrong grantee, read-only, not permit_access).
    #[error(transparent)]
    Grant(#[from] xen_abi::grant_table::GrantError),
    /// The entry names a frame outside the guest's memory, or one the guest itself may not access that
    /// way (its page tables for writing, the hypervisor's system area).
    #[error(
        "grant {gref} names frame {frame:#x}, which is not guest memory the guest may {access} (the domain has {nr_pages} frames)"
    )]
    BadFrame {
        /// The grant reference.
        gref: u32,
        /// The frame the entry names.
        frame: u64,
        /// "write" or "read".
        access: &'static str,
        /// The domain's frame count.
        nr_pages: u64,
    },
}

/// A page a guest granted to domain 0, resolved: where it is in the guest's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantedPage {
    /// The grant reference.
    pub gref: u32,
    /// The granted frame's guest-physical address (4 KiB, in [`Domain::memory`]).
    pub gpa: u64,
    /// Whether the grant is read-only.
    pub readonly: bool,
}

/// A domain: its memory, its vCPUs and the threads that run them (one per vCPU).
pub struct Domain {
    core: Arc<DomainCore>,
    vm: Option<Arc<VmFd>>,
    vcpus: Vec<VcpuFd>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: AtomicBool,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("name", &self.core.name)
            .field("domid", &self.core.domid)
            .finish()
    }
}

impl Domain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The domain id.
    pub fn domid(&self) -> DomId {
        self.core.domid
    }

    /// Where the builder put things.
    pub fn layout(&self) -> &Layout {
        &self.core.layout
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestRam {
        &self.core.ram
    }

    /// The guest's memory for pv-backend's fixed buffers (`BlkBack::with_fixed_memory`). From now on
    /// a frame the guest gives back (`XENMEM_decrease_reservation`) is zeroed rather than punched out
    /// of the memfd: the pages a back end registered must stay the memfd's pages, so ballooning no
    /// longer returns this guest's memory to the host.
    pub fn fixed_memory(&self) -> Option<pv_backend::blk::FixedMemory> {
        {
            // A balloon call under way finishes its punching first (it holds the lock throughout).
            let _calls = self
                .core
                .ballooned
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.core.ram_pinned.store(true, Ordering::SeqCst);
        }
        let ram = &self.core.ram;
        let base = std::ptr::NonNull::new(ram.host_base())?;
        let len = usize::try_from(ram.size()).ok()?;
        let keep: Arc<dyn std::any::Any + Send + Sync> = Arc::new(ram.memory().clone());
        // SAFETY: `base..base + len` is the one mapping of the guest's memfd, which the clone of its
        // regions in `keep` keeps mapped; the hypervisor never unmaps, remaps or advises it, and with
        // `ram_pinned` set the balloon zeroes pages instead of punching holes (hypercall.rs).
        Some(unsafe { pv_backend::blk::FixedMemory::new([(base, len)], keep) })
    }

    /// The number of vCPUs.
    pub fn nr_vcpus(&self) -> u32 {
        self.core.nr_vcpus
    }

    /// Starts the vCPU threads: vCPU 0 runs from the entry point, the others wait for `VCPUOP_up`.
    pub fn start(&mut self) -> Result<(), DomainError> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(DomainError::AlreadyStarted(self.core.name.clone()));
        }
        let Some(vm) = self.vm.take() else {
            return Err(DomainError::AlreadyStarted(self.core.name.clone()));
        };
        let vcpus = std::mem::take(&mut self.vcpus);
        {
            let mut c = self.core.lock();
            c.started = Some(Instant::now());
            c.state = RunState::Running;
            c.live = vcpus.len() as u32;
        }
        for (n, vcpu) in vcpus.into_iter().enumerate() {
            let core = self.core.clone();
            let vm = vm.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{n}-{}", truncate(&core.name, 8)))
                .spawn(move || crate::vcpu::run_vcpu(core, n as u32, vm, vcpu));
            match spawned {
                Ok(h) => self.threads.push(h),
                Err(source) => {
                    // The threads not started count as ended; the started ones are stopped.
                    {
                        let mut c = self.core.lock();
                        c.live -= (self.core.nr_vcpus as usize - n) as u32;
                        c.destroy = true;
                    }
                    self.core.kick_all();
                    return Err(DomainError::Thread {
                        name: self.core.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The CPU time each vCPU's thread used so far (nanoseconds; for a vCPU still running, as of its last
    /// exit to the hypervisor... or 0 until its thread ends).
    pub fn vcpu_cpu_ns(&self) -> Vec<u64> {
        self.core.lock().vcpus.iter().map(|v| v.cpu_ns).collect()
    }

    /// Pauses the domain: its vCPUs stop at their next exit (they are kicked out of guest code at once).
    pub fn pause(&self) {
        self.core.lock().paused = true;
        self.core.kick_all();
    }

    /// Lets a paused domain run again.
    pub fn unpause(&self) {
        self.core.lock().paused = false;
        self.core.cv.notify_all();
    }

    /// Stops the domain for good (its vCPU thread ends; [`wait`](Self::wait) returns
    /// [`DomainExit::Destroyed`] unless it had ended already).
    pub fn destroy(&self) {
        self.core.lock().destroy = true;
        self.core.kick_all();
    }

    /// The current run state.
    pub fn state(&self) -> RunState {
        self.core.lock().state
    }

    /// How the domain ended, if it has.
    pub fn exit(&self) -> Option<DomainExit> {
        self.core.lock().exit.clone()
    }

    /// Waits until the domain has ended and returns how.
    pub fn wait(&mut self) -> DomainExit {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut c = self.core.lock();
        while c.exit.is_none() && c.state != RunState::Created {
            c = self.core.cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        c.exit.clone().unwrap_or(DomainExit::Destroyed)
    }

    /// Waits at most `timeout` for the domain to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<DomainExit> {
        let deadline = Instant::now() + timeout;
        let mut c = self.core.lock();
        while c.exit.is_none() || (c.live > 0 && c.state != RunState::Created) {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            c = self
                .core
                .cv
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let exit = c.exit.clone();
        drop(c);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        exit
    }

    /// Everything the guest printed on its console (the first [`CONSOLE_KEEP`] bytes).
    pub fn console_output(&self) -> String {
        String::from_utf8_lossy(
            &self
                .core
                .console
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .kept,
        )
        .into_owned()
    }

    /// The domain's counters and timings.
    pub fn stats(&self) -> StatsSnapshot {
        let c = self.core.lock();
        let run_ns = match (c.started, c.ended) {
            (Some(s), Some(e)) => e.duration_since(s).as_nanos() as u64,
            (Some(s), None) => s.elapsed().as_nanos() as u64,
            _ => 0,
        };
        let cpu_ns = c.cpu_ns;
        drop(c);
        let s = &self.core.stats;
        StatsSnapshot {
            exits: s.exits.load(Ordering::Relaxed),
            hypercalls: s.hypercalls.load(Ordering::Relaxed),
            blocks: s.blocks.load(Ordering::Relaxed),
            blocks_served: s.blocks_served.load(Ordering::Relaxed),
            console_bytes: s.console_bytes.load(Ordering::Relaxed),
            upcalls: s.upcalls.load(Ordering::Relaxed),
            console_dropped: s.console_dropped.load(Ordering::Relaxed),
            bounces: s.bounces.load(Ordering::Relaxed),
            cpu_ns,
            run_ns,
        }
    }

    /// Has the guest's vCPU threads do `service` while the guest blocks (see [`BlockedService`]), for as
    /// long as the domain lives.
    pub fn add_blocked_service(&self, service: Arc<dyn BlockedService>) {
        let mut s = self
            .core
            .blocked_services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *s = s.iter().cloned().chain([service]).collect();
    }

    /// Sends an event to `port` of this domain from domain 0 (the Blanket layer), as a back-end does.
    pub fn notify(&self, port: u32) {
        self.core.deliver(port);
    }

    /// Resolves grant reference `gref` of this domain's v1 grant table (set up with `GNTTABOP_setup_table`)
    /// for domain 0, for writing or only reading: the entry is copied once and checked
    /// (`GTF_permit_access`, granted to domain 0, not read-only if `write`), and the frame must be guest
    /// memory the guest could access that way itself. Back-ends use this to find a front-end's pages.
    pub fn resolve_grant(&self, gref: u32, write: bool) -> Result<GrantedPage, GrantResolveError> {
        use xen_abi::grant_table::{GRANT_ENTRIES_V1_PER_FRAME, GrantEntryV1, check_ref};
        let core = &self.core;
        let frames = core.grant_frames.load(Ordering::SeqCst) as u32;
        let index = check_ref(gref, frames * GRANT_ENTRIES_V1_PER_FRAME)?;
        let at = core.layout.grant_frames + index as u64 * size_of::<GrantEntryV1>() as u64;
        let entry: GrantEntryV1 =
            core.ram
                .read_obj(at)
                .map_err(|_| GrantResolveError::BadFrame {
                    gref,
                    frame: at / crate::memory::PAGE_SIZE,
                    access: "read",
                    nr_pages: core.ram.nr_pages(),
                })?;
        let frame = u64::from(entry.check_access(0, !write)?);
        let gpa = frame * crate::memory::PAGE_SIZE;
        let ok = if write {
            core.layout
                .guest_writable(&core.ram, gpa, crate::memory::PAGE_SIZE)
        } else {
            core.layout
                .guest_readable(&core.ram, gpa, crate::memory::PAGE_SIZE)
        };
        if !ok {
            return Err(GrantResolveError::BadFrame {
                gref,
                frame,
                access: if write { "write" } else { "read" },
                nr_pages: core.ram.nr_pages(),
            });
        }
        let readonly = entry.flags & xen_abi::grant_table::GTF_readonly != 0;
        Ok(GrantedPage {
            gref,
            gpa,
            readonly,
        })
    }

    /// Host memory the guest's memfd uses now (bytes actually allocated), from `fstat`'s block count.
    pub fn host_memory_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.core
            .ram
            .file()
            .metadata()
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.destroy();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        if let Some(host) = self.core.host.upgrade() {
            host.evtchn().remove_domain(self.core.domid);
            host.domains
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.core.domid);
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Records how vCPU `vcpu`'s thread ended: the first vCPU to end the domain (a shutdown, a crash) names how
/// it ended and stops the other vCPUs; the domain is dead once every vCPU thread has ended.
pub(crate) fn finish(core: &DomainCore, vcpu: u32, exit: DomainExit, cpu_ns: u64) {
    let mut c = core.lock();
    let stop_others = exit != DomainExit::Destroyed && !c.destroy;
    if c.exit.is_none() && (stop_others || c.live <= 1) {
        c.exit = Some(exit);
    }
    if stop_others {
        c.destroy = true;
    }
    if let Some(v) = c.vcpus.get_mut(vcpu as usize) {
        v.cpu_ns = cpu_ns;
        v.state = Some(RunState::Dead);
    }
    c.cpu_ns += cpu_ns;
    c.live = c.live.saturating_sub(1);
    let last = c.live == 0;
    if last {
        c.state = RunState::Dead;
        c.ended = Some(Instant::now());
        if c.exit.is_none() {
            c.exit = Some(DomainExit::Destroyed);
        }
    }
    drop(c);
    if stop_others {
        core.kick_all();
    }
    if last {
        core.flush_console();
    }
    core.cv.notify_all();
}

// ---- kicking a vCPU out of KVM_RUN -------------------------------------------------------------------

thread_local! {
    static IMMEDIATE_EXIT: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread (`SIGRTMIN + 7`).
pub(crate) fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points at `immediate_exit` of this thread's mapped kvm_run, registered by
        // `register_kick_target` and cleared before the mapping goes away.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; `on_kick` is
        // async-signal-safe (one volatile store through a thread-local Cell with const init).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Registers this thread's `kvm_run.immediate_exit` as vCPU `vcpu`'s kick target.
pub(crate) fn register_kick_target(core: &DomainCore, vcpu: u32, immediate_exit: *mut u8) {
    IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
    if let Some(slot) = core.kick_thread.get(vcpu as usize) {
        // SAFETY: pthread_self has no preconditions.
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(unsafe { libc::pthread_self() });
    }
}

/// Unregisters vCPU `vcpu`'s kick target (before the vCPU fd is closed).
pub(crate) fn unregister_kick_target(core: &DomainCore, vcpu: u32) {
    if let Some(slot) = core.kick_thread.get(vcpu as usize) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
}

pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
