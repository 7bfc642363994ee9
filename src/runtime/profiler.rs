//! The profiler's process-wide state: the mode, the executable memory, the output files and the
//! counters. Everything here runs on the cold path (enable, disable, a code object's first call)
//! behind one mutex; the hot path only reads atomics in [`crate::runtime::hook`].
//!
//! # Threads (free-threaded builds)
//! Under the GIL only one thread runs Python at a time; on a free-threaded build (3.14t+) any
//! number do, and this mutex is what makes the cold path atomic. Everything shared is behind it:
//! the arena bump pointer ([`ExecMemory`]), every sink's file writes, the counters, the fork
//! flag's handling, the state marker, the hook's install/restore, and the publication of a new
//! trampoline in `co_extra` (see [`make_trampoline`]). The hot path takes no lock: it reads
//! `co_extra` (acquire loads on a free-threaded build, see `cpython::code_extra`) and atomics.
//!
//! How the lock is waited for is the one thing that differs between builds:
//! - A busy lock seen from a thread that holds it (re-entry: enable() compiles a code object,
//!   the collector runs a `__del__`, its frame reaches the hook) is never waited for: the frame
//!   runs without a trampoline ([`OWNER`] tells re-entry from contention).
//! - Under the GIL a busy lock seen from the hook can only be that re-entry, so the hook never
//!   waits (as it always did).
//! - On a free-threaded build it is usually another thread making a trampoline: the hook waits,
//!   detached from the interpreter ([`wait_detached`]), so that a holder that stops the world
//!   (installing or removing the hook does, so does the collector enable() may trigger) is not
//!   blocked by a waiter that never reaches a safe point. The wait polls [`OWNER`] and takes the
//!   lock only once attached again: the lock is never acquired by a detached thread, so a fork
//!   (CPython stops the world before it) cannot copy it locked by a thread the child lacks.

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, Once, TryLockError};

use crate::arch::{self, Arch};
use crate::cpython::{self, CodeNames};
use crate::runtime::arena::{Anonymous, ArenaBacking, ExecMemory};
use crate::runtime::hook::{self, Deactivated};
use crate::sink::elf::ElfImages;
use crate::sink::jitdump_file::JitDumpFile;
use crate::sink::names;
use crate::sink::perf_map::{self, PerfMap};
use crate::sink::{Sink, SinkKind, Trampoline};

/// What perftramp writes for perf: any combination of its outputs (sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// A perf map, `/tmp/perf-<pid>.map` (CPython's `-X perf`).
    pub map: bool,
    /// A jitdump with unwind info, `jit-<pid>.dump`, for `perf inject --jit` (CPython's
    /// `-X perf_jit`): full Python stacks with DWARF unwinding.
    pub jit: bool,
    /// Arenas mapped from ELF images with symbols and unwind tables: full Python stacks with
    /// DWARF unwinding, read by perf directly (no inject).
    pub elf: bool,
}

impl Mode {
    /// Accepted spellings, for error messages.
    pub const VALID: &'static str = "'map' (alias 'perf'), 'jit' (alias 'perf_jit'), 'elf', \
         'both' (map and jitdump), or outputs joined by '+' (e.g. 'elf+map')";

    pub const MAP: Mode = Mode { map: true, jit: false, elf: false };

    pub fn parse(name: &str) -> Option<Mode> {
        let mut mode = Mode { map: false, jit: false, elf: false };
        for part in name.split('+') {
            match part {
                "map" | "perf" => mode.map = true,
                "jit" | "perf_jit" => mode.jit = true,
                "elf" => mode.elf = true,
                "both" => (mode.map, mode.jit) = (true, true),
                _ => return None,
            }
        }
        Some(mode)
    }

