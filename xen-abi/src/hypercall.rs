//! Hypercall numbers, the x86-64 PV calling convention, and the argument structures of the core PV
//! hypercalls (`xen.h` and `arch-x86/xen-x86_64.h`).
//!
//! # The x86-64 PV calling convention
//!
//! A 64-bit PV guest makes a hypercall by calling into the *hypercall page*, a page that the domain
//! builder (or the guest, through a Xen MSR) fills with one 32-byte stub per hypercall: hypercall `n`
//! lives at `hypercall_page + n * 32` ([`HYPERCALL_PAGE_ENTRY_SIZE`], [`hypercall_page_offset`]).
//! Registers (`arch-x86/xen-x86_64.h`):
//!
//! | register | meaning                                           |
//! |----------|---------------------------------------------------|
//! | `rax`    | the hypercall number (`__HYPERVISOR_*`); result   |
//! | `rdi`    | argument 1                                        |
//! | `rsi`    | argument 2                                        |
//! | `rdx`    | argument 3                                        |
//! | `r10`    | argument 4                                        |
//! | `r8`     | argument 5                                        |
//!
//! The result comes back in `rax` (zero or a negative errno, except where a hypercall says otherwise).
//! The argument registers are clobbered. [`HypercallRegs`] holds the six registers and decodes them.
//!
//! Everything a guest passes here is untrusted: the number is decoded with `TryFrom` into
//! [`Hypercall`], and the structures ([`MmuUpdate`], [`MmuextOp`], [`TrapInfo`], [`MulticallEntry`]) are
//! decoded from a copy into typed values ([`MmuUpdateOp`], [`MmuextCmdOp`]) or a typed [`HypercallError`].
#![forbid(unsafe_code)]
#![allow(non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::DomId;

/// Declares a `#[non_exhaustive]` enum over raw protocol values, with `TryFrom<raw>`, `From<enum> for
/// raw`, `raw()` and `ALL`.
macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $raw:ident, |$v:ident| $err:expr;
        {
            $( $(#[$vmeta:meta])* $variant:ident = $value:path ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        #[repr($raw)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every variant, in increasing order of raw value.
            pub const ALL: &'static [Self] = &[$( Self::$variant ),*];

            /// The raw value, as the C header defines it.
            pub const fn raw(self) -> $raw {
                self as $raw
            }
        }

        impl From<$name> for $raw {
            fn from(value: $name) -> $raw {
                value.raw()
            }
        }

        impl TryFrom<$raw> for $name {
            type Error = Error;

            fn try_from($v: $raw) -> Result<Self, Self::Error> {
                #[allow(unreachable_patterns)]
                match $v {
                    $( $value => Ok(Self::$variant), )*
                    _ => Err($err),
                }
            }
        }
    };
}
pub(crate) use abi_enum;

/// The errors of this module: hypercall arguments that a guest handed in and that do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `rax` (or a multicall entry's `op`) holds no hypercall that `xen.h` defines.
    #[error("unknown hypercall number {0} (xen.h defines 0-10, 12-42 and 48-55)")]
    UnknownHypercall(u64),
    /// A call into the hypercall page at an offset that is not the start of a 32-byte entry, or past the
    /// end of the page.
    #[error(
        "hypercall page offset {0:#x} is not the start of a 32-byte entry inside the 4096-byte page"
    )]
    BadHypercallPageOffset(u64),
    /// A VIRQ number that `xen.h` does not define.
    #[error("unknown VIRQ {0} (xen.h defines 0-4, 6-13 and 16-23)")]
    UnknownVirq(u32),
    /// `mmu_update.ptr[2:0]` holds a command other than the four `MMU_*` update types.
    #[error("mmu_update ptr {ptr:#x}: command {cmd} in ptr[2:0] is not an MMU_* update type (0-3)")]
    UnknownMmuUpdateType {
        /// The whole `ptr` field.
        ptr: u64,
        /// `ptr & 7`.
        cmd: u64,
    },
    /// An address given to [`MmuUpdate::new`] whose low three bits (where the command goes) are not zero.
    #[error(
        "mmu_update address {0:#x} is not 8-byte aligned: its low 3 bits carry the MMU_* command"
    )]
    MisalignedMmuUpdateAddress(u64),
    /// `mmuext_op.cmd` is not an `MMUEXT_*` command.
    #[error("unknown mmuext_op cmd {0} (xen.h defines 0-13 and 15-20)")]
    UnknownMmuextCmd(u32),
    /// `MMUEXT_SET_LDT` with a base that is not page-aligned.
    #[error("MMUEXT_SET_LDT: linear_addr {0:#x} is not aligned to a 4096-byte page")]
    LdtNotPageAligned(u64),
    /// `MMUEXT_SET_LDT` with more entries than an LDT holds.
    #[error("MMUEXT_SET_LDT: nr_ents {0} is above the maximum of 8192 LDT entries")]
    LdtTooLarge(u32),
    /// A `trap_info` with flag bits other than the privilege level (bits 0-1) and the IF bit (bit 2).
    #[error(
        "trap_info for vector {vector}: flags {flags:#x} has bits set outside 0x7 (DPL and IF)"
    )]
    BadTrapFlags {
        /// The exception vector.
        vector: u8,
        /// The flags byte.
        flags: u8,
    },
    /// A trap table with no terminating entry (`address == 0`) within the caller's bound.
    #[error("trap table has no terminating entry (address 0) within {0} entries")]
    UnterminatedTrapTable(usize),
    /// `CONSOLEIO_*` command that `xen.h` does not define.
    #[error("unknown console_io cmd {0} (CONSOLEIO_write is 0, CONSOLEIO_read is 1)")]
    UnknownConsoleIoCmd(u32),
    /// `VMASST_CMD_*` command that `xen.h` does not define.
    #[error("unknown vm_assist cmd {0} (VMASST_CMD_enable is 0, VMASST_CMD_disable is 1)")]
    UnknownVmAssistCmd(u32),
    /// `VMASST_TYPE_*` that `xen.h` does not define.
    #[error("unknown vm_assist type {0} (xen.h defines 0-5 and 32)")]
    UnknownVmAssistType(u32),
    /// `update_va_mapping` flags with bits outside the flush type, `UVMF_ALL` and the vCPU-mask pointer.
    #[error("update_va_mapping flags {0:#x}: unknown flush type 3 (UVMF_FLUSHTYPE_MASK)")]
    BadUvmFlushType(u64),
}

/// The error of this module, under a name that says where it comes from.
pub type HypercallError = Error;

// ---------------------------------------------------------------------------------------------------
// Hypercall numbers (`xen.h`, `enum hypercall_num`)
// ---------------------------------------------------------------------------------------------------

