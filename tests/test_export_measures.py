"""The exports of views that are not sample counts: a wall view (on-CPU and off-CPU time, in
microseconds), an off-CPU view, and an event's view (`record -e`). Hand-made stacks of two
processes go through `_report.export` in each format and are read back: the wall, on-CPU and
off-CPU totals of each process must come out exactly."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from perftramp import _folding as fold
from perftramp import _report
from perftramp._measure import OFF_CPU, WALL, Measure, event_measure, off_cpu_symbol
from test_export import _check_gecko, _packed, _validate_speedscope, fields

pytestmark = pytest.mark.once

START = (("_start", "/usr/bin/python3.12"), ("_PyEval_EvalFrameDefault", "/usr/lib/libpython3.12.so.1.0"))
MAIN = START + (("py::main:/app/w.py", "/tmp/jit/jitted-1-0.so"),)
RUN = START + (("py::run:/app/worker.py", "/tmp/jit/jitted-2-0.so"),)


def off(reason: str) -> Tuple[Tuple[str, str], ...]:
    return ((off_cpu_symbol(reason), "[off-cpu]"),)


#: (comm, pid, frames) -> microseconds, and what each process must add up to.
WALL_STACKS = {
    ("python3.12", 10, MAIN + (("py::hot:/app/w.py", "/tmp/jit/jitted-1-1.so"),)): 1500,
    ("python3.12", 10, MAIN): 250,
    ("python3.12", 10, MAIN + off("lock")): 4000,
    ("python3.12", 10, MAIN + off("io")): 700,
    ("worker", 20, RUN): 333,
    ("worker", 20, RUN + off("sleep")): 10000,
}
#: pid -> (wall, on-CPU, off-CPU) microseconds.
TOTALS = {10: (6450, 1750, 4700), 20: (10333, 333, 10000)}
OFF_TOTALS = {10: 4700, 20: 10000}
REASONS = {10: {"lock", "io"}, 20: {"sleep"}}

PAGE_FAULTS = event_measure("page-faults")
#: An event's counts, one beyond 32 bits (gecko's crate only takes i32 weights).
EVENT_STACKS = {
    ("python3.12", 10, MAIN + (("py::hot:/app/w.py", "/tmp/jit/jitted-1-1.so"),)): 3_000_000_000,
    ("python3.12", 10, MAIN): 7,
    ("worker", 20, RUN): 40,
}
EVENT_TOTALS = {10: 3_000_000_007, 20: 40}


def view(stacks: Dict[Tuple[str, int, Tuple[Tuple[str, str], ...]], int]) -> List[fold.ViewStack]:
    return fold.python_view(stacks)


def off_cpu_view() -> List[fold.ViewStack]:
    return [s for s in view(WALL_STACKS) if s.frames[-1].kind == fold.OFFCPU]


def export(tmp_path: Path, stacks: List[fold.ViewStack], fmt: str, measure: Measure) -> bytes:
    path = _report.export(stacks, fmt, tmp_path / f"out.{fmt}", meta={"frequency": 250},
                          title="perftramp: t", measure=measure)
    return path.read_bytes()


def test_view_has_off_cpu_leaves():
    stacks = view(WALL_STACKS)
    assert sum(s.count for s in stacks) == sum(t[0] for t in TOTALS.values())
    leaves = {s.frames[-1].label for s in stacks if s.frames[-1].kind == fold.OFFCPU}
    assert leaves == {"[off-CPU: lock]", "[off-CPU: io]", "[off-CPU: sleep]"}


# --- pprof -------------------------------------------------------------------------------------

def read_pprof(data: bytes) -> Tuple[List[Tuple[str, str]], str, List[Tuple[List[int], Dict[str, object]]],
                                     List[str]]:
    """(sample types, default sample type, [(values, labels)], function names)."""
    profile = fields(gzip.decompress(data))
    strings = [v.decode() for n, v in profile if n == 6]
    types = [dict(fields(v)) for n, v in profile if n == 1]
    sample_types = [(strings[t.get(1, 0)], strings[t.get(2, 0)]) for t in types]
    default = strings[next((v for n, v in profile if n == 14), 0)]
    samples = []
    for number, value in profile:
        if number != 2:
            continue
        parts = fields(value)
        values = [x for n, v in parts if n == 2 for x in _packed(v)]
        labels: Dict[str, object] = {}
        for n, v in parts:
            if n == 3:
                label = dict(fields(v))
                labels[strings[label[1]]] = strings[label[2]] if label.get(2) else label.get(3, 0)
        samples.append((values, labels))
    names = [strings[dict(fields(v)).get(2, 0)] for n, v in profile if n == 5]
    return sample_types, default, samples, names


def sums_by_pid(samples: List[Tuple[List[int], Dict[str, object]]]) -> Dict[int, Tuple[int, ...]]:
    sums: Dict[int, List[int]] = {}
    for values, labels in samples:
        row = sums.setdefault(int(labels["pid"]), [0] * len(values))  # type: ignore[call-overload]
        for i, value in enumerate(values):
            row[i] += value
    return {pid: tuple(row) for pid, row in sums.items()}


def test_pprof_wall_has_wall_on_and_off_cpu_values(tmp_path):
    sample_types, default, samples, names = read_pprof(export(tmp_path, view(WALL_STACKS), "pprof", WALL))
    assert sample_types == [("wall", "microseconds"), ("on-cpu", "microseconds"), ("off-cpu", "microseconds")]
    assert default == "wall"
    assert sums_by_pid(samples) == TOTALS
    for values, labels in samples:
        wall, on, off_ = values
        assert wall == on + off_ and (on == 0 or off_ == 0)
        assert ("off_cpu_reason" in labels) == (off_ > 0)
        assert labels["process"] == ("python3.12" if labels["pid"] == 10 else "worker")
    reasons = defaultdict(set)
    for _, labels in samples:
        if "off_cpu_reason" in labels:
            reasons[labels["pid"]].add(labels["off_cpu_reason"])
    assert reasons == REASONS
    assert {"[off-CPU: lock]", "[off-CPU: io]", "[off-CPU: sleep]", "hot", "main", "run"} <= set(names)


def test_pprof_off_cpu_has_one_value(tmp_path):
    sample_types, default, samples, _ = read_pprof(export(tmp_path, off_cpu_view(), "pprof", OFF_CPU))
    assert sample_types == [("off-cpu", "microseconds")] and default == "off-cpu"
    assert sums_by_pid(samples) == {pid: (total,) for pid, total in OFF_TOTALS.items()}
    assert all("off_cpu_reason" in labels for _, labels in samples)


def test_pprof_event_counts(tmp_path):
    sample_types, default, samples, _ = read_pprof(export(tmp_path, view(EVENT_STACKS), "pprof", PAGE_FAULTS))
    assert sample_types == [("page-faults", "count")] and default == "page-faults"
    assert sums_by_pid(samples) == {pid: (total,) for pid, total in EVENT_TOTALS.items()}
    assert not any("off_cpu_reason" in labels for _, labels in samples)


# --- speedscope --------------------------------------------------------------------------------

def speedscope_totals(doc: Dict[str, object]) -> Dict[str, Tuple[str, int]]:
    """Profile name -> (unit, sum of weights), checking each profile's endValue."""
    out = {}
    for profile in doc["profiles"]:  # type: ignore[union-attr]
        assert len(profile["samples"]) == len(profile["weights"])
        assert profile["endValue"] == sum(profile["weights"]) and all(w > 0 for w in profile["weights"])
        out[profile["name"]] = (profile["unit"], sum(profile["weights"]))
    return out


