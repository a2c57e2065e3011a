//! The control ring: validating a copied [`XenNetifCtrlRequest`] into a typed [`CtrlOp`], and the
//! mapping table a `SET_HASH_MAPPING` points to.
#![forbid(unsafe_code)]

use super::{
    CtrlStatus, CtrlType, HashAlgorithm, HashTypes, NetifError,
    XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING, XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
    XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
    XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
    XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
    XenNetifCtrlRequest, XenNetifCtrlResponse, XenNetifGref,
};

/// The largest hash key Linux netback accepts, in bytes (`XEN_NETBK_MAX_HASH_KEY_SIZE`): the default of
/// [`CtrlLimits::max_hash_key_size`]. `io/netif.h` leaves the limit to the back end.
pub const XEN_NETBK_MAX_HASH_KEY_SIZE: u32 = 40;

/// The largest hash mapping table Linux netback accepts, in entries (`XEN_NETBK_MAX_HASH_MAPPING_SIZE`):
/// the default of [`CtrlLimits::max_hash_mapping_size`].
pub const XEN_NETBK_MAX_HASH_MAPPING_SIZE: u32 = 128;

/// The mapping entries (`u32`) one granted page holds: the most one `SET_HASH_MAPPING` can carry, since
/// the (sub-)table starts at the beginning of a single grant. No C counterpart.
pub const HASH_MAPPING_ENTRIES_PER_PAGE: u32 = (crate::XEN_PAGE_SIZE / size_of::<u32>()) as u32;

/// The [`XenNetifGref`] entries one granted page holds: the most one `ADD_GREF_MAPPING` or
/// `DEL_GREF_MAPPING` can carry. No C counterpart.
pub const GREF_MAPPING_ENTRIES_PER_PAGE: u32 =
    (crate::XEN_PAGE_SIZE / size_of::<XenNetifGref>()) as u32;

/// What the back end supports and its current state, against which control requests are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlLimits {
    /// The largest hash key accepted ([`XEN_NETBK_MAX_HASH_KEY_SIZE`] by default).
    pub max_hash_key_size: u32,
    /// The largest mapping table accepted ([`XEN_NETBK_MAX_HASH_MAPPING_SIZE`] by default).
    pub max_hash_mapping_size: u32,
    /// The current mapping table size, as the last successful `SET_HASH_MAPPING_SIZE` set it (0 at first).
    pub hash_mapping_size: u32,
    /// The number of queues the front end set up (`multi-queue-num-queues`, 1 without multi-queue).
    pub num_queues: u32,
}

impl CtrlLimits {
    /// Linux netback's limits, no mapping table, one queue.
    pub const DEFAULT: Self = Self {
        max_hash_key_size: XEN_NETBK_MAX_HASH_KEY_SIZE,
        max_hash_mapping_size: XEN_NETBK_MAX_HASH_MAPPING_SIZE,
        hash_mapping_size: 0,
        num_queues: 1,
    };
}

