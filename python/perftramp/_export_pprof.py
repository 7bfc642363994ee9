"""`report --format pprof`: the view as a gzipped pprof profile (google/pprof's profile.proto),
which `go tool pprof`, Pyroscope, Parca, Grafana and Google Cloud Profiler read.

Each sample has two values, `samples/count` and `cpu/nanoseconds` (samples times the sampling
period), and the labels `pid` and `process`: the process is a label rather than a root frame,
as pprof tools expect (filter with `-tagfocus`). Python functions carry their file and
definition line (`start_line`, and each location's line: perf samples name functions, not the
line running). The protobuf encoding is done by prost in the extension (src/analysis/pprof.rs).

The other measures (_export_values.py) give each sample their own values instead: a wall view
`wall/microseconds` (the default sample type), `on-cpu/microseconds` and `off-cpu/microseconds`
(each sample counts in one of the last two); an off-CPU view `off-cpu/microseconds`; an event's
view `<event>/count`. Off-CPU samples also have the label `off_cpu_reason` (gil, lock, io...),
and keep their `[off-CPU: reason]` leaf frame."""

from __future__ import annotations

import gzip
import time
from typing import Dict, List, Sequence, Tuple

from . import _export_values as ev
from . import _offcpu as oc
from ._folding import ViewFrame, ViewStack
from ._measure import SAMPLES, Measure


class _Strings:
    """profile.proto's string table: index 0 is ""."""

    def __init__(self) -> None:
        self.table: List[str] = [""]
        self._index: Dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        found = self._index.get(text)
        if found is None:
            found = self._index[text] = len(self.table)
            self.table.append(text)
        return found


def pprof_bytes(stacks: Sequence[ViewStack], *, frequency_hz: int, duration_s: float = 0.0,
                comment: str = "", measure: Measure = SAMPLES) -> bytes:
    """The gzipped profile of `stacks`, a view of `measure` (sampled at `frequency_hz` for
    SAMPLES)."""
    from ._perftramp import encode_pprof

    strings = _Strings()
    period_ns = int(1e9 / frequency_hz) if frequency_hz > 0 else 1
    functions: Dict[Tuple[str, str, str, int], int] = {}
    function_rows: List[Tuple[int, int, int, int, int]] = []
    locations: Dict[int, Tuple[int, int, int, int]] = {}

    def location_of(frame: ViewFrame) -> int:
        key = (frame.function, frame.symbol or frame.label, frame.file, frame.line)
        function_id = functions.get(key)
        if function_id is None:
            function_id = functions[key] = len(functions) + 1
            name = frame.label if frame.kind in ("marker", "process") else frame.function
            function_rows.append((function_id, strings(name), strings(frame.symbol or name),
                                  strings(frame.file), frame.line))
            locations[function_id] = (function_id, 1, function_id, frame.line)
        return function_id

    if measure == SAMPLES:  # samples, and CPU time at the sampling period
        sample_types = [(strings("samples"), strings("count")), (strings("cpu"), strings("nanoseconds"))]
        period_type, period, default = sample_types[1], period_ns, 0

        def values_of(stack: ViewStack) -> List[int]:
            return [stack.count, stack.count * period_ns]
    else:  # the measure's own values; the first is the default sample type
        sample_types = [(strings(c.name), strings(c.unit)) for c in ev.value_columns(measure)]
        period_type, period, default = sample_types[0], 1, sample_types[0][0]

        def values_of(stack: ViewStack) -> List[int]:
            return list(ev.values(measure, stack))
    pid_key, process_key = strings("pid"), strings("process")
    samples = []
    for stack in stacks:
        ids = [location_of(frame) for frame in reversed(stack.frames)]  # innermost first
        labels = [(pid_key, 0, stack.pid), (process_key, strings(stack.comm), 0)]
        reason = oc.off_cpu_reason_of(stack)
        if reason:
            labels.append((strings("off_cpu_reason"), strings(reason), 0))
        samples.append((ids, values_of(stack), labels))
    comments = [strings(comment)] if comment else []
    # One mapping, marked as holding symbolized functions, files and lines: pprof tools then
    # neither try to symbolize the locations nor warn that the main binary is unknown.
    main = max(stacks, key=lambda s: s.count).comm if stacks else "python"
    encoded = encode_pprof(
        strings.table, sample_types, period_type, period, int(duration_s * 1e9), time.time_ns(),
        [(1, strings(main))], function_rows, list(locations.values()), samples, comments, default)
    return gzip.compress(bytes(encoded), mtime=0)
