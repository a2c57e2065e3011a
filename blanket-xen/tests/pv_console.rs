//! The console front-end against pv-backend's console back-end (xenconsoled's part, with its rate limit),
//! on a shared page of the emulated guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blanket_xen::console::ConsoleFront;
use blanket_xen::emulated::{BackendDomain, EmulatedXen};
use blanket_xen::platform::{EventChannels, Wake};
use pv_backend::console::{ConsoleBackend, ConsoleConfig, ConsoleSink, EventChannel, Overflow};

#[derive(Default)]
struct Collected {
    output: Vec<u8>,
    input: Vec<u8>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Collected>>);

impl ConsoleSink for Sink {
    fn write_output(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().output.extend_from_slice(data);
        Ok(data.len())
    }
    fn read_input(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut c = self.0.lock().unwrap();
        let n = buf.len().min(c.input.len());
        buf[..n].copy_from_slice(&c.input[..n]);
        c.input.drain(..n);
        Ok(n)
    }
}

struct ToGuest(BackendDomain, u32);
impl EventChannel for ToGuest {
    fn notify(&self) {
        let _ = self.0.notify(self.1);
    }
}

fn run(
    config: ConsoleConfig,
    f: impl FnOnce(&mut ConsoleFront<Arc<EmulatedXen>, xen_abi::ring::RawRingMemory>, &Sink),
) {
    let xen = EmulatedXen::new(1, 2, 1);
    let page = xen.alloc_pages(1).unwrap();
    let port = xen.alloc_unbound(0).unwrap();
    let back = BackendDomain::new(Arc::clone(&xen), 0);
    let local = back.bind_interdomain(port).unwrap();
    let sink = Sink::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (sink, stop, back) = (sink.clone(), Arc::clone(&stop), back.clone());
        std::thread::spawn(move || {
            let mut be = ConsoleBackend::new(
                page,
                ToGuest(back.clone(), local),
                sink,
                1,
                config,
                Instant::now(),
            )
            .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let wait = be.resume_at().map_or(Duration::from_millis(10), |at| {
                    at.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(10))
                });
                match back.wait(local, wait).unwrap() {
                    Wake::Event => be.handle_event(Instant::now()).unwrap(),
                    Wake::TimedOut => be.process(Instant::now()).unwrap(),
                };
            }
            be.stats()
        })
    };
    let mut con = ConsoleFront::new(Arc::clone(&xen), page, port, 2_000_000_000).unwrap();
    f(&mut con, &sink);
    stop.store(true, Ordering::Relaxed);
    back.kick_self(local).unwrap();
    t.join().unwrap();
}

fn wait_output(sink: &Sink, len: usize) -> Vec<u8> {
    let t0 = Instant::now();
    while sink.0.lock().unwrap().output.len() < len && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    sink.0.lock().unwrap().output.clone()
}

#[test]
fn output_and_input_through_pv_backends_console_backend() {
    run(
        ConsoleConfig {
            rate_limit: None,
            ..ConsoleConfig::default()
        },
        |con, sink| {
            let data: Vec<u8> = (0..20_000u32).map(|i| b' ' + (i % 90) as u8).collect();
            con.write_all(&data).unwrap();
            assert_eq!(wait_output(sink, data.len()), data);
            sink.0
                .lock()
                .unwrap()
                .input
                .extend_from_slice(b"typed input\n");
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < 12 {
                let n = con.read_wait(&mut buf, 2_000_000_000).unwrap();
                assert!(n > 0, "no input within 2 s");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"typed input\n");
        },
    );
}

#[test]
fn output_flood_under_xenconsoleds_rate_limit_loses_nothing() {
    // With the default limit (30 events or 60 KiB per 200 ms) the guest waits on a full ring; with
    // `Overflow::Keep` every byte arrives, in order.
    run(
        ConsoleConfig {
            overflow: Overflow::Keep,
            ..ConsoleConfig::default()
        },
        |con, sink| {
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            con.write_all(&data).unwrap();
            assert_eq!(wait_output(sink, data.len()), data);
        },
    );
}
