//! An in-process virtual L2 switch: guests' netbacks (and a TAP uplink, through a bridge loop of
//! the caller's) plug [`SwitchPort`]s into a [`Switch`].
//!
//! - **Learning.** The source MAC of every frame a port sends is learned for that port (unless it
//!   is a group address); an address that moves to another port follows it. Entries age out
//!   after [`SwitchConfig::ageing`] without traffic (300 s, as Linux's bridge), and the table
//!   holds at most [`SwitchConfig::max_fdb_entries`] addresses: when it is full of live entries a
//!   new address is not learned (its frames are flooded), so a guest sending from random source
//!   addresses cannot grow it.
//! - **Forwarding.** A unicast frame to a learned address goes to that port only (and is dropped
//!   if that is the sender's own port); unknown unicast, broadcast and multicast frames are
//!   flooded to every other port.
//! - **Bounded queues.** Each port has a receive queue bounded in frames and in bytes. A frame for
//!   a full queue is dropped and counted on that port ([`PortStats::dropped`]), so a port that
//!   never drains holds a bounded amount of memory and never stalls the sender or other ports.
//!   Flooded frames share one copy of their bytes.
//!
//! Time comes from a [`Clock`], so that ageing can be tested without sleeping.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    ETH_HLEN, FrameMeta, MAX_FRAME_LEN, MacAddr, NetDevice, NetError, Offloads, RxInfo, dst_mac,
    is_multicast, src_mac,
};

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told: for tests of ageing.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *lock(&self.offset) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *lock(&self.offset)
    }
}

/// Locks a mutex, going on with the data if a holder panicked (the switch's state stays
/// consistent at every unlock).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a switch behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// How long a learned address lives without traffic from it (Linux's bridge: 300 s).
    pub ageing: Duration,
    /// The most addresses the forwarding table holds.
    pub max_fdb_entries: usize,
    /// The most frames a port's receive queue holds.
    pub queue_frames: usize,
    /// The most bytes a port's receive queue holds.
    pub queue_bytes: usize,
    /// The longest frame the switch carries.
    pub max_frame_len: usize,
    /// The offloads its ports accept (frames keep their metadata through the switch, so every
    /// receiver must handle them).
    pub offloads: Offloads,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            ageing: Duration::from_secs(300),
            max_fdb_entries: 4096,
            queue_frames: 1024,
            queue_bytes: 4 << 20,
            max_frame_len: MAX_FRAME_LEN,
            offloads: Offloads::ALL,
        }
    }
}

/// A port's number on its switch.
pub type PortId = u32;

/// Counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the port sent into the switch.
    pub tx_frames: u64,
    /// Frames queued for the port.
    pub rx_queued: u64,
    /// Frames the port received.
    pub rx_frames: u64,
    /// Frames for the port dropped because its queue was full.
    pub dropped: u64,
}

#[derive(Debug)]
struct Queued {
    data: Arc<[u8]>,
    meta: FrameMeta,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Queued>,
    bytes: usize,
    closed: bool,
    /// Threads in `wait_readable` (a notification is a system call, so it is only made for them).
    waiters: usize,
    /// Called after each frame queued (`NetDevice::set_rx_waker`).
    waker: Option<Waker>,
}

type Waker = Arc<dyn Fn() + Send + Sync>;

impl fmt::Debug for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueState")
            .field("frames", &self.frames.len())
            .field("bytes", &self.bytes)
            .field("closed", &self.closed)
            .field("waiters", &self.waiters)
            .field("waker", &self.waker.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct PortQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    tx_frames: AtomicU64,
    rx_queued: AtomicU64,
    rx_frames: AtomicU64,
    dropped: AtomicU64,
}

