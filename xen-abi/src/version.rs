//! `HYPERVISOR_xen_version`: version, build and feature queries (`version.h`, `features.h`).
//!
//! The sub-command is [`XenVer`] (`XENVER_*`). Most replies are fixed-size, NUL-terminated strings
//! ([`XenExtraversion`], [`XenCapabilitiesInfo`], [`XenChangesetInfo`], [`XenCommandline`], the fields
//! of [`XenCompileInfo`]); [`c_string`] fills one. `XENVER_get_features` returns 32-bit submaps of the
//! `XENFEAT_*` bits ([`XenFeatures`]): [`XenFeatureInfo::reply`] answers a guest's request.
#![forbid(unsafe_code)]
#![allow(non_upper_case_globals)]

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::hypercall::abi_enum;

/// The errors of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `XENVER_*` command that `version.h` does not define.
    #[error("unknown xen_version cmd {0} (version.h defines 0-10)")]
    UnknownXenVer(u32),
    /// A string that does not fit a fixed-size field with its NUL terminator.
    #[error("string of {len} bytes does not fit a {capacity}-byte field with its NUL terminator")]
    StringTooLong {
        /// The string's length.
        len: usize,
        /// The field's size.
        capacity: usize,
    },
    /// A string with a NUL byte inside it.
    #[error("string has a NUL byte at offset {0}")]
    StringHasNul(usize),
    /// `xen_feature_info.submap_idx` beyond the submaps Xen defines.
    #[error(
        "xen_feature_info submap_idx {0} is not below XENFEAT_NR_SUBMAPS ({XENFEAT_NR_SUBMAPS})"
    )]
    BadSubmapIndex(u32),
    /// `xen_build_id.len` too small for the build id.
    #[error("xen_build_id buffer of {len} bytes is too small for a {needed}-byte build id")]
    BuildIdBufferTooSmall {
        /// The guest's `len`.
        len: u32,
        /// The build id's size.
        needed: usize,
    },
}

/// The error of this module, under a name that says where it comes from.
pub type VersionError = Error;

/// `XENVER_version` in `version.h`: no argument; returns `major << 16 | minor`.
pub const XENVER_version: u32 = 0;
/// `XENVER_extraversion` in `version.h`: argument `xen_extraversion_t`.
pub const XENVER_extraversion: u32 = 1;
/// `XENVER_compile_info` in `version.h`: argument `struct xen_compile_info`.
pub const XENVER_compile_info: u32 = 2;
/// `XENVER_capabilities` in `version.h`: argument `xen_capabilities_info_t`.
pub const XENVER_capabilities: u32 = 3;
/// `XENVER_changeset` in `version.h`: argument `xen_changeset_info_t`.
pub const XENVER_changeset: u32 = 4;
/// `XENVER_platform_parameters` in `version.h`: argument `struct xen_platform_parameters`.
pub const XENVER_platform_parameters: u32 = 5;
/// `XENVER_get_features` in `version.h`: argument `struct xen_feature_info`.
pub const XENVER_get_features: u32 = 6;
/// `XENVER_pagesize` in `version.h`: no argument; returns the page size.
pub const XENVER_pagesize: u32 = 7;
/// `XENVER_guest_handle` in `version.h`: argument `xen_domain_handle_t` (16 bytes).
pub const XENVER_guest_handle: u32 = 8;
/// `XENVER_commandline` in `version.h`: argument `xen_commandline_t`.
pub const XENVER_commandline: u32 = 9;
/// `XENVER_build_id` in `version.h`: argument `struct xen_build_id`.
pub const XENVER_build_id: u32 = 10;

