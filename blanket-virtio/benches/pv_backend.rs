//! Criterion benchmark of the pv-backend bridge (feature `pv-backend`): 4 KiB random reads at
//! queue depths 1 and 32 from a blkif front end (pv-backend's `test-utils` one) through blkback
//! and [`VirtioBlock`] to `qemu-storage-daemon`'s vhost-user-blk export of a `null-co` device,
//! against [`BlkDriver`] driving the same daemon directly, in the same run.
//!
//! Variants, one after the other on the socket (the export serves one front-end at a time):
//! - `direct`: `BlkDriver` alone, waiting with `BlkDriver::wait` (`EVENT_IDX` on, its default);
//! - `bridge-zero-copy`: front end -> blkback -> bridge, the guest's memory a memfd registered as
//!   a foreign region (the descriptors point at the granted guest pages);
//! - `bridge-bounce`: the same with anonymous guest memory, through the bounce pool (one copy);
//! - `bridge-relay`: `bridge-zero-copy` with `BridgeOptions::direct_doorbell` off: the
//!   daemon's notifications go to the bridge's relay thread, which rings blkback's doorbell,
//!   instead of to the doorbell's eventfd itself;
//! - `blkback-mem`: for scale, the same front end and blkback over pv-backend's in-memory disk
//!   (`MemDevice`) instead of the bridge: what the front end and blkback cost without the device.
//!
//! At the end it prints a table: IOPS of each variant (median of interleaved rounds, each
//! running every variant for `BLANKET_BENCH_ROUND_MS`, default 300 ms) and the ratios
//! bridge/direct, zero-copy/bounce and zero-copy/relay, taken within each round.
//!
//! `cargo bench -p blanket-virtio --features pv-backend --bench pv_backend`; skipped when the
//! daemon is not installed. `BLANKET_BENCH_SECS` sets criterion's measurement time (default 2).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blanket_virtio::blk::{BlkCompletion, BlkDriver, BlkOptions, DataBuf, Request, Status};
use blanket_virtio::memory::{DmaMemory, ForeignRegion};
use blanket_virtio::pv_backend::{BridgeOptions, VirtioBlock, ZeroCopyRange};
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::backend::{GrantAccess, LocalEventChannels};
use pv_backend::blk::front::{BackendThread, BlkFront, FrontOptions, TestGuest, add_vbd};
use pv_backend::blk::{BlkBack, BlkConfig};
use pv_backend::xenstore::XenStore;
use pv_backend::xenstore::server::SharedStore;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use xen_abi::blkif::{BLKIF_OP_READ, BLKIF_RSP_OKAY};

const DISK_BYTES: u64 = 256 << 20;
const BLOCK: usize = 4096;
const DEPTHS: [usize; 2] = [1, 32];
const GUEST_PAGES: u32 = 2048;
const GUEST_BYTES: usize = GUEST_PAGES as usize * 4096;
const VARIANTS: [&str; 5] = [
    "direct",
    "bridge-zero-copy",
    "bridge-bounce",
    "blkback-mem",
    "bridge-relay",
];

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

fn start() -> Option<Daemon> {
    let dir = tempfile::tempdir().ok()?;
    let sock = dir.path().join("blk.sock");
    let child = Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &format!("driver=null-co,node-name=disk0,size={DISK_BYTES},read-zeroes=on"),
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

/// Random 4 KiB-aligned sectors (xorshift), the same sequence for every variant.
struct Sectors(u64);

impl Sectors {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (DISK_BYTES / BLOCK as u64)) * (BLOCK as u64 / 512)
    }
}

/// Something that runs `n` reads at `depth` and says how long they took.
trait Runner {
    fn run(&mut self, depth: usize, n: u64, s: &mut Sectors) -> Duration;
}

struct Direct {
    disk: BlkDriver<VhostUserTransport>,
    bufs: Vec<DataBuf>,
    out: Vec<BlkCompletion>,
}

impl Direct {
    fn connect(d: &Daemon) -> Self {
        let mem = Arc::new(DmaMemory::new(16 << 20).expect("memory"));
        let t = VhostUserTransport::connect(&d.sock, mem.clone()).expect("connect");
        let disk = BlkDriver::new(t, BlkOptions::default()).expect("driver");
        let bufs = (0..32)
            .map(|_| DataBuf {
                addr: mem.alloc(BLOCK as u64).expect("alloc"),
                len: BLOCK as u32,
            })
            .collect();
        Self {
            disk,
            bufs,
            out: Vec::new(),
        }
    }
}

