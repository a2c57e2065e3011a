//! blkback end to end: a Rust front end in a guest's memory drives blkback through the XenBus handshake
//! and a shared ring, over a memory disk and a raw image file; disk data reads back identical.

#[path = "common/blk_harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Env, MIB, pattern};
use pv_backend::backend::XsHandle;
use pv_backend::blk::front::FrontOptions;
use pv_backend::blk::{BlkConfig, FileDevice, FileOptions, MemDevice};
use xen_abi::blkif::{BLKIF_RSP_OKAY, BlkifProtocol};
use xen_abi::xenbus::XenbusState;

/// Reads `data.len()` bytes at `sector` through the front end: every request answers OKAY, and the
/// bytes are `data`.
fn reads_back(front: &mut pv_backend::blk::front::BlkFront, sector: u64, data: &[u8]) {
    let mut back = vec![0; data.len()];
    let st = front.read(sector, &mut back);
    assert!(
        st.iter().all(|&s| s == BLKIF_RSP_OKAY),
        "sector {sector}: {st:?}"
    );
    assert!(
        back == data,
        "sector {sector}, {} bytes: what was read differs",
        data.len()
    );
}

#[test]
fn memory_disk_data_reads_back_identical() {
    let env = Env::new();
    let (mut v, dev) = env.mem_vbd(1, 16 * MIB, BlkConfig::default(), FrontOptions::default());
    assert_eq!(v.front.backend_state(), XenbusState::Connected);
    assert_eq!(v.front.sectors, 16 * MIB / 512);
    for (i, (sector, len)) in [
        (0u64, 512usize),
        (7, 4096),
        (100, 11 * 4096),
        (2048, 64 * 4096),
        (5000, 3 * 512),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(i as u64, len);
        assert!(
            v.front
                .write(sector, &data)
                .iter()
                .all(|&s| s == BLKIF_RSP_OKAY)
        );
        assert_eq!(
            dev.read_bytes(sector * 512, len),
            data,
            "the disk holds what was written"
        );
        reads_back(&mut v.front, sector, &data);
    }
}

/// `BlkFront::put_rw` (the benchmark's allocation-free path, ids chosen by the caller): a direct
/// request of 3 pages and an indirect one of 1 MiB write what `read` then reads back, and the
/// responses carry the ids given.
#[test]
fn put_rw_with_caller_ids_reads_back_identical() {
    let env = Env::new();
    let opts = FrontOptions {
        buffer_pages: 512,
        ..FrontOptions::default()
    };
    let (mut v, dev) = env.mem_vbd(1, 16 * MIB, BlkConfig::default(), opts);
    assert_eq!(v.front.backend_state(), XenbusState::Connected);
    for (id, sector, len) in [(7u64, 40u64, 3 * 4096usize), (31, 4096, MIB as usize)] {
        let data = pattern(id, len);
        v.front.guest.write(v.front.buf_frame + 256, 0, &data);
        v.front
            .put_rw(0, xen_abi::blkif::BLKIF_OP_WRITE, sector, 256, len, id);
        v.front.kick(0);
        let rsps = v.front.wait(0, 1, Duration::from_secs(5));
        assert_eq!(rsps.len(), 1);
        assert_eq!((rsps[0].id, rsps[0].status), (id, BLKIF_RSP_OKAY));
        assert_eq!(dev.read_bytes(sector * 512, len), data, "{len} bytes");
        reads_back(&mut v.front, sector, &data);
    }
}

#[test]
fn file_image_data_reads_back_identical() {
    file_image_round_trip(false);
}

#[test]
fn file_image_with_io_uring_data_reads_back_identical() {
    file_image_round_trip(true);
}

