//! The one seam between the profiler and what it writes for perf: each output format (perf map,
//! jitdump, ELF arena images) is a [`Sink`], in a module of its own. The profiler holds a list
//! of sinks and tells every one about each new trampoline; a sink that needs the arenas mapped
//! from its own files (the ELF images) provides their [`ArenaBacking`].
//!
//! The formats and what they are built on:
//! - [`perf_map`], [`jitdump_file`], [`elf`]: the sinks (perf map, jitdump, elf-mode images);
//! - [`append_file`]: crash-safe files that only grow; [`file_error`]: errors naming the file;
//! - [`names`]: `py::<qualname>:<filename>` names made safe for perf's formats;
//! - [`jitdump`], [`eh_frame`], [`elf_image`]: pure encoders of jitdump records, DWARF unwind
//!   data and the layout of an elf-mode image.

pub mod append_file;
pub mod eh_frame;
pub mod elf;
pub mod elf_image;
pub mod file_error;
pub mod jitdump;
pub mod jitdump_file;
pub mod names;
pub mod perf_map;

use std::io;
use std::path::Path;

use crate::arch::Arch;
use crate::runtime::arena::ArenaBacking;

/// Which format a sink writes (for `status()` and error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    PerfMap,
    JitDump,
    ElfImage,
}

impl SinkKind {
    pub fn label(self) -> &'static str {
        match self {
            SinkKind::PerfMap => "perf map",
            SinkKind::JitDump => "jitdump",
            SinkKind::ElfImage => "elf images",
        }
    }
}

/// A trampoline just made, described to every sink before it first runs.
pub struct Trampoline<'a> {
    pub addr: usize,
    /// Bytes of stub at `addr`.
    pub code_size: usize,
    /// `py::<qualname>:<filename>`, sanitized (no control characters).
    pub name: &'a [u8],
    /// The code's file name, sanitized likewise (filled only when a jitdump is written: its
    /// debug info is the one reader).
    pub filename: &'a [u8],
    pub firstlineno: i32,
}

/// Sinks are only called with the profiler's lock held: one trampoline's records are written
/// whole, in order, even when threads make trampolines at once (free-threaded builds).
pub trait Sink: Send {
    fn kind(&self) -> SinkKind;

    /// The file (or directory, for the ELF images) this sink writes.
    fn path(&self) -> Option<&Path>;

    /// Bytes each slot needs for this sink (at least the arch's stride).
    fn slot_size(&self, arch: &Arch) -> usize {
        arch.slot_stride
    }

    /// The backing the arenas must come from, if this sink decides it.
    fn arena_backing(&mut self) -> Option<&mut dyn ArenaBacking> {
        None
    }

    /// Records `trampoline`; durable (in the page cache) when this returns. After a failure
    /// this does nothing; [`Sink::failure`] says why.
    fn record(&mut self, trampoline: &Trampoline<'_>);

    /// Cuts unused filler (on disable and at exit), leaving the file exact.
    fn trim(&mut self);

    /// Why writing stopped, if it did.
    fn failure(&self) -> Option<String>;

    /// In a fork child: the sink this process writes from now on, in place of this one (the
    /// parent's, left untouched). `persist` asks the child's files to also describe the
    /// trampolines it inherited.
    fn reopen_after_fork(self: Box<Self>, pid: u32, persist: bool) -> io::Result<Box<dyn Sink>>;
}
