//! Barriers and flushes order only what `io/blkif.h` says they order. A barrier: "All writes issued
//! prior to a request with the BLKIF_OP_WRITE_BARRIER operation code must be completed prior to the
//! execution of the barrier request. All writes issued after the barrier request must not execute
//! until after the completion of the barrier request." Reads are not ordered by it. A flush commits
//! what has completed and waits for nothing.
//!
//! The disk is a memory disk behind a device that holds every request it is given until the test
//! releases it, and logs the order in which blkback gave them: so the test sees what blkback started
//! while what.

#[path = "common/blk_harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Env, MIB, pattern};
use pv_backend::backend::Doorbell;
use pv_backend::blk::front::FrontOptions;
use pv_backend::blk::{
    BlkConfig, BlockDevice, BlockInfo, BlockQueue, IoCompletion, IoOp, IoRequest, MemDevice,
};
use xen_abi::blkif::{
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_OKAY, BlkifRequest,
};

/// What the device was given: the kind of operation and its byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read(u64),
    Write(u64),
    Flush,
    Discard(u64),
}

fn op_of(op: &IoOp) -> Op {
    match op {
        IoOp::Read { offset, .. } => Op::Read(*offset),
        IoOp::Write { offset, .. } => Op::Write(*offset),
        IoOp::Flush => Op::Flush,
        IoOp::Discard { offset, .. } => Op::Discard(*offset),
    }
}

#[derive(Default)]
struct State {
    /// Every request given to the device, in order.
    log: Vec<Op>,
    /// Given, not yet released.
    waiting: Vec<IoRequest>,
    /// Released by the test, not yet passed to the memory disk.
    released: Vec<IoRequest>,
    doorbell: Option<Arc<Doorbell>>,
    /// Hold nothing any more (set when a test ends, passed or not, so that blkback can stop).
    open: bool,
}

/// A memory disk that holds each request until [`Held::release`] lets it through.
#[derive(Clone)]
struct Held {
    mem: MemDevice,
    state: Arc<Mutex<State>>,
}

impl Held {
    fn new(size: u64) -> Self {
        Self {
            mem: MemDevice::new(size, 512),
            state: Arc::default(),
        }
    }

    /// Releases everything, now and from now on, when dropped: declared after the vbd, it is dropped
    /// first, so that a failed assertion does not leave blkback waiting for held I/O for ever.
    fn open_on_drop(&self) -> OpenOnDrop {
        OpenOnDrop(self.clone())
    }

    fn log(&self) -> Vec<Op> {
        self.state.lock().unwrap().log.clone()
    }

    /// Lets the waiting requests `which` selects through (and rings the queue, as a device would).
    fn release(&self, which: impl Fn(Op) -> bool) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (go, stay): (Vec<IoRequest>, Vec<IoRequest>) =
            s.waiting.drain(..).partition(|r| which(op_of(&r.op)));
        s.waiting = stay;
        let n = go.len();
        s.released.extend(go);
        let bell = s.doorbell.clone();
        drop(s);
        if let Some(b) = bell {
            b.ring();
        }
        n
    }

    /// Waits (5 s at most) until the log has `op`.
    fn wait_for(&self, op: Op) {
        let end = Instant::now() + Duration::from_secs(5);
        while !self.log().contains(&op) {
            assert!(
                Instant::now() < end,
                "blkback never gave {op:?} to the device; it gave {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Gives blkback time to do what it should not, then checks it did not.
    fn assert_not_given(&self, op: Op, why: &str) {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !self.log().contains(&op),
            "{why}: {op:?} was given to the device too early ({:?})",
            self.log()
        );
    }
}

struct OpenOnDrop(Held);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).open = true;
        self.0.release(|_| true);
    }
}

struct HeldQueue {
    state: Arc<Mutex<State>>,
    inner: Box<dyn BlockQueue>,
    outstanding: usize,
}

