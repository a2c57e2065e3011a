//! The console back end's XenStore glue, as xenconsoled: `ring-ref`, `port`, `type` and `limit`
//! read from the guest's console directory, the page mapped through `GNTTAB_RESERVED_CONSOLE`,
//! `tty` written for a pty; output reaches the pty byte-identical, `limit` bounds what is buffered
//! for a stuck sink, and the hostile nodes are typed errors.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_backend::backend::{Doorbell, LocalEventChannels, LocalXs, XsHandle};
use pv_backend::blk::front::TestGuest;
use pv_backend::console::xs::{
    ConsoleXsError, MAX_CONSOLE_LIMIT, XsConsole, connect, console_dir, read_nodes,
};
use pv_backend::console::{ConsoleConfig, ConsoleSink, Overflow, Pty};
use pv_backend::xenstore::XenStore;
use pv_backend::xenstore::server::SharedStore;

const OUT: usize = 1024; // offset of `out` in struct xencons_interface
const OUT_PROD: usize = 1024 + 2048 + 12;

struct Setup {
    guest: Arc<TestGuest>,
    frame: u32,
    xs: LocalXs,
    evtchns: Arc<LocalEventChannels>,
    port: u32,
    bell: Arc<Doorbell>,
    dir: String,
}

fn setup(domid: u16, grant_page: bool) -> Setup {
    let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
    let xs = LocalXs::connect(store, 0);
    let guest = TestGuest::new(domid, 0, 16, 1);
    let frame = guest.alloc_pages(1);
    if grant_page {
        guest
            .grants
            .grant(
                xen_abi::grant_table::GNTTAB_RESERVED_CONSOLE,
                0,
                frame,
                false,
            )
            .unwrap();
    }
    let evtchns = LocalEventChannels::new();
    let (port, _) = evtchns.alloc(domid);
    let dir = console_dir(domid);
    for (k, v) in [("ring-ref", frame.to_string()), ("port", port.to_string())] {
        xs.write(&format!("{dir}/{k}"), v.as_bytes()).unwrap();
    }
    Setup {
        guest,
        frame,
        xs,
        evtchns,
        port,
        bell: Doorbell::new(),
        dir,
    }
}

impl Setup {
    fn connect<S: ConsoleSink>(
        &self,
        sink: S,
        config: ConsoleConfig,
    ) -> Result<XsConsole<S>, ConsoleXsError> {
        connect(
            &self.xs,
            self.guest.domid,
            &self.dir,
            &self.guest.grants,
            &*self.evtchns,
            self.bell.clone(),
            sink,
            config,
            Instant::now(),
        )
        .map(|(c, _)| c)
    }

    fn set(&self, key: &str, value: &str) {
        self.xs
            .write(&format!("{}/{key}", self.dir), value.as_bytes())
            .unwrap();
    }

    /// The guest writes `data` to its output ring (after `at` bytes already written) and kicks.
    fn guest_out(&self, at: u32, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let pos = (at as usize + i) % 2048;
            self.guest.write(self.frame, OUT + pos, &[*b]);
        }
        let prod = at + data.len() as u32;
        self.guest.write(self.frame, OUT_PROD, &prod.to_le_bytes());
        assert!(
            self.evtchns.send(self.guest.domid, self.port),
            "the port is not bound"
        );
    }
}

#[test]
fn console_connects_from_xenstore_writes_tty_and_output_reaches_the_pty() {
    let s = setup(3, true);
    let pty = Pty::open().unwrap();
    let mut c = s.connect(pty, ConsoleConfig::default()).unwrap();
    let tty =
        s.xs.read(&format!("{}/tty", s.dir))
            .unwrap()
            .expect("no tty node");
    let tty = String::from_utf8(tty).unwrap();
    assert_eq!(tty, c.sink().slave_path().to_str().unwrap());
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
    let mut term = std::fs::File::open(&tty).unwrap();
    let msg = b"Linux version 6.1 (blanket) #1 SMP\r\n";
    s.guest_out(0, msg);
    assert!(
        s.bell.wait(Duration::from_secs(5)),
        "the guest's kick did not ring the doorbell"
    );
    c.handle_event(Instant::now()).unwrap();
    let mut got = vec![0u8; msg.len()];
    term.read_exact(&mut got).unwrap();
    assert_eq!(&got, msg);
}

