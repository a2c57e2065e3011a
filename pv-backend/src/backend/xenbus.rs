//! The back end's side of the XenBus handshake (Xen's `docs/misc/xenstore-paths` and the driver life
//! cycle in `io/xenbus.h`), generic over the device.
//!
//! 1. The toolstack creates the back end's directory (`/local/domain/<backend>/backend/<type>/<front
//!    domid>/<devid>`) with `frontend` and `frontend-id`, and the front end's directory.
//! 2. [`XenbusBackend::start`] writes the device's features ([`XenbusDevice::features`]) and moves to
//!    InitWait, then watches the front end's `state`.
//! 3. When the front end reaches Initialised (or Connected: a front end that skips Initialised is
//!    accepted), the back end reads what the front end published (ring references, event channels,
//!    `protocol`, queues; the helpers of [`FrontendView`] check every key), connects the device
//!    ([`XenbusDevice::connect`]) and moves to Connected.
//! 4. Closing and Closed from the front end disconnect the device; a front end that goes back to
//!    Initialising afterwards (a reconnection, as after a guest's kexec) gets InitWait again.
//!
//! Anything wrong in what the front end wrote is a typed [`HandshakeError`]; the back end writes it to its
//! `error` node (as `xenbus_dev_fatal` does) and moves to Closing. The front end may start over.

use std::time::Duration;

use xen_abi::DomId;
use xen_abi::grant_table::GrantRef;
use xen_abi::xenbus::{XenbusError, XenbusState};
use xen_abi::xs_wire::parse_decimal;

use super::xs::{XsError, XsHandle};

/// What can be wrong in a handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A XenStore operation failed.
    #[error(transparent)]
    Xs(#[from] XsError),
    /// A node the protocol requires is missing.
    #[error("{path} is missing: the front end must write it before it moves to Initialised")]
    MissingKey {
        /// The node.
        path: String,
    },
    /// A node that must hold a decimal number does not.
    #[error("{path} is {value:?}, not a decimal number")]
    NotNumeric {
        /// The node.
        path: String,
        /// What it holds (lossily decoded).
        value: String,
    },
    /// The front end's `state` does not parse.
    #[error("front end state {path}: {source}")]
    BadState {
        /// The node.
        path: String,
        /// Why.
        #[source]
        source: XenbusError,
    },
    /// `multi-queue-num-queues` is 0 or above what the back end offered.
    #[error("multi-queue-num-queues is {value}; it must be 1 to multi-queue-max-queues ({max})")]
    QueueCount {
        /// The value.
        value: u32,
        /// `multi-queue-max-queues`.
        max: u32,
    },
    /// `ring-page-order` is above what the back end offered.
    #[error("{path} is {value}, above max-ring-page-order ({max})")]
    RingPageOrder {
        /// The node.
        path: String,
        /// The value.
        value: u32,
        /// `max-ring-page-order`.
        max: u32,
    },
    /// Two `queue-N` directories name the same queue (`queue-1` and `queue-01`).
    #[error("{first} and {second} both name queue {index}")]
    DuplicateQueue {
        /// The queue number.
        index: u32,
        /// One directory.
        first: String,
        /// The other.
        second: String,
    },
    /// A `queue-N` directory below `multi-queue-num-queues` is missing.
    #[error("{path} is missing: multi-queue-num-queues is {count}")]
    MissingQueue {
        /// The directory.
        path: String,
        /// `multi-queue-num-queues`.
        count: u32,
    },
    /// The `protocol` names no ABI this back end knows.
    #[error("protocol {value:?} is not one of x86_32-abi, x86_64-abi, arm-abi")]
    UnknownProtocol {
        /// The value.
        value: String,
    },
    /// The toolstack did not set up the back end's directory.
    #[error("{path} is missing or invalid: the toolstack must write the back end's frontend nodes")]
    NoFrontend {
        /// The node.
        path: String,
    },
    /// The device could not connect with what the front end published.
    #[error("connecting the device: {0}")]
    Device(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A front end's directory, read with checks.
#[derive(Debug)]
pub struct FrontendView<'a, X: ?Sized> {
    xs: &'a X,
    path: String,
    domid: DomId,
}

impl<'a, X: XsHandle + ?Sized> FrontendView<'a, X> {
    /// The front end's directory `path`, of domain `domid`.
    pub fn new(xs: &'a X, path: impl Into<String>, domid: DomId) -> Self {
        Self {
            xs,
            path: path.into(),
            domid,
        }
    }

    /// The front end's domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The front end's directory.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw value of `dir/key` (`dir` is relative to the front end's directory, "" for itself).
    pub fn read(&self, dir: &str, key: &str) -> Result<Option<Vec<u8>>, HandshakeError> {
        Ok(self.xs.read(&self.join(dir, key))?)
    }

    fn join(&self, dir: &str, key: &str) -> String {
        if dir.is_empty() {
            format!("{}/{key}", self.path)
        } else {
            format!("{}/{dir}/{key}", self.path)
        }
    }

    /// `dir/key` as a decimal `u32`, or `None` if absent.
    pub fn read_u32(&self, dir: &str, key: &str) -> Result<Option<u32>, HandshakeError> {
        let path = self.join(dir, key);
        match self.xs.read(&path)? {
            None => Ok(None),
            Some(v) => {
                let digits = v.strip_suffix(b"\0").unwrap_or(&v);
                parse_decimal(digits)
                    .map(Some)
                    .ok_or_else(|| HandshakeError::NotNumeric {
                        path,
                        value: String::from_utf8_lossy(&v).into_owned(),
                    })
            }
        }
    }

    /// `dir/key` as a decimal `u32`; missing is an error.
    pub fn require_u32(&self, dir: &str, key: &str) -> Result<u32, HandshakeError> {
        self.read_u32(dir, key)?
            .ok_or_else(|| HandshakeError::MissingKey {
                path: self.join(dir, key),
            })
    }

    /// A boolean feature node: absent or 0 is false, any other number true.
    pub fn read_flag(&self, dir: &str, key: &str) -> Result<bool, HandshakeError> {
        Ok(self.read_u32(dir, key)?.unwrap_or(0) != 0)
    }

    /// The directories of the queues, relative to the front end's: `[""]` without
    /// `multi-queue-num-queues`, else `queue-0` to `queue-<n-1>`, each checked to exist exactly once.
    pub fn queues(&self, max: u32) -> Result<Vec<String>, HandshakeError> {
        let Some(count) = self.read_u32("", "multi-queue-num-queues")? else {
            return Ok(vec![String::new()]);
        };
        if count == 0 || count > max {
            return Err(HandshakeError::QueueCount { value: count, max });
        }
        let mut found: Vec<Option<String>> = vec![None; count as usize];
        // Bounded by the store's quota on a node's children.
        for name in self.xs.directory(&self.path)? {
            let Some(num) = name.strip_prefix("queue-") else {
                continue;
            };
            let Some(index) = parse_decimal(num.as_bytes()) else {
                continue;
            };
            let Some(slot) = found.get_mut(index as usize) else {
                continue;
            };
            if let Some(first) = slot.take() {
                return Err(HandshakeError::DuplicateQueue {
                    index,
                    first,
                    second: name,
                });
            }
            *slot = Some(name);
        }
        found
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                d.ok_or_else(|| HandshakeError::MissingQueue {
                    path: format!("{}/queue-{i}", self.path),
                    count,
                })
            })
            .collect()
    }

    /// The ring's grant references in `dir`: `ring-ref` for a one-page ring, or `ring-ref0` to
    /// `ring-ref<2^order - 1>` with `ring-page-order` (at most `max_order`).
    pub fn ring_refs(&self, dir: &str, max_order: u32) -> Result<Vec<GrantRef>, HandshakeError> {
        // The order may sit in the queue's directory or, for every queue, in the front end's.
        let order = match self.read_u32(dir, "ring-page-order")? {
            Some(o) => Some((o, self.join(dir, "ring-page-order"))),
            None if !dir.is_empty() => self
                .read_u32("", "ring-page-order")?
                .map(|o| (o, self.join("", "ring-page-order"))),
            None => None,
        };
        match order {
            None => Ok(vec![self.require_u32(dir, "ring-ref")?]),
            Some((order, path)) => {
                if order > max_order {
                    return Err(HandshakeError::RingPageOrder {
                        path,
                        value: order,
                        max: max_order,
                    });
                }
                (0..1u32 << order)
                    .map(|i| self.require_u32(dir, &format!("ring-ref{i}")))
                    .collect()
            }
        }
    }
}

