//! SMP guests on real KVM: vCPUs brought up by the guest (`VCPUOP_initialise`, `VCPUOP_up`), IPIs through
//! `bind_ipi` channels, per-vCPU timers and blocking, bad `vcpu_guest_context`s refused, a fault on one
//! vCPU stopping the whole domain (and only it).

use std::time::Duration;

use blanket_hypervisor::{CrashKind, Domain, DomainConfig, DomainExit, Hypervisor, guest};
use xen_abi::sched::ShutdownReason;

fn boot(hv: &Hypervisor, name: &str, cmdline: &str, vcpus: u32) -> Domain {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 16 << 20;
    c.vcpus = vcpus;
    let mut d = hv.create_domain(c).unwrap();
    d.start().unwrap();
    d
}

fn finish(d: &mut Domain) -> DomainExit {
    let exit = d
        .wait_timeout(Duration::from_secs(60))
        .expect("the guest ends within 60 s");
    eprintln!("[{}] {exit}\n{}", d.name(), d.console_output());
    exit
}

/// The guest's job, computed here: unit `u` is a million xorshift steps from `(u + 1) * golden`.
fn expected(units: u64) -> u64 {
    (0..units).fold(0u64, |acc, u| {
        let mut x = (u + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1_000_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        acc.wrapping_add(x)
    })
}

#[test]
fn a_two_vcpu_guest_brings_up_vcpu_1_and_splits_the_job_by_ipis() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "smp2", "smp-cpu=20", 2);
    assert_eq!(d.nr_vcpus(), 2);
    let exit = finish(&mut d);
    let out = d.console_output();
    assert_eq!(
        exit,
        DomainExit::Shutdown(ShutdownReason::Poweroff),
        "{out}"
    );
    let want = format!(
        "smp-cpu: 20 units on 2 vCPUs: checksum {:#x}; initialise 0 up 0; ipis 1/1; timers 1/1; up after down 0;",
        expected(20)
    );
    assert!(out.contains(&want), "wanted '{want}' in:\n{out}");
    let per_vcpu = d.vcpu_cpu_ns();
    assert_eq!(per_vcpu.len(), 2);
    // Both vCPUs ran a share of the job (each unit is a few ms of CPU).
    assert!(
        per_vcpu.iter().all(|&ns| ns > 5_000_000),
        "per-vCPU CPU time {per_vcpu:?}"
    );
    assert_eq!(d.stats().cpu_ns, per_vcpu.iter().sum::<u64>());
}

#[test]
fn four_vcpus_give_the_same_result_as_one() {
    let hv = Hypervisor::new().unwrap();
    let mut one = boot(&hv, "smp1", "smp-cpu=12", 1);
    let mut four = boot(&hv, "smp4", "smp-cpu=12", 4);
    let sum = format!("checksum {:#x};", expected(12));
    for (d, n) in [(&mut one, 1), (&mut four, 4)] {
        let exit = finish(d);
        let out = d.console_output();
        assert_eq!(
            exit,
            DomainExit::Shutdown(ShutdownReason::Poweroff),
            "{out}"
        );
        assert!(
            out.contains(&format!("12 units on {n} vCPUs: {sum}")),
            "{out}"
        );
        assert!(
            out.contains(&format!("ipis {0}/{0}; timers {0}/{0}", n - 1)),
            "{out}"
        );
    }
}

#[test]
fn bad_vcpu_guest_contexts_are_refused_with_the_right_errno() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "ctx", "vcpu-ctx", 2);
    let exit = finish(&mut d);
    let out = d.console_output();
    assert_eq!(
        exit,
        DomainExit::Shutdown(ShutdownReason::Poweroff),
        "{out}"
    );
    // ENOENT 2, EINVAL 22, EFAULT 14, EEXIST 17, ETIME 62.
    let want = "vcpu-ctx: 2 vCPUs; enoent -2 up-uninitialised -22; bad [-22, -22, -22, -22, -22, -22, -22, -22, -22]; efault -14; ipi-bad -2; sshot-other -22 sshot-past -62; is_up 0; good 0 again -17 up 0 running 1 is_up 1";
    assert!(out.contains(want), "wanted '{want}' in:\n{out}");
}

#[test]
fn a_fault_on_vcpu_1_stops_the_whole_domain_and_names_the_vcpu() {
    let hv = Hypervisor::new().unwrap();
    let mut neighbour = boot(&hv, "neighbour", "smp-cpu=8", 2);
    let mut d = boot(&hv, "smpfault", "smp-fault", 2);
    let exit = finish(&mut d);
    let DomainExit::Crashed(report) = &exit else {
        panic!("expected a crash, got {exit}");
    };
    assert_eq!(report.vcpu, 1, "{report}");
    assert!(
        matches!(
            report.kind,
            CrashKind::Exception {
                vector: 14,
                cr2: 0,
                ..
            }
        ),
        "{report}"
    );
    let text = exit.to_string();
    assert!(
        text.contains("unhandled exception #PF") && text.ends_with("on vCPU 1"),
        "{exit}"
    );
    assert!(
        d.console_output()
            .contains("smp-fault: vCPU 1 initialise 0 up 0")
    );
    let n = finish(&mut neighbour);
    assert_eq!(n, DomainExit::Shutdown(ShutdownReason::Poweroff));
    assert!(
        neighbour
            .console_output()
            .contains(&format!("checksum {:#x}", expected(8)))
    );
}

#[test]
fn a_domain_with_zero_or_too_many_vcpus_is_refused() {
    let hv = Hypervisor::new().unwrap();
    for n in [0, 33] {
        let mut c = DomainConfig::new("bad", guest::builtin().unwrap());
        c.vcpus = n;
        c.memory = 16 << 20;
        let err = hv.create_domain(c).unwrap_err();
        assert!(err.to_string().contains(&format!("{n} vCPUs")), "{err}");
    }
}
