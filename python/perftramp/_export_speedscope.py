"""`report --format speedscope`: the view as a speedscope file
(https://www.speedscope.app/file-format-schema.json), one sampled profile per process.

Weights are CPU time in nanoseconds (samples times the sampling period); frames carry their
file and, for Python functions, the definition line.

The other measures (_export_values.py) give each process one profile per value column, named
after it: a wall view "<comm> [pid N] wall", "... on-CPU" and "... off-CPU" (microseconds;
speedscope shows one profile at a time, so each split has its own, the wall one with both);
an off-CPU view "... off-CPU"; an event's view "... <event>" (unit "none", weights the event's
counts). A profile with nothing in it is left out."""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Sequence, Tuple

from . import _export_values as ev
from ._folding import ViewFrame, ViewStack
from ._measure import SAMPLES, Measure

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope_json(stacks: Sequence[ViewStack], *, frequency_hz: int, name: str,
                    exporter: str, measure: Measure = SAMPLES) -> str:
    period_ns = int(1e9 / frequency_hz) if frequency_hz > 0 else 1
    frames: List[Dict[str, object]] = []
    index: Dict[ViewFrame, int] = {}

    def frame_index(frame: ViewFrame) -> int:
        found = index.get(frame)
        if found is None:
            found = index[frame] = len(frames)
            entry: Dict[str, object] = {"name": frame.label}
            if frame.file:
                entry["file"] = frame.file
            if frame.line:
                entry["line"] = frame.line
            frames.append(entry)
        return found

    by_process: Dict[Tuple[int, str], List[ViewStack]] = {}
    for stack in stacks:
        by_process.setdefault((stack.pid, stack.comm), []).append(stack)
    profiles = []
    for (pid, comm), group in sorted(by_process.items(), key=lambda item: -sum(s.count for s in item[1])):
        for suffix, unit, weighted in _splits(measure, group, period_ns):
            if weighted:
                profiles.append(_profile(group[0].process.label + suffix, unit, weighted, frame_index))
    document = {
        "$schema": SCHEMA, "shared": {"frames": frames}, "profiles": profiles,
        "name": name, "activeProfileIndex": 0, "exporter": exporter,
    }
    return json.dumps(document, separators=(",", ":"))


def _splits(measure: Measure, group: List[ViewStack],
            period_ns: int) -> List[Tuple[str, str, List[Tuple[ViewStack, int]]]]:
    """A process's profiles: (name suffix, unit, the stacks with their weights) for each."""
    if measure == SAMPLES:
        return [("", "nanoseconds", [(s, s.count * period_ns) for s in group])]
    splits = []
    for i, column in enumerate(ev.value_columns(measure)):
        weighted = [(s, ev.values(measure, s)[i]) for s in group]
        splits.append((f" {column.title}", "microseconds" if column.is_time else "none",
                       [(s, w) for s, w in weighted if w]))
    return splits


def _profile(name: str, unit: str, weighted: List[Tuple[ViewStack, int]],
             frame_index: Callable[[ViewFrame], int]) -> Dict[str, object]:
    """A sampled profile of `weighted`'s stacks, each weighing its number."""
    samples = [[frame_index(f) for f in stack.frames] for stack, _ in weighted]
    weights = [weight for _, weight in weighted]
    return {
        "type": "sampled", "name": name, "unit": unit,
        "startValue": 0, "endValue": sum(weights), "samples": samples, "weights": weights,
    }
