"""The truth of tests/workloads/wait_mix.py and a recording's per-thread shares, in one shape,
for tests and benchmarks/offcpu_compare.py to compare.

Shares of one thread (what every reader here returns, per thread name):

    {"total": float,                      # the thread's samples, or µs of a wall view
     "functions": {qualname: share},      # share of total whose innermost Python frame it is
                                          # ("" when a stack has no Python frame)
     "categories": {"cpu": share, reason: share}}   # only where the tool can tell

Thread names are wait_mix's (the truth's "name"): a recording's comm, or its tid mapped through
the truth's native_id; the main thread's comm is the interpreter's, so a comm that names no
thread of the truth is "MainThread".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

WAIT_MIX = Path(__file__).resolve().parent / "workloads" / "wait_mix.py"

Shares = Dict[str, Dict[str, object]]
#: (thread, innermost Python function, category) -> weight
Counts = Dict[Tuple[str, str, str], float]


def load_truth(path: Union[str, Path]) -> dict:
    """wait_mix's truth file, with "by_name" ({name: thread}) and "by_tid" ({native_id: name})
    added."""
    truth = json.loads(Path(path).read_text())
    truth["by_name"] = {t["name"]: t for t in truth["threads"]}
    truth["by_tid"] = {t["native_id"]: t["name"] for t in truth["threads"]}
    return truth


def thread_name(truth: Optional[dict], comm: str = "", tid: Optional[int] = None) -> str:
    """The truth's name of a recorded thread: by tid when given, else by comm (a comm that
    names no thread is the main thread's, the interpreter's name)."""
    if truth is None:
        return comm
    if tid is not None and tid in truth["by_tid"]:
        return truth["by_tid"][tid]
    if comm in truth["by_name"]:
        return comm
    return "MainThread" if tid is None else f"tid {tid}"


def shares(counts: Counts) -> Shares:
    """Per thread, each function's and each category's share of the thread's total."""
    totals: Dict[str, float] = {}
    for (thread, _, _), weight in counts.items():
        totals[thread] = totals.get(thread, 0.0) + weight
    result: Shares = {t: {"total": total, "functions": {}, "categories": {}}
                      for t, total in totals.items()}
    for (thread, function, category), weight in counts.items():
        total = totals[thread]
        if total <= 0:
            continue
        functions = result[thread]["functions"]
        functions[function] = functions.get(function, 0.0) + weight / total  # type: ignore[index,union-attr]
        if category:
            categories = result[thread]["categories"]
            categories[category] = categories.get(category, 0.0) + weight / total  # type: ignore[index,union-attr]
    return result


def wall_raw_path(path: Union[str, Path]) -> Path:
    """A recording directory's wall.raw, or `path` itself when it is a file."""
    path = Path(path)
    return path / "wall.raw" if path.is_dir() else path


def perftramp_counts(path: Union[str, Path], truth: Optional[dict] = None) -> Counts:
    """A `record --off-cpu` recording's wall view (DIR/wall.raw, µs) as Counts: the category is
    the off-CPU frame's reason, "cpu" for an on-CPU stack."""
    from perftramp._folding import PYTHON, python_view
    from perftramp._measure import OFF_CPU_DSO, off_cpu_reason
    from perftramp._rawstacks import read_raw

    counts: Counts = {}
    for stack in python_view(read_raw(wall_raw_path(path))):
        category = "cpu"
        function = ""
        for frame in reversed(stack.frames):
            reason = off_cpu_reason(frame.symbol) or off_cpu_reason(frame.function)
            if reason or frame.file == OFF_CPU_DSO:
                category = reason or "other"
                break
        for frame in reversed(stack.frames):
            if frame.kind == PYTHON:
                function = frame.function
                break
        key = (thread_name(truth, stack.comm), function, category)
        counts[key] = counts.get(key, 0.0) + stack.count
    return counts


def perftramp_shares(path: Union[str, Path], truth: Optional[dict] = None) -> Shares:
    """Per thread of a `record --off-cpu` recording (a directory or its wall.raw): each
    function's share of the thread's wall time (innermost Python frame) and the category split
    (cpu and each off-CPU reason). Threads are named by comm, mapped to the truth's names when
    `truth` (load_truth) is given."""
    return shares(perftramp_counts(path, truth))


def errors(truth: dict, measured: Shares, names: Iterable[str] = ()) -> Dict[str, Dict[str, float]]:
    """Per thread: absolute error in points (0-100) of its main function's share and of each
    expected category's share ({"function": e, "cpu": e, "<category>": e}); a thread or a
    category the recording lacks counts as share 0."""
    result: Dict[str, Dict[str, float]] = {}
    for name in names or truth["by_name"]:
        thread = truth["by_name"][name]
        got = measured.get(name, {"functions": {}, "categories": {}})
        row: Dict[str, float] = {}
        for function, share in thread["functions"].items():
            row["function"] = 100 * abs(share - got["functions"].get(function, 0.0))  # type: ignore[union-attr]
        for category, share in thread["expected"].items():
            row[category] = 100 * abs(share - got["categories"].get(category, 0.0))  # type: ignore[union-attr]
        result[name] = row
    return result
