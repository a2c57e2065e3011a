//! The console back end against a guest-side writer on another thread, on a real shared page, with
//! real sinks: a log file, a pty and a Unix socket. And the hostile cases of HOSTILE-INPUT.md's
//! Console and shared-ring sections, each a named test.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pv_backend::console::{
    ConsoleBackend, ConsoleConfig, ConsoleError, ConsoleIndex, ConsolePage, ConsoleSink,
    EventChannel, LogFile, Overflow, Pty, RateLimit, UnixSocketSink,
};
use xen_abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE};
use xen_abi::ring::{RingMemory, RingPages};

const OUT: u32 = XENCONS_OUT_SIZE;
const IN: u32 = XENCONS_IN_SIZE;

/// A doorbell: an event channel a thread can wait on.
#[derive(Default)]
struct Bell(Mutex<bool>, Condvar, AtomicUsize);

impl Bell {
    fn ring(&self) {
        self.2.fetch_add(1, Ordering::Relaxed);
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
    /// Waits for a ring (or the timeout); returns whether it rang.
    fn wait(&self, timeout: Duration) -> bool {
        let g = self.0.lock().unwrap();
        let (mut g, _) = self.1.wait_timeout_while(g, timeout, |r| !*r).unwrap();
        std::mem::replace(&mut *g, false)
    }
    fn count(&self) -> usize {
        self.2.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Kick(Arc<Bell>);
impl EventChannel for Kick {
    fn notify(&self) {
        self.0.ring();
    }
}

/// Deterministic bytes covering every value (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn unique_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "pvb-console-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The guest's side of the page: what a PV console driver (hvc_xen) does.
struct Guest<M: RingMemory> {
    page: ConsolePage<M>,
    out_prod: u32,
    in_cons: u32,
    to_backend: Arc<Bell>,
    from_backend: Arc<Bell>,
}

impl<M: RingMemory> Guest<M> {
    fn new(mem: M, to_backend: Arc<Bell>, from_backend: Arc<Bell>) -> Self {
        let page = ConsolePage::new(mem).unwrap();
        let out_prod = page.load(ConsoleIndex::OutProd);
        let in_cons = page.load(ConsoleIndex::InCons);
        Self {
            page,
            out_prod,
            in_cons,
            to_backend,
            from_backend,
        }
    }

    /// Writes `data` into the output ring in chunks of at most `chunk` bytes, waiting for room.
    fn write_all(&mut self, data: &[u8], chunk: usize) {
        let t0 = Instant::now();
        let mut done = 0;
        while done < data.len() {
            let cons = self.page.load(ConsoleIndex::OutCons);
            let used = self.out_prod.wrapping_sub(cons);
            assert!(used <= OUT, "back end moved out_cons past out_prod");
            let n = ((OUT - used) as usize).min(data.len() - done).min(chunk);
            if n == 0 {
                assert!(t0.elapsed() < Duration::from_secs(20), "output ring stuck");
                self.from_backend.wait(Duration::from_millis(2));
                continue;
            }
            self.page.write_out(self.out_prod, &data[done..done + n]);
            self.out_prod = self.out_prod.wrapping_add(n as u32);
            self.page.store(ConsoleIndex::OutProd, self.out_prod);
            self.to_backend.ring();
            done += n;
        }
    }

    /// Reads exactly `len` bytes of input.
    fn read_exact(&mut self, len: usize) -> Vec<u8> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        while out.len() < len {
            let prod = self.page.load(ConsoleIndex::InProd);
            let used = prod.wrapping_sub(self.in_cons);
            assert!(used <= IN, "back end overfilled the input ring");
            let n = (used as usize).min(len - out.len());
            if n == 0 {
                assert!(t0.elapsed() < Duration::from_secs(20), "no input arrived");
                self.from_backend.wait(Duration::from_millis(2));
                continue;
            }
            let mut buf = vec![0; n];
            self.page.read_in(self.in_cons, &mut buf);
            self.in_cons = self.in_cons.wrapping_add(n as u32);
            self.page.store(ConsoleIndex::InCons, self.in_cons);
            self.to_backend.ring();
            out.extend_from_slice(&buf);
        }
        out
    }
}

/// Runs a back end until `stop` is set and its output is all out: serves events, and polls the
/// sink every millisecond.
fn serve<M: RingMemory, S: ConsoleSink>(
    backend: &mut ConsoleBackend<M, Kick, S>,
    bell: &Bell,
    stop: &AtomicBool,
) {
    let t0 = Instant::now();
    loop {
        let rang = bell.wait(Duration::from_millis(1));
        let now = Instant::now();
        if rang {
            backend.handle_event(now).unwrap();
        } else {
            backend.process(now).unwrap();
        }
        let out_prod = backend.page().load(ConsoleIndex::OutProd);
        let out_cons = backend.page().load(ConsoleIndex::OutCons);
        if stop.load(Ordering::Acquire) && backend.pending_output() == 0 && out_prod == out_cons {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "back end loop stuck"
        );
    }
}

fn no_limit() -> ConsoleConfig {
    ConsoleConfig {
        rate_limit: None,
        ..ConsoleConfig::default()
    }
}

#[test]
fn output_reaches_a_log_file_byte_identical() {
    let pages = RingPages::new(0);
    let path = unique_path("log");
    let data = pattern(300_000, 1);
    let (to_be, to_guest) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
    let stop = AtomicBool::new(false);
    let sink = LogFile::open(&path).unwrap();
    let mut backend = ConsoleBackend::new(
        &pages,
        Kick(to_guest.clone()),
        sink,
        1,
        no_limit(),
        Instant::now(),
    )
    .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = Guest::new(&pages, to_be.clone(), to_guest.clone());
            // Odd chunk sizes, so that writes straddle the ring's wrap.
            for (i, part) in data.chunks(7919).enumerate() {
                g.write_all(part, 1 + (i * 37) % 700);
            }
            stop.store(true, Ordering::Release);
        });
        serve(&mut backend, &to_be, &stop);
    });
    let got = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "log file differs from what the guest wrote");
    let st = backend.stats();
    assert_eq!(st.out_bytes, data.len() as u64);
    assert_eq!(st.sink_bytes, data.len() as u64);
    assert_eq!(st.discarded, 0);
    assert!(st.notifies > 0 && to_guest.count() > 0);
}

