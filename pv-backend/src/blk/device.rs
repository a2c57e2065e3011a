//! The bottom of blkback: a block device with batched submission and completions.
//!
//! A [`BlockDevice`] describes the disk ([`BlockInfo`]) and opens [`BlockQueue`]s, one per ring. A queue
//! takes a batch of [`IoRequest`]s ([`BlockQueue::submit`]) and reports their [`IoCompletion`]s later
//! ([`BlockQueue::reap`]), ringing the [`Doorbell`] it was given when one is ready. An in-flight request
//! refers to guest memory through [`IoBuf`]s, which the back end keeps valid (the grants mapped) until the
//! completion is reaped.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Doorbell;

/// What the device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The size in bytes (a multiple of `logical_block_size`).
    pub size: u64,
    /// The logical block size (`sector-size`): 512 to 4096, a power of two.
    pub logical_block_size: u32,
    /// The physical block size (`physical-sector-size`).
    pub physical_block_size: u32,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Whether the device has a volatile cache that [`IoOp::Flush`] commits.
    pub flush: bool,
    /// Whether [`IoOp::Discard`] is supported.
    pub discard: bool,
    /// The discard granularity in bytes (`discard-granularity`).
    pub discard_granularity: u32,
    /// The discard alignment in bytes (`discard-alignment`).
    pub discard_alignment: u32,
}

/// A range of guest memory that an I/O reads or writes.
#[derive(Debug, Clone, Copy)]
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an `IoBuf` is a pointer into guest memory that the back end keeps mapped until the completion is
// reaped (the contract of `IoBuf::new`); devices only copy to and from it.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// The memory must stay valid for reads and writes (or reads only, if the I/O only reads it) of `len`
    /// bytes by any thread until the request's completion has been reaped; it may change at any time and is
    /// never an ordinary Rust object.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize) -> Self {
        Self { ptr, len }
    }

    /// Extends the buffer over `next` when `next` starts where it ends (two segments on adjacent
    /// bytes of guest memory become one iovec); returns whether it did.
    pub(crate) fn merge(&mut self, next: &IoBuf) -> bool {
        if self.ptr.as_ptr().wrapping_add(self.len) != next.ptr.as_ptr() {
            return false;
        }
        let Some(len) = self.len.checked_add(next.len) else {
            return false;
        };
        // Both ranges are valid under `new`'s contract until the same completion, and they are
        // adjacent, so their union is one valid range.
        self.len = len;
        true
    }

    /// The start.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes from the buffer into `out` (at most `len`).
    pub fn copy_to(&self, out: &mut [u8]) {
        let n = out.len().min(self.len);
        // SAFETY: `n <= len` bytes of the buffer are valid for reads (the contract of `new`); `out` is a
        // distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), n) };
    }

    /// Copies `data` into the buffer (at most `len` bytes).
    pub fn copy_from(&self, data: &[u8]) {
        let n = data.len().min(self.len);
        // SAFETY: `n <= len` bytes of the buffer are valid for writes for a request that reads the disk
        // into it (the contract of `new`); `data` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr(), n) };
    }
}

/// One operation on the device. Offsets and lengths are in bytes.
#[derive(Debug)]
pub enum IoOp {
    /// Read `bufs.len()` buffers' worth of bytes from `offset` into `bufs`, in order.
    Read {
        /// Where on the disk.
        offset: u64,
        /// The guest memory, in order.
        bufs: Vec<IoBuf>,
    },
    /// Write the bytes of `bufs`, in order, at `offset`.
    Write {
        /// Where on the disk.
        offset: u64,
        /// The guest memory, in order.
        bufs: Vec<IoBuf>,
    },
    /// Commit every completed write to stable storage.
    Flush,
    /// Discard (the bytes read back as zeroes afterwards, or unchanged where the device cannot).
    Discard {
        /// Where.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
}

impl IoOp {
    /// The total length of the buffers of a read or write (0 for the others).
    pub fn data_len(&self) -> usize {
        match self {
            Self::Read { bufs, .. } | Self::Write { bufs, .. } => bufs.iter().map(IoBuf::len).sum(),
            _ => 0,
        }
    }
}

/// A request: an operation and the caller's tag, echoed in its completion.
#[derive(Debug)]
pub struct IoRequest {
    /// The caller's tag.
    pub tag: u64,
    /// What to do.
    pub op: IoOp,
}

/// A finished request.
#[derive(Debug)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Its outcome.
    pub result: io::Result<()>,
}

