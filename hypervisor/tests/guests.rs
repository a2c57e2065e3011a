//! Boots the embedded guest on real KVM (`/dev/kvm`) and checks what it does: console output, shutdown
//! codes, faults and bad hypercalls stopped with a report while a neighbour runs on, idle guests that use no
//! CPU, timer wake-ups, pause and destroy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blanket_hypervisor::{
    BlockedService, CrashKind, Domain, DomainConfig, DomainExit, Hypervisor, RunState, guest,
};
use xen_abi::sched::ShutdownReason;

fn config(name: &str, cmdline: &str) -> DomainConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 16 << 20;
    c
}

fn boot(hv: &Hypervisor, name: &str, cmdline: &str) -> Domain {
    let mut d = hv.create_domain(config(name, cmdline)).unwrap();
    d.start().unwrap();
    d
}

fn finish(d: &mut Domain) -> DomainExit {
    let exit = d
        .wait_timeout(Duration::from_secs(30))
        .expect("the guest ends within 30 s");
    eprintln!("[{}] {exit}\n{}", d.name(), d.console_output());
    exit
}

/// Waits (10 s at most) until the console shows `marker`, and returns the console's text.
fn wait_for_console(d: &Domain, marker: &str) -> String {
    let t0 = Instant::now();
    loop {
        let out = d.console_output();
        if out.contains(marker) {
            return out;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?} not printed: {out}",
            marker
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The port a `wait-event` guest offers, from its console line "wait-event: port N".
fn offered_port(d: &Domain) -> u32 {
    let marker = "wait-event: port ";
    let t0 = Instant::now();
    loop {
        let out = wait_for_console(d, marker);
        let rest = out.split(marker).nth(1).expect("the marker is there");
        // Only a whole line: the number may still be arriving.
        if let Some((port, _)) = rest.split_once('\n') {
            return port
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("port {port:?}: {e}"));
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_guest_boots_and_prints_on_its_console() {
    let hv = Hypervisor::new().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let mut c = config("hello", "hello");
    c.console = Some(Arc::new(move |name: &str, line: &str| {
        sink_lines.lock().unwrap().push(format!("{name}: {line}"));
    }));
    let mut d = hv.create_domain(c).unwrap();
    d.start().unwrap();
    let exit = finish(&mut d);
    let out = d.console_output();
    assert_eq!(
        exit,
        DomainExit::Shutdown(ShutdownReason::Poweroff),
        "{out}"
    );
    assert!(out.contains("Hello from the Blanket PV guest!"), "{out}");
    assert!(
        out.contains("xen 4.17"),
        "xen_version's result reached the guest: {out}"
    );
    assert!(
        out.contains("4096 pages (16 MiB), magic xen-3.0-x86_64, cmdline 'hello'"),
        "{out}"
    );
    let lines = lines.lock().unwrap();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("hello: Hello from the Blanket PV guest!")
    );
    let s = d.stats();
    assert!(s.hypercalls >= 5 && s.exits >= s.hypercalls, "{s:?}");
}

#[test]
fn shutdown_codes_are_reported() {
    let hv = Hypervisor::new().unwrap();
    let cases = [
        ("poweroff", ShutdownReason::Poweroff),
        ("reboot", ShutdownReason::Reboot),
        ("suspend", ShutdownReason::Suspend),
        ("crash", ShutdownReason::Crash),
        ("watchdog", ShutdownReason::Watchdog),
    ];
    let mut doms: Vec<_> = cases
        .iter()
        .map(|(code, _)| boot(&hv, code, &format!("shutdown={code}")))
        .collect();
    for (d, (_, want)) in doms.iter_mut().zip(cases) {
        assert_eq!(finish(d), DomainExit::Shutdown(want));
    }
}

#[test]
fn an_invalid_shutdown_reason_is_einval_and_the_guest_goes_on() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "badreason", "shutdown=77");
    // The guest prints the error and then shuts down with SHUTDOWN_crash itself.
    assert_eq!(finish(&mut d), DomainExit::Shutdown(ShutdownReason::Crash));
    assert!(
        d.console_output()
            .contains("SCHEDOP_shutdown(77) returned -22"),
        "{}",
        d.console_output()
    );
}

#[test]
fn bad_hypercalls_get_errors_then_the_abi_breach_stops_only_that_guest() {
    let hv = Hypervisor::new().unwrap();
    let mut neighbour = boot(&hv, "neighbour", "cpu=300");
    let mut bad = boot(&hv, "bad", "bad-hypercall");
    let exit = finish(&mut bad);
    let out = bad.console_output();
    assert!(
        out.contains(
            "unknown -38, outside -14, null -14, huge -22, wrap -14, page-tables -14, system-area -14, bad-evtchn-arg -14, bad-sched-cmd -38, bad-port -22"
        ),
        "every bad call got its errno: {out}"
    );
    let DomainExit::Crashed(report) = exit else {
        panic!("not stopped: {exit:?}")
    };
    let CrashKind::BadHypercall(why) = &report.kind else {
        panic!("{report}")
    };
    assert!(why.contains("outside the hypercall page"), "{report}");
    assert!(report.rip > 0x200000, "{report}");
    assert!(!out.contains("still running"), "{out}");
    assert_eq!(
        neighbour.state(),
        RunState::Running,
        "the neighbour runs on"
    );
    assert_eq!(
        finish(&mut neighbour),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert!(neighbour.console_output().contains("cpu: done in"));
}

#[test]
fn a_faulting_guest_is_stopped_with_a_report_while_a_neighbour_finishes() {
    let hv = Hypervisor::new().unwrap();
    let mut neighbour = boot(&hv, "neighbour", "cpu=300");
    let mut bad = boot(&hv, "fault", "fault");
    let DomainExit::Crashed(report) = finish(&mut bad) else {
        panic!("not stopped")
    };
    assert_eq!(
        report.kind,
        CrashKind::Exception {
            vector: 14,
            error_code: 4,
            cr2: 0
        },
        "a user-mode read of the unmapped null page: {report}"
    );
    assert_eq!(report.cs, 0xe033, "{report}");
    let text = report.to_string();
    assert!(text.contains("#PF") && text.contains("cr2 0x0"), "{text}");
    assert_eq!(
        finish(&mut neighbour),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
}

#[test]
fn a_triple_faulting_guest_is_stopped_while_a_neighbour_finishes() {
    let hv = Hypervisor::new().unwrap();
    let mut neighbour = boot(&hv, "neighbour", "cpu=300");
    let mut c = config("triple", "triple-fault");
    c.exception_reports = false;
    let mut bad = hv.create_domain(c).unwrap();
    bad.start().unwrap();
    let DomainExit::Crashed(report) = finish(&mut bad) else {
        panic!("not stopped")
    };
    assert_eq!(report.kind, CrashKind::TripleFault, "{report}");
    assert!(
        report.to_string().starts_with("triple fault at rip"),
        "{report}"
    );
    assert_eq!(
        finish(&mut neighbour),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
}

#[test]
fn an_idle_guest_blocks_without_burning_cpu() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "idle", "idle");
    // Let it boot and block.
    let t0 = Instant::now();
    while !d.console_output().contains("idle: blocking") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.state(), RunState::Blocked);
    let before = d.stats();
    d.destroy();
    assert_eq!(finish(&mut d), DomainExit::Destroyed);
    let s = d.stats();
    // One wake-up a second: a handful of exits, and the vCPU thread's CPU time stays tiny.
    assert!(before.exits < 50, "{before:?}");
    assert!(
        s.cpu_ns < 200_000_000,
        "the idle vCPU used {} ms of CPU in {} ms",
        s.cpu_ns / 1_000_000,
        s.run_ns / 1_000_000
    );
    assert!(s.blocks >= 1, "{s:?}");
}

#[test]
fn timer_wakeups_work() {
    let hv = Hypervisor::new().unwrap();
    let t0 = Instant::now();
    let mut d = boot(&hv, "timer", "timer=20");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    assert!(out.contains("timer: 20/20 wake-ups on time"), "{out}");
    assert!(t0.elapsed() >= Duration::from_millis(200), "20 x 10 ms");
    assert!(d.stats().blocks >= 10, "{:?}", d.stats());
}

#[test]
fn pause_and_unpause_stop_and_resume_a_running_guest() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "paused", "cpu=400");
    std::thread::sleep(Duration::from_millis(50));
    d.pause();
    let t0 = Instant::now();
    while d.state() != RunState::Paused && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.state(), RunState::Paused, "kicked out of guest code");
    let exits = d.stats().exits;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.stats().exits, exits, "no progress while paused");
    assert!(d.exit().is_none());
    d.unpause();
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
}

