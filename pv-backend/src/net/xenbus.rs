//! netback as a [`XenbusDevice`]: the features it offers in InitWait, the front end's rings and event
//! channels it connects (`tx-ring-ref`, `rx-ring-ref`, `event-channel` or `event-channel-tx` and
//! `-rx`, and the control ring's `ctrl-ring-ref` and `event-channel-ctrl` if given), and one thread
//! per queue serving its [`NetQueue`].
//!
//! Multi-queue: `multi-queue-max-queues` ([`NetBackConfig::max_queues`]) is offered; a front end that
//! writes `multi-queue-num-queues` gets that many queues, each from its `queue-N` directory (the
//! count and the directories are checked by [`FrontendView::queues`]: 0, above the maximum,
//! duplicate or missing directories are refused). The one device below is shared through
//! [`SharedDevice`]: received frames are steered by the control ring's Toeplitz hash and mapping
//! table, which queue 0 serves.
//!
//! Each thread keeps serving while there is work and otherwise sleeps on its queue's doorbell, which
//! the event channels ring and, for a device that takes a waker ([`NetDevice::set_rx_waker`]: a
//! switch port), the device too. A device with a descriptor instead ([`NetDevice::poll_fd`]: a TAP
//! device) is slept on together with the doorbell, so an idle vif costs no CPU. Only a device with
//! neither is looked at every [`NetBackConfig::idle_poll`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::NetDevice;
use super::back::{NetQueue, NetQueueConfig, NetQueueStats, RxOffloads};
use super::ctrl::{CtrlRing, HashConfig};
use super::mq::{MqConfig, QueuePort, SharedDevice};
use crate::backend::{
    Doorbell, EventChannels, FrontendView, GrantAccess, GrantedRing, HandshakeError, XenbusDevice,
    XsHandle,
};

/// How netback behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetBackConfig {
    /// The queue's behaviour (`rx` and `multicast_control` are set from what the front end
    /// asks for).
    pub queue: NetQueueConfig,
    /// For a device that can neither wake the queue nor give a descriptor to sleep on: the longest an
    /// idle queue sleeps before it looks at the device again.
    pub idle_poll: Duration,
    /// `multi-queue-max-queues`: the most queues a front end may ask for (at least 1).
    pub max_queues: u32,
    /// How the queues share the device.
    pub mq: MqConfig,
}

