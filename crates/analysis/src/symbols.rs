//! Symbol tables: sorted address ranges with names, filled from ELF .symtab/.dynsym (see
//! `elf_file`), perf maps (`/tmp/perf-<pid>.map`) and the kernel's /proc/kallsyms.

use std::sync::Arc;

/// One named address range. `end` is exclusive; for symbols without a size (kallsyms, ELF
/// symbols of size 0) it is the next symbol's start, as perf's symbols__fixup_end does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub start: u64,
    pub end: u64,
    pub name: Arc<str>,
}

/// Symbols sorted by start, non-overlapping by construction of the lookup (the last symbol
/// starting at or below an address is the candidate).
#[derive(Debug, Default, Clone)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
}

/// A symbol before its end is known: `size` 0 means "up to the next symbol".
#[derive(Debug, Clone)]
pub struct RawSymbol {
    pub start: u64,
    pub size: u64,
    pub name: Arc<str>,
}

impl SymbolTable {
    /// Builds the table. For several symbols at one address the LAST one given wins (perf maps
    /// are appended to; a later line for an address replaces the earlier one).
    pub fn new(raw: Vec<RawSymbol>) -> Self {
        Self::new_stable(raw)
    }

    /// As `new`: the sort by start is stable, so among equal starts the last given wins
    /// (callers order aliases so the preferred one is last).
    pub fn new_stable(mut raw: Vec<RawSymbol>) -> Self {
        raw.sort_by_key(|s| s.start);
        let mut deduped: Vec<RawSymbol> = Vec::with_capacity(raw.len());
        for symbol in raw {
            match deduped.last_mut() {
                Some(last) if last.start == symbol.start => *last = symbol,
                _ => deduped.push(symbol),
            }
        }
        let mut symbols = Vec::with_capacity(deduped.len());
        for (i, s) in deduped.iter().enumerate() {
            let next = deduped.get(i + 1).map(|n| n.start);
            let end = if s.size > 0 {
                s.start.saturating_add(s.size)
            } else {
                // Unsized: up to the next symbol (or a page past the start for the last one,
                // so a stray address far beyond the table is not named after it).
                next.unwrap_or(s.start.saturating_add(4096))
            };
            symbols.push(Symbol { start: s.start, end, name: s.name.clone() });
        }
        SymbolTable { symbols }
    }

    /// The symbols back as unsized-free input (sizes from the computed ends).
    pub fn into_raw(self) -> Vec<RawSymbol> {
        self.symbols
            .into_iter()
            .map(|s| RawSymbol { start: s.start, size: s.end - s.start, name: s.name })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The symbol containing `address`, if any.
    pub fn lookup(&self, address: u64) -> Option<&Symbol> {
        let index = self.symbols.partition_point(|s| s.start <= address);
        let candidate = self.symbols.get(index.checked_sub(1)?)?;
        (address < candidate.end).then_some(candidate)
    }
}

/// Parses a perf map (`START SIZE name` per line, START and SIZE in hex with or without `0x`),
/// skipping malformed lines (a line being written when the file was read, for example).
pub fn parse_perf_map(text: &str) -> SymbolTable {
    let mut raw = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(start), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Some(start), Some(size)) = (parse_hex(start), parse_hex(size)) else {
            continue;
        };
        if size == 0 {
            continue;
        }
        raw.push(RawSymbol { start, size, name: Arc::from(name.trim_end()) });
    }
    SymbolTable::new(raw)
}

fn parse_hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// The kernel's text symbols: the core kernel's (dso `[kernel.kallsyms]`) and each module's
/// (dso `[module]`, as perf names them).
#[derive(Debug)]
pub struct KernelSymbols {
    table: SymbolTable,
    /// The dso of each symbol of `table`, by start address (modules only; others are core).
    module_of: std::collections::HashMap<u64, Arc<str>>,
    /// `[kernel.kallsyms]`, one shared string (the interner knows it by address).
    kernel_dso: Arc<str>,
}

impl Default for KernelSymbols {
    fn default() -> Self {
        KernelSymbols {
            table: SymbolTable::default(),
            module_of: Default::default(),
            kernel_dso: Arc::from(KERNEL_DSO),
        }
    }
}

pub const KERNEL_DSO: &str = "[kernel.kallsyms]";

