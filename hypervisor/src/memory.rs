//! Guest memory: one `vm-memory` region over a memfd.
//!
//! The memfd is sized with `ftruncate` and mapped `MAP_SHARED | MAP_NORESERVE`, so a guest costs the host only
//! the pages it (or the domain builder) touched. The same file can later be handed to a vhost-user device or to
//! migration, which map it themselves.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
};

/// The guest page size (4 KiB), the unit of frames, `nr_pages` and page tables.
pub const PAGE_SIZE: u64 = 4096;

/// The errors of guest-memory handling.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero, not a multiple of 4 KiB, or above [`MAX_GUEST_MEMORY`].
    #[error(
        "guest memory size {0:#x} bytes is invalid: it must be a non-zero multiple of 4096 of at most {MAX_GUEST_MEMORY:#x}"
    )]
    BadSize(u64),
    /// `memfd_create` or `ftruncate` failed.
    #[error("creating the guest-memory memfd of {size:#x} bytes failed")]
    Memfd {
        /// The size asked for.
        size: u64,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("mapping {size:#x} bytes of guest memory failed")]
    Mmap {
        /// The size asked for.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A guest-physical range that is not inside guest memory.
    #[error(
        "guest-physical range {addr:#x}+{len:#x} is outside the guest's {size:#x} bytes of memory"
    )]
    OutOfRange {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
        /// The guest's memory size.
        size: u64,
    },
}

/// The largest guest memory this crate builds page tables for (64 GiB: the page-table builder covers it with
/// one L3 table per 512 GiB, so this is a policy bound, not a format one).
pub const MAX_GUEST_MEMORY: u64 = 64 << 30;

/// A guest's memory: one region at guest-physical 0, backed by a memfd.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    file: std::sync::Arc<File>,
}

impl GuestRam {
    /// Creates `size` bytes of zeroed, sparse guest memory named `name` (shown in `/proc/PID/maps`).
    pub fn new(name: &str, size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % PAGE_SIZE != 0 || size > MAX_GUEST_MEMORY {
            return Err(MemoryError::BadSize(size));
        }
        let cname = std::ffi::CString::new(format!("blanket-{}", name.replace('\0', "?")))
            .unwrap_or_else(|_| c"blanket-guest".to_owned());
        // SAFETY: memfd_create reads a NUL-terminated string we own and returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Memfd {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a freshly created, valid file descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|source| MemoryError::Memfd { size, source })?;
        let file = std::sync::Arc::new(file);
        let region = GuestRegionMmap::from_range(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::from_arc(file.clone(), 0)),
        )
        .map_err(|source| MemoryError::Mmap { size, source })?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| MemoryError::Mmap {
            size,
            source: e.into(),
        })?;
        Ok(Self { mem, size, file })
    }

    /// The `vm-memory` view of the guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The size of guest memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The number of 4 KiB frames.
    pub fn nr_pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// The memfd behind guest memory (to share it with a device or a migration stream).
    pub fn file(&self) -> &std::sync::Arc<File> {
        &self.file
    }

    /// The host address of guest-physical 0 (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_base(&self) -> *mut u8 {
        // The only region starts at 0 and covers all of memory: checked in `new`.
        self.mem
            .iter()
            .next()
            .map(|r| r.as_ptr())
            .unwrap_or(std::ptr::null_mut())
    }

    /// Checks that `addr..addr+len` lies inside guest memory.
    pub fn check_range(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        match addr.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemoryError::OutOfRange {
                addr,
                len,
                size: self.size,
            }),
        }
    }

    /// Copies `buf.len()` bytes out of guest memory at `addr` (one copy: validate the copy, not the source).
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check_range(addr, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len() as u64,
                size: self.size,
            })
    }

    /// Copies `buf` into guest memory at `addr`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.check_range(addr, buf.len() as u64)?;
        self.mem
            .write_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len() as u64,
                size: self.size,
            })
    }

    /// Reads a plain-data value at `addr`.
    pub fn read_obj<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        addr: u64,
    ) -> Result<T, MemoryError> {
        let mut v = T::new_zeroed();
        self.read(addr, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain-data value at `addr`.
    pub fn write_obj<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &self,
        addr: u64,
        value: &T,
    ) -> Result<(), MemoryError> {
        self.write(addr, value.as_bytes())
    }

    /// Reads a little-endian `u64` at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64` at `addr`.
    pub fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Gives the memory of `addr..addr+len` back to the host (`fallocate(PUNCH_HOLE)` on the memfd): it
    /// reads as zero afterwards and costs nothing until written again. Page-aligned ranges only.
    pub fn discard(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        self.check_range(addr, len)?;
        if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(MemoryError::OutOfRange {
                addr,
                len,
                size: self.size,
            });
        }
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on our own memfd, inside its size (checked); no memory is accessed here.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                addr as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(MemoryError::Memfd {
                size: self.size,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A raw host pointer to `len` bytes at guest-physical `addr`, after a bounds check. Used for the
    /// shared_info page, whose fields the hypervisor and the guest update with atomics.
    pub fn host_ptr(&self, addr: u64, len: u64) -> Result<*mut u8, MemoryError> {
        self.check_range(addr, len)?;
        // SAFETY: addr + len <= size was checked just above, and the mapping covers [0, size).
        Ok(unsafe { self.host_base().add(addr as usize) })
    }
}
