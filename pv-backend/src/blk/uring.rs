//! The io_uring engine of [`FileDevice`](super::FileDevice) (`FileOptions::io_uring`): one ring per queue,
//! `IORING_OP_READV`/`WRITEV` on the `O_DIRECT` descriptor, `FSYNC` (datasync) for flushes, `FALLOCATE`
//! (punch hole) for discards on a file (a block device's `BLKDISCARD` is done synchronously).
//! Completions are reaped from the completion ring without a system call; the queue's doorbell (an
//! eventfd) is registered with the ring, so a completion wakes a sleeping queue directly; while the
//! queue is awake ([`BlockQueue::quiet`]) the kernel does not signal it.
//!
//! A request that the kernel refuses with `EINVAL` (not aligned for `O_DIRECT`) or that transfers less
//! than asked is done again synchronously on the buffered descriptor, as the thread pool does.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{IoUring, opcode, types};

use super::device::{BlockQueue, IoCompletion, IoOp, IoRequest};
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

/// One io_uring queue of a file device.
pub(super) struct UringQueue {
    inner: Arc<FileInner>,
    ring: IoUring,
    pending: super::TagMap<Pending>,
    ready: Vec<IoCompletion>,
    next: u64,
    doorbell: Option<Arc<Doorbell>>,
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
            ring: IoUring::new(entries)?,
            pending: super::TagMap::default(),
            ready: Vec::new(),
            next: 1,
            doorbell: None,
        })
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
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (key, res) in done {
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
        !self.ready.is_empty() || !self.ring.completion().is_empty()
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still use the iovecs and the guest memory: wait for every completion.
        while !self.pending.is_empty() {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.collect();
        }
        let _ = self.ring.submitter().unregister_eventfd();
    }
}
