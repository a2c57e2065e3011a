//! The seed corpus of the fuzz targets (`fuzz/corpus/<target>/seed-*`), written by this test.
//!
//! Each seed is a valid input in its target's format, built from xen-abi's own types, so that the fuzzers
//! start from inputs that reach deep into the parsers. The test fails when the committed seeds differ from
//! what it builds (a format changed); `BLANKET_WRITE_FUZZ_SEEDS=1 cargo test -p blanket-conformance --test
//! fuzz_seeds` writes them anew.

use std::path::PathBuf;

use blanket_conformance::peers::{Proto, blkif};
use xen_abi::netif::{NETTXF_more_data, NetifTxRequest};
use xen_abi::ring::{FrontRing, RingMemory, RingPages};
use xen_abi::xs_wire::{OwnedMessage, XsType};
use zerocopy::{FromZeros, IntoBytes};

fn page_bytes(pages: &RingPages) -> Vec<u8> {
    let mem: &RingPages = pages;
    // SAFETY: reading the page we own, volatile like the ring's own accesses.
    (0..mem.len())
        .map(|i| unsafe { mem.as_ptr().add(i).read_volatile() })
        .collect()
}

/// ring_back_end: protocol byte, step count, start index, 5-byte steps, then the page.
fn ring_back_end_seed() -> Vec<u8> {
    let pages = RingPages::new(0);
    let mut front = FrontRing::<_, blkif>::new(&pages).unwrap();
    for i in 0..20 {
        front.put_request(&blkif::make_request(i)).unwrap();
    }
    front.push_requests();
    // Steps: pop 8, respond 8, final check, pop 20, respond 20, final check, count.
    let steps: [[u8; 5]; 7] = [
        [2, 8, 0, 0, 0],
        [3, 8, 0, 0, 0],
        [4, 0, 0, 0, 0],
        [2, 20, 0, 0, 0],
        [3, 20, 0, 0, 0],
        [4, 0, 0, 0, 0],
        [5, 0, 0, 0, 0],
    ];
    let mut seed = vec![0u8, steps.len() as u8, 0, 0, 0, 0];
    seed.extend(steps.iter().flatten());
    let page = page_bytes(&pages);
    // The page up to the last request: libFuzzer's inputs are at most 4 KiB by default.
    seed.extend_from_slice(&page[..64 + 20 * 112]);
    seed
}

/// blkif_request: 16 bytes of limits, a 112-byte slot.
fn blkif_request_seed() -> Vec<u8> {
    let mut seed = Vec::new();
    seed.extend_from_slice(&(1u64 << 21).to_le_bytes()); // disk sectors
    seed.extend_from_slice(&[0, 0x1f, 0, 1, 0, 0, 0, 0]); // 512-byte sectors, every feature, 256 indirect
    seed.extend_from_slice(blkif::make_request(3).as_bytes());
    seed
}

/// netif_tx: 4 bytes of settings, a 16-byte control request, then a two-slot packet.
fn netif_tx_seed() -> Vec<u8> {
    let mut seed = vec![16, 0, 0, 4];
    seed.extend_from_slice(&[0u8; 16]);
    let mut first = NetifTxRequest::new_zeroed();
    (first.gref, first.offset, first.flags, first.id, first.size) =
        (8, 0, NETTXF_more_data, 0, 1000);
    let mut second = NetifTxRequest::new_zeroed();
    (
        second.gref,
        second.offset,
        second.flags,
        second.id,
        second.size,
    ) = (9, 100, 0, 1, 400);
    seed.extend_from_slice(first.as_bytes());
    seed.extend_from_slice(second.as_bytes());
    seed
}

/// xs_wire_framing: chunk-size count, chunk sizes, then a stream of messages.
fn xs_wire_framing_seed() -> Vec<u8> {
    let mut seed = vec![2, 6, 30, 200];
    let messages = [
        OwnedMessage::from_strings(XsType::Write, 1, 0, &[b"/local/domain/1/data", b"value"])
            .unwrap(),
        OwnedMessage::from_strings(XsType::Read, 2, 0, &[b"data"]).unwrap(),
        OwnedMessage::from_strings(XsType::Watch, 3, 0, &[b"/local/domain/1", b"token"]).unwrap(),
        OwnedMessage::from_strings(XsType::TransactionStart, 4, 0, &[b""]).unwrap(),
    ];
    for m in &messages {
        seed.extend_from_slice(&m.to_vec().unwrap());
    }
    seed
}

#[test]
fn fuzz_seeds_are_up_to_date() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = std::env::var_os("BLANKET_WRITE_FUZZ_SEEDS").is_some();
    let seeds = [
        ("ring_back_end", ring_back_end_seed()),
        ("blkif_request", blkif_request_seed()),
        ("netif_tx", netif_tx_seed()),
        ("xs_wire_framing", xs_wire_framing_seed()),
    ];
    for (target, bytes) in seeds {
        let path = corpus.join(target).join("seed-0");
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is out of date: run `BLANKET_WRITE_FUZZ_SEEDS=1 cargo test -p blanket-conformance --test fuzz_seeds`",
            path.display()
        );
    }
}
