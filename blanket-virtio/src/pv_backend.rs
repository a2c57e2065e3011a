//! `pv-backend`'s bottom half on virtio (feature `pv-backend`): [`VirtioBlock`] implements
//! [`pv_backend::blk::BlockDevice`] over a [`BlkDriver`], so that blkback serves a Xen guest's
//! vbd from a provider's virtio-blk device (DESIGN.md, "One disk write, end to end", step 4).
//!
//! - **Queues.** Each [`BlockDevice::open_queue`] (one per blkback ring) gets the next virtqueue;
//!   when blkback has more rings than the device has queues (`num_queues`), rings share
//!   virtqueues round-robin, and completions are routed back by tag.
//! - **Batches.** A [`BlockQueue::submit`] batch is added to the virtqueue and published with one
//!   kick ([`BlkDriver::kick`], itself suppressed when the device asked for no kicks).
//! - **Completions.** [`BlockQueue::reap`] polls the used ring. A virtqueue that serves one
//!   blkback queue is given that queue's [`Doorbell`] (its eventfd) as its call fd
//!   ([`Transport::set_call_fd`]: vhost-user `SET_VRING_CALL`), so the device wakes blkback
//!   itself; [`BlockQueue::quiet`] asks the device not to notify while blkback is awake
//!   (`VRING_AVAIL_F_NO_INTERRUPT`) and [`BlockQueue::arm`] asks again before it sleeps, then
//!   looks at the used ring once more. A virtqueue shared by several blkback queues (more rings
//!   than `num_queues`), or every virtqueue with [`BridgeOptions::direct_doorbell`] off, keeps
//!   the transport's call eventfd, and a relay thread sleeps on it and rings the doorbells. For
//!   every virtqueue a thread watches the vhost-user socket
//!   ([`VhostUserTransport::notification_fds`]): a closed socket (the daemon killed) fails every
//!   request in flight and every later one with an error, which blkback answers with
//!   `BLKIF_RSP_ERROR`, instead of a hang. With the driver's `BlkOptions::reconnect`, the
//!   watcher first reconnects ([`BlkDriver::recover`]: the requests in flight go to the new
//!   connection, and blkback sees only the delay; its queues wait on the bridge meanwhile) and
//!   fails everything only when that does not succeed in time. The in-process transport
//!   completes during the kick.
//! - **Operations.** Read and write map to `VIRTIO_BLK_T_IN`/`OUT`, flush to `VIRTIO_BLK_T_FLUSH`,
//!   discard to `VIRTIO_BLK_T_DISCARD` (or to `VIRTIO_BLK_T_WRITE_ZEROES` with the unmap flag when
//!   the device only has write-zeroes, or when [`BridgeOptions::discard_as_write_zeroes`] asks for
//!   discarded blocks to read back as zeroes). Requests above the device's segment or range
//!   limits are split into several virtio requests and complete once, when all parts have.
//! - **Zero copy, or a bounce buffer.** When a request's guest pages lie in a
//!   [`ZeroCopyRange`] (guest memory that is a memfd also registered in the driver's
//!   [`DmaMemory`](crate::DmaMemory) as a foreign region), its descriptors point straight at the granted guest
//!   pages: no copy by the driver, none by the back end. Otherwise the data goes through a pool of
//!   bounce chunks in the driver's own shared memory (one copy each way); a request waits in the
//!   queue while the pool is empty.
//!
//! The device's `VIRTIO_BLK_F_RO`, capacity, block size and topology, flush and discard support
//! are reported through [`BlockInfo`].
//!
//! `VIRTIO_F_EVENT_IDX` must be off in the driver ([`BridgeError::EventIdx`]): the relay thread
//! sleeps on the call eventfd without going through [`BlkDriver::wait`], which is what re-arms
//! `used_event`; without `EVENT_IDX` the device notifies every batch it completes (unless
//! blkback is awake and said so with [`BlockQueue::quiet`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use pv_backend::backend::Doorbell;
use pv_backend::blk::{BlockDevice, BlockInfo, BlockQueue, IoBuf, IoCompletion, IoOp, IoRequest};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use crate::blk::{self, BlkCompletion, BlkDriver, DataBuf, Request, SECTOR_SIZE, Status};
use crate::memory::PAGE_SIZE;
use crate::queue::split;
use crate::transport::Transport;
use crate::transport::inproc::{DeviceModel, InProcessTransport};
use crate::transport::vhost_user::VhostUserTransport;

/// The most virtio requests one blkback request may be split into (a discard of the whole disk
/// on a device with a small discard limit is refused above this).
pub const MAX_PARTS: u64 = 4096;

/// How long a relay thread sleeps before checking whether the device was dropped.
const RELAY_TICK: Duration = Duration::from_millis(50);

/// Errors setting up the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The driver negotiated `VIRTIO_F_EVENT_IDX`.
    #[error(
        "the driver negotiated VIRTIO_F_EVENT_IDX (features {0:#x}); build it with \
         BlkOptions::event_idx = false for the pv-backend bridge"
    )]
    EventIdx(u64),
    /// A logical block size blkback cannot serve.
    #[error("the device's block size {0} is not a power of two from 512 to 4096")]
    BlockSize(u32),
    /// A zero-copy range that is not inside one region of the driver's memory.
    #[error(
        "zero-copy range at {addr:#x} of {len} bytes is not inside one region of the driver's \
         memory; register the guest's memfd as a ForeignRegion there first"
    )]
    ZeroCopyRange {
        /// Its address in the driver's memory.
        addr: u64,
        /// Its length.
        len: usize,
    },
    /// Bounce chunks of a size that is 0 or not a multiple of the page size.
    #[error("bounce chunk size {0} is not a non-zero multiple of {PAGE_SIZE}")]
    ChunkSize(u32),
    /// The bounce pool could not be allocated.
    #[error("cannot allocate the bounce pool")]
    Memory(#[from] crate::memory::Error),
}

/// Guest memory (host addresses of this process, as blkback's [`IoBuf`]s point) that is also
/// mapped in the driver's [`DmaMemory`](crate::DmaMemory) at `addr`, as a foreign region of the
/// same memfd: a request whose buffers lie inside is given to the device with no copy.
#[derive(Clone, Copy, Debug)]
pub struct ZeroCopyRange {
    host: usize,
    len: usize,
    addr: GuestAddress,
}

