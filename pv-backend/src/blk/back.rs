//! blkback as a [`XenbusDevice`]: the features it offers, the front end's rings it connects, one thread
//! per queue.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use xen_abi::blkif::{BlkifLimits, BlkifProtocol, VDISK_READONLY};

use super::device::BlockDevice;
use super::queue::{QueueParams, QueueServer, QueueStats};
use crate::backend::{
    Doorbell, EventChannels, FrontendView, GrantAccess, GrantedRing, HandshakeError, XenbusDevice,
    XsHandle,
};

/// What blkback offers; the defaults are Linux blkback's, with more indirect segments.
#[derive(Clone, Copy, Debug)]
pub struct BlkConfig {
    /// `feature-max-indirect-segments` (0: no indirect requests). At most 4096.
    pub max_indirect_segments: u32,
    /// `max-ring-page-order`.
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `feature-persistent`.
    pub persistent_grants: bool,
    /// Persistent grants kept per queue.
    pub max_persistent_grants: usize,
    /// `feature-barrier`.
    pub barrier: bool,
    /// How long an idle queue keeps polling (at most: the window adapts) before it sleeps. Zero (the
    /// default) sleeps at once, as Linux's blkback does: on the 2-vCPU machine of the benchmark, shared
    /// with other work, every poll cost more CPU than the wake-up it saved (see the README); a host
    /// with cores to spare may trade some for latency.
    pub poll_time: std::time::Duration,
    /// How long a queue with requests at the device keeps polling (the ring and the device's
    /// completions) while nothing happens, before it sleeps until an event or a completion rings its
    /// doorbell; zero (the default) or less than [`poll_time`](Self::poll_time) means `poll_time`.
    /// Polling sees a completion without a wake-up, but holds a CPU while the disk works: on a host
    /// with spare cores it can cut latency; on the 2-vCPU machine of the benchmark it lost (see the
    /// README).
    pub in_flight_poll_time: std::time::Duration,
    /// Inline serving (see [`InlineQueue`](super::InlineQueue)): the hypervisor layer's vCPU thread
    /// serves a queue that nobody else serves, on the guest's kick and while the guest blocks, through
    /// the handles of [`BlkBack::inline`]. Off by default: without calls to those handles a queue
    /// behaves as without it, its thread sleeping on its doorbell when idle rather than in the device.
    pub inline: bool,
}

impl Default for BlkConfig {
    fn default() -> Self {
        Self {
            max_indirect_segments: 256,
            max_ring_page_order: 4,
            max_queues: 4,
            persistent_grants: true,
            max_persistent_grants: 1056,
            barrier: true,
            poll_time: std::time::Duration::ZERO,
            in_flight_poll_time: std::time::Duration::ZERO,
            inline: false,
        }
    }
}

