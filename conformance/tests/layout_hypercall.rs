//! `xen_abi::hypercall` against `xen.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_64.h` and `arch-x86/xen-mca.h`.

use blanket_conformance::{Entry, c_table, check, layout, offset};
#[allow(clippy::wildcard_imports)]
use xen_abi::hypercall::*;

/// Constants whose Rust name equals the C name, from the module imported above. (`consts!` of the harness
/// cannot take a module path whose segment count differs from the number of names.)
fn rust_table() -> Vec<Entry> {
    [
        blanket_conformance::consts!(
            __HYPERVISOR_set_trap_table,
            __HYPERVISOR_mmu_update,
            __HYPERVISOR_set_gdt,
            __HYPERVISOR_stack_switch,
            __HYPERVISOR_set_callbacks,
            __HYPERVISOR_fpu_taskswitch,
            __HYPERVISOR_sched_op_compat,
            __HYPERVISOR_platform_op,
            __HYPERVISOR_set_debugreg,
            __HYPERVISOR_get_debugreg,
            __HYPERVISOR_update_descriptor,
            __HYPERVISOR_memory_op,
            __HYPERVISOR_multicall,
            __HYPERVISOR_update_va_mapping,
            __HYPERVISOR_set_timer_op,
            __HYPERVISOR_event_channel_op_compat,
            __HYPERVISOR_xen_version,
            __HYPERVISOR_console_io,
            __HYPERVISOR_physdev_op_compat,
            __HYPERVISOR_grant_table_op,
            __HYPERVISOR_vm_assist,
            __HYPERVISOR_update_va_mapping_otherdomain,
            __HYPERVISOR_iret,
            __HYPERVISOR_vcpu_op,
            __HYPERVISOR_set_segment_base,
            __HYPERVISOR_mmuext_op,
            __HYPERVISOR_xsm_op,
            __HYPERVISOR_nmi_op,
            __HYPERVISOR_sched_op,
            __HYPERVISOR_callback_op,
            __HYPERVISOR_xenoprof_op,
            __HYPERVISOR_event_channel_op,
            __HYPERVISOR_physdev_op,
            __HYPERVISOR_hvm_op,
            __HYPERVISOR_sysctl,
            __HYPERVISOR_domctl,
            __HYPERVISOR_kexec_op,
            __HYPERVISOR_tmem_op,
            __HYPERVISOR_argo_op,
            __HYPERVISOR_xenpmu_op,
            __HYPERVISOR_dm_op,
            __HYPERVISOR_hypfs_op,
            __HYPERVISOR_arch_0,
            __HYPERVISOR_arch_1,
            __HYPERVISOR_arch_2,
            __HYPERVISOR_arch_3,
            __HYPERVISOR_arch_4,
            __HYPERVISOR_arch_5,
            __HYPERVISOR_arch_6,
            __HYPERVISOR_arch_7,
            __HYPERVISOR_mca
        ),
        blanket_conformance::consts!(
            VIRQ_TIMER,
            VIRQ_DEBUG,
            VIRQ_CONSOLE,
            VIRQ_DOM_EXC,
            VIRQ_TBUF,
            VIRQ_DEBUGGER,
            VIRQ_XENOPROF,
            VIRQ_CON_RING,
            VIRQ_PCPU_STATE,
            VIRQ_MEM_EVENT,
            VIRQ_ARGO,
            VIRQ_ENOMEM,
            VIRQ_XENPMU,
            VIRQ_ARCH_0,
            VIRQ_ARCH_1,
            VIRQ_ARCH_2,
            VIRQ_ARCH_3,
            VIRQ_ARCH_4,
            VIRQ_ARCH_5,
            VIRQ_ARCH_6,
            VIRQ_ARCH_7,
            VIRQ_MCA,
            NR_VIRQS
        ),
        blanket_conformance::consts!(
            DOMID_FIRST_RESERVED,
            DOMID_SELF,
            DOMID_IO,
            DOMID_XEN,
            DOMID_COW,
            DOMID_INVALID,
            DOMID_IDLE,
            DOMID_MASK
        ),
        blanket_conformance::consts!(
            MMU_NORMAL_PT_UPDATE,
            MMU_MACHPHYS_UPDATE,
            MMU_PT_UPDATE_PRESERVE_AD,
            MMU_PT_UPDATE_NO_TRANSLATE
        ),
        layout!(MmuUpdate => "struct mmu_update" { ptr, val }),
        blanket_conformance::consts!(
            MMUEXT_PIN_L1_TABLE,
            MMUEXT_PIN_L2_TABLE,
            MMUEXT_PIN_L3_TABLE,
            MMUEXT_PIN_L4_TABLE,
            MMUEXT_UNPIN_TABLE,
            MMUEXT_NEW_BASEPTR,
            MMUEXT_TLB_FLUSH_LOCAL,
            MMUEXT_INVLPG_LOCAL,
            MMUEXT_TLB_FLUSH_MULTI,
            MMUEXT_INVLPG_MULTI,
            MMUEXT_TLB_FLUSH_ALL,
            MMUEXT_INVLPG_ALL,
            MMUEXT_FLUSH_CACHE,
            MMUEXT_SET_LDT,
            MMUEXT_NEW_USER_BASEPTR,
            MMUEXT_CLEAR_PAGE,
            MMUEXT_COPY_PAGE,
            MMUEXT_FLUSH_CACHE_GLOBAL,
            MMUEXT_MARK_SUPER,
            MMUEXT_UNMARK_SUPER
        ),
        layout!(MmuextOp => "struct mmuext_op" { cmd }),
        offset!(MmuextOp => "struct mmuext_op"."arg1.mfn" = arg1),
        offset!(MmuextOp => "struct mmuext_op"."arg1.linear_addr" = arg1),
        offset!(MmuextOp => "struct mmuext_op"."arg2.nr_ents" = arg2),
        offset!(MmuextOp => "struct mmuext_op"."arg2.vcpumask" = arg2),
        offset!(MmuextOp => "struct mmuext_op"."arg2.src_mfn" = arg2),
        vec![
            Entry::new("size:mmuext_op.arg1", 8),
            Entry::new("size:mmuext_op.arg2", 8),
        ],
        blanket_conformance::consts!(
            UVMF_NONE,
            UVMF_TLB_FLUSH,
            UVMF_INVLPG,
            UVMF_FLUSHTYPE_MASK,
            UVMF_MULTI,
            UVMF_LOCAL,
            UVMF_ALL
        ),
        blanket_conformance::consts!(
            CONSOLEIO_write,
            CONSOLEIO_read,
            VMASST_CMD_enable,
            VMASST_CMD_disable,
            VMASST_TYPE_4gb_segments,
            VMASST_TYPE_4gb_segments_notify,
            VMASST_TYPE_writable_pagetables,
            VMASST_TYPE_pae_extended_cr3,
            VMASST_TYPE_architectural_iopl,
            VMASST_TYPE_runstate_update_flag,
            VMASST_TYPE_m2p_strict
        ),
        layout!(TrapInfo => "struct trap_info" { vector, flags, cs, address }),
        layout!(MulticallEntry => "struct multicall_entry" { op, result, args }),
        vec![Entry::new(
            "size:multicall_entry.args",
            size_of::<[u64; 6]>() as i64,
        )],
    ]
    .concat()
}

