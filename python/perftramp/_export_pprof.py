"""`report --format pprof`: the view as a gzipped pprof profile (google/pprof's profile.proto),
which `go tool pprof`, Pyroscope, Parca, Grafana and Google Cloud Profiler read.

Each sample has two values, `samples/count` and `cpu/nanoseconds` (samples times the sampling
period), and the labels `pid` and `process`: the process is a label rather than a root frame,
as pprof tools expect (filter with `-tagfocus`). Python functions carry their file and
definition line (`start_line`, and each location's line: perf samples name functions, not the
line running). The protobuf encoding is done by prost in the extension (src/analysis/pprof.rs)."""

from __future__ import annotations

import gzip
import time
from typing import Dict, List, Sequence, Tuple

from ._folding import ViewFrame, ViewStack


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
                comment: str = "") -> bytes:
    """The gzipped profile of `stacks` sampled at `frequency_hz`."""
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

    samples_type, count_unit = strings("samples"), strings("count")
    cpu_type, ns_unit = strings("cpu"), strings("nanoseconds")
    pid_key, process_key = strings("pid"), strings("process")
    samples = []
    for stack in stacks:
        ids = [location_of(frame) for frame in reversed(stack.frames)]  # innermost first
        labels = [(pid_key, 0, stack.pid), (process_key, strings(stack.comm), 0)]
        samples.append((ids, [stack.count, stack.count * period_ns], labels))
    comments = [strings(comment)] if comment else []
    # One mapping, marked as holding symbolized functions, files and lines: pprof tools then
    # neither try to symbolize the locations nor warn that the main binary is unknown.
    main = max(stacks, key=lambda s: s.count).comm if stacks else "python"
    encoded = encode_pprof(
        strings.table, [(samples_type, count_unit), (cpu_type, ns_unit)], (cpu_type, ns_unit),
        period_ns, int(duration_s * 1e9), time.time_ns(), [(1, strings(main))], function_rows,
        list(locations.values()), samples, comments)
    return gzip.compress(bytes(encoded), mtime=0)