/// `__HYPERVISOR_set_trap_table` in `xen.h`.
pub const __HYPERVISOR_set_trap_table: u64 = 0;
/// `__HYPERVISOR_mmu_update` in `xen.h`.
pub const __HYPERVISOR_mmu_update: u64 = 1;
/// `__HYPERVISOR_set_gdt` in `xen.h`.
pub const __HYPERVISOR_set_gdt: u64 = 2;
/// `__HYPERVISOR_stack_switch` in `xen.h`.
pub const __HYPERVISOR_stack_switch: u64 = 3;
/// `__HYPERVISOR_set_callbacks` in `xen.h`.
pub const __HYPERVISOR_set_callbacks: u64 = 4;
/// `__HYPERVISOR_fpu_taskswitch` in `xen.h`.
pub const __HYPERVISOR_fpu_taskswitch: u64 = 5;
/// `__HYPERVISOR_sched_op_compat` in `xen.h` (compat since interface 0x00030101).
pub const __HYPERVISOR_sched_op_compat: u64 = 6;
/// `__HYPERVISOR_platform_op` in `xen.h`.
pub const __HYPERVISOR_platform_op: u64 = 7;
/// `__HYPERVISOR_set_debugreg` in `xen.h`.
pub const __HYPERVISOR_set_debugreg: u64 = 8;
/// `__HYPERVISOR_get_debugreg` in `xen.h`.
pub const __HYPERVISOR_get_debugreg: u64 = 9;
/// `__HYPERVISOR_update_descriptor` in `xen.h`.
pub const __HYPERVISOR_update_descriptor: u64 = 10;
/// `__HYPERVISOR_memory_op` in `xen.h`.
pub const __HYPERVISOR_memory_op: u64 = 12;
/// `__HYPERVISOR_multicall` in `xen.h`.
pub const __HYPERVISOR_multicall: u64 = 13;
/// `__HYPERVISOR_update_va_mapping` in `xen.h`.
pub const __HYPERVISOR_update_va_mapping: u64 = 14;
/// `__HYPERVISOR_set_timer_op` in `xen.h`.
pub const __HYPERVISOR_set_timer_op: u64 = 15;
/// `__HYPERVISOR_event_channel_op_compat` in `xen.h` (compat since interface 0x00030202).
pub const __HYPERVISOR_event_channel_op_compat: u64 = 16;
/// `__HYPERVISOR_xen_version` in `xen.h`.
pub const __HYPERVISOR_xen_version: u64 = 17;
/// `__HYPERVISOR_console_io` in `xen.h`.
pub const __HYPERVISOR_console_io: u64 = 18;
/// `__HYPERVISOR_physdev_op_compat` in `xen.h` (compat since interface 0x00030202).
pub const __HYPERVISOR_physdev_op_compat: u64 = 19;
/// `__HYPERVISOR_grant_table_op` in `xen.h`.
pub const __HYPERVISOR_grant_table_op: u64 = 20;
/// `__HYPERVISOR_vm_assist` in `xen.h`.
pub const __HYPERVISOR_vm_assist: u64 = 21;
/// `__HYPERVISOR_update_va_mapping_otherdomain` in `xen.h`.
pub const __HYPERVISOR_update_va_mapping_otherdomain: u64 = 22;
/// `__HYPERVISOR_iret` in `xen.h` (x86 only).
pub const __HYPERVISOR_iret: u64 = 23;
/// `__HYPERVISOR_vcpu_op` in `xen.h`.
pub const __HYPERVISOR_vcpu_op: u64 = 24;
/// `__HYPERVISOR_set_segment_base` in `xen.h` (x86-64 only).
pub const __HYPERVISOR_set_segment_base: u64 = 25;
/// `__HYPERVISOR_mmuext_op` in `xen.h`.
pub const __HYPERVISOR_mmuext_op: u64 = 26;
/// `__HYPERVISOR_xsm_op` in `xen.h`.
pub const __HYPERVISOR_xsm_op: u64 = 27;
/// `__HYPERVISOR_nmi_op` in `xen.h`.
pub const __HYPERVISOR_nmi_op: u64 = 28;
/// `__HYPERVISOR_sched_op` in `xen.h`.
pub const __HYPERVISOR_sched_op: u64 = 29;
/// `__HYPERVISOR_callback_op` in `xen.h`.
pub const __HYPERVISOR_callback_op: u64 = 30;
/// `__HYPERVISOR_xenoprof_op` in `xen.h`.
pub const __HYPERVISOR_xenoprof_op: u64 = 31;
/// `__HYPERVISOR_event_channel_op` in `xen.h`.
pub const __HYPERVISOR_event_channel_op: u64 = 32;
/// `__HYPERVISOR_physdev_op` in `xen.h`.
pub const __HYPERVISOR_physdev_op: u64 = 33;
/// `__HYPERVISOR_hvm_op` in `xen.h`.
pub const __HYPERVISOR_hvm_op: u64 = 34;
/// `__HYPERVISOR_sysctl` in `xen.h`.
pub const __HYPERVISOR_sysctl: u64 = 35;
/// `__HYPERVISOR_domctl` in `xen.h`.
pub const __HYPERVISOR_domctl: u64 = 36;
/// `__HYPERVISOR_kexec_op` in `xen.h`.
pub const __HYPERVISOR_kexec_op: u64 = 37;
/// `__HYPERVISOR_tmem_op` in `xen.h`.
pub const __HYPERVISOR_tmem_op: u64 = 38;
/// `__HYPERVISOR_argo_op` in `xen.h`.
pub const __HYPERVISOR_argo_op: u64 = 39;
/// `__HYPERVISOR_xenpmu_op` in `xen.h`.
pub const __HYPERVISOR_xenpmu_op: u64 = 40;
/// `__HYPERVISOR_dm_op` in `xen.h`.
pub const __HYPERVISOR_dm_op: u64 = 41;
/// `__HYPERVISOR_hypfs_op` in `xen.h`.
pub const __HYPERVISOR_hypfs_op: u64 = 42;
/// `__HYPERVISOR_arch_0` in `xen.h`: on x86, `__HYPERVISOR_mca` (`arch-x86/xen-mca.h`).
pub const __HYPERVISOR_arch_0: u64 = 48;
/// `__HYPERVISOR_arch_1` in `xen.h`.
pub const __HYPERVISOR_arch_1: u64 = 49;
/// `__HYPERVISOR_arch_2` in `xen.h`.
pub const __HYPERVISOR_arch_2: u64 = 50;
/// `__HYPERVISOR_arch_3` in `xen.h`.
pub const __HYPERVISOR_arch_3: u64 = 51;
/// `__HYPERVISOR_arch_4` in `xen.h`.
pub const __HYPERVISOR_arch_4: u64 = 52;
/// `__HYPERVISOR_arch_5` in `xen.h`.
pub const __HYPERVISOR_arch_5: u64 = 53;
/// `__HYPERVISOR_arch_6` in `xen.h`.
pub const __HYPERVISOR_arch_6: u64 = 54;
/// `__HYPERVISOR_arch_7` in `xen.h`.
pub const __HYPERVISOR_arch_7: u64 = 55;
/// `__HYPERVISOR_mca` in `arch-x86/xen-mca.h`: machine-check architecture, `__HYPERVISOR_arch_0`.
pub const __HYPERVISOR_mca: u64 = __HYPERVISOR_arch_0;

