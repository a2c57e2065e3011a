//! `HYPERVISOR_memory_op`: reservations, the physmap, memory maps (`memory.h`), x86-64 layout.
//!
//! The sub-command is [`XenMemOp`] (`XENMEM_*`). The argument structures are copied out of guest memory
//! once and validated on the copy: [`XenMemoryReservation::validate`] bounds `extent_order` and
//! `nr_extents` against the caller's [`ReservationLimits`] and decodes `mem_flags`;
//! [`XenMemoryMap::validate`] bounds the entry count of an E820 buffer; [`XenAddToPhysmap::validate`]
//! decodes the map space. [`E820Entry`] is the 20-byte BIOS entry that `XENMEM_memory_map` fills in.
#![forbid(unsafe_code)]
#![allow(non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::DomId;
use crate::hypercall::abi_enum;

/// The errors of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `XENMEM_*` command that `memory.h` does not define for guests.
    #[error("unknown memory_op cmd {0}")]
    UnknownMemoryOp(u32),
    /// `extent_order` above the caller's limit.
    #[error("xen_memory_reservation extent_order {extent_order} is above the limit of {max}")]
    ExtentOrderTooLarge {
        /// The guest's `extent_order`.
        extent_order: u32,
        /// The limit.
        max: u32,
    },
    /// `nr_extents` above the caller's limit.
    #[error("xen_memory_reservation nr_extents {nr_extents} is above the limit of {max}")]
    TooManyExtents {
        /// The guest's `nr_extents`.
        nr_extents: u64,
        /// The limit.
        max: u64,
    },
    /// `nr_extents << extent_order` does not fit in 64 bits.
    #[error(
        "xen_memory_reservation of {nr_extents} extents of order {extent_order}: the page count overflows 64 bits"
    )]
    PageCountOverflow {
        /// The guest's `nr_extents`.
        nr_extents: u64,
        /// The guest's `extent_order`.
        extent_order: u32,
    },
    /// The extent list runs past the end of the address space.
    #[error(
        "extent list at {start:#x} with {count} 8-byte entries wraps past the end of the address space"
    )]
    ExtentListOverflow {
        /// The guest's `extent_start`.
        start: u64,
        /// The number of entries.
        count: u64,
    },
    /// `mem_flags` with bits that `memory.h` does not define.
    #[error("xen_memory_reservation mem_flags {flags:#x} has unknown bits {unknown:#x}")]
    UnknownMemFlags {
        /// The guest's `mem_flags`.
        flags: u32,
        /// The bits that are not `XENMEMF_*`.
        unknown: u32,
    },
    /// A `XENMAPSPACE_*` that `memory.h` does not define.
    #[error("unknown add_to_physmap space {0} (memory.h defines 0-5)")]
    UnknownMapSpace(u32),
    /// `xen_memory_map.nr_entries` above the caller's limit.
    #[error("xen_memory_map nr_entries {nr_entries} is above the limit of {max}")]
    TooManyMapEntries {
        /// The guest's `nr_entries`.
        nr_entries: u32,
        /// The limit.
        max: u32,
    },
    /// `xen_memory_map.buffer` is a null handle with entries to transfer.
    #[error("xen_memory_map buffer is a null guest handle but nr_entries is {0}")]
    NullMapBuffer(u32),
    /// The memory-map buffer runs past the end of the address space.
    #[error(
        "xen_memory_map buffer at {buffer:#x} with {nr_entries} 20-byte entries wraps past the end of the address space"
    )]
    MapBufferOverflow {
        /// The guest's `buffer`.
        buffer: u64,
        /// The guest's `nr_entries`.
        nr_entries: u32,
    },
    /// A byte buffer too short for the E820 entries it should hold.
    #[error("E820 buffer of {len} bytes is too short for {nr_entries} 20-byte entries")]
    E820BufferTooShort {
        /// The buffer's length.
        len: usize,
        /// The number of entries.
        nr_entries: u32,
    },
    /// An E820 entry whose end does not fit in 64 bits.
    #[error("E820 entry at {addr:#x} of {size:#x} bytes ends past 2^64")]
    E820EntryOverflow {
        /// The entry's base.
        addr: u64,
        /// The entry's size.
        size: u64,
    },
}

