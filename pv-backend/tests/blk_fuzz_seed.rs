//! The seed of the `blkback_ring` fuzz target (`fuzz/corpus/blkback_ring/seed-0`), built from xen-abi's
//! request types: a ring page with one request of each kind the queue server handles (good and bad), and
//! a script that serves them, moves `req_prod` past them, and serves again. The test fails when the
//! committed seed differs from what it builds; `BLANKET_WRITE_FUZZ_SEEDS=1 cargo test -p pv-backend
//! --test blk_fuzz_seed` writes it anew.

use std::path::PathBuf;

use xen_abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, Blkif, BlkifRequest, BlkifRequestSegment,
};
use xen_abi::ring::RingProtocol;
use zerocopy::IntoBytes;

/// The grant refs the fuzz target grants: 8 is the ring, 9..=12 the data pages (11 read-only).
const DATA: [u32; 4] = [9, 10, 11, 12];

fn rw(op: u8, id: u64, sector: u64, gref: u32) -> BlkifRequest {
    BlkifRequest::with_segments(
        op,
        51712,
        id,
        sector,
        &[BlkifRequestSegment::new(gref, 0, 7)],
    )
    .expect("one segment")
}

fn seed() -> Vec<u8> {
    let mut discard = BlkifRequest::new(BLKIF_OP_DISCARD, 51712, 7, 16);
    // The discard view puts `nr_sectors` where the first segment is.
    discard.seg[0] = BlkifRequestSegment::new(8, 0, 0);
    let requests = [
        rw(BLKIF_OP_WRITE, 1, 0, DATA[0]),
        rw(BLKIF_OP_READ, 2, 0, DATA[1]),
        rw(BLKIF_OP_WRITE, 3, 8, DATA[2]),
        // A read into a read-only grant: refused.
        rw(BLKIF_OP_READ, 4, 8, DATA[2]),
        BlkifRequest::new(BLKIF_OP_FLUSH_DISKCACHE, 51712, 5, 0),
        rw(BLKIF_OP_WRITE_BARRIER, 6, 24, DATA[3]),
        discard,
        // An unknown operation, and a grant that was never given.
        BlkifRequest::new(0x42, 51712, 8, 0),
        rw(BLKIF_OP_WRITE, 9, 0, 13),
        // Past the end of the 64 KiB disk.
        rw(BLKIF_OP_READ, 10, 128, DATA[0]),
    ];
    let slot = <Blkif as RingProtocol>::SLOT_SIZE;
    let mut page = vec![0u8; 64 + requests.len() * slot];
    // req_prod, req_event, rsp_prod, rsp_event.
    page[0..4].copy_from_slice(&(requests.len() as u32).to_le_bytes());
    page[4..8].copy_from_slice(&1u32.to_le_bytes());
    page[12..16].copy_from_slice(&1u32.to_le_bytes());
    for (i, r) in requests.iter().enumerate() {
        let b = r.as_bytes();
        page[64 + i * slot..64 + i * slot + b.len()].copy_from_slice(b);
    }
    // Steps: serve until idle; req_prod = 14 (four zeroed slots: reads without segments); serve again.
    let steps: [[u8; 5]; 3] = [[5, 0, 0, 0, 0], [0, 14, 0, 0, 0], [5, 0, 0, 0, 0]];
    // Flags: native layout, persistent grants.
    let mut seed = vec![2u8, steps.len() as u8, 0, 0, 0, 0];
    seed.extend(steps.iter().flatten());
    seed.extend_from_slice(&page);
    seed
}

#[test]
fn blkback_ring_seed_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/blkback_ring/seed-0");
    let want = seed();
    if std::env::var_os("BLANKET_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        have == want,
        "{} is out of date: run `BLANKET_WRITE_FUZZ_SEEDS=1 cargo test -p pv-backend --test blk_fuzz_seed`",
        path.display()
    );
}
