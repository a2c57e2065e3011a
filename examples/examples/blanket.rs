//! The example Blanket hypervisor: boots Xen PV guests on KVM (in ring 3) with XenStore, console rings,
//! disks and networks served by pv-backend, shows their consoles prefixed by domain name and their progress,
//! and prints a summary.
//!
//! ```sh
//! cargo run --release --example blanket                      # the default set: disks, a ping pair, CPU, idle
//! cargo run --release --example blanket -- --guests 8 --cmdline cpu=200
//! cargo run --release --example blanket -- --cmdline idle --timeout 3
//! cargo run --release --example blanket -- \
//!     --guest name=w,cmdline=disk-write=5,disk=/tmp/d.img --guest name=v,cmdline=disk-verify=5,disk=/tmp/d.img,after=w
//! # a vbd on a vhost-user-blk export (qemu-storage-daemon), zero copy through blanket-virtio:
//! qemu-storage-daemon --blockdev driver=file,node-name=f0,filename=/tmp/d.img \
//!     --export type=vhost-user-blk,id=e0,node-name=f0,writable=on,addr.type=unix,addr.path=/tmp/vub.sock &
//! cargo run --release --example blanket -- --guest name=w,cmdline=disk-write=5,disk=vhost-user:/tmp/vub.sock
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_hypervisor::devices::console::ConsoleOutput;
use blanket_hypervisor::toolstack::{
    Guest, GuestConfig, Toolstack, ToolstackError, VbdBackend, VbdConfig, VifConfig, VifLink,
    xvd_devid,
};
use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, RunState, guest};
use clap::Parser;
use xen_abi::sched::ShutdownReason;

/// The guests booted with no arguments: (name, cmdline, devices, boot after). `disk` is one temporary
/// image, `vif` a port of the in-process switch.
const DEFAULT_SET: &[(&str, &str, &str, &str)] = &[
    ("writer", "disk-write=42", "disk", ""),
    ("verifier", "disk-verify=42", "disk", "writer"),
    ("echo", "net-echo=50", "vif", ""),
    ("ping", "net-ping=50", "vif", ""),
    ("cpu", "cpu=100", "", ""),
    ("idle", "idle", "", ""),
];

#[derive(Parser, Debug)]
#[command(
    name = "blanket",
    about = "The example Blanket hypervisor: Xen PV guests on KVM, deprivileged in ring 3",
    long_about = "Boots N copies of the embedded Blanket PV guest, each with its own memory (a sparse memfd) and \
vCPU thread, shows their consoles prefixed by domain name, and prints a summary table.\n\nGuest workloads \
(--cmdline): hello, idle, cpu=N (N million steps), timer=N (N 10-ms timer wake-ups), shutdown=CODE \
(poweroff|reboot|suspend|crash|watchdog), bad-hypercall, fault, triple-fault; with devices: xs-test, \
console-ring, disk-write=SEED, disk-verify=SEED, disk-bench=ROUNDS, disk-load=ROUNDS, disk-reboot=SEED \
(write, reboot, verify), net-echo[=N], net-ping=N. A guest that reboots is restarted (--max-restarts).\n\nWith no \
arguments it boots a default set on temporary image files and the in-process switch: a disk writer, then a \
verifier of the same image, a ping pair, a CPU job and an idle guest (destroyed once the others are done)."
)]
struct Args {
    /// Number of guests to boot.
    #[arg(short = 'n', long, default_value_t = 4)]
    guests: usize,
    /// Guest command line (workload); repeat to give guests different ones, in turn. Default: a mix.
    #[arg(short, long)]
    cmdline: Vec<String>,
    /// Memory per guest, in MiB.
    #[arg(short, long, default_value_t = 32)]
    memory: u64,
    /// vCPUs per guest (1 to 32); vCPU 0 boots, the guest brings up the others (try `--cmdline smp-cpu=40`).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Domain name prefix (guests are PREFIX1, PREFIX2, ...).
    #[arg(long, default_value = "guest")]
    name: String,
    /// Destroy guests still running after this many seconds.
    #[arg(short, long, default_value_t = 30)]
    timeout: u64,
    /// A guest kernel (ELF, Xen PV) instead of the embedded one.
    #[arg(short, long)]
    kernel: Option<std::path::PathBuf>,
    /// Do not show the guests' consoles.
    #[arg(short, long)]
    quiet: bool,
    /// A guest, in xl's key=value style, comma-separated: name=NAME, cmdline=WORKLOAD, memory=MIB,
    /// disk=PATH (a raw image, xvda; disk=PATH:r for read-only; repeat for xvdb...) or
    /// disk=vhost-user:SOCKET (a vhost-user-blk device, such as a qemu-storage-daemon export, with zero
    /// copy; :r for read-only), vif=switch or vif=tap:NAME (repeat for more),
    /// console=stdout|log:PATH|pty|none, after=NAME (boot once that guest ended). Repeat --guest for more
    /// guests.
    #[arg(short, long)]
    guest: Vec<String>,
    /// Serve the host's xenstored on this Unix socket too (XENSTORED_PATH=PATH xenstore-ls).
    #[arg(long)]
    xenstored_socket: Option<std::path::PathBuf>,
    /// Restart a guest that shuts down with reason reboot (as xl's on_reboot = "restart": same
    /// configuration, new domain) at most this many times; 0 ends it at its first reboot.
    #[arg(long, default_value_t = 5)]
    max_restarts: u32,
    /// Size of the temporary disk images of the default set, in MiB.
    #[arg(long, default_value_t = 8)]
    disk_size: u64,
}

