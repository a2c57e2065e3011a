//! The PV console page of `io/console.h`: two byte rings with free-running `u32` indices.
//!
//! `in` carries bytes to the guest (keyboard input, written by the back end), `out` carries the
//! guest's output (read by the back end, xenconsoled). The byte at stream index `x` lives at
//! `x mod size` of its ring (`MASK_XENCONS_IDX`), and `prod - cons` (wrapping) bytes are unconsumed.
//!
//! The helpers here are pure: they take index values copied once from the page and a copy of the ring
//! bytes (or a `&mut` ring to write into). A peer whose indices claim more bytes than the ring holds gets
//! [`ConsoleError::RingIndexOverflow`], never a read outside the ring. Rate-limiting output floods, as
//! xenconsoled does, is the back end's job.
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XENCONS_RING_IDX` (`io/console.h`): a free-running byte index.
pub type XenconsRingIdx = u32;

/// The size of the `in` ring, `sizeof(((struct xencons_interface *)0)->in)`. No named C constant.
pub const XENCONS_IN_SIZE: u32 = 1024;
/// The size of the `out` ring, `sizeof(((struct xencons_interface *)0)->out)`. No named C constant.
pub const XENCONS_OUT_SIZE: u32 = 2048;

/// `MASK_XENCONS_IDX(idx, ring)` (`io/console.h`) for a ring of `size` bytes (a power of two): the
/// offset of stream index `idx` in the ring.
pub const fn mask_xencons_idx(idx: XenconsRingIdx, size: u32) -> u32 {
    idx & size.wrapping_sub(1)
}

/// The console page: `struct xencons_interface` in `io/console.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenconsInterface {
    /// Bytes to the guest (`in`; `r#in` because `in` is a Rust keyword).
    pub r#in: [u8; XENCONS_IN_SIZE as usize],
    /// Bytes from the guest.
    pub out: [u8; XENCONS_OUT_SIZE as usize],
    /// The guest's consumer index into `in`.
    pub in_cons: XenconsRingIdx,
    /// The back end's producer index into `in`.
    pub in_prod: XenconsRingIdx,
    /// The back end's consumer index into `out`.
    pub out_cons: XenconsRingIdx,
    /// The guest's producer index into `out`.
    pub out_prod: XenconsRingIdx,
}

/// What can be wrong with console ring indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// `prod - cons` (wrapping) is larger than the ring: hostile or corrupt indices.
    #[error("console ring indices prod {prod} - cons {cons} = {used} exceed the ring size {size}")]
    RingIndexOverflow {
        /// The consumer index.
        cons: u32,
        /// The producer index.
        prod: u32,
        /// `prod - cons`, wrapping.
        used: u32,
        /// The ring size.
        size: u32,
    },
    /// A ring whose size is not a power of two between 1 and 2^31 bytes.
    #[error("console ring of {size} bytes: the size must be a power of two of at most 2^31")]
    InvalidRingSize {
        /// The size given.
        size: usize,
    },
}

fn ring_size(len: usize) -> Result<u32, ConsoleError> {
    match u32::try_from(len) {
        Ok(size) if size.is_power_of_two() && size <= 1 << 31 => Ok(size),
        _ => Err(ConsoleError::InvalidRingSize { size: len }),
    }
}

/// The number of unconsumed bytes of a ring of `size` bytes, `prod - cons` (wrapping), or
/// [`ConsoleError::RingIndexOverflow`] if it exceeds `size`.
pub fn ring_used(
    size: u32,
    cons: XenconsRingIdx,
    prod: XenconsRingIdx,
) -> Result<u32, ConsoleError> {
    let size = ring_size(size as usize)?;
    let used = prod.wrapping_sub(cons);
    if used > size {
        return Err(ConsoleError::RingIndexOverflow {
            cons,
            prod,
            used,
            size,
        });
    }
    Ok(used)
}

/// The number of bytes a producer may still write into a ring of `size` bytes.
pub fn ring_free(
    size: u32,
    cons: XenconsRingIdx,
    prod: XenconsRingIdx,
) -> Result<u32, ConsoleError> {
    Ok(size - ring_used(size, cons, prod)?)
}

/// Copies up to `out.len()` unconsumed bytes out of a copy of a ring (`ring.len()` is its size, a power
/// of two), handling the wrap, and returns how many were copied; the consumer then publishes
/// `cons + n` (wrapping).
pub fn copy_from_ring(
    ring: &[u8],
    cons: XenconsRingIdx,
    prod: XenconsRingIdx,
    out: &mut [u8],
) -> Result<usize, ConsoleError> {
    let size = ring_size(ring.len())?;
    let used = ring_used(size, cons, prod)? as usize;
    let n = used.min(out.len());
    let start = mask_xencons_idx(cons, size) as usize;
    // Two pieces at most: up to the end of the ring, then from its start.
    let first = n.min(ring.len() - start);
    let pieces = [(start, 0, first), (0, first, n - first)];
    for (from, to, len) in pieces {
        if let (Some(src), Some(dst)) = (ring.get(from..from + len), out.get_mut(to..to + len)) {
            dst.copy_from_slice(src);
        }
    }
    Ok(n)
}

/// Copies as much of `data` as fits into a ring (`ring.len()` is its size, a power of two), handling
/// the wrap, and returns how many bytes were written; the producer then publishes `prod + n`
/// (wrapping), after a write barrier.
pub fn copy_to_ring(
    ring: &mut [u8],
    cons: XenconsRingIdx,
    prod: XenconsRingIdx,
    data: &[u8],
) -> Result<usize, ConsoleError> {
    let size = ring_size(ring.len())?;
    let free = ring_free(size, cons, prod)? as usize;
    let n = free.min(data.len());
    let start = mask_xencons_idx(prod, size) as usize;
    let first = n.min(ring.len() - start);
    let pieces = [(start, 0, first), (0, first, n - first)];
    for (to, from, len) in pieces {
        if let (Some(dst), Some(src)) = (ring.get_mut(to..to + len), data.get(from..from + len)) {
            dst.copy_from_slice(src);
        }
    }
    Ok(n)
}

impl XenconsInterface {
    /// The number of bytes of guest output waiting in `out`, from this snapshot's indices.
    pub fn out_used(&self) -> Result<u32, ConsoleError> {
        ring_used(XENCONS_OUT_SIZE, self.out_cons, self.out_prod)
    }

    /// The number of input bytes waiting in `in` for the guest, from this snapshot's indices.
    pub fn in_used(&self) -> Result<u32, ConsoleError> {
        ring_used(XENCONS_IN_SIZE, self.in_cons, self.in_prod)
    }

    /// Copies guest output out of this snapshot (from `out_cons` to `out_prod`, with wrap) into `buf`,
    /// returning the number of bytes; the back end then publishes `out_cons + n`.
    pub fn read_out(&self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        copy_from_ring(&self.out, self.out_cons, self.out_prod, buf)
    }

    /// Copies input for the guest out of this snapshot (from `in_cons` to `in_prod`), as a guest's
    /// console driver does; returns the number of bytes.
    pub fn read_in(&self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        copy_from_ring(&self.r#in, self.in_cons, self.in_prod, buf)
    }
}