/// The error of this module, under a name that says where it comes from.
pub type MemoryError = Error;

// ---------------------------------------------------------------------------------------------------
// Sub-commands
// ---------------------------------------------------------------------------------------------------

/// `XENMEM_increase_reservation` in `memory.h`.
pub const XENMEM_increase_reservation: u32 = 0;
/// `XENMEM_decrease_reservation` in `memory.h`.
pub const XENMEM_decrease_reservation: u32 = 1;
/// `XENMEM_maximum_ram_page` in `memory.h`: returns the highest machine frame with RAM.
pub const XENMEM_maximum_ram_page: u32 = 2;
/// `XENMEM_current_reservation` in `memory.h`: returns the current pages of a domain.
pub const XENMEM_current_reservation: u32 = 3;
/// `XENMEM_maximum_reservation` in `memory.h`: returns the maximum pages of a domain.
pub const XENMEM_maximum_reservation: u32 = 4;
/// `XENMEM_machphys_mfn_list` in `memory.h`.
pub const XENMEM_machphys_mfn_list: u32 = 5;
/// `XENMEM_populate_physmap` in `memory.h`.
pub const XENMEM_populate_physmap: u32 = 6;
/// `XENMEM_add_to_physmap` in `memory.h`.
pub const XENMEM_add_to_physmap: u32 = 7;
/// `XENMEM_memory_map` in `memory.h`: the domain's pseudo-physical E820 map.
pub const XENMEM_memory_map: u32 = 9;
/// `XENMEM_machine_memory_map` in `memory.h`: the machine E820 map (privileged).
pub const XENMEM_machine_memory_map: u32 = 10;
/// `XENMEM_exchange` in `memory.h`.
pub const XENMEM_exchange: u32 = 11;
/// `XENMEM_machphys_mapping` in `memory.h`.
pub const XENMEM_machphys_mapping: u32 = 12;
/// `XENMEM_set_memory_map` in `memory.h`.
pub const XENMEM_set_memory_map: u32 = 13;
/// `XENMEM_maximum_gpfn` in `memory.h`: returns the highest guest frame in use.
pub const XENMEM_maximum_gpfn: u32 = 14;
/// `XENMEM_remove_from_physmap` in `memory.h`.
pub const XENMEM_remove_from_physmap: u32 = 15;
/// `XENMEM_set_pod_target` in `memory.h`.
pub const XENMEM_set_pod_target: u32 = 16;
/// `XENMEM_get_pod_target` in `memory.h`.
pub const XENMEM_get_pod_target: u32 = 17;
/// `XENMEM_add_to_physmap_batch` in `memory.h`.
pub const XENMEM_add_to_physmap_batch: u32 = 23;
/// `XENMEM_machphys_compat_mfn_list` in `memory.h`.
pub const XENMEM_machphys_compat_mfn_list: u32 = 25;
/// `XENMEM_get_vnumainfo` in `memory.h`.
pub const XENMEM_get_vnumainfo: u32 = 26;
/// `XENMEM_acquire_resource` in `memory.h`.
pub const XENMEM_acquire_resource: u32 = 28;