impl PortQueue {
    fn push(&self, config: &SwitchConfig, data: &Arc<[u8]>, meta: FrameMeta) {
        let mut q = lock(&self.state);
        if q.closed
            || q.frames.len() >= config.queue_frames
            || q.bytes + data.len() > config.queue_bytes
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.bytes += data.len();
        q.frames.push_back(Queued {
            data: Arc::clone(data),
            meta,
        });
        self.rx_queued.fetch_add(1, Ordering::Relaxed);
        let wake = q.waiters > 0;
        let waker = q.waker.clone();
        drop(q);
        if wake {
            self.ready.notify_all();
        }
        if let Some(w) = waker {
            w();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FdbEntry {
    port: PortId,
    seen: Instant,
}

#[derive(Debug, Default)]
struct State {
    ports: HashMap<PortId, Arc<PortQueue>>,
    fdb: HashMap<MacAddr, FdbEntry>,
    next_port: PortId,
    last_sweep: Option<Instant>,
}

struct Inner {
    config: SwitchConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switch")
            .field("config", &self.config)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// A virtual L2 switch. Cloning it gives another handle to the same switch.
#[derive(Debug, Clone)]
pub struct Switch {
    inner: Arc<Inner>,
}

impl Switch {
    /// A switch with `config` and the system clock.
    pub fn new(config: SwitchConfig) -> Result<Self, NetError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A switch with `config` and `clock`.
    pub fn with_clock(config: SwitchConfig, clock: Arc<dyn Clock>) -> Result<Self, NetError> {
        if config.queue_frames == 0
            || config.queue_bytes < config.max_frame_len
            || config.max_frame_len < ETH_HLEN
            || config.max_fdb_entries == 0
        {
            return Err(NetError::BadMeta {
                what: format!(
                    "switch configuration {config:?}: queues must hold at least one frame of \
                     max_frame_len (>= 14) bytes, and the table at least one entry"
                ),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                clock,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Adds a port. Dropping the port removes it and forgets the addresses learned on it.
    pub fn add_port(&self) -> SwitchPort {
        let mut st = lock(&self.inner.state);
        let mut id = st.next_port;
        while st.ports.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        st.next_port = id.wrapping_add(1);
        let queue = Arc::new(PortQueue::default());
        st.ports.insert(id, Arc::clone(&queue));
        SwitchPort {
            switch: Arc::clone(&self.inner),
            id,
            queue,
            targets: Vec::new(),
        }
    }

    /// The number of ports.
    pub fn port_count(&self) -> usize {
        lock(&self.inner.state).ports.len()
    }

    /// The port on which `mac` was learned, if its entry is alive.
    pub fn lookup(&self, mac: &MacAddr) -> Option<PortId> {
        let now = self.inner.clock.now();
        let st = lock(&self.inner.state);
        st.fdb
            .get(mac)
            .filter(|e| now.saturating_duration_since(e.seen) < self.inner.config.ageing)
            .map(|e| e.port)
    }

    /// The number of entries in the forwarding table (live or not yet swept).
    pub fn fdb_len(&self) -> usize {
        lock(&self.inner.state).fdb.len()
    }

    /// The configuration.
    pub fn config(&self) -> &SwitchConfig {
        &self.inner.config
    }
}

impl Inner {
    /// Learns the sender and picks the destination queues of a frame.
    fn route(&self, from: PortId, frame: &[u8], targets: &mut Vec<Arc<PortQueue>>) {
        let now = self.clock.now();
        let ageing = self.config.ageing;
        let alive = |e: &FdbEntry| now.saturating_duration_since(e.seen) < ageing;
        let mut st = lock(&self.state);
        let src = src_mac(frame);
        if !is_multicast(&src) && src != [0; 6] {
            if let Some(e) = st.fdb.get_mut(&src) {
                e.port = from;
                e.seen = now;
            } else {
                if st.fdb.len() >= self.config.max_fdb_entries {
                    // Sweep dead entries, at most once per second of clock time, so that a flood
                    // of new addresses against a full table costs no more than a lookup.
                    let due = st
                        .last_sweep
                        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
                    if due {
                        st.fdb.retain(|_, e| alive(e));
                        st.last_sweep = Some(now);
                    }
                }
                if st.fdb.len() < self.config.max_fdb_entries {
                    st.fdb.insert(
                        src,
                        FdbEntry {
                            port: from,
                            seen: now,
                        },
                    );
                }
            }
        }
        let dst = dst_mac(frame);
        if !is_multicast(&dst) {
            match st.fdb.get(&dst).copied() {
                Some(e) if alive(&e) => {
                    if e.port != from
                        && let Some(q) = st.ports.get(&e.port)
                    {
                        targets.push(Arc::clone(q));
                    }
                    return;
                }
                Some(_) => {
                    st.fdb.remove(&dst);
                }
                None => {}
            }
        }
        targets.extend(
            st.ports
                .iter()
                .filter(|(id, _)| **id != from)
                .map(|(_, q)| Arc::clone(q)),
        );
    }
}

/// A port of a [`Switch`]: a [`NetDevice`] whose frames go to the other ports.
#[derive(Debug)]
pub struct SwitchPort {
    switch: Arc<Inner>,
    id: PortId,
    queue: Arc<PortQueue>,
    /// The destination queues of the frame being sent (kept to reuse its allocation).
    targets: Vec<Arc<PortQueue>>,
}

impl SwitchPort {
    /// The port's number.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// The port's counters.
    pub fn stats(&self) -> PortStats {
        PortStats {
            tx_frames: self.queue.tx_frames.load(Ordering::Relaxed),
            rx_queued: self.queue.rx_queued.load(Ordering::Relaxed),
            rx_frames: self.queue.rx_frames.load(Ordering::Relaxed),
            dropped: self.queue.dropped.load(Ordering::Relaxed),
        }
    }

    /// Frames and bytes waiting in the port's receive queue.
    pub fn queued(&self) -> (usize, usize) {
        let q = lock(&self.queue.state);
        (q.frames.len(), q.bytes)
    }
}

impl NetDevice for SwitchPort {
    fn offloads(&self) -> Offloads {
        self.switch.config.offloads
    }

    fn max_frame_len(&self) -> usize {
        self.switch.config.max_frame_len
    }

    fn send(&mut self, frame: &[u8], meta: &FrameMeta) -> Result<(), NetError> {
        if frame.len() < ETH_HLEN {
            return Err(NetError::FrameTooShort { len: frame.len() });
        }
        let max = self.switch.config.max_frame_len;
        if frame.len() > max {
            return Err(NetError::FrameTooLong {
                len: frame.len(),
                max,
            });
        }
        meta.validate(frame.len())?;
        self.switch.config.offloads.allows(meta)?;
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        self.switch.route(self.id, frame, &mut targets);
        self.queue.tx_frames.fetch_add(1, Ordering::Relaxed);
        if !targets.is_empty() {
            let data: Arc<[u8]> = Arc::from(frame);
            for q in targets.drain(..) {
                q.push(&self.switch.config, &data, *meta);
            }
        }
        self.targets = targets;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<RxInfo>, NetError> {
        let mut q = lock(&self.queue.state);
        let Some(front) = q.frames.front() else {
            return Ok(None);
        };
        let len = front.data.len();
        if buf.len() < len {
            return Err(NetError::BufferTooSmall {
                len: buf.len(),
                need: len,
            });
        }
        let Some(f) = q.frames.pop_front() else {
            return Ok(None);
        };
        q.bytes -= len;
        drop(q);
        buf[..len].copy_from_slice(&f.data);
        self.queue.rx_frames.fetch_add(1, Ordering::Relaxed);
        Ok(Some(RxInfo { len, meta: f.meta }))
    }

    fn set_rx_waker(&mut self, waker: Arc<dyn Fn() + Send + Sync>) -> bool {
        lock(&self.queue.state).waker = Some(waker);
        true
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool, NetError> {
        let mut q = lock(&self.queue.state);
        if !q.frames.is_empty() || timeout.is_zero() {
            return Ok(!q.frames.is_empty());
        }
        q.waiters += 1;
        let (mut q, _) = self
            .queue
            .ready
            .wait_timeout_while(q, timeout, |q| q.frames.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        q.waiters -= 1;
        Ok(!q.frames.is_empty())
    }
}

impl Drop for SwitchPort {
    fn drop(&mut self) {
        let mut st = lock(&self.switch.state);
        st.ports.remove(&self.id);
        let id = self.id;
        st.fdb.retain(|_, e| e.port != id);
        drop(st);
        let mut q = lock(&self.queue.state);
        q.closed = true;
        q.frames.clear();
        q.bytes = 0;
        q.waker = None;
    }
}