impl Runner for Direct {
    fn run(&mut self, depth: usize, n: u64, s: &mut Sectors) -> Duration {
        let t0 = Instant::now();
        let (mut submitted, mut done) = (0u64, 0u64);
        let mut free: Vec<usize> = (0..depth).collect();
        while done < n {
            while submitted < n && !free.is_empty() {
                let slot = free.pop().unwrap_or(0);
                let req = Request::Read {
                    sector: s.next(),
                    bufs: std::slice::from_ref(&self.bufs[slot]),
                };
                self.disk.submit(0, &req, slot as u64).expect("submit");
                submitted += 1;
            }
            self.disk.kick(0).expect("kick");
            self.out.clear();
            self.disk.wait(0, &mut self.out).expect("wait");
            for c in &self.out {
                assert_eq!(c.status, Status::Ok);
                free.push(c.tag as usize);
                done += 1;
            }
        }
        t0.elapsed()
    }
}

struct Bridged {
    front: BlkFront,
    _back: BackendThread,
}

fn memfd(len: usize) -> File {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len as u64).expect("memfd size");
    f
}

impl Bridged {
    fn on_memory() -> Self {
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let guest = TestGuest::new(5, 0, GUEST_PAGES, 8);
        let dev = Arc::new(pv_backend::blk::MemDevice::new(DISK_BYTES, 512));
        let paths = add_vbd(&store, 5, 51712);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
        let blk = BlkBack::new(grants, evtchns.clone(), dev, BlkConfig::default());
        let back = BackendThread::spawn(&store, &paths.backend, blk);
        let front = BlkFront::connect(guest, &store, evtchns, paths, FrontOptions::default());
        Self { front, _back: back }
    }

    fn connect(d: &Daemon, zero_copy: bool, direct_doorbell: bool) -> Self {
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let (guest, mem, bridge) = if zero_copy {
            let file = memfd(GUEST_BYTES);
            let gmem = GuestMemoryMmap::<()>::from_ranges_with_files(vec![(
                GuestAddress(0),
                GUEST_BYTES,
                Some(FileOffset::new(file.try_clone().expect("dup"), 0)),
            )])
            .expect("guest memory");
            let guest = TestGuest::with_memory(5, 0, gmem, 8);
            let region = ForeignRegion {
                addr: GuestAddress(0),
                file,
                offset: 0,
                size: GUEST_BYTES,
            };
            let mem = DmaMemory::with_foreign_regions(8 << 20, vec![region]).expect("memory");
            let host = NonNull::new(guest.page_ptr(0)).expect("guest memory");
            let bridge = BridgeOptions {
                zero_copy: vec![ZeroCopyRange::new(host, GUEST_BYTES, GuestAddress(0))],
                bounce_chunks: 0,
                direct_doorbell,
                ..BridgeOptions::default()
            };
            (guest, mem, bridge)
        } else {
            let guest = TestGuest::new(5, 0, GUEST_PAGES, 8);
            (
                guest,
                DmaMemory::new(16 << 20).expect("memory"),
                BridgeOptions::default(),
            )
        };
        let t = VhostUserTransport::connect(&d.sock, Arc::new(mem)).expect("connect");
        let options = BlkOptions {
            event_idx: false,
            ..BlkOptions::default()
        };
        let driver = BlkDriver::new(t, options).expect("driver");
        let dev = Arc::new(VirtioBlock::new(driver, bridge).expect("bridge"));
        let paths = add_vbd(&store, 5, 51712);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
        let blk = BlkBack::new(grants, evtchns.clone(), dev, BlkConfig::default());
        let back = BackendThread::spawn(&store, &paths.backend, blk);
        let front = BlkFront::connect(guest, &store, evtchns, paths, FrontOptions::default());
        Self { front, _back: back }
    }
}