/// One guest to boot.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    cmdline: String,
    memory: u64,
    disks: Vec<(VbdBackend, bool)>,
    vifs: Vec<VifLink>,
    console: String,
    after: Option<String>,
}

fn parse_guest(s: &str, default_memory: u64, index: usize) -> Result<Spec, String> {
    let mut spec = Spec {
        name: format!("guest{}", index + 1),
        cmdline: "hello".into(),
        memory: default_memory,
        disks: Vec::new(),
        vifs: Vec::new(),
        console: "stdout".into(),
        after: None,
    };
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("--guest '{s}': '{item}' is not key=value"))?;
        match k {
            "name" => spec.name = v.into(),
            "cmdline" => spec.cmdline = v.into(),
            "memory" => {
                spec.memory = v
                    .parse()
                    .map_err(|_| format!("--guest '{s}': memory '{v}' is not a number of MiB"))?
            }
            "disk" => {
                let (target, ro) = match v.strip_suffix(":r") {
                    Some(p) => (p, true),
                    None => (v.strip_suffix(":w").unwrap_or(v), false),
                };
                let backend = match target.strip_prefix("vhost-user:") {
                    Some("") => {
                        return Err(format!(
                            "--guest '{s}': disk=vhost-user:SOCKET needs the socket's path"
                        ));
                    }
                    Some(sock) => VbdBackend::VhostUser(sock.into()),
                    None if target.is_empty() => {
                        return Err(format!("--guest '{s}': disk= needs an image path"));
                    }
                    None => VbdBackend::Image(target.into()),
                };
                spec.disks.push((backend, ro));
            }
            "vif" => spec.vifs.push(match v {
                "switch" => VifLink::Switch,
                t if t.starts_with("tap:") => VifLink::Tap(t[4..].into()),
                _ => {
                    return Err(format!(
                        "--guest '{s}': vif '{v}' is not switch or tap:NAME"
                    ));
                }
            }),
            "console" => spec.console = v.into(),
            "after" => spec.after = Some(v.into()),
            _ => {
                return Err(format!(
                    "--guest '{s}': unknown key '{k}' (name, cmdline, memory, disk, vif, console, after)"
                ));
            }
        }
    }
    Ok(spec)
}

