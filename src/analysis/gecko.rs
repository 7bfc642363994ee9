//! Firefox Profiler files (its "processed" profile format, which profiler.firefox.com opens
//! directly) for `python -m perftramp report --format gecko`.
//!
//! Written by `fxprof-processed-profile`, the crate samply writes its profiles with (maintained
//! with the Firefox Profiler): its format changes with the profiler's, and the crate follows,
//! which a hand-written JSON writer would not. Python passes the folded stacks (`_export_gecko.py`).

use std::time::{SystemTime, UNIX_EPOCH};

use fxprof_processed_profile::{
    CategoryColor, CategoryPairHandle, CpuDelta, Frame, FrameFlags, FrameInfo, Profile,
    ReferenceTimestamp, SamplingInterval, Timestamp,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Frame kinds (as the Python view names them) and the category each is drawn in.
const KINDS: [(&str, &str, CategoryColor); 6] = [
    ("python", "Python", CategoryColor::Blue),
    ("native", "Native", CategoryColor::Yellow),
    ("interpreter", "CPython", CategoryColor::Brown),
    ("kernel", "Kernel", CategoryColor::Orange),
    ("marker", "Stack cut short", CategoryColor::Gray),
    ("process", "Process", CategoryColor::Gray),
];

/// One process: name, pid, and its stacks as (frame labels outermost first, kinds, samples).
type ProcessArgs = (String, u32, Vec<(Vec<String>, Vec<String>, u32)>);

/// Builds the profile; `interval_ms` is the sampling period. Collapsed stacks carry no time, so
/// the samples of a stack are one weighted sample, one interval after the previous stack's:
/// the call tree and flame graph are exact, the timeline is not a timeline.
pub fn build(
    product: &str,
    interval_ms: f64,
    processes: Vec<ProcessArgs>,
) -> Result<Profile, String> {
    if !(interval_ms > 0.0) {
        return Err(format!("interval must be positive, not {interval_ms}"));
    }
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut profile = Profile::new(
        product,
        ReferenceTimestamp::from_duration_since_unix_epoch(start),
        SamplingInterval::from_nanos((interval_ms * 1e6) as u64),
    );
    let categories: Vec<(&str, CategoryPairHandle)> = KINDS
        .iter()
        .map(|(kind, name, color)| (*kind, profile.add_category(name, *color).into()))
        .collect();
    let other: CategoryPairHandle =
        profile.add_category("Other native", CategoryColor::Gray).into();
    for (name, pid, stacks) in processes {
        let process = profile.add_process(&name, pid, Timestamp::from_millis_since_reference(0.0));
        let thread =
            profile.add_thread(process, pid, Timestamp::from_millis_since_reference(0.0), true);
        profile.set_thread_name(thread, &name);
        let mut at_ms = 0.0;
        for (labels, kinds, count) in stacks {
            if labels.len() != kinds.len() {
                return Err(format!(
                    "{} labels but {} kinds in a stack of {name}",
                    labels.len(),
                    kinds.len()
                ));
            }
            let frames: Vec<FrameInfo> = labels
                .iter()
                .zip(&kinds)
                .map(|(label, kind)| FrameInfo {
                    frame: Frame::Label(profile.intern_string(label)),
                    category_pair: categories
                        .iter()
                        .find(|(k, _)| k == kind)
                        .map_or(other, |(_, handle)| *handle),
                    flags: FrameFlags::empty(),
                })
                .collect();
            let stack = profile.intern_stack_frames(thread, frames.into_iter());
            let weight = i32::try_from(count).unwrap_or(i32::MAX);
            let busy = CpuDelta::from_nanos((interval_ms * 1e6 * f64::from(count)) as u64);
            profile.add_sample(
                thread,
                Timestamp::from_millis_since_reference(at_ms),
                stack,
                busy,
                weight,
            );
            at_ms += interval_ms * f64::from(count);
        }
    }
    Ok(profile)
}

/// `encode_gecko(product, interval_ms, processes) -> str`: the profile as JSON.
/// `processes` are `(name, pid, [(labels outermost first, kinds, samples), ...])`.
#[pyfunction]
pub fn encode_gecko(
    py: Python<'_>,
    product: String,
    interval_ms: f64,
    processes: Vec<ProcessArgs>,
) -> PyResult<String> {
    py.detach(|| {
        let profile = build(&product, interval_ms, processes)?;
        serde_json::to_string(&profile).map_err(|err| err.to_string())
    })
    .map_err(PyValueError::new_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_threads_and_weighted_samples() {
        let stacks = vec![
            (
                vec!["main (t.py:1)".to_string(), "fib (t.py:4)".to_string()],
                vec!["python".into(), "python".into()],
                3,
            ),
            (vec!["main (t.py:1)".to_string()], vec!["python".into()], 1),
        ];
        let profile = build("perftramp", 4.0, vec![("python3 [pid 7]".into(), 7, stacks)]).unwrap();
        let json: serde_json::Value = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["threads"].as_array().unwrap().len(), 1);
        let thread = &json["threads"][0];
        assert_eq!(thread["pid"], "7");
        assert_eq!(thread["samples"]["length"], 2);
        let text = json.to_string();
        assert!(text.contains("fib (t.py:4)") && text.contains("\"Python\""));
        assert!(build("p", 0.0, vec![]).is_err());
        let mismatched = vec![("p".to_string(), 1, vec![(vec!["a".to_string()], vec![], 1)])];
        assert!(build("p", 1.0, mismatched).is_err());
    }
}
