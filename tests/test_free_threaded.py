"""Free-threaded CPython (3.14t+): perftramp while threads really run Python in parallel.

Eight threads make and call 50,000 new functions between them while another thread turns
perftramp on and off every 10 ms: no crash, no error, every code object named once at most, and
through perf, each thread's samples name that thread's own functions, never another thread's.
The stress itself is tests/workloads/ft_stress.py (benchmarks/free_threaded.py runs it too, with
CPython's own trampoline for comparison).

Skipped on GIL builds; PERFTRAMP_FREE_THREADED_TESTS=1 runs the stress tests there too (they
hold there as well; only the GIL checks need a free-threaded build).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import PERF_ENV, interpreter_has_frame_pointers, perf_record

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

pytestmark = pytest.mark.skipif(
    not FREE_THREADED and os.environ.get("PERFTRAMP_FREE_THREADED_TESTS") != "1",
    reason="needs a free-threaded CPython (Py_GIL_DISABLED): scripts/build-fp-python.sh 3.14t",
)
needs_free_threading = pytest.mark.skipif(not FREE_THREADED, reason="the GIL checks need a free-threaded build")

STRESS = Path(__file__).parent / "workloads" / "ft_stress.py"
THREADS = 8
FUNCTIONS = 50_000
# perf's DWARF stack copy per sample: a few Python frames through the evaluator.
DWARF = "dwarf,16384"


def clean_env() -> Dict[str, str]:
    """This environment without anything that would turn the GIL back on or start perftramp."""
    env = dict(os.environ)
    for name in ("PYTHON_GIL", "PYTHONPERFSUPPORT", "PERFTRAMP", "PERFTRAMP_MODE"):
        env.pop(name, None)
    return env


def stress(mode: str, tmp_path: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(STRESS), mode, "--threads", str(THREADS), "--functions", str(FUNCTIONS),
         "--directory", str(tmp_path), *extra],
        capture_output=True, text=True, env=clean_env(), timeout=timeout,
    )
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("DONE"), (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    return proc


def threads_of(stdout: str) -> Dict[int, int]:
    """native thread id -> worker index, from the workload's THREAD lines."""
    return {int(tid): int(k) for k, tid in re.findall(r"^THREAD (\d+) (\d+)$", stdout, re.M)}


