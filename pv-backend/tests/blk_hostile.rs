//! Every blkif and shared-ring case of HOSTILE-INPUT.md against blkback, one test each: the hostile front
//! end gets the right status (BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP) or its ring is stopped, nothing
//! outside what it granted is touched, and another front end on the same back end keeps working.

#[path = "common/blk_harness.rs"]
mod harness;

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use harness::{Env, GatedDevice, MIB, Vbd, assert_serves, pattern};
use pv_backend::backend::{Doorbell, EventChannels, GrantAccess, GrantedRing, XsHandle};
use pv_backend::blk::front::FrontOptions;
use pv_backend::blk::{BlkConfig, BlockDevice, MemDevice, QueueParams, QueueServer};
use xen_abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, Blkif,
    BlkifLimits, BlkifProtocol, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect,
    BlkifRequestSegment,
};
use xen_abi::grant_table::{GTF_reading, GTF_writing, GrantEntryHeader};
use xen_abi::ring::{FrontRing, RawRingMemory};
use xen_abi::xenbus::XenbusState;

const T: Duration = Duration::from_secs(5);

/// A hostile front end (domain 1) and a well-behaved one (domain 2) on the same back end.
struct Two {
    _env: Env,
    bad: Vbd,
    bad_dev: MemDevice,
    good: Vbd,
}

fn two_with(config: BlkConfig, opts: FrontOptions, bad_dev: MemDevice) -> Two {
    let env = Env::new();
    let bad = env.vbd(1, 2048, Arc::new(bad_dev.clone()), config, opts);
    let good = env.vbd(
        2,
        2048,
        Arc::new(MemDevice::new(8 * MIB, 512)),
        config,
        FrontOptions::default(),
    );
    assert_eq!(bad.front.backend_state(), XenbusState::Connected);
    assert_eq!(good.front.backend_state(), XenbusState::Connected);
    Two {
        _env: env,
        bad,
        bad_dev,
        good,
    }
}

fn two() -> Two {
    two_with(
        BlkConfig::default(),
        no_persistent(),
        MemDevice::new(8 * MIB, 512),
    )
}

fn no_persistent() -> FrontOptions {
    FrontOptions {
        persistent: false,
        ..FrontOptions::default()
    }
}

impl Two {
    /// Sends `req` from the hostile front end and returns the response's status, checking id and padding.
    fn status(&mut self, req: &BlkifRequest) -> i16 {
        let rsp = self.bad.front.roundtrip(0, req).expect("a response");
        assert_eq!(rsp.id, req.id);
        assert!(rsp.padding_is_zero(), "response padding is zero");
        rsp.status
    }

    fn others_keep_working(&mut self) {
        assert_serves(&mut self.good.front, 99);
    }
}

fn seg(t: &Two, page: usize, first: u8, last: u8) -> BlkifRequestSegment {
    BlkifRequestSegment::new(t.bad.front.buf_grefs[page], first, last)
}

fn rw(t: &mut Two, op: u8, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    let id = t.bad.front.next_id();
    BlkifRequest::with_segments(op, 0, id, sector, segs).unwrap()
}

#[test]
fn nr_segments_of_0_on_read_and_write() {
    let mut t = two();
    for op in [BLKIF_OP_READ, BLKIF_OP_WRITE] {
        let req = rw(&mut t, op, 0, &[]);
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    }
    // A flush without data is fine.
    let req = rw(&mut t, BLKIF_OP_FLUSH_DISKCACHE, 0, &[]);
    assert_eq!(t.status(&req), BLKIF_RSP_OKAY);
    t.others_keep_working();
}

#[test]
fn nr_segments_of_12() {
    let mut t = two();
    let segs: Vec<_> = (0..11).map(|i| seg(&t, i, 0, 7)).collect();
    let mut req = rw(&mut t, BLKIF_OP_WRITE, 0, &segs);
    req.nr_segments = 12;
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    assert!(
        t.bad_dev.read_bytes(0, 4096).iter().all(|&b| b == 0),
        "nothing written"
    );
    t.others_keep_working();
}

#[test]
fn nr_segments_of_255() {
    let mut t = two();
    let segs: Vec<_> = (0..11).map(|i| seg(&t, i, 0, 7)).collect();
    for op in [BLKIF_OP_READ, BLKIF_OP_WRITE] {
        let mut req = rw(&mut t, op, 0, &segs);
        req.nr_segments = 255;
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    }
    t.others_keep_working();
}

fn indirect(t: &mut Two, op: u8, nr: u16) -> BlkifRequest {
    let id = t.bad.front.next_id();
    let grefs = std::array::from_fn(|i| t.bad.front.indirect_frames[i].1);
    BlkifRequestIndirect::new(op, nr, 0, id, 0, grefs).to_request()
}