impl BlockQueue for HeldQueue {
    fn set_doorbell(&mut self, doorbell: Arc<Doorbell>) {
        self.state.lock().unwrap().doorbell = Some(doorbell.clone());
        self.inner.set_doorbell(doorbell);
    }
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let mut s = self.state.lock().unwrap();
        for r in batch.drain(..) {
            s.log.push(op_of(&r.op));
            self.outstanding += 1;
            if s.open {
                s.released.push(r);
            } else {
                s.waiting.push(r);
            }
        }
    }
    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let mut go = std::mem::take(&mut self.state.lock().unwrap().released);
        if !go.is_empty() {
            self.inner.submit(&mut go);
        }
        let n = self.inner.reap(out);
        self.outstanding -= n;
        n
    }
    fn in_flight(&self) -> usize {
        self.outstanding
    }
}

impl BlockDevice for Held {
    fn info(&self) -> BlockInfo {
        self.mem.info()
    }
    fn open_queue(&self) -> std::io::Result<Box<dyn BlockQueue>> {
        Ok(Box::new(HeldQueue {
            state: self.state.clone(),
            inner: self.mem.open_queue()?,
            outstanding: 0,
        }))
    }
}

const SECTOR: u64 = 512;

#[test]
fn a_barrier_waits_for_earlier_writes_only_and_holds_back_later_writes_only() {
    let env = Env::new();
    let dev = Held::new(8 * MIB);
    let mut v = env.vbd(
        21,
        2048,
        Arc::new(dev.clone()),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    let _open = dev.open_on_drop();
    let data = pattern(21, 5 * 4096);
    v.guest.write(v.front.buf_frame, 0, &data);
    let segs: Vec<_> = (0..5).map(|page| v.front.segments(page, 4096)).collect();
    let seg = |page: usize| segs[page].clone();
    // A read and a write, a barrier with data, then a read and a write: one batch.
    let mut ids = Vec::new();
    for (op, sector, page) in [(BLKIF_OP_READ, 0u64, 0usize), (BLKIF_OP_WRITE, 8, 1)] {
        ids.extend(v.front.queue_rw(0, op, sector, &seg(page)));
    }
    let barrier = v.front.next_id();
    let req = BlkifRequest::with_segments(BLKIF_OP_WRITE_BARRIER, 0, barrier, 16, &seg(2)).unwrap();
    v.front.put(0, &req).unwrap();
    ids.push(barrier);
    for (op, sector, page) in [(BLKIF_OP_READ, 24u64, 3usize), (BLKIF_OP_WRITE, 32, 4)] {
        ids.extend(v.front.queue_rw(0, op, sector, &seg(page)));
    }
    v.front.kick(0);

    // The read after the barrier is not held back by it; the barrier waits for the earlier write.
    dev.wait_for(Op::Read(24 * SECTOR));
    assert_eq!(
        &dev.log()[..2],
        &[Op::Read(0), Op::Write(8 * SECTOR)],
        "the requests before the barrier start at once"
    );
    dev.assert_not_given(
        Op::Write(16 * SECTOR),
        "the barrier waits for the write before it",
    );
    assert!(!dev.log().contains(&Op::Write(32 * SECTOR)));

    // The earlier write completes: the barrier's write starts, although the earlier read is still at
    // the device.
    assert_eq!(dev.release(|op| op == Op::Write(8 * SECTOR)), 1);
    dev.wait_for(Op::Write(16 * SECTOR));
    dev.assert_not_given(
        Op::Write(32 * SECTOR),
        "the write after the barrier waits for it",
    );
    // The barrier's data is written, then flushed; the later write still waits for the flush.
    assert_eq!(dev.release(|op| op == Op::Write(16 * SECTOR)), 1);
    dev.wait_for(Op::Flush);
    dev.assert_not_given(
        Op::Write(32 * SECTOR),
        "the write after the barrier waits for its flush",
    );
    assert_eq!(dev.release(|op| op == Op::Flush), 1);
    dev.wait_for(Op::Write(32 * SECTOR));

    dev.release(|_| true);
    let rsps = v.front.wait(0, ids.len(), Duration::from_secs(5));
    assert_eq!(rsps.len(), ids.len(), "every request is answered");
    assert!(rsps.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{rsps:?}");
    let pos = |id: u64| rsps.iter().position(|r| r.id == id).unwrap();
    assert!(
        pos(ids[1]) < pos(barrier),
        "the earlier write is answered first"
    );
    assert!(
        pos(barrier) < pos(ids[4]),
        "the later write is answered after"
    );
    assert_eq!(
        dev.log(),
        [
            Op::Read(0),
            Op::Write(8 * SECTOR),
            Op::Read(24 * SECTOR),
            Op::Write(16 * SECTOR),
            Op::Flush,
            Op::Write(32 * SECTOR),
        ]
    );
    // The data is where it was written.
    assert_eq!(
        dev.mem.read_bytes(16 * SECTOR, 4096),
        data[2 * 4096..3 * 4096]
    );
    assert_eq!(dev.mem.read_bytes(32 * SECTOR, 4096), data[4 * 4096..]);
}

#[test]
fn a_barrier_with_nothing_before_it_starts_at_once_and_a_second_barrier_waits_for_the_first() {
    let env = Env::new();
    let dev = Held::new(8 * MIB);
    let mut v = env.vbd(
        22,
        2048,
        Arc::new(dev.clone()),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    let _open = dev.open_on_drop();
    let first = v.front.next_id();
    v.front
        .put(0, &BlkifRequest::new(BLKIF_OP_WRITE_BARRIER, 0, first, 0))
        .unwrap();
    let write = v
        .front
        .queue_rw(0, BLKIF_OP_WRITE, 8, &v.front.segments(0, 4096))[0];
    let second = v.front.next_id();
    v.front
        .put(0, &BlkifRequest::new(BLKIF_OP_WRITE_BARRIER, 0, second, 0))
        .unwrap();
    v.front.kick(0);
    // A barrier without data is a flush that nothing else overtakes.
    dev.wait_for(Op::Flush);
    dev.assert_not_given(
        Op::Write(8 * SECTOR),
        "the write waits for the first barrier",
    );
    assert_eq!(dev.log(), [Op::Flush]);
    dev.release(|_| true);
    dev.wait_for(Op::Write(8 * SECTOR));
    // The second barrier waits for the write between them.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        dev.log(),
        [Op::Flush, Op::Write(8 * SECTOR)],
        "the second barrier waits for the write before it"
    );
    dev.release(|_| true);
    let end = Instant::now() + Duration::from_secs(5);
    while dev.log().len() < 3 {
        assert!(
            Instant::now() < end,
            "the second barrier never started: {:?}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(dev.log(), [Op::Flush, Op::Write(8 * SECTOR), Op::Flush]);
    dev.release(|_| true);
    let rsps = v.front.wait(0, 3, Duration::from_secs(5));
    let order: Vec<u64> = rsps.iter().map(|r| r.id).collect();
    assert_eq!(order, [first, write, second]);
    assert!(rsps.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{rsps:?}");
}

#[test]
fn a_flush_waits_for_nothing_and_holds_back_nothing() {
    let env = Env::new();
    let dev = Held::new(8 * MIB);
    let mut v = env.vbd(
        23,
        2048,
        Arc::new(dev.clone()),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    let _open = dev.open_on_drop();
    let seg = v.front.segments(0, 4096);
    let mut ids = v.front.queue_rw(0, BLKIF_OP_WRITE, 0, &seg);
    ids.extend(v.front.queue_rw(0, BLKIF_OP_READ, 8, &seg));
    let flush = v.front.next_id();
    v.front
        .put(0, &BlkifRequest::new(BLKIF_OP_FLUSH_DISKCACHE, 0, flush, 0))
        .unwrap();
    ids.push(flush);
    ids.extend(v.front.queue_rw(0, BLKIF_OP_WRITE, 16, &seg));
    v.front.kick(0);
    // Everything reaches the device while nothing has completed.
    dev.wait_for(Op::Write(16 * SECTOR));
    assert_eq!(
        dev.log(),
        [
            Op::Write(0),
            Op::Read(8 * SECTOR),
            Op::Flush,
            Op::Write(16 * SECTOR)
        ]
    );
    // The flush may complete first: it is answered while the writes are still at the device.
    dev.release(|op| op == Op::Flush);
    let rsps = v.front.wait(0, 1, Duration::from_secs(5));
    assert_eq!(
        rsps.iter().map(|r| r.id).collect::<Vec<_>>(),
        [flush],
        "only the flush is answered"
    );
    dev.release(|_| true);
    let rest = v.front.wait(0, 3, Duration::from_secs(5));
    assert_eq!(rest.len(), 3);
    assert!(
        rsps.iter().chain(&rest).all(|r| r.status == BLKIF_RSP_OKAY),
        "{rsps:?} {rest:?}"
    );
}
