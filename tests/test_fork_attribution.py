"""Forked workers named truthfully, checked through perf: for every worker process, the share of
its samples whose stack names the worker's own function, and that none names a function only the
parent (or the other worker) ran. Every mode, with and without persist_after_fork, for os.fork,
multiprocessing fork pools, a fork server, inherited-only code and a fork perftramp notices late
(ctypes), and `perf record -p <child>` attached after the fork (what persist_after_fork buys)."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import PERF_ENV, interpreter_has_frame_pointers, ring_buffer
from perftramp import _perf
from perftramp._perfscript import iter_stack_samples

pytestmark = pytest.mark.perf

WORKLOAD = Path(__file__).parent / "workloads" / "fork_workers.py"
# A debug build (python3.X-dbg) runs several times slower: its workers spend longer starting,
# so they spin longer for the same share of their samples in the spinning function.
SECONDS = "2.5" if hasattr(sys, "gettotalrefcount") else "1.0"
FP = interpreter_has_frame_pointers()


@dataclass
class Worker:
    function: str
    samples: int = 0
    #: Samples with at least one Python frame (named by perf).
    python: int = 0
    own: int = 0
    foreign: int = 0
    foreign_names: collections.Counter = None  # type: ignore[assignment]

    @property
    def own_share(self) -> float:
        return self.own / self.samples if self.samples else 0.0


def call_graph(perf: str, mode: str) -> List[str]:
    """How each mode is recorded (as `record` does): map mode with frame pointers where the
    interpreter has them or where perf's dwarf unwinder (libdw, perf 7) resolves no perf-map
    code, else DWARF stacks (the innermost Python frame); jit modes DWARF + -k 1; elf mode DWARF
    alone (perf reads the images)."""
    if mode == "elf":
        return ["--call-graph", "dwarf,16384"]
    if mode == "map":
        if FP or not _perf.inspect(perf).map_dwarf_resolves:
            return ["--call-graph", "fp"]
        return ["--call-graph", "dwarf,16384"]
    return ["-k", "1", "--call-graph", "dwarf,16384"]


def jitdump_directory(perf: str, tmp_path: Path) -> Path:
    """tmp_path, or where perf 7's libdw unwinder needs injected files (/tmp/jitted-*)."""
    if _perf.jit_directory_works(tmp_path, _perf.inspect(perf)):
        return tmp_path
    return _perf.make_tmp_jitted_directory("fork")


def perf_env(mode: str, directory: Path, persist: bool) -> Dict[str, str]:
    env = dict(os.environ, **PERF_ENV)
    env.update(PERFTRAMP=mode, PERFTRAMP_DIR=str(directory),
               PERFTRAMP_PERSIST_AFTER_FORK="1" if persist else "0")
    env.pop("PERFTRAMP_SIGNAL", None)
    return env


def readable_data(perf: str, mode: str, data: Path) -> Path:
    """perf.data, or its jit-injected copy in jit modes."""
    if mode in ("map", "elf"):
        return data
    injected = data.with_suffix(".jit.data")
    proc = subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(injected)],
                          capture_output=True, text=True, env=dict(os.environ, **PERF_ENV))
    assert proc.returncode == 0, proc.stderr
    return injected


def attribute(perf: str, data: Path, workers: Dict[int, str]) -> Dict[int, Worker]:
    """Per worker pid: its samples, those naming its own function, those naming a function the
    worker never ran (the parent's, or the other worker's)."""
    proc = subprocess.run([perf, "script", "-F", "comm,pid,tid,ip,sym,dso", "-i", str(data)],
                          capture_output=True, text=True, env=dict(os.environ, **PERF_ENV))
    assert proc.returncode == 0, proc.stderr
    result = {pid: Worker(name, foreign_names=collections.Counter()) for pid, name in workers.items()}
    for sample in iter_stack_samples(proc.stdout.splitlines()):
        worker = result.get(sample.pid)  # type: ignore[arg-type]
        if worker is None:
            continue
        python = [f for f in sample.frames if f.startswith("py::")]
        worker.samples += 1
        worker.python += bool(python)
        if any(f.startswith(f"py::{worker.function}:") for f in python):
            worker.own += 1
        foreign = [f for f in python if f.startswith(("py::parent_", "py::worker_spin"))
                   and not f.startswith(f"py::{worker.function}:")]
        if foreign:
            worker.foreign += 1
            worker.foreign_names.update(foreign)
    return result


