"""Turning perftramp on and off, repeatedly and from many threads at once, while Python code runs.

Every loop is bounded, so the module runs in a few seconds.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import traceback

import pytest

import perftramp

TOGGLERS = 8
TOGGLES_EACH = 200
WORKERS = 4
MAX_WORKER_ROUNDS = 20_000


@pytest.fixture(autouse=True)
def perftramp_off_afterwards():
    perftramp.disable()
    yield
    perftramp.disable()
    assert not perftramp.is_enabled()


@pytest.fixture
def fast_thread_switching():
    """Switch threads as often as CPython allows, to interleave enable/disable with calls."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def trampolines() -> int:
    return perftramp.status().trampolines


def assert_state(enabled: bool) -> None:
    """is_enabled() and status() agree with each other and with `enabled`."""
    status = perftramp.status()
    assert perftramp.is_enabled() is enabled
    assert status.enabled is enabled
    assert status.mode == "map"
    assert status.pid == os.getpid()
    assert status.perf_map_path == f"/tmp/perf-{os.getpid()}.map"
    assert status.errors == ()
    assert status.executable_bytes_used <= status.executable_bytes


def run_threads(targets):
    """Start one thread per callable, join them all, and re-raise the first failure with context."""
    failures = []

    def guarded(target):
        try:
            target()
        except BaseException:  # noqa: BLE001 - reported below, with the thread's traceback
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert not failures, f"{len(failures)} thread(s) failed; first:\n{failures[0]}"


def compile_module(source: str, filename: str) -> dict:
    namespace = {"__name__": "perftramp_threads_fresh"}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


def map_name(qualname: str, filename: str) -> str:
    """The name perftramp writes; 3.9/3.10 code objects have no qualname, so co_name is used."""
    if sys.version_info < (3, 11):
        qualname = qualname.rsplit(".", 1)[-1]
    return f"py::{qualname}:{filename}"