/// A device served through the handshake.
pub trait XenbusDevice: Send {
    /// The nodes (name, value) written in the back end's directory before it moves to InitWait: the
    /// features it offers.
    fn features(&self) -> Vec<(String, String)>;

    /// The front end is ready: read what it published, connect, and return the nodes to write before
    /// moving to Connected.
    fn connect(
        &mut self,
        front: &FrontendView<'_, dyn XsHandle>,
    ) -> Result<Vec<(String, String)>, HandshakeError>;

    /// Stops serving the front end and releases what it granted. Idempotent.
    fn disconnect(&mut self);

    /// A fatal error the device found while connected (a front end that broke its ring), once.
    fn take_fatal_error(&mut self) -> Option<String> {
        None
    }
}

/// One device's back end driving the handshake.
pub struct XenbusBackend<D> {
    xs: std::sync::Arc<dyn XsHandle>,
    backend_path: String,
    frontend_path: String,
    frontend_id: DomId,
    state: XenbusState,
    device: D,
    token: String,
}

impl<D> std::fmt::Debug for XenbusBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenbusBackend")
            .field("backend_path", &self.backend_path)
            .field("frontend_path", &self.frontend_path)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<D: XenbusDevice> XenbusBackend<D> {
    /// Attaches to the back end directory `backend_path`, whose `frontend` and `frontend-id` nodes the
    /// toolstack wrote.
    pub fn new(
        xs: std::sync::Arc<dyn XsHandle>,
        backend_path: impl Into<String>,
        device: D,
    ) -> Result<Self, HandshakeError> {
        let backend_path = backend_path.into();
        let fpath = format!("{backend_path}/frontend");
        let frontend_path = xs
            .read(&fpath)?
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|p| p.starts_with('/'))
            .ok_or(HandshakeError::NoFrontend { path: fpath })?;
        let idpath = format!("{backend_path}/frontend-id");
        let frontend_id = xs
            .read(&idpath)?
            .and_then(|v| parse_decimal(&v))
            .and_then(|v| DomId::try_from(v).ok())
            .ok_or(HandshakeError::NoFrontend { path: idpath })?;
        let token = format!("be:{backend_path}");
        Ok(Self {
            xs,
            backend_path,
            frontend_path,
            frontend_id,
            state: XenbusState::Initialising,
            device,
            token,
        })
    }

    /// The back end's current state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The front end's domain.
    pub fn frontend_id(&self) -> DomId {
        self.frontend_id
    }

    fn set_state(&mut self, state: XenbusState) -> Result<(), HandshakeError> {
        tracing::debug!(backend = %self.backend_path, from = %self.state, to = %state, "back end state");
        self.state = state;
        self.xs.write(
            &format!("{}/state", self.backend_path),
            state.as_xenstore().as_bytes(),
        )?;
        Ok(())
    }

    fn publish_features(&mut self) -> Result<(), HandshakeError> {
        for (k, v) in self.device.features() {
            self.xs
                .write(&format!("{}/{k}", self.backend_path), v.as_bytes())?;
        }
        self.xs.rm(&format!("{}/error", self.backend_path))?;
        self.set_state(XenbusState::InitWait)
    }

    /// Writes the features, moves to InitWait and watches the front end's state.
    pub fn start(&mut self) -> Result<(), HandshakeError> {
        self.publish_features()?;
        self.xs
            .watch(&format!("{}/state", self.frontend_path), &self.token)?;
        self.step()
    }

    fn fatal(&mut self, what: &str) -> Result<(), HandshakeError> {
        tracing::warn!(backend = %self.backend_path, error = what, "front end error");
        self.device.disconnect();
        self.xs
            .write(&format!("{}/error", self.backend_path), what.as_bytes())?;
        self.set_state(XenbusState::Closing)
    }

    fn front_state(&self) -> Result<XenbusState, HandshakeError> {
        let path = format!("{}/state", self.frontend_path);
        match self.xs.read(&path)? {
            None => Ok(XenbusState::Unknown),
            Some(v) => XenbusState::from_xenstore(&v)
                .map_err(|source| HandshakeError::BadState { path, source }),
        }
    }

    /// Looks at the front end's state (and the device's health) once, and acts on it.
    pub fn step(&mut self) -> Result<(), HandshakeError> {
        if let Some(e) = self.device.take_fatal_error() {
            return self.fatal(&e);
        }
        let front = match self.front_state() {
            Ok(s) => s,
            Err(e @ HandshakeError::BadState { .. }) => {
                // A garbage state is not a state change: say so, and wait for a valid one.
                let msg = e.to_string();
                self.xs
                    .write(&format!("{}/error", self.backend_path), msg.as_bytes())?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        use XenbusState::*;
        match front {
            Initialising | InitWait => match self.state {
                // A front end that starts over after Closed, or resets while connected.
                Closed | Closing | Connected => {
                    self.device.disconnect();
                    self.publish_features()?;
                }
                _ => {}
            },
            Initialised | Connected => {
                if matches!(self.state, InitWait | Initialised) {
                    let xs = self.xs.clone();
                    let view =
                        FrontendView::new(&*xs, self.frontend_path.clone(), self.frontend_id);
                    match self.device.connect(&view) {
                        Ok(nodes) => {
                            for (k, v) in nodes {
                                self.xs
                                    .write(&format!("{}/{k}", self.backend_path), v.as_bytes())?;
                            }
                            self.set_state(Connected)?;
                        }
                        Err(HandshakeError::Xs(e)) => return Err(HandshakeError::Xs(e)),
                        Err(e) => return self.fatal(&e.to_string()),
                    }
                }
            }
            Closing if !matches!(self.state, Closing | Closed) => {
                self.device.disconnect();
                self.set_state(Closing)?;
            }
            Closed | Unknown if self.state != Closed => {
                self.device.disconnect();
                self.set_state(Closed)?;
            }
            Reconfiguring | Reconfigured => {
                tracing::debug!(backend = %self.backend_path, "front end reconfiguration is not supported; ignored");
            }
            _ => {}
        }
        Ok(())
    }

    /// Waits up to `timeout` for the front end to change, then [`step`](Self::step)s.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), HandshakeError> {
        // Drain every pending event: one step looks at the latest state.
        let mut wait = timeout;
        while self.xs.next_event(wait)?.is_some() {
            wait = Duration::ZERO;
        }
        self.step()
    }

    /// Serves the handshake until `stop` is set, then disconnects the device.
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool) -> Result<(), HandshakeError> {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            self.poll(Duration::from_millis(20))?;
        }
        self.device.disconnect();
        let _ = self
            .xs
            .unwatch(&format!("{}/state", self.frontend_path), &self.token);
        Ok(())
    }
}
