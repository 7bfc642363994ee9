//! Reading a perf.data file in time order: process state from MMAP/MMAP2/COMM/FORK records,
//! and each sample's stack (kernel callchain, then user frames from unwinding the stack copy,
//! the user callchain, or the ip alone), named with its own process's mappings. Samples are
//! weighed by their period and kept apart by event; `sched:sched_switch` samples become time
//! off CPU (see [`crate::off_cpu`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use framehop::FrameAddress;
use linux_perf_data::linux_perf_event_reader::constants::{
    PERF_CONTEXT_KERNEL, PERF_CONTEXT_MAX, PERF_CONTEXT_USER, PERF_RECORD_LOST_SAMPLES,
    PERF_RECORD_MISC_SWITCH_OUT, PERF_RECORD_SWITCH, PERF_RECORD_SWITCH_CPU_WIDE,
};
use linux_perf_data::linux_perf_event_reader::{
    CpuMode, EventRecord, SampleRecord, SamplingPolicy,
};
use linux_perf_data::{Endianness, PerfFileReader, PerfFileRecord};

use crate::elf_file::ElfCache;
use crate::error::AnalysisError;
use crate::off_cpu::{state_letters, switched_out_state, Ended, OffCpuTracker};
use crate::process::{Mapping, MappingKind, ProcessTable};
use crate::stacks::{FrameIds, StackCounts};
use crate::symbols::{parse_perf_map, KernelSymbols, SymbolTable};
use crate::unwind::{Arch, UserRegs};
use crate::{Frame, Options, ProcessSummary, Recording, Stack};

const UNKNOWN: &str = "[unknown]";
const PROT_EXEC: u32 = 4;
/// The tracepoint whose samples are switch-outs.
const SCHED_SWITCH: &str = "sched:sched_switch";

/// Where a frame address came from: it decides how it is named.
#[derive(Clone, Copy)]
struct RawFrame {
    address: u64,
    kernel: bool,
    /// A return address: named by `address - 1` (the call instruction), as perf does.
    is_return: bool,
}

impl RawFrame {
    fn lookup_address(&self) -> u64 {
        if self.is_return {
            self.address.saturating_sub(1)
        } else {
            self.address
        }
    }
}

/// Everything kept while the records stream by.
struct Reader<'o> {
    options: &'o Options,
    arch: Option<Arch>,
    endian: Endianness,
    processes: ProcessTable,
    elf_files: ElfCache,
    kernel: Option<KernelSymbols>,
    perf_maps: HashMap<i32, Arc<SymbolTable>>,
    counts: StackCounts,
    /// The interned name of each event (by attribute index), and the one being read.
    event_names: Vec<u32>,
    /// Each event's fixed sampling period (`perf record -c N`: then samples carry no period of
    /// their own), 1 for events sampled at a rate (their samples carry it).
    fixed_periods: Vec<u64>,
    attr: usize,
    /// The `sched:sched_switch` attribute, when recorded: its samples are switch-outs.
    switch_attr: Option<usize>,
    off_cpu: OffCpuTracker,
    /// The latest timestamp read (where open off-CPU intervals end).
    last_time: u64,
    per_process: HashMap<i32, ProcessSummary>,
    samples: u64,
    lost_events: u64,
    lost_records: u64,
    warnings: Vec<String>,
    warned: HashSet<String>,
    // Scratch buffers reused by every sample.
    raw_frames: Vec<RawFrame>,
    unwound: Vec<FrameAddress>,
    frame_ids: Vec<FrameIds>,
}