abi_enum! {
    /// A hypercall number (`enum hypercall_num` in `xen.h`, the `__HYPERVISOR_*` values), as a guest puts it
    /// in `rax` or in a [`MulticallEntry`]'s `op`.
    pub enum Hypercall: u64, |raw| Error::UnknownHypercall(raw);
    {
        /// `__HYPERVISOR_set_trap_table`.
        SetTrapTable = __HYPERVISOR_set_trap_table,
        /// `__HYPERVISOR_mmu_update`.
        MmuUpdate = __HYPERVISOR_mmu_update,
        /// `__HYPERVISOR_set_gdt`.
        SetGdt = __HYPERVISOR_set_gdt,
        /// `__HYPERVISOR_stack_switch`.
        StackSwitch = __HYPERVISOR_stack_switch,
        /// `__HYPERVISOR_set_callbacks`.
        SetCallbacks = __HYPERVISOR_set_callbacks,
        /// `__HYPERVISOR_fpu_taskswitch`.
        FpuTaskswitch = __HYPERVISOR_fpu_taskswitch,
        /// `__HYPERVISOR_sched_op_compat`.
        SchedOpCompat = __HYPERVISOR_sched_op_compat,
        /// `__HYPERVISOR_platform_op`.
        PlatformOp = __HYPERVISOR_platform_op,
        /// `__HYPERVISOR_set_debugreg`.
        SetDebugreg = __HYPERVISOR_set_debugreg,
        /// `__HYPERVISOR_get_debugreg`.
        GetDebugreg = __HYPERVISOR_get_debugreg,
        /// `__HYPERVISOR_update_descriptor`.
        UpdateDescriptor = __HYPERVISOR_update_descriptor,
        /// `__HYPERVISOR_memory_op`.
        MemoryOp = __HYPERVISOR_memory_op,
        /// `__HYPERVISOR_multicall`.
        Multicall = __HYPERVISOR_multicall,
        /// `__HYPERVISOR_update_va_mapping`.
        UpdateVaMapping = __HYPERVISOR_update_va_mapping,
        /// `__HYPERVISOR_set_timer_op`.
        SetTimerOp = __HYPERVISOR_set_timer_op,
        /// `__HYPERVISOR_event_channel_op_compat`.
        EventChannelOpCompat = __HYPERVISOR_event_channel_op_compat,
        /// `__HYPERVISOR_xen_version`.
        XenVersion = __HYPERVISOR_xen_version,
        /// `__HYPERVISOR_console_io`.
        ConsoleIo = __HYPERVISOR_console_io,
        /// `__HYPERVISOR_physdev_op_compat`.
        PhysdevOpCompat = __HYPERVISOR_physdev_op_compat,
        /// `__HYPERVISOR_grant_table_op`.
        GrantTableOp = __HYPERVISOR_grant_table_op,
        /// `__HYPERVISOR_vm_assist`.
        VmAssist = __HYPERVISOR_vm_assist,
        /// `__HYPERVISOR_update_va_mapping_otherdomain`.
        UpdateVaMappingOtherdomain = __HYPERVISOR_update_va_mapping_otherdomain,
        /// `__HYPERVISOR_iret`.
        Iret = __HYPERVISOR_iret,
        /// `__HYPERVISOR_vcpu_op`.
        VcpuOp = __HYPERVISOR_vcpu_op,
        /// `__HYPERVISOR_set_segment_base`.
        SetSegmentBase = __HYPERVISOR_set_segment_base,
        /// `__HYPERVISOR_mmuext_op`.
        MmuextOp = __HYPERVISOR_mmuext_op,
        /// `__HYPERVISOR_xsm_op`.
        XsmOp = __HYPERVISOR_xsm_op,
        /// `__HYPERVISOR_nmi_op`.
        NmiOp = __HYPERVISOR_nmi_op,
        /// `__HYPERVISOR_sched_op`.
        SchedOp = __HYPERVISOR_sched_op,
        /// `__HYPERVISOR_callback_op`.
        CallbackOp = __HYPERVISOR_callback_op,
        /// `__HYPERVISOR_xenoprof_op`.
        XenoprofOp = __HYPERVISOR_xenoprof_op,
        /// `__HYPERVISOR_event_channel_op`.
        EventChannelOp = __HYPERVISOR_event_channel_op,
        /// `__HYPERVISOR_physdev_op`.
        PhysdevOp = __HYPERVISOR_physdev_op,
        /// `__HYPERVISOR_hvm_op`.
        HvmOp = __HYPERVISOR_hvm_op,
        /// `__HYPERVISOR_sysctl`.
        Sysctl = __HYPERVISOR_sysctl,
        /// `__HYPERVISOR_domctl`.
        Domctl = __HYPERVISOR_domctl,
        /// `__HYPERVISOR_kexec_op`.
        KexecOp = __HYPERVISOR_kexec_op,
        /// `__HYPERVISOR_tmem_op`.
        TmemOp = __HYPERVISOR_tmem_op,
        /// `__HYPERVISOR_argo_op`.
        ArgoOp = __HYPERVISOR_argo_op,
        /// `__HYPERVISOR_xenpmu_op`.
        XenpmuOp = __HYPERVISOR_xenpmu_op,
        /// `__HYPERVISOR_dm_op`.
        DmOp = __HYPERVISOR_dm_op,
        /// `__HYPERVISOR_hypfs_op`.
        HypfsOp = __HYPERVISOR_hypfs_op,
        /// `__HYPERVISOR_arch_0` (`__HYPERVISOR_mca` on x86).
        Arch0 = __HYPERVISOR_arch_0,
        /// `__HYPERVISOR_arch_1`.
        Arch1 = __HYPERVISOR_arch_1,
        /// `__HYPERVISOR_arch_2`.
        Arch2 = __HYPERVISOR_arch_2,
        /// `__HYPERVISOR_arch_3`.
        Arch3 = __HYPERVISOR_arch_3,
        /// `__HYPERVISOR_arch_4`.
        Arch4 = __HYPERVISOR_arch_4,
        /// `__HYPERVISOR_arch_5`.
        Arch5 = __HYPERVISOR_arch_5,
        /// `__HYPERVISOR_arch_6`.
        Arch6 = __HYPERVISOR_arch_6,
        /// `__HYPERVISOR_arch_7`.
        Arch7 = __HYPERVISOR_arch_7,
    }
}

/// The size of one entry of the hypercall page: hypercall `n` is called at `hypercall_page + n * 32`
/// (`arch-x86/xen-x86_64.h`). No C constant: the header says it in a comment.
pub const HYPERCALL_PAGE_ENTRY_SIZE: usize = 32;

/// The number of entries the 4096-byte hypercall page holds (128). No C constant.
pub const HYPERCALL_PAGE_ENTRIES: usize = crate::XEN_PAGE_SIZE / HYPERCALL_PAGE_ENTRY_SIZE;

/// The offset of `call`'s stub in the hypercall page (`call hypercall_page + hypercall-number * 32`).
pub const fn hypercall_page_offset(call: Hypercall) -> usize {
    // The largest number is 55, so the product is at most 1760: no overflow.
    call.raw() as usize * HYPERCALL_PAGE_ENTRY_SIZE
}

/// The hypercall whose stub starts at `offset` in the hypercall page: the reverse of
/// [`hypercall_page_offset`], for a hypervisor that traps the call in the page rather than the stub's
/// `syscall`/`vmcall`.
pub fn hypercall_at_page_offset(offset: u64) -> Result<Hypercall, Error> {
    if offset >= crate::XEN_PAGE_SIZE as u64 || offset % HYPERCALL_PAGE_ENTRY_SIZE as u64 != 0 {
        return Err(Error::BadHypercallPageOffset(offset));
    }
    Hypercall::try_from(offset / HYPERCALL_PAGE_ENTRY_SIZE as u64)
}

/// The registers of an x86-64 PV hypercall (`arch-x86/xen-x86_64.h`): `rax` holds the number, then the
/// five arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8`. No C counterpart: the header documents it in a
/// comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HypercallRegs {
    /// The hypercall number on entry; the result on return.
    pub rax: u64,
    /// Argument 1.
    pub rdi: u64,
    /// Argument 2.
    pub rsi: u64,
    /// Argument 3.
    pub rdx: u64,
    /// Argument 4.
    pub r10: u64,
    /// Argument 5.
    pub r8: u64,
}

