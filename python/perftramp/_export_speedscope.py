"""`report --format speedscope`: the view as a speedscope file
(https://www.speedscope.app/file-format-schema.json), one sampled profile per process.

Weights are CPU time in nanoseconds (samples times the sampling period); frames carry their
file and, for Python functions, the definition line."""

from __future__ import annotations

import json
from typing import Dict, List, Sequence, Tuple

from ._folding import ViewFrame, ViewStack

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope_json(stacks: Sequence[ViewStack], *, frequency_hz: int, name: str,
                    exporter: str) -> str:
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
        samples = [[frame_index(f) for f in stack.frames] for stack in group]
        weights = [stack.count * period_ns for stack in group]
        profiles.append({
            "type": "sampled", "name": group[0].process.label, "unit": "nanoseconds",
            "startValue": 0, "endValue": sum(weights), "samples": samples, "weights": weights,
        })
    document = {
        "$schema": SCHEMA, "shared": {"frames": frames}, "profiles": profiles,
        "name": name, "activeProfileIndex": 0, "exporter": exporter,
    }
    return json.dumps(document, separators=(",", ":"))
