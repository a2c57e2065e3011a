//! The PVH start-of-day structure: `struct hvm_start_info`, its module list and its memory map
//! (`arch-x86/hvm/start_info.h`; the file is `hvm/start_info.h` in Xen's tree).
//!
//! A PVH (or HVM direct-boot) guest finds the physical address of an [`HvmStartInfo`] in `%ebx`. All
//! addresses in it are physical, and 0 means "not present". [`HvmStartInfo::validate`] checks a copy:
//! the magic, the version, the module and memory-map counts against caller-given limits, and the array
//! ranges with checked arithmetic. [`HvmModlistEntry::validate`] and [`HvmMemmapTableEntry::validate`]
//! check one entry each.
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::hypercall::abi_enum;

/// The errors of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A magic other than `XEN_HVM_START_MAGIC_VALUE`.
    #[error("hvm_start_info magic {0:#010x} is not XEN_HVM_START_MAGIC_VALUE (0x336ec578)")]
    BadMagic(u32),
    /// `nr_modules` above the caller's limit.
    #[error("hvm_start_info nr_modules {nr_modules} is above the limit of {max}")]
    TooManyModules {
        /// The structure's `nr_modules`.
        nr_modules: u32,
        /// The limit.
        max: u32,
    },
    /// `memmap_entries` above the caller's limit.
    #[error("hvm_start_info memmap_entries {memmap_entries} is above the limit of {max}")]
    TooManyMemmapEntries {
        /// The structure's `memmap_entries`.
        memmap_entries: u32,
        /// The limit.
        max: u32,
    },
    /// Modules without a module list (`modlist_paddr == 0`).
    #[error("hvm_start_info has {0} modules but modlist_paddr is 0")]
    MissingModlist(u32),
    /// Memory-map entries without a memory map (`memmap_paddr == 0`).
    #[error("hvm_start_info has {0} memmap entries but memmap_paddr is 0")]
    MissingMemmap(u32),
    /// An array (module list or memory map) that runs past the end of the physical address space.
    #[error("{what} at {paddr:#x} with {count} entries of {entry_size} bytes ends past 2^64")]
    ArrayOverflow {
        /// `"module list"` or `"memory map"`.
        what: &'static str,
        /// The array's physical address.
        paddr: u64,
        /// The number of entries.
        count: u32,
        /// The size of one entry.
        entry_size: usize,
    },
    /// A version-1 field `reserved` that is not zero.
    #[error("hvm_start_info reserved field is {0:#x}, must be zero")]
    NonZeroReserved(u32),
    /// A module or memory region whose end does not fit in 64 bits.
    #[error("{what} at {addr:#x} of {size:#x} bytes ends past 2^64")]
    RangeOverflow {
        /// `"module"` or `"memory region"`.
        what: &'static str,
        /// The start address.
        addr: u64,
        /// The size.
        size: u64,
    },
    /// A memory-map type that `start_info.h` does not define.
    #[error("unknown memory map type {0} (start_info.h defines 1-7)")]
    UnknownMemmapType(u32),
    /// A memory-map entry with a non-zero `reserved` field.
    #[error("memory map entry reserved field is {0:#x}, must be zero in version 1")]
    NonZeroEntryReserved(u32),
}

/// The error of this module, under a name that says where it comes from.
pub type HvmStartInfoError = Error;

/// `XEN_HVM_START_MAGIC_VALUE` in `arch-x86/hvm/start_info.h`: `"xEn3"` with the 0x80 bit of the `E`
/// set.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Version 0 of `hvm_start_info`: no memory map. No C constant.
pub const HVM_START_INFO_VERSION_0: u32 = 0;
/// Version 1 of `hvm_start_info`: adds `memmap_paddr`, `memmap_entries` and `reserved`. No C constant.
pub const HVM_START_INFO_VERSION_1: u32 = 1;

/// `XEN_HVM_MEMMAP_TYPE_RAM` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_HVM_MEMMAP_TYPE_ACPI` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// `XEN_HVM_MEMMAP_TYPE_NVS` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// `XEN_HVM_MEMMAP_TYPE_UNUSABLE` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// `XEN_HVM_MEMMAP_TYPE_DISABLED` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// `XEN_HVM_MEMMAP_TYPE_PMEM` in `arch-x86/hvm/start_info.h`.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