impl Default for CtrlLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A validated control request (`XEN_NETIF_CTRL_TYPE_*` in `io/netif.h`, with its `data[]` decoded).
///
/// Arguments that `io/netif.h` says are 0 (for example `data[1]` of `GET_HASH_FLAGS`) are not checked,
/// as Linux netback does not check them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CtrlOp {
    /// `GET_HASH_FLAGS`: answer with the supported hash types.
    GetHashFlags,
    /// `SET_HASH_FLAGS`: `data[0]`, only known bits.
    SetHashFlags {
        /// The hash types to calculate (empty disables hashing).
        flags: HashTypes,
    },
    /// `SET_HASH_KEY`: copy `len <= max_hash_key_size` bytes from the start of `gref`.
    SetHashKey {
        /// `data[0]`, the page holding the key.
        gref: u32,
        /// `data[1]`, the key size in octets.
        len: u32,
    },
    /// `GET_HASH_MAPPING_SIZE`: answer with the largest table supported.
    GetHashMappingSize,
    /// `SET_HASH_MAPPING_SIZE`: `data[0] <= max_hash_mapping_size` entries.
    SetHashMappingSize {
        /// The new table size in entries (0: modular arithmetic).
        size: u32,
    },
    /// `SET_HASH_MAPPING`: copy `len` entries from the start of `gref` to `off` in the table;
    /// `off + len` does not overflow, is within the current table, and `len` fits in one page. Validate
    /// the copied entries with [`validate_hash_mapping`].
    SetHashMapping {
        /// `data[0]`, the page holding the (sub-)table.
        gref: u32,
        /// `data[1]`, the number of entries.
        len: u32,
        /// `data[2]`, the first entry written.
        off: u32,
    },
    /// `SET_HASH_ALGORITHM`: `data[0]`.
    SetHashAlgorithm {
        /// The algorithm.
        algorithm: HashAlgorithm,
    },
    /// `GET_GREF_MAPPING_SIZE`: `data[0]` is a queue below `num_queues`.
    GetGrefMappingSize {
        /// The queue.
        queue: u32,
    },
    /// `ADD_GREF_MAPPING`: map the `count` [`XenNetifGref`] entries listed in page `gref`.
    AddGrefMapping {
        /// `data[0]`, a queue below `num_queues`.
        queue: u32,
        /// `data[1]`, the page holding the list.
        gref: u32,
        /// `data[2]`, entries in the list (at most [`GREF_MAPPING_ENTRIES_PER_PAGE`]).
        count: u32,
    },
    /// `DEL_GREF_MAPPING`: unmap the `count` entries listed in page `gref`.
    DelGrefMapping {
        /// `data[0]`, a queue below `num_queues`.
        queue: u32,
        /// `data[1]`, the page holding the list.
        gref: u32,
        /// `data[2]`, entries in the list (at most [`GREF_MAPPING_ENTRIES_PER_PAGE`]).
        count: u32,
    },
}

impl CtrlOp {
    /// The request type.
    pub const fn ctrl_type(&self) -> CtrlType {
        match self {
            Self::GetHashFlags => CtrlType::GetHashFlags,
            Self::SetHashFlags { .. } => CtrlType::SetHashFlags,
            Self::SetHashKey { .. } => CtrlType::SetHashKey,
            Self::GetHashMappingSize => CtrlType::GetHashMappingSize,
            Self::SetHashMappingSize { .. } => CtrlType::SetHashMappingSize,
            Self::SetHashMapping { .. } => CtrlType::SetHashMapping,
            Self::SetHashAlgorithm { .. } => CtrlType::SetHashAlgorithm,
            Self::GetGrefMappingSize { .. } => CtrlType::GetGrefMappingSize,
            Self::AddGrefMapping { .. } => CtrlType::AddGrefMapping,
            Self::DelGrefMapping { .. } => CtrlType::DelGrefMapping,
        }
    }

    /// The wire request for this operation with identifier `id` (a front end's view); unused `data[]`
    /// words are zero.
    pub const fn to_request(&self, id: u16) -> XenNetifCtrlRequest {
        let (ty, data) = match *self {
            Self::GetHashFlags => (XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [0; 3]),
            Self::SetHashFlags { flags } => {
                (XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [flags.bits(), 0, 0])
            }
            Self::SetHashKey { gref, len } => (XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [gref, len, 0]),
            Self::GetHashMappingSize => (XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, [0; 3]),
            Self::SetHashMappingSize { size } => {
                (XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [size, 0, 0])
            }
            Self::SetHashMapping { gref, len, off } => {
                (XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [gref, len, off])
            }
            Self::SetHashAlgorithm { algorithm } => (
                XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
                [algorithm as u32, 0, 0],
            ),
            Self::GetGrefMappingSize { queue } => {
                (XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE, [queue, 0, 0])
            }
            Self::AddGrefMapping { queue, gref, count } => {
                (XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING, [queue, gref, count])
            }
            Self::DelGrefMapping { queue, gref, count } => {
                (XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING, [queue, gref, count])
            }
        };
        XenNetifCtrlRequest {
            id,
            r#type: ty,
            data,
        }
    }
}

