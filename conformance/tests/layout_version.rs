//! `xen_abi::version` against `version.h` and `features.h`.

use blanket_conformance::{Entry, c_table, check, layout};
#[allow(clippy::wildcard_imports)]
use xen_abi::version::*;

/// Constants whose Rust name equals the C name, from the module imported above.
/// The size and alignment of a Rust type under a C type name.
macro_rules! type_as {
    ($ty:ty => $c:literal) => {
        vec![
            Entry::new(concat!("size:", $c), size_of::<$ty>() as i64),
            Entry::new(concat!("align:", $c), align_of::<$ty>() as i64),
        ]
    };
}

#[test]
fn version_h_matches() {
    let rust = [
        blanket_conformance::consts!(
            XENVER_version,
            XENVER_extraversion,
            XENVER_compile_info,
            XENVER_capabilities,
            XENVER_changeset,
            XENVER_platform_parameters,
            XENVER_get_features,
            XENVER_pagesize,
            XENVER_guest_handle,
            XENVER_commandline,
            XENVER_build_id,
            XEN_EXTRAVERSION_LEN,
            XEN_CAPABILITIES_INFO_LEN,
            XEN_CHANGESET_INFO_LEN,
        ),
        type_as!(XenExtraversion => "xen_extraversion_t"),
        type_as!(XenCapabilitiesInfo => "xen_capabilities_info_t"),
        type_as!(XenChangesetInfo => "xen_changeset_info_t"),
        type_as!(XenCommandline => "xen_commandline_t"),
        type_as!(XenDomainHandle => "xen_domain_handle_t"),
        layout!(XenCompileInfo => "struct xen_compile_info" { compiler, compile_by, compile_domain, compile_date }),
        layout!(XenPlatformParameters => "struct xen_platform_parameters" { virt_start }),
        layout!(XenFeatureInfo => "struct xen_feature_info" { submap_idx, submap }),
        // The C struct ends with a flexible array: its size is the fixed part, rounded to its alignment.
        layout!(XenBuildId => "struct xen_build_id" { len }),
        vec![Entry::new("offset:struct xen_build_id.buf", XEN_BUILD_ID_BUF_OFFSET as i64)],
        blanket_conformance::consts!(
            XENFEAT_writable_page_tables,
            XENFEAT_writable_descriptor_tables,
            XENFEAT_auto_translated_physmap,
            XENFEAT_supervisor_mode_kernel,
            XENFEAT_pae_pgdir_above_4gb,
            XENFEAT_mmu_pt_update_preserve_ad,
            XENFEAT_highmem_assist,
            XENFEAT_gnttab_map_avail_bits,
            XENFEAT_hvm_callback_vector,
            XENFEAT_hvm_safe_pvclock,
            XENFEAT_hvm_pirqs,
            XENFEAT_dom0,
            XENFEAT_memory_op_vnode_supported,
            XENFEAT_ARM_SMCCC_supported,
            XENFEAT_linux_rsdp_unrestricted,
            XENFEAT_not_direct_mapped,
            XENFEAT_direct_mapped,
            XENFEAT_NR_SUBMAPS,
        ),
    ]
    .concat();
    check("version", &c_table!(abi_table_version), &rust);
}

/// Every `XENFEAT_*` bit of the C table is a flag of `XenFeatures`, and the flags are exactly those bits.
#[test]
fn feature_flags_are_the_c_bits() {
    let c = c_table!(abi_table_version);
    let mut all = 0u32;
    for e in c
        .iter()
        .filter(|e| e.key.starts_with("const:XENFEAT_") && e.key != "const:XENFEAT_NR_SUBMAPS")
    {
        let bit = 1u32 << e.value;
        assert!(
            XenFeatures::from_bits(bit).is_some(),
            "{} is not a XenFeatures flag",
            e.key
        );
        all |= bit;
    }
    assert_eq!(XenFeatures::all().bits(), all);
    let cmds: Vec<u32> = c
        .iter()
        .filter(|e| e.key.starts_with("const:XENVER_"))
        .map(|e| e.value as u32)
        .collect();
    assert_eq!(cmds.len(), XenVer::ALL.len());
    for v in cmds {
        assert_eq!(XenVer::try_from(v).map(u32::from), Ok(v));
    }
}
