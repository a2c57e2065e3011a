//! The domain builder: lays out a new PV domain's memory the way Xen's x86-64 PV builder does, and returns
//! where everything went.
//!
//! Guest-physical (= guest-virtual) layout, low to high:
//!
//! | range | what | mapped |
//! |---|---|---|
//! | `0x0000` | the null page | not mapped |
//! | `0x1000` | IDT (256 gates to the exception stubs) | CPL 0 only |
//! | `0x2000` | TSS, with an I/O bitmap that allows only [`HYPERCALL_PORT`] | CPL 0 only |
//! | `0x3000` | exception stubs (ring 0, report to the VMM) | CPL 0 only |
//! | `0x4000..0x6000` | exception stack (vCPU 0) | CPL 0 only |
//! | `0x6000..0x8000` | TSSs of vCPUs 1-31, `0x100` apart ([`vcpu_tss`]) | CPL 0 only |
//! | `0x8000..0x10000` | exception stacks of vCPUs 1-31, 1 KiB each ([`vcpu_exception_stack_top`]) | CPL 0 only |
//! | `0x10000..0x20000` | GDT (64 KiB; Xen's flat ring-3 selectors at `0xe023..0xe033`) | CPL 0 only |
//! | `0x200000..` | the kernel's `PT_LOAD` segments, including its hypercall page | read-write |
//! | after the kernel | `mfn_list`, `start_info`, XenStore page, console page, `shared_info`, grant frames | read-write |
//! | then | page tables (`pt_base`, `nr_pt_frames`) | read-only |
//! | then | the boot stack (`rsp` at entry is its top) | read-write |
//! | the rest | free for the guest | read-write |

use xen_abi::xen::{ConsoleDomU, StartInfo, StartInfoConsole};

use crate::elf::{self, ElfError, LoadedKernel};
use crate::memory::{GuestRam, MemoryError, PAGE_SIZE};
use crate::x86::{self, FramePerm};

/// The most vCPUs a domain may have: `XEN_LEGACY_MAX_VCPUS`, the `vcpu_info` slots in `shared_info`.
pub const MAX_VCPUS: u32 = xen_abi::xen::XEN_LEGACY_MAX_VCPUS as u32;

/// Where vCPU `n`'s TSS is: vCPU 0's at [`TSS_BASE`], the others' from `0x6000`, `0x100` apart (each is
/// the 104-byte TSS, its 32-byte I/O bitmap and the terminating byte).
pub const fn vcpu_tss(n: u32) -> u64 {
    if n == 0 {
        TSS_BASE
    } else {
        0x6000 + n as u64 * 0x100
    }
}

/// The top of vCPU `n`'s exception stack (its TSS.RSP0 and IST1): vCPU 0's is [`EXCEPTION_STACK_TOP`] (8
/// KiB), the others' are 1 KiB each from `0x8000` (an exception stub pushes two words over the CPU's five).
pub const fn vcpu_exception_stack_top(n: u32) -> u64 {
    if n == 0 {
        EXCEPTION_STACK_TOP
    } else {
        0x8000 + n as u64 * 0x400
    }
}

/// The size of vCPU `n`'s exception stack.
pub const fn vcpu_exception_stack_size(n: u32) -> u64 {
    if n == 0 { 0x2000 } else { 0x400 }
}

/// vCPU `n`'s TSS selector in the GDT: `0x20` for vCPU 0, then 16 bytes apart (a 64-bit TSS descriptor
/// takes two slots).
pub const fn vcpu_tss_selector(n: u32) -> u16 {
    x86::SEL_TSS + (n as u16) * 16
}

/// The I/O port that the hypercall page's stubs write to (`out %al, $0x99`).
pub const HYPERCALL_PORT: u16 = 0x99;
/// The I/O port that the ring-0 exception stubs write to.
pub const EXCEPTION_PORT: u16 = 0x9a;

/// Where the IDT is.
pub const IDT_BASE: u64 = 0x1000;
/// Where the TSS is.
pub const TSS_BASE: u64 = 0x2000;
/// Where the exception stubs are.
pub const STUBS_BASE: u64 = 0x3000;
/// The top of the exception stack (TSS.RSP0 and IST1).
pub const EXCEPTION_STACK_TOP: u64 = 0x6000;
/// Where the GDT is (64 KiB).
pub const GDT_BASE: u64 = 0x10000;
/// The end of the system area: everything below is the hypervisor's.
pub const SYSTEM_END: u64 = 0x20000;
/// The lowest address a kernel segment may use.
pub const KERNEL_MIN: u64 = 0x200000;
/// The number of grant-table frames a domain may set up (`max_nr_frames` of `GNTTABOP_query_size`).
pub const MAX_GRANT_FRAMES: u32 = 4;
/// Pages of boot stack.
pub const BOOT_STACK_PAGES: u64 = 16;