abi_enum! {
    /// The sub-command of `HYPERVISOR_memory_op` that a guest may issue (`XENMEM_*` in `memory.h`; the
    /// tools-only commands are not here).
    pub enum XenMemOp: u32, |raw| Error::UnknownMemoryOp(raw);
    {
        /// `XENMEM_increase_reservation`.
        IncreaseReservation = XENMEM_increase_reservation,
        /// `XENMEM_decrease_reservation`.
        DecreaseReservation = XENMEM_decrease_reservation,
        /// `XENMEM_maximum_ram_page`.
        MaximumRamPage = XENMEM_maximum_ram_page,
        /// `XENMEM_current_reservation`.
        CurrentReservation = XENMEM_current_reservation,
        /// `XENMEM_maximum_reservation`.
        MaximumReservation = XENMEM_maximum_reservation,
        /// `XENMEM_machphys_mfn_list`.
        MachphysMfnList = XENMEM_machphys_mfn_list,
        /// `XENMEM_populate_physmap`.
        PopulatePhysmap = XENMEM_populate_physmap,
        /// `XENMEM_add_to_physmap`.
        AddToPhysmap = XENMEM_add_to_physmap,
        /// `XENMEM_memory_map`.
        MemoryMap = XENMEM_memory_map,
        /// `XENMEM_machine_memory_map`.
        MachineMemoryMap = XENMEM_machine_memory_map,
        /// `XENMEM_exchange`.
        Exchange = XENMEM_exchange,
        /// `XENMEM_machphys_mapping`.
        MachphysMapping = XENMEM_machphys_mapping,
        /// `XENMEM_set_memory_map`.
        SetMemoryMap = XENMEM_set_memory_map,
        /// `XENMEM_maximum_gpfn`.
        MaximumGpfn = XENMEM_maximum_gpfn,
        /// `XENMEM_remove_from_physmap`.
        RemoveFromPhysmap = XENMEM_remove_from_physmap,
        /// `XENMEM_set_pod_target`.
        SetPodTarget = XENMEM_set_pod_target,
        /// `XENMEM_get_pod_target`.
        GetPodTarget = XENMEM_get_pod_target,
        /// `XENMEM_add_to_physmap_batch`.
        AddToPhysmapBatch = XENMEM_add_to_physmap_batch,
        /// `XENMEM_machphys_compat_mfn_list`.
        MachphysCompatMfnList = XENMEM_machphys_compat_mfn_list,
        /// `XENMEM_get_vnumainfo`.
        GetVnumainfo = XENMEM_get_vnumainfo,
        /// `XENMEM_acquire_resource`.
        AcquireResource = XENMEM_acquire_resource,
    }
}

// ---------------------------------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------------------------------

/// `XENMEMF_populate_on_demand` in `memory.h`: populate with populate-on-demand entries.
pub const XENMEMF_populate_on_demand: u32 = 1 << 16;
/// `XENMEMF_exact_node_request` in `memory.h`: allocate only from the given node.
pub const XENMEMF_exact_node_request: u32 = 1 << 17;
/// `XENMEMF_vnode` in `memory.h`: the node is a virtual node.
pub const XENMEMF_vnode: u32 = 1 << 18;
/// The bits of `mem_flags` that carry the address width (`XENMEMF_address_bits`). No C constant.
pub const XENMEMF_ADDRESS_BITS_MASK: u32 = 0xff;
/// The bits of `mem_flags` that carry the node plus one (`XENMEMF_node`). No C constant.
pub const XENMEMF_NODE_MASK: u32 = 0xff << 8;

/// `XENMEMF_address_bits(x)` in `memory.h`: restrict the allocation to machine addresses below `2^x`.
pub const fn xenmemf_address_bits(bits: u8) -> u32 {
    bits as u32
}

/// `XENMEMF_node(x)` in `memory.h`: allocate from NUMA node `node` (stored as `node + 1`).
pub const fn xenmemf_node(node: u8) -> u32 {
    // The field is 8 bits: node 255 wraps to 0 (no node), as the C macro's `& 0xffu` on the way out does.
    ((node as u32 + 1) & 0xff) << 8
}

/// `XENMEMF_exact_node(n)` in `memory.h`.
pub const fn xenmemf_exact_node(node: u8) -> u32 {
    xenmemf_node(node) | XENMEMF_exact_node_request
}

/// The argument of `XENMEM_{increase,decrease}_reservation` and `XENMEM_populate_physmap`: `struct
/// xen_memory_reservation` in `memory.h`, x86-64 layout (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryReservation {
    /// Guest handle (pointer) to an array of `nr_extents` frame numbers (in, out or both).
    pub extent_start: u64,
    /// The number of extents.
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// `XENMEMF_*` flags.
    pub mem_flags: u32,
    /// The domain whose reservation changes (unprivileged callers: `DOMID_SELF`).
    pub domid: DomId,
    _pad0: [u8; 6],
}

