//! An ELF file a process mapped: its PT_LOAD segments (to place a mapping), its unwind sections
//! (for framehop) and its symbols (from itself or its separate debug file). Files are read once
//! and shared by every process that maps them (`ElfCache`).

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::symbols::{display_name, RawSymbol, SymbolTable};

/// A byte range of a file read into memory: what framehop's modules hold as section data.
#[derive(Clone, Default)]
pub struct SectionBytes {
    file: Arc<[u8]>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // In bounds by construction (`ElfFile::section`) — and `get` keeps it panic-free.
        self.file.get(self.range.clone()).unwrap_or(&[])
    }
}

/// One section's stated address range and its bytes.
#[derive(Clone)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: SectionBytes,
}

/// A PT_LOAD segment: where file bytes [offset, offset + file_size) are stated to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub file_size: u64,
    pub executable: bool,
}

/// What the unwinder and the symbolizer need from one ELF file.
pub struct ElfFile {
    pub segments: Vec<LoadSegment>,
    /// Sections by file offset, for files whose code is not in a PT_LOAD segment (perf
    /// inject's jitted-*.so files place their mappings by the .text section).
    pub section_offsets: Vec<(u64, u64, u64)>, // (offset, size, address)
    pub text: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
    pub got: Option<Section>,
    pub symbols: SymbolTable,
    /// Whether `symbols` came from a .symtab (else .dynsym only: look for a debug file).
    pub has_symtab: bool,
}

/// The difference between where a mapping is in the process and where the file says its bytes
/// belong: avma = svma + bias. The mapping `start..start+length` holds file bytes from
/// `pgoff` (page-aligned, so it can begin before its segment's first byte); the segment it
/// maps (the executable one among those it overlaps) gives the file-offset-to-svma delta.
pub fn load_bias(
    segments: &[LoadSegment],
    section_offsets: &[(u64, u64, u64)],
    start: u64,
    length: u64,
    pgoff: u64,
) -> u64 {
    let file_end = pgoff.saturating_add(length);
    let overlaps =
        |offset: u64, size: u64| offset < file_end && pgoff < offset.saturating_add(size.max(1));
    let segment =
        segments.iter().filter(|s| overlaps(s.offset, s.file_size)).max_by_key(|s| s.executable);
    // delta = svma - file offset, for the bytes this mapping holds.
    let delta = match segment {
        Some(s) => s.vaddr.wrapping_sub(s.offset),
        None => section_offsets
            .iter()
            .find(|&&(offset, size, _)| overlaps(offset, size))
            .map(|&(offset, _, address)| address.wrapping_sub(offset))
            .unwrap_or(0), // nothing covers it: take file offsets as addresses
    };
    start.wrapping_sub(pgoff).wrapping_sub(delta)
}

impl ElfFile {
    /// Parses `data` (the file's bytes); `debug_symbols` replaces this file's own symbols when
    /// a separate debug file had some.
    fn parse(data: Arc<[u8]>, path: &Path) -> Result<(Self, ElfIdentity), String> {
        let obj =
            object::File::parse(&*data).map_err(|e| format!("{}: not ELF: {e}", path.display()))?;
        let segments = obj
            .segments()
            .map(|s| {
                let (offset, file_size) = s.file_range();
                let executable = matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
                LoadSegment { vaddr: s.address(), offset, file_size, executable }
            })
            .collect();
        let mut section_offsets = Vec::new();
        for section in obj.sections() {
            if let Some((offset, size)) = section.file_range() {
                if section.address() != 0 {
                    section_offsets.push((offset, size, section.address()));
                }
            }
        }
        let section = |name: &str| -> Option<Section> {
            let s = obj.section_by_name(name)?;
            let (offset, size) = s.file_range()?;
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            (end <= data.len()).then(|| Section {
                svma: s.address()..s.address() + s.size(),
                data: SectionBytes { file: data.clone(), range: start..end },
            })
        };
        let identity = ElfIdentity {
            build_id: obj.build_id().ok().flatten().map(<[u8]>::to_vec),
            debuglink: obj
                .gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, _crc)| String::from_utf8_lossy(name).into_owned()),
        };
        let file = ElfFile {
            segments,
            section_offsets,
            text: section(".text"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame"),
            got: section(".got"),
            symbols: SymbolTable::default(),
            has_symtab: false,
        };
        let (symbols, has_symtab) = symbols_of(&obj);
        Ok((ElfFile { symbols, has_symtab, ..file }, identity))
    }

    pub fn bias(&self, start: u64, length: u64, pgoff: u64) -> u64 {
        load_bias(&self.segments, &self.section_offsets, start, length, pgoff)
    }
}