#[test]
fn indirect_nr_segments_of_0() {
    let mut t = two();
    let req = indirect(&mut t, BLKIF_OP_READ, 0);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    t.others_keep_working();
}

#[test]
fn indirect_nr_segments_above_the_advertised_maximum() {
    let mut t = two();
    let segs: Vec<_> = (0..257).map(|i| seg(&t, i % 256, 0, 7)).collect();
    let id = t.bad.front.next_id();
    let req = t.bad.front.indirect_request(BLKIF_OP_WRITE, id, 0, &segs);
    assert_eq!(
        t.status(&req),
        BLKIF_RSP_ERROR,
        "257 segments, 256 advertised"
    );
    // Exactly the maximum works, and the response carries the indirect_op.
    let segs: Vec<_> = (0..256).map(|i| seg(&t, i, 0, 7)).collect();
    let id = t.bad.front.next_id();
    let req = t.bad.front.indirect_request(BLKIF_OP_WRITE, id, 0, &segs);
    let rsp = t.bad.front.roundtrip(0, &req).unwrap();
    assert_eq!(
        (rsp.status, rsp.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_WRITE)
    );
    t.others_keep_working();
}

#[test]
fn indirect_nr_segments_of_65535() {
    let mut t = two();
    for op in [BLKIF_OP_READ, BLKIF_OP_WRITE] {
        let req = indirect(&mut t, op, 65535);
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    }
    t.others_keep_working();
}

#[test]
fn indirect_op_that_is_not_read_or_write() {
    let mut t = two();
    for op in [
        BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_DISCARD,
        6,
        200,
        255,
    ] {
        let req = indirect(&mut t, op, 1);
        let rsp = t.bad.front.roundtrip(0, &req).unwrap();
        assert_eq!(rsp.status, BLKIF_RSP_ERROR, "indirect_op {op}");
        assert_eq!(rsp.operation, op, "the response echoes the indirect_op");
    }
    t.others_keep_working();
}

#[test]
fn more_than_8_indirect_grant_refs() {
    let config = BlkConfig {
        max_indirect_segments: 4096,
        ..BlkConfig::default()
    };
    let mut t = two_with(config, no_persistent(), MemDevice::new(8 * MIB, 512));
    // 4097 segments need 9 indirect pages.
    let req = indirect(&mut t, BLKIF_OP_READ, 4097);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    t.others_keep_working();
}

#[test]
fn indirect_page_grant_invalid() {
    let mut t = two();
    let id = t.bad.front.next_id();
    let mut grefs = [0; 8];
    grefs[0] = 60000;
    let req = BlkifRequestIndirect::new(BLKIF_OP_READ, 12, 0, id, 0, grefs).to_request();
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    t.others_keep_working();
}

#[test]
fn first_sect_after_last_sect() {
    let mut t = two();
    let s = [seg(&t, 0, 0, 7), seg(&t, 1, 5, 4)];
    let req = rw(&mut t, BLKIF_OP_WRITE, 0, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    assert!(
        t.bad_dev.read_bytes(0, 8192).iter().all(|&b| b == 0),
        "nothing written"
    );
    // In an indirect request too.
    let segs: Vec<_> = (0..20)
        .map(|i| {
            if i == 13 {
                seg(&t, i, 3, 2)
            } else {
                seg(&t, i, 0, 7)
            }
        })
        .collect();
    let id = t.bad.front.next_id();
    let req = t.bad.front.indirect_request(BLKIF_OP_WRITE, id, 0, &segs);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    t.others_keep_working();
}

#[test]
fn last_sect_of_8_or_more() {
    let mut t = two();
    for last in [8, 9, 255] {
        let s = [seg(&t, 0, 0, last)];
        let req = rw(&mut t, BLKIF_OP_READ, 0, &s);
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR, "last_sect {last}");
    }
    t.others_keep_working();
}

#[test]
fn sector_plus_length_past_the_end_of_the_disk() {
    let mut t = two();
    let sectors = t.bad.front.sectors;
    for sector in [sectors - 7, sectors, sectors + 1, u64::MAX - 3, u64::MAX] {
        let s = [seg(&t, 0, 0, 7)];
        let req = rw(&mut t, BLKIF_OP_WRITE, sector, &s);
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR, "sector {sector}");
    }
    // The last 8 sectors are fine.
    let s = [seg(&t, 0, 0, 7)];
    let req = rw(&mut t, BLKIF_OP_READ, sectors - 8, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_OKAY);
    t.others_keep_working();
}

