//! The Blanket hypervisor: Xen x86-64 PV guests on KVM, deprivileged in ring 3.
//!
//! This crate runs guests that speak the Xen PV interface on a host where the only virtualization is
//! KVM, including hosts without hardware virtualization: on this project's machines KVM is PVM (shadow
//! paging, no VMX), guest code at CPL 3 runs at native speed and guest CPL 0 is emulated about 5000 times
//! slower. So guests run as Xen x86-64 PV guests do, with their kernel in ring 3, and the hypervisor is a
//! userspace VMM that serves their hypercalls.
//!
//! ```no_run
//! use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, guest};
//!
//! let hv = Hypervisor::new()?;
//! let mut cfg = DomainConfig::new("demo", guest::builtin()?);
//! cfg.cmdline = "hello".into();
//! let mut dom = hv.create_domain(cfg)?;
//! dom.start()?;
//! let exit = dom.wait();
//! println!("{exit}\n{}", dom.console_output());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The guest ABI: what a guest may rely on
//!
//! **Image.** An x86-64 ELF executable whose `PT_LOAD` segments lie at or above `0x200000` (virtual =
//! physical; `XEN_ELFNOTE_VIRT_BASE`, if given, must be 0), with a `XEN_ELFNOTE_HYPERCALL_PAGE` note naming a
//! page-aligned page inside a segment. `XEN_ELFNOTE_ENTRY` overrides `e_entry`. Memory not covered by file
//! bytes is zero.
//!
//! **Entry.** 64-bit mode, CPL 3, `cs` = `FLAT_RING3_CS64` (`0xe033`), `ss` = `FLAT_RING3_SS64`
//! (`0xe02b`), `ds`/`es`/`fs`/`gs` null, as `xen-x86_64.h` defines them. `rsi` holds `start_info`'s
//! address, `rsp` the top of a 64 KiB boot stack, `rflags` = IF (IOPL 0). SSE is enabled (CR4.OSFXSR,
//! OSXMMEXCPT); AVX is not (no XSAVE). CR4.TSD is clear, so `rdtsc` works.
//!
//! **Memory.** All of guest memory is mapped at virtual = physical with 4 KiB pages, read-write and
//! executable, except: page 0 (not mapped: null dereferences fault), the hypervisor's system area below
//! `0x20000` (GDT, IDT, TSS, exception stubs; not accessible at CPL 3) and the page tables
//! (`start_info.pt_base`, `nr_pt_frames`), which are mapped read-only as Xen maps them. The P2M
//! (`start_info.mfn_list`) is the identity: pfn *n* is mfn *n*. The builder's layout is in [`builder`].
//!
//! **start_info** ([`xen_abi::xen::StartInfo`]): magic `xen-3.0-x86_64`, `nr_pages`, `shared_info` (its
//! machine address, which is also its virtual address), `store_mfn`/`store_evtchn` and
//! `console.domU.{mfn, evtchn}` (pages and unbound ports offered to domain 0, where the Blanket layer's
//! xenstored and console back-end attach), `pt_base`, `nr_pt_frames`, `mfn_list` and `cmd_line`.
//!
//! **Hypercalls.** Call `hypercall_page + n * 32` with Xen's x86-64 register convention (`rax` = number,
//! arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8`; the result in `rax`; `rcx` and `r11` may be clobbered, as by
//! Xen's `syscall` stubs). The stub is `mov $n, %eax; out %al, $0x99; ret`: the TSS I/O bitmap allows port
//! `0x99` alone at CPL 3, so the `out` is one VM exit to this VMM. Writing the port from anywhere but a
//! stub is a breach of the ABI and stops the domain ([`CrashKind::BadHypercall`]). Served:
//!
//! | hypercall | what |
//! |---|---|
//! | `console_io` | `CONSOLEIO_write` (at most 64 KiB a call, else `-EINVAL`; beyond 256 KiB/s after a 1 MiB burst, output is dropped and counted, as xenconsoled rate-limits); `CONSOLEIO_read` returns 0 |
//! | `xen_version` | version (4.17), extraversion, compile_info, capabilities, changeset, platform_parameters, get_features (none), pagesize, guest_handle; commandline and build_id are `-EPERM` |
//! | `sched_op` | yield, block, poll (up to 128 ports, with timeout), shutdown (poweroff, reboot, suspend, crash, watchdog, soft_reset; another reason is `-EINVAL`), shutdown_code; remote_shutdown is `-EPERM` |
//! | `set_timer_op` | a one-shot timer at an absolute system time (0 cancels), delivered on `VIRQ_TIMER` |
//! | `event_channel_op` | alloc_unbound, bind_interdomain (other domains of this hypervisor, domain 0's back-ends, or itself), bind_virq (global VIRQs on vCPU 0, per-vCPU ones such as `VIRQ_TIMER` on any), bind_ipi (any vCPU), send, close, status, unmask, bind_vcpu (any vCPU), reset; 1024 ports |
//! | `grant_table_op` | setup_table (up to 4 frames, reserved by the builder), query_size, set_version (1 only; 2 is `-EOPNOTSUPP`) |
//! | `memory_op` | current_reservation (less what was given back), maximum_reservation, maximum_ram_page; decrease_reservation and populate_physmap for ballooning (order 0, up to 512 frames a call, only frames above the boot structures): a frame given back is punched out of the memfd, so its memory returns to the host, and reads as zero |
//! | `vcpu_op` | initialise (a `vcpu_guest_context`, validated as Xen's `arch_set_info_guest` does: flat ring-3 selectors, `rip`/`rsp`/callbacks/trap table in guest memory, `cr3` one of the guest's page tables; else `-EINVAL`, and `-EEXIST` the second time), up (`-EINVAL` before initialise), down, is_up, set_singleshot_timer and stop_singleshot_timer (the caller's own vCPU; `VCPU_SSHOTTMR_future` gives `-ETIME` for a past deadline); a vCPU number at or above the domain's is `-ENOENT` |
//! | `iret` | Xen's iret: jump (do not call) to stub 23 with `flags, rip, cs, rflags, rsp, ss` on the stack; the stub pushes `rcx, r11, rax` and the hypervisor restores all of `struct iret_context` (selectors must be the flat ring-3 ones, else the domain is stopped; IOPL and the like cannot be set); the upcall mask becomes the inverse of the frame's IF |
//! | `set_trap_table` | the guest's virtual IDT: handlers (code selector `FLAT_RING3_CS64`, in guest memory) for exceptions 0-31; a null table clears it; an unterminated table (more than 256 entries) is `-EINVAL` |
//! | `set_callbacks`, `callback_op` | the event callback (`CALLBACKTYPE_event`, register and unregister); a failsafe callback is accepted and unused |
//!
//! Anything else returns `-ENOSYS`. Every pointer a guest passes is checked before use: outside guest
//! memory, into page 0 or the system area, or (for results) into the page tables gives `-EFAULT`.
//!
//! **Domain 0.** The Blanket layer itself is domain 0: its back-ends exchange events with guests through
//! [`Hypervisor::dom0_alloc_unbound`], [`Hypervisor::dom0_bind_interdomain`] (for example to a guest's
//! `store_evtchn`) and [`Hypervisor::dom0_send`]; a guest binds and sends to domain 0 as to any domain.
//! Pages a guest grants to domain 0 in its v1 grant table are found with [`Domain::resolve_grant`].
//!
//! **vCPUs.** A domain has [`DomainConfig::vcpus`] vCPUs (1 to [`builder::MAX_VCPUS`]), each a host thread.
//! vCPU 0 boots; the others start down and run once the guest initialises and ups them
//! (`VCPUOP_initialise`, `VCPUOP_up`). Each has its own `vcpu_info` in `shared_info`, TSS, exception stack,
//! timer, event callback and trap table. A fault on any vCPU stops the whole domain, and the report names
//! the vCPU.
//!
//! **Events and time.** The 2-level event ABI in `shared_info` (`evtchn_pending`, `evtchn_mask`, and each
//! vCPU's `evtchn_pending_sel` and `evtchn_upcall_pending`, for the ports bound to it), set with atomics as
//! Xen does. `SCHEDOP_block` clears
//! `evtchn_upcall_mask` and returns once an upcall is pending (the vCPU thread sleeps on a condvar
//! meanwhile, using no CPU); spurious returns are possible, as in Xen. Each vCPU's `vcpu_time_info` gives system
//! time (nanoseconds since the domain was created) from the TSC: one record per vCPU, the same for all,
//! written at creation and never moved, so time never goes backwards; the hypervisor computes the domain's system time from the TSC the
//! same way, so timer deadlines mean the same to both. The wall clock in `shared_info` is set at creation.
//!
//! **Upcalls.** With an event callback registered, an upcall that is pending and not masked is delivered
//! when the vCPU next enters the guest; a vCPU running guest code is kicked out of it (a signal) when an
//! event makes an upcall pending, and the host's timer thread fires `set_timer_op` deadlines on time. The
//! delivery is Xen's x86-64 bounce frame: on the current stack, rounded down to 16 bytes, the words `rcx,
//! r11, rip, cs, rflags, rsp, ss` (lowest address first; `cs` carries the saved upcall mask in bits 32-39,
//! always 0 here), then `rip` = the callback, `rsp` = the frame, and `evtchn_upcall_mask` = 1. The callback
//! pops `rcx` and `r11`, handles the events, clears the mask and returns with `iretq` (legal at CPL 3 to
//! CPL 3). A stack the frame cannot be written to stops the domain ([`CrashKind::Failsafe`]). As under
//! Xen, an event that arrives while the upcall is masked is not delivered by itself when the guest unmasks:
//! the guest looks at `evtchn_upcall_pending` after unmasking (or makes any hypercall, which delivers it).
//! The callback interrupts arbitrary code, so it must preserve every register it uses, SSE ones included
//! (the example guest does `fxsave`/`fxrstor`).
//!
//! **Faults.** An exception reaches the hypervisor's ring-0 stubs, which report it to the VMM. If the guest
//! installed a handler for the vector with `set_trap_table`, the exception is bounced to it as Xen does:
//! Xen's x86-64 frame `rcx, r11, [error code], rip, cs, rflags, rsp, ss` on the guest's stack (16-byte
//! aligned), CR2 in `vcpu_info.arch.cr2` for a page fault, events masked if the entry's flags ask; the
//! handler pops `rcx` and `r11` (and the error code) and returns with `iretq`. Without a handler the domain
//! is stopped with a [`CrashReport`] (vector, error code, CR2, rip, rsp, rflags). A triple fault, an unexpected exit or
//! a KVM error stops it likewise. Only that domain is affected.
//!
//! # Not yet
//!
//! `mmu_update` and `update_va_mapping` (guests keep the initial page tables), software interrupts (`int n`
//! through a DPL-3 trap entry), `GNTTABOP_map_grant_ref` for guests (back-ends in domain 0 reach granted
//! pages through [`devices::grant_table`] instead), grant table v2, FIFO event channels, and suspend/resume
//! (`SHUTDOWN_suspend` is reported, not acted on). Stock PV kernels such as Mini-OS need the first two. The
//! design leaves room for them: the page tables are the guest's (read-only, Xen-style), the selectors are
//! Xen's, and exceptions arrive in the VMM with their frame.
//!
//! # Devices
//!
//! [`toolstack::Toolstack`] is the xl of this hypervisor: from a [`toolstack::GuestConfig`] it creates the
//! domain, introduces it to the host's one xenstored, serves its console ring (lines, a log file or a pty),
//! writes xl's vbd and vif directories and starts pv-backend's blkback and netback for them. A vbd is an
//! image file, or a vhost-user-blk device driven by blanket-virtio with zero copy
//! ([`toolstack::VbdBackend`], [`devices::vhost_user`]); a vif is a port of the in-process switch or a TAP
//! device. [`toolstack::Toolstack::restart`] restarts a guest that rebooted, as xl's `on_reboot =
//! "restart"` does.
//!
//! # Why the hypercall trap is an `out` through the TSS I/O bitmap
//!
//! Measured on this project's PVM host (see the README): PVM forces RFLAGS.IOPL to 0 for the guest, so an
//! `out` at CPL 3 with IOPL 3 faults (#GP). `syscall` from CPL 3 lands at LSTAR still at CPL 3, and
//! `int 0x82` raises #UD, so neither reaches a ring-0 handler cheaply. With the TSS's I/O permission bitmap
//! allowing the one port, the `out` exits to userspace directly: about as fast as an MMIO write to an
//! unbacked page (both go through PVM's instruction emulation), without needing a mapping that a guest
//! could rebuild away, and position-independent. The VMM reads and writes the registers through
//! `KVM_CAP_SYNC_REGS`, so a hypercall is one `KVM_RUN` round trip, no `KVM_GET_REGS`/`KVM_SET_REGS`.
#![warn(missing_docs)]

pub mod builder;
pub mod devices;
pub mod domain;
pub mod elf;
pub mod evtchn;
pub mod guest;
pub mod hypercall;
pub mod memory;
pub mod shared;
mod timer;
pub mod toolstack;
mod vcpu;
pub mod x86;

pub use domain::{
    BlockedService, ConsoleSink, CrashKind, CrashReport, Domain, DomainConfig, DomainError,
    DomainExit, GrantResolveError, GrantedPage, Hypervisor, RunState, StatsSnapshot,
};
