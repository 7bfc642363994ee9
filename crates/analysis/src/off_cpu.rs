//! Time off CPU from scheduler switches.
//!
//! A `sched:sched_switch` sample is taken in the thread that leaves the CPU, so its stack is
//! where that thread waits, and its raw data says in which state it left (the kernel's
//! `prev_state`: `S` sleeping, `D` uninterruptible, `R` preempted while runnable). The interval
//! ends at the thread's next switch-in (a PERF_RECORD_SWITCH without the OUT flag, which
//! `perf record --switch-events` writes) or, without those records, at the thread's next sample
//! of any kind (it was running then). An interval still open when the recording ends is closed
//! there: the thread waited until the end.

use std::collections::HashMap;

use crate::stacks::{FrameIds, FxBuild, StackCounts};

/// What the reader says of the off-CPU intervals it built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffCpuSummary {
    /// `sched:sched_switch` samples read.
    pub switches: u64,
    /// Intervals ended by the thread's switch-in record.
    pub ended_by_switch_in: u64,
    /// Intervals ended by a later sample of the thread (no switch-in record came first).
    pub ended_by_sample: u64,
    /// Intervals still open at the end of the recording.
    pub open_at_end: u64,
    /// Switch samples whose raw data did not have the expected layout (no state, no interval).
    pub unreadable: u64,
}

/// When each off-CPU interval and CPU sample happened (kept for recordings with switches): what
/// lets the report tell which functions ran while other threads waited (for the GIL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// (pid, tid, start, end, stack id) of every off-CPU interval, in order of their end.
    pub intervals: Vec<(i32, i32, u64, u64, u32)>,
    /// (pid, tid, time, stack id, weight) of every CPU sample, in time order.
    pub samples: Vec<(i32, i32, u64, u32, u64)>,
}

/// One thread's switch-out, waiting for its switch-in.
struct SwitchOut {
    pid: i32,
    comm: u32,
    /// The interned `off-cpu:<state>` event.
    event: u32,
    /// Innermost first.
    frames: Box<[FrameIds]>,
    start: u64,
}

/// Open intervals by thread.
#[derive(Default)]
pub struct OffCpuTracker {
    open: HashMap<i32, SwitchOut, FxBuild>,
    pub summary: OffCpuSummary,
    pub timeline: Timeline,
}

/// How an interval ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ended {
    SwitchIn,
    Sample,
}

impl OffCpuTracker {
    /// Thread `tid` left the CPU at `time`, in the state named by `event` (interned
    /// `off-cpu:<state>`), waiting at `frames` (innermost first).
    #[allow(clippy::too_many_arguments)]
    pub fn switched_out(
        &mut self,
        counts: &mut StackCounts,
        tid: i32,
        pid: i32,
        comm: u32,
        event: u32,
        frames: &[FrameIds],
        time: u64,
    ) {
        // A second switch-out with no switch-in between: the thread ran in between.
        self.ran(counts, tid, time, Ended::Sample);
        self.summary.switches += 1;
        self.open.insert(tid, SwitchOut { pid, comm, event, frames: frames.into(), start: time });
    }

    /// Thread `tid` was on CPU at `time`: its open interval (if any) ends there.
    pub fn ran(&mut self, counts: &mut StackCounts, tid: i32, time: u64, how: Ended) {
        let Some(out) = self.open.remove(&tid) else { return };
        match how {
            Ended::SwitchIn => self.summary.ended_by_switch_in += 1,
            Ended::Sample => self.summary.ended_by_sample += 1,
        }
        self.close(counts, tid, out, time);
    }

    /// Ends every open interval at `end` (the recording's last timestamp).
    pub fn finish(&mut self, counts: &mut StackCounts, end: u64) {
        let mut open: Vec<(i32, SwitchOut)> = self.open.drain().collect();
        open.sort_by_key(|(tid, out)| (out.start, *tid));
        self.summary.open_at_end += open.len() as u64;
        for (tid, out) in open {
            self.close(counts, tid, out, end);
        }
    }

    fn close(&mut self, counts: &mut StackCounts, tid: i32, out: SwitchOut, end: u64) {
        let nanoseconds = end.saturating_sub(out.start);
        let stack = counts.add(out.pid, out.comm, out.event, &out.frames, nanoseconds);
        self.timeline.intervals.push((out.pid, tid, out.start, end.max(out.start), stack));
    }
}