#[test]
fn sector_not_aligned_to_sector_size() {
    let mut t = two_with(
        BlkConfig::default(),
        no_persistent(),
        MemDevice::new(8 * MIB, 4096),
    );
    assert_eq!(t.bad.front.sector_size, 4096);
    let s = [seg(&t, 0, 0, 7)];
    let req = rw(&mut t, BLKIF_OP_WRITE, 3, &s);
    assert_eq!(
        t.status(&req),
        BLKIF_RSP_ERROR,
        "sector 3 of a 4096-byte-sector disk"
    );
    let s = [seg(&t, 0, 0, 3)];
    let req = rw(&mut t, BLKIF_OP_WRITE, 8, &s);
    assert_eq!(
        t.status(&req),
        BLKIF_RSP_ERROR,
        "2048 bytes on a 4096-byte-sector disk"
    );
    let id = t.bad.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 4, 8, 0).to_request();
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR, "a misaligned discard");
    let s = [seg(&t, 0, 0, 7)];
    let req = rw(&mut t, BLKIF_OP_WRITE, 8, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_OKAY);
    t.others_keep_working();
}

#[test]
fn discard_of_2_pow_64_sectors() {
    let mut t = two();
    t.bad_dev.write_bytes(0, &[0xAA; 4096]);
    for (sector, n) in [
        (0, u64::MAX),
        (1, u64::MAX),
        (u64::MAX, 1),
        (8, t.bad.front.sectors),
    ] {
        let id = t.bad.front.next_id();
        let req = BlkifRequestDiscard::new(0, id, sector, n, 0).to_request();
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR, "discard {sector} + {n}");
    }
    assert!(
        t.bad_dev.read_bytes(0, 4096).iter().all(|&b| b == 0xAA),
        "nothing discarded"
    );
    // A good discard zeroes exactly its range.
    let id = t.bad.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 2, 3, 0).to_request();
    assert_eq!(t.status(&req), BLKIF_RSP_OKAY);
    let d = t.bad_dev.read_bytes(0, 4096);
    assert!(
        d[..1024].iter().all(|&b| b == 0xAA)
            && d[1024..2560].iter().all(|&b| b == 0)
            && d[2560..].iter().all(|&b| b == 0xAA)
    );
    t.others_keep_working();
}

#[test]
fn write_to_a_read_only_vbd() {
    let dev = MemDevice::new(8 * MIB, 512).with_info(|i| i.read_only = true);
    dev.write_bytes(0, &[0x55; 4096]);
    let mut t = two_with(BlkConfig::default(), no_persistent(), dev);
    let b = t.bad.front.paths.backend.clone();
    assert_eq!(
        t.bad.front.xs.read(&format!("{b}/info")).unwrap().unwrap(),
        b"4"
    );
    assert_eq!(
        t.bad.front.xs.read(&format!("{b}/mode")).unwrap().unwrap(),
        b"r"
    );
    assert_eq!(
        t.bad
            .front
            .xs
            .read(&format!("{b}/feature-flush-cache"))
            .unwrap()
            .unwrap(),
        b"0"
    );
    let s = [seg(&t, 0, 0, 7)];
    let req = rw(&mut t, BLKIF_OP_WRITE, 0, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    let segs: Vec<_> = (0..12).map(|i| seg(&t, i, 0, 7)).collect();
    let id = t.bad.front.next_id();
    let req = t.bad.front.indirect_request(BLKIF_OP_WRITE, id, 0, &segs);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR, "an indirect write");
    for op in [BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE] {
        let req = rw(&mut t, op, 0, &s);
        assert_eq!(
            t.status(&req),
            BLKIF_RSP_EOPNOTSUPP,
            "op {op} is not offered"
        );
    }
    let id = t.bad.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 0, 8, 0).to_request();
    assert_eq!(t.status(&req), BLKIF_RSP_EOPNOTSUPP);
    assert!(
        t.bad_dev.read_bytes(0, 4096).iter().all(|&b| b == 0x55),
        "the disk is unchanged"
    );
    let req = rw(&mut t, BLKIF_OP_READ, 0, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_OKAY, "reads work");
    assert_eq!(
        t.bad.guest.read(t.bad.front.buf_frame, 0, 4096),
        vec![0x55; 4096]
    );
    t.others_keep_working();
}

#[test]
fn unknown_operation_codes_4_and_7_to_255() {
    let mut t = two();
    for op in std::iter::once(4u8).chain(7..=255) {
        let s = [seg(&t, 0, 0, 7)];
        let req = rw(&mut t, op, 0, &s);
        let rsp = t.bad.front.roundtrip(0, &req).unwrap();
        assert_eq!(
            (rsp.status, rsp.operation),
            (BLKIF_RSP_EOPNOTSUPP, op),
            "operation {op}"
        );
    }
    t.others_keep_working();
}

