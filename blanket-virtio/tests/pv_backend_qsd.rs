//! pv-backend's blkback over this crate's virtio-blk driver, against the real `qemu-storage-daemon`
//! (Debian `qemu-utils`): a blkif front end (pv-backend's `test-utils` one) -> blkback ->
//! `VirtioBlock` -> `BlkDriver` -> a vhost-user-blk export of a raw image file. What the front end
//! writes is in the image, what `qemu-io` wrote the front end reads, flush and discard take effect,
//! and killing the daemon during I/O gives the front end `BLKIF_RSP_ERROR`, not a hang. Skipped,
//! with a message, when the tools are missing.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blanket_virtio::blk::{BlkDriver, BlkOptions};
use blanket_virtio::memory::{DmaMemory, ForeignRegion};
use blanket_virtio::pv_backend::{BridgeError, BridgeOptions, VirtioBlock, ZeroCopyRange};
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use pv_backend::backend::{GrantAccess, LocalEventChannels, XsHandle};
use pv_backend::blk::front::{BackendThread, BlkFront, FrontOptions, TestGuest, add_vbd};
use pv_backend::blk::{BlkBack, BlkConfig, BlockDevice};
use pv_backend::xenstore::XenStore;
use pv_backend::xenstore::server::SharedStore;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use xen_abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY, BlkifRequest, BlkifRequestDiscard,
};

const DAEMON: &str = "qemu-storage-daemon";
const IMAGE_BYTES: u64 = 16 << 20;
const GUEST_PAGES: u32 = 2048;
const GUEST_BYTES: usize = GUEST_PAGES as usize * 4096;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// qemu-storage-daemon exporting a raw image, in a temporary directory; killed when dropped.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    num_queues: u16,
    writable: bool,
}