/// The limits a hypervisor puts on a reservation request. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationLimits {
    /// The largest `extent_order` (for example 9 for 2 MiB extents, or 0 for 4 KiB pages only).
    pub max_extent_order: u32,
    /// The largest `nr_extents`.
    pub max_nr_extents: u64,
}

/// A validated [`XenMemoryReservation`]. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The guest address of the extent list (0: none, allowed for `increase_reservation`).
    pub extent_start: u64,
    /// The number of extents.
    pub nr_extents: u64,
    /// The extent order.
    pub extent_order: u32,
    /// `nr_extents << extent_order`: the number of 4 KiB pages.
    pub nr_pages: u64,
    /// The address width the allocation must stay below (`XENMEMF_address_bits`), if any.
    pub address_bits: Option<u8>,
    /// The NUMA node (`XENMEMF_node`), if any.
    pub node: Option<u8>,
    /// `XENMEMF_populate_on_demand`.
    pub populate_on_demand: bool,
    /// `XENMEMF_exact_node_request`.
    pub exact_node: bool,
    /// `XENMEMF_vnode`.
    pub vnode: bool,
    /// The target domain.
    pub domid: DomId,
}

impl XenMemoryReservation {
    /// The argument, its padding zeroed.
    pub const fn new(
        extent_start: u64,
        nr_extents: u64,
        extent_order: u32,
        mem_flags: u32,
        domid: DomId,
    ) -> Self {
        Self {
            extent_start,
            nr_extents,
            extent_order,
            mem_flags,
            domid,
            _pad0: [0; 6],
        }
    }

    /// Validates this copy: `extent_order` and `nr_extents` within `limits`, a page count and an extent
    /// list that fit in 64 bits, and only known `mem_flags` bits.
    pub fn validate(&self, limits: &ReservationLimits) -> Result<Reservation, Error> {
        let (nr_extents, extent_order, flags) =
            (self.nr_extents, self.extent_order, self.mem_flags);
        if extent_order > limits.max_extent_order {
            return Err(Error::ExtentOrderTooLarge {
                extent_order,
                max: limits.max_extent_order,
            });
        }
        if nr_extents > limits.max_nr_extents {
            return Err(Error::TooManyExtents {
                nr_extents,
                max: limits.max_nr_extents,
            });
        }
        let nr_pages = 1u64
            .checked_shl(extent_order)
            .and_then(|per_extent| nr_extents.checked_mul(per_extent))
            .ok_or(Error::PageCountOverflow {
                nr_extents,
                extent_order,
            })?;
        if self.extent_start != 0 {
            nr_extents
                .checked_mul(8)
                .and_then(|len| self.extent_start.checked_add(len))
                .ok_or(Error::ExtentListOverflow {
                    start: self.extent_start,
                    count: nr_extents,
                })?;
        }
        let known = XENMEMF_ADDRESS_BITS_MASK
            | XENMEMF_NODE_MASK
            | XENMEMF_populate_on_demand
            | XENMEMF_exact_node_request
            | XENMEMF_vnode;
        if flags & !known != 0 {
            return Err(Error::UnknownMemFlags {
                flags,
                unknown: flags & !known,
            });
        }
        let address_bits = (flags & XENMEMF_ADDRESS_BITS_MASK) as u8;
        let node_plus_one = ((flags & XENMEMF_NODE_MASK) >> 8) as u8;
        Ok(Reservation {
            extent_start: self.extent_start,
            nr_extents,
            extent_order,
            nr_pages,
            address_bits: if address_bits == 0 {
                None
            } else {
                Some(address_bits)
            },
            node: node_plus_one.checked_sub(1),
            populate_on_demand: flags & XENMEMF_populate_on_demand != 0,
            exact_node: flags & XENMEMF_exact_node_request != 0,
            vnode: flags & XENMEMF_vnode != 0,
            domid: self.domid,
        })
    }
}