#[test]
fn invalid_grant_ref() {
    let mut t = two();
    let gone = t.bad.front.buf_grefs[3];
    t.bad.guest.grants.revoke(gone).unwrap();
    let frame = t.bad.guest.alloc_pages(1);
    t.bad.guest.grants.grant(3000, 9, frame, false).unwrap();
    let ro = t.bad.guest.grant(frame, true);
    for (what, gref, op) in [
        ("outside the table", 1 << 30, BLKIF_OP_READ),
        ("never granted", 2999, BLKIF_OP_READ),
        ("revoked", gone, BLKIF_OP_WRITE),
        ("granted to domain 9", 3000, BLKIF_OP_WRITE),
        ("read-only, for a read into it", ro, BLKIF_OP_READ),
    ] {
        let s = [BlkifRequestSegment::new(gref, 0, 7)];
        let req = rw(&mut t, op, 0, &s);
        assert_eq!(t.status(&req), BLKIF_RSP_ERROR, "{what}");
    }
    // A read-only grant is enough for a write from it.
    let s = [BlkifRequestSegment::new(ro, 0, 7)];
    let req = rw(&mut t, BLKIF_OP_WRITE, 0, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_OKAY);
    t.others_keep_working();
}

#[test]
fn grant_revoked_during_the_io() {
    let gated = GatedDevice::new(MemDevice::new(8 * MIB, 512));
    gated.inner.write_bytes(0, &pattern(8, 4096));
    let env = Env::new();
    let mut bad = env.vbd(
        1,
        2048,
        Arc::new(gated.clone()),
        BlkConfig::default(),
        no_persistent(),
    );
    let mut good = env.vbd(
        2,
        2048,
        Arc::new(MemDevice::new(8 * MIB, 512)),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    let g = bad.front.buf_grefs[0];
    let id = bad.front.next_id();
    let req = BlkifRequest::with_segments(
        BLKIF_OP_READ,
        0,
        id,
        0,
        &[BlkifRequestSegment::new(g, 0, 7)],
    )
    .unwrap();
    bad.front.put(0, &req).unwrap();
    bad.front.kick(0);
    let end = Instant::now() + T;
    while gated.waiting.load(Ordering::SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        gated.waiting.load(Ordering::SeqCst),
        1,
        "the read is in flight"
    );
    let e = bad.guest.grants.entry(g).unwrap();
    assert_eq!(
        e.flags & (GTF_reading | GTF_writing),
        GTF_reading | GTF_writing,
        "marked in use"
    );
    assert!(
        bad.guest.grants.revoke(g).is_err(),
        "a well-behaved revoke fails while in use"
    );
    // A hostile guest clears the entry anyway.
    bad.guest
        .grants
        .force_header(g, GrantEntryHeader { flags: 0, domid: 0 })
        .unwrap();
    assert_serves(&mut good.front, 1);
    gated.open.store(true, Ordering::SeqCst);
    let rsp = bad.front.wait(0, 1, T);
    assert_eq!(rsp.len(), 1, "the I/O completes");
    assert_eq!(rsp[0].status, BLKIF_RSP_OKAY, "into the guest's own page");
    assert_eq!(
        bad.guest.grants.entry(g).unwrap().flags,
        0,
        "the release leaves the guest's flags alone"
    );
    let id = bad.front.next_id();
    let req = BlkifRequest::with_segments(
        BLKIF_OP_READ,
        0,
        id,
        0,
        &[BlkifRequestSegment::new(g, 0, 7)],
    )
    .unwrap();
    assert_eq!(
        bad.front.roundtrip(0, &req).unwrap().status,
        BLKIF_RSP_ERROR,
        "the revoked grant is refused now"
    );
    assert_serves(&mut good.front, 2);
}

#[test]
fn one_element_of_a_batched_grant_map_failing() {
    let mut t = two();
    t.bad
        .guest
        .write(t.bad.front.buf_frame, 0, &[0x11; 3 * 4096]);
    let s = [
        seg(&t, 0, 0, 7),
        BlkifRequestSegment::new(55555, 0, 7),
        seg(&t, 2, 0, 7),
    ];
    let req = rw(&mut t, BLKIF_OP_WRITE, 0, &s);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    assert!(
        t.bad_dev.read_bytes(0, 3 * 4096).iter().all(|&b| b == 0),
        "nothing written"
    );
    for page in [0, 2] {
        let e = t
            .bad
            .guest
            .grants
            .entry(t.bad.front.buf_grefs[page])
            .unwrap();
        assert_eq!(
            e.flags & (GTF_reading | GTF_writing),
            0,
            "page {page}'s grant is released"
        );
    }
    t.bad
        .guest
        .grants
        .revoke(t.bad.front.buf_grefs[0])
        .expect("revocable");
    t.others_keep_working();
}

#[test]
fn a_front_end_using_the_x86_32_protocol() {
    let opts = FrontOptions {
        protocol: BlkifProtocol::X86_32,
        persistent: false,
        ..FrontOptions::default()
    };
    let mut t = two_with(BlkConfig::default(), opts, MemDevice::new(8 * MIB, 512));
    assert_eq!(
        t.bad.front.ring_size(0),
        32,
        "108-byte slots: 37 fit, rounded down to 32"
    );
    assert_serves(&mut t.bad.front, 32);
    let s = [seg(&t, 0, 0, 7)];
    for (op, want) in [(9u8, BLKIF_RSP_EOPNOTSUPP), (BLKIF_OP_READ, BLKIF_RSP_OKAY)] {
        let req = rw(&mut t, op, 0, &s);
        let rsp = t.bad.front.roundtrip(0, &req).unwrap();
        assert_eq!(rsp.status, want);
    }
    let id = t.bad.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 0, u64::MAX, 0).to_request();
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    let req = indirect(&mut t, BLKIF_OP_READ, 0);
    assert_eq!(t.status(&req), BLKIF_RSP_ERROR);
    // The x86_32 response slot: id at 0, operation at 8, pad at 9, status at 10, nothing else written.
    let idx = 3;
    let slot = t.bad.front.slot_bytes(0, idx);
    assert_eq!(slot[9], 0, "x86_32 response padding is zero");
    t.others_keep_working();
}