    /// The canonical name (`parse(name())` gives the same mode).
    pub fn name(self) -> &'static str {
        match (self.map, self.jit, self.elf) {
            (true, false, false) => "map",
            (false, true, false) => "jit",
            (true, true, false) => "both",
            (false, false, true) => "elf",
            (true, false, true) => "elf+map",
            (false, true, true) => "elf+jit",
            (true, true, true) => "elf+map+jit",
            (false, false, false) => "none",
        }
    }

    /// Whether `directory` places files of this mode (the jitdump, the ELF images).
    fn uses_directory(self) -> bool {
        self.jit || self.elf
    }
}

/// Why enabling failed.
#[derive(Debug)]
pub enum EnableError {
    /// This platform or interpreter cannot be hooked.
    Unsupported(String),
    /// perftramp is already set up in a way that conflicts with the request.
    Conflict(String),
    /// A file could not be opened or created.
    Io(io::Error),
}

/// A snapshot for `status()`.
#[derive(Debug, Clone)]
pub struct Status {
    pub enabled: bool,
    pub mode: Option<Mode>,
    pub pid: u32,
    pub perf_map_path: Option<String>,
    pub jitdump_path: Option<String>,
    pub elf_directory: Option<String>,
    pub trampolines: u64,
    pub executable_bytes: usize,
    pub executable_bytes_used: usize,
    pub errors: Vec<String>,
    pub chained_to_other_hook: bool,
    pub pass_through: bool,
}

struct Profiler {
    mode: Mode,
    arch: &'static Arch,
    memory: ExecMemory,
    /// What is written for perf, one sink per format; told about every trampoline in order.
    sinks: Vec<Box<dyn Sink>>,
    /// Where the jitdump and the ELF images' per-process directory go.
    directory: PathBuf,
    /// Why making trampolines stopped (no executable memory), if it did.
    exec_failure: Option<String>,
    trampolines: u64,
    pid: u32,
    /// Reused name buffers: no allocation per trampoline once warm.
    name: Vec<u8>,
    file_name: Vec<u8>,
    pass_through: bool,
    /// Whether a fork child's files also describe the trampolines it inherited.
    persist_after_fork: bool,
}

static PROFILER: Mutex<Option<Profiler>> = Mutex::new(None);
/// The thread pointer of the thread holding [`PROFILER`] (0: free, or just being taken or
/// released). Written only by the holder; read by waiters to tell re-entry from contention and
/// to see when the lock may be free.
static OWNER: AtomicUsize = AtomicUsize::new(0);
/// Set in a fork child (async-signal-safe) and acted on at the next cold-path entry.
static FORKED: AtomicBool = AtomicBool::new(false);
static PROCESS_HOOKS: Once = Once::new();