impl XenNetifCtrlRequest {
    /// A request from its fields.
    pub const fn new(id: u16, ctrl_type: u16, data: [u32; 3]) -> Self {
        Self {
            id,
            r#type: ctrl_type,
            data,
        }
    }

    /// The request in the bytes of a control ring slot (fields in native byte order).
    pub fn from_ne_bytes(bytes: [u8; 16]) -> Self {
        zerocopy::transmute!(bytes)
    }

    /// Validates a copied control request against `limits` and decodes it. Answer a failure with
    /// [`XenNetifCtrlResponse::from_result`] (its status is [`NetifError::ctrl_status`]).
    pub fn validate(&self, limits: &CtrlLimits) -> Result<CtrlOp, NetifError> {
        let [d0, d1, d2] = self.data;
        let queue_ok = |queue: u32| {
            if queue < limits.num_queues {
                Ok(queue)
            } else {
                Err(NetifError::CtrlQueueOutOfRange {
                    queue,
                    num_queues: limits.num_queues,
                })
            }
        };
        let gref_list_ok = |count: u32| {
            if count <= GREF_MAPPING_ENTRIES_PER_PAGE {
                Ok(count)
            } else {
                Err(NetifError::GrefListTooLarge {
                    count,
                    max: GREF_MAPPING_ENTRIES_PER_PAGE,
                })
            }
        };
        Ok(match CtrlType::try_from(self.r#type)? {
            CtrlType::GetHashFlags => CtrlOp::GetHashFlags,
            CtrlType::SetHashFlags => {
                let flags =
                    HashTypes::from_bits(d0).ok_or(NetifError::UnknownHashFlags { flags: d0 })?;
                CtrlOp::SetHashFlags { flags }
            }
            CtrlType::SetHashKey => {
                if d1 > limits.max_hash_key_size {
                    return Err(NetifError::HashKeyTooLarge {
                        len: d1,
                        max: limits.max_hash_key_size,
                    });
                }
                CtrlOp::SetHashKey { gref: d0, len: d1 }
            }
            CtrlType::GetHashMappingSize => CtrlOp::GetHashMappingSize,
            CtrlType::SetHashMappingSize => {
                if d0 > limits.max_hash_mapping_size {
                    return Err(NetifError::HashMappingSizeTooLarge {
                        size: d0,
                        max: limits.max_hash_mapping_size,
                    });
                }
                CtrlOp::SetHashMappingSize { size: d0 }
            }
            CtrlType::SetHashMapping => {
                let (gref, len, off) = (d0, d1, d2);
                if len > HASH_MAPPING_ENTRIES_PER_PAGE {
                    return Err(NetifError::HashMappingLenTooLarge {
                        len,
                        max: HASH_MAPPING_ENTRIES_PER_PAGE,
                    });
                }
                let end = off
                    .checked_add(len)
                    .ok_or(NetifError::HashMappingOffsetOverflow { off, len })?;
                if end > limits.hash_mapping_size {
                    return Err(NetifError::HashMappingOutOfTable {
                        off,
                        len,
                        size: limits.hash_mapping_size,
                    });
                }
                CtrlOp::SetHashMapping { gref, len, off }
            }
            CtrlType::SetHashAlgorithm => CtrlOp::SetHashAlgorithm {
                algorithm: HashAlgorithm::try_from(d0)?,
            },
            CtrlType::GetGrefMappingSize => CtrlOp::GetGrefMappingSize {
                queue: queue_ok(d0)?,
            },
            CtrlType::AddGrefMapping => CtrlOp::AddGrefMapping {
                queue: queue_ok(d0)?,
                gref: d1,
                count: gref_list_ok(d2)?,
            },
            CtrlType::DelGrefMapping => CtrlOp::DelGrefMapping {
                queue: queue_ok(d0)?,
                gref: d1,
                count: gref_list_ok(d2)?,
            },
        })
    }
}

