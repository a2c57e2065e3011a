//! Read and write operations per second over the Unix socket and over the guest ring, with one client
//! and with 100 clients. Each operation is a full round trip: request written, reply read.
//!
//! `cargo bench -p pv-backend --bench xenstore`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::xenstore::ring::{EventChannel, RingConnection, SharedXenstorePage};
use pv_backend::xenstore::server::{SharedStore, UnixServer, lock};
use pv_backend::xenstore::{ConnEvent, Notify, Quotas, XenStore};
use xen_abi::xs_wire::{FrameParser, OwnedMessage, XsPerm, XsType, input_chunk, output_chunk};

const CLIENTS: usize = 100;

fn message(ty: XsType, payload: &[u8]) -> Vec<u8> {
    OwnedMessage {
        msg_type: ty,
        req_id: 1,
        tx_id: 0,
        payload: payload.to_vec(),
    }
    .to_vec()
    .unwrap()
}

fn read_reply(s: &mut UnixStream, buf: &mut Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let len = u32::from_ne_bytes(h[12..16].try_into().unwrap()) as usize;
    buf.resize(len, 0);
    s.read_exact(buf).unwrap();
}

fn socket_server() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pv-backend-bench-{}.sock", std::process::id()));
    let store: SharedStore = Arc::new(Mutex::new(XenStore::new(Quotas::default())));
    let server = UnixServer::bind(&path, store).unwrap();
    std::thread::spawn(move || server.serve());
    path
}

/// `iters` round trips of `req` by each of `clients` socket clients at once.
fn socket_run(path: &std::path::Path, clients: usize, iters: u64, req: &[u8]) -> Duration {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, req, path) = (Arc::clone(&barrier), req.to_vec(), path.to_path_buf());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                let mut buf = Vec::new();
                barrier.wait();
                for _ in 0..iters {
                    s.write_all(&req).unwrap();
                    read_reply(&mut s, &mut buf);
                }
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    t0.elapsed()
}

#[derive(Default)]
struct Bell(Mutex<bool>, Condvar);