/// Why blkback could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlkConnectError {
    /// A ring could not be mapped.
    #[error("queue {queue}: {source}")]
    Ring {
        /// The queue.
        queue: usize,
        /// Why.
        #[source]
        source: crate::backend::RingMapError,
    },
    /// An event channel could not be bound.
    #[error("queue {queue}: {source}")]
    EventChannel {
        /// The queue.
        queue: usize,
        /// Why.
        #[source]
        source: crate::backend::EventChannelError,
    },
    /// The same grant reference is given for two ring pages.
    #[error("ring grant ref {gref} is given twice")]
    DuplicateRingRef {
        /// The reference.
        gref: u32,
    },
    /// The device could not open a queue.
    #[error("opening a device queue: {0}")]
    Device(#[source] std::io::Error),
    /// A queue's doorbell (an eventfd) could not be made.
    #[error("queue {queue}: making its doorbell (an eventfd): {source}")]
    Doorbell {
        /// The queue.
        queue: usize,
        /// Why (typically `EMFILE`: out of file descriptors).
        #[source]
        source: std::io::Error,
    },
    /// The queue server refused the ring.
    #[error("queue {queue}: {source}")]
    Queue {
        /// The queue.
        queue: usize,
        /// Why.
        #[source]
        source: super::queue::QueueError,
    },
    /// The device's properties cannot be described to a front end.
    #[error("the device's properties: {0}")]
    Limits(#[source] xen_abi::blkif::BlkifError),
}

struct RunningQueue {
    stop: Arc<AtomicBool>,
    /// The queue shared with inline callers (inline serving only).
    shared: Option<Arc<super::inline::Shared>>,
    doorbell: Arc<Doorbell>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<QueueStats>,
}

/// blkback for one virtual block device.
pub struct BlkBack {
    grants: Arc<dyn GrantAccess>,
    evtchns: Arc<dyn EventChannels>,
    device: Arc<dyn BlockDevice>,
    config: BlkConfig,
    queues: Vec<RunningQueue>,
    fatal: Arc<Mutex<Option<String>>>,
    protocol: Option<BlkifProtocol>,
    inline: super::InlineDevice,
    fixed_memory: Option<super::FixedMemory>,
}

impl std::fmt::Debug for BlkBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkBack")
            .field("config", &self.config)
            .field("queues", &self.queues.len())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl BlkBack {
    /// blkback serving `device`, reaching guest pages through `grants` and binding ports with `evtchns`.
    pub fn new(
        grants: Arc<dyn GrantAccess>,
        evtchns: Arc<dyn EventChannels>,
        device: Arc<dyn BlockDevice>,
        config: BlkConfig,
    ) -> Self {
        Self {
            grants,
            evtchns,
            device,
            config,
            queues: Vec::new(),
            fatal: Arc::default(),
            protocol: None,
            inline: super::InlineDevice::default(),
            fixed_memory: None,
        }
    }

    /// The guest's memory, which each queue's device may register with the kernel when it opens
    /// ([`BlockQueue::register_memory`](super::BlockQueue::register_memory)): the io_uring engine
    /// then reads and writes one-buffer requests into it with fixed buffers, without pinning their
    /// pages per request (`FileDevice::fixed_ios` counts them). Registering pins all of the memory
    /// for as long as a queue is connected.
    pub fn with_fixed_memory(mut self, memory: super::FixedMemory) -> Self {
        self.fixed_memory = Some(memory);
        self
    }

    /// The inline entries of this device's queues ([`BlkConfig::inline`]): the handle follows the
    /// connections (its queues are those of the current one), so take it once, before the back end is
    /// handed to its XenBus driver. Empty without inline serving.
    pub fn inline(&self) -> super::InlineDevice {
        self.inline.clone()
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> Result<BlkifLimits, xen_abi::blkif::BlkifError> {
        let info = self.device.info();
        BlkifLimits::new(
            info.size / u64::from(xen_abi::blkif::BLKIF_SECTOR_SIZE),
            info.logical_block_size,
        )?
        .with_read_only(info.read_only)
        .with_flush_cache(info.flush && !info.read_only)
        .with_barrier(self.config.barrier && !info.read_only)
        .with_discard(info.discard && !info.read_only, false)
        .with_max_indirect_segments(self.config.max_indirect_segments)
    }

    /// The counters of the connected queues.
    pub fn stats(&self) -> Vec<Arc<QueueStats>> {
        self.queues.iter().map(|q| q.stats.clone()).collect()
    }

    /// The protocol of the connected front end.
    pub fn protocol(&self) -> Option<BlkifProtocol> {
        self.protocol
    }

    /// The number of connected queues.
    pub fn nr_queues(&self) -> usize {
        self.queues.len()
    }

    fn connect_inner(
        &mut self,
        front: &FrontendView<'_, dyn XsHandle>,
    ) -> Result<Vec<(String, String)>, HandshakeError> {
        let dev = |e: BlkConnectError| HandshakeError::Device(Box::new(e));
        let limits = self.limits().map_err(|e| dev(BlkConnectError::Limits(e)))?;
        let protocol = match front.read("", "protocol")? {
            None => BlkifProtocol::from_name(xen_abi::blkif::XEN_IO_PROTO_ABI_NATIVE)
                .unwrap_or(BlkifProtocol::X86_64),
            Some(v) => {
                let s = String::from_utf8_lossy(v.strip_suffix(b"\0").unwrap_or(&v)).into_owned();
                BlkifProtocol::from_name(&s).ok_or(HandshakeError::UnknownProtocol { value: s })?
            }
        };
        let persistent =
            self.config.persistent_grants && front.read_flag("", "feature-persistent")?;
        let dirs = front.queues(self.config.max_queues)?;
        let mut plans = Vec::with_capacity(dirs.len());
        let mut seen = std::collections::HashSet::new();
        for dir in &dirs {
            let refs = front.ring_refs(dir, self.config.max_ring_page_order)?;
            for &r in &refs {
                if !seen.insert(r) {
                    return Err(dev(BlkConnectError::DuplicateRingRef { gref: r }));
                }
            }
            let port = front.require_u32(dir, "event-channel")?;
            plans.push((refs, port));
        }
        // Map and bind everything before starting anything, so that a failure leaves nothing running.
        let domid = front.domid();
        let info = self.device.info();
        let params = QueueParams {
            limits,
            persistent,
            max_persistent_grants: self.config.max_persistent_grants,
            poll_time: self.config.poll_time,
        };
        let mut servers = Vec::with_capacity(plans.len());
        for (queue, (refs, port)) in plans.into_iter().enumerate() {
            let ring = GrantedRing::map(&*self.grants, domid, &refs)
                .map_err(|source| dev(BlkConnectError::Ring { queue, source }))?;
            let doorbell = Doorbell::try_new()
                .map_err(|source| dev(BlkConnectError::Doorbell { queue, source }))?;
            let evtchn = self
                .evtchns
                .bind(domid, port, doorbell.clone())
                .map_err(|source| dev(BlkConnectError::EventChannel { queue, source }))?;
            let mut dq = self
                .device
                .open_queue()
                .map_err(|e| dev(BlkConnectError::Device(e)))?;
            if let Some(m) = &self.fixed_memory {
                dq.register_memory(m);
            }
            let server = QueueServer::new(
                domid,
                ring,
                protocol,
                0,
                self.grants.clone(),
                dq,
                evtchn,
                doorbell.clone(),
                info,
                params,
            )
            .map_err(|source| dev(BlkConnectError::Queue { queue, source }))?
            .with_in_flight_poll_time(self.config.in_flight_poll_time);
            servers.push((server, doorbell));
        }
        let mut inline = Vec::new();
        for (i, (mut server, doorbell)) in servers.into_iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let stats = server.stats();
            let fatal = self.fatal.clone();
            let s = stop.clone();
            type Body = Box<dyn FnOnce() -> Result<(), super::QueueError> + Send>;
            let (shared, body): (_, Body) = if self.config.inline {
                let sh = super::inline::Shared::new(server, doorbell.clone());
                let t = sh.clone();
                (Some(sh), Box::new(move || t.run_thread()))
            } else {
                (None, Box::new(move || server.run(&s)))
            };
            let thread = std::thread::Builder::new()
                .name(format!("blkback-d{domid}-q{i}"))
                .spawn(move || {
                    if let Err(e) = body() {
                        tracing::warn!(error = %e, "blkback queue stopped");
                        *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    }
                })
                .map_err(|e| dev(BlkConnectError::Device(e)))?;
            if let Some(sh) = &shared {
                inline.push(super::InlineQueue(sh.clone()));
            }
            self.queues.push(RunningQueue {
                stop,
                shared,
                doorbell,
                thread: Some(thread),
                stats,
            });
        }
        *self.inline.0.lock().unwrap_or_else(|e| e.into_inner()) = inline;
        self.protocol = Some(protocol);
        let mut vinfo = 0;
        if info.read_only {
            vinfo |= VDISK_READONLY;
        }
        Ok(vec![
            (
                "sectors".into(),
                (info.size / u64::from(xen_abi::blkif::BLKIF_SECTOR_SIZE)).to_string(),
            ),
            ("info".into(), vinfo.to_string()),
            ("sector-size".into(), info.logical_block_size.to_string()),
            (
                "physical-sector-size".into(),
                info.physical_block_size.to_string(),
            ),
        ])
    }
}

impl XenbusDevice for BlkBack {
    fn features(&self) -> Vec<(String, String)> {
        let info = self.device.info();
        let writable = !info.read_only;
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let mut v = vec![
            ("feature-flush-cache".into(), flag(info.flush && writable)),
            (
                "feature-barrier".into(),
                flag(self.config.barrier && writable),
            ),
            ("feature-discard".into(), flag(info.discard && writable)),
            (
                "feature-persistent".into(),
                flag(self.config.persistent_grants),
            ),
            (
                "max-ring-page-order".into(),
                self.config.max_ring_page_order.to_string(),
            ),
            (
                "multi-queue-max-queues".into(),
                self.config.max_queues.to_string(),
            ),
            ("mode".into(), if writable { "w" } else { "r" }.into()),
        ];
        if info.discard && writable {
            v.push((
                "discard-granularity".into(),
                info.discard_granularity.to_string(),
            ));
            v.push((
                "discard-alignment".into(),
                info.discard_alignment.to_string(),
            ));
            v.push(("discard-secure".into(), "0".into()));
        }
        if self.config.max_indirect_segments > 0 {
            v.push((
                "feature-max-indirect-segments".into(),
                self.config.max_indirect_segments.to_string(),
            ));
        }
        v
    }

    fn connect(
        &mut self,
        front: &FrontendView<'_, dyn XsHandle>,
    ) -> Result<Vec<(String, String)>, HandshakeError> {
        self.disconnect();
        let r = self.connect_inner(front);
        if r.is_err() {
            self.disconnect();
        }
        r
    }

    fn disconnect(&mut self) {
        self.inline
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for q in &self.queues {
            q.stop.store(true, std::sync::atomic::Ordering::Release);
            if let Some(sh) = &q.shared {
                sh.stop();
            }
            q.doorbell.ring();
        }
        for mut q in self.queues.drain(..) {
            if let Some(t) = q.thread.take() {
                let _ = t.join();
            }
        }
        self.protocol = None;
    }

    fn take_fatal_error(&mut self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for BlkBack {
    fn drop(&mut self) {
        self.disconnect();
    }
}
