//! Guests with devices on real KVM: XenStore through the host's one xenstored, the PV console ring,
//! disks served by blkback from image files, networks through netback and the virtual switch or TAP. The
//! guests use blanket-xen's front-ends over real hypercalls; every back-end is pv-backend's.

use std::path::PathBuf;
use std::time::Duration;

use blanket_hypervisor::devices::console::ConsoleOutput;
use blanket_hypervisor::toolstack::{
    GuestConfig, Toolstack, VbdConfig, VifConfig, VifLink, xvd_devid,
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
        "[{name}] {exit}\n{out}\nback-end errors: {:?}",
        g.backend_errors()
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
    let (exit, out) = run(&ts, guest_config("cons", "console-ring"));
    assert_eq!(exit, POWEROFF, "{out}");
    // Once through console_io, once through the ring.
    assert_eq!(
        out.matches("console-ring: hello through the PV console ring")
            .count(),
        2,
        "{out}"
    );
}
