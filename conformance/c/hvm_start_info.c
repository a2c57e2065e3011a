/* The PVH start-of-day structure (arch-x86/hvm/start_info.h). */
#include "abi_table.h"
#include <xen/xen.h>
#include <xen/arch-x86/hvm/start_info.h>

static const struct abi_entry entries[] = {
    ABI_CONST(XEN_HVM_START_MAGIC_VALUE),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_RAM),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_RESERVED),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_ACPI),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_NVS),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_UNUSABLE),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_DISABLED),
    ABI_CONST(XEN_HVM_MEMMAP_TYPE_PMEM),

    ABI_TYPE(struct hvm_start_info),
    ABI_OFFSET(struct hvm_start_info, magic),
    ABI_OFFSET(struct hvm_start_info, version),
    ABI_OFFSET(struct hvm_start_info, flags),
    ABI_OFFSET(struct hvm_start_info, nr_modules),
    ABI_OFFSET(struct hvm_start_info, modlist_paddr),
    ABI_OFFSET(struct hvm_start_info, cmdline_paddr),
    ABI_OFFSET(struct hvm_start_info, rsdp_paddr),
    ABI_OFFSET(struct hvm_start_info, memmap_paddr),
    ABI_OFFSET(struct hvm_start_info, memmap_entries),
    ABI_OFFSET(struct hvm_start_info, reserved),

    ABI_TYPE(struct hvm_modlist_entry),
    ABI_OFFSET(struct hvm_modlist_entry, paddr),
    ABI_OFFSET(struct hvm_modlist_entry, size),
    ABI_OFFSET(struct hvm_modlist_entry, cmdline_paddr),
    ABI_OFFSET(struct hvm_modlist_entry, reserved),

    ABI_TYPE(struct hvm_memmap_table_entry),
    ABI_OFFSET(struct hvm_memmap_table_entry, addr),
    ABI_OFFSET(struct hvm_memmap_table_entry, size),
    ABI_OFFSET(struct hvm_memmap_table_entry, type),
    ABI_OFFSET(struct hvm_memmap_table_entry, reserved),
};

ABI_TABLE(hvm_start_info, entries)
