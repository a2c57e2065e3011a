//! blkback driven by a front end written with Xen's own `io/ring.h` macros and `io/blkif.h` types
//! (`c/blkfront.c`, compiled against libxen-dev), on a real shared page of a guest's memory: the XenBus
//! handshake, then writes and reads (direct and indirect) whose data reads back identical.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blanket_conformance::blkfront_c::{CBlkFront, CResponse};
use pv_backend::backend::{GrantAccess, LocalEventChannels, LocalXs, XsHandle};
use pv_backend::blk::front::{BackendThread, TestGuest, add_vbd, wait_state};
use pv_backend::blk::{BlkBack, BlkConfig, MemDevice};
use pv_backend::xenstore::XenStore;
use xen_abi::blkif::{
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY,
};
use xen_abi::xenbus::XenbusState;

const T: Duration = Duration::from_secs(5);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

struct Setup {
    guest: Arc<TestGuest>,
    evtchns: Arc<LocalEventChannels>,
    front: CBlkFront,
    port: u32,
    doorbell: Arc<pv_backend::backend::Doorbell>,
    disk: MemDevice,
    _back: BackendThread,
    _xs: LocalXs,
}

impl Setup {
    fn new() -> Self {
        let store = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let guest = TestGuest::new(1, 0, 1024, 4);
        let paths = add_vbd(&store, 1, 51712);
        let disk = MemDevice::new(8 << 20, 512);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
        let blk = BlkBack::new(
            grants,
            evtchns.clone(),
            Arc::new(disk.clone()),
            BlkConfig::default(),
        );
        let back = BackendThread::spawn(&store, &paths.backend, blk);
        let xs = LocalXs::connect(store.clone(), 1);
        let bstate = format!("{}/state", paths.backend);
        assert_eq!(
            wait_state(&xs, &bstate, &[XenbusState::InitWait], T),
            XenbusState::InitWait
        );
        // The C front end's ring on a page of the guest, granted to the back end.
        let frame = guest.alloc_pages(1);
        let gref = guest.grant(frame, false);
        // SAFETY: a page of guest memory that lives as long as `guest`, which `Setup` holds; only the ring
        // uses it.
        let front = unsafe { CBlkFront::new(guest.page_ptr(frame), 4096) };
        let (port, doorbell) = evtchns.alloc(1);
        let f = &paths.frontend;
        xs.write(&format!("{f}/ring-ref"), gref.to_string().as_bytes())
            .unwrap();
        xs.write(&format!("{f}/event-channel"), port.to_string().as_bytes())
            .unwrap();
        xs.write(&format!("{f}/protocol"), b"x86_64-abi").unwrap();
        xs.write(&format!("{f}/state"), b"3").unwrap();
        assert_eq!(
            wait_state(&xs, &bstate, &[XenbusState::Connected], T),
            XenbusState::Connected
        );
        xs.write(&format!("{f}/state"), b"4").unwrap();
        Self {
            guest,
            evtchns,
            front,
            port,
            doorbell,
            disk,
            _back: back,
            _xs: xs,
        }
    }

    fn kick(&mut self) {
        if self.front.push() {
            self.evtchns.send(1, self.port);
        }
    }

    fn wait(&mut self, n: usize) -> Vec<CResponse> {
        let end = Instant::now() + T;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < end {
            while let Some(r) = self.front.pop() {
                out.push(r);
            }
            if out.len() < n && !self.front.final_check() {
                self.doorbell.wait(Duration::from_millis(20));
            }
        }
        out
    }
}

#[test]
fn c_front_end_data_reads_back_identical() {
    let mut s = Setup::new();
    let pages = 11u32;
    let data_frame = s.guest.alloc_pages(pages);
    let grefs: Vec<u32> = (0..pages)
        .map(|i| s.guest.grant(data_frame + i, false))
        .collect();
    let data = pattern(1, pages as usize * 4096);
    s.guest.write(data_frame, 0, &data);
    // Four writes of 11 pages each, in one batch.
    for i in 0..4u64 {
        assert!(s.front.put_rw(BLKIF_OP_WRITE, 100 + i, i * 88, &grefs));
    }
    s.kick();
    let rsps = s.wait(4);
    assert_eq!(rsps.len(), 4);
    for r in &rsps {
        assert_eq!((r.operation, r.status), (BLKIF_OP_WRITE, BLKIF_RSP_OKAY));
        assert!(r.padding_zero, "response padding is zero");
    }
    for i in 0..4u64 {
        assert_eq!(
            s.disk.read_bytes(i * 88 * 512, data.len()),
            data,
            "write {i} is on the disk"
        );
    }
    // Read the third one back into zeroed pages.
    s.guest.write(data_frame, 0, &vec![0; data.len()]);
    assert!(s.front.put_rw(BLKIF_OP_READ, 7, 2 * 88, &grefs));
    s.kick();
    let rsps = s.wait(1);
    assert_eq!(
        rsps[0],
        CResponse {
            id: 7,
            operation: BLKIF_OP_READ,
            status: BLKIF_RSP_OKAY,
            padding_zero: true
        }
    );
    assert_eq!(
        s.guest.read(data_frame, 0, data.len()),
        data,
        "the data reads back identical"
    );
    // A flush, and an operation nobody knows.
    assert!(s.front.put_rw(BLKIF_OP_FLUSH_DISKCACHE, 8, 0, &[]));
    assert!(s.front.put_rw(42, 9, 0, &[]));
    s.kick();
    let mut rsps = s.wait(2);
    rsps.sort_by_key(|r| r.id);
    assert_eq!(rsps[0].status, BLKIF_RSP_OKAY);
    assert_eq!(
        (rsps[1].operation, rsps[1].status),
        (42, BLKIF_RSP_EOPNOTSUPP)
    );
}

#[test]
fn c_front_end_indirect_requests() {
    let mut s = Setup::new();
    let pages = 64u32;
    let data_frame = s.guest.alloc_pages(pages);
    let grefs: Vec<u32> = (0..pages)
        .map(|i| s.guest.grant(data_frame + i, false))
        .collect();
    let ind_frame = s.guest.alloc_pages(1);
    let ind_gref = s.guest.grant(ind_frame, true);
    let data = pattern(2, pages as usize * 4096);
    s.guest.write(data_frame, 0, &data);
    // SAFETY: the indirect page is guest memory that lives as long as the guest.
    assert!(unsafe {
        s.front.put_indirect(
            BLKIF_OP_WRITE,
            1,
            512,
            &grefs,
            s.guest.page_ptr(ind_frame),
            ind_gref,
        )
    });
    s.kick();
    let r = s.wait(1);
    assert_eq!(
        (r[0].operation, r[0].status),
        (BLKIF_OP_WRITE, BLKIF_RSP_OKAY),
        "the response carries the indirect_op"
    );
    assert_eq!(s.disk.read_bytes(512 * 512, data.len()), data);
    s.guest.write(data_frame, 0, &vec![0; data.len()]);
    // SAFETY: as above.
    assert!(unsafe {
        s.front.put_indirect(
            BLKIF_OP_READ,
            2,
            512,
            &grefs,
            s.guest.page_ptr(ind_frame),
            ind_gref,
        )
    });
    s.kick();
    let r = s.wait(1);
    assert_eq!(r[0].status, BLKIF_RSP_OKAY);
    assert_eq!(s.guest.read(data_frame, 0, data.len()), data);
    assert_eq!(s.front.free(), 32, "every slot is free again");
}
