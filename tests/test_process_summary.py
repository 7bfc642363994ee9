"""The summary of record and report, per process: samples, share with a Python frame, share cut
short, and a warning naming each process whose stacks stop inside the interpreter (issue 20:
workers started by exec lose their Python frames with a shared libpython)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from conftest import cli

pytestmark = pytest.mark.perf

# A parent that starts a multiprocessing "spawn" worker and a subprocess of the interpreter, all
# three busy for 1.5 s of CPU time in a function of their own.
PROGRAM = """\
import multiprocessing, os, subprocess, sys, time

def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def burn(cpu_seconds):
    # CPU time, not wall time: perf samples CPU time, so each process gets its ~250 samples
    # however busy the machine is.
    start, deadline = time.process_time(), time.monotonic() + 120
    while time.process_time() - start < cpu_seconds and time.monotonic() < deadline:
        hot(5000)

def parent_work(seconds):
    burn(seconds)

def spawned_work(seconds):
    burn(seconds)

def popen_work(seconds):
    burn(seconds)

if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        popen_work(1.5)
        sys.exit()
    worker = multiprocessing.get_context("spawn").Process(target=spawned_work, args=(1.5,))
    worker.start()
    child = subprocess.Popen([sys.executable, __file__, "child"])
    print(f"PIDS {os.getpid()} {worker.pid} {child.pid}", flush=True)
    parent_work(1.5)
    worker.join()
    child.wait()
"""

ROW = re.compile(r"^perftramp:\s+(\d+)\s+(\S+)\s+([\d,]+)\s+(\d+)%\s+(\d+)%"
                 r"(  <- stops inside the interpreter|  <- no Python frame: perftramp not on\?)?$")


def program_pids(stdout: str) -> Tuple[int, int, int]:
    match = re.search(r"^PIDS (\d+) (\d+) (\d+)$", stdout, re.M)
    assert match, stdout
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def summary_rows(stderr: str) -> Dict[int, Tuple[str, int, int, int, str]]:
    """pid -> (comm, samples, % with a Python frame, % cut short, mark: "lost", "off" or "")."""
    rows = {}
    for line in stderr.splitlines():
        match = ROW.match(line)
        if match:
            mark = match.group(6) or ""
            rows[int(match.group(1))] = (match.group(2), int(match.group(3).replace(",", "")),
                                         int(match.group(4)), int(match.group(5)),
                                         "lost" if "stops inside" in mark else "off" if mark else "")
    return rows


def summary_block(stderr: str) -> List[str]:
    """The summary's lines, from the samples line to before `wrote`."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"perftramp: [\d,]+ samples; ", line))
    end = next(i for i, line in enumerate(lines) if line.startswith("perftramp: wrote "))
    return lines[start:end]


def truth(out: Path) -> Dict[int, Tuple[int, int]]:
    """pid -> (samples, samples with a py:: frame), read from stacks.raw directly."""
    found: Dict[int, List[int]] = {}
    for line in (out / "stacks.raw").read_text().splitlines()[1:]:
        fields = line.split("\t")
        count, pid = int(fields[0]), int(fields[1])
        entry = found.setdefault(pid, [0, 0])
        entry[0] += count
        if any(field.startswith("py::") for field in fields[3:]):
            entry[1] += count
    return {pid: (n, py) for pid, (n, py) in found.items()}


def warned_pids(stderr: str, kind: str = "lost") -> Set[int]:
    """The pids named by the warning about processes lost in the interpreter ("lost") or
    without perftramp ("off")."""
    starts = (("perftramp: warning: perf's unwinding stopped inside the interpreter",
               "perftramp: warning: unwinding stopped inside the interpreter") if kind == "lost"
              else ("perftramp: warning: pid ",))
    names = [line for line in stderr.splitlines() if line.startswith(starts)
             and (kind == "lost" or "ran the interpreter without a Python frame" in line)]
    return {int(pid) for line in names for pid in re.findall(r"pid (\d+) \(", line)}


def remove_perf_maps(out: Path) -> None:
    for pid in json.loads((out / "perftramp.json").read_text()).get("pids", []):
        Path(f"/tmp/perf-{pid}.map").unlink(missing_ok=True)