def test_speedscope_wall_on_and_off_cpu_profiles(tmp_path, speedscope_schema):
    doc = json.loads(export(tmp_path, view(WALL_STACKS), "speedscope", WALL))
    _validate_speedscope(doc, speedscope_schema)
    us = "microseconds"
    assert speedscope_totals(doc) == {
        "worker [pid 20] wall": (us, 10333), "worker [pid 20] on-CPU": (us, 333),
        "worker [pid 20] off-CPU": (us, 10000),
        "python3.12 [pid 10] wall": (us, 6450), "python3.12 [pid 10] on-CPU": (us, 1750),
        "python3.12 [pid 10] off-CPU": (us, 4700),
    }
    assert doc["profiles"][0]["name"] == "worker [pid 20] wall"  # the biggest process's wall first
    frames = doc["shared"]["frames"]
    off_profile = next(p for p in doc["profiles"] if p["name"] == "python3.12 [pid 10] off-CPU")
    assert {frames[s[-1]]["name"] for s in off_profile["samples"]} == {"[off-CPU: lock]", "[off-CPU: io]"}


def test_speedscope_itself_reads_the_wall_profiles(tmp_path, speedscope):
    """speedscope loads the microsecond profiles and shows their times (in milliseconds)."""
    import readers

    export(tmp_path, view(WALL_STACKS), "speedscope", WALL)
    read = readers.read_with_speedscope(tmp_path / "out.speedscope", speedscope)
    profiles = {p.name: p.frames for p in read.profiles}
    assert list(profiles) == [f"{process} {part}" for process in ("worker [pid 20]", "python3.12 [pid 10]")
                              for part in ("wall", "on-CPU", "off-CPU")]
    assert profiles["worker [pid 20] wall"]["[off-CPU: sleep]"] == (10.0, 10.0)
    assert profiles["python3.12 [pid 10] on-CPU"]["main (w.py)"] == (1.75, 0.25)
    assert profiles["python3.12 [pid 10] off-CPU"]["[off-CPU: lock]"] == (4.0, 4.0)