/// The argument of `XENMEM_exchange`: `struct xen_memory_exchange` in `memory.h` (72 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryExchange {
    /// The extents to give up (C `in`).
    pub in_: XenMemoryReservation,
    /// The extents to receive (C `out`).
    pub out: XenMemoryReservation,
    /// Out: how many input extents were exchanged (must be zero on input).
    pub nr_exchanged: u64,
}

/// The argument of `XENMEM_{current,maximum}_reservation` and `XENMEM_maximum_gpfn`: `struct
/// xen_memory_domain` in `memory.h` (2 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryDomain {
    /// The domain queried.
    pub domid: DomId,
}

/// The argument of `XENMEM_machphys_mfn_list`: `struct xen_machphys_mfn_list` in `memory.h`, x86-64
/// layout (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMachphysMfnList {
    /// The size of the `extent_start` array.
    pub max_extents: u32,
    _pad0: [u8; 4],
    /// Guest handle (pointer) to the array of 2 MiB extent starts to fill.
    pub extent_start: u64,
    /// Out: the number of entries written.
    pub nr_extents: u32,
    _pad1: [u8; 4],
}

impl XenMachphysMfnList {
    /// The argument, its padding zeroed.
    pub const fn new(max_extents: u32, extent_start: u64, nr_extents: u32) -> Self {
        Self {
            max_extents,
            _pad0: [0; 4],
            extent_start,
            nr_extents,
            _pad1: [0; 4],
        }
    }
}

/// The result of `XENMEM_machphys_mapping`: `struct xen_machphys_mapping` in `memory.h` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMachphysMapping {
    /// The start virtual address of the M2P table.
    pub v_start: u64,
    /// The end virtual address of the M2P table.
    pub v_end: u64,
    /// The largest MFN that can be looked up.
    pub max_mfn: u64,
}

// ---------------------------------------------------------------------------------------------------
// The physmap
// ---------------------------------------------------------------------------------------------------

/// `XENMAPSPACE_shared_info` in `memory.h`: the shared-info page.
pub const XENMAPSPACE_shared_info: u32 = 0;
/// `XENMAPSPACE_grant_table` in `memory.h`: a grant-table frame.
pub const XENMAPSPACE_grant_table: u32 = 1;
/// `XENMAPSPACE_gmfn` in `memory.h`: a guest frame.
pub const XENMAPSPACE_gmfn: u32 = 2;
/// `XENMAPSPACE_gmfn_range` in `memory.h`: a range of guest frames (`XENMEM_add_to_physmap` only).
pub const XENMAPSPACE_gmfn_range: u32 = 3;
/// `XENMAPSPACE_gmfn_foreign` in `memory.h`: a frame of another domain (`XENMEM_add_to_physmap_batch`
/// only).
pub const XENMAPSPACE_gmfn_foreign: u32 = 4;
/// `XENMAPSPACE_dev_mmio` in `memory.h`: a device MMIO region (Arm only).
pub const XENMAPSPACE_dev_mmio: u32 = 5;
/// `XENMAPIDX_grant_table_status` in `memory.h`: in `idx` with `XENMAPSPACE_grant_table`, map a status
/// frame instead of a shared frame.
pub const XENMAPIDX_grant_table_status: u64 = 0x8000_0000;

abi_enum! {
    /// The source space of an add-to-physmap (`enum phys_map_space`, `XENMAPSPACE_*` in `memory.h`).
    pub enum XenMapSpace: u32, |raw| Error::UnknownMapSpace(raw);
    {
        /// `XENMAPSPACE_shared_info`.
        SharedInfo = XENMAPSPACE_shared_info,
        /// `XENMAPSPACE_grant_table`.
        GrantTable = XENMAPSPACE_grant_table,
        /// `XENMAPSPACE_gmfn`.
        Gmfn = XENMAPSPACE_gmfn,
        /// `XENMAPSPACE_gmfn_range`.
        GmfnRange = XENMAPSPACE_gmfn_range,
        /// `XENMAPSPACE_gmfn_foreign`.
        GmfnForeign = XENMAPSPACE_gmfn_foreign,
        /// `XENMAPSPACE_dev_mmio`.
        DevMmio = XENMAPSPACE_dev_mmio,
    }
}

