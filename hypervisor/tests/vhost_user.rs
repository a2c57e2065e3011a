//! vbds on a vhost-user-blk device, on real KVM, against the real `qemu-storage-daemon` (Debian
//! `qemu-utils`) exporting a raw image file: the guest's blkfront -> blkback -> blanket-virtio's
//! `VirtioBlock` (zero copy: the guest's memfd is in the device's memory table, and there is no bounce pool,
//! so a request that did not go zero copy would fail) -> the daemon -> the file. Skipped, with a message,
//! when the daemon is not installed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blanket_hypervisor::devices::DeviceError;
use blanket_hypervisor::devices::console::ConsoleOutput;
use blanket_hypervisor::toolstack::{
    Guest, GuestConfig, Toolstack, ToolstackError, VbdBackend, VbdConfig, xvd_devid,
};
use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, guest};
use pv_backend::backend::{LocalXs, XsHandle};
use xen_abi::sched::ShutdownReason;

const DAEMON: &str = "qemu-storage-daemon";
const POWEROFF: DomainExit = DomainExit::Shutdown(ShutdownReason::Poweroff);
const CRASH: DomainExit = DomainExit::Shutdown(ShutdownReason::Crash);
const IMAGE_BYTES: u64 = 4 << 20;

fn have_daemon() -> bool {
    let ok = Command::new(DAEMON)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: {DAEMON} is not installed (Debian qemu-utils)");
    }
    ok
}

/// A temporary directory with a zeroed raw image, exported by qemu-storage-daemon as vhost-user-blk;
/// the daemon is killed and the directory removed on drop.
struct Export {
    dir: PathBuf,
    child: Option<Child>,
}

