//! Shared set-up of the blkback tests: a store, event channels, a guest, blkback on a thread, a front end.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use pv_backend::backend::{GrantAccess, LocalEventChannels};
use pv_backend::blk::front::{BackendThread, BlkFront, FrontOptions, TestGuest, add_vbd};
use pv_backend::blk::{
    BlkBack, BlkConfig, BlockDevice, FileDevice, FileOptions, InlineDevice, MemDevice,
};
use pv_backend::xenstore::XenStore;
use pv_backend::xenstore::server::SharedStore;

pub const MIB: u64 = 1 << 20;

/// An image file in the temp dir, removed on drop.
pub struct Image(pub std::path::PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A zeroed image of `size` bytes named after `test` and `name`, served by io_uring.
pub fn uring_disk(test: &str, name: &str, size: usize) -> (Image, Arc<FileDevice>) {
    let path = std::env::temp_dir().join(format!("{test}-{name}-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; size]).unwrap();
    let opts = FileOptions {
        io_uring: true,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(&path, opts).unwrap();
    (Image(path), Arc::new(dev))
}

pub struct Env {
    pub store: SharedStore,
    pub evtchns: Arc<LocalEventChannels>,
}

impl Env {
    pub fn new() -> Self {
        Self {
            store: Arc::new(Mutex::new(XenStore::default())),
            evtchns: LocalEventChannels::new(),
        }
    }

    /// A guest of `pages` pages, its vbd 51712 served by blkback over `dev`, and a connected front end.
    pub fn vbd(
        &self,
        domid: u16,
        pages: u32,
        dev: Arc<dyn BlockDevice>,
        config: BlkConfig,
        opts: FrontOptions,
    ) -> Vbd {
        self.vbd_with(domid, pages, dev, config, opts, false)
    }

    /// As [`vbd`](Self::vbd), with the guest's memory given to blkback to register with its
    /// device (`BlkBack::with_fixed_memory`) when `fixed`.
    pub fn vbd_with(
        &self,
        domid: u16,
        pages: u32,
        dev: Arc<dyn BlockDevice>,
        config: BlkConfig,
        opts: FrontOptions,
        fixed: bool,
    ) -> Vbd {
        let guest = TestGuest::new(domid, 0, pages, 8);
        let paths = add_vbd(&self.store, domid, 51712);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
        let mut blk = BlkBack::new(grants, self.evtchns.clone(), dev, config);
        if fixed {
            blk = blk.with_fixed_memory(guest.fixed_memory());
        }
        let inline = blk.inline();
        let back = BackendThread::spawn(&self.store, &paths.backend, blk);
        let front = BlkFront::connect(
            guest.clone(),
            &self.store,
            self.evtchns.clone(),
            paths,
            opts,
        );
        Vbd {
            guest,
            back,
            front,
            inline,
        }
    }

    /// A vbd on a fresh memory disk of `size` bytes.
    pub fn mem_vbd(
        &self,
        domid: u16,
        size: u64,
        config: BlkConfig,
        opts: FrontOptions,
    ) -> (Vbd, MemDevice) {
        let dev = MemDevice::new(size, 512);
        let v = self.vbd(domid, 2048, Arc::new(dev.clone()), config, opts);
        (v, dev)
    }
}

pub struct Vbd {
    pub guest: Arc<TestGuest>,
    pub back: BackendThread,
    pub front: BlkFront,
    /// The inline entries of its queues (none unless `BlkConfig::inline`).
    pub inline: InlineDevice,
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A guest and blkback for its vbd, and a front end that has published nothing yet.
pub struct Prepared {
    pub guest: Arc<TestGuest>,
    pub back: BackendThread,
    pub front: BlkFront,
    pub dev: MemDevice,
}

impl Env {
    pub fn prepared(&self, domid: u16, config: BlkConfig, opts: FrontOptions) -> Prepared {
        let dev = MemDevice::new(8 * MIB, 512);
        let guest = TestGuest::new(domid, 0, 2048, 8);
        let paths = add_vbd(&self.store, domid, 51712);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
        let blk = BlkBack::new(grants, self.evtchns.clone(), Arc::new(dev.clone()), config);
        let back = BackendThread::spawn(&self.store, &paths.backend, blk);
        let front = BlkFront::prepare(
            guest.clone(),
            &self.store,
            self.evtchns.clone(),
            paths,
            opts,
        );
        Prepared {
            guest,
            back,
            front,
            dev,
        }
    }
}

/// Writes and reads back a few pages through `front`, asserting it all works.
pub fn assert_serves(front: &mut BlkFront, seed: u64) {
    let data = pattern(seed, 3 * 4096);
    let st = front.write(16, &data);
    assert!(
        !st.is_empty() && st.iter().all(|&s| s == 0),
        "write statuses {st:?}"
    );
    let mut back = vec![0; data.len()];
    let st = front.read(16, &mut back);
    assert!(
        !st.is_empty() && st.iter().all(|&s| s == 0),
        "read statuses {st:?}"
    );
    assert_eq!(back, data, "the data read back is what was written");
}

/// A memory disk whose requests wait at a gate until the test opens it: I/O that stays in flight.
#[derive(Clone)]
pub struct GatedDevice {
    pub inner: MemDevice,
    pub open: Arc<std::sync::atomic::AtomicBool>,
    pub waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl GatedDevice {
    pub fn new(inner: MemDevice) -> Self {
        Self {
            inner,
            open: Arc::default(),
            waiting: Arc::default(),
        }
    }

    /// Waits (up to `timeout`) until `n` requests wait at the gate, and asserts they do (`what`).
    pub fn wait_for_waiting(&self, n: usize, timeout: std::time::Duration, what: &str) {
        use std::sync::atomic::Ordering;
        let end = std::time::Instant::now() + timeout;
        while self.waiting.load(Ordering::SeqCst) < n && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(self.waiting.load(Ordering::SeqCst), n, "{what}");
    }
}

struct GatedQueue {
    dev: GatedDevice,
    inner: Box<dyn pv_backend::blk::BlockQueue>,
    held: Vec<pv_backend::blk::IoRequest>,
}

impl pv_backend::blk::BlockQueue for GatedQueue {
    fn set_doorbell(&mut self, d: Arc<pv_backend::backend::Doorbell>) {
        self.inner.set_doorbell(d);
    }
    fn submit(&mut self, batch: &mut Vec<pv_backend::blk::IoRequest>) {
        self.dev
            .waiting
            .fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
        self.held.append(batch);
    }
    fn reap(&mut self, out: &mut Vec<pv_backend::blk::IoCompletion>) -> usize {
        if self.dev.open.load(std::sync::atomic::Ordering::SeqCst) && !self.held.is_empty() {
            let n = self.held.len();
            self.inner.submit(&mut self.held);
            self.dev
                .waiting
                .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.reap(out)
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.inner.in_flight()
    }
    fn wait_completion(&mut self, timeout: std::time::Duration) -> bool {
        // Waits (as a device waits for its disk) while the gate is shut.
        let end = std::time::Instant::now() + timeout;
        while !self.dev.open.load(std::sync::atomic::Ordering::SeqCst)
            && std::time::Instant::now() < end
        {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        true
    }
}

impl BlockDevice for GatedDevice {
    fn info(&self) -> pv_backend::blk::BlockInfo {
        self.inner.info()
    }
    fn open_queue(&self) -> std::io::Result<Box<dyn pv_backend::blk::BlockQueue>> {
        Ok(Box::new(GatedQueue {
            dev: self.clone(),
            inner: self.inner.open_queue()?,
            held: Vec::new(),
        }))
    }
}
