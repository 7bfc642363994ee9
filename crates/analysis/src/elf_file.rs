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
}

/// The difference between where a mapping is in the process (`start`) and where the file says
/// the bytes at `pgoff` belong: avma = svma + bias.
pub fn load_bias(
    segments: &[LoadSegment],
    section_offsets: &[(u64, u64, u64)],
    start: u64,
    pgoff: u64,
) -> u64 {
    let containing = segments
        .iter()
        .find(|s| s.offset <= pgoff && pgoff < s.offset.saturating_add(s.file_size.max(1)));
    if let Some(segment) = containing {
        let svma = segment.vaddr.wrapping_add(pgoff - segment.offset);
        return start.wrapping_sub(svma);
    }
    if let Some(&(offset, _, address)) =
        section_offsets.iter().find(|&&(o, size, _)| o <= pgoff && pgoff < o.saturating_add(size.max(1)))
    {
        let svma = address.wrapping_add(pgoff - offset);
        return start.wrapping_sub(svma);
    }
    // No segment or section covers it: take file offsets as addresses.
    start.wrapping_sub(pgoff)
}

impl ElfFile {
    /// Parses `data` (the file's bytes); `debug_symbols` replaces this file's own symbols when
    /// a separate debug file had some.
    fn parse(data: Arc<[u8]>, path: &Path) -> Result<(Self, ElfIdentity), String> {
        let obj = object::File::parse(&*data).map_err(|e| format!("{}: not ELF: {e}", path.display()))?;
        let segments = obj
            .segments()
            .map(|s| {
                let (offset, file_size) = s.file_range();
                LoadSegment { vaddr: s.address(), offset, file_size }
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
            symbols: symbols_of(&obj),
        };
        Ok((file, identity))
    }

    pub fn bias(&self, start: u64, pgoff: u64) -> u64 {
        load_bias(&self.segments, &self.section_offsets, start, pgoff)
    }
}

struct ElfIdentity {
    build_id: Option<Vec<u8>>,
    debuglink: Option<String>,
}

/// Text symbols of .symtab, else of .dynsym (as perf: a stripped file still names its exports).
fn symbols_of(obj: &object::File<'_>) -> SymbolTable {
    let collect = |symbols: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| -> Vec<RawSymbol> {
        symbols
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                (!name.is_empty()).then(|| RawSymbol {
                    start: s.address(),
                    size: s.size(),
                    name: display_name(name),
                })
            })
            .collect()
    };
    let mut raw = collect(&mut obj.symbols());
    if raw.is_empty() {
        raw = collect(&mut obj.dynamic_symbols());
    }
    // Prefer sized, global names at an address shared by aliases: SymbolTable keeps the last
    // of equal starts, so put the preferred ones last.
    raw.sort_by_key(|s| (s.start, s.size != 0, !s.name.starts_with('_')));
    SymbolTable::new(raw)
}

/// Where separate debug files for `path` may be, most specific first.
fn debug_file_candidates(path: &Path, identity: &ElfIdentity) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(id) = identity.build_id.as_deref().filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..])));
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
        self.vdso.get_or_insert_with(|| {
            let data: Arc<[u8]> = read_own_vdso()?.into();
            ElfFile::parse(data, Path::new("[vdso]")).ok().map(|(file, _)| Arc::new(file))
        })
        .clone()
    }

    fn load(path: &Path) -> Result<Arc<ElfFile>, String> {
        let data: Arc<[u8]> = std::fs::read(path)
            .map_err(|e| format!("{}: cannot read ({e}); its frames stay unnamed", path.display()))?
            .into();
        let (mut file, identity) = ElfFile::parse(data, path)?;
        // A separate debug file has the full .symtab of a stripped binary (distribution libs).
        if file.symbols.len() < 2 || identity.debuglink.is_some() {
            for candidate in debug_file_candidates(path, &identity) {
                let Ok(bytes) = std::fs::read(&candidate) else { continue };
                if let Ok(obj) = object::File::parse(&*bytes) {
                    let symbols = symbols_of(&obj);
                    if symbols.len() > file.symbols.len() {
                        file.symbols = symbols;
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

    #[test]
    fn bias_of_a_shared_library_text_mapping() {
        // A typical libpython: r-- at offset 0, r-x segment at offset 0x6d000 stated at 0x6d000.
        let segments = [
            LoadSegment { vaddr: 0, offset: 0, file_size: 0x6c000 },
            LoadSegment { vaddr: 0x6d000, offset: 0x6d000, file_size: 0x200000 },
        ];
        let start = 0x7f0000000000 + 0x6d000;
        assert_eq!(load_bias(&segments, &[], start, 0x6d000), 0x7f0000000000);
    }

    #[test]
    fn bias_when_vaddr_and_offset_differ() {
        // Executables linked with a gap between file offset and address.
        let segments = [LoadSegment { vaddr: 0x401000, offset: 0x1000, file_size: 0x5000 }];
        assert_eq!(load_bias(&segments, &[], 0x401000, 0x1000), 0);
        assert_eq!(load_bias(&segments, &[], 0x555555555000, 0x1000), 0x555555555000 - 0x401000);
    }

    #[test]
    fn bias_from_a_section_when_no_segment_covers_the_offset() {
        // perf inject's jitted-*.so: .text at file offset 0x40 stated at 0x40, no PT_LOAD.
        let sections = [(0x40, 0x100, 0x40)];
        assert_eq!(load_bias(&[], &sections, 0x7f1234560000, 0x40), 0x7f1234560000 - 0x40);
        assert_eq!(load_bias(&[], &[], 0x5000, 0x1000), 0x4000);
    }

    #[test]
    fn debug_candidates_by_build_id_and_debuglink() {
        let identity = ElfIdentity { build_id: Some(vec![0xab, 0xcd, 0xef]), debuglink: Some("libx.so.debug".into()) };
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
