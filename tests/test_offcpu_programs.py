"""Off-CPU time and event counts on real programs, end to end with real perf:

- `record --off-cpu` of tests/workloads/slow_backend.py: uvicorn (PyPI) serving an ASGI app whose
  handler, handle_request, makes a blocking round trip in ask_backend to a backend process that
  answers each request after BACKEND_DELAY (50 ms), under a bounded load (REQUESTS requests, 4 at
  a time). The truth: the server's event loop serves the requests one after another, and each
  spends at least 50 ms in ask_backend waiting in recv on the backend's socket; so in the server
  process ask_backend has about REQUESTS x 50 ms of off-CPU time with the reason io, nearly all of
  handle_request's wall time. In the backend process, backend_answer sleeps 50 ms a request
  (reason sleep), and ask_backend never appears there.
- `record -e page-faults` of tests/workloads/grow_list.py: grow_big_list touches ~120 MB of new
  memory (~30,000 page faults, against ~1,500 for the interpreter's start); spin_in_place, the
  control, does the same kind of CPU work without new memory. stacks.raw counts page faults:
  its total is close to what `perf stat -e page-faults` counts for the same program, and
  grow_big_list has most of them, spin_in_place almost none.

Counts in wall.raw are microseconds (on-CPU samples weighted by their period, off-CPU stacks by
the time switched out, ending in a `[off-CPU: <reason>]` frame); in an `-e EVENT` recording's
stacks.raw they are the event's count."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import PERF_ENV, cli
from perftramp import _rawstacks as raw
from perftramp._folding import ViewStack, python_view
from perftramp._measure import off_cpu_reason

pytestmark = pytest.mark.perf

WORKLOADS = Path(__file__).parent / "workloads"
REQUESTS = 40
BACKEND_DELAY = 0.05
GROW_ITEMS = 3_000_000


def require_uvicorn() -> None:
    """uvicorn is installed by scripts/test.sh in every tier's venv (test_deps)."""
    if importlib.util.find_spec("uvicorn") is None:
        if os.environ.get("CI") or os.environ.get("PERFTRAMP_REQUIRE_PERF") == "1":
            pytest.fail(f"uvicorn is not installed for {sys.executable} (scripts/test.sh installs it)")
        pytest.skip("uvicorn is not installed (pip install uvicorn)")