struct ElfIdentity {
    build_id: Option<Vec<u8>>,
    debuglink: Option<String>,
}

/// How perf ranks aliases (higher wins): sized, non-weak, global, -leading underscores, name
/// length, -index in the table.
type AliasRank = (bool, bool, bool, isize, usize, isize);

/// Text symbols of .symtab, else of .dynsym (as perf: a stripped file still names its
/// exports), plus `name@plt` for PLT entries (perf synthesizes those too). The bool says
/// whether a .symtab was found (else a debug file is worth looking for).
fn symbols_of(obj: &object::File<'_>) -> (SymbolTable, bool) {
    // perf's choose_best_symbol among aliases at one address: sized, non-weak, global, fewer
    // leading underscores, longer name; on a tie the first in the table. SymbolTable keeps the
    // last of equal starts, so sort the preferred one last.
    let collect =
        |symbols: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| -> Vec<(RawSymbol, AliasRank)> {
            symbols
                .filter(|s| s.address() != 0 && (is_function(s) || is_code_label(obj, s)))
                .enumerate()
                .filter_map(|(index, s)| {
                    let name = s.name().ok()?;
                    // Empty names, and aarch64/arm mapping symbols ($x, $d), which perf skips too.
                    if name.is_empty() || name.starts_with('$') {
                        return None;
                    }
                    let underscores = name.bytes().take_while(|&b| b == b'_').count() as isize;
                    let rank = (
                        s.size() != 0,
                        !s.is_weak(),
                        s.is_global(),
                        -underscores,
                        name.len(),
                        -(index as isize),
                    );
                    Some((
                        RawSymbol { start: s.address(), size: s.size(), name: display_name(name) },
                        rank,
                    ))
                })
                .collect()
        };
    let mut ranked = collect(&mut obj.symbols());
    let from_symtab = !ranked.is_empty();
    if ranked.is_empty() {
        ranked = collect(&mut obj.dynamic_symbols());
    }
    ranked.sort_by_key(|a| (a.0.start, a.1));
    let mut raw: Vec<RawSymbol> = ranked.into_iter().map(|(s, _)| s).collect();
    // PLT entries go first among equal starts: a real symbol at the same address wins.
    let mut plt = plt_symbols(obj);
    plt.append(&mut raw);
    (SymbolTable::new_stable(plt), from_symtab)
}

fn is_function(symbol: &object::Symbol<'_, '_>) -> bool {
    symbol.kind() == SymbolKind::Text && symbol.is_definition()
}

/// An untyped symbol in an executable section (`_start` in ld.so's debug file): perf counts
/// these "labels" as functions.
fn is_code_label(obj: &object::File<'_>, symbol: &object::Symbol<'_, '_>) -> bool {
    if symbol.kind() != SymbolKind::Unknown {
        return false;
    }
    let Some(index) = symbol.section_index() else { return false };
    let Ok(section) = obj.section_by_index(index) else { return false };
    matches!(section.flags(), object::SectionFlags::Elf { sh_flags } if sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0)
}

