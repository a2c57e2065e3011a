//! `dpdk-testpmd` with one `net_vhost` port, shared by `tests/dpdk_testpmd.rs`,
//! `tests/pv_backend_testpmd.rs` and `benches/testpmd.rs` (each includes this file as a
//! module, and each uses a part of it).
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use blanket_virtio::net::{NetDriver, NetHdr};
use blanket_virtio::transport::vhost_user::VhostUserTransport;

/// The binary, from Debian's `dpdk-dev` package.
pub const TESTPMD: &str = "dpdk-testpmd";

/// How to run testpmd.
#[derive(Clone, Copy, Debug)]
pub struct Opts<'a> {
    /// `--forward-mode`.
    pub mode: &'a str,
    /// Queue pairs of the port (`queues=` of the vdev, `--rxq`, `--txq`).
    pub queues: u16,
    /// `-m`: megabytes of memory (without hugepages).
    pub memory_mb: u32,
    /// `--total-num-mbufs`.
    pub mbufs: u32,
    /// Start of the `--file-prefix` (the process id and a counter follow).
    pub prefix: &'a str,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            mode: "io",
            queues: 1,
            memory_mb: 256,
            mbufs: 2048,
            prefix: "blanket",
        }
    }
}

/// Why testpmd did not start.
#[derive(Debug)]
pub enum StartError {
    /// The binary cannot be run (not installed): callers skip.
    Missing(String),
    /// It ran but made no socket (it exited, or took over 30 s): callers fail.
    Failed(String),
}

/// A running testpmd in its own temporary directory, killed when dropped.
pub struct Testpmd {
    child: Child,
    dir: tempfile::TempDir,
    /// The vhost-user socket of its port.
    pub sock: PathBuf,
    /// The `--file-prefix`: DPDK's runtime directory is named after it.
    prefix: String,
    /// Its command line, to start it again.
    args: Vec<String>,
}

impl Testpmd {
    /// Starts testpmd with `opts` and waits for its socket, in `loop` port topology.
    pub fn start(opts: Opts<'_>) -> Result<Testpmd, StartError> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let failed = |what: String| StartError::Failed(what);
        let dir = tempfile::tempdir().map_err(|e| failed(format!("temporary directory: {e}")))?;
        let sock = dir.path().join("net.sock");
        let prefix = format!(
            "{}-{}-{}",
            opts.prefix,
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let q = opts.queues;
        let args: Vec<String> = [
            "--no-pci",
            "--no-huge",
            "-m",
            &opts.memory_mb.to_string(),
            "--file-prefix",
            &prefix,
            "--vdev",
            &format!("net_vhost0,iface={},queues={q}", sock.display()),
            "--",
            &format!("--total-num-mbufs={}", opts.mbufs),
            &format!("--rxq={q}"),
            &format!("--txq={q}"),
            &format!("--forward-mode={}", opts.mode),
            "--port-topology=loop",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let child = Self::spawn(&args, dir.path())?;
        let mut t = Testpmd {
            child,
            dir,
            sock,
            prefix,
            args,
        };
        t.wait_for_socket()?;
        Ok(t)
    }

    fn spawn(args: &[String], dir: &std::path::Path) -> Result<Child, StartError> {
        let log = |name: &str| {
            File::create(dir.join(name)).map_err(|e| StartError::Failed(format!("log {name}: {e}")))
        };
        Command::new(TESTPMD)
            .args(args)
            // testpmd runs until a line arrives on its standard input: keep it open.
            .stdin(Stdio::piped())
            .stdout(log("stdout")?)
            .stderr(log("stderr")?)
            .spawn()
            .map_err(|e| {
                StartError::Missing(format!(
                    "cannot run {TESTPMD} ({e}): install Debian's dpdk-dev package, which has \
                     it (scripts/setup does)"
                ))
            })
    }

    fn wait_for_socket(&mut self) -> Result<(), StartError> {
        let t = self;
        let failed = |what: String| StartError::Failed(what);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !t.sock.exists() {
            if let Ok(Some(status)) = t.child.try_wait() {
                return Err(failed(format!(
                    "{TESTPMD} exited ({status}) before creating its socket:\n{}",
                    t.logs()
                )));
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "{TESTPMD} did not create {} within 30 s:\n{}",
                    t.sock.display(),
                    t.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it, and starts it again on the same socket path with the same command line.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        let _ = std::fs::remove_file(&self.sock);
        self.child = Self::spawn(&self.args, self.dir.path())?;
        self.wait_for_socket()
    }

    /// Its standard output and error so far.
    pub fn logs(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            read("stdout"),
            read("stderr")
        )
    }

    /// Kills it (the socket closes).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.kill();
        // A killed testpmd leaves its runtime directory behind (/var/run/dpdk/<prefix> as
        // root, $XDG_RUNTIME_DIR/dpdk/<prefix> otherwise): remove ours.
        let mut dirs = vec![PathBuf::from("/var/run/dpdk").join(&self.prefix)];
        if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
            dirs.push(PathBuf::from(x).join("dpdk").join(&self.prefix));
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Waits until testpmd forwards on every pair: its port starts forwarding on its own schedule
/// once the vhost-user handshake is done (after our last `SET_VRING_ENABLE` has been answered),
/// and it drops what it dequeues before both of its queues are allowed (its `new_device`
/// allows the receive queues, then the transmit queues). A probe frame (EtherType 0x88b6) is
/// sent on each pair until one comes back; late copies are then drained.
pub fn warm_up(d: &mut NetDriver<VhostUserTransport>, pairs: u16) {
    let mut probe = vec![0xff; 6];
    probe.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x88, 0xb6]);
    probe.resize(60, 0);
    let hdr = NetHdr::default();
    for pair in 0..pairs {
        let deadline = Instant::now() + Duration::from_secs(20);
        'probe: loop {
            assert!(
                Instant::now() < deadline,
                "testpmd forwarded no probe on pair {pair} within 20 s"
            );
            d.send_on(pair, &probe, &hdr).unwrap();
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(500) {
                if d.recv_on(pair).unwrap().is_some() {
                    break 'probe;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_millis(200) {
            let _ = d.recv_on(pair).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