#[test]
fn destroy_stops_a_cpu_bound_guest() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "spinner", "cpu=100000");
    std::thread::sleep(Duration::from_millis(50));
    d.destroy();
    assert_eq!(finish(&mut d), DomainExit::Destroyed);
}

#[test]
fn event_channel_operations_work_through_the_abi() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "evtchn", "evtchn-selftest");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    // Ports 1 and 2 are the XenStore and console ports the builder allocated.
    assert!(
        out.contains(
            "ports 3<->4 bind 0 send 0 pending true status 0 interdomain-ok; masked-upcall 0 unmask 0 upcall 1; ipi 0 pending true; close 0 peer unbound reclose -22; virq-again -17 virq-bad -22 vcpu1 -2; reset 0 closed"
        ),
        "{out}"
    );
    assert!(
        out.contains("gnttab query 0 max_frames 4; current_reservation 4096"),
        "{out}"
    );
}

#[test]
fn an_event_from_domain_0_wakes_a_blocked_guest() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "waiter", "wait-event");
    let port = offered_port(&d);
    while d.state() != RunState::Blocked {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.state(), RunState::Blocked, "still waiting");
    d.notify(port);
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert!(
        d.console_output()
            .contains(&format!("got event on port {port}"))
    );
}

/// A [`BlockedService`] that sleeps, as a device wait does, until the vCPU's wake condition holds,
/// for 10 s at most; a signal ends each sleep early (`nanosleep` returns `EINTR`).
#[derive(Default)]
struct Sleeper {
    /// When the vCPU thread entered it, and how long it stayed.
    calls: Mutex<Vec<(Instant, Option<Duration>)>>,
}

