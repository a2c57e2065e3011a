//! blkback's inline mode ([`BlkConfig::inline`](super::BlkConfig::inline)): a queue that the guest's
//! vCPU thread serves itself while nobody else does, as QEMU's vCPU threads run the device's code with
//! `ioeventfd=off`.
//!
//! Each queue is a [`QueueServer`] behind a mutex, which whoever serves it holds: the queue thread, or
//! one inline caller. Never two at once. The hypervisor layer calls, on the vCPU thread of the guest:
//!
//! - [`InlineQueue::notify`] where it would deliver the guest's `EVTCHNOP_send` on the queue's port
//!   (the kick): if nobody holds the queue (its thread sleeps, idle) it takes the queue, takes the
//!   requests off the ring, maps their grants and submits them to the device, then releases it; the
//!   doorbell is not rung, so the queue thread sleeps on. If someone holds it, it rings the doorbell,
//!   as an event would.
//! - [`InlineQueue::block`] on `SCHEDOP_block` (the guest idles until its event), with how long it may
//!   stay and the vCPU's own wake condition (an event pending): if requests are at the device and nobody
//!   holds the queue, it takes it and sleeps in the device ([`BlockQueue::wait_completion`]), reaps,
//!   answers, pushes the responses and sends the guest its event (which is what ends the block), then
//!   releases it. It gives the queue back when the wake condition holds, when nothing is in flight, or
//!   when its time is up.
//!
//! Releasing loses nothing: the holder takes what is on the ring until ring.h's final check (which
//! re-arms `req_event`) finds nothing more; if requests are still at the device it arms the device
//! ([`BlockQueue::arm`]), so that their completions wake the queue thread, which takes the queue over.
//! A kick that finds the queue held rings the doorbell, and the thread waits for the mutex rather than
//! sleeping again. The queue thread always sleeps outside the mutex, on its doorbell, which only the
//! guest's events, a teardown and an armed device ring: with requests in flight it arms the device
//! first, and a holder quiets it, so a guest that blocks takes its completions back from a thread that
//! took them over (it does not sleep in the device, as it does without inline serving). Teardown (Closing, a
//! reconnection, a broken ring) sets `stop`; a holder gives the queue back at its next step, the thread
//! then waits for the device and drops every mapping and the ring under the mutex, and the handles that
//! remain do nothing from then on.
//!
//! [`BlockQueue::wait_completion`]: super::BlockQueue::wait_completion
//! [`BlockQueue::arm`]: super::BlockQueue::arm

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::queue::{QueueError, QueueServer};
use crate::backend::Doorbell;

/// How long the queue thread sleeps at most before it looks at `stop` again.
const THREAD_SLEEP: Duration = Duration::from_millis(200);

/// Counters of a queue's inline serving.
#[derive(Debug, Default)]
pub struct InlineStats {
    /// Kicks served on the caller's thread.
    pub notify_served: AtomicU64,
    /// Kicks that found the queue held (or stopped) and rang its doorbell.
    pub notify_rung: AtomicU64,
    /// Blocks that served the queue (waited in the device).
    pub block_served: AtomicU64,
    /// Blocks that found nothing in flight or the queue held, and returned at once.
    pub block_passed: AtomicU64,
    /// Releases that left requests at the device for the queue thread (the device armed).
    pub handed_back: AtomicU64,
}

impl InlineStats {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// A snapshot: (notify_served, notify_rung, block_served, block_passed, handed_back).
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.notify_served.load(Ordering::Relaxed),
            self.notify_rung.load(Ordering::Relaxed),
            self.block_served.load(Ordering::Relaxed),
            self.block_passed.load(Ordering::Relaxed),
            self.handed_back.load(Ordering::Relaxed),
        )
    }
}

