//! The x86-64 pieces the domain builder writes: page tables, the GDT, the IDT, the TSS, and the vCPU's
//! initial special registers (64-bit mode, CPL 3, IOPL 3).
//!
//! Facts come from the Intel SDM vol. 3A (4.5 "4-level paging", 3.4.5 "segment descriptors", 7.7 "task
//! management in 64-bit mode", 6.14 "64-bit IDT gate descriptors") and Xen's `arch-x86/xen-x86_64.h`
//! (the flat ring-3 selectors).

use kvm_bindings::{kvm_segment, kvm_sregs};

use crate::memory::{GuestRam, MemoryError, PAGE_SIZE};

/// Page-table entry: present.
pub const PTE_P: u64 = 1 << 0;
/// Page-table entry: writable.
pub const PTE_RW: u64 = 1 << 1;
/// Page-table entry: user-accessible (CPL 3).
pub const PTE_US: u64 = 1 << 2;
/// Page-table entry: accessed (pre-set so the CPU need not write it).
pub const PTE_A: u64 = 1 << 5;
/// Page-table entry: dirty (pre-set on writable leaves).
pub const PTE_D: u64 = 1 << 6;
/// The frame-address bits of a 4-level page-table entry (bits 12-51).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// CR0 bits: PE, MP, ET, NE, WP, PG.
pub const CR0_GUEST: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
/// CR4 bits: PAE, OSFXSR, OSXMMEXCPT (SSE usable at CPL 3).
pub const CR4_GUEST: u64 = (1 << 5) | (1 << 9) | (1 << 10);
/// EFER bits: LME and LMA (long mode active).
pub const EFER_GUEST: u64 = (1 << 8) | (1 << 10);
/// The guest's initial RFLAGS: bit 1 (reserved, always 1), IF, and IOPL = 3, so that the hypercall
/// page's `out` runs at CPL 3 without an I/O bitmap.
pub const RFLAGS_GUEST: u64 = 0x2 | (1 << 9) | (3 << 12);
/// RFLAGS.IOPL mask.
pub const RFLAGS_IOPL: u64 = 3 << 12;

/// Ring-0 64-bit code selector (used only by the exception stubs).
pub const SEL_RING0_CS: u16 = 0x08;
/// Ring-0 data selector (the exception stack's SS).
pub const SEL_RING0_DS: u16 = 0x10;
/// The TSS selector.
pub const SEL_TSS: u16 = 0x20;
/// `FLAT_RING3_CS32` of `xen-x86_64.h` (GDT index 260).
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// `FLAT_RING3_DS32` / `FLAT_RING3_SS64` of `xen-x86_64.h` (GDT index 261).
pub const FLAT_RING3_SS64: u16 = 0xe02b;
/// `FLAT_RING3_CS64` of `xen-x86_64.h` (GDT index 262): the guest kernel's and user's code selector.
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// The GDT limit: a full 64 KiB GDT, as Xen reserves its flat selectors at 0xe000 and up. Only the pages
/// holding descriptors are touched, so the rest costs nothing.
pub const GDT_LIMIT: u16 = 0xffff;
/// The size of the 64-bit TSS.
pub const TSS_SIZE: u64 = 0x68;

/// Vectors that push an error code (SDM vol. 3A table 6-1).
pub const fn vector_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// A flat 64-bit code descriptor of privilege `dpl` (accessed bit pre-set).
const fn code64(dpl: u64) -> u64 {
    0x00af_9b00_0000_ffff | (dpl << 45)
}

/// A flat 32-bit code descriptor of privilege `dpl`.
const fn code32(dpl: u64) -> u64 {
    0x00cf_9b00_0000_ffff | (dpl << 45)
}

/// A flat writable data descriptor of privilege `dpl` (accessed bit pre-set).
const fn data(dpl: u64) -> u64 {
    0x00cf_9300_0000_ffff | (dpl << 45)
}

