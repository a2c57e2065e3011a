//! Where a console's output goes and its input comes from: a log file, a pty, or a Unix socket.
//!
//! A sink never blocks the back end: [`ConsoleSink::write_output`] takes what it can now (`Ok(0)`
//! when it would block) and [`ConsoleSink::read_input`] returns what is there now (`Ok(0)` when
//! nothing is). The back end keeps what the sink did not take in its own bounded buffer.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
use tracing::debug;

/// A destination for a guest's console output and a source of its input.
pub trait ConsoleSink {
    /// Takes as much of `data` as it can without blocking and returns how many bytes it took
    /// (`Ok(0)` when it would block).
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize>;

    /// Reads input for the guest into `buf` without blocking, returning how many bytes were read
    /// (`Ok(0)` when none are waiting). Output-only sinks return `Ok(0)`.
    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// The terminal a user opens to reach the guest, for a pty sink: what xenconsoled writes to
    /// `console/tty` ([`xs::connect`](super::xs::connect) does). `None` (the default) otherwise.
    fn tty_path(&self) -> Option<&Path> {
        None
    }
}

/// Treats `WouldBlock` and `Interrupted` as "nothing now".
fn nonblocking(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
        other => other,
    }
}

/// Output appended to a log file, as xenconsoled's `--log=guest` does (no input).
#[derive(Debug)]
pub struct LogFile {
    file: File,
    path: PathBuf,
}

impl LogFile {
    /// Opens (creating it if needed) `path` for appending.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { file, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ConsoleSink for LogFile {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        // A regular file takes everything; a short write is retried by the back end.
        nonblocking(self.file.write(data))
    }

    fn read_input(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

/// A pseudo-terminal in raw mode, as xenconsoled gives each guest: the back end holds the master
/// side, a user opens [`Pty::slave_path`] (`/dev/pts/N`) with a terminal program.
///
/// The back end also keeps the slave side open, as xenconsoled does, so that output written before
/// anyone attaches waits in the pty (up to the kernel's buffer, then in the back end's) instead of
/// failing with `EIO`.
#[derive(Debug)]
pub struct Pty {
    master: File,
    _slave: OwnedFd,
    slave_path: PathBuf,
}

impl Pty {
    /// Opens a new pty (`posix_openpt`, `grantpt`, `unlockpt`), puts its line discipline in raw
    /// mode (no echo, no line editing, no CR/LF translation: the guest's bytes pass unchanged) and
    /// makes the master non-blocking.
    pub fn open() -> io::Result<Self> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave_path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&slave_path)?
            .into();
        let mut termios = tcgetattr(&slave)?;
        termios.make_raw();
        tcsetattr(&slave, OptionalActions::Now, &termios)?;
        rustix::io::ioctl_fionbio(&master, true)?;
        Ok(Self {
            master: File::from(master),
            _slave: slave,
            slave_path,
        })
    }

    /// The slave device's path, for a terminal program (xenconsoled writes it to XenStore as
    /// `console/tty`).
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The master side, for polling it for readability and writability.
    pub fn master(&self) -> impl AsFd + '_ {
        &self.master
    }
}

impl ConsoleSink for Pty {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        nonblocking(self.master.write(data))
    }

    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.master.read(buf) {
            // EIO: every other opener of the slave closed it; we keep ours, so this is transient.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => nonblocking(other),
        }
    }

    fn tty_path(&self) -> Option<&Path> {
        Some(&self.slave_path)
    }
}

/// A listening Unix socket: one client at a time gets the output and sends the input, as a
/// `connection = socket` console (`docs/misc/console.txt`). When the client goes away the next one
/// is accepted; while none is connected, output waits in the back end's bounded buffer.
#[derive(Debug)]
pub struct UnixSocketSink {
    listener: UnixListener,
    client: Option<UnixStream>,
    path: PathBuf,
}

impl UnixSocketSink {
    /// Binds and listens on `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            client: None,
            path,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a client is connected now.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    fn client(&mut self) -> io::Result<Option<&mut UnixStream>> {
        if self.client.is_none() {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    debug!(path = %self.path.display(), "console client connected");
                    self.client = Some(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.client.as_mut())
    }

    fn drop_client(&mut self) {
        debug!(path = %self.path.display(), "console client went away");
        self.client = None;
    }
}

impl ConsoleSink for UnixSocketSink {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(client) = self.client()? else {
            return Ok(0);
        };
        match client.write(data) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(_) => {
                self.drop_client();
                Ok(0)
            }
        }
    }

    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(client) = self.client()? else {
            return Ok(0);
        };
        match client.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.drop_client();
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(_) => {
                self.drop_client();
                Ok(0)
            }
        }
    }
}

impl Drop for UnixSocketSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl<S: ConsoleSink + ?Sized> ConsoleSink for Box<S> {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        (**self).write_output(data)
    }
    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_input(buf)
    }
}
