"""Deep recursion with perftramp on: with any eval hook, every Python call uses C stack (3.11+
stop inlining Python-to-Python calls; 3.9/3.10 always did). Whatever the recursion limit, the
program ends in success or RecursionError, never a crash, on the main thread (8 MiB stack),
in a thread with a 256 KiB stack, through generators, coroutines and C-level recursion, and
it keeps working after the RecursionError."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

PRELUDE = r"""
import os, sys, threading
import perftramp

MODE, LIMIT, WHERE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f'PID={os.getpid()}', flush=True)
if MODE != 'off':
    perftramp.enable(MODE, **({'directory': sys.argv[4]} if MODE != 'map' else {}))

def outcome(fn, *args):
    try:
        return ('ok', fn(*args))
    except RecursionError as err:
        return ('RecursionError', str(err)[:160])

def run(body):
    # body() runs with the limit raised, on the main thread or in a 256 KiB thread; returns
    # a list of (what, outcome) pairs.
    sys.setrecursionlimit(LIMIT)
    result = []
    if WHERE == 'main':
        result.extend(body())
    else:
        threading.stack_size(256 * 1024)
        t = threading.Thread(target=lambda: result.extend(body()))
        t.start()
        t.join()
    sys.setrecursionlimit(1000)
    for what, (kind, detail) in result:
        print(what, kind, detail, flush=True)
    # The interpreter still works normally afterwards.
    def small(n): return 0 if n == 0 else small(n - 1) + 1
    assert small(500) == 500
    print('END', flush=True)