/// The argument of `XENMEM_add_to_physmap`: `struct xen_add_to_physmap` in `memory.h`, x86-64 layout
/// (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenAddToPhysmap {
    /// The domain whose physmap changes.
    pub domid: DomId,
    /// The number of pages for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// The source space (`XENMAPSPACE_*`).
    pub space: u32,
    /// The index into the space (with `XENMAPIDX_grant_table_status` for grant status frames).
    pub idx: u64,
    /// The guest frame where the page appears.
    pub gpfn: u64,
}

/// A validated [`XenAddToPhysmap`]. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddToPhysmap {
    /// The domain whose physmap changes.
    pub domid: DomId,
    /// The source space.
    pub space: XenMapSpace,
    /// The index into the space, with `XENMAPIDX_grant_table_status` cleared for grant-table frames.
    pub idx: u64,
    /// For `XENMAPSPACE_grant_table`: whether `idx` names a status frame.
    pub grant_status: bool,
    /// The number of pages (1 unless the space is `XENMAPSPACE_gmfn_range`).
    pub size: u16,
    /// The guest frame where the (first) page appears.
    pub gpfn: u64,
}

impl XenAddToPhysmap {
    /// Validates this copy: decodes the space, the grant-status bit and the range size.
    pub fn validate(&self) -> Result<AddToPhysmap, Error> {
        let space = XenMapSpace::try_from(self.space)?;
        let grant_status =
            space == XenMapSpace::GrantTable && self.idx & XENMAPIDX_grant_table_status != 0;
        let idx = if grant_status {
            self.idx & !XENMAPIDX_grant_table_status
        } else {
            self.idx
        };
        let size = if space == XenMapSpace::GmfnRange {
            self.size
        } else {
            1
        };
        Ok(AddToPhysmap {
            domid: self.domid,
            space,
            idx,
            grant_status,
            size,
            gpfn: self.gpfn,
        })
    }
}

/// The argument of `XENMEM_add_to_physmap_batch`: `struct xen_add_to_physmap_batch` in `memory.h`,
/// x86-64 layout (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenAddToPhysmapBatch {
    /// The domain whose physmap changes.
    pub domid: DomId,
    /// The source space (`XENMAPSPACE_*`).
    pub space: u16,
    /// The number of pages.
    pub size: u16,
    /// The union `u`: `foreign_domid` for `XENMAPSPACE_gmfn_foreign`, otherwise `res0` (must be zero).
    pub u: u16,
    /// Guest handle (pointer) to `size` indexes into the space.
    pub idxs: u64,
    /// Guest handle (pointer) to `size` guest frames.
    pub gpfns: u64,
    /// Guest handle (pointer) to `size` per-index error codes (out).
    pub errs: u64,
}

/// The argument of `XENMEM_remove_from_physmap`: `struct xen_remove_from_physmap` in `memory.h`,
/// x86-64 layout (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenRemoveFromPhysmap {
    /// The domain whose physmap changes.
    pub domid: DomId,
    _pad0: [u8; 6],
    /// The guest frame to unmap.
    pub gpfn: u64,
}