impl XenNetifCtrlResponse {
    /// The response to `request`: `SUCCESS` with `data` for `Ok(data)`, the error's
    /// [`ctrl_status`](NetifError::ctrl_status) with data 0 for an error.
    pub const fn from_result(
        request: &XenNetifCtrlRequest,
        result: Result<u32, NetifError>,
    ) -> Self {
        match result {
            Ok(data) => Self::new(request, CtrlStatus::Success, data),
            Err(e) => Self::new(request, e.ctrl_status(), 0),
        }
    }
}

/// Validates a mapping (sub-)table the back end copied from the front end's page: every entry must name
/// a queue below `num_queues` (`io/netif.h`, `SET_HASH_MAPPING`). Bounded by `mapping.len()`.
pub fn validate_hash_mapping(mapping: &[u32], num_queues: u32) -> Result<(), NetifError> {
    match mapping.iter().position(|&queue| queue >= num_queues) {
        None => Ok(()),
        Some(index) => Err(NetifError::HashMappingQueueOutOfRange {
            index,
            queue: mapping.get(index).copied().unwrap_or(0),
            num_queues,
        }),
    }
}

/// As [`validate_hash_mapping`], on the copied bytes of the page (native-endian `u32` entries) for a
/// request of `len` entries; returns the entries' bytes. At most [`HASH_MAPPING_ENTRIES_PER_PAGE`]
/// entries are looked at.
pub fn validate_hash_mapping_bytes(
    bytes: &[u8],
    len: u32,
    num_queues: u32,
) -> Result<&[u8], NetifError> {
    if len > HASH_MAPPING_ENTRIES_PER_PAGE {
        return Err(NetifError::HashMappingLenTooLarge {
            len,
            max: HASH_MAPPING_ENTRIES_PER_PAGE,
        });
    }
    let n = len as usize * size_of::<u32>();
    let table = bytes.get(..n).ok_or(NetifError::HashMappingBytesTooShort {
        len,
        bytes: bytes.len(),
    })?;
    for (index, chunk) in table.chunks_exact(size_of::<u32>()).enumerate() {
        // `chunks_exact` yields 4-byte chunks only.
        let queue = u32::from_ne_bytes(<[u8; 4]>::try_from(chunk).unwrap_or([0; 4]));
        if queue >= num_queues {
            return Err(NetifError::HashMappingQueueOutOfRange {
                index,
                queue,
                num_queues,
            });
        }
    }
    Ok(table)
}

/// The Toeplitz hash of `buf` under `key`, as `xen_netif_toeplitz_hash` in `io/netif.h` computes it (key
/// octets beyond `key.len()` count as zero). Use it to check or compute the value of a hash extra with
/// [`HashAlgorithm::Toeplitz`]. Bounded by `buf.len()`; never panics.
#[doc(alias = "xen_netif_toeplitz_hash")]
pub fn toeplitz_hash(key: &[u8], buf: &[u8]) -> u32 {
    let key_byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    // The left-most 64 bits of the key register; the upper 32 are the "left-most 32 bits of Key[]".
    let mut window: u64 = (0..8).fold(0, |acc, i| (acc << 8) | key_byte(i));
    let mut next_key = 8usize;
    let mut hash: u64 = 0;
    for &byte in buf {
        for bit in (0..8).rev() {
            if byte & (1 << bit) != 0 {
                hash ^= window;
            }
            window <<= 1;
        }
        window |= key_byte(next_key);
        next_key = next_key.saturating_add(1);
    }
    (hash >> 32) as u32
}
