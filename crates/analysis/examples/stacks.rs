//! Prints a recording's aggregated stacks as `count pid comm;outermost;...;innermost` lines,
//! frames as `symbol (dso)`, then the per-process summary: for checking against `perf script`
//! and timing. Usage: `cargo run --example stacks -- perf.data`.

use std::time::Instant;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: stacks PERF_DATA");
        std::process::exit(2);
    };
    let started = Instant::now();
    let recording = match perftramp_analysis::read_recording(path.as_ref(), &Default::default()) {
        Ok(recording) => recording,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let elapsed = started.elapsed();
    for stack in &recording.stacks {
        let frames: Vec<String> =
            stack.frames.iter().map(|f| format!("{} ({})", f.symbol, f.dso)).collect();
        println!("{} {} {};{}", stack.count, stack.pid, stack.comm, frames.join(";"));
    }
    for (pid, summary) in &recording.per_process {
        eprintln!("pid {pid} {}: {} samples", summary.comm, summary.samples);
    }
    for warning in &recording.warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "{} samples, {} distinct stacks, {} lost, read in {:.3}s",
        recording.samples,
        recording.stacks.len(),
        recording.lost_events,
        elapsed.as_secs_f64()
    );
}