/// A decoded hypercall: its number and its five arguments, in order. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallInvocation {
    /// The hypercall.
    pub call: Hypercall,
    /// Arguments 1 to 5 (`rdi`, `rsi`, `rdx`, `r10`, `r8`).
    pub args: [u64; 5],
}

impl HypercallRegs {
    /// Decodes the registers of a hypercall: the number in `rax`, the arguments in order.
    pub fn decode(&self) -> Result<HypercallInvocation, Error> {
        Ok(HypercallInvocation {
            call: Hypercall::try_from(self.rax)?,
            args: [self.rdi, self.rsi, self.rdx, self.r10, self.r8],
        })
    }

    /// The registers that make the call `inv`, as a guest loads them (the reverse of [`Self::decode`]).
    pub fn encode(inv: &HypercallInvocation) -> Self {
        let [rdi, rsi, rdx, r10, r8] = inv.args;
        Self {
            rax: inv.call.raw(),
            rdi,
            rsi,
            rdx,
            r10,
            r8,
        }
    }

    /// Stores a hypercall result in `rax`: a value, or a negative errno as the guest sees it
    /// (`-errno` as a two's-complement `u64`).
    pub fn set_result(&mut self, result: i64) {
        self.rax = result as u64;
    }
}

// ---------------------------------------------------------------------------------------------------
// Multicalls (`struct multicall_entry` in `xen.h`)
// ---------------------------------------------------------------------------------------------------

/// One entry of a `HYPERVISOR_multicall` batch: `struct multicall_entry` in `xen.h` (64 bytes on x86-64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MulticallEntry {
    /// The hypercall number (`__HYPERVISOR_*`).
    pub op: u64,
    /// The result, written back by the hypervisor.
    pub result: u64,
    /// Up to six arguments.
    pub args: [u64; 6],
}

impl MulticallEntry {
    /// An entry for `call` with `args`, its result zero.
    pub const fn new(call: Hypercall, args: [u64; 6]) -> Self {
        Self {
            op: call.raw(),
            result: 0,
            args,
        }
    }

    /// Decodes `op` from this copy of the entry.
    pub fn hypercall(&self) -> Result<Hypercall, Error> {
        Hypercall::try_from(self.op)
    }
}

// ---------------------------------------------------------------------------------------------------
// VIRQs (`enum virq` in `xen.h`)
// ---------------------------------------------------------------------------------------------------

/// `VIRQ_TIMER` in `xen.h`: per-vCPU; timebase update and/or requested timeout.
pub const VIRQ_TIMER: u32 = 0;
/// `VIRQ_DEBUG` in `xen.h`: per-vCPU; request to dump debug info.
pub const VIRQ_DEBUG: u32 = 1;
/// `VIRQ_CONSOLE` in `xen.h`: global (dom0); bytes received on the emergency console.
pub const VIRQ_CONSOLE: u32 = 2;
/// `VIRQ_DOM_EXC` in `xen.h`: global (dom0); exceptional event for some domain.
pub const VIRQ_DOM_EXC: u32 = 3;
/// `VIRQ_TBUF` in `xen.h`: global (dom0); the trace buffer has records available.
pub const VIRQ_TBUF: u32 = 4;
/// `VIRQ_DEBUGGER` in `xen.h`: global (dom0); a domain has paused for debugging.
pub const VIRQ_DEBUGGER: u32 = 6;
/// `VIRQ_XENOPROF` in `xen.h`: per-vCPU; XenOprofile interrupt.
pub const VIRQ_XENOPROF: u32 = 7;
/// `VIRQ_CON_RING` in `xen.h`: global (dom0); bytes received on the console.
pub const VIRQ_CON_RING: u32 = 8;
/// `VIRQ_PCPU_STATE` in `xen.h`: global (dom0); physical CPU state changed.
pub const VIRQ_PCPU_STATE: u32 = 9;
/// `VIRQ_MEM_EVENT` in `xen.h`: global (dom0); a memory event has occurred.
pub const VIRQ_MEM_EVENT: u32 = 10;
/// `VIRQ_ARGO` in `xen.h`: global; Argo interdomain message notification.
pub const VIRQ_ARGO: u32 = 11;
/// `VIRQ_ENOMEM` in `xen.h`: global (dom0); low on heap memory.
pub const VIRQ_ENOMEM: u32 = 12;
/// `VIRQ_XENPMU` in `xen.h`: per-vCPU; PMC interrupt.
pub const VIRQ_XENPMU: u32 = 13;
/// `VIRQ_ARCH_0` in `xen.h` (`VIRQ_MCA` on x86).
pub const VIRQ_ARCH_0: u32 = 16;
/// `VIRQ_ARCH_1` in `xen.h`.
pub const VIRQ_ARCH_1: u32 = 17;
/// `VIRQ_ARCH_2` in `xen.h`.
pub const VIRQ_ARCH_2: u32 = 18;
/// `VIRQ_ARCH_3` in `xen.h`.
pub const VIRQ_ARCH_3: u32 = 19;
/// `VIRQ_ARCH_4` in `xen.h`.
pub const VIRQ_ARCH_4: u32 = 20;
/// `VIRQ_ARCH_5` in `xen.h`.
pub const VIRQ_ARCH_5: u32 = 21;
/// `VIRQ_ARCH_6` in `xen.h`.
pub const VIRQ_ARCH_6: u32 = 22;
/// `VIRQ_ARCH_7` in `xen.h`.
pub const VIRQ_ARCH_7: u32 = 23;
/// `VIRQ_MCA` in `arch-x86/xen-mca.h`: global (dom0); machine check, `VIRQ_ARCH_0`.
pub const VIRQ_MCA: u32 = VIRQ_ARCH_0;
/// `NR_VIRQS` in `xen.h`: VIRQ numbers are below this.
pub const NR_VIRQS: u32 = 24;

abi_enum! {
    /// A virtual interrupt (`enum virq` in `xen.h`), as a guest names it in `EVTCHNOP_bind_virq`.
    pub enum Virq: u32, |raw| Error::UnknownVirq(raw);
    {
        /// `VIRQ_TIMER` (per vCPU).
        Timer = VIRQ_TIMER,
        /// `VIRQ_DEBUG` (per vCPU).
        Debug = VIRQ_DEBUG,
        /// `VIRQ_CONSOLE` (global).
        Console = VIRQ_CONSOLE,
        /// `VIRQ_DOM_EXC` (global).
        DomExc = VIRQ_DOM_EXC,
        /// `VIRQ_TBUF` (global).
        Tbuf = VIRQ_TBUF,
        /// `VIRQ_DEBUGGER` (global).
        Debugger = VIRQ_DEBUGGER,
        /// `VIRQ_XENOPROF` (per vCPU).
        Xenoprof = VIRQ_XENOPROF,
        /// `VIRQ_CON_RING` (global).
        ConRing = VIRQ_CON_RING,
        /// `VIRQ_PCPU_STATE` (global).
        PcpuState = VIRQ_PCPU_STATE,
        /// `VIRQ_MEM_EVENT` (global).
        MemEvent = VIRQ_MEM_EVENT,
        /// `VIRQ_ARGO` (global).
        Argo = VIRQ_ARGO,
        /// `VIRQ_ENOMEM` (global).
        Enomem = VIRQ_ENOMEM,
        /// `VIRQ_XENPMU` (per vCPU).
        Xenpmu = VIRQ_XENPMU,
        /// `VIRQ_ARCH_0` (`VIRQ_MCA` on x86).
        Arch0 = VIRQ_ARCH_0,
        /// `VIRQ_ARCH_1`.
        Arch1 = VIRQ_ARCH_1,
        /// `VIRQ_ARCH_2`.
        Arch2 = VIRQ_ARCH_2,
        /// `VIRQ_ARCH_3`.
        Arch3 = VIRQ_ARCH_3,
        /// `VIRQ_ARCH_4`.
        Arch4 = VIRQ_ARCH_4,
        /// `VIRQ_ARCH_5`.
        Arch5 = VIRQ_ARCH_5,
        /// `VIRQ_ARCH_6`.
        Arch6 = VIRQ_ARCH_6,
        /// `VIRQ_ARCH_7`.
        Arch7 = VIRQ_ARCH_7,
    }
}

