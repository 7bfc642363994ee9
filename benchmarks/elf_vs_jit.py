"""elf mode against jit mode (+ perf inject) and map mode (frame-pointer build), side by side in
one run, for programs that make many functions.

    .venvs/dev312/bin/python benchmarks/elf_vs_jit.py [--fp-python PATH] [--workloads 20000,60000,sympy]

Run with an interpreter that has perftramp installed (and sympy, for the sympy workload). The
map+fp variant runs --fp-python (an interpreter built with frame pointers, perftramp and sympy
installed); without it that column is skipped. For each workload and variant it prints:

- wall: seconds from `perf record` starting to a readable `perf report` (the report written);
- after end: seconds from the program's last instruction to that report (record's end work,
  perf inject for jit, perf report);
- side MB: bytes left on disk besides perf.data (images; jitdump + jitted-*.so + perf.jit.data;
  the perf map);
- full: the share of samples with a Python frame whose Python frames reach the script's
  `<module>` (the unwinder walked through every trampoline), from `perf script`; bottom: the
  share whose stack reaches `_start` (or a thread's start). Stacks deeper than perf copies
  (dwarf: 64 KiB, about 60 Python calls; fp: kernel.perf_event_max_stack frames) are cut by
  perf in every mode;
- the number of side files;
and, for N new functions each called once (no perf running), the cost per first call over no
perftramp in map, elf and jit mode.

Every variant records with `-F 249` and `--call-graph dwarf,65528` (fp for map+fp); variants
alternate within a workload so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from perftramp._perfscript import parse_perf_script

ENV = dict(os.environ, DEBUGINFOD_URLS="", PERF_CONFIG="/dev/null")
HZ = "249"

# N distinct functions, each called once (every one gets a trampoline), in a chain a few deep so
# that samples land inside them, then a hot foo <- bar <- baz loop.
MANY = """\
import os, sys, time
n = int(sys.argv[1])
src = []
for i in range(n):
    src.append(f"def f{i}(k):\\n    s = 0\\n    for j in range(k): s += j\\n    return s + {i}\\n")
ns = {}
exec(compile("".join(src), os.path.abspath(__file__) + ".gen", "exec"), ns)
def driver():
    total = 0
    for i in range(n):
        total += ns[f"f{i}"](60)
    return total
driver()
def foo(k):
    s = 0
    for i in range(k):
        s += i * i
    return s
def bar(k): return foo(k)
def baz(k): return bar(k)
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    baz(20000)
open(os.environ["END_FILE"], "w").write(repr(time.time()))
"""

SYMPY = """\
import os, time
import sympy as sp
x, y, z = sp.symbols("x y z")
def algebra():
    e = sp.expand((x + y + z + 1) ** 12)
    sp.factor(sp.expand((x + 1) ** 6 * (y - 2) ** 4))
    return e
def calculus():
    sp.integrate(sp.sin(x) ** 4 * sp.cos(x) ** 3, x)
    sp.integrate(sp.exp(-x ** 2) * x ** 3, (x, 0, sp.oo))
    sp.series(sp.tan(x), x, 0, 14)
    sp.limit((sp.sin(x) - x) / x ** 3, x, 0)
def solving():
    sp.solve([x + y - 3, x - y - 1], [x, y])
    sp.simplify(sp.sin(x) ** 2 + sp.cos(x) ** 2 + sp.exp(sp.log(y)))
    sp.Matrix(4, 4, lambda i, j: sp.Symbol(f"a{i}{j}")).det(method="berkowitz")
algebra(); calculus(); solving()
open(os.environ["END_FILE"], "w").write(repr(time.time()))
"""


# First calls: N new functions, each called once, timed in the process (no perf running).
FIRST = """\
import os, sys, time
n = int(sys.argv[1])
mode = sys.argv[2]
if mode != "off":
    import perftramp
    perftramp.enable(mode, directory=sys.argv[3] if mode != "map" else None)
ns = {}
exec(compile("".join(f"def f{i}(): return {i}\\n" for i in range(n)), "first.py", "exec"), ns)
fs = [ns[f"f{i}"] for i in range(n)]
start = time.perf_counter()
for f in fs:
    f()
print(time.perf_counter() - start, os.getpid())
"""


def first_call_us(python: str, modes: List[str], work: Path, n: int = 20000,
                  rounds: int = 7) -> Dict[str, float]:
    """Microseconds per new function for each mode (minimum over rounds; the modes alternate
    within every round so machine noise hits them alike)."""
    script = work / "first.py"
    script.write_text(FIRST)
    best = {mode: float("inf") for mode in modes}
    for k in range(rounds):
        for mode in modes:
            d = work / f"first-{mode}-{k}"
            d.mkdir()
            out = subprocess.run([python, str(script), str(n), mode, str(d)], capture_output=True,
                                 text=True, env=ENV, check=True).stdout.split()
            best[mode] = min(best[mode], float(out[0]) / n * 1e6)
            Path(f"/tmp/perf-{out[1]}.map").unlink(missing_ok=True)  # this run's map
            shutil.rmtree(d, ignore_errors=True)
    return best


def perf_report(perf: str, data: Path) -> None:
    with open(os.devnull, "w") as sink:
        subprocess.run([perf, "report", "-i", str(data), "--stdio", "--children", "--sort",
                        "dso,symbol", "-g", "none"], stdout=sink, stderr=subprocess.DEVNULL,
                       env=ENV, check=True)


# Where a thread's stack ends: the unwinder reached the bottom.
BOTTOM = {"_start", "__libc_start_main", "__libc_start_main_impl", "__libc_start_call_main",
          "start_thread", "clone3", "__clone3", "clone", "__clone"}


def full_share(perf: str, data: Path, script: Path) -> Tuple[float, float]:
    """Of the samples with a Python frame: the share whose outermost Python frame is the script's
    `<module>` (every Python caller found), and the share that reach the stack's bottom."""
    out = subprocess.run([perf, "script", "-i", str(data)], capture_output=True, text=True,
                         env=ENV).stdout
    module = f"py::<module>:{script}"
    with_python = full = bottom = 0
    for sample in parse_perf_script(out):
        python = [s for s in sample.symbols if s.startswith("py::")]
        if not python:
            continue
        with_python += 1
        full += python[-1] == module  # outermost Python frame: the script itself
        bottom += sample.symbols[-1] in BOTTOM
    return (full / with_python, bottom / with_python) if with_python else (0.0, 0.0)