abi_enum! {
    /// The type of a memory-map entry (`XEN_HVM_MEMMAP_TYPE_*`, the ACPI address range types).
    pub enum HvmMemmapType: u32, |raw| Error::UnknownMemmapType(raw);
    {
        /// `XEN_HVM_MEMMAP_TYPE_RAM`.
        Ram = XEN_HVM_MEMMAP_TYPE_RAM,
        /// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
        Reserved = XEN_HVM_MEMMAP_TYPE_RESERVED,
        /// `XEN_HVM_MEMMAP_TYPE_ACPI`.
        Acpi = XEN_HVM_MEMMAP_TYPE_ACPI,
        /// `XEN_HVM_MEMMAP_TYPE_NVS`.
        Nvs = XEN_HVM_MEMMAP_TYPE_NVS,
        /// `XEN_HVM_MEMMAP_TYPE_UNUSABLE`.
        Unusable = XEN_HVM_MEMMAP_TYPE_UNUSABLE,
        /// `XEN_HVM_MEMMAP_TYPE_DISABLED`.
        Disabled = XEN_HVM_MEMMAP_TYPE_DISABLED,
        /// `XEN_HVM_MEMMAP_TYPE_PMEM`.
        Pmem = XEN_HVM_MEMMAP_TYPE_PMEM,
    }
}

/// The PVH start-of-day structure: `struct hvm_start_info` in `arch-x86/hvm/start_info.h` (56 bytes,
/// version 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmStartInfo {
    /// `XEN_HVM_START_MAGIC_VALUE`.
    pub magic: u32,
    /// The version of the structure (1 is current; later versions are backwards-compatible).
    pub version: u32,
    /// `SIF_*` flags (see `xen::SifFlags`).
    pub flags: u32,
    /// The number of modules.
    pub nr_modules: u32,
    /// The physical address of an array of `nr_modules` [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// The physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// The physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Version 1: the physical address of an array of `memmap_entries` [`HvmMemmapTableEntry`].
    pub memmap_paddr: u64,
    /// Version 1: the number of memory-map entries (0: no memory map).
    pub memmap_entries: u32,
    /// Version 1: must be zero.
    pub reserved: u32,
}

/// The limits a consumer puts on an [`HvmStartInfo`]. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvmStartInfoLimits {
    /// The largest `nr_modules`.
    pub max_modules: u32,
    /// The largest `memmap_entries`.
    pub max_memmap_entries: u32,
}

/// A physical array: where it is and how many entries it has. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysArray {
    /// The physical address of the first entry.
    pub paddr: u64,
    /// The number of entries.
    pub count: u32,
    /// The array's size in bytes.
    pub len: u64,
}

/// A validated [`HvmStartInfo`]: the arrays to read and the optional addresses. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidHvmStartInfo {
    /// The structure's version.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// The module list (empty if there are no modules).
    pub modules: PhysArray,
    /// The memory map (empty for version 0 or `memmap_entries == 0`).
    pub memmap: PhysArray,
    /// The command line, if present.
    pub cmdline_paddr: Option<u64>,
    /// The RSDP, if present.
    pub rsdp_paddr: Option<u64>,
}

fn phys_array(
    what: &'static str,
    paddr: u64,
    count: u32,
    entry_size: usize,
) -> Result<PhysArray, Error> {
    let len = u64::from(count) * entry_size as u64;
    match paddr.checked_add(len) {
        Some(_) => Ok(PhysArray { paddr, count, len }),
        None => Err(Error::ArrayOverflow {
            what,
            paddr,
            count,
            entry_size,
        }),
    }
}

fn present(paddr: u64) -> Option<u64> {
    if paddr == 0 { None } else { Some(paddr) }
}

impl HvmStartInfo {
    /// A version-1 structure with the magic set and everything else zero.
    pub const fn new() -> Self {
        Self {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: HVM_START_INFO_VERSION_1,
            flags: 0,
            nr_modules: 0,
            modlist_paddr: 0,
            cmdline_paddr: 0,
            rsdp_paddr: 0,
            memmap_paddr: 0,
            memmap_entries: 0,
            reserved: 0,
        }
    }