impl Virq {
    /// Whether the VIRQ is per-vCPU ('V.' in `xen.h`): bound once per vCPU, never re-bound. The others are
    /// global ('G.'): bound once per domain, first to vCPU 0.
    pub const fn is_per_vcpu(self) -> bool {
        matches!(
            self,
            Self::Timer | Self::Debug | Self::Xenoprof | Self::Xenpmu
        )
    }
}

// ---------------------------------------------------------------------------------------------------
// Special domain ids (`xen.h`)
// ---------------------------------------------------------------------------------------------------

/// `DOMID_FIRST_RESERVED` in `xen.h`: domain ids from here up are not ordinary domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;
/// `DOMID_SELF` in `xen.h`: the calling domain.
pub const DOMID_SELF: DomId = 0x7FF0;
/// `DOMID_IO` in `xen.h`: I/O memory (as a foreign domain in mmu_update).
pub const DOMID_IO: DomId = 0x7FF1;
/// `DOMID_XEN` in `xen.h`: pages owned by the hypervisor.
pub const DOMID_XEN: DomId = 0x7FF2;
/// `DOMID_COW` in `xen.h`: copy-on-write shared pages.
pub const DOMID_COW: DomId = 0x7FF3;
/// `DOMID_INVALID` in `xen.h`: pages with an unknown owner.
pub const DOMID_INVALID: DomId = 0x7FF4;
/// `DOMID_IDLE` in `xen.h`: the idle domain.
pub const DOMID_IDLE: DomId = 0x7FFF;
/// `DOMID_MASK` in `xen.h`: the bits of a valid domain id.
pub const DOMID_MASK: DomId = 0x7FFF;

/// Whether `domid` names an ordinary domain (below `DOMID_FIRST_RESERVED`).
pub const fn is_ordinary_domid(domid: DomId) -> bool {
    domid < DOMID_FIRST_RESERVED
}

// ---------------------------------------------------------------------------------------------------
// mmu_update (`struct mmu_update` and `MMU_*` in `xen.h`)
// ---------------------------------------------------------------------------------------------------

/// `MMU_NORMAL_PT_UPDATE` in `xen.h`: checked `*ptr = val`; `ptr` is a machine address.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `MMU_MACHPHYS_UPDATE` in `xen.h`: `ptr` is a machine address in the frame whose M2P entry becomes `val`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// `MMU_PT_UPDATE_PRESERVE_AD` in `xen.h`: atomically `*ptr = val | (*ptr & (A|D))`.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// `MMU_PT_UPDATE_NO_TRANSLATE` in `xen.h`: as `MMU_NORMAL_PT_UPDATE`, but `val` is never translated.
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;

/// The bits of `mmu_update.ptr` that carry the command. `xen.h` documents `ptr[1:0]`, but a PTE is 8
/// bytes, so Xen takes `ptr & (sizeof(l1_pgentry_t) - 1)`: values 4 to 7 are commands it rejects. No C
/// constant.
pub const MMU_UPDATE_CMD_MASK: u64 = 7;

/// One page-table or M2P update of `HYPERVISOR_mmu_update`: `struct mmu_update` in `xen.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MmuUpdate {
    /// The machine address of the PTE (or of the frame, for `MMU_MACHPHYS_UPDATE`), with the `MMU_*`
    /// command in its low bits.
    pub ptr: u64,
    /// The new contents of the PTE (or the new pseudo-physical frame number).
    pub val: u64,
}

abi_enum! {
    /// The command of an [`MmuUpdate`] (`MMU_*` in `xen.h`, in `ptr[2:0]`).
    pub enum MmuUpdateType: u64, |raw| Error::UnknownMmuUpdateType { ptr: raw, cmd: raw & MMU_UPDATE_CMD_MASK };
    {
        /// `MMU_NORMAL_PT_UPDATE`.
        NormalPtUpdate = MMU_NORMAL_PT_UPDATE,
        /// `MMU_MACHPHYS_UPDATE`.
        MachphysUpdate = MMU_MACHPHYS_UPDATE,
        /// `MMU_PT_UPDATE_PRESERVE_AD`.
        PtUpdatePreserveAd = MMU_PT_UPDATE_PRESERVE_AD,
        /// `MMU_PT_UPDATE_NO_TRANSLATE`.
        PtUpdateNoTranslate = MMU_PT_UPDATE_NO_TRANSLATE,
    }
}

/// A decoded [`MmuUpdate`]: the command, the 8-byte-aligned machine address and the value. No C
/// counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmuUpdateOp {
    /// The command from `ptr[2:0]`.
    pub kind: MmuUpdateType,
    /// `ptr` with the command bits cleared.
    pub addr: u64,
    /// `val`, unchanged.
    pub val: u64,
}

impl MmuUpdate {
    /// An update of kind `kind` at machine address `addr`, which must be 8-byte aligned.
    pub fn new(kind: MmuUpdateType, addr: u64, val: u64) -> Result<Self, Error> {
        if addr & MMU_UPDATE_CMD_MASK != 0 {
            return Err(Error::MisalignedMmuUpdateAddress(addr));
        }
        Ok(Self {
            ptr: addr | kind.raw(),
            val,
        })
    }

    /// Decodes this copy: the command in `ptr[2:0]` (values 4 to 7 are an error, as in Xen) and the
    /// address.
    pub fn decode(&self) -> Result<MmuUpdateOp, Error> {
        let kind = match MmuUpdateType::try_from(self.ptr & MMU_UPDATE_CMD_MASK) {
            Ok(kind) => kind,
            Err(_) => {
                return Err(Error::UnknownMmuUpdateType {
                    ptr: self.ptr,
                    cmd: self.ptr & MMU_UPDATE_CMD_MASK,
                });
            }
        };
        Ok(MmuUpdateOp {
            kind,
            addr: self.ptr & !MMU_UPDATE_CMD_MASK,
            val: self.val,
        })
    }
}

