"""read_perf_data (crates/analysis): our own perf.data reader and unwinder, checked against
`perf script` on the same recordings where perf is right (one process, fork pools, perf maps,
jitted code, compressed files), and shown right where perf 6.1 is wrong: the workers of a
'spawn' pool, exec'd processes that map libpython somewhere else than the first process perf
unwound (ASLR on)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Counter, Dict, Tuple

import pytest

from conftest import FOO_BAR_BAZ, PERF_ENV, interpreter_has_frame_pointers, perf_record, py_name
from perftramp._perfscript import iter_raw_samples

read_perf_data = pytest.importorskip("perftramp._perftramp").read_perf_data

pytestmark = pytest.mark.perf

Key = Tuple[int, Tuple[Tuple[str, str], ...]]


def ours(data: Path) -> Tuple[Counter, dict]:
    """(pid, frames outermost first) -> samples, and the info dict."""
    stacks, info = read_perf_data(str(data))
    counts: Counter = collections.Counter()
    for count, pid, _comm, frames, _event, _weight in stacks:
        counts[(pid, tuple(frames))] += count
    assert sum(counts.values()) == info["samples"]
    return counts, info


def perf_scripts(perf: str, data: Path) -> Counter:
    """The same, from `perf script` as perftramp's report read it before."""
    proc = subprocess.run([perf, "script", "-F", "comm,pid,tid,ip,sym,dso", "--no-inline",
                           "-i", str(data)], capture_output=True, text=True,
                          env=dict(os.environ, **PERF_ENV))
    assert proc.returncode == 0, proc.stderr
    counts: Counter = collections.Counter()
    for sample in iter_raw_samples(proc.stdout.splitlines()):
        counts[(sample.pid, tuple(reversed(sample.frames)))] += 1
    return counts


def agreement(a: Counter, b: Counter) -> float:
    """Share of samples whose whole stack (every frame's symbol and dso) is the same."""
    total = sum(b.values())
    return sum((a & b).values()) / total if total else 0.0


def agreement_innermost(a: Counter, b: Counter) -> float:
    """Share of `b`'s samples whose stack is the innermost part of one of `a`'s (same pid):
    where perf stops early and we go on."""
    left = collections.Counter(a)
    matched = 0
    for (pid, frames), n in sorted(b.items(), key=lambda item: -len(item[0][1])):
        for key in list(left):
            if n == 0:
                break
            other_pid, other = key
            if other_pid == pid and len(other) >= len(frames) and \
                    (not frames or other[len(other) - len(frames):] == frames):
                take = min(n, left[key])
                left[key] -= take
                n -= take
                matched += take
                if not left[key]:
                    del left[key]
    total = sum(b.values())
    return matched / total if total else 0.0


def has_chain(frames, chain) -> bool:
    """Whether the names of `chain` (outermost first) are on the stack in that order."""
    symbols = [symbol for symbol, _ in frames]
    position = 0
    for name in chain:
        try:
            position = symbols.index(name, position) + 1
        except ValueError:
            return False
    return True


def share_with(counts: Counter, name: str, pid: int = None) -> Tuple[int, int]:
    """(samples naming `name`, samples) of one process, or of all."""
    hit = total = 0
    for (p, frames), n in counts.items():
        if pid is not None and p != pid:
            continue
        total += n
        if any(symbol == name for symbol, _ in frames):
            hit += n
    return hit, total


@pytest.fixture
def foo_bar_baz(tmp_path: Path) -> Path:
    path = tmp_path / "foo_bar_baz.py"
    path.write_text(FOO_BAR_BAZ)
    return path


@pytest.mark.parametrize("mode, call_graph", [("elf", "dwarf,65528"), ("map", "fp"),
                                              ("map", "dwarf,65528")])
def test_one_process_matches_perf_script(perf, foo_bar_baz, tmp_path, mode, call_graph):
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(foo_bar_baz), mode, "1.0"], call_graph=call_graph)
    mine, info = ours(data)
    theirs = perf_scripts(perf, data)
    names = [py_name(q, str(foo_bar_baz)) for q in ("baz", "bar", "foo")]
    hit, total = share_with(mine, names[-1])
    chains = sum(n for (_, frames), n in mine.items() if has_chain(frames, names))
    same = agreement(mine, theirs)
    innermost = agreement_innermost(mine, theirs)
    print(f"{mode}/{call_graph}: {same:.1%} of {info['samples']} samples have perf script's "
          f"stack, {innermost:.1%} its stack as their innermost part; {names[-1]} on "
          f"{hit}/{total}, the whole baz-bar-foo chain on {chains}")
    if mode == "map" and call_graph.startswith("dwarf"):
        # perf 6.1's libunwind stops at the first perf-map frame (no unwind tables there);
        # framehop goes on through the trampolines' frame pointers: perf's stacks are the
        # innermost part of ours.
        assert innermost >= 0.90
    else:
        assert same >= 0.90
    if call_graph == "fp" and not interpreter_has_frame_pointers():
        return  # frame pointers lost at the first interpreter frame: perf script's stacks too
    assert hit / total >= 0.80
    assert chains / total >= 0.75
    if mode == "map":
        # Anonymous trampolines are named by the process's perf map, with perf's dso name.
        dsos = {dso for (_, frames) in mine for symbol, dso in frames if symbol == names[-1]}
        assert all(d.startswith("/tmp/perf-") and d.endswith(".map") for d in dsos), dsos


