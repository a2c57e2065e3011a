//! Against the real `qemu-storage-daemon` (Debian `qemu-utils`) exporting a raw image as
//! vhost-user-blk on a Unix socket. What the driver writes, `qemu-io` reads back from the image,
//! and the other way round; flush, discard and write-zeroes take effect in the image; a daemon
//! killed during I/O gives a clean error. Skipped, with a message, when the tools are missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blanket_virtio::blk::{self, BlkDriver, BlkOptions, DataBuf, Request, Status};
use blanket_virtio::memory::DmaMemory;
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use blanket_virtio::transport::{self, Transport};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::Bytes;

const DAEMON: &str = "qemu-storage-daemon";
const IMAGE_BYTES: u64 = 64 << 20;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A running daemon in its own temporary directory, killed when dropped.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    num_queues: u16,
}

impl Daemon {
    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the daemon (if running) and starts a new one on the same image and socket path.
    fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.sock);
        self.child = spawn(&self.image(), &self.sock, self.num_queues);
        wait_for_socket(&mut self.child, &self.sock);
    }
}

fn spawn(img: &Path, sock: &Path, num_queues: u16) -> Child {
    Command::new(DAEMON)
        .args([
            "--blockdev",
            &format!(
                "driver=file,node-name=file0,filename={},discard=unmap,cache.direct=off",
                path(img)
            ),
            "--export",
            &format!(
                "type=vhost-user-blk,id=exp0,node-name=file0,writable=on,num-queues={num_queues},\
                 addr.type=unix,addr.path={}",
                path(sock)
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_socket(child: &mut Child, sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{DAEMON} exited with {status}: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "{DAEMON} did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates a raw image (after `prepare` may write to it with qemu-io), and exports it.
fn start(num_queues: u16, prepare: impl FnOnce(&Path)) -> Option<Daemon> {
    if !have(DAEMON) || !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipping: {DAEMON}, qemu-io or qemu-img not installed (Debian qemu-utils)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "raw",
            path(&img),
            &IMAGE_BYTES.to_string(),
        ],
    );
    prepare(&img);
    let sock = dir.path().join("vhost-user-blk.sock");
    let mut child = spawn(&img, &sock, num_queues);
    wait_for_socket(&mut child, &sock);
    let d = Daemon {
        child,
        dir,
        sock,
        num_queues,
    };
    Some(d)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `qemu-io -c 'read -P pattern offset len'` on the image, sharing it with the daemon (`-U`).
fn qemu_io_verify(img: &Path, pattern: u8, offset: u64, len: u64) {
    let cmd = format!("read -P {pattern:#x} {offset} {len}");
    let out = run("qemu-io", &["-r", "-U", "-f", "raw", "-c", &cmd, path(img)]);
    assert!(
        out.contains(&format!("read {len}/{len} bytes")) && !out.contains("verification failed"),
        "qemu-io {cmd}: {out}"
    );
}

fn connect(d: &Daemon, num_queues: u16) -> BlkDriver<VhostUserTransport> {
    let mem = Arc::new(DmaMemory::new(32 << 20).unwrap());
    let t = VhostUserTransport::connect(&d.sock, mem).unwrap();
    BlkDriver::new(
        t,
        BlkOptions {
            num_queues,
            timeout: Duration::from_secs(5),
            ..BlkOptions::default()
        },
    )
    .unwrap()
}

/// Submits a read of 4 KiB at sector 0 into a new buffer, tagged `tag`, and kicks; returns
/// the buffer.
fn read_4k_at_0(disk: &mut BlkDriver<VhostUserTransport>, tag: u64) -> DataBuf {
    let buf = DataBuf {
        addr: disk.memory().alloc(4096).unwrap(),
        len: 4096,
    };
    let req = Request::Read {
        sector: 0,
        bufs: std::slice::from_ref(&buf),
    };
    disk.submit(0, &req, tag).unwrap();
    disk.kick(0).unwrap();
    buf
}

#[test]
fn config_and_protocol_features() {
    let Some(d) = start(2, |_| {}) else { return };
    {
        // What the export offers of the ring features: none of packed rings, IN_ORDER and
        // queue reset (so those are tested against dpdk-testpmd and the in-process device).
        let mem = Arc::new(DmaMemory::new(1 << 20).unwrap());
        let mut t = VhostUserTransport::connect(&d.sock, mem).unwrap();
        let offered = t.device_features().unwrap();
        eprintln!("qemu-storage-daemon offers {offered:#x}");
        use virtio_bindings::virtio_config::{
            VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET,
        };
        for bit in [VIRTIO_F_RING_PACKED, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_RESET] {
            assert_eq!(offered & (1 << bit), 0, "feature bit {bit} offered");
        }
    }
    let disk = connect(&d, 2);
    let c = disk.config();
    assert_eq!(c.capacity, IMAGE_BYTES / 512);
    assert_eq!(c.num_queues, 2);
    assert_eq!(disk.num_queues(), 2);
    assert!(c.flush);
    assert!(c.discard.is_some());
    assert!(c.write_zeroes.is_some());
    assert!(!c.read_only);
    let p = disk.transport().protocol_features();
    assert!(p.contains(VhostUserProtocolFeatures::CONFIG));
    assert!(p.contains(VhostUserProtocolFeatures::MQ));
    eprintln!(
        "config {c:?}, protocol features {p:?}, features {:#x}",
        disk.features()
    );
}

#[test]
fn driver_writes_qemu_io_reads() {
    let Some(d) = start(1, |_| {}) else { return };
    let mut disk = connect(&d, 1);
    disk.write(0, &[0xab; 4096]).unwrap();
    // 3 MiB across several requests, at an odd sector.
    disk.write(8193, &vec![0x5c; 3 << 20]).unwrap();
    disk.flush().unwrap();
    qemu_io_verify(&d.image(), 0xab, 0, 4096);
    qemu_io_verify(&d.image(), 0x5c, 8193 * 512, 3 << 20);
    qemu_io_verify(&d.image(), 0, 4096, 4096);
}

#[test]
fn qemu_io_writes_driver_reads() {
    let Some(d) = start(1, |img| {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0xcd 1M 64k", path(img)],
        );
    }) else {
        return;
    };
    let mut disk = connect(&d, 1);
    let mut buf = vec![0u8; 128 << 10];
    disk.read((1 << 20) / 512 - 64, &mut buf).unwrap();
    assert!(buf[..32 << 10].iter().all(|&b| b == 0));
    assert!(buf[32 << 10..96 << 10].iter().all(|&b| b == 0xcd));
    assert!(buf[96 << 10..].iter().all(|&b| b == 0));
    let id = disk.get_id().unwrap();
    eprintln!("serial {:?}", String::from_utf8_lossy(&id));
}

#[test]
fn discard_and_write_zeroes_take_effect_in_the_image() {
    let Some(d) = start(1, |img| {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0xee 0 8M", path(img)],
        );
    }) else {
        return;
    };
    let mut disk = connect(&d, 1);
    // Write-zeroes with and without unmap, and discard of a whole aligned MiB.
    disk.write_zeroes(8, 8, false).unwrap();
    disk.write_zeroes(4096, 4096, true).unwrap();
    disk.discard(8192, 2048).unwrap();
    disk.flush().unwrap();
    let img = d.image();
    qemu_io_verify(&img, 0xee, 0, 4096);
    qemu_io_verify(&img, 0, 4096, 4096);
    qemu_io_verify(&img, 0xee, 8192, (2 << 20) - 8192);
    qemu_io_verify(&img, 0, 2 << 20, 2 << 20);
    qemu_io_verify(&img, 0, 4 << 20, 1 << 20);
    qemu_io_verify(&img, 0xee, 5 << 20, 3 << 20);
    // The discarded MiB is a hole in the file now (punched by discard=unmap).
    let map = run(
        "qemu-img",
        &["map", "-U", "-f", "raw", "--output=json", path(&img)],
    );
    let hole = map
        .lines()
        .any(|l| l.contains("\"start\": 4194304") && l.contains("\"data\": false"));
    assert!(hole, "4 MiB..5 MiB not a hole after discard: {map}");
}

#[test]
fn many_requests_in_flight_on_two_queues() {
    let Some(d) = start(2, |_| {}) else { return };
    let mut disk = connect(&d, 2);
    let mem = disk.memory().clone();
    let bufs: Vec<DataBuf> = (0..64)
        .map(|_| DataBuf {
            addr: mem.alloc(4096).unwrap(),
            len: 4096,
        })
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        mem.guest_memory()
            .write_slice(&[i as u8; 4096], b.addr)
            .unwrap();
    }
    for (i, b) in bufs.iter().enumerate() {
        let q = (i % 2) as u16;
        let req = Request::Write {
            sector: i as u64 * 8,
            bufs: std::slice::from_ref(b),
        };
        disk.submit(q, &req, i as u64).unwrap();
    }
    disk.kick(0).unwrap();
    disk.kick(1).unwrap();
    let mut done = Vec::new();
    for q in 0..2 {
        let mut out = Vec::new();
        while out.len() < 32 {
            disk.wait(q, &mut out).unwrap();
        }
        done.extend(out);
    }
    assert!(done.iter().all(|c| c.status == Status::Ok && c.len == 1));
    done.sort_by_key(|c| c.tag);
    assert!(done.iter().map(|c| c.tag).eq(0..64));
    for i in [0u64, 1, 31, 63] {
        qemu_io_verify(&d.image(), i as u8, i * 4096, 4096);
    }
}

#[test]
fn daemon_killed_during_io_gives_a_clean_error() {
    let Some(mut d) = start(1, |_| {}) else {
        return;
    };
    let mut disk = connect(&d, 1);
    let mem = disk.memory().clone();
    let buf = DataBuf {
        addr: mem.alloc(1 << 20).unwrap(),
        len: 1 << 20,
    };
    for i in 0..16 {
        let req = Request::Write {
            sector: i * 2048,
            bufs: std::slice::from_ref(&buf),
        };
        disk.submit(0, &req, i).unwrap();
    }
    disk.kick(0).unwrap();
    d.kill();
    let started = Instant::now();
    let mut out = Vec::new();
    let err = loop {
        match disk.wait(0, &mut out) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, blk::Error::Transport(transport::Error::DeviceGone(_))),
        "{err:?}"
    );
    // Later requests fail too, and do not hang.
    let e = disk.flush().unwrap_err();
    eprintln!("after the daemon died: {err}; then {e:?}");
    let _ = disk.transport_mut().memory();
}

