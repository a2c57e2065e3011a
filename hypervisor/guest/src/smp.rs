//! SMP workloads: bringing up vCPUs with `VCPUOP_initialise` and `VCPUOP_up`, IPIs through `bind_ipi`
//! event channels, per-vCPU timers (`VCPUOP_set_singleshot_timer` on a per-vCPU `VIRQ_TIMER`) and
//! `SCHEDOP_block` on each vCPU.
//!
//! - `smp-cpu=N`: a CPU job of N units (one unit: a million xorshift steps seeded by its index) split over
//!   every vCPU; vCPU 0 starts the others with an IPI each and collects their results by IPI;
//! - `vcpu-ctx`: bad `vcpu_guest_context`s and vCPU operations, and the errors they get;
//! - `smp-fault`: vCPU 1 dereferences a null pointer (the hypervisor stops the whole domain).

use core::arch::global_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen_abi::event_channel as ev;
use xen_abi::hypercall as hc;
use xen_abi::sched::ShutdownReason;

use crate::platform::{Platform, hypercall};
use crate::{Console, START_INFO};

/// The most vCPUs these workloads use.
const MAX: usize = 8;
/// `sizeof(struct vcpu_guest_context)` on x86-64.
const CTX_SIZE: usize = 5168;

const VCPUOP_INITIALISE: u64 = 0;
const VCPUOP_UP: u64 = 1;
const VCPUOP_DOWN: u64 = 2;
const VCPUOP_IS_UP: u64 = 3;
const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
/// `ETIME`: a single-shot deadline in the past, with `VCPU_SSHOTTMR_future`.
const ETIME: i64 = 62;

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut AP_STACKS: [Stack; MAX] = [const { Stack([0; 16384]) }; MAX];
static mut CTX: [u8; CTX_SIZE] = [0; CTX_SIZE];

static START_PORT: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static DONE_PORT: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static RESULT: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static TIMER_OK: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static RUNNING: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static UNITS: AtomicU64 = AtomicU64::new(0);
static NR: AtomicU32 = AtomicU32::new(1);
/// What the secondary vCPUs do: 0 the CPU job, 1 fault, 2 idle.
static MODE: AtomicU32 = AtomicU32::new(0);
/// `smp-fault`: set by vCPU 0 once it has printed, so that vCPU 1's fault comes after the line.
static FAULT_GO: AtomicU32 = AtomicU32::new(0);

global_asm!(
    r#"
    .section .text
    .global ap_entry
ap_entry:
    call ap_main
1:  ud2
    jmp 1b
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn ap_entry();
}

fn platform() -> Platform {
    // SAFETY: START_INFO was set by vCPU 0 at entry, before any other vCPU was brought up.
    unsafe { Platform::new(START_INFO) }
}

fn vcpu_op(cmd: u64, vcpu: u64, arg: u64) -> i64 {
    // SAFETY: `arg` is what `cmd` expects, or a deliberately bad pointer the hypervisor must refuse.
    unsafe { hypercall(hc::__HYPERVISOR_vcpu_op, cmd, vcpu, arg, 0, 0) }
}

fn bind_ipi(p: &Platform, vcpu: u32) -> Result<u32, i64> {
    let mut a = ev::EvtchnBindIpi { vcpu, port: 0 };
    match p.evtchn_op(ev::EVTCHNOP_bind_ipi, &mut a) {
        0 => Ok(a.port),
        e => Err(e),
    }
}

fn send(p: &Platform, port: u32) -> i64 {
    let mut s = ev::EvtchnSend { port };
    p.evtchn_op(ev::EVTCHNOP_send, &mut s)
}

/// Waits on vCPU `vcpu` until `port` is pending, and takes it; blocks meanwhile.
fn wait_port(p: &Platform, vcpu: u32, port: u32) {
    loop {
        if p.events().clear_pending(port).unwrap_or(false) {
            return;
        }
        let ve = p.vcpu_events_of(vcpu);
        ve.upcall_pending.store(0, Ordering::SeqCst);
        ve.pending_sel.store(0, Ordering::SeqCst);
        if p.events().clear_pending(port).unwrap_or(false) {
            return;
        }
        p.block();
    }
}

