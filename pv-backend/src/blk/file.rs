//! A raw image file (or block device) as a [`BlockDevice`]: `preadv`/`pwritev` from a pool of threads per
//! queue, or io_uring.
//!
//! The file is opened with `O_DIRECT` where that works (the page cache is bypassed, as Linux's blkback
//! bypasses it by going to the block layer) and also without it: a request whose buffers or offset are
//! not aligned as `O_DIRECT` needs (`EINVAL`), or a file system that refuses `O_DIRECT` at open, falls
//! back to the buffered descriptor. The kernel keeps both views coherent (direct I/O writes back and
//! invalidates the cached range first).
//!
//! Two engines serve the queues: a pool of threads per queue (the default), or one io_uring per queue
//! ([`FileOptions::io_uring`]); the benchmark measures both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::device::{BlockDevice, BlockInfo, BlockQueue, IoBuf, IoCompletion, IoOp, IoRequest};
use crate::backend::Doorbell;

/// A raw image file or block device.
#[derive(Debug, Clone)]
pub struct FileDevice {
    inner: Arc<FileInner>,
    threads: usize,
    io_uring: bool,
}

#[derive(Debug)]
pub(super) struct FileInner {
    pub(super) buffered: File,
    pub(super) direct: Option<File>,
    info: BlockInfo,
    /// How a discard is done.
    discard: DiscardHow,
    /// Reads and writes submitted on registered memory (io_uring's `READ_FIXED`/`WRITE_FIXED`).
    pub(super) fixed_ios: Arc<std::sync::atomic::AtomicU64>,
}

/// How [`IoOp::Discard`] reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscardHow {
    /// Not offered.
    None,
    /// A regular file: `fallocate(FALLOC_FL_PUNCH_HOLE)`.
    PunchHole,
    /// A block device that discards: `BLKDISCARD`, then `BLKZEROOUT` if the device refuses it.
    BlkDiscard,
    /// A block device that only writes zeroes efficiently: `BLKZEROOUT`.
    BlkZeroOut,
}

/// `BLKDISCARD` (`_IO(0x12, 119)` in `linux/fs.h`): discard a byte range `[start, len]` of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// `BLKZEROOUT` (`_IO(0x12, 127)` in `linux/fs.h`): zero a byte range `[start, len]` of a block device
/// (with the device's write-zeroes command when it has one, unmapping where it can).
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// What sysfs says about a block device's discard and write-zeroes support.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BlockDiscardInfo {
    granularity: u32,
    alignment: u32,
    discard: bool,
    write_zeroes: bool,
}

/// Reads `/sys/dev/block/MAJ:MIN/queue/discard_granularity`, `queue/discard_max_bytes`,
/// `queue/write_zeroes_max_bytes` and `discard_alignment` of the device `rdev`; missing files count as
/// no support.
fn block_discard_info(rdev: u64) -> BlockDiscardInfo {
    let dir = format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev as libc::dev_t),
        libc::minor(rdev as libc::dev_t)
    );
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(format!("{dir}/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    BlockDiscardInfo {
        granularity: u32::try_from(read("queue/discard_granularity")).unwrap_or(0),
        alignment: u32::try_from(read("discard_alignment")).unwrap_or(0),
        discard: read("queue/discard_max_bytes") > 0,
        write_zeroes: read("queue/write_zeroes_max_bytes") > 0,
    }
}

/// `BLKDISCARD` or `BLKZEROOUT` of `len` bytes at `offset` of the block device `file`.
fn block_range_ioctl(file: &File, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: both ioctls read a `[u64; 2]` (start, length) from the pointer, which points at `range`
    // on the stack for the whole call; the descriptor is ours.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, range.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The options of [`FileDevice::open`].
#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    /// Open read-only and refuse writes.
    pub read_only: bool,
    /// Try `O_DIRECT`.
    pub direct: bool,
    /// Worker threads per queue.
    pub threads: usize,
    /// The logical block size to present (`sector-size`).
    pub logical_block_size: u32,
    /// Use one io_uring per queue instead of the thread pool (`threads` is then unused).
    pub io_uring: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            direct: true,
            threads: 4,
            logical_block_size: 512,
            io_uring: false,
        }
    }
}