/// The TSS limit: the 104-byte TSS and an I/O bitmap of 32 bytes (ports 0-255); ports above lie beyond the
/// limit and are denied (SDM vol. 1, 19.5.2).
const TSS_LIMIT: u64 = x86::TSS_SIZE + 32;

/// The errors of domain building.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The kernel image did not load.
    #[error("loading the kernel image failed")]
    Elf(#[from] ElfError),
    /// Guest memory is too small for the kernel and the boot structures.
    #[error(
        "guest memory of {memory:#x} bytes is too small: the kernel and boot structures need {needed:#x} bytes; give the domain more memory"
    )]
    TooSmall {
        /// The guest's memory.
        memory: u64,
        /// What the layout needs.
        needed: u64,
    },
    /// The command line has a NUL or is too long for `start_info`.
    #[error("the command line does not fit start_info.cmd_line: {0}")]
    CmdLine(xen_abi::xen::XenError),
    /// A write to guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Where the builder put things: what the VMM needs later to serve the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The loaded kernel.
    pub kernel: LoadedKernel,
    /// `start_info`'s address (passed in `rsi`).
    pub start_info: u64,
    /// `shared_info`'s address.
    pub shared_info: u64,
    /// The XenStore ring page.
    pub xenstore: u64,
    /// The console ring page.
    pub console: u64,
    /// The initial P2M (`mfn_list`): `nr_pages` 64-bit entries, the identity.
    pub mfn_list: u64,
    /// The first grant-table frame (there are [`MAX_GRANT_FRAMES`], contiguous).
    pub grant_frames: u64,
    /// The page tables (L4 first).
    pub pt_base: u64,
    /// How many page-table frames.
    pub nr_pt_frames: u64,
    /// The start of the boot stack.
    pub stack_bottom: u64,
    /// The boot stack's top (`rsp` at entry).
    pub stack_top: u64,
    /// The first address the guest may use freely.
    pub free_start: u64,
}

impl Layout {
    /// Whether the guest may read `addr..addr+len` (mapped at CPL 3).
    pub fn guest_readable(&self, ram: &GuestRam, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= SYSTEM_END && end <= ram.size(),
            None => false,
        }
    }

    /// Whether the guest may write `addr..addr+len`: readable, and not its page tables.
    pub fn guest_writable(&self, ram: &GuestRam, addr: u64, len: u64) -> bool {
        let pt_end = self.pt_base + self.nr_pt_frames * PAGE_SIZE;
        self.guest_readable(ram, addr, len) && (addr + len <= self.pt_base || addr >= pt_end)
    }
}

/// The event channels the builder names in `start_info` (allocated by the caller first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootPorts {
    /// `store_evtchn`.
    pub xenstore: u32,
    /// `console.domU.evtchn`.
    pub console: u32,
}

fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Builds a domain in `ram`: loads `image`, writes the system tables, the hypercall page, the initial page
/// tables, `start_info` (with `cmdline`) and a zeroed `shared_info`.
pub fn build(
    ram: &GuestRam,
    image: &[u8],
    cmdline: &str,
    ports: BootPorts,
) -> Result<Layout, BuildError> {
    let mut info = StartInfo::new();
    info.set_cmd_line(cmdline.as_bytes())
        .map_err(BuildError::CmdLine)?;
    let kernel = elf::load(ram, image, KERNEL_MIN, ram.size())?;
    let nr_pages = ram.nr_pages();
    let mfn_list = page_up(kernel.end);
    let start_info = mfn_list + page_up(nr_pages * 8);
    let xenstore = start_info + PAGE_SIZE;
    let console = xenstore + PAGE_SIZE;
    let shared_info = console + PAGE_SIZE;
    let grant_frames = shared_info + PAGE_SIZE;
    let pt_base = grant_frames + u64::from(MAX_GRANT_FRAMES) * PAGE_SIZE;
    let nr_pt_frames = x86::page_table_frames(nr_pages);
    let stack_bottom = pt_base + nr_pt_frames * PAGE_SIZE;
    let stack_top = stack_bottom + BOOT_STACK_PAGES * PAGE_SIZE;
    // One more page of room for the guest, at least.
    let needed = stack_top + PAGE_SIZE;
    if needed > ram.size() {
        return Err(BuildError::TooSmall {
            memory: ram.size(),
            needed,
        });
    }

    x86::write_gdt(ram, GDT_BASE, TSS_BASE)?;
    // One TSS per vCPU (each with its own exception stack), so that vCPUs taking exceptions at once do not
    // share a ring-0 stack. Each descriptor's limit covers the I/O bitmap.
    for n in 0..MAX_VCPUS {
        let tss = vcpu_tss(n);
        let limit = TSS_LIMIT - 1;
        let low = (limit & 0xffff)
            | ((tss & 0xff_ffff) << 16)
            | (0xb << 40)
            | (1 << 47)
            | (((limit >> 16) & 0xf) << 48)
            | (((tss >> 24) & 0xff) << 56);
        let sel = u64::from(vcpu_tss_selector(n));
        ram.write_u64(GDT_BASE + sel, low)?;
        ram.write_u64(GDT_BASE + sel + 8, tss >> 32)?;
        x86::write_tss(ram, tss, vcpu_exception_stack_top(n))?;
        ram.write(tss + 0x66, &(x86::TSS_SIZE as u16).to_le_bytes())?;
        let mut bitmap = [0xffu8; 33];
        bitmap[usize::from(HYPERCALL_PORT / 8)] &= !(1 << (HYPERCALL_PORT % 8));
        ram.write(tss + x86::TSS_SIZE, &bitmap)?;
    }
    x86::write_idt(ram, IDT_BASE, STUBS_BASE)?;
    x86::write_exception_stubs(ram, STUBS_BASE, EXCEPTION_PORT as u8)?;

    write_hypercall_page(ram, kernel.hypercall_page)?;

    // The P2M is the identity: pfn i is mfn i.
    let mut p2m = Vec::with_capacity((nr_pages * 8) as usize);
    for pfn in 0..nr_pages {
        p2m.extend_from_slice(&pfn.to_le_bytes());
    }
    ram.write(mfn_list, &p2m)?;

    let pt_end = stack_bottom;
    let frames = x86::build_identity_map(ram, pt_base, |phys| {
        if phys == 0 {
            FramePerm::None
        } else if phys < SYSTEM_END {
            FramePerm::Supervisor
        } else if (pt_base..pt_end).contains(&phys) {
            FramePerm::UserReadOnly
        } else {
            FramePerm::UserReadWrite
        }
    })?;
    debug_assert_eq!(frames, nr_pt_frames);

    info.nr_pages = nr_pages;
    info.shared_info = shared_info;
    info.flags = 0;
    info.store_mfn = xenstore / PAGE_SIZE;
    info.store_evtchn = ports.xenstore;
    info.console = StartInfoConsole::from_domu(ConsoleDomU {
        mfn: console / PAGE_SIZE,
        evtchn: ports.console,
    });
    info.pt_base = pt_base;
    info.nr_pt_frames = nr_pt_frames;
    info.mfn_list = mfn_list;
    ram.write_obj(start_info, &info)?;

    Ok(Layout {
        kernel,
        start_info,
        shared_info,
        xenstore,
        console,
        mfn_list,
        grant_frames,
        pt_base,
        nr_pt_frames,
        stack_bottom,
        stack_top,
        free_start: stack_top,
    })
}

/// The size of one hypercall stub's code: `mov $n, %eax; out %al, $0x99; ret`.
pub const HYPERCALL_STUB_LEN: u64 = 8;

/// Where the `out` of hypercall `n`'s stub is, from the start of the stub: 5, after `mov $n, %eax`; 9 for
/// `HYPERVISOR_iret`, whose stub first pushes `rcx`, `r11` and `rax` (Xen's iret stub, which guests jump to
/// rather than call).
pub const fn stub_out_offset(n: u64) -> u64 {
    if n == xen_abi::hypercall::__HYPERVISOR_iret {
        9
    } else {
        5
    }
}

/// Fills the hypercall page: entry `n` (at `n * 32`) is `mov $n, %eax; out %al, $HYPERCALL_PORT; ret`, padded
/// with `int3`; entry 23 (`iret`) is `push %rcx; push %r11; push %rax; mov $23, %eax; out %al,
/// $HYPERCALL_PORT; ud2`, as Xen's.
pub fn write_hypercall_page(ram: &GuestRam, page: u64) -> Result<(), MemoryError> {
    let mut bytes = vec![0xccu8; PAGE_SIZE as usize];
    for n in 0..xen_abi::hypercall::HYPERCALL_PAGE_ENTRIES {
        let at = n * xen_abi::hypercall::HYPERCALL_PAGE_ENTRY_SIZE;
        let mut code = Vec::with_capacity(16);
        if n as u64 == xen_abi::hypercall::__HYPERVISOR_iret {
            code.extend_from_slice(&[0x51, 0x41, 0x53, 0x50]); // push %rcx; push %r11; push %rax
        }
        code.push(0xb8); // mov $n, %eax
        code.extend_from_slice(&(n as u32).to_le_bytes());
        code.extend_from_slice(&[0xe6, HYPERCALL_PORT as u8]); // out %al, $port
        if n as u64 == xen_abi::hypercall::__HYPERVISOR_iret {
            code.extend_from_slice(&[0x0f, 0x0b]); // ud2: iret does not return here
        } else {
            code.push(0xc3); // ret
        }
        bytes[at..at + code.len()].copy_from_slice(&code);
    }
    ram.write(page, &bytes)
}