impl From<MmuUpdateOp> for MmuUpdate {
    /// Encodes a decoded update; the low bits of `addr` are cleared first.
    fn from(op: MmuUpdateOp) -> Self {
        Self {
            ptr: (op.addr & !MMU_UPDATE_CMD_MASK) | op.kind.raw(),
            val: op.val,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// mmuext_op (`struct mmuext_op` and `MMUEXT_*` in `xen.h`)
// ---------------------------------------------------------------------------------------------------

/// `MMUEXT_PIN_L1_TABLE` in `xen.h`.
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// `MMUEXT_PIN_L2_TABLE` in `xen.h`.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// `MMUEXT_PIN_L3_TABLE` in `xen.h`.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// `MMUEXT_PIN_L4_TABLE` in `xen.h`.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// `MMUEXT_UNPIN_TABLE` in `xen.h`.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// `MMUEXT_NEW_BASEPTR` in `xen.h`.
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// `MMUEXT_TLB_FLUSH_LOCAL` in `xen.h`.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// `MMUEXT_INVLPG_LOCAL` in `xen.h`.
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// `MMUEXT_TLB_FLUSH_MULTI` in `xen.h`.
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
/// `MMUEXT_INVLPG_MULTI` in `xen.h`.
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
/// `MMUEXT_TLB_FLUSH_ALL` in `xen.h`.
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// `MMUEXT_INVLPG_ALL` in `xen.h`.
pub const MMUEXT_INVLPG_ALL: u32 = 11;
/// `MMUEXT_FLUSH_CACHE` in `xen.h`.
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
/// `MMUEXT_SET_LDT` in `xen.h`.
pub const MMUEXT_SET_LDT: u32 = 13;
/// `MMUEXT_NEW_USER_BASEPTR` in `xen.h` (x86-64 only).
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
/// `MMUEXT_CLEAR_PAGE` in `xen.h`.
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// `MMUEXT_COPY_PAGE` in `xen.h`.
pub const MMUEXT_COPY_PAGE: u32 = 17;
/// `MMUEXT_FLUSH_CACHE_GLOBAL` in `xen.h`.
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
/// `MMUEXT_MARK_SUPER` in `xen.h`.
pub const MMUEXT_MARK_SUPER: u32 = 19;
/// `MMUEXT_UNMARK_SUPER` in `xen.h`.
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// The largest `nr_ents` of `MMUEXT_SET_LDT`: an LDT holds at most 8192 descriptors (Xen's check). No C
/// constant.
pub const MMUEXT_SET_LDT_MAX_ENTS: u32 = 8192;

abi_enum! {
    /// The command of an [`MmuextOp`] (`enum mmuext_cmd` in `xen.h`).
    pub enum MmuextCmd: u32, |raw| Error::UnknownMmuextCmd(raw);
    {
        /// `MMUEXT_PIN_L1_TABLE`.
        PinL1Table = MMUEXT_PIN_L1_TABLE,
        /// `MMUEXT_PIN_L2_TABLE`.
        PinL2Table = MMUEXT_PIN_L2_TABLE,
        /// `MMUEXT_PIN_L3_TABLE`.
        PinL3Table = MMUEXT_PIN_L3_TABLE,
        /// `MMUEXT_PIN_L4_TABLE`.
        PinL4Table = MMUEXT_PIN_L4_TABLE,
        /// `MMUEXT_UNPIN_TABLE`.
        UnpinTable = MMUEXT_UNPIN_TABLE,
        /// `MMUEXT_NEW_BASEPTR`.
        NewBaseptr = MMUEXT_NEW_BASEPTR,
        /// `MMUEXT_TLB_FLUSH_LOCAL`.
        TlbFlushLocal = MMUEXT_TLB_FLUSH_LOCAL,
        /// `MMUEXT_INVLPG_LOCAL`.
        InvlpgLocal = MMUEXT_INVLPG_LOCAL,
        /// `MMUEXT_TLB_FLUSH_MULTI`.
        TlbFlushMulti = MMUEXT_TLB_FLUSH_MULTI,
        /// `MMUEXT_INVLPG_MULTI`.
        InvlpgMulti = MMUEXT_INVLPG_MULTI,
        /// `MMUEXT_TLB_FLUSH_ALL`.
        TlbFlushAll = MMUEXT_TLB_FLUSH_ALL,
        /// `MMUEXT_INVLPG_ALL`.
        InvlpgAll = MMUEXT_INVLPG_ALL,
        /// `MMUEXT_FLUSH_CACHE`.
        FlushCache = MMUEXT_FLUSH_CACHE,
        /// `MMUEXT_SET_LDT`.
        SetLdt = MMUEXT_SET_LDT,
        /// `MMUEXT_NEW_USER_BASEPTR`.
        NewUserBaseptr = MMUEXT_NEW_USER_BASEPTR,
        /// `MMUEXT_CLEAR_PAGE`.
        ClearPage = MMUEXT_CLEAR_PAGE,
        /// `MMUEXT_COPY_PAGE`.
        CopyPage = MMUEXT_COPY_PAGE,
        /// `MMUEXT_FLUSH_CACHE_GLOBAL`.
        FlushCacheGlobal = MMUEXT_FLUSH_CACHE_GLOBAL,
        /// `MMUEXT_MARK_SUPER`.
        MarkSuper = MMUEXT_MARK_SUPER,
        /// `MMUEXT_UNMARK_SUPER`.
        UnmarkSuper = MMUEXT_UNMARK_SUPER,
    }
}

/// One extended MMU operation of `HYPERVISOR_mmuext_op`: `struct mmuext_op` in `xen.h`, x86-64 layout
/// (24 bytes).
///
/// The C unions are plain `u64` fields here: `arg1` is `mfn` or `linear_addr`; `arg2` is `nr_ents` (its
/// low 32 bits), `vcpumask` (a guest pointer to a vCPU bitmap) or `src_mfn`. Decode a copy with
/// [`MmuextOp::decode`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MmuextOp {
    /// The command (`MMUEXT_*`).
    pub cmd: u32,
    _pad0: [u8; 4],
    /// `arg1.mfn` or `arg1.linear_addr`.
    pub arg1: u64,
    /// `arg2.nr_ents`, `arg2.vcpumask` or `arg2.src_mfn`.
    pub arg2: u64,
}

/// A decoded [`MmuextOp`]: the command with the arguments it uses. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MmuextCmdOp {
    /// `MMUEXT_PIN_L{level}_TABLE`: pin `mfn` as a page table of `level` 1 to 4.
    PinTable {
        /// The page-table level, 1 to 4.
        level: u8,
        /// The frame to pin.
        mfn: u64,
    },
    /// `MMUEXT_UNPIN_TABLE`.
    UnpinTable {
        /// The frame to unpin.
        mfn: u64,
    },
    /// `MMUEXT_NEW_BASEPTR`: install `mfn` as the kernel page-table base.
    NewBaseptr {
        /// The new base.
        mfn: u64,
    },
    /// `MMUEXT_NEW_USER_BASEPTR`: install `mfn` as the user page-table base.
    NewUserBaseptr {
        /// The new base.
        mfn: u64,
    },
    /// `MMUEXT_TLB_FLUSH_LOCAL`.
    TlbFlushLocal,
    /// `MMUEXT_INVLPG_LOCAL`.
    InvlpgLocal {
        /// The address to flush.
        linear_addr: u64,
    },
    /// `MMUEXT_TLB_FLUSH_MULTI`.
    TlbFlushMulti {
        /// Guest pointer to the bitmap of vCPUs to flush.
        vcpumask: u64,
    },
    /// `MMUEXT_INVLPG_MULTI`.
    InvlpgMulti {
        /// The address to flush.
        linear_addr: u64,
        /// Guest pointer to the bitmap of vCPUs to flush.
        vcpumask: u64,
    },
    /// `MMUEXT_TLB_FLUSH_ALL`.
    TlbFlushAll,
    /// `MMUEXT_INVLPG_ALL`.
    InvlpgAll {
        /// The address to flush.
        linear_addr: u64,
    },
    /// `MMUEXT_FLUSH_CACHE`.
    FlushCache,
    /// `MMUEXT_FLUSH_CACHE_GLOBAL`.
    FlushCacheGlobal,
    /// `MMUEXT_SET_LDT`: a page-aligned base and at most 8192 entries.
    SetLdt {
        /// The LDT base.
        linear_addr: u64,
        /// The number of entries.
        nr_ents: u32,
    },
    /// `MMUEXT_CLEAR_PAGE`.
    ClearPage {
        /// The frame to clear.
        mfn: u64,
    },
    /// `MMUEXT_COPY_PAGE`.
    CopyPage {
        /// The destination frame.
        mfn: u64,
        /// The source frame.
        src_mfn: u64,
    },
    /// `MMUEXT_MARK_SUPER`.
    MarkSuper {
        /// The head frame of the superpage.
        mfn: u64,
    },
    /// `MMUEXT_UNMARK_SUPER`.
    UnmarkSuper {
        /// The head frame of the superpage.
        mfn: u64,
    },
}

impl MmuextOp {
    /// An operation with its padding zeroed.
    pub const fn new(cmd: u32, arg1: u64, arg2: u64) -> Self {
        Self {
            cmd,
            _pad0: [0; 4],
            arg1,
            arg2,
        }
    }

