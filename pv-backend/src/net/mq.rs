//! Multi-queue netback's bottom: one [`NetDevice`] shared by several queues, each served by its own
//! thread through a [`QueuePort`].
//!
//! - **TX**: every queue sends straight to the device (under a lock held for one send).
//! - **RX**: whichever queue finds its own inbox empty reads the device (if no other queue is reading
//!   it), and steers each frame to the queue its receive-side hash selects: the Toeplitz hash the
//!   front end configured on the control ring ([`HashConfig`]), through its mapping table
//!   ([`HashConfig::queue`]), as Linux netback's `xenvif_select_queue` does. Frames that are not
//!   hashed (hashing off, not IP) go to queue 0. A frame for another queue waits in that queue's
//!   inbox, bounded in frames ([`MqConfig::inbox_frames`]; past it the frame is dropped and counted),
//!   and that queue's waker is rung.
//! - **Waking**: a device that rings a waker ([`NetDevice::set_rx_waker`]) rings every queue's
//!   waker, and any of them reads it; a device with a descriptor ([`NetDevice::poll_fd`]) gives it
//!   to every queue, so that none depends on another's front end posting RX buffers.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::ctrl::HashConfig;
use super::{FrameMeta, NetDevice, NetError, Offloads, RxInfo};

/// How a shared device behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqConfig {
    /// The most frames waiting in one queue's inbox.
    pub inbox_frames: usize,
    /// The most frames one queue steers per call before it gives the others a turn.
    pub pump_budget: usize,
}

impl Default for MqConfig {
    fn default() -> Self {
        Self {
            inbox_frames: 256,
            pump_budget: 1024,
        }
    }
}

type Waker = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Inbox {
    frames: Mutex<VecDeque<(Vec<u8>, FrameMeta)>>,
    waker: Mutex<Option<Waker>>,
}

impl Inbox {
    fn wake(&self) {
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = w {
            w();
        }
    }
}

struct Shared<D> {
    device: Mutex<D>,
    inboxes: Arc<Vec<Inbox>>,
    hash: Arc<RwLock<HashConfig>>,
    offloads: Offloads,
    max_frame_len: usize,
    poll_fd: Option<RawFd>,
    evented: bool,
    config: MqConfig,
    steered: Vec<AtomicU64>,
    dropped: AtomicU64,
}

/// One device shared by `n` queues; [`port`](Self::port) gives each queue its [`QueuePort`].
pub struct SharedDevice<D> {
    shared: Arc<Shared<D>>,
}