impl Default for NetBackConfig {
    fn default() -> Self {
        Self {
            queue: NetQueueConfig::default(),
            idle_poll: Duration::from_millis(1),
            max_queues: 4,
            mq: MqConfig::default(),
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
    /// A queue's thread could not be started.
    #[error("starting a queue's thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A queue's doorbell (an eventfd) could not be made (typically `EMFILE`: out of file
    /// descriptors).
    #[error("making a queue's doorbell (an eventfd): {0}")]
    Doorbell(#[source] std::io::Error),
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

struct Worker<D> {
    doorbell: Arc<Doorbell>,
    thread: JoinHandle<QueuePort<D>>,
}

struct Running<D> {
    stop: Arc<AtomicBool>,
    shared: SharedDevice<D>,
    workers: Vec<Worker<D>>,
}

/// netback for one vif.
pub struct NetBack<D> {
    grants: Arc<dyn GrantAccess>,
    evtchns: Arc<dyn EventChannels>,
    device: Option<D>,
    config: NetBackConfig,
    running: Option<Running<D>>,
    stats: Arc<Vec<Mutex<NetQueueStats>>>,
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

    /// The counters of the current (or last) connection, summed over its queues.
    pub fn stats(&self) -> NetQueueStats {
        let mut t = NetQueueStats::default();
        for q in self.queue_stats() {
            t.tx_packets += q.tx_packets;
            t.tx_errors += q.tx_errors;
            t.tx_multicast += q.tx_multicast;
            t.rx_packets += q.rx_packets;
            t.rx_dropped += q.rx_dropped;
            t.tx_notifies += q.tx_notifies;
            t.rx_notifies += q.rx_notifies;
        }
        t
    }

    /// The counters of each queue of the current (or last) connection.
    pub fn queue_stats(&self) -> Vec<NetQueueStats> {
        self.stats
            .iter()
            .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// How many received frames were steered to each queue of the current connection (empty when
    /// not connected).
    pub fn steered(&self) -> Vec<u64> {
        self.running
            .as_ref()
            .map(|r| r.shared.steered())
            .unwrap_or_default()
    }

    /// The number of queues being served (0 when not connected).
    pub fn queues(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.workers.len())
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
        let dirs = front.queues(self.config.max_queues.max(1))?;
        if !front.read_flag("", "request-rx-copy")? {
            return Err(dev(NetConnectError::NoRxCopy));
        }
        let mut qc = self.config.queue;
        // `io/netif.h`: IPv4 checksum offload is on unless the front end turns it off, IPv6's is
        // off unless it turns it on.
        qc.rx = RxOffloads {
            csum_ipv4: !front.read_flag("", "feature-no-csum-offload")?,
            csum_ipv6: front.read_flag("", "feature-ipv6-csum-offload")?,
            gso_tcpv4: front.read_flag("", "feature-gso-tcpv4")?,
            gso_tcpv6: front.read_flag("", "feature-gso-tcpv6")?,
        };
        qc.multicast_control = front.read_flag("", "request-multicast-control")?;
        let domid = front.domid();
        // Every queue's rings and ports first: nothing is started until all of them are good.
        let mut rings = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let tx_ref = front.require_u32(dir, "tx-ring-ref")?;
            let rx_ref = front.require_u32(dir, "rx-ring-ref")?;
            let (tx_port, rx_port) = match front.read_u32(dir, "event-channel")? {
                Some(p) => (p, p),
                None => (
                    front.require_u32(dir, "event-channel-tx")?,
                    front.require_u32(dir, "event-channel-rx")?,
                ),
            };
            let tx = GrantedRing::map(&*self.grants, domid, &[tx_ref])
                .map_err(|source| dev(NetConnectError::Ring { ring: "tx", source }))?;
            let rx = GrantedRing::map(&*self.grants, domid, &[rx_ref])
                .map_err(|source| dev(NetConnectError::Ring { ring: "rx", source }))?;
            let doorbell = Doorbell::try_new().map_err(|e| dev(NetConnectError::Doorbell(e)))?;
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
            rings.push((tx, rx, tx_ev, rx_ev, doorbell));
        }
        let nq = rings.len() as u32;
        let hash = Arc::new(RwLock::new(HashConfig::default()));
        // The control ring, if the front end set one up (`feature-ctrl-ring`); queue 0 serves it.
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
                    .bind(domid, port, rings[0].4.clone())
                    .map_err(|e| dev(e.into()))?;
                let mut c = CtrlRing::new(domid, self.grants.clone(), mem, ev, nq)
                    .map_err(|e| dev(NetConnectError::CtrlRing(e)))?;
                c.share_hash(hash.clone());
                Some(c)
            }
        };
        let device = self
            .device
            .take()
            .ok_or_else(|| dev(NetConnectError::DeviceBusy))?;
        let shared = SharedDevice::new(device, rings.len(), hash.clone(), self.config.mq);
        let mut queues = Vec::with_capacity(rings.len());
        for (i, (tx, rx, tx_ev, rx_ev, doorbell)) in rings.into_iter().enumerate() {
            match NetQueue::new(
                domid,
                self.grants.clone(),
                tx,
                rx,
                tx_ev,
                rx_ev,
                shared.port(i),
                qc,
            ) {
                Ok(q) => queues.push((q, doorbell)),
                Err(e) => {
                    drop(queues);
                    self.device = shared.into_inner().ok();
                    return Err(dev(e.into()));
                }
            }
        }
        let mut ctrl = ctrl;
        let stop = Arc::new(AtomicBool::new(false));
        self.stats = Arc::new((0..queues.len()).map(|_| Mutex::default()).collect());
        let mut workers = Vec::with_capacity(queues.len());
        let mut spawn_error = None;
        for (i, (mut queue, doorbell)) in queues.into_iter().enumerate() {
            match ctrl.take() {
                Some(c) => queue.attach_ctrl(c),
                None => queue.set_hash_source(hash.clone()),
            }
            let (s, bell, stats, fatal) = (
                stop.clone(),
                doorbell.clone(),
                self.stats.clone(),
                self.fatal.clone(),
            );
            let idle_poll = self.config.idle_poll;
            let spawned = std::thread::Builder::new()
                .name(format!("netback-d{domid}-q{i}"))
                .spawn(move || {
                    serve(&mut queue, &s, &bell, idle_poll, &stats[i], &fatal);
                    queue.into_device()
                });
            match spawned {
                Ok(thread) => workers.push(Worker { doorbell, thread }),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        self.running = Some(Running {
            stop,
            shared,
            workers,
        });
        if let Some(e) = spawn_error {
            self.stop_workers();
            return Err(dev(NetConnectError::Thread(e)));
        }
        Ok(Vec::new())
    }

    fn stop_workers(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.store(true, Ordering::Release);
            for w in &r.workers {
                w.doorbell.ring();
            }
            for w in r.workers {
                let _ = w.thread.join();
            }
            self.device = r.shared.into_inner().ok();
        }
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
    // doorbell; with a descriptor, it sleeps on both; otherwise it looks every `idle_poll`.
    let bell: Arc<Doorbell> = doorbell.clone();
    let evented = queue
        .device_mut()
        .set_rx_waker(Arc::new(move || bell.ring()));
    let fd = queue.device().poll_fd();
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
                if queue.tx_stalled() {
                    // The device does not say when it has room again.
                    doorbell.wait(idle_poll);
                } else if evented || (fd.is_some() && !queue.rx_has_room()) {
                    // Nothing to take from the device until it (or the front end, posting RX
                    // buffers) rings.
                    doorbell.wait(EVENTED_IDLE);
                } else if let Some(fd) = fd {
                    doorbell.wait_or_readable(fd, EVENTED_IDLE);
                } else {
                    doorbell.wait(idle_poll);
                }
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
        .chain([(
            "multi-queue-max-queues".to_owned(),
            self.config.max_queues.max(1).to_string(),
        )])
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
        self.stop_workers();
    }

    fn take_fatal_error(&mut self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl<D> Drop for NetBack<D> {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.store(true, Ordering::Release);
            for w in &r.workers {
                w.doorbell.ring();
            }
            for w in r.workers {
                let _ = w.thread.join();
            }
        }
    }
}