impl BlockedService for Sleeper {
    fn serve_blocked(&self, _budget: Duration, wake: &dyn Fn() -> bool) -> bool {
        let t0 = Instant::now();
        let i = {
            let mut c = self.calls.lock().unwrap();
            c.push((t0, None));
            c.len() - 1
        };
        while !wake() && t0.elapsed() < Duration::from_secs(10) {
            let ts = libc::timespec {
                tv_sec: 10,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec; no remainder is asked for.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        }
        self.calls.lock().unwrap()[i].1 = Some(t0.elapsed());
        true
    }
}

#[test]
fn an_event_ends_the_wait_of_a_blocked_service_on_the_vcpu_thread() {
    let hv = Hypervisor::new().unwrap();
    let mut d = hv.create_domain(config("served", "wait-event")).unwrap();
    let sleeper = Arc::new(Sleeper::default());
    d.add_blocked_service(sleeper.clone());
    d.start().unwrap();
    let port = offered_port(&d);
    // The guest blocks, and its vCPU thread sleeps in the service.
    let t0 = Instant::now();
    while sleeper.calls.lock().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the service is called"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        sleeper.calls.lock().unwrap()[0].1,
        None,
        "still in the service"
    );
    assert_eq!(d.state(), RunState::Blocked);
    let sent = Instant::now();
    d.notify(port);
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    // The event kicked the thread out of its sleep: well before the service's own 10 s.
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "the event waited {:?}",
        sent.elapsed()
    );
    let calls = sleeper.calls.lock().unwrap();
    assert!(calls.iter().all(|c| c.1.is_some()), "{:?}", *calls);
    assert!(d.stats().blocks_served >= 1);
    assert!(
        d.console_output()
            .contains(&format!("got event on port {port}"))
    );
}

