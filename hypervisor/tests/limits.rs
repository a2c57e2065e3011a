//! What refuses a guest when the host runs out of room: the toolstack refuses a guest that the process's file
//! limit cannot hold, with an error, before creating anything, and the guests already running go on. Its
//! own test binary, because it lowers the process's `RLIMIT_NOFILE`.

use std::time::Duration;

use blanket_hypervisor::devices::console::ConsoleOutput;
use blanket_hypervisor::toolstack::{GuestConfig, Toolstack, ToolstackError};
use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, RunState, guest};

fn idle(name: &str) -> GuestConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = "idle".into();
    c.memory = 16 << 20;
    let mut g = GuestConfig::new(c);
    g.console = ConsoleOutput::Lines(None);
    g
}

fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_soft_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = n.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn a_guest_the_file_limit_cannot_hold_is_refused_with_an_error_and_the_others_go_on() {
    let ts = Toolstack::new(Hypervisor::new().expect("/dev/kvm")).expect("toolstack");
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let saved = lim.rlim_cur;
    // Room for a few guests, not for many.
    set_soft_limit(open_files() + 60);
    let mut guests = Vec::new();
    let err = loop {
        match ts.create(idle(&format!("g{}", guests.len()))) {
            Ok(mut g) => {
                g.start().expect("start");
                guests.push(g);
                assert!(guests.len() < 60, "the limit never refused a guest");
            }
            Err(e) => break e,
        }
    };
    set_soft_limit(saved);
    assert!(
        matches!(err, ToolstackError::OutOfFiles { used, limit, needed } if used + needed > limit),
        "{err:?}"
    );
    assert!(err.to_string().contains("RLIMIT_NOFILE"), "{err}");
    assert!(!guests.is_empty(), "some guests fit");
    // The guests already there are untouched, and the next guest fits once there is room again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while guests
        .iter()
        .any(|g| g.domain().state() != RunState::Blocked)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle guests block"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut more = ts.create(idle("after")).expect("room again");
    more.start().unwrap();
    for g in guests.iter().chain([&more]) {
        g.domain().destroy();
    }
    for g in guests.iter_mut().chain([&mut more]) {
        assert_eq!(
            g.wait_timeout(Duration::from_secs(10)),
            DomainExit::Destroyed
        );
    }
}
