//! netback's control ring server (`net::ctrl::CtrlRing`) on a ring a hostile front end writes:
//! arbitrary control requests (hash flags, algorithm, a key and a mapping table read from granted
//! pages, the mapping size, the grant-mapping requests), the shared indices rewritten between
//! steps, and the granted pages rewritten; then the configured hash applied to frames from the
//! input, as netback does to received frames.
//!
//! Invariants: no panic; while the front end keeps to the protocol, every request gets exactly one
//! response, in order, echoing its id and type, with a status `io/netif.h` defines, and the count
//! of non-success responses is what `errors()` says; a key or mapping accepted is exactly what the
//! granted page held; the configuration stays within the limits (key length, mapping size, every
//! mapping entry below the queue count) and is what `share_hash` published; a frame's hash is
//! given only for a hash type the front end enabled, with Toeplitz on, and selects a queue below
//! the queue count.
//!
//! Input: `[queues, limits]` (queue count `queues % 16 + 1`; `limits` bit 0: Linux's limits, else
//! a 4096-byte key and 4096 mapping entries), then 17-byte steps `[op, b0..b15]`: 0 queue the
//! request `b0..b15` (native byte order, as on the ring); 1 push and let the back end process; 2
//! shared index word `b0 % 4 = b1..b4`; 3 write `b3..b15` into data page `b0 % 2` at offset
//! `b1, b2`; 4 fill data page `b0 % 2` with the 32-bit word `b1..b4` plus its index times `b5`;
//! 5 hash the frame `b0..b15` repeated `b1 % 8 + 1` times (a received frame's headers).
#![no_main]

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use libfuzzer_sys::fuzz_target;
use pv_backend::backend::{EventChannel, GrantAccess, GrantedRing};
use pv_backend::blk::front::TestGuest;
use pv_backend::net::ctrl::{CtrlRing, HashConfig};
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::netif::{
    CtrlLimits, CtrlStatus, HashAlgorithm, HashTypes, NetifCtrl,
    XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
    XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
    XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, XenNetifCtrlRequest, XenNetifCtrlResponse,
};
use xen_abi::ring::{FrontRing, RawRingMemory};

const DOMID: u16 = 5;
const RING_FRAME: u32 = 0;
const DATA_FRAMES: [u32; 2] = [1, 2];

struct Quiet;
impl EventChannel for Quiet {
    fn notify(&self) {}
}

fn set_header_word(guest: &TestGuest, word: usize, value: u32) {
    let p = guest.page_ptr(RING_FRAME);
    // SAFETY: `word < 4`: one of the four index words at the start of the ring page, 4-byte
    // aligned, accessed atomically as the rings do.
    unsafe { AtomicU32::from_ptr(p.add(4 * word).cast()) }.store(value, Ordering::Release);
}

fn check_config(hash: &HashConfig, limits: &CtrlLimits, num_queues: u32) {
    assert!(
        hash.key.len() <= limits.max_hash_key_size as usize,
        "a key of {} bytes",
        hash.key.len()
    );
    assert!(
        hash.mapping.len() <= limits.max_hash_mapping_size as usize,
        "a mapping of {} entries",
        hash.mapping.len()
    );
    if let Some(q) = hash.mapping.iter().find(|&&q| q >= num_queues) {
        panic!("mapping entry {q} with {num_queues} queues");
    }
}

fn check_hash(hash: &HashConfig, frame: &[u8], num_queues: u32) {
    let Some((value, ty)) = hash.hash(frame) else {
        return;
    };
    assert_eq!(
        hash.algorithm,
        HashAlgorithm::Toeplitz,
        "a hash with hashing off"
    );
    assert!(
        hash.flags.contains(ty.bit()),
        "hash type {ty:?} not enabled"
    );
    assert!(hash.queue(value, num_queues) < num_queues);
}