def perf_map_entries(path: str):
    """(address, size, name) of each record; blank lines are unused, preallocated space."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if line:
                address, size, name = line.split(" ", 2)
                entries.append((int(address, 16), int(size, 16), name))
    return entries


def executable_ranges():
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            addresses, perms = line.split()[:2]
            if "x" in perms:
                start, end = (int(part, 16) for part in addresses.split("-"))
                ranges.append((start, end))
    return ranges


# --- a workload with exactly known results -------------------------------------------------------


class Matrix:
    def __init__(self, rows):
        self.rows = rows

    def __matmul__(self, other):
        cols = list(zip(*other.rows))
        return Matrix([[sum(a * b for a, b in zip(row, col)) for col in cols] for row in self.rows])

    def trace(self):
        return sum(self.rows[i][i] for i in range(len(self.rows)))


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def primes_below(n):
    for candidate in range(2, n):
        if all(candidate % d for d in range(2, int(candidate**0.5) + 1)):
            yield candidate


def checked_division(a, b):
    try:
        return a // b
    except ZeroDivisionError as exc:
        return f"caught {type(exc).__name__}"
    finally:
        pass


def accumulate():
    total = 0
    while True:
        value = yield total
        if value is None:
            return total
        total += value


def work_unit(i):
    """Calls, recursion, generators (send/StopIteration.value), exceptions: one exact result."""
    gen = accumulate()
    next(gen)
    for value in range(i):
        gen.send(value)
    try:
        gen.send(None)
    except StopIteration as stop:
        sent_total = stop.value
    try:
        raise KeyError(i)
    except KeyError as exc:
        message = repr(exc)
    m = Matrix([[i, 1], [2, 3]])
    return (
        fib(10 + i % 5),
        list(primes_below(20 + i)),
        sent_total,
        message,
        checked_division(i, i % 3),
        (m @ m).trace(),
    )


def fresh_function(k):
    """A new code object on every call, so trampolines get made (the cold path) while others toggle."""
    namespace = {}
    exec(compile(f"def fresh_{k}(x):\n    return x * {k} + 1\n", f"<fresh-{k}>", "exec"), namespace)
    return namespace[f"fresh_{k}"]


# --- tests ---------------------------------------------------------------------------------------


def test_enable_disable_enable_in_one_process():
    def first(x):
        return x + 1

    def while_off(x):
        return x * 2

    def after_reenable(x):
        return x * 3

    perftramp.enable()
    assert_state(True)
    before = trampolines()
    assert first(1) == 2
    made = trampolines()
    assert made > before
    perftramp.enable()  # enabling again is a no-op
    perftramp.enable("perf")  # so is the alias
    assert_state(True)

    perftramp.disable()
    assert_state(False)
    perftramp.disable()  # a no-op too
    assert_state(False)
    off_count = trampolines()
    assert while_off(2) == 4 and first(1) == 2
    assert trampolines() == off_count, "trampolines were made while perftramp was off"

    perftramp.enable()
    assert_state(True)
    assert after_reenable(3) == 9 and first(2) == 3
    assert trampolines() > off_count

    with perftramp.enabled() as status:  # nested in an enabled state: leaves it enabled
        assert status.enabled
    assert_state(True)
    perftramp.disable()
    with perftramp.enabled():
        assert_state(True)
    assert_state(False)


def test_concurrent_enable_and_disable_while_python_runs(fast_thread_switching):
    expected = [work_unit(i) for i in range(10)]  # perftramp off
    before = trampolines()
    togglers_done = threading.Event()
    remaining_togglers = [TOGGLERS]
    lock = threading.Lock()
    barrier = threading.Barrier(TOGGLERS + WORKERS)
    rounds = []

    def toggler():
        barrier.wait()
        try:
            for n in range(TOGGLES_EACH):
                perftramp.enable()
                assert isinstance(perftramp.is_enabled(), bool)
                assert checked_division(n, 0) == "caught ZeroDivisionError"
                assert work_unit(n % len(expected)) == expected[n % len(expected)]
                if n % 50 == 0:
                    perftramp.status()
                perftramp.disable()
        finally:
            with lock:
                remaining_togglers[0] -= 1
                if remaining_togglers[0] == 0:
                    togglers_done.set()

    def worker(offset):
        barrier.wait()
        done = 0
        while not togglers_done.is_set() and done < MAX_WORKER_ROUNDS:
            i = (offset + done) % len(expected)
            got = work_unit(i)
            assert got == expected[i], f"work_unit({i}) = {got!r}, expected {expected[i]!r}"
            assert fresh_function(done)(offset) == offset * done + 1
            done += 1
        rounds.append(done)

    run_threads([toggler] * TOGGLERS + [lambda k=k: worker(k) for k in range(WORKERS)])

    # Every thread's last call was disable(), so whichever ran last left perftramp off.
    assert_state(False)
    assert len(rounds) == WORKERS and all(r > 0 for r in rounds)
    assert trampolines() > before, "no trampoline was made while the togglers had it on"
    # Still exact, with perftramp off and then on (cold and warm code objects alike).
    assert [work_unit(i) for i in range(10)] == expected
    with perftramp.enabled():
        assert [work_unit(i) for i in range(10)] == expected


def test_new_functions_after_toggling_get_trampolines_and_perf_map_names(tmp_path):
    for _ in range(3):  # leave a toggled history behind, as in a long-running process
        perftramp.enable()
        perftramp.disable()
    filename = str(tmp_path / "fresh_module.py")
    namespace = compile_module(
        """
        def top_level(n):
            return sum(Fresh().compute(k) for k in range(n))

        class Fresh:
            def compute(self, k):
                def inner(x):
                    return x * x
                return inner(k) + 1

        def on_thread(results, n):
            results.append(top_level(n))
        """,
        filename,
    )
    perftramp.enable()
    assert_state(True)
    before = trampolines()
    results = []
    assert namespace["top_level"](4) == 18
    run_threads([lambda: namespace["on_thread"](results, 5)] * 2)
    assert results == [35, 35]
    assert trampolines() >= before + 5  # top_level, <genexpr>, compute, inner, on_thread

    expected = {
        map_name(qualname, filename)
        for qualname in (
            "top_level",
            "top_level.<locals>.<genexpr>",
            "Fresh.compute",
            "Fresh.compute.<locals>.inner",
            "on_thread",
        )
    }
    path = perftramp.status().perf_map_path
    # Readable while enabled (after unused, preallocated space) and after disable (trimmed).
    entries_while_on = perf_map_entries(path)
    perftramp.disable()
    assert_state(False)
    entries = perf_map_entries(path)
    assert entries[: len(entries_while_on)] == entries_while_on
    ours = {name: (address, size) for address, size, name in entries if name.endswith(filename)}
    assert set(ours) == expected
    executable = executable_ranges()
    for name, (address, size) in ours.items():
        assert size > 0
        assert any(start <= address and address + size <= end for start, end in executable), name
    # Each code object has its own trampoline.
    assert len({address for address, _ in ours.values()}) == len(expected)