/// A sink that never takes anything.
#[derive(Debug)]
struct Stuck;
impl ConsoleSink for Stuck {
    fn write_output(&mut self, _: &[u8]) -> io::Result<usize> {
        Ok(0)
    }
    fn read_input(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

fn unlimited() -> ConsoleConfig {
    ConsoleConfig {
        rate_limit: None,
        overflow: Overflow::Discard,
        ..ConsoleConfig::default()
    }
}

#[test]
fn console_limit_bounds_what_is_buffered_for_a_stuck_sink() {
    let s = setup(4, true);
    s.set("limit", "3000");
    let nodes = read_nodes(&s.xs, &s.dir).unwrap();
    assert_eq!(nodes.limit, Some(3000));
    let mut c = s.connect(Stuck, unlimited()).unwrap();
    let mut at = 0;
    for i in 0..5u8 {
        s.guest_out(at, &[b'a' + i; 2000]);
        at += 2000;
        c.handle_event(Instant::now()).unwrap();
        assert!(
            c.pending_output() <= 3000,
            "{} bytes buffered",
            c.pending_output()
        );
    }
    assert_eq!(c.stats().out_bytes, 10_000);
    assert!(c.stats().discarded >= 7000, "{:?}", c.stats());
}

#[test]
fn hostile_console_limit_not_numeric() {
    let s = setup(5, true);
    s.set("limit", "12k");
    let e = s.connect(Stuck, unlimited()).unwrap_err();
    assert!(
        matches!(e, ConsoleXsError::NotNumeric { ref path, .. } if path.ends_with("/limit")),
        "{e}"
    );
    s.set("limit", "-1");
    assert!(matches!(
        s.connect(Stuck, unlimited()),
        Err(ConsoleXsError::NotNumeric { .. })
    ));
}

#[test]
fn hostile_console_limit_huge_is_clamped() {
    let s = setup(6, true);
    for v in [
        "99999999999999999999",
        "18446744073709551615",
        "4294967296000",
    ] {
        s.set("limit", v);
        assert_eq!(
            read_nodes(&s.xs, &s.dir).unwrap().limit,
            Some(MAX_CONSOLE_LIMIT),
            "{v}"
        );
    }
    s.set("limit", "0");
    assert_eq!(
        read_nodes(&s.xs, &s.dir).unwrap().limit,
        None,
        "0 is no limit"
    );
    s.set("limit", "1");
    assert_eq!(read_nodes(&s.xs, &s.dir).unwrap().limit, Some(2));
    assert!(s.connect(Stuck, unlimited()).is_ok());
}

#[test]
fn hostile_console_missing_or_non_numeric_ring_ref_and_port() {
    let s = setup(7, true);
    s.set("port", "seven");
    assert!(
        matches!(s.connect(Stuck, unlimited()), Err(ConsoleXsError::NotNumeric { ref path, .. }) if path.ends_with("/port"))
    );
    s.xs.rm(&format!("{}/port", s.dir)).unwrap();
    assert!(
        matches!(s.connect(Stuck, unlimited()), Err(ConsoleXsError::Missing { ref path }) if path.ends_with("/port"))
    );
    s.xs.rm(&format!("{}/ring-ref", s.dir)).unwrap();
    assert!(
        matches!(s.connect(Stuck, unlimited()), Err(ConsoleXsError::Missing { ref path }) if path.ends_with("/ring-ref"))
    );
}

#[test]
fn hostile_console_port_not_offered_to_us() {
    let s = setup(8, true);
    s.set("port", "4000");
    assert!(matches!(
        s.connect(Stuck, unlimited()),
        Err(ConsoleXsError::EventChannel(_))
    ));
}

#[test]
fn hostile_console_page_not_granted() {
    let s = setup(9, false);
    let e = s.connect(Stuck, unlimited()).unwrap_err();
    assert!(matches!(e, ConsoleXsError::Map { domid: 9, .. }), "{e}");
}

#[test]
fn console_of_another_type_is_left_alone() {
    let s = setup(10, true);
    s.set("type", "ioemu");
    let e = s.connect(Stuck, unlimited()).unwrap_err();
    assert!(
        matches!(e, ConsoleXsError::NotOurs { ref value, .. } if value == "ioemu"),
        "{e}"
    );
    s.set("type", "xenconsoled");
    assert!(s.connect(Stuck, unlimited()).is_ok());
}
