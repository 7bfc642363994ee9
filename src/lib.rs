//! perftramp's Python module, `perftramp._perftramp`: a thin PyO3 surface over the Rust core.
//!
//! The layers, each a folder:
//! - the seams: [`cpython`] (the one place CPython versions differ) and [`arch`] (per-architecture
//!   stub bytes and unwind description);
//! - [`runtime`]: what runs inside the profiled process: the eval-frame hook (the hot path), the
//!   profiler's state, executable arenas, the recursion guard;
//! - [`sink`]: the one interface every output format implements, and the formats (perf map,
//!   jitdump, elf-mode arena images) with their pure encoders;
//! - [`analysis`]: the command line's side, never used by a profiled process: Python bindings
//!   of the `perftramp-analysis` crate (reading and unwinding perf.data) and of drawing and
//!   exports (flamegraph, pprof, gecko).

pub mod analysis;
pub mod arch;
pub mod cpython;
pub mod runtime;
pub mod sink;

#[cfg(test)]
mod fuzz_tests;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use runtime::{hook, profiler};
use sink::file_error;

use profiler::{EnableError, Mode};

create_exception!(
    perftramp,
    PerftrampError,
    PyRuntimeError,
    "Base class of perftramp's own errors."
);
create_exception!(
    perftramp,
    UnsupportedError,
    PerftrampError,
    "This OS, architecture or interpreter cannot be profiled by perftramp (raised by enable(), never by import)."
);
create_exception!(
    perftramp,
    ConflictError,
    PerftrampError,
    "Something else already does perftramp's job in this process (CPython's own perf trampoline, or perftramp in another mode)."
);

fn enable_error(err: EnableError) -> PyErr {
    match err {
        EnableError::Unsupported(why) => UnsupportedError::new_err(why),
        EnableError::Conflict(why) => ConflictError::new_err(why),
        EnableError::Io(err) => match file_error::file_error(&err) {
            // OSError(errno, message, filename): errno, strerror and filename attributes set.
            Some(f) => {
                let filename = f.path.as_os_str().to_owned(); // a str, as os functions give
                PyOSError::new_err((f.errno, format!("{}: {}", f.what, f.detail), filename))
            }
            None => PyOSError::new_err((file_error::errno_of(&err), err.to_string())),
        },
    }
}

/// Refuses when CPython's own perf trampoline (`-X perf`, `PYTHONPERFSUPPORT`,
/// `sys.activate_stack_trampoline`) is active: both would write the same map.
fn check_cpython_trampoline(py: Python<'_>) -> PyResult<()> {
    let sys = py.import("sys")?;
    if let Ok(is_active) = sys.getattr("is_stack_trampoline_active") {
        if is_active.call0()?.is_truthy()? {
            return Err(ConflictError::new_err(
                "CPython's own perf trampoline is active (-X perf, -X perf_jit, PYTHONPERFSUPPORT or \
                 sys.activate_stack_trampoline()); turn it off (sys.deactivate_stack_trampoline()) \
                 or run without it before enabling perftramp",
            ));
        }
    }
    Ok(())
}

/// Turn perftramp on. `mode` is already validated by the Python layer, and again here.
#[pyfunction]
#[pyo3(signature = (mode, directory=None, persist_after_fork=false))]
fn enable(
    py: Python<'_>,
    mode: &str,
    directory: Option<std::path::PathBuf>,
    persist_after_fork: bool,
) -> PyResult<()> {
    let mode = Mode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!("unknown mode {mode:?}; valid modes: {}", Mode::VALID))
    })?;
    if !profiler::is_enabled() {
        check_cpython_trampoline(py)?;
    }
    let recursion_limit: i32 = py.import("sys")?.call_method0("getrecursionlimit")?.extract()?;
    // SAFETY: we hold the GIL (py).
    unsafe { profiler::enable(mode, directory.as_deref(), persist_after_fork, recursion_limit) }
        .map_err(enable_error)?;
    register_trim_at_exit(py)
}

/// Whether `trim_files_at_exit` is registered with `atexit` (claimed by one thread, even when
/// threads enable at once on a free-threaded build).
static TRIM_AT_EXIT_REGISTERED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Trims the files when Python's `atexit` handlers run: early in finalization, while every
/// thread state is still alive, rather than only in Py_AtExit at the very end (see
/// `profiler::at_exit`).
fn register_trim_at_exit(py: Python<'_>) -> PyResult<()> {
    use std::sync::atomic::Ordering::Relaxed;
    if TRIM_AT_EXIT_REGISTERED.compare_exchange(false, true, Relaxed, Relaxed).is_ok() {
        let registered = wrap_pyfunction!(trim_files_at_exit, py)
            .and_then(|trim| py.import("atexit")?.call_method1("register", (trim,)));
        if let Err(err) = registered {
            TRIM_AT_EXIT_REGISTERED.store(false, Relaxed);
            return Err(err);
        }
    }
    Ok(())
}