pub fn read(path: &Path, options: &Options) -> Result<Recording, AnalysisError> {
    let mut file =
        File::open(path).map_err(|source| AnalysisError::Io { path: path.into(), source })?;
    check_magic(path, &mut file)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let PerfFileReader { mut perf_file, mut record_iter } =
        PerfFileReader::parse_file(reader).map_err(|e| header_error(path, e))?;

    let arch_name = perf_file.arch().ok().flatten().map(str::to_owned);
    let arch = match arch_name.as_deref() {
        Some(name) => Arch::from_uname(name),
        None => host_arch(),
    };
    let needs_unwinding = perf_file.event_attributes().iter().any(|a| a.attr.sample_regs_user != 0);
    if arch.is_none() && needs_unwinding {
        return Err(AnalysisError::UnsupportedArch {
            path: path.into(),
            arch: arch_name.unwrap_or_else(|| "an unknown architecture".into()),
        });
    }

    let mut counts = StackCounts::default();
    let attributes = perf_file.event_attributes();
    let event_names: Vec<u32> = attributes
        .iter()
        .enumerate()
        .map(|(i, a)| match a.name() {
            Some(name) => counts.names.intern_str(name),
            None => counts.names.intern_str(&format!("event{i}")),
        })
        .collect();
    let switch_attr = attributes.iter().position(|a| a.name() == Some(SCHED_SWITCH));
    let fixed_periods: Vec<u64> = attributes
        .iter()
        .map(|a| match a.attr.sampling_policy {
            SamplingPolicy::Period(period) => period.get(),
            _ => 1,
        })
        .collect();
    let mut state = Reader {
        options,
        arch,
        endian: perf_file.endian(),
        processes: ProcessTable::default(),
        elf_files: ElfCache::default(),
        kernel: None,
        perf_maps: HashMap::new(),
        counts,
        event_names,
        fixed_periods,
        attr: 0,
        switch_attr,
        off_cpu: OffCpuTracker::default(),
        last_time: 0,
        per_process: HashMap::new(),
        samples: 0,
        lost_events: 0,
        lost_records: 0,
        warnings: Vec::new(),
        warned: HashSet::new(),
        raw_frames: Vec::new(),
        unwound: Vec::new(),
        frame_ids: Vec::new(),
    };
    if arch_name.is_none() {
        state.warn("the recording names no architecture; assuming this machine's".into());
    }

    loop {
        let record = match record_iter.next_record(&mut perf_file) {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(e) => return Err(record_error(path, e)),
        };
        let PerfFileRecord::EventRecord { attr_index, record } = record else { continue };
        state.attr = attr_index;
        if record.record_type.0 == PERF_RECORD_LOST_SAMPLES {
            state.lost_events += state.read_u64(&record.data.as_slice());
            continue;
        }
        if matches!(record.record_type.0, PERF_RECORD_SWITCH | PERF_RECORD_SWITCH_CPU_WIDE) {
            if record.misc & PERF_RECORD_MISC_SWITCH_OUT == 0 {
                if let Ok(common) = record.common_data() {
                    state.switched_in(common.tid, common.timestamp);
                }
            }
            continue;
        }
        match record.parse() {
            Ok(event) => state.handle(event),
            Err(e) => {
                state.warn(format!("skipped a malformed {:?} record: {e}", record.record_type))
            }
        }
    }
    Ok(state.finish())
}