abi_enum! {
    /// The sub-command of `HYPERVISOR_xen_version` (`XENVER_*` in `version.h`).
    pub enum XenVer: u32, |raw| Error::UnknownXenVer(raw);
    {
        /// `XENVER_version`.
        Version = XENVER_version,
        /// `XENVER_extraversion`.
        Extraversion = XENVER_extraversion,
        /// `XENVER_compile_info`.
        CompileInfo = XENVER_compile_info,
        /// `XENVER_capabilities`.
        Capabilities = XENVER_capabilities,
        /// `XENVER_changeset`.
        Changeset = XENVER_changeset,
        /// `XENVER_platform_parameters`.
        PlatformParameters = XENVER_platform_parameters,
        /// `XENVER_get_features`.
        GetFeatures = XENVER_get_features,
        /// `XENVER_pagesize`.
        Pagesize = XENVER_pagesize,
        /// `XENVER_guest_handle`.
        GuestHandle = XENVER_guest_handle,
        /// `XENVER_commandline`.
        Commandline = XENVER_commandline,
        /// `XENVER_build_id`.
        BuildId = XENVER_build_id,
    }
}

/// The value `XENVER_version` returns: `major << 16 | minor`. No C counterpart.
pub const fn xen_version_value(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// The major and minor version in an `XENVER_version` result. No C counterpart.
pub const fn split_xen_version(value: u32) -> (u16, u16) {
    ((value >> 16) as u16, value as u16)
}

/// `xen_extraversion_t` in `version.h`: the extra version string, such as `".0"`.
pub type XenExtraversion = [u8; XEN_EXTRAVERSION_LEN];
/// `XEN_EXTRAVERSION_LEN` in `version.h`.
pub const XEN_EXTRAVERSION_LEN: usize = 16;
/// `xen_capabilities_info_t` in `version.h`: space-separated ABIs such as `"xen-3.0-x86_64 hvm-3.0-x86_64"`.
pub type XenCapabilitiesInfo = [u8; XEN_CAPABILITIES_INFO_LEN];
/// `XEN_CAPABILITIES_INFO_LEN` in `version.h`.
pub const XEN_CAPABILITIES_INFO_LEN: usize = 1024;
/// `xen_changeset_info_t` in `version.h`: the source changeset.
pub type XenChangesetInfo = [u8; XEN_CHANGESET_INFO_LEN];
/// `XEN_CHANGESET_INFO_LEN` in `version.h`.
pub const XEN_CHANGESET_INFO_LEN: usize = 64;
/// `xen_commandline_t` in `version.h`: the hypervisor's command line.
pub type XenCommandline = [u8; XEN_COMMANDLINE_LEN];
/// The size of `xen_commandline_t` (`version.h` has no `_LEN` constant for it).
pub const XEN_COMMANDLINE_LEN: usize = 1024;
/// `xen_domain_handle_t` in `xen.h`: the domain's 16-byte handle (UUID), the reply of
/// `XENVER_guest_handle`.
pub type XenDomainHandle = [u8; 16];

/// A fixed-size, NUL-terminated C string field holding `s`, the rest zeroed: the way every string reply
/// of `HYPERVISOR_xen_version` is built.
pub fn c_string<const N: usize>(s: &[u8]) -> Result<[u8; N], Error> {
    if let Some(at) = s.iter().position(|&b| b == 0) {
        return Err(Error::StringHasNul(at));
    }
    let mut out = [0u8; N];
    let dst = out
        .get_mut(..s.len())
        .filter(|_| s.len() < N)
        .ok_or(Error::StringTooLong {
            len: s.len(),
            capacity: N,
        })?;
    dst.copy_from_slice(s);
    Ok(out)
}

/// The string in a fixed-size C string field: up to the first NUL, or the whole field if there is none.
pub fn c_string_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field.get(..end).unwrap_or_default()
}

/// The reply of `XENVER_compile_info`: `struct xen_compile_info` in `version.h` (144 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenCompileInfo {
    /// The compiler.
    pub compiler: [u8; 64],
    /// Who built it.
    pub compile_by: [u8; 16],
    /// The build host's domain.
    pub compile_domain: [u8; 32],
    /// The build date.
    pub compile_date: [u8; 32],
}