/// `name@plt` for each PLT entry, in .rela.plt order (x86_64: .plt.sec entries, or .plt
/// entries after the 16-byte header; aarch64: .plt entries after the 32-byte header).
fn plt_symbols(obj: &object::File<'_>) -> Vec<RawSymbol> {
    use object::{Architecture, RelocationFlags, RelocationTarget};
    let (jump_slot, header) = match obj.architecture() {
        Architecture::X86_64 => (7u32, 16u64), // R_X86_64_JUMP_SLOT
        Architecture::Aarch64 => (1026u32, 32u64), // R_AARCH64_JUMP_SLOT
        _ => return Vec::new(),
    };
    let (section, skip) = match (obj.section_by_name(".plt.sec"), obj.section_by_name(".plt")) {
        (Some(sec), _) => (sec, 0),
        (None, Some(plt)) => (plt, header),
        _ => return Vec::new(),
    };
    let Some(relocations) = obj.dynamic_relocations() else { return Vec::new() };
    let dynsym = obj.dynamic_symbol_table();
    let mut out = Vec::new();
    let mut address = section.address() + skip;
    let end = section.address() + section.size();
    for (_, relocation) in relocations {
        if !matches!(relocation.flags(), RelocationFlags::Elf { r_type } if r_type == jump_slot) {
            continue;
        }
        if address + 16 > end {
            break;
        }
        if let (RelocationTarget::Symbol(index), Some(table)) =
            (relocation.target(), dynsym.as_ref())
        {
            use object::ObjectSymbolTable;
            if let Some(name) =
                table.symbol_by_index(index).ok().and_then(|s| s.name().ok().map(str::to_owned))
            {
                if !name.is_empty() {
                    out.push(RawSymbol {
                        start: address,
                        size: 16,
                        name: Arc::from(format!("{name}@plt")),
                    });
                }
            }
        }
        address += 16;
    }
    out
}

/// Where separate debug files for `path` may be, most specific first.
fn debug_file_candidates(path: &Path, identity: &ElfIdentity) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(id) = identity.build_id.as_deref().filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Some(link) = identity.debuglink.as_deref() {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        candidates.push(Path::new("/usr/lib/debug").join(relative).join(link));
        candidates.push(dir.join(".debug").join(link));
        candidates.push(dir.join(link));
    }
    candidates.retain(|c| c != path);
    candidates
}

/// Parsed ELF files by path and (size, mtime): processes map the same libraries, so each is
/// read once per recording. A file that cannot be read is remembered as such (one warning).
#[derive(Default)]
pub struct ElfCache {
    files: HashMap<PathBuf, Option<Arc<ElfFile>>>,
    /// This machine's vDSO image (None inside: not readable), standing in for the recorded
    /// processes' one: the same kernel maps the same image into every process.
    vdso: Option<Option<Arc<ElfFile>>>,
}

impl ElfCache {
    /// The parsed file, or an error saying why there is none (reported once per path).
    pub fn get(&mut self, path: &Path) -> Result<Arc<ElfFile>, Option<String>> {
        if let Some(known) = self.files.get(path) {
            return known.clone().ok_or(None);
        }
        let loaded = Self::load(path);
        self.files.insert(path.to_path_buf(), loaded.as_ref().ok().cloned());
        loaded.map_err(Some)
    }

    /// This machine's vDSO, read from this process's memory (/proc/self/maps and mem).
    pub fn vdso(&mut self) -> Option<Arc<ElfFile>> {
        self.vdso
            .get_or_insert_with(|| {
                let data: Arc<[u8]> = read_own_vdso()?.into();
                ElfFile::parse(data, Path::new("[vdso]")).ok().map(|(file, _)| Arc::new(file))
            })
            .clone()
    }

    fn load(path: &Path) -> Result<Arc<ElfFile>, String> {
        let data: Arc<[u8]> = std::fs::read(path)
            .map_err(|e| format!("{}: cannot read ({e}); its frames stay unnamed", path.display()))?
            .into();
        let (mut file, identity) = ElfFile::parse(data.clone(), path)?;
        // A separate debug file has the full .symtab of a stripped binary (distribution libs).
        if !file.has_symtab {
            for candidate in debug_file_candidates(path, &identity) {
                let Ok(bytes) = std::fs::read(&candidate) else { continue };
                if let Ok(obj) = object::File::parse(&*bytes) {
                    let (symbols, from_symtab) = symbols_of(&obj);
                    if from_symtab {
                        // The debug file has no code: keep the PLT names of the real file.
                        let mut plt =
                            plt_symbols(&object::File::parse(&*data).map_err(|e| e.to_string())?);
                        plt.extend(symbols.into_raw());
                        file.symbols = SymbolTable::new_stable(plt);
                        file.has_symtab = true;
                        break;
                    }
                }
            }
        }
        Ok(Arc::new(file))
    }
}