impl FileDevice {
    /// Opens `path`.
    pub fn open(path: impl AsRef<Path>, opts: FileOptions) -> io::Result<Self> {
        let path = path.as_ref();
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        let buffered = oo.open(path)?;
        let direct = if opts.direct {
            match oo.clone().custom_flags(libc::O_DIRECT).open(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "O_DIRECT refused; buffered I/O only");
                    None
                }
            }
        } else {
            None
        };
        let meta = buffered.metadata()?;
        let size = if meta.file_type().is_block_device() {
            // SAFETY: lseek on a descriptor we own; SEEK_END gives the device size and moves nothing we use
            // (every I/O is positioned).
            let end = unsafe { libc::lseek(buffered.as_raw_fd(), 0, libc::SEEK_END) };
            u64::try_from(end).map_err(|_| io::Error::last_os_error())?
        } else {
            meta.len()
        };
        let lbs = opts.logical_block_size;
        let size = size - size % u64::from(lbs.max(512));
        let (discard, granularity, alignment) = if opts.read_only {
            (DiscardHow::None, 4096, 0)
        } else if meta.file_type().is_file() {
            (DiscardHow::PunchHole, 4096, 0)
        } else if meta.file_type().is_block_device() {
            use std::os::unix::fs::MetadataExt;
            let d = block_discard_info(meta.rdev());
            let how = if d.discard {
                DiscardHow::BlkDiscard
            } else if d.write_zeroes {
                DiscardHow::BlkZeroOut
            } else {
                DiscardHow::None
            };
            // A granularity below the logical block (or none, for write-zeroes only) is one block.
            (how, d.granularity.max(lbs), d.alignment)
        } else {
            (DiscardHow::None, 4096, 0)
        };
        Ok(Self {
            inner: Arc::new(FileInner {
                buffered,
                direct,
                info: BlockInfo {
                    size,
                    logical_block_size: lbs,
                    physical_block_size: lbs.max(4096),
                    read_only: opts.read_only,
                    flush: true,
                    discard: discard != DiscardHow::None,
                    discard_granularity: granularity,
                    discard_alignment: alignment,
                },
                discard,
                fixed_ios: Arc::default(),
            }),
            threads: opts.threads.max(1),
            io_uring: opts.io_uring,
        })
    }

    /// Whether `O_DIRECT` is in use.
    pub fn is_direct(&self) -> bool {
        self.inner.direct.is_some()
    }

    /// How many reads and writes its queues have submitted on registered memory
    /// ([`BlockQueue::register_memory`]: io_uring's fixed buffers), over all queues.
    pub fn fixed_ios(&self) -> u64 {
        self.inner
            .fixed_ios
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The counter behind [`fixed_ios`](Self::fixed_ios), which outlives the device (for a caller
    /// that totals it after the device is gone).
    pub fn fixed_io_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.fixed_ios.clone()
    }
}

impl BlockDevice for FileDevice {
    fn info(&self) -> BlockInfo {
        self.inner.info
    }

    fn open_queue(&self) -> io::Result<Box<dyn BlockQueue>> {
        if self.io_uring {
            return Ok(Box::new(super::uring::UringQueue::new(
                self.inner.clone(),
                256,
            )?));
        }
        let (tx, rx) = channel::<IoRequest>();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Done::default());
        let mut workers = Vec::with_capacity(self.threads);
        for i in 0..self.threads {
            let rx = rx.clone();
            let inner = self.inner.clone();
            let shared = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("blk-file-{i}"))
                    .spawn(move || worker(&inner, &rx, &shared))?,
            );
        }
        Ok(Box::new(FileQueue {
            tx: Some(tx),
            shared,
            workers,
            in_flight: 0,
        }))
    }
}

#[derive(Debug, Default)]
struct Done {
    list: Mutex<(Vec<IoCompletion>, Option<Arc<Doorbell>>)>,
    /// Completions in `list`: lets `reap` skip the lock when there are none (it is polled).
    ready: std::sync::atomic::AtomicUsize,
}

fn worker(inner: &FileInner, rx: &Mutex<Receiver<IoRequest>>, done: &Done) {
    loop {
        let req = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(req) = req else { return };
        let result = inner.run(&req.op);
        drop(req.op);
        let mut list = done.list.lock().unwrap_or_else(|e| e.into_inner());
        list.0.push(IoCompletion {
            tag: req.tag,
            result,
        });
        done.ready
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        let bell = list.1.clone();
        drop(list);
        if let Some(d) = bell {
            d.ring();
        }
    }
}

