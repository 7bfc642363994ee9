//! The profiler's process-wide state: the mode, the executable memory, the output files and the
//! counters. Everything here runs on the cold path (enable, disable, a code object's first call)
//! behind one mutex; the hot path only reads atomics in [`crate::hook`].

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, Once, TryLockError};

use crate::arch::{self, Arch};
use crate::arena::ExecMemory;
use crate::cpython::{self, CodeNames};
use crate::hook::{self, Deactivated};
use crate::jitdump_file::JitDumpFile;
use crate::names;
use crate::perf_map::{self, PerfMap};

/// What perftramp writes for perf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A perf map, `/tmp/perf-<pid>.map` (CPython's `-X perf`).
    Map,
    /// A jitdump with unwind info, `jit-<pid>.dump`, for `perf inject --jit` (CPython's
    /// `-X perf_jit`): full Python stacks with DWARF unwinding.
    Jit,
    /// Both files.
    Both,
}

impl Mode {
    /// Accepted spellings, for error messages.
    pub const VALID: &'static str =
        "'map' (alias 'perf'), 'jit' (alias 'perf_jit'), 'both' (map and jitdump)";

    pub fn parse(name: &str) -> Option<Mode> {
        match name {
            "map" | "perf" => Some(Mode::Map),
            "jit" | "perf_jit" => Some(Mode::Jit),
            "both" => Some(Mode::Both),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Map => "map",
            Mode::Jit => "jit",
            Mode::Both => "both",
        }
    }

    fn writes_map(self) -> bool {
        matches!(self, Mode::Map | Mode::Both)
    }

