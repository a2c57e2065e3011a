//! blkback's queue server on a ring page full of hostile bytes, over the in-memory disk.
//!
//! The ring page (and the header indices, and single bytes of its slots) come from the input and are
//! rewritten between the server's steps, as a hostile front end racing it would. Four data pages are
//! granted (one of them read-only); a fifth page is a canary that is never granted. Invariants: no
//! panic; every response the server pushes is well formed (a `BLKIF_RSP_*` status, zero padding); the
//! canary and the read-only page are never written; once the server is drained and dropped, no grant is
//! left marked in use.
//!
//! Input: `flags` (bit 0: x86_32 layout; bit 1: persistent grants; bit 2: read-only disk), `steps`, a
//! 4-byte start index, `steps` 5-byte steps, then the ring page. A step is `[what, a, b, c, d]`:
//! 0: `req_prod = abcd`; 1: header word `a % 4 = abcd`; 2: pump `a % 8 + 1` times; 3: the ring page's
//! bytes at `ab % 4096` become `c, d`; 4: the header of data grant `a % 4` is overwritten with flags
//! `bc` (never the in-use bits) and domid `d`; 5: pump until idle (at most 64 times).
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use libfuzzer_sys::fuzz_target;
use pv_backend::backend::{
    Doorbell, EventChannel, GrantAccess, GrantAccessMode, GrantMapError, GrantMapping, GrantedRing,
};
use pv_backend::blk::front::TestGuest;
use pv_backend::blk::{BlockDevice, MemDevice, QueueParams, QueueServer};
use xen_abi::blkif::{
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, Blkif, BlkifLimits, BlkifProtocol,
    BlkifX86_32,
};
use xen_abi::grant_table::{GTF_reading, GTF_writing, GrantEntryHeader, GrantRef};
use xen_abi::ring::RingProtocol;
use xen_abi::{DomId, XEN_PAGE_SIZE};

const DOMID: u16 = 7;
const RING_FRAME: u32 = 0;
const DATA_FRAMES: [u32; 4] = [1, 2, 3, 4];
const READ_ONLY_FRAME: u32 = 3;
const CANARY_FRAME: u32 = 5;
const CANARY: u8 = 0xA5;

/// The guest's grant table, except that the ring's page cannot also be mapped as a data page: a front end
/// that reads disk data over its own ring only hurts itself, but it would hide what the server wrote.
struct NoRingAsData {
    table: Arc<dyn GrantAccess>,
    ring_ref: GrantRef,
    ring_mapped: AtomicBool,
}

impl GrantAccess for NoRingAsData {
    fn backend_domid(&self) -> DomId {
        self.table.backend_domid()
    }
    fn map(
        &self,
        granter: DomId,
        gref: GrantRef,
        mode: GrantAccessMode,
    ) -> Result<GrantMapping, GrantMapError> {
        if gref == self.ring_ref && self.ring_mapped.swap(true, Ordering::Relaxed) {
            return Err(GrantMapError::UnknownDomain { granter });
        }
        self.table.map(granter, gref, mode)
    }
}

struct Quiet;
impl EventChannel for Quiet {
    fn notify(&self) {}
}

fn page(guest: &TestGuest, frame: u32) -> Vec<u8> {
    guest.read(frame, 0, XEN_PAGE_SIZE)
}

fn header_word(guest: &TestGuest, word: usize) -> u32 {
    let p = guest.page_ptr(RING_FRAME);
    // SAFETY: `word < 4`: one of the four index words at the start of the ring page, 4-byte aligned,
    // accessed atomically as the ring itself does.
    unsafe { AtomicU32::from_ptr(p.add(4 * word).cast()) }.load(Ordering::Acquire)
}

fn set_header_word(guest: &TestGuest, word: usize, value: u32) {
    let p = guest.page_ptr(RING_FRAME);
    // SAFETY: as in `header_word`.
    unsafe { AtomicU32::from_ptr(p.add(4 * word).cast()) }.store(value, Ordering::Release);
}

