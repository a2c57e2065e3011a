//! An in-memory block device: the disk is a byte buffer, requests complete as they are submitted.

use std::io;
use std::sync::{Arc, Mutex};

use super::device::{BlockDevice, BlockInfo, BlockQueue, IoCompletion, IoOp, IoRequest};
use crate::backend::Doorbell;

/// A disk held in memory.
#[derive(Debug, Clone)]
pub struct MemDevice {
    data: Arc<Mutex<Vec<u8>>>,
    info: BlockInfo,
}

impl MemDevice {
    /// A zeroed disk of `size` bytes (rounded down to whole `logical_block_size` blocks), writable, with
    /// flush and discard (granularity one logical block).
    pub fn new(size: u64, logical_block_size: u32) -> Self {
        let size = size - size % u64::from(logical_block_size.max(1));
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        Self {
            data: Arc::new(Mutex::new(vec![0; len])),
            info: BlockInfo {
                size,
                logical_block_size,
                physical_block_size: logical_block_size,
                read_only: false,
                flush: true,
                discard: true,
                discard_granularity: logical_block_size,
                discard_alignment: 0,
            },
        }
    }

    /// The same disk with other properties (the size and buffer stay).
    pub fn with_info(mut self, f: impl FnOnce(&mut BlockInfo)) -> Self {
        let size = self.info.size;
        f(&mut self.info);
        self.info.size = size;
        self
    }

    /// A copy of `len` bytes at `offset` of the disk (clamped to the disk).
    pub fn read_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        data[start..end].to_vec()
    }

    /// Writes `bytes` at `offset` of the disk (clamped to the disk).
    pub fn write_bytes(&self, offset: u64, bytes: &[u8]) {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(bytes.len()).min(data.len());
        data[start..end].copy_from_slice(&bytes[..end - start]);
    }
}

impl BlockDevice for MemDevice {
    fn info(&self) -> BlockInfo {
        self.info
    }

    fn open_queue(&self) -> io::Result<Box<dyn BlockQueue>> {
        Ok(Box::new(MemQueue {
            dev: self.clone(),
            done: Vec::new(),
            doorbell: None,
            quiet: false,
        }))
    }
}

#[derive(Debug)]
struct MemQueue {
    dev: MemDevice,
    done: Vec<IoCompletion>,
    doorbell: Option<Arc<Doorbell>>,
    /// The caller reaps without being rung ([`BlockQueue::quiet`]) until it [`arm`](BlockQueue::arm)s:
    /// a submission (which completes at once) then rings nothing, so an inline holder's submissions do
    /// not wake the queue thread.
    quiet: bool,
}

fn range(len: usize, offset: u64, n: u64) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok();
    let end = start.and_then(|s| s.checked_add(usize::try_from(n).ok()?));
    match (start, end) {
        (Some(s), Some(e)) if e <= len => Ok(s..e),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bytes {offset} + {n} are past the end of the {len}-byte disk"),
        )),
    }
}

impl MemQueue {
    fn run(&self, op: &IoOp) -> io::Result<()> {
        let mut data = self.dev.data.lock().unwrap_or_else(|e| e.into_inner());
        let len = data.len();
        match op {
            IoOp::Read { offset, bufs } => {
                let r = range(len, *offset, op.data_len() as u64)?;
                let mut at = r.start;
                for b in bufs {
                    b.copy_from(&data[at..at + b.len()]);
                    at += b.len();
                }
            }
            IoOp::Write { offset, bufs } => {
                if self.dev.info.read_only {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the disk is read-only",
                    ));
                }
                let r = range(len, *offset, op.data_len() as u64)?;
                let mut at = r.start;
                for b in bufs {
                    b.copy_to(&mut data[at..at + b.len()]);
                    at += b.len();
                }
            }
            IoOp::Flush => {}
            IoOp::Discard { offset, len: n } => {
                let r = range(len, *offset, *n)?;
                data[r].fill(0);
            }
        }
        Ok(())
    }
}

impl BlockQueue for MemQueue {
    fn set_doorbell(&mut self, doorbell: Arc<Doorbell>) {
        self.doorbell = Some(doorbell);
    }

    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let any = !batch.is_empty();
        for req in batch.drain(..) {
            let result = self.run(&req.op);
            self.done.push(IoCompletion {
                tag: req.tag,
                result,
            });
        }
        if any && !self.quiet {
            if let Some(d) = &self.doorbell {
                d.ring();
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn quiet(&mut self) {
        self.quiet = true;
    }

    fn arm(&mut self) -> bool {
        self.quiet = false;
        !self.done.is_empty()
    }
}
