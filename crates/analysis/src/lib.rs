//! perftramp-analysis: reads a `perf record` file and gives its samples' stacks, each unwound
//! and named with its OWN process's mappings.
//!
//! Why: `perf script` (perf 6.1 with libunwind) keeps a shared library's unwind tables at the
//! address where the first process it unwound had mapped it, so the Python frames of exec'd
//! processes (spawn pools, subprocesses, workers) are lost when libpython is shared and ASLR
//! moves it. This crate replaces `perf script` in perftramp's report pipeline.
//!
//! Names follow `perf script -F comm,pid,tid,ip,sym,dso --no-inline`: the dso is the mapping's
//! path as recorded (`/tmp/perf-<pid>.map` for anonymous executable memory, `[vdso]`,
//! `[kernel.kallsyms]` or `[module]` for the kernel, `[unknown]` outside any mapping); the
//! symbol is `[unknown]` when none is found.
//!
//! Modules: [`perf_data`] (records in time order, samples), [`process`] (per-process mappings
//! across fork/exec), [`elf_file`] (ELF placement, unwind sections, symbols, debug files),
//! [`unwind`] (framehop), [`symbols`] (symbol tables, perf maps, kallsyms), [`stacks`]
//! (interning and aggregation), [`off_cpu`] (scheduler switches into time off CPU), [`error`].

pub mod elf_file;
pub mod error;
pub mod off_cpu;
pub mod perf_data;
pub mod process;
pub mod stacks;
pub mod symbols;
pub mod unwind;

use std::path::Path;

pub use error::AnalysisError;

/// How to read a recording.
#[derive(Debug, Clone)]
pub struct Options {
    /// Inline frames from DWARF line info. NOT implemented: frames are always what
    /// `perf script --no-inline` shows (the flag is accepted so callers need not change).
    pub inline: bool,
    /// Most user frames unwound per DWARF sample, innermost kept (perf's default
    /// `--max-stack`, 127, limits the same frames; kernel frames and frame-pointer callchains
    /// are already bounded by the kernel).
    pub max_frames: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { inline: false, max_frames: 127 }
    }
}

/// One frame: the symbol (`[unknown]` when not found) and the file or region it is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub symbol: String,
    pub dso: String,
}

/// A distinct stack, how many samples (or off-CPU intervals) had it, and their weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// The sampled process (-1 when the sample has no pid).
    pub pid: i32,
    /// The sampled thread's name at the time (`:<tid>` when never named, as perf prints).
    pub comm: String,
    /// OUTERMOST first.
    pub frames: Vec<Frame>,
    /// What was measured: the sampled event's name (`cpu-clock`, `page-faults`, as perf
    /// names it), or `off-cpu:<state>` for time off CPU from a switch-out at this stack to the
    /// thread's next switch-in (state: the kernel's letters at the switch, `S`, `D`, `R`...).
    pub event: String,
    pub count: u64,
    /// The samples' summed periods (cpu-clock: nanoseconds on CPU; another event: how many
    /// times it happened), or the nanoseconds off CPU.
    pub weight: u64,
}

/// What one process contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSummary {
    /// The process's last name (its main thread's last COMM).
    pub comm: String,
    pub samples: u64,
}

/// A whole recording, aggregated.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Distinct stacks; `stacks[i]` is the stack of id `i` (the timeline's ids).
    pub stacks: Vec<Stack>,
    /// Samples read.
    pub samples: u64,
    /// Events the kernel dropped (PERF_RECORD_LOST counts plus PERF_RECORD_LOST_SAMPLES).
    pub lost_events: u64,
    /// PERF_RECORD_LOST records: what `perf script` reports as "lost N chunks".
    pub lost_records: u64,
    /// Things that made names or stacks worse (unreadable files, no kallsyms), once each.
    pub warnings: Vec<String>,
    /// (pid, summary) of every process with samples, by pid.
    pub per_process: Vec<(i32, ProcessSummary)>,
    /// The recording's architecture (`x86_64`, `aarch64`), when known.
    pub arch: Option<String>,
    /// Off-CPU accounting, when the recording has `sched:sched_switch` samples.
    pub off_cpu: Option<off_cpu::OffCpuSummary>,
    /// With `off_cpu`: when each interval and sample happened (stack ids index `stacks`).
    pub timeline: Option<off_cpu::Timeline>,
}

/// Reads the perf.data file at `path` (zstd-compressed `perf record -z` files included).
pub fn read_recording(path: &Path, options: &Options) -> Result<Recording, AnalysisError> {
    perf_data::read(path, options)
}
