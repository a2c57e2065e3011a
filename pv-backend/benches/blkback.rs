//! blkback against the same I/O issued directly, in the same run: 4 KiB random reads and writes at queue
//! depths 1 and 32, and 1 MiB sequential reads and writes (queue depth 4), on a raw image file opened with
//! `O_DIRECT`.
//!
//! - *blkback*: the Rust front end (`test-utils`) puts requests on the shared ring in a guest's memory,
//!   kicks the event channel when ring.h says so, and sleeps on its event when it has to wait; blkback
//!   copies and validates each request, maps the grants (persistent), and submits to the file device.
//! - *direct*: a host thread submits the same pattern (same offsets, sizes and queue depth) from host
//!   buffers to the same `FileDevice` engine on the `O_DIRECT` descriptor, so the ratio is what the ring,
//!   the grants and blkback cost.
//!
//! By default blkback serves with its queue threads. The Blanket layer's configuration, in which the
//! front end's thread serves the queue on its kick and its wait (as a vCPU's exits do) and the guest's
//! memory is registered with io_uring, is `BLKBACK_INLINE=1 BLKBACK_FIXED=1 BLKBACK_ENGINES=uring`.
//!
//! Both engines are measured, io_uring (`uring`) and the thread pool of `preadv`/`pwritev` (`pool`);
//! `BLKBACK_ENGINES=uring` (or `pool`) picks one.
//!
//! After each pair it prints the ratio (blkback / direct; the goal is >= 0.97) of the criterion runs, and
//! the median, quartiles and extremes of the ratios of `BLKBACK_ROUNDS` (default 30) interleaved rounds:
//! in each, both sides run the same number of I/Os (about 50 ms' worth), one after the other, the side
//! that goes first alternating; a load that drifts during the run (the machine is shared) weighs on both
//! sides of a round alike. Then the events per request in both directions.
//!
//! `BLKBACK_BENCH_DIR` picks the directory of the image (default: the temp dir); `BLKBACK_POLL_US` sets
//! how long an idle blkback queue polls before it sleeps (default 0), `BLKBACK_INFLIGHT_POLL_US` how
//! long one with requests at the device does (`BlkConfig::in_flight_poll_time`); `BLKBACK_PATTERNS`
//! runs only the patterns whose names contain one of its comma-separated words (`randread-qd1,1m`);
//! `BLKBACK_CRITERION=0` skips the criterion runs and keeps only the interleaved rounds.
//! `BLKBACK_FRONT_SPIN_US` makes the front end poll its ring that long for a response before it sleeps
//! on its event (default 0: it sleeps at once, as Linux's blkfront does).
//! The direct side waits for its completions as blkback's queue does (`BlockQueue::sleep`: in the
//! ring, for io_uring); `BLKBACK_DIRECT_WAIT=doorbell` makes it arm the queue and sleep on the
//! doorbell's eventfd instead (`poll` and `read`), as both sides did before.
//! `BLKBACK_FIXED=1` gives blkback the guest's memory to register with io_uring (fixed buffers,
//! `BlkBack::with_fixed_memory`).
//! `BLKBACK_DIRECT_ANY_THREAD=1` gives the direct side's queue the ring an inline blkback queue has
//! (`BlockQueue::any_thread_submits`: io_uring without `COOP_TASKRUN`), to see what that ring costs.

use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::backend::{Doorbell, GrantAccess, LocalEventChannels};
use pv_backend::blk::front::{BackendThread, BlkFront, FrontOptions, TestGuest, add_vbd};
use pv_backend::blk::{
    BlkBack, BlkConfig, BlockDevice, BlockQueue, FileDevice, FileOptions, InlineQueue, IoBuf,
    IoCompletion, IoOp, IoRequest,
};
use pv_backend::xenstore::XenStore;
use xen_abi::blkif::{BLKIF_OP_READ, BLKIF_OP_WRITE};

const DISK: u64 = 256 << 20;