impl KernelSymbols {
    /// Parses /proc/kallsyms text (`address type name [module]`). All-zero addresses (the file
    /// as read without privileges) give an empty table.
    pub fn parse(text: &str) -> Self {
        let mut raw = Vec::new();
        let mut module_of = std::collections::HashMap::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            // Text symbols only (t/T, and weak w/W): data symbols would name code addresses
            // that fall in gaps.
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Some(start) = parse_hex(address) else { continue };
            if start == 0 {
                continue;
            }
            if let Some(module) = parts.next() {
                let module = module.trim_start_matches('[').trim_end_matches(']');
                module_of.insert(start, Arc::from(format!("[{module}]")));
            }
            raw.push(RawSymbol { start, size: 0, name: Arc::from(name) });
        }
        KernelSymbols { table: SymbolTable::new(raw), module_of, kernel_dso: Arc::from(KERNEL_DSO) }
    }

    /// Reads /proc/kallsyms; empty when it cannot be read.
    pub fn load() -> Self {
        std::fs::read_to_string("/proc/kallsyms").map(|t| Self::parse(&t)).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// (symbol, dso) of a kernel address.
    pub fn lookup(&self, address: u64) -> (Option<Arc<str>>, Arc<str>) {
        match self.table.lookup(address) {
            Some(symbol) => {
                let dso = self.module_of.get(&symbol.start).cloned();
                (Some(symbol.name.clone()), dso.unwrap_or_else(|| self.kernel_dso.clone()))
            }
            None => (None, self.kernel_dso.clone()),
        }
    }
}

/// perf's display of a symbol name: Rust symbols demangled without their hash (perf does the
/// same); others (C, C++) unchanged. C++ names stay mangled here, unlike perf's.
pub fn display_name(raw: &str) -> Arc<str> {
    if raw.starts_with("_ZN") || raw.starts_with("_R") {
        if let Ok(demangled) = rustc_demangle::try_demangle(raw) {
            return Arc::from(format!("{demangled:#}"));
        }
    }
    Arc::from(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_map_later_entries_win_and_bad_lines_are_skipped() {
        let table = parse_perf_map(
            "1000 10 py::a:/x.py\n\
             garbage\n\
             2000 zz bad\n\
             0x1010 0x10 py::b:/x.py with spaces\n\
             1000 10 py::c:/x.py\n\
             3000 0 empty\n",
        );
        assert_eq!(&*table.lookup(0x1005).unwrap().name, "py::c:/x.py");
        assert_eq!(&*table.lookup(0x101f).unwrap().name, "py::b:/x.py with spaces");
        assert!(table.lookup(0x1020).is_none());
        assert!(table.lookup(0xfff).is_none());
        assert!(table.lookup(0x3000).is_none());
    }

    #[test]
    fn sized_and_unsized_symbols() {
        let table = SymbolTable::new(vec![
            RawSymbol { start: 0x100, size: 0x10, name: "sized".into() },
            RawSymbol { start: 0x200, size: 0, name: "unsized".into() },
            RawSymbol { start: 0x300, size: 0x8, name: "next".into() },
        ]);
        assert_eq!(&*table.lookup(0x10f).unwrap().name, "sized");
        assert!(table.lookup(0x110).is_none());
        assert_eq!(&*table.lookup(0x2ff).unwrap().name, "unsized");
        assert_eq!(&*table.lookup(0x300).unwrap().name, "next");
        assert!(table.lookup(0x308).is_none());
        assert!(table.lookup(0).is_none());
    }

    #[test]
    fn kallsyms_core_and_modules() {
        let kernel = KernelSymbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 t do_thing\n\
             ffffffff81000200 D some_data\n\
             ffffffffc0000000 t mod_func\t[nf_tables]\n\
             0000000000000000 T hidden\n",
        );
        let (name, dso) = kernel.lookup(0xffffffff81000150);
        assert_eq!(name.as_deref(), Some("do_thing"));
        assert_eq!(&*dso, KERNEL_DSO);
        let (name, dso) = kernel.lookup(0xffffffffc0000010);
        assert_eq!(name.as_deref(), Some("mod_func"));
        assert_eq!(&*dso, "[nf_tables]");
    }

    #[test]
    fn rust_symbols_are_demangled_without_hash() {
        assert_eq!(&*display_name("_ZN4core3fmt5write17h0123456789abcdefE"), "core::fmt::write");
        assert_eq!(&*display_name("PyEval_EvalCode"), "PyEval_EvalCode");
    }
}