impl Runner for Bridged {
    fn run(&mut self, depth: usize, n: u64, s: &mut Sectors) -> Duration {
        let t0 = Instant::now();
        let (mut submitted, mut done) = (0u64, 0u64);
        // Each request in flight reads into its own page of the front end's buffer.
        let mut free: VecDeque<usize> = (0..depth).collect();
        let mut page_of = std::collections::HashMap::new();
        while done < n {
            let mut put = false;
            while submitted < n && !free.is_empty() {
                let page = free.pop_front().unwrap_or(0);
                let segs = self.front.segments(page, BLOCK);
                let ids = self.front.queue_rw(0, BLKIF_OP_READ, s.next(), &segs);
                page_of.insert(ids[0], page);
                submitted += 1;
                put = true;
            }
            if put {
                self.front.kick(0);
            }
            for r in self.front.wait(0, 1, Duration::from_secs(5)) {
                assert_eq!(r.status, BLKIF_RSP_OKAY, "read failed");
                free.push_back(page_of.remove(&r.id).unwrap_or(0));
                done += 1;
            }
        }
        t0.elapsed()
    }
}

/// Connects variant `v` (dropping the previous connection first: one front-end at a time).
fn connect(d: &Daemon, v: &str) -> Box<dyn Runner> {
    // The bridge's relay thread lets go of its copy of the socket within 50 ms of the drop.
    std::thread::sleep(Duration::from_millis(120));
    match v {
        "direct" => Box::new(Direct::connect(d)),
        "bridge-zero-copy" => Box::new(Bridged::connect(d, true, true)),
        "bridge-relay" => Box::new(Bridged::connect(d, true, false)),
        "blkback-mem" => Box::new(Bridged::on_memory()),
        _ => Box::new(Bridged::connect(d, false, true)),
    }
}

fn iops(r: &mut dyn Runner, depth: usize, for_ms: u64) -> f64 {
    let mut s = Sectors(0x9e37_79b9_7f4a_7c15);
    r.run(depth, 200, &mut s);
    let (mut n, mut t) = (0u64, Duration::ZERO);
    while t < Duration::from_millis(for_ms) {
        t += r.run(depth, 1000, &mut s);
        n += 1000;
    }
    n as f64 / t.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let Some(d) = start() else {
        eprintln!("skipping: qemu-storage-daemon not installed (Debian qemu-utils)");
        return;
    };
    let secs = std::env::var("BLANKET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut g = c.benchmark_group("pv-backend-bridge/null-co/randread-4k");
    g.measurement_time(Duration::from_secs(secs))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(10)
        .throughput(Throughput::Elements(1));
    for depth in DEPTHS {
        for v in VARIANTS {
            let mut r = connect(&d, v);
            let mut s = Sectors(0x2545_f491_4f6c_dd1d);
            g.bench_function(BenchmarkId::new(v, format!("qd{depth}")), |b| {
                b.iter_custom(|n| r.run(depth, n, &mut s))
            });
        }
    }
    g.finish();

    let round_ms = std::env::var("BLANKET_BENCH_ROUND_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    println!("\npv-backend bridge, null-co, 4 KiB random reads: median of 5 interleaved rounds");
    println!(
        "{:<6} {:>10} {:>17} {:>14} {:>12} {:>13} {:>10} {:>14} {:>17} {:>16} {:>9}",
        "depth",
        "direct",
        "bridge-zero-copy",
        "bridge-bounce",
        "blkback-mem",
        "bridge-relay",
        "zc/direct",
        "bounce/direct",
        "zero-copy/bounce",
        "zc/blkback-mem",
        "zc/relay"
    );
    for depth in DEPTHS {
        let mut each: [Vec<f64>; 5] = Default::default();
        let mut ratios: [Vec<f64>; 5] = Default::default();
        for _ in 0..5 {
            let mut round = [0.0; 5];
            for (i, v) in VARIANTS.iter().enumerate() {
                let mut r = connect(&d, v);
                round[i] = iops(r.as_mut(), depth, round_ms);
                each[i].push(round[i]);
            }
            ratios[0].push(round[1] / round[0]);
            ratios[1].push(round[2] / round[0]);
            ratios[2].push(round[1] / round[2]);
            ratios[3].push(round[1] / round[3]);
            ratios[4].push(round[1] / round[4]);
        }
        println!(
            "{:<6} {:>9.1}k {:>16.1}k {:>13.1}k {:>11.1}k {:>12.1}k {:>10.2} {:>14.2} {:>17.2} {:>16.2} {:>9.2}",
            depth,
            median(&mut each[0]) / 1e3,
            median(&mut each[1]) / 1e3,
            median(&mut each[2]) / 1e3,
            median(&mut each[3]) / 1e3,
            median(&mut each[4]) / 1e3,
            median(&mut ratios[0]),
            median(&mut ratios[1]),
            median(&mut ratios[2]),
            median(&mut ratios[3]),
            median(&mut ratios[4]),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
