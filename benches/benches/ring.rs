//! Shared-ring throughput: xen-abi's ring against Xen's own `io/ring.h` macros (C, `-O2`), in the same run.
//!
//! - `ring/two_threads/*`: one producer (front end) thread and one consumer (back end) thread on one 4 KiB blkif
//!   ring, both spinning; each request is built, copied out once, checked field by field, and answered; the
//!   front end checks every response. Time per request, round trip.
//! - `ring/single_thread/*`: one thread plays both ends in rounds of 16 requests: the cost of put, push, pop,
//!   respond and collect with no cache-line transfer.
//! - `ring/push/*` and `ring/pop/*`: the same rounds on one thread, timing only the front end's put-and-push of
//!   16 requests, or only the back end's pop-check-respond-and-push of 16; per request.
//!
//! After the groups, the median time per request of each side (from criterion's own samples) and the ratio
//! `C / Rust` are printed: above 1.0 means xen-abi is faster than ring.h.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use blanket_conformance::peers::{
    Events, back_serve_batch, blkif, front_collect_batch, front_put_batch, rust_back_run,
    rust_front_run, rust_single_thread_run,
};
use blanket_conformance::ring_c::{
    CBack, CFront, c_back_run, c_blkif_single_thread_run, c_front_run,
};
use criterion::{Criterion, Throughput, criterion_group};
use xen_abi::ring::{BackRing, FrontRing, RingPages};

/// Requests per two-thread sample.
const N: u64 = 200_000;
/// Rounds per single-thread iteration, and requests per round.
const ROUNDS: u64 = 1000;
const BATCH: u32 = 16;

/// Never used: the loops spin when given no events.
struct NoEvents;
impl Events for NoEvents {
    fn notify(&self) {}
    fn wait(&self) {}
}

/// Per-request times (ns) of every sample, by benchmark name.
static SAMPLES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

fn record(name: &'static str, elapsed: Duration, requests: u64) {
    SAMPLES
        .lock()
        .unwrap()
        .push((name, elapsed.as_nanos() as f64 / requests as f64));
}

fn two_threads(c: bool) -> Duration {
    let pages = RingPages::new(0);
    FrontRing::<_, blkif>::new(&pages).unwrap();
    let start = Instant::now();
    let (f, b) = std::thread::scope(|s| {
        let back = s.spawn(|| {
            if c {
                c_back_run::<blkif, _, NoEvents>(&&pages, N, None)
            } else {
                rust_back_run::<blkif, _, NoEvents>(&pages, N, None).unwrap()
            }
        });
        let front = if c {
            c_front_run::<blkif, _, NoEvents>(&&pages, N, None)
        } else {
            rust_front_run::<blkif, _, NoEvents>(&pages, N, None).unwrap()
        };
        (front, back.join().unwrap())
    });
    let elapsed = start.elapsed();
    assert_eq!(
        (f.done, f.bad, b.done, b.bad),
        (N, 0, N, 0),
        "every request answered correctly"
    );
    elapsed
}

fn bench_two_threads(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("ring/two_threads");
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for (name, c) in [("ring_h_c", true), ("xen_abi", false)] {
        let key: &'static str = if c {
            "two_threads/ring_h_c"
        } else {
            "two_threads/xen_abi"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = two_threads(c);
                    record(key, t, N);
                    total += t;
                }
                total
            })
        });
    }
    g.finish();
}

fn bench_single_thread(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("ring/single_thread");
    let requests = ROUNDS * u64::from(BATCH);
    g.throughput(Throughput::Elements(requests));
    let pages = RingPages::new(0);
    g.bench_function("ring_h_c", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                assert_eq!(c_blkif_single_thread_run(&&pages, ROUNDS, BATCH), 0);
            }
            let t = start.elapsed();
            record("single_thread/ring_h_c", t, requests * iters);
            t
        })
    });
    g.bench_function("xen_abi", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                assert_eq!(
                    rust_single_thread_run::<blkif, _>(&pages, ROUNDS, BATCH).unwrap(),
                    0
                );
            }
            let t = start.elapsed();
            record("single_thread/xen_abi", t, requests * iters);
            t
        })
    });
    g.finish();
}