impl ZeroCopyRange {
    /// `len` bytes of guest memory mapped at `host` in this process, and at `addr` in the driver's
    /// memory.
    ///
    /// The two mappings must be of the same pages (the same file at the same offsets): otherwise
    /// the device reads and writes other pages of the foreign region than the guest granted. That
    /// cannot be checked here; [`VirtioBlock::new`] checks that `addr..addr + len` is mapped.
    pub fn new(host: NonNull<u8>, len: usize, addr: GuestAddress) -> Self {
        Self {
            host: host.as_ptr() as usize,
            len,
            addr,
        }
    }

    /// The address in the driver's memory of `len` bytes at `ptr`, if they are all inside.
    fn translate(&self, ptr: usize, len: usize) -> Option<GuestAddress> {
        let off = ptr.checked_sub(self.host)?;
        let end = off.checked_add(len)?;
        (end <= self.len).then(|| self.addr.unchecked_add(off as u64))
    }
}

/// How the bridge runs.
#[derive(Clone, Debug)]
pub struct BridgeOptions {
    /// Guest memory given to the device without a copy.
    pub zero_copy: Vec<ZeroCopyRange>,
    /// Bytes of each bounce chunk (a multiple of the page size).
    pub bounce_chunk_bytes: u32,
    /// Chunks in the bounce pool (shared by all queues); 0 when every request is zero copy.
    pub bounce_chunks: u32,
    /// Serve discards with write-zeroes (unmap allowed) when the device has it, so that discarded
    /// blocks read back as zeroes.
    pub discard_as_write_zeroes: bool,
    /// Give the device blkback's doorbell (its eventfd) as the call fd of a virtqueue that
    /// serves one blkback queue, so that the device wakes blkback itself (the default); when
    /// false, completions always go through the relay thread (for comparison).
    pub direct_doorbell: bool,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            zero_copy: Vec::new(),
            bounce_chunk_bytes: 64 << 10,
            bounce_chunks: 64,
            discard_as_write_zeroes: false,
            direct_doorbell: true,
        }
    }
}

/// A transport the bridge can learn of completions from, on a thread of its own.
pub trait CompletionSource {
    /// For queue `index`: a descriptor that becomes readable when the device notified (an eventfd,
    /// read to clear), and one that becomes readable or hangs up when the device is gone. `None`
    /// when the transport completes requests during the kick.
    fn completion_fds(&self, index: u16) -> io::Result<Option<(OwnedFd, OwnedFd)>>;
}

impl CompletionSource for VhostUserTransport {
    fn completion_fds(&self, index: u16) -> io::Result<Option<(OwnedFd, OwnedFd)>> {
        let (call, socket) = self.notification_fds(index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("vhost-user queue {index} is not set up"),
            )
        })?;
        Ok(Some((
            call.try_clone_to_owned()?,
            socket.try_clone_to_owned()?,
        )))
    }
}

impl<D: DeviceModel> CompletionSource for InProcessTransport<D> {
    fn completion_fds(&self, _index: u16) -> io::Result<Option<(OwnedFd, OwnedFd)>> {
        Ok(None)
    }
}

/// One virtio request of a blkback request.
#[derive(Debug)]
enum Part {
    Read { sector: u64, bufs: Vec<DataBuf> },
    Write { sector: u64, bufs: Vec<DataBuf> },
    Flush,
    Discard { sector: u64, sectors: u32 },
    WriteZeroes { sector: u64, sectors: u32 },
}

/// A blkback request in flight.
#[derive(Debug)]
struct Pending {
    tag: u64,
    parts_left: u64,
    error: Option<io::Error>,
    /// For a bounced read: the guest buffers to fill from the chunks once all parts are done.
    copy_back: Option<Vec<IoBuf>>,
    chunks: Vec<GuestAddress>,
}

#[derive(Debug)]
struct QState {
    vq: u16,
    slots: Vec<Option<Pending>>,
    free_slots: Vec<u32>,
    /// Requests not started yet (the bounce pool was empty), in order.
    waiting: VecDeque<IoRequest>,
    /// Parts not yet on the virtqueue (it was full), in order.
    parts: VecDeque<(u32, Part)>,
    done: Vec<IoCompletion>,
    doorbell: Option<Arc<Doorbell>>,
    ring: bool,
}

impl QState {
    fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len() + self.waiting.len() + self.done.len()
    }
}

/// How a virtqueue's completions reach blkback.
#[derive(Debug, Default)]
struct VqState {
    /// A watcher thread runs for it.
    watched: bool,
    /// The one blkback queue on it whose doorbell's eventfd the device signals itself (its
    /// call fd); `None` while the watcher relays completions from the transport's eventfd.
    direct: Option<usize>,
    /// Bumped at every change of the call fd, for the watcher to notice.
    generation: u64,
}

#[derive(Debug)]
struct Inner<T: Transport> {
    driver: BlkDriver<T>,
    queues: Vec<QState>,
    vqs: Vec<VqState>,
    direct_doorbell: bool,
    free_chunks: Vec<GuestAddress>,
    chunk_bytes: u32,
    pool_chunks: usize,
    broken: Option<String>,
    completions: Vec<BlkCompletion>,
}

#[derive(Debug)]
struct Shared<T: Transport> {
    inner: Mutex<Inner<T>>,
    zero_copy: Vec<ZeroCopyRange>,
    info: BlockInfo,
    seg_bytes: u32,
    max_segments: usize,
    discard_as_write_zeroes: bool,
}

/// A virtio-blk device as blkback's [`BlockDevice`] (see the [module](self) docs).
#[derive(Debug)]
pub struct VirtioBlock<T: Transport + CompletionSource + Send + 'static> {
    shared: Arc<Shared<T>>,
}

/// One queue of a [`VirtioBlock`], as blkback's [`BlockQueue`].
#[derive(Debug)]
pub struct VirtioBlockQueue<T: Transport + CompletionSource + Send + 'static> {
    shared: Arc<Shared<T>>,
    id: usize,
}

fn io_err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// How a driver error on a request shows to blkback: errors of the request itself are
/// `InvalidInput` (or `Unsupported`, `PermissionDenied`).
fn request_error(e: &blk::Error) -> io::Error {
    let kind = match e {
        blk::Error::ReadOnly => io::ErrorKind::PermissionDenied,
        blk::Error::Unsupported(_) => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::InvalidInput,
    };
    io_err(kind, format!("virtio-blk refused the request: {e}"))
}

