//! What runs inside the profiled process, apart from the output formats ([`crate::sink`]):
//! - [`hook`]: the eval-frame hook (the hot path);
//! - [`profiler`]: process-wide state, enable/disable, making trampolines (the cold path);
//! - [`arena`]: executable memory (W^X arenas, bump-allocated slots, never unmapped);
//! - [`stack_guard`]: RecursionError instead of a C stack overflow;
//! - [`state_marker`]: the mapping that tells an attaching `record --pid` perftramp is on.

pub mod arena;
pub mod hook;
pub mod profiler;
pub mod stack_guard;
pub mod state_marker;