fuzz_target!(|data: &[u8]| {
    let [queues, lim, script @ ..] = data else {
        return;
    };
    let num_queues = u32::from(queues % 16) + 1;
    let limits = if lim & 1 != 0 {
        CtrlLimits {
            num_queues,
            ..CtrlLimits::DEFAULT
        }
    } else {
        CtrlLimits {
            num_queues,
            max_hash_key_size: XEN_PAGE_SIZE as u32,
            max_hash_mapping_size: 4096,
            hash_mapping_size: 0,
        }
    };

    let guest = TestGuest::new(DOMID, 0, 4, 1);
    let ring_ptr = NonNull::new(guest.page_ptr(RING_FRAME)).expect("a page");
    // SAFETY: the guest's page, alive as long as `guest`, which outlives the ring; only accessed
    // through the ring's atomic and volatile accesses.
    let ring_mem = unsafe { RawRingMemory::new(ring_ptr, XEN_PAGE_SIZE) };
    let mut front = FrontRing::<_, NetifCtrl>::new(ring_mem).expect("a control ring");
    let ring_ref = guest.grant(RING_FRAME, false);
    // Grant refs of the data pages, the second one read-only.
    let data_refs = [
        guest.grant(DATA_FRAMES[0], false),
        guest.grant(DATA_FRAMES[1], true),
    ];
    let grants: Arc<dyn GrantAccess> = Arc::new(guest.grants.clone());
    let mem = GrantedRing::map(&*grants, DOMID, &[ring_ref]).expect("the ring maps");
    let mut back = CtrlRing::with_limits(DOMID, grants, mem, Arc::new(Quiet), limits)
        .expect("the back end attaches");
    let shared = Arc::new(RwLock::new(HashConfig::default()));
    back.share_hash(shared.clone());

    // Requests queued and pushed, and not yet answered; `None` once the front end broke the
    // protocol (then only safety and the configuration's bounds are checked).
    let mut pending: Option<VecDeque<XenNetifCtrlRequest>> = Some(VecDeque::new());
    let mut errors = 0u64;
    let mut model = Model::new();
    let kept = back_limits(&limits);
    for step in script.chunks_exact(17).take(128) {
        let (op, b) = (step[0], &step[1..]);
        match op % 6 {
            0 => {
                let raw = <[u8; 16]>::try_from(b).expect("16 bytes");
                let req = XenNetifCtrlRequest::from_ne_bytes(raw);
                if front.free_requests() > 0
                    && front.put_request(&req).is_ok()
                    && let Some(p) = &mut pending
                {
                    p.push_back(req);
                }
            }
            1 => {
                front.push_requests();
                let pages: Vec<(u32, Vec<u8>)> = DATA_FRAMES
                    .iter()
                    .zip(data_refs)
                    .map(|(&f, r)| (r, guest.read(f, 0, XEN_PAGE_SIZE)))
                    .collect();
                if back.process().is_err() {
                    // The ring's indices are broken: a back end disconnects.
                    assert!(pending.is_none(), "an honest ring broke");
                    break;
                }
                check_config(back.hash(), &kept, num_queues);
                assert_eq!(
                    *shared.read().expect("not poisoned"),
                    *back.hash(),
                    "the shared hash is not the ring's"
                );
                loop {
                    let rsp = match front.pop_response() {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(_) => {
                            pending = None;
                            break;
                        }
                    };
                    assert!(
                        CtrlStatus::try_from(rsp.status).is_ok(),
                        "status {}",
                        rsp.status
                    );
                    let Some(p) = &mut pending else { continue };
                    let req = p.pop_front().expect("a response to a request never made");
                    assert_eq!(
                        (rsp.id, rsp.r#type),
                        (req.id, req.r#type),
                        "{req:?}: {rsp:?}"
                    );
                    if rsp.status != CtrlStatus::Success as u32 {
                        errors += 1;
                    }
                    model.answer(&req, &rsp, &pages, ring_ref, &kept);
                }
                if let Some(p) = &pending {
                    assert!(p.is_empty(), "{} requests unanswered", p.len());
                    assert_eq!(back.errors(), errors, "errors() miscounts");
                    model.check(back.hash());
                }
            }
            2 => {
                set_header_word(
                    &guest,
                    usize::from(b[0] % 4),
                    u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
                );
                pending = None;
            }
            3 => {
                let off = usize::from(u16::from_le_bytes([b[1], b[2]])) % (XEN_PAGE_SIZE - 13);
                guest.write(DATA_FRAMES[usize::from(b[0] % 2)], off, &b[3..]);
            }
            4 => {
                let base = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                let page: Vec<u8> = (0..XEN_PAGE_SIZE as u32 / 4)
                    .flat_map(|i| base.wrapping_add(i * u32::from(b[5])).to_ne_bytes())
                    .collect();
                guest.write(DATA_FRAMES[usize::from(b[0] % 2)], 0, &page);
            }
            _ => {
                let frame: Vec<u8> = b.repeat(usize::from(b[1] % 8) + 1);
                check_hash(back.hash(), &frame, num_queues);
            }
        }
    }
});

/// The limits `CtrlRing::with_limits` keeps.
fn back_limits(l: &CtrlLimits) -> CtrlLimits {
    CtrlLimits {
        max_hash_key_size: l.max_hash_key_size.min(XEN_PAGE_SIZE as u32),
        max_hash_mapping_size: l
            .max_hash_mapping_size
            .min(pv_backend::net::ctrl::MAX_MAPPING_LIMIT),
        ..*l
    }
}

/// The configuration the requests answered so far must have made (`None`: bytes read from the
/// ring page itself, which the back end was writing responses into).
#[derive(Debug, Default)]
struct Model {
    flags: HashTypes,
    algorithm: Option<HashAlgorithm>,
    key: Option<Vec<u8>>,
    mapping: Vec<Option<u32>>,
}

impl Model {
    fn new() -> Self {
        Self {
            algorithm: Some(HashAlgorithm::None),
            key: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Checks a response against what the request must get, and applies it. `pages` are the data
    /// pages as the back end read them; `ring_ref` may be read too (its bytes are unknown).
    fn answer(
        &mut self,
        req: &XenNetifCtrlRequest,
        rsp: &XenNetifCtrlResponse,
        pages: &[(u32, Vec<u8>)],
        ring_ref: u32,
        limits: &CtrlLimits,
    ) {
        let ok = rsp.status == CtrlStatus::Success as u32;
        let [d0, d1, d2] = req.data;
        let page = pages.iter().find(|p| p.0 == d0).map(|p| &p.1[..]);
        let granted = page.is_some() || d0 == ring_ref;
        // Whether it must succeed (`None`: it depends on bytes of the ring page).
        let must = match req.r#type {
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS | XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE => {
                Some(true)
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS => Some(HashTypes::from_bits(d0).is_some()),
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM => Some(HashAlgorithm::try_from(d0).is_ok()),
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY => Some(d1 <= limits.max_hash_key_size && granted),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE => Some(d0 <= limits.max_hash_mapping_size),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => {
                let fits = d1 <= 1024
                    && d2
                        .checked_add(d1)
                        .is_some_and(|end| end as usize <= self.mapping.len());
                match page {
                    _ if !fits || !granted => Some(false),
                    None => None,
                    Some(p) => {
                        Some(p[..d1 as usize * 4].chunks_exact(4).all(|c| {
                            u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) < limits.num_queues
                        }))
                    }
                }
            }
            // The grant-mapping requests are not supported; the other types do not exist.
            _ => Some(false),
        };
        if let Some(must) = must {
            assert_eq!(ok, must, "{req:?} answered {rsp:?}; model {self:?}");
        }
        if !ok {
            assert_eq!(rsp.data, 0, "{req:?}: a failure with data");
            return;
        }
        match req.r#type {
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS => {
                assert_eq!(rsp.data, HashTypes::all().bits());
            }
            XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE => {
                assert_eq!(rsp.data, limits.max_hash_mapping_size);
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS => self.flags = HashTypes::from_bits_retain(d0),
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM => {
                self.algorithm = HashAlgorithm::try_from(d0).ok();
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY => {
                self.key = page.map(|p| p[..d1 as usize].to_vec());
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE => self.mapping = vec![Some(0); d0 as usize],
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => {
                for i in 0..d1 as usize {
                    self.mapping[d2 as usize + i] = page.map(|p| {
                        u32::from_ne_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]])
                    });
                }
            }
            _ => {}
        }
    }

    fn check(&self, hash: &HashConfig) {
        assert_eq!(hash.flags, self.flags, "hash flags");
        if let Some(a) = self.algorithm {
            assert_eq!(hash.algorithm, a, "hash algorithm");
        }
        if let Some(k) = &self.key {
            assert_eq!(&hash.key, k, "hash key");
        }
        assert_eq!(hash.mapping.len(), self.mapping.len(), "mapping size");
        for (i, (&got, want)) in hash.mapping.iter().zip(&self.mapping).enumerate() {
            if let Some(w) = *want {
                assert_eq!(got, w, "mapping entry {i}");
            }
        }
    }
}
