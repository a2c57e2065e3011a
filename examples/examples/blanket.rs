//! The example Blanket hypervisor: boots N Xen PV guests on KVM (in ring 3), shows their consoles prefixed
//! by domain name and their progress, and prints a summary.
//!
//! ```sh
//! cargo run --release --example blanket                      # 4 guests, a mix of workloads
//! cargo run --release --example blanket -- --guests 8 --cmdline cpu=200
//! cargo run --release --example blanket -- --cmdline idle --timeout 3
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_hypervisor::{Domain, DomainConfig, DomainExit, Hypervisor, RunState, guest};
use clap::Parser;

/// The workloads guests run when no --cmdline is given, in turn.
const DEFAULT_WORKLOADS: &[&str] = &["hello", "cpu=100", "timer=20", "shutdown=reboot"];

#[derive(Parser, Debug)]
#[command(
    name = "blanket",
    about = "The example Blanket hypervisor: Xen PV guests on KVM, deprivileged in ring 3",
    long_about = "Boots N copies of the embedded Blanket PV guest, each with its own memory (a sparse memfd) and \
vCPU thread, shows their consoles prefixed by domain name, and prints a summary table.\n\nGuest workloads \
(--cmdline): hello, idle, cpu=N (N million steps), timer=N (N 10-ms timer wake-ups), shutdown=CODE \
(poweroff|reboot|suspend|crash|watchdog), bad-hypercall, fault, triple-fault."
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
    let workloads: Vec<String> = if args.cmdline.is_empty() {
        DEFAULT_WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        args.cmdline.clone()
    };
    let hv = Hypervisor::new()?;
    let quiet = args.quiet;
    let console: blanket_hypervisor::ConsoleSink = Arc::new(move |name: &str, line: &str| {
        if !quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[{name}] {line}");
        }
    });
    println!(
        "blanket: booting {} guest(s), {} MiB each, on KVM (ring-3 PV; hypercalls trap through the TSS I/O bitmap)",
        args.guests, args.memory
    );
    let t0 = Instant::now();
    let mut doms: Vec<(Domain, String)> = Vec::with_capacity(args.guests);
    for i in 0..args.guests {
        let cmdline = workloads[i % workloads.len()].clone();
        let mut cfg = DomainConfig::new(format!("{}{}", args.name, i + 1), kernel.clone());
        cfg.memory = args.memory << 20;
        cfg.cmdline = cmdline.clone();
        cfg.console = Some(console.clone());
        let mut d = hv
            .create_domain(cfg)
            .map_err(|e| format!("creating domain {} of {}: {e}", i + 1, args.guests))?;
        d.start()?;
        doms.push((d, cmdline));
    }
    println!(
        "blanket: {} guest(s) started in {:.1} ms",
        doms.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );

    let deadline = t0 + Duration::from_secs(args.timeout);
    let mut last_progress = Instant::now();
    loop {
        let states: Vec<RunState> = doms.iter().map(|(d, _)| d.state()).collect();
        let dead = states.iter().filter(|s| **s == RunState::Dead).count();
        if dead == doms.len() {
            break;
        }
        if Instant::now() >= deadline {
            println!(
                "blanket: timeout after {} s: destroying {} guest(s) still running",
                args.timeout,
                doms.len() - dead
            );
            for (d, _) in &doms {
                d.destroy();
            }
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            let running = states.iter().filter(|s| **s == RunState::Running).count();
            let blocked = states.iter().filter(|s| **s == RunState::Blocked).count();
            let exits: u64 = doms.iter().map(|(d, _)| d.stats().exits).sum();
            println!(
                "blanket: {:>5.1} s  running {running}, blocked {blocked}, done {dead} of {}; {exits} exits so far",
                t0.elapsed().as_secs_f64(),
                doms.len()
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
    let mut failed = 0;
    for (d, cmdline) in &mut doms {
        let exit = d.wait();
        let s = d.stats();
        let short = match &exit {
            DomainExit::Shutdown(r) => {
                format!("shutdown {}", blanket_hypervisor::domain::shutdown_name(*r))
            }
            DomainExit::Crashed(c) => {
                failed += 1;
                format!("crashed ({})", crash_short(c))
            }
            DomainExit::Destroyed => "destroyed".into(),
        };
        println!(
            "{:<12} {:<20} {:<28} {:>9.1} {:>9.1} {:>8} {:>10} {:>8}",
            d.name(),
            truncate(cmdline, 20),
            short,
            s.run_ns as f64 / 1e6,
            s.cpu_ns as f64 / 1e6,
            s.exits,
            s.hypercalls,
            d.host_memory_bytes() / 1024
        );
        if let DomainExit::Crashed(c) = &exit {
            println!("             {c}");
        }
    }
    println!(
        "\nblanket: {} guest(s) in {:.2} s, {failed} crashed",
        doms.len(),
        t0.elapsed().as_secs_f64()
    );
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