fn read_own_vdso() -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let mut mem = std::fs::File::open("/proc/self/mem").ok()?;
    mem.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = vec![0; usize::try_from(end.checked_sub(start)?).ok()?];
    mem.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(vaddr: u64, offset: u64, file_size: u64, executable: bool) -> LoadSegment {
        LoadSegment { vaddr, offset, file_size, executable }
    }

    #[test]
    fn bias_of_a_shared_library_text_mapping() {
        // A typical libpython: r-- at offset 0, r-x segment at offset 0x6d000 stated at 0x6d000.
        let segments = [segment(0, 0, 0x6c000, false), segment(0x6d000, 0x6d000, 0x200000, true)];
        let start = 0x7f0000000000 + 0x6d000;
        assert_eq!(load_bias(&segments, &[], start, 0x200000, 0x6d000), 0x7f0000000000);
    }

    #[test]
    fn bias_when_the_mapping_starts_before_its_segment() {
        // lld output: r-x segment at file offset 0x2bb68 stated at 0x2cb68; the kernel maps it
        // from the page-aligned offset 0x2b000, which the r-- segment also covers.
        let segments = [segment(0, 0, 0x2bb68, false), segment(0x2cb68, 0x2bb68, 0xacee8, true)];
        let base = 0x7fb9bf2da000u64;
        let start = 0x7fb9bf306000u64;
        let bias = load_bias(&segments, &[], start, 0xae000, 0x2b000);
        // The file's address 0 is where its offset 0 was mapped (the r-- mapping at `base`).
        assert_eq!(bias, base);
        // An address's svma: the file offset 0x2b000 + (ip - start), plus the 0x1000 delta.
        assert_eq!(start + 0x100 - bias, 0x2b100 + 0x1000);
    }

    #[test]
    fn bias_when_vaddr_and_offset_differ() {
        let segments = [segment(0x401000, 0x1000, 0x5000, true)];
        assert_eq!(load_bias(&segments, &[], 0x401000, 0x5000, 0x1000), 0);
        assert_eq!(
            load_bias(&segments, &[], 0x555555555000, 0x5000, 0x1000),
            0x555555555000 - 0x401000
        );
    }

    #[test]
    fn bias_from_a_section_when_no_segment_covers_the_offset() {
        // perf inject's jitted-*.so: .text at file offset 0x40 stated at 0x40, no PT_LOAD.
        let sections = [(0x40, 0x100, 0x40)];
        assert_eq!(load_bias(&[], &sections, 0x7f1234560000, 0x100, 0x40), 0x7f1234560000 - 0x40);
        assert_eq!(load_bias(&[], &[], 0x5000, 0x1000, 0x1000), 0x4000);
    }

    #[test]
    fn debug_candidates_by_build_id_and_debuglink() {
        let identity = ElfIdentity {
            build_id: Some(vec![0xab, 0xcd, 0xef]),
            debuglink: Some("libx.so.debug".into()),
        };
        let candidates = debug_file_candidates(Path::new("/usr/lib/libx.so"), &identity);
        assert_eq!(candidates[0], PathBuf::from("/usr/lib/debug/.build-id/ab/cdef.debug"));
        assert_eq!(candidates[1], PathBuf::from("/usr/lib/debug/usr/lib/libx.so.debug"));
    }

    #[test]
    fn this_test_binary_parses_with_symbols_and_unwind_info() {
        let exe = std::env::current_exe().unwrap();
        let mut cache = ElfCache::default();
        let file = cache.get(&exe).unwrap();
        assert!(file.eh_frame.is_some());
        assert!(file.symbols.len() > 100);
        assert!(!file.segments.is_empty());
    }
}