@needs_free_threading
def test_import_and_enable_leave_the_gil_off(tmp_path: Path) -> None:
    """The extension declares it needs no GIL (PyO3 gil_used = false): importing it and running
    Python with trampolines in threads does not turn the GIL back on."""
    code = (
        "import sys, threading\n"
        "assert not sys._is_gil_enabled()\n"
        "import perftramp\n"
        "print('import', sys._is_gil_enabled())\n"
        "perftramp.enable('map')\n"
        "def f(n): return sum(range(n))\n"
        "ts = [threading.Thread(target=f, args=(10000,)) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('enable', sys._is_gil_enabled(), perftramp.status().trampolines > 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["import False", "enable False True"], proc.stdout
    # CPython warns when an extension re-enables the GIL on import.
    assert "GIL" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("mode", ["map", "jit", "elf", "elf+map", "both"])
def test_threads_making_functions_while_toggled(mode: str, tmp_path: Path) -> None:
    extra = ["--compile-all"] if mode == "map" else []
    proc = stress(mode, tmp_path, *extra)
    trampolines = int(re.search(r"trampolines=(\d+)", proc.stdout).group(1))
    calls = int(re.search(r"^CALLS (\d+)$", proc.stdout, re.M).group(1))
    assert calls == 2 * (FUNCTIONS // THREADS) * THREADS
    assert trampolines > 0
    if FREE_THREADED:
        assert "GIL False" in proc.stdout
    if "map" in mode or mode == "both":
        pid = int(re.search(r"^PID (\d+)$", proc.stdout, re.M).group(1))
        path = Path(f"/tmp/perf-{pid}.map")
        try:
            check_one_trampoline_per_code_object(path.read_text(), trampolines)
        finally:
            path.unlink()


def check_one_trampoline_per_code_object(text: str, trampolines: int,
                                         unique: str = r"py::w\d+_(f\d+|driver):") -> None:
    """Two threads racing to make the first trampoline of one code object end up with one: every
    function name matching `unique` (one code object each) is in the map at most once, and no
    address twice."""
    names: collections.Counter = collections.Counter()
    addresses: collections.Counter = collections.Counter()
    for line in text.splitlines():
        address, _size, name = line.split(" ", 2)
        addresses[address] += 1
        if re.match(unique, name):
            names[name] += 1
    # Functions first run after the workload's status() line (its exit path) add a few.
    assert sum(addresses.values()) >= trampolines
    assert max(addresses.values()) == 1, [a for a, n in addresses.items() if n > 1][:5]
    assert max(names.values()) == 1, [n for n, c in names.items() if c > 1][:5]


def test_fork_while_threads_run(tmp_path: Path) -> None:
    code = (
        "import os, sys, threading, perftramp\n"
        "perftramp.enable('map')\n"
        "stop = threading.Event()\n"
        "def spin(k):\n"
        "    while not stop.is_set():\n"
        "        exec(f'def g{k}(): return {k}\\ng{k}()', {})\n"
        "ts = [threading.Thread(target=spin, args=(k,)) for k in range(4)]\n"
        "[t.start() for t in ts]\n"
        "for _ in range(5):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        def child(): return sum(range(1000))\n"
        "        child(); perftramp.disable(); perftramp.enable('map'); child()\n"
        "        s = perftramp.status()\n"
        "        os._exit(0 if s.pid == os.getpid() and not s.errors else 3)\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    assert os.waitstatus_to_exitcode(status) == 0, status\n"
        "stop.set(); [t.join() for t in ts]\n"
        "print('ok', perftramp.status().errors)\n"
    )
    proc = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, env=clean_env(), timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok ()", proc.stdout


def test_environment_start_and_signal_toggle_while_threads_run(tmp_path: Path) -> None:
    """PERFTRAMP and PERFTRAMP_SIGNAL start perftramp before the script (perftramp.pth), then a
    thread sends the toggle signal every 10 ms while workers make new functions: the GIL stays
    off, nothing fails, and the map names each function once at most."""
    code = (
        "import os, signal, sys, sysconfig, threading, time, perftramp\n"
        "assert perftramp.is_enabled()\n"
        "stop = threading.Event()\n"
        "def work(k):\n"
        "    i, end = 0, time.monotonic() + 1.5\n"
        "    while time.monotonic() < end:\n"
        "        exec(f'def w{k}_{i}(): return {i}\\nw{k}_{i}()', {}); i += 1\n"
        "def toggle():\n"
        "    while not stop.is_set():\n"
        "        os.kill(os.getpid(), signal.SIGUSR2); time.sleep(0.01)\n"
        "ws = [threading.Thread(target=work, args=(k,)) for k in range(4)]\n"
        "t = threading.Thread(target=toggle)\n"
        "[w.start() for w in ws]; t.start(); [w.join() for w in ws]; stop.set(); t.join()\n"
        "time.sleep(0.05)\n"
        "perftramp.enable('map')\n"
        "gil = sys._is_gil_enabled() if sysconfig.get_config_var('Py_GIL_DISABLED') else False\n"
        "print('PID', os.getpid(), 'GIL', gil, 'ERRORS', list(perftramp.status().errors))\n"
    )
    env = dict(clean_env(), PERFTRAMP="map", PERFTRAMP_SIGNAL="USR2", PERFTRAMP_MODE="map")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"^PID (\d+) GIL False ERRORS \[\]$", proc.stdout, re.M)
    assert match, proc.stdout + proc.stderr[-2000:]
    assert "could not toggle" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("profiling support") >= 10, proc.stderr[-2000:]
    path = Path(f"/tmp/perf-{match.group(1)}.map")
    try:
        check_one_trampoline_per_code_object(path.read_text(), 0, unique=r"py::w\d+_\d+:")
    finally:
        path.unlink()


def per_thread_shares(perf: str, data: Path, threads: Dict[int, int]) -> Dict[int, tuple]:
    """worker -> (samples naming a Python function, share whose innermost one is the worker's
    own, samples naming another worker's function anywhere in the stack)."""
    env = dict(os.environ, **PERF_ENV)
    proc = subprocess.run([perf, "script", "-F", "comm,tid,ip,sym", "-i", str(data)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    named = collections.Counter()
    own = collections.Counter()
    foreign = collections.Counter()
    for block in proc.stdout.split("\n\n"):
        lines = block.strip("\n").split("\n")
        header = re.match(r"^\S.*?\s(\d+)\s*$", lines[0]) if lines and lines[0] else None
        if not header or int(header.group(1)) not in threads:
            continue
        k = threads[int(header.group(1))]
        python = [m.group(1) for m in (re.search(r"\s(py::\S+)", line) for line in lines[1:]) if m]
        if not python:
            continue  # a frame started while perftramp was off: no trampoline, nothing to name
        named[k] += 1
        own[k] += python[0].startswith(f"py::w{k}_")
        foreign[k] += any(re.match(rf"py::w(?!{k}_)\d+_", name) for name in python)
    return {k: (named[k], own[k] / named[k] if named[k] else 0.0, foreign[k]) for k in threads.values()}


@pytest.mark.parametrize("mode,call_graph", [
    ("elf", DWARF),
    pytest.param("map", "fp", marks=pytest.mark.skipif(
        not interpreter_has_frame_pointers(), reason="the interpreter has no frame pointers")),
])
def test_perf_names_each_threads_own_functions(perf: str, mode: str, call_graph: str, tmp_path: Path) -> None:
    data = tmp_path / "perf.data"
    proc = perf_record(perf, data, [sys.executable, str(STRESS), mode, "--threads", str(THREADS),
                                    "--functions", str(FUNCTIONS), "--work", "1000",
                                    "--directory", str(tmp_path)],
                       call_graph=call_graph, env=clean_env())
    assert proc.stdout.rstrip().endswith("DONE"), proc.stdout[-2000:] + proc.stderr[-2000:]
    pid = re.search(r"^PID (\d+)$", proc.stdout, re.M)
    if pid:  # the map mode's file; perf script reads it below, so it goes at the end
        request_cleanup = Path(f"/tmp/perf-{pid.group(1)}.map")
    threads = threads_of(proc.stdout)
    assert len(threads) == THREADS
    shares = per_thread_shares(perf, data, threads)
    report = {k: f"{n} named, {share:.1%} own, {bad} foreign" for k, (n, share, bad) in shares.items()}
    print(report)
    if pid:
        request_cleanup.unlink(missing_ok=True)
    for k, (named, share, foreign) in shares.items():
        assert named >= 20, report
        assert share >= 0.95, report
        assert foreign == 0, report
