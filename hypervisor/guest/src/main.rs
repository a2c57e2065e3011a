//! The Blanket PV guest: a Xen x86-64 PV mini-OS in Rust, `no_std`, entered in ring 3 with `rsi` pointing
//! at `start_info`. It runs one workload named on its command line:
//!
//! - `hello`: prints a greeting, the Xen version and its memory, then powers off;
//! - `idle`: binds VIRQ_TIMER and sleeps in `SCHEDOP_block` for ever (one wake-up a second);
//! - `cpu=N`: a CPU-bound job of N million steps; prints its time and powers off;
//! - `timer=N`: N timer wake-ups of 10 ms each, measured; then powers off;
//! - `shutdown=CODE`: `SCHEDOP_shutdown` with CODE (poweroff, reboot, suspend, crash, watchdog or a number);
//! - `bad-hypercall`: makes hypercalls with bad numbers and pointers, prints the errors, then writes the
//!   hypercall port from outside the hypercall page (which the hypervisor treats as fatal);
//! - `hcbench=N`: N `xen_version` hypercalls, timed with the guest's clock;
//! - `wait-event[=DOM]`: offers a port to domain DOM (default 0), blocks until an event arrives on it, then
//!   powers off; `send-event=DOM,PORT`: binds to that port of domain DOM and sends an event;
//! - `evtchn-selftest`: exercises the event-channel operations on itself and prints what they returned;
//! - `upcall=N`: registers an event callback and computes while N timer events (10 ms apart) arrive as
//!   upcalls into it;
//! - `flood=N`: writes N x 64 KiB to the console as fast as it can;
//! - `balloon=MIB`: touches MIB MiB at the top of its memory, gives it back (`decrease_reservation`),
//!   takes it again (`populate_physmap`), pausing 300 ms between steps;
//! - `trap`: installs #UD and #PF handlers with `set_trap_table`, takes both (the handlers skip the
//!   faulting instruction), prints what they saw;
//! - `trapbench=N`: N `#UD` exceptions bounced to its handler, timed;
//! - `poll`: `SCHEDOP_poll` with a timeout, on a pending port, and with bad arguments;
//! - `grant`: sets up its grant table and grants two pages to domain 0 (refs 8 read-write, 9 read-only),
//!   then idles;
//! - `trap-upcall`: takes `#UD` traps in a loop while timer upcalls arrive;
//! - `iret`: returns to a label through `HYPERVISOR_iret` with chosen rax, rcx and r11; `iret-ring0` tries
//!   the same into ring 0 (the hypervisor stops the domain);
//! - `smp-cpu=N`, `vcpu-ctx`, `smp-fault`: SMP workloads (see `smp.rs`);
//! - `fault`: dereferences a null pointer; `triple-fault`: executes `ud2` (a triple fault when the
//!   hypervisor gives the domain no IDT).
#![no_std]
#![no_main]

mod platform;

use core::arch::global_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use platform::{Platform, hypercall};
use xen_abi::event_channel as ev;
use xen_abi::hypercall as hc;

/// `DOMID_SELF` in `xen.h`.
const DOMID_SELF: u16 = 0x7ff0;
use xen_abi::sched::ShutdownReason;
use xen_abi::xen::StartInfo;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    lea boot_stack_top(%rip), %rsp
    mov %rsi, %rdi
    call guest_main
1:  ud2
    jmp 1b

    .section .text
    .global upcall_entry
upcall_entry:
    pop %rcx
    pop %r11
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    sub $512, %rsp
    fxsave (%rsp)
    cld
    call upcall_handler
    fxrstor (%rsp)
    add $512, %rsp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    .global ud_entry
ud_entry:
    pop %rcx
    pop %r11
    addq $2, (%rsp)
    lock incl UD_COUNT(%rip)
    iretq

    .global pf_entry
pf_entry:
    pop %rcx
    pop %r11
    push %rax
    mov 8(%rsp), %rax
    mov %rax, PF_ERR(%rip)
    pop %rax
    add $8, %rsp
    addq $3, (%rsp)
    lock incl PF_COUNT(%rip)
    iretq

    .section .hypercall_page, "ax"
    .balign 4096
    .global hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc

    .section .bss
    .balign 16
boot_stack:
    .skip 65536
boot_stack_top:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 8, 2
    .asciz "Xen"
    .balign 4
    .quad hypercall_page
    .balign 4
    .long 4, 8, 1
    .asciz "Xen"
    .balign 4
    .quad _start
    .balign 4
    .long 4, 15, 6
    .asciz "Xen"
    .balign 4
    .asciz "Blanket-miniOS"
    .balign 4
    .long 4, 8, 5
    .asciz "Xen"
    .balign 4
    .asciz "xen-3.0"
    .balign 4
    "#,
    options(att_syntax)
);

/// A `core::fmt::Write` over `console_io`, line-buffered.
pub(crate) struct Console<'a> {
    p: &'a Platform,
    buf: [u8; 256],
    len: usize,
}