def noted_pids(path: Path) -> Dict[str, int]:
    """`ROLE <pid>` lines the workload wrote (PERFTRAMP_TEST_WORKERS)."""
    found = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        match = re.match(r"^(\w+) (\d+)$", line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def off_cpu_of(stack: ViewStack) -> str:
    """The reason of an off-CPU stack (its `[off-CPU: <reason>]` frame), "" for an on-CPU one."""
    for frame in reversed(stack.frames):
        if frame.kind == "off-cpu":
            return off_cpu_reason(frame.symbol) or off_cpu_reason(frame.function) or "?"
    return ""


def python_functions(stack: ViewStack) -> List[str]:
    return [frame.function for frame in stack.frames if frame.kind == "python"]


def time_in(stacks: List[ViewStack], pid: int, function: str) -> Tuple[int, Dict[str, int]]:
    """Microseconds of `pid`'s stacks with `function` on them: in all, and off CPU per reason."""
    total = 0
    off: Dict[str, int] = defaultdict(int)
    for stack in stacks:
        if stack.pid != pid or function not in python_functions(stack):
            continue
        total += stack.count
        reason = off_cpu_of(stack)
        if reason:
            off[reason] += stack.count
    return total, dict(off)


def summary(stacks: List[ViewStack], pid: int) -> str:
    """The process's heaviest stacks, for a failing assertion."""
    mine = sorted((s for s in stacks if s.pid == pid), key=lambda s: -s.count)[:12]
    return "\n".join(f"  {s.count:>9} µs {off_cpu_of(s) or 'on-CPU':<10} "
                     f"{' > '.join(python_functions(s)[-4:])}" for s in mine)


def record(tmp_path: Path, options: List[str], command: List[str], env: Dict[str, str]) -> Path:
    out = tmp_path / "rec"
    proc = cli("record", "-o", str(out), *options, "--", *command, env=env, timeout=600)
    assert proc.returncode == 0, f"record failed:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
    return out


def test_off_cpu_shows_the_handler_waiting_on_its_backend(perf, tmp_path):
    require_uvicorn()
    pids_file = tmp_path / "pids.txt"
    out = record(tmp_path, ["--off-cpu"], [sys.executable, str(WORKLOADS / "slow_backend.py")],
                 {"PERFTRAMP_TEST_WORKERS": str(pids_file), "SLOW_BACKEND_REQUESTS": str(REQUESTS),
                  "SLOW_BACKEND_DELAY": str(BACKEND_DELAY), "SLOW_BACKEND_CONCURRENCY": "4"})
    pids = noted_pids(pids_file)
    assert set(pids) == {"SERVER", "BACKEND", "LOAD"}, pids
    stacks = python_view(raw.read_raw(out / "wall.raw"))
    assert {s.pid for s in stacks} >= set(pids.values()), "a process is missing from wall.raw"
    waited = REQUESTS * BACKEND_DELAY * 1e6  # µs: the least the backend made the handler wait

    # The server: ask_backend's wait is io, at least 50 ms a request, and most of the handler's time.
    server = pids["SERVER"]
    handler, _ = time_in(stacks, server, "handle_request")
    asking, asking_off = time_in(stacks, server, "ask_backend")
    io = asking_off.get("io", 0)
    detail = (f"server pid {server}: handle_request {handler} µs, ask_backend {asking} µs, "
              f"off-CPU {asking_off}; {REQUESTS} requests x {BACKEND_DELAY * 1000:.0f} ms = "
              f"{waited:.0f} µs of waiting\n{summary(stacks, server)}")
    assert io >= 0.9 * waited, detail
    # Not more than the waits could be (each ~50 ms plus the backend's scheduling; 2 CPUs).
    assert io <= 3 * waited, detail
    assert io >= 0.8 * handler, detail
    assert io >= 0.9 * sum(asking_off.values()), detail  # io, not another reason
    assert asking <= handler, detail  # ask_backend is only ever under the handler

    # The backend: backend_answer sleeps 50 ms a request; the server's functions are not there.
    backend = pids["BACKEND"]
    _, answering_off = time_in(stacks, backend, "backend_answer")
    assert answering_off.get("sleep", 0) >= 0.9 * waited, \
        f"backend pid {backend}: backend_answer off-CPU {answering_off}\n{summary(stacks, backend)}"
    assert time_in(stacks, backend, "ask_backend")[0] == 0
    assert time_in(stacks, pids["LOAD"], "ask_backend")[0] == 0


def perf_stat_page_faults(perf: str, command: List[str]) -> int:
    proc = subprocess.run([perf, "stat", "-x", ",", "-e", "page-faults", "--", *command],
                          capture_output=True, text=True, env=dict(os.environ, **PERF_ENV),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stderr.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and fields[2].startswith("page-faults") and fields[0].isdigit():
            return int(fields[0])
    raise AssertionError(f"perf stat counted no page faults:\n{proc.stderr[-2000:]}")


def test_page_faults_are_counted_where_memory_grows(perf, tmp_path):
    command = [sys.executable, str(WORKLOADS / "grow_list.py"), str(GROW_ITEMS)]
    out = record(tmp_path, ["-e", "page-faults"], command, {})
    stacks = python_view(raw.read_raw(out / "stacks.raw"))
    total = sum(s.count for s in stacks)
    growing = sum(s.count for s in stacks if "grow_big_list" in python_functions(s))
    control = sum(s.count for s in stacks if "spin_in_place" in python_functions(s))
    # The truth, counted by perf itself without perftramp: the page faults of the same program.
    counted = perf_stat_page_faults(perf, command)
    detail = (f"stacks.raw: {total} page faults, grow_big_list {growing}, spin_in_place "
              f"{control}; perf stat -e page-faults: {counted}")
    # Counts, not samples: ~30,000 pages touched (perftramp's own start adds a few thousand).
    assert GROW_ITEMS * 32 // 4096 // 2 <= total, detail
    assert 0.7 * counted <= total <= 1.5 * counted, detail
    assert growing >= 0.8 * total, detail
    assert control <= 0.02 * total, detail