impl Export {
    fn start(tag: &str, writable: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("blanket-vub-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let e = Self { dir, child: None };
        File::create(e.image())
            .unwrap()
            .set_len(IMAGE_BYTES)
            .unwrap();
        e.spawn(writable)
    }

    fn spawn(mut self, writable: bool) -> Self {
        let mut child = Command::new(DAEMON)
            .args([
                "--blockdev",
                &format!(
                    "driver=file,node-name=file0,filename={},cache.direct=off",
                    self.image().display()
                ),
                "--export",
                &format!(
                    "type=vhost-user-blk,id=exp0,node-name=file0,writable={},num-queues=2,\
                     addr.type=unix,addr.path={}",
                    if writable { "on" } else { "off" },
                    self.socket().display()
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{DAEMON} exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "{DAEMON} made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        self
    }

    fn image(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("vhost-user-blk.sock")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (up to 30 s) until `reader`'s vbd is connected, so the guest is reading its disk.
fn wait_until_reading(reader: &Guest) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.all_output().contains("connected") {
        assert!(Instant::now() < deadline, "{}", reader.all_output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn toolstack() -> Toolstack {
    Toolstack::new(Hypervisor::new().expect("/dev/kvm")).expect("toolstack")
}

fn guest_config(name: &str, cmdline: &str, socket: &Path, read_only: bool) -> GuestConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 16 << 20;
    let mut g = GuestConfig::new(c);
    g.console = ConsoleOutput::Lines(None);
    g.vbds.push(VbdConfig {
        devid: xvd_devid(0),
        backend: VbdBackend::VhostUser(socket.to_path_buf()),
        read_only,
        inline: false,
        fixed_memory: false,
    });
    g
}

fn run(ts: &Toolstack, cfg: GuestConfig) -> (DomainExit, String) {
    let name = cfg.domain.name.clone();
    let mut g = ts.create(cfg).expect("create");
    g.start().expect("start");
    let exit = g.wait_timeout(Duration::from_secs(60));
    let out = g.all_output();
    eprintln!(
        "[{name}] {exit}\n{out}\nback-end errors: {:?}",
        g.backend_errors()
    );
    (exit, out)
}

/// The guest's pattern (hypervisor/guest/src/devices.rs): the 64-bit word at byte `off` of the disk.
fn pattern(seed: u64, off: u64) -> u64 {
    let mut z = seed ^ off.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn a_guest_writes_and_verifies_its_disk_on_a_qemu_storage_daemon_export_and_the_data_is_in_the_image()
 {
    if !have_daemon() {
        return;
    }
    let mut export = Export::start("rw", true);
    let ts = toolstack();
    let sock = export.socket();

    // The back-end directory says what serves the vbd.
    let mut writer = ts
        .create(guest_config("writer", "disk-write=11", &sock, false))
        .expect("create");
    let domid = writer.domain().domid();
    let xs = LocalXs::connect(ts.xenstored().store().clone(), 0);
    let be = format!("/local/domain/0/backend/vbd/{domid}/{}", xvd_devid(0));
    assert_eq!(
        xs.read(&format!("{be}/type")).unwrap(),
        Some(b"vhost-user-blk".to_vec())
    );
    assert_eq!(
        xs.read(&format!("{be}/params")).unwrap(),
        Some(sock.display().to_string().into_bytes())
    );
    writer.start().expect("start");
    let exit = writer.wait_timeout(Duration::from_secs(60));
    let out = writer.all_output();
    eprintln!("[writer] {exit}\n{out}");
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(
        out.contains(&format!(
            "disk-write: {IMAGE_BYTES} bytes written with seed 11 and flushed"
        )),
        "{out}"
    );
    assert!(writer.backend_errors().is_empty());
    drop(writer);

    // A second boot reads it back through the daemon.
    let (exit, out) = run(&ts, guest_config("verifier", "disk-verify=11", &sock, true));
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(
        out.contains(&format!(
            "disk-verify: OK, {IMAGE_BYTES} bytes match seed 11"
        )),
        "{out}"
    );
    // The check can fail: another seed does not match.
    let (exit, out) = run(&ts, guest_config("wrong", "disk-verify=12", &sock, true));
    assert_eq!(exit, CRASH, "{out}");
    assert!(out.contains("disk-verify: MISMATCH at byte 0"), "{out}");

    // The data is in the image file, every word of it, once the daemon is gone.
    export.kill();
    let mut bytes = vec![0u8; IMAGE_BYTES as usize];
    File::open(export.image())
        .unwrap()
        .read_exact_at(&mut bytes, 0)
        .unwrap();
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        let off = 8 * i as u64;
        assert_eq!(
            u64::from_le_bytes(w.try_into().unwrap()),
            pattern(11, off),
            "image word at byte {off}"
        );
    }
}

#[test]
fn a_read_only_vhost_user_vbd_refuses_the_guests_writes() {
    if !have_daemon() {
        return;
    }
    // The export is writable: the vbd is read-only because the configuration says so.
    let export = Export::start("ro", true);
    let ts = toolstack();
    let cfg = guest_config("writer", "disk-write=3", &export.socket(), true);
    let mut g = ts.create(cfg).expect("create");
    let domid = g.domain().domid();
    g.start().expect("start");
    let exit = g.wait_timeout(Duration::from_secs(60));
    let out = g.all_output();
    eprintln!("[writer] {exit}\n{out}");
    assert_eq!(exit, CRASH, "{out}");
    assert!(out.contains("disk-write: I/O at sector 0 failed"), "{out}");
    let xs = LocalXs::connect(ts.xenstored().store().clone(), 0);
    let be = format!("/local/domain/0/backend/vbd/{domid}/{}", xvd_devid(0));
    assert_eq!(xs.read(&format!("{be}/mode")).unwrap(), Some(b"r".to_vec()));
    drop(g);
    let bytes = std::fs::read(export.image()).unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "nothing was written to the image"
    );
}

#[test]
fn a_killed_daemon_fails_the_guests_io_instead_of_hanging_it_and_a_neighbour_goes_on() {
    if !have_daemon() {
        return;
    }
    let mut export = Export::start("kill", true);
    let ts = toolstack();
    // Reads of the whole disk, 1000 times: far longer than the daemon lives.
    let mut reader = ts
        .create(guest_config(
            "reader",
            "disk-bench=1000",
            &export.socket(),
            true,
        ))
        .expect("create");
    let mut c = DomainConfig::new("neighbour", guest::builtin().unwrap());
    c.cmdline = "cpu=20".into();
    c.memory = 16 << 20;
    let mut neighbour = ts.create(GuestConfig::new(c)).expect("create");
    reader.start().unwrap();
    neighbour.start().unwrap();
    // Kill it once the guest is reading.
    wait_until_reading(&reader);
    std::thread::sleep(Duration::from_millis(200));
    export.kill();
    let t = Instant::now();
    let exit = reader.wait_timeout(Duration::from_secs(60));
    let out = reader.all_output();
    eprintln!("[reader] {exit} {:?} after the kill\n{out}", t.elapsed());
    assert_eq!(exit, CRASH, "{out}");
    assert!(out.contains("disk-bench: I/O at sector"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the guest's I/O failed, it did not wait for the blkfront timeout"
    );
    assert_eq!(
        neighbour.wait_timeout(Duration::from_secs(60)),
        POWEROFF,
        "{}",
        neighbour.all_output()
    );
}

#[test]
fn a_restarted_daemon_is_reconnected_and_the_guests_io_goes_on() {
    if !have_daemon() {
        return;
    }
    let mut export = Export::start("restart", true);
    let ts = toolstack();
    let mut reader = ts
        .create(guest_config(
            "reader",
            "disk-bench=40",
            &export.socket(),
            true,
        ))
        .expect("create");
    reader.start().unwrap();
    wait_until_reading(&reader);
    // Killed while the guest reads, and a new daemon on the same image and socket 200 ms later.
    std::thread::sleep(Duration::from_millis(100));
    export.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_file(export.socket());
    export = export.spawn(true);
    let exit = reader.wait_timeout(Duration::from_secs(60));
    let out = reader.all_output();
    eprintln!(
        "[reader] {exit} {:?} after the kill\n{out}",
        killed.elapsed()
    );
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(out.contains("disk-bench: 5120 reads"), "{out}");
    assert!(
        reader.backend_errors().is_empty(),
        "{:?}",
        reader.backend_errors()
    );
    drop(reader);
    drop(export);
}

#[test]
fn a_vhost_user_vbd_with_no_daemon_is_a_clear_error_at_create() {
    let ts = toolstack();
    let sock = std::env::temp_dir().join(format!("blanket-vub-{}-absent.sock", std::process::id()));
    let err = ts
        .create(guest_config("lonely", "hello", &sock, false))
        .expect_err("no daemon listens there");
    assert!(
        matches!(
            &err,
            ToolstackError::Device(DeviceError::VhostUser { socket, .. }) if *socket == sock
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&sock.display().to_string()) && msg.contains("vhost-user"),
        "{msg}"
    );
    // The domain that could not get its disk is gone; the next one is created normally.
    let mut c = DomainConfig::new("next", guest::builtin().unwrap());
    c.memory = 16 << 20;
    let mut g = ts.create(GuestConfig::new(c)).expect("create");
    g.start().unwrap();
    assert_eq!(g.wait_timeout(Duration::from_secs(30)), POWEROFF);
}