impl XenRemoveFromPhysmap {
    /// The argument, its padding zeroed.
    pub const fn new(domid: DomId, gpfn: u64) -> Self {
        Self {
            domid,
            _pad0: [0; 6],
            gpfn,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Memory maps
// ---------------------------------------------------------------------------------------------------

/// The size of one entry of an E820 buffer (`XENMEM_memory_map`, BIOS `INT 0x15, EAX=0xE820`): 20
/// bytes, packed. No C constant.
pub const E820_ENTRY_SIZE: usize = 20;

/// One entry of an E820 memory map, in the BIOS format that `XENMEM_memory_map` writes (20 bytes,
/// packed). `memory.h` refers to the BIOS format and declares no struct; the type values are those of
/// `XEN_HVM_MEMMAP_TYPE_*` (`hvm_start_info`), which follow ACPI.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct E820Entry {
    /// The base address.
    pub addr: u64,
    /// The size in bytes.
    pub size: u64,
    /// The type (1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable, ...); C spells it `type`.
    pub type_: u32,
}

impl E820Entry {
    /// An entry.
    pub const fn new(addr: u64, size: u64, type_: u32) -> Self {
        Self { addr, size, type_ }
    }

    /// The end of the range (exclusive), checked.
    pub fn end(&self) -> Result<u64, Error> {
        let (addr, size) = (self.addr, self.size);
        addr.checked_add(size)
            .ok_or(Error::E820EntryOverflow { addr, size })
    }
}

/// The first `nr_entries` entries of an E820 buffer copied out of guest memory. At most `max_entries`
/// are accepted, and `bytes` must hold them all; the walk is bounded by `nr_entries`.
pub fn e820_entries(
    bytes: &[u8],
    nr_entries: u32,
    max_entries: u32,
) -> Result<impl Iterator<Item = E820Entry> + '_, Error> {
    if nr_entries > max_entries {
        return Err(Error::TooManyMapEntries {
            nr_entries,
            max: max_entries,
        });
    }
    let needed = (nr_entries as usize).checked_mul(E820_ENTRY_SIZE);
    if needed.is_none_or(|n| n > bytes.len()) {
        return Err(Error::E820BufferTooShort {
            len: bytes.len(),
            nr_entries,
        });
    }
    Ok(bytes
        .chunks_exact(E820_ENTRY_SIZE)
        .take(nr_entries as usize)
        .filter_map(|chunk| E820Entry::read_from_bytes(chunk).ok()))
}

/// The argument of `XENMEM_memory_map` and `XENMEM_machine_memory_map`: `struct xen_memory_map` in
/// `memory.h`, x86-64 layout (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryMap {
    /// In: the number of entries the buffer holds; out: the number written.
    pub nr_entries: u32,
    _pad0: [u8; 4],
    /// Guest handle (pointer) to a buffer of 20-byte E820 entries.
    pub buffer: u64,
}

/// A validated [`XenMemoryMap`]. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapBuffer {
    /// The guest address of the buffer.
    pub buffer: u64,
    /// The number of entries it holds.
    pub nr_entries: u32,
    /// Its length in bytes (`nr_entries * 20`).
    pub len: u64,
}

impl XenMemoryMap {
    /// The argument, its padding zeroed.
    pub const fn new(nr_entries: u32, buffer: u64) -> Self {
        Self {
            nr_entries,
            _pad0: [0; 4],
            buffer,
        }
    }

    /// Validates this copy: at most `max_entries` entries, a non-null buffer if there are any, and a
    /// buffer that does not wrap around the address space.
    pub fn validate(&self, max_entries: u32) -> Result<MemoryMapBuffer, Error> {
        let nr_entries = self.nr_entries;
        if nr_entries > max_entries {
            return Err(Error::TooManyMapEntries {
                nr_entries,
                max: max_entries,
            });
        }
        if nr_entries > 0 && self.buffer == 0 {
            return Err(Error::NullMapBuffer(nr_entries));
        }
        let len = u64::from(nr_entries) * E820_ENTRY_SIZE as u64;
        if self.buffer.checked_add(len).is_none() {
            return Err(Error::MapBufferOverflow {
                buffer: self.buffer,
                nr_entries,
            });
        }
        Ok(MemoryMapBuffer {
            buffer: self.buffer,
            nr_entries,
            len,
        })
    }
}

/// The argument of `XENMEM_set_memory_map`: `struct xen_foreign_memory_map` in `memory.h`, x86-64
/// layout (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenForeignMemoryMap {
    /// The domain whose map is set.
    pub domid: DomId,
    _pad0: [u8; 6],
    /// The map.
    pub map: XenMemoryMap,
}

