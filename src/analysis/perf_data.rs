//! `read_perf_data`: perftramp-analysis's reader exposed to Python, so `report` gets each
//! sample's stack unwound with its own process's mappings instead of running `perf script`.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use perftramp_analysis::{read_recording, AnalysisError, Options, Recording};

/// Reads a perf.data file: returns `(stacks, info)` where `stacks` is a list of
/// `(count, pid, comm, [(symbol, dso), ...], event, weight)` with frames OUTERMOST first (named
/// as `perf script -F comm,pid,tid,ip,sym,dso --no-inline` names them); `event` is the sampled
/// event's name, or `off-cpu:<state>` for time off CPU (then `count` is the number of
/// intervals and `weight` their nanoseconds; else `weight` is the samples' summed period).
/// `info` is a dict with `samples`, `lost_events`, `lost_chunks` (PERF_RECORD_LOST records,
/// perf's "lost N chunks"), `warnings`, `arch`, `processes` (a list of `(pid, comm, samples)`)
/// `off_cpu` (None, or a dict: `switches`, `ended_by_switch_in`, `ended_by_sample`,
/// `open_at_end`, `unreadable`) and, with it, `timeline`: a dict of `intervals` (pid, tid,
/// start, end, stack index) and CPU `samples` (pid, tid, time, stack index, weight), times in
/// nanoseconds, stack index = position in `stacks`. `inline` is accepted but not implemented (frames are never split
/// into inlined functions). The GIL is released while reading. Raises OSError (with
/// `filename`) when the file cannot be read, ValueError when it is not a usable perf.data file.
#[pyfunction]
#[pyo3(signature = (path, inline=false))]
pub fn read_perf_data<'py>(
    py: Python<'py>,
    path: &str,
    inline: bool,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyDict>)> {
    let options = Options { inline, ..Options::default() };
    let owned_path = std::path::PathBuf::from(path);
    let recording =
        py.detach(move || read_recording(&owned_path, &options)).map_err(analysis_error)?;
    to_python(py, recording)
}

fn analysis_error(error: AnalysisError) -> PyErr {
    let message = error.to_string();
    match error {
        AnalysisError::Io { path, source } => {
            let errno = source.raw_os_error().unwrap_or(0);
            PyOSError::new_err((errno, message, path.as_os_str().to_owned()))
        }
        _ => PyValueError::new_err(message),
    }
}

fn to_python(
    py: Python<'_>,
    recording: Recording,
) -> PyResult<(Bound<'_, PyList>, Bound<'_, PyDict>)> {
    let stacks = PyList::empty(py);
    for stack in recording.stacks {
        let frames = PyList::empty(py);
        for frame in stack.frames {
            frames.append(PyTuple::new(py, [frame.symbol, frame.dso])?)?;
        }
        stacks.append((stack.count, stack.pid, stack.comm, frames, stack.event, stack.weight))?;
    }
    let info = PyDict::new(py);
    info.set_item("samples", recording.samples)?;
    info.set_item("lost_events", recording.lost_events)?;
    info.set_item("lost_chunks", recording.lost_records)?;
    info.set_item("warnings", recording.warnings)?;
    info.set_item("arch", recording.arch)?;
    let processes = PyList::empty(py);
    for (pid, summary) in recording.per_process {
        processes.append((pid, summary.comm, summary.samples))?;
    }
    info.set_item("processes", processes)?;
    match recording.off_cpu {
        Some(summary) => {
            let off_cpu = PyDict::new(py);
            off_cpu.set_item("switches", summary.switches)?;
            off_cpu.set_item("ended_by_switch_in", summary.ended_by_switch_in)?;
            off_cpu.set_item("ended_by_sample", summary.ended_by_sample)?;
            off_cpu.set_item("open_at_end", summary.open_at_end)?;
            off_cpu.set_item("unreadable", summary.unreadable)?;
            info.set_item("off_cpu", off_cpu)?;
        }
        None => info.set_item("off_cpu", py.None())?,
    }
    match recording.timeline {
        Some(timeline) => {
            let times = PyDict::new(py);
            times.set_item("intervals", timeline.intervals)?;
            times.set_item("samples", timeline.samples)?;
            info.set_item("timeline", times)?;
        }
        None => info.set_item("timeline", py.None())?,
    }
    Ok((stacks, info))
}
