//! The io_uring engine of [`FileDevice`](super::FileDevice) (`FileOptions::io_uring`): one ring per queue,
//! `IORING_OP_READV`/`WRITEV` on the `O_DIRECT` descriptor, `FSYNC` (datasync) for flushes, `FALLOCATE`
//! (punch hole) for discards on a file (a block device's `BLKDISCARD` is done synchronously).
//! Completions are reaped from the completion ring without a system call. A queue with nothing to do
//! sleeps in the ring itself ([`BlockQueue::sleep`]): one `io_uring_enter(GETEVENTS, min_complete = 1)`
//! that returns for the first completion, with a `READ` of the doorbell's eventfd outstanding in the
//! same ring so that a ring of the doorbell (the front end's event) ends the wait too and is drained by
//! the kernel: one system call per sleep, where sleeping on the doorbell took a `poll` and a `read`.
//! The doorbell is also registered with the ring (`register_eventfd`) for callers that sleep on it
//! ([`Doorbell::wait`]) after [`BlockQueue::arm`]; while the queue is awake ([`BlockQueue::quiet`])
//! or sleeps in the ring the kernel does not signal it.
//!
//! A request that the kernel refuses with `EINVAL` (not aligned for `O_DIRECT`) or that transfers less
//! than asked is done again synchronously on the buffered descriptor, as the thread pool does.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

use super::device::{BlockQueue, FixedMemory, IoCompletion, IoOp, IoRequest};
use super::file::FileInner;
use crate::backend::Doorbell;

struct Pending {
    req: IoRequest,
    /// The iovecs the kernel reads (their heap buffer stays put while the entry lives).
    _iov: Vec<libc::iovec>,
    expect: usize,
}

// SAFETY: the iovecs point at guest memory described by the request's `IoBuf`s, which are `Send`; they are
// only handed to the kernel, never dereferenced here.
unsafe impl Send for Pending {}

/// The `user_data` of the `READ` of the doorbell's eventfd (requests count up from 1).
const DOORBELL_KEY: u64 = u64::MAX;

/// One io_uring queue of a file device.
pub(super) struct UringQueue {
    inner: Arc<FileInner>,
    ring: IoUring,
    pending: super::TagMap<Pending>,
    ready: Vec<IoCompletion>,
    next: u64,
    doorbell: Option<Arc<Doorbell>>,
    /// Where the kernel puts the eventfd's count when the doorbell's `READ` completes (boxed: it must
    /// not move while the read is outstanding; nothing here reads it).
    bell_buf: Box<UnsafeCell<u64>>,
    /// A `READ` of the doorbell's eventfd is at the kernel (its completion not yet reaped).
    bell_armed: bool,
    /// The kernel failed a `READ` of the eventfd: the queue sleeps on the doorbell instead.
    bell_refused: bool,
    /// The ring's registered buffers, `(start, length)`: buffer `i` is `fixed_bufs[i]`, chunks of at
    /// most [`FIXED_CHUNK`] of the memory given to [`BlockQueue::register_memory`].
    fixed_bufs: Vec<(usize, usize)>,
    /// That memory, kept mapped while registered (declared after `ring`, so it drops after it).
    fixed: Option<FixedMemory>,
}

/// The largest buffer io_uring registers (the kernel refuses more than 1 GiB per buffer).
const FIXED_CHUNK: usize = 1 << 30;
/// The most buffers io_uring registers on one ring (`IORING_MAX_REG_BUFFERS`).
const FIXED_MAX_BUFS: usize = 1 << 14;

/// `ranges` cut into pieces of at most [`FIXED_CHUNK`] bytes.
fn fixed_chunks(ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(FIXED_CHUNK);
            out.push((start + off, n));
            off += n;
        }
    }
    out
}

