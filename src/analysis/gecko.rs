//! Firefox Profiler files (its "processed" profile format, which profiler.firefox.com opens
//! directly) for `python -m perftramp report --format gecko`.
//!
//! Written by `fxprof-processed-profile`, the crate samply writes its profiles with (maintained
//! with the Firefox Profiler): its format changes with the profiler's, and the crate follows,
//! which a hand-written JSON writer would not. Python passes the folded stacks (`_export_gecko.py`)
//! with each one's weight, duration and CPU time, and the weight type (samples, or durations in
//! milliseconds for time views). The crate takes integer weights only, so the exact weights
//! (counts beyond i32, fractional milliseconds) are written into the JSON after serialization.

use std::time::{SystemTime, UNIX_EPOCH};

use fxprof_processed_profile::{
    CategoryColor, CategoryPairHandle, CpuDelta, Frame, FrameFlags, FrameInfo, Profile,
    ReferenceTimestamp, SamplingInterval, Timestamp, WeightType,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Frame kinds (as the Python view names them) and the category each is drawn in.
/// Off-CPU (the `[off-CPU: reason]` leaf of a wall or off-CPU view) is light blue: blue as in
/// the flame graph, and apart from Python's blue in the category graph.
const KINDS: [(&str, &str, CategoryColor); 7] = [
    ("python", "Python", CategoryColor::Blue),
    ("native", "Native", CategoryColor::Yellow),
    ("interpreter", "CPython", CategoryColor::Brown),
    ("kernel", "Kernel", CategoryColor::Orange),
    ("marker", "Stack cut short", CategoryColor::Gray),
    ("process", "Process", CategoryColor::Gray),
    ("off-cpu", "Off-CPU", CategoryColor::LightBlue),
];

/// A stack: frame labels outermost first, their kinds, its weight (samples, a count, or
/// milliseconds, as the weight type says), the milliseconds it spans on the timeline, and the
/// CPU milliseconds among them.
type StackArgs = (Vec<String>, Vec<String>, f64, f64, f64);

/// One process: name (unique in the profile), pid, and its stacks.
type ProcessArgs = (String, u32, Vec<StackArgs>);

/// Each thread's name and the exact weights of its samples.
type ExactWeights = Vec<(String, Vec<f64>)>;

/// The weight types Python may ask for, as the Firefox Profiler names them.
fn weight_type(name: &str) -> Result<WeightType, String> {
    match name {
        "samples" => Ok(WeightType::Samples),
        "tracing-ms" => Ok(WeightType::TracingMs),
        _ => Err(format!("unknown weight type {name:?} (samples, tracing-ms)")),
    }
}

/// Builds the profile; `interval_ms` is the sampling period. Collapsed stacks carry no time, so
/// a stack is one weighted sample, placed where the previous stack's span ends: the call tree
/// and flame graph are exact, the timeline is not a timeline. Returns the profile and, per
/// thread name, the exact weights of its samples (see `to_json`).
pub fn build(
    product: &str,
    interval_ms: f64,
    processes: Vec<ProcessArgs>,
    weights: &str,
) -> Result<(Profile, ExactWeights), String> {
    let weight_type = weight_type(weights)?;
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
    let mut exact = Vec::with_capacity(processes.len());
    for (name, pid, stacks) in processes {
        let process = profile.add_process(&name, pid, Timestamp::from_millis_since_reference(0.0));
        let thread =
            profile.add_thread(process, pid, Timestamp::from_millis_since_reference(0.0), true);
        profile.set_thread_name(thread, &name);
        profile.set_thread_samples_weight_type(thread, weight_type.clone());
        let mut at_ms = 0.0;
        let mut thread_weights = Vec::with_capacity(stacks.len());
        for (labels, kinds, weight, span_ms, cpu_ms) in stacks {
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
            let busy = CpuDelta::from_nanos((cpu_ms.max(0.0) * 1e6) as u64);
            // The crate's weight (rounded, replaced by the exact one in `to_json`).
            let rounded = weight.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
            profile.add_sample(
                thread,
                Timestamp::from_millis_since_reference(at_ms),
                stack,
                busy,
                rounded,
            );
            thread_weights.push(weight);
            at_ms += span_ms.max(0.0);
        }
        exact.push((name, thread_weights));
    }
    Ok((profile, exact))
}

/// The profile as JSON, each thread's `samples.weight` being the exact weights: integers when
/// they are whole (sample counts, event counts beyond i32), else fractional milliseconds. When
/// the crate's i32 weights are already exact, its JSON as it writes it.
pub fn to_json(profile: &Profile, exact: ExactWeights) -> Result<String, String> {
    let fits =
        |w: &f64| w.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(w);
    if exact.iter().all(|(_, weights)| weights.iter().all(fits)) {
        return serde_json::to_string(profile).map_err(|err| err.to_string());
    }
    let mut json = serde_json::to_value(profile).map_err(|err| err.to_string())?;
    let mut exact: std::collections::HashMap<String, Vec<f64>> = exact.into_iter().collect();
    for thread in json["threads"].as_array_mut().into_iter().flatten() {
        let Some(weights) = thread["name"].as_str().and_then(|name| exact.remove(name)) else {
            continue;
        };
        let values: Vec<serde_json::Value> = weights
            .into_iter()
            .map(|w| {
                if w.fract() == 0.0 && w.abs() < 9.0e15 {
                    serde_json::Value::from(w as i64)
                } else {
                    serde_json::Value::from(w)
                }
            })
            .collect();
        if thread["samples"]["weight"].as_array().map(Vec::len) != Some(values.len()) {
            return Err("samples were merged or reordered: weights do not match".to_string());
        }
        thread["samples"]["weight"] = serde_json::Value::Array(values);
    }
    serde_json::to_string(&json).map_err(|err| err.to_string())
}

/// `encode_gecko(product, interval_ms, processes, weight_type="samples") -> str`: the profile as
/// JSON. `processes` are `(name, pid, [(labels outermost first, kinds, weight, span_ms, cpu_ms),
/// ...])`; `weight_type` is "samples" (weights are counts) or "tracing-ms" (milliseconds).
#[pyfunction]
#[pyo3(signature = (product, interval_ms, processes, weight_type="samples"))]
pub fn encode_gecko(
    py: Python<'_>,
    product: String,
    interval_ms: f64,
    processes: Vec<ProcessArgs>,
    weight_type: &str,
) -> PyResult<String> {
    py.detach(|| {
        let (profile, exact) = build(&product, interval_ms, processes, weight_type)?;
        to_json(&profile, exact)
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
                3.0,
                12.0,
                12.0,
            ),
            (vec!["main (t.py:1)".to_string()], vec!["python".into()], 1.0, 4.0, 4.0),
        ];
        let (profile, exact) =
            build("perftramp", 4.0, vec![("python3 [pid 7]".into(), 7, stacks)], "samples")
                .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&profile, exact).unwrap()).unwrap();
        assert_eq!(json["threads"].as_array().unwrap().len(), 1);
        let thread = &json["threads"][0];
        assert_eq!(thread["pid"], "7");
        assert_eq!(thread["samples"]["length"], 2);
        assert_eq!(thread["samples"]["weight"], serde_json::json!([3, 1]));
        assert_eq!(thread["samples"]["weightType"], "samples");
        let text = json.to_string();
        assert!(text.contains("fib (t.py:4)") && text.contains("\"Python\""));
        assert!(build("p", 0.0, vec![], "samples").is_err());
        assert!(build("p", 1.0, vec![], "bytes").is_err());
        let mismatched =
            vec![("p".to_string(), 1, vec![(vec!["a".to_string()], vec![], 1.0, 1.0, 1.0)])];
        assert!(build("p", 1.0, mismatched, "samples").is_err());
    }

    #[test]
    fn time_weights_are_exact_milliseconds() {
        let on = (vec!["main".to_string()], vec!["python".to_string()], 1.5, 1.5, 1.5);
        let off = (
            vec!["main".to_string(), "[off-CPU: lock]".to_string()],
            vec!["python".to_string(), "off-cpu".to_string()],
            0.25,
            0.25,
            0.0,
        );
        let (profile, exact) =
            build("p", 1.0, vec![("p [pid 1]".into(), 1, vec![on, off])], "tracing-ms").unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&profile, exact).unwrap()).unwrap();
        let samples = &json["threads"][0]["samples"];
        assert_eq!(samples["weightType"], "tracing-ms");
        assert_eq!(samples["weight"], serde_json::json!([1.5, 0.25]));
        assert!(json.to_string().contains("\"Off-CPU\""));
    }
}
