//! The PV console ring (`start_info.console.domU`, `struct xencons_interface`), served by pv-backend's
//! console back-end on a thread, to one of: lines with the domain's name (the example's stdout, through the
//! domain's [`ConsoleSink`](crate::ConsoleSink)), a log file, or a pty (whose slave path is written to
//! `/local/domain/<domid>/console/tty`, as xenconsoled does).
//!
//! Everything the ring carried is also kept (the first [`CONSOLE_KEEP`] bytes)
//! for [`ConsoleRing::output`]. The guest's indices are checked by the back-end: a guest that breaks them
//! gets its console closed; flood control is xenconsoled's.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pv_backend::backend::Doorbell;
use pv_backend::console::{ConsoleBackend, ConsoleConfig, ConsoleSink, LogFile, Pty};

use super::{DeviceError, Dom0Port, GuestPage};
use crate::domain::{CONSOLE_KEEP, Domain, Hypervisor};
use crate::memory::PAGE_SIZE;

/// Where a domain's console ring goes.
#[derive(Clone, Default)]
pub enum ConsoleOutput {
    /// Whole lines to a callback with the domain's name (the domain's [`ConsoleSink`](crate::ConsoleSink),
    /// e.g. stdout with a `[name]` prefix); with `None`, only kept for [`ConsoleRing::output`].
    Lines(Option<crate::ConsoleSink>),
    /// Appended to a log file.
    LogFile(PathBuf),
    /// A pseudo-terminal (its slave path is in [`ConsoleRing::pty_path`] and in XenStore's `console/tty`).
    Pty,
    /// Not served.
    #[default]
    None,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lines(s) => write!(f, "Lines({})", if s.is_some() { "sink" } else { "kept" }),
            Self::LogFile(p) => write!(f, "LogFile({})", p.display()),
            Self::Pty => f.write_str("Pty"),
            Self::None => f.write_str("None"),
        }
    }
}

type Kept = Arc<Mutex<Vec<u8>>>;

fn keep(kept: &Kept, data: &[u8]) {
    let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
    let room = CONSOLE_KEEP.saturating_sub(k.len());
    k.extend_from_slice(&data[..data.len().min(room)]);
}

/// The sink behind the back-end: one of the outputs, and a copy of what passed.
enum Sink {
    Lines {
        name: String,
        sink: Option<crate::ConsoleSink>,
        line: Vec<u8>,
    },
    Log(LogFile),
    Pty(Pty),
}

struct KeepingSink {
    inner: Sink,
    kept: Kept,
}

impl ConsoleSink for KeepingSink {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Sink::Lines { name, sink, line } => {
                for &b in data {
                    if b == b'\n' {
                        if let Some(s) = sink {
                            s(name, &String::from_utf8_lossy(line));
                        }
                        line.clear();
                    } else if b != b'\r' && line.len() < 4096 {
                        line.push(b);
                    }
                }
                data.len()
            }
            Sink::Log(f) => f.write_output(data)?,
            Sink::Pty(p) => p.write_output(data)?,
        };
        keep(&self.kept, &data[..n]);
        Ok(n)
    }

    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Sink::Lines { .. } => Ok(0),
            Sink::Log(f) => f.read_input(buf),
            Sink::Pty(p) => p.read_input(buf),
        }
    }
}

/// A domain's console ring, served on a thread until dropped.
pub struct ConsoleRing {
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
    thread: Option<JoinHandle<()>>,
    kept: Kept,
    pty: Option<PathBuf>,
}

impl std::fmt::Debug for ConsoleRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleRing")
            .field("pty", &self.pty)
            .finish_non_exhaustive()
    }
}

impl ConsoleRing {
    /// Serves `domain`'s console ring to `output`. Returns `None` for [`ConsoleOutput::None`].
    pub fn attach(
        hv: &Hypervisor,
        domain: &Domain,
        output: ConsoleOutput,
    ) -> Result<Option<Self>, DeviceError> {
        let domid = domain.domid();
        let (inner, pty) = match output {
            ConsoleOutput::None => return Ok(None),
            ConsoleOutput::Lines(sink) => (
                Sink::Lines {
                    name: domain.name().to_string(),
                    sink,
                    line: Vec::new(),
                },
                None,
            ),
            ConsoleOutput::LogFile(path) => {
                let f = LogFile::open(&path).map_err(|source| DeviceError::Io {
                    what: format!("opening the console log {}", path.display()),
                    source,
                })?;
                (Sink::Log(f), None)
            }
            ConsoleOutput::Pty => {
                let p = Pty::open().map_err(|source| DeviceError::Io {
                    what: "opening a pty for the console".into(),
                    source,
                })?;
                let path = p.slave_path().to_path_buf();
                (Sink::Pty(p), Some(path))
            }
        };
        let kept: Kept = Arc::default();
        let sink = KeepingSink {
            inner,
            kept: kept.clone(),
        };
        let page = GuestPage::new(
            domain.memory().memory(),
            domain.layout().console / PAGE_SIZE,
            1,
        )?;
        let evtchn = super::boot_ports(domain)?.1;
        let doorbell = Doorbell::try_new().map_err(|source| DeviceError::Io {
            what: "the console back end's doorbell (an eventfd)".into(),
            source,
        })?;
        let port = Dom0Port::bind(hv, domid, evtchn, doorbell.clone(), Arc::default())?;
        let mut back = ConsoleBackend::new(
            page,
            port,
            sink,
            domid,
            ConsoleConfig::default(),
            Instant::now(),
        )
        .map_err(|source| DeviceError::Console { domid, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, db) = (stop.clone(), doorbell.clone());
            std::thread::Builder::new()
                .name(format!("console-{domid}"))
                .spawn(move || {
                    let mut flush_once = true;
                    loop {
                        let stopping = stop.load(Ordering::SeqCst);
                        let now = Instant::now();
                        if back.handle_event(now).is_err() {
                            break;
                        }
                        if stopping {
                            // One last pass after the stop so the final lines are not lost.
                            if flush_once {
                                flush_once = false;
                                continue;
                            }
                            break;
                        }
                        // With output held back (rate limit, slow sink), come back soon.
                        let wait = back
                            .resume_at()
                            .map(|t| t.saturating_duration_since(now))
                            .unwrap_or(Duration::from_secs(2))
                            .min(Duration::from_secs(2));
                        let wait = if back.pending_output() > 0 {
                            wait.min(Duration::from_millis(5))
                        } else {
                            wait
                        };
                        db.wait(wait);
                    }
                })
                .map_err(|source| DeviceError::Io {
                    what: "starting the console thread".into(),
                    source,
                })?
        };
        Ok(Some(Self {
            stop,
            doorbell,
            thread: Some(thread),
            kept,
            pty,
        }))
    }

    /// Everything the guest wrote to its console ring so far (the first `CONSOLE_KEEP` bytes).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.kept.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The pty's slave path, for [`ConsoleOutput::Pty`].
    pub fn pty_path(&self) -> Option<&std::path::Path> {
        self.pty.as_deref()
    }

    /// Stops serving (after one last pass over the ring) and waits for the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.doorbell.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConsoleRing {
    fn drop(&mut self) {
        self.stop();
    }
}