#[test]
fn daemon_killed_ends_a_wait_without_timeout() {
    // `timeout: Duration::MAX`: the wait arms no timer; only the socket hanging up can end it.
    let Some(mut d) = start(1, |_| {}) else {
        return;
    };
    let mem = Arc::new(DmaMemory::new(32 << 20).unwrap());
    let t = VhostUserTransport::connect(&d.sock, mem.clone()).unwrap();
    let options = BlkOptions {
        timeout: Duration::MAX,
        ..BlkOptions::default()
    };
    let mut disk = BlkDriver::new(t, options).unwrap();
    // A round trip first: the export serves, and a wait without timeout returns completions.
    read_4k_at_0(&mut disk, 1);
    let mut out = Vec::new();
    while out.is_empty() {
        disk.wait(0, &mut out).unwrap();
    }
    assert_eq!(out[0].tag, 1);
    // Then a wait with nothing in flight, which only the daemon's death can end.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = disk.wait(0, &mut out);
        tx.send(r).unwrap();
        drop(disk);
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        rx.try_recv().is_err(),
        "the wait returned with nothing in flight"
    );
    d.kill();
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the wait did not end within 10 s of the daemon's death");
    let e = r.expect_err("the wait succeeded after the daemon died");
    assert!(
        matches!(e, blk::Error::Transport(transport::Error::DeviceGone(_))),
        "{e:?}"
    );
    waiter.join().unwrap();
}