fn lock<T: Transport>(m: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // A panic while holding the lock leaves the state consistent enough to fail requests: the
    // worst case is a request completed twice, which blkback ignores (unknown tag).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Transport + CompletionSource + Send + 'static> VirtioBlock<T> {
    /// Wraps `driver` (built with `BlkOptions::event_idx = false`), allocating the bounce pool
    /// from its memory.
    pub fn new(driver: BlkDriver<T>, options: BridgeOptions) -> Result<Self, BridgeError> {
        if driver.features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 {
            return Err(BridgeError::EventIdx(driver.features()));
        }
        let c = driver.config().clone();
        let lbs = c.blk_size.unwrap_or(SECTOR_SIZE as u32);
        if !lbs.is_power_of_two() || !(512..=4096).contains(&lbs) {
            return Err(BridgeError::BlockSize(lbs));
        }
        let pbs = c
            .topology
            .map(|t| {
                lbs.checked_shl(u32::from(t.physical_block_exp))
                    .unwrap_or(lbs)
            })
            .filter(|p| *p >= lbs && p.is_power_of_two())
            .unwrap_or(lbs);
        let size = (c.capacity * SECTOR_SIZE) / u64::from(lbs) * u64::from(lbs);
        let info = BlockInfo {
            size,
            logical_block_size: lbs,
            physical_block_size: pbs,
            read_only: c.read_only,
            flush: c.flush,
            discard: !c.read_only && (c.discard.is_some() || c.write_zeroes.is_some()),
            discard_granularity: lbs,
            discard_alignment: 0,
        };
        for z in &options.zero_copy {
            if z.len == 0
                || driver
                    .memory()
                    .guest_memory()
                    .get_slice(z.addr, z.len)
                    .is_err()
            {
                return Err(BridgeError::ZeroCopyRange {
                    addr: z.addr.0,
                    len: z.len,
                });
            }
        }
        let chunk = options.bounce_chunk_bytes;
        if chunk == 0 || u64::from(chunk) % PAGE_SIZE != 0 {
            return Err(BridgeError::ChunkSize(chunk));
        }
        let mut free_chunks = Vec::with_capacity(options.bounce_chunks as usize);
        for _ in 0..options.bounce_chunks {
            free_chunks.push(driver.memory().alloc(u64::from(chunk))?);
        }
        let seg_bytes = c.size_max.unwrap_or(u32::MAX) & !(SECTOR_SIZE as u32 - 1);
        let seg_bytes = seg_bytes.max(SECTOR_SIZE as u32);
        let max_segments = driver.max_segments().max(1);
        let vqs = (0..driver.num_queues())
            .map(|_| VqState::default())
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    driver,
                    queues: Vec::new(),
                    vqs,
                    direct_doorbell: options.direct_doorbell,
                    free_chunks,
                    chunk_bytes: chunk,
                    pool_chunks: options.bounce_chunks as usize,
                    broken: None,
                    completions: Vec::new(),
                }),
                zero_copy: options.zero_copy,
                info,
                seg_bytes,
                max_segments,
                discard_as_write_zeroes: options.discard_as_write_zeroes,
            }),
        })
    }

    /// Runs `f` on the driver (for its config, features or counters), under the bridge's lock.
    pub fn with_driver<R>(&self, f: impl FnOnce(&mut BlkDriver<T>) -> R) -> R {
        f(&mut lock(&self.shared.inner).driver)
    }

    /// Whether the device signals completions on virtqueue `vq` straight to the doorbell of
    /// the one blkback queue on it (the doorbell's eventfd is the virtqueue's call fd), rather
    /// than through the relay thread.
    pub fn signals_doorbell_directly(&self, vq: u16) -> bool {
        lock(&self.shared.inner)
            .vqs
            .get(usize::from(vq))
            .is_some_and(|v| v.direct.is_some())
    }

    /// Whether the device was found gone (the reason), after which every request fails.
    pub fn broken(&self) -> Option<String> {
        lock(&self.shared.inner).broken.clone()
    }
}

impl<T: Transport + CompletionSource + Send + 'static> BlockDevice for VirtioBlock<T> {
    fn info(&self) -> BlockInfo {
        self.shared.info
    }

    fn open_queue(&self) -> io::Result<Box<dyn BlockQueue>> {
        let mut g = lock(&self.shared.inner);
        let nvq = g.driver.num_queues().max(1);
        let id = g.queues.len();
        let vq = (id % usize::from(nvq)) as u16;
        if !g.vqs[usize::from(vq)].watched {
            if let Some((call, gone)) = g.driver.transport().completion_fds(vq)? {
                let weak = Arc::downgrade(&self.shared);
                std::thread::Builder::new()
                    .name(format!("virtio-blk-relay-{vq}"))
                    .spawn(move || relay(weak, vq, call, gone))?;
            }
            g.vqs[usize::from(vq)].watched = true;
        }
        if let Some(other) = g.vqs[usize::from(vq)].direct {
            // A second blkback queue on this virtqueue: one doorbell cannot serve both, so the
            // watcher relays again, from an eventfd of the transport's.
            g.undirect(vq);
            g.queues[other].ring = true;
            g.ring_doorbells();
        }
        g.queues.push(QState {
            vq,
            slots: Vec::new(),
            free_slots: Vec::new(),
            waiting: VecDeque::new(),
            parts: VecDeque::new(),
            done: Vec::new(),
            doorbell: None,
            ring: false,
        });
        Ok(Box::new(VirtioBlockQueue {
            shared: self.shared.clone(),
            id,
        }))
    }
}

