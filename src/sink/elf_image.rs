//! The layout of one elf-mode arena image: an ELF shared object whose text is an arena of
//! trampoline slots, so that perf (and samply, hotspot...) names and unwinds through the
//! trampolines from the file alone: no perf map, no jitdump, no `perf inject`.
//!
//! Pure (no I/O): [`Layout`] places everything, [`initial_image`] gives the file's bytes before
//! any trampoline exists, and [`symbol`] the bytes of one slot's symbol. The file is made to
//! grow in place while staying a valid ELF file at every moment (see `elf_sink`):
//!
//! ```text
//! 0            ELF header, program headers (PT_LOAD r-x [0, load_end), PT_GNU_EH_FRAME)
//! text_offset  .text: the arena, every slot pre-filled with the stub (never written again)
//!              .eh_frame: one CIE, one FDE per slot (exact at every instruction of a stub)
//!              .eh_frame_hdr: the sorted FDE table unwinders binary-search
//! meta_offset  section headers, .shstrtab, .symtab (one zeroed entry per slot, filled as
//!              slots are used)
//! strtab_offset .strtab: grows at the end of the file; its sh_size follows the file's length
//! ```
//!
//! Why this shape:
//! - vaddr == file offset everywhere and the first PT_LOAD starts at 0, so perf's address
//!   arithmetic (`ip - map start + pgoff`), libunwind's (segbase = map start - pgoff + vaddr)
//!   and libdw's (`dwfl_report_elf` at `map start - pgoff`, bias from the first PT_LOAD) agree.
//! - The process maps `[0, meta_offset)` in one read-execute mapping, so the unwind tables lie
//!   inside the mapping perf records (libunwind reads them through perf's maps) and libdw's
//!   module range is exactly the mapping (no overlap with a neighbouring arena).
//! - Everything that changes after creation (symbols, .strtab's sh_size, .strtab) lies at or
//!   after `meta_offset`, page-aligned away from the executable mapping: code pages are never
//!   writable.
//! - A zeroed symbol is the null symbol, which every reader skips; a slot's symbol becomes a
//!   function only when its `st_info` byte is written, last.
//! - No build-id: perf reads a DSO without one from its path at report time, so names written
//!   after `perf record` saw the file are found; with a build-id, perf would copy the file into
//!   its cache when recording ends and report from that (possibly older) copy.

use object::elf;
use object::endian::{LittleEndian as LE, U16, U32, U64};
use object::pod::bytes_of;

use crate::arch::Arch;
use crate::runtime::arena::{align_up, ARENA_SIZE};
use crate::sink::eh_frame;

/// Section indexes (0 is the null section; .eh_frame is 2, .eh_frame_hdr 3, .symtab 4).
pub const TEXT: u16 = 1;
pub const STRTAB: u16 = 5;
const SHSTRTAB: u16 = 6;
const SECTIONS: usize = 7;

const SHSTRTAB_BYTES: &[u8] = b"\0.text\0.eh_frame\0.eh_frame_hdr\0.symtab\0.strtab\0.shstrtab\0";
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
pub const SYM_SIZE: usize = 24;
/// `st_info` of a used slot: a local function. Local, because every entry is: an unused slot's
/// entry is all zeros (a local NOTYPE symbol), and ELF wants the locals first (`sh_info` = one
/// past the last local); perf, samply and binutils read local functions like global ones.
pub const FUNC_INFO: u8 = (elf::STB_LOCAL << 4) | elf::STT_FUNC;
/// Offset of `st_info` in an `Elf64_Sym` (after the 4-byte `st_name`).
pub const ST_INFO_OFFSET: usize = 4;
/// Offset of `sh_size` in an `Elf64_Shdr`.
const SH_SIZE_OFFSET: usize = 32;