#[test]
fn output_and_input_over_a_pty_byte_identical() {
    let pages = RingPages::new(0);
    let data = pattern(100_000, 2);
    let input = pattern(5000, 3);
    let (to_be, to_guest) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
    let stop = AtomicBool::new(false);
    let pty = Pty::open().unwrap();
    let slave_path = pty.slave_path().to_path_buf();
    assert!(slave_path.starts_with("/dev/pts"), "{slave_path:?}");
    let mut backend = ConsoleBackend::new(
        &pages,
        Kick(to_guest.clone()),
        pty,
        1,
        ConsoleConfig {
            overflow: Overflow::Keep,
            ..no_limit()
        },
        Instant::now(),
    )
    .unwrap();
    let mut slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)
        .unwrap();
    let mut slave_w = slave.try_clone().unwrap();
    let (got, got_input) = std::thread::scope(|s| {
        let len = data.len();
        let reader = s.spawn(move || {
            let mut got = vec![0; len];
            slave.read_exact(&mut got).unwrap();
            got
        });
        let guest = s.spawn(|| {
            let mut g = Guest::new(&pages, to_be.clone(), to_guest.clone());
            g.write_all(&data, 1000);
            let got_input = g.read_exact(input.len());
            stop.store(true, Ordering::Release);
            got_input
        });
        s.spawn(|| slave_w.write_all(&input).unwrap());
        serve(&mut backend, &to_be, &stop);
        (reader.join().unwrap(), guest.join().unwrap())
    });
    assert!(got == data, "pty output differs from what the guest wrote");
    assert!(
        got_input == input,
        "guest input differs from what was typed"
    );
    assert_eq!(backend.stats().in_bytes, input.len() as u64);
}

