//! Per-process state rebuilt from MMAP/MMAP2/COMM/FORK/EXIT records: the executable mappings
//! (shared by the process's threads), thread names, and the process's own unwinder.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::elf_file::ElfFile;
use crate::unwind::{module_for, Arch, ElfModule, ProcessUnwinder};

/// What is mapped at an address range, and how to name addresses in it.
#[derive(Clone)]
pub enum MappingKind {
    /// A file we could read as ELF; `bias` turns addresses into the file's stated addresses.
    /// `module` is its framehop module, made when a sample first needs it.
    Elf { file: Arc<ElfFile>, bias: u64, module: Option<ElfModule> },
    /// Anonymous executable memory named by a perf map (`dso` is its path).
    PerfMap { pid: i32 },
    /// The vDSO (named from this machine's vDSO image, when available).
    Vdso,
    /// Anything else (unreadable file, other anonymous memory): frames get `[unknown]` symbols.
    Opaque,
}

#[derive(Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    /// The dso as perf script prints it.
    pub dso: Arc<str>,
    pub kind: MappingKind,
}

/// One process (a pid): mappings keyed by start, and its unwinder kept in step with them.
#[derive(Default)]
pub struct Process {
    mappings: BTreeMap<u64, Mapping>,
    /// Built from the mappings when a sample needs it; dropped when they change.
    unwinder: Option<ProcessUnwinder>,
}

impl Clone for Process {
    /// A forked child's copy: the same mappings (their modules shared), its own unwinder later.
    fn clone(&self) -> Self {
        Process { mappings: self.mappings.clone(), unwinder: None }
    }
}

impl Mapping {
    /// A piece of this mapping: its module (made for the whole range) is made again if needed.
    fn piece(&self, start: u64, end: u64) -> Mapping {
        let mut piece = self.clone();
        piece.pgoff += start - self.start;
        piece.start = start;
        piece.end = end;
        if let MappingKind::Elf { module, .. } = &mut piece.kind {
            *module = None;
        }
        piece
    }
}

impl Process {
    /// Adds a mapping; the parts of older mappings it covers are gone (mmap replaces them).
    pub fn map(&mut self, mapping: Mapping) {
        if mapping.end <= mapping.start {
            return;
        }
        let overlapping: Vec<u64> = self
            .mappings
            .range(..mapping.end)
            .rev()
            .take_while(|(_, m)| m.end > mapping.start)
            .map(|(&start, _)| start)
            .collect();
        for start in overlapping {
            let Some(old) = self.mappings.remove(&start) else { continue };
            // Keep what is left of the old mapping on either side.
            if old.start < mapping.start {
                self.mappings.insert(old.start, old.piece(old.start, mapping.start));
            }
            if old.end > mapping.end {
                self.mappings.insert(mapping.end, old.piece(mapping.end, old.end));
            }
        }
        self.mappings.insert(mapping.start, mapping);
        self.unwinder = None;
    }

    /// exec: a new program, nothing of the old address space remains.
    pub fn reset(&mut self) {
        self.mappings.clear();
        self.unwinder = None;
    }

    pub fn mapping_at(&self, address: u64) -> Option<&Mapping> {
        let (_, mapping) = self.mappings.range(..=address).next_back()?;
        (address < mapping.end).then_some(mapping)
    }

    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.values()
    }

    /// The unwinder for the current mappings (built on first use after a change).
    pub fn unwinder(&mut self, arch: Arch) -> &mut ProcessUnwinder {
        let mappings = &mut self.mappings;
        self.unwinder.get_or_insert_with(|| {
            let modules: Vec<ElfModule> = mappings
                .values_mut()
                .filter_map(|m| {
                    let Mapping { start, end, dso, kind, .. } = m;
                    match kind {
                        MappingKind::Elf { file, bias, module } => Some(
                            module
                                .get_or_insert_with(|| module_for(dso, file, *start, *end, *bias))
                                .clone(),
                        ),
                        _ => None,
                    }
                })
                .collect();
            ProcessUnwinder::new(arch, modules)
        })
    }
}