    fn writes_jitdump(self) -> bool {
        matches!(self, Mode::Jit | Mode::Both)
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
    perf_map: Option<PerfMap>,
    jitdump: Option<JitDumpFile>,
    jitdump_dir: PathBuf,
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
/// Set in a fork child (async-signal-safe) and acted on at the next cold-path entry.
static FORKED: AtomicBool = AtomicBool::new(false);
static PROCESS_HOOKS: Once = Once::new();

fn lock() -> MutexGuard<'static, Option<Profiler>> {
    PROFILER.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn current_pid() -> u32 {
    std::process::id()
}

/// Where jitdumps go unless the caller says otherwise.
pub const DEFAULT_JITDUMP_DIR: &str = "/tmp";

/// Turns perftramp on in `mode`, writing the jitdump (jit/both modes) into `jitdump_dir`.
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
            if mode.writes_jitdump() && dir != profiler.jitdump_dir {
                return Err(EnableError::Conflict(format!(
                    "perftramp already writes its jitdump in {}; it cannot move to {} in this process",
                    profiler.jitdump_dir.display(),
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
    crate::state_marker::show();
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
    crate::state_marker::hide();
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
            perf_map_path: p.perf_map.as_ref().map(|m| m.path().display().to_string()),
            jitdump_path: p.jitdump.as_ref().map(|j| j.path().display().to_string()),
            trampolines: p.trampolines,
            executable_bytes: p.memory.mapped_bytes(),
            executable_bytes_used: p.memory.used_bytes(),
            errors: p.errors(),
            chained_to_other_hook: chained,
            pass_through: p.pass_through,
        },
    }
}

/// Makes a trampoline for the code object named by `names` and records it in the output files
/// before it can run. Returns its address, or `None` when none can be made.
///
/// Called from the eval hook with the GIL held. Only `try_lock`: the lock is only ever taken with
/// the GIL held, so a busy lock means re-entry on this thread, and the frame simply runs without a
/// trampoline rather than deadlocking.
pub fn make_trampoline(names: &CodeNames<'_>) -> Option<*mut c_void> {
    let mut guard = match PROFILER.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    after_fork_if_needed(&mut guard);
    guard.as_mut()?.make_trampoline(names)
}

impl Profiler {
    fn new(mode: Mode, arch: &'static Arch, jitdump_dir: &Path) -> Result<Self, EnableError> {
        let pid = current_pid();
        // The jitdump first: if the map then fails, remove the dump, leaving nothing behind.
        let jitdump = if mode.writes_jitdump() {
            check_directory(jitdump_dir)?;
            Some(JitDumpFile::create(jitdump_dir, pid, arch).map_err(EnableError::Io)?)
        } else {
            None
        };
        let perf_map = if mode.writes_map() {
            match PerfMap::open(pid) {
                Ok(map) => Some(map),
                Err(err) => {
                    if let Some(dump) = jitdump {
                        let _ = std::fs::remove_file(dump.path());
                    }
                    return Err(EnableError::Io(err));
                }
            }
        } else {
            None
        };
        let slot_size =
            if mode.writes_jitdump() { JitDumpFile::slot_size(arch) } else { arch.slot_stride };
        Ok(Profiler {
            mode,
            arch,
            memory: ExecMemory::new(arch, slot_size),
            perf_map,
            jitdump,
            jitdump_dir: jitdump_dir.to_owned(),
            exec_failure: None,
            trampolines: 0,
            pid,
            name: Vec::with_capacity(names::MAX_NAME),
            file_name: Vec::with_capacity(names::MAX_NAME),
            pass_through: false,
            persist_after_fork: false,
        })
    }

    fn make_trampoline(&mut self, names: &CodeNames<'_>) -> Option<*mut c_void> {
        if self.exec_failure.is_some() {
            return None;
        }
        let slot = match self.memory.allocate() {
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
        let addr = slot.as_ptr() as usize;
        if let Some(map) = self.perf_map.as_mut() {
            map.write_entry(addr, self.arch.code.len(), &self.name);
        }
        if let Some(dump) = self.jitdump.as_mut() {
            // The debug-info file name is sanitized like the symbol name: no NUL, one line.
            self.file_name.clear();
            names::push_escaped(&mut self.file_name, names.filename);
            dump.write_trampoline(addr, &self.name, &self.file_name, names.firstlineno);
        }
        self.trampolines += 1;
        Some(slot.as_ptr().cast())
    }

    fn trim_files(&mut self) {
        if let Some(map) = self.perf_map.as_mut() {
            map.trim();
        }
        if let Some(dump) = self.jitdump.as_mut() {
            dump.trim();
        }
    }

    fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        errors.extend(self.exec_failure.clone());
        if let Some(failure) = self.perf_map.as_ref().and_then(|m| m.failure()) {
            errors.push(format!("perf map: {failure}"));
        }
        if let Some(failure) = self.jitdump.as_ref().and_then(|j| j.failure()) {
            errors.push(format!("jitdump: {failure}"));
        }
        errors
    }

    /// In a fork child: the parent's files and arenas are the parent's. Write our own files, with
    /// our pid and thread ids, and make new trampolines only in arenas we map ourselves, so that
    /// perf, which hands a child its parent's mappings and names them from the parent's files,
    /// names the child's new code from the child's files. Inherited trampolines keep working
    /// and keep their names (the parent's files describe them). With `persist_after_fork` the
    /// child's files also describe the inherited trampolines: what a perf session that starts
    /// after the fork (`perf record -p <child>`, which sees the inherited arenas as the child's
    /// own) needs to name them.
    fn reopen_after_fork(&mut self) {
        self.pid = current_pid();
        crate::jitdump_file::forget_thread_id();
        self.memory.retire_current_arena();
        if let Some(old) = self.perf_map.take() {
            // With persist_after_fork, the child's map also names every inherited trampoline.
            let inherited = if self.persist_after_fork { old.entries() } else { Ok(Vec::new()) };
            old.abandon();
            match PerfMap::open(self.pid) {
                Ok(mut map) => {
                    match inherited {
                        Ok(entries) => map.append_entries(&entries),
                        Err(err) => eprintln!(
                            "perftramp: in fork child {}: cannot copy the parent's perf map: {err}",
                            self.pid
                        ),
                    }
                    self.perf_map = Some(map)
                }
                Err(err) => {
                    eprintln!(
                        "perftramp: in fork child {}: {err}; no perf map is written",
                        self.pid
                    );
                    self.exec_failure.get_or_insert_with(|| format!("perf map after fork: {err}"));
                }
            }
        }
        if let Some(old) = self.jitdump.take() {
            let inherited = if self.persist_after_fork {
                old.records_for_child(self.pid)
            } else {
                Ok(Vec::new())
            };
            let created = old.create_for_child(self.pid);
            old.abandon();
            match created {
                Ok(mut dump) => {
                    match inherited {
                        Ok(records) => dump.append_records(&records),
                        Err(err) => eprintln!(
                            "perftramp: in fork child {}: cannot copy the parent's jitdump: {err}",
                            self.pid
                        ),
                    }
                    self.jitdump = Some(dump)
                }
                Err(err) => {
                    eprintln!(
                        "perftramp: in fork child {}: {err}; no jitdump is written",
                        self.pid
                    );
                    self.exec_failure.get_or_insert_with(|| format!("jitdump after fork: {err}"));
                }
            }
        }
    }
}

/// Acts on a fork (any fork through libc, Python's or a C extension's: the atfork handler sets
/// the flag) at the first cold-path entry after it, before anything is written or allocated.
fn after_fork_if_needed(guard: &mut MutexGuard<'static, Option<Profiler>>) {
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
    crate::jitdump_file::forget_thread_id();
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
    // interpreter states that daemon threads still point to (CPython 3.9-3.12 may crash such a
    // thread if it wakes now, gh-110052). Anything slow here widens that window, so the real trim
    // happens earlier (trim_files via atexit); this only catches functions first run after it,
    // and costs no system call otherwise.
    if let Ok(mut guard) = PROFILER.try_lock() {
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

/// The jitdump directory must exist and be a directory we can write.
fn check_directory(dir: &Path) -> Result<(), EnableError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(EnableError::Io(crate::file_error::annotate(
            io::Error::from_raw_os_error(libc::ENOTDIR),
            dir,
            "jitdump directory",
        ))),
        Err(err) => {
            Err(EnableError::Io(crate::file_error::annotate(err, dir, "jitdump directory")))
        }
    }
}

/// The map path this process would write, for messages before anything is opened.
pub fn perf_map_path() -> String {
    perf_map::path_for(current_pid()).display().to_string()
}