/// Watches virtqueue `vq`: fails everything when the device is gone and, unless the device
/// signals a blkback queue's doorbell itself ([`VqState::direct`]), waits for its notifications
/// and hands the completions out. Ends when the device is dropped or broken.
fn relay<T: Transport + CompletionSource + Send + 'static>(
    shared: Weak<Shared<T>>,
    vq: u16,
    call: OwnedFd,
    mut gone: OwnedFd,
) {
    let ms = RELAY_TICK.as_millis() as libc::c_int;
    let mut call = Some(call);
    let mut generation = 0u64;
    // The driver's reconnections when `gone` was taken: another virtqueue's watcher may
    // reconnect first, and this one then only watches the new connection.
    let mut connection = shared
        .upgrade()
        .map_or(0, |s| lock(&s.inner).driver.reconnections());
    loop {
        let mut fds = [
            libc::pollfd {
                // poll ignores a negative descriptor: in direct mode only the socket is watched.
                fd: call.as_ref().map_or(-1, |c| c.as_fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // Not POLLIN: the replies to control messages (such as a SET_VRING_CALL sent
                // while this thread runs) make the socket readable too. A back-end that closes
                // the socket shows as POLLRDHUP (or POLLHUP, POLLERR, always reported).
                fd: gone.as_fd().as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds on the stack, for descriptors this thread owns.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let mut g = lock(&shared.inner);
            g.break_all(format!(
                "poll on virtqueue {vq}'s notifications failed: {e}"
            ));
            return;
        }
        let mut g = lock(&shared.inner);
        if g.broken.is_some() {
            return;
        }
        if fds[1].revents != 0 {
            if g.driver.reconnections() == connection {
                // With `BlkOptions::reconnect`, the requests in flight go to a new connection;
                // without, or once its time runs out, everything fails.
                if let Err(e) = g.driver.recover() {
                    let why = match e {
                        blk::Error::Transport(crate::transport::Error::DeviceGone(_)) => {
                            String::new()
                        }
                        e => format!(", and reconnecting failed: {e}"),
                    };
                    g.break_all(format!(
                        "the device's socket closed (revents {:#x}): the vhost-user back-end is gone{why}",
                        fds[1].revents
                    ));
                    return;
                }
                // What the old device completed, and what the new one did already.
                for v in 0..g.driver.num_queues() {
                    g.poll_vq(v);
                    g.start_all(&shared, v);
                }
                g.ring_doorbells();
            }
            connection = g.driver.reconnections();
            match g.driver.transport().completion_fds(vq) {
                Ok(Some((c, s))) => {
                    gone = s;
                    if g.vqs[usize::from(vq)].direct.is_none() {
                        call = Some(c);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    g.break_all(format!(
                        "virtqueue {vq}'s notifications cannot be watched after reconnecting: {e}"
                    ));
                    return;
                }
            }
            continue;
        }
        let state = &g.vqs[usize::from(vq)];
        if state.generation != generation {
            // The call fd changed: the doorbell's now (nothing to relay), or the transport's
            // again.
            generation = state.generation;
            call = None;
            if state.direct.is_none() {
                match g.driver.transport().completion_fds(vq) {
                    Ok(fds) => call = fds.map(|(c, _)| c),
                    Err(e) => {
                        g.break_all(format!(
                            "virtqueue {vq}'s call eventfd cannot be watched: {e}"
                        ));
                        return;
                    }
                }
            }
        }
        if g.vqs[usize::from(vq)].direct.is_some() {
            continue;
        }
        if fds[0].revents != 0 {
            if let Some(c) = &call {
                let mut v = 0u64;
                // SAFETY: reading 8 bytes into a local from our own non-blocking eventfd.
                unsafe { libc::read(c.as_raw_fd(), (&raw mut v).cast(), 8) };
            }
        }
        g.poll_vq(vq);
        g.start_all(&shared, vq);
        g.ring_doorbells();
    }
}

impl<T: Transport> Inner<T> {
    /// Makes the device signal queue `qid`'s doorbell on its virtqueue directly (its eventfd as
    /// the call fd), when that queue is the virtqueue's only one and the transport can.
    fn direct(&mut self, qid: usize) {
        let vq = self.queues[qid].vq;
        let Some(doorbell) = self.queues[qid].doorbell.clone() else {
            return;
        };
        if !self.direct_doorbell
            || self.broken.is_some()
            || self.queues.iter().filter(|q| q.vq == vq).count() != 1
        {
            return;
        }
        // SAFETY: the doorbell owns its eventfd and `doorbell` (an `Arc` of it) keeps it open
        // while it is borrowed here; the clone is a new descriptor of our own.
        let fd = unsafe { BorrowedFd::borrow_raw(doorbell.as_raw_fd()) }.try_clone_to_owned();
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                // Out of descriptors: the watcher keeps relaying.
                tracing::warn!(error = %e, "virtio-blk: cannot share the doorbell with the device");
                return;
            }
        };
        match self.driver.transport_mut().set_call_fd(vq, Some(fd)) {
            Ok(true) => {
                let state = &mut self.vqs[usize::from(vq)];
                state.direct = Some(qid);
                state.generation += 1;
            }
            Ok(false) => {}
            Err(e) => self.break_all(format!(
                "virtqueue {vq}: giving the device its call fd: {e}"
            )),
        }
    }

    /// Gives virtqueue `vq` an eventfd of the transport's again, for the watcher to relay, with
    /// notifications on.
    fn undirect(&mut self, vq: u16) {
        let state = &mut self.vqs[usize::from(vq)];
        if state.direct.take().is_none() {
            return;
        }
        state.generation += 1;
        if let Err(e) = self.driver.transport_mut().set_call_fd(vq, None) {
            self.break_all(format!("virtqueue {vq}: taking the call fd back: {e}"));
            return;
        }
        if let Err(e) = self.driver.enable_notifications(vq) {
            self.break_all(format!("virtqueue {vq} failed: {e}"));
        }
    }

    /// Fails every request of every queue; later ones fail at once.
    fn break_all(&mut self, why: String) {
        tracing::warn!(reason = %why, "virtio-blk device gone; failing its requests");
        for q in &mut self.queues {
            q.parts.clear();
            for slot in 0..q.slots.len() {
                if let Some(p) = q.slots[slot].take() {
                    q.free_slots.push(slot as u32);
                    // The chunks are not reused: a device that is not really gone could still
                    // write into them.
                    q.done.push(IoCompletion {
                        tag: p.tag,
                        result: Err(io_err(io::ErrorKind::BrokenPipe, why.clone())),
                    });
                }
            }
            for r in q.waiting.drain(..) {
                q.done.push(IoCompletion {
                    tag: r.tag,
                    result: Err(io_err(io::ErrorKind::BrokenPipe, why.clone())),
                });
            }
            q.ring = true;
        }
        self.broken = Some(why);
        self.ring_doorbells();
    }

    fn ring_doorbells(&mut self) {
        for q in &mut self.queues {
            if std::mem::take(&mut q.ring) {
                if let Some(d) = &q.doorbell {
                    d.ring();
                }
            }
        }
    }

    /// Ends one part of the request in `slot` of queue `qid`.
    fn finish_part(&mut self, qid: usize, slot: u32, result: Result<(), io::Error>) {
        let chunk_bytes = self.chunk_bytes as usize;
        let Some(q) = self.queues.get_mut(qid) else {
            return;
        };
        let Some(Some(p)) = q.slots.get_mut(slot as usize) else {
            return;
        };
        p.parts_left -= 1;
        if let Err(e) = result {
            p.error.get_or_insert(e);
        }
        if p.parts_left > 0 {
            return;
        }
        let Some(p) = q.slots[slot as usize].take() else {
            return;
        };
        q.free_slots.push(slot);
        let result = match p.error {
            Some(e) => Err(e),
            None => {
                if let Some(bufs) = &p.copy_back {
                    copy_chunks(&self.driver, &p.chunks, chunk_bytes, bufs, false);
                }
                Ok(())
            }
        };
        self.free_chunks.extend(p.chunks);
        q.done.push(IoCompletion { tag: p.tag, result });
        q.ring = true;
    }

    /// Takes virtqueue `vq`'s completions and hands them to their queues.
    fn poll_vq(&mut self, vq: u16) {
        let mut out = std::mem::take(&mut self.completions);
        if let Err(e) = self.driver.poll(vq, &mut out) {
            self.completions = out;
            self.break_all(format!("virtqueue {vq} failed: {e}"));
            return;
        }
        for c in out.drain(..) {
            let (qid, slot) = ((c.tag >> 32) as usize, c.tag as u32);
            let result = match c.status {
                Status::Ok => Ok(()),
                s => Err(io_err(
                    if s == Status::Unsupported {
                        io::ErrorKind::Unsupported
                    } else {
                        io::ErrorKind::Other
                    },
                    format!("the virtio-blk device failed the request with status {s:?}"),
                )),
            };
            self.finish_part(qid, slot, result);
        }
        self.completions = out;
    }

    /// Starts what can be started on every queue of virtqueue `vq`.
    fn start_all<S: Transport>(&mut self, shared: &Shared<S>, vq: u16) {
        for qid in 0..self.queues.len() {
            if self.queues[qid].vq == vq
                && (!self.queues[qid].waiting.is_empty() || !self.queues[qid].parts.is_empty())
            {
                self.start(shared, qid);
            }
        }
    }

    fn alloc_slot(q: &mut QState) -> u32 {
        q.free_slots.pop().unwrap_or_else(|| {
            q.slots.push(None);
            (q.slots.len() - 1) as u32
        })
    }

    /// Turns waiting requests into parts (while the bounce pool lasts), puts parts on the
    /// virtqueue (while it has room), kicks once, and polls.
    fn start<S: Transport>(&mut self, shared: &Shared<S>, qid: usize) {
        if self.broken.is_some() {
            return;
        }
        while let Some(req) = self.queues[qid].waiting.pop_front() {
            if let Err(req) = self.prepare(shared, qid, req) {
                self.queues[qid].waiting.push_front(req);
                break;
            }
        }
        let vq = self.queues[qid].vq;
        let mut added = false;
        while let Some((slot, part)) = self.queues[qid].parts.pop_front() {
            let tag = (qid as u64) << 32 | u64::from(slot);
            let req = match &part {
                Part::Read { sector, bufs } => Request::Read {
                    sector: *sector,
                    bufs,
                },
                Part::Write { sector, bufs } => Request::Write {
                    sector: *sector,
                    bufs,
                },
                Part::Flush => Request::Flush,
                Part::Discard { sector, sectors } => Request::Discard {
                    sector: *sector,
                    sectors: *sectors,
                },
                Part::WriteZeroes { sector, sectors } => Request::WriteZeroes {
                    sector: *sector,
                    sectors: *sectors,
                    unmap: true,
                },
            };
            match self.driver.submit(vq, &req, tag) {
                Ok(()) => added = true,
                Err(blk::Error::Queue(split::Error::QueueFull { .. })) => {
                    self.queues[qid].parts.push_front((slot, part));
                    break;
                }
                Err(
                    e @ (blk::Error::Transport(_)
                    | blk::Error::Queue(_)
                    | blk::Error::Access(_)
                    | blk::Error::NoSuchQueue(..)),
                ) => {
                    self.break_all(format!("virtqueue {vq} failed: {e}"));
                    return;
                }
                Err(e) => self.finish_part(qid, slot, Err(request_error(&e))),
            }
        }
        if added {
            if let Err(e) = self.driver.kick(vq) {
                self.break_all(format!("kicking virtqueue {vq} failed: {e}"));
                return;
            }
        }
        self.poll_vq(vq);
    }

    /// Makes the parts of `req`, or gives it back when the bounce pool is short.
    fn prepare<S: Transport>(
        &mut self,
        shared: &Shared<S>,
        qid: usize,
        req: IoRequest,
    ) -> Result<(), IoRequest> {
        let chunk_bytes = self.chunk_bytes as usize;
        let fail = |this: &mut Self, tag, e: io::Error| {
            let q = &mut this.queues[qid];
            q.done.push(IoCompletion {
                tag,
                result: Err(e),
            });
            q.ring = true;
        };
        let mut pending = Pending {
            tag: req.tag,
            parts_left: 0,
            error: None,
            copy_back: None,
            chunks: Vec::new(),
        };
        let mut parts = Vec::new();
        match &req.op {
            IoOp::Read { offset, bufs } | IoOp::Write { offset, bufs } => {
                let write = matches!(req.op, IoOp::Write { .. });
                let total: usize = bufs.iter().map(IoBuf::len).sum();
                if offset % SECTOR_SIZE != 0 || total == 0 || total as u64 % SECTOR_SIZE != 0 {
                    fail(
                        self,
                        req.tag,
                        io_err(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{} of {total} bytes at offset {offset}: not in whole 512-byte sectors",
                                if write { "write" } else { "read" }
                            ),
                        ),
                    );
                    return Ok(());
                }
                let data = match shared.zero_copy_bufs(bufs) {
                    Some(d) => d,
                    None => {
                        let n = total.div_ceil(chunk_bytes);
                        if n > self.free_chunks.len() {
                            if n > self.pool_chunks {
                                fail(
                                    self,
                                    req.tag,
                                    io_err(
                                        io::ErrorKind::InvalidInput,
                                        format!(
                                            "{total} bytes do not fit the bounce pool; raise BridgeOptions::bounce_chunks"
                                        ),
                                    ),
                                );
                                return Ok(());
                            }
                            return Err(req);
                        }
                        let at = self.free_chunks.len() - n;
                        pending.chunks = self.free_chunks.split_off(at);
                        if write {
                            copy_chunks(&self.driver, &pending.chunks, chunk_bytes, bufs, true);
                        }
                        let mut d = Vec::new();
                        let mut left = total;
                        for c in &pending.chunks {
                            let n = left.min(chunk_bytes);
                            split_buf(&mut d, *c, n, shared.seg_bytes);
                            left -= n;
                        }
                        d
                    }
                };
                if pending.chunks.is_empty() {
                    // Zero copy: nothing to do at completion.
                } else if !write {
                    pending.copy_back = Some(bufs.clone());
                }
                let mut sector = offset / SECTOR_SIZE;
                for group in data.chunks(shared.max_segments) {
                    let bytes: u64 = group.iter().map(|b| u64::from(b.len)).sum();
                    let bufs = group.to_vec();
                    parts.push(if write {
                        Part::Write { sector, bufs }
                    } else {
                        Part::Read { sector, bufs }
                    });
                    sector += bytes / SECTOR_SIZE;
                }
            }
            IoOp::Flush => parts.push(Part::Flush),
            IoOp::Discard { offset, len } => {
                let c = self.driver.config();
                let (zeroes, limits) = match (c.discard, c.write_zeroes) {
                    (_, Some((wz, _))) if shared.discard_as_write_zeroes => (true, Some(wz)),
                    (Some(d), _) => (false, Some(d)),
                    (None, Some((wz, _))) => (true, Some(wz)),
                    (None, None) => (false, None),
                };
                let Some(limits) = limits else {
                    fail(
                        self,
                        req.tag,
                        io_err(
                            io::ErrorKind::Unsupported,
                            "the virtio-blk device has neither discard nor write-zeroes".into(),
                        ),
                    );
                    return Ok(());
                };
                let max = u64::from(limits.max_sectors.max(1));
                let sectors = len / SECTOR_SIZE;
                if offset % SECTOR_SIZE != 0
                    || len % SECTOR_SIZE != 0
                    || sectors == 0
                    || sectors.div_ceil(max) > MAX_PARTS
                {
                    fail(
                        self,
                        req.tag,
                        io_err(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "discard of {len} bytes at offset {offset}: not whole sectors, or \
                                 more than {MAX_PARTS} requests of at most {max} sectors"
                            ),
                        ),
                    );
                    return Ok(());
                }
                let mut s = offset / SECTOR_SIZE;
                let end = s.saturating_add(sectors);
                while s < end {
                    let n = (end - s).min(max) as u32;
                    parts.push(if zeroes {
                        Part::WriteZeroes {
                            sector: s,
                            sectors: n,
                        }
                    } else {
                        Part::Discard {
                            sector: s,
                            sectors: n,
                        }
                    });
                    s += u64::from(n);
                }
            }
        }
        let q = &mut self.queues[qid];
        let slot = Self::alloc_slot(q);
        pending.parts_left = parts.len() as u64;
        q.slots[slot as usize] = Some(pending);
        q.parts.extend(parts.into_iter().map(|p| (slot, p)));
        Ok(())
    }
}

