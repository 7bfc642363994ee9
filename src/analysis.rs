//! The command line's side of the extension, never called by a profiled process: Python bindings
//! of drawing and exports. Each module checks what Python hands it and raises a Python
//! exception for bad input.
//! - [`perf_data`]: perf.data read and unwound by the `perftramp-analysis` crate
//!   (crates/analysis), each process with its own mappings;
//! - [`flamegraph`]: the SVG flamegraph (inferno);
//! - [`pprof`]: `report --format pprof` (profile.proto);
//! - [`gecko`]: `report --format gecko` (the Firefox Profiler's processed format).

pub mod flamegraph;
pub mod gecko;
pub mod perf_data;
pub mod pprof;