#[test]
fn response_padding_is_zero() {
    let mut t = two();
    let s = [seg(&t, 0, 0, 7)];
    // Ids whose bytes are all set, so that stale request bytes would show in the padding.
    for op in [BLKIF_OP_READ, 77, BLKIF_OP_WRITE] {
        let mut req = rw(&mut t, op, 0, &s);
        req.id = 0xA5A5_A5A5_A5A5_A5A5;
        req.handle = 0xFFFF;
        let rsp = t.bad.front.roundtrip(0, &req).unwrap();
        assert_eq!(rsp.id, req.id);
    }
    for idx in 0..3 {
        let slot = t.bad.front.slot_bytes(0, idx);
        assert_eq!(slot[9], 0, "slot {idx}: _pad0");
        assert_eq!(&slot[12..16], &[0; 4], "slot {idx}: _pad1");
        assert_eq!(&slot[0..8], &[0xA5; 8], "slot {idx}: id");
    }
    t.others_keep_working();
}

// ---------------------------------------------------------------------------------------------------------
// Shared ring
// ---------------------------------------------------------------------------------------------------------

fn req_prod(v: &Vbd) -> &AtomicU32 {
    // SAFETY: the ring page is guest memory that lives as long as the guest; req_prod is its first word.
    unsafe { AtomicU32::from_ptr(v.front.sring(0).cast::<u32>()) }
}

fn event_word(v: &Vbd, offset: usize) -> &AtomicU32 {
    // SAFETY: as for `req_prod`: an aligned index word of the shared ring header.
    unsafe { AtomicU32::from_ptr(v.front.sring(0).add(offset).cast::<u32>()) }
}