def run_scenario(perf: str, tmp_path: Path, mode: str, persist: bool, scenario: str) -> Dict[int, Worker]:
    directory = jitdump_directory(perf, tmp_path)
    try:
        return record_scenario(perf, directory, mode, persist, scenario)
    finally:
        if directory != tmp_path:
            shutil.rmtree(directory, ignore_errors=True)


def record_scenario(perf: str, tmp_path: Path, mode: str, persist: bool, scenario: str) -> Dict[int, Worker]:
    data = tmp_path / "perf.data"
    proc = subprocess.run(
        [perf, "record", "-q", "-F", "499", *call_graph(perf, mode), *ring_buffer(call_graph(perf, mode)),
         "-o", str(data), "--",
         sys.executable, str(WORKLOAD), scenario, SECONDS],
        capture_output=True, text=True, env=perf_env(mode, tmp_path, persist), timeout=300)
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout}"
    workers = {int(line.split()[1]): line.split()[2]
               for line in proc.stdout.splitlines() if line.startswith("WORKER ")}
    assert sorted(workers.values()) == ["worker_spin_a", "worker_spin_b"], proc.stdout
    return attribute(perf, readable_data(perf, mode, data), workers)


def unwinds_to_python(perf: str, mode: str) -> bool:
    """Whether every sample's stack reaches its Python frame. Not in map mode on an interpreter
    without frame pointers with perf's libdw unwinder (perf 7): there perf records fp stacks
    (record does the same), which find the Python frame only when the evaluator happens to leave
    a usable frame-pointer chain: 0% to 80% of samples, run to run (measured on 3.14, perf 7.2)."""
    return mode != "map" or FP or _perf.inspect(perf).map_dwarf_resolves


UNRELIABLE = ("perf 7 (libdw) cannot DWARF-unwind perf-map code and this interpreter has no frame "
              "pointers: Python frames appear in 0-80% of samples, so only 'no sample names "
              "another process's code' was checked; jit and elf modes are checked in full")


def assert_named_truthfully(perf: str, mode: str, workers: Dict[int, Worker], what: str) -> None:
    for pid, worker in workers.items():
        detail = (f"{what}: worker {pid} ({worker.function}): {worker.own}/{worker.samples} samples "
                  f"name it ({worker.python} have a Python frame), {worker.foreign} name another "
                  f"process's code {dict(worker.foreign_names.most_common(3))}")
        assert worker.samples >= 20, detail
        assert worker.foreign == 0, detail
        if unwinds_to_python(perf, mode):
            assert worker.own_share >= 0.90, detail
    if not unwinds_to_python(perf, mode):
        pytest.skip(UNRELIABLE)


#: The whole matrix runs on the first host interpreter, the frame-pointer build and the sid
#: tiers (perf 7); the other interpreters (PERFTRAMP_SKIP_ONCE=1 without
#: PERFTRAMP_FULL_FORK_MATRIX=1) run every mode but "both" (map and jit together: the same
#: per-output fork code as each alone) on os.fork and fork pools, to keep CI short.
FULL_MATRIX = (os.environ.get("PERFTRAMP_SKIP_ONCE") != "1"
               or os.environ.get("PERFTRAMP_FULL_FORK_MATRIX") == "1")
