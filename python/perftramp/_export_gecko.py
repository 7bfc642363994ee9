"""`report --format gecko`: the view as a Firefox Profiler file (profiler.firefox.com, "Load a
profile from file"), one process per recorded process, frames in categories by kind (Python,
Native, CPython, Kernel). Written by fxprof-processed-profile in the extension (src/analysis/gecko.rs)."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from ._folding import ViewStack


def gecko_json(stacks: Sequence[ViewStack], *, frequency_hz: int, product: str) -> str:
    from ._perftramp import encode_gecko

    interval_ms = 1000.0 / frequency_hz if frequency_hz > 0 else 1.0
    by_process: Dict[Tuple[int, str], List[Tuple[List[str], List[str], int]]] = {}
    for stack in stacks:
        frames = [f for f in stack.frames]
        by_process.setdefault((stack.pid, stack.comm), []).append(
            ([f.label for f in frames], [f.kind for f in frames], stack.count))
    processes = [(f"{comm} [pid {pid}]" if pid >= 0 else comm, max(pid, 0), group)
                 for (pid, comm), group in sorted(by_process.items())]
    return str(encode_gecko(product, interval_ms, processes))