#[pyfunction]
fn trim_files_at_exit() {
    profiler::trim_files();
}

/// Make the trampoline of `code` (a code object) now, if it has none. Returns whether one was
/// made. perftramp must have been enabled in this process.
#[pyfunction]
fn compile_code(code: &Bound<'_, PyAny>) -> PyResult<bool> {
    let ptr = code.as_ptr();
    // SAFETY: ptr is a live object borrowed from `code` for this call; the GIL is held.
    if !unsafe { cpython::is_code(ptr) } {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "expected a code object, got {}",
            code.get_type().name()?
        )));
    }
    if !profiler::is_set_up() {
        return Err(PerftrampError::new_err(
            "perftramp.compile() needs perftramp.enable() first (it decides the mode and the files)",
        ));
    }
    // SAFETY: a live code object, GIL held, and enable() requested the extra index.
    unsafe { hook::precompile(ptr) }
        .ok_or_else(|| PerftrampError::new_err("no trampoline could be made (see status().errors)"))
}

/// Called in a fork child (os.register_at_fork) to open the child's own files right away.
#[pyfunction]
fn after_fork_in_child() {
    profiler::after_fork_in_child();
}

/// Turn perftramp off; a no-op when it is off.
#[pyfunction]
fn disable(_py: Python<'_>) {
    // SAFETY: we hold the GIL.
    unsafe { profiler::disable() }
}

#[pyfunction]
fn is_enabled() -> bool {
    profiler::is_enabled()
}

/// A dict describing the current state (the Python layer wraps it in `perftramp.Status`).
#[pyfunction]
fn status(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: we hold the GIL.
    let s = unsafe { profiler::status() };
    let d = PyDict::new(py);
    d.set_item("enabled", s.enabled)?;
    d.set_item("mode", s.mode.map(Mode::name))?;
    d.set_item("pid", s.pid)?;
    d.set_item("perf_map_path", s.perf_map_path)?;
    d.set_item("jitdump_path", s.jitdump_path)?;
    d.set_item("elf_directory", s.elf_directory)?;
    d.set_item("trampolines", s.trampolines)?;
    d.set_item("executable_bytes", s.executable_bytes)?;
    d.set_item("executable_bytes_used", s.executable_bytes_used)?;
    d.set_item("errors", s.errors)?;
    d.set_item("chained_to_other_hook", s.chained_to_other_hook)?;
    d.set_item("pass_through", s.pass_through)?;
    Ok(d)
}

/// The exact bytes copied into every trampoline slot for `arch` ("x86_64", "aarch64"), on any
/// host, so tests and auditors can check what runs in the process.
#[pyfunction]
fn stub_code<'py>(py: Python<'py>, arch: &str) -> PyResult<Bound<'py, PyBytes>> {
    let found = arch::by_name(arch).ok_or_else(|| {
        let known: Vec<_> = arch::ALL.iter().map(|a| a.name).collect();
        PyValueError::new_err(format!("unknown architecture {arch:?}; known: {}", known.join(", ")))
    })?;
    Ok(PyBytes::new(py, found.slot_template))
}

/// The architecture of this process if perftramp has a stub for it, else None.
#[pyfunction]
fn native_arch() -> Option<&'static str> {
    arch::native().map(|a| a.name)
}

/// Which version-specific fast paths are on (each is verified against CPython at enable).
#[pyfunction]
fn diagnostics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("direct_code_extra", cpython::direct_code_extra())?;
    d.set_item("direct_code_names", cpython::direct_code_names())?;
    d.set_item("c_recursion_refund", cpython::c_recursion_refund())?;
    d.set_item("stack_guard", true)?;
    Ok(d)
}

/// Where this process's perf map is (or would be) written.
#[pyfunction]
fn perf_map_path() -> String {
    profiler::perf_map_path()
}

// No GIL needed (free-threaded builds keep it off on import): the module has no state of its own
// but atomics, and the runtime's shared state is behind one lock or atomic (runtime::profiler).
#[pymodule(gil_used = false)]
fn _perftramp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PerftrampError", py.get_type::<PerftrampError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add_function(wrap_pyfunction!(enable, m)?)?;
    m.add_function(wrap_pyfunction!(disable, m)?)?;
    m.add_function(wrap_pyfunction!(is_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add_function(wrap_pyfunction!(stub_code, m)?)?;
    m.add_function(wrap_pyfunction!(native_arch, m)?)?;
    m.add_function(wrap_pyfunction!(compile_code, m)?)?;
    m.add_function(wrap_pyfunction!(diagnostics, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(perf_map_path, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::perf_data::read_perf_data, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::flamegraph::render_flamegraph, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::pprof::encode_pprof, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::gecko::encode_gecko, m)?)?;
    m.add("VALID_MODES", Mode::VALID)?;
    // The one version number: Cargo.toml's, which maturin also gives the wheel and sdist.
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