/// The reply of `XENVER_platform_parameters`: `struct xen_platform_parameters` in `version.h` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenPlatformParameters {
    /// The start of the hypervisor's virtual address range (`HYPERVISOR_VIRT_START`).
    pub virt_start: u64,
}

/// The argument of `XENVER_get_features`: `struct xen_feature_info` in `version.h` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenFeatureInfo {
    /// In: which 32-bit submap to return.
    pub submap_idx: u32,
    /// Out: the submap.
    pub submap: u32,
}

impl XenFeatureInfo {
    /// The reply to this copy of a guest's request: submap `submap_idx` of `features`. Only submap 0
    /// exists (`XENFEAT_NR_SUBMAPS`).
    pub fn reply(&self, features: XenFeatures) -> Result<Self, Error> {
        if self.submap_idx >= XENFEAT_NR_SUBMAPS {
            return Err(Error::BadSubmapIndex(self.submap_idx));
        }
        Ok(Self {
            submap_idx: self.submap_idx,
            submap: features.bits(),
        })
    }
}

/// The fixed part of the argument of `XENVER_build_id`: `struct xen_build_id` in `version.h`. The C
/// struct ends with the flexible array `buf[]`, which starts at [`XEN_BUILD_ID_BUF_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenBuildId {
    /// In: the size of `buf[]`; the hypercall returns the number of bytes written.
    pub len: u32,
}

/// The offset of `xen_build_id.buf` (`offsetof(struct xen_build_id, buf)`).
pub const XEN_BUILD_ID_BUF_OFFSET: usize = 4;

