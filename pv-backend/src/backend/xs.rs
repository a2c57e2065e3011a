//! A back end's handle on XenStore: the few operations the XenBus handshake needs, as a trait
//! ([`XsHandle`]), implemented over the in-process [`XenStore`] by [`LocalXs`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use xen_abi::DomId;
use xen_abi::xs_wire::{WatchEvent, XsType};

use crate::xenstore::server::SharedStore;
use crate::xenstore::{ConnEvent, ConnId, StoreError, XenStore};

/// What a XenStore operation of a back end can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XsError {
    /// The store refused the operation.
    #[error("XenStore {op} {path}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The store's answer.
        #[source]
        source: StoreError,
    },
    /// The connection to the store is gone.
    #[error("the XenStore connection is closed")]
    Closed,
}

/// The XenStore operations a back end uses. Paths are absolute.
pub trait XsHandle: Send + Sync {
    /// The value of `path`, or `None` if the node does not exist.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, XsError>;
    /// Sets `path` to `value`, creating it.
    fn write(&self, path: &str, value: &[u8]) -> Result<(), XsError>;
    /// Removes `path` and what is below it (no error if it does not exist).
    fn rm(&self, path: &str) -> Result<(), XsError>;
    /// The names of `path`'s children (empty if it does not exist).
    fn directory(&self, path: &str) -> Result<Vec<String>, XsError>;
    /// Watches `path` and its descendants, with `token`.
    fn watch(&self, path: &str, token: &str) -> Result<(), XsError>;
    /// Stops watching.
    fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError>;
    /// Waits up to `timeout` for a watch event and returns its `(path, token)`.
    fn next_event(&self, timeout: Duration) -> Result<Option<(String, String)>, XsError>;
}

#[derive(Debug, Default)]
struct Pending {
    output: bool,
    closed: bool,
}

/// An [`XsHandle`] on an in-process [`XenStore`] shared behind a mutex (as the Unix server and the guest
/// rings share it), connected as one domain (a back end usually runs as domain 0).
pub struct LocalXs {
    store: SharedStore,
    conn: ConnId,
    signal: Arc<(Mutex<Pending>, Condvar)>,
    events: Mutex<VecDeque<(String, String)>>,
}

impl std::fmt::Debug for LocalXs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalXs")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl LocalXs {
    /// Connects to `store` as domain `domid`.
    pub fn connect(store: SharedStore, domid: DomId) -> Self {
        let signal: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let s = signal.clone();
        let notify: crate::xenstore::Notify = Arc::new(move |ev| {
            let mut p = s.0.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                ConnEvent::Output => p.output = true,
                ConnEvent::Close => p.closed = true,
            }
            s.1.notify_all();
        });
        let conn = lock(&store).connect(domid, Some(notify));
        Self {
            store,
            conn,
            signal,
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    fn with<T>(
        &self,
        op: &'static str,
        path: &str,
        f: impl FnOnce(&mut XenStore, ConnId) -> Result<T, StoreError>,
    ) -> Result<T, XsError> {
        let mut store = lock(&self.store);
        if store.is_closed(self.conn) {
            return Err(XsError::Closed);
        }
        f(&mut store, self.conn).map_err(|source| XsError::Store {
            op,
            path: path.to_owned(),
            source,
        })
    }

    /// Moves queued watch events from the store into `events`.
    fn collect(&self) {
        let out = lock(&self.store).take_output(self.conn);
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        for msg in out {
            if msg.msg_type != XsType::WatchEvent {
                continue;
            }
            if let Ok(ev) = WatchEvent::parse(&msg.payload) {
                events.push_back((
                    String::from_utf8_lossy(ev.path).into_owned(),
                    String::from_utf8_lossy(ev.token).into_owned(),
                ));
            }
        }
    }
}

impl Drop for LocalXs {
    fn drop(&mut self) {
        lock(&self.store).disconnect(self.conn);
    }
}

fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, XenStore> {
    crate::xenstore::server::lock(store)
}

impl XsHandle for LocalXs {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        let r = self.with("read", path, |s, c| s.read(c, 0, path.as_bytes()));
        match r {
            Ok(v) => Ok(Some(v)),
            Err(XsError::Store {
                source: StoreError::NoEntry { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.with("write", path, |s, c| s.write(c, 0, path.as_bytes(), value))
    }

    fn rm(&self, path: &str) -> Result<(), XsError> {
        match self.with("rm", path, |s, c| s.rm(c, 0, path.as_bytes())) {
            Err(XsError::Store {
                source: StoreError::NoEntry { .. },
                ..
            }) => Ok(()),
            r => r,
        }
    }

    fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        match self.with("directory", path, |s, c| s.directory(c, 0, path.as_bytes())) {
            Err(XsError::Store {
                source: StoreError::NoEntry { .. },
                ..
            }) => Ok(Vec::new()),
            r => r,
        }
    }

    fn watch(&self, path: &str, token: &str) -> Result<(), XsError> {
        self.with("watch", path, |s, c| {
            s.watch(c, path.as_bytes(), token.as_bytes())
        })
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError> {
        self.with("unwatch", path, |s, c| {
            s.unwatch(c, path.as_bytes(), token.as_bytes())
        })
    }

    fn next_event(&self, timeout: Duration) -> Result<Option<(String, String)>, XsError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return Ok(Some(ev));
            }
            {
                let (m, cv) = &*self.signal;
                let mut p = m.lock().unwrap_or_else(|e| e.into_inner());
                if p.closed {
                    return Err(XsError::Closed);
                }
                let now = Instant::now();
                if !p.output {
                    if now >= deadline {
                        return Ok(None);
                    }
                    p = cv
                        .wait_timeout_while(p, deadline - now, |p| !p.output && !p.closed)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if p.closed {
                    return Err(XsError::Closed);
                }
                let had = std::mem::replace(&mut p.output, false);
                drop(p);
                if !had {
                    return Ok(None);
                }
            }
            self.collect();
        }
    }
}