/// A temporary disk image of the default set, removed at exit.
struct TempImage(std::path::PathBuf);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("blanket: {e}");
        let mut source = std::error::Error::source(&*e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.guests == 0 {
        return Err("--guests must be at least 1".into());
    }
    let kernel: Arc<[u8]> = match &args.kernel {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .into(),
        None => guest::builtin()?,
    };
    let mut temp = Vec::new();
    let specs: Vec<Spec> = if !args.guest.is_empty() {
        args.guest
            .iter()
            .enumerate()
            .map(|(i, g)| parse_guest(g, args.memory, i))
            .collect::<Result<_, _>>()?
    } else if !args.cmdline.is_empty() || args.guests != 4 {
        let workloads: Vec<String> = if args.cmdline.is_empty() {
            vec!["hello".into()]
        } else {
            args.cmdline.clone()
        };
        (0..args.guests)
            .map(|i| Spec {
                name: format!("{}{}", args.name, i + 1),
                cmdline: workloads[i % workloads.len()].clone(),
                memory: args.memory,
                disks: Vec::new(),
                vifs: Vec::new(),
                console: "stdout".into(),
                after: None,
            })
            .collect()
    } else {
        let path = std::env::temp_dir().join(format!("blanket-example-{}.img", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(args.disk_size << 20))
            .map_err(|e| format!("creating the temporary image {}: {e}", path.display()))?;
        temp.push(TempImage(path.clone()));
        DEFAULT_SET
            .iter()
            .map(|(name, cmdline, dev, after)| Spec {
                name: name.to_string(),
                cmdline: cmdline.to_string(),
                memory: args.memory,
                disks: if *dev == "disk" {
                    vec![(VbdBackend::Image(path.clone()), false)]
                } else {
                    Vec::new()
                },
                vifs: if *dev == "vif" {
                    vec![VifLink::Switch]
                } else {
                    Vec::new()
                },
                console: "stdout".into(),
                after: (!after.is_empty()).then(|| after.to_string()),
            })
            .collect()
    };
    let hv = Hypervisor::new()?;
    let ts = Toolstack::new(hv)?;
    if let Some(sock) = &args.xenstored_socket {
        ts.xenstored().serve_unix(sock)?;
        println!(
            "blanket: xenstored on {} (XENSTORED_PATH={} xenstore-ls)",
            sock.display(),
            sock.display()
        );
    }
    let quiet = args.quiet;
    let console: blanket_hypervisor::ConsoleSink = Arc::new(move |name: &str, line: &str| {
        if !quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[{name}] {line}");
        }
    });
    println!(
        "blanket: booting {} guest(s) on KVM (ring-3 PV; hypercalls trap through the TSS I/O bitmap), with XenStore, console rings, vbds and vifs served by pv-backend",
        specs.len()
    );
    let t0 = Instant::now();
    // Guests whose `after` has not ended yet wait; the others boot now.
    let mut slots: Vec<(Spec, Option<Guest>, Option<DomainExit>)> =
        specs.into_iter().map(|s| (s, None, None)).collect();
    // Ok(Err(why)): the host refused the guest (no room); Err: a fatal error.
    type Booted = Result<Result<Guest, String>, Box<dyn std::error::Error>>;
    let boot = |spec: &Spec| -> Booted {
        let mut cfg = DomainConfig::new(spec.name.clone(), kernel.clone());
        cfg.memory = spec.memory << 20;
        cfg.cmdline = spec.cmdline.clone();
        cfg.vcpus = args.vcpus;
        // console_io lines go to stdout; the console ring goes where the spec says.
        cfg.console = Some(console.clone());
        let mut g = GuestConfig::new(cfg);
        g.console = match spec.console.as_str() {
            "stdout" => ConsoleOutput::Lines(Some(console.clone())),
            "pty" => ConsoleOutput::Pty,
            "none" => ConsoleOutput::None,
            c if c.starts_with("log:") => ConsoleOutput::LogFile(c[4..].into()),
            c => {
                return Err(format!(
                    "{}: console '{c}' is not stdout, log:PATH, pty or none",
                    spec.name
                )
                .into());
            }
        };
        for (i, (backend, ro)) in spec.disks.iter().enumerate() {
            g.vbds.push(VbdConfig {
                devid: xvd_devid(i as u32),
                backend: backend.clone(),
                read_only: *ro,
                inline: matches!(backend, VbdBackend::Image(_)),
                fixed_memory: false,
            });
        }
        for (i, link) in spec.vifs.iter().enumerate() {
            g.vifs.push(VifConfig {
                devid: i as u32,
                mac: [0; 6],
                link: link.clone(),
            });
        }
        let mut guest = match ts.create(g) {
            Ok(g) => g,
            // The host has no room for it: refused, the others go on.
            Err(e @ ToolstackError::OutOfFiles { .. }) => return Ok(Err(e.to_string())),
            Err(e) => return Err(format!("creating {}: {e}", spec.name).into()),
        };
        if let Some(p) = guest.console_pty() {
            println!("blanket: {}'s console is on {}", spec.name, p.display());
        }
        guest.start()?;
        Ok(Ok(guest))
    };
    let mut refused: Vec<usize> = Vec::new();
    let deadline = t0 + Duration::from_secs(args.timeout);
    let mut last_progress = Instant::now();
    let mut destroying_idle = false;
    loop {
        // Boot what may boot.
        for i in 0..slots.len() {
            if slots[i].1.is_some() || slots[i].2.is_some() {
                continue;
            }
            let ready = match &slots[i].0.after {
                None => true,
                Some(a) => slots.iter().any(|(s, _, e)| &s.name == a && e.is_some()),
            };
            if ready {
                match boot(&slots[i].0)? {
                    Ok(g) => slots[i].1 = Some(g),
                    Err(why) => {
                        if refused.is_empty() {
                            println!("blanket: {} refused: {why}", slots[i].0.name);
                        }
                        refused.push(i);
                        slots[i].2 = Some(DomainExit::Destroyed);
                    }
                }
            }
        }
        // Collect what ended; restart what rebooted (xl's on_reboot = "restart").
        for (spec, g, e) in slots.iter_mut() {
            let Some(guest) = g else { continue };
            if e.is_some() || guest.domain().state() != RunState::Dead {
                continue;
            }
            let exit = guest.wait();
            if exit == DomainExit::Shutdown(ShutdownReason::Reboot)
                && guest.restarts() < args.max_restarts
                && Instant::now() < deadline
            {
                println!(
                    "blanket: {} rebooted: restarting it (restart {} of at most {})",
                    spec.name,
                    guest.restarts() + 1,
                    args.max_restarts
                );
                let old = g.take().expect("checked above");
                *g = Some(
                    ts.restart(old)
                        .map_err(|e| format!("restarting {}: {e}", spec.name))?,
                );
                continue;
            }
            *e = Some(exit);
        }
        let done = slots.iter().filter(|(_, _, e)| e.is_some()).count();
        if done == slots.len() {
            break;
        }
        // Once every other guest is done, idle ones (that would block for ever) are destroyed.
        let busy = slots
            .iter()
            .filter(|(s, _, e)| e.is_none() && s.cmdline != "idle")
            .count();
        if busy == 0 && !destroying_idle && slots.iter().any(|(s, _, _)| s.cmdline != "idle") {
            destroying_idle = true;
            println!("blanket: every other guest is done: destroying the idle ones");
            for (_, g, _) in &slots {
                if let Some(g) = g {
                    g.domain().destroy();
                }
            }
        }
        if Instant::now() >= deadline {
            println!(
                "blanket: timeout after {} s: destroying {} guest(s) still running",
                args.timeout,
                slots.len() - done
            );
            for (_, g, e) in slots.iter_mut() {
                if let Some(g) = g {
                    g.domain().destroy();
                }
                if e.is_none() && g.is_none() {
                    *e = Some(DomainExit::Destroyed);
                }
            }
            for (_, g, e) in slots.iter_mut() {
                if let Some(g) = g
                    && e.is_none()
                {
                    *e = Some(g.wait());
                }
            }
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            let states: Vec<RunState> = slots
                .iter()
                .filter_map(|(_, g, _)| g.as_ref().map(|g| g.domain().state()))
                .collect();
            let running = states.iter().filter(|s| **s == RunState::Running).count();
            let blocked = states.iter().filter(|s| **s == RunState::Blocked).count();
            let exits: u64 = slots
                .iter()
                .filter_map(|(_, g, _)| g.as_ref().map(|g| g.domain().stats().exits))
                .sum();
            println!(
                "blanket: {:>5.1} s  running {running}, blocked {blocked}, done {done} of {}; {exits} exits, {} back-end events so far",
                t0.elapsed().as_secs_f64(),
                slots.len(),
                ts.backend_notifications()
            );
            last_progress = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    println!();
    println!(
        "{:<12} {:<20} {:<28} {:>9} {:>9} {:>8} {:>10} {:>8}",
        "domain", "cmdline", "exit", "run ms", "cpu ms", "exits", "hypercalls", "mem KiB"
    );
    let mut failed = refused.len();
    for (i, (spec, g, exit)) in slots.iter().enumerate() {
        let exit = exit.clone().unwrap_or(DomainExit::Destroyed);
        let short = match &exit {
            _ if refused.contains(&i) => "refused (no room)".into(),
            DomainExit::Shutdown(r) => {
                if *r == ShutdownReason::Crash {
                    failed += 1;
                }
                format!("shutdown {}", blanket_hypervisor::domain::shutdown_name(*r))
            }
            DomainExit::Crashed(c) => {
                failed += 1;
                format!("crashed ({})", crash_short(c))
            }
            DomainExit::Destroyed => "destroyed".into(),
        };
        let short = match g.as_ref().map_or(0, |g| g.restarts()) {
            0 => short,
            n => format!("{short} ({n} restarts)"),
        };
        let (s, mem) = g
            .as_ref()
            .map(|g| (g.domain().stats(), g.domain().host_memory_bytes()))
            .unwrap_or_default();
        println!(
            "{:<12} {:<20} {:<28} {:>9.1} {:>9.1} {:>8} {:>10} {:>8}",
            spec.name,
            truncate(&spec.cmdline, 20),
            short,
            s.run_ns as f64 / 1e6,
            s.cpu_ns as f64 / 1e6,
            s.exits,
            s.hypercalls,
            mem / 1024
        );
        if let DomainExit::Crashed(c) = &exit {
            println!("             {c}");
        }
        if let Some(g) = g {
            for e in g.backend_errors() {
                println!("             back-end: {e}");
            }
        }
    }
    if !refused.is_empty() {
        println!(
            "\nblanket: {} guest(s) refused by the host, the first after {} were created",
            refused.len(),
            slots[..refused[0]]
                .iter()
                .filter(|(_, g, _)| g.is_some())
                .count()
        );
    }
    println!(
        "\nblanket: {} guest(s) in {:.2} s, {failed} crashed, failed or refused; {} back-end events to guests",
        slots.len(),
        t0.elapsed().as_secs_f64(),
        ts.backend_notifications()
    );
    drop(slots);
    drop(temp);
    Ok(())
}

fn crash_short(c: &blanket_hypervisor::CrashReport) -> String {
    use blanket_hypervisor::CrashKind::*;
    match &c.kind {
        TripleFault => "triple fault".into(),
        Exception { vector, .. } => blanket_hypervisor::domain::exception_name(*vector).into(),
        BadHypercall(_) => "bad hypercall".into(),
        UnexpectedExit(_) => "unexpected exit".into(),
        KvmError(_) => "KVM error".into(),
        Failsafe(_) => "upcall failed".into(),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
