"""`report --format pprof|speedscope|gecko`: each exporter on canned stacks, then a real
recording read by the tools' own readers: `go tool pprof`; speedscope's published JSON schema and
speedscope itself (its release build in headless Chromium, tests/readers.py). The gecko file
(the Firefox Profiler's processed format) is checked structurally only: no reader of that format
can be installed here (see the README's limits)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import HOT_MIDDLE_OUTER, cli
from perftramp import _folding as fold
from perftramp._export_gecko import gecko_json
from perftramp._export_pprof import pprof_bytes
from perftramp._export_speedscope import speedscope_json

LIB = "/usr/lib/libpython3.12.so.1.0"
EXT = "/site-packages/_json.cpython-312-x86_64-linux-gnu.so"
MAIN = (("py::<module>:/app/w.py", "/tmp/jit/jitted-1-0.so"), ("_PyEval_EvalFrameDefault", LIB),
        ("py::Outer.run:/app/w.py", "/tmp/jit/jitted-1-1.so"), ("_PyEval_EvalFrameDefault", LIB))


def canned() -> List[fold.ViewStack]:
    start = (("_start", "/usr/bin/python3.12"),)
    stacks = {
        ("python3.12", 10, start + MAIN + (("py::hot:/app/w.py", "/tmp/jit/jitted-1-2.so"),)): 6,
        ("python3.12", 10, start + MAIN + (("encoder_call", EXT),)): 3,
        ("python3.12", 11, start + MAIN + (("py::hot:/app/w.py", "/tmp/jit/jitted-1-2.so"),)): 2,
        ("python3.12", 10, MAIN[2:]): 1,  # cut short
    }
    return fold.python_view(stacks)


# --- A reader of protobuf's wire format, enough to check what the exporter wrote -------------

def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> List[Tuple[int, object]]:
    """(field number, value) of a message: ints for varints, bytes for length-delimited."""
    out: List[Tuple[int, object]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, data[pos:pos + length]))
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def _packed(value: object) -> List[int]:
    if isinstance(value, int):
        return [value]
    assert isinstance(value, bytes)
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item)
    return out


@pytest.mark.once
def test_pprof_holds_functions_files_lines_values_and_period():
    data = gzip.decompress(pprof_bytes(canned(), frequency_hz=250, comment="perftramp: test"))
    profile = fields(data)
    strings = [v.decode() for n, v in profile if n == 6]  # string_table
    assert strings[0] == ""
    functions = {}
    for number, value in profile:
        if number == 5:  # Function: id, name, system_name, filename, start_line
            f = dict(fields(value))
            functions[f[1]] = (strings[f.get(2, 0)], strings[f.get(3, 0)], strings[f.get(4, 0)],
                               f.get(5, 0))
    assert ("hot", "py::hot:/app/w.py", "/app/w.py", 0) in functions.values()
    assert ("encoder_call", "encoder_call", EXT, 0) in functions.values()
    assert ("[stack cut short]", "[stack cut short]", "", 0) in functions.values()
    assert not any(name.startswith("_PyEval") for name, *_ in functions.values())  # folded
    samples = [dict((n, v) for n, v in fields(value) if n != 3) for n, value in profile if n == 2]
    totals = [_packed(s[2]) for s in samples]
    assert sum(t[0] for t in totals) == 12  # samples/count
    assert all(t[1] == t[0] * 4_000_000 for t in totals)  # cpu/nanoseconds at 250 Hz
    period = [v for n, v in profile if n == 12]
    assert period == [4_000_000]
    sample_types = [dict(fields(v)) for n, v in profile if n == 1]
    assert [(strings[t[1]], strings[t[2]]) for t in sample_types] == [("samples", "count"),
                                                                      ("cpu", "nanoseconds")]
    # The leaf of the hottest sample is hot, its callers Outer.run and <module>.
    first = _packed(samples[0][1])
    names = {loc: functions[loc][0] for loc in first}
    assert [names[loc] for loc in first][-2:] == ["Outer.run", "<module>"]
    # Processes are labels (pid, process).
    labels = [dict(fields(v)) for n, value in profile if n == 2
              for n2, v in fields(value) if n2 == 3]
    assert {lab[3] for lab in labels if strings[lab[1]] == "pid"} == {10, 11}


@pytest.mark.once
def test_speedscope_one_profile_per_process(speedscope_schema):
    doc = json.loads(speedscope_json(canned(), frequency_hz=250, name="t", exporter="perftramp"))
    _validate_speedscope(doc, speedscope_schema)
    assert [p["name"] for p in doc["profiles"]] == ["python3.12 [pid 10]", "python3.12 [pid 11]"]
    frames = doc["shared"]["frames"]
    hot = next(f for f in frames if f["name"] == "hot (w.py)")
    assert hot["file"] == "/app/w.py"
    first = doc["profiles"][0]
    assert len(first["samples"]) == len(first["weights"])
    assert sum(first["weights"]) == first["endValue"] == 10 * 4_000_000
    assert [frames[i]["name"] for i in first["samples"][0]][:2] == ["<module> (w.py)", "Outer.run (w.py)"]


@pytest.mark.once
def test_gecko_processes_categories_and_samples():
    doc = json.loads(gecko_json(canned(), frequency_hz=250, product="perftramp: t"))
    _check_gecko(doc, ["hot (w.py)", "Outer.run (w.py)", "encoder_call", "[stack cut short]"])
    assert sorted(t["pid"] for t in doc["threads"]) == ["10", "11"]
    weights = [sum(t["samples"].get("weight") or [1] * t["samples"]["length"]) for t in doc["threads"]]
    assert sorted(weights) == [2, 10]


def _check_gecko(doc: Dict[str, object], labels: List[str]) -> None:
    """The Firefox Profiler's processed format: meta with a processed-profile version and
    categories, threads with their tables, every stack's frame and prefix in range."""
    meta = doc["meta"]
    assert isinstance(meta, dict) and meta["preprocessedProfileVersion"] >= 48
    assert meta["interval"] > 0
    assert {"Python", "Native", "CPython", "Kernel"} <= {c["name"] for c in meta["categories"]}
    seen = set()
    for thread in doc["threads"]:  # type: ignore[union-attr]
        strings = thread["stringArray"]
        frames, funcs, stacks = thread["frameTable"], thread["funcTable"], thread["stackTable"]
        for table in (frames, funcs, stacks, thread["samples"]):
            columns = [v for k, v in table.items() if isinstance(v, list)]
            assert all(len(c) == table["length"] for c in columns), table.keys()
        assert all(f < funcs["length"] for f in frames["func"])
        assert all(p is None or p < i for i, p in enumerate(stacks["prefix"]))
        assert all(s is None or s < stacks["length"] for s in thread["samples"]["stack"])
        seen.update(strings[n] for n in funcs["name"])
    assert set(labels) <= seen, seen