#[test]
fn an_event_between_two_guests_wakes_the_receiver() {
    let hv = Hypervisor::new().unwrap();
    // The receiver offers a port to the sender's domain id (ids are handed out in order).
    let probe = hv.create_domain(config("probe", "hello")).unwrap();
    let mut tx_cfg = config("tx", "");
    let rx_id = probe.domid() + 1;
    let tx_id = rx_id + 1;
    drop(probe);
    let mut rx = hv
        .create_domain(config("rx", &format!("wait-event={tx_id}")))
        .unwrap();
    assert_eq!(rx.domid(), rx_id);
    rx.start().unwrap();
    let port = offered_port(&rx);
    tx_cfg.cmdline = format!("send-event={rx_id},{port}");
    let mut tx = hv.create_domain(tx_cfg).unwrap();
    assert_eq!(tx.domid(), tx_id);
    tx.start().unwrap();
    assert_eq!(
        finish(&mut tx),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert_eq!(
        finish(&mut rx),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert!(
        rx.console_output()
            .contains(&format!("got event on port {port}"))
    );
}

#[test]
fn domain_ids_are_handed_out_in_order_and_a_destroyed_ones_is_not_reused_at_once() {
    let hv = Hypervisor::new().unwrap();
    let a = hv.create_domain(config("a", "hello")).unwrap();
    let b = hv.create_domain(config("b", "hello")).unwrap();
    assert_eq!(b.domid(), a.domid() + 1);
    let (a_id, b_id) = (a.domid(), b.domid());
    drop(a);
    let c = hv.create_domain(config("c", "hello")).unwrap();
    assert_eq!(c.domid(), b_id + 1, "not {a_id}, freed just now");
    assert!(c.domid() != a_id && c.domid() != b_id);
}

#[test]
fn a_port_offered_to_another_domain_cannot_be_bound_by_a_third() {
    let hv = Hypervisor::new().unwrap();
    let mut rx = boot(&hv, "rx", "wait-event=4000");
    let port = offered_port(&rx);
    let mut intruder = boot(
        &hv,
        "intruder",
        &format!("send-event={},{port}", rx.domid()),
    );
    assert_eq!(
        finish(&mut intruder),
        DomainExit::Shutdown(ShutdownReason::Crash)
    );
    assert!(
        intruder
            .console_output()
            .contains(&format!("bind to {}:{port} -22", rx.domid()))
    );
    assert_eq!(rx.state(), RunState::Blocked, "the receiver is untouched");
    rx.destroy();
    assert_eq!(finish(&mut rx), DomainExit::Destroyed);
}

#[test]
fn sixteen_guests_boot_at_once() {
    // Sixteen guests at once, each with its own memory and vCPU thread.
    let hv = Hypervisor::new().unwrap();
    let mut doms: Vec<_> = (0..16)
        .map(|i| boot(&hv, &format!("g{i}"), "hello"))
        .collect();
    for d in &mut doms {
        assert_eq!(finish(d), DomainExit::Shutdown(ShutdownReason::Poweroff));
        assert!(
            d.console_output()
                .contains("Hello from the Blanket PV guest!")
        );
    }
}

#[test]
fn timer_events_arrive_as_upcalls_while_the_guest_computes() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "upcall", "upcall=20");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    assert!(out.contains("callback registered (0)"), "{out}");
    assert!(out.contains("upcall: 20 timer upcalls"), "{out}");
    let s = d.stats();
    assert!(s.upcalls >= 20, "{s:?}");
    assert_eq!(
        s.blocks, 0,
        "the guest never blocked: the upcalls came into running code"
    );
}

#[test]
fn an_upcall_onto_an_unwritable_stack_stops_the_guest_with_a_report() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "badstack", "upcall-bad-stack");
    let DomainExit::Crashed(report) = finish(&mut d) else {
        panic!("not stopped")
    };
    let CrashKind::Failsafe(why) = &report.kind else {
        panic!("{report}")
    };
    assert!(why.contains("stack pointer 0x1000"), "{report}");
    assert_eq!(report.rsp, 0x1000);
}

#[test]
fn a_console_flood_is_rate_limited_and_the_guest_goes_on() {
    let hv = Hypervisor::new().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let mut c = config("flood", "flood=100");
    c.console = Some(Arc::new(move |_: &str, line: &str| {
        if line.starts_with('[') {
            sink_lines.lock().unwrap().push(line.to_string());
        }
    }));
    let t0 = Instant::now();
    let mut d = hv.create_domain(c).unwrap();
    d.start().unwrap();
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let secs = t0.elapsed().as_secs_f64();
    let s = d.stats();
    let limit = blanket_hypervisor::domain::CONSOLE_BURST as f64
        + blanket_hypervisor::domain::CONSOLE_RATE as f64 * (secs + 0.1);
    assert!((s.console_bytes as f64) <= limit, "{s:?} in {secs} s");
    assert!(s.console_dropped > 4 << 20, "6.4 MiB offered: {s:?}");
    assert!(d.console_output().len() <= blanket_hypervisor::domain::CONSOLE_KEEP);
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l.contains("dropping")), "{lines:?}");
}