/// Writes the GDT at guest-physical `gdt` (a 64 KiB area) with the TSS descriptor for `tss`.
pub fn write_gdt(ram: &GuestRam, gdt: u64, tss: u64) -> Result<(), MemoryError> {
    ram.write_u64(gdt + u64::from(SEL_RING0_CS), code64(0))?;
    ram.write_u64(gdt + u64::from(SEL_RING0_DS), data(0))?;
    // 64-bit TSS descriptor (16 bytes): limit, base[23:0], type 0xb (busy, as KVM_SET_SREGS loads it), P.
    let limit = TSS_SIZE - 1;
    let low = (limit & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0xb << 40)
        | (1 << 47)
        | (((limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    ram.write_u64(gdt + u64::from(SEL_TSS), low)?;
    ram.write_u64(gdt + u64::from(SEL_TSS) + 8, tss >> 32)?;
    ram.write_u64(gdt + u64::from(FLAT_RING3_CS32 & !7), code32(3))?;
    ram.write_u64(gdt + u64::from(FLAT_RING3_SS64 & !7), data(3))?;
    ram.write_u64(gdt + u64::from(FLAT_RING3_CS64 & !7), code64(3))?;
    Ok(())
}

/// Writes the TSS at `tss`: RSP0 (the ring-0 stack the exception stubs run on) and IST1 (the same, for the
/// double fault), and an I/O-map base past the limit (no I/O bitmap).
pub fn write_tss(ram: &GuestRam, tss: u64, rsp0: u64) -> Result<(), MemoryError> {
    ram.write(tss, &[0u8; TSS_SIZE as usize])?;
    ram.write_u64(tss + 4, rsp0)?; // RSP0
    ram.write_u64(tss + 0x24, rsp0)?; // IST1
    ram.write(tss + 0x66, &(TSS_SIZE as u16).to_le_bytes())?; // I/O map base = limit + 1
    Ok(())
}

/// Writes the 256-entry IDT at `idt`: vector `v` is a ring-0 interrupt gate to `stubs + v * STUB_SIZE`, DPL 0
/// (so `int n` from CPL 3 faults with #GP rather than reaching a stub), the double fault on IST1.
pub fn write_idt(ram: &GuestRam, idt: u64, stubs: u64) -> Result<(), MemoryError> {
    for v in 0..256u64 {
        let target = stubs + v * STUB_SIZE;
        let ist = if v == 8 { 1 } else { 0 };
        let low = (target & 0xffff)
            | (u64::from(SEL_RING0_CS) << 16)
            | (ist << 32)
            | (0xe << 40) // 64-bit interrupt gate
            | (1 << 47)
            | (((target >> 16) & 0xffff) << 48);
        ram.write_u64(idt + v * 16, low)?;
        ram.write_u64(idt + v * 16 + 8, target >> 32)?;
    }
    Ok(())
}

/// The size of one exception stub.
pub const STUB_SIZE: u64 = 16;

/// Writes the ring-0 exception stubs at `stubs`: each pushes a zero error code if the CPU pushed none, then
/// the vector, and reports to the VMM with `out %al, $port`; the VMM finds the frame at RSP. This VMM never
/// lets the stub go on (it stops the domain, or moves the vCPU to the guest's handler itself); if a VMM did,
/// the stub would drop the two words and return with `iretq`.
pub fn write_exception_stubs(ram: &GuestRam, stubs: u64, port: u8) -> Result<(), MemoryError> {
    for v in 0..=255u8 {
        let mut code = Vec::with_capacity(STUB_SIZE as usize);
        if !vector_has_error_code(v) {
            code.extend_from_slice(&[0x6a, 0x00]); // push $0
        }
        code.extend_from_slice(&[0x68]); // push imm32 (the vector)
        code.extend_from_slice(&u32::from(v).to_le_bytes());
        code.extend_from_slice(&[0xe6, port]); // out %al, $port
        code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x10]); // add $16, %rsp
        code.extend_from_slice(&[0x48, 0xcf]); // iretq
        code.resize(STUB_SIZE as usize, 0xcc);
        ram.write(stubs + u64::from(v) * STUB_SIZE, &code)?;
    }
    Ok(())
}

/// How the identity map treats one guest frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramePerm {
    /// Not mapped (the null page).
    None,
    /// Mapped for CPL 0 only (GDT, IDT, TSS, exception stubs and stack).
    Supervisor,
    /// Mapped read-only at CPL 3 (the page tables themselves, as Xen maps them).
    UserReadOnly,
    /// Mapped read-write at CPL 3.
    UserReadWrite,
}