#[test]
fn output_and_input_over_a_unix_socket_byte_identical() {
    let pages = RingPages::new(0);
    let path = unique_path("sock");
    let data = pattern(200_000, 4);
    let input = pattern(3000, 5);
    let (to_be, to_guest) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
    let stop = AtomicBool::new(false);
    let sink = UnixSocketSink::bind(&path).unwrap();
    let mut backend = ConsoleBackend::new(
        &pages,
        Kick(to_guest.clone()),
        sink,
        1,
        ConsoleConfig {
            overflow: Overflow::Keep,
            buffer_limit: 8192,
            ..no_limit()
        },
        Instant::now(),
    )
    .unwrap();
    let (got, got_input) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(&input).unwrap();
            let mut got = vec![0; data.len()];
            c.read_exact(&mut got).unwrap();
            got
        });
        let guest = s.spawn(|| {
            let mut g = Guest::new(&pages, to_be.clone(), to_guest.clone());
            g.write_all(&data, 2048);
            let got_input = g.read_exact(input.len());
            stop.store(true, Ordering::Release);
            got_input
        });
        serve(&mut backend, &to_be, &stop);
        (client.join().unwrap(), guest.join().unwrap())
    });
    assert!(
        got == data,
        "socket output differs from what the guest wrote"
    );
    assert!(
        got_input == input,
        "guest input differs from what the client sent"
    );
    // Keep: the buffer never held more than its limit, the guest waited instead.
    assert_eq!(backend.stats().discarded, 0);
    drop(backend);
    assert!(!path.exists(), "the socket file is removed with the sink");
}

/// vm-memory guest memory with a dirty bitmap: the back end's writes (out_cons, in_prod, input
/// bytes) are recorded for live migration.
#[test]
fn console_over_vm_memory_guest_memory_marks_its_writes_dirty() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
    let mem: GuestMemoryMmap<AtomicBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    let page_addr = GuestAddress(0x2000);
    let slice = mem.get_slice(page_addr, 4096).unwrap();
    let log = unique_path("vmm-log");
    let mut backend = ConsoleBackend::new(
        slice,
        Kick(Arc::new(Bell::default())),
        LogFile::open(&log).unwrap(),
        3,
        no_limit(),
        Instant::now(),
    )
    .unwrap();
    // The guest writes with ordinary guest-memory accesses: bytes at out[0..], then out_prod.
    let msg = b"hello from guest memory\r\n";
    mem.write_slice(msg, GuestAddress(0x2000 + 1024)).unwrap();
    mem.write_obj(msg.len() as u32, GuestAddress(0x2000 + 3084))
        .unwrap();
    let region = mem.find_region(page_addr).unwrap();
    std::ops::Deref::deref(region).bitmap().reset();
    let p = backend.handle_event(Instant::now()).unwrap();
    assert_eq!(p.out, msg.len());
    assert_eq!(std::fs::read(&log).unwrap(), msg);
    std::fs::remove_file(&log).unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x2000 + 3080)).unwrap(),
        msg.len() as u32
    );
    assert!(
        region.bitmap().dirty_at(0x2000 + 3080),
        "the out_cons store was not marked dirty"
    );
}

/// A sink held in memory, for the cases where the sink's speed is the point.
#[derive(Default)]
struct MemSink {
    out: Vec<u8>,
    /// Bytes accepted per write call (usize::MAX: all).
    accept: usize,
    input: Vec<u8>,
}

impl ConsoleSink for MemSink {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.accept);
        self.out.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

fn mem_backend(
    pages: &RingPages,
    config: ConsoleConfig,
    now: Instant,
) -> ConsoleBackend<&RingPages, Kick, MemSink> {
    let sink = MemSink {
        accept: usize::MAX,
        ..MemSink::default()
    };
    ConsoleBackend::new(pages, Kick(Arc::new(Bell::default())), sink, 7, config, now).unwrap()
}

