//! Loading a PV kernel's ELF image: its `PT_LOAD` segments and its Xen ELF notes (`xen/elfnote.h`).
//!
//! The image is untrusted input: every offset and size is checked with checked arithmetic against the file
//! and against the part of guest memory the kernel may occupy, and any problem is a typed [`ElfError`].

use goblin::elf::{Elf, program_header::PT_LOAD};

use crate::memory::{GuestRam, MemoryError};

/// `XEN_ELFNOTE_ENTRY` in `elfnote.h`: the entry point's virtual address.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_HYPERCALL_PAGE` in `elfnote.h`: the virtual address of the page the builder fills with
/// hypercall stubs.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// `XEN_ELFNOTE_VIRT_BASE` in `elfnote.h`: virtual address of physical 0 (this builder supports 0 only).
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// `XEN_ELFNOTE_GUEST_OS` in `elfnote.h`: the guest's name, a string.
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;

/// The errors of ELF loading.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// goblin could not parse the image.
    #[error("the kernel image is not a valid ELF file: {0}")]
    Parse(String),
    /// Not a 64-bit x86 executable.
    #[error(
        "the kernel image is not an x86-64 ELF executable (class 64 = {is_64}, machine {machine})"
    )]
    NotX86_64 {
        /// Whether the image is ELF64.
        is_64: bool,
        /// `e_machine`.
        machine: u16,
    },
    /// A `PT_LOAD` whose file range runs past the end of the image, or whose `p_filesz > p_memsz`.
    #[error(
        "PT_LOAD {index}: file range {offset:#x}+{filesz:#x} (memsz {memsz:#x}) does not fit the {file_len}-byte image"
    )]
    BadSegment {
        /// The program header's index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
        /// The image's length.
        file_len: usize,
    },
    /// A segment outside the kernel's area of guest memory.
    #[error(
        "PT_LOAD {index} at {vaddr:#x}+{memsz:#x} is outside the kernel area {min:#x}..{max:#x}: link the kernel at 0x200000 or above, and give the guest enough memory"
    )]
    SegmentOutOfRange {
        /// The program header's index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        memsz: u64,
        /// The lowest address a segment may use.
        min: u64,
        /// The end of the area.
        max: u64,
    },
    /// No `PT_LOAD` segment at all.
    #[error("the kernel image has no PT_LOAD segment")]
    NoSegments,
    /// The image has no `XEN_ELFNOTE_HYPERCALL_PAGE`, or one that is not a page-aligned address inside it.
    #[error(
        "XEN_ELFNOTE_HYPERCALL_PAGE is {0:?}: a PV kernel must name a page-aligned page inside its image"
    )]
    BadHypercallPage(Option<u64>),
    /// `XEN_ELFNOTE_VIRT_BASE` other than 0.
    #[error(
        "XEN_ELFNOTE_VIRT_BASE {0:#x} is not supported: this builder maps virtual = physical (0)"
    )]
    UnsupportedVirtBase(u64),
    /// The entry point is not inside a loaded segment.
    #[error("entry point {0:#x} is not inside a PT_LOAD segment")]
    BadEntry(u64),
    /// Writing to guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// What loading a kernel found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The entry point (virtual = physical).
    pub entry: u64,
    /// The lowest address any segment uses.
    pub start: u64,
    /// The end of the highest segment (not page-rounded).
    pub end: u64,
    /// The hypercall page's address.
    pub hypercall_page: u64,
    /// `XEN_ELFNOTE_GUEST_OS`, if given.
    pub guest_os: Option<String>,
}

fn note_u64(desc: &[u8]) -> Option<u64> {
    match desc.len() {
        4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
        8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
        _ => None,
    }
}

