//! Memory the driver shares with a device: a memfd mapped through `vm-memory`.
//!
//! Descriptors carry addresses in this memory's *guest physical* space (a [`GuestAddress`]). With
//! vhost-user, the memfd is handed to the device in `VHOST_USER_SET_MEM_TABLE`, so the device maps
//! the very same pages: no copy between driver and device.
//!
//! [`DmaMemory`] owns one memfd region and hands out page-aligned chunks of it with a bump
//! allocator. Chunks are never freed: a driver allocates its rings, request headers and bounce
//! buffers once, at set-up.
//!
//! It can also map memory the driver does not own, such as a guest's memory (a memfd or file
//! the VMM shares): [`DmaMemory::with_foreign_regions`]. Those regions are shared with the device
//! too, so a back-end can hand guest pages straight to it, without a copy.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// The page size every allocation is aligned to (the virtio split ring needs at most 16-byte
/// alignment; a page keeps each ring on its own pages).
pub const PAGE_SIZE: u64 = 4096;

/// Errors from [`DmaMemory`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `memfd_create` or `ftruncate` failed.
    #[error("cannot create a memfd of {size} bytes")]
    Memfd {
        /// The size asked for.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `vm-memory` could not map the memfd.
    #[error("cannot map the memfd of {size} bytes")]
    Map {
        /// The size asked for.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A size of 0, not a multiple of the page size, or too large.
    #[error("invalid memory size {0}: must be a non-zero multiple of {PAGE_SIZE}")]
    InvalidSize(u64),
    /// A foreign region of size 0, not page-aligned, or overlapping another region.
    #[error("invalid foreign region at {addr:#x} of {size} bytes")]
    InvalidRegion {
        /// Its address.
        addr: u64,
        /// Its size.
        size: usize,
    },
    /// The bump allocator ran out of room.
    #[error("out of DMA memory: asked for {asked} bytes, {left} left")]
    OutOfMemory {
        /// Bytes asked for (rounded up to a page).
        asked: u64,
        /// Bytes left.
        left: u64,
    },
}

/// Memory the driver does not own, to share with the device: `size` bytes of `file` from
/// `offset`, at `addr` in the address space descriptors use.
#[derive(Debug)]
pub struct ForeignRegion {
    /// Where descriptors address it (for a guest's memory: its guest physical address).
    pub addr: GuestAddress,
    /// The file (usually a memfd) holding it; must be mappable shared.
    pub file: File,
    /// Offset in the file.
    pub offset: u64,
    /// Size in bytes (a multiple of the page size).
    pub size: usize,
}

/// Memory shared with a device: one memfd, mapped at [`DmaMemory::base`] in the address space that
/// descriptors use, plus any foreign regions.
#[derive(Debug)]
pub struct DmaMemory {
    mem: Arc<GuestMemoryMmap>,
    base: GuestAddress,
    size: u64,
    next: Mutex<u64>,
}

impl DmaMemory {
    /// The guest physical address the region starts at. It is not 0, so that a zeroed descriptor
    /// never points at valid memory.
    pub const DEFAULT_BASE: GuestAddress = GuestAddress(0x1_0000_0000);

    /// Creates `size` bytes of shared memory backed by a fresh memfd, at [`Self::DEFAULT_BASE`].
    pub fn new(size: u64) -> Result<Self, Error> {
        Self::with_foreign_regions(size, Vec::new())
    }

    /// Like [`Self::new`], and also maps `foreign` regions (not allocated from; buffers there are
    /// given to the device as they are). Regions may not overlap each other or the driver's own.
    pub fn with_foreign_regions(size: u64, foreign: Vec<ForeignRegion>) -> Result<Self, Error> {
        if size == 0 || size % PAGE_SIZE != 0 || size > isize::MAX as u64 {
            return Err(Error::InvalidSize(size));
        }
        // SAFETY: the name is a NUL-terminated C string; the flags are valid. The result is
        // checked below.
        let fd = unsafe { libc::memfd_create(c"blanket-virtio".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Memfd {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|source| Error::Memfd { size, source })?;
        let base = Self::DEFAULT_BASE;
        let mut ranges = vec![(base, size as usize, Some(FileOffset::new(file, 0)))];
        for r in foreign {
            if r.size == 0
                || r.size as u64 % PAGE_SIZE != 0
                || r.addr.0 % PAGE_SIZE != 0
                || r.offset % PAGE_SIZE != 0
                || r.addr.0.checked_add(r.size as u64).is_none()
            {
                return Err(Error::InvalidRegion {
                    addr: r.addr.0,
                    size: r.size,
                });
            }
            ranges.push((r.addr, r.size, Some(FileOffset::new(r.file, r.offset))));
        }
        ranges.sort_by_key(|r| r.0);
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|source| Error::Map { size, source })?;
        Ok(DmaMemory {
            mem: Arc::new(mem),
            base,
            size,
            next: Mutex::new(0),
        })
    }

    /// The `vm-memory` view of this memory (shared with transports and in-process devices).
    pub fn guest_memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.mem
    }

    /// The first address of the region.
    pub fn base(&self) -> GuestAddress {
        self.base
    }

    /// The region's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Allocates `len` bytes, rounded up to whole pages, page-aligned and zeroed (a fresh memfd
    /// reads as zeroes and chunks are never reused).
    pub fn alloc(&self, len: u64) -> Result<GuestAddress, Error> {
        let pages = len.max(1).div_ceil(PAGE_SIZE);
        let asked = pages.saturating_mul(PAGE_SIZE);
        // A poisoned lock only means another thread panicked while holding a u64: the value is
        // still consistent.
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let left = self.size - *next;
        if asked > left {
            return Err(Error::OutOfMemory { asked, left });
        }
        let addr = GuestAddress(self.base.0 + *next);
        *next += asked;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> File {
        let f = tempfile_in_memory();
        f.set_len(size).unwrap();
        f
    }

    fn tempfile_in_memory() -> File {
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        unsafe { File::from_raw_fd(fd) }
    }

    #[test]
    fn allocation_is_page_aligned_and_bounded() {
        let m = DmaMemory::new(4 * PAGE_SIZE).unwrap();
        let a = m.alloc(1).unwrap();
        let b = m.alloc(PAGE_SIZE + 1).unwrap();
        assert_eq!(a, m.base());
        assert_eq!(b.0, m.base().0 + PAGE_SIZE);
        assert!(matches!(
            m.alloc(2 * PAGE_SIZE),
            Err(Error::OutOfMemory { left: 4096, .. })
        ));
        assert!(matches!(DmaMemory::new(0), Err(Error::InvalidSize(0))));
        assert!(matches!(DmaMemory::new(100), Err(Error::InvalidSize(100))));
    }

    #[test]
    fn foreign_regions_are_checked() {
        let region = |addr, size| ForeignRegion {
            addr: GuestAddress(addr),
            file: file(1 << 20),
            offset: 0,
            size,
        };
        let m = DmaMemory::with_foreign_regions(PAGE_SIZE, vec![region(0, 1 << 20)]).unwrap();
        assert_eq!(
            vm_memory::GuestMemoryBackend::num_regions(&**m.guest_memory()),
            2
        );
        assert!(matches!(
            DmaMemory::with_foreign_regions(PAGE_SIZE, vec![region(0, 100)]),
            Err(Error::InvalidRegion { .. })
        ));
        assert!(matches!(
            DmaMemory::with_foreign_regions(PAGE_SIZE, vec![region(!4095, 8192)]),
            Err(Error::InvalidRegion { .. })
        ));
        // Overlapping the driver's own region.
        assert!(matches!(
            DmaMemory::with_foreign_regions(
                PAGE_SIZE,
                vec![region(DmaMemory::DEFAULT_BASE.0, 1 << 20)]
            ),
            Err(Error::Map { .. })
        ));
    }
}