impl Daemon {
    /// Creates the image (`prepare` may fill it with qemu-io) and exports it with `num_queues`.
    fn start(num_queues: u16, writable: bool, prepare: impl FnOnce(&Path)) -> Option<Self> {
        if !have(DAEMON) || !have("qemu-io") || !have("qemu-img") {
            eprintln!("skipping: {DAEMON}, qemu-io or qemu-img not installed (Debian qemu-utils)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let size = IMAGE_BYTES.to_string();
        run(
            "qemu-img",
            &["create", "-q", "-f", "raw", path(&img), &size],
        );
        prepare(&img);
        let sock = dir.path().join("vhost-user-blk.sock");
        let child = Self::spawn(&img, &sock, num_queues, writable);
        let mut d = Self {
            child,
            dir,
            sock,
            num_queues,
            writable,
        };
        d.wait_for_socket();
        Some(d)
    }

    fn spawn(img: &Path, sock: &Path, num_queues: u16, writable: bool) -> Child {
        Command::new(DAEMON)
            .args([
                "--blockdev",
                &format!(
                    "driver=file,node-name=file0,filename={},discard=unmap,cache.direct=off",
                    path(img)
                ),
                "--export",
                &format!(
                    "type=vhost-user-blk,id=exp0,node-name=file0,writable={},\
                     num-queues={num_queues},addr.type=unix,addr.path={}",
                    if writable { "on" } else { "off" },
                    path(sock)
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.sock.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{DAEMON} exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "{DAEMON} made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon and starts a new one on the same image and socket path `pause` later.
    fn restart_after(&mut self, pause: Duration) {
        self.kill();
        std::thread::sleep(pause);
        let _ = std::fs::remove_file(&self.sock);
        self.child = Self::spawn(&self.image(), &self.sock, self.num_queues, self.writable);
        self.wait_for_socket();
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn memfd(len: usize) -> File {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len as u64).unwrap();
    f
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The whole stack: a guest, blkback on a thread over the bridge, a connected front end.
struct Stack {
    front: BlkFront,
    dev: Arc<VirtioBlock<VhostUserTransport>>,
    _back: BackendThread,
    _guest: Arc<TestGuest>,
}

/// Builds the stack on `d`. With `zero_copy`, the guest's memory is a memfd that the driver maps
/// as a foreign region and the bounce pool is empty, so only zero-copy requests can work.
fn stack(d: &Daemon, zero_copy: bool, bridge: BridgeOptions, front_queues: Option<u32>) -> Stack {
    stack_with(d, zero_copy, bridge, front_queues, None)
}

/// [`stack`], with the driver's `BlkOptions::reconnect`.
fn stack_with(
    d: &Daemon,
    zero_copy: bool,
    bridge: BridgeOptions,
    front_queues: Option<u32>,
    reconnect: Option<Duration>,
) -> Stack {
    let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
    let evtchns = LocalEventChannels::new();
    let domid = 7;
    let (guest, mem, bridge) = if zero_copy {
        let file = memfd(GUEST_BYTES);
        let gmem = GuestMemoryMmap::<()>::from_ranges_with_files(vec![(
            GuestAddress(0),
            GUEST_BYTES,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let guest = TestGuest::with_memory(domid, 0, gmem, 8);
        let mem = DmaMemory::with_foreign_regions(
            8 << 20,
            vec![ForeignRegion {
                addr: GuestAddress(0),
                file,
                offset: 0,
                size: GUEST_BYTES,
            }],
        )
        .unwrap();
        let host = NonNull::new(guest.page_ptr(0)).unwrap();
        let bridge = BridgeOptions {
            zero_copy: vec![ZeroCopyRange::new(host, GUEST_BYTES, GuestAddress(0))],
            bounce_chunks: 0,
            ..bridge
        };
        (guest, mem, bridge)
    } else {
        let guest = TestGuest::new(domid, 0, GUEST_PAGES, 8);
        (guest, DmaMemory::new(16 << 20).unwrap(), bridge)
    };
    let t = VhostUserTransport::connect(&d.sock, Arc::new(mem)).unwrap();
    let driver = BlkDriver::new(
        t,
        BlkOptions {
            event_idx: false,
            num_queues: 4,
            reconnect,
            ..BlkOptions::default()
        },
    )
    .unwrap();
    let dev = Arc::new(VirtioBlock::new(driver, bridge).unwrap());
    let paths = add_vbd(&store, domid, 51712);
    let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
    let blk = BlkBack::new(grants, evtchns.clone(), dev.clone(), BlkConfig::default());
    let back = BackendThread::spawn(&store, &paths.backend, blk);
    let front = BlkFront::connect(
        guest.clone(),
        &store,
        evtchns,
        paths,
        FrontOptions {
            queues: front_queues,
            ..FrontOptions::default()
        },
    );
    assert_eq!(
        front.backend_state(),
        xen_abi::xenbus::XenbusState::Connected,
        "blkback did not connect: {:?}",
        front.backend_error()
    );
    Stack {
        front,
        dev,
        _back: back,
        _guest: guest,
    }
}

fn all_ok(st: &[i16]) -> bool {
    !st.is_empty() && st.iter().all(|&s| s == BLKIF_RSP_OKAY)
}

fn image_bytes(d: &Daemon, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    File::open(d.image())
        .unwrap()
        .read_exact_at(&mut v, offset)
        .unwrap();
    v
}

fn flush(front: &mut BlkFront) -> i16 {
    let id = front.next_id();
    let req = BlkifRequest::new(BLKIF_OP_FLUSH_DISKCACHE, 0, id, 0);
    front.roundtrip(0, &req).expect("flush response").status
}

/// Front-end writes, one page and an indirect 1 MiB, are in the image byte for byte; what qemu-io
/// wrote reads back through the front end.
fn round_trip(zero_copy: bool) {
    let Some(d) = Daemon::start(1, true, |img| {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0xcd 8M 64k", path(img)],
        );
    }) else {
        return;
    };
    let mut s = stack(&d, zero_copy, BridgeOptions::default(), None);
    let info = s.dev.info();
    assert_eq!(info.size, IMAGE_BYTES);
    assert!(info.flush && info.discard && !info.read_only);

    let page = pattern(1, 4096);
    assert!(all_ok(&s.front.write(8, &page)));
    let big = pattern(2, 1 << 20);
    assert!(all_ok(&s.front.write(4096, &big)), "1 MiB indirect write");
    assert_eq!(flush(&mut s.front), BLKIF_RSP_OKAY);
    assert_eq!(
        image_bytes(&d, 8 * 512, 4096),
        page,
        "the page is in the image"
    );
    assert!(
        image_bytes(&d, 4096 * 512, 1 << 20) == big,
        "the 1 MiB write is in the image"
    );

    let mut back = vec![0u8; 1 << 20];
    assert!(all_ok(&s.front.read(4096, &mut back)));
    assert!(back == big, "the 1 MiB reads back identical");
    let mut q = vec![0u8; 128 << 10];
    assert!(all_ok(&s.front.read((8 << 20) / 512 - 64, &mut q)));
    assert!(q[..32 << 10].iter().all(|&b| b == 0));
    assert!(
        q[32 << 10..96 << 10].iter().all(|&b| b == 0xcd),
        "qemu-io's data"
    );
    assert!(q[96 << 10..].iter().all(|&b| b == 0));
    assert!(s.dev.broken().is_none());
}

#[test]
fn zero_copy_front_end_data_is_in_the_image_and_reads_back() {
    round_trip(true);
}

#[test]
fn bounced_front_end_data_is_in_the_image_and_reads_back() {
    round_trip(false);
}

#[test]
fn zero_copy_range_outside_the_drivers_memory_is_refused() {
    let Some(d) = Daemon::start(1, true, |_| {}) else {
        return;
    };
    let t =
        VhostUserTransport::connect(&d.sock, Arc::new(DmaMemory::new(4 << 20).unwrap())).unwrap();
    let opts = BlkOptions {
        event_idx: false,
        ..BlkOptions::default()
    };
    let driver = BlkDriver::new(t, opts).unwrap();
    let mut page = vec![0u8; 4096];
    let bad = BridgeOptions {
        zero_copy: vec![ZeroCopyRange::new(
            NonNull::new(page.as_mut_ptr()).unwrap(),
            4096,
            GuestAddress(0),
        )],
        ..BridgeOptions::default()
    };
    assert!(matches!(
        VirtioBlock::new(driver, bad),
        Err(BridgeError::ZeroCopyRange { addr: 0, len: 4096 })
    ));
    // And a driver with EVENT_IDX is refused, saying how to build it.
    let t = VhostUserTransport::connect(&d.sock, Arc::new(DmaMemory::new(4 << 20).unwrap()));
    if let Ok(t) = t {
        let driver = BlkDriver::new(t, BlkOptions::default()).unwrap();
        let e = VirtioBlock::new(driver, BridgeOptions::default()).unwrap_err();
        assert!(matches!(e, BridgeError::EventIdx(_)), "{e}");
    }
}

#[test]
fn flush_and_discard_take_effect_in_the_image() {
    let Some(d) = Daemon::start(1, true, |img| {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0xee 0 4M", path(img)],
        );
    }) else {
        return;
    };
    let mut s = stack(&d, true, BridgeOptions::default(), None);
    let blocks_before = std::fs::metadata(d.image()).unwrap().blocks();
    // Discard 1 MiB..3 MiB.
    let id = s.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 2048, 4096, 0).to_request();
    let rsp = s.front.roundtrip(0, &req).expect("discard response");
    assert_eq!(
        (rsp.status, rsp.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_DISCARD)
    );
    // A write, then a flush: the data is in the file.
    let data = pattern(3, 8192);
    assert!(all_ok(&s.front.write(16, &data)));
    assert_eq!(flush(&mut s.front), BLKIF_RSP_OKAY);
    assert_eq!(image_bytes(&d, 16 * 512, 8192), data);
    let blocks_after = std::fs::metadata(d.image()).unwrap().blocks();
    assert!(
        blocks_after * 512 + (2 << 20) <= blocks_before * 512,
        "the discarded 2 MiB are a hole in the image: {blocks_before} -> {blocks_after} blocks"
    );
    assert!(image_bytes(&d, 1 << 20, 2 << 20).iter().all(|&b| b == 0));
    assert!(image_bytes(&d, 3 << 20, 1 << 20).iter().all(|&b| b == 0xee));
    let mut back = vec![0xffu8; 1 << 20];
    assert!(all_ok(&s.front.read(2048, &mut back)));
    assert!(
        back.iter().all(|&b| b == 0),
        "discarded sectors read as zeroes"
    );
}

#[test]
fn discard_as_write_zeroes_reads_back_zeroes() {
    let Some(d) = Daemon::start(1, true, |img| {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0xee 0 1M", path(img)],
        );
    }) else {
        return;
    };
    let opts = BridgeOptions {
        discard_as_write_zeroes: true,
        ..BridgeOptions::default()
    };
    let mut s = stack(&d, false, opts, None);
    let id = s.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 8, 24, 0).to_request();
    assert_eq!(s.front.roundtrip(0, &req).unwrap().status, BLKIF_RSP_OKAY);
    assert_eq!(flush(&mut s.front), BLKIF_RSP_OKAY);
    let img = image_bytes(&d, 0, 64 * 512);
    assert!(img[..8 * 512].iter().all(|&b| b == 0xee));
    assert!(img[8 * 512..32 * 512].iter().all(|&b| b == 0), "zeroed");
    assert!(img[32 * 512..].iter().all(|&b| b == 0xee));
}

#[test]
fn read_only_export_is_a_read_only_vbd() {
    let Some(d) = Daemon::start(1, false, |img| {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0x42 0 4k", path(img)],
        );
    }) else {
        return;
    };
    let mut s = stack(&d, true, BridgeOptions::default(), None);
    assert!(s.dev.info().read_only);
    let mode = s
        .front
        .xs
        .read(&format!("{}/mode", s.front.paths.backend))
        .ok()
        .flatten();
    eprintln!(
        "mode {:?}",
        mode.map(|m| String::from_utf8_lossy(&m).into_owned())
    );
    let mut back = vec![0u8; 4096];
    assert!(all_ok(&s.front.read(0, &mut back)));
    assert!(back.iter().all(|&b| b == 0x42));
    let st = s.front.write(0, &[1u8; 4096]);
    assert!(
        st.iter().all(|&s| s == BLKIF_RSP_ERROR),
        "write to a read-only vbd: {st:?}"
    );
    assert!(image_bytes(&d, 0, 4096).iter().all(|&b| b == 0x42));
}

/// Two blkback queues on a two-queue device get a virtqueue each; three share them.
fn multi_queue(front_queues: u32) {
    let Some(d) = Daemon::start(2, true, |_| {}) else {
        return;
    };
    let mut s = stack(&d, true, BridgeOptions::default(), Some(front_queues));
    assert_eq!(s.dev.with_driver(|d| d.num_queues()), 2);
    // A virtqueue with one blkback queue signals its doorbell directly; a shared one (queues
    // 0 and 2 on virtqueue 0) goes through the relay thread.
    assert_eq!(s.dev.signals_doorbell_directly(0), front_queues == 2);
    assert!(s.dev.signals_doorbell_directly(1));
    assert_eq!(s.front.queues.len(), front_queues as usize);
    let mut ids = Vec::new();
    for q in 0..front_queues as usize {
        // Page q*8.. of the buffer, to sector 1000*q.
        s.front.guest.write(
            s.front.buf_frame + q as u32 * 8,
            0,
            &pattern(10 + q as u64, 4096),
        );
        let segs = s.front.segments(q * 8, 4096);
        ids.push(s.front.queue_rw(q, BLKIF_OP_WRITE, 1000 * q as u64, &segs));
        s.front.kick(q);
    }
    for q in 0..front_queues as usize {
        let r = s.front.wait(q, 1, Duration::from_secs(5));
        assert_eq!(r.len(), 1, "queue {q} answered");
        assert_eq!(
            r[0].status,
            BLKIF_RSP_OKAY,
            "queue {q}: {:?}",
            s.dev.broken()
        );
    }
    assert_eq!(flush(&mut s.front), BLKIF_RSP_OKAY);
    for q in 0..front_queues as usize {
        assert_eq!(
            image_bytes(&d, 1000 * 512 * q as u64, 4096),
            pattern(10 + q as u64, 4096),
            "queue {q}'s write is in the image"
        );
    }
}

#[test]
fn two_blkback_queues_on_two_virtqueues() {
    multi_queue(2);
}

#[test]
fn three_blkback_queues_share_two_virtqueues() {
    multi_queue(3);
}

#[test]
fn killing_the_daemon_mid_io_gives_blkif_rsp_error() {
    let Some(mut d) = Daemon::start(1, true, |_| {}) else {
        return;
    };
    let mut s = stack(&d, true, BridgeOptions::default(), None);
    assert!(s.dev.signals_doorbell_directly(0));
    assert!(all_ok(&s.front.write(0, &[0x11; 4096])));
    // A full ring of 64 KiB reads, then the daemon dies under them.
    let n = s.front.free(0) as usize;
    let mut ids = Vec::new();
    for i in 0..n {
        let segs = s.front.segments(0, 64 << 10);
        ids.extend(
            s.front
                .queue_rw(0, BLKIF_OP_READ, (i as u64 * 128) % 30000, &segs),
        );
    }
    s.front.kick(0);
    d.kill();
    let start = Instant::now();
    let rsps = s.front.wait(0, ids.len(), Duration::from_secs(10));
    assert_eq!(
        rsps.len(),
        ids.len(),
        "every request was answered (no hang) in {:?}",
        start.elapsed()
    );
    assert!(
        rsps.iter()
            .all(|r| r.status == BLKIF_RSP_OKAY || r.status == BLKIF_RSP_ERROR)
    );
    // Whatever was still in flight failed; from now on every request fails at once.
    let later = s.front.write(0, &[0x22; 4096]);
    assert!(
        !later.is_empty() && later.iter().all(|&st| st == BLKIF_RSP_ERROR),
        "a write after the daemon died: {later:?}"
    );
    let errors = rsps.iter().filter(|r| r.status == BLKIF_RSP_ERROR).count();
    eprintln!(
        "{errors} of {} requests in flight failed when the daemon died; broken: {:?}",
        rsps.len(),
        s.dev.broken()
    );
    assert!(s.dev.broken().is_some());
    assert_eq!(flush(&mut s.front), BLKIF_RSP_ERROR);
}

#[test]
fn the_daemon_wakes_blkback_itself_at_depth_1() {
    // One request at a time: blkback sleeps on its doorbell while each is at the daemon, and
    // the daemon's SET_VRING_CALL eventfd is the doorbell's, so its notification wakes blkback.
    // A lost wake-up would cost blkback's 200 ms sleep per request (40 s for these 200).
    let Some(mut d) = Daemon::start(1, true, |_| {}) else {
        return;
    };
    let mut s = stack(&d, true, BridgeOptions::default(), None);
    assert!(s.dev.signals_doorbell_directly(0));
    let data = pattern(3, 4096);
    let st = s.front.write(8, &data);
    assert!(all_ok(&st), "{st:?}: {:?}", s.dev.broken());
    let start = Instant::now();
    let mut back = vec![0u8; 4096];
    for _ in 0..200 {
        assert!(all_ok(&s.front.read(8, &mut back)));
        assert_eq!(back, data);
    }
    let took = start.elapsed();
    eprintln!("200 reads at depth 1 in {took:?}");
    assert!(took < Duration::from_secs(10), "200 reads took {took:?}");
    // With nothing in flight and blkback asleep, the daemon dies: the next request fails.
    d.kill();
    std::thread::sleep(Duration::from_millis(300));
    let st = s.front.write(8, &data);
    assert!(
        !st.is_empty() && st.iter().all(|&x| x == BLKIF_RSP_ERROR),
        "a write after the daemon died: {st:?}"
    );
    assert!(s.dev.broken().is_some());
}

#[test]
fn without_the_direct_doorbell_the_relay_thread_serves() {
    let Some(mut d) = Daemon::start(1, true, |_| {}) else {
        return;
    };
    let opts = BridgeOptions {
        direct_doorbell: false,
        ..BridgeOptions::default()
    };
    let mut s = stack(&d, true, opts, None);
    assert!(!s.dev.signals_doorbell_directly(0));
    let data = pattern(4, 4096);
    assert!(all_ok(&s.front.write(16, &data)));
    let mut back = vec![0u8; 4096];
    for _ in 0..50 {
        assert!(all_ok(&s.front.read(16, &mut back)));
        assert_eq!(back, data);
    }
    d.kill();
    std::thread::sleep(Duration::from_millis(300));
    let st = s.front.write(16, &data);
    assert!(!st.is_empty() && st.iter().all(|&x| x == BLKIF_RSP_ERROR));
}

#[test]
fn a_restarted_daemon_is_reconnected_and_blkback_carries_on() {
    // With two virtqueues each has a watcher: one reconnects, the other follows it (a second
    // reconnection would show in the count).
    for (direct_doorbell, queues) in [(true, 1), (false, 1), (true, 2)] {
        let Some(d) = Daemon::start(queues, true, |_| {}) else {
            return;
        };
        let opts = BridgeOptions {
            direct_doorbell,
            ..BridgeOptions::default()
        };
        let front_queues = (queues > 1).then_some(u32::from(queues));
        let mut s = stack_with(&d, true, opts, front_queues, Some(Duration::from_secs(10)));
        assert_eq!(s.dev.with_driver(|drv| drv.num_queues()), queues);
        assert_eq!(s.dev.signals_doorbell_directly(0), direct_doorbell);
        let data = pattern(6, 64 << 10);
        assert!(all_ok(&s.front.write(0, &data)));
        // A full ring of 64 KiB writes of the data buffer, each at its own place; the daemon
        // is killed under them and a new one started 200 ms later.
        let n = s.front.free(0) as usize;
        let segs = s.front.segments(0, 64 << 10);
        let mut ids = Vec::new();
        for i in 0..n {
            ids.extend(
                s.front
                    .queue_rw(0, BLKIF_OP_WRITE, 256 + i as u64 * 128, &segs),
            );
        }
        s.front.kick(0);
        let mut d = d;
        let restarter = std::thread::spawn(move || {
            d.restart_after(Duration::from_millis(200));
            d
        });
        let started = Instant::now();
        let rsps = s.front.wait(0, ids.len(), Duration::from_secs(10));
        let took = started.elapsed();
        let d = restarter.join().unwrap();
        assert_eq!(rsps.len(), ids.len(), "answered in {took:?}");
        assert!(
            rsps.iter().all(|r| r.status == BLKIF_RSP_OKAY),
            "direct {direct_doorbell}: {:?}; broken: {:?}",
            rsps.iter().map(|r| r.status).collect::<Vec<_>>(),
            s.dev.broken()
        );
        assert!(s.dev.broken().is_none());
        assert_eq!(s.dev.with_driver(|drv| drv.reconnections()), 1);
        assert_eq!(flush(&mut s.front), BLKIF_RSP_OKAY);
        for i in 0..n as u64 {
            assert!(
                image_bytes(&d, (256 + i * 128) * 512, 64 << 10) == data,
                "write {i} is in the image (direct {direct_doorbell})"
            );
        }
        // And the vbd goes on working.
        let more = pattern(7, 4096);
        assert!(all_ok(&s.front.write(8, &more)));
        let mut back = vec![0u8; 4096];
        assert!(all_ok(&s.front.read(8, &mut back)));
        assert_eq!(back, more);
        eprintln!(
            "direct doorbell {direct_doorbell}, {queues} queues: {} requests across the restart answered in {took:?}",
            ids.len()
        );
        // The stack goes first: with the daemon killed under it, its watcher would try to
        // reconnect for the whole 10 s.
        drop(s);
        drop(d);
    }
}