/// Which phase of a round a `push_pop` sample times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Push,
    Pop,
}

/// `iters` rounds of BATCH requests with ring.h on one thread; returns the time spent in `phase` only.
fn c_rounds(pages: &RingPages, iters: u64, phase: Phase) -> Duration {
    let mut front = CFront::<blkif>::new(pages, true, 0);
    let mut back = CBack::<blkif>::new(pages, 0);
    let (mut timed, mut i, mut bad) = (Duration::ZERO, 0u64, 0u64);
    for _ in 0..iters {
        let t = Instant::now();
        let put = front.put_batch(i, BATCH);
        if phase == Phase::Push {
            timed += t.elapsed();
        }
        let t = Instant::now();
        let served = back.serve_batch(i, BATCH, &mut bad);
        if phase == Phase::Pop {
            timed += t.elapsed();
        }
        let got = front.collect_batch(i, BATCH, &mut bad);
        assert_eq!((put, served, got, bad), (BATCH, BATCH, BATCH, 0));
        i += u64::from(BATCH);
    }
    timed
}

/// The same with xen-abi.
fn rust_rounds(pages: &RingPages, iters: u64, phase: Phase) -> Duration {
    let mut front = FrontRing::<_, blkif>::new(pages).unwrap();
    let mut back = BackRing::<_, blkif>::new(pages).unwrap();
    let (mut timed, mut i, mut bad) = (Duration::ZERO, 0u64, 0u64);
    for _ in 0..iters {
        let t = Instant::now();
        let put = front_put_batch(&mut front, i, BATCH);
        if phase == Phase::Push {
            timed += t.elapsed();
        }
        let t = Instant::now();
        let served = back_serve_batch(&mut back, i, BATCH, &mut bad).unwrap();
        if phase == Phase::Pop {
            timed += t.elapsed();
        }
        let got = front_collect_batch(&mut front, i, BATCH, &mut bad).unwrap();
        assert_eq!((put, served, got, bad), (BATCH, BATCH, BATCH, 0));
        i += u64::from(BATCH);
    }
    timed
}

fn bench_push_pop(cr: &mut Criterion) {
    for (group, phase) in [("push", Phase::Push), ("pop", Phase::Pop)] {
        let mut g = cr.benchmark_group(format!("ring/{group}"));
        g.throughput(Throughput::Elements(u64::from(BATCH)));
        let pages = RingPages::new(0);
        let keys: [&'static str; 2] = match phase {
            Phase::Push => ["push/ring_h_c", "push/xen_abi"],
            Phase::Pop => ["pop/ring_h_c", "pop/xen_abi"],
        };
        g.bench_function("ring_h_c", |b| {
            b.iter_custom(|iters| {
                let t = c_rounds(&pages, iters, phase);
                record(keys[0], t, iters * u64::from(BATCH));
                t
            })
        });
        g.bench_function("xen_abi", |b| {
            b.iter_custom(|iters| {
                let t = rust_rounds(&pages, iters, phase);
                record(keys[1], t, iters * u64::from(BATCH));
                t
            })
        });
        g.finish();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_ratios() {
    let samples = SAMPLES.lock().unwrap();
    let of = |name: &str| {
        samples
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    println!("\nring.h (C, -O2) against xen-abi, median ns per request over criterion's samples:");
    for group in ["two_threads", "single_thread", "push", "pop"] {
        let c = of(&format!("{group}/ring_h_c"));
        let r = of(&format!("{group}/xen_abi"));
        if c.is_empty() || r.is_empty() {
            continue;
        }
        let (mc, mr) = (median(c.clone()), median(r.clone()));
        println!(
            "  {group:<14} ring.h {mc:8.2} ns ({} samples)   xen-abi {mr:8.2} ns ({} samples)   ratio C/Rust {:.3}",
            c.len(),
            r.len(),
            mc / mr
        );
    }
}

criterion_group!(
    benches,
    bench_two_threads,
    bench_single_thread,
    bench_push_pop
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
}