/// Appends `len` bytes at `addr` as buffers of at most `seg` bytes.
fn split_buf(out: &mut Vec<DataBuf>, addr: GuestAddress, len: usize, seg: u32) {
    let mut off = 0usize;
    while off < len {
        let n = (len - off).min(seg as usize);
        out.push(DataBuf {
            addr: addr.unchecked_add(off as u64),
            len: n as u32,
        });
        off += n;
    }
}

impl<S: Transport> Shared<S> {
    /// The buffers in the driver's memory for `bufs`, if every one lies in a zero-copy range.
    fn zero_copy_bufs(&self, bufs: &[IoBuf]) -> Option<Vec<DataBuf>> {
        if self.zero_copy.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(bufs.len());
        for b in bufs {
            if b.len() as u64 % SECTOR_SIZE != 0 {
                return None;
            }
            let addr = self
                .zero_copy
                .iter()
                .find_map(|z| z.translate(b.as_ptr() as usize, b.len()))?;
            split_buf(&mut out, addr, b.len(), self.seg_bytes);
        }
        Some(out)
    }
}

/// Copies between guest buffers and bounce chunks: into the chunks if `to_chunks`, else out.
fn copy_chunks<T: Transport>(
    driver: &BlkDriver<T>,
    chunks: &[GuestAddress],
    chunk_bytes: usize,
    bufs: &[IoBuf],
    to_chunks: bool,
) {
    let mem = driver.memory().guest_memory();
    let mut ci = 0usize;
    let mut coff = 0usize;
    for b in bufs {
        let mut boff = 0usize;
        while boff < b.len() && ci < chunks.len() {
            let n = (b.len() - boff).min(chunk_bytes - coff);
            let Ok(host) = mem.get_host_address(chunks[ci].unchecked_add(coff as u64)) else {
                return;
            };
            // SAFETY: the chunk was allocated from the driver's memory with `chunk_bytes` bytes
            // mapped contiguously (one `DmaMemory::alloc`), so `host..host + n` (with
            // `coff + n <= chunk_bytes`) is mapped for as long as the driver lives; `b` is valid for
            // `b.len()` bytes until its completion is reaped (the `IoBuf` contract), which has not
            // happened yet. The two never overlap: chunks are the driver's own memory.
            unsafe {
                let g = b.as_ptr().add(boff);
                if to_chunks {
                    std::ptr::copy_nonoverlapping(g, host, n);
                } else {
                    std::ptr::copy_nonoverlapping(host, g, n);
                }
            }
            boff += n;
            coff += n;
            if coff == chunk_bytes {
                ci += 1;
                coff = 0;
            }
        }
    }
}

