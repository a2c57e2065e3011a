//! blkback: the back end of Xen's block device protocol (`io/blkif.h`) over any [`BlockDevice`].
//!
//! - [`BlkBack`] is the [`XenbusDevice`](crate::backend::XenbusDevice) that a
//!   [`XenbusBackend`](crate::backend::XenbusBackend) drives through the handshake. It offers read, write,
//!   `feature-flush-cache`, `feature-barrier`, `feature-discard` (with `discard-granularity` and
//!   `discard-alignment`), `feature-max-indirect-segments`, `feature-persistent`, `max-ring-page-order` and
//!   `multi-queue-max-queues`, and publishes `sectors`, `info` (read-only vbds), `sector-size` and
//!   `physical-sector-size`. Front ends may speak the native, `x86_64-abi` or `x86_32-abi` protocol.
//! - [`QueueServer`] serves one ring: each request is copied out of the ring once and checked with
//!   `xen_abi::blkif`'s validation; refused requests get `BLKIF_RSP_ERROR` or `BLKIF_RSP_EOPNOTSUPP`;
//!   responses are built zeroed and written whole into the slot. A barrier waits for the writes before
//!   it (not the reads), writes its data and flushes, and the writes after it wait for it (reads do
//!   not), as `io/blkif.h` says; a flush waits for nothing. A queue works while it has work and sleeps
//!   on its doorbell, after ring.h's final check, when it has none; responses are pushed with ring.h's
//!   notify check.
//! - [`InlineQueue`] ([`BlkConfig::inline`], from [`BlkBack::inline`]): the hypervisor's vCPU thread
//!   serves a queue that nobody else serves, on the guest's kick and while the guest blocks, sharing it
//!   with the queue thread (one server at a time, nothing lost at a handover).
//! - The bottom: [`BlockDevice`]/[`BlockQueue`] (batched submission, completions reaped later), with
//!   [`FileDevice`] (a raw image file or block device, `O_DIRECT` when possible, a thread pool) and
//!   [`MemDevice`] (memory).

mod back;
pub mod device;
pub mod file;
#[cfg(feature = "test-utils")]
pub mod front;
mod inline;
pub mod mem;
pub mod queue;
mod uring;

pub use back::{BlkBack, BlkConfig, BlkConnectError};
pub use device::{
    BlockDevice, BlockInfo, BlockQueue, FixedMemory, IoBuf, IoCompletion, IoOp, IoRequest,
};
pub use file::{FileDevice, FileOptions};
pub use inline::{InlineDevice, InlineQueue, InlineStats};
pub use mem::MemDevice;
pub use queue::{QueueError, QueueParams, QueueServer, QueueStats};

/// A map keyed by the tags blkback gives its own requests (a counter, never a guest's value): one
/// multiplication instead of SipHash per insert and removal. Keys a guest chooses (grant refs) go in
/// a [`GrefMap`].
pub(crate) type TagMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<TagHasher>>;

/// The hasher of [`TagMap`]: Fibonacci hashing of one `u64` (the high bits, which hashbrown uses
/// for its control bytes, take every bit of the key).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by grant references, which the guest chooses: hashed with a secret random seed per
/// map (a keyed 64-bit finalizer, two multiplications), so that a front end cannot pick references
/// that collide without knowing the seed, at a fraction of SipHash's cost (a 1 MiB request looks up
/// 256 persistent grants: SipHash was about a tenth of blkback's CPU for 1 MiB writes,
/// `perf record`). The persistent grants it holds are bounded (`max_persistent_grants`), so even
/// colliding keys cost a bounded walk.
pub(crate) type GrefMap<V> = std::collections::HashMap<u32, V, GrefHash>;

/// The [`std::hash::BuildHasher`] of [`GrefMap`]: a seed drawn from the standard library's random
/// keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrefHash {
    seed: u64,
}

impl Default for GrefHash {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x6772_6566_u64),
        }
    }
}

impl std::hash::BuildHasher for GrefHash {
    type Hasher = GrefHasher;
    fn build_hasher(&self) -> GrefHasher {
        GrefHasher(self.seed)
    }
}

/// The hasher of [`GrefMap`]: murmur3's 64-bit finalizer of the key mixed with the seed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrefHasher(u64);

impl std::hash::Hasher for GrefHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 ^= u64::from(n);
    }
}

#[cfg(test)]
mod gref_map_tests {
    use super::GrefMap;

    #[test]
    fn a_gref_map_finds_what_it_holds_and_seeds_differ() {
        let mut m: GrefMap<u32> = GrefMap::default();
        for g in (0..5000u32).map(|i| i.wrapping_mul(2_654_435_761)) {
            m.insert(g, !g);
        }
        for g in (0..5000u32).map(|i| i.wrapping_mul(2_654_435_761)) {
            assert_eq!(m.get(&g), Some(&!g));
        }
        assert_eq!(m.get(&7), None);
        use std::hash::BuildHasher;
        let (a, b) = (super::GrefHash::default(), super::GrefHash::default());
        assert_ne!(
            (0..4u32).map(|g| a.hash_one(g)).collect::<Vec<_>>(),
            (0..4u32).map(|g| b.hash_one(g)).collect::<Vec<_>>(),
            "each map has its own seed"
        );
    }
}