def size_of(paths: List[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total


def run_variant(perf: str, variant: str, python: str, script: Path, args: List[str],
                work: Path) -> Dict[str, object]:
    work.mkdir()
    data = work / "perf.data"
    end_file = work / "end"
    env = dict(ENV, END_FILE=str(end_file))
    if variant == "elf":
        env.update(PERFTRAMP="elf", PERFTRAMP_DIR=str(work))
        record = ["--call-graph", "dwarf,65528"]
    elif variant == "jit":
        env.update(PERFTRAMP="jit", PERFTRAMP_DIR=str(work))
        record = ["-k", "1", "--call-graph", "dwarf,65528"]
    else:
        env.update(PERFTRAMP="map")
        record = ["-g", "--call-graph", "fp"]
    start = time.time()
    proc = subprocess.run([perf, "record", "-q", "-F", HZ, "-m", "16M", *record, "-o", str(data),
                           "--", python, str(script), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not end_file.exists():
        raise SystemExit(f"{variant}: perf record failed:\n{proc.stderr[-2000:]}")
    readable = data
    if variant == "jit":
        readable = work / "perf.jit.data"
        subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(readable)],
                       capture_output=True, env=ENV, check=True)
    perf_report(perf, readable)
    done = time.time()
    ended = float(end_file.read_text())
    end_file.unlink()
    side = [p for p in work.iterdir() if p.name != "perf.data"]
    maps = [Path(f"/tmp/perf-{pid}.map") for pid in pids_of(perf, data)]
    side += [m for m in maps if m.exists()]
    files = sum(1 for p in work.rglob("*") if p.is_file()) - 1 + sum(m.exists() for m in maps)
    shares = full_share(perf, readable, script)
    result = {
        "wall": done - start,
        "after": done - ended,
        "side": size_of(side),
        "files": files,
        "full": shares[0],
        "bottom": shares[1],
    }
    for m in maps:
        if m.exists():
            m.unlink()
    return result


def pids_of(perf: str, data: Path) -> List[int]:
    out = subprocess.run([perf, "script", "-F", "pid", "-i", str(data)], capture_output=True,
                         text=True, env=ENV).stdout
    return sorted({int(line) for line in out.split() if line.isdigit()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp-python", help="an interpreter built with frame pointers, for map+fp")
    parser.add_argument("--workloads", default="20000,60000,sympy")
    parser.add_argument("--perf", default=shutil.which("perf") or "perf")
    args = parser.parse_args()
    variants = ["elf", "jit"] + (["map+fp"] if args.fp_python else [])
    root = Path(tempfile.mkdtemp(prefix="perftramp-elfbench-"))
    version = sys.version.split()[0]
    perf_version = subprocess.run([args.perf, "version"], capture_output=True, text=True).stdout.strip()
    print(f"CPython {version}, {perf_version}; -F {HZ}; map+fp runs {args.fp_python or '(skipped)'}")
    header = (f"{'workload':<14} {'variant':<7} {'wall s':>7} {'after end s':>11} {'side MB':>9} "
              f"{'side files':>10} {'full':>7} {'bottom':>7}")
    print(header)
    print("-" * len(header))
    for workload in args.workloads.split(","):
        script = root / f"workload_{workload}.py"  # not sympy.py: it would shadow sympy
        script.write_text(SYMPY if workload == "sympy" else MANY)
        script_args = [] if workload == "sympy" else [workload]
        results: Dict[str, Dict[str, object]] = {}
        for variant in variants:
            python = args.fp_python if variant == "map+fp" else sys.executable
            results[variant] = run_variant(args.perf, variant, python, script, script_args,
                                           root / f"{workload}-{variant}")
        for variant, r in results.items():
            print(f"{workload:<14} {variant:<7} {r['wall']:>7.1f} {r['after']:>11.2f} "
                  f"{r['side'] / 1e6:>9.1f} {r['files']:>10} {r['full']:>7.1%} {r['bottom']:>7.1%}")
        elf, jit = results["elf"], results["jit"]
        print(f"{workload:<14} jit/elf {jit['wall'] / elf['wall']:>7.1f}x "  # type: ignore[operator]
              f"{jit['after'] / elf['after']:>10.1f}x {jit['side'] / max(1, elf['side']):>8.1f}x "  # type: ignore[operator]
              f"{jit['files'] / max(1, elf['files']):>9.1f}x")  # type: ignore[operator]
        shutil.rmtree(root / f"{workload}-jit", ignore_errors=True)
    # Cost per new function (first call), against no perftramp: elf must not cost more than map.
    times = first_call_us(sys.executable, ["off", "map", "elf", "jit"], root)
    costs = {mode: times[mode] - times["off"] for mode in ("map", "elf", "jit")}
    print("first call of a new function, us over no perftramp (20,000 functions, min of 7): "
          + ", ".join(f"{mode} {cost:.2f}" for mode, cost in costs.items())
          + f"; elf/map {costs['elf'] / costs['map']:.2f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