/// Loads `image` into `ram`, allowing segments in `min..max` only. Memory outside the file bytes is left as it
/// is (a fresh memfd is zero, so `.bss` is zero without touching its pages).
pub fn load(ram: &GuestRam, image: &[u8], min: u64, max: u64) -> Result<LoadedKernel, ElfError> {
    let elf = Elf::parse(image).map_err(|e| ElfError::Parse(e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(ElfError::NotX86_64 {
            is_64: elf.is_64,
            machine: elf.header.e_machine,
        });
    }
    let mut start = u64::MAX;
    let mut end = 0u64;
    let mut segments = Vec::new();
    for (index, ph) in elf.program_headers.iter().enumerate() {
        if ph.p_type != PT_LOAD {
            continue;
        }
        let bad = || ElfError::BadSegment {
            index,
            offset: ph.p_offset,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
            file_len: image.len(),
        };
        let file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or_else(bad)?;
        if file_end > image.len() as u64 || ph.p_filesz > ph.p_memsz {
            return Err(bad());
        }
        let seg_end = ph.p_vaddr.checked_add(ph.p_memsz);
        match seg_end {
            Some(e) if ph.p_vaddr >= min && e <= max => {}
            _ => {
                return Err(ElfError::SegmentOutOfRange {
                    index,
                    vaddr: ph.p_vaddr,
                    memsz: ph.p_memsz,
                    min,
                    max,
                });
            }
        }
        let seg_end = seg_end.unwrap_or(0);
        start = start.min(ph.p_vaddr);
        end = end.max(seg_end);
        segments.push((ph.p_vaddr, seg_end));
        // In range of the file (checked above), so the slice cannot panic.
        let bytes = &image[ph.p_offset as usize..file_end as usize];
        ram.write(ph.p_vaddr, bytes)?;
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let mut entry = elf.entry;
    let mut hypercall_page = None;
    let mut guest_os = None;
    let mut virt_base = 0;
    let notes = elf
        .iter_note_headers(image)
        .into_iter()
        .flatten()
        .chain(elf.iter_note_sections(image, None).into_iter().flatten());
    for note in notes.flatten() {
        if note.name != "Xen" {
            continue;
        }
        match note.n_type {
            XEN_ELFNOTE_ENTRY => entry = note_u64(note.desc).unwrap_or(entry),
            XEN_ELFNOTE_HYPERCALL_PAGE => hypercall_page = note_u64(note.desc),
            XEN_ELFNOTE_VIRT_BASE => virt_base = note_u64(note.desc).unwrap_or(0),
            XEN_ELFNOTE_GUEST_OS => {
                let s = note.desc.split(|&b| b == 0).next().unwrap_or(&[]);
                guest_os = Some(String::from_utf8_lossy(s).into_owned());
            }
            _ => {}
        }
    }
    if virt_base != 0 {
        return Err(ElfError::UnsupportedVirtBase(virt_base));
    }
    let inside = |a: u64, len: u64| {
        segments
            .iter()
            .any(|&(s, e)| a >= s && a.saturating_add(len) <= e)
    };
    let hypercall_page = match hypercall_page {
        Some(p) if p % 4096 == 0 && inside(p, 4096) => p,
        other => return Err(ElfError::BadHypercallPage(other)),
    };
    if !inside(entry, 1) {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(LoadedKernel {
        entry,
        start,
        end,
        hypercall_page,
        guest_os,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{self, BootPorts, BuildError, KERNEL_MIN};

    fn image() -> Vec<u8> {
        let elf = crate::guest::GUEST_ELF.to_vec();
        assert!(!elf.is_empty(), "the guest is built");
        elf
    }

    fn ram() -> GuestRam {
        GuestRam::new("elf-test", 8 << 20).unwrap()
    }

    /// The offset of program header `i`'s field at `field`.
    fn ph(image: &[u8], i: usize, field: usize) -> usize {
        let phoff = u64::from_le_bytes(image[0x20..0x28].try_into().unwrap()) as usize;
        let phentsize = u16::from_le_bytes(image[0x36..0x38].try_into().unwrap()) as usize;
        phoff + i * phentsize + field
    }

    fn set_ph(image: &mut [u8], i: usize, field: usize, v: u64) {
        let at = ph(image, i, field);
        image[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn load_it(image: &[u8]) -> Result<LoadedKernel, ElfError> {
        let ram = ram();
        load(&ram, image, KERNEL_MIN, ram.size())
    }

    #[test]
    fn the_guest_loads() {
        let k = load_it(&image()).unwrap();
        assert_eq!(k.start, 0x200000);
        assert_eq!(k.hypercall_page % 4096, 0);
        assert_eq!(k.guest_os.as_deref(), Some("Blanket-miniOS"));
    }

    #[test]
    fn not_an_elf_empty_or_truncated_images_are_parse_errors() {
        assert!(matches!(load_it(b""), Err(ElfError::Parse(_))));
        assert!(matches!(
            load_it(b"MZ this is not an ELF file at all......"),
            Err(ElfError::Parse(_))
        ));
        let img = image();
        assert!(load_it(&img[..100]).is_err(), "program headers cut off");
    }

    #[test]
    fn a_segment_running_past_the_file_is_rejected() {
        let mut img = image();
        let len = img.len() as u64;
        set_ph(&mut img, 0, 32, len); // p_filesz
        set_ph(&mut img, 0, 40, len); // p_memsz
        assert!(
            matches!(load_it(&img), Err(ElfError::BadSegment { index: 0, .. })),
            "{:?}",
            load_it(&img)
        );
        let mut img = image();
        set_ph(&mut img, 0, 8, u64::MAX - 4); // p_offset: offset + filesz overflows
        assert!(matches!(load_it(&img), Err(ElfError::BadSegment { .. })));
    }

    #[test]
    fn filesz_above_memsz_is_rejected() {
        let mut img = image();
        set_ph(&mut img, 0, 40, 16);
        assert!(matches!(load_it(&img), Err(ElfError::BadSegment { .. })));
    }

    #[test]
    fn segments_below_the_kernel_area_past_memory_or_wrapping_are_rejected() {
        for vaddr in [
            0x1000,
            0x10000,
            0x1f_f000,
            (8 << 20) - 0x1000,
            u64::MAX - 0x100,
        ] {
            let mut img = image();
            set_ph(&mut img, 0, 16, vaddr);
            assert!(
                matches!(
                    load_it(&img),
                    Err(ElfError::SegmentOutOfRange { index: 0, .. })
                ),
                "vaddr {vaddr:#x}: {:?}",
                load_it(&img)
            );
        }
        let mut img = image();
        set_ph(&mut img, 1, 40, 1 << 40); // a huge .bss
        assert!(matches!(
            load_it(&img),
            Err(ElfError::SegmentOutOfRange { index: 1, .. })
        ));
    }

    #[test]
    fn a_missing_or_misaligned_hypercall_page_is_rejected() {
        let img = image();
        let k = load_it(&img).unwrap();
        let needle = k.hypercall_page.to_le_bytes();
        // The note's descriptor holds the address: move it off a page boundary, then out of the image.
        for bad in [k.hypercall_page + 8, 0x10_0000_0000] {
            let mut img = img.clone();
            let at = img.windows(8).position(|w| w == needle).unwrap();
            img[at..at + 8].copy_from_slice(&bad.to_le_bytes());
            assert!(
                matches!(load_it(&img), Err(ElfError::BadHypercallPage(Some(b))) if b == bad),
                "{:?}",
                load_it(&img)
            );
        }
        // Rename every "Xen" note owner: no note at all.
        let mut img = img.clone();
        while let Some(at) = img.windows(4).position(|w| w == b"Xen\0") {
            img[at] = b'Q';
        }
        assert!(matches!(
            load_it(&img),
            Err(ElfError::BadHypercallPage(None))
        ));
    }

    #[test]
    fn an_elf_for_another_machine_is_rejected() {
        let mut img = image();
        img[0x12] = 0x28; // EM_ARM
        img[0x13] = 0;
        assert!(matches!(
            load_it(&img),
            Err(ElfError::NotX86_64 { machine: 0x28, .. })
        ));
    }

    #[test]
    fn a_guest_too_small_for_its_boot_structures_is_rejected() {
        let ram = GuestRam::new("tiny", 0x210000).unwrap();
        let err = builder::build(&ram, &image(), "", BootPorts::default()).unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::Elf(ElfError::SegmentOutOfRange { .. }) | BuildError::TooSmall { .. }
            ),
            "{err}"
        );
        // Room for the kernel, two pages more, and not for the boot structures.
        let end = load_it(&image()).unwrap().end;
        let ram = GuestRam::new("small", end.div_ceil(4096) * 4096 + 0x2000).unwrap();
        let err = builder::build(&ram, &image(), "", BootPorts::default()).unwrap_err();
        assert!(matches!(err, BuildError::TooSmall { .. }), "{err}");
    }

    #[test]
    fn a_command_line_with_a_nul_or_too_long_is_rejected() {
        let ram = ram();
        assert!(matches!(
            builder::build(&ram, &image(), "a\0b", BootPorts::default()),
            Err(BuildError::CmdLine(_))
        ));
        let long = "x".repeat(1024);
        assert!(matches!(
            builder::build(&ram, &image(), &long, BootPorts::default()),
            Err(BuildError::CmdLine(_))
        ));
        let ok = "x".repeat(1023);
        assert!(builder::build(&ram, &image(), &ok, BootPorts::default()).is_ok());
    }

    #[test]
    fn guest_memory_sizes_are_checked() {
        for size in [0, 4095, 4097, crate::memory::MAX_GUEST_MEMORY + 4096] {
            assert!(
                matches!(GuestRam::new("bad", size), Err(MemoryError::BadSize(s)) if s == size)
            );
        }
        let ram = GuestRam::new("ok", 1 << 20).unwrap();
        assert!(ram.read_u64(ram.size() - 4).is_err());
        assert!(ram.write(u64::MAX - 2, &[0; 8]).is_err());
        assert!(ram.check_range(0, ram.size()).is_ok());
    }

    #[test]
    fn the_layout_keeps_the_system_area_and_page_tables_out_of_reach() {
        let ram = ram();
        let l = builder::build(&ram, &image(), "", BootPorts::default()).unwrap();
        assert!(!l.guest_readable(&ram, 0, 8), "page 0");
        assert!(!l.guest_readable(&ram, builder::GDT_BASE, 8), "GDT");
        assert!(
            !l.guest_readable(&ram, builder::SYSTEM_END - 4, 8),
            "straddling the system area"
        );
        assert!(
            l.guest_readable(&ram, l.pt_base, 8),
            "page tables are readable"
        );
        assert!(!l.guest_writable(&ram, l.pt_base, 8), "but not writable");
        assert!(
            !l.guest_writable(&ram, l.pt_base - 4, 8),
            "straddling into them"
        );
        assert!(l.guest_writable(&ram, l.stack_bottom, 8));
        assert!(!l.guest_readable(&ram, ram.size() - 4, 8), "past the end");
        assert!(!l.guest_readable(&ram, u64::MAX - 4, 8), "wrapping");
    }
}
