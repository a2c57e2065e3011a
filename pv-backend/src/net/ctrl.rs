//! netback's control ring (`feature-ctrl-ring`, `io/netif.h` "Control ring"): the front end sets the
//! receive-side hash (algorithm, types, key, mapping table), and the back end hashes received frames with
//! it (Toeplitz), for the `XEN_NETIF_EXTRA_TYPE_HASH` extra and for choosing a queue.
//!
//! Each request is copied off the ring once and validated by
//! [`XenNetifCtrlRequest::validate`](xen_abi::netif::XenNetifCtrlRequest::validate) against the limits
//! (Linux netback's: a 40-byte key, 128 mapping entries): `off + len` overflowing, a mapping larger than
//! the table, a key above 40 bytes, a mapping entry naming a queue at or above the queue count, an
//! unknown type: each is answered with the status `io/netif.h` gives (`INVALID_PARAMETER`,
//! `NOT_SUPPORTED`, `BUFFER_OVERFLOW`) and changes nothing. Data named by a grant (the key, the mapping)
//! is copied once out of a read-only mapping before it is checked. The grant-mapping requests
//! (`ADD_GREF_MAPPING`, ...) are answered `NOT_SUPPORTED`.

use std::sync::{Arc, RwLock};

use xen_abi::netif::{
    CtrlLimits, CtrlOp, CtrlStatus, HashAlgorithm, HashType, HashTypes, NetifCtrl, NetifError,
    XenNetifCtrlResponse, toeplitz_hash, validate_hash_mapping_bytes,
};
use xen_abi::ring::{BackRing, RingError, RingMemory};
use xen_abi::{DomId, XEN_PAGE_SIZE};

use super::ETH_HLEN;
use crate::backend::{EventChannel, GrantAccess, GrantAccessMode};

/// The largest mapping table [`CtrlRing::with_limits`] lets a front end ask for (64 Ki entries,
/// 256 KiB), so that `SET_HASH_MAPPING_SIZE` cannot make us allocate without bound.
pub const MAX_MAPPING_LIMIT: u32 = 1 << 16;

/// The receive-side hash the front end configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashConfig {
    /// The algorithm (none: no hashing).
    pub algorithm: HashAlgorithm,
    /// The header fields hashed.
    pub flags: HashTypes,
    /// The key (at most 40 bytes).
    pub key: Vec<u8>,
    /// The mapping table from hash to queue (empty: hash modulo the queue count).
    pub mapping: Vec<u32>,
}

impl Default for HashConfig {
    fn default() -> Self {
        Self {
            algorithm: HashAlgorithm::None,
            flags: HashTypes::empty(),
            key: Vec::new(),
            mapping: Vec::new(),
        }
    }
}

impl HashConfig {
    /// The hash of a frame and which type it is, if hashing is on and the frame is IPv4 or IPv6
    /// (with TCP, when asked) of a type the front end enabled: the Toeplitz hash of the source and
    /// destination addresses, then the ports for TCP, as `io/netif.h` defines the types.
    pub fn hash(&self, frame: &[u8]) -> Option<(u32, HashType)> {
        if self.algorithm != HashAlgorithm::Toeplitz || self.flags.is_empty() {
            return None;
        }
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let l3 = ETH_HLEN;
        let mut input = [0u8; 36];
        let (addrs, proto, l4) = match ethertype {
            0x0800 => {
                let ihl = usize::from(*frame.get(l3)? & 0xf) * 4;
                let frag = u16::from_be_bytes([*frame.get(l3 + 6)?, *frame.get(l3 + 7)?]);
                input[..8].copy_from_slice(frame.get(l3 + 12..l3 + 20)?);
                let tcp = *frame.get(l3 + 9)? == 6 && frag & 0x3fff == 0;
                (
                    8,
                    tcp.then_some((HashType::Ipv4Tcp, HashType::Ipv4)),
                    l3 + ihl,
                )
            }
            0x86dd => {
                input[..32].copy_from_slice(frame.get(l3 + 8..l3 + 40)?);
                let tcp = *frame.get(l3 + 6)? == 6;
                (
                    32,
                    tcp.then_some((HashType::Ipv6Tcp, HashType::Ipv6)),
                    l3 + 40,
                )
            }
            _ => return None,
        };
        let plain = if addrs == 8 {
            HashType::Ipv4
        } else {
            HashType::Ipv6
        };
        if let Some((with_ports, _)) = proto
            && self.flags.contains(with_ports.bit())
            && let Some(ports) = frame.get(l4..l4 + 4)
        {
            input[addrs..addrs + 4].copy_from_slice(ports);
            return Some((toeplitz_hash(&self.key, &input[..addrs + 4]), with_ports));
        }
        if self.flags.contains(plain.bit()) {
            return Some((toeplitz_hash(&self.key, &input[..addrs]), plain));
        }
        None
    }