/// One queue shared by its thread and the inline callers.
pub(super) struct Shared {
    server: Mutex<Option<QueueServer>>,
    stop: AtomicBool,
    doorbell: Arc<Doorbell>,
    /// The error an inline caller met (the thread returns it).
    failed: Mutex<Option<QueueError>>,
    stats: Arc<InlineStats>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stop", &self.stop)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn new(mut server: QueueServer, doorbell: Arc<Doorbell>) -> Arc<Self> {
        // A vCPU thread that kicks and returns to its guest must not hold back the completions of
        // what it submitted until its next exit.
        server.dev.any_thread_submits();
        Arc::new(Self {
            server: Mutex::new(Some(server)),
            stop: AtomicBool::new(false),
            doorbell,
            failed: Mutex::new(None),
            stats: Arc::default(),
        })
    }

    /// Stops the queue: inline callers no longer take it, the thread ends (after its drain).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.doorbell.ring();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The queue, unless someone holds it or it is stopped.
    fn try_take(&self) -> Option<MutexGuard<'_, Option<QueueServer>>> {
        if self.stopped() {
            return None;
        }
        let g = match self.server.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        (g.is_some() && !self.stopped()).then_some(g)
    }

    /// An inline holder met a broken ring: the queue stops, as its thread would.
    fn fail(&self, e: QueueError) {
        tracing::warn!(error = %e, "blkback queue stopped (inline)");
        lock(&self.failed).get_or_insert(e);
        self.stop();
    }

    /// Serves `s` until ring.h's final check (which re-arms `req_event`) finds no request and no
    /// completion is ready, or the queue is stopped. Returns whether requests are still at the
    /// device, which is then armed, so that their completions ring the doorbell.
    fn settle(&self, s: &mut QueueServer) -> Result<bool, QueueError> {
        loop {
            if self.stopped() {
                return Ok(false);
            }
            // One pass takes every request there is (a ring holds no more than the queue may have
            // in flight), so the final check, not another pass, says whether more came.
            s.pump()?;
            if s.final_check()? {
                continue;
            }
            if !s.busy() {
                return Ok(false);
            }
            if !s.dev.arm() {
                return Ok(true);
            }
            // A completion is there already: answer it here rather than wake the thread.
            s.dev.quiet();
        }
    }

    /// What a holder does before it lets go: [`settle`](Self::settle), leaving requests still in
    /// flight to the thread.
    fn release(&self, s: &mut QueueServer) {
        match self.settle(s) {
            Ok(true) => InlineStats::add(&self.stats.handed_back),
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }

    /// The queue thread: serves while it has work, then sleeps on the doorbell outside the mutex,
    /// with the device armed if requests are in flight. Ends when stopped, then drains the device and
    /// drops the server (its ring and every mapping).
    pub(super) fn run_thread(&self) -> Result<(), QueueError> {
        let r = self.thread_loop();
        if let Err(e) = &r {
            lock(&self.failed).get_or_insert(e.clone());
        }
        self.stop.store(true, Ordering::Release);
        let mut g = lock(&self.server);
        if let Some(mut s) = g.take() {
            s.finish();
        }
        drop(g);
        match lock(&self.failed).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn thread_loop(&self) -> Result<(), QueueError> {
        let mut g = lock(&self.server);
        if let Some(s) = g.as_mut() {
            s.dev.quiet();
        }
        loop {
            if self.stopped() {
                return Ok(());
            }
            let Some(s) = g.as_mut() else {
                return Ok(());
            };
            self.settle(s)?;
            if self.stopped() {
                return Ok(());
            }
            // The queue is free for inline callers while the thread sleeps, on its doorbell, which the
            // device rings for its completions from now on (armed), until a holder quiets it: so a
            // guest that blocks takes its completions back from a thread that took them over.
            drop(g);
            self.doorbell.wait(THREAD_SLEEP);
            g = lock(&self.server);
            if let Some(s) = g.as_mut() {
                s.count_sleep();
                s.dev.quiet();
            }
        }
    }
}

/// The inline entries of one blkback queue, for the hypervisor layer's vCPU thread: call
/// [`notify`](Self::notify) where the guest's kick of the queue's port (`EVTCHNOP_send`) would be
/// delivered, and [`block`](Self::block) when the guest blocks (`SCHEDOP_block`). Whoever serves the
/// queue (its thread or one inline caller) holds it; a release takes the ring to ring.h's final check and
/// leaves requests still in flight to the queue thread (the design, and the figures: pv-backend's
/// README, "Inline serving"). Cheap to clone; any thread may call it. A handle belongs to one
/// connection: after a reconnection take new ones ([`InlineDevice::queue`]); an old one does nothing.
#[derive(Clone, Debug)]
pub struct InlineQueue(pub(super) Arc<Shared>);

impl InlineQueue {
    /// The guest kicked the queue's port (`EVTCHNOP_send`): serves the ring here if nobody holds the
    /// queue, else rings its doorbell as the event would. Returns whether it served it.
    pub fn notify(&self) -> bool {
        let sh = &*self.0;
        let Some(mut g) = sh.try_take() else {
            InlineStats::add(&sh.stats.notify_rung);
            sh.doorbell.ring();
            return false;
        };
        let Some(s) = g.as_mut() else {
            return false;
        };
        s.dev.quiet();
        sh.release(s);
        InlineStats::add(&sh.stats.notify_served);
        true
    }

    /// The guest blocks until its event (`SCHEDOP_block`): if requests are at the device and nobody
    /// holds the queue, sleeps in the device here and answers the completions (sending the guest its
    /// event), until `wake` returns `true` (checked after each step: the vCPU's own wake condition, such
    /// as an event pending), nothing is in flight, or `timeout` passes; then gives the queue back (to the
    /// queue thread if requests are still in flight). Returns whether it served the queue; `false`: the
    /// caller blocks as it would have.
    ///
    /// A kick from another vCPU while a caller waits here is taken when its wait ends (the next
    /// completion or the timeout): keep the timeout short (a millisecond or so) on a guest with
    /// several vCPUs on one queue. A device that cannot wait without its doorbell
    /// ([`BlockQueue::wait_completion`](super::BlockQueue::wait_completion), the thread pool) is
    /// answered as far as it has completed and handed back.
    pub fn block(&self, timeout: Duration, wake: impl Fn() -> bool) -> bool {
        let sh = &*self.0;
        let Some(mut g) = sh.try_take() else {
            InlineStats::add(&sh.stats.block_passed);
            return false;
        };
        let Some(s) = g.as_mut() else {
            return false;
        };
        if !s.busy() {
            InlineStats::add(&sh.stats.block_passed);
            return false;
        }
        InlineStats::add(&sh.stats.block_served);
        s.dev.quiet();
        let mut deadline = None;
        loop {
            match s.pump() {
                Ok(_) => {}
                Err(e) => {
                    sh.fail(e);
                    return true;
                }
            }
            if wake() || sh.stopped() || !s.busy() {
                break;
            }
            let now = Instant::now();
            let end = *deadline.get_or_insert(now + timeout);
            if now >= end || !s.dev.wait_completion(end - now) {
                break;
            }
        }
        sh.release(s);
        true
    }

    /// The queue's inline counters.
    pub fn stats(&self) -> Arc<InlineStats> {
        self.0.stats.clone()
    }

    /// Whether the queue is stopped (its connection closed or its ring broken): the handle does nothing
    /// more.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped()
    }
}