"""

BODIES = {
    "plain": """
        def rec(n):
            return 0 if n == 0 else rec(n - 1) + 1
        def body():
            depth = LIMIT - 100
            first = outcome(rec, depth)
            if first[0] == 'ok':
                assert first[1] == depth, first
            # After a RecursionError, recursing again (deep and shallow) still works.
            again = outcome(rec, depth)
            shallow = outcome(rec, 200)
            assert shallow == ('ok', 200), shallow
            return [('rec', first), ('again', again), ('shallow', shallow)]
        run(body)
    """,
    "probe": """
        # Find the depth limit by catching RecursionError at the bottom (real code does this),
        # then call more functions from the deepest frames.
        def probe(n):
            try:
                return probe(n + 1)
            except RecursionError:
                return n
        def helper(x): return x + 1
        def probe_and_call(n):
            try:
                return probe_and_call(n + 1)
            except RecursionError:
                try:
                    return helper(n)
                except RecursionError:
                    return -n
        def body():
            return [('probe', outcome(probe, 0)), ('probe_and_call', outcome(probe_and_call, 0))]
        run(body)
    """,
    "generator": """
        def gen(n):
            if n:
                yield from gen(n - 1)
            else:
                yield 'bottom'
        def drive(depth):
            g = gen(depth)
            value = next(g)
            assert value == 'bottom'
            return value
        def body():
            depth = LIMIT - 100
            return [('yield_from', outcome(drive, depth)), ('again', outcome(drive, 300))]
        run(body)
    """,
    "coroutine": """
        async def co(n):
            return (await co(n - 1)) + 1 if n else 0
        def drive(depth):
            c = co(depth)
            try:
                c.send(None)
            except StopIteration as stop:
                assert stop.value == depth
                return stop.value
            finally:
                c.close()
            raise AssertionError('coroutine did not finish')
        def body():
            depth = LIMIT - 100
            return [('await', outcome(drive, depth)), ('again', outcome(drive, 300))]
        run(body)
    """,
    "through_c": """
        # Python -> C (map, sorted's key, __getattr__) -> Python, deeply.
        def via_map(n):
            return 0 if n == 0 else list(map(via_map, [n - 1]))[0] + 1
        class Deep:
            def __init__(self, n): self.n = n
            def __getattr__(self, name):
                return 0 if self.n == 0 else getattr(Deep(self.n - 1), name) + 1
        def via_key(n):
            return 0 if n == 0 else sorted([n], key=lambda x: via_key(x - 1))[0] and via_key(n - 1) + 1
        def body():
            depth = LIMIT - 100
            return [('map', outcome(via_map, depth)), ('getattr', outcome(lambda d: getattr(Deep(d), 'x'), depth // 2)),
                    ('again', outcome(via_map, 100))]
        run(body)
    """,
    "generator_teardown": """
        # A deep chain of suspended generators, then dropped: closing it recurses in C and
        # throws GeneratorExit into every frame.
        def gen(n):
            if n:
                yield from gen(n - 1)
            else:
                yield 'bottom'
        def build_and_drop(depth):
            g = gen(depth)
            assert next(g) == 'bottom'
            del g
            return 'dropped'
        def body():
            return [('teardown', outcome(build_and_drop, LIMIT - 1000))]
        run(body)
    """,
}

CASES = [
    # (body, recursion limit, where)
    ("plain", 50_000, "main"),
    ("plain", 200_000, "main"),
    ("plain", 50_000, "thread256k"),
    ("plain", 200_000, "thread256k"),
    ("probe", 50_000, "main"),
    ("probe", 200_000, "thread256k"),
    ("generator", 50_000, "main"),
    ("generator", 200_000, "main"),
    ("generator", 50_000, "thread256k"),
    ("coroutine", 50_000, "main"),
    ("coroutine", 200_000, "thread256k"),
    ("through_c", 50_000, "main"),
    ("through_c", 50_000, "thread256k"),
    ("generator_teardown", 50_000, "main"),
]


def _run(tmp_path, body: str, mode: str, limit: int, where: str, stack: int = 8 << 20):
    script = tmp_path / f"deep_{body}.py"
    script.write_text(PRELUDE + textwrap.dedent(BODIES[body]))

    def limits():
        resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    proc = subprocess.run([sys.executable, str(script), mode, str(limit), where, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limits,
                          cwd=str(tmp_path))
    return proc


def _describe(proc) -> str:
    code = proc.returncode
    died = f" (killed by {signal.Signals(-code).name})" if code < 0 else ""
    return f"exit {code}{died}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("body,limit,where", CASES, ids=[f"{b}-{l}-{w}" for b, l, w in CASES])
def test_deep_recursion_ends_in_success_or_recursion_error(tmp_path, body, limit, where):
    proc = _run(tmp_path, body, "map", limit, where)
    try:
        assert proc.returncode == 0, _describe(proc)
        assert "END" in proc.stdout, _describe(proc)
        assert "Fatal Python error" not in proc.stderr, _describe(proc)
        for line in proc.stdout.splitlines():
            if line != "END" and not line.startswith(("PID=",)):
                assert " ok " in f" {line} " or " RecursionError " in f" {line} ", line
    finally:
        _cleanup_maps(proc)
    print(proc.stdout)


def _cleanup_maps(proc):
    match = re.search(r"^PID=(\d+)$", proc.stdout, re.M)
    if match:
        try:
            os.unlink(f"/tmp/perf-{match.group(1)}.map")
        except OSError:
            pass


@pytest.mark.parametrize("where", ["main", "thread256k"])
def test_deep_recursion_in_jit_mode(tmp_path, where):
    proc = _run(tmp_path, "plain", "jit", 200_000, where)
    _cleanup_maps(proc)
    assert proc.returncode == 0, _describe(proc)
    assert "END" in proc.stdout, _describe(proc)


def test_teardown_of_deep_generator_chain_is_no_worse_than_without_perftramp(tmp_path):
    """Dropping a deep chain of suspended generators recurses in C inside CPython (gen_close),
    where no Python frame starts and perftramp's guard cannot help: with perftramp on, the
    result must be the same as without it (on these interpreters: fine)."""
    results = {}
    for mode in ("off", "map"):
        proc = _run(tmp_path, "generator_teardown", mode, 101_000, "main")
        results[mode] = proc.returncode
        _cleanup_maps(proc)
    assert results["map"] == 0 or results["map"] == results["off"], results