impl XenForeignMemoryMap {
    /// The argument, its padding zeroed.
    pub const fn new(domid: DomId, map: XenMemoryMap) -> Self {
        Self {
            domid,
            _pad0: [0; 6],
            map,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Populate-on-demand, resources, vNUMA
// ---------------------------------------------------------------------------------------------------

/// The argument of `XENMEM_{set,get}_pod_target`: `struct xen_pod_target` in `memory.h` (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenPodTarget {
    /// In: the target number of pages.
    pub target_pages: u64,
    /// Out: the domain's total pages.
    pub tot_pages: u64,
    /// Out: the pages in the PoD cache.
    pub pod_cache_pages: u64,
    /// Out: the PoD entries.
    pub pod_entries: u64,
    /// In: the domain.
    pub domid: DomId,
    _pad0: [u8; 6],
}

impl XenPodTarget {
    /// A request for `domid` with target `target_pages`, the outputs and padding zeroed.
    pub const fn new(domid: DomId, target_pages: u64) -> Self {
        Self {
            target_pages,
            tot_pages: 0,
            pod_cache_pages: 0,
            pod_entries: 0,
            domid,
            _pad0: [0; 6],
        }
    }
}

/// `XENMEM_resource_ioreq_server` in `memory.h`.
pub const XENMEM_resource_ioreq_server: u16 = 0;
/// `XENMEM_resource_grant_table` in `memory.h`.
pub const XENMEM_resource_grant_table: u16 = 1;
/// `XENMEM_resource_vmtrace_buf` in `memory.h`.
pub const XENMEM_resource_vmtrace_buf: u16 = 2;
/// `XENMEM_resource_grant_table_id_shared` in `memory.h`.
pub const XENMEM_resource_grant_table_id_shared: u32 = 0;
/// `XENMEM_resource_grant_table_id_status` in `memory.h`.
pub const XENMEM_resource_grant_table_id_status: u32 = 1;
/// `XENMEM_resource_ioreq_server_frame_bufioreq` in `memory.h`.
pub const XENMEM_resource_ioreq_server_frame_bufioreq: u64 = 0;

/// The argument of `XENMEM_acquire_resource`: `struct xen_mem_acquire_resource` in `memory.h` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemAcquireResource {
    /// The domain whose resource is mapped.
    pub domid: DomId,
    /// The resource type (`XENMEM_resource_*`); C spells it `type`.
    pub type_: u16,
    /// A type-specific id.
    pub id: u32,
    /// In/out: the number of frames.
    pub nr_frames: u32,
    /// Must be zero.
    pub pad: u32,
    /// The first frame to map.
    pub frame: u64,
    /// Guest handle (pointer) to the frame list.
    pub frame_list: u64,
}

/// One vNUMA memory range: `struct xen_vmemrange` in `memory.h` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenVmemrange {
    /// The start address.
    pub start: u64,
    /// The end address.
    pub end: u64,
    /// Flags.
    pub flags: u32,
    /// The virtual node.
    pub nid: u32,
}

/// The argument of `XENMEM_get_vnumainfo`: `struct xen_vnuma_topology_info` in `memory.h` (40 bytes).
/// The three handles are C unions of a pointer and a `uint64_t pad`: plain `u64` here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenVnumaTopologyInfo {
    /// The domain.
    pub domid: DomId,
    /// Padding, declared in C.
    pub pad: u16,
    /// In/out: the number of virtual nodes.
    pub nr_vnodes: u32,
    /// In/out: the number of vCPUs.
    pub nr_vcpus: u32,
    /// In/out: the number of memory ranges.
    pub nr_vmemranges: u32,
    /// Guest handle to the distance table (`vdistance.h`).
    pub vdistance: u64,
    /// Guest handle to the vCPU-to-node table (`vcpu_to_vnode.h`).
    pub vcpu_to_vnode: u64,
    /// Guest handle to the memory ranges (`vmemrange.h`).
    pub vmemrange: u64,
}