/// One unit of the job.
pub fn unit(u: u64) -> u64 {
    let mut x = (u + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..1_000_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    core::hint::black_box(x)
}

fn share(id: u64, n: u64, units: u64) -> u64 {
    let (lo, hi) = (id * units / n, (id + 1) * units / n);
    (lo..hi).fold(0u64, |acc, u| acc.wrapping_add(unit(u)))
}

/// The context that starts vCPU `id` at `ap_entry` on its own stack, `rdi` = `id`.
fn write_ctx(p: &Platform, id: u32) -> u64 {
    // SAFETY: only vCPU 0 writes CTX, before the hypervisor copies it in VCPUOP_initialise.
    let ctx = unsafe { &mut *(&raw mut CTX) };
    ctx.fill(0);
    let put = |ctx: &mut [u8; CTX_SIZE], off: usize, v: u64| {
        ctx[off..off + 8].copy_from_slice(&v.to_le_bytes())
    };
    // SAFETY: the address of a static.
    let stack_top = unsafe { (&raw const AP_STACKS[id as usize]) as u64 } + 16384 - 8;
    put(ctx, 512, 1 << 2); // flags: VGCF_in_kernel
    put(ctx, 520 + 112, u64::from(id)); // rdi
    put(ctx, 520 + 128, ap_entry as *const () as u64); // rip
    put(ctx, 520 + 136, 0xe033); // cs
    put(ctx, 520 + 144, 0x202); // rflags
    put(ctx, 520 + 152, stack_top); // rsp
    put(ctx, 520 + 160, 0xe02b); // ss
    put(ctx, 4968, 0xe02b); // kernel_ss
    put(ctx, 4984 + 3 * 8, p.start_info.pt_base); // ctrlreg[3]
    &raw const CTX as u64
}

fn ctx_put(off: usize, v: u64) {
    // SAFETY: as in write_ctx.
    let ctx = unsafe { &mut *(&raw mut CTX) };
    ctx[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[unsafe(no_mangle)]
extern "C" fn ap_main(id: u64) -> ! {
    let p = platform();
    let me = id as u32;
    RUNNING[id as usize].store(1, Ordering::SeqCst);
    match MODE.load(Ordering::SeqCst) {
        1 => {
            // Bounded: vCPU 0 sets it right after one console write.
            for _ in 0..1_000_000_000u64 {
                if FAULT_GO.load(Ordering::SeqCst) != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            // SAFETY: deliberately not: page 0 is unmapped, so this faults on this vCPU.
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            core::hint::black_box(v);
        }
        2 => loop {
            p.block();
        },
        _ => {}
    }
    // A per-vCPU timer: VIRQ_TIMER bound on this vCPU, a single-shot 2 ms ahead. `VCPU_SSHOTTMR_future`
    // refuses a deadline already past (`-ETIME`): when the host did not run this vCPU for 2 ms between
    // reading the time and the hypercall, try again with a new deadline.
    let tport = p.bind_virq_on(hc::VIRQ_TIMER, me).unwrap_or(0);
    let (mut t0, mut r) = (0, -ETIME);
    for _ in 0..100 {
        if r != -ETIME {
            break;
        }
        t0 = p.time_ns();
        let arg = [t0 + 2_000_000, 1];
        r = vcpu_op(VCPUOP_SET_SINGLESHOT_TIMER, id, arg.as_ptr() as u64);
    }
    if r == 0 && tport != 0 {
        wait_port(&p, me, tport);
        TIMER_OK[id as usize].store(u32::from(p.time_ns() >= t0 + 2_000_000), Ordering::SeqCst);
    }
    loop {
        wait_port(&p, me, START_PORT[id as usize].load(Ordering::SeqCst));
        let n = u64::from(NR.load(Ordering::SeqCst));
        RESULT[id as usize].store(share(id, n, UNITS.load(Ordering::SeqCst)), Ordering::SeqCst);
        send(&p, DONE_PORT[id as usize].load(Ordering::SeqCst));
    }
}

fn nr_vcpus() -> u32 {
    (0..MAX as u64)
        .take_while(|&k| vcpu_op(VCPUOP_IS_UP, k, 0) >= 0)
        .count() as u32
}

/// `smp-cpu=N`.
pub fn smp_cpu(p: &Platform, units: u64) -> ! {
    let n = nr_vcpus().max(1);
    NR.store(n, Ordering::SeqCst);
    UNITS.store(units, Ordering::SeqCst);
    let mut init = 0i64;
    let mut up = 0i64;
    for id in 1..n {
        START_PORT[id as usize].store(bind_ipi(p, id).unwrap_or(0), Ordering::SeqCst);
        DONE_PORT[id as usize].store(bind_ipi(p, 0).unwrap_or(0), Ordering::SeqCst);
        init |= vcpu_op(VCPUOP_INITIALISE, u64::from(id), write_ctx(p, id));
        up |= vcpu_op(VCPUOP_UP, u64::from(id), 0);
    }
    let t0 = p.time_ns();
    for id in 1..n {
        send(p, START_PORT[id as usize].load(Ordering::SeqCst));
    }
    let mut sum = share(0, u64::from(n), units);
    let own_ms = (p.time_ns() - t0) / 1_000_000;
    let mut ipis = 0;
    for id in 1..n {
        wait_port(p, 0, DONE_PORT[id as usize].load(Ordering::SeqCst));
        ipis += 1;
        sum = sum.wrapping_add(RESULT[id as usize].load(Ordering::SeqCst));
    }
    let ms = (p.time_ns() - t0) / 1_000_000;
    let timers: u32 = (1..n)
        .map(|id| TIMER_OK[id as usize].load(Ordering::SeqCst))
        .sum();
    let mut still_up = 0;
    for id in 1..n {
        vcpu_op(VCPUOP_DOWN, u64::from(id), 0);
        still_up += vcpu_op(VCPUOP_IS_UP, u64::from(id), 0);
    }
    let mut c = Console::new(p);
    let _ = writeln!(
        c,
        "smp-cpu: {units} units on {n} vCPUs: checksum {sum:#x}; initialise {init} up {up}; ipis {ipis}/{}; timers {timers}/{}; up after down {still_up}; {ms} ms (vCPU 0's share {own_ms} ms)",
        n - 1,
        n - 1
    );
    drop(c);
    p.shutdown(ShutdownReason::Poweroff)
}

/// `vcpu-ctx`.
pub fn vcpu_ctx(p: &Platform) -> ! {
    let n = nr_vcpus();
    MODE.store(2, Ordering::SeqCst);
    let ctx = write_ctx(p, 1);
    let enoent = vcpu_op(VCPUOP_INITIALISE, 99, ctx);
    let up_uninit = vcpu_op(VCPUOP_UP, 1, 0);
    let mut bad = [0i64; 9];
    let cases: [(usize, u64); 9] = [
        (520 + 136, 0x08),                  // cs: ring 0
        (520 + 136, 0xe023),                // cs: 32-bit
        (520 + 160, 0),                     // ss: null
        (520 + 128, 0x1000),                // rip: the hypervisor's system area
        (520 + 152, 0x10),                  // rsp: page 0
        (4984 + 3 * 8, 0x1000),             // cr3: not a page table
        (4960, 1),                          // gdt_ents: no guest GDT
        (512, 1 << 9),                      // an unknown flag
        (520 + 128, 0xffff_8000_0000_0000), // rip: outside guest memory
    ];
    for (i, (off, v)) in cases.iter().enumerate() {
        write_ctx(p, 1);
        ctx_put(*off, *v);
        bad[i] = vcpu_op(VCPUOP_INITIALISE, 1, ctx);
    }
    let efault = vcpu_op(VCPUOP_INITIALISE, 1, 0x1000);
    let ipi_bad = bind_ipi(p, 99).err().unwrap_or(0);
    let sshot_other = vcpu_op(VCPUOP_SET_SINGLESHOT_TIMER, 1, [0u64, 0].as_ptr() as u64);
    let sshot_past = vcpu_op(VCPUOP_SET_SINGLESHOT_TIMER, 0, [1u64, 1].as_ptr() as u64);
    let before = vcpu_op(VCPUOP_IS_UP, 1, 0);
    write_ctx(p, 1);
    let good = vcpu_op(VCPUOP_INITIALISE, 1, ctx);
    let again = vcpu_op(VCPUOP_INITIALISE, 1, ctx);
    let up = vcpu_op(VCPUOP_UP, 1, 0);
    let mut spins = 0u64;
    while RUNNING[1].load(Ordering::SeqCst) == 0 && spins < 2_000_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    let after = vcpu_op(VCPUOP_IS_UP, 1, 0);
    let mut c = Console::new(p);
    let _ = writeln!(
        c,
        "vcpu-ctx: {n} vCPUs; enoent {enoent} up-uninitialised {up_uninit}; bad {bad:?}; efault {efault}; ipi-bad {ipi_bad}; sshot-other {sshot_other} sshot-past {sshot_past}; is_up {before}; good {good} again {again} up {up} running {} is_up {after}",
        RUNNING[1].load(Ordering::SeqCst)
    );
    drop(c);
    p.shutdown(ShutdownReason::Poweroff)
}

/// `smp-fault`.
pub fn smp_fault(p: &mut Platform) -> ! {
    MODE.store(1, Ordering::SeqCst);
    let ctx = write_ctx(p, 1);
    let r = vcpu_op(VCPUOP_INITIALISE, 1, ctx);
    let u = vcpu_op(VCPUOP_UP, 1, 0);
    let mut c = Console::new(p);
    let _ = writeln!(
        c,
        "smp-fault: vCPU 1 initialise {r} up {u}; it reads address 0"
    );
    drop(c);
    FAULT_GO.store(1, Ordering::SeqCst);
    let port = p.timer_port();
    loop {
        p.set_timer(p.time_ns() + 1_000_000_000);
        p.block();
        p.take_event(port);
    }
}
