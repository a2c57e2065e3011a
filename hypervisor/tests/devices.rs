//! Guests with devices on real KVM: XenStore through the host's one xenstored, the PV console ring,
//! disks served by blkback from image files, networks through netback and the virtual switch or TAP. The
//! guests use blanket-xen's front-ends over real hypercalls; every back-end is pv-backend's.

use std::path::PathBuf;
use std::time::Duration;

use blanket_hypervisor::devices::console::ConsoleOutput;
use blanket_hypervisor::toolstack::{
    GuestConfig, Toolstack, VbdBackend, VbdConfig, VifConfig, VifLink, xvd_devid,
};
use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, guest};
use pv_backend::backend::{LocalXs, XsHandle};
use xen_abi::sched::ShutdownReason;

const POWEROFF: DomainExit = DomainExit::Shutdown(ShutdownReason::Poweroff);

fn toolstack() -> Toolstack {
    Toolstack::new(Hypervisor::new().expect("/dev/kvm")).expect("toolstack")
}

fn guest_config(name: &str, cmdline: &str) -> GuestConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 16 << 20;
    let mut g = GuestConfig::new(c);
    g.console = ConsoleOutput::Lines(None);
    g
}

fn run(ts: &Toolstack, cfg: GuestConfig) -> (DomainExit, String) {
    let name = cfg.domain.name.clone();
    let mut g = ts.create(cfg).expect("create");
    g.start().expect("start");
    let exit = g.wait_timeout(Duration::from_secs(60));
    let out = g.all_output();
    eprintln!(
        "[{name}] {exit}\n{out}\nback-end errors: {:?}; blocks served inline: {}",
        g.backend_errors(),
        g.domain().stats().blocks_served
    );
    (exit, out)
}