impl FileInner {
    fn run(&self, op: &IoOp) -> io::Result<()> {
        match op {
            IoOp::Read { offset, bufs } => self.rw(false, *offset, bufs),
            IoOp::Write { offset, bufs } => {
                if self.info.read_only {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the disk is read-only",
                    ));
                }
                self.rw(true, *offset, bufs)
            }
            IoOp::Flush => self.buffered.sync_data(),
            IoOp::Discard { offset, len } => self.discard(*offset, *len),
        }
    }

    /// Checks a discard against the disk's size.
    pub(super) fn check_discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.info.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "discard of bytes {offset} + {len} is past the end of the {}-byte disk",
                    self.info.size
                ),
            ));
        }
        Ok(())
    }

    /// Whether a discard is `fallocate(PUNCH_HOLE)` on the file (which io_uring can do), rather than an
    /// ioctl of a block device (done synchronously).
    pub(super) fn discard_punches_holes(&self) -> bool {
        self.discard == DiscardHow::PunchHole
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_discard(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match self.discard {
            DiscardHow::None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this disk does not discard (read-only, or a device without discard or write-zeroes)",
            )),
            DiscardHow::BlkDiscard => {
                match block_range_ioctl(&self.buffered, BLKDISCARD, offset, len) {
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        block_range_ioctl(&self.buffered, BLKZEROOUT, offset, len)
                    }
                    r => r,
                }
            }
            DiscardHow::BlkZeroOut => block_range_ioctl(&self.buffered, BLKZEROOUT, offset, len),
            DiscardHow::PunchHole => {
                let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                };
                // SAFETY: fallocate on a descriptor we own, with integer arguments only.
                let r = unsafe {
                    libc::fallocate(
                        self.buffered.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off,
                        n,
                    )
                };
                if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        }
    }

    /// Checks a read or write against the disk's size and mode.
    pub(super) fn check(&self, write: bool, offset: u64, bufs: &[IoBuf]) -> io::Result<()> {
        if write && self.info.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if offset
            .checked_add(total)
            .is_none_or(|end| end > self.info.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "bytes {offset} + {total} are past the end of the {}-byte disk",
                    self.info.size
                ),
            ));
        }
        Ok(())
    }

    /// A read or write done synchronously on the buffered descriptor (the fallback of the io_uring engine).
    pub(super) fn run_buffered(&self, op: &IoOp) -> io::Result<()> {
        match op {
            IoOp::Read { offset, bufs } => vectored(&self.buffered, false, *offset, bufs),
            IoOp::Write { offset, bufs } => vectored(&self.buffered, true, *offset, bufs),
            other => self.run(other),
        }
    }

    fn rw(&self, write: bool, offset: u64, bufs: &[IoBuf]) -> io::Result<()> {
        self.check(write, offset, bufs)?;
        if let Some(d) = &self.direct {
            match vectored(d, write, offset, bufs) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => return r,
            }
        }
        vectored(&self.buffered, write, offset, bufs)
    }
}

/// `preadv`/`pwritev` of all of `bufs` at `offset`, continuing after short transfers.
fn vectored(file: &File, write: bool, offset: u64, bufs: &[IoBuf]) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut first = 0usize;
    let mut off = offset;
    // Each round moves at least one byte or returns, so this ends within `total` rounds.
    while first < iov.len() {
        let rest = &iov[first..];
        let cnt = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let pos = i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec describes guest memory that the back end keeps mapped until this request's
        // completion is reaped (the contract of `IoBuf::new`), valid for writes when reading the disk.
        let n = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), rest.as_ptr(), cnt, pos)
            } else {
                libc::preadv(file.as_raw_fd(), rest.as_ptr(), cnt, pos)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at byte {off}"),
            ));
        }
        let mut n = n as usize;
        off += n as u64;
        while n > 0 && first < iov.len() {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
struct FileQueue {
    tx: Option<Sender<IoRequest>>,
    shared: Arc<Done>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
}

impl BlockQueue for FileQueue {
    fn set_doorbell(&mut self, doorbell: Arc<Doorbell>) {
        self.shared.list.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(doorbell);
    }

    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for req in batch.drain(..) {
            self.in_flight += 1;
            let Some(tx) = &self.tx else { continue };
            if let Err(e) = tx.send(req) {
                let mut list = self.shared.list.lock().unwrap_or_else(|e| e.into_inner());
                list.0.push(IoCompletion {
                    tag: e.0.tag,
                    result: Err(io::Error::other("the I/O threads are gone")),
                });
                self.shared
                    .ready
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        if self.shared.ready.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return 0;
        }
        let mut list = self.shared.list.lock().unwrap_or_else(|e| e.into_inner());
        let n = list.0.len();
        self.shared
            .ready
            .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
        out.append(&mut list.0);
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for FileQueue {
    fn drop(&mut self) {
        // Closing the channel ends the workers once the requests already sent are done.
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