/// All processes and threads seen so far.
#[derive(Default)]
pub struct ProcessTable {
    pub processes: HashMap<i32, Process>,
    /// Thread names by tid (perf script prints the sampled thread's name).
    pub thread_comm: HashMap<i32, Arc<str>>,
}

impl ProcessTable {
    pub fn process(&mut self, pid: i32) -> &mut Process {
        self.processes.entry(pid).or_default()
    }

    /// FORK: a new process starts with a copy of its parent's mappings; a new thread
    /// (pid == ppid) shares its process's and only inherits the name.
    pub fn fork(&mut self, pid: i32, ppid: i32, tid: i32, ptid: i32) {
        if let Some(name) = self.thread_comm.get(&ptid).cloned() {
            self.thread_comm.insert(tid, name);
        }
        if pid != ppid {
            let copy = self.processes.get(&ppid).cloned().unwrap_or_default();
            self.processes.insert(pid, copy);
        }
    }

    /// COMM: a thread's new name; with `exec` the process's mappings start over.
    pub fn comm(&mut self, pid: i32, tid: i32, name: Arc<str>, exec: bool) {
        if exec {
            self.process(pid).reset();
        }
        self.thread_comm.insert(tid, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opaque(start: u64, end: u64, dso: &str) -> Mapping {
        Mapping { start, end, pgoff: 0, dso: dso.into(), kind: MappingKind::Opaque }
    }

    fn dso_at(p: &Process, address: u64) -> Option<String> {
        p.mapping_at(address).map(|m| m.dso.to_string())
    }

    #[test]
    fn fork_copies_and_exec_resets() {
        let mut table = ProcessTable::default();
        table.comm(10, 10, "python".into(), true);
        table.process(10).map(opaque(0x1000, 0x2000, "/lib/a.so"));
        table.fork(11, 10, 11, 10);
        assert_eq!(dso_at(table.process(11), 0x1800).as_deref(), Some("/lib/a.so"));
        assert_eq!(table.thread_comm.get(&11).map(|s| &**s), Some("python"));
        // The child's own mapping does not appear in the parent.
        table.process(11).map(opaque(0x5000, 0x6000, "/lib/b.so"));
        assert_eq!(dso_at(table.process(10), 0x5000), None);
        // exec in the child: the old mappings are gone.
        table.comm(11, 11, "worker".into(), true);
        assert_eq!(dso_at(table.process(11), 0x1800), None);
        assert_eq!(dso_at(table.process(10), 0x1800).as_deref(), Some("/lib/a.so"));
        // A plain rename keeps them.
        table.comm(10, 10, "renamed".into(), false);
        assert_eq!(dso_at(table.process(10), 0x1800).as_deref(), Some("/lib/a.so"));
    }

    #[test]
    fn threads_share_their_process_mappings() {
        let mut table = ProcessTable::default();
        table.process(10).map(opaque(0x1000, 0x2000, "/lib/a.so"));
        table.fork(10, 10, 12, 10);
        assert_eq!(table.processes.len(), 1);
        table.process(10).map(opaque(0x3000, 0x4000, "/lib/c.so"));
        assert_eq!(dso_at(table.process(10), 0x3000).as_deref(), Some("/lib/c.so"));
    }

    #[test]
    fn a_new_mapping_replaces_what_it_covers() {
        let mut p = Process::default();
        p.map(opaque(0x1000, 0x5000, "old"));
        p.map(opaque(0x2000, 0x3000, "new"));
        assert_eq!(dso_at(&p, 0x1fff).as_deref(), Some("old"));
        assert_eq!(dso_at(&p, 0x2000).as_deref(), Some("new"));
        assert_eq!(dso_at(&p, 0x3000).as_deref(), Some("old"));
        assert_eq!(p.mapping_at(0x3000).unwrap().pgoff, 0x2000);
        assert_eq!(dso_at(&p, 0x5000), None);
        p.map(opaque(0x0, 0x10000, "all"));
        assert_eq!(p.mappings().count(), 1);
    }
}
