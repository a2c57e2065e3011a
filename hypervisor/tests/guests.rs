//! Boots the embedded guest on real KVM and checks what it does.

use std::time::Duration;

use blanket_hypervisor::{DomainConfig, DomainExit, Hypervisor, guest};
use xen_abi::sched::ShutdownReason;

fn config(name: &str, cmdline: &str) -> DomainConfig {
    let mut c = DomainConfig::new(name, guest::builtin().expect("the guest is built"));
    c.cmdline = cmdline.into();
    c.memory = 16 << 20;
    c
}

#[test]
fn a_guest_boots_and_prints_on_its_console() {
    let hv = Hypervisor::new().unwrap();
    let mut d = hv.create_domain(config("hello", "hello")).unwrap();
    d.start().unwrap();
    let exit = d
        .wait_timeout(Duration::from_secs(20))
        .expect("the guest ends");
    let out = d.console_output();
    eprintln!("{out}");
    assert_eq!(
        exit,
        DomainExit::Shutdown(ShutdownReason::Poweroff),
        "{out}"
    );
    assert!(out.contains("Hello from the Blanket PV guest!"), "{out}");
    assert!(out.contains("xen 4.17"), "{out}");
}