/// [`PROFILER`] held by this thread; [`OWNER`] says so until it is released.
struct Guard(MutexGuard<'static, Option<Profiler>>);

impl Guard {
    fn new(guard: MutexGuard<'static, Option<Profiler>>) -> Self {
        OWNER.store(crate::arch::thread_pointer(), Relaxed);
        Guard(guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Before the mutex guard (a field) unlocks.
        OWNER.store(0, Relaxed);
    }
}

impl std::ops::Deref for Guard {
    type Target = Option<Profiler>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The lock if it is free now; `None` if another thread (or this one, further up) holds it.
fn try_lock() -> Option<Guard> {
    match PROFILER.try_lock() {
        Ok(guard) => Some(Guard::new(guard)),
        Err(TryLockError::Poisoned(poisoned)) => Some(Guard::new(poisoned.into_inner())),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Whether this thread holds the lock (a busy lock is then re-entry, never to be waited for).
fn held_by_this_thread() -> bool {
    OWNER.load(Relaxed) == crate::arch::thread_pointer()
}

/// Takes the lock, waiting if needed. For callers attached to the interpreter (Python calls,
/// and the hook on a free-threaded build): see the module comment for why the wait is detached.
fn lock() -> Guard {
    loop {
        if let Some(guard) = try_lock() {
            return guard;
        }
        if !cpython::FREE_THREADED {
            // Under the GIL the holder is this thread (a deadlock, as ever) or a thread that let
            // the GIL go while holding it; wait as before.
            return Guard::new(PROFILER.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        }
        // SAFETY: callers are attached; the wait calls no C API.
        unsafe { cpython::detached(wait_detached) };
    }
}

/// Waits (detached) until the lock looks free. Cold and short (the holder writes a few file
/// records): spin a little, then yield, then sleep.
fn wait_detached() {
    let mut round = 0u32;
    while OWNER.load(Relaxed) != 0 {
        match round {
            0..64 => std::hint::spin_loop(),
            64..256 => std::thread::yield_now(),
            _ => std::thread::sleep(std::time::Duration::from_micros(50)),
        }
        round = round.saturating_add(1);
    }
}

fn current_pid() -> u32 {
    std::process::id()
}

/// Where jitdumps (and the ELF images' per-process directory) go unless the caller says
/// otherwise.
pub const DEFAULT_JITDUMP_DIR: &str = "/tmp";

/// Turns perftramp on in `mode`, writing the jitdump and the ELF images into `jitdump_dir`.
/// `recursion_limit` is `sys.getrecursionlimit()`, used to verify the thread-state layout.
/// Enabling again in the same mode is a no-op.
///
/// # Safety
/// GIL held.
pub unsafe fn enable(
    mode: Mode,
    jitdump_dir: Option<&Path>,
    persist_after_fork: bool,
    recursion_limit: i32,
) -> Result<(), EnableError> {
    if !cfg!(target_os = "linux") {
        return Err(EnableError::Unsupported(format!(
            "perftramp needs Linux (perf maps and jitdumps are read by Linux perf); this is {}",
            std::env::consts::OS
        )));
    }
    let Some(arch) = arch::native() else {
        return Err(EnableError::Unsupported(format!(
            "no trampoline for the {} architecture (supported: x86_64, aarch64)",
            std::env::consts::ARCH
        )));
    };
    if let Some(reason) = cpython::unsupported_reason() {
        return Err(EnableError::Unsupported(reason.to_owned()));
    }
    let mut guard = lock();
    after_fork_if_needed(&mut guard);
    if let Some(profiler) = guard.as_ref() {
        if profiler.mode != mode {
            return Err(EnableError::Conflict(format!(
                "perftramp already ran in {:?} mode in this process; switching to {:?} is not supported: \
                 use one mode per process",
                profiler.mode.name(),
                mode.name()
            )));
        }
        if let Some(dir) = jitdump_dir {
            if mode.uses_directory() && dir != profiler.directory {
                return Err(EnableError::Conflict(format!(
                    "perftramp already writes its files in {}; it cannot move to {} in this process",
                    profiler.directory.display(),
                    dir.display()
                )));
            }
        }
        if hook::is_active() {
            if let Some(profiler) = guard.as_mut() {
                profiler.persist_after_fork = persist_after_fork;
            }
            return Ok(());
        }
    }
    if !hook::ensure_extra_index() {
        return Err(EnableError::Unsupported(
            "CPython has no code-extra index left (255 are in use by other tools)".to_owned(),
        ));
    }
    if guard.is_none() {
        let dir = jitdump_dir.unwrap_or(Path::new(DEFAULT_JITDUMP_DIR));
        *guard = Some(Profiler::new(mode, arch, dir)?);
    }
    PROCESS_HOOKS.call_once(install_process_hooks);
    cpython::enable_c_recursion_refund(recursion_limit);
    hook::activate();
    crate::runtime::state_marker::show();
    if let Some(profiler) = guard.as_mut() {
        profiler.pass_through = false;
        profiler.persist_after_fork = persist_after_fork;
    }
    Ok(())
}

/// Turns perftramp off (a no-op when off). Trampolines and their memory stay: frames may still
/// be running through them, and they are reused if perftramp is enabled again.
///
/// # Safety
/// GIL held.
pub unsafe fn disable() {
    let mut guard = lock();
    after_fork_if_needed(&mut guard);
    if !hook::is_active() {
        return;
    }
    let outcome = hook::deactivate();
    crate::runtime::state_marker::hide();
    if let Some(profiler) = guard.as_mut() {
        profiler.pass_through = outcome == Deactivated::PassThrough;
        // Leave exactly the entries in the file while off.
        profiler.trim_files();
    }
}

/// Acts on a fork now rather than at the next new function (called from
/// `os.register_at_fork(after_in_child=...)`), so a child that only runs inherited code still
/// gets its own files.
pub fn after_fork_in_child() {
    let mut guard = lock();
    after_fork_if_needed(&mut guard);
}

/// Whether perftramp has been enabled in this process (trampolines can be made ahead of time).
pub fn is_set_up() -> bool {
    lock().is_some()
}

pub fn is_enabled() -> bool {
    hook::is_active()
}

/// # Safety
/// GIL held.
pub unsafe fn status() -> Status {
    let mut guard = lock();
    after_fork_if_needed(&mut guard);
    let chained = hook::chains_to_other_hook();
    match guard.as_ref() {
        None => Status {
            enabled: false,
            mode: None,
            pid: current_pid(),
            perf_map_path: None,
            jitdump_path: None,
            elf_directory: None,
            trampolines: 0,
            executable_bytes: 0,
            executable_bytes_used: 0,
            errors: Vec::new(),
            chained_to_other_hook: chained,
            pass_through: false,
        },
        Some(p) => Status {
            enabled: hook::is_active(),
            mode: Some(p.mode),
            pid: p.pid,
            perf_map_path: p.sink_path(SinkKind::PerfMap),
            jitdump_path: p.sink_path(SinkKind::JitDump),
            elf_directory: p.sink_path(SinkKind::ElfImage),
            trampolines: p.trampolines,
            executable_bytes: p.memory.mapped_bytes(),
            executable_bytes_used: p.memory.used_bytes(),
            errors: p.errors(),
            chained_to_other_hook: chained,
            pass_through: p.pass_through,
        },
    }
}

/// Gives a code object its trampoline: `existing` reads its `co_extra` slot, `publish` stores a
/// new trampoline there. Returns the trampoline, or `None` when none can be made now.
///
/// Under the lock: the slot is read again, and if still empty, a slot of arena is taken, named
/// in every sink (durable before it can run: perf can never sample an unnamed trampoline), and
/// only then published. So two threads that both saw no trampoline for one code object end up
/// with exactly one, named: the second finds the first's. Every `co_extra` store perftramp makes
/// is under this lock too, so perftramp never races itself inside `PyUnstable_Code_SetExtra`
/// (which, before CPython fixed gh-144981, reallocated the array with no synchronization).
///
/// Called from the eval hook (attached). A busy lock held by this thread is re-entry (a
/// finalizer's frame while enable() holds it): the frame runs without a trampoline and the next
/// call makes it. Under the GIL a busy lock can only be that, so it is never waited for; on a
/// free-threaded build another thread holds it and this one waits, detached (see [`lock`]).
pub fn make_trampoline(
    names: &CodeNames<'_>,
    existing: impl FnOnce() -> *mut c_void,
    publish: impl FnOnce(*mut c_void),
) -> Option<*mut c_void> {
    let mut guard = match try_lock() {
        Some(guard) => guard,
        None if cpython::FREE_THREADED && !held_by_this_thread() => lock(),
        None => return None,
    };
    after_fork_if_needed(&mut guard);
    let profiler = guard.as_mut()?;
    let found = existing();
    if !found.is_null() {
        return Some(found);
    }
    let slot = profiler.make_trampoline(names)?;
    publish(slot);
    Some(slot)
}

impl Profiler {
    fn new(mode: Mode, arch: &'static Arch, directory: &Path) -> Result<Self, EnableError> {
        let pid = current_pid();
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        // If a later sink fails, the files of the earlier ones go: nothing is left behind.
        let fail = |sinks: Vec<Box<dyn Sink>>, err: io::Error| {
            for sink in sinks {
                discard(sink);
            }
            Err(EnableError::Io(err))
        };
        if mode.uses_directory() {
            check_directory(directory)?;
        }
        if mode.jit {
            match JitDumpFile::create(directory, pid, arch) {
                Ok(dump) => sinks.push(Box::new(dump)),
                Err(err) => return fail(sinks, err),
            }
        }
        if mode.elf {
            match ElfImages::create(directory, pid) {
                Ok(images) => sinks.push(Box::new(images)),
                Err(err) => return fail(sinks, err),
            }
        }
        if mode.map {
            match PerfMap::open(pid) {
                Ok(map) => sinks.push(Box::new(map)),
                Err(err) => return fail(sinks, err),
            }
        }
        let slot_size = sinks.iter().map(|s| s.slot_size(arch)).max().unwrap_or(arch.slot_stride);
        Ok(Profiler {
            mode,
            arch,
            memory: ExecMemory::new(arch, slot_size),
            sinks,
            directory: directory.to_owned(),
            exec_failure: None,
            trampolines: 0,
            pid,
            name: Vec::with_capacity(names::MAX_NAME),
            file_name: Vec::with_capacity(names::MAX_NAME),
            pass_through: false,
            persist_after_fork: false,
        })
    }

    fn sink_path(&self, kind: SinkKind) -> Option<String> {
        let sink = self.sinks.iter().find(|s| s.kind() == kind)?;
        sink.path().map(|p| p.display().to_string())
    }

    fn make_trampoline(&mut self, names: &CodeNames<'_>) -> Option<*mut c_void> {
        if self.exec_failure.is_some() {
            return None;
        }
        // A sink that maps the arenas from its own files decides their backing.
        let mut anonymous = Anonymous;
        let backing: &mut dyn ArenaBacking =
            match self.sinks.iter_mut().find_map(|s| s.arena_backing()) {
                Some(backing) => backing,
                None => &mut anonymous,
            };
        let slot = match self.memory.allocate(backing) {
            Ok(slot) => slot,
            Err(err) => {
                eprintln!(
                    "perftramp: cannot map executable memory for trampolines: {err}; \
                     new functions will run without trampolines (the program is not affected)"
                );
                self.exec_failure = Some(format!("executable memory: {err}"));
                return None;
            }
        };
        names::symbol_name(names.qualname, names.filename, &mut self.name);
        // The jitdump's debug-info file name, sanitized like the symbol name (no NUL, one
        // line); only the jitdump uses it, so the other modes skip the work.
        self.file_name.clear();
        if self.mode.jit {
            names::push_escaped(&mut self.file_name, names.filename);
        }
        let trampoline = Trampoline {
            addr: slot.as_ptr() as usize,
            code_size: self.arch.code.len(),
            name: &self.name,
            filename: &self.file_name,
            firstlineno: names.firstlineno,
        };
        for sink in &mut self.sinks {
            sink.record(&trampoline);
        }
        self.trampolines += 1;
        Some(slot.as_ptr().cast())
    }

    fn trim_files(&mut self) {
        for sink in &mut self.sinks {
            sink.trim();
        }
    }

    fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        errors.extend(self.exec_failure.clone());
        for sink in &self.sinks {
            if let Some(failure) = sink.failure() {
                errors.push(format!("{}: {failure}", sink.kind().label()));
            }
        }
        errors
    }

    /// In a fork child: the parent's files and arenas are the parent's. Write our own files, with
    /// our pid and thread ids, and make new trampolines only in arenas we map ourselves, so that
    /// perf, which hands a child its parent's mappings and names them from the parent's files,
    /// names the child's new code from the child's files. Inherited trampolines keep working
    /// and keep their names (the parent's files describe them). With `persist_after_fork` the
    /// child's files also describe the inherited trampolines where the format needs it: what a
    /// perf session that starts after the fork (`perf record -p <child>`, which sees the
    /// inherited arenas as the child's own) needs to name them.
    fn reopen_after_fork(&mut self) {
        self.pid = current_pid();
        crate::sink::jitdump_file::forget_thread_id();
        self.memory.retire_current_arena();
        for sink in std::mem::take(&mut self.sinks) {
            let kind = sink.kind();
            match sink.reopen_after_fork(self.pid, self.persist_after_fork) {
                Ok(sink) => self.sinks.push(sink),
                Err(err) => {
                    eprintln!(
                        "perftramp: in fork child {}: {err}; no {} is written",
                        self.pid,
                        kind.label()
                    );
                    self.exec_failure
                        .get_or_insert_with(|| format!("{} after fork: {err}", kind.label()));
                }
            }
        }
    }
}

/// Removes what a sink created (an `enable` that failed later leaves nothing behind).
fn discard(sink: Box<dyn Sink>) {
    if let Some(path) = sink.path().map(Path::to_owned) {
        match sink.kind() {
            SinkKind::JitDump => drop(std::fs::remove_file(path)),
            SinkKind::ElfImage => drop(std::fs::remove_dir(path)), // still empty
            SinkKind::PerfMap => {}
        }
    }
}

/// Acts on a fork (any fork through libc, Python's or a C extension's: the atfork handler sets
/// the flag) at the first cold-path entry after it, before anything is written or allocated.
fn after_fork_if_needed(guard: &mut Guard) {
    if FORKED.swap(false, Relaxed) {
        if let Some(profiler) = guard.as_mut() {
            profiler.reopen_after_fork();
        }
    }
}

extern "C" fn forked_child() {
    // Only an atomic store and a thread-local store: this runs in the child between fork and
    // anything else.
    FORKED.store(true, Relaxed);
    crate::sink::jitdump_file::forget_thread_id();
}

/// Cuts the files' unused filler now. Registered with Python's `atexit`, which runs before
/// finalization starts tearing the interpreter down, so the Py_AtExit hook below usually has
/// nothing left to do.
pub fn trim_files() {
    let mut guard = lock();
    after_fork_if_needed(&mut guard);
    if let Some(profiler) = guard.as_mut() {
        profiler.trim_files();
    }
}

extern "C" fn at_exit() {
    // Py_AtExit runs at the very end of finalization, after CPython has freed the thread and
    // interpreter states that daemon threads still point to (CPython before 3.14 may crash such
    // a thread if it wakes now, gh-110052). Anything slow here widens that window, so the real trim
    // happens earlier (trim_files via atexit); this only catches functions first run after it,
    // and costs no system call otherwise.
    if let Some(mut guard) = try_lock() {
        after_fork_if_needed(&mut guard);
        if let Some(profiler) = guard.as_mut() {
            profiler.trim_files();
        }
    }
}

fn install_process_hooks() {
    // SAFETY: registering handlers has no preconditions; both are plain extern "C" functions that
    // live as long as the process (the extension module is never unloaded).
    unsafe {
        libc::pthread_atfork(None, None, Some(forked_child));
        pyo3::ffi::Py_AtExit(Some(at_exit));
    }
}

/// The directory of the jitdump and the elf images must exist and be a directory.
fn check_directory(dir: &Path) -> Result<(), EnableError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(EnableError::Io(crate::sink::file_error::annotate(
            io::Error::from_raw_os_error(libc::ENOTDIR),
            dir,
            "directory for the jitdump and elf images",
        ))),
        Err(err) => Err(EnableError::Io(crate::sink::file_error::annotate(
            err,
            dir,
            "directory for the jitdump and elf images",
        ))),
    }
}

/// The map path this process would write, for messages before anything is opened.
pub fn perf_map_path() -> String {
    perf_map::path_for(current_pid()).display().to_string()
}