impl<'a> Console<'a> {
    pub(crate) fn new(p: &'a Platform) -> Self {
        Self {
            p,
            buf: [0; 256],
            len: 0,
        }
    }
    fn flush(&mut self) {
        if self.len > 0 {
            self.p.console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Drop for Console<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

macro_rules! println {
    ($p:expr, $($arg:tt)*) => {{
        let mut c = Console::new($p);
        let _ = writeln!(c, $($arg)*);
    }};
}

mod devices;
mod smp;

pub(crate) static mut START_INFO: *const StartInfo = core::ptr::null();

#[unsafe(no_mangle)]
extern "C" fn guest_main(start_info: *const StartInfo) -> ! {
    // SAFETY: single-threaded; written once before any use.
    unsafe { START_INFO = start_info };
    // SAFETY: the hypervisor passes start_info's address in rsi.
    let mut p = unsafe { Platform::new(start_info) };
    let cmdline = p.cmdline();
    let workload = cmdline.split_whitespace().next().unwrap_or("hello");
    let (name, arg) = match workload.split_once('=') {
        Some((n, a)) => (n, Some(a)),
        None => (workload, None),
    };
    match name {
        "hello" => hello(&p),
        "idle" => idle(&mut p),
        "cpu" => cpu(&p, arg.and_then(|a| a.parse().ok()).unwrap_or(100)),
        "timer" => timer(&mut p, arg.and_then(|a| a.parse().ok()).unwrap_or(10)),
        "shutdown" => shutdown(&p, arg.unwrap_or("poweroff")),
        "bad-hypercall" => bad_hypercall(&p),
        "flood" => {
            let n: u32 = arg.and_then(|a| a.parse().ok()).unwrap_or(100);
            static CHUNK: [u8; 65536] = [b'x'; 65536];
            let mut r = 0;
            for _ in 0..n {
                r |= p.console_write(&CHUNK);
            }
            println!(&p, "\nflood: {n} x 64 KiB written ({r})");
            p.shutdown(ShutdownReason::Poweroff)
        }
        "balloon" => balloon(&mut p, arg.and_then(|a| a.parse().ok()).unwrap_or(4)),
        "trap" => trap(&p),
        "trap-upcall" => {
            use xen_abi::hypercall::TrapInfo;
            let n = 10;
            TICKS_WANTED.store(n, Ordering::SeqCst);
            TIMER_PORT.store(p.timer_port(), Ordering::SeqCst);
            let table = [
                TrapInfo::new(6, 0, 0xe033, ud_entry as *const () as u64),
                TrapInfo::new(0, 0, 0, 0),
            ];
            set_trap_table(table.as_ptr() as u64);
            let mut cb = [0u64; 2];
            cb[1] = upcall_entry as *const () as u64;
            // SAFETY: CALLBACKOP_register with a struct callback_register.
            unsafe {
                hypercall(
                    hc::__HYPERVISOR_callback_op,
                    0,
                    cb.as_mut_ptr() as u64,
                    0,
                    0,
                    0,
                )
            };
            let t0 = p.time_ns();
            p.set_timer(t0 + 10_000_000);
            while TICKS.load(Ordering::SeqCst) < n && p.time_ns() - t0 < 10_000_000_000 {
                // SAFETY: #UD, bounced to ud_entry, which skips it; timer upcalls arrive meanwhile.
                unsafe { core::arch::asm!("ud2") };
            }
            println!(
                &p,
                "trap-upcall: {} timer upcalls among {} traps",
                TICKS.load(Ordering::SeqCst),
                UD_COUNT.load(Ordering::SeqCst)
            );
            p.shutdown(ShutdownReason::Poweroff)
        }
        "grant" => grant(&mut p),
        "poll" => poll(&p),
        "trapbench" => {
            let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(100);
            use xen_abi::hypercall::TrapInfo;
            let table = [
                TrapInfo::new(6, 0, 0xe033, ud_entry as *const () as u64),
                TrapInfo::new(0, 0, 0, 0),
            ];
            set_trap_table(table.as_ptr() as u64);
            let t0 = p.time_ns();
            for _ in 0..n {
                // SAFETY: #UD, bounced to ud_entry, which skips it.
                unsafe { core::arch::asm!("ud2") };
            }
            let ns = p.time_ns() - t0;
            println!(&p, "trapbench: {n} traps in {ns} ns");
            p.shutdown(ShutdownReason::Poweroff)
        }
        "xs-test" | "console-ring" | "disk-write" | "disk-verify" | "disk-bench" | "disk-load"
        | "disk-reboot" | "net-echo" | "net-ping" => devices::run(&p, name, arg),
        "smp-cpu" => smp::smp_cpu(&p, arg.and_then(|a| a.parse().ok()).unwrap_or(40)),
        "vcpu-ctx" => smp::vcpu_ctx(&p),
        "smp-fault" => smp::smp_fault(&mut p),
        "iret" => iret(&p, 0xe033),
        "iret-ring0" => iret(&p, 0x08),
        "hcbench" => hcbench(&p, arg.and_then(|a| a.parse().ok()).unwrap_or(1000)),
        "wait-event" => wait_event(&p, arg.and_then(|a| a.parse().ok()).unwrap_or(0)),
        "send-event" => send_event(&p, arg.unwrap_or("")),
        "evtchn-selftest" => evtchn_selftest(&p),
        "upcall" => upcall(&mut p, arg.and_then(|a| a.parse().ok()).unwrap_or(20)),
        "upcall-bad-stack" => {
            let port = p.timer_port();
            let mut cb = [0u64; 2];
            cb[1] = upcall_entry as *const () as u64;
            // SAFETY: CALLBACKOP_register with a struct callback_register.
            unsafe {
                hypercall(
                    hc::__HYPERVISOR_callback_op,
                    0,
                    cb.as_mut_ptr() as u64,
                    0,
                    0,
                    0,
                )
            };
            println!(
                &p,
                "upcall-bad-stack: timer on port {port}; spinning with rsp in the system area"
            );
            p.set_timer(p.time_ns() + 10_000_000);
            // SAFETY: deliberately breaks the stack: the loop uses no memory, and the hypervisor cannot
            // push the upcall frame there.
            unsafe { core::arch::asm!("mov rsp, 0x1000", "2:", "jmp 2b", options(noreturn)) }
        }
        "fault" => {
            println!(&p, "fault: reading address 0");
            // SAFETY: deliberately not: page 0 is unmapped, so this faults (the point of the workload).
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            println!(&p, "read {v}: no fault?");
            p.shutdown(ShutdownReason::Poweroff)
        }
        "triple-fault" => {
            println!(&p, "triple-fault: executing ud2");
            // SAFETY: raises #UD on purpose.
            unsafe { core::arch::asm!("ud2") };
            p.shutdown(ShutdownReason::Poweroff)
        }
        other => {
            println!(&p, "unknown workload '{other}' (cmdline '{cmdline}')");
            p.shutdown(ShutdownReason::Crash)
        }
    }
}

fn hello(p: &Platform) -> ! {
    let (major, minor) = p.xen_version();
    let si = p.start_info;
    println!(p, "Hello from the Blanket PV guest!");
    println!(
        p,
        "xen {major}.{minor}, {} pages ({} MiB), magic {}, cmdline '{}'",
        si.nr_pages,
        si.nr_pages / 256,
        core::str::from_utf8(si.magic_str()).unwrap_or("?"),
        p.cmdline()
    );
    println!(
        p,
        "store mfn {:#x} evtchn {}, console mfn {:#x} evtchn {}, pt_base {:#x} ({} frames)",
        si.store_mfn,
        si.store_evtchn,
        si.console.domu().mfn,
        si.console.domu().evtchn,
        si.pt_base,
        si.nr_pt_frames
    );
    println!(p, "system time {} ns", p.time_ns());
    p.shutdown(ShutdownReason::Poweroff)
}

fn idle(p: &mut Platform) -> ! {
    let port = p.timer_port();
    println!(p, "idle: blocking (VIRQ_TIMER on port {port})");
    loop {
        p.set_timer(p.time_ns() + 1_000_000_000);
        p.block();
        p.take_event(port);
    }
}

fn cpu(p: &Platform, millions: u64) -> ! {
    println!(p, "cpu: {millions} million steps");
    let t0 = p.time_ns();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..millions {
        for _ in 0..1_000_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x = core::hint::black_box(x);
    }
    let t1 = p.time_ns();
    println!(
        p,
        "cpu: done in {} ms (checksum {:#x})",
        (t1 - t0) / 1_000_000,
        x
    );
    p.shutdown(ShutdownReason::Poweroff)
}

fn timer(p: &mut Platform, n: u32) -> ! {
    let port = p.timer_port();
    let t0 = p.time_ns();
    let mut woken = 0;
    for _ in 0..n {
        let deadline = p.time_ns() + 10_000_000;
        p.set_timer(deadline);
        // Spurious wake-ups are allowed: block until the timer's event arrives.
        let mut tries = 0;
        while !p.take_event(port) && tries < 1000 {
            p.block();
            tries += 1;
        }
        if p.time_ns() >= deadline {
            woken += 1;
        }
    }
    let ms = (p.time_ns() - t0) / 1_000_000;
    println!(p, "timer: {woken}/{n} wake-ups on time in {ms} ms");
    p.shutdown(ShutdownReason::Poweroff)
}

static TIMER_PORT: AtomicU32 = AtomicU32::new(0);
static TICKS: AtomicU32 = AtomicU32::new(0);
static TICKS_WANTED: AtomicU32 = AtomicU32::new(0);
static UPCALLS: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    fn upcall_entry();
}

/// The event callback's body: takes the pending events, counts timer ticks and re-arms the timer, then
/// unmasks upcalls (the hypervisor masked them when it delivered this one).
#[unsafe(no_mangle)]
extern "C" fn upcall_handler() {
    // SAFETY: START_INFO was set at entry, before the callback was registered.
    let p = unsafe { Platform::new(START_INFO) };
    UPCALLS.fetch_add(1, Ordering::SeqCst);
    let port = TIMER_PORT.load(Ordering::SeqCst);
    // SAFETY: vcpu_info[0].evtchn_upcall_mask, a byte the hypervisor reads atomically.
    let mask = unsafe {
        &*(&raw const (*(p.start_info.shared_info as *const xen_abi::xen::SharedInfo)).vcpu_info[0]
            .evtchn_upcall_mask as *const AtomicU8)
    };
    // Events that arrive while the upcall is masked are taken here: after unmasking, look again (as Xen
    // guests do, or force a callback with a hypercall).
    for _ in 0..16 {
        let mut timer = false;
        for q in p.events().scan(p.vcpu_events(), 64) {
            timer |= q == port;
        }
        if timer {
            let n = TICKS.fetch_add(1, Ordering::SeqCst) + 1;
            if n < TICKS_WANTED.load(Ordering::SeqCst) {
                p.set_timer(p.time_ns() + 10_000_000);
            }
        }
        mask.store(0, Ordering::SeqCst);
        if p.vcpu_events().upcall_pending.load(Ordering::SeqCst) == 0 {
            return;
        }
        mask.store(1, Ordering::SeqCst);
    }
    mask.store(0, Ordering::SeqCst);
    // Still pending after 16 rounds: a hypercall lets the hypervisor deliver it as a fresh upcall.
    p.xen_version();
}

fn upcall(p: &mut Platform, n: u32) -> ! {
    TICKS_WANTED.store(n, Ordering::SeqCst);
    TIMER_PORT.store(p.timer_port(), Ordering::SeqCst);
    // struct callback_register { type = CALLBACKTYPE_event, flags = 0, address }.
    let mut cb = [0u64; 2];
    cb[1] = upcall_entry as *const () as u64;
    // SAFETY: CALLBACKOP_register with a struct callback_register.
    let r = unsafe {
        hypercall(
            hc::__HYPERVISOR_callback_op,
            0,
            cb.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    };
    println!(
        p,
        "upcall: callback registered ({r}), computing until {n} timer upcalls"
    );
    let t0 = p.time_ns();
    p.set_timer(t0 + 10_000_000);
    let mut x: u64 = 1;
    let mut spins: u64 = 0;
    while TICKS.load(Ordering::SeqCst) < n && p.time_ns() - t0 < 10_000_000_000 {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x = core::hint::black_box(x);
        spins += 1;
    }
    let ms = (p.time_ns() - t0) / 1_000_000;
    println!(
        p,
        "upcall: {} timer upcalls ({} upcalls) in {ms} ms while computing ({spins} x 10k steps, checksum {:#x})",
        TICKS.load(Ordering::SeqCst),
        UPCALLS.load(Ordering::SeqCst),
        x
    );
    p.shutdown(ShutdownReason::Poweroff)
}

#[unsafe(no_mangle)]
static UD_COUNT: AtomicU32 = AtomicU32::new(0);
#[unsafe(no_mangle)]
static PF_COUNT: AtomicU32 = AtomicU32::new(0);
#[unsafe(no_mangle)]
static PF_ERR: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    fn ud_entry();
    fn pf_entry();
}

fn set_trap_table(table: u64) -> i64 {
    // SAFETY: `table` is a trap table (or a deliberately bad pointer the hypervisor must refuse).
    unsafe { hypercall(hc::__HYPERVISOR_set_trap_table, table, 0, 0, 0, 0) }
}

fn cr2(p: &Platform) -> u64 {
    let si = p.start_info.shared_info as *const xen_abi::xen::SharedInfo;
    // SAFETY: vcpu_info[0].arch.cr2 of the shared_info page, written by the hypervisor before the bounce.
    unsafe { core::ptr::read_volatile(&raw const (*si).vcpu_info[0].arch.cr2) }
}

fn trap(p: &Platform) -> ! {
    use xen_abi::hypercall::TrapInfo;
    let cs = 0xe033;
    let bad = [TrapInfo::new(6, 0, cs, 0x1000), TrapInfo::new(0, 0, 0, 0)];
    let r_bad_handler = set_trap_table(bad.as_ptr() as u64);
    let r_bad_table = set_trap_table(0xdead_0000_0000);
    let table = [
        TrapInfo::new(6, 0, cs, ud_entry as *const () as u64),
        TrapInfo::new(14, 0, cs, pf_entry as *const () as u64),
        TrapInfo::new(0, 0, 0, 0),
    ];
    let r = set_trap_table(table.as_ptr() as u64);
    for _ in 0..3 {
        // SAFETY: raises #UD; the handler skips the 2-byte instruction.
        unsafe { core::arch::asm!("ud2") };
    }
    // SAFETY: reads page 0 (#PF, not present); the handler skips the 3-byte `mov rax, [rax]`.
    unsafe { core::arch::asm!("mov rax, qword ptr [rax]", inout("rax") 0u64 => _) };
    let (err1, cr2_1) = (PF_ERR.load(Ordering::SeqCst), cr2(p));
    // SAFETY: writes the read-only page tables (#PF, protection); the handler skips `mov [rax], rcx`.
    unsafe {
        core::arch::asm!("mov qword ptr [rax], rcx", in("rax") p.start_info.pt_base, in("rcx") 0u64)
    };
    let (err2, cr2_2) = (PF_ERR.load(Ordering::SeqCst), cr2(p));
    println!(
        p,
        "trap: bad handler {r_bad_handler}, bad table {r_bad_table}, set_trap_table {r}; #UD {}, #PF {} (err {err1:#x} cr2 {cr2_1:#x}; err {err2:#x} cr2 {:#x} = pt_base {})",
        UD_COUNT.load(Ordering::SeqCst),
        PF_COUNT.load(Ordering::SeqCst),
        cr2_2,
        cr2_2 == p.start_info.pt_base
    );
    p.shutdown(ShutdownReason::Poweroff)
}

fn iret(p: &Platform, cs: u64) -> ! {
    let stub = platform::hypercall_page_addr() + hc::__HYPERVISOR_iret * 32;
    let (a, c, r): (u64, u64, u64);
    // SAFETY: builds Xen's iret frame [flags, rip, cs, rflags, rsp, ss] and jumps to the iret stub, which
    // pushes rcx, r11 and rax; the hypervisor returns to label 2 with the stack as it was before the pushes.
    unsafe {
        core::arch::asm!(
            "lea 2f(%rip), %rdx",
            "mov %rsp, %rsi",
            "push $0xe02b",
            "push %rsi",
            "pushfq",
            "push %rdi",
            "push %rdx",
            "push $0",
            "mov $0x1111, %rax",
            "mov $0x2222, %rcx",
            "mov $0x3333, %r11",
            "jmp *%r9",
            "2:",
            in("r9") stub,
            in("rdi") cs,
            out("rax") a,
            out("rcx") c,
            out("r11") r,
            out("rdx") _,
            out("rsi") _,
            options(att_syntax)
        )
    };
    println!(p, "iret: back with rax {a:#x} rcx {c:#x} r11 {r:#x}");
    p.shutdown(ShutdownReason::Poweroff)
}

fn sched_poll(ports: &[u32], nr: u32, timeout: u64, ports_ptr: Option<u64>) -> i64 {
    // struct sched_poll { XEN_GUEST_HANDLE(evtchn_port_t) ports; unsigned int nr_ports; uint64_t timeout; }
    let arg: [u64; 3] = [
        ports_ptr.unwrap_or(ports.as_ptr() as u64),
        u64::from(nr),
        timeout,
    ];
    // SAFETY: SCHEDOP_poll with a sched_poll (or deliberately bad contents the hypervisor must refuse).
    unsafe { hypercall(hc::__HYPERVISOR_sched_op, 3, arg.as_ptr() as u64, 0, 0, 0) }
}

fn poll(p: &Platform) -> ! {
    let a = alloc_unbound(p, DOMID_SELF).unwrap_or(0);
    let mut bind = ev::EvtchnBindInterdomain::new(DOMID_SELF, a);
    p.evtchn_op(ev::EVTCHNOP_bind_interdomain, &mut bind);
    let b = bind.local_port;
    // Nothing pending: the poll times out after 50 ms.
    let t0 = p.time_ns();
    let r1 = sched_poll(&[a], 1, t0 + 50_000_000, None);
    let waited = (p.time_ns() - t0) / 1_000_000;
    // Masked and pending: poll returns at once (poll works on masked ports).
    let _ = p.events().mask(a);
    let mut send = ev::EvtchnSend { port: b };
    p.evtchn_op(ev::EVTCHNOP_send, &mut send);
    let t1 = p.time_ns();
    let r2 = sched_poll(&[a], 1, t1 + 5_000_000_000, None);
    let quick = (p.time_ns() - t1) / 1_000_000;
    let too_many = sched_poll(&[a], 200, 0, None);
    let bad_ptr = sched_poll(&[a], 4, 0, Some(0x1000));
    let bad_port = sched_poll(&[5000], 1, 0, None);
    println!(
        p,
        "poll: timeout {r1} after {waited} ms (>= 50: {}), pending {r2} after {quick} ms, too-many {too_many}, bad-pointer {bad_ptr}, bad-port {bad_port}",
        waited >= 50
    );
    p.shutdown(ShutdownReason::Poweroff)
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut GRANTED: [Page; 2] = [Page([0; 4096]), Page([0; 4096])];

fn grant(p: &mut Platform) -> ! {
    use xen_abi::grant_table::{GTF_permit_access, GTF_readonly, GrantEntryV1};
    // GNTTABOP_setup_table: dom, pad, nr_frames, status, pad, frame_list.
    let mut frame_list = [0u64; 1];
    let mut op = [0u8; 24];
    op[0..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    op[4..8].copy_from_slice(&1u32.to_le_bytes());
    op[16..24].copy_from_slice(&(frame_list.as_mut_ptr() as u64).to_le_bytes());
    // SAFETY: GNTTABOP_setup_table with one struct gnttab_setup_table.
    let r = unsafe {
        hypercall(
            hc::__HYPERVISOR_grant_table_op,
            2,
            op.as_mut_ptr() as u64,
            1,
            0,
            0,
        )
    };
    let status = i16::from_le_bytes([op[8], op[9]]);
    let table = (frame_list[0] * 4096) as *mut GrantEntryV1;
    // SAFETY: single-threaded; the pages are ours to share.
    let pages = unsafe { &mut *(&raw mut GRANTED) };
    pages[0].0[..18].copy_from_slice(b"granted read-write");
    pages[1].0[..17].copy_from_slice(b"granted read-only");
    for (i, (gref, ro)) in [(8usize, false), (9usize, true)].into_iter().enumerate() {
        let frame = (&raw const pages[i] as u64 / 4096) as u32;
        // SAFETY: our own grant table frame (identity-mapped); domid and frame first, then the flags.
        unsafe {
            let e = table.add(gref);
            core::ptr::write_volatile(&raw mut (*e).domid, 0);
            core::ptr::write_volatile(&raw mut (*e).frame, frame);
            core::sync::atomic::fence(Ordering::SeqCst);
            let flags = GTF_permit_access | if ro { GTF_readonly } else { 0 };
            core::ptr::write_volatile(&raw mut (*e).flags, flags);
        }
    }
    // Ref 11: its own page tables, writable (the hypervisor must refuse to hand those out for writing).
    // SAFETY: as above.
    unsafe {
        let e = table.add(11);
        core::ptr::write_volatile(&raw mut (*e).domid, 0);
        core::ptr::write_volatile(&raw mut (*e).frame, (p.start_info.pt_base / 4096) as u32);
        core::sync::atomic::fence(Ordering::SeqCst);
        core::ptr::write_volatile(&raw mut (*e).flags, GTF_permit_access);
    }
    println!(
        p,
        "grant: setup_table {r} status {status} frame {:#x}; refs 8 and 9 granted", frame_list[0]
    );
    let port = p.timer_port();
    loop {
        p.set_timer(p.time_ns() + 1_000_000_000);
        p.block();
        p.take_event(port);
    }
}

fn sleep_ms(p: &mut Platform, ms: u64) {
    let port = p.timer_port();
    let deadline = p.time_ns() + ms * 1_000_000;
    p.set_timer(deadline);
    let mut tries = 0;
    while p.time_ns() < deadline && tries < 10_000 {
        p.block();
        p.take_event(port);
        tries += 1;
    }
}

fn memory_op_pfns(op: u64, pfns: &mut [u64]) -> i64 {
    // struct xen_memory_reservation: extent_start, nr_extents, extent_order, mem_flags, domid, pad.
    let mut r = [0u64; 4];
    r[0] = pfns.as_mut_ptr() as u64;
    r[1] = pfns.len() as u64;
    r[3] = u64::from(DOMID_SELF);
    // SAFETY: a reservation naming our own array of frames.
    unsafe {
        hypercall(
            hc::__HYPERVISOR_memory_op,
            op,
            r.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    }
}

fn balloon(p: &mut Platform, mib: u64) -> ! {
    let nr = p.start_info.nr_pages;
    let first = nr - mib * 256;
    for pfn in first..nr {
        // SAFETY: the top of guest memory is free (the kernel and boot structures are at the bottom).
        unsafe { core::ptr::write_volatile((pfn * 4096) as *mut u64, pfn) };
    }
    println!(p, "balloon: touched {mib} MiB");
    sleep_ms(p, 300);
    let mut released = 0;
    let mut pfns = [0u64; 256];
    for chunk in (first..nr).step_by(256) {
        for (i, f) in pfns.iter_mut().enumerate() {
            *f = chunk + i as u64;
        }
        released += memory_op_pfns(1, &mut pfns); // XENMEM_decrease_reservation
    }
    let dom = DOMID_SELF;
    // SAFETY: XENMEM_current_reservation takes a pointer to a domid_t.
    let cur = unsafe {
        hypercall(
            hc::__HYPERVISOR_memory_op,
            3,
            &raw const dom as u64,
            0,
            0,
            0,
        )
    };
    // The frames read as zero now.
    // SAFETY: as above.
    let zero = unsafe { core::ptr::read_volatile((first * 4096) as *const u64) };
    // Giving the kernel's own frames back is refused (0 extents done).
    let mut kernel = [0x200u64];
    let refused = memory_op_pfns(1, &mut kernel);
    println!(
        p,
        "balloon: released {released} pages, reservation {cur}, reads {zero}, kernel frame {refused}"
    );
    sleep_ms(p, 300);
    let mut back = 0;
    for chunk in (first..nr).step_by(256) {
        for (i, f) in pfns.iter_mut().enumerate() {
            *f = chunk + i as u64;
        }
        back += memory_op_pfns(6, &mut pfns); // XENMEM_populate_physmap
    }
    for pfn in first..nr {
        // SAFETY: populated again.
        unsafe { core::ptr::write_volatile((pfn * 4096) as *mut u64, pfn) };
    }
    // SAFETY: as above.
    let cur2 = unsafe {
        hypercall(
            hc::__HYPERVISOR_memory_op,
            3,
            &raw const dom as u64,
            0,
            0,
            0,
        )
    };
    println!(p, "balloon: populated {back} pages, reservation {cur2}");
    sleep_ms(p, 300);
    p.shutdown(ShutdownReason::Poweroff)
}

fn hcbench(p: &Platform, n: u64) -> ! {
    let t0 = p.time_ns();
    for _ in 0..n {
        // SAFETY: XENVER_version takes no buffer.
        core::hint::black_box(unsafe { hypercall(hc::__HYPERVISOR_xen_version, 0, 0, 0, 0, 0) });
    }
    let ns = p.time_ns() - t0;
    println!(
        p,
        "hcbench: {n} calls in {ns} ns ({} ns/call)",
        ns / n.max(1)
    );
    p.shutdown(ShutdownReason::Poweroff)
}

fn alloc_unbound(p: &Platform, remote: u16) -> Result<u32, i64> {
    let mut a = ev::EvtchnAllocUnbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    match p.evtchn_op(ev::EVTCHNOP_alloc_unbound, &mut a) {
        0 => Ok(a.port),
        e => Err(e),
    }
}

fn send_event(p: &Platform, arg: &str) -> ! {
    let mut it = arg.split(',').map(|x| x.parse::<u32>().unwrap_or(u32::MAX));
    let (dom, port) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let mut bind = ev::EvtchnBindInterdomain::new(dom as u16, port);
    let rb = p.evtchn_op(ev::EVTCHNOP_bind_interdomain, &mut bind);
    let mut send = ev::EvtchnSend {
        port: bind.local_port,
    };
    let rs = p.evtchn_op(ev::EVTCHNOP_send, &mut send);
    println!(
        p,
        "send-event: bind to {dom}:{port} {rb} local {}, send {rs}", bind.local_port
    );
    p.shutdown(if rb == 0 && rs == 0 {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    })
}

fn wait_event(p: &Platform, remote: u16) -> ! {
    let port = match alloc_unbound(p, remote) {
        Ok(port) => port,
        Err(e) => {
            println!(p, "wait-event: alloc_unbound failed: {e}");
            p.shutdown(ShutdownReason::Crash)
        }
    };
    println!(p, "wait-event: port {port}");
    let mut blocks = 0u32;
    while !p.take_event(port) {
        p.block();
        blocks += 1;
    }
    println!(
        p,
        "wait-event: got event on port {port} after {blocks} block(s)"
    );
    p.shutdown(ShutdownReason::Poweroff)
}

fn evtchn_selftest(p: &Platform) -> ! {
    let events = p.events();
    // A loopback interdomain channel: offer a port to ourselves and bind to it.
    let a = alloc_unbound(p, DOMID_SELF).unwrap_or(0);
    let mut bind = ev::EvtchnBindInterdomain::new(DOMID_SELF, a);
    let rb = p.evtchn_op(ev::EVTCHNOP_bind_interdomain, &mut bind);
    let b = bind.local_port;
    let mut send = ev::EvtchnSend { port: b };
    let rs = p.evtchn_op(ev::EVTCHNOP_send, &mut send);
    let a_pending = events.is_pending(a).unwrap_or(false);
    let mut st = ev::EvtchnStatus::new(DOMID_SELF, a);
    let rst = p.evtchn_op(ev::EVTCHNOP_status, &mut st);
    let kind = match st.kind() {
        Ok(ev::EvtchnStatusKind::Interdomain { port, .. }) if port == b => "interdomain-ok",
        _ => "wrong",
    };
    // Masked delivery: mask, send, then unmask delivers.
    let _ = events.clear_pending(a);
    let _ = events.mask(a);
    let mut send_b = ev::EvtchnSend { port: b };
    p.evtchn_op(ev::EVTCHNOP_send, &mut send_b);
    let _ = p.events().scan(p.vcpu_events(), 64).count();
    let upcall_while_masked = p
        .vcpu_events()
        .upcall_pending
        .load(core::sync::atomic::Ordering::SeqCst);
    let mut um = ev::EvtchnUnmask { port: a };
    let ru = p.evtchn_op(ev::EVTCHNOP_unmask, &mut um);
    let upcall_after_unmask = p
        .vcpu_events()
        .upcall_pending
        .load(core::sync::atomic::Ordering::SeqCst);
    // An IPI to ourselves.
    let mut ipi = ev::EvtchnBindIpi { vcpu: 0, port: 0 };
    let ri = p.evtchn_op(ev::EVTCHNOP_bind_ipi, &mut ipi);
    let mut send_ipi = ev::EvtchnSend { port: ipi.port };
    p.evtchn_op(ev::EVTCHNOP_send, &mut send_ipi);
    let ipi_pending = events.is_pending(ipi.port).unwrap_or(false);
    // Close one end: the other goes back to unbound.
    let mut close = ev::EvtchnClose { port: b };
    let rc = p.evtchn_op(ev::EVTCHNOP_close, &mut close);
    let mut st2 = ev::EvtchnStatus::new(DOMID_SELF, a);
    p.evtchn_op(ev::EVTCHNOP_status, &mut st2);
    let after_close = match st2.kind() {
        Ok(ev::EvtchnStatusKind::Unbound { .. }) => "unbound",
        _ => "wrong",
    };
    let mut close2 = ev::EvtchnClose { port: b };
    let rc2 = p.evtchn_op(ev::EVTCHNOP_close, &mut close2);
    // A second bind of VIRQ_TIMER is -EEXIST; a VIRQ out of range is -EINVAL; vCPU 1 does not exist.
    let _ = p.bind_virq(hc::VIRQ_TIMER);
    let virq_again = p.bind_virq(hc::VIRQ_TIMER).err().unwrap_or(0);
    let virq_bad = p.bind_virq(99).err().unwrap_or(0);
    let mut v1 = ev::EvtchnBindVirq {
        virq: 1,
        vcpu: 1,
        port: 0,
    };
    let virq_vcpu1 = p.evtchn_op(ev::EVTCHNOP_bind_virq, &mut v1);
    let mut reset = ev::EvtchnReset { dom: DOMID_SELF };
    let rr = p.evtchn_op(ev::EVTCHNOP_reset, &mut reset);
    let mut st3 = ev::EvtchnStatus::new(DOMID_SELF, a);
    p.evtchn_op(ev::EVTCHNOP_status, &mut st3);
    let after_reset = match st3.kind() {
        Ok(ev::EvtchnStatusKind::Closed) => "closed",
        _ => "wrong",
    };
    println!(
        p,
        "evtchn-selftest: ports {a}<->{b} bind {rb} send {rs} pending {a_pending} status {rst} {kind}; masked-upcall {upcall_while_masked} unmask {ru} upcall {upcall_after_unmask}; ipi {ri} pending {ipi_pending}; close {rc} peer {after_close} reclose {rc2}; virq-again {virq_again} virq-bad {virq_bad} vcpu1 {virq_vcpu1}; reset {rr} {after_reset}"
    );
    // Grant table and memory reservation.
    let mut q = [0u8; 16];
    // SAFETY: gnttab_query_size is 16 bytes: dom, pad, nr_frames, max_nr_frames, status, pad.
    q[0..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    let rq = unsafe {
        hypercall(
            hc::__HYPERVISOR_grant_table_op,
            6,
            q.as_mut_ptr() as u64,
            1,
            0,
            0,
        )
    };
    let max_frames = u32::from_le_bytes([q[8], q[9], q[10], q[11]]);
    let dom = DOMID_SELF;
    // SAFETY: XENMEM_current_reservation takes a pointer to a domid_t.
    let pages = unsafe {
        hypercall(
            hc::__HYPERVISOR_memory_op,
            3,
            &raw const dom as u64,
            0,
            0,
            0,
        )
    };
    println!(
        p,
        "evtchn-selftest: gnttab query {rq} max_frames {max_frames}; current_reservation {pages}"
    );
    p.shutdown(ShutdownReason::Poweroff)
}

fn shutdown(p: &Platform, code: &str) -> ! {
    let reason = match code {
        "poweroff" => 0,
        "reboot" => 1,
        "suspend" => 2,
        "crash" => 3,
        "watchdog" => 4,
        "soft_reset" => 5,
        n => n.parse().unwrap_or(u32::MAX),
    };
    println!(p, "shutdown: reason {reason}");
    let r = p.shutdown_raw(reason);
    println!(p, "shutdown: SCHEDOP_shutdown({reason}) returned {r}");
    p.shutdown(ShutdownReason::Crash)
}

fn bad_hypercall(p: &Platform) -> ! {
    // SAFETY (all calls below): the hypervisor must survive any arguments; none of these touch our memory
    // except through the hypervisor's checks.
    let r = |nr, a1, a2, a3| unsafe { hypercall(nr, a1, a2, a3, 0, 0) };
    let unknown = r(127, 0, 0, 0);
    let outside = r(hc::__HYPERVISOR_console_io, 0, 16, 0xffff_ffff_0000);
    let null = r(hc::__HYPERVISOR_console_io, 0, 16, 0);
    let huge = r(hc::__HYPERVISOR_console_io, 0, u64::MAX, 0x20_0000);
    let wrap = r(hc::__HYPERVISOR_console_io, 0, 0x1000, u64::MAX - 0x10);
    let pt = r(hc::__HYPERVISOR_xen_version, 1, p.start_info.pt_base, 0);
    let sys = r(hc::__HYPERVISOR_xen_version, 1, 0x1000, 0);
    let evt = r(hc::__HYPERVISOR_event_channel_op, 4, 0xdead_beef_0000, 0);
    let badcmd = r(hc::__HYPERVISOR_sched_op, 99, 0, 0);
    let badport = {
        let mut a = xen_abi::event_channel::EvtchnSend { port: 100_000 };
        p.evtchn_op(4, &mut a)
    };
    println!(
        p,
        "bad-hypercall: unknown {unknown}, outside {outside}, null {null}, huge {huge}, wrap {wrap}, page-tables {pt}, system-area {sys}, bad-evtchn-arg {evt}, bad-sched-cmd {badcmd}, bad-port {badport}"
    );
    println!(
        p,
        "bad-hypercall: now writing the hypercall port from outside the hypercall page"
    );
    // SAFETY: deliberately breaks the ABI: the hypervisor stops the domain here.
    unsafe { core::arch::asm!("mov eax, 18", "out 0x99, al", out("eax") _) };
    println!(p, "bad-hypercall: still running?");
    p.shutdown(ShutdownReason::Poweroff)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: START_INFO was set at entry (or is null, and then we cannot print).
    let si = unsafe { START_INFO };
    if !si.is_null() {
        // SAFETY: as in guest_main.
        let p = unsafe { Platform::new(si) };
        println!(&p, "guest panic: {info}");
        p.shutdown(ShutdownReason::Crash)
    }
    loop {
        core::hint::spin_loop();
    }
}

// The memory functions the compiler calls (no libc here).

/// # Safety
/// As C's memcpy.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; `rep movsb` copies n bytes forwards.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags))
    };
    dst
}

/// # Safety
/// As C's memmove.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is safe when dst is below src or the ranges do not overlap.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backwards copy with the direction flag set, restored after.
    unsafe {
        core::arch::asm!(
            "std", "rep movsb", "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n).wrapping_sub(1) => _,
            inout("rsi") src.add(n).wrapping_sub(1) => _,
            options(nostack)
        )
    };
    dst
}

/// # Safety
/// As C's memset.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; `rep stosb` stores n bytes.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags))
    };
    dst
}

/// # Safety
/// As C's memcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, inside both buffers by the caller's contract.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C's bcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` of `x86_64-unknown-linux-gnu` names the unwinder's personality routine; with
/// `panic = "abort"` it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
