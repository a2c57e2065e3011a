//! Pure helpers for the two byte rings of the XenStore page (`docs/misc/xenstore-ring.txt`).
//!
//! Each ring is [`XENSTORE_RING_SIZE`] bytes with a free-running `u32` producer and consumer index: the
//! byte at stream offset `x` lives at `x mod 1024`, and `prod - cons` (wrapping) bytes are unconsumed.
//! The helpers take index values the caller copied out of the page once, and ring bytes the caller
//! copied (or a `&mut` to the ring to write into); a peer whose indices claim more than 1024 bytes gets
//! [`XsWireError::RingIndexOverflow`] (what xenstored reports as `XENSTORE_ERROR_RINGIDX`).
#![forbid(unsafe_code)]

use core::ops::Range;

use super::{XENSTORE_RING_SIZE, XenstoreRingIdx, XsWireError, mask_xenstore_idx};

/// The number of unconsumed bytes, `prod - cons` (wrapping), or an error if it exceeds the ring size.
pub const fn ring_used(cons: XenstoreRingIdx, prod: XenstoreRingIdx) -> Result<u32, XsWireError> {
    let used = prod.wrapping_sub(cons);
    if used > XENSTORE_RING_SIZE {
        Err(XsWireError::RingIndexOverflow {
            cons,
            prod,
            used,
            size: XENSTORE_RING_SIZE,
        })
    } else {
        Ok(used)
    }
}

/// The number of bytes a producer may still write, `XENSTORE_RING_SIZE - (prod - cons)`.
pub const fn ring_free(cons: XenstoreRingIdx, prod: XenstoreRingIdx) -> Result<u32, XsWireError> {
    match ring_used(cons, prod) {
        Ok(used) => Ok(XENSTORE_RING_SIZE - used),
        Err(e) => Err(e),
    }
}

/// The contiguous part of the ring a consumer can read now: from `MASK_XENSTORE_IDX(cons)` up to the
/// end of the ring or the producer, whichever comes first (Linux's `get_input_chunk`). Empty when the
/// ring is empty; read again after advancing `cons` to get the part that wrapped.
pub const fn input_chunk(
    cons: XenstoreRingIdx,
    prod: XenstoreRingIdx,
) -> Result<Range<usize>, XsWireError> {
    let used = match ring_used(cons, prod) {
        Ok(used) => used,
        Err(e) => return Err(e),
    };
    let start = mask_xenstore_idx(cons);
    let to_end = XENSTORE_RING_SIZE - start;
    let len = if used < to_end { used } else { to_end };
    Ok(start as usize..(start + len) as usize)
}

/// The contiguous part of the ring a producer can write now: from `MASK_XENSTORE_IDX(prod)` up to the
/// end of the ring or the consumer, whichever comes first (Linux's `get_output_chunk`).
pub const fn output_chunk(
    cons: XenstoreRingIdx,
    prod: XenstoreRingIdx,
) -> Result<Range<usize>, XsWireError> {
    let free = match ring_free(cons, prod) {
        Ok(free) => free,
        Err(e) => return Err(e),
    };
    let start = mask_xenstore_idx(prod);
    let to_end = XENSTORE_RING_SIZE - start;
    let len = if free < to_end { free } else { to_end };
    Ok(start as usize..(start + len) as usize)
}

/// Copies up to `out.len()` unconsumed bytes out of a copy of a ring, handling the wrap, and returns how
/// many were copied; the caller then publishes `cons + n` (wrapping).
pub fn copy_from_ring(
    ring: &[u8; XENSTORE_RING_SIZE as usize],
    cons: XenstoreRingIdx,
    prod: XenstoreRingIdx,
    out: &mut [u8],
) -> Result<usize, XsWireError> {
    let mut done = 0usize;
    let mut cons = cons;
    // At most two chunks: up to the end of the ring, then from its start.
    for _ in 0..2 {
        let chunk = input_chunk(cons, prod)?;
        let want = out.len() - done;
        let n = chunk.len().min(want);
        if n == 0 {
            break;
        }
        let (Some(src), Some(dst)) = (
            ring.get(chunk.start..chunk.start + n),
            out.get_mut(done..done + n),
        ) else {
            break;
        };
        dst.copy_from_slice(src);
        done += n;
        cons = cons.wrapping_add(n as u32);
    }
    Ok(done)
}

/// Copies as much of `data` as fits into a ring, handling the wrap, and returns how many bytes were
/// written; the caller then publishes `prod + n` (wrapping), after a write barrier.
pub fn copy_to_ring(
    ring: &mut [u8; XENSTORE_RING_SIZE as usize],
    cons: XenstoreRingIdx,
    prod: XenstoreRingIdx,
    data: &[u8],
) -> Result<usize, XsWireError> {
    let mut done = 0usize;
    let mut prod = prod;
    for _ in 0..2 {
        let chunk = output_chunk(cons, prod)?;
        let want = data.len() - done;
        let n = chunk.len().min(want);
        if n == 0 {
            break;
        }
        let (Some(dst), Some(src)) = (
            ring.get_mut(chunk.start..chunk.start + n),
            data.get(done..done + n),
        ) else {
            break;
        };
        dst.copy_from_slice(src);
        done += n;
        prod = prod.wrapping_add(n as u32);
    }
    Ok(done)
}