#[test]
fn guest_pages_go_straight_to_the_device() {
    use std::os::unix::fs::FileExt;

    use blanket_virtio::memory::ForeignRegion;
    use vm_memory::GuestAddress;

    let Some(d) = start(1, |_| {}) else { return };
    // "Guest memory" the driver does not own: a shared file mapped at guest address 0.
    let guest = tempfile::tempfile().unwrap();
    guest.set_len(1 << 20).unwrap();
    guest.write_all_at(&[0x77; 4096], 0x2000).unwrap();
    let mem = Arc::new(
        DmaMemory::with_foreign_regions(
            16 << 20,
            vec![ForeignRegion {
                addr: GuestAddress(0),
                file: guest.try_clone().unwrap(),
                offset: 0,
                size: 1 << 20,
            }],
        )
        .unwrap(),
    );
    let t = VhostUserTransport::connect(&d.sock, mem).unwrap();
    let mut disk = BlkDriver::new(t, BlkOptions::default()).unwrap();
    // Guest page to disk, disk to another guest page, no copy by the driver.
    let page = |addr| DataBuf {
        addr: GuestAddress(addr),
        len: 4096,
    };
    disk.submit(
        0,
        &Request::Write {
            sector: 64,
            bufs: &[page(0x2000)],
        },
        1,
    )
    .unwrap();
    disk.kick(0).unwrap();
    let mut out = Vec::new();
    disk.wait(0, &mut out).unwrap();
    assert_eq!(out[0].status, Status::Ok);
    qemu_io_verify(&d.image(), 0x77, 64 * 512, 4096);
    disk.submit(
        0,
        &Request::Read {
            sector: 64,
            bufs: &[page(0x5000)],
        },
        2,
    )
    .unwrap();
    disk.kick(0).unwrap();
    out.clear();
    disk.wait(0, &mut out).unwrap();
    assert_eq!(out[0].status, Status::Ok);
    let mut back = [0u8; 4096];
    guest.read_exact_at(&mut back, 0x5000).unwrap();
    assert!(back.iter().all(|&b| b == 0x77));
}