#[derive(Clone, Copy, Debug)]
struct Pattern {
    name: &'static str,
    write: bool,
    size: usize,
    qd: usize,
    random: bool,
}

impl Pattern {
    fn blocks(&self) -> u64 {
        DISK / self.size as u64
    }
}

/// The offsets of the pattern, the same sequence for both sides.
struct Offsets {
    x: u64,
    next: u64,
    p: Pattern,
}

impl Offsets {
    fn new(p: Pattern) -> Self {
        Self {
            x: 0x2545_F491_4F6C_DD1D,
            next: 0,
            p,
        }
    }
    fn next(&mut self) -> u64 {
        let b = if self.p.random {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            self.x % self.p.blocks()
        } else {
            let b = self.next;
            self.next = (self.next + 1) % self.p.blocks();
            b
        };
        b * self.p.size as u64
    }
}

struct BlkSide {
    front: BlkFront,
    back: BackendThread,
    _guest: Arc<TestGuest>,
    /// How long the front end polls its ring before it sleeps on its event (`BLKBACK_FRONT_SPIN_US`).
    spin: Duration,
    /// `BLKBACK_INLINE=1`: the front end's kick and its wait call the queue's inline entries, as a
    /// vCPU thread's exits on `EVTCHNOP_send` and `SCHEDOP_block` would.
    inline: Option<InlineQueue>,
}

/// `BLKBACK_FIXED=1`: blkback's queues register the guest's memory with io_uring
/// ([`BlkBack::with_fixed_memory`]).
fn fixed_mode() -> bool {
    std::env::var("BLKBACK_FIXED").is_ok_and(|v| v == "1")
}

/// `BLKBACK_INLINE=1`: blkback serves its queue inline ([`BlkConfig::inline`]).
fn inline_mode() -> bool {
    std::env::var("BLKBACK_INLINE").is_ok_and(|v| v == "1")
}