/// One queue of a block device: submit a batch, reap completions.
pub trait BlockQueue: Send {
    /// Sets the doorbell to ring when a completion becomes ready to reap.
    fn set_doorbell(&mut self, doorbell: Arc<Doorbell>);
    /// Starts every request of the batch (drained from `batch`). Requests that fail at once complete
    /// with an error, like the others.
    fn submit(&mut self, batch: &mut Vec<IoRequest>);
    /// Moves the completions that are ready into `out`; returns how many.
    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> usize;
    /// The number of submitted requests not yet reaped.
    fn in_flight(&self) -> usize;
    /// A hint: the caller is awake and will [`reap`](Self::reap) without being rung, so the queue may
    /// stop ringing the doorbell for completions until [`arm`](Self::arm). The default does nothing.
    fn quiet(&mut self) {}
    /// The caller is about to sleep on the doorbell: from now on, ring it for every completion (undoing
    /// [`quiet`](Self::quiet)). Returns whether a completion is ready already (then the caller should
    /// reap rather than sleep). The default returns `false`: such a queue always rings.
    fn arm(&mut self) -> bool {
        false
    }
    /// The caller has nothing to do until a completion is ready or `doorbell` (the one given to
    /// [`set_doorbell`](Self::set_doorbell)) is rung: sleeps until one of them happens or `timeout`
    /// passes, and leaves the queue [`quiet`](Self::quiet). Returns whether it slept (`false`: a
    /// completion was ready already).
    ///
    /// The default is [`arm`](Self::arm), then [`Doorbell::wait`], then [`quiet`](Self::quiet). The
    /// io_uring engine waits in its ring instead, with a read of the doorbell's eventfd in the same
    /// ring: one system call per sleep.
    fn sleep(&mut self, doorbell: &Doorbell, timeout: Duration) -> bool {
        if self.arm() {
            self.quiet();
            return false;
        }
        doorbell.wait(timeout);
        self.quiet();
        true
    }
    /// For a caller that serves the queue on a thread that does not own its doorbell (blkback's
    /// inline mode, [`InlineQueue::block`](super::InlineQueue::block)): sleeps until a completion is
    /// ready or `timeout` passes, leaving the queue [`quiet`](Self::quiet), without sleeping on or
    /// taking the doorbell, which stays the queue thread's. Returns whether it waited or a completion is
    /// ready (`false`: the queue cannot wait this way, and the caller hands the queue back).
    ///
    /// The default cannot (its completions ring the doorbell); the io_uring engine waits in its ring
    /// (`io_uring_enter(GETEVENTS)` with a timeout).
    fn wait_completion(&mut self, timeout: Duration) -> bool {
        let _ = timeout;
        false
    }
    /// A hint, given before the first submission: requests may be submitted by threads that then go
    /// on with other work and do not reap (blkback's inline mode: a vCPU thread that returns to its
    /// guest), so their completions must reach the queue without waiting for the submitting thread to
    /// enter the kernel. The default does nothing (its completions do not depend on the submitter);
    /// the io_uring engine gives up `IORING_SETUP_COOP_TASKRUN`, under which the kernel posts a
    /// completion only when the submitting thread next enters the kernel (measured: 6 to 24 ms for a
    /// submitter that spins in user space, against about 50 µs for the I/O).
    fn any_thread_submits(&mut self) {}
    /// A hint, given before the first submission: the [`IoBuf`]s of this queue's requests mostly lie
    /// in `memory` (a guest's RAM). A queue may register it with the kernel once, so that requests
    /// into it are not pinned page by page (io_uring's fixed buffers); it keeps a clone of `memory`
    /// while registered. Returns whether it did. The default does nothing and returns `false`.
    fn register_memory(&mut self, memory: &FixedMemory) -> bool {
        let _ = memory;
        false
    }
}

/// Host memory that a [`BlockQueue`] may register with the kernel for its I/O
/// ([`BlockQueue::register_memory`]): a guest's RAM, as ranges of this process's address space,
/// kept mapped by the value it holds (for example the guest memory's `Arc`). Cheap to clone.
#[derive(Clone)]
pub struct FixedMemory {
    ranges: Arc<[(usize, usize)]>,
    _keep: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for FixedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedMemory")
            .field("ranges", &self.ranges.len())
            .field("bytes", &self.ranges.iter().map(|r| r.1).sum::<usize>())
            .finish()
    }
}

impl FixedMemory {
    /// Memory given as `(start, length)` ranges, which `keep` keeps mapped. Empty ranges are left
    /// out.
    ///
    /// # Safety
    ///
    /// For as long as `keep` lives, each range must stay mapped, readable and writable, to the same
    /// pages: the kernel pins them when a queue registers the memory and reads and writes those pages,
    /// whatever the process maps at the addresses later. So no `munmap`, `mremap` or `MAP_FIXED`
    /// mapping over them, no `MADV_DONTNEED` or `MADV_REMOVE` on a private mapping and no hole punched
    /// in the file behind a shared one (a balloon that gives pages back must not use this).
    pub unsafe fn new(
        ranges: impl IntoIterator<Item = (NonNull<u8>, usize)>,
        keep: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        let ranges: Vec<(usize, usize)> = ranges
            .into_iter()
            .filter(|r| r.1 > 0)
            .map(|(p, len)| (p.as_ptr() as usize, len))
            .collect();
        Self {
            ranges: ranges.into(),
            _keep: keep,
        }
    }

    /// The ranges, as `(start address, length)`.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }
}

/// A block device that blkback serves.
pub trait BlockDevice: Send + Sync {
    /// What the device is.
    fn info(&self) -> BlockInfo;
    /// Opens a queue (one per ring).
    fn open_queue(&self) -> io::Result<Box<dyn BlockQueue>>;
}

impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    fn info(&self) -> BlockInfo {
        (**self).info()
    }
    fn open_queue(&self) -> io::Result<Box<dyn BlockQueue>> {
        (**self).open_queue()
    }
}

#[cfg(test)]
mod tests {
    use super::IoBuf;
    use std::ptr::NonNull;

    #[test]
    fn io_bufs_merge_only_when_adjacent() {
        let mut mem = vec![0u8; 3 * 4096];
        let base = mem.as_mut_ptr();
        let at = |off: usize, len: usize| {
            let p = NonNull::new(base.wrapping_add(off)).unwrap();
            // SAFETY: `off + len` lies inside `mem`, which outlives the buffers; nothing reads them.
            unsafe { IoBuf::new(p, len) }
        };
        let mut a = at(0, 4096);
        assert!(a.merge(&at(4096, 512)));
        assert_eq!(a.len(), 4608);
        assert!(!a.merge(&at(8192, 512)), "a gap of 3584 bytes");
        assert!(!a.merge(&at(0, 512)), "before the start");
        assert_eq!(a.len(), 4608);
    }
}
