"""perftramp's jit mode against CPython's own `-X perf_jit`, side by side in one run.

    .venvs/3.13.0/bin/python benchmarks/jit_vs_cpython.py [--rounds 3]

Run with an interpreter that has perftramp installed and `-X perf_jit` (CPython 3.13+). Prints:
- the share of samples containing py::foo whose stack also has py::bar and py::baz, in order
  (perf record -k 1 --call-graph dwarf,65528, perf inject --jit, perf script);
- `perf inject --jit` seconds per 10,000 trampolines (10,000 distinct functions called once
  each), minimum over the rounds, and the ratio.
Variants alternate within each round so machine noise hits both alike.
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

from perftramp._perfscript import has_chain, parse_perf_script

ENV = dict(os.environ, DEBUGINFOD_URLS="", PERF_CONFIG="/dev/null")

STACKS = """\
import sys, time
if sys.argv[1] == "perftramp":
    import perftramp
    perftramp.enable("jit", directory=sys.argv[2])
def foo(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
def bar(n): return foo(n)
def baz(n): return bar(n)
deadline = time.monotonic() + 2.0
while time.monotonic() < deadline:
    baz(20000)
"""

MANY = """\
import os, sys
open(os.path.join(sys.argv[2], "pid"), "w").write(str(os.getpid()))
if sys.argv[1] == "perftramp":
    import perftramp
    perftramp.enable("jit", directory=sys.argv[2])
src = "\\n".join(f"def f{i}(): return {i}" for i in range(10000))
ns = {}
exec(compile(src, "many.py", "exec"), ns)
assert sum(ns[f"f{i}"]() for i in range(10000)) == sum(range(10000))
"""


def command(variant: str, script: Path, workdir: Path) -> list:
    if variant == "perftramp":
        return [sys.executable, str(script), "perftramp", str(workdir)]
    # CPython 3.13 writes its jitdump to /tmp/jit-<pid>.dump whatever the directory.
    return [sys.executable, "-X", "perf_jit", str(script), "cpython", str(workdir)]


def record(variant: str, script: Path, workdir: Path, call_graph: str) -> Path:
    data = workdir / "perf.data"
    subprocess.run(
        ["perf", "record", "-q", "-F", "999", "-k", "1", "-g", f"--call-graph={call_graph}",
         "-o", str(data), "--", *command(variant, script, workdir)],
        check=True, env=ENV, cwd=str(workdir), capture_output=True,
    )
    return data


def inject(data: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["perf", "inject", "--jit", "-i", str(data), "-o", str(data) + ".jit"],
                   check=True, env=ENV, cwd=str(data.parent), capture_output=True)
    return time.perf_counter() - start


def full_stack_share(variant: str, tmp: Path) -> float:
    workdir = Path(tempfile.mkdtemp(dir=tmp))
    script = workdir / "stacks.py"
    script.write_text(STACKS)
    data = record(variant, script, workdir, "dwarf,65528")
    inject(data)
    out = subprocess.run(["perf", "script", "-i", str(data) + ".jit"], env=ENV, cwd=str(workdir),
                         capture_output=True, text=True, check=True).stdout
    chain = [f"py::{q}:{script}" for q in ("foo", "bar", "baz")]
    with_foo = [s for s in parse_perf_script(out) if chain[0] in s.symbols]
    shutil.rmtree(workdir)
    return sum(has_chain(s.symbols, chain) for s in with_foo) / max(1, len(with_foo))


def inject_seconds(variant: str, tmp: Path) -> float:
    workdir = Path(tempfile.mkdtemp(dir=tmp))
    script = workdir / "many.py"
    script.write_text(MANY)
    data = record(variant, script, workdir, "dwarf,4096")
    seconds = inject(data)
    pid = (workdir / "pid").read_text()
    dump_dir = workdir if variant == "perftramp" else Path("/tmp")
    jitted = list(dump_dir.glob(f"jitted-{pid}-*.so"))
    for leftover in jitted + [dump_dir / f"jit-{pid}.dump"]:
        leftover.unlink(missing_ok=True)
    shutil.rmtree(workdir)
    jitted = len(jitted)
    if jitted < 10000:
        raise SystemExit(f"{variant}: perf inject wrote only {jitted} jitted files")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if sys.version_info < (3, 13):
        raise SystemExit("needs CPython 3.13+ (for -X perf_jit)")
    variants = ("perftramp", "cpython")
    shares = {v: [] for v in variants}
    injects = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for v in variants:
                shares[v].append(full_stack_share(v, Path(tmp)))
                injects[v].append(inject_seconds(v, Path(tmp)))
    print(f"CPython {sys.version.split()[0]}, {args.rounds} rounds, perf {subprocess.run(['perf', '--version'], capture_output=True, text=True).stdout.split()[-1]}")
    print(f"{'':32}{'perftramp jit':>16}{'-X perf_jit':>16}{'ratio':>8}")
    lo = {v: min(shares[v]) for v in variants}
    print(f"{'full foo<-bar<-baz stacks (min)':32}{lo['perftramp']:>16.1%}{lo['cpython']:>16.1%}")
    best = {v: min(injects[v]) for v in variants}
    print(f"{'perf inject s / 10k trampolines':32}{best['perftramp']:>16.2f}{best['cpython']:>16.2f}"
          f"{best['perftramp'] / best['cpython']:>8.2f}")


if __name__ == "__main__":
    main()