/// Says "not a perf.data file" before the parser reads sizes out of arbitrary bytes.
fn check_magic(path: &Path, file: &mut File) -> Result<(), AnalysisError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 8];
    let io = |source| AnalysisError::Io { path: path.into(), source };
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..]).map_err(io)? {
            0 => break,
            n => read += n,
        }
    }
    if read < magic.len() || !(&magic == b"PERFILE2" || &magic == b"2ELIFREP") {
        let start = String::from_utf8_lossy(&magic[..read]).into_owned();
        return Err(AnalysisError::NotPerfData {
            path: path.into(),
            detail: format!("it starts with {start:?}, not PERFILE2"),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(())
}

fn host_arch() -> Option<Arch> {
    Arch::from_uname(std::env::consts::ARCH)
}

fn header_error(path: &Path, error: linux_perf_data::Error) -> AnalysisError {
    use linux_perf_data::Error as E;
    let path: PathBuf = path.into();
    match error {
        E::IoError(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            AnalysisError::Truncated { path, detail: format!("the header ends early: {source}") }
        }
        E::IoError(source) => AnalysisError::Io { path, source },
        E::UnrecognizedMagicValue(magic) => AnalysisError::NotPerfData {
            path,
            detail: format!("it starts with {:?}, not PERFILE2", String::from_utf8_lossy(&magic)),
        },
        E::Read(e) => AnalysisError::Truncated { path, detail: e.to_string() },
        other => AnalysisError::NotPerfData { path, detail: other.to_string() },
    }
}

fn record_error(path: &Path, error: linux_perf_data::Error) -> AnalysisError {
    use linux_perf_data::Error as E;
    let path: PathBuf = path.into();
    match error {
        E::IoError(source) if source.kind() != std::io::ErrorKind::UnexpectedEof => {
            AnalysisError::Io { path, source }
        }
        other => AnalysisError::Truncated { path, detail: other.to_string() },
    }
}

impl Reader<'_> {
    fn warn(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            self.warnings.push(message);
        }
    }

    fn read_u64(&self, bytes: &[u8]) -> u64 {
        let Some(first) = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            return 0;
        };
        match self.endian {
            Endianness::LittleEndian => u64::from_le_bytes(first),
            Endianness::BigEndian => u64::from_be_bytes(first),
        }
    }

    fn handle(&mut self, event: EventRecord<'_>) {
        match event {
            EventRecord::Sample(sample) => self.sample(&sample),
            EventRecord::Comm(comm) => {
                let name: Arc<str> =
                    Arc::from(String::from_utf8_lossy(&comm.name.as_slice()).as_ref());
                if comm.tid == comm.pid || !self.per_process.contains_key(&comm.pid) {
                    self.per_process.entry(comm.pid).or_default().comm = name.to_string();
                }
                self.processes.comm(comm.pid, comm.tid, name, comm.is_execve);
            }
            EventRecord::Fork(fork) => {
                self.processes.fork(fork.pid, fork.ppid, fork.tid, fork.ptid)
            }
            // Executable user-space mappings only (kernel ones are named from kallsyms).
            EventRecord::Mmap(mmap) if mmap.is_executable && mmap.cpu_mode != CpuMode::Kernel => {
                let path = String::from_utf8_lossy(&mmap.path.as_slice()).into_owned();
                self.map(mmap.pid, mmap.address, mmap.length, mmap.page_offset, &path);
            }
            EventRecord::Mmap2(mmap)
                if mmap.protection & PROT_EXEC != 0 && mmap.cpu_mode != CpuMode::Kernel =>
            {
                let path = String::from_utf8_lossy(&mmap.path.as_slice()).into_owned();
                self.map(mmap.pid, mmap.address, mmap.length, mmap.page_offset, &path);
            }
            EventRecord::Lost(lost) => {
                self.lost_events += lost.count;
                self.lost_records += 1;
            }
            _ => {}
        }
    }

    /// An executable mapping, named as perf names it (map__new): anonymous memory after the
    /// process's perf map, `[vdso]` and other `[...]` as is, files by their path.
    fn map(&mut self, pid: i32, start: u64, length: u64, pgoff: u64, path: &str) {
        let end = start.saturating_add(length);
        let anonymous = path == "//anon"
            || path.starts_with("/dev/zero")
            || path.starts_with("/anon_hugepage")
            || path.starts_with("[anon:");
        let (dso, kind): (Arc<str>, MappingKind) = if anonymous {
            (Arc::from(format!("/tmp/perf-{pid}.map")), MappingKind::PerfMap { pid })
        } else if path == "[vdso]" {
            let kind = match self.elf_files.vdso().filter(|_| self.arch == host_arch()) {
                Some(file) => {
                    MappingKind::Elf { bias: file.bias(start, length, 0), file, module: None }
                }
                None => MappingKind::Vdso,
            };
            (Arc::from(path), kind)
        } else if path.starts_with('[')
            || path.ends_with(" (deleted)")
            || !path.starts_with('/')
            || is_jitdump_marker(path)
        {
            (Arc::from(path), MappingKind::Opaque)
        } else {
            let kind = match self.elf_files.get(Path::new(path)) {
                Ok(file) => {
                    MappingKind::Elf { bias: file.bias(start, length, pgoff), file, module: None }
                }
                Err(why) => {
                    if let Some(why) = why {
                        self.warn(why);
                    }
                    MappingKind::Opaque
                }
            };
            (Arc::from(path), kind)
        };
        self.processes.process(pid).map(Mapping { start, end, pgoff, dso, kind });
    }

    /// A switch-in record: the thread's off-CPU interval (if any) ends.
    fn switched_in(&mut self, tid: Option<i32>, time: Option<u64>) {
        let (Some(tid), Some(time)) = (tid, time) else { return };
        self.last_time = self.last_time.max(time);
        self.off_cpu.ran(&mut self.counts, tid, time, Ended::SwitchIn);
    }

    fn sample(&mut self, sample: &SampleRecord<'_>) {
        let pid = sample.pid.unwrap_or(-1);
        let tid = sample.tid.unwrap_or(pid);
        let time = sample.timestamp.unwrap_or(self.last_time);
        self.last_time = self.last_time.max(time);
        let is_switch = Some(self.attr) == self.switch_attr;
        if !is_switch {
            self.samples += 1;
            self.per_process.entry(pid).or_default().samples += 1;
            if self.switch_attr.is_some() {
                self.off_cpu.ran(&mut self.counts, tid, time, Ended::Sample);
            }
        }

        let mut raw_frames = std::mem::take(&mut self.raw_frames);
        raw_frames.clear();
        self.collect_frames(sample, pid, &mut raw_frames);

        let mut frame_ids = std::mem::take(&mut self.frame_ids);
        frame_ids.clear();
        for frame in &raw_frames {
            let ids = self.name_frame(pid, frame);
            frame_ids.push(ids);
        }
        let comm = match self
            .processes
            .thread_comm
            .get(&tid)
            .or_else(|| self.processes.thread_comm.get(&pid))
        {
            Some(name) => self.counts.names.intern(&name.clone()),
            None => self.counts.names.intern_str(&format!(":{tid}")),
        };
        if is_switch {
            self.switched_out(sample, pid, tid, comm, &frame_ids, time);
        } else {
            let event = self.event_names.get(self.attr).copied().unwrap_or(0);
            let fixed = self.fixed_periods.get(self.attr).copied().unwrap_or(1);
            let weight = sample.period.unwrap_or(fixed);
            let stack = self.counts.add(pid, comm, event, &frame_ids, weight);
            if self.switch_attr.is_some() {
                self.off_cpu.timeline.samples.push((pid, tid, time, stack, weight));
            }
        }
        self.raw_frames = raw_frames;
        self.frame_ids = frame_ids;
    }

    /// A `sched:sched_switch` sample: the thread leaves the CPU at `frames`, in the state its
    /// raw data gives.
    fn switched_out(
        &mut self,
        sample: &SampleRecord<'_>,
        pid: i32,
        tid: i32,
        comm: u32,
        frames: &[FrameIds],
        time: u64,
    ) {
        let little = matches!(self.endian, Endianness::LittleEndian);
        let state =
            sample.raw.as_ref().and_then(|raw| switched_out_state(&raw.as_slice(), tid, little));
        let Some(state) = state else {
            self.off_cpu.summary.unreadable += 1;
            self.warn(format!("{SCHED_SWITCH} samples without the expected raw fields (prev_pid, prev_state): their off-CPU time is not counted"));
            return;
        };
        let event = self.counts.names.intern_str(&format!("off-cpu:{}", state_letters(state)));
        self.off_cpu.switched_out(&mut self.counts, tid, pid, comm, event, frames, time);
    }

    /// The sample's frame addresses, innermost first.
    fn collect_frames(&mut self, sample: &SampleRecord<'_>, pid: i32, out: &mut Vec<RawFrame>) {
        let mut user_chain: Vec<u64> = Vec::new();
        if let Some(chain) = &sample.callchain {
            let mut context = 0u64;
            for i in 0..chain.len() {
                let Some(address) = chain.get(i) else { break };
                if address >= PERF_CONTEXT_MAX {
                    context = address;
                    continue;
                }
                match context {
                    PERF_CONTEXT_KERNEL => {
                        let is_return = out.last().is_some_and(|f| f.kernel);
                        out.push(RawFrame { address, kernel: true, is_return });
                    }
                    PERF_CONTEXT_USER => user_chain.push(address),
                    _ => {} // guest and hypervisor contexts are not named
                }
            }
        }
        if out.is_empty() && sample.cpu_mode == CpuMode::Kernel {
            if let Some(ip) = sample.ip {
                out.push(RawFrame { address: ip, kernel: true, is_return: false });
            }
        }

        // User frames: unwound from the stack copy (DWARF mode), else the callchain (fp).
        if let (Some(arch), Some(regs), Some((stack, dyn_size))) =
            (self.arch, &sample.user_regs, &sample.user_stack)
        {
            let (ip, sp, fp, lr) = arch.perf_regs();
            if let (Some(ip), Some(sp), Some(fp)) = (regs.get(ip), regs.get(sp), regs.get(fp)) {
                let regs = UserRegs { ip, sp, fp, lr: lr.and_then(|lr| regs.get(lr)) };
                let stack = stack.as_slice();
                let valid = usize::try_from(*dyn_size).unwrap_or(usize::MAX).min(stack.len());
                let mut unwound = std::mem::take(&mut self.unwound);
                unwound.clear();
                // perf applies its --max-stack to the unwound user frames, after the kernel's.
                let room = self.options.max_frames;
                self.processes.process(pid).unwinder(arch).unwind(
                    &regs,
                    &stack[..valid],
                    room,
                    &mut unwound,
                );
                out.extend(unwound.iter().map(|f| RawFrame {
                    address: f.address(),
                    kernel: false,
                    is_return: matches!(f, FrameAddress::ReturnAddress(_)),
                }));
                self.unwound = unwound;
                return;
            }
        }
        if !user_chain.is_empty() {
            out.extend(user_chain.iter().enumerate().map(|(i, &address)| RawFrame {
                address,
                kernel: false,
                is_return: i > 0,
            }));
        } else if sample.cpu_mode == CpuMode::User {
            if let Some(ip) = sample.ip {
                out.push(RawFrame { address: ip, kernel: false, is_return: false });
            }
        }
    }

    /// (symbol, dso) ids of one frame, as perf script names it.
    fn name_frame(&mut self, pid: i32, frame: &RawFrame) -> FrameIds {
        let address = frame.lookup_address();
        if frame.kernel {
            let kernel = self.kernel.get_or_insert_with(KernelSymbols::load);
            let (symbol, dso) = kernel.lookup(address);
            let symbol = match symbol {
                Some(s) => self.counts.names.intern(&s),
                None => self.counts.names.intern_str(UNKNOWN),
            };
            return (symbol, self.counts.names.intern(&dso));
        }
        let Some(mapping) = self.processes.processes.get(&pid).and_then(|p| p.mapping_at(address))
        else {
            let unknown = self.counts.names.intern_str(UNKNOWN);
            return (unknown, unknown);
        };
        let dso = mapping.dso.clone();
        let symbol: Option<Arc<str>> = match &mapping.kind {
            MappingKind::Elf { file, bias, .. } => {
                file.symbols.lookup(address.wrapping_sub(*bias)).map(|s| s.name.clone())
            }
            MappingKind::PerfMap { pid: map_pid } => {
                let map_pid = *map_pid;
                let table = self.perf_maps.entry(map_pid).or_insert_with(|| {
                    let path = format!("/tmp/perf-{map_pid}.map");
                    Arc::new(
                        std::fs::read_to_string(path)
                            .map(|t| parse_perf_map(&t))
                            .unwrap_or_default(),
                    )
                });
                table.lookup(address).map(|s| s.name.clone())
            }
            MappingKind::Vdso | MappingKind::Opaque => None,
        };
        let symbol = match symbol {
            Some(s) => self.counts.names.intern(&s),
            None => self.counts.names.intern_str(UNKNOWN),
        };
        (symbol, self.counts.names.intern(&dso))
    }

    fn finish(mut self) -> Recording {
        if self.switch_attr.is_some() {
            self.off_cpu.finish(&mut self.counts, self.last_time);
        }
        if self.kernel.as_ref().is_some_and(KernelSymbols::is_empty) {
            self.warn("/proc/kallsyms gave no addresses (run as root or lower kernel.kptr_restrict): kernel frames are [unknown]".into());
        }
        let names = &self.counts.names;
        let stacks = self
            .counts
            .iter()
            .map(|(pid, comm, event, frames, count, weight)| Stack {
                pid,
                comm: names.get(comm).to_owned(),
                event: names.get(event).to_owned(),
                weight,
                frames: frames
                    .iter()
                    .rev()
                    .map(|&(symbol, dso)| Frame {
                        symbol: names.get(symbol).to_owned(),
                        dso: names.get(dso).to_owned(),
                    })
                    .collect(),
                count,
            })
            .collect();
        let mut per_process: Vec<(i32, ProcessSummary)> =
            self.per_process.into_iter().filter(|(_, s)| s.samples > 0).collect();
        per_process.sort_by_key(|(pid, _)| *pid);
        Recording {
            stacks,
            samples: self.samples,
            lost_events: self.lost_events,
            lost_records: self.lost_records,
            warnings: self.warnings,
            per_process,
            arch: self.arch.map(|a| format!("{a:?}").to_lowercase()),
            off_cpu: self.switch_attr.map(|_| self.off_cpu.summary),
            timeline: self.switch_attr.map(|_| self.off_cpu.timeline),
        }
    }
}

/// A jitdump's own mapping (`jit-<pid>.dump`, mapped executable only so that perf records where
/// it is): no code runs there and it is not ELF, so it is neither read nor warned about.
fn is_jitdump_marker(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_prefix("jit-")
        .and_then(|rest| rest.strip_suffix(".dump"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::is_jitdump_marker;

    #[test]
    fn jitdump_markers_are_known_by_their_name() {
        assert!(is_jitdump_marker("/tmp/rec/jit/jit-123.dump"));
        assert!(is_jitdump_marker("jit-7.dump"));
        assert!(!is_jitdump_marker("/tmp/rec/jit/jitted-123-4.so"));
        assert!(!is_jitdump_marker("/tmp/jit-.dump"));
        assert!(!is_jitdump_marker("/tmp/jit-12a.dump"));
        assert!(!is_jitdump_marker("/usr/lib/libjit-1.dump.so"));
    }
}