/// Checks the `n` responses just pushed, ending at the page's `rsp_prod`.
fn check_responses(guest: &TestGuest, x86_32: bool, n: u64) {
    let (slot, pad) = if x86_32 {
        (<BlkifX86_32 as RingProtocol>::SLOT_SIZE, &[9usize][..])
    } else {
        (
            <Blkif as RingProtocol>::SLOT_SIZE,
            &[9usize, 12, 13, 14, 15][..],
        )
    };
    // The largest power of two that fits the page after the 64-byte header (ring.h's __RING_SIZE).
    let nr_slots = 1usize << ((XEN_PAGE_SIZE - 64) / slot).ilog2();
    let rsp_prod = header_word(guest, 2);
    let ring = page(guest, RING_FRAME);
    for k in 0..n.min(nr_slots as u64) as u32 {
        let idx = rsp_prod.wrapping_sub(k + 1) as usize & (nr_slots - 1);
        let s = &ring[64 + idx * slot..64 + (idx + 1) * slot];
        for &i in pad {
            assert_eq!(
                s[i], 0,
                "padding byte {i} of response slot {idx} is {:#x}",
                s[i]
            );
        }
        let status = i16::from_le_bytes([s[10], s[11]]);
        assert!(
            [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&status),
            "response slot {idx} has status {status}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, steps, rest @ ..] = data else {
        return;
    };
    let script_len = 4 + 5 * usize::from(*steps);
    if rest.len() < script_len {
        return;
    }
    let (script, ring_bytes) = rest.split_at(script_len);
    let x86_32 = flags & 1 != 0;
    let persistent = flags & 2 != 0;
    let read_only = flags & 4 != 0;

    let guest = TestGuest::new(DOMID, 0, 8, 1);
    let mut ring_page = vec![0u8; XEN_PAGE_SIZE];
    let n = ring_bytes.len().min(XEN_PAGE_SIZE);
    ring_page[..n].copy_from_slice(&ring_bytes[..n]);
    guest.write(RING_FRAME, 0, &ring_page);
    for (i, &f) in DATA_FRAMES.iter().enumerate() {
        guest.write(f, 0, &[0x10 + i as u8; XEN_PAGE_SIZE]);
    }
    guest.write(CANARY_FRAME, 0, &[CANARY; XEN_PAGE_SIZE]);
    let read_only_before = page(&guest, READ_ONLY_FRAME);
    // Grant refs 8 (the ring) and 9..=12 (the data pages), in that order.
    let ring_ref = guest.grant(RING_FRAME, false);
    let data_refs: Vec<_> = DATA_FRAMES
        .iter()
        .map(|&f| guest.grant(f, f == READ_ONLY_FRAME))
        .collect();

    let grants: Arc<dyn GrantAccess> = Arc::new(NoRingAsData {
        table: Arc::new(guest.grants.clone()),
        ring_ref,
        ring_mapped: AtomicBool::new(false),
    });
    let Ok(ring) = GrantedRing::map(&*grants, DOMID, &[ring_ref]) else {
        return;
    };
    let disk = MemDevice::new(64 << 10, 512).with_info(|i| i.read_only = read_only);
    let info = disk.info();
    let Ok(base) = BlkifLimits::new(info.size / 512, 512) else {
        return;
    };
    let Ok(limits) = base
        .with_read_only(read_only)
        .with_flush_cache(!read_only)
        .with_barrier(!read_only)
        .with_discard(!read_only, false)
        .with_max_indirect_segments(64)
    else {
        return;
    };
    let params = QueueParams {
        limits,
        persistent,
        max_persistent_grants: 3,
        poll_time: std::time::Duration::ZERO,
    };
    let protocol = if x86_32 {
        BlkifProtocol::X86_32
    } else {
        BlkifProtocol::X86_64
    };
    let start = u32::from_le_bytes([script[0], script[1], script[2], script[3]]);
    let Ok(queue) = disk.open_queue() else { return };
    let Ok(mut server) = QueueServer::new(
        DOMID,
        ring,
        protocol,
        start,
        grants.clone(),
        queue,
        Arc::new(Quiet),
        Doorbell::new(),
        info,
        params,
    ) else {
        return;
    };
    let stats = server.stats();
    let mut broken = false;
    'steps: for step in script[4..].chunks_exact(5) {
        let [what, a, b, c, d] = <[u8; 5]>::try_from(step).expect("5-byte steps");
        let value = u32::from_le_bytes([a, b, c, d]);
        let pumps = match what % 6 {
            0 => {
                set_header_word(&guest, 0, value);
                0
            }
            1 => {
                set_header_word(&guest, usize::from(a % 4), value);
                0
            }
            2 => usize::from(a % 8) + 1,
            3 => {
                let off = usize::from(u16::from_le_bytes([a, b])) % (XEN_PAGE_SIZE - 1);
                guest.write(RING_FRAME, off, &[c, d]);
                0
            }
            4 => {
                let gref = data_refs[usize::from(a % 4)];
                let flags = u16::from_le_bytes([b, c]) & !(GTF_reading | GTF_writing);
                let _ = guest.grants.force_header(
                    gref,
                    GrantEntryHeader {
                        flags,
                        domid: u16::from(d),
                    },
                );
                0
            }
            _ => 64,
        };
        for _ in 0..pumps {
            let before = stats.responses.load(Ordering::Relaxed);
            let r = server.pump();
            let after = stats.responses.load(Ordering::Relaxed);
            if after > before {
                check_responses(&guest, x86_32, after - before);
            }
            match r {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    broken = true;
                    break 'steps;
                }
            }
        }
    }
    let _ = broken;
    // Drain the device and let every mapping go.
    let _ = server.run(&AtomicBool::new(true));
    drop(server);
    assert!(
        page(&guest, CANARY_FRAME).iter().all(|&b| b == CANARY),
        "the canary page (never granted) was written"
    );
    assert_eq!(
        page(&guest, READ_ONLY_FRAME),
        read_only_before,
        "a read-only grant was written"
    );
    for gref in std::iter::once(ring_ref).chain(data_refs) {
        let e = guest.grants.entry(gref).expect("granted ref");
        assert_eq!(
            e.flags & (GTF_reading | GTF_writing),
            0,
            "grant ref {gref} is still marked in use: flags {:#x}",
            e.flags
        );
    }
});