def test_record_and_report_give_one_line_per_process(perf, tmp_path):
    program = tmp_path / "workers.py"
    program.write_text(PROGRAM)
    out = tmp_path / "out"
    proc = cli("record", "-o", str(out), "--", sys.executable, str(program), cwd=tmp_path,
               timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr
        parent, spawned, popened = program_pids(proc.stdout)
        rows = summary_rows(proc.stderr)
        assert {parent, spawned, popened} <= set(rows), (rows, proc.stderr[-3000:])
        # Each line is the truth of stacks.raw for its process.
        real = truth(out)
        for pid, (comm, samples, python, cut, flagged) in rows.items():
            assert samples == real[pid][0], (pid, rows[pid], real[pid])
            assert python == round(100 * real[pid][1] / samples), (pid, rows[pid], real[pid])
            assert 0 <= cut <= 100
        for pid in (parent, spawned, popened):
            assert rows[pid][1] >= 50, rows  # each was busy 1.5 s of CPU at 249 Hz
        # The warnings name exactly the processes marked in the table, each mostly unnamed.
        lost = {pid for pid, row in rows.items() if row[4] == "lost"}
        assert warned_pids(proc.stderr, "lost") == lost, proc.stderr[-3000:]
        # perftramp's reader unwinds each process with its own mappings: none is lost (perf
        # 6.1's unwinder lost the exec'd ones in about half the runs).
        assert not lost, proc.stderr[-3000:]
        # perftramp is on in every one of them: none is said to be without it.
        assert not warned_pids(proc.stderr, "off") and not any(r[4] == "off" for r in rows.values()), \
            proc.stderr[-3000:]
        # report says the same from stacks.raw.
        again = cli("report", str(out))
        assert again.returncode == 0, again.stderr
        assert summary_block(again.stderr) == summary_block(proc.stderr)
    finally:
        if (out / "perftramp.json").exists():
            remove_perf_maps(out)


def test_the_advice_for_workers_perf_script_lost_works(perf, tmp_path):
    """Read by perf script (--unwinder perf), exec'd workers of a shared-libpython interpreter
    may be lost (perf 6.1, about half the runs): the warning then names them and says to read
    the recording with perftramp's own unwinder, and `report --rescan` (which does) names every
    process's Python functions, from the same perf.data."""
    program = tmp_path / "workers.py"
    program.write_text(PROGRAM)
    out = tmp_path / "out"
    proc = cli("record", "-o", str(out), "--unwinder", "perf", "--", sys.executable, str(program),
               cwd=tmp_path, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr
        pids = program_pids(proc.stdout)
        lost = warned_pids(proc.stderr, "lost")
        if lost:
            assert "report without --unwinder perf" in proc.stderr, proc.stderr[-3000:]
        again = cli("report", "--rescan", str(out))
        assert again.returncode == 0, again.stderr
        rows = summary_rows(again.stderr)
        for pid in pids:
            comm, samples, python, cut, mark = rows[pid]
            assert samples >= 50 and python >= 80 and not mark, (pid, rows[pid], lost)
        assert not warned_pids(again.stderr, "lost"), again.stderr[-3000:]
    finally:
        if (out / "perftramp.json").exists():
            remove_perf_maps(out)


def test_old_recordings_without_pids_are_summed_by_name(tmp_path):
    """A recording made before stacks.raw (stacks.collapsed only, no pid): one line per
    command name, no crash."""
    out = tmp_path / "old"
    out.mkdir()
    (out / "stacks.collapsed").write_text(
        "python3.12;_start;__libc_start_main;Py_BytesMain;py::main:/a.py;py::f:/a.py 30\n"
        "worker;PyObject_Vectorcall 20\n")
    proc = cli("report", str(out), env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    text = "\n".join(summary_block(proc.stderr))
    assert "50 samples; no samples lost; 60% with a Python frame" in text, text
    assert re.search(r"^perftramp:\s+\?\s+python3\.12\s+30\s+100%\s+0%$", text, re.M), text
    assert re.search(r"^perftramp:\s+\?\s+worker\s+20\s+0%\s+100%  <- stops inside", text, re.M), text
