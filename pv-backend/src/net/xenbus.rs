//! netback as a [`XenbusDevice`]: the features it offers in InitWait, the front end's rings and event
//! channels it connects (`tx-ring-ref`, `rx-ring-ref`, `event-channel` or `event-channel-tx` and
//! `-rx`, and the control ring's `ctrl-ring-ref` and `event-channel-ctrl` if given), and one thread
//! serving the [`NetQueue`].
//!
//! One queue: `multi-queue-max-queues` is not offered (the bottom is one [`NetDevice`]). The thread
//! keeps serving while there is work and otherwise sleeps on the queue's doorbell, which the event
//! channels ring and, for a device that takes a waker ([`NetDevice::set_rx_waker`]: a switch port),
//! the device too. A device without one (a TAP device) is looked at every
//! [`NetBackConfig::idle_poll`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::NetDevice;
use super::back::{NetQueue, NetQueueConfig, NetQueueStats};
use super::ctrl::CtrlRing;
use crate::backend::{
    Doorbell, EventChannels, FrontendView, GrantAccess, GrantedRing, HandshakeError, XenbusDevice,
    XsHandle,
};

/// How netback behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetBackConfig {
    /// The queue's behaviour (`rx_gso` and `multicast_control` are set from what the front end
    /// asks for).
    pub queue: NetQueueConfig,
    /// For a device that cannot wake the queue (a TAP device): the longest an idle queue sleeps
    /// before it looks at the device again.
    pub idle_poll: Duration,
}

impl Default for NetBackConfig {
    fn default() -> Self {
        Self {
            queue: NetQueueConfig::default(),
            idle_poll: Duration::from_millis(1),
        }
    }
}