fn image() -> std::path::PathBuf {
    let dir = std::env::var_os("BLKBACK_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("blkback-bench-{}.img", std::process::id()));
    // Written out (not sparse), so that reads go to the disk.
    let chunk = vec![0x5Au8; 4 << 20];
    let mut f = std::fs::File::create(&path).expect("image");
    use std::io::Write;
    for _ in 0..DISK / chunk.len() as u64 {
        f.write_all(&chunk).expect("image");
    }
    f.sync_all().expect("sync");
    path
}

fn blk_side(dev: Arc<dyn BlockDevice>) -> BlkSide {
    let store = Arc::new(Mutex::new(XenStore::default()));
    let evtchns = LocalEventChannels::new();
    let guest = TestGuest::new(1, 0, 4096, 8);
    let paths = add_vbd(&store, 1, 51712);
    let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
    let mut config = BlkConfig::default();
    if let Some(us) = std::env::var("BLKBACK_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.poll_time = Duration::from_micros(us);
    }
    if let Some(us) = std::env::var("BLKBACK_INFLIGHT_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.in_flight_poll_time = Duration::from_micros(us);
    }
    config.inline = inline_mode();
    let mut blk = BlkBack::new(grants, evtchns.clone(), dev, config);
    if fixed_mode() {
        blk = blk.with_fixed_memory(guest.fixed_memory());
    }
    let inline = blk.inline();
    let back = BackendThread::spawn(&store, &paths.backend, blk);
    let opts = FrontOptions {
        buffer_pages: 1024,
        ..FrontOptions::default()
    };
    let front = BlkFront::connect(guest.clone(), &store, evtchns, paths, opts);
    assert_eq!(front.sectors, DISK / 512, "blkback connected");
    // Data in every page of the buffer, as the direct side's: pages never written are the kernel's
    // zero page, which `O_DIRECT` writes pin on the slow path (`follow_page_pte`) every time.
    let bytes = opts.buffer_pages as usize * 4096;
    guest.write(front.buf_frame, 0, &vec![0x3Cu8; bytes]);
    BlkSide {
        front,
        back,
        _guest: guest,
        inline: inline_mode().then(|| inline.queue(0).expect("an inline queue")),
        spin: Duration::from_micros(
            std::env::var("BLKBACK_FRONT_SPIN_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
    }
}

/// Runs `n` I/Os of `p` through blkback, `p.qd` in flight; returns the time taken.
fn run_blk(s: &mut BlkSide, p: Pattern, offs: &mut Offsets, n: u64) -> Duration {
    let pages = p.size / 4096;
    let op = if p.write {
        BLKIF_OP_WRITE
    } else {
        BLKIF_OP_READ
    };
    // A request's id is its slot (Linux's blkfront uses its shadow index), so no map is needed, and
    // nothing is allocated per I/O: as the direct side's loop, the front end's work per request is
    // building it and reaping its response.
    let mut free: Vec<usize> = (0..p.qd).collect();
    let mut rsps = Vec::with_capacity(p.qd);
    let start = Instant::now();
    let mut issued = 0u64;
    let mut done = 0u64;
    while done < n {
        while issued < n {
            let Some(slot) = free.pop() else { break };
            s.front
                .put_rw(0, op, offs.next() / 512, slot * pages, p.size, slot as u64);
            issued += 1;
        }
        match &s.inline {
            Some(q) => {
                if s.front.push(0) {
                    q.notify();
                }
            }
            None => s.front.kick(0),
        }
        rsps.clear();
        if !s.spin.is_zero() {
            let t = Instant::now();
            while s.front.poll(0, &mut rsps).expect("ring") == 0 && t.elapsed() < s.spin {
                std::hint::spin_loop();
            }
        }
        if let (true, Some(q)) = (rsps.is_empty(), &s.inline) {
            // The guest would block until its event: serve the queue until the event is sent.
            let bell = s.front.queues[0].doorbell.clone();
            let before = bell.rings();
            // As the guest's blkfront before it sleeps: take what is there, then arm `rsp_event`
            // (ring.h's final check), so that the back end's next response sends the event.
            if s.front.poll(0, &mut rsps).expect("ring") == 0
                && !s.front.final_check(0).expect("ring")
            {
                q.block(Duration::from_millis(10), || bell.rings() != before);
            }
        }
        if rsps.is_empty() {
            s.front.wait_into(0, 1, Duration::from_secs(10), &mut rsps);
        }
        s.front.poll(0, &mut rsps).expect("ring");
        assert!(!rsps.is_empty(), "blkback answers");
        for r in &rsps {
            assert_eq!(r.status, 0, "I/O failed");
            assert!((r.id as usize) < p.qd, "known id");
            free.push(r.id as usize);
            done += 1;
        }
    }
    start.elapsed()
}

struct DirectSide {
    queue: Box<dyn BlockQueue>,
    doorbell: Arc<Doorbell>,
    buf: Vec<u8>,
    /// Sleep on the doorbell (`BLKBACK_DIRECT_WAIT=doorbell`) rather than `BlockQueue::sleep`.
    doorbell_wait: bool,
}

fn direct_side(dev: &FileDevice, p: Pattern) -> DirectSide {
    let mut queue = dev.open_queue().expect("queue");
    let doorbell = Doorbell::new();
    queue.set_doorbell(doorbell.clone());
    if std::env::var("BLKBACK_DIRECT_ANY_THREAD").is_ok_and(|v| v == "1") {
        queue.any_thread_submits();
    }
    DirectSide {
        queue,
        doorbell,
        buf: vec![0x3Cu8; p.qd * p.size + 4096],
        doorbell_wait: std::env::var("BLKBACK_DIRECT_WAIT").is_ok_and(|v| v == "doorbell"),
    }
}

/// The same pattern from host buffers straight to the file device.
fn run_direct(d: &mut DirectSide, p: Pattern, offs: &mut Offsets, n: u64) -> Duration {
    let base = d.buf.as_mut_ptr();
    let aligned = base.wrapping_add(base.align_offset(4096));
    let mut free: Vec<usize> = (0..p.qd).collect();
    let mut batch = Vec::new();
    let mut out: Vec<IoCompletion> = Vec::new();
    let start = Instant::now();
    let (mut issued, mut done) = (0u64, 0u64);
    while done < n {
        while issued < n {
            let Some(slot) = free.pop() else { break };
            let ptr = NonNull::new(aligned.wrapping_add(slot * p.size)).expect("buffer");
            // SAFETY: `slot * size + size` bytes from the aligned start lie inside `buf`, which outlives the
            // I/O (every request is reaped before this function returns).
            let bufs = vec![unsafe { IoBuf::new(ptr, p.size) }];
            let offset = offs.next();
            let op = if p.write {
                IoOp::Write { offset, bufs }
            } else {
                IoOp::Read { offset, bufs }
            };
            batch.push(IoRequest {
                tag: slot as u64,
                op,
            });
            issued += 1;
        }
        d.queue.submit(&mut batch);
        out.clear();
        while d.queue.reap(&mut out) == 0 {
            if d.doorbell_wait {
                // As before `BlockQueue::sleep`: arm, then sleep on the doorbell's eventfd.
                if !d.queue.arm() {
                    d.doorbell.wait(Duration::from_millis(100));
                }
            } else {
                // As blkback's queue sleeps (in the ring, for the io_uring engine).
                d.queue.sleep(&d.doorbell, Duration::from_millis(100));
            }
        }
        for c in &out {
            c.result.as_ref().expect("direct I/O");
            free.push(c.tag as usize);
            done += 1;
        }
    }
    start.elapsed()
}

fn patterns() -> Vec<Pattern> {
    vec![
        Pattern {
            name: "4k-randread-qd1",
            write: false,
            size: 4096,
            qd: 1,
            random: true,
        },
        Pattern {
            name: "4k-randread-qd32",
            write: false,
            size: 4096,
            qd: 32,
            random: true,
        },
        Pattern {
            name: "4k-randwrite-qd1",
            write: true,
            size: 4096,
            qd: 1,
            random: true,
        },
        Pattern {
            name: "4k-randwrite-qd32",
            write: true,
            size: 4096,
            qd: 32,
            random: true,
        },
        Pattern {
            name: "1m-seqread-qd4",
            write: false,
            size: 1 << 20,
            qd: 4,
            random: false,
        },
        Pattern {
            name: "1m-seqwrite-qd4",
            write: true,
            size: 1 << 20,
            qd: 4,
            random: false,
        },
    ]
}

/// The patterns `BLKBACK_PATTERNS` selects (all without it).
fn selected() -> Vec<Pattern> {
    let want = std::env::var("BLKBACK_PATTERNS").unwrap_or_default();
    let words: Vec<&str> = want.split(',').filter(|w| !w.is_empty()).collect();
    patterns()
        .into_iter()
        .filter(|p| words.is_empty() || words.iter().any(|w| p.name.contains(w)))
        .collect()
}

/// The CPU time (user and system) of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed local it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The `q`-quantile (0 to 1) of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

fn bench(c: &mut Criterion) {
    let path = image();
    let engines = std::env::var("BLKBACK_ENGINES").unwrap_or_else(|_| "uring,pool".into());
    let mut summary = Vec::new();
    for engine in engines.split(',') {
        let io_uring = match engine {
            "uring" => true,
            "pool" => false,
            other => panic!("BLKBACK_ENGINES: unknown engine {other:?} (uring, pool)"),
        };
        let opts = FileOptions {
            threads: 8,
            io_uring,
            ..FileOptions::default()
        };
        let dev = FileDevice::open(&path, opts).expect("open");
        eprintln!(
            "image {} ({} MiB), O_DIRECT: {}, engine {engine}",
            path.display(),
            DISK >> 20,
            dev.is_direct()
        );
        bench_engine(c, engine, &dev, &mut summary);
    }
    if std::env::var("BLKBACK_WAKEUP").map_or(true, |v| v != "0") {
        let opts = FileOptions {
            io_uring: true,
            ..FileOptions::default()
        };
        let dev = FileDevice::open(&path, opts).expect("open");
        wakeups(&dev, &mut summary);
    }
    eprintln!("\nblkback vs direct (same run, same engine):");
    for l in &summary {
        eprintln!("  {l}");
    }
    let _ = std::fs::remove_file(&path);
}

fn bench_engine(c: &mut Criterion, engine: &str, dev: &FileDevice, summary: &mut Vec<String>) {
    let mut side = blk_side(Arc::new(dev.clone()));
    let use_criterion = std::env::var("BLKBACK_CRITERION").map_or(true, |v| v != "0");
    let rounds: usize = std::env::var("BLKBACK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(1);
    for p in selected() {
        let mut g = c.benchmark_group(format!("blkback/{engine}/{}", p.name));
        g.throughput(if p.size >= 1 << 20 {
            Throughput::Bytes(p.size as u64)
        } else {
            Throughput::Elements(1)
        });
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let mut direct = direct_side(dev, p);
        let tot_blk = std::cell::Cell::new((0u64, Duration::ZERO));
        let tot_dir = std::cell::Cell::new((0u64, Duration::ZERO));
        let mut offs = Offsets::new(p);
        if use_criterion {
            g.bench_function("blkback", |b| {
                b.iter_custom(|n| {
                    let t = run_blk(&mut side, p, &mut offs, n);
                    let (c, d) = tot_blk.get();
                    tot_blk.set((c + n, d + t));
                    black_box(t)
                })
            });
        }
        let mut offs = Offsets::new(p);
        if use_criterion {
            g.bench_function("direct", |b| {
                b.iter_custom(|n| {
                    let t = run_direct(&mut direct, p, &mut offs, n);
                    let (c, d) = tot_dir.get();
                    tot_dir.set((c + n, d + t));
                    black_box(t)
                })
            });
        }
        g.finish();
        let rate = |(n, d): (u64, Duration)| n as f64 / d.as_secs_f64();
        // Interleaved rounds of about 50 ms a side (sized by a short direct run when criterion did not
        // run), the side that goes first alternating.
        let rd0 = if use_criterion {
            rate(tot_dir.get())
        } else {
            let n = if p.size >= 1 << 20 { 32 } else { 256 };
            rate((n, run_direct(&mut direct, p, &mut offs, n)))
        };
        let chunk = ((rd0.max(1.0) * 0.05) as u64).max(8);
        let (mut ob, mut od) = (Offsets::new(p), Offsets::new(p));
        let (mut tb, mut td) = (Duration::ZERO, Duration::ZERO);
        let mut ratios = Vec::with_capacity(rounds);
        let (r0, _, _, n0, s0) = side.back.totals();
        let k0 = side.front.queues[0].kicks;
        let i0 = side.inline.as_ref().map(|q| q.stats().snapshot());
        let (mut cb, mut cd) = (Duration::ZERO, Duration::ZERO);
        let mut blk_round = |side: &mut BlkSide, ob: &mut Offsets| {
            let c0 = cpu_time();
            let t = run_blk(side, p, ob, chunk);
            cb += cpu_time() - c0;
            t
        };
        let mut direct_round = |direct: &mut DirectSide, od: &mut Offsets| {
            let c0 = cpu_time();
            let t = run_direct(direct, p, od, chunk);
            cd += cpu_time() - c0;
            t
        };
        for round in 0..rounds {
            let (b, d) = if round % 2 == 0 {
                let b = blk_round(&mut side, &mut ob);
                (b, direct_round(&mut direct, &mut od))
            } else {
                let d = direct_round(&mut direct, &mut od);
                (blk_round(&mut side, &mut ob), d)
            };
            tb += b;
            td += d;
            ratios.push(d.as_secs_f64() / b.as_secs_f64());
        }
        let (r1, _, _, n1, s1) = side.back.totals();
        let k1 = side.front.queues[0].kicks;
        let inline_line = side.inline.as_ref().zip(i0).map(|(q, a)| {
            let b = q.stats().snapshot();
            let per = |x: u64, y: u64| (x - y) as f64 / (chunk * rounds as u64) as f64;
            format!(
                "  inline per I/O: kicks served {:.3}, rung {:.3}; blocks served {:.3}, passed {:.3}; \
                 handed back {:.3}",
                per(b.0, a.0),
                per(b.1, a.1),
                per(b.2, a.2),
                per(b.3, a.3),
                per(b.4, a.4)
            )
        });
        ratios.sort_by(f64::total_cmp);
        let reqs = (r1 - r0).max(1) as f64;
        let (rb, rd) = if use_criterion {
            (rate(tot_blk.get()), rate(tot_dir.get()))
        } else {
            let n = chunk * rounds as u64;
            (rate((n, tb)), rate((n, td)))
        };
        let line = format!(
            "{engine:<5} {:<18} blkback {:>8.0} IOPS  direct {:>8.0} IOPS  ratio {:.3}  {} rounds of {}: \
             median {:.3} (quartiles {:.3} {:.3}, extremes {:.3} {:.3}), sum {:.3}  \
             CPU per I/O: blkback {:.1} µs, direct {:.1} µs  events/request: to front {:.3}, to back {:.3}",
            p.name,
            rb,
            rd,
            rb / rd,
            rounds,
            chunk,
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
            ratios[0],
            ratios[ratios.len() - 1],
            td.as_secs_f64() / tb.as_secs_f64(),
            cb.as_secs_f64() * 1e6 / (chunk * rounds as u64) as f64,
            cd.as_secs_f64() * 1e6 / (chunk * rounds as u64) as f64,
            (n1 - n0) as f64 / reqs,
            (k1 - k0) as f64 / reqs,
        );
        let line = if p.qd == 1 && std::env::var("BLKBACK_WAKEUP").map_or(true, |v| v != "0") {
            // What two cross-thread wake-ups cost here and now, each sleeper idle for as long as
            // the direct side's I/O takes: the front end's event waking blkback's queue (asleep in
            // its ring) and the response's event waking the front end (asleep on a futex).
            let idle = Duration::from_secs_f64(1.0 / rd);
            let med = |how| {
                let v = wake_latency(dev, how, idle, 1000);
                v[v.len() / 2].as_secs_f64() * 1e6
            };
            let (wu, wf) = (med(Sleeper::Uring), med(Sleeper::Futex));
            format!(
                "{line}  per I/O: blkback {:.1} µs, direct {:.1} µs, gap {:.1} µs; two wake-ups after \
                 {:.0} µs idle: uring {wu:.1} + futex {wf:.1} = {:.1} µs",
                1e6 / rb,
                1e6 / rd,
                1e6 / rb - 1e6 / rd,
                idle.as_secs_f64() * 1e6,
                wu + wf
            )
        } else {
            line
        };
        // The queue thread's sleeps (each one ended by a wake-up or its timeout) per I/O.
        let line = format!(
            "{line}  queue thread sleeps/I/O {:.3}{}",
            (s1 - s0) as f64 / reqs,
            inline_line.unwrap_or_default()
        );
        eprintln!("{line}");
        summary.push(line);
    }
    drop(side);
}

/// How a woken thread sleeps.
#[derive(Clone, Copy, Debug)]
enum Sleeper {
    /// On a [`Doorbell`] nobody else writes: a futex (as the test front end and the thread pool).
    Futex,
    /// In an io_uring queue of the file device (`BlockQueue::sleep`: `io_uring_enter` with a read of
    /// the doorbell's eventfd outstanding), as blkback's queue thread sleeps.
    Uring,
}

/// The latency of one cross-thread wake-up on this machine: a thread sleeps as `how`; `idle` after it
/// went to sleep, another thread (which spins meanwhile, so that only the sleeper's CPU goes idle)
/// rings its doorbell; the latency is from just before the ring to the sleeper's first clock read
/// after it returns. `n` samples, sorted.
fn wake_latency(dev: &FileDevice, how: Sleeper, idle: Duration, n: usize) -> Vec<Duration> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let bell = Doorbell::new();
    let mut queue = match how {
        Sleeper::Futex => None,
        Sleeper::Uring => {
            let mut q = dev.open_queue().expect("queue");
            q.set_doorbell(bell.clone());
            Some(q)
        }
    };
    let base = Instant::now();
    // The sleeper's wake time (ns from `base`) + 1, or 0 until it woke; `asleep` once it is about to
    // sleep; `rang` counts the rings, so that a sleep that ends without one is not taken for a wake.
    let woke = Arc::new(AtomicU64::new(0));
    let rang = Arc::new(AtomicU64::new(0));
    let asleep = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sleeper = {
        let (bell, woke, rang, asleep, stop) = (
            bell.clone(),
            woke.clone(),
            rang.clone(),
            asleep.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut seen = 0;
            let mut done = Vec::new();
            while !stop.load(Ordering::Acquire) {
                asleep.store(true, Ordering::Release);
                let t = loop {
                    match queue.as_mut() {
                        None => {
                            bell.wait(Duration::from_secs(1));
                        }
                        Some(q) => {
                            q.sleep(&bell, Duration::from_secs(1));
                            q.reap(&mut done);
                        }
                    }
                    let t = base.elapsed().as_nanos() as u64;
                    let r = rang.load(Ordering::Acquire);
                    if r != seen || stop.load(Ordering::Acquire) {
                        seen = r;
                        break t;
                    }
                };
                woke.store(t + 1, Ordering::Release);
            }
        })
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n + 10 {
        while !asleep.swap(false, Ordering::AcqRel) {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        while t.elapsed() < idle {
            std::hint::spin_loop();
        }
        let t0 = base.elapsed().as_nanos() as u64;
        rang.fetch_add(1, Ordering::AcqRel);
        bell.ring();
        let t1 = loop {
            let v = woke.swap(0, Ordering::AcqRel);
            if v != 0 {
                break v - 1;
            }
            std::hint::spin_loop();
        };
        out.push(Duration::from_nanos(t1.saturating_sub(t0)));
    }
    stop.store(true, Ordering::Release);
    rang.fetch_add(1, Ordering::AcqRel);
    bell.ring();
    sleeper.join().expect("sleeper");
    // The first few warm up.
    out.drain(..10);
    out.sort();
    out
}

/// Prints and records the wake-up latencies (`BLKBACK_WAKEUP=0` skips them): with the sleeper idle
/// for about as long as a 4 KiB read at depth 1 takes here (40 µs), and for shorter and longer idles.
fn wakeups(dev: &FileDevice, summary: &mut Vec<String>) {
    for how in [Sleeper::Futex, Sleeper::Uring] {
        for idle_us in [0u64, 10, 40, 100] {
            let v = wake_latency(dev, how, Duration::from_micros(idle_us), 2000);
            let us = |q: f64| {
                quantile(
                    &v.iter().map(|d| d.as_secs_f64() * 1e6).collect::<Vec<_>>(),
                    q,
                )
            };
            let line = format!(
                "wake-up {:<5} after {idle_us:>3} µs idle: median {:.1} µs (quartiles {:.1} {:.1}, 90% {:.1})",
                format!("{how:?}").to_lowercase(),
                us(0.5),
                us(0.25),
                us(0.75),
                us(0.9)
            );
            eprintln!("{line}");
            summary.push(line);
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
