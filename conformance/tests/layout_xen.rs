//! `xen_abi::xen` (start_info, shared_info, vcpu_info, vcpu_time_info) against `xen.h`,
//! `arch-x86/xen.h` and `arch-x86/xen-x86_64.h`.

use blanket_conformance::{Entry, c_table, check, layout};
#[allow(clippy::wildcard_imports)]
use xen_abi::xen::*;

/// Constants whose Rust name equals the C name, from the module imported above.
/// The size of a field, under the key `size:C_TYPE.field`.
macro_rules! member_size {
    ($c:literal . $field:ident = $value:expr) => {
        vec![Entry::new(
            concat!("size:", $c, ".", stringify!($field)),
            size_of_val(&$value) as i64,
        )]
    };
}

#[test]
fn xen_h_shared_pages_match() {
    let si = SharedInfo::new();
    let start = StartInfo::new();
    let console = std::mem::offset_of!(StartInfo, console) as i64;
    let domu = |f: i64| console + f;
    let rust = [
        blanket_conformance::consts!(
            XEN_LEGACY_MAX_VCPUS,
            XEN_PVCLOCK_TSC_STABLE_BIT,
            XEN_PVCLOCK_GUEST_STOPPED,
            MAX_GUEST_CMDLINE,
            SIF_PRIVILEGED,
            SIF_INITDOMAIN,
            SIF_MULTIBOOT_MOD,
            SIF_MOD_START_PFN,
            SIF_VIRT_P2M_4TOOLS,
            SIF_PM_MASK,
        ),
        layout!(VcpuTimeInfo => "struct vcpu_time_info" {
            version, pad0, tsc_timestamp, system_time, tsc_to_system_mul, tsc_shift, flags, pad1
        }),
        layout!(ArchVcpuInfo => "struct arch_vcpu_info" { cr2, pad }),
        layout!(VcpuInfo => "struct vcpu_info" {
            evtchn_upcall_pending, evtchn_upcall_mask, evtchn_pending_sel, arch, time
        }),
        layout!(ArchSharedInfo => "struct arch_shared_info" {
            max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation
        }),
        layout!(SharedInfo => "struct shared_info" {
            vcpu_info, evtchn_pending, evtchn_mask, wc_version, wc_sec, wc_nsec, wc_sec_hi, arch
        }),
        member_size!("struct shared_info".vcpu_info = si.vcpu_info),
        member_size!("struct shared_info".evtchn_pending = si.evtchn_pending),
        member_size!("struct shared_info".evtchn_mask = si.evtchn_mask),
        layout!(StartInfo => "struct start_info" {
            magic, nr_pages, shared_info, flags, store_mfn, store_evtchn, console, pt_base, nr_pt_frames,
            mfn_list, mod_start, mod_len, cmd_line, first_p2m_pfn, nr_p2m_frames
        }),
        // The console union is a pair of words in Rust; its views' fields sit at these offsets.
        vec![
            Entry::new("offset:struct start_info.console.domU.mfn", domu(0)),
            Entry::new("offset:struct start_info.console.domU.evtchn", domu(8)),
            Entry::new("offset:struct start_info.console.dom0.info_off", domu(0)),
            Entry::new("offset:struct start_info.console.dom0.info_size", domu(4)),
        ],
        member_size!("struct start_info".magic = start.magic),
        member_size!("struct start_info".console = start.console),
        member_size!("struct start_info".cmd_line = start.cmd_line),
        layout!(XenMultibootModList => "struct xen_multiboot_mod_list" { mod_start, mod_end, cmdline, pad }),
    ]
    .concat();
    check("xen", &c_table!(abi_table_xen), &rust);
}