/// Where everything is in an image of `slots` slots of `slot_size` bytes for `arch`. All
/// values are file offsets, which are also the virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub slot_size: usize,
    pub slots: usize,
    pub code_size: usize,
    pub text_offset: usize,
    pub eh_frame_offset: usize,
    pub eh_frame_len: usize,
    pub eh_frame_hdr_offset: usize,
    pub eh_frame_hdr_len: usize,
    /// End of the loadable part (PT_LOAD's size).
    pub load_end: usize,
    /// Start of the part that changes; the executable mapping is `[0, meta_offset)`.
    pub meta_offset: usize,
    pub shdr_offset: usize,
    pub shstrtab_offset: usize,
    pub symtab_offset: usize,
    pub strtab_offset: usize,
}

impl Layout {
    /// File offset of slot `index`'s symbol (entry 0 is the null symbol).
    pub fn symbol_offset(&self, index: usize) -> usize {
        self.symtab_offset + (index + 1) * SYM_SIZE
    }

    /// File offset of `.strtab`'s `sh_size` field (updated as `.strtab` grows or is trimmed).
    pub fn strtab_size_field(&self) -> usize {
        self.shdr_offset + STRTAB as usize * SHDR_SIZE + SH_SIZE_OFFSET
    }

    /// Address (= file offset) of slot `index`.
    pub fn slot_offset(&self, index: usize) -> usize {
        self.text_offset + index * self.slot_size
    }
}

/// The image's bytes before any slot is used: headers, the filled arena, the unwind tables,
/// the zeroed symbol table and a `.strtab` holding only its leading NUL. Same bytes for every
/// arena of an architecture and slot size, so it is built once and written per arena.
pub fn initial_image(arch: &Arch, slot_size: usize) -> (Layout, Vec<u8>) {
    assert!(slot_size >= arch.code.len() && slot_size.is_multiple_of(16));
    let page = arch.max_page_size;
    let slots = ARENA_SIZE / slot_size;
    let text_offset = page; // after the headers, mappable on its own page
    let eh_frame_offset = text_offset + ARENA_SIZE; // 8-aligned
    let stubs: Vec<i64> =
        (0..slots).map(|i| (text_offset + i * slot_size) as i64 - eh_frame_offset as i64).collect();
    let (eh_frame, fdes) = eh_frame::stubs_eh_frame(arch, &stubs);
    let eh_frame_hdr_offset = align_up(eh_frame_offset + eh_frame.len(), 4);
    let table: Vec<(i64, i64)> = fdes
        .iter()
        .enumerate()
        .map(|(i, &fde)| ((text_offset + i * slot_size) as i64, (eh_frame_offset + fde) as i64))
        .collect();
    let eh_frame_hdr =
        eh_frame::eh_frame_hdr_table(eh_frame_hdr_offset as i64, eh_frame_offset as i64, &table);
    let load_end = eh_frame_hdr_offset + eh_frame_hdr.len();
    let meta_offset = align_up(load_end, page);
    let shdr_offset = meta_offset;
    let shstrtab_offset = shdr_offset + SECTIONS * SHDR_SIZE;
    let symtab_offset = align_up(shstrtab_offset + SHSTRTAB_BYTES.len(), 8);
    let symtab_len = (slots + 1) * SYM_SIZE;
    let strtab_offset = align_up(symtab_offset + symtab_len, page);
    let layout = Layout {
        slot_size,
        slots,
        code_size: arch.code.len(),
        text_offset,
        eh_frame_offset,
        eh_frame_len: eh_frame.len(),
        eh_frame_hdr_offset,
        eh_frame_hdr_len: eh_frame_hdr.len(),
        load_end,
        meta_offset,
        shdr_offset,
        shstrtab_offset,
        symtab_offset,
        strtab_offset,
    };

    let mut out = vec![0u8; strtab_offset + 1];
    put(&mut out, 0, bytes_of(&file_header(arch, &layout)));
    let phdrs = program_headers(arch, &layout);
    for (i, ph) in phdrs.iter().enumerate() {
        put(&mut out, EHDR_SIZE + i * PHDR_SIZE, bytes_of(ph));
    }
    crate::runtime::arena::fill_arena(
        arch,
        slot_size,
        &mut out[text_offset..text_offset + ARENA_SIZE],
    );
    put(&mut out, eh_frame_offset, &eh_frame);
    put(&mut out, eh_frame_hdr_offset, &eh_frame_hdr);
    for (i, sh) in section_headers(&layout, slots + 1, 1).iter().enumerate() {
        put(&mut out, shdr_offset + i * SHDR_SIZE, bytes_of(sh));
    }
    put(&mut out, shstrtab_offset, SHSTRTAB_BYTES);
    // .symtab stays zero: the null symbol, then one null entry per unused slot. .strtab is the
    // single NUL the empty name needs.
    (layout, out)
}

