"""`report --format gecko`: the view as a Firefox Profiler file (profiler.firefox.com, "Load a
profile from file"), one process per recorded process, frames in categories by kind (Python,
Native, CPython, Kernel). Written by fxprof-processed-profile in the extension (src/analysis/gecko.rs).

A wall or off-CPU view (counts in microseconds) keeps one thread per process, its samples
weighted by their time in milliseconds (weight type "tracing-ms"): the call tree and flame graph
then show wall time, and the off-CPU part is told apart by category, as the profiler does best:
the `[off-CPU: reason]` leaf frames are in the light blue "Off-CPU" category, so the category
graph shows when the process waited and the sidebar splits each function's time into its
categories (Off-CPU against the rest). On-CPU samples carry their time as CPU use, off-CPU ones
none, so the activity graph's height is the CPU use. An event's view (`record -e`) weighs each
stack with the event's count (weight type "samples", which the profiler sums as it sums samples)."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from . import _offcpu as oc
from ._folding import ViewStack
from ._measure import SAMPLES, Measure

#: A stack as encode_gecko takes it: labels, kinds, weight, milliseconds on the timeline, CPU
#: milliseconds.
_Stack = Tuple[List[str], List[str], float, float, float]


def gecko_json(stacks: Sequence[ViewStack], *, frequency_hz: int, product: str,
               measure: Measure = SAMPLES) -> str:
    from ._perftramp import encode_gecko

    interval_ms = 1000.0 / frequency_hz if frequency_hz > 0 else 1.0
    weight_type = "tracing-ms" if measure.is_time else "samples"
    by_process: Dict[Tuple[int, str], List[_Stack]] = {}
    for stack in stacks:
        frames = [f for f in stack.frames]
        weight, span_ms, cpu_ms = _weighed(measure, stack, interval_ms)
        by_process.setdefault((stack.pid, stack.comm), []).append(
            ([f.label for f in frames], [f.kind for f in frames], weight, span_ms, cpu_ms))
    processes = [(f"{comm} [pid {pid}]" if pid >= 0 else comm, max(pid, 0), group)
                 for (pid, comm), group in sorted(by_process.items())]
    return str(encode_gecko(product, interval_ms, processes, weight_type))


def _weighed(measure: Measure, stack: ViewStack, interval_ms: float) -> Tuple[float, float, float]:
    """`stack`'s weight, its span on the timeline and its CPU time (milliseconds)."""
    if measure == SAMPLES:  # samples at the sampling period, all on CPU
        return float(stack.count), interval_ms * stack.count, interval_ms * stack.count
    if measure.is_time:  # microseconds, on or off CPU
        ms = stack.count / 1000.0
        return ms, ms, 0.0 if oc.is_off_cpu(stack) else ms
    return float(stack.count), interval_ms, 0.0  # an event's count: one interval per stack