    /// `arg2.nr_ents`: the low 32 bits of `arg2` (x86 is little-endian).
    pub const fn nr_ents(&self) -> u32 {
        self.arg2 as u32
    }

    /// Decodes this copy into a typed operation, with the checks Xen makes on `MMUEXT_SET_LDT`.
    pub fn decode(&self) -> Result<MmuextCmdOp, Error> {
        use MmuextCmdOp as Op;
        let (arg1, arg2) = (self.arg1, self.arg2);
        Ok(match MmuextCmd::try_from(self.cmd)? {
            MmuextCmd::PinL1Table => Op::PinTable {
                level: 1,
                mfn: arg1,
            },
            MmuextCmd::PinL2Table => Op::PinTable {
                level: 2,
                mfn: arg1,
            },
            MmuextCmd::PinL3Table => Op::PinTable {
                level: 3,
                mfn: arg1,
            },
            MmuextCmd::PinL4Table => Op::PinTable {
                level: 4,
                mfn: arg1,
            },
            MmuextCmd::UnpinTable => Op::UnpinTable { mfn: arg1 },
            MmuextCmd::NewBaseptr => Op::NewBaseptr { mfn: arg1 },
            MmuextCmd::NewUserBaseptr => Op::NewUserBaseptr { mfn: arg1 },
            MmuextCmd::TlbFlushLocal => Op::TlbFlushLocal,
            MmuextCmd::InvlpgLocal => Op::InvlpgLocal { linear_addr: arg1 },
            MmuextCmd::TlbFlushMulti => Op::TlbFlushMulti { vcpumask: arg2 },
            MmuextCmd::InvlpgMulti => Op::InvlpgMulti {
                linear_addr: arg1,
                vcpumask: arg2,
            },
            MmuextCmd::TlbFlushAll => Op::TlbFlushAll,
            MmuextCmd::InvlpgAll => Op::InvlpgAll { linear_addr: arg1 },
            MmuextCmd::FlushCache => Op::FlushCache,
            MmuextCmd::FlushCacheGlobal => Op::FlushCacheGlobal,
            MmuextCmd::SetLdt => {
                let nr_ents = self.nr_ents();
                if arg1 % crate::XEN_PAGE_SIZE as u64 != 0 {
                    return Err(Error::LdtNotPageAligned(arg1));
                }
                if nr_ents > MMUEXT_SET_LDT_MAX_ENTS {
                    return Err(Error::LdtTooLarge(nr_ents));
                }
                Op::SetLdt {
                    linear_addr: arg1,
                    nr_ents,
                }
            }
            MmuextCmd::ClearPage => Op::ClearPage { mfn: arg1 },
            MmuextCmd::CopyPage => Op::CopyPage {
                mfn: arg1,
                src_mfn: arg2,
            },
            MmuextCmd::MarkSuper => Op::MarkSuper { mfn: arg1 },
            MmuextCmd::UnmarkSuper => Op::UnmarkSuper { mfn: arg1 },
        })
    }
}

impl From<MmuextCmdOp> for MmuextOp {
    /// Encodes a typed operation; unused arguments are zero. A `PinTable` level outside 1 to 4 is clamped
    /// into that range.
    fn from(op: MmuextCmdOp) -> Self {
        use MmuextCmdOp as Op;
        match op {
            Op::PinTable { level, mfn } => {
                let cmd = match level {
                    0 | 1 => MMUEXT_PIN_L1_TABLE,
                    2 => MMUEXT_PIN_L2_TABLE,
                    3 => MMUEXT_PIN_L3_TABLE,
                    _ => MMUEXT_PIN_L4_TABLE,
                };
                Self::new(cmd, mfn, 0)
            }
            Op::UnpinTable { mfn } => Self::new(MMUEXT_UNPIN_TABLE, mfn, 0),
            Op::NewBaseptr { mfn } => Self::new(MMUEXT_NEW_BASEPTR, mfn, 0),
            Op::NewUserBaseptr { mfn } => Self::new(MMUEXT_NEW_USER_BASEPTR, mfn, 0),
            Op::TlbFlushLocal => Self::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
            Op::InvlpgLocal { linear_addr } => Self::new(MMUEXT_INVLPG_LOCAL, linear_addr, 0),
            Op::TlbFlushMulti { vcpumask } => Self::new(MMUEXT_TLB_FLUSH_MULTI, 0, vcpumask),
            Op::InvlpgMulti {
                linear_addr,
                vcpumask,
            } => Self::new(MMUEXT_INVLPG_MULTI, linear_addr, vcpumask),
            Op::TlbFlushAll => Self::new(MMUEXT_TLB_FLUSH_ALL, 0, 0),
            Op::InvlpgAll { linear_addr } => Self::new(MMUEXT_INVLPG_ALL, linear_addr, 0),
            Op::FlushCache => Self::new(MMUEXT_FLUSH_CACHE, 0, 0),
            Op::FlushCacheGlobal => Self::new(MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0),
            Op::SetLdt {
                linear_addr,
                nr_ents,
            } => Self::new(MMUEXT_SET_LDT, linear_addr, nr_ents as u64),
            Op::ClearPage { mfn } => Self::new(MMUEXT_CLEAR_PAGE, mfn, 0),
            Op::CopyPage { mfn, src_mfn } => Self::new(MMUEXT_COPY_PAGE, mfn, src_mfn),
            Op::MarkSuper { mfn } => Self::new(MMUEXT_MARK_SUPER, mfn, 0),
            Op::UnmarkSuper { mfn } => Self::new(MMUEXT_UNMARK_SUPER, mfn, 0),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// update_va_mapping flags (`UVMF_*` in `xen.h`)
// ---------------------------------------------------------------------------------------------------

/// `UVMF_NONE` in `xen.h`: no flushing at all.
pub const UVMF_NONE: u64 = 0;
/// `UVMF_TLB_FLUSH` in `xen.h`: flush entire TLB(s).
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `UVMF_INVLPG` in `xen.h`: flush only one entry.
pub const UVMF_INVLPG: u64 = 2;
/// `UVMF_FLUSHTYPE_MASK` in `xen.h`.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// `UVMF_MULTI` in `xen.h`: flush a subset of TLBs; OR in a pointer to a vCPU bitmap.
pub const UVMF_MULTI: u64 = 0;
/// `UVMF_LOCAL` in `xen.h`: flush the local TLB (`UVMF_MULTI` with a null bitmap).
pub const UVMF_LOCAL: u64 = 0;
/// `UVMF_ALL` in `xen.h`: flush all TLBs.
pub const UVMF_ALL: u64 = 4;

/// How `update_va_mapping` flushes: the decoded `flags` argument. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UvmFlags {
    /// `UVMF_NONE`, `UVMF_TLB_FLUSH` or `UVMF_INVLPG`.
    pub flush_type: u64,
    /// Which TLBs: `None` for all (`UVMF_ALL`), `Some(0)` for the local one (`UVMF_LOCAL`), otherwise a
    /// guest pointer to a vCPU bitmap (`UVMF_MULTI`).
    pub vcpumask: Option<u64>,
}

impl UvmFlags {
    /// Decodes the `flags` argument of `update_va_mapping`. Flush type 3 is an error.
    pub fn decode(flags: u64) -> Result<Self, Error> {
        let flush_type = flags & UVMF_FLUSHTYPE_MASK;
        if flush_type == UVMF_FLUSHTYPE_MASK {
            return Err(Error::BadUvmFlushType(flags));
        }
        let rest = flags & !UVMF_FLUSHTYPE_MASK;
        let vcpumask = if rest == UVMF_ALL { None } else { Some(rest) };
        Ok(Self {
            flush_type,
            vcpumask,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// console_io and vm_assist (`xen.h`)
// ---------------------------------------------------------------------------------------------------

/// `CONSOLEIO_write` in `xen.h`.
pub const CONSOLEIO_write: u32 = 0;
/// `CONSOLEIO_read` in `xen.h`.
pub const CONSOLEIO_read: u32 = 1;

abi_enum! {
    /// The command of `HYPERVISOR_console_io` (`CONSOLEIO_*` in `xen.h`).
    pub enum ConsoleIoCmd: u32, |raw| Error::UnknownConsoleIoCmd(raw);
    {
        /// `CONSOLEIO_write`.
        Write = CONSOLEIO_write,
        /// `CONSOLEIO_read`.
        Read = CONSOLEIO_read,
    }
}

/// `VMASST_CMD_enable` in `xen.h`.
pub const VMASST_CMD_enable: u32 = 0;
/// `VMASST_CMD_disable` in `xen.h`.
pub const VMASST_CMD_disable: u32 = 1;
/// `VMASST_TYPE_4gb_segments` in `xen.h` (x86-32 guests).
pub const VMASST_TYPE_4gb_segments: u32 = 0;
/// `VMASST_TYPE_4gb_segments_notify` in `xen.h` (x86-32 guests).
pub const VMASST_TYPE_4gb_segments_notify: u32 = 1;
/// `VMASST_TYPE_writable_pagetables` in `xen.h`.
pub const VMASST_TYPE_writable_pagetables: u32 = 2;
/// `VMASST_TYPE_pae_extended_cr3` in `xen.h`.
pub const VMASST_TYPE_pae_extended_cr3: u32 = 3;
/// `VMASST_TYPE_architectural_iopl` in `xen.h`.
pub const VMASST_TYPE_architectural_iopl: u32 = 4;
/// `VMASST_TYPE_runstate_update_flag` in `xen.h`.
pub const VMASST_TYPE_runstate_update_flag: u32 = 5;
/// `VMASST_TYPE_m2p_strict` in `xen.h`.
pub const VMASST_TYPE_m2p_strict: u32 = 32;

abi_enum! {
    /// The command of `HYPERVISOR_vm_assist` (`VMASST_CMD_*` in `xen.h`).
    pub enum VmAssistCmd: u32, |raw| Error::UnknownVmAssistCmd(raw);
    {
        /// `VMASST_CMD_enable`.
        Enable = VMASST_CMD_enable,
        /// `VMASST_CMD_disable`.
        Disable = VMASST_CMD_disable,
    }
}

abi_enum! {
    /// The assist of `HYPERVISOR_vm_assist` (`VMASST_TYPE_*` in `xen.h`).
    pub enum VmAssistType: u32, |raw| Error::UnknownVmAssistType(raw);
    {
        /// `VMASST_TYPE_4gb_segments`.
        FourGbSegments = VMASST_TYPE_4gb_segments,
        /// `VMASST_TYPE_4gb_segments_notify`.
        FourGbSegmentsNotify = VMASST_TYPE_4gb_segments_notify,
        /// `VMASST_TYPE_writable_pagetables`.
        WritablePagetables = VMASST_TYPE_writable_pagetables,
        /// `VMASST_TYPE_pae_extended_cr3`.
        PaeExtendedCr3 = VMASST_TYPE_pae_extended_cr3,
        /// `VMASST_TYPE_architectural_iopl`.
        ArchitecturalIopl = VMASST_TYPE_architectural_iopl,
        /// `VMASST_TYPE_runstate_update_flag`.
        RunstateUpdateFlag = VMASST_TYPE_runstate_update_flag,
        /// `VMASST_TYPE_m2p_strict`.
        M2pStrict = VMASST_TYPE_m2p_strict,
    }
}

// ---------------------------------------------------------------------------------------------------
// trap_info (`struct trap_info` in `arch-x86/xen.h`)
// ---------------------------------------------------------------------------------------------------

/// The privilege-level bits of [`TrapInfo::flags`] (`TI_GET_DPL` in `arch-x86/xen.h`). No C constant.
pub const TI_DPL_MASK: u8 = 3;
/// The "clear event enable" bit of [`TrapInfo::flags`] (`TI_GET_IF` in `arch-x86/xen.h`). No C constant.
pub const TI_IF: u8 = 4;

/// One entry of the virtual IDT a PV guest installs with `HYPERVISOR_set_trap_table`: `struct
/// trap_info` in `arch-x86/xen.h`, x86-64 layout (16 bytes). A table ends with an entry whose `address`
/// is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TrapInfo {
    /// The exception vector.
    pub vector: u8,
    /// Bits 0-1: the privilege level that may raise the trap with `int`; bit 2: clear the event mask
    /// (disable events) on entry.
    pub flags: u8,
    /// The code selector.
    pub cs: u16,
    _pad0: [u8; 4],
    /// The handler's address; zero ends a trap table.
    pub address: u64,
}

impl TrapInfo {
    /// An entry with its padding zeroed.
    pub const fn new(vector: u8, flags: u8, cs: u16, address: u64) -> Self {
        Self {
            vector,
            flags,
            cs,
            _pad0: [0; 4],
            address,
        }
    }

    /// `TI_GET_DPL`: the privilege level.
    pub const fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }

    /// `TI_GET_IF`: whether entry disables events.
    pub const fn disables_events(&self) -> bool {
        self.flags & TI_IF != 0
    }

    /// Whether this entry ends a trap table (`address == 0`).
    pub const fn is_terminator(&self) -> bool {
        self.address == 0
    }

    /// Checks this copy: no flag bits beyond DPL and IF.
    pub fn validate(&self) -> Result<(), Error> {
        if self.flags & !(TI_DPL_MASK | TI_IF) != 0 {
            return Err(Error::BadTrapFlags {
                vector: self.vector,
                flags: self.flags,
            });
        }
        Ok(())
    }
}

/// The entries of a trap table copied out of guest memory, up to (not including) the terminating entry
/// whose `address` is zero. The walk is bounded by `table.len()`; every entry is validated.
pub fn trap_table_entries(table: &[TrapInfo]) -> Result<&[TrapInfo], Error> {
    for (i, entry) in table.iter().enumerate() {
        if entry.is_terminator() {
            return Ok(table.get(..i).unwrap_or_default());
        }
        entry.validate()?;
    }
    Err(Error::UnterminatedTrapTable(table.len()))
}