    /// Validates this copy: the magic; the module count and (for version 1 and later) the memory-map
    /// count within `limits`, with their arrays present and not wrapping around the address space; a zero
    /// `reserved`. A version-0 structure has no memory map: its last three fields are ignored.
    pub fn validate(&self, limits: &HvmStartInfoLimits) -> Result<ValidHvmStartInfo, Error> {
        if self.magic != XEN_HVM_START_MAGIC_VALUE {
            return Err(Error::BadMagic(self.magic));
        }
        let nr_modules = self.nr_modules;
        if nr_modules > limits.max_modules {
            return Err(Error::TooManyModules {
                nr_modules,
                max: limits.max_modules,
            });
        }
        if nr_modules > 0 && self.modlist_paddr == 0 {
            return Err(Error::MissingModlist(nr_modules));
        }
        let modules = phys_array(
            "module list",
            self.modlist_paddr,
            nr_modules,
            size_of::<HvmModlistEntry>(),
        )?;
        let memmap = if self.version >= HVM_START_INFO_VERSION_1 {
            if self.reserved != 0 {
                return Err(Error::NonZeroReserved(self.reserved));
            }
            let entries = self.memmap_entries;
            if entries > limits.max_memmap_entries {
                return Err(Error::TooManyMemmapEntries {
                    memmap_entries: entries,
                    max: limits.max_memmap_entries,
                });
            }
            if entries > 0 && self.memmap_paddr == 0 {
                return Err(Error::MissingMemmap(entries));
            }
            phys_array(
                "memory map",
                self.memmap_paddr,
                entries,
                size_of::<HvmMemmapTableEntry>(),
            )?
        } else {
            PhysArray {
                paddr: 0,
                count: 0,
                len: 0,
            }
        };
        Ok(ValidHvmStartInfo {
            version: self.version,
            flags: self.flags,
            modules,
            memmap,
            cmdline_paddr: present(self.cmdline_paddr),
            rsdp_paddr: present(self.rsdp_paddr),
        })
    }
}

impl Default for HvmStartInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// One module: `struct hvm_modlist_entry` in `arch-x86/hvm/start_info.h` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmModlistEntry {
    /// The physical address of the module.
    pub paddr: u64,
    /// The size of the module in bytes.
    pub size: u64,
    /// The physical address of the module's NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// Reserved.
    pub reserved: u64,
}

impl HvmModlistEntry {
    /// Checks this copy: the module's end fits in 64 bits. Returns the end (exclusive).
    pub fn validate(&self) -> Result<u64, Error> {
        let (addr, size) = (self.paddr, self.size);
        addr.checked_add(size).ok_or(Error::RangeOverflow {
            what: "module",
            addr,
            size,
        })
    }
}

/// One memory-map entry: `struct hvm_memmap_table_entry` in `arch-x86/hvm/start_info.h` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmMemmapTableEntry {
    /// The base address.
    pub addr: u64,
    /// The size in bytes.
    pub size: u64,
    /// The type (`XEN_HVM_MEMMAP_TYPE_*`); C spells it `type`.
    pub type_: u32,
    /// Must be zero in version 1.
    pub reserved: u32,
}

/// A validated [`HvmMemmapTableEntry`]. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemmapRegion {
    /// The base address.
    pub addr: u64,
    /// The end address (exclusive).
    pub end: u64,
    /// The type.
    pub kind: HvmMemmapType,
}

impl HvmMemmapTableEntry {
    /// An entry with `reserved` zeroed.
    pub const fn new(addr: u64, size: u64, kind: HvmMemmapType) -> Self {
        Self {
            addr,
            size,
            type_: kind.raw(),
            reserved: 0,
        }
    }

    /// Checks this copy: a known type, a zero `reserved` and an end that fits in 64 bits.
    pub fn validate(&self) -> Result<MemmapRegion, Error> {
        let kind = HvmMemmapType::try_from(self.type_)?;
        if self.reserved != 0 {
            return Err(Error::NonZeroEntryReserved(self.reserved));
        }
        let (addr, size) = (self.addr, self.size);
        let end = addr.checked_add(size).ok_or(Error::RangeOverflow {
            what: "memory region",
            addr,
            size,
        })?;
        Ok(MemmapRegion { addr, end, kind })
    }
}