def test_speedscope_off_cpu_and_event(tmp_path, speedscope_schema):
    doc = json.loads(export(tmp_path, off_cpu_view(), "speedscope", OFF_CPU))
    _validate_speedscope(doc, speedscope_schema)
    assert speedscope_totals(doc) == {"worker [pid 20] off-CPU": ("microseconds", 10000),
                                      "python3.12 [pid 10] off-CPU": ("microseconds", 4700)}
    doc = json.loads(export(tmp_path, view(EVENT_STACKS), "speedscope", PAGE_FAULTS))
    _validate_speedscope(doc, speedscope_schema)
    assert speedscope_totals(doc) == {"python3.12 [pid 10] page-faults": ("none", 3_000_000_007),
                                      "worker [pid 20] page-faults": ("none", 40)}


# --- gecko -------------------------------------------------------------------------------------

def gecko_sums(doc: Dict[str, object]) -> Dict[str, Dict[str, float]]:
    """Thread name -> {leaf frame's category name: sum of weights}, and "cpu": the thread's CPU
    delta sum (microseconds)."""
    categories = [c["name"] for c in doc["meta"]["categories"]]  # type: ignore[index]
    out: Dict[str, Dict[str, float]] = {}
    for thread in doc["threads"]:  # type: ignore[union-attr]
        samples, stacks, frames = thread["samples"], thread["stackTable"], thread["frameTable"]
        sums: Dict[str, float] = defaultdict(float)
        for stack, weight in zip(samples["stack"], samples["weight"]):
            sums[categories[frames["category"][stacks["frame"][stack]]]] += weight
        sums["cpu"] = sum(samples["threadCPUDelta"][1:])  # the first delta is not used
        out[thread["name"]] = dict(sums)
    return out


def test_gecko_wall_weights_are_milliseconds_off_cpu_by_category(tmp_path):
    doc = json.loads(export(tmp_path, view(WALL_STACKS), "gecko", WALL))
    _check_gecko(doc, ["hot (w.py)", "[off-CPU: lock]", "[off-CPU: sleep]"])
    assert {t["samples"]["weightType"] for t in doc["threads"]} == {"tracing-ms"}
    assert {"name": "Off-CPU", "color": "lightblue"}.items() <= next(
        c for c in doc["meta"]["categories"] if c["name"] == "Off-CPU").items()
    sums = gecko_sums(doc)
    assert set(sums) == {"python3.12 [pid 10]", "worker [pid 20]"}
    for pid, name in ((10, "python3.12 [pid 10]"), (20, "worker [pid 20]")):
        wall, on, off_ = TOTALS[pid]
        got = sums[name]
        assert got["Off-CPU"] == pytest.approx(off_ / 1000)
        assert sum(v for k, v in got.items() if k != "cpu") == pytest.approx(wall / 1000)
    # On-CPU samples carry their time as CPU use, off-CPU ones none.
    thread = next(t for t in doc["threads"] if t["name"] == "python3.12 [pid 10]")
    cpu = dict(zip(thread["samples"]["weight"], thread["samples"]["threadCPUDelta"]))
    assert cpu[4.0] == 0 and cpu[0.7] == 0 and cpu[1.5] == 1500


def test_gecko_off_cpu_and_event_weights(tmp_path):
    doc = json.loads(export(tmp_path, off_cpu_view(), "gecko", OFF_CPU))
    sums = gecko_sums(doc)
    assert sums["python3.12 [pid 10]"]["Off-CPU"] == pytest.approx(4.7)
    assert sums["worker [pid 20]"]["Off-CPU"] == pytest.approx(10.0)
    doc = json.loads(export(tmp_path, view(EVENT_STACKS), "gecko", PAGE_FAULTS))
    _check_gecko(doc, ["hot (w.py)", "run (worker.py)"])
    assert {t["samples"]["weightType"] for t in doc["threads"]} == {"samples"}
    totals = {t["name"]: sum(t["samples"]["weight"]) for t in doc["threads"]}
    assert totals == {"python3.12 [pid 10]": 3_000_000_007, "worker [pid 20]": 40}
    assert all(isinstance(w, int) for t in doc["threads"] for w in t["samples"]["weight"])