def _validate_speedscope(doc: Dict[str, object], schema: Dict[str, object]) -> None:
    """speedscope's published schema (file-format-schema.json of its release build), then what
    the schema cannot say: sample indices within the shared frame table."""
    import jsonschema

    jsonschema.validate(doc, schema)
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    for profile in doc["profiles"]:  # type: ignore[union-attr]
        assert profile["type"] == "sampled" and profile["unit"] in ("nanoseconds", "microseconds", "none")
        assert all(0 <= i < len(doc["shared"]["frames"]) for s in profile["samples"] for i in s)


WORKLOAD = HOT_MIDDLE_OUTER


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed")
    base = tmp_path_factory.mktemp("export")
    workload = base / "workload.py"
    workload.write_text(WORKLOAD)
    out = base / "out"
    proc = cli("record", "-o", str(out), "--", sys.executable, str(workload), "1.0", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def report(out: Path, *args: str) -> subprocess.CompletedProcess:
    return cli("report", str(out), *args, timeout=300)


def _qual(name: str) -> str:
    return name if sys.version_info >= (3, 11) else name.rsplit(".", 1)[-1]


@pytest.mark.perf
def test_go_tool_pprof_reads_the_python_functions(perf, recorded):
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI") or os.environ.get("PERFTRAMP_REQUIRE_PERF") == "1":
            pytest.fail("go is not installed (apt-get install golang-go)")
        pytest.skip("go is not installed (apt-get install golang-go)")
    target = recorded / "custom.pb.gz"
    proc = report(recorded, "--format", "pprof", "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {target} (pprof," in proc.stderr
    top = subprocess.run([go, "tool", "pprof", "-top", str(target)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, GOFLAGS="-mod=mod", HOME=os.environ.get("HOME", "/root")))
    assert top.returncode == 0, top.stderr
    assert "Type: cpu" in top.stdout
    rows = {line.split()[-1]: line for line in top.stdout.splitlines() if "%" in line}
    assert {"hot", "middle", _qual("Outer.run"), "<module>"} <= set(rows), top.stdout
    # hot has most of the self time (flat%, the second column).
    assert float(rows["hot"].split()[1].rstrip("%")) > 50, top.stdout
    lines = subprocess.run([go, "tool", "pprof", "-traces", str(target)], capture_output=True,
                           text=True, timeout=300)
    assert "hot" in lines.stdout and "middle" in lines.stdout


@pytest.mark.perf
def test_speedscope_opens_a_recording(perf, recorded, speedscope, speedscope_schema):
    """speedscope itself loads the export (as a #profileURL= link would) and its sandwich table
    shows the Python functions, labelled with their definition lines, with hot's self time."""
    import readers

    proc = report(recorded, "--format", "speedscope")
    assert proc.returncode == 0, proc.stderr
    path = recorded / "profile.speedscope.json"
    _validate_speedscope(json.loads(path.read_text()), speedscope_schema)
    read = readers.read_with_speedscope(path, speedscope)
    assert read.title.startswith("perftramp: ") and "workload.py" in read.title, read.title
    assert len(read.profiles) == 1 and read.profiles[0].name.endswith("]"), read.profiles
    assert "[pid " in read.profiles[0].name
    frames = read.profiles[0].frames
    hot, run = "hot (workload.py:3)", f"{_qual('Outer.run')} (workload.py:13)"
    assert {hot, "middle (workload.py:9)", run, "<module> (workload.py)"} <= set(frames), frames
    total = max(t for t, _ in frames.values())
    assert frames[hot][1] > 0.5 * total, frames  # hot runs most of the time itself
    assert frames[run][0] >= frames[hot][0] > 0.5 * total and frames[run][1] < 0.1 * total


@pytest.mark.perf
def test_gecko_of_a_recording(perf, recorded):
    proc = report(recorded, "--format", "gecko")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((recorded / "profile.gecko.json").read_text())
    _check_gecko(doc, ["hot (workload.py:3)", f"{_qual('Outer.run')} (workload.py:13)"])


@pytest.mark.perf
def test_export_errors_name_the_problem(perf, recorded):
    bad = report(recorded, "--format", "pprof", "--python-only")
    assert bad.returncode == 2 and "apply to the SVG" in bad.stderr
    unwritable = report(recorded, "--format", "pprof", "-o", "/proc/nope/x.pb.gz")
    assert unwritable.returncode == 1 and "cannot write /proc/nope/x.pb.gz" in unwritable.stderr
