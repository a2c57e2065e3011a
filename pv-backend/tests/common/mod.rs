//! Shared helpers: an in-process xenstored on a fresh socket, and a raw wire client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pv_backend::xenstore::server::{SharedStore, UnixServer};
use pv_backend::xenstore::{Quotas, XenStore};
use xen_abi::xs_wire::{XsType, parse_error};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The socket path of a test daemon; the file is removed when this is dropped.
pub struct TestSocket(PathBuf);

impl std::ops::Deref for TestSocket {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TestSocket {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TestSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A daemon serving a fresh store on a fresh socket path, for the life of the test process.
pub fn start_server(quotas: Quotas) -> (TestSocket, SharedStore) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("pv-backend-xs-{}-{n}.sock", std::process::id()));
    let store: SharedStore = Arc::new(Mutex::new(XenStore::new(quotas)));
    let server = UnixServer::bind(&path, Arc::clone(&store)).expect("bind the test socket");
    std::thread::spawn(move || server.serve());
    (TestSocket(path), store)
}

/// A raw client.
pub struct Raw {
    pub s: UnixStream,
}

/// A reply: its type, request id and payload.
pub type Reply = (u32, u32, Vec<u8>);

impl Raw {
    pub fn connect(path: &PathBuf) -> Self {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s }
    }

    /// Sends a header with any field values, and `payload`.
    pub fn send_raw(&mut self, ty: u32, req_id: u32, tx_id: u32, len: u32, payload: &[u8]) {
        let mut m = Vec::new();
        for v in [ty, req_id, tx_id, len] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        m.extend_from_slice(payload);
        self.s.write_all(&m).expect("send");
    }

    pub fn send(&mut self, ty: XsType, req_id: u32, tx_id: u32, payload: &[u8]) {
        self.send_raw(ty.raw(), req_id, tx_id, payload.len() as u32, payload);
    }

    /// The next message, or None at end of stream.
    pub fn recv(&mut self) -> Option<Reply> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).ok()?;
        let f = |i: usize| u32::from_ne_bytes(h[i * 4..i * 4 + 4].try_into().unwrap());
        let mut p = vec![0u8; f(3) as usize];
        self.s.read_exact(&mut p).ok()?;
        Some((f(0), f(1), p))
    }

    /// The next reply that is not a watch event.
    pub fn reply(&mut self) -> Reply {
        loop {
            let r = self.recv().expect("a reply");
            if r.0 != XsType::WatchEvent.raw() {
                return r;
            }
        }
    }

    /// Sends a request and returns its reply payload, or the errno name of an `XS_ERROR`.
    pub fn call(&mut self, ty: XsType, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.send(ty, 7, tx_id, payload);
        let (t, id, p) = self.reply();
        assert_eq!(id, 7);
        if t == XsType::Error.raw() {
            Err(parse_error(&p)
                .map(|e| e.name().to_owned())
                .unwrap_or_default())
        } else {
            assert_eq!(t, ty.raw());
            Ok(p)
        }
    }

    /// Whether the daemon closed the connection (within the read timeout).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A tool that the test needs: it must exist (the README test command installs it).
pub fn tool(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install it (scripts/setup lists xen-utils-4.17 and xenstore-utils)"
    );
    p
}