/// Puts indices on a fresh page before the back end attaches (as a reconnecting guest's page).
fn page_with(pages: &RingPages, out_cons: u32, out_prod: u32, in_cons: u32, in_prod: u32) {
    let p = ConsolePage::new(pages).unwrap();
    p.store(ConsoleIndex::OutCons, out_cons);
    p.store(ConsoleIndex::OutProd, out_prod);
    p.store(ConsoleIndex::InCons, in_cons);
    p.store(ConsoleIndex::InProd, in_prod);
}

fn guest_of(pages: &RingPages) -> Guest<&RingPages> {
    Guest::new(pages, Arc::new(Bell::default()), Arc::new(Bell::default()))
}

#[test]
fn hostile_out_prod_exactly_ring_size_ahead_is_a_full_ring() {
    let pages = RingPages::new(0);
    let data = pattern(OUT as usize, 9);
    let mut backend = mem_backend(&pages, no_limit(), Instant::now());
    let mut g = guest_of(&pages);
    g.write_all(&data, usize::MAX);
    let p = backend.process(Instant::now()).unwrap();
    assert_eq!(p.out, OUT as usize);
    assert_eq!(backend.sink().out, data);
}

#[test]
fn hostile_out_prod_ring_size_plus_one_ahead_closes_the_console() {
    let pages = RingPages::new(0);
    page_with(&pages, 100, 100 + OUT + 1, 0, 0);
    let mut backend = mem_backend(&pages, no_limit(), Instant::now());
    let err = backend.handle_event(Instant::now()).unwrap_err();
    match &err {
        ConsoleError::RingIndex {
            domid: 7,
            ring: "out",
            source,
        } => {
            let msg = source.to_string();
            assert!(msg.contains("2049") && msg.contains("2048"), "{msg}");
        }
        other => panic!("wrong error {other:?}"),
    }
    assert!(err.to_string().contains("closed"), "{err}");
    assert!(backend.is_closed());
    assert!(
        backend.sink().out.is_empty(),
        "bytes were read from a broken ring"
    );
    // out_cons untouched, and the console stays closed.
    assert_eq!(backend.page().load(ConsoleIndex::OutCons), 100);
    assert!(matches!(
        backend.process(Instant::now()),
        Err(ConsoleError::Closed { domid: 7 })
    ));
}

#[test]
fn hostile_out_prod_behind_out_cons_closes_the_console() {
    let pages = RingPages::new(0);
    page_with(&pages, 5000, 4999, 0, 0);
    let mut backend = mem_backend(&pages, no_limit(), Instant::now());
    assert!(matches!(
        backend.process(Instant::now()),
        Err(ConsoleError::RingIndex { ring: "out", .. })
    ));
    assert!(backend.is_closed());
}

#[test]
fn hostile_in_cons_ahead_of_in_prod_closes_the_console() {
    let pages = RingPages::new(0);
    page_with(&pages, 0, 0, 10, 0);
    let mut backend = mem_backend(&pages, no_limit(), Instant::now());
    backend.sink_mut().input = b"typed".to_vec();
    assert!(matches!(
        backend.process(Instant::now()),
        Err(ConsoleError::RingIndex { ring: "in", .. })
    ));
    assert!(backend.is_closed());
    assert_eq!(backend.page().load(ConsoleIndex::InProd), 0);
}

#[test]
fn hostile_in_cons_garbage_far_behind_closes_the_console() {
    let pages = RingPages::new(0);
    page_with(&pages, 0, 0, 0x8000_0000, 0);
    let mut backend = mem_backend(&pages, no_limit(), Instant::now());
    backend.sink_mut().input = b"x".to_vec();
    assert!(backend.process(Instant::now()).is_err());
    assert!(backend.is_closed());
}