def test_jitted_code_from_perf_inject(perf, foo_bar_baz, tmp_path, jit_dir):
    data = tmp_path / "perf.data"
    injected = tmp_path / "perf.jit.data"
    perf_record(perf, data, [sys.executable, str(foo_bar_baz), "jit", "1.0", str(jit_dir)],
                call_graph="dwarf,65528", extra=["-k", "1"])
    subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(injected)], check=True,
                   capture_output=True, env=dict(os.environ, **PERF_ENV))
    mine, info = ours(injected)
    theirs = perf_scripts(perf, injected)
    foo = py_name("foo", str(foo_bar_baz))
    hit, total = share_with(mine, foo)
    dsos = {dso for (_, frames) in mine for symbol, dso in frames if symbol == foo}
    print(f"jit: {agreement(mine, theirs):.1%} as perf script; {foo} on {hit}/{total}; {dsos}")
    assert hit / total >= 0.80
    assert dsos and all(os.path.basename(d).startswith("jitted-") for d in dsos), dsos
    assert agreement(mine, theirs) >= 0.90


def test_fork_pool_matches_perf_script(perf, tmp_path):
    """Forked workers share the parent's libpython address: perf is right there, so we must
    agree with it."""
    script = tmp_path / "fork_pool.py"
    script.write_text(POOL.replace("CONTEXT", "fork"))
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(script), "1.0"], call_graph="dwarf,65528",
                env={"PERFTRAMP": "elf"})
    mine, _ = ours(data)
    theirs = perf_scripts(perf, data)
    same = agreement(mine, theirs)
    print(f"fork pool: {same:.1%} of samples have perf script's stack")
    assert same >= 0.90


# Two workers, each spinning its own function for SECONDS of CPU time; the barrier makes each
# worker take exactly one task. Prints {pid: function} of the workers.
POOL = """\
import json, multiprocessing as mp, os, sys, time
_barrier = None
def init(barrier):
    global _barrier
    _barrier = barrier
def spin_alpha_worker(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i
def spin_beta_worker(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i
def task(which, seconds):
    _barrier.wait()
    function = spin_alpha_worker if which == 0 else spin_beta_worker
    function(seconds)
    return os.getpid(), function.__name__
if __name__ == "__main__":
    ctx = mp.get_context("CONTEXT")
    barrier = ctx.Barrier(2)
    seconds = float(sys.argv[1])
    with ctx.Pool(2, initializer=init, initargs=(barrier,)) as pool:
        print(json.dumps(dict(pool.starmap(task, [(0, seconds), (1, seconds)], chunksize=1))))
"""


def aslr_on() -> bool:
    try:
        return Path("/proc/sys/kernel/randomize_va_space").read_text().strip() != "0"
    except OSError:
        return False


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_spawn_pool_workers_are_named_where_perf_script_loses_them(perf, tmp_path, attempt):
    if not aslr_on():
        pytest.skip("ASLR is off: every process maps libpython at one address")
    script = tmp_path / "spawn_pool.py"
    script.write_text(POOL.replace("CONTEXT", "spawn"))
    data = tmp_path / "perf.data"
    proc = perf_record(perf, data, [sys.executable, str(script), "1.5"],
                       call_graph="dwarf,65528", env={"PERFTRAMP": "elf"})
    workers: Dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(workers) == 2, workers
    mine, info = ours(data)
    theirs = perf_scripts(perf, data)
    report = []
    for pid_text, function in sorted(workers.items()):
        pid = int(pid_text)
        name = py_name(function, str(script))
        hit, total = share_with(mine, name, pid)
        perf_hit, perf_total = share_with(theirs, name, pid)
        report.append((pid, function, hit, total, perf_hit, perf_total))
        print(f"worker {pid} {function}: ours {hit}/{total} = {hit / max(total, 1):.1%}, "
              f"perf script {perf_hit}/{perf_total} = {perf_hit / max(perf_total, 1):.1%}")
    for pid, function, hit, total, _, _ in report:
        assert total >= 500, f"worker {pid} has only {total} samples"
        assert hit / total >= 0.90, report


def test_zstd_compressed_recording(perf, foo_bar_baz, tmp_path):
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(foo_bar_baz), "elf", "0.5"],
                call_graph="dwarf,65528", extra=["-z"])
    mine, info = ours(data)
    theirs = perf_scripts(perf, data)
    assert info["samples"] >= 100
    assert agreement(mine, theirs) >= 0.90


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.data"
    with pytest.raises(OSError) as raised:
        read_perf_data(str(missing))
    assert raised.value.filename == str(missing)

    text = tmp_path / "notes.txt"
    text.write_text("not a recording at all, just some words\n" * 10)
    with pytest.raises(ValueError, match="not a perf.data file") as raised:
        read_perf_data(str(text))
    assert str(text) in str(raised.value)


def test_truncated_recording_is_a_value_error(perf, foo_bar_baz, tmp_path):
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(foo_bar_baz), "elf", "0.3"], call_graph="fp")
    cut = tmp_path / "cut.data"
    raw = data.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as raised:
        read_perf_data(str(cut))
    assert str(cut) in str(raised.value)