impl Bell {
    fn ring(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
    fn wait(&self) {
        let g = self.0.lock().unwrap();
        let (mut g, _) = self
            .1
            .wait_timeout_while(g, Duration::from_millis(10), |r| !*r)
            .unwrap();
        *g = false;
    }
}

struct Kick(Arc<Bell>);
impl EventChannel for Kick {
    fn notify(&self) {
        self.0.ring();
    }
}

/// A guest's side of a page: one request, then its reply.
struct Guest {
    page: Arc<SharedXenstorePage>,
    to_server: Arc<Bell>,
    from_server: Arc<Bell>,
    parser: FrameParser,
    req_prod: u32,
    rsp_cons: u32,
}

impl Guest {
    fn call(&mut self, req: &[u8]) {
        let cons = self.page.req_cons.load(Ordering::Acquire);
        let r = output_chunk(cons, self.req_prod).unwrap();
        let mut done = 0;
        // Requests are small: the ring has room once the previous reply arrived, in at most two
        // chunks.
        for _ in 0..2 {
            let cons = self.page.req_cons.load(Ordering::Acquire);
            let r2 = if done == 0 {
                r.clone()
            } else {
                output_chunk(cons, self.req_prod).unwrap()
            };
            let n = r2.len().min(req.len() - done);
            for (i, b) in req[done..done + n].iter().enumerate() {
                self.page.req[r2.start + i].store(*b, Ordering::Relaxed);
            }
            done += n;
            self.req_prod = self.req_prod.wrapping_add(n as u32);
            if done == req.len() {
                break;
            }
        }
        self.page.req_prod.store(self.req_prod, Ordering::Release);
        self.to_server.ring();
        loop {
            let prod = self.page.rsp_prod.load(Ordering::Acquire);
            let r = input_chunk(self.rsp_cons, prod).unwrap();
            if r.is_empty() {
                self.from_server.wait();
                continue;
            }
            let data: Vec<u8> = r
                .map(|i| self.page.rsp[i].load(Ordering::Relaxed))
                .collect();
            let (used, item) = self.parser.feed(&data);
            self.rsp_cons = self.rsp_cons.wrapping_add(used as u32);
            self.page.rsp_cons.store(self.rsp_cons, Ordering::Release);
            if item.is_some() {
                return;
            }
        }
    }
}

/// `n` guests on their own pages, all served by one server thread (as xenstored is one thread).
fn ring_setup(n: usize) -> (Vec<Guest>, Arc<AtomicBool>, Arc<Bell>) {
    let mut st = XenStore::new(Quotas::default());
    let d = st.connect(0, None);
    let to_server = Arc::new(Bell::default());
    let mut guests = Vec::new();
    let mut pages = Vec::new();
    for i in 0..n {
        let domid = i as u16 + 1;
        let home = format!("/local/domain/{domid}");
        st.mkdir(d, 0, home.as_bytes()).unwrap();
        st.set_perms(d, 0, home.as_bytes(), &[XsPerm::owner(domid)])
            .unwrap();
        st.write(d, 0, format!("{home}/key").as_bytes(), b"value")
            .unwrap();
        let page = Arc::new(SharedXenstorePage::default());
        let from_server = Arc::new(Bell::default());
        pages.push((domid, Arc::clone(&page), Arc::clone(&from_server)));
        guests.push(Guest {
            page,
            to_server: Arc::clone(&to_server),
            from_server,
            parser: FrameParser::new(),
            req_prod: 0,
            rsp_cons: 0,
        });
    }
    let store: SharedStore = Arc::new(Mutex::new(st));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, to_server) = (Arc::clone(&stop), Arc::clone(&to_server));
        std::thread::spawn(move || {
            let kick = Arc::clone(&to_server);
            let notify: Notify = Arc::new(move |_: ConnEvent| kick.ring());
            let mut rings: Vec<_> = pages
                .iter()
                .map(|(domid, page, bell)| {
                    RingConnection::new(
                        &mut lock(&store),
                        *domid,
                        page,
                        Kick(Arc::clone(bell)),
                        Some(Arc::clone(&notify)),
                    )
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                let mut st = lock(&store);
                let mut moved = false;
                for r in &mut rings {
                    moved |= r.process(&mut st).unwrap();
                }
                drop(st);
                if !moved {
                    to_server.wait();
                }
            }
        });
    }
    (guests, stop, to_server)
}

fn ring_run(guests: &mut [Guest], iters: u64, req: &[u8]) -> Duration {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for g in guests.iter_mut() {
            s.spawn(move || {
                for _ in 0..iters {
                    g.call(req);
                }
            });
        }
    });
    t0.elapsed()
}

fn bench(c: &mut Criterion) {
    let path = socket_server();
    {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&message(XsType::Write, b"/bench/key\0value"))
            .unwrap();
        read_reply(&mut s, &mut Vec::new());
    }
    let read = message(XsType::Read, b"/bench/key\0");
    let write = message(XsType::Write, b"/bench/key\0value");
    let mut g = c.benchmark_group("xenstore");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, req) in [("read", &read), ("write", &write)] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("socket_{name}_1_client"), |b| {
            b.iter_custom(|iters| socket_run(&path, 1, iters, req))
        });
        g.throughput(Throughput::Elements(CLIENTS as u64));
        g.bench_function(format!("socket_{name}_{CLIENTS}_clients"), |b| {
            b.iter_custom(|iters| socket_run(&path, CLIENTS, iters, req))
        });
    }
    let ring_read = message(XsType::Read, b"key\0");
    let ring_write = message(XsType::Write, b"key\0value");
    for (clients, name, req) in [
        (1, "read", &ring_read),
        (1, "write", &ring_write),
        (CLIENTS, "read", &ring_read),
        (CLIENTS, "write", &ring_write),
    ] {
        let (mut guests, stop, bell) = ring_setup(clients);
        g.throughput(Throughput::Elements(clients as u64));
        g.bench_function(format!("ring_{name}_{clients}_client(s)"), |b| {
            b.iter_custom(|iters| ring_run(&mut guests, iters, req))
        });
        stop.store(true, Ordering::Relaxed);
        bell.ring();
    }
    g.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, bench);
criterion_main!(benches);