/// The inline entries of one blkback device: the [`InlineQueue`] of each connected queue, updated at
/// each connection. Obtained from [`BlkBack::inline`](super::BlkBack::inline) before the back end is
/// handed to its XenBus driver.
#[derive(Clone, Debug, Default)]
pub struct InlineDevice(pub(super) Arc<Mutex<Vec<InlineQueue>>>);

impl InlineDevice {
    /// Queue `i` of the current connection (none while not connected, or without inline serving).
    pub fn queue(&self, i: usize) -> Option<InlineQueue> {
        lock(&self.0).get(i).cloned()
    }

    /// The number of connected queues served inline.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Whether no queue is connected (or inline serving is off).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The guest kicked the port whose events ring `doorbell` (the doorbell blkback gave
    /// [`EventChannels::bind`](crate::backend::EventChannels::bind) for it): if that is a connected
    /// queue's, calls its [`InlineQueue::notify`] and returns what that returned (whether it served the
    /// ring here); `None` (nothing done) for any other doorbell, which the caller then rings. For a
    /// hypervisor layer that knows its ports by the doorbells it bound them to.
    pub fn notify_kick(&self, doorbell: &Arc<Doorbell>) -> Option<bool> {
        let q = lock(&self.0)
            .iter()
            .find(|q| Arc::ptr_eq(&q.0.doorbell, doorbell))
            .cloned();
        q.map(|q| q.notify())
    }
}
