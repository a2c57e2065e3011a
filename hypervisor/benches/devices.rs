//! Criterion benchmarks of guests' devices on real KVM, from the guest's blanket-xen front-ends through
//! pv-backend's back-ends: 32 KiB reads of a vbd (blkback over an image file, and over a vhost-user-blk
//! export of the same file by qemu-storage-daemon when it is installed) at queue depth 1 and with every ring
//! slot busy, and a ping-pong between two guests through netback and the in-process switch, all
//! timed by the guest's own clock.
//!
//! Besides the times, it prints the exits, hypercalls and back-end event notifications per I/O: the
//! difference between a long and a short run of the same workload, divided by the difference in I/Os (as
//! the guest counted them), so the boot and the handshake cancel out.
//!
//! `cargo bench -p blanket-hypervisor --bench devices` (`BLANKET_BENCH_SPARSE=1`: a sparse image, whose
//! reads the file system answers without the disk)

use std::path::PathBuf;
use std::time::Duration;

use blanket_hypervisor::devices::console::ConsoleOutput;
use blanket_hypervisor::toolstack::{
    GuestConfig, Toolstack, VbdBackend, VbdConfig, VifConfig, VifLink, xvd_devid,
};
use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, StatsSnapshot, guest};
use criterion::{Criterion, criterion_group, criterion_main};

/// The image: 4 MiB, 128 reads of 32 KiB a round.
const IMAGE: u64 = 4 << 20;
const READ_BYTES: u64 = 32 << 10;
const READS_PER_ROUND: u64 = IMAGE / READ_BYTES;

fn config(name: &str, cmdline: &str) -> GuestConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 16 << 20;
    let mut g = GuestConfig::new(c);
    g.console = ConsoleOutput::Lines(None);
    g
}