/// Registers `chunks` as `ring`'s fixed buffers.
///
/// # Safety
///
/// Each chunk is mapped memory that stays mapped to the same pages while the ring lives (the
/// contract of [`FixedMemory::new`], whose value the caller keeps for as long).
unsafe fn register_chunks(ring: &IoUring, chunks: &[(usize, usize)]) -> io::Result<()> {
    let iov: Vec<libc::iovec> = chunks
        .iter()
        .map(|&(start, len)| libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: the caller's promise; the kernel pins the pages and copies the iovecs.
    unsafe { ring.submitter().register_buffers(&iov) }
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl UringQueue {
    pub(super) fn new(inner: Arc<FileInner>, entries: u32) -> io::Result<Self> {
        Ok(Self {
            inner,
            // The kernel does not interrupt the running queue thread to post a completion
            // (`IORING_SETUP_COOP_TASKRUN`: no IPI per completion); it flags the pending work
            // (`TASKRUN_FLAG`), which `collect` runs. A sleeping queue is woken as before. Kernels
            // before 5.19 refuse the flags: a plain ring then.
            ring: IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(entries)
                .or_else(|_| IoUring::new(entries))?,
            pending: super::TagMap::default(),
            ready: Vec::new(),
            next: 1,
            doorbell: None,
            bell_buf: Box::new(UnsafeCell::new(0)),
            bell_armed: false,
            bell_refused: false,
            fixed_bufs: Vec::new(),
            fixed: None,
        })
    }

    /// The index of the registered buffer that holds `len` bytes at `addr`, if one does.
    fn fixed_index(&self, addr: usize, len: usize) -> Option<u16> {
        let i = self.fixed_bufs.iter().position(|&(start, n)| {
            addr >= start && addr - start <= n && len <= n - (addr - start)
        })?;
        u16::try_from(i).ok()
    }

    /// Puts a `READ` of the doorbell's eventfd in the submission queue unless one is outstanding
    /// (submitted by the next `io_uring_enter`); returns whether one is.
    fn arm_bell(&mut self, fd: std::os::fd::RawFd) -> bool {
        if self.bell_armed {
            return true;
        }
        let entry = opcode::Read::new(types::Fd(fd), self.bell_buf.get().cast(), 8)
            .build()
            .user_data(DOORBELL_KEY);
        self.bell_armed = self.push(&entry).is_ok();
        self.bell_armed
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer the entry points to (iovecs and the guest memory they describe) stays valid
        // until its completion is taken: the iovecs live in `pending`, the guest memory is kept mapped by the
        // back end until the completion is reaped (the contract of `IoBuf::new`).
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    fn start(&mut self, req: IoRequest) {
        let key = self.next;
        self.next += 1;
        let fd = types::Fd(
            self.inner
                .direct
                .as_ref()
                .unwrap_or(&self.inner.buffered)
                .as_raw_fd(),
        );
        let bfd = types::Fd(self.inner.buffered.as_raw_fd());
        let (entry, iov, expect) = match &req.op {
            IoOp::Read { offset, bufs } | IoOp::Write { offset, bufs } => {
                let write = matches!(req.op, IoOp::Write { .. });
                if let Err(e) = self.inner.check(write, *offset, bufs) {
                    self.ready.push(IoCompletion {
                        tag: req.tag,
                        result: Err(e),
                    });
                    return;
                }
                let fixed = match bufs.as_slice() {
                    [b] => self
                        .fixed_index(b.as_ptr() as usize, b.len())
                        .zip(u32::try_from(b.len()).ok())
                        .map(|(i, n)| (b, i, n)),
                    _ => None,
                };
                if let Some((b, i, n)) = fixed {
                    // One buffer in registered memory: no iovec, and the kernel does not pin its
                    // pages again.
                    let e = if write {
                        opcode::WriteFixed::new(fd, b.as_ptr().cast_const(), n, i)
                            .offset(*offset)
                            .build()
                    } else {
                        opcode::ReadFixed::new(fd, b.as_ptr(), n, i)
                            .offset(*offset)
                            .build()
                    };
                    self.inner
                        .fixed_ios
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    (e, Vec::new(), req.op.data_len())
                } else {
                    let iov: Vec<libc::iovec> = bufs
                        .iter()
                        .map(|b| libc::iovec {
                            iov_base: b.as_ptr().cast(),
                            iov_len: b.len(),
                        })
                        .collect();
                    let n = u32::try_from(iov.len()).unwrap_or(u32::MAX);
                    let e = if write {
                        opcode::Writev::new(fd, iov.as_ptr(), n)
                            .offset(*offset)
                            .build()
                    } else {
                        opcode::Readv::new(fd, iov.as_ptr(), n)
                            .offset(*offset)
                            .build()
                    };
                    (e, iov, req.op.data_len())
                }
            }
            IoOp::Flush => (
                opcode::Fsync::new(bfd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
                Vec::new(),
                0,
            ),
            IoOp::Discard { offset, len }
                if !self.inner.discard_punches_holes()
                    || *len == 0
                    || self.inner.check_discard(*offset, *len).is_err() =>
            {
                // A block device's BLKDISCARD/BLKZEROOUT (io_uring has no such opcode on every kernel),
                // or a discard refused before it reaches the disk: synchronously.
                let result = self.inner.run_buffered(&req.op);
                self.ready.push(IoCompletion {
                    tag: req.tag,
                    result,
                });
                return;
            }
            IoOp::Discard { offset, len } => (
                opcode::Fallocate::new(bfd, *len)
                    .offset(*offset)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    .build(),
                Vec::new(),
                0,
            ),
        };
        let entry = entry.user_data(key);
        let tag = req.tag;
        self.pending.insert(
            key,
            Pending {
                req,
                _iov: iov,
                expect,
            },
        );
        if let Err(e) = self.push(&entry) {
            self.pending.remove(&key);
            self.ready.push(IoCompletion {
                tag,
                result: Err(e),
            });
        }
    }

    fn collect(&mut self) {
        if self.ring.submission().taskrun() {
            // Completions are waiting for this thread to run the kernel's task work: an
            // `io_uring_enter(GETEVENTS)` runs it (and submits anything queued).
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring: running completions");
            }
        }
        // Straight off the completion queue (its head moves when `cq` drops), without a vector per
        // call: the loop touches only the other fields.
        let cq = self.ring.completion();
        for (key, res) in cq.map(|c| (c.user_data(), c.result())) {
            if key == DOORBELL_KEY {
                // The doorbell's eventfd was read (drained), or the read was cancelled. A kernel
                // that refuses the read would complete each one at once: stop using it.
                self.bell_armed = false;
                if res < 0 && res != -libc::ECANCELED && res != -libc::EINTR {
                    tracing::warn!(error = %io::Error::from_raw_os_error(-res), "io_uring: reading the doorbell's eventfd; sleeping on the doorbell instead");
                    self.bell_refused = true;
                }
                continue;
            }
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let result = match (&p.req.op, res) {
                (IoOp::Read { .. } | IoOp::Write { .. }, r)
                    if r == -libc::EINVAL || (r >= 0 && (r as usize) < p.expect) =>
                {
                    // Not aligned for O_DIRECT, or short: do it again, synchronously and buffered.
                    self.inner.run_buffered(&p.req.op)
                }
                (_, r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                _ => Ok(()),
            };
            self.ready.push(IoCompletion {
                tag: p.req.tag,
                result,
            });
        }
    }
}

impl BlockQueue for UringQueue {
    fn set_doorbell(&mut self, doorbell: Arc<Doorbell>) {
        if self.bell_armed {
            // The outstanding read is of the old doorbell's eventfd: cancel it (its completion
            // clears `bell_armed`), so that the next sleep reads the new one.
            let cancel = opcode::AsyncCancel::new(DOORBELL_KEY)
                .build()
                .user_data(DOORBELL_KEY - 1);
            let _ = self.push(&cancel);
        }
        let sub = self.ring.submitter();
        if self.doorbell.is_some() {
            let _ = sub.unregister_eventfd();
        }
        if let Err(e) = sub.register_eventfd(doorbell.as_raw_fd()) {
            tracing::warn!(error = %e, "io_uring: registering the doorbell; completions will be seen by polling only");
        }
        // Held so that the eventfd outlives its registration.
        self.doorbell = Some(doorbell);
    }

    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for req in batch.drain(..) {
            self.start(req);
        }
        if let Err(e) = self.ring.submit() {
            tracing::warn!(error = %e, "io_uring submit");
        }
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.collect();
        let n = self.ready.len();
        out.append(&mut self.ready);
        n
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.ready.len()
    }

    fn quiet(&mut self) {
        // The kernel stops signalling the eventfd for each completion (`IORING_CQ_EVENTFD_DISABLED`).
        self.ring.completion().disable_eventfd();
    }

    fn arm(&mut self) -> bool {
        self.ring.completion().enable_eventfd();
        // A completion posted before the flag was seen signalled nothing: look once more, after a full
        // fence (the flag's store must not pass the load of the tail). Were the kernel's side to miss
        // it anyway, the sleeper's timeout bounds the delay.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        !self.ready.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().taskrun()
    }

    fn wait_completion(&mut self, timeout: Duration) -> bool {
        self.wait_in_ring(timeout)
    }

    fn register_memory(&mut self, memory: &FixedMemory) -> bool {
        if self.fixed.is_some() {
            return true;
        }
        let chunks = fixed_chunks(memory.ranges());
        if chunks.is_empty() || chunks.len() > FIXED_MAX_BUFS {
            return false;
        }
        // SAFETY: `FixedMemory::new`'s contract keeps the ranges mapped to the same pages while
        // `memory` lives, and its clone is kept in `fixed`, which drops after the ring.
        match unsafe { register_chunks(&self.ring, &chunks) } {
            Ok(()) => {
                self.fixed_bufs = chunks;
                self.fixed = Some(memory.clone());
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "io_uring: registering guest memory; pinning per request");
                false
            }
        }
    }

    fn any_thread_submits(&mut self) {
        if !self.pending.is_empty() || self.bell_armed {
            return;
        }
        // A plain ring: the kernel interrupts the submitting thread to post each completion (task
        // work with a signal), rather than waiting for it to enter the kernel.
        let entries = self.ring.params().sq_entries();
        let ring = match IoUring::new(entries) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring: a ring without COOP_TASKRUN; keeping the first");
                return;
            }
        };
        if let Some(d) = &self.doorbell {
            if let Err(e) = ring.submitter().register_eventfd(d.as_raw_fd()) {
                tracing::warn!(error = %e, "io_uring: registering the doorbell; keeping the first ring");
                return;
            }
        }
        // SAFETY: as in `register_memory`: `fixed` keeps the memory mapped, and drops after the ring.
        let refused = !self.fixed_bufs.is_empty()
            && unsafe { register_chunks(&ring, &self.fixed_bufs) }
                .inspect_err(|e| tracing::warn!(error = %e, "io_uring: registering guest memory on the new ring; pinning per request"))
                .is_err();
        let _ = self.ring.submitter().unregister_eventfd();
        self.ring = ring;
        if refused {
            self.fixed_bufs.clear();
            self.fixed = None;
        }
    }

    fn sleep(&mut self, doorbell: &Doorbell, timeout: Duration) -> bool {
        let ours = self
            .doorbell
            .as_ref()
            .is_some_and(|d| d.as_raw_fd() == doorbell.as_raw_fd());
        // The kernel does not signal the eventfd while we wait in the ring (it would complete our own
        // read of it).
        self.quiet();
        if !ours
            || self.bell_refused
            || !self.ring.params().is_feature_ext_arg()
            || !self.arm_bell(doorbell.as_raw_fd())
        {
            // Sleep on the doorbell instead, as the default does.
            if self.arm() {
                self.quiet();
                return false;
            }
            doorbell.wait(timeout);
            self.quiet();
            return true;
        }
        if !self.ready.is_empty() || !self.ring.completion().is_empty() {
            return false;
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        let ring = &self.ring;
        doorbell.wait_with(|| {
            // Submits the doorbell's read (and anything queued) and returns at the first completion
            // (at once if one is there already), or after `timeout` (ETIME).
            match ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => tracing::warn!(error = %e, "io_uring: waiting for a completion"),
            }
        });
        true
    }
}

impl UringQueue {
    /// [`BlockQueue::wait_completion`]: no `READ` of the doorbell is put in the ring, which would take
    /// the queue thread's wake-ups (in inline mode that thread sleeps on the doorbell itself, never in
    /// the ring, so it leaves no such `READ` outstanding either).
    fn wait_in_ring(&mut self, timeout: Duration) -> bool {
        self.quiet();
        if !self.ready.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().taskrun()
        {
            return true;
        }
        if self.pending.is_empty() || !self.ring.params().is_feature_ext_arg() {
            return false;
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "io_uring: waiting for a completion");
                return false;
            }
        }
        true
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still use the iovecs, the guest memory and the doorbell's buffer: cancel the
        // doorbell's read and wait for every completion.
        if self.bell_armed {
            let cancel = opcode::AsyncCancel::new(DOORBELL_KEY)
                .build()
                .user_data(DOORBELL_KEY - 1);
            if self.push(&cancel).is_err() {
                // Without a cancel the read ends only when the eventfd is written: write it.
                if let Some(d) = &self.doorbell {
                    d.kick();
                }
            }
        }
        while !self.pending.is_empty() || self.bell_armed {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.collect();
        }
        let _ = self.ring.submitter().unregister_eventfd();
    }
}