impl<T: Transport + CompletionSource + Send + 'static> BlockQueue for VirtioBlockQueue<T> {
    fn set_doorbell(&mut self, doorbell: Arc<Doorbell>) {
        let mut g = lock(&self.shared.inner);
        g.queues[self.id].doorbell = Some(doorbell);
        g.direct(self.id);
    }

    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let mut g = lock(&self.shared.inner);
        if let Some(why) = g.broken.clone() {
            let q = &mut g.queues[self.id];
            for r in batch.drain(..) {
                q.done.push(IoCompletion {
                    tag: r.tag,
                    result: Err(io_err(io::ErrorKind::BrokenPipe, why.clone())),
                });
            }
            q.ring = true;
            g.ring_doorbells();
            return;
        }
        g.queues[self.id].waiting.extend(batch.drain(..));
        g.start(&self.shared, self.id);
        g.ring_doorbells();
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let mut g = lock(&self.shared.inner);
        let vq = g.queues[self.id].vq;
        if g.broken.is_none() {
            g.poll_vq(vq);
            g.start_all(&self.shared, vq);
        }
        let q = &mut g.queues[self.id];
        q.ring = false;
        let n = q.done.len();
        out.append(&mut q.done);
        g.ring_doorbells();
        n
    }

    fn in_flight(&self) -> usize {
        lock(&self.shared.inner).queues[self.id].in_flight()
    }

    fn quiet(&mut self) {
        let mut g = lock(&self.shared.inner);
        let vq = g.queues[self.id].vq;
        if g.broken.is_none() && g.vqs[usize::from(vq)].direct == Some(self.id) {
            // blkback reaps without being rung: the device need not signal (a hint it may
            // ignore). A broken ring shows at the next reap.
            let _ = g.driver.disable_notifications(vq);
        }
    }

    fn arm(&mut self) -> bool {
        let mut g = lock(&self.shared.inner);
        let vq = g.queues[self.id].vq;
        if g.broken.is_none() && g.vqs[usize::from(vq)].direct == Some(self.id) {
            // Notifications on, then one more look at the used ring after a full fence
            // (`enable_notifications`): a completion the device wrote before it saw the flag
            // signalled nothing.
            match g.driver.enable_notifications(vq) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => g.break_all(format!("virtqueue {vq} failed: {e}")),
            }
        }
        !g.queues[self.id].done.is_empty()
    }
}

