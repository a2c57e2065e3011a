//! `xen_abi::memory` against `memory.h`.
//!
//! `E820Entry` has no C counterpart in Xen's public headers (`memory.h` refers to the BIOS format), so
//! it is not in the table; its 20-byte packed layout is checked by `e820_entry_is_the_bios_layout`.

use blanket_conformance::{Entry, c_table, check, layout, offset};
#[allow(clippy::wildcard_imports)]
use xen_abi::memory::*;

/// Constants whose Rust name equals the C name, from the module imported above.
/// A constant under a C spelling (such as a macro call).
fn c_const(c: &str, value: u64) -> Vec<Entry> {
    vec![Entry::new(format!("const:{c}"), value as i64)]
}

#[test]
fn memory_h_matches() {
    let rust = [
        blanket_conformance::consts!(
            XENMEM_increase_reservation,
            XENMEM_decrease_reservation,
            XENMEM_maximum_ram_page,
            XENMEM_current_reservation,
            XENMEM_maximum_reservation,
            XENMEM_machphys_mfn_list,
            XENMEM_populate_physmap,
            XENMEM_add_to_physmap,
            XENMEM_memory_map,
            XENMEM_machine_memory_map,
            XENMEM_exchange,
            XENMEM_machphys_mapping,
            XENMEM_set_memory_map,
            XENMEM_maximum_gpfn,
            XENMEM_remove_from_physmap,
            XENMEM_set_pod_target,
            XENMEM_get_pod_target,
            XENMEM_add_to_physmap_batch,
            XENMEM_machphys_compat_mfn_list,
            XENMEM_get_vnumainfo,
            XENMEM_acquire_resource,
            XENMEMF_populate_on_demand,
            XENMEMF_exact_node_request,
            XENMEMF_vnode,
            XENMAPSPACE_shared_info,
            XENMAPSPACE_grant_table,
            XENMAPSPACE_gmfn,
            XENMAPSPACE_gmfn_range,
            XENMAPSPACE_gmfn_foreign,
            XENMAPSPACE_dev_mmio,
            XENMAPIDX_grant_table_status,
            XENMEM_resource_ioreq_server,
            XENMEM_resource_grant_table,
            XENMEM_resource_vmtrace_buf,
            XENMEM_resource_grant_table_id_shared,
            XENMEM_resource_grant_table_id_status,
            XENMEM_resource_ioreq_server_frame_bufioreq,
        ),
        c_const("XENMEMF_address_bits(32)", xenmemf_address_bits(32).into()),
        c_const(
            "XENMEMF_get_address_bits(XENMEMF_address_bits(32))",
            (xenmemf_address_bits(32) & XENMEMF_ADDRESS_BITS_MASK).into(),
        ),
        c_const("XENMEMF_node(0)", xenmemf_node(0).into()),
        c_const("XENMEMF_node(3)", xenmemf_node(3).into()),
        c_const("XENMEMF_node(254)", xenmemf_node(254).into()),
        c_const(
            "XENMEMF_get_node(XENMEMF_node(3))",
            XenMemoryReservation::new(0, 0, 0, xenmemf_node(3), 0)
                .validate(&ReservationLimits { max_extent_order: 0, max_nr_extents: 0 })
                .unwrap()
                .node
                .unwrap()
                .into(),
        ),
        c_const("XENMEMF_exact_node(5)", xenmemf_exact_node(5).into()),
        layout!(XenMemoryReservation => "struct xen_memory_reservation" {
            extent_start, nr_extents, extent_order, mem_flags, domid
        }),
        layout!(XenMemoryExchange => "struct xen_memory_exchange" { out, nr_exchanged }),
        offset!(XenMemoryExchange => "struct xen_memory_exchange"."in" = in_),
        layout!(XenMemoryDomain => "struct xen_memory_domain" { domid }),
        layout!(XenMachphysMfnList => "struct xen_machphys_mfn_list" { max_extents, extent_start, nr_extents }),
        layout!(XenMachphysMapping => "struct xen_machphys_mapping" { v_start, v_end, max_mfn }),
        layout!(XenAddToPhysmap => "struct xen_add_to_physmap" { domid, size, space, idx, gpfn }),
        layout!(XenAddToPhysmapBatch => "struct xen_add_to_physmap_batch" {
            domid, space, size, idxs, gpfns, errs
        }),
        offset!(XenAddToPhysmapBatch => "struct xen_add_to_physmap_batch"."u.foreign_domid" = u),
        offset!(XenAddToPhysmapBatch => "struct xen_add_to_physmap_batch"."u.res0" = u),
        layout!(XenRemoveFromPhysmap => "struct xen_remove_from_physmap" { domid, gpfn }),
        layout!(XenMemoryMap => "struct xen_memory_map" { nr_entries, buffer }),
        layout!(XenForeignMemoryMap => "struct xen_foreign_memory_map" { domid, map }),
        layout!(XenPodTarget => "struct xen_pod_target" {
            target_pages, tot_pages, pod_cache_pages, pod_entries, domid
        }),
        layout!(XenMemAcquireResource => "struct xen_mem_acquire_resource" {
            domid, id, nr_frames, pad, frame, frame_list
        }),
        offset!(XenMemAcquireResource => "struct xen_mem_acquire_resource"."type" = type_),
        layout!(XenVmemrange => "struct xen_vmemrange" { start, end, flags, nid }),
        layout!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info" {
            domid, pad, nr_vnodes, nr_vcpus, nr_vmemranges
        }),
        offset!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info"."vdistance.h" = vdistance),
        offset!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info"."vdistance.pad" = vdistance),
        offset!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info"."vcpu_to_vnode.h" = vcpu_to_vnode),
        offset!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info"."vcpu_to_vnode.pad" = vcpu_to_vnode),
        offset!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info"."vmemrange.h" = vmemrange),
        offset!(XenVnumaTopologyInfo => "struct xen_vnuma_topology_info"."vmemrange.pad" = vmemrange),
    ]
    .concat();
    check("memory", &c_table!(abi_table_memory), &rust);
}

/// The BIOS E820 entry: 8-byte base, 8-byte size, 4-byte type, packed (no C struct in Xen's headers).
#[test]
fn e820_entry_is_the_bios_layout() {
    assert_eq!(size_of::<E820Entry>(), E820_ENTRY_SIZE);
    assert_eq!(align_of::<E820Entry>(), 1);
    assert_eq!(std::mem::offset_of!(E820Entry, addr), 0);
    assert_eq!(std::mem::offset_of!(E820Entry, size), 8);
    assert_eq!(std::mem::offset_of!(E820Entry, type_), 16);
}

/// The typed enums cover exactly the C values.
#[test]
fn enums_cover_every_c_value() {
    let c = c_table!(abi_table_memory);
    let ops: Vec<u32> = c
        .iter()
        .filter(|e| {
            e.key.starts_with("const:XENMEM_") && !e.key.starts_with("const:XENMEM_resource")
        })
        .map(|e| e.value as u32)
        .collect();
    assert_eq!(ops.len(), XenMemOp::ALL.len());
    for v in ops {
        assert_eq!(XenMemOp::try_from(v).map(u32::from), Ok(v));
    }
    let spaces: Vec<u32> = c
        .iter()
        .filter(|e| e.key.starts_with("const:XENMAPSPACE_"))
        .map(|e| e.value as u32)
        .collect();
    assert_eq!(spaces.len(), XenMapSpace::ALL.len());
    for v in spaces {
        assert_eq!(XenMapSpace::try_from(v).map(u32::from), Ok(v));
    }
}