/// Runs the started `balloon=8` guest `d` to its end: the host memory it held when it had touched
/// its 8 MiB, when it had given them back and when it had them again; asserts what the guest saw
/// (every frame given back read as zero, and all of them came back).
fn balloon_run(mut d: Domain) -> (u64, u64, u64) {
    wait_for_console(&d, "balloon: touched 8 MiB");
    let touched = d.host_memory_bytes();
    wait_for_console(&d, "balloon: released");
    let released = d.host_memory_bytes();
    wait_for_console(&d, "balloon: populated");
    let populated = d.host_memory_bytes();
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    assert!(
        out.contains("released 2048 pages, reservation 2048, reads 0, kernel frame 0"),
        "the frames given back read as zero: {out}"
    );
    assert!(
        out.contains("populated 2048 pages, reservation 4096"),
        "{out}"
    );
    (touched, released, populated)
}

#[test]
fn ballooned_memory_goes_back_to_the_host_and_returns() {
    let hv = Hypervisor::new().unwrap();
    let (touched, released, populated) = balloon_run(boot(&hv, "balloon", "balloon=8"));
    assert!(touched >= 8 << 20, "{touched}");
    assert!(
        released + (7 << 20) <= touched,
        "8 MiB went back: {touched} -> {released}"
    );
    assert!(
        populated >= released + (7 << 20),
        "and came back when touched: {released} -> {populated}"
    );
}

/// With the guest's memory registered for a back end's fixed buffers (`Domain::fixed_memory`), its
/// pages must stay the memfd's: a frame given back reads as zero all the same, but its memory stays.
#[test]
fn ballooned_memory_registered_for_fixed_buffers_is_zeroed_not_returned() {
    let hv = Hypervisor::new().unwrap();
    let mut d = hv
        .create_domain(config("balloon-fixed", "balloon=8"))
        .unwrap();
    let memory = d.fixed_memory().expect("the guest's memory");
    assert_eq!(memory.ranges().len(), 1);
    d.start().unwrap();
    let (touched, released, _) = balloon_run(d);
    assert!(
        released + (1 << 20) >= touched,
        "the memory stays with the guest: {touched} -> {released}"
    );
}

#[test]
fn exceptions_are_bounced_to_the_guests_trap_table_handlers() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "trap", "trap");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    assert!(
        out.contains("trap: bad handler -22, bad table -14, set_trap_table 0; #UD 3, #PF 2 (err 0x4 cr2 0x0; err 0x7 cr2"),
        "{out}"
    );
    assert!(out.contains("= pt_base true)"), "{out}");
    assert_eq!(d.stats().bounces, 5, "{:?}", d.stats());
}

#[test]
fn hypervisor_iret_restores_the_guests_frame() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "iret", "iret");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert!(
        d.console_output()
            .contains("iret: back with rax 0x1111 rcx 0x2222 r11 0x3333"),
        "{}",
        d.console_output()
    );
}

#[test]
fn an_iret_into_ring_0_stops_the_guest() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "iret0", "iret-ring0");
    let DomainExit::Crashed(report) = finish(&mut d) else {
        panic!("not stopped")
    };
    let CrashKind::BadHypercall(why) = &report.kind else {
        panic!("{report}")
    };
    assert!(why.contains("cs 0x8"), "{report}");
    assert!(!d.console_output().contains("back with"));
}

#[test]
fn sched_poll_times_out_returns_on_a_pending_masked_port_and_checks_its_arguments() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "poll", "poll");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    assert!(out.contains("poll: timeout 0 after"), "{out}");
    assert!(out.contains("(>= 50: true), pending 0 after"), "{out}");
    assert!(
        out.contains("too-many -22, bad-pointer -14, bad-port -22"),
        "{out}"
    );
    let quick: u64 = out
        .split("pending 0 after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        quick < 1000,
        "a pending port ends the poll at once, not at its 5 s timeout: {out}"
    );
}