/// Why netback could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetConnectError {
    /// The front end does not do `request-rx-copy`, the only RX mode served.
    #[error("the front end does not set request-rx-copy = 1 (page flipping is not supported)")]
    NoRxCopy,
    /// The front end asks for more than one queue.
    #[error("multi-queue-num-queues is {value}; this back end serves one queue")]
    Queues {
        /// The value.
        value: u32,
    },
    /// A ring could not be mapped.
    #[error("{ring} ring: {source}")]
    Ring {
        /// `"tx"` or `"rx"`.
        ring: &'static str,
        /// Why.
        #[source]
        source: crate::backend::RingMapError,
    },
    /// An event channel could not be bound.
    #[error(transparent)]
    EventChannel(#[from] crate::backend::EventChannelError),
    /// The control ring's indices are broken.
    #[error("control ring: {0}")]
    CtrlRing(#[source] xen_abi::ring::RingError),
    /// The device is still held by a previous connection.
    #[error("the network device is still in use by a previous connection")]
    DeviceBusy,
    /// The queue refused the rings.
    #[error(transparent)]
    Queue(#[from] super::back::NetbackError),
}

struct Running<D> {
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
    thread: JoinHandle<D>,
}

/// netback for one vif.
pub struct NetBack<D> {
    grants: Arc<dyn GrantAccess>,
    evtchns: Arc<dyn EventChannels>,
    device: Option<D>,
    config: NetBackConfig,
    running: Option<Running<D>>,
    stats: Arc<Mutex<NetQueueStats>>,
    fatal: Arc<Mutex<Option<String>>>,
}

impl<D> std::fmt::Debug for NetBack<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBack")
            .field("config", &self.config)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<D: NetDevice + 'static> NetBack<D> {
    /// netback for `device`, reaching guest memory through `grants` and binding ports with `evtchns`.
    pub fn new(
        grants: Arc<dyn GrantAccess>,
        evtchns: Arc<dyn EventChannels>,
        device: D,
        config: NetBackConfig,
    ) -> Self {
        Self {
            grants,
            evtchns,
            device: Some(device),
            config,
            running: None,
            stats: Arc::default(),
            fatal: Arc::default(),
        }
    }

    /// The counters of the current (or last) connection.
    pub fn stats(&self) -> NetQueueStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a queue is being served.
    pub fn is_connected(&self) -> bool {
        self.running.is_some()
    }

    fn connect_inner(
        &mut self,
        front: &FrontendView<'_, dyn XsHandle>,
    ) -> Result<Vec<(String, String)>, HandshakeError> {
        let dev = |e: NetConnectError| HandshakeError::Device(Box::new(e));
        if let Some(n) = front.read_u32("", "multi-queue-num-queues")?
            && n != 1
        {
            return Err(dev(NetConnectError::Queues { value: n }));
        }
        if !front.read_flag("", "request-rx-copy")? {
            return Err(dev(NetConnectError::NoRxCopy));
        }
        let tx_ref = front.require_u32("", "tx-ring-ref")?;
        let rx_ref = front.require_u32("", "rx-ring-ref")?;
        let (tx_port, rx_port) = match front.read_u32("", "event-channel")? {
            Some(p) => (p, p),
            None => (
                front.require_u32("", "event-channel-tx")?,
                front.require_u32("", "event-channel-rx")?,
            ),
        };
        let mut qc = self.config.queue;
        qc.rx_gso = front.read_flag("", "feature-gso-tcpv4")?
            || front.read_flag("", "feature-gso-tcpv6")?;
        qc.multicast_control = front.read_flag("", "request-multicast-control")?;
        let domid = front.domid();
        let tx = GrantedRing::map(&*self.grants, domid, &[tx_ref])
            .map_err(|source| dev(NetConnectError::Ring { ring: "tx", source }))?;
        let rx = GrantedRing::map(&*self.grants, domid, &[rx_ref])
            .map_err(|source| dev(NetConnectError::Ring { ring: "rx", source }))?;
        let doorbell = Doorbell::new();
        let tx_ev = self
            .evtchns
            .bind(domid, tx_port, doorbell.clone())
            .map_err(|e| dev(e.into()))?;
        let rx_ev = if rx_port == tx_port {
            tx_ev.clone()
        } else {
            self.evtchns
                .bind(domid, rx_port, doorbell.clone())
                .map_err(|e| dev(e.into()))?
        };
        let device = self
            .device
            .take()
            .ok_or_else(|| dev(NetConnectError::DeviceBusy))?;
        // The control ring, if the front end set one up (`feature-ctrl-ring`).
        let ctrl = match front.read_u32("", "ctrl-ring-ref")? {
            None => None,
            Some(cref) => {
                let port = front.require_u32("", "event-channel-ctrl")?;
                let mem = GrantedRing::map(&*self.grants, domid, &[cref]).map_err(|source| {
                    dev(NetConnectError::Ring {
                        ring: "ctrl",
                        source,
                    })
                })?;
                let ev = self
                    .evtchns
                    .bind(domid, port, doorbell.clone())
                    .map_err(|e| dev(e.into()))?;
                Some(
                    CtrlRing::new(domid, self.grants.clone(), mem, ev, 1)
                        .map_err(|e| dev(NetConnectError::CtrlRing(e)))?,
                )
            }
        };
        let mut queue = NetQueue::new(domid, self.grants.clone(), tx, rx, tx_ev, rx_ev, device, qc)
            .map_err(|e| dev(e.into()))?;
        if let Some(c) = ctrl {
            queue.attach_ctrl(c);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, bell, stats, fatal) = (
            stop.clone(),
            doorbell.clone(),
            self.stats.clone(),
            self.fatal.clone(),
        );
        let idle_poll = self.config.idle_poll;
        let thread = std::thread::spawn(move || {
            serve(&mut queue, &s, &bell, idle_poll, &stats, &fatal);
            queue.into_device()
        });
        self.running = Some(Running {
            stop,
            doorbell,
            thread,
        });
        Ok(Vec::new())
    }
}

/// The longest an idle queue with an evented device sleeps (a safety net, not a poll).
const EVENTED_IDLE: Duration = Duration::from_millis(200);

fn serve<D: NetDevice>(
    queue: &mut NetQueue<GrantedRing, D>,
    stop: &AtomicBool,
    doorbell: &Arc<Doorbell>,
    idle_poll: Duration,
    stats: &Mutex<NetQueueStats>,
    fatal: &Mutex<Option<String>>,
) {
    // With a device that wakes us, an idle queue sleeps until a ring or the device rings the
    // doorbell; otherwise it looks at the device every `idle_poll`.
    let bell: Arc<Doorbell> = doorbell.clone();
    let evented = queue
        .device_mut()
        .set_rx_waker(Arc::new(move || bell.ring()));
    while !stop.load(Ordering::Acquire) {
        let r = queue.process(Instant::now()).and_then(|moved| {
            if moved {
                Ok(true)
            } else {
                queue.idle().map(|idle| !idle)
            }
        });
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = queue.stats();
        match r {
            Ok(true) => {}
            Ok(false) => {
                let sleep = if evented && !queue.tx_stalled() {
                    EVENTED_IDLE
                } else {
                    idle_poll
                };
                doorbell.wait(sleep);
            }
            Err(e) => {
                *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                return;
            }
        }
    }
}

impl<D: NetDevice + 'static> XenbusDevice for NetBack<D> {
    fn features(&self) -> Vec<(String, String)> {
        [
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-multicast-control", "1"),
            ("feature-split-event-channels", "1"),
            ("feature-ctrl-ring", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn connect(
        &mut self,
        front: &FrontendView<'_, dyn XsHandle>,
    ) -> Result<Vec<(String, String)>, HandshakeError> {
        self.disconnect();
        self.connect_inner(front)
    }

    fn disconnect(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.store(true, Ordering::Release);
            r.doorbell.ring();
            if let Ok(dev) = r.thread.join() {
                self.device = Some(dev);
            }
        }
    }

    fn take_fatal_error(&mut self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl<D> Drop for NetBack<D> {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.store(true, Ordering::Release);
            r.doorbell.ring();
            let _ = r.thread.join();
        }
    }
}