/// `sched:sched_switch`'s raw fields this reader uses, at the offsets every kernel since 4.x
/// gives them on 64-bit targets (common header 8 bytes, prev_comm[16], prev_pid at 24,
/// prev_prio, prev_state (a long) at 32). The layout is checked, not trusted: the common_pid
/// and prev_pid fields must both be the sampled thread (the tracepoint fires in the thread
/// being switched out).
pub fn switched_out_state(raw: &[u8], tid: i32, little_endian: bool) -> Option<i64> {
    let i32_at = |at: usize| -> Option<i32> {
        let bytes: [u8; 4] = raw.get(at..at + 4)?.try_into().ok()?;
        Some(if little_endian { i32::from_le_bytes(bytes) } else { i32::from_be_bytes(bytes) })
    };
    let bytes: [u8; 8] = raw.get(32..40)?.try_into().ok()?;
    let state = if little_endian { i64::from_le_bytes(bytes) } else { i64::from_be_bytes(bytes) };
    (raw.len() >= 64 && i32_at(4)? == tid && i32_at(24)? == tid).then_some(state)
}

/// The state letters perf prints for `prev_state` (`S`, `D`, `R`, `R+` when preempted, `S|D`
/// for several bits), from the kernel's TASK_REPORT bits.
pub fn state_letters(state: i64) -> String {
    const LETTERS: [(i64, char); 8] = [
        (0x01, 'S'),
        (0x02, 'D'),
        (0x04, 'T'),
        (0x08, 't'),
        (0x10, 'X'),
        (0x20, 'Z'),
        (0x40, 'P'),
        (0x80, 'I'),
    ];
    let mut letters: Vec<String> =
        LETTERS.iter().filter(|(bit, _)| state & bit != 0).map(|(_, c)| c.to_string()).collect();
    if letters.is_empty() {
        letters.push("R".into());
    }
    let mut text = letters.join("|");
    if state & 0x100 != 0 {
        text.push('+');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(common_pid: i32, prev_pid: i32, state: i64) -> Vec<u8> {
        let mut raw = vec![0u8; 64];
        raw[4..8].copy_from_slice(&common_pid.to_le_bytes());
        raw[24..28].copy_from_slice(&prev_pid.to_le_bytes());
        raw[32..40].copy_from_slice(&state.to_le_bytes());
        raw
    }

    #[test]
    fn the_state_is_read_only_from_the_layout_it_expects() {
        assert_eq!(switched_out_state(&raw(7, 7, 1), 7, true), Some(1));
        assert_eq!(switched_out_state(&raw(7, 8, 1), 7, true), None);
        assert_eq!(switched_out_state(&raw(7, 7, 1)[..40], 7, true), None);
        assert_eq!(switched_out_state(&[], 7, true), None);
    }

    #[test]
    fn states_are_named_as_perf_names_them() {
        assert_eq!(state_letters(0), "R");
        assert_eq!(state_letters(0x100), "R+");
        assert_eq!(state_letters(1), "S");
        assert_eq!(state_letters(2), "D");
        assert_eq!(state_letters(0x80), "I");
        assert_eq!(state_letters(3), "S|D");
    }

    #[test]
    fn an_interval_runs_from_switch_out_to_the_next_sign_of_running() {
        let mut counts = StackCounts::default();
        let comm = counts.names.intern_str("worker");
        let sleeping = counts.names.intern_str("off-cpu:S");
        let frame = (counts.names.intern_str("futex_wait"), counts.names.intern_str("[k]"));
        let mut tracker = OffCpuTracker::default();
        tracker.switched_out(&mut counts, 11, 10, comm, sleeping, &[frame], 1_000);
        tracker.ran(&mut counts, 12, 1_500, Ended::SwitchIn); // another thread: no effect
        tracker.ran(&mut counts, 11, 4_000, Ended::SwitchIn);
        tracker.ran(&mut counts, 11, 9_000, Ended::Sample); // nothing open any more
        tracker.switched_out(&mut counts, 11, 10, comm, sleeping, &[frame], 10_000);
        tracker.switched_out(&mut counts, 11, 10, comm, sleeping, &[frame], 10_500);
        tracker.finish(&mut counts, 11_000);
        let weights: Vec<(u64, u64)> = counts.iter().map(|(_, _, _, _, c, w)| (c, w)).collect();
        assert_eq!(weights, vec![(3, 3_000 + 500 + 500)]);
        assert_eq!(
            tracker.timeline.intervals,
            vec![
                (10, 11, 1_000, 4_000, 0),
                (10, 11, 10_000, 10_500, 0),
                (10, 11, 10_500, 11_000, 0)
            ]
        );
        assert_eq!(
            tracker.summary,
            OffCpuSummary {
                switches: 3,
                ended_by_switch_in: 1,
                ended_by_sample: 1,
                open_at_end: 1,
                unreadable: 0
            }
        );
    }
}