    /// The queue a hash selects, among `num_queues`.
    pub fn queue(&self, hash: u32, num_queues: u32) -> u32 {
        let n = num_queues.max(1);
        if self.mapping.is_empty() {
            hash % n
        } else {
            let i = hash as usize % self.mapping.len();
            self.mapping.get(i).copied().unwrap_or(0) % n
        }
    }
}

/// One front end's control ring.
pub struct CtrlRing<M: RingMemory> {
    domid: DomId,
    grants: Arc<dyn GrantAccess>,
    ring: BackRing<M, NetifCtrl>,
    evtchn: Arc<dyn EventChannel>,
    limits: CtrlLimits,
    hash: HashConfig,
    /// Where the hash is published for the other queues (multi-queue).
    shared: Option<Arc<RwLock<HashConfig>>>,
    /// Requests answered with a status other than success.
    errors: u64,
}

impl<M: RingMemory> std::fmt::Debug for CtrlRing<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlRing")
            .field("domid", &self.domid)
            .field("limits", &self.limits)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl<M: RingMemory> CtrlRing<M> {
    /// Serves domain `domid`'s control ring in `mem`, for `num_queues` queues.
    pub fn new(
        domid: DomId,
        grants: Arc<dyn GrantAccess>,
        mem: M,
        evtchn: Arc<dyn EventChannel>,
        num_queues: u32,
    ) -> Result<Self, RingError> {
        let limits = CtrlLimits {
            num_queues: num_queues.max(1),
            ..CtrlLimits::DEFAULT
        };
        Self::with_limits(domid, grants, mem, evtchn, limits)
    }

    /// As [`new`](Self::new), with other limits than Linux netback's (a larger key or mapping
    /// table, up to [`MAX_MAPPING_LIMIT`] entries and a page of key; `limits.num_queues` is the queue
    /// count, `hash_mapping_size` is reset to 0). One
    /// `SET_HASH_MAPPING` still carries at most a page of entries (1024, 4096 bytes).
    pub fn with_limits(
        domid: DomId,
        grants: Arc<dyn GrantAccess>,
        mem: M,
        evtchn: Arc<dyn EventChannel>,
        limits: CtrlLimits,
    ) -> Result<Self, RingError> {
        Ok(Self {
            domid,
            grants,
            ring: BackRing::new(mem)?,
            evtchn,
            limits: CtrlLimits {
                num_queues: limits.num_queues.max(1),
                hash_mapping_size: 0,
                max_hash_mapping_size: limits.max_hash_mapping_size.min(MAX_MAPPING_LIMIT),
                max_hash_key_size: limits.max_hash_key_size.min(XEN_PAGE_SIZE as u32),
            },
            hash: HashConfig::default(),
            shared: None,
            errors: 0,
        })
    }

    /// The hash the front end configured.
    pub fn hash(&self) -> &HashConfig {
        &self.hash
    }

    /// Publishes the hash into `target` now and after every request that changes it, so that the
    /// queues without the control ring (and [`SharedDevice`](super::mq::SharedDevice)'s steering) use it.
    pub fn share_hash(&mut self, target: Arc<RwLock<HashConfig>>) {
        *target.write().unwrap_or_else(|e| e.into_inner()) = self.hash.clone();
        self.shared = Some(target);
    }

    /// Requests answered with an error status.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Answers every waiting request; returns how many. A ring whose indices are broken is an error
    /// (disconnect the front end).
    pub fn process(&mut self) -> Result<usize, RingError> {
        let mut n = 0;
        while let Some(req) = self.ring.pop_request()? {
            let result = match req.validate(&self.limits) {
                Ok(op) => self.apply(op).map_err(CtrlFailure::status),
                Err(e) => Err(e.ctrl_status()),
            };
            let rsp = match result {
                Ok(data) => XenNetifCtrlResponse::new(&req, CtrlStatus::Success, data),
                Err(status) => {
                    self.errors += 1;
                    XenNetifCtrlResponse::new(&req, status, 0)
                }
            };
            self.ring.put_response(&rsp)?;
            n += 1;
        }
        if n > 0
            && let Some(shared) = &self.shared
        {
            let mut s = shared.write().unwrap_or_else(|e| e.into_inner());
            if *s != self.hash {
                *s = self.hash.clone();
            }
        }
        if n > 0 && self.ring.push_responses_and_check_notify() {
            self.evtchn.notify();
        }
        self.ring.final_check_for_requests()?;
        Ok(n)
    }

    fn read_grant(&self, gref: u32, len: usize) -> Result<Vec<u8>, CtrlFailure> {
        let m = self
            .grants
            .map(self.domid, gref, GrantAccessMode::ReadOnly)
            .map_err(|_| CtrlFailure::Invalid)?;
        let mut buf = vec![0u8; len];
        if m.read_into(0, &mut buf) != len {
            return Err(CtrlFailure::Invalid);
        }
        Ok(buf)
    }

    fn apply(&mut self, op: CtrlOp) -> Result<u32, CtrlFailure> {
        match op {
            CtrlOp::GetHashFlags => Ok(HashTypes::all().bits()),
            CtrlOp::SetHashFlags { flags } => {
                self.hash.flags = flags;
                Ok(0)
            }
            CtrlOp::SetHashAlgorithm { algorithm } => {
                self.hash.algorithm = algorithm;
                Ok(0)
            }
            CtrlOp::SetHashKey { gref, len } => {
                self.hash.key = self.read_grant(gref, len as usize)?;
                Ok(0)
            }
            CtrlOp::GetHashMappingSize => Ok(self.limits.max_hash_mapping_size),
            CtrlOp::SetHashMappingSize { size } => {
                self.hash.mapping = vec![0; size as usize];
                self.limits.hash_mapping_size = size;
                Ok(0)
            }
            CtrlOp::SetHashMapping { gref, len, off } => {
                let bytes = self.read_grant(gref, len as usize * 4)?;
                let table = validate_hash_mapping_bytes(&bytes, len, self.limits.num_queues)
                    .map_err(CtrlFailure::Netif)?;
                let dst = self
                    .hash
                    .mapping
                    .get_mut(off as usize..(off + len) as usize)
                    .ok_or(CtrlFailure::Invalid)?;
                for (d, c) in dst.iter_mut().zip(table.chunks_exact(4)) {
                    *d = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
                Ok(0)
            }
            _ => Err(CtrlFailure::NotSupported),
        }
    }
}

/// Why an operation that validated still failed.
enum CtrlFailure {
    /// A grant that does not map, or a table that does not fit: `INVALID_PARAMETER`.
    Invalid,
    /// `NOT_SUPPORTED`.
    NotSupported,
    /// A validation error of the copied data.
    Netif(NetifError),
}

impl CtrlFailure {
    fn status(self) -> CtrlStatus {
        match self {
            Self::Invalid => CtrlStatus::InvalidParameter,
            Self::NotSupported => CtrlStatus::NotSupported,
            Self::Netif(e) => e.ctrl_status(),
        }
    }
}