/// The symbol of slot `index`, named by the string at `name_offset` in `.strtab`.
pub fn symbol(layout: &Layout, index: usize, name_offset: u32) -> [u8; SYM_SIZE] {
    let sym = elf::Sym64::<LE> {
        st_name: U32::new(LE, name_offset),
        st_info: FUNC_INFO,
        st_other: elf::STV_DEFAULT,
        st_shndx: U16::new(LE, TEXT),
        st_value: U64::new(LE, layout.slot_offset(index) as u64),
        st_size: U64::new(LE, layout.code_size as u64),
    };
    bytes_of(&sym).try_into().expect("Elf64_Sym is 24 bytes")
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

fn file_header(arch: &Arch, l: &Layout) -> elf::FileHeader64<LE> {
    elf::FileHeader64 {
        e_ident: elf::Ident {
            magic: elf::ELFMAG,
            class: elf::ELFCLASS64,
            data: elf::ELFDATA2LSB, // both supported architectures are little-endian
            version: elf::EV_CURRENT,
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, elf::ET_DYN),
        e_machine: U16::new(LE, arch.elf_machine as u16),
        e_version: U32::new(LE, elf::EV_CURRENT as u32),
        e_entry: U64::new(LE, 0),
        e_phoff: U64::new(LE, EHDR_SIZE as u64),
        e_shoff: U64::new(LE, l.shdr_offset as u64),
        e_flags: U32::new(LE, 0),
        e_ehsize: U16::new(LE, EHDR_SIZE as u16),
        e_phentsize: U16::new(LE, PHDR_SIZE as u16),
        e_phnum: U16::new(LE, 2),
        e_shentsize: U16::new(LE, SHDR_SIZE as u16),
        e_shnum: U16::new(LE, SECTIONS as u16),
        e_shstrndx: U16::new(LE, SHSTRTAB),
    }
}

fn program_headers(arch: &Arch, l: &Layout) -> [elf::ProgramHeader64<LE>; 2] {
    let ph = |p_type, flags, offset: usize, size: usize, align: usize| elf::ProgramHeader64 {
        p_type: U32::new(LE, p_type),
        p_flags: U32::new(LE, flags),
        p_offset: U64::new(LE, offset as u64),
        p_vaddr: U64::new(LE, offset as u64),
        p_paddr: U64::new(LE, offset as u64),
        p_filesz: U64::new(LE, size as u64),
        p_memsz: U64::new(LE, size as u64),
        p_align: U64::new(LE, align as u64),
    };
    [
        ph(elf::PT_LOAD, elf::PF_R | elf::PF_X, 0, l.load_end, arch.max_page_size),
        ph(elf::PT_GNU_EH_FRAME, elf::PF_R, l.eh_frame_hdr_offset, l.eh_frame_hdr_len, 4),
    ]
}

/// Offset of `name` in [`SHSTRTAB_BYTES`].
fn shname(name: &str) -> u32 {
    let needle = [b"\0", name.as_bytes(), b"\0"].concat();
    let at = SHSTRTAB_BYTES.windows(needle.len()).position(|w| w == needle).expect("listed name");
    (at + 1) as u32
}

fn section_headers(
    l: &Layout,
    symbols: usize,
    strtab_len: usize,
) -> [elf::SectionHeader64<LE>; SECTIONS] {
    let symtab_len = symbols * SYM_SIZE;
    let sh = |name: &str,
              sh_type,
              flags: u32,
              addr: bool,
              offset: usize,
              size: usize,
              link,
              info,
              align,
              entsize| {
        elf::SectionHeader64 {
            sh_name: U32::new(LE, shname(name)),
            sh_type: U32::new(LE, sh_type),
            sh_flags: U64::new(LE, u64::from(flags)),
            sh_addr: U64::new(LE, if addr { offset as u64 } else { 0 }),
            sh_offset: U64::new(LE, offset as u64),
            sh_size: U64::new(LE, size as u64),
            sh_link: U32::new(LE, link),
            sh_info: U32::new(LE, info),
            sh_addralign: U64::new(LE, align),
            sh_entsize: U64::new(LE, entsize),
        }
    };
    let alloc = elf::SHF_ALLOC;
    let null = elf::SectionHeader64 {
        sh_name: U32::new(LE, 0),
        sh_type: U32::new(LE, elf::SHT_NULL),
        sh_flags: U64::new(LE, 0),
        sh_addr: U64::new(LE, 0),
        sh_offset: U64::new(LE, 0),
        sh_size: U64::new(LE, 0),
        sh_link: U32::new(LE, 0),
        sh_info: U32::new(LE, 0),
        sh_addralign: U64::new(LE, 0),
        sh_entsize: U64::new(LE, 0),
    };
    [
        null,
        sh(
            ".text",
            elf::SHT_PROGBITS,
            alloc | elf::SHF_EXECINSTR,
            true,
            l.text_offset,
            ARENA_SIZE,
            0,
            0,
            16,
            0,
        ),
        sh(
            ".eh_frame",
            elf::SHT_PROGBITS,
            alloc,
            true,
            l.eh_frame_offset,
            l.eh_frame_len,
            0,
            0,
            8,
            0,
        ),
        sh(
            ".eh_frame_hdr",
            elf::SHT_PROGBITS,
            alloc,
            true,
            l.eh_frame_hdr_offset,
            l.eh_frame_hdr_len,
            0,
            0,
            4,
            0,
        ),
        // sh_info: one past the last local symbol; all of them are local.
        sh(
            ".symtab",
            elf::SHT_SYMTAB,
            0,
            false,
            l.symtab_offset,
            symtab_len,
            u32::from(STRTAB),
            symbols as u32,
            8,
            SYM_SIZE as u64,
        ),
        sh(".strtab", elf::SHT_STRTAB, 0, false, l.strtab_offset, strtab_len, 0, 0, 1, 0),
        sh(
            ".shstrtab",
            elf::SHT_STRTAB,
            0,
            false,
            l.shstrtab_offset,
            SHSTRTAB_BYTES.len(),
            0,
            0,
            1,
            0,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{self, UnwindRow};
    use gimli::{
        BaseAddresses, CfaRule, EhFrame, EhFrameHdr, NativeEndian, Register, RegisterRule,
        UnwindContext, UnwindSection,
    };
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader, Sym};
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    use std::path::Path;

    /// An image with `used` slots named `py::f<i>:/t.py`, assembled as elf_sink does it.
    fn image_with_names(arch: &Arch, used: usize) -> (Layout, Vec<u8>) {
        let (layout, mut bytes) = initial_image(arch, arch.slot_stride);
        for i in 0..used {
            let name_offset = (bytes.len() - layout.strtab_offset) as u32;
            bytes.extend_from_slice(format!("py::f{i}:/t.py\0").as_bytes());
            let at = layout.symbol_offset(i);
            bytes[at..at + SYM_SIZE].copy_from_slice(&symbol(&layout, i, name_offset));
        }
        let size = (bytes.len() - layout.strtab_offset) as u64;
        let f = layout.strtab_size_field();
        bytes[f..f + 8].copy_from_slice(&size.to_le_bytes());
        (layout, bytes)
    }

    fn row_at(arch: &Arch, offset: u32) -> &UnwindRow {
        arch.unwind.iter().rev().find(|r| r.offset <= offset).unwrap()
    }

    #[test]
    fn object_reads_headers_and_every_symbol_for_both_arches() {
        for arch in arch::ALL {
            let (layout, bytes) = image_with_names(arch, 300);
            let file =
                ElfFile64::<LE>::parse(&*bytes).unwrap_or_else(|e| panic!("{}: {e}", arch.name));
            assert_eq!(file.elf_header().e_machine(LE), arch.elf_machine as u16, "{}", arch.name);
            assert_eq!(file.elf_header().e_type(LE), elf::ET_DYN);
            // One PT_LOAD from offset 0 (vaddr == offset), r-x, ending before the changing part.
            let phdrs = file.elf_program_headers();
            let load: Vec<_> = phdrs.iter().filter(|p| p.p_type(LE) == elf::PT_LOAD).collect();
            assert_eq!(load.len(), 1);
            assert_eq!((load[0].p_offset(LE), load[0].p_vaddr(LE)), (0, 0));
            assert_eq!(load[0].p_flags(LE), elf::PF_R | elf::PF_X);
            assert!(load[0].p_filesz(LE) as usize <= layout.meta_offset);
            assert_eq!(layout.meta_offset % arch.max_page_size, 0);
            assert_eq!(layout.text_offset % arch.max_page_size, 0);
            assert_eq!(layout.strtab_offset % arch.max_page_size, 0);
            let eh = phdrs.iter().find(|p| p.p_type(LE) == elf::PT_GNU_EH_FRAME).unwrap();
            assert_eq!(eh.p_vaddr(LE) as usize, layout.eh_frame_hdr_offset);
            for section in file.sections() {
                let (off, _) = section.file_range().unwrap_or((section.address(), 0));
                if section.address() != 0 {
                    assert_eq!(
                        section.address(),
                        off,
                        "{}: vaddr == offset",
                        section.name().unwrap()
                    );
                }
            }
            let text = file.section_by_name(".text").unwrap();
            assert_eq!(text.address() as usize, layout.text_offset);
            let code = text.data().unwrap();
            for slot in code.chunks_exact(arch.slot_stride) {
                assert_eq!(slot, arch.slot_template, "{}", arch.name);
            }
            let functions: Vec<_> =
                file.symbols().filter(|s| s.kind() == SymbolKind::Text).collect();
            assert_eq!(functions.len(), 300, "{}: only used slots are functions", arch.name);
            for (i, sym) in functions.iter().enumerate() {
                assert_eq!(sym.name().unwrap(), format!("py::f{i}:/t.py"));
                assert_eq!(sym.address() as usize, layout.text_offset + i * arch.slot_stride);
                assert_eq!(sym.size() as usize, arch.code.len());
                assert_eq!(sym.section_index(), Some(object::SectionIndex(TEXT as usize)));
            }
            // The unused entries are null symbols.
            let symtab = file.elf_symbol_table();
            assert_eq!(symtab.len(), layout.slots + 1);
            for i in 301..=layout.slots {
                let s = symtab.symbol(object::SymbolIndex(i)).unwrap();
                assert_eq!((s.st_name(LE), s.st_info(), s.st_value(LE)), (0, 0, 0));
            }
        }
    }

    #[test]
    fn the_initial_image_is_valid_and_names_nothing() {
        for arch in arch::ALL {
            let (_, bytes) = initial_image(arch, arch.slot_stride);
            let file = ElfFile64::<LE>::parse(&*bytes).unwrap();
            assert_eq!(file.symbols().filter(|s| s.kind() == SymbolKind::Text).count(), 0);
            let strtab = file.section_by_name(".strtab").unwrap();
            assert_eq!(strtab.data().unwrap(), b"\0");
            let shdr =
                file.elf_section_table().section(object::SectionIndex(STRTAB as usize)).unwrap();
            assert_eq!(shdr.sh_type(LE), elf::SHT_STRTAB);
        }
    }

    #[test]
    fn every_slot_has_an_fde_exact_at_every_instruction_for_both_arches() {
        for arch in arch::ALL {
            for slot_size in [arch.slot_stride, 96] {
                let (layout, bytes) = initial_image(arch, slot_size);
                let eh_frame_bytes =
                    &bytes[layout.eh_frame_offset..layout.eh_frame_offset + layout.eh_frame_len];
                let hdr_bytes = &bytes[layout.eh_frame_hdr_offset
                    ..layout.eh_frame_hdr_offset + layout.eh_frame_hdr_len];
                let bases = BaseAddresses::default()
                    .set_text(layout.text_offset as u64)
                    .set_eh_frame(layout.eh_frame_offset as u64)
                    .set_eh_frame_hdr(layout.eh_frame_hdr_offset as u64);
                let eh_frame = EhFrame::new(eh_frame_bytes, NativeEndian);
                let hdr = EhFrameHdr::new(hdr_bytes, NativeEndian).parse(&bases, 8).unwrap();
                let table = hdr.table().expect("a binary-search table");
                let mut ctx = UnwindContext::new();
                let mut fdes = 0;
                for slot in 0..layout.slots {
                    let start = layout.slot_offset(slot) as u64;
                    // Through the header's table, as unwinders look FDEs up.
                    let fde = table
                        .fde_for_address(&eh_frame, &bases, start, EhFrame::cie_from_offset)
                        .unwrap_or_else(|e| panic!("{} slot {slot}: {e}", arch.name));
                    assert_eq!(fde.initial_address(), start);
                    assert_eq!(fde.len() as usize, arch.code.len());
                    fdes += 1;
                    // Sampled: every instruction offset of a few slots (all are identical FDEs).
                    if slot % 509 != 0 && slot != layout.slots - 1 {
                        continue;
                    }
                    for offset in 0..arch.code.len() as u32 {
                        let row = fde
                            .unwind_info_for_address(
                                &eh_frame,
                                &bases,
                                &mut ctx,
                                start + u64::from(offset),
                            )
                            .unwrap();
                        let want = row_at(arch, offset);
                        assert_eq!(
                            row.cfa(),
                            &CfaRule::RegisterAndOffset {
                                register: Register(want.cfa_register),
                                offset: want.cfa_offset as i64
                            },
                            "{} slot {slot} +{offset}",
                            arch.name
                        );
                        for &(reg, off) in want.saved {
                            assert_eq!(
                                row.register(Register(reg)),
                                Some(RegisterRule::Offset(off as i64)),
                                "{} +{offset} r{reg}",
                                arch.name
                            );
                        }
                    }
                    // Past the stub (padding) there is no FDE.
                    let pad = start + arch.code.len() as u64;
                    if (pad as usize) < layout.slot_offset(slot) + slot_size {
                        let found =
                            table.fde_for_address(&eh_frame, &bases, pad, EhFrame::cie_from_offset);
                        assert!(found.is_err(), "{} slot {slot}: padding covered", arch.name);
                    }
                }
                assert_eq!(fdes, ARENA_SIZE / slot_size);
            }
        }
    }

    #[test]
    fn unused_symbol_until_st_info_and_sh_size_field_is_strtab_size() {
        let arch = &arch::x86_64::ARCH;
        let (layout, bytes) = image_with_names(arch, 2);
        let file = ElfFile64::<LE>::parse(&*bytes).unwrap();
        let strtab = file.section_by_name(".strtab").unwrap();
        assert_eq!(strtab.size() as usize, bytes.len() - layout.strtab_offset);
        let sym = symbol(&layout, 7, 1);
        assert_eq!(sym[ST_INFO_OFFSET], FUNC_INFO);
        let header = file.elf_header();
        assert_eq!(header.e_shoff(LE) as usize, layout.shdr_offset);
        assert!(header.e_shoff(LE) as usize >= layout.meta_offset);
    }

    /// The host's binutils for x86_64, the cross binutils for aarch64 (Debian's
    /// binutils-aarch64-linux-gnu): an independent reader of headers, symbols, every FDE's
    /// rules and the code. Skipped only where they are not installed, unless
    /// PERFTRAMP_REQUIRE_BINUTILS=1.
    #[test]
    fn binutils_read_the_image_for_both_arches() {
        let required = std::env::var("PERFTRAMP_REQUIRE_BINUTILS").as_deref() == Ok("1");
        let dir = std::env::temp_dir().join(format!("perftramp-elfimage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        for (arch, prefix, machine, disasm) in [
            (
                &arch::x86_64::ARCH,
                "",
                "Advanced Micro Devices X86-64",
                &["push %rbp", "call *%rcx"][..],
            ),
            (
                &arch::aarch64::ARCH,
                "aarch64-linux-gnu-",
                "AArch64",
                &["stp x29, x30, [sp, #-16]!", "blr x3"][..],
            ),
        ] {
            let readelf = format!("{prefix}readelf");
            let objdump = format!("{prefix}objdump");
            let run = |tool: &str, args: &[&str], path: &Path| -> Option<String> {
                let out = std::process::Command::new(tool).args(args).arg(path).output().ok()?;
                assert!(
                    out.status.success(),
                    "{tool} {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(!stderr.to_lowercase().contains("warning"), "{tool} {args:?}: {stderr}");
                Some(String::from_utf8_lossy(&out.stdout).into_owned())
            };
            let (layout, bytes) = image_with_names(arch, 3);
            let path = dir.join(format!("{}.so", arch.name));
            std::fs::write(&path, &bytes).unwrap();
            let Some(headers) = run(&readelf, &["-h", "-l", "-S"], &path) else {
                assert!(!required, "{readelf} is not installed");
                eprintln!("skipped {}: {readelf} is not installed", arch.name);
                continue;
            };
            assert!(headers.contains(machine), "{headers}");
            assert!(headers.contains("GNU_EH_FRAME"), "{headers}");
            let symbols = run(&readelf, &["-W", "-s"], &path).unwrap();
            for i in 0..3 {
                let line = symbols
                    .lines()
                    .find(|l| l.ends_with(&format!("py::f{i}:/t.py")))
                    .unwrap_or_else(|| panic!("{symbols}"));
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(
                    u64::from_str_radix(fields[1], 16).unwrap() as usize,
                    layout.slot_offset(i),
                    "{line}"
                );
                assert_eq!(fields[2].parse::<usize>().unwrap(), arch.code.len(), "{line}");
                assert_eq!((fields[3], fields[4], fields[6]), ("FUNC", "LOCAL", "1"), "{line}");
            }
            let frames = run(&readelf, &["--debug-dump=frames-interp"], &path).unwrap();
            assert_eq!(frames.matches(" FDE cie=").count(), layout.slots, "one FDE per slot");
            // The rows of the first FDE, as binutils interprets them: one per arch row.
            let first = frames.split(" FDE cie=").nth(1).unwrap();
            let rows: Vec<&str> =
                first.lines().skip(2).take_while(|l| !l.trim().is_empty()).collect();
            assert_eq!(rows.len(), arch.unwind.len(), "{first}");
            for (row, want) in rows.iter().zip(arch.unwind) {
                let fields: Vec<&str> = row.split_whitespace().collect();
                let loc = u64::from_str_radix(fields[0], 16).unwrap() as usize;
                assert_eq!(loc, layout.slot_offset(0) + want.offset as usize, "{row}");
                let reg = match (arch.name, want.cfa_register) {
                    ("x86_64", 6) => "rbp",
                    ("x86_64", 7) => "rsp",
                    ("aarch64", 29) => "x29",
                    ("aarch64", 31) => "sp",
                    other => panic!("{other:?}"),
                };
                assert_eq!(fields[1], format!("{reg}+{}", want.cfa_offset), "{row}");
            }
            let start = format!("--start-address={:#x}", layout.text_offset);
            let stop = format!("--stop-address={:#x}", layout.text_offset + 2 * layout.slot_size);
            let code = run(&objdump, &["-d", &start, &stop], &path).unwrap();
            let flat = code.split_whitespace().collect::<Vec<_>>().join(" ");
            for insn in disasm {
                assert!(flat.contains(insn), "{insn:?} not in {code}");
            }
            assert!(code.contains("<py::f0:/t.py>:"), "{code}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
