//! The Unix socket transport of libxenstore: clients connect to a socket path (the one they find in
//! `XENSTORED_PATH`) and exchange `xsd_sockmsg` messages. Every socket client is dom0, privileged, as
//! with C xenstored's `/run/xenstored/socket`.
//!
//! Each connection has a reader thread and a writer thread; the store is behind one mutex that is
//! never held during I/O. A client that never reads its responses only fills its own queue, which is
//! bounded by [`Quotas::output_bytes`](super::Quotas::output_bytes): over it, the store tells the
//! connection to close, and the socket is shut down. A client that stops mid-message only blocks its
//! own reader.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use tracing::{debug, info, warn};
use xen_abi::xs_wire::{FrameParser, XsErrno, XsWireError};

use super::store::{ConnEvent, ConnId, Notify, XenStore};

/// What can go wrong serving the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the socket path failed.
    #[error("cannot bind the XenStore socket at {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Accepting a client failed.
    #[error("accepting a XenStore client failed")]
    Accept(#[source] io::Error),
    /// Starting a connection's threads failed.
    #[error("cannot start a thread for a XenStore client")]
    Spawn(#[source] io::Error),
}

/// A store shared by the threads of a transport.
pub type SharedStore = Arc<Mutex<XenStore>>;

/// Locks the store, even if a thread panicked while holding it (the store stays consistent: every
/// operation checks before it changes anything).
pub fn lock(store: &SharedStore) -> MutexGuard<'_, XenStore> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listening XenStore socket.
#[derive(Debug)]
pub struct UnixServer {
    listener: UnixListener,
    path: PathBuf,
    store: SharedStore,
}

impl UnixServer {
    /// Binds `path` (replacing a stale socket file there) for `store`.
    pub fn bind(path: impl AsRef<Path>, store: SharedStore) -> Result<Self, ServerError> {
        let path = path.as_ref().to_path_buf();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        info!(path = %path.display(), "xenstored listening");
        Ok(Self {
            listener,
            path,
            store,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store served.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Accepts clients for ever, each served by its own threads.
    pub fn serve(&self) -> Result<(), ServerError> {
        loop {
            let (stream, _) = self.listener.accept().map_err(ServerError::Accept)?;
            let store = Arc::clone(&self.store);
            thread::Builder::new()
                .name("xs-conn".into())
                .spawn(move || serve_connection(stream, store))
                .map_err(ServerError::Spawn)?;
        }
    }
}

#[derive(Default)]
struct Wake {
    output: bool,
    close: bool,
}

type WakePair = Arc<(Mutex<Wake>, Condvar)>;

fn wake_lock(w: &WakePair) -> MutexGuard<'_, Wake> {
    w.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one client until it disconnects, sends a fatal message or is closed by the store.
pub fn serve_connection(stream: UnixStream, store: SharedStore) {
    let wake: WakePair = Arc::new((Mutex::new(Wake::default()), Condvar::new()));
    let Ok(shutdown_handle) = stream.try_clone() else {
        return;
    };
    let notify: Notify = {
        let wake = Arc::clone(&wake);
        Arc::new(move |ev: ConnEvent| {
            let mut w = wake_lock(&wake);
            match ev {
                ConnEvent::Output => w.output = true,
                ConnEvent::Close => {
                    w.close = true;
                    // Unblocks both threads, even a writer stuck on a client that does not read.
                    let _ = shutdown_handle.shutdown(std::net::Shutdown::Both);
                }
            }
            wake.1.notify_one();
        })
    };
    let conn = lock(&store).connect(0, Some(notify));
    debug!(conn = conn.0, "socket client connected");
    let writer = match stream.try_clone() {
        Ok(out) => {
            let (store, wake) = (Arc::clone(&store), Arc::clone(&wake));
            thread::Builder::new()
                .name("xs-writer".into())
                .spawn(move || write_loop(out, conn, &store, &wake))
                .ok()
        }
        Err(_) => None,
    };
    if writer.is_some() {
        read_loop(&stream, conn, &store);
    }
    {
        let mut w = wake_lock(&wake);
        w.close = true;
        wake.1.notify_one();
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    lock(&store).disconnect(conn);
    debug!(conn = conn.0, "socket client gone");
}

fn read_loop(mut stream: &UnixStream, conn: ConnId, store: &SharedStore) {
    let mut parser = FrameParser::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut st = lock(store);
        for item in parser.messages(&buf[..n]) {
            match item {
                Ok(msg) => st.handle_message(conn, &msg.as_message_ref()),
                Err(XsWireError::UnknownMessageType { req_id, tx_id, .. }) => {
                    st.reply_error(conn, req_id, tx_id, XsErrno::ENOSYS);
                }
                Err(e) => {
                    warn!(conn = conn.0, %e, "fatal protocol error: closing the connection");
                    return;
                }
            }
        }
        if st.is_closed(conn) {
            return;
        }
    }
}

fn write_loop(mut out: UnixStream, conn: ConnId, store: &SharedStore, wake: &WakePair) {
    loop {
        {
            let mut w = wake_lock(wake);
            while !w.output && !w.close {
                w = wake.1.wait(w).unwrap_or_else(|e| e.into_inner());
            }
            if w.close {
                return;
            }
            w.output = false;
        }
        let msgs = lock(store).take_output(conn);
        let mut bytes = Vec::new();
        for m in msgs {
            if let Ok(v) = m.to_vec() {
                bytes.extend_from_slice(&v);
            }
        }
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}
