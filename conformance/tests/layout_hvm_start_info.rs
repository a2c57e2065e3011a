//! `xen_abi::hvm_start_info` against `arch-x86/hvm/start_info.h`.
//!
//! `HVM_START_INFO_VERSION_0`/`_1` have no C constant (the header describes the versions in a comment),
//! so they are not in the table.

use blanket_conformance::{c_table, check, layout, offset};
#[allow(clippy::wildcard_imports)]
use xen_abi::hvm_start_info::*;

/// Constants whose Rust name equals the C name, from the module imported above.
#[test]
fn start_info_h_matches() {
    let rust = [
        blanket_conformance::consts!(
            XEN_HVM_START_MAGIC_VALUE,
            XEN_HVM_MEMMAP_TYPE_RAM,
            XEN_HVM_MEMMAP_TYPE_RESERVED,
            XEN_HVM_MEMMAP_TYPE_ACPI,
            XEN_HVM_MEMMAP_TYPE_NVS,
            XEN_HVM_MEMMAP_TYPE_UNUSABLE,
            XEN_HVM_MEMMAP_TYPE_DISABLED,
            XEN_HVM_MEMMAP_TYPE_PMEM,
        ),
        layout!(HvmStartInfo => "struct hvm_start_info" {
            magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr,
            memmap_entries, reserved
        }),
        layout!(HvmModlistEntry => "struct hvm_modlist_entry" { paddr, size, cmdline_paddr, reserved }),
        layout!(HvmMemmapTableEntry => "struct hvm_memmap_table_entry" { addr, size, reserved }),
        offset!(HvmMemmapTableEntry => "struct hvm_memmap_table_entry"."type" = type_),
    ]
    .concat();
    check("hvm_start_info", &c_table!(abi_table_hvm_start_info), &rust);
}

/// The typed memory-map types cover exactly the C values.
#[test]
fn memmap_types_cover_every_c_value() {
    let c = c_table!(abi_table_hvm_start_info);
    let types: Vec<u32> = c
        .iter()
        .filter(|e| e.key.starts_with("const:XEN_HVM_MEMMAP_TYPE_"))
        .map(|e| e.value as u32)
        .collect();
    assert_eq!(types.len(), HvmMemmapType::ALL.len());
    for v in types {
        assert_eq!(HvmMemmapType::try_from(v).map(u32::from), Ok(v));
    }
}