#[test]
fn hypercall_abi_matches_xen_h() {
    // The `arg1`/`arg2` unions are plain `u64` fields in Rust: check that the unions are 8 bytes too.
    assert_eq!(size_of::<u64>(), 8);
    check("hypercall", &c_table!(abi_table_hypercall), &rust_table());
}

/// Every C value of each enum decodes to the variant of the same value, and the enums cover every
/// constant the table lists.
#[test]
fn enums_cover_every_c_value() {
    let c = c_table!(abi_table_hypercall);
    let value = |name: &str| {
        c.iter()
            .find(|e| e.key == format!("const:{name}"))
            .map(|e| e.value)
    };
    let hypercalls: Vec<i64> = c
        .iter()
        .filter(|e| e.key.starts_with("const:__HYPERVISOR_") && e.key != "const:__HYPERVISOR_mca")
        .map(|e| e.value)
        .collect();
    assert_eq!(hypercalls.len(), Hypercall::ALL.len());
    for v in hypercalls {
        assert_eq!(Hypercall::try_from(v as u64).map(u64::from), Ok(v as u64));
    }
    let virqs: Vec<i64> = c
        .iter()
        .filter(|e| e.key.starts_with("const:VIRQ_") && e.key != "const:VIRQ_MCA")
        .map(|e| e.value)
        .collect();
    assert_eq!(virqs.len(), Virq::ALL.len());
    for v in virqs {
        assert_eq!(Virq::try_from(v as u32).map(u32::from), Ok(v as u32));
    }
    let cmds: Vec<i64> = c
        .iter()
        .filter(|e| e.key.starts_with("const:MMUEXT_"))
        .map(|e| e.value)
        .collect();
    assert_eq!(cmds.len(), MmuextCmd::ALL.len());
    for v in cmds {
        assert_eq!(MmuextCmd::try_from(v as u32).map(u32::from), Ok(v as u32));
    }
    assert_eq!(
        value("NR_VIRQS"),
        Some(Virq::ALL.iter().map(|v| v.raw()).max().unwrap() as i64 + 1)
    );
}