/// A virtio-net device as netback's [`NetDevice`](pv_backend::net::NetDevice): frames and their
/// offload metadata go to and from queue pair 0 of a [`NetDriver`](crate::net::NetDriver).
///
/// Metadata maps to the virtio-net header where the device offers the offload: a
/// [`Checksum::Partial`](pv_backend::net::Checksum::Partial) frame is sent with
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` and its `csum_start`/`csum_offset` (only with
/// `VIRTIO_NET_F_CSUM`), a GSO super-frame with `VIRTIO_NET_HDR_GSO_TCPV4`/`6`, its MSS and
/// header length (only with `HOST_TSO4`/`6`; a header length of 0 is filled in from the TCP
/// header); received headers map back (`NEEDS_CSUM` to `Partial`, `DATA_VALID` to `Validated`,
/// GSO types and sizes), already validated by the driver. Build the driver with
/// `NetOptions::offloads` to negotiate them.
///
/// [`NetDevice::wait_readable`](pv_backend::net::NetDevice::wait_readable) waits through
/// [`NetDriver::recv_wait_on`](crate::net::NetDriver::recv_wait_on), in steps of the driver's
/// `NetOptions::timeout` (so give it a short one, such as 10 ms); a frame it finds is kept for
/// the next receive. With the driver's `NetOptions::reconnect`, a back-end that restarts is
/// reconnected to during that wait, and frames flow again (tested against dpdk-testpmd);
/// without it, the wait fails with `NetError::Disconnected`.
#[derive(Debug)]
pub struct VirtioNet<T: Transport + Send> {
    driver: std::cell::RefCell<crate::net::NetDriver<T>>,
    stash: std::cell::RefCell<VecDeque<(crate::net::NetHdr, Vec<u8>)>>,
}

mod net_bridge {
    use std::io;
    use std::time::{Duration, Instant};

    use pv_backend::net::{
        Checksum, FrameMeta, Gso, GsoType, NetDevice, NetError, Offloads, RxInfo,
    };
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    };

    use super::VirtioNet;
    use crate::net::{self, MAX_GSO_FRAME, NetDriver, NetHdr};
    use crate::transport::{self, Transport};

    fn bit(features: u64, b: u32) -> bool {
        features & (1u64 << b) != 0
    }

    /// How a driver error shows to netback.
    fn net_error(op: &str, e: net::Error) -> NetError {
        match e {
            net::Error::TxFull => NetError::WouldBlock,
            net::Error::Transport(transport::Error::DeviceGone(_)) => NetError::Disconnected,
            e => NetError::Io {
                op: format!("virtio-net {op}"),
                source: io::Error::other(e),
            },
        }
    }

    /// The virtio-net header for a frame's metadata.
    pub(super) fn hdr_for(frame: &[u8], meta: &FrameMeta) -> Result<NetHdr, NetError> {
        let mut h = NetHdr::default();
        if let Checksum::Partial { start, offset } = meta.checksum {
            h = NetHdr::partial_csum(start, offset);
        }
        if let Some(g) = meta.gso {
            h.gso_type = match g.gso_type {
                GsoType::TcpV4 => NetHdr::GSO_TCPV4,
                GsoType::TcpV6 => NetHdr::GSO_TCPV6,
                _ => {
                    return Err(NetError::Unsupported {
                        what: "this GSO type (virtio-net has TCPv4 and TCPv6)",
                    });
                }
            };
            h.gso_size = g.size;
            h.hdr_len = g.hdr_len;
            if h.hdr_len == 0 {
                // The TCP header's data offset, in 32-bit words, in the top nibble of byte 12.
                let doff = frame
                    .get(usize::from(h.csum_start) + 12)
                    .map_or(0, |b| u16::from(b >> 4) * 4);
                h.hdr_len = h.csum_start.saturating_add(doff);
            }
        }
        Ok(h)
    }

    /// The metadata of a received header (validated by the driver against the features).
    pub(super) fn meta_of(h: &NetHdr) -> FrameMeta {
        let checksum = if h.flags & NetHdr::NEEDS_CSUM != 0 {
            Checksum::Partial {
                start: h.csum_start,
                offset: h.csum_offset,
            }
        } else if h.flags & NetHdr::DATA_VALID != 0 {
            Checksum::Validated
        } else {
            Checksum::None
        };
        let gso_type = match h.gso_type & !NetHdr::GSO_ECN {
            NetHdr::GSO_TCPV4 => Some(GsoType::TcpV4),
            NetHdr::GSO_TCPV6 => Some(GsoType::TcpV6),
            _ => None,
        };
        let gso = gso_type.filter(|_| h.gso_size > 0).map(|gso_type| Gso {
            gso_type,
            size: h.gso_size,
            hdr_len: h.hdr_len,
        });
        FrameMeta { checksum, gso }
    }

    impl<T: Transport + Send> VirtioNet<T> {
        /// Wraps `driver`.
        pub fn new(driver: NetDriver<T>) -> Self {
            Self {
                driver: std::cell::RefCell::new(driver),
                stash: std::cell::RefCell::default(),
            }
        }

        /// Runs `f` on the driver (its config, features, control commands).
        pub fn with_driver<R>(&self, f: impl FnOnce(&mut NetDriver<T>) -> R) -> R {
            f(&mut self.driver.borrow_mut())
        }
    }

    impl<T: Transport + Send> NetDevice for VirtioNet<T> {
        fn offloads(&self) -> Offloads {
            let f = self.driver.borrow().features();
            Offloads {
                csum: bit(f, VIRTIO_NET_F_CSUM),
                tso4: bit(f, VIRTIO_NET_F_CSUM) && bit(f, VIRTIO_NET_F_HOST_TSO4),
                tso6: bit(f, VIRTIO_NET_F_CSUM) && bit(f, VIRTIO_NET_F_HOST_TSO6),
            }
        }

        fn max_frame_len(&self) -> usize {
            let d = self.driver.borrow();
            let f = d.features();
            if bit(f, VIRTIO_NET_F_GUEST_TSO4) || bit(f, VIRTIO_NET_F_GUEST_TSO6) {
                MAX_GSO_FRAME
            } else {
                d.config().max_frame()
            }
        }

        fn send(&mut self, frame: &[u8], meta: &FrameMeta) -> Result<(), NetError> {
            if frame.len() < pv_backend::net::ETH_HLEN {
                return Err(NetError::FrameTooShort { len: frame.len() });
            }
            meta.validate(frame.len())?;
            self.offloads().allows(meta)?;
            let hdr = hdr_for(frame, meta)?;
            let mut d = self.driver.borrow_mut();
            d.send_on(0, frame, &hdr).map_err(|e| match e {
                net::Error::BadFrameLength { len, max, .. } => NetError::FrameTooLong { len, max },
                e => net_error("send", e),
            })
        }

        fn recv(&mut self, buf: &mut [u8]) -> Result<Option<RxInfo>, NetError> {
            let next = match self.stash.get_mut().pop_front() {
                Some(f) => Some(f),
                None => self
                    .driver
                    .get_mut()
                    .recv_on(0)
                    .map_err(|e| net_error("receive", e))?,
            };
            let Some((hdr, frame)) = next else {
                return Ok(None);
            };
            if buf.len() < frame.len() {
                let need = frame.len();
                self.stash.get_mut().push_front((hdr, frame));
                return Err(NetError::BufferTooSmall {
                    len: buf.len(),
                    need,
                });
            }
            buf[..frame.len()].copy_from_slice(&frame);
            Ok(Some(RxInfo {
                len: frame.len(),
                meta: meta_of(&hdr),
            }))
        }

        fn wait_readable(&self, timeout: Duration) -> Result<bool, NetError> {
            if !self.stash.borrow().is_empty() {
                return Ok(true);
            }
            let end = Instant::now() + timeout;
            let mut d = self.driver.borrow_mut();
            loop {
                match d.recv_wait_on(0) {
                    Ok(f) => {
                        self.stash.borrow_mut().push_back(f);
                        return Ok(true);
                    }
                    Err(net::Error::Transport(transport::Error::Timeout { .. })) => {
                        if Instant::now() >= end {
                            return Ok(false);
                        }
                    }
                    Err(e) => return Err(net_error("wait", e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pv_backend::net::{Checksum, FrameMeta, Gso, GsoType};

    use super::net_bridge::{hdr_for, meta_of};
    use crate::net::NetHdr;

    #[test]
    fn gso_metadata_maps_to_the_virtio_header_and_back() {
        // Ethernet + IPv4 (20) + TCP with a data offset of 8 words (32 bytes).
        let mut frame = vec![0u8; 200];
        frame[34 + 12] = 8 << 4;
        let meta = FrameMeta {
            checksum: Checksum::Partial {
                start: 34,
                offset: 16,
            },
            gso: Some(Gso {
                gso_type: GsoType::TcpV4,
                size: 1448,
                hdr_len: 0,
            }),
        };
        let h = hdr_for(&frame, &meta).unwrap();
        assert_eq!(h.flags, NetHdr::NEEDS_CSUM);
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
        assert_eq!((h.gso_type, h.gso_size), (NetHdr::GSO_TCPV4, 1448));
        assert_eq!(
            h.hdr_len,
            34 + 32,
            "header length filled from the TCP data offset"
        );
        let back = meta_of(&h);
        assert_eq!(back.checksum, meta.checksum);
        assert_eq!(
            back.gso.map(|g| (g.gso_type, g.size)),
            Some((GsoType::TcpV4, 1448))
        );
    }

    #[test]
    fn received_headers_map_to_metadata() {
        let valid = NetHdr {
            flags: NetHdr::DATA_VALID,
            ..NetHdr::default()
        };
        assert_eq!(meta_of(&valid).checksum, Checksum::Validated);
        assert_eq!(meta_of(&NetHdr::default()), FrameMeta::default());
        let ecn = NetHdr {
            flags: NetHdr::NEEDS_CSUM,
            gso_type: NetHdr::GSO_TCPV6 | NetHdr::GSO_ECN,
            gso_size: 1000,
            csum_start: 54,
            csum_offset: 16,
            hdr_len: 74,
        };
        let m = meta_of(&ecn);
        assert_eq!(m.gso.map(|g| g.gso_type), Some(GsoType::TcpV6));
        // A GSO type with a size of 0 is not GSO.
        let zero = NetHdr { gso_size: 0, ..ecn };
        assert_eq!(meta_of(&zero).gso, None);
    }
}