/// Indices starting just below 2^31 and 2^32 stream through the wrap unchanged.
#[test]
fn indices_wrapping_through_2_31_and_2_32() {
    for start in [0x7fff_fe00u32, 0xffff_fe00] {
        let pages = RingPages::new(0);
        page_with(&pages, start, start, start, start);
        let mut backend = mem_backend(&pages, no_limit(), Instant::now());
        let mut g = guest_of(&pages);
        let data = pattern(10_000, u64::from(start));
        let input = pattern(3000, 11);
        backend.sink_mut().input = input.clone();
        let mut got_input = Vec::new();
        for part in data.chunks(1500) {
            g.write_all(part, usize::MAX);
            backend.process(Instant::now()).unwrap();
            got_input.extend(g.read_exact(backend.stats().in_bytes as usize - got_input.len()));
        }
        while got_input.len() < input.len() {
            backend.process(Instant::now()).unwrap();
            got_input.extend(g.read_exact(backend.stats().in_bytes as usize - got_input.len()));
        }
        assert!(
            backend.sink().out == data,
            "output differs across the wrap at {start:#x}"
        );
        assert!(
            got_input == input,
            "input differs across the wrap at {start:#x}"
        );
        assert!(g.out_prod.wrapping_sub(start) == data.len() as u32);
        assert!(
            (g.out_prod ^ start) & 0x8000_0000 != 0,
            "the test did not cross the boundary"
        );
    }
}

