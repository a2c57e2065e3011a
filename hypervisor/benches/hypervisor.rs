//! Criterion benchmarks of the hypervisor on real KVM: the hypercall round trip (timed by the guest's own
//! clock), guest boot to poweroff (and so boots per second), and host memory per idle guest (printed).
//!
//! `cargo bench -p blanket-hypervisor`

use std::time::{Duration, Instant};

use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, RunState, guest};
use criterion::{Criterion, criterion_group, criterion_main};

/// Runs `iters` rounds of the guest's `name` benchmark (cmdline `name=iters`) and returns the time the
/// guest measured itself, which it prints after `marker` in nanoseconds.
fn guest_timed(hv: &Hypervisor, name: &str, iters: u64, marker: &str) -> Duration {
    let mut d = hv
        .create_domain(config(name, &format!("{name}={iters}")))
        .unwrap();
    d.start().unwrap();
    let exit = d.wait();
    assert!(matches!(exit, DomainExit::Shutdown(_)), "{exit}");
    let out = d.console_output();
    let ns: u64 = out
        .split(marker)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no timing in: {out}"));
    Duration::from_nanos(ns)
}

fn config(name: &str, cmdline: &str) -> DomainConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 32 << 20;
    c
}

fn hypercall_round_trip(c: &mut Criterion) {
    let hv = Hypervisor::new().expect("/dev/kvm");
    let mut g = c.benchmark_group("hypercall");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("xen_version round trip (guest-timed)", |b| {
        b.iter_custom(|iters| guest_timed(&hv, "hcbench", iters, "calls in "))
    });
    g.bench_function(
        "exception bounced to the guest's handler and back (guest-timed)",
        |b| b.iter_custom(|iters| guest_timed(&hv, "trapbench", iters, "traps in ")),
    );
    g.finish();
}

fn boot(c: &mut Criterion) {
    let hv = Hypervisor::new().expect("/dev/kvm");
    let mut g = c.benchmark_group("boot");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("create, boot and power off a 32 MiB guest", |b| {
        b.iter(|| {
            let mut d = hv
                .create_domain(config("boot", "shutdown=poweroff"))
                .unwrap();
            d.start().unwrap();
            assert!(matches!(d.wait(), DomainExit::Shutdown(_)));
        })
    });
    g.bench_function("8 guests concurrently, boot to power off", |b| {
        b.iter(|| {
            let mut doms: Vec<_> = (0..8)
                .map(|i| {
                    let mut d = hv
                        .create_domain(config(&format!("b{i}"), "shutdown=poweroff"))
                        .unwrap();
                    d.start().unwrap();
                    d
                })
                .collect();
            for d in &mut doms {
                assert!(matches!(d.wait(), DomainExit::Shutdown(_)));
            }
        })
    });
    g.finish();
}

fn idle_memory(c: &mut Criterion) {
    // Not a timing: host memory of idle guests, printed once (the memfd's allocated blocks per guest).
    let hv = Hypervisor::new().expect("/dev/kvm");
    let n = 16;
    let mut doms: Vec<_> = (0..n)
        .map(|i| {
            let mut d = hv
                .create_domain(config(&format!("idle{i}"), "idle"))
                .unwrap();
            d.start().unwrap();
            d
        })
        .collect();
    let t0 = Instant::now();
    while doms.iter().any(|d| d.state() != RunState::Blocked)
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let total: u64 = doms.iter().map(|d| d.host_memory_bytes()).sum();
    eprintln!(
        "idle guests: {n} x 32 MiB guests blocked; guest memory actually allocated on the host: {} KiB per guest",
        total / n / 1024
    );
    for d in &doms {
        d.destroy();
    }
    for d in &mut doms {
        let _ = d.wait();
    }
    let _ = c;
}

criterion_group!(benches, hypercall_round_trip, boot, idle_memory);
criterion_main!(benches);
