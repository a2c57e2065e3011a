/* HYPERVISOR_xen_version (version.h) and the feature bits (features.h). */
#include "abi_table.h"
#include <xen/xen.h>
#include <xen/version.h>

static const struct abi_entry entries[] = {
    ABI_CONST(XENVER_version),
    ABI_CONST(XENVER_extraversion),
    ABI_CONST(XENVER_compile_info),
    ABI_CONST(XENVER_capabilities),
    ABI_CONST(XENVER_changeset),
    ABI_CONST(XENVER_platform_parameters),
    ABI_CONST(XENVER_get_features),
    ABI_CONST(XENVER_pagesize),
    ABI_CONST(XENVER_guest_handle),
    ABI_CONST(XENVER_commandline),
    ABI_CONST(XENVER_build_id),

    ABI_CONST(XEN_EXTRAVERSION_LEN),
    ABI_CONST(XEN_CAPABILITIES_INFO_LEN),
    ABI_CONST(XEN_CHANGESET_INFO_LEN),
    ABI_TYPE(xen_extraversion_t),
    ABI_TYPE(xen_capabilities_info_t),
    ABI_TYPE(xen_changeset_info_t),
    ABI_TYPE(xen_commandline_t),
    ABI_TYPE(xen_domain_handle_t),

    ABI_TYPE(struct xen_compile_info),
    ABI_OFFSET(struct xen_compile_info, compiler),
    ABI_OFFSET(struct xen_compile_info, compile_by),
    ABI_OFFSET(struct xen_compile_info, compile_domain),
    ABI_OFFSET(struct xen_compile_info, compile_date),

    ABI_TYPE(struct xen_platform_parameters),
    ABI_OFFSET(struct xen_platform_parameters, virt_start),

    ABI_TYPE(struct xen_feature_info),
    ABI_OFFSET(struct xen_feature_info, submap_idx),
    ABI_OFFSET(struct xen_feature_info, submap),

    ABI_TYPE(struct xen_build_id),
    ABI_OFFSET(struct xen_build_id, len),
    ABI_OFFSET(struct xen_build_id, buf),

    ABI_CONST(XENFEAT_writable_page_tables),
    ABI_CONST(XENFEAT_writable_descriptor_tables),
    ABI_CONST(XENFEAT_auto_translated_physmap),
    ABI_CONST(XENFEAT_supervisor_mode_kernel),
    ABI_CONST(XENFEAT_pae_pgdir_above_4gb),
    ABI_CONST(XENFEAT_mmu_pt_update_preserve_ad),
    ABI_CONST(XENFEAT_highmem_assist),
    ABI_CONST(XENFEAT_gnttab_map_avail_bits),
    ABI_CONST(XENFEAT_hvm_callback_vector),
    ABI_CONST(XENFEAT_hvm_safe_pvclock),
    ABI_CONST(XENFEAT_hvm_pirqs),
    ABI_CONST(XENFEAT_dom0),
    ABI_CONST(XENFEAT_memory_op_vnode_supported),
    ABI_CONST(XENFEAT_ARM_SMCCC_supported),
    ABI_CONST(XENFEAT_linux_rsdp_unrestricted),
    ABI_CONST(XENFEAT_not_direct_mapped),
    ABI_CONST(XENFEAT_direct_mapped),
    ABI_CONST(XENFEAT_NR_SUBMAPS),
};

ABI_TABLE(version, entries)
