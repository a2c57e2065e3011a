//! Memory the driver shares with a device: a memfd mapped through `vm-memory`.
//!
//! Descriptors carry addresses in this memory's *guest physical* space (a [`GuestAddress`]). With
//! vhost-user, the memfd is handed to the device in `VHOST_USER_SET_MEM_TABLE`, so the device maps
//! the very same pages: no copy between driver and device.
//!
//! [`DmaMemory`] owns one memfd region and hands out page-aligned chunks of it with a bump
//! allocator. Chunks are never freed: a driver allocates its rings, request headers and bounce
//! buffers once, at set-up.

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
    /// The bump allocator ran out of room.
    #[error("out of DMA memory: asked for {asked} bytes, {left} left")]
    OutOfMemory {
        /// Bytes asked for (rounded up to a page).
        asked: u64,
        /// Bytes left.
        left: u64,
    },
}

/// Memory shared with a device: one memfd, mapped at [`DmaMemory::base`] in the address space that
/// descriptors use.
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
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            base,
            size as usize,
            Some(FileOffset::new(file, 0)),
        )])
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