SCENARIOS = ["os_fork", "inherited", "pool", "c_fork"] if FULL_MATRIX else ["os_fork", "pool"]
MODES = ["map", "jit", "both", "elf"] if FULL_MATRIX else ["map", "jit", "elf"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("mode", MODES)
def test_each_worker_is_named_by_its_own_functions(perf, tmp_path, mode, scenario):
    workers = run_scenario(perf, tmp_path, mode, False, scenario)
    assert_named_truthfully(perf, mode, workers, f"{mode} mode, {scenario}")


@pytest.mark.parametrize("scenario", ["os_fork", "pool"] if FULL_MATRIX else ["pool"])
@pytest.mark.parametrize("mode", ["map", "jit", "elf"] if FULL_MATRIX else ["map", "jit"])
def test_persist_after_fork_keeps_workers_named_truthfully(perf, tmp_path, mode, scenario):
    workers = run_scenario(perf, tmp_path, mode, True, scenario)
    assert_named_truthfully(perf, mode, workers, f"{mode} mode, persist_after_fork, {scenario}")


@pytest.mark.skipif(not FP, reason="fork-server workers (forked by an exec'd server) lose DWARF "
                    "unwinding through the interpreter in perf itself, with CPython's own -X perf "
                    "too (README: known limits); frame pointers are checked")
def test_fork_server_workers_are_named_by_their_own_functions(perf, tmp_path):
    workers = run_scenario(perf, tmp_path, "map", False, "forkserver")
    assert_named_truthfully(perf, "map", workers, "map mode, forkserver")


ATTACH_LATER = """\
import os, sys, time
sys.path.insert(0, {workloads!r})
os.environ["PERFTRAMP_TEST_SECONDS"] = "0"
import fork_workers as w
w.worker_spin_a(0.01)  # its trampoline is made in the parent
pid = os.fork()
if pid == 0:
    time.sleep(1.0)  # perf attaches meanwhile
    w.worker_spin_a(2.5)
    os._exit(0)
print(f"CHILD {{pid}}", flush=True)
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("persist", [False, True], ids=["default", "persist"])
@pytest.mark.parametrize("mode", ["map", "jit", "elf"])
def test_persist_after_fork_names_inherited_code_for_perf_attached_to_the_child(
        perf, tmp_path, mode, persist):
    """What persist_after_fork buys: a perf session that starts after the fork (perf record -p
    CHILD) sees the inherited arenas as the child's own and names them from the child's files,
    which describe inherited trampolines only with persist_after_fork. In elf mode the inherited
    arenas are mappings of the parent's images, which name them: named either way."""
    directory = jitdump_directory(perf, tmp_path)
    try:
        attach_later(perf, directory, mode, persist)
    finally:
        if directory != tmp_path:
            shutil.rmtree(directory, ignore_errors=True)


def attach_later(perf: str, tmp_path: Path, mode: str, persist: bool) -> None:
    """Records the child only, from after the fork, and checks what perf names."""
    script = tmp_path / "attach_later.py"
    script.write_text(ATTACH_LATER.format(workloads=str(WORKLOAD.parent)))
    env = perf_env(mode, tmp_path, persist)
    program = subprocess.Popen([sys.executable, str(script), "x", "0"], stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        assert program.stdout is not None
        line = program.stdout.readline()
        assert line.startswith("CHILD "), line
        child = int(line.split()[1])
        time.sleep(0.3)
        data = tmp_path / "perf.data"
        proc = subprocess.run(
            [perf, "record", "-q", "-F", "499", *call_graph(perf, mode), "-o", str(data),
             "-p", str(child), "--", "sleep", "1.5"],
            capture_output=True, text=True, env=dict(os.environ, **PERF_ENV), timeout=120)
        assert proc.returncode == 0, proc.stderr
    finally:
        program.wait(timeout=60)
    worker = attribute(perf, readable_data(perf, mode, data), {child: "worker_spin_a"})[child]
    detail = (f"{mode}, persist={persist}: {worker.own}/{worker.samples} samples name worker_spin_a "
              f"({worker.python} have a Python frame)")
    assert worker.samples >= 50, detail
    assert worker.foreign == 0, detail
    if not unwinds_to_python(perf, mode):
        pytest.skip(UNRELIABLE)
    if persist or mode == "elf":
        assert worker.own_share >= 0.90, detail
    elif mode == "map" or _perf.inspect(perf).unwinder == "libunwind":
        # Without it the child's files name only what the child made: perf, which never saw the
        # fork, cannot name the inherited trampoline (documented; that is what persist is for).
        # perf 7's inject also reads the parent's jitdump, which the child still has mapped, and
        # names it anyway: only map mode, and jit mode with perf 6, depend on persist.
        assert worker.own_share <= 0.10, detail