impl<D> std::fmt::Debug for SharedDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDevice")
            .field("queues", &self.shared.inboxes.len())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<D: NetDevice> SharedDevice<D> {
    /// Shares `device` among `queues` queues (at least 1), steering received frames with `hash`
    /// (which the control ring updates; see [`CtrlRing::share_hash`](super::ctrl::CtrlRing::share_hash)).
    pub fn new(
        mut device: D,
        queues: usize,
        hash: Arc<RwLock<HashConfig>>,
        config: MqConfig,
    ) -> Self {
        let inboxes: Arc<Vec<Inbox>> =
            Arc::new((0..queues.max(1)).map(|_| Inbox::default()).collect());
        let wake = inboxes.clone();
        let evented = device.set_rx_waker(Arc::new(move || {
            for i in wake.iter() {
                i.wake();
            }
        }));
        let shared = Shared {
            offloads: device.offloads(),
            max_frame_len: device.max_frame_len(),
            poll_fd: device.poll_fd(),
            evented,
            steered: (0..inboxes.len()).map(|_| AtomicU64::new(0)).collect(),
            device: Mutex::new(device),
            inboxes,
            hash,
            config,
            dropped: AtomicU64::new(0),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The number of queues.
    pub fn queues(&self) -> usize {
        self.shared.inboxes.len()
    }

    /// Queue `index`'s port (`index` below [`queues`](Self::queues); a larger one is clamped to the
    /// last queue).
    pub fn port(&self, index: usize) -> QueuePort<D> {
        QueuePort {
            shared: self.shared.clone(),
            index: index.min(self.shared.inboxes.len() - 1),
        }
    }

    /// How many received frames were steered to each queue.
    pub fn steered(&self) -> Vec<u64> {
        self.shared
            .steered
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Frames dropped because their queue's inbox was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Gives the device back once every port is dropped (`Err(self)` while one lives). Its waker is
    /// replaced by one that does nothing.
    pub fn into_inner(self) -> Result<D, Self> {
        match Arc::try_unwrap(self.shared) {
            Ok(s) => {
                let mut d = s.device.into_inner().unwrap_or_else(|e| e.into_inner());
                if s.evented {
                    d.set_rx_waker(Arc::new(|| {}));
                }
                Ok(d)
            }
            Err(shared) => Err(Self { shared }),
        }
    }
}

/// One queue's view of a [`SharedDevice`]: a [`NetDevice`] whose `recv` gives the frames steered to
/// this queue.
pub struct QueuePort<D> {
    shared: Arc<Shared<D>>,
    index: usize,
}

impl<D> std::fmt::Debug for QueuePort<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePort")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<D: NetDevice> QueuePort<D> {
    /// The queue's number.
    pub fn index(&self) -> usize {
        self.index
    }

    fn inbox(&self) -> &Inbox {
        &self.shared.inboxes[self.index]
    }

    /// The queue a received frame goes to.
    fn select(&self, frame: &[u8]) -> usize {
        let n = self.shared.inboxes.len();
        if n == 1 {
            return 0;
        }
        let h = self.shared.hash.read().unwrap_or_else(|e| e.into_inner());
        match h.hash(frame) {
            Some((value, _)) => h.queue(value, n as u32) as usize,
            None => 0,
        }
    }

    /// Reads the device and steers its frames until one is for us (returned in `buf`) or it is
    /// empty; `Ok(None)` too if another queue is reading it.
    fn pump(&self, buf: &mut [u8]) -> Result<Option<RxInfo>, NetError> {
        let Ok(mut dev) = self.shared.device.try_lock() else {
            return Ok(None);
        };
        for _ in 0..self.shared.config.pump_budget {
            let Some(info) = dev.recv(buf)? else {
                return Ok(None);
            };
            let q = self.select(&buf[..info.len]);
            self.shared.steered[q].fetch_add(1, Ordering::Relaxed);
            if q == self.index {
                return Ok(Some(info));
            }
            let target = &self.shared.inboxes[q];
            {
                let mut frames = target.frames.lock().unwrap_or_else(|e| e.into_inner());
                if frames.len() >= self.shared.config.inbox_frames {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                frames.push_back((buf[..info.len].to_vec(), info.meta));
            }
            target.wake();
        }
        // Budget spent with frames left: come back (another queue may take over meanwhile).
        drop(dev);
        self.inbox().wake();
        Ok(None)
    }
}

impl<D: NetDevice> NetDevice for QueuePort<D> {
    fn offloads(&self) -> Offloads {
        self.shared.offloads
    }

    fn max_frame_len(&self) -> usize {
        self.shared.max_frame_len
    }

    fn send(&mut self, frame: &[u8], meta: &FrameMeta) -> Result<(), NetError> {
        self.shared
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(frame, meta)
    }

    fn send_batch(&mut self, frames: &[super::TxFrame<'_>]) -> Result<usize, NetError> {
        self.shared
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_batch(frames)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<RxInfo>, NetError> {
        let next = self
            .inbox()
            .frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if let Some((data, meta)) = next {
            if buf.len() < data.len() {
                let need = data.len();
                // Keep it for a larger buffer.
                self.inbox()
                    .frames
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_front((data, meta));
                return Err(NetError::BufferTooSmall {
                    len: buf.len(),
                    need,
                });
            }
            buf[..data.len()].copy_from_slice(&data);
            return Ok(Some(RxInfo {
                len: data.len(),
                meta,
            }));
        }
        self.pump(buf)
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool, NetError> {
        if !self
            .inbox()
            .frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return Ok(true);
        }
        match self.shared.device.try_lock() {
            Ok(d) => d.wait_readable(timeout),
            Err(_) => {
                std::thread::sleep(timeout.min(Duration::from_millis(1)));
                Ok(true)
            }
        }
    }

    fn set_rx_waker(&mut self, waker: Arc<dyn Fn() + Send + Sync>) -> bool {
        *self.inbox().waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
        // Our inbox always rings it; the device itself only if it can.
        self.shared.evented
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.shared.poll_fd
    }
}
