"""Run CPython's own regression tests with perftramp enabled in every process, and without it,
and compare the results test case by test case.

    python scripts/cpython_regrtest.py [--mode map|jit] [--quick] [-- test_names...]

Run it with an interpreter that has perftramp installed (and CPython's test package). perftramp
is enabled through the environment (PERFTRAMP=<mode>, read by perftramp.pth at startup), so the
regrtest driver and every worker process it starts run with it. Exit status 0 when both runs
give the same outcome for every test case.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple

# What the hook touches: frames, generators and coroutines, exceptions and tracebacks,
# tracing/profiling, threads, recursion, scopes, signals.
FULL = [
    "test_generators", "test_coroutines", "test_asyncgen", "test_exceptions", "test_traceback",
    "test_sys_settrace", "test_sys_setprofile", "test_frame", "test_threading", "test_contextlib",
    "test_contextlib_async", "test_scope", "test_sys", "test_yield_from", "test_raise",
    "test_with", "test_inspect", "test_functools", "test_signal", "test_pdb", "test_bdb",
    "test_weakref", "test_gc", "test_class", "test_descr", "test_exception_group",
    "test_generator_stop", "test_thread", "test_threading_local", "test_keywordonlyarg",
    "test_dynamic", "test_extcall", "test_unpack_ex", "test_asyncio.test_tasks",
]
# test_threading is left out of the quick set: its timing-dependent tests hang now and then on a
# loaded 2-core machine with or without perftramp (test_print_exception_gh_102056 relies on an
# interrupt arriving within an exponential recursion), costing a whole per-test timeout.
QUICK = [
    "test_generators", "test_coroutines", "test_asyncgen", "test_exceptions", "test_traceback",
    "test_sys_settrace", "test_frame", "test_thread", "test_contextlib", "test_scope",
    "test_sys", "test_yield_from", "test_raise", "test_inspect",
]

Outcomes = Dict[str, str]


def names_test_code(path: str) -> bool:
    """Whether a perf map that appeared during the runs was written by one of their processes:
    it names code of this interpreter's standard library (every process started from it runs
    some: site.py goes on after the start hook enabled perftramp). Other processes may write
    maps meanwhile (scripts/test.sh runs a stream of tests with other interpreters beside this
    one), and deleting theirs made perf name none of their samples. Maps that name only frozen
    modules and `-c` code (3.11+ freezes site.py) cannot be told apart and are left in /tmp
    (about 70 a run): harmless, perftramp replaces a stale map of a reused pid."""
    marker = f":{sysconfig.get_paths()['stdlib']}/"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return any(marker in line for line in f)
    except OSError:
        return False


def run(tests: List[str], env: Dict[str, str], xml: Path) -> Tuple[Outcomes, float, int]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "test", "-q", "-j2", "--timeout", "300",
         "--junit-xml", str(xml), *tests],
        env=env, capture_output=True, text=True,
    )
    elapsed = time.monotonic() - start
    outcomes: Outcomes = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}.{case.get('name')}"
            kinds = [child.tag for child in case]
            outcome = ("failure" if "failure" in kinds else "error" if "error" in kinds
                       else "skipped" if "skipped" in kinds else "passed")
            outcomes[name] = outcome
    if not outcomes:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    return outcomes, elapsed, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="map", choices=["map", "jit", "both"])
    parser.add_argument("--quick", action="store_true", help="a reduced set (for CI)")
    parser.add_argument("tests", nargs="*")
    args = parser.parse_args()
    tests = args.tests or (QUICK if args.quick else FULL)
    try:
        import perftramp  # noqa: F401
    except ImportError:
        print(f"perftramp is not installed in {sys.executable}", file=sys.stderr)
        return 2

    before = set(glob.glob("/tmp/perf-*.map"))
    with tempfile.TemporaryDirectory() as tmp:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PERFTRAMP")}
        on_env = dict(base_env, PERFTRAMP=args.mode, PERFTRAMP_DIR=tmp)
        off, off_s, off_rc = run(tests, base_env, Path(tmp, "off.xml"))
        on, on_s, on_rc = run(tests, on_env, Path(tmp, "on.xml"))
        dumps = len(glob.glob(os.path.join(tmp, "jit-*.dump")))
        # CPython's own perf trampoline (3.12+) is an eval hook too: a difference it shows as
        # well comes from hooking the evaluator at all, not from perftramp.
        builtin: Outcomes = {}
        if hasattr(sys, "activate_stack_trampoline"):
            builtin, _, _ = run(tests, dict(base_env, PYTHONPERFSUPPORT="1"), Path(tmp, "builtin.xml"))
    maps = {path for path in set(glob.glob("/tmp/perf-*.map")) - before if names_test_code(path)}
    for path in maps:  # the runs' own maps
        os.unlink(path)

    version = sys.version.split()[0]
    print(f"CPython {version}: {len(tests)} test modules, perftramp mode {args.mode}")
    print(f"  without perftramp: {len(off)} cases in {off_s:.0f} s (exit {off_rc})")
    print(f"  with perftramp:    {len(on)} cases in {on_s:.0f} s (exit {on_rc}); "
          f"{len(maps)} perf maps, {dumps} jitdumps written by the test processes")
    if not off or not on:
        print("  FAIL: a run produced no results")
        return 1
    if (args.mode in ("map", "both") and not maps) or (args.mode in ("jit", "both") and not dumps):
        print("  FAIL: perftramp was not enabled in the test processes (no files written)")
        return 1
    differences = sorted(
        (name, off.get(name, "missing"), on.get(name, "missing"))
        for name in set(off) | set(on) if off.get(name) != on.get(name)
    )
    shared = [d for d in differences if builtin and builtin.get(d[0], "missing") == d[2]]
    ours = [d for d in differences if d not in shared]
    counts = {k: sum(v == k for v in on.values()) for k in ("passed", "failure", "error", "skipped")}
    print(f"  with perftramp: {counts}")
    if shared:
        print(f"  {len(shared)} test cases differ exactly as with CPython's own -X perf "
              "(any eval hook does this on this version):")
        for name, a, b in shared[:50]:
            print(f"    {name}: {a} -> {b}")
    if ours:
        print(f"  FAIL: {len(ours)} test cases differ with perftramp only (off -> on):")
        for name, a, b in ours[:50]:
            print(f"    {name}: {a} -> {b}")
        return 1
    print("  no difference of perftramp's own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