/// Another thread rewrites out_prod and the ring bytes while the back end reads: it must never
/// read more than the ring holds per pass nor panic; it either serves or closes the console.
#[test]
fn hostile_out_prod_changed_by_another_thread_while_reading() {
    let pages = RingPages::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let p = ConsolePage::new(&pages).unwrap();
            let mut x = 0x1234_5678u32;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let cons = p.load(ConsoleIndex::OutCons);
                // Mostly plausible values, sometimes garbage.
                let prod = if x % 16 == 0 {
                    x
                } else {
                    cons.wrapping_add(x % (OUT + 1))
                };
                p.write_out(x, &x.to_le_bytes());
                p.store(ConsoleIndex::OutProd, prod);
            }
        });
        let config = ConsoleConfig {
            buffer_limit: 4096,
            ..no_limit()
        };
        for _ in 0..50 {
            let mut backend = mem_backend(&pages, config, Instant::now());
            backend.sink_mut().accept = 0; // nothing drains: the buffer limit is what bounds memory
            for _ in 0..200 {
                match backend.process(Instant::now()) {
                    Ok(p) => assert!(p.out <= OUT as usize),
                    Err(ConsoleError::RingIndex { .. }) => break,
                    Err(e) => panic!("unexpected {e}"),
                }
                assert!(backend.pending_output() <= 4096);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// Events that bring no work: never an error, never a notification to the guest, and the rate
/// limit masks the flood after its event budget.
#[test]
fn hostile_event_flood_without_work() {
    let pages = RingPages::new(0);
    let t0 = Instant::now();
    let bell = Arc::new(Bell::default());
    let sink = MemSink {
        accept: usize::MAX,
        ..MemSink::default()
    };
    let mut backend = ConsoleBackend::new(
        &pages,
        Kick(bell.clone()),
        sink,
        7,
        ConsoleConfig::default(),
        t0,
    )
    .unwrap();
    for i in 0..10_000u32 {
        let p = backend
            .handle_event(t0 + Duration::from_micros(u64::from(i)))
            .unwrap();
        assert!(!p.moved());
    }
    assert_eq!(bell.count(), 0, "notified the guest without work");
    assert_eq!(backend.stats().events, 10_000);
    assert!(backend.is_suspended(t0 + Duration::from_millis(10)));
    assert_eq!(backend.stats().suspensions, 1);
}

/// A guest that keeps its output ring full: within one period the back end reads at most the
/// byte budget, then suspends the console until the period ends (reported once per flood), and
/// resumes after it.
#[test]
fn hostile_output_flood_is_rate_limited_as_xenconsoled() {
    let pages = RingPages::new(0);
    let t0 = Instant::now();
    let limit = RateLimit {
        period: Duration::from_millis(200),
        events: 30,
        bytes: 10_000,
    };
    let config = ConsoleConfig {
        rate_limit: Some(limit),
        ..ConsoleConfig::default()
    };
    let mut backend = mem_backend(&pages, config, t0);
    let mut g = guest_of(&pages);
    let flood = pattern(OUT as usize, 12);
    let mut now = t0;
    let mut per_period = Vec::new();
    for _period in 0..5 {
        let start_bytes = backend.stats().out_bytes;
        let end = now + limit.period;
        while now < end {
            // The guest fills what room there is and kicks.
            let cons = g.page.load(ConsoleIndex::OutCons);
            let free = OUT - g.out_prod.wrapping_sub(cons);
            g.write_all(&flood[..free as usize], usize::MAX);
            backend.handle_event(now).unwrap();
            now += Duration::from_millis(1);
        }
        per_period.push(backend.stats().out_bytes - start_bytes);
        assert!(backend.is_suspended(now - Duration::from_millis(1)));
        assert_eq!(backend.resume_at(), Some(end));
    }
    for b in &per_period {
        assert!(
            *b <= limit.bytes,
            "read {b} bytes in one period, budget {}",
            limit.bytes
        );
        assert!(*b >= limit.bytes - u64::from(OUT), "starved: {b}");
    }
    let st = backend.stats();
    assert_eq!(st.suspensions, 5);
    assert_eq!(st.flood_reports, 1, "a continuous flood is reported once");
    // A calm period, then a new flood is reported again.
    now += limit.period * 3;
    backend.process(now).unwrap();
    for _ in 0..200 {
        let cons = g.page.load(ConsoleIndex::OutCons);
        let free = OUT - g.out_prod.wrapping_sub(cons);
        g.write_all(&flood[..free as usize], usize::MAX);
        backend.handle_event(now).unwrap();
        now += Duration::from_millis(1);
    }
    assert_eq!(backend.stats().flood_reports, 2);
}

/// The event budget alone: at 30 events the console is masked until the period ends, even if
/// each event brought only a byte.
#[test]
fn hostile_event_budget_masks_the_console_for_the_rest_of_the_period() {
    let pages = RingPages::new(0);
    let t0 = Instant::now();
    let mut backend = mem_backend(&pages, ConsoleConfig::default(), t0);
    let mut g = guest_of(&pages);
    for i in 0..30 {
        g.write_all(b"x", 1);
        let p = backend.handle_event(t0 + Duration::from_millis(i)).unwrap();
        assert_eq!(p.out, 1);
    }
    g.write_all(b"y", 1);
    let p = backend
        .handle_event(t0 + Duration::from_millis(31))
        .unwrap();
    assert_eq!(p.out, 0, "read while masked");
    assert_eq!(backend.resume_at(), Some(t0 + Duration::from_millis(200)));
    let p = backend.process(t0 + Duration::from_millis(200)).unwrap();
    assert_eq!(p.out, 1);
    assert_eq!(backend.sink().out.len(), 31);
}

/// A sink that takes nothing, with [`Overflow::Keep`]: the buffer stops at its limit and the
/// guest's ring stays full (the guest waits), no memory grows.
#[test]
fn hostile_stuck_sink_with_keep_back_pressures_the_guest() {
    let pages = RingPages::new(0);
    let config = ConsoleConfig {
        rate_limit: None,
        buffer_limit: 5000,
        overflow: Overflow::Keep,
    };
    let mut backend = mem_backend(&pages, config, Instant::now());
    backend.sink_mut().accept = 0;
    let mut g = guest_of(&pages);
    let data = pattern(5000 + OUT as usize, 13);
    let mut written = 0;
    for _ in 0..10 {
        let cons = g.page.load(ConsoleIndex::OutCons);
        let free = (OUT - g.out_prod.wrapping_sub(cons)) as usize;
        let n = free.min(data.len() - written);
        g.write_all(&data[written..written + n], usize::MAX);
        written += n;
        backend.process(Instant::now()).unwrap();
    }
    assert_eq!(backend.pending_output(), 5000);
    assert_eq!(written, data.len(), "the ring should be full");
    assert_eq!(
        g.out_prod.wrapping_sub(g.page.load(ConsoleIndex::OutCons)),
        OUT
    );
    // The sink drains: everything arrives, in order.
    backend.sink_mut().accept = usize::MAX;
    for _ in 0..3 {
        backend.process(Instant::now()).unwrap();
    }
    assert!(backend.sink().out == data);
}

/// A sink that takes nothing, with [`Overflow::Discard`] (xenconsoled's default): the guest never
/// waits; the buffer keeps its oldest and newest halves and counts what it dropped.
#[test]
fn hostile_stuck_sink_with_discard_keeps_oldest_and_newest() {
    let pages = RingPages::new(0);
    let config = ConsoleConfig {
        rate_limit: None,
        buffer_limit: 4000,
        overflow: Overflow::Discard,
    };
    let mut backend = mem_backend(&pages, config, Instant::now());
    backend.sink_mut().accept = 0;
    let mut g = guest_of(&pages);
    let data = pattern(20_000, 14);
    for part in data.chunks(1000) {
        g.write_all(part, usize::MAX);
        backend.process(Instant::now()).unwrap();
        assert!(backend.pending_output() <= 4000);
    }
    assert_eq!(backend.stats().discarded, 16_000);
    backend.sink_mut().accept = usize::MAX;
    backend.process(Instant::now()).unwrap();
    let out = &backend.sink().out;
    assert_eq!(out.len(), 4000);
    assert_eq!(&out[..2000], &data[..2000]);
    assert_eq!(&out[2000..], &data[18_000..]);
}

/// A guest that never consumes its input: the input ring fills to exactly its size and stays so;
/// what the sink has beyond that waits in the sink.
#[test]
fn hostile_guest_never_consumes_input() {
    let pages = RingPages::new(0);
    let mut backend = mem_backend(&pages, no_limit(), Instant::now());
    backend.sink_mut().input = pattern(10_000, 15);
    for _ in 0..20 {
        backend.process(Instant::now()).unwrap();
    }
    assert_eq!(backend.stats().in_bytes, u64::from(IN));
    assert_eq!(backend.page().load(ConsoleIndex::InProd), IN);
    assert_eq!(backend.sink().input.len(), 10_000 - IN as usize);
}

#[test]
fn page_too_small_or_bad_config_is_refused() {
    use xen_abi::ring::RawRingMemory;
    let mut small = vec![0u32; 16];
    // SAFETY: the vector outlives the memory value and is only accessed through it here.
    let mem = unsafe {
        RawRingMemory::new(
            std::ptr::NonNull::new(small.as_mut_ptr().cast()).unwrap(),
            64,
        )
    };
    let r = ConsoleBackend::new(
        mem,
        Kick(Arc::new(Bell::default())),
        MemSink::default(),
        1,
        no_limit(),
        Instant::now(),
    );
    assert!(matches!(
        r,
        Err(ConsoleError::PageTooSmall {
            len: 64,
            need: 3088
        })
    ));
    let pages = RingPages::new(0);
    let bad = ConsoleConfig {
        rate_limit: Some(RateLimit {
            bytes: 0,
            ..RateLimit::default()
        }),
        ..ConsoleConfig::default()
    };
    let r = ConsoleBackend::new(
        &pages,
        Kick(Arc::new(Bell::default())),
        MemSink::default(),
        1,
        bad,
        Instant::now(),
    );
    assert!(matches!(r, Err(ConsoleError::Config { .. })));
}