#[test]
fn daemon_restarted_then_reconnect() {
    let Some(mut d) = start(1, |_| {}) else {
        return;
    };
    let mut disk = connect(&d, 1);
    disk.write(0, &[0x31; 4096]).unwrap();
    // Requests in flight when the daemon dies are reported lost by the reconnection.
    let mem = disk.memory().clone();
    let buf = DataBuf {
        addr: mem.alloc(4096).unwrap(),
        len: 4096,
    };
    d.kill();
    disk.submit(
        0,
        &Request::Read {
            sector: 0,
            bufs: &[buf],
        },
        9,
    )
    .unwrap();
    // The kick goes to an eventfd nobody reads; the wait sees the socket closed.
    disk.kick(0).unwrap();
    let mut out = Vec::new();
    let e = disk.wait(0, &mut out).unwrap_err();
    assert!(
        matches!(e, blk::Error::Transport(transport::Error::DeviceGone(_))),
        "{e:?}"
    );
    d.restart();
    let t = VhostUserTransport::connect(&d.sock, mem.clone()).unwrap();
    let lost = disk.reconnect(t).unwrap();
    assert_eq!(lost, vec![9]);
    let mut back = [0u8; 4096];
    disk.read(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x31));
    disk.write(8, &[0x32; 4096]).unwrap();
    disk.flush().unwrap();
    qemu_io_verify(&d.image(), 0x32, 4096, 4096);
    // A transport over other memory is refused.
    d.restart();
    let other = Arc::new(DmaMemory::new(1 << 20).unwrap());
    let t = VhostUserTransport::connect(&d.sock, other).unwrap();
    assert!(matches!(
        disk.reconnect(t),
        Err(blk::Error::DifferentMemory)
    ));
}

