//! Criterion benchmarks of the virtio-blk driver against `qemu-storage-daemon`'s vhost-user-blk
//! export, side by side with libblkio (the `blkio` crate's `virtio-blk-vhost-user` driver) on
//! the same export of the same daemon, in the same run.
//!
//! Cases, each with a `null-co` device (driver and protocol cost only) and with a raw file in
//! the page cache:
//! - 4 KiB random reads at queue depths 1, 32 and 128 (IOPS);
//! - 1 MiB sequential reads at depth 4 (throughput).
//!
//! Drivers, one after the other on the same socket (the export serves one front-end at a time,
//! so each connects, runs its case and disconnects before the next):
//! - `blanket-split`: this crate, split rings, `EVENT_IDX` and indirect descriptors (the
//!   defaults: every request here has three descriptors, which go straight into the table
//!   while a quarter of it stays free, as they all do at these depths; longer chains would be
//!   indirect). Packed rings are not measured: qemu-storage-daemon does not offer
//!   `VIRTIO_F_RING_PACKED` (checked at start and printed);
//! - `blanket-split-direct`: this crate, split rings without indirect descriptors, which is what
//!   libblkio does (it negotiates `EVENT_IDX` but not `INDIRECT_DESC`);
//! - `libblkio`: `blkio` 0.5, split rings, `EVENT_IDX`.
//!
//! Completion style: the same for every driver, chosen by `BLANKET_BENCH_MODE`:
//! - `wait` (the default): both wait for the device's call eventfd when nothing has completed
//!   (ours: `BlkDriver::wait`, which re-enables notifications with `used_event`, rechecks, and
//!   polls the eventfd and the socket; libblkio: a non-poll queue, `do_io` with
//!   `min_completions = 1`, which enables the completion fd, rechecks and `ppoll`s it);
//! - `poll`: both busy-poll the used ring and never sleep (ours: `BlkDriver::poll` in a loop
//!   with notifications disabled; libblkio: a poll queue, `num-poll-queues = 1`).
//!
//! Queue size 512 for every driver (so that 128 requests of three direct descriptors fit), one
//! queue, buffers in memory shared with the daemon (no copies).
//! Each driver keeps `depth` requests in flight, resubmitting as each completes and notifying
//! the device only when its event index asks for it.
//!
//! At the end the bench prints, for every case and driver, two medians with the ratio
//! ours/libblkio (in IOPS or bytes per second: above 1.0, ours is faster):
//! - `criterion`: the median of criterion's samples, each driver measured in turn;
//! - `paired`: seven rounds, each running every driver for 200 ms one after the other (in the
//!   reverse order every other round), the ratio taken within each round and its median
//!   reported. On a shared machine whose load
//!   drifts over seconds this is the steadier ratio. With it, `cpu/IO`: the CPU time (user
//!   and system) the driver's thread spends per I/O, the driver's own cost whatever the load,
//!   and `kicks/IO`: its `write` system calls per I/O (`syscw` of `/proc/thread-self/io`),
//!   which in the I/O loop are the kick eventfd writes, each a wake-up of the daemon, and
//!   `sleeps/IO`: the thread's voluntary context switches per I/O (`/proc/thread-self/status`),
//!   each a wait for the call eventfd that found nothing ready, then a wake-up by the daemon;
//!   `runq/IO`: the time the thread spent runnable but waiting for a CPU (the second field of
//!   `/proc/thread-self/schedstat`), mostly between a wake-up and running; and the same for
//!   the daemon, all its threads summed (`/proc/<pid>/task/*`): `qsd cpu/IO`, `qsd sl/IO` (its
//!   sleeps: how often it ran out of work and waited for a kick or its own I/O) and
//!   `qsd runq/IO`. At 1 MiB on `null-co` the daemon is the bottleneck, and these say whether a
//!   driver leaves it idle or makes it wait for a CPU.
//!
//! `BLANKET_BENCH_SECS` sets criterion's measurement time per case (default 3 s);
//! `BLANKET_BENCH_RECONNECT=1` turns ours' `BlkOptions::reconnect` on;
//! `BLANKET_BENCH_SPIN_NS` sets ours' `BlkOptions::spin` (how long `wait` polls before it
//! sleeps; 0 sleeps at once, the default is `BlkOptions::default()`'s);
//! `BLANKET_BENCH_ONLY=null/randread-4k/1` runs only the cases whose name contains it (a whole
//! name, `qsd-null/randread-4k/1`, only that case);
//! `BLANKET_BENCH_DRIVERS=libblkio` (a comma-separated list) runs only those drivers, without
//! the paired rounds and the table, and prints how many I/Os each ran: for counting a driver's
//! system calls per I/O alone, with
//! `perf trace -s -- target/release/deps/qsd-* --bench` (its main thread is the driver's).
//!
//! Run with `cargo bench -p blanket-virtio --bench qsd`. Skipped when the daemon is not
//! installed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_virtio::blk::{BlkCompletion, BlkDriver, BlkOptions, DataBuf, Request, Status};
use blanket_virtio::memory::DmaMemory;
use blanket_virtio::transport::Transport;
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const DISK_BYTES: u64 = 256 << 20;
const SMALL: usize = 4096;
const LARGE: usize = 1 << 20;
const MAX_DEPTH: usize = 128;
const SEQ_DEPTH: usize = 4;
const SAMPLES: usize = 10;
/// Ring size for every driver: 128 requests of 3 direct descriptors fit.
const QUEUE_SIZE: u16 = 512;
const VIRTIO_F_RING_PACKED: u32 = 34;

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(backend: &str) -> Option<Daemon> {
    let dir = tempfile::tempdir().ok()?;
    let sock = dir.path().join("blk.sock");
    let blockdev = if backend == "null" {
        format!("driver=null-co,node-name=disk0,size={DISK_BYTES},read-zeroes=on")
    } else {
        let img = dir.path().join("disk.img");
        // Fill it, so reads hit data rather than holes, and write it back now: otherwise the
        // kernel writes its 256 MiB back while the first driver is measured.
        std::fs::write(&img, vec![0x5a; DISK_BYTES as usize]).ok()?;
        std::fs::File::open(&img).ok()?.sync_all().ok()?;
        format!(
            "driver=file,node-name=disk0,filename={},cache.direct=off",
            img.display()
        )
    };
    let child = Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &blockdev,
            "--export",
            &format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,writable=on,addr.type=unix,addr.path={}",
                sock.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(Daemon {
        child,
        _dir: dir,
        sock,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Wait,
    Poll,
}

/// One workload: `len`-byte reads, `depth` in flight, sectors from a generator.
#[derive(Clone, Copy)]
struct Workload {
    len: usize,
    depth: usize,
    random: bool,
    /// Completions each wait asks for (libblkio's `min_completions`; ours `wait_for`), at
    /// most the requests in flight. 1 but for the batch cases, which busy-poll mode skips.
    batch: usize,
}

/// The sector generator both drivers share: xorshift over 4 KiB blocks, or sequential 1 MiB.
struct Sectors {
    x: u64,
    pos: u64,
    random: bool,
}

impl Sectors {
    fn new(random: bool) -> Self {
        Sectors {
            x: 0x2545_f491_4f6c_dd1d,
            pos: 0,
            random,
        }
    }

    fn next(&mut self) -> u64 {
        if self.random {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            (self.x % (DISK_BYTES / SMALL as u64)) * (SMALL as u64 / 512)
        } else {
            let s = self.pos;
            self.pos = (self.pos + LARGE as u64 / 512) % (DISK_BYTES / 512);
            s
        }
    }
}

/// A driver under test: runs `n` reads of the workload and returns the time they took.
trait Bench {
    fn run(&mut self, w: Workload, n: u64, sectors: &mut Sectors) -> Duration;
}

struct Ours {
    disk: BlkDriver<VhostUserTransport>,
    small: Vec<DataBuf>,
    large: Vec<DataBuf>,
    mode: Mode,
    out: Vec<BlkCompletion>,
}

impl Ours {
    fn connect(sock: &Path, mode: Mode, indirect_desc: bool) -> Ours {
        let mem = Arc::new(DmaMemory::new(32 << 20).expect("memory"));
        let t = VhostUserTransport::connect(sock, mem.clone()).expect("connect");
        let options = BlkOptions {
            indirect_desc,
            queue_size: QUEUE_SIZE,
            // No timeout, as libblkio's `do_io` is called here: its ppoll arms no timer, and
            // neither does our epoll_wait then (the socket still ends it if the daemon dies).
            timeout: Duration::MAX,
            // `BLANKET_BENCH_SPIN_NS` overrides the poll before sleeping (0: sleep at once).
            spin: std::env::var("BLANKET_BENCH_SPIN_NS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(BlkOptions::default().spin, Duration::from_nanos),
            // `BLANKET_BENCH_RECONNECT=1` measures with transparent reconnection on (a copy
            // of each request kept for resubmission).
            reconnect: std::env::var_os("BLANKET_BENCH_RECONNECT").map(|_| Duration::from_secs(10)),
            ..BlkOptions::default()
        };
        let mut disk = BlkDriver::new(t, options).expect("driver");
        if mode == Mode::Poll {
            disk.disable_notifications(0)
                .expect("disable notifications");
        }
        let bufs = |n, len: usize| -> Vec<DataBuf> {
            (0..n)
                .map(|_| DataBuf {
                    addr: mem.alloc(len as u64).expect("alloc"),
                    len: len as u32,
                })
                .collect()
        };
        Ours {
            small: bufs(MAX_DEPTH, SMALL),
            large: bufs(SEQ_DEPTH, LARGE),
            disk,
            mode,
            out: Vec::with_capacity(MAX_DEPTH),
        }
    }
}

impl Bench for Ours {
    fn run(&mut self, w: Workload, n: u64, sectors: &mut Sectors) -> Duration {
        let bufs = if w.len == SMALL {
            &self.small
        } else {
            &self.large
        };
        let disk = &mut self.disk;
        let submit = |disk: &mut BlkDriver<VhostUserTransport>, slot: usize, sector: u64| {
            let req = Request::Read {
                sector,
                bufs: std::slice::from_ref(&bufs[slot]),
            };
            disk.submit(0, &req, slot as u64).expect("submit");
        };
        let started = Instant::now();
        let mut submitted = 0u64;
        let mut done = 0u64;
        while submitted < n && (submitted as usize) < w.depth {
            submit(disk, submitted as usize, sectors.next());
            submitted += 1;
        }
        disk.kick(0).expect("kick");
        while done < n {
            self.out.clear();
            match self.mode {
                Mode::Wait if w.batch > 1 => {
                    let want = w.batch.min((submitted - done) as usize);
                    disk.wait_for(0, &mut self.out, want).expect("wait_for")
                }
                Mode::Wait => disk.wait(0, &mut self.out).expect("wait"),
                Mode::Poll => disk.poll(0, &mut self.out).expect("poll"),
            };
            for c in &self.out {
                assert_eq!(c.status, Status::Ok);
                done += 1;
                if submitted < n {
                    submit(disk, c.tag as usize, sectors.next());
                    submitted += 1;
                }
            }
            if !self.out.is_empty() {
                disk.kick(0).expect("kick");
            } else {
                std::hint::spin_loop();
            }
        }
        started.elapsed()
    }
}

struct Libblkio {
    // Field order: the queue goes before the instance that owns the memory region.
    q: blkio::Blkioq,
    _blkio: blkio::Blkio,
    region: blkio::MemoryRegion,
    completions: Vec<MaybeUninit<blkio::Completion>>,
}

impl Libblkio {
    fn connect(sock: &Path, mode: Mode) -> Libblkio {
        let mut b = blkio::Blkio::new("virtio-blk-vhost-user").expect("blkio_new");
        b.set_str("path", &sock.display().to_string())
            .expect("path");
        b.connect().expect("blkio_connect");
        let (queues, poll_queues) = match mode {
            Mode::Wait => (1, 0),
            Mode::Poll => (0, 1),
        };
        b.set_i32("num-queues", queues).expect("num-queues");
        b.set_i32("num-poll-queues", poll_queues)
            .expect("num-poll-queues");
        b.set_i32("queue-size", i32::from(QUEUE_SIZE))
            .expect("queue-size");
        let started = b.start().expect("blkio_start");
        let q = match mode {
            Mode::Wait => started.queues.into_iter().next(),
            Mode::Poll => started.poll_queues.into_iter().next(),
        }
        .expect("a queue");
        let len = MAX_DEPTH * SMALL + SEQ_DEPTH * LARGE;
        let region = b.alloc_mem_region(len).expect("alloc_mem_region");
        b.map_mem_region(&region).expect("map_mem_region");
        Libblkio {
            q,
            _blkio: b,
            region,
            completions: (0..MAX_DEPTH).map(|_| MaybeUninit::uninit()).collect(),
        }
    }

    fn buf(&self, w: Workload, slot: usize) -> *mut u8 {
        let off = if w.len == SMALL {
            slot * SMALL
        } else {
            MAX_DEPTH * SMALL + slot * LARGE
        };
        (self.region.addr + off) as *mut u8
    }
}

impl Bench for Libblkio {
    fn run(&mut self, w: Workload, n: u64, sectors: &mut Sectors) -> Duration {
        let started = Instant::now();
        let mut submitted = 0u64;
        let mut done = 0u64;
        while submitted < n && (submitted as usize) < w.depth {
            let slot = submitted as usize;
            let buf = self.buf(w, slot);
            self.q.read(
                sectors.next() * 512,
                buf,
                w.len,
                slot,
                blkio::ReqFlags::empty(),
            );
            submitted += 1;
        }
        while done < n {
            let want = w.batch.min((submitted - done) as usize);
            let got = self
                .q
                .do_io(&mut self.completions, want, None, None)
                .expect("do_io");
            for i in 0..got {
                // SAFETY: do_io initialised the first `got` entries.
                let c = unsafe { self.completions[i].assume_init_read() };
                assert_eq!(c.ret, 0, "libblkio read failed");
                done += 1;
                if submitted < n {
                    let buf = self.buf(w, c.user_data);
                    self.q.read(
                        sectors.next() * 512,
                        buf,
                        w.len,
                        c.user_data,
                        blkio::ReqFlags::empty(),
                    );
                    submitted += 1;
                }
            }
        }
        started.elapsed()
    }
}

/// Nanoseconds per I/O of each criterion sample, per (case, driver).
type Samples = BTreeMap<(String, &'static str), Vec<f64>>;

fn measure(
    c: &mut Criterion,
    samples: &RefCell<Samples>,
    group: &str,
    w: Workload,
    driver: &'static str,
    mut bench: Box<dyn Bench>,
) {
    let case = format!("{group}/{}", w.depth);
    let secs = std::env::var("BLANKET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut g = c.benchmark_group(group);
    if w.len == SMALL {
        g.throughput(Throughput::Elements(1));
    } else {
        g.throughput(Throughput::Bytes(w.len as u64));
    }
    g.sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(secs));
    let mut sectors = Sectors::new(w.random);
    let mut ios = 0u64;
    g.bench_function(BenchmarkId::new(driver, w.depth), |b| {
        b.iter_custom(|n| {
            ios += n;
            let t = bench.run(w, n, &mut sectors);
            samples
                .borrow_mut()
                .entry((case.clone(), driver))
                .or_default()
                .push(t.as_nanos() as f64 / n.max(1) as f64);
            t
        })
    });
    g.finish();
    println!("{case} {driver}: {ios} I/Os");
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The drivers, in the order they run.
const DRIVERS: [&str; 3] = ["blanket-split", "blanket-split-direct", "libblkio"];

fn connect(driver: &str, sock: &Path, mode: Mode) -> Box<dyn Bench> {
    match driver {
        "blanket-split" => Box::new(Ours::connect(sock, mode, true)),
        "blanket-split-direct" => Box::new(Ours::connect(sock, mode, false)),
        _ => Box::new(Libblkio::connect(sock, mode)),
    }
}

/// CPU time this thread has used (user and system).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The `write` system calls this thread has made (`syscw` of `/proc/thread-self/io`): in the
/// I/O loop, the kicks (eventfd writes) both drivers make.
fn thread_writes() -> u64 {
    writes_in("/proc/thread-self/io")
}

/// The `write` system calls of process `pid`, all its threads (`syscw` of `/proc/<pid>/io`).
fn process_writes(pid: u32) -> u64 {
    writes_in(&format!("/proc/{pid}/io"))
}

/// `syscw` of an `io` file of `/proc`.
fn writes_in(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("syscw: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Scheduler counters of a thread or a process: CPU time, time spent runnable waiting for a
/// CPU (`/proc/.../schedstat`, nanoseconds) and voluntary context switches (sleeps).
#[derive(Clone, Copy, Default)]
struct Sched {
    cpu_ns: u64,
    runq_ns: u64,
    sleeps: u64,
}

impl Sched {
    /// The counters of one task directory (`/proc/thread-self`, `/proc/<pid>/task/<tid>`).
    fn of_task(dir: &Path) -> Sched {
        let mut fields = std::fs::read_to_string(dir.join("schedstat"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
            .into_iter();
        let cpu_ns = fields.next().unwrap_or(0);
        let runq_ns = fields.next().unwrap_or(0);
        let sleeps = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0);
        Sched {
            cpu_ns,
            runq_ns,
            sleeps,
        }
    }

    /// The driver's thread (the caller).
    fn this_thread() -> Sched {
        Sched::of_task(Path::new("/proc/thread-self"))
    }

    /// All the threads of process `pid` (the daemon: its main loop and its worker threads),
    /// summed. Threads that ended in between are not counted.
    fn of_process(pid: u32) -> Sched {
        let mut sum = Sched::default();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let s = Sched::of_task(&t.path());
                sum.cpu_ns += s.cpu_ns;
                sum.runq_ns += s.runq_ns;
                sum.sleeps += s.sleeps;
            }
        }
        sum
    }

    fn since(self, before: Sched) -> Sched {
        Sched {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            runq_ns: self.runq_ns.saturating_sub(before.runq_ns),
            sleeps: self.sleeps.saturating_sub(before.sleeps),
        }
    }
}

/// What one timed stretch of a driver gives, per I/O.
#[derive(Clone, Copy, Default)]
struct Timed {
    /// Wall-clock ns.
    wall: f64,
    /// Driver-thread CPU ns (user and system).
    cpu: f64,
    /// Kicks (eventfd writes).
    kicks: f64,
    /// Sleeps of the driver's thread.
    sleeps: f64,
    /// Driver-thread ns runnable but waiting for a CPU (after a wake-up, mostly).
    runq: f64,
    /// The daemon's CPU ns, all threads.
    qsd_cpu: f64,
    /// The daemon's sleeps, all threads.
    qsd_sleeps: f64,
    /// The daemon's `write` system calls (its call eventfd writes, which wake the driver).
    qsd_writes: f64,
    /// The daemon's ns runnable but waiting for a CPU, all threads.
    qsd_runq: f64,
}

/// Wall-clock and driver-thread CPU nanoseconds per I/O, kicks and sleeps per I/O, and the
/// daemon's (process `qsd`) CPU, sleeps and run-queue waits per I/O, over about `budget` of
/// back-to-back batches large enough that filling and draining the queue does not matter.
fn timed(bench: &mut dyn Bench, w: Workload, budget: Duration, qsd: u32) -> Timed {
    let batch = if w.len == SMALL {
        (w.depth as u64 * 32).max(2000)
    } else {
        64
    };
    let mut sectors = Sectors::new(w.random);
    // Untimed first, while `warm` lasts: the daemon's first touches of a new connection's
    // buffers (page faults) and its tear-down of the connection before are not the steady
    // state measured.
    let warm = warm_up();
    let started = Instant::now();
    while started.elapsed() < warm {
        bench.run(w, batch, &mut sectors);
    }
    let (mut t, mut n) = (Duration::ZERO, 0u64);
    let cpu0 = thread_cpu();
    let writes0 = thread_writes();
    let me0 = Sched::this_thread();
    let qsd0 = Sched::of_process(qsd);
    let qsd_writes0 = process_writes(qsd);
    while t < budget {
        t += bench.run(w, batch, &mut sectors);
        n += batch;
    }
    let cpu = thread_cpu() - cpu0;
    let writes = thread_writes() - writes0;
    let me = Sched::this_thread().since(me0);
    let daemon = Sched::of_process(qsd).since(qsd0);
    let qsd_writes = process_writes(qsd).saturating_sub(qsd_writes0);
    let per = |v: f64| v / n as f64;
    Timed {
        wall: per(t.as_nanos() as f64),
        cpu: per(cpu.as_nanos() as f64),
        kicks: per(writes as f64),
        sleeps: per(me.sleeps as f64),
        runq: per(me.runq_ns as f64),
        qsd_cpu: per(daemon.cpu_ns as f64),
        qsd_sleeps: per(daemon.sleeps as f64),
        qsd_writes: per(qsd_writes as f64),
        qsd_runq: per(daemon.runq_ns as f64),
    }
}

/// How long each driver runs untimed after connecting, in the paired rounds:
/// `BLANKET_BENCH_WARM_MS` (default 20 ms; 0 for none).
fn warm_up() -> Duration {
    let ms = std::env::var("BLANKET_BENCH_WARM_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    Duration::from_millis(ms)
}

/// What the paired rounds give for one driver, each a median over the rounds.
#[derive(Clone, Copy)]
struct Paired {
    /// The medians of each counter (wall-clock, CPU, kicks, ... per I/O).
    t: Timed,
    /// The ratio libblkio/this driver of ns per I/O, taken within each round.
    ratio: f64,
}

/// Paired rounds: each round runs every driver for a short while, one after the other, and
/// each driver's ratio is taken within the round, so that load from elsewhere on the machine
/// (which drifts over seconds) hits both sides of a ratio alike.
fn paired(sock: &Path, qsd: u32, mode: Mode, w: Workload) -> BTreeMap<&'static str, Paired> {
    const ROUNDS: usize = 7;
    let budget = Duration::from_millis(200);
    let mut runs: BTreeMap<&'static str, Vec<Timed>> = BTreeMap::new();
    let mut ratios: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for r in 0..ROUNDS {
        // Every other round runs the drivers in the reverse order, so that none always runs
        // first or right after the same other driver's disconnect.
        let mut round = vec![Timed::default(); DRIVERS.len()];
        let order: Vec<usize> = if r % 2 == 0 {
            (0..DRIVERS.len()).collect()
        } else {
            (0..DRIVERS.len()).rev().collect()
        };
        for i in order {
            round[i] = timed(&mut *connect(DRIVERS[i], sock, mode), w, budget, qsd);
        }
        for (d, t) in DRIVERS.iter().zip(&round) {
            runs.entry(d).or_default().push(*t);
            ratios.entry(d).or_default().push(round[2].wall / t.wall);
        }
    }
    DRIVERS
        .iter()
        .map(|d| {
            let m = |f: fn(&Timed) -> f64| median(&runs[d].iter().map(f).collect::<Vec<_>>());
            (
                *d,
                Paired {
                    t: Timed {
                        wall: m(|t| t.wall),
                        cpu: m(|t| t.cpu),
                        kicks: m(|t| t.kicks),
                        sleeps: m(|t| t.sleeps),
                        runq: m(|t| t.runq),
                        qsd_cpu: m(|t| t.qsd_cpu),
                        qsd_sleeps: m(|t| t.qsd_sleeps),
                        qsd_writes: m(|t| t.qsd_writes),
                        qsd_runq: m(|t| t.qsd_runq),
                    },
                    ratio: median(&ratios[d]),
                },
            )
        })
        .collect()
}

/// Per case: the criterion medians and the paired medians, per driver.
type Report = Vec<(String, BTreeMap<&'static str, Paired>)>;

fn report(samples: &Samples, paired: &Report, mode: Mode) {
    let fmt = |case: &str, ns: f64| {
        if case.contains("seqread") {
            format!("{:.2} GiB/s", LARGE as f64 / ns * 1e9 / (1u64 << 30) as f64)
        } else {
            format!("{:.1} kIOPS", 1e6 / ns)
        }
    };
    println!();
    println!(
        "qemu-storage-daemon, {} mode; ratio = ours/libblkio in IOPS or bytes/s (>= 1: ours is \
         at least as fast)",
        if mode == Mode::Wait {
            "eventfd-wait"
        } else {
            "busy-poll"
        }
    );
    println!(
        "{:<26} {:<21} {:>14} {:>7} {:>14} {:>7} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "case",
        "driver",
        "criterion",
        "ratio",
        "paired",
        "ratio",
        "cpu/IO",
        "kicks/IO",
        "sleeps/IO",
        "runq/IO",
        "qsd cpu/IO",
        "qsd sl/IO",
        "qsd wr/IO",
        "qsd runq/IO"
    );
    for (case, p) in paired {
        for d in DRIVERS {
            // Criterion's measurement samples are the last SAMPLES calls; earlier ones warm up.
            let crit = |d| {
                let v = &samples[&(case.clone(), d)];
                median(&v[v.len().saturating_sub(SAMPLES)..])
            };
            let Paired { t, ratio } = p[d];
            println!(
                "{:<26} {:<21} {:>14} {:>7.2} {:>14} {:>7.2} {:>6.2} us {:>8.3} {:>9.3} {:>6.2} us \
                 {:>7.2} us {:>10.3} {:>10.3} {:>8.2} us",
                case,
                d,
                fmt(case, crit(d)),
                crit("libblkio") / crit(d),
                fmt(case, t.wall),
                ratio,
                t.cpu / 1000.0,
                t.kicks,
                t.sleeps,
                t.runq / 1000.0,
                t.qsd_cpu / 1000.0,
                t.qsd_sleeps,
                t.qsd_writes,
                t.qsd_runq / 1000.0
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let mode = match std::env::var("BLANKET_BENCH_MODE").as_deref() {
        Ok("poll") => Mode::Poll,
        _ => Mode::Wait,
    };
    let only = std::env::var("BLANKET_BENCH_ONLY").unwrap_or_default();
    let drivers: Vec<&'static str> = match std::env::var("BLANKET_BENCH_DRIVERS") {
        Ok(list) => DRIVERS
            .into_iter()
            .filter(|d| list.split(',').any(|x| x.trim() == *d))
            .collect(),
        Err(_) => DRIVERS.to_vec(),
    };
    let all = drivers.len() == DRIVERS.len();
    let samples = RefCell::new(Samples::new());
    let mut pairs = Report::new();
    for backend in ["null", "file"] {
        let Some(daemon) = start(backend) else {
            eprintln!("skipping: qemu-storage-daemon not available");
            return;
        };
        {
            let mut probe = Ours::connect(&daemon.sock, mode, true);
            let offered = probe
                .disk
                .transport_mut()
                .device_features()
                .expect("features");
            println!(
                "qemu-storage-daemon ({backend}) offers features {offered:#x}: packed rings {}",
                if offered & (1 << VIRTIO_F_RING_PACKED) != 0 {
                    "offered"
                } else {
                    "not offered, so only split rings are measured"
                }
            );
        }
        let cases = [
            ("randread-4k", SMALL, 1, true, 1),
            ("randread-4k", SMALL, 32, true, 1),
            ("randread-4k", SMALL, 128, true, 1),
            ("seqread-1m", LARGE, SEQ_DEPTH, false, 1),
            ("seqread-1m-batch", LARGE, SEQ_DEPTH, false, SEQ_DEPTH / 2),
        ];
        for (name, len, depth, random, batch) in cases {
            let w = Workload {
                len,
                depth,
                random,
                batch,
            };
            let group = format!("qsd-{backend}/{name}");
            let case = format!("{group}/{depth}");
            // A whole case name (`qsd-null/randread-4k/1`) picks that case alone.
            let picked = if only.starts_with("qsd-") {
                case == only
            } else {
                case.contains(&only)
            };
            // Batches are about notifications, which busy-polling does without.
            if !picked || (batch > 1 && mode == Mode::Poll) {
                continue;
            }
            for &d in &drivers {
                let b = connect(d, &daemon.sock, mode);
                measure(c, &samples, &group, w, d, b);
            }
            if all {
                pairs.push((
                    format!("{group}/{depth}"),
                    paired(&daemon.sock, daemon.child.id(), mode, w),
                ));
            }
        }
        drop(daemon);
    }
    if all {
        report(&samples.borrow(), &pairs, mode);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