#[test]
fn req_prod_exactly_ring_size_ahead_of_req_cons() {
    let mut t = two();
    let n = t.bad.front.ring_size(0) as usize;
    for i in 0..n {
        let s = [seg(&t, i, 0, 7)];
        let req = rw(&mut t, BLKIF_OP_READ, i as u64 * 8, &s);
        t.bad.front.put(0, &req).unwrap();
    }
    t.bad.front.kick(0);
    let rsps = t.bad.front.wait(0, n, T);
    assert_eq!(rsps.len(), n);
    assert!(rsps.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    assert_serves(&mut t.bad.front, 4);
    t.others_keep_working();
}

#[test]
fn req_prod_ring_size_plus_1_ahead_stops_the_ring() {
    let mut t = two();
    assert_serves(&mut t.bad.front, 5);
    let n = t.bad.front.ring_size(0);
    let p = req_prod(&t.bad).load(Ordering::SeqCst);
    req_prod(&t.bad).store(p + n + 1, Ordering::SeqCst);
    t.bad.front.evtchns.send(1, t.bad.front.queues[0].port);
    let s = t.bad.front.wait_backend(&[XenbusState::Closing], T);
    assert_eq!(s, XenbusState::Closing, "the back end gives up on the ring");
    let err = t.bad.front.backend_error().unwrap();
    assert!(err.contains("req_prod"), "{err}");
    t.others_keep_working();
}

#[test]
fn req_prod_behind_req_cons_stops_the_ring() {
    let gated = GatedDevice::new(MemDevice::new(8 * MIB, 512));
    let env = Env::new();
    let mut bad = env.vbd(
        1,
        2048,
        Arc::new(gated.clone()),
        BlkConfig::default(),
        no_persistent(),
    );
    let mut good = env.vbd(
        2,
        2048,
        Arc::new(MemDevice::new(8 * MIB, 512)),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    for i in 0..4 {
        let id = bad.front.next_id();
        let req = BlkifRequest::with_segments(
            BLKIF_OP_READ,
            0,
            id,
            0,
            &[BlkifRequestSegment::new(bad.front.buf_grefs[i], 0, 7)],
        )
        .unwrap();
        bad.front.put(0, &req).unwrap();
    }
    bad.front.kick(0);
    gated.wait_for_waiting(4, T, "four requests consumed, none answered");
    req_prod(&bad).store(2, Ordering::SeqCst);
    bad.front.evtchns.send(1, bad.front.queues[0].port);
    std::thread::sleep(Duration::from_millis(50));
    gated.open.store(true, Ordering::SeqCst);
    let s = bad.front.wait_backend(&[XenbusState::Closing], T);
    assert_eq!(s, XenbusState::Closing);
    let err = bad.front.backend_error().unwrap();
    assert!(err.contains("went back behind req_cons"), "{err}");
    assert_serves(&mut good.front, 6);
}

/// Serves a ring attached at `start` with a `QueueServer` and drives it across the wrap.
fn serve_across(start: u32) {
    let env = Env::new();
    let guest = pv_backend::blk::front::TestGuest::new(1, 0, 512, 4);
    let frame = guest.alloc_pages(1);
    let gref = guest.grant(frame, false);
    let page = guest.page_ptr(frame);
    // The shared header as a front end that has been running a while leaves it.
    for (off, v) in [
        (0, start),
        (4, start.wrapping_add(1)),
        (8, start),
        (12, start.wrapping_add(1)),
    ] {
        // SAFETY: an aligned word of the ring page, in guest memory that outlives this test.
        unsafe { AtomicU32::from_ptr(page.add(off).cast::<u32>()) }.store(v, Ordering::SeqCst);
    }
    // SAFETY: one page of guest memory, alive for the test, used only as a ring.
    let mem = unsafe { RawRingMemory::new(NonNull::new(page).unwrap(), 4096) };
    let mut front = FrontRing::<_, Blkif>::attach(mem, start).unwrap();
    let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
    let ring = GrantedRing::map(&*grants, 1, &[gref]).unwrap();
    let dev = MemDevice::new(MIB, 512);
    let (port, front_bell) = env.evtchns.alloc(1);
    let back_bell = Doorbell::new();
    let notifier = env.evtchns.bind(1, port, back_bell.clone()).unwrap();
    let params = QueueParams {
        limits: BlkifLimits::new(MIB / 512, 512).unwrap(),
        persistent: false,
        max_persistent_grants: 0,
        poll_time: Duration::from_micros(20),
    };
    let mut server = QueueServer::new(
        1,
        ring,
        BlkifProtocol::X86_64,
        start,
        grants,
        dev.open_queue().unwrap(),
        notifier,
        back_bell,
        dev.info(),
        params,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let th = std::thread::spawn(move || server.run(&s));
    let data_frames = guest.alloc_pages(8);
    let data_refs: Vec<_> = (0..8)
        .map(|i| guest.grant(data_frames + i, false))
        .collect();
    let mut done = 0u64;
    // 3 rings' worth of requests, 8 at a time, across the wrap.
    for round in 0..12u64 {
        for i in 0..8u64 {
            let id = round * 8 + i;
            guest.write(data_frames + i as u32, 0, &pattern(id, 512));
            let req = BlkifRequest::with_segments(
                BLKIF_OP_WRITE,
                0,
                id,
                id,
                &[BlkifRequestSegment::new(data_refs[i as usize], 0, 0)],
            )
            .unwrap();
            front.put_request(&req).unwrap();
        }
        if front.push_requests_and_check_notify() {
            env.evtchns.send(1, port);
        }
        let end = Instant::now() + T;
        let mut got = 0;
        while got < 8 && Instant::now() < end {
            while let Some(r) = front.pop_response().unwrap() {
                assert_eq!(r.status, BLKIF_RSP_OKAY);
                got += 1;
            }
            if got < 8 && !front.final_check_for_responses().unwrap() {
                front_bell.wait(Duration::from_millis(20));
            }
        }
        assert_eq!(got, 8, "round {round}");
        done += 8;
    }
    assert!(front.req_prod_pvt().wrapping_sub(start) as u64 == done);
    assert!(
        start.checked_add(done as u32).is_none()
            || start < (1 << 31) && start + done as u32 >= (1 << 31),
        "the indices crossed the wrap"
    );
    stop.store(true, Ordering::SeqCst);
    env.evtchns.send(1, port);
    th.join().unwrap().unwrap();
    for id in 0..done {
        assert_eq!(
            dev.read_bytes(id * 512, 512),
            pattern(id, 512),
            "request {id}"
        );
    }
}

#[test]
fn indices_that_wrap_through_2_pow_31() {
    serve_across((1 << 31) - 40);
}

#[test]
fn indices_that_wrap_through_2_pow_32() {
    serve_across(u32::MAX - 40);
}

#[test]
fn request_fields_changed_by_another_thread_while_the_back_end_reads_them() {
    let mut t = two();
    let ring = t.bad.front.sring(0) as usize;
    // A canary page that is never granted.
    let canary = t.bad.guest.alloc_pages(1);
    t.bad.guest.write(canary, 0, &[0xC3; 4096]);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let flipper = std::thread::spawn(move || {
        let mut x: u32 = 12345;
        let mut flips = 0u64;
        while !s.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // A byte of some slot: operation, nr_segments, sector or a segment.
            let slot = (x % 32) as usize;
            let off = [0usize, 1, 16, 17, 24, 25, 26, 29][(x >> 8) as usize % 8];
            // SAFETY: a byte inside the ring page (64 + 32 * 112 <= 4096), guest memory that outlives the
            // thread (joined below); accessed atomically.
            let b = unsafe { AtomicU8::from_ptr((ring + 64 + slot * 112 + off) as *mut u8) };
            b.store((x >> 16) as u8, Ordering::Relaxed);
            flips += 1;
        }
        flips
    });
    let end = Instant::now() + Duration::from_secs(1);
    let mut answered = 0;
    while Instant::now() < end {
        let mut ids = Vec::new();
        for i in 0..8 {
            let s = [seg(&t, i, 0, 7)];
            let req = rw(&mut t, BLKIF_OP_WRITE, i as u64 * 8, &s);
            ids.push(req.id);
            t.bad.front.put(0, &req).unwrap();
        }
        t.bad.front.kick(0);
        let rsps = t.bad.front.wait(0, 8, T);
        assert_eq!(rsps.len(), 8, "every request is answered");
        for r in &rsps {
            assert!([BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&r.status));
        }
        answered += rsps.len();
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(
        flips > 1000 && answered > 0,
        "{flips} flips, {answered} answers"
    );
    assert_eq!(
        t.bad.guest.read(canary, 0, 4096),
        vec![0xC3; 4096],
        "memory outside the grants is untouched"
    );
    assert_eq!(t.bad.front.backend_state(), XenbusState::Connected);
    t.others_keep_working();
}

#[test]
fn req_event_or_rsp_event_set_to_garbage() {
    let mut t = two();
    for garbage in [0xDEAD_BEEF, 0, 1 << 31, u32::MAX] {
        event_word(&t.bad, 4).store(garbage, Ordering::SeqCst);
        event_word(&t.bad, 12).store(garbage, Ordering::SeqCst);
        let s = [seg(&t, 0, 0, 7)];
        let req = rw(&mut t, BLKIF_OP_READ, 0, &s);
        t.bad.front.put(0, &req).unwrap();
        t.bad.front.kick(0);
        // The front end may not be notified; it polls.
        let end = Instant::now() + T;
        let mut out = Vec::new();
        while out.is_empty() && Instant::now() < end {
            t.bad.front.poll(0, &mut out).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            out.len(),
            1,
            "answered with req_event/rsp_event {garbage:#x}"
        );
        assert_eq!(out[0].status, BLKIF_RSP_OKAY);
    }
    assert_serves(&mut t.bad.front, 7);
    t.others_keep_working();
}

#[test]
fn events_that_bring_no_work_and_event_floods() {
    let mut t = two();
    let port = t.bad.front.queues[0].port;
    let before = t.bad.back.totals();
    let notes = t.bad.front.evtchns.notifications_to_front(1, port);
    for _ in 0..100_000 {
        t.bad.front.evtchns.send(1, port);
    }
    std::thread::sleep(Duration::from_millis(50));
    let after = t.bad.back.totals();
    assert_eq!(after.0, before.0, "no requests came of it");
    assert_eq!(
        t.bad.front.evtchns.notifications_to_front(1, port),
        notes,
        "and no events back"
    );
    assert_serves(&mut t.bad.front, 8);
    t.others_keep_working();
}

#[test]
fn a_front_end_that_never_consumes_responses() {
    let mut t = two();
    let n = t.bad.front.ring_size(0);
    let base = req_prod(&t.bad).load(Ordering::SeqCst);
    // Fill the ring, then keep claiming more requests without ever taking a response: each time the slots
    // hold the back end's own responses, read again as requests.
    for i in 0..n {
        let s = [seg(&t, i as usize, 0, 7)];
        let req = rw(&mut t, BLKIF_OP_READ, 0, &s);
        t.bad.front.put(0, &req).unwrap();
    }
    t.bad.front.kick(0);
    let mut answered = n as u64;
    for k in 1..=10u32 {
        let end = Instant::now() + T;
        while t.bad.back.totals().1 < answered && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            t.bad.back.totals().1,
            answered,
            "round {k}: the back end answered what it could"
        );
        req_prod(&t.bad).store(base.wrapping_add(n * (k + 1)), Ordering::SeqCst);
        t.bad.front.evtchns.send(1, t.bad.front.queues[0].port);
        answered += u64::from(n);
    }
    t.others_keep_working();
}

#[test]
fn an_io_error_of_the_device_is_an_error_response() {
    let dir = std::env::temp_dir().join(format!("blkback-eio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0x77u8; 8 * MIB as usize]).unwrap();
    let dev =
        pv_backend::blk::FileDevice::open(&path, pv_backend::blk::FileOptions::default()).unwrap();
    let env = Env::new();
    let mut v = env.vbd(
        1,
        2048,
        Arc::new(dev),
        BlkConfig::default(),
        no_persistent(),
    );
    let mut good = env.vbd(
        2,
        2048,
        Arc::new(MemDevice::new(8 * MIB, 512)),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    // The image shrinks under the back end: reads past the new end fail in the device.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let mut buf = vec![0; 4096];
    assert_eq!(v.front.read(6 * MIB / 512, &mut buf), vec![BLKIF_RSP_ERROR]);
    assert_eq!(v.front.read(0, &mut buf), vec![BLKIF_RSP_OKAY]);
    assert_eq!(buf, vec![0x77; 4096]);
    assert_eq!(v.front.backend_state(), XenbusState::Connected);
    assert_serves(&mut good.front, 9);
    drop(v);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_request_bytes_always_get_a_valid_answer() {
    let mut t = two();
    let canary = t.bad.guest.alloc_pages(1);
    t.bad.guest.write(canary, 0, &[0xC3; 4096]);
    let good_refs: Vec<u32> = t.bad.front.buf_grefs[..16].to_vec();
    let mut x: u64 = 0x1234_5678_9ABC_DEF1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sectors = t.bad.front.sectors;
    for round in 0..300 {
        let mut batch = Vec::new();
        for _ in 0..8 {
            let mut bytes = [0u8; 112];
            for b in bytes.iter_mut() {
                *b = rnd() as u8;
            }
            let mut req = BlkifRequest::with_segments(0, 0, 0, 0, &[]).unwrap();
            zerocopy::IntoBytes::as_mut_bytes(&mut req).copy_from_slice(&bytes);
            // Bias towards requests that get far: known operations, sectors on the disk, real grants.
            if rnd() % 2 == 0 {
                req.operation = (rnd() % 7) as u8;
                req.sector_number = rnd() % (sectors + 16);
                for s in req.seg.iter_mut() {
                    if rnd() % 4 != 0 {
                        s.gref = good_refs[(rnd() % 16) as usize];
                    }
                    s.first_sect = (rnd() % 9) as u8;
                    s.last_sect = (rnd() % 9) as u8;
                }
                req.nr_segments = (rnd() % 13) as u8;
            }
            req.id = round * 8 + batch.len() as u64;
            batch.push(req.id);
            t.bad.front.put(0, &req).unwrap();
        }
        t.bad.front.kick(0);
        let rsps = t.bad.front.wait(0, 8, T);
        assert_eq!(rsps.len(), 8, "round {round}: every request is answered");
        for r in &rsps {
            assert!(batch.contains(&r.id));
            assert!([BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&r.status));
            assert!(r.padding_is_zero());
        }
    }
    assert_eq!(
        t.bad.guest.read(canary, 0, 4096),
        vec![0xC3; 4096],
        "nothing outside the grants is touched"
    );
    assert_eq!(t.bad.front.backend_state(), XenbusState::Connected);
    for &g in &good_refs {
        let e = t.bad.guest.grants.entry(g).unwrap();
        assert_eq!(
            e.flags & (GTF_reading | GTF_writing),
            0,
            "grant {g} released"
        );
    }
    t.others_keep_working();
}