/// Runs `f` on the socket of a daemon exporting a 1 GiB `null-co` device that reads zeroes;
/// `None` (skipped, with a message) when the daemon is not installed.
fn with_null_co<R>(f: impl FnOnce(&Path) -> R + std::panic::UnwindSafe) -> Option<R> {
    if !have(DAEMON) {
        eprintln!("skipping: {DAEMON} not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("null.sock");
    let mut child = Command::new(DAEMON)
        .args([
            "--blockdev",
            "driver=null-co,node-name=null0,size=1073741824,read-zeroes=on",
            "--export",
            &format!(
                "type=vhost-user-blk,id=exp0,node-name=null0,writable=on,addr.type=unix,addr.path={}",
                path(&sock)
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&mut child, &sock);
    let result = std::panic::catch_unwind(|| f(&sock));
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(r) => Some(r),
        Err(e) => std::panic::resume_unwind(e),
    }
}

#[test]
fn null_co_export() {
    with_null_co(|sock| {
        let mem = Arc::new(DmaMemory::new(8 << 20).unwrap());
        let t = VhostUserTransport::connect(sock, mem).unwrap();
        let mut disk = BlkDriver::new(t, BlkOptions::default()).unwrap();
        assert_eq!(disk.config().capacity, (1 << 30) / 512);
        disk.write(123, &[0xaa; 65536]).unwrap();
        let mut buf = vec![0xffu8; 65536];
        disk.read(123, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "null-co reads zeroes");
        disk.flush().unwrap();
    });
}

/// Reads into `bufs`, one in flight for each, until `total` completed, each batch taken
/// with `wait_for(min)`: returns the calls made and the notifications the daemon sent (the
/// count of `call`, an eventfd made the queue's call descriptor, read at the end).
fn batched_reads(
    disk: &mut BlkDriver<VhostUserTransport>,
    call: &vmm_sys_util::eventfd::EventFd,
    bufs: &[DataBuf],
    min: usize,
    total: usize,
) -> (usize, u64) {
    let depth = bufs.len();
    let sectors = u64::from(bufs[0].len / 512);
    let read = |disk: &mut BlkDriver<VhostUserTransport>, slot: usize, n: usize| {
        let req = Request::Read {
            sector: n as u64 * sectors % (1 << 20),
            bufs: std::slice::from_ref(&bufs[slot]),
        };
        disk.submit(0, &req, slot as u64).unwrap();
    };
    // Nothing counted before the reads.
    let _ = call.read();
    let mut submitted = 0;
    for slot in 0..depth {
        read(disk, slot, submitted);
        submitted += 1;
    }
    disk.kick(0).unwrap();
    let (mut done, mut calls) = (0, 0);
    let mut out = Vec::new();
    while done < total {
        out.clear();
        let want = min.min(submitted - done);
        let n = disk.wait_for(0, &mut out, want).unwrap();
        calls += 1;
        assert!(
            n >= want && n == out.len(),
            "{n} completions, {want} asked for"
        );
        for c in &out {
            assert_eq!(c.status, Status::Ok);
            done += 1;
            if submitted < total {
                read(disk, c.tag as usize, submitted);
                submitted += 1;
            }
        }
        disk.kick(0).unwrap();
    }
    (calls, call.read().unwrap_or(0))
}

#[test]
fn waiting_for_a_batch_lets_the_daemon_skip_the_notifications_before_it() {
    // 1 MiB null-co reads take the daemon about 30 us each (its memset), so completions come
    // one at a time: waiting for 8 of 16 in flight, with used_event set 7 ahead, the daemon
    // notifies about once per batch; asking for the next one each time (as `wait` does) it
    // would notify about once per read.
    with_null_co(|sock| {
        let mem = Arc::new(DmaMemory::new(24 << 20).unwrap());
        let t = VhostUserTransport::connect(sock, mem).unwrap();
        let options = BlkOptions {
            timeout: Duration::from_secs(5),
            // No poll before sleeping, so that every batch is waited for with a notification.
            spin: Duration::ZERO,
            ..BlkOptions::default()
        };
        let mut disk = BlkDriver::new(t, options).unwrap();
        assert!(
            disk.features() & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0
        );
        let call = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is `call`'s, open while it is borrowed here to be duplicated.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(call.as_raw_fd()) }
            .try_clone_to_owned()
            .unwrap();
        assert!(disk.transport_mut().set_call_fd(0, Some(fd)).unwrap());
        let mem = disk.memory().clone();
        let bufs: Vec<DataBuf> = (0..16)
            .map(|_| DataBuf {
                addr: mem.alloc(1 << 20).unwrap(),
                len: 1 << 20,
            })
            .collect();
        let total = 400;
        let (calls, notified) = batched_reads(&mut disk, &call, &bufs, 8, total);
        eprintln!("{total} reads: {calls} waits for 8, {notified} notifications");
        assert!(calls <= total / 8 + 2, "{calls} waits");
        // Each wait arms one notification, two if a stale one woke it early: at most 100,
        // where one per read would be about 400 (51 here on a quiet machine).
        assert!(
            notified as usize <= total / 4,
            "{notified} notifications for {calls} waits of 8 completions"
        );
        // The same reads, one completion at a time, for the record: about one notification
        // each on a quiet machine (396 here), fewer when the driver's thread is preempted and
        // finds several completions at once.
        let (calls, notified) = batched_reads(&mut disk, &call, &bufs, 1, total);
        eprintln!("{total} reads: {calls} waits for 1, {notified} notifications");
        assert!(calls <= total);
        // More than are in flight can never come: an error, not a hang.
        let mut out = Vec::new();
        assert!(matches!(
            disk.wait_for(0, &mut out, 1),
            Err(blk::Error::TooFewInFlight {
                min: 1,
                in_flight: 0
            })
        ));
    });
}

/// One request of 4 KiB on `queue`, waited for.
fn io_on(
    disk: &mut BlkDriver<VhostUserTransport>,
    queue: u16,
    write: bool,
    sector: u64,
    buf: DataBuf,
) {
    let bufs = std::slice::from_ref(&buf);
    let req = if write {
        Request::Write { sector, bufs }
    } else {
        Request::Read { sector, bufs }
    };
    disk.submit(queue, &req, sector).unwrap();
    disk.kick(queue).unwrap();
    let mut out = Vec::new();
    while out.is_empty() {
        disk.wait(queue, &mut out).unwrap();
    }
    assert_eq!((out[0].tag, out[0].status), (sector, Status::Ok));
}

#[test]
fn one_queue_is_reset_and_runs_again() {
    // The ring is stopped with GET_VRING_BASE and given again (the front-end's part of a
    // queue reset): the daemon serves it from a fresh ring, and the other queue runs on.
    let Some(d) = start(2, |_| {}) else { return };
    let mut disk = connect(&d, 2);
    let mem = disk.memory().clone();
    let buf = DataBuf {
        addr: mem.alloc(4096).unwrap(),
        len: 4096,
    };
    let fill = |v: u8| {
        mem.guest_memory()
            .write_slice(&[v; 4096], buf.addr)
            .unwrap()
    };
    fill(0x11);
    io_on(&mut disk, 1, true, 0, buf);
    for round in 0..5u8 {
        assert!(disk.reset_queue(1).unwrap().is_empty());
        let v = 0x20 + round;
        fill(v);
        // Queue 1 from its fresh ring (avail idx 0 again), then queue 0.
        io_on(&mut disk, 1, true, 8 + 8 * u64::from(round), buf);
        io_on(&mut disk, 0, false, 8 + 8 * u64::from(round), buf);
        let mut back = [0u8; 4096];
        mem.guest_memory().read_slice(&mut back, buf.addr).unwrap();
        assert!(back.iter().all(|&b| b == v), "round {round}");
    }
    io_on(&mut disk, 1, false, 0, buf);
    let mut back = [0u8; 4096];
    mem.guest_memory().read_slice(&mut back, buf.addr).unwrap();
    assert!(back.iter().all(|&b| b == 0x11));
    disk.flush().unwrap();
    let img = d.image();
    qemu_io_verify(&img, 0x11, 0, 4096);
    for round in 0..5u64 {
        qemu_io_verify(&img, 0x20 + round as u8, 4096 * (1 + round), 4096);
    }
}

/// The block-number-stamped pattern of 4 KiB block `block`.
fn stamped(block: u64) -> [u8; 4096] {
    let mut b = [(block % 251) as u8 ^ 0x5a; 4096];
    b[..8].copy_from_slice(&block.to_le_bytes());
    b
}

#[test]
fn daemon_restarted_during_io_is_reconnected_transparently() {
    const BLOCKS: u64 = 4096;
    const DEPTH: usize = 32;
    let Some(d) = start(1, |_| {}) else {
        return;
    };
    let img = d.image();
    let mem = Arc::new(DmaMemory::new(32 << 20).unwrap());
    let t = VhostUserTransport::connect(&d.sock, mem.clone()).unwrap();
    let options = BlkOptions {
        timeout: Duration::from_secs(5),
        reconnect: Some(Duration::from_secs(10)),
        ..BlkOptions::default()
    };
    let mut disk = BlkDriver::new(t, options).unwrap();
    let bufs: Vec<DataBuf> = (0..DEPTH)
        .map(|_| DataBuf {
            addr: mem.alloc(4096).unwrap(),
            len: 4096,
        })
        .collect();
    // Once a third of the writes are done, the daemon is killed (the I/O loop goes on only
    // after that), and a new one is started on the same image and socket 200 ms later.
    let (kill, killed) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
    let restarter = std::thread::spawn(move || {
        let mut d = d;
        kill.1.recv().unwrap();
        d.kill();
        killed.0.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        d.restart();
        d
    });
    let submit = |disk: &mut BlkDriver<VhostUserTransport>, slot: usize, block: u64| {
        mem.guest_memory()
            .write_slice(&stamped(block), bufs[slot].addr)
            .unwrap();
        let req = Request::Write {
            sector: block * 8,
            bufs: std::slice::from_ref(&bufs[slot]),
        };
        disk.submit(0, &req, slot as u64).unwrap();
    };
    let mut next = 0u64;
    for slot in 0..DEPTH {
        submit(&mut disk, slot, next);
        next += 1;
    }
    disk.kick(0).unwrap();
    let (mut done, mut out, mut signalled) = (0u64, Vec::new(), false);
    let mut longest = Duration::ZERO;
    while done < BLOCKS {
        out.clear();
        let waited = Instant::now();
        disk.wait(0, &mut out).unwrap();
        longest = longest.max(waited.elapsed());
        for c in &out {
            assert_eq!(c.status, Status::Ok);
            done += 1;
            if next < BLOCKS {
                submit(&mut disk, c.tag as usize, next);
                next += 1;
            }
        }
        disk.kick(0).unwrap();
        if done >= BLOCKS / 3 && !signalled {
            signalled = true;
            kill.0.send(()).unwrap();
            killed.1.recv().unwrap();
        }
    }
    disk.flush().unwrap();
    let d = restarter.join().unwrap();
    assert_eq!(disk.reconnections(), 1);
    // Down for 200 ms, plus the new daemon's start-up: the one wait that spans it says how
    // long the reconnection took (printed, not asserted: it depends on the machine's load).
    eprintln!("the wait across the restart took {longest:?}");
    // Every write is in the image, as qemu-img sees it, the ones in flight at the kill too.
    let reference = d.dir.path().join("reference.img");
    let mut want = Vec::with_capacity((BLOCKS * 4096) as usize);
    for block in 0..BLOCKS {
        want.extend_from_slice(&stamped(block));
    }
    std::fs::write(&reference, want).unwrap();
    let out = run(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            "raw",
            "-F",
            "raw",
            path(&img),
            path(&reference),
        ],
    );
    assert!(out.contains("identical"), "{out}");
}

#[test]
fn daemon_not_back_fails_the_wait_after_the_reconnect_limit() {
    let Some(mut d) = start(1, |_| {}) else {
        return;
    };
    let mem = Arc::new(DmaMemory::new(32 << 20).unwrap());
    let t = VhostUserTransport::connect(&d.sock, mem.clone()).unwrap();
    let limit = Duration::from_millis(300);
    let options = BlkOptions {
        timeout: Duration::from_secs(5),
        reconnect: Some(limit),
        ..BlkOptions::default()
    };
    let mut disk = BlkDriver::new(t, options).unwrap();
    disk.write(0, &[0x41; 4096]).unwrap();
    d.kill();
    let buf = read_4k_at_0(&mut disk, 3);
    let mut out = Vec::new();
    let started = Instant::now();
    let e = disk.wait(0, &mut out).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, blk::Error::ReconnectFailed { .. }), "{e:?}");
    assert!(e.to_string().contains("is the back-end running?"), "{e}");
    assert!(
        took >= limit && took < Duration::from_secs(3),
        "gave up after {took:?}"
    );
    // The read stays recorded: once a daemon is back, the next wait reconnects and runs it.
    d.restart();
    assert_eq!(disk.wait(0, &mut out).unwrap(), 1);
    assert_eq!((out[0].tag, out[0].status), (3, Status::Ok));
    let mut back = [0u8; 4096];
    mem.guest_memory().read_slice(&mut back, buf.addr).unwrap();
    assert!(back.iter().all(|&b| b == 0x41));
    assert_eq!(disk.reconnections(), 1);
}