#[test]
fn domain_0_exchanges_events_with_a_guest() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let hv = Hypervisor::new().unwrap();
    // Guest to dom0: dom0 offers a port, the guest binds it and sends.
    let heard = Arc::new(AtomicU32::new(0));
    let h = heard.clone();
    let mut probe = hv.create_domain(config("probe", "hello")).unwrap();
    // Ids are handed out in order: the next domain gets the next one.
    let next = probe.domid() + 1;
    drop(probe);
    let port = hv
        .dom0_alloc_unbound(next, move |p| {
            h.store(p + 1000, Ordering::SeqCst);
        })
        .unwrap();
    probe = boot(&hv, "tx0", &format!("send-event=0,{port}"));
    assert_eq!(probe.domid(), next);
    assert_eq!(
        finish(&mut probe),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert_eq!(
        heard.load(Ordering::SeqCst),
        port + 1000,
        "dom0's handler ran for its port"
    );
    // Dom0 to guest: the guest offers a port to dom0, dom0 binds it and sends.
    let mut rx = boot(&hv, "rx0", "wait-event=0");
    let guest_port = offered_port(&rx);
    let local = hv
        .dom0_bind_interdomain(rx.domid(), guest_port, |_| {})
        .unwrap();
    assert_eq!(
        hv.dom0_bind_interdomain(rx.domid(), guest_port, |_| {}),
        Err(22),
        "bound already"
    );
    hv.dom0_send(local).unwrap();
    assert_eq!(
        finish(&mut rx),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    assert!(
        rx.console_output()
            .contains(&format!("got event on port {guest_port}"))
    );
    hv.dom0_close(local).unwrap();
    assert_eq!(hv.dom0_send(local), Err(22), "a closed port");
    assert_eq!(hv.dom0_send(u32::MAX), Err(22));
}

#[test]
fn domain_0_resolves_the_pages_a_guest_granted_it() {
    use blanket_hypervisor::GrantResolveError;
    use xen_abi::grant_table::GrantError;
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "granter", "grant");
    wait_for_console(&d, "refs 8 and 9 granted");
    assert!(
        d.console_output()
            .contains("grant: setup_table 0 status 0 frame"),
        "{}",
        d.console_output()
    );
    let rw = d.resolve_grant(8, true).unwrap();
    assert!(!rw.readonly);
    let mut buf = [0u8; 18];
    d.memory().read(rw.gpa, &mut buf).unwrap();
    assert_eq!(&buf, b"granted read-write");
    let ro = d.resolve_grant(9, false).unwrap();
    assert!(ro.readonly);
    let mut buf = [0u8; 17];
    d.memory().read(ro.gpa, &mut buf).unwrap();
    assert_eq!(&buf, b"granted read-only");
    // Writing through a read-only grant, an ungranted entry, and a reference past the table are refused.
    assert!(matches!(
        d.resolve_grant(9, true),
        Err(GrantResolveError::Grant(GrantError::ReadOnly { .. }))
    ));
    assert!(matches!(
        d.resolve_grant(10, false),
        Err(GrantResolveError::Grant(_))
    ));
    assert!(matches!(
        d.resolve_grant(512, false),
        Err(GrantResolveError::Grant(GrantError::BadRef { .. }))
    ));
    assert!(matches!(
        d.resolve_grant(u32::MAX, false),
        Err(GrantResolveError::Grant(GrantError::BadRef { .. }))
    ));
    // A grant of the guest's own page tables is readable but never writable by a back-end.
    assert!(matches!(
        d.resolve_grant(11, true),
        Err(GrantResolveError::BadFrame { gref: 11, .. })
    ));
    assert_eq!(d.resolve_grant(11, false).unwrap().gpa, d.layout().pt_base);
    d.destroy();
    assert_eq!(finish(&mut d), DomainExit::Destroyed);
}

#[test]
fn upcalls_arrive_while_the_guest_takes_exceptions() {
    let hv = Hypervisor::new().unwrap();
    let mut d = boot(&hv, "trapupcall", "trap-upcall");
    assert_eq!(
        finish(&mut d),
        DomainExit::Shutdown(ShutdownReason::Poweroff)
    );
    let out = d.console_output();
    assert!(out.contains("trap-upcall: 10 timer upcalls among"), "{out}");
    let s = d.stats();
    assert!(s.bounces > 10 && s.upcalls >= 10, "{s:?}");
}