fn file_image_round_trip(io_uring: bool) {
    let dir = std::env::temp_dir().join(format!("blkback-e2e-{}-{io_uring}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(32 * MIB).unwrap();
    drop(f);
    let opts = FileOptions {
        io_uring,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(&path, opts).unwrap();
    assert!(dev.is_direct(), "O_DIRECT works on this file system");
    let env = Env::new();
    let mut v = env.vbd(
        1,
        2048,
        Arc::new(dev),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    assert_eq!(v.front.backend_state(), XenbusState::Connected);
    for (i, (sector, len)) in [(0u64, 4096usize), (8, 1 << 20), (9, 512), (4096, 5 * 512)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(10 + i as u64, len);
        assert!(
            v.front
                .write(sector, &data)
                .iter()
                .all(|&s| s == BLKIF_RSP_OKAY)
        );
        reads_back(&mut v.front, sector, &data);
    }
    drop(v);
    // The bytes are in the file itself.
    let img = std::fs::read(&path).unwrap();
    let big = pattern(11, 1 << 20);
    assert_eq!(&img[8 * 512..9 * 512], &big[..512]);
    assert_eq!(
        &img[9 * 512..10 * 512],
        &pattern(12, 512)[..],
        "the later write won"
    );
    assert_eq!(&img[10 * 512..8 * 512 + (1 << 20)], &big[1024..]);
    let expect = pattern(13, 5 * 512);
    assert_eq!(&img[4096 * 512..4096 * 512 + 5 * 512], &expect[..]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn x86_32_front_end_reads_back_identical() {
    let env = Env::new();
    let opts = FrontOptions {
        protocol: BlkifProtocol::X86_32,
        ..FrontOptions::default()
    };
    let (mut v, _dev) = env.mem_vbd(3, 8 * MIB, BlkConfig::default(), opts);
    assert_eq!(v.front.backend_state(), XenbusState::Connected);
    let data = pattern(3, 40 * 4096);
    assert!(
        v.front
            .write(64, &data)
            .iter()
            .all(|&s| s == BLKIF_RSP_OKAY)
    );
    reads_back(&mut v.front, 64, &data);
}

#[test]
fn multi_page_ring_and_multi_queue() {
    let env = Env::new();
    let opts = FrontOptions {
        ring_page_order: Some(2),
        queues: Some(3),
        ..FrontOptions::default()
    };
    let (mut v, dev) = env.mem_vbd(4, 8 * MIB, BlkConfig::default(), opts);
    assert_eq!(v.front.backend_state(), XenbusState::Connected);
    assert_eq!(v.front.queues.len(), 3);
    assert_eq!(v.front.ring_size(0), 128, "a 4-page ring has 128 slots");
    for q in 0..3 {
        let data = pattern(40 + q as u64, 8 * 4096);
        let segs = v.front.segments(0, data.len());
        v.guest.write(v.front.buf_frame, 0, &data);
        let ids = v
            .front
            .queue_rw(q, xen_abi::blkif::BLKIF_OP_WRITE, 1000 * q as u64, &segs);
        v.front.kick(q);
        let rsps = v.front.wait(q, ids.len(), Duration::from_secs(5));
        assert_eq!(rsps.len(), ids.len());
        assert!(rsps.iter().all(|r| r.status == BLKIF_RSP_OKAY));
        assert_eq!(
            dev.read_bytes(1000 * q as u64 * 512, data.len()),
            data,
            "queue {q}"
        );
    }
    assert_eq!(
        v.back.stats.lock().unwrap().len(),
        3,
        "one server per queue"
    );
}

#[test]
fn a_full_ring_of_requests_in_one_batch() {
    let env = Env::new();
    let (mut v, dev) = env.mem_vbd(5, 8 * MIB, BlkConfig::default(), FrontOptions::default());
    let n = v.front.ring_size(0) as usize;
    let data = pattern(5, n * 4096);
    assert!(n <= 256, "the data buffer holds a page per slot");
    v.guest.write(v.front.buf_frame, 0, &data);
    let mut ids = Vec::new();
    for i in 0..n {
        let seg = v.front.segments(i, 4096);
        ids.extend(
            v.front
                .queue_rw(0, xen_abi::blkif::BLKIF_OP_WRITE, i as u64 * 8, &seg),
        );
    }
    v.front.kick(0);
    let rsps = v.front.wait(0, n, Duration::from_secs(5));
    assert_eq!(rsps.len(), n);
    let mut got: Vec<u64> = rsps.iter().map(|r| r.id).collect();
    got.sort();
    assert_eq!(got, ids);
    for i in 0..n {
        assert_eq!(
            dev.read_bytes(i as u64 * 4096, 4096),
            data[i * 4096..][..4096]
        );
    }
}

#[test]
fn sector_size_4096_and_physical_sector_size_are_published() {
    let env = Env::new();
    let dev = MemDevice::new(4 * MIB, 4096);
    let mut v = env.vbd(
        6,
        2048,
        Arc::new(dev),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    assert_eq!(v.front.sector_size, 4096);
    let ps = v
        .front
        .xs
        .read(&format!("{}/physical-sector-size", v.front.paths.backend))
        .unwrap()
        .unwrap();
    assert_eq!(ps, b"4096");
    let data = pattern(6, 8192);
    assert!(v.front.write(8, &data).iter().all(|&s| s == BLKIF_RSP_OKAY));
    reads_back(&mut v.front, 8, &data);
}

#[test]
fn flush_and_barrier_with_and_without_data() {
    let env = Env::new();
    let (mut v, dev) = env.mem_vbd(7, 8 * MIB, BlkConfig::default(), FrontOptions::default());
    use xen_abi::blkif::{
        BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BlkifRequest,
    };
    let data = pattern(7, 2 * 4096);
    v.guest.write(v.front.buf_frame, 0, &data);
    // Writes, then a barrier carrying data, then more writes, all in one batch: every response comes
    // back and the barrier's data is on the disk.
    let mut ids = v
        .front
        .queue_rw(0, BLKIF_OP_WRITE, 0, &v.front.segments(0, 4096));
    let id = v.front.next_id();
    let segs = v.front.segments(1, 4096);
    v.front
        .put(
            0,
            &BlkifRequest::with_segments(BLKIF_OP_WRITE_BARRIER, 0, id, 8, &segs).unwrap(),
        )
        .unwrap();
    ids.push(id);
    ids.extend(
        v.front
            .queue_rw(0, BLKIF_OP_WRITE, 16, &v.front.segments(0, 4096)),
    );
    let id = v.front.next_id();
    v.front
        .put(0, &BlkifRequest::new(BLKIF_OP_FLUSH_DISKCACHE, 0, id, 0))
        .unwrap();
    ids.push(id);
    v.front.kick(0);
    let rsps = v.front.wait(0, ids.len(), Duration::from_secs(5));
    assert_eq!(rsps.len(), ids.len());
    assert!(rsps.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{rsps:?}");
    let ops: Vec<u8> = rsps.iter().map(|r| r.operation).collect();
    assert!(ops.contains(&BLKIF_OP_WRITE_BARRIER) && ops.contains(&BLKIF_OP_FLUSH_DISKCACHE));
    // The barrier is answered after the write before it.
    let pos = |id| rsps.iter().position(|r| r.id == id).unwrap();
    assert!(
        pos(ids[0]) < pos(ids[1]),
        "the barrier waits for the earlier write"
    );
    assert!(
        pos(ids[1]) < pos(ids[2]),
        "the later write waits for the barrier"
    );
    assert_eq!(dev.read_bytes(8 * 512, 4096), data[4096..]);
    assert_eq!(dev.read_bytes(16 * 512, 4096), data[..4096]);
}

#[test]
fn discard_punches_a_hole_in_a_file_image_with_io_uring() {
    let dir = std::env::temp_dir().join(format!("blkback-discard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0xEEu8; 4 * MIB as usize]).unwrap();
    let opts = FileOptions {
        io_uring: true,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(&path, opts).unwrap();
    let env = Env::new();
    let mut v = env.vbd(
        8,
        2048,
        Arc::new(dev),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    let b = v.front.paths.backend.clone();
    use pv_backend::backend::XsHandle;
    assert_eq!(
        v.front
            .xs
            .read(&format!("{b}/discard-granularity"))
            .unwrap()
            .unwrap(),
        b"4096"
    );
    let id = v.front.next_id();
    let req = xen_abi::blkif::BlkifRequestDiscard::new(0, id, 64, 256, 0).to_request();
    let rsp = v.front.roundtrip(0, &req).unwrap();
    assert_eq!(
        (rsp.status, rsp.operation),
        (BLKIF_RSP_OKAY, xen_abi::blkif::BLKIF_OP_DISCARD)
    );
    let id = v.front.next_id();
    let flush =
        xen_abi::blkif::BlkifRequest::new(xen_abi::blkif::BLKIF_OP_FLUSH_DISKCACHE, 0, id, 0);
    assert_eq!(
        v.front.roundtrip(0, &flush).unwrap().status,
        BLKIF_RSP_OKAY,
        "fsync through io_uring"
    );
    let mut back = vec![0xFF; 512 * 512];
    assert!(
        v.front
            .read(0, &mut back[..256 * 1024])
            .iter()
            .all(|&s| s == 0)
    );
    let back = &back[..256 * 1024];
    assert!(back[..64 * 512].iter().all(|&b| b == 0xEE));
    assert!(
        back[64 * 512..320 * 512].iter().all(|&b| b == 0),
        "discarded sectors read as zeroes"
    );
    assert!(back[320 * 512..].iter().all(|&b| b == 0xEE));
    drop(v);
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        blocks * 512 < 4 * MIB,
        "the file has a hole ({blocks} blocks)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn persistent_grants_stay_mapped_across_requests() {
    let env = Env::new();
    let (mut v, _dev) = env.mem_vbd(9, 8 * MIB, BlkConfig::default(), FrontOptions::default());
    let data = pattern(9, 4 * 4096);
    for _ in 0..3 {
        assert!(v.front.write(0, &data).iter().all(|&s| s == BLKIF_RSP_OKAY));
    }
    use xen_abi::grant_table::{GTF_reading, GTF_writing};
    for i in 0..4 {
        let e = v.guest.grants.entry(v.front.buf_grefs[i]).unwrap();
        assert_eq!(
            e.flags & (GTF_reading | GTF_writing),
            GTF_reading | GTF_writing,
            "page {i} is kept mapped"
        );
    }
    let e = v.guest.grants.entry(v.front.buf_grefs[10]).unwrap();
    assert_eq!(e.flags & GTF_reading, 0, "a page never used is not mapped");
    // Without feature-persistent, grants are released after each request.
    let opts = FrontOptions {
        persistent: false,
        ..FrontOptions::default()
    };
    let (mut w, _dev) = env.mem_vbd(10, 8 * MIB, BlkConfig::default(), opts);
    assert!(w.front.write(0, &data).iter().all(|&s| s == BLKIF_RSP_OKAY));
    for i in 0..4 {
        let e = w.guest.grants.entry(w.front.buf_grefs[i]).unwrap();
        assert_eq!(
            e.flags & (GTF_reading | GTF_writing),
            0,
            "page {i} is released"
        );
    }
}

/// Persistent grants are found by index below 32768 and in a hash map above: a guest whose buffer
/// grants are numbered from 32768 on (a grant table of 72 frames, the first references used up)
/// still reads back what it wrote, twice over, with the pages kept mapped.
#[test]
fn persistent_grants_with_large_grant_references() {
    use pv_backend::backend::GrantAccess;
    use pv_backend::blk::front::{BackendThread, BlkFront, TestGuest, add_vbd};
    use xen_abi::grant_table::{GTF_reading, GTF_writing};
    let env = Env::new();
    let guest = TestGuest::new(12, 0, 1024, 72);
    let spare = guest.alloc_pages(1);
    while guest.grant(spare, true) < 32768 {}
    let paths = add_vbd(&env.store, 12, 51712);
    let dev = MemDevice::new(8 * MIB, 512);
    let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
    let blk = pv_backend::blk::BlkBack::new(
        grants,
        env.evtchns.clone(),
        Arc::new(dev.clone()),
        BlkConfig::default(),
    );
    let _back = BackendThread::spawn(&env.store, &paths.backend, blk);
    let mut front = BlkFront::connect(
        guest.clone(),
        &env.store,
        env.evtchns.clone(),
        paths,
        FrontOptions::default(),
    );
    assert_eq!(front.backend_state(), XenbusState::Connected);
    assert!(front.buf_grefs[0] > 32768);
    for round in 0..2u64 {
        let data = pattern(round, 16 * 4096);
        assert!(front.write(8, &data).iter().all(|&s| s == BLKIF_RSP_OKAY));
        assert_eq!(dev.read_bytes(8 * 512, data.len()), data);
        reads_back(&mut front, 8, &data);
    }
    for i in 0..16 {
        let e = guest.grants.entry(front.buf_grefs[i]).unwrap();
        assert_eq!(
            e.flags & (GTF_reading | GTF_writing),
            GTF_reading | GTF_writing,
            "page {i} is kept mapped"
        );
    }
}

#[test]
fn notifications_are_suppressed_under_load() {
    let env = Env::new();
    let (mut v, _dev) = env.mem_vbd(11, 8 * MIB, BlkConfig::default(), FrontOptions::default());
    let n = v.front.ring_size(0) as usize;
    let mut requests = 0u64;
    for round in 0..50 {
        for i in 0..n {
            let segs = v.front.segments(i, 4096);
            v.front.queue_rw(
                0,
                xen_abi::blkif::BLKIF_OP_READ,
                (round * n + i) as u64 % 8192 * 8,
                &segs,
            );
        }
        v.front.kick(0);
        assert_eq!(v.front.wait(0, n, Duration::from_secs(5)).len(), n);
        requests += n as u64;
    }
    let (reqs, rsps, errors, notes, _sleeps) = v.back.totals();
    assert_eq!((reqs, rsps, errors), (requests, requests, 0));
    assert!(
        notes <= 50 * 2,
        "{notes} events to the front end for {requests} requests in 50 batches"
    );
    let kicks = v.front.queues[0].kicks;
    assert!(kicks <= 50, "{kicks} events to the back end for 50 batches");
}

#[test]
fn an_idle_back_end_sleeps() {
    let env = Env::new();
    let (mut v, _dev) = env.mem_vbd(12, 8 * MIB, BlkConfig::default(), FrontOptions::default());
    assert_serves_quiet(&mut v.front);
    std::thread::sleep(Duration::from_millis(100));
    let s1 = v.back.totals().4;
    std::thread::sleep(Duration::from_millis(450));
    let s2 = v.back.totals().4;
    assert!(
        s2 - s1 <= 4,
        "an idle queue sleeps on its doorbell ({} wake-ups in 450 ms)",
        s2 - s1
    );
    assert_serves_quiet(&mut v.front);
}

fn assert_serves_quiet(front: &mut pv_backend::blk::front::BlkFront) {
    let data = pattern(1, 4096);
    assert!(front.write(0, &data).iter().all(|&s| s == BLKIF_RSP_OKAY));
}

/// The io_uring engine stops the kernel's eventfd signals while the queue is awake and re-arms them
/// before it sleeps: a queue that sleeps with a request at the disk is still woken by its completion
/// (a lost wake-up would cost the doorbell's 200 ms timeout per request).
#[test]
fn io_uring_completions_wake_a_queue_that_sleeps_with_io_in_flight() {
    let dir = std::env::temp_dir().join(format!("blkback-e2e-wake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    std::fs::write(&path, pattern(3, 8 * MIB as usize)).unwrap();
    let opts = FileOptions {
        io_uring: true,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(&path, opts).unwrap();
    assert!(dev.is_direct(), "O_DIRECT works on this file system");
    let env = Env::new();
    let config = BlkConfig {
        poll_time: Duration::ZERO,
        ..BlkConfig::default()
    };
    let mut v = env.vbd(13, 2048, Arc::new(dev), config, FrontOptions::default());
    let expect = pattern(3, 8 * MIB as usize);
    let sleeps0 = v.back.totals().4;
    let t = std::time::Instant::now();
    let n = 40u64;
    for i in 0..n {
        let sector = i * 97 % 2000 * 8;
        let mut back = vec![0; 4096];
        assert_eq!(v.front.read(sector, &mut back), vec![BLKIF_RSP_OKAY]);
        let at = sector as usize * 512;
        assert_eq!(back, expect[at..at + 4096], "sector {sector}");
    }
    let took = t.elapsed();
    let sleeps = v.back.totals().4 - sleeps0;
    // Most requests find the queue asleep with the read at the disk; on a loaded machine the queue
    // is sometimes preempted between submitting and sleeping and finds the completion there already
    // (seen once: fewer sleeps than requests at load 3.5), so not every one.
    assert!(
        sleeps >= n / 2,
        "the queue slept with a read at the disk for most requests ({sleeps} sleeps for {n} requests)"
    );
    assert!(
        took < Duration::from_secs(4),
        "{n} reads one at a time took {took:?}: completions were not waking the queue"
    );
    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}