/// The number of page-table frames an identity map of `nr_pages` frames needs (L1s, L2s, L3s and the L4).
pub fn page_table_frames(nr_pages: u64) -> u64 {
    let l1 = nr_pages.div_ceil(512);
    let l2 = l1.div_ceil(512);
    let l3 = l2.div_ceil(512);
    l1 + l2 + l3 + 1
}

/// Builds 4-level page tables at `pt_base` that map every frame of guest memory at the virtual address equal
/// to its physical address, with the permissions `perm` gives. Returns the number of frames used; the L4
/// (CR3) is the first, at `pt_base`.
pub fn build_identity_map(
    ram: &GuestRam,
    pt_base: u64,
    perm: impl Fn(u64) -> FramePerm,
) -> Result<u64, MemoryError> {
    let nr_pages = ram.nr_pages();
    let l1 = nr_pages.div_ceil(512);
    let l2 = l1.div_ceil(512);
    let l3 = l2.div_ceil(512);
    let frames = l1 + l2 + l3 + 1;
    ram.check_range(pt_base, frames * PAGE_SIZE)?;
    let l4_at = pt_base;
    let l3_at = l4_at + PAGE_SIZE;
    let l2_at = l3_at + l3 * PAGE_SIZE;
    let l1_at = l2_at + l2 * PAGE_SIZE;
    let table = PTE_P | PTE_RW | PTE_US | PTE_A;
    for i in 0..l3 {
        ram.write_u64(l4_at + i * 8, (l3_at + i * PAGE_SIZE) | table)?;
    }
    for i in 0..l2 {
        ram.write_u64(l3_at + i * 8, (l2_at + i * PAGE_SIZE) | table)?;
    }
    for i in 0..l1 {
        ram.write_u64(l2_at + i * 8, (l1_at + i * PAGE_SIZE) | table)?;
    }
    // Write each L1 page in one go.
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for t in 0..l1 {
        page.fill(0);
        for e in 0..512u64 {
            let pfn = t * 512 + e;
            if pfn >= nr_pages {
                break;
            }
            let phys = pfn * PAGE_SIZE;
            let flags = match perm(phys) {
                FramePerm::None => 0,
                FramePerm::Supervisor => PTE_P | PTE_RW | PTE_A | PTE_D,
                FramePerm::UserReadOnly => PTE_P | PTE_US | PTE_A,
                FramePerm::UserReadWrite => PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D,
            };
            if flags != 0 {
                let off = (e * 8) as usize;
                page[off..off + 8].copy_from_slice(&(phys | flags).to_le_bytes());
            }
        }
        ram.write(l1_at + t * PAGE_SIZE, &page)?;
    }
    Ok(frames)
}

fn segment(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Fills `sregs` for a vCPU entering the guest in 64-bit mode at CPL 3, with paging rooted at `cr3`.
pub fn setup_sregs(sregs: &mut kvm_sregs, cr3: u64, gdt: u64, idt: u64, tss: u64) {
    sregs.cs = segment(FLAT_RING3_CS64, 0xb, 3, true);
    let ss = segment(FLAT_RING3_SS64, 0x3, 3, false);
    sregs.ss = ss;
    // FLAT_RING3_DS64 is the null selector: DS, ES, FS and GS are unused in 64-bit mode.
    let mut null = ss;
    null.selector = 0;
    null.unusable = 1;
    null.present = 0;
    sregs.ds = null;
    sregs.es = null;
    sregs.fs = null;
    sregs.gs = null;
    sregs.tr = kvm_segment {
        base: tss,
        limit: (TSS_SIZE - 1) as u32,
        selector: SEL_TSS,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.ldt = kvm_segment {
        base: 0,
        limit: 0,
        selector: 0,
        type_: 2,
        present: 0,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 1,
        padding: 0,
    };
    sregs.gdt.base = gdt;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = idt;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr0 = CR0_GUEST;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_GUEST;
    sregs.efer = EFER_GUEST;
}