/// A temporary image file, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(tag: &str, bytes: u64) -> Self {
        let p =
            std::env::temp_dir().join(format!("blanket-devtest-{}-{tag}.img", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(bytes).unwrap();
        Self(p)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_guest_reads_and_writes_its_xenstore_home_and_is_released_when_destroyed() {
    let ts = toolstack();
    let xs = ts.xenstored().clone();
    let watcher = LocalXs::connect(xs.store().clone(), 0);
    watcher.watch("@releaseDomain", "rel").unwrap();
    // The initial event of a new watch.
    assert!(
        watcher
            .next_event(Duration::from_secs(1))
            .unwrap()
            .is_some()
    );
    let (exit, out) = run(&ts, guest_config("xs", "xs-test"));
    let ev = watcher.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(ev, Some(("@releaseDomain".into(), "rel".into())));
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(
        out.contains("xs-test: home /local/domain/1, name 'xs', write true, read back 'hello from the guest', write outside home refused: true"),
        "{out}"
    );
    // Released: its home went with it, and nothing it wrote outside its home exists.
    let paths = xs.paths();
    assert!(
        !paths.iter().any(|p| p.starts_with("/local/domain/1")),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.contains("intrusion")), "{paths:?}");
}

#[test]
fn the_console_ring_reaches_the_console_back_end() {
    let ts = toolstack();
    let mut g = ts.create(guest_config("cons", "console-ring")).unwrap();
    g.start().unwrap();
    let exit = g.wait_timeout(Duration::from_secs(30));
    let (ring, io) = (g.console_ring_output(), g.domain().console_output());
    assert_eq!(exit, POWEROFF, "{ring}{io}");
    // Through the ring, not console_io.
    assert!(
        ring.contains("console-ring: hello through the PV console ring"),
        "ring: {ring}, console_io: {io}"
    );
    assert!(!io.contains("console-ring:"), "{io}");
}

#[test]
fn the_console_ring_goes_to_a_log_file() {
    let ts = toolstack();
    let log = std::env::temp_dir().join(format!("blanket-devtest-{}-cons.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cfg = guest_config("conslog", "console-ring");
    cfg.console = ConsoleOutput::LogFile(log.clone());
    let mut g = ts.create(cfg).unwrap();
    let d = g.domain().domid();
    assert_eq!(
        ts.xenstored()
            .read(&format!("/local/domain/{d}/console/output"))
            .as_deref(),
        Some(&b"file"[..])
    );
    g.start().unwrap();
    assert_eq!(g.wait_timeout(Duration::from_secs(30)), POWEROFF);
    drop(g);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("console-ring: hello through the PV console ring"),
        "log: {text:?}"
    );
}

#[test]
fn the_console_ring_goes_to_a_pty_named_in_xenstore() {
    use std::io::Read;
    let ts = toolstack();
    // The guest stays 5 s after its line: the pty hangs up (and drops what was not read) when it ends.
    let mut cfg = guest_config("conspty", "console-ring=5000");
    cfg.console = ConsoleOutput::Pty;
    let mut g = ts.create(cfg).unwrap();
    let d = g.domain().domid();
    let pty = g.console_pty().expect("a pty").to_path_buf();
    let tty = ts
        .xenstored()
        .read(&format!("/local/domain/{d}/console/tty"))
        .expect("console/tty written");
    assert_eq!(tty, pty.display().to_string().into_bytes());
    let port = ts
        .xenstored()
        .read(&format!("/local/domain/{d}/console/port"))
        .unwrap();
    assert!(std::str::from_utf8(&port).unwrap().parse::<u32>().is_ok());
    // Open the slave before the guest writes, as a `xl console` client would.
    let mut slave = std::fs::File::open(&pty).unwrap();
    g.start().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("PV console ring") {
            match slave.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing read from {}",
            pty.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = reader.join().unwrap();
    g.domain().destroy();
    assert_eq!(
        g.wait_timeout(Duration::from_secs(30)),
        DomainExit::Destroyed
    );
    assert!(
        text.contains("console-ring: hello through the PV console ring"),
        "pty: {text:?}"
    );
}

/// The guest's pattern (hypervisor/guest/src/devices.rs): the 64-bit word at byte `off` of the disk.
fn pattern(seed: u64, off: u64) -> u64 {
    let mut z = seed ^ off.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn with_vbd(cfg: GuestConfig, image: &Image) -> GuestConfig {
    with_vbd_inline(cfg, image, true)
}

fn with_vbd_inline(cfg: GuestConfig, image: &Image, inline: bool) -> GuestConfig {
    with_vbd_served(cfg, image, inline, false)
}

fn with_vbd_served(
    mut cfg: GuestConfig,
    image: &Image,
    inline: bool,
    fixed_memory: bool,
) -> GuestConfig {
    cfg.vbds.push(VbdConfig {
        devid: xvd_devid(0),
        backend: VbdBackend::Image(image.0.clone()),
        read_only: false,
        inline,
        fixed_memory,
    });
    cfg
}

#[test]
fn disk_data_written_by_one_boot_is_read_back_by_the_next() {
    write_then_verify(false, false);
}

#[test]
fn disk_data_served_inline_on_the_vcpu_thread_is_read_back_by_the_next_boot() {
    write_then_verify(true, false);
}

#[test]
fn disk_data_through_registered_guest_memory_is_read_back_by_the_next_boot() {
    write_then_verify(true, true);
}

/// A guest writes its disk and a second boot reads it back, with the vbd served inline on the guest's
/// vCPU threads or by blkback's queue threads, and with the guest's memory registered with the
/// image's io_uring or not: the kicks the vCPU threads served are counted only inline, the fixed
/// I/Os only with the memory registered.
fn write_then_verify(inline: bool, fixed: bool) {
    let image = Image::new(
        match (inline, fixed) {
            (_, true) => "fixed",
            (true, false) => "inline",
            (false, false) => "disk",
        },
        2 << 20,
    );
    let ts = toolstack();
    let with_vbd = |cfg, image| with_vbd_served(cfg, image, inline, fixed);
    let (exit, out) = run(
        &ts,
        with_vbd(guest_config("writer", "disk-write=7"), &image),
    );
    // 2 MiB in at most 44 KiB a request: dozens of kicks.
    if inline {
        assert!(
            ts.inline_kicks() >= 20,
            "{} kicks served inline",
            ts.inline_kicks()
        );
    } else {
        assert_eq!(ts.inline_kicks(), 0);
    }
    if fixed {
        assert!(
            ts.fixed_ios() >= 20,
            "{} reads and writes on registered memory",
            ts.fixed_ios()
        );
    } else {
        assert_eq!(ts.fixed_ios(), 0);
    }
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(
        out.contains("disk-write: 2097152 bytes written with seed 7 and flushed"),
        "{out}"
    );
    // The data is in the image file, where the guest put it.
    let bytes = std::fs::read(&image.0).unwrap();
    for off in [0u64, 4096, (2 << 20) - 8] {
        let got = u64::from_le_bytes(bytes[off as usize..off as usize + 8].try_into().unwrap());
        assert_eq!(got, pattern(7, off), "image word at {off}");
    }
    // A second boot, a new domain, reads it back.
    let (exit, out) = run(
        &ts,
        with_vbd(guest_config("verifier", "disk-verify=7"), &image),
    );
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(
        out.contains("disk-verify: OK, 2097152 bytes match seed 7"),
        "{out}"
    );
    // The check can fail: another seed does not match.
    let (exit, out) = run(
        &ts,
        with_vbd(guest_config("wrong", "disk-verify=8"), &image),
    );
    assert_eq!(exit, DomainExit::Shutdown(ShutdownReason::Crash), "{out}");
    assert!(out.contains("disk-verify: MISMATCH at byte 0"), "{out}");
}

#[test]
fn a_guest_that_reboots_is_restarted_with_its_devices_and_reads_back_what_it_wrote() {
    let image = Image::new("reboot", 1 << 20);
    let ts = toolstack();
    let xs = ts.xenstored();
    let mut g = ts
        .create(with_vbd(guest_config("rebooter", "disk-reboot=5"), &image))
        .unwrap();
    g.start().unwrap();
    let first = g.domain().domid();
    let exit = g.wait_timeout(Duration::from_secs(60));
    let out = g.all_output();
    assert_eq!(exit, DomainExit::Shutdown(ShutdownReason::Reboot), "{out}");
    assert!(
        out.contains(
            "disk-reboot: the disk does not hold seed 5's data: writing it, then rebooting"
        ),
        "{out}"
    );
    assert_eq!(g.restarts(), 0);
    // As xl's on_reboot = "restart": the same configuration, a new domain.
    let mut g = ts.restart(g).expect("restart");
    let second = g.domain().domid();
    assert_ne!(first, second, "a new domid");
    assert_eq!((g.domain().name(), g.restarts()), ("rebooter", 1));
    assert!(
        xs.read(&format!("/local/domain/0/backend/vbd/{first}"))
            .is_none()
            && xs.read(&format!("/local/domain/{first}")).is_none(),
        "the old domain's directories are gone"
    );
    let exit = g.wait_timeout(Duration::from_secs(60));
    let out = g.all_output();
    eprintln!("[rebooter, second boot] {exit}\n{out}");
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(
        out.contains(
            "disk-reboot: the disk holds seed 5's data from a previous boot: verifying it"
        ) && out.contains("disk-verify: OK, 1048576 bytes match seed 5"),
        "{out}"
    );
    assert_eq!(
        String::from_utf8(
            xs.read(&format!(
                "/local/domain/0/backend/vbd/{second}/51712/params"
            ))
            .unwrap()
        )
        .unwrap(),
        image.0.display().to_string(),
        "the restarted domain has the same vbd"
    );
}

#[test]
fn the_toolstack_writes_xl_style_vbd_and_vif_directories() {
    let image = Image::new("dirs", 1 << 20);
    let ts = toolstack();
    let mut cfg = with_vbd(guest_config("dirs", "idle"), &image);
    cfg.vifs.push(VifConfig {
        devid: 0,
        mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        link: VifLink::Switch,
    });
    let g = ts.create(cfg).unwrap();
    let xs = ts.xenstored();
    let d = g.domain().domid();
    let read =
        |p: &str| String::from_utf8(xs.read(p).unwrap_or_else(|| panic!("{p} missing"))).unwrap();
    let be = format!("/local/domain/0/backend/vbd/{d}/51712");
    let fe = format!("/local/domain/{d}/device/vbd/51712");
    assert_eq!(read(&format!("{be}/frontend")), fe);
    assert_eq!(read(&format!("{be}/frontend-id")), d.to_string());
    assert_eq!(read(&format!("{be}/params")), image.0.display().to_string());
    assert_eq!(read(&format!("{be}/mode")), "w");
    assert_eq!(read(&format!("{be}/dev")), "xvda");
    assert_eq!(read(&format!("{fe}/backend")), be);
    assert_eq!(read(&format!("{fe}/backend-id")), "0");
    assert_eq!(read(&format!("{fe}/virtual-device")), "51712");
    // blkback started and published its side: InitWait.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while xs.read(&format!("{be}/state")).as_deref() != Some(b"2") {
        assert!(
            std::time::Instant::now() < deadline,
            "blkback reached InitWait"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let vbe = format!("/local/domain/0/backend/vif/{d}/0");
    let vfe = format!("/local/domain/{d}/device/vif/0");
    assert_eq!(read(&format!("{vbe}/mac")), "02:11:22:33:44:55");
    assert_eq!(read(&format!("{vfe}/mac")), "02:11:22:33:44:55");
    assert_eq!(read(&format!("{vfe}/backend")), vbe);
    assert_eq!(read(&format!("{vbe}/frontend")), vfe);
    drop(g);
    // Destroyed: both directories are gone.
    assert!(xs.read(&be).is_none() && xs.read(&fe).is_none() && xs.read(&vbe).is_none());
}

#[test]
fn two_guests_exchange_packets_through_the_switch() {
    let ts = toolstack();
    let vif = || VifConfig {
        devid: 0,
        mac: [0; 6],
        link: VifLink::Switch,
    };
    let mut echo = guest_config("echo", "net-echo=20");
    echo.vifs.push(vif());
    let mut ping = guest_config("ping", "net-ping=20");
    ping.vifs.push(vif());
    let mut e = ts.create(echo).unwrap();
    let mut p = ts.create(ping).unwrap();
    e.start().unwrap();
    p.start().unwrap();
    let pexit = p.wait_timeout(Duration::from_secs(60));
    let eexit = e.wait_timeout(Duration::from_secs(60));
    let (pout, eout) = (p.all_output(), e.all_output());
    eprintln!("[ping] {pexit}\n{pout}\n[echo] {eexit}\n{eout}");
    assert_eq!(pexit, POWEROFF, "{pout}");
    assert!(pout.contains("net-ping: 20/20 pongs checked"), "{pout}");
    assert_eq!(eexit, POWEROFF, "{eout}");
    assert!(
        eout.contains("frames echoed, the last with sequence number Some(19)"),
        "{eout}"
    );
}

/// Runs `ip` with `args`, failing the test with its stderr.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2; scripts/setup installs it)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of this test, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// In the namespace: an AF_PACKET socket on `ifname` that answers each ping frame of the guests'
/// ethertype (0x88b5, type 1) with a pong (type 2) to its sender, `count` times.
fn echo_in_netns(ns: &str, ifname: &str, count: usize) -> std::thread::JoinHandle<usize> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    std::thread::spawn(move || {
        let nsf = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns with an open namespace fd changes only this thread's network namespace.
        let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let proto = 0x88b5u16.to_be();
        // SAFETY: plain socket(2), checked before it is wrapped.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh socket nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        // SAFETY: all-zero is a valid sockaddr_ll; the fields set make it a bind address.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a sockaddr_ll of the length passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the length passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let mut answered = 0;
        let mut buf = [0u8; 2048];
        while answered < count {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break; // timed out
            }
            let n = n as usize;
            if n < 15 || buf[12..14] != [0x88, 0xb5] || buf[14] != 1 {
                continue;
            }
            let mut src = [0u8; 6];
            src.copy_from_slice(&buf[6..12]);
            buf.copy_within(0..6, 6);
            buf[..6].copy_from_slice(&src);
            buf[14] = 2;
            // SAFETY: `buf` is valid for `n` bytes; the socket is bound to the interface.
            let s = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), n, 0) };
            if s == n as isize {
                answered += 1;
            }
        }
        answered
    })
}

#[test]
fn a_guest_reaches_the_host_through_tap() {
    let ns = Netns(format!("blanket-dev-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    let ifname = format!("bltap{}", std::process::id() % 100_000);
    let ts = toolstack();
    let mut cfg = guest_config("tap", "net-ping=10");
    cfg.vifs.push(VifConfig {
        devid: 0,
        mac: [0; 6],
        link: VifLink::Tap(ifname.clone()),
    });
    let mut g = ts.create(cfg).unwrap();
    ip(&["link", "set", "dev", &ifname, "netns", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "dev", &ifname, "up"]);
    let host = echo_in_netns(&ns.0, &ifname, 10);
    g.start().unwrap();
    let exit = g.wait_timeout(Duration::from_secs(60));
    let out = g.all_output();
    eprintln!("[tap] {exit}\n{out}");
    assert_eq!(host.join().unwrap(), 10, "the host answered every ping");
    assert_eq!(exit, POWEROFF, "{out}");
    assert!(out.contains("net-ping: 10/10 pongs checked"), "{out}");
}
