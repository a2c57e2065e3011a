//! Byte copies between private buffers and shared memory the peer writes concurrently: volatile, one pass,
//! bounds-checked against the memory's length.

use xen_abi::ring::RingMemory;

/// Copies `out.len()` bytes at `offset` of `mem` into `out`; copies nothing and returns false if the range
/// is not inside `mem`.
pub(crate) fn read<M: RingMemory + ?Sized>(mem: &M, offset: usize, out: &mut [u8]) -> bool {
    match offset.checked_add(out.len()) {
        Some(end) if end <= mem.len() => {}
        _ => return false,
    }
    let base = mem.as_ptr();
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: `offset + i < mem.len()` (checked above); `RingMemory` promises the memory is valid for
        // volatile reads while `mem` lives.
        *o = unsafe { base.add(offset + i).read_volatile() };
    }
    true
}

/// Copies `data` into `mem` at `offset`; writes nothing and returns false if the range is not inside `mem`.
pub(crate) fn write<M: RingMemory + ?Sized>(mem: &M, offset: usize, data: &[u8]) -> bool {
    match offset.checked_add(data.len()) {
        Some(end) if end <= mem.len() => {}
        _ => return false,
    }
    let base = mem.as_ptr();
    for (i, d) in data.iter().enumerate() {
        // SAFETY: `offset + i < mem.len()` (checked above); `RingMemory` promises the memory is valid for
        // volatile writes while `mem` lives.
        unsafe { base.add(offset + i).write_volatile(*d) };
    }
    mem.mark_dirty(offset, data.len());
    true
}

/// The `u32` at `offset` (4-byte aligned, inside `mem`) as an atomic.
///
/// # Panics
///
/// Never for the constant offsets the drivers use on pages of at least 4096 bytes; a misuse would panic
/// rather than touch memory out of bounds.
pub(crate) fn atomic_u32<M: RingMemory + ?Sized>(
    mem: &M,
    offset: usize,
) -> &core::sync::atomic::AtomicU32 {
    assert!(offset % 4 == 0 && offset + 4 <= mem.len() && (mem.as_ptr() as usize) % 4 == 0);
    // SAFETY: in bounds and aligned (asserted); `RingMemory` promises atomic access is valid for as long
    // as `mem` lives, which the returned reference's lifetime is tied to.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(offset).cast::<u32>()) }
}