impl XenBuildId {
    /// How many bytes of `build_id` to write for this copy of a guest's request: all of them, if the
    /// guest's buffer (`len`) holds them.
    pub fn reply_len(&self, build_id: &[u8]) -> Result<u32, Error> {
        match u32::try_from(build_id.len()) {
            Ok(n) if n <= self.len => Ok(n),
            _ => Err(Error::BuildIdBufferTooSmall {
                len: self.len,
                needed: build_id.len(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Features (`features.h`)
// ---------------------------------------------------------------------------------------------------

/// `XENFEAT_writable_page_tables` in `features.h`.
pub const XENFEAT_writable_page_tables: u32 = 0;
/// `XENFEAT_writable_descriptor_tables` in `features.h`.
pub const XENFEAT_writable_descriptor_tables: u32 = 1;
/// `XENFEAT_auto_translated_physmap` in `features.h`.
pub const XENFEAT_auto_translated_physmap: u32 = 2;
/// `XENFEAT_supervisor_mode_kernel` in `features.h`.
pub const XENFEAT_supervisor_mode_kernel: u32 = 3;
/// `XENFEAT_pae_pgdir_above_4gb` in `features.h`.
pub const XENFEAT_pae_pgdir_above_4gb: u32 = 4;
/// `XENFEAT_mmu_pt_update_preserve_ad` in `features.h`.
pub const XENFEAT_mmu_pt_update_preserve_ad: u32 = 5;
/// `XENFEAT_highmem_assist` in `features.h`.
pub const XENFEAT_highmem_assist: u32 = 6;
/// `XENFEAT_gnttab_map_avail_bits` in `features.h`.
pub const XENFEAT_gnttab_map_avail_bits: u32 = 7;
/// `XENFEAT_hvm_callback_vector` in `features.h`.
pub const XENFEAT_hvm_callback_vector: u32 = 8;
/// `XENFEAT_hvm_safe_pvclock` in `features.h`.
pub const XENFEAT_hvm_safe_pvclock: u32 = 9;
/// `XENFEAT_hvm_pirqs` in `features.h`.
pub const XENFEAT_hvm_pirqs: u32 = 10;
/// `XENFEAT_dom0` in `features.h`.
pub const XENFEAT_dom0: u32 = 11;
// Bit 12, `XENFEAT_grant_map_identity`, is deprecated and commented out in `features.h`: not defined here.
/// `XENFEAT_memory_op_vnode_supported` in `features.h`.
pub const XENFEAT_memory_op_vnode_supported: u32 = 13;
/// `XENFEAT_ARM_SMCCC_supported` in `features.h`.
pub const XENFEAT_ARM_SMCCC_supported: u32 = 14;
/// `XENFEAT_linux_rsdp_unrestricted` in `features.h`.
pub const XENFEAT_linux_rsdp_unrestricted: u32 = 15;
/// `XENFEAT_not_direct_mapped` in `features.h`.
pub const XENFEAT_not_direct_mapped: u32 = 16;
/// `XENFEAT_direct_mapped` in `features.h`.
pub const XENFEAT_direct_mapped: u32 = 17;
/// `XENFEAT_NR_SUBMAPS` in `features.h`: the number of 32-bit feature submaps.
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

bitflags! {
    /// Submap 0 of the features `XENVER_get_features` reports: bit `XENFEAT_x` is `1 << XENFEAT_x`
    /// (`features.h`). Unknown bits are kept (`from_bits_retain`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct XenFeatures: u32 {
        /// `XENFEAT_writable_page_tables`.
        const WRITABLE_PAGE_TABLES = 1 << XENFEAT_writable_page_tables;
        /// `XENFEAT_writable_descriptor_tables`.
        const WRITABLE_DESCRIPTOR_TABLES = 1 << XENFEAT_writable_descriptor_tables;
        /// `XENFEAT_auto_translated_physmap`.
        const AUTO_TRANSLATED_PHYSMAP = 1 << XENFEAT_auto_translated_physmap;
        /// `XENFEAT_supervisor_mode_kernel`.
        const SUPERVISOR_MODE_KERNEL = 1 << XENFEAT_supervisor_mode_kernel;
        /// `XENFEAT_pae_pgdir_above_4gb`.
        const PAE_PGDIR_ABOVE_4GB = 1 << XENFEAT_pae_pgdir_above_4gb;
        /// `XENFEAT_mmu_pt_update_preserve_ad`.
        const MMU_PT_UPDATE_PRESERVE_AD = 1 << XENFEAT_mmu_pt_update_preserve_ad;
        /// `XENFEAT_highmem_assist`.
        const HIGHMEM_ASSIST = 1 << XENFEAT_highmem_assist;
        /// `XENFEAT_gnttab_map_avail_bits`.
        const GNTTAB_MAP_AVAIL_BITS = 1 << XENFEAT_gnttab_map_avail_bits;
        /// `XENFEAT_hvm_callback_vector`.
        const HVM_CALLBACK_VECTOR = 1 << XENFEAT_hvm_callback_vector;
        /// `XENFEAT_hvm_safe_pvclock`.
        const HVM_SAFE_PVCLOCK = 1 << XENFEAT_hvm_safe_pvclock;
        /// `XENFEAT_hvm_pirqs`.
        const HVM_PIRQS = 1 << XENFEAT_hvm_pirqs;
        /// `XENFEAT_dom0`.
        const DOM0 = 1 << XENFEAT_dom0;
        /// `XENFEAT_memory_op_vnode_supported`.
        const MEMORY_OP_VNODE_SUPPORTED = 1 << XENFEAT_memory_op_vnode_supported;
        /// `XENFEAT_ARM_SMCCC_supported`.
        const ARM_SMCCC_SUPPORTED = 1 << XENFEAT_ARM_SMCCC_supported;
        /// `XENFEAT_linux_rsdp_unrestricted`.
        const LINUX_RSDP_UNRESTRICTED = 1 << XENFEAT_linux_rsdp_unrestricted;
        /// `XENFEAT_not_direct_mapped`.
        const NOT_DIRECT_MAPPED = 1 << XENFEAT_not_direct_mapped;
        /// `XENFEAT_direct_mapped`.
        const DIRECT_MAPPED = 1 << XENFEAT_direct_mapped;
    }
}
