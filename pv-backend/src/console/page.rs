//! The guest's console page (`struct xencons_interface`, `io/console.h`) seen through
//! [`RingMemory`]: raw shared memory, pages of this process, or `vm-memory` guest memory.
//!
//! Every access is an atomic load or store of one field, so the back end never holds a reference
//! to memory the guest writes concurrently. The indices are loaded once by the caller, checked
//! with [`xen_abi::console::ring_used`], and only then used to copy bytes, each masked into the
//! ring, so no index value can reach outside the page.

use std::mem::offset_of;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use xen_abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface, mask_xencons_idx};
use xen_abi::ring::RingMemory;

use super::ConsoleError;

const IN: usize = offset_of!(XenconsInterface, r#in);
const OUT: usize = offset_of!(XenconsInterface, out);
const IN_CONS: usize = offset_of!(XenconsInterface, in_cons);
const IN_PROD: usize = offset_of!(XenconsInterface, in_prod);
const OUT_CONS: usize = offset_of!(XenconsInterface, out_cons);
const OUT_PROD: usize = offset_of!(XenconsInterface, out_prod);

/// The bytes of `struct xencons_interface`; the memory must hold at least this many.
pub const XENCONS_INTERFACE_SIZE: usize = size_of::<XenconsInterface>();

/// One of the two index pairs of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleIndex {
    /// `in_cons`: the guest's consumer index of the input ring.
    InCons,
    /// `in_prod`: the back end's producer index of the input ring.
    InProd,
    /// `out_cons`: the back end's consumer index of the output ring.
    OutCons,
    /// `out_prod`: the guest's producer index of the output ring.
    OutProd,
}

impl ConsoleIndex {
    const fn offset(self) -> usize {
        match self {
            Self::InCons => IN_CONS,
            Self::InProd => IN_PROD,
            Self::OutCons => OUT_CONS,
            Self::OutProd => OUT_PROD,
        }
    }
}

/// A console page in memory that the guest shares with us.
#[derive(Debug)]
pub struct ConsolePage<M> {
    mem: M,
}

impl<M: RingMemory> ConsolePage<M> {
    /// Views `mem` as a console page. It must hold at least [`XENCONS_INTERFACE_SIZE`] bytes and be
    /// aligned to 4 (the indices are `u32`).
    pub fn new(mem: M) -> Result<Self, ConsoleError> {
        let len = mem.len();
        if len < XENCONS_INTERFACE_SIZE {
            return Err(ConsoleError::PageTooSmall {
                len,
                need: XENCONS_INTERFACE_SIZE,
            });
        }
        let addr = mem.as_ptr() as usize;
        if addr == 0 || addr % align_of::<u32>() != 0 {
            return Err(ConsoleError::PageMisaligned { addr });
        }
        Ok(Self { mem })
    }

    /// The memory the page lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn index(&self, which: ConsoleIndex) -> &AtomicU32 {
        // SAFETY: `new` checked that the memory holds the whole interface and is aligned to 4; the
        // index offsets are multiples of 4 inside it. `RingMemory`'s contract makes the memory valid
        // for atomic access for as long as `self.mem` lives, which the returned borrow cannot outlive,
        // and any bit pattern is a valid `AtomicU32`.
        unsafe { &*self.mem.as_ptr().add(which.offset()).cast::<AtomicU32>() }
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        debug_assert!(offset < XENCONS_INTERFACE_SIZE);
        // SAFETY: callers pass offsets inside the interface (ring base plus an index masked into the
        // ring), which `new` checked lies inside the memory; validity for atomic access for the
        // borrow's lifetime is `RingMemory`'s contract, and any byte is a valid `AtomicU8`.
        unsafe { &*self.mem.as_ptr().add(offset).cast::<AtomicU8>() }
    }

    /// Loads one index with acquire ordering (the bytes it covers are read after it).
    pub fn load(&self, which: ConsoleIndex) -> u32 {
        self.index(which).load(Ordering::Acquire)
    }

    /// Stores one index with release ordering (the bytes before it are visible first), and marks
    /// it dirty for live migration.
    pub fn store(&self, which: ConsoleIndex, value: u32) {
        self.index(which).store(value, Ordering::Release);
        self.mem.mark_dirty(which.offset(), size_of::<u32>());
    }

    /// Copies `buf.len()` bytes of the output ring from stream index `cons` on (wrapping). The
    /// caller has validated that they are between `out_cons` and `out_prod`.
    pub fn read_out(&self, cons: u32, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = mask_xencons_idx(cons.wrapping_add(i as u32), XENCONS_OUT_SIZE) as usize;
            *b = self.byte(OUT + at).load(Ordering::Relaxed);
        }
    }

    /// Copies `buf.len()` bytes of the input ring from stream index `cons` on (wrapping): what a
    /// guest's console driver does. For front-end helpers and tests.
    pub fn read_in(&self, cons: u32, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = mask_xencons_idx(cons.wrapping_add(i as u32), XENCONS_IN_SIZE) as usize;
            *b = self.byte(IN + at).load(Ordering::Relaxed);
        }
    }

    /// Writes `data` into the input ring from stream index `prod` on (wrapping), and marks it dirty.
    /// The caller has checked that it fits.
    pub fn write_in(&self, prod: u32, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = mask_xencons_idx(prod.wrapping_add(i as u32), XENCONS_IN_SIZE) as usize;
            self.byte(IN + at).store(*b, Ordering::Relaxed);
            self.mem.mark_dirty(IN + at, 1);
        }
    }

    /// Writes `data` into the output ring from stream index `prod` on (wrapping): what a guest's
    /// console driver does. For front-end helpers and tests.
    pub fn write_out(&self, prod: u32, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = mask_xencons_idx(prod.wrapping_add(i as u32), XENCONS_OUT_SIZE) as usize;
            self.byte(OUT + at).store(*b, Ordering::Relaxed);
            self.mem.mark_dirty(OUT + at, 1);
        }
    }
}