struct Image(PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Written out, so that blkback's `O_DIRECT` reads go to the disk; with `BLANKET_BENCH_SPARSE=1` a
/// sparse file, whose holes the file system answers at once: the back end's own cost, without the disk's.
fn image() -> Image {
    let p = std::env::temp_dir().join(format!("blanket-devbench-{}.img", std::process::id()));
    if std::env::var("BLANKET_BENCH_SPARSE").is_ok_and(|v| v == "1") {
        std::fs::File::create(&p).unwrap().set_len(IMAGE).unwrap();
    } else {
        std::fs::write(&p, vec![0x5A; IMAGE as usize]).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
    }
    Image(p)
}

/// qemu-storage-daemon exporting `img` as vhost-user-blk (read-only, 2 queues); killed on drop. `None`, with
/// a message, when it is not installed.
struct Daemon {
    child: std::process::Child,
    sock: PathBuf,
}

impl Daemon {
    fn start(img: &Image) -> Option<Self> {
        let sock =
            std::env::temp_dir().join(format!("blanket-devbench-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let child = std::process::Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!(
                    "driver=file,node-name=file0,filename={},cache.direct=off",
                    img.0.display()
                ),
                "--export",
                &format!(
                    "type=vhost-user-blk,id=exp0,node-name=file0,writable=off,num-queues=2,\
                     addr.type=unix,addr.path={}",
                    sock.display()
                ),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("qemu-storage-daemon is not installed: no vhost-user-blk figures");
            return None;
        };
        let mut d = Self { child, sock };
        let t0 = std::time::Instant::now();
        while !d.sock.exists() {
            if t0.elapsed() > Duration::from_secs(10) || d.child.try_wait().ok().flatten().is_some()
            {
                eprintln!("qemu-storage-daemon made no socket: no vhost-user-blk figures");
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// The number after `key` in `out`.
fn after(out: &str, key: &str) -> u64 {
    out.split(key)
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{key}' in: {out}"))
}

/// One run of a disk workload.
struct DiskRun {
    /// Guest-timed ns of the reads.
    ns: u64,
    /// Reads the guest made.
    reads: u64,
    /// The queue depth it kept (1 for `disk-bench`).
    depth: u64,
    stats: StatsSnapshot,
    /// Back-end events to the guest.
    events: u64,
}

/// A vbd the disk benchmarks read.
struct Vbd {
    what: &'static str,
    backend: VbdBackend,
    /// [`VbdConfig::inline`].
    inline: bool,
    /// [`VbdConfig::fixed_memory`].
    fixed: bool,
}

/// Runs `workload=rounds` (`disk-bench` or `disk-load`), checking that the guest read the whole image
/// `rounds` times in 32 KiB requests.
fn disk_run(ts: &Toolstack, vbd: &Vbd, workload: &str, rounds: u64) -> DiskRun {
    let mut cfg = config("disk", &format!("{workload}={rounds}"));
    cfg.vbds.push(VbdConfig {
        devid: xvd_devid(0),
        backend: vbd.backend.clone(),
        read_only: true,
        inline: vbd.inline,
        fixed_memory: vbd.fixed,
    });
    let ev0 = ts.backend_notifications();
    let mut g = ts.create(cfg).unwrap();
    g.start().unwrap();
    let exit = g.wait_timeout(Duration::from_secs(120));
    let out = g.all_output();
    assert!(matches!(exit, DomainExit::Shutdown(_)), "{exit}: {out}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("{workload}: ")) && l.contains("IOPS ("))
        .unwrap_or_else(|| panic!("no {workload} result in: {out}"));
    let r = DiskRun {
        ns: after(line, "IOPS ("),
        reads: after(line, &format!("{workload}: ")),
        depth: if workload == "disk-load" {
            after(line, "at depth ")
        } else {
            1
        },
        stats: g.domain().stats(),
        events: ts.backend_notifications() - ev0,
    };
    assert_eq!(after(line, "reads of "), READ_BYTES, "{line}");
    assert_eq!(r.reads, rounds * READS_PER_ROUND, "{line}");
    r
}

/// Per read, between a short and a long run: (exits, hypercalls, back-end events).
fn per_read(short: &DiskRun, long: &DiskRun) -> (f64, f64, f64) {
    let ios = (long.reads - short.reads) as f64;
    (
        (long.stats.exits - short.stats.exits) as f64 / ios,
        (long.stats.hypercalls - short.stats.hypercalls) as f64 / ios,
        (long.events - short.events) as f64 / ios,
    )
}

/// Runs a ping pair of `n` pings: (guest-timed ns for n - 1 round trips, both domains' exits and
/// hypercalls, back-end events).
fn net_run(ts: &Toolstack, n: u64) -> (u64, u64, u64, u64) {
    let vif = || VifConfig {
        devid: 0,
        mac: [0; 6],
        link: VifLink::Switch,
    };
    let mut e = config("echo", &format!("net-echo={n}"));
    e.vifs.push(vif());
    let mut p = config("ping", &format!("net-ping={n}"));
    p.vifs.push(vif());
    let ev0 = ts.backend_notifications();
    let mut e = ts.create(e).unwrap();
    let mut p = ts.create(p).unwrap();
    e.start().unwrap();
    p.start().unwrap();
    let pexit = p.wait_timeout(Duration::from_secs(120));
    let eexit = e.wait_timeout(Duration::from_secs(120));
    let out = p.all_output();
    assert!(
        pexit == DomainExit::Shutdown(xen_abi::sched::ShutdownReason::Poweroff)
            && matches!(eexit, DomainExit::Shutdown(_)),
        "{pexit} {eexit}: {out}"
    );
    let ns = after(&out, "round trip (");
    let (ps, es) = (p.domain().stats(), e.domain().stats());
    (
        ns,
        ps.exits + es.exits,
        ps.hypercalls + es.hypercalls,
        ts.backend_notifications() - ev0,
    )
}

fn disk(c: &mut Criterion) {
    let ts = Toolstack::new(Hypervisor::new().expect("/dev/kvm")).unwrap();
    let img = image();
    let daemon = Daemon::start(&img);
    let mut vbds = vec![
        Vbd {
            what: "a file (queue threads)",
            backend: VbdBackend::Image(img.0.clone()),
            inline: false,
            fixed: false,
        },
        Vbd {
            what: "a file (served inline on the vCPU thread)",
            backend: VbdBackend::Image(img.0.clone()),
            inline: true,
            fixed: false,
        },
        Vbd {
            what: "a file (inline, guest memory registered: fixed buffers)",
            backend: VbdBackend::Image(img.0.clone()),
            inline: true,
            fixed: true,
        },
    ];
    if let Some(d) = &daemon {
        vbds.push(Vbd {
            what: "vhost-user-blk (qemu-storage-daemon, zero copy)",
            backend: VbdBackend::VhostUser(d.sock.clone()),
            inline: false,
            fixed: false,
        });
    }
    for workload in ["disk-bench", "disk-load"] {
        let mut iops = Vec::new();
        for vbd in &vbds {
            // Per I/O: a long run minus a short one.
            let short = disk_run(&ts, vbd, workload, 1);
            let long = disk_run(&ts, vbd, workload, 8);
            let (x, h, e) = per_read(&short, &long);
            let rate = long.reads as f64 * 1e9 / long.ns as f64;
            iops.push(rate);
            eprintln!(
                "vbd on {}: 32 KiB reads, depth {} ({workload}), per I/O: {x:.2} exits, {h:.2} hypercalls, {e:.2} back-end events, {:.2} blocks served inline; {rate:.0} IOPS ({:.1} MiB/s)",
                vbd.what,
                long.depth,
                (long.stats.blocks_served - short.stats.blocks_served) as f64
                    / (long.reads - short.reads) as f64,
                (long.reads * READ_BYTES) as f64 / f64::from(1 << 20) * 1e9 / long.ns as f64,
            );
        }
        eprintln!(
            "{workload}: served inline / by queue threads = {:.3}, inline with fixed buffers / inline = {:.3} (IOPS)",
            iops[1] / iops[0],
            iops[2] / iops[1]
        );
    }
    let mut g = c.benchmark_group("vbd");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    for vbd in &vbds {
        for (workload, depth) in [
            ("disk-bench", "QD 1"),
            ("disk-load", "every ring slot busy"),
        ] {
            g.bench_function(
                format!(
                    "32 KiB read, {depth}, guest blkfront to blkback on {} (guest-timed, per read)",
                    vbd.what
                ),
                |b| {
                    b.iter_custom(|iters| {
                        let rounds = iters.div_ceil(READS_PER_ROUND).max(1);
                        let r = disk_run(&ts, vbd, workload, rounds);
                        Duration::from_nanos(r.ns * iters / r.reads)
                    })
                },
            );
        }
    }
    g.finish();
    drop(daemon);
}

fn net(c: &mut Criterion) {
    let ts = Toolstack::new(Hypervisor::new().expect("/dev/kvm")).unwrap();
    let (_, x1, h1, e1) = net_run(&ts, 20);
    let (_, x2, h2, e2) = net_run(&ts, 220);
    let pings = 200.0;
    eprintln!(
        "vif ping-pong between two guests through the switch, per round trip (both guests): {:.2} exits, {:.2} hypercalls, {:.2} back-end events",
        (x2 - x1) as f64 / pings,
        (h2 - h1) as f64 / pings,
        (e2 - e1) as f64 / pings,
    );
    let mut g = c.benchmark_group("vif");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function(
        "ping-pong round trip between two guests through the switch (guest-timed)",
        |b| {
            b.iter_custom(|iters| {
                let n = iters.max(2) + 1;
                let (ns, _, _, _) = net_run(&ts, n);
                Duration::from_nanos(ns * iters / (n - 1))
            })
        },
    );
    g.finish();
}

criterion_group!(benches, disk, net);
criterion_main!(benches);
