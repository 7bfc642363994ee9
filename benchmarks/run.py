#!/usr/bin/env python3
"""perftramp's overhead against no profiling support and against CPython's own -X perf/-X perf_jit.

    python3 benchmarks/run.py                      # full run, every CPython found (<= 25 min)
    python3 benchmarks/run.py --quick --pythons 3.12   # iteration (<= 5 min)
    python3 benchmarks/run.py --floor --pythons 3.12 3.13  # adds a null eval hook variant
    python3 benchmarks/run.py --compare A.json B.json  # run-to-run spread of two saved runs
    python3 benchmarks/run.py --render A.json      # tables of a saved run again
    bash benchmarks/profile_hook.sh [3.12] [first] # where the time goes (perf record/report)

The time budget (--budget, default 24 min, --quick 4.5) covers the whole run: builds and micro
benchmarks first, then the pyperformance repetitions share what is left (at least 3 each, 2
with --quick). One run at a time (a lock in /tmp/bench-venvs); timing is thread CPU time.

For each interpreter it makes two venvs under /tmp/bench-venvs: `<tag>-plain` (pyperf only: the
"not installed" baseline, and CPython's -X perf/-X perf_jit) and `<tag>-tramp` (pyperf and
`pip install /work/main`, rebuilt only when perftramp's sources changed; CARGO_TARGET_DIR
/tmp/bench-target/<tag>). Variants, all in one run and interleaved (within every repetition
each benchmark runs once per variant, in a shuffled order):

    base      perftramp not installed
    off       perftramp installed, not enabled (its .pth start hook runs and finds no variable)
    perf      python -X perf                  (3.12+, plain venv)
    perf_jit  python -X perf_jit              (3.13+, plain venv)
    map       PERFTRAMP=map                   (started by the .pth hook at interpreter start)
    jit       PERFTRAMP=jit PERFTRAMP_DIR=tmp
    null      (--floor) plain venv + a do-nothing PEP 523 hook (benchmarks/nullhook.c): the cost
              of any eval hook, without trampolines or names; "null hook / -X perf" is the
              lowest ratio to -X perf a hook-based tool can reach

Workloads: pyperformance 1.14 benchmarks (sources from the PyPI wheel), each run as a pyperf
worker process (`run_benchmark.py --worker --loops L --warmups 1 --values V -o x.json`: fixed
loops, no calibration, the -X option applies to the very process measured); and micro
benchmarks (benchmarks/micro.py): ns per call, ns per steady-state mix iteration, us per first
call of a new function, executable bytes per trampoline, enable/disable latency, and
`perf inject --jit` seconds per 10,000 trampolines.

Prints a table per interpreter with PASS/FAIL per target, writes the same as Markdown to
benchmarks/results.md and the raw numbers to /tmp/bench-venvs/results-<time>.json.
(benchmarks/jit_vs_cpython.py separately checks that jit-mode stacks are complete.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import random
import resource
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = Path("/tmp/bench-venvs")
TARGET = Path("/tmp/bench-target")
MICRO = HERE / "micro.py"
CLOCK = HERE / "_clock.py"
RESULTS_MD = HERE / "results.md"
PEERS_POINTER = ("perftramp against py-spy, Austin and CPython's `-X perf` + perf (slowdown, share "
                 "errors, report time, bytes left): docs/peers.md, made by benchmarks/peers.py.")

PYTHONS = [
    "/root/.pyenv/versions/3.9.18/bin/python3",
    "/root/.pyenv/versions/3.10.13/bin/python3",
    "/root/.pyenv/versions/3.11.7/bin/python3",
    "/root/.pyenv/versions/3.12.1/bin/python3",
    "/root/.pyenv/versions/3.13.0/bin/python3",
    "/root/.cache/perftramp/python3.13-fp/bin/python3.13",
]
PYPERFORMANCE = "pyperformance==1.14.0"
PYPERF = "pyperf==2.10.0"

# name: (extra arguments, loops per value, values per process). A value takes ~40-60 ms on 3.12
# here (go and float ~150 ms: no size option): many short values, so that the minimum finds the
# machine's quiet moments.
BENCHMARKS = {
    "richards": ([], 1, 6),
    "deltablue": ([], 12, 6),
    "raytrace": (["--width", "32", "--height", "32"], 1, 6),
    "go": ([], 1, 3),
    "chaos": (["--iterations", "1200"], 1, 6),
    "hexiom": ([], 6, 6),
    "float": ([], 1, 3),
    "nbody": (["--iterations", "8000"], 1, 6),
    "spectral_norm": ([], 1, 3),
    "nqueens": ([], 1, 3),
    "generators": ([], 1, 4),
    "coroutines": ([], 1, 6),
}
FULL_SET = ["richards", "deltablue", "raytrace", "go", "chaos", "hexiom", "float", "nbody"]
QUICK_SET = ["richards", "deltablue", "raytrace", "nbody"]

VARIANT_LABEL = {
    "base": "baseline", "off": "installed, off", "perf": "-X perf", "perf_jit": "-X perf_jit",
    "map": "perftramp map", "jit": "perftramp jit", "null": "null hook",
}
#: Ratio columns between two variants (numerator, denominator) -> label, where both ran.
RATIO_COLUMNS = {
    ("map", "perf"): "map / -X perf", ("jit", "perf_jit"): "jit / -X perf_jit",
    ("null", "perf"): "null hook / -X perf", ("map", "null"): "map / null hook",
}
BENCH_CLOCK = "cpu"  # --clock
PERF_ENV = {"DEBUGINFOD_URLS": "", "PERF_CONFIG": "/dev/null"}

# Thresholds of the targets.
OFF_GEOMEAN_TOL = 0.015   # installed-but-off: |geomean(off/base) - 1| within this ...
OFF_BENCH_TOL = 0.05      # ... and every benchmark within this (single ratios move 2-4% run to run here) ...
OFF_CALL_TOL = 0.08       # ... and the micro call loop and mix within this (a tight loop moves +-4% with the
                          # memory layout, which run.py randomizes per process).
FIRST_CALL_TARGET = 5.0
MAP_BYTES_TARGET = 16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- interpreters and venvs -----------------------------------------------------------------------

class Interp:
    def __init__(self, path: str):
        self.path = path
        info = json.loads(subprocess.run(
            [path, "-c", "import sys, sysconfig, json; fp = '-fno-omit-frame-pointer' in "
             "(sysconfig.get_config_var('CFLAGS') or ''); print(json.dumps([list(sys.version_info[:3]), fp, "
             "hasattr(sys, 'activate_stack_trampoline')]))"],
            check=True, capture_output=True, text=True).stdout)
        self.version = tuple(info[0])
        self.fp = info[1]
        self.tag = ".".join(map(str, self.version)) + ("-fp" if self.fp else "")
        self.has_perf = info[2]
        self.has_perf_jit = info[2] and self.version >= (3, 13)
        self.plain = WORK / f"{self.tag}-plain"
        self.tramp = WORK / f"{self.tag}-tramp"
        self.build_note = ""
        self.has_tramp = False
        #: Directory holding the null eval-frame hook and a sitecustomize that installs it
        #: (--floor), or None.
        self.null_hook: Optional[Path] = None

    def variants(self) -> List[str]:
        out = ["base"]
        if self.has_tramp:
            out.append("off")
        if self.has_perf:
            out.append("perf")
        if self.has_perf_jit:
            out.append("perf_jit")
        if self.null_hook is not None:
            out.append("null")
        if self.has_tramp:
            out += ["map", "jit"]
        return out


def select_pythons(wanted: Optional[List[str]]) -> List[str]:
    present = [p for p in PYTHONS if os.access(p, os.X_OK)]
    if not wanted:
        return present
    out = []
    for w in wanted:
        if os.sep in w:
            out.append(w)
            continue
        hits = [p for p in present if (w == "fp" and "-fp" in p) or
                (f"/{w}" in p and "-fp" not in p) or (w.endswith("-fp") and "-fp" in p and w[:-3] in p)]
        if not hits:
            raise SystemExit(f"run.py: no interpreter matches {w!r} (have: {', '.join(present)})")
        out.append(hits[0])
    return out


def source_hash() -> str:
    h = hashlib.sha256()
    files = [ROOT / n for n in ("Cargo.toml", "Cargo.lock", "build.rs", "pyproject.toml", "perftramp.pth")]
    for d in ("src", "python"):
        files += sorted(p for p in (ROOT / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        if f.exists():
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", *args],
                   check=True, capture_output=True, text=True)


def ensure_venv(interp: Interp, venv: Path) -> None:
    if not (venv / "bin/python").exists():
        subprocess.run([interp.path, "-m", "venv", str(venv)], check=True)
    check = subprocess.run([str(venv / "bin/python"), "-c", "import pyperf"], capture_output=True)
    if check.returncode:
        wheel = sorted((WORK / "dl").glob("pyperf-2.10.0-*.whl"))
        pip(venv, str(wheel[0]) if wheel else PYPERF)


def build_perftramp(interp: Interp, src_hash: str, no_build: bool) -> str:
    """Installs perftramp into the tramp venv if its sources changed; returns a note."""
    marker = interp.tramp / "perftramp-src-hash"
    have = marker.read_text().strip() if marker.exists() else ""
    if have == src_hash or (no_build and have):
        interp.has_tramp = True
        return f"sources {have}" + (" (--no-build)" if have != src_hash else "")
    if no_build:
        return "not installed (--no-build)"
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET / interp.tag))
    t0 = time.monotonic()
    proc = subprocess.run([str(interp.tramp / "bin/python"), "-m", "pip", "install", "-q",
                           "--force-reinstall", "--no-deps", str(ROOT)],
                          capture_output=True, text=True, env=env)
    took = time.monotonic() - t0
    if proc.returncode == 0:
        marker.write_text(src_hash)
        interp.has_tramp = True
        return f"sources {src_hash} (built in {took:.0f} s)"
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    log(f"[{interp.tag}] building perftramp FAILED:\n    " + "\n    ".join(tail))
    if have:
        interp.has_tramp = True
        return f"BUILD FAILED for sources {src_hash}; measuring the previous install (sources {have})"
    return "BUILD FAILED; perftramp variants skipped"


def pyperformance_dir() -> Path:
    base = WORK / "dl"
    tree = base / "pyperformance-src" / "pyperformance" / "data-files" / "benchmarks"
    if tree.is_dir():
        return tree
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(base),
                    PYPERFORMANCE, PYPERF], check=True)
    wheel = sorted(base.glob("pyperformance-1.14.0-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(base / "pyperformance-src")
    return tree


def build_null_hook(interp: Interp) -> Path:
    """Compiles benchmarks/nullhook.c for `interp`, next to a sitecustomize.py that installs it
    at startup (--floor: what any eval hook costs, perftramp's or not)."""
    out = WORK / f"{interp.tag}-nullhook"
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads(subprocess.run(
        [interp.path, "-c", "import sysconfig, json; print(json.dumps([sysconfig.get_paths()['include'], "
         "sysconfig.get_config_var('EXT_SUFFIX')]))"], check=True, capture_output=True, text=True).stdout)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-I", info[0], str(HERE / "nullhook.c"),
                    "-o", str(out / f"_nullhook{info[1]}")], check=True)
    (out / "sitecustomize.py").write_text("import _nullhook\n_nullhook.install()\n")
    return out


def setup(interps: List[Interp], no_build: bool) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    pyperformance_dir()
    src_hash = source_hash()
    for it in interps:
        ensure_venv(it, it.plain)
        ensure_venv(it, it.tramp)
    t0 = time.monotonic()
    # Two builds at a time (two cores; fat LTO links on one).
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        notes = list(pool.map(lambda it: build_perftramp(it, src_hash, no_build), interps))
    for it, note in zip(interps, notes):
        it.build_note = note
    log(f"setup: {time.monotonic() - t0:.0f} s, perftramp sources {src_hash}")
    return src_hash


# --- running one variant --------------------------------------------------------------------------

def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PERFTRAMP") and k not in (
               "PYTHONPERFSUPPORT", "PYTHON_PERF_JIT_SUPPORT", "PYTHONPATH", "PYTHONHOME",
               "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONHASHSEED"] = "0"  # the same for every variant: layout noise hits all alike
    env["BENCH_CLOCK"] = BENCH_CLOCK
    return env


def variant_command(interp: Interp, variant: str, tmp: Path):
    env = clean_env()
    venv = interp.plain if variant in ("base", "perf", "perf_jit", "null") else interp.tramp
    cmd = [str(venv / "bin/python")]
    if variant in ("perf", "perf_jit"):
        cmd += ["-X", variant]
    elif variant == "null":
        env["PYTHONPATH"] = str(interp.null_hook)  # its sitecustomize installs the hook
    elif variant == "map":
        env["PERFTRAMP"] = "map"
    elif variant == "jit":
        env["PERFTRAMP"] = "jit"
        env["PERFTRAMP_DIR"] = str(tmp)
    return cmd, env


def cleanup_pid(pid: int, tmp: Path) -> None:
    """Removes what a finished process of ours left: /tmp/perf-<pid>.map, CPython's
    /tmp/jit-<pid>.dump and jitted-<pid>-*.so, and the variant's jitdump directory content."""
    for p in [Path(f"/tmp/perf-{pid}.map"), Path(f"/tmp/jit-{pid}.dump")]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    for p in Path("/tmp").glob(f"jitted-{pid}-*.so"):
        p.unlink()
    for p in tmp.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


_PAD = random.Random(12345)


def run_variant(interp: Interp, variant: str, args: List[str], cwd: Path, timeout: float = 300,
                allow_crash: bool = False):
    tmp = Path(tempfile.mkdtemp(dir=cwd))
    cmd, env = variant_command(interp, variant, tmp)
    # Layout randomization: a random-size environment variable moves the initial stack (and so
    # the alignment of everything on it) by a different amount in every process, so the minimum
    # over processes samples several layouts for every variant alike instead of letting one
    # lucky or unlucky layout (e.g. the heap shift of the .pth file of the venv with perftramp)
    # decide a tight loop's time. micro.py also shifts its heap by a random amount.
    env["BENCH_PAD"] = "x" * _PAD.randrange(0, 4096)
    proc = subprocess.Popen(cmd + args, env=env, cwd=str(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0 and allow_crash and out.strip():
        return out + json.dumps({"crashed": proc.returncode}) + "\n", proc.pid, tmp
    if proc.returncode != 0:
        cleanup_pid(proc.pid, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"[{interp.tag} {variant}] {' '.join(cmd + args)} exited {proc.returncode}:\n{err[-2000:]}")
    return out, proc.pid, tmp


def finish(pid: int, tmp: Path) -> None:
    cleanup_pid(pid, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


# --- jitdump parsing ------------------------------------------------------------------------------

def jitdump_sizes(path: Path) -> Optional[dict]:
    """code_size of the first CODE_LOAD and mapped_size of the first CODE_UNWINDING_INFO."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 40:
        return None
    header_size = struct.unpack_from("<I", data, 8)[0]
    off = header_size
    out: dict = {}
    while off + 16 <= len(data):
        rid, size = struct.unpack_from("<II", data, off)
        if size == 0:
            break
        if rid == 0 and "code_size" not in out:  # CODE_LOAD: pid tid vma code_addr code_size index
            out["code_size"] = struct.unpack_from("<Q", data, off + 16 + 24)[0]
        if rid == 4 and "unwind_size" not in out:  # CODE_UNWINDING_INFO
            unwinding, hdr, mapped = struct.unpack_from("<QQQ", data, off + 16)
            out["unwind_size"] = mapped
            out["eh_frame_hdr_size"] = hdr
            out["eh_frame_size"] = unwinding - hdr
        if "code_size" in out and "unwind_size" in out:
            break
        off += size
    return out or None


# --- phases ---------------------------------------------------------------------------------------

def run_pyperformance(interp: Interp, benches: List[str], reps: tuple, until: float, cwd: Path,
                      rng: random.Random, between=None) -> dict:
    """Repetitions: at least reps[0], then more while the next one fits before `until` (a
    time.monotonic() deadline), at most reps[1]. `between(rep)` runs after each repetition."""
    tree = pyperformance_dir()
    variants = interp.variants()
    results: dict = {b: {v: [] for v in variants} for b in benches}
    took: List[float] = []
    for rep in range(reps[1]):
        if rep >= reps[0] and time.monotonic() + max(took) > until:
            break
        t0 = time.monotonic()
        for b in benches:
            extra, loops, values = BENCHMARKS[b]
            order = variants[:]
            rng.shuffle(order)
            for v in order:
                out_json = cwd / f"{b}-{v}.json"
                args = [str(CLOCK), str(tree / f"bm_{b}" / "run_benchmark.py"), "--worker", "--worker-task=0",
                        "--loops", str(loops), "--warmups", "1", "--values", str(values),
                        "-q", "-o", str(out_json), *extra]
                _, pid, tmp = run_variant(interp, v, args, cwd)
                finish(pid, tmp)
                data = json.loads(out_json.read_text())
                out_json.unlink()
                vals = [x for run in data["benchmarks"][0]["runs"] for x in run.get("values", [])]
                results[b][v].append(vals)
        if between:
            between(rep)
        took.append(time.monotonic() - t0)
        log(f"[{interp.tag}] pyperformance rep {rep + 1}: {took[-1]:.0f} s "
            f"({max(0, until - time.monotonic()):.0f} s left of its share)")
    return results


def run_micro(interp: Interp, reps: int, cwd: Path, rng: random.Random, quick: bool,
              into: Optional[dict] = None) -> dict:
    """`reps` processes per variant (interleaved), added to `into` if given."""
    variants = interp.variants()
    res: dict = into if into is not None else {}
    for v in variants:
        res.setdefault(v, [])
    extra = ["--repeat", "3", "--batches", "2"] if quick else ["--repeat", "5", "--batches", "3"]
    for rep in range(reps):
        order = variants[:]
        rng.shuffle(order)
        for v in order:
            out, pid, tmp = run_variant(interp, v, [str(MICRO), "calls", *extra], cwd)
            rec = json.loads(out.strip().splitlines()[-1])
            if v == "jit" and rec.get("jitdump"):
                rec["jitdump_sizes"] = jitdump_sizes(Path(rec["jitdump"]))
            finish(pid, tmp)
            res[v].append(rec)
    return res


def run_toggle(interp: Interp, reps: int, cwd: Path) -> dict:
    modes = []
    if interp.has_tramp:
        modes += ["map", "jit"]
    if interp.has_perf:
        modes.append("perf")
    if interp.has_perf_jit:
        modes.append("perf_jit")
    res: dict = {m: [] for m in modes}
    for _ in range(reps):
        for m in modes:
            variant = "off" if m in ("map", "jit") else "base"
            tmp = Path(tempfile.mkdtemp(dir=cwd))
            out, pid, vtmp = run_variant(interp, variant, [str(MICRO), "toggle", m, "--dir", str(tmp)], cwd,
                                         allow_crash=True)
            lines = [json.loads(x) for x in out.strip().splitlines() if x.startswith("{")]
            rec = lines[-1]
            if "crashed" in rec:
                if len(lines) < 2:
                    log(f"[{interp.tag}] toggle {m}: the interpreter crashed (exit {rec['crashed']})")
                    finish(pid, vtmp)
                    continue
                rec = dict(lines[-2], crashed=rec["crashed"])
                log(f"[{interp.tag}] toggle {m}: the interpreter crashed (exit {rec['crashed']}) "
                    f"re-activating; kept the first enable/disable")
            if "unsupported" not in rec:
                res[m].append(rec)
            finish(pid, vtmp)
            cleanup_pid(pid, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def run_inject(interp: Interp, rounds: int, n: int, cwd: Path, rng: random.Random) -> dict:
    """perf inject --jit seconds per 10,000 trampolines: perftramp jit against -X perf_jit."""
    if not shutil.which("perf"):
        return {}
    variants = [v for v in ("jit", "perf_jit") if v in interp.variants()]
    res: dict = {v: [] for v in variants}
    for _ in range(rounds):
        order = variants[:]
        rng.shuffle(order)
        for v in order:
            work = Path(tempfile.mkdtemp(dir=cwd))
            cmd, env = variant_command(interp, v, work)
            env.update(PERF_ENV)
            data = work / "perf.data"
            rec = subprocess.run(["perf", "record", "-q", "-F", "999", "-k", "1", "-g",
                                  "--call-graph=dwarf,4096", "-o", str(data), "--",
                                  *cmd, str(MICRO), "many", str(n)],
                                 env=env, cwd=str(work), capture_output=True, text=True)
            try:
                pid = json.loads(rec.stdout.strip().splitlines()[-1])["pid"]
            except (IndexError, ValueError, KeyError):
                shutil.rmtree(work, ignore_errors=True)
                raise RuntimeError(f"[{interp.tag} {v}] perf record failed: {rec.stderr[-1500:]}")
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            inj = subprocess.run(["perf", "inject", "--jit", "-i", str(data), "-o", str(data) + ".jit"],
                                 env=dict(os.environ, **PERF_ENV), cwd=str(work), capture_output=True, text=True)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            seconds = cpu if BENCH_CLOCK == "cpu" else wall  # CPU time: user + system of perf inject
            dump_dir = work if v == "jit" else Path("/tmp")  # CPython 3.13 writes to /tmp regardless
            jitted = len(list(dump_dir.glob(f"jitted-{pid}-*.so")))
            cleanup_pid(pid, work)
            shutil.rmtree(work, ignore_errors=True)
            if inj.returncode != 0 or jitted < n:
                raise RuntimeError(f"[{interp.tag} {v}] perf inject: exit {inj.returncode}, "
                                   f"{jitted} jitted files: {inj.stderr[-1500:]}")
            res[v].append({"seconds": seconds, "wall": wall, "cpu": cpu, "jitted": jitted,
                           "per_10k": seconds / jitted * 10000})
    log(f"[{interp.tag}] inject: done")
    return res


def stub_size(interp: Interp) -> Optional[int]:
    if not interp.has_tramp:
        return None
    out = subprocess.run([str(interp.tramp / "bin/python"), "-c",
                          "import platform, perftramp._perftramp as n; "
                          "a = 'aarch64' if platform.machine() in ('aarch64', 'arm64') else 'x86_64'; "
                          "print(n.stub_code(a).hex())"], capture_output=True, text=True, env=clean_env())
    if out.returncode:
        return None
    code = bytes.fromhex(out.stdout.strip())
    pad = 0xCC if platform_machine() == "x86_64" else None
    if pad is not None:
        code = code.rstrip(bytes([pad]))
    return len(code)


def platform_machine() -> str:
    return os.uname().machine


# --- statistics -----------------------------------------------------------------------------------

def gmean(xs: List[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def bench_time(per_proc: List[List[float]]) -> float:
    """The minimum of all values of all processes. Noise on this shared machine is additive and
    bursty (whole processes 1.2-2x slower while neighbours run): the minimum over many short
    values spread over the run finds the quiet moments; a median does not."""
    return min(x for vals in per_proc for x in vals)


def bench_ratio(per_proc_a: List[List[float]], per_proc_b: List[List[float]]) -> float:
    return bench_time(per_proc_a) / bench_time(per_proc_b)


def split_half_noise(per_proc_a: List[List[float]], per_proc_b: List[List[float]]) -> Optional[float]:
    """|ratio from the even repetitions / ratio from the odd ones - 1| / 2: how much the ratio
    moves with the sample, an estimate of its uncertainty."""
    if len(per_proc_a) < 2:
        return None
    even = bench_ratio(per_proc_a[0::2], per_proc_b[0::2])
    odd = bench_ratio(per_proc_a[1::2], per_proc_b[1::2])
    return abs(even / odd - 1) / 2


def summarize(interp: Interp, raw: dict) -> dict:
    variants = interp.variants()
    s: dict = {"tag": interp.tag, "path": interp.path, "variants": variants, "build": interp.build_note,
               "bench": {}, "geomean": {}, "micro": {}, "targets": []}
    pp = raw.get("pyperformance") or {}
    benches = list(pp)
    for b in benches:
        row = {"base_ms": bench_time(pp[b]["base"]) * 1e3}
        for v in variants[1:]:
            row[v] = bench_ratio(pp[b][v], pp[b]["base"])
        noise = {}
        for v in variants[1:]:
            noise[v] = split_half_noise(pp[b][v], pp[b]["base"])
        for num, den in RATIO_COLUMNS:
            if num in variants and den in variants:
                row[f"{num}/{den}"] = bench_ratio(pp[b][num], pp[b][den])
                noise[f"{num}/{den}"] = split_half_noise(pp[b][num], pp[b][den])
        s["bench"][b] = row
        s.setdefault("noise", {})[b] = noise
        s["reps"] = len(pp[b]["base"])
        s["values_per_variant"] = sum(len(x) for x in pp[b]["base"])
    if benches:
        keys = [k for k in s["bench"][benches[0]] if k != "base_ms"]
        s["geomean"] = {k: gmean([s["bench"][b][k] for b in benches]) for k in keys}

    micro = raw.get("micro") or {}
    m: dict = {}
    for v, recs in micro.items():
        if not recs:
            continue
        d = {
            "ns_per_call": min(r["ns_per_call"] for r in recs),
            "ns_per_loop_with_call": min(r["ns_per_loop_with_call"] for r in recs),
            "ns_per_mix": min(r["ns_per_mix"] for r in recs),
            "us_per_first_call": min(r["us_per_first_call"] for r in recs),
            "exec_bytes_per_tramp": statistics.median(r["exec_bytes_growth"] / r["new_functions"] for r in recs),
        }
        st = [r for r in recs if "status_bytes_per_trampoline" in r]
        if st:
            d["status_bytes_per_tramp"] = st[0]["status_bytes_per_trampoline"]
            d["tramp_made_per_new_function"] = st[0]["tramp_made"] / st[0]["new_functions"]
        js = [r["jitdump_sizes"] for r in recs if r.get("jitdump_sizes")]
        if js:
            d["jitdump_sizes"] = js[0]
        m[v] = d
    for mode, recs in (raw.get("toggle") or {}).items():
        if recs:
            m.setdefault(mode, {})
            for k in ("enable_cold_us", "disable_cold_us", "enable_warm_us", "disable_warm_us"):
                vals = [r[k] for r in recs if k in r]
                if vals:
                    m[mode][k] = statistics.median(vals)
            crashed = [r["crashed"] for r in recs if "crashed" in r]
            if crashed:
                m[mode]["toggle_crashed"] = crashed[0]
    for v, recs in (raw.get("inject") or {}).items():
        if recs:
            m.setdefault(v, {})["inject_s_per_10k"] = min(r["per_10k"] for r in recs)
    s["micro"] = m
    s["stub_size"] = raw.get("stub_size")

    base_first = m.get("base", {}).get("us_per_first_call")

    def overhead(v):
        x = m.get(v, {}).get("us_per_first_call")
        return None if x is None or base_first is None else x - base_first

    s["first_call_overhead_us"] = {v: overhead(v) for v in variants if v != "base"}
    s["first_call_ratio"] = {}
    for cp, pt in (("perf", "map"), ("perf_jit", "jit")):
        a, b = overhead(cp), overhead(pt)
        if a is not None and b is not None:
            s["first_call_ratio"][f"{cp}/{pt}"] = a / b if b > 0 else float("inf")

    # Targets.
    T = s["targets"]
    major_minor = tuple(int(x) for x in interp.tag.split("-")[0].split(".")[:2])

    def add(name, ok, detail, key="", value=""):
        T.append({"name": name, "ok": bool(ok), "detail": detail, "key": key or name, "value": value})

    for ratio_key, versions, label in (("map/perf", ((3, 12), (3, 13)), "map vs -X perf"),
                                       ("jit/perf_jit", ((3, 13),), "jit vs -X perf_jit")):
        if benches and major_minor in versions and ratio_key in s["geomean"]:
            worst_b = max(benches, key=lambda b: s["bench"][b][ratio_key])
            worst = s["bench"][worst_b][ratio_key]
            nz = s["noise"][worst_b].get(ratio_key)
            add(f"{label}: every benchmark <= 1.00", round(worst, 3) <= 1.0,
                f"worst {worst:.3f} ({worst_b}" + (f", split-half noise +-{nz:.1%})" if nz is not None else ")"),
                f"{label}: worst benchmark <= 1.00", f"{worst:.3f} {worst_b}")
            g = s["geomean"][ratio_key]
            add(f"{label}: geomean <= 0.97", g <= 0.97, f"geomean {g:.3f}", f"{label}: geomean <= 0.97", f"{g:.3f}")
    fr = s["first_call_ratio"].get("perf/map")
    if fr is not None:
        add(f"first calls: (-X perf - base) / (map - base) >= {FIRST_CALL_TARGET:g}", fr >= FIRST_CALL_TARGET,
            f"{fr:.1f}x ({overhead('perf'):.2f} us vs {overhead('map'):.2f} us per new function)",
            f"first calls: -X perf overhead / map overhead >= {FIRST_CALL_TARGET:g}", f"{fr:.1f}x")
    if "off" in variants and benches:
        g = s["geomean"]["off"]
        worst_b = max(benches, key=lambda b: abs(s["bench"][b]["off"] - 1))
        worst = s["bench"][worst_b]["off"]
        micro_r = {}
        for key in ("ns_per_loop_with_call", "ns_per_mix"):
            a, b = m.get("off", {}).get(key), m.get("base", {}).get(key)
            if a and b:
                micro_r[key] = a / b
        worst_micro = max(micro_r.values(), key=lambda r: abs(r - 1), default=1.0)
        ok = (abs(g - 1) <= OFF_GEOMEAN_TOL and abs(worst - 1) <= OFF_BENCH_TOL
              and abs(worst_micro - 1) <= OFF_CALL_TOL)
        add(f"installed-but-off = not installed (pyperformance geomean +-{OFF_GEOMEAN_TOL:.1%}, each benchmark "
            f"+-{OFF_BENCH_TOL:.0%}, call loop and mix +-{OFF_CALL_TOL:.0%})", ok,
            f"geomean {g:.3f}, extreme {worst:.3f} ({worst_b}), call loop {micro_r.get('ns_per_loop_with_call', 0):.3f}, "
            f"mix {micro_r.get('ns_per_mix', 0):.3f}",
            "installed-but-off = not installed",
            f"{g:.3f}" + (f", {worst_b} {worst:.3f}" if abs(worst - 1) > OFF_BENCH_TOL else "")
            + (f", loop {worst_micro:.3f}" if abs(worst_micro - 1) > OFF_CALL_TOL else ""))
    if "map" in m and "status_bytes_per_tramp" in m["map"]:
        b1, b2 = m["map"]["status_bytes_per_tramp"], m["map"]["exec_bytes_per_tramp"]
        add(f"map: {MAP_BYTES_TARGET} bytes of executable memory per trampoline",
            b1 <= MAP_BYTES_TARGET and b2 <= MAP_BYTES_TARGET + 2,
            f"status {b1:.1f} B, /proc/self/maps growth {b2:.1f} B",
            f"map: {MAP_BYTES_TARGET} B exec memory per trampoline", f"{b1:.0f} B")
    if "jit" in m and "status_bytes_per_tramp" in m["jit"] and m["jit"].get("jitdump_sizes") and s["stub_size"]:
        unwind = m["jit"]["jitdump_sizes"]["unwind_size"]
        limit = -(-(s["stub_size"] + unwind) // 16) * 16
        b1, b2 = m["jit"]["status_bytes_per_tramp"], m["jit"]["exec_bytes_per_tramp"]
        add("jit: bytes per trampoline <= round16(stub + unwind data)", b1 <= limit and b2 <= limit + 2,
            f"status {b1:.1f} B, maps growth {b2:.1f} B; limit {limit} B = round16({s['stub_size']} B stub "
            f"+ {unwind} B .eh_frame/.eh_frame_hdr)",
            "jit: B per trampoline <= round16(stub + unwind)", f"{b1:.0f} <= {limit}")
    return s


# --- output ---------------------------------------------------------------------------------------

def fmt(x, spec=".3f", none="-"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def tables(s: dict) -> List[tuple]:
    """[(title, header, rows)] for one interpreter."""
    out = []
    variants = s["variants"]
    if s["bench"]:
        ratio_cols = [v for v in variants if v != "base"]
        extra = [f"{n}/{d}" for n, d in RATIO_COLUMNS if f"{n}/{d}" in s["geomean"]]
        header = ["benchmark", "base ms"] + [VARIANT_LABEL[v] for v in ratio_cols] + \
                 [RATIO_COLUMNS[tuple(k.split("/"))] for k in extra]
        rows = []
        for b, row in s["bench"].items():
            rows.append([b, fmt(row["base_ms"], ".1f")] + [fmt(row[v]) for v in ratio_cols] +
                        [fmt(row[k]) for k in extra])
        rows.append(["geometric mean", ""] + [fmt(s["geomean"][v]) for v in ratio_cols] +
                    [fmt(s["geomean"][k]) for k in extra])
        if s.get("noise"):
            cols_all = ratio_cols + extra
            med = []
            for k in cols_all:
                xs = [s["noise"][b].get(k) for b in s["bench"] if s["noise"][b].get(k) is not None]
                med.append(f"+-{statistics.median(xs):.1%}" if xs else "-")
            rows.append(["noise (median split-half)", ""] + med)
        out.append((f"pyperformance: time / baseline, and perftramp / CPython ({s.get('reps')} interleaved "
                    f"processes, {s.get('values_per_variant')} values per variant and benchmark)", header, rows))

    m = s["micro"]
    cols = [v for v in variants if v in m]
    header = ["micro"] + [VARIANT_LABEL[v] for v in cols]
    base = m.get("base", {})

    def row(label, key, spec, rel=False):
        vals = [m[v].get(key) for v in cols]
        cells = []
        for v, x in zip(cols, vals):
            c = fmt(x, spec)
            if rel and x is not None and base.get(key) and v != "base":
                c += f" ({x / base[key]:.2f}x)"
            cells.append(c)
        return [label] + cells

    rows = [
        row("ns per call (tight loop, minus the empty loop)", "ns_per_call", ".1f", True),
        row("ns per iteration of that loop (call included)", "ns_per_loop_with_call", ".1f", True),
        row("ns per mix iteration (method+closure+generator)", "ns_per_mix", ".0f", True),
        row("us per first call of a new function", "us_per_first_call", ".3f"),
        ["  overhead over baseline, us"] + [fmt(s["first_call_overhead_us"].get(v), "+.3f") for v in cols],
        row("exec bytes per trampoline (/proc/self/maps growth)", "exec_bytes_per_tramp", ".1f"),
        row("exec bytes per trampoline (status())", "status_bytes_per_tramp", ".1f"),
        row("enable us, first / median of 21", "enable_cold_us", ".0f"),
        row("disable us, first / median of 21", "disable_cold_us", ".0f"),
        row("perf inject --jit s per 10k trampolines", "inject_s_per_10k", ".2f"),
    ]
    for r, key in ((rows[7], "enable_warm_us"), (rows[8], "disable_warm_us")):
        for i, v in enumerate(cols):
            w = m[v].get(key)
            if w is not None:
                r[i + 1] = f"{r[i + 1]} / {w:.0f}"
            elif m[v].get("toggle_crashed") is not None:
                r[i + 1] = f"{r[i + 1]} / crash"
    rows = [r for r in rows if any(c not in ("-", "") for c in r[1:])]
    fr = s["first_call_ratio"]
    for k, label in (("perf/map", "(-X perf - base) / (map - base)"),
                     ("perf_jit/jit", "(-X perf_jit - base) / (jit - base)")):
        if k in fr:
            rows.append([f"first-call overhead ratio {label}", fmt(fr[k], ".1f")] + [""] * (len(cols) - 1))
    ij, ic = m.get("jit", {}).get("inject_s_per_10k"), m.get("perf_jit", {}).get("inject_s_per_10k")
    if ij and ic:
        rows.append(["perf inject time ratio perftramp jit / -X perf_jit", f"{ij / ic:.2f}"] + [""] * (len(cols) - 1))
    if "jit" in m and m["jit"].get("jitdump_sizes"):
        j = m["jit"]["jitdump_sizes"]
        rows.append(["jit dump: stub / code_size in dump / .eh_frame+hdr",
                     f"{s['stub_size']} / {j.get('code_size')} / {j.get('eh_frame_size')}+{j.get('eh_frame_hdr_size')}"]
                    + [""] * (len(cols) - 1))
    out.append(("micro benchmarks (min over processes; enable/disable: median)", header, rows))
    return out


def text_table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for r in [header] + rows:
        cells = [str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def render(summaries: List[dict], meta: dict, markdown: bool, overall: bool = True) -> str:
    parts = []
    if markdown:
        # One part (the targets table goes in at index 2): the title and where the other figures are.
        parts.append("# perftramp benchmarks\n\n" + PEERS_POINTER + "\n")
        parts.append(f"Command: `{meta['command']}`  \nDate: {meta['date']} (took {meta['minutes']:.1f} min)  \n"
                     f"Commit: {meta['commit']}, perftramp sources hash {meta['src_hash']}  \n"
                     f"Machine: {meta['machine']}\n")
        parts.append(METHOD_MD)
    else:
        parts.append(f"{meta['command']}  ({meta['date']}, {meta['minutes']:.1f} min, sources {meta['src_hash']})")
    for s in summaries:
        title = f"CPython {s['tag']} ({s['path']}); perftramp: {s['build']}"
        parts.append(("## " if markdown else "\n== ") + title + "\n")
        for sub, header, rows in tables(s):
            parts.append((f"**{sub}**\n\n" + md_table(header, rows) + "\n") if markdown
                         else (sub + "\n" + text_table(header, rows) + "\n"))
        if s.get("errors"):
            parts.append(("**errors**\n\n" if markdown else "errors\n") +
                         "\n".join(("- " if markdown else "  ") + e for e in s["errors"]) + "\n")
        if s["targets"]:
            lines = [f"{'PASS' if t['ok'] else 'FAIL'}  {t['name']}: {t['detail']}" for t in s["targets"]]
            parts.append(("**targets**\n\n" + "\n".join(f"- {l}" for l in lines) + "\n") if markdown
                         else "targets\n" + "\n".join("  " + l for l in lines) + "\n")
    all_t = [(s["tag"], t) for s in summaries for t in s["targets"]]
    if all_t and overall:
        header, rows = targets_matrix(summaries)
        npass = sum(t["ok"] for _, t in all_t)
        head = f"Targets: {npass} PASS, {len(all_t) - npass} FAIL"
        if markdown:  # at the top, after the command and date
            parts.insert(2, f"## {head}\n\n" + md_table(header, rows) + "\n\nDetails (values, noise, thresholds) "
                         "under each interpreter below.\n")
        else:  # at the end, where the terminal shows it
            parts.append(f"\n== {head}\n" + text_table(header, rows) + "\n")
    return "\n".join(parts)


def targets_matrix(summaries: List[dict]):
    keys: List[str] = []
    for s in summaries:
        for t in s["targets"]:
            if t["key"] not in keys:
                keys.append(t["key"])
    header = ["target"] + [s["tag"] for s in summaries]
    rows = []
    for k in keys:
        row = [k]
        for s in summaries:
            t = next((t for t in s["targets"] if t["key"] == k), None)
            row.append("" if t is None else f"{'PASS' if t['ok'] else 'FAIL'} {t['value']}")
        rows.append(row)
    return header, rows


METHOD_MD = """\
Method: every variant runs in its own process; within each repetition every workload runs once
per variant in a shuffled order (interleaved), so machine noise hits all variants alike.
Times are thread CPU time (`--clock cpu`, the default: waiting for a CPU on this shared machine
does not count; `--clock wall` for wall time). pyperformance: each run is one pyperf worker
process (`--worker --loops L --warmups 1 --values V`, fixed loops); a variant's time is the
minimum of its values over all repetitions (noise here is additive and bursty), ratios are
ratios of those minima, geometric means are over the benchmarks. Micro
figures are the minimum over processes (each itself a minimum over in-process repeats);
enable/disable are medians. `base` = perftramp not installed; `off` = installed, not enabled;
`-X perf`/`-X perf_jit` run in the venv without perftramp; perftramp map/jit are started by its
.pth hook from `PERFTRAMP=map|jit`. First calls: 20,000 new functions (exec-compiled; further
batches are `code.replace(co_filename=...)` copies: distinct code objects), each called once, gc
off; overhead = time minus the baseline's. Executable bytes per trampoline: growth of anonymous
executable mappings in /proc/self/maps over those new functions, divided by their number (the
same method for CPython's and perftramp's arenas; 64 KiB arena granularity), and perftramp's
`status().executable_bytes_used / trampolines`. `perf inject --jit` time: `perf record -k 1
--call-graph dwarf,4096` of a process calling 10,000 new functions once, then the inject timed
(user + system CPU time of `perf inject`; wall time with `--clock wall`) and divided by the
jitted ELF files it wrote (per 10,000), minimum over the rounds. Enable/disable: `perftramp.enable()`/
`disable()` and `sys.activate_stack_trampoline()`/`deactivate_stack_trampoline()` in-process,
the first call, then the median of 21 toggles each making one new function ("crash": CPython
itself segfaulted re-activating after a deactivate; 3.13.0 has no in-process `perf_jit`).

Every process gets a random-size environment variable and micro.py a random heap shift (layout
randomization), so that minima sample several memory layouts for every variant alike. The
pyperformance repetitions are as many as fit the time budget (`--budget`, at least 3). "noise"
is the median over benchmarks of |ratio from the even repetitions / ratio from the odd ones -
1| / 2. Thresholds: installed-but-off passes when the pyperformance geometric mean is within
+-1.5% of the baseline, every benchmark within +-5% and the micro call loop and mix within +-8%;
the jit memory limit is round16(stub code without padding + the .eh_frame and .eh_frame_hdr
bytes of a trampoline, read from its jitdump).
"""


def compare(a_path: str, b_path: str) -> None:
    """Prints the largest differences of ratios between two saved runs (run-to-run spread)."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    by_tag = {s["tag"]: s for s in b["summaries"]}
    diffs = []
    for sa in a["summaries"]:
        sb = by_tag.get(sa["tag"])
        if not sb:
            continue
        for bench, row in sa["bench"].items():
            for k, x in row.items():
                y = sb["bench"].get(bench, {}).get(k)
                if k != "base_ms" and y:
                    diffs.append((abs(x / y - 1), sa["tag"], bench, k, x, y))
        for k, x in sa["geomean"].items():
            y = sb["geomean"].get(k)
            if y:
                diffs.append((abs(x / y - 1), sa["tag"], "GEOMEAN", k, x, y))
    diffs.sort(reverse=True)
    per = [d[0] for d in diffs if d[2] != "GEOMEAN"]
    geo = [d[0] for d in diffs if d[2] == "GEOMEAN"]
    print(f"{len(per)} benchmark ratios: median |diff| {statistics.median(per):.2%}, "
          f"90th pct {sorted(per)[int(0.9 * (len(per) - 1))]:.2%}, max {max(per):.2%}")
    print(f"{len(geo)} geomean ratios: median |diff| {statistics.median(geo):.2%}, max {max(geo):.2%}")
    print("largest:")
    for d in diffs[:12]:
        print(f"  {d[1]:10} {d[2]:14} {d[3]:13} {d[4]:.3f} vs {d[5]:.3f} ({d[0]:.1%})")
    keys = ("ns_per_call", "ns_per_loop_with_call", "ns_per_mix", "us_per_first_call", "inject_s_per_10k",
            "enable_warm_us", "disable_warm_us")
    print("micro figures, |a / b - 1| over interpreters and variants (median, max):")
    for k in keys:
        ds = []
        for sa in a["summaries"]:
            sb = by_tag.get(sa["tag"])
            for v, fa in sa["micro"].items():
                fb = (sb or {}).get("micro", {}).get(v, {})
                if fa.get(k) and fb.get(k):
                    ds.append(abs(fa[k] / fb[k] - 1))
        if ds:
            print(f"  {k:24} {statistics.median(ds):6.1%} {max(ds):6.1%}  ({len(ds)})")
    fr = [(sa["tag"], k, x, by_tag[sa["tag"]]["first_call_ratio"].get(k)) for sa in a["summaries"]
          if sa["tag"] in by_tag for k, x in sa["first_call_ratio"].items()]
    print("first-call overhead ratios: " + ", ".join(f"{t} {k} {x:.1f} vs {y:.1f}" for t, k, x, y in fr if y))


def rerender(path: str, no_markdown: bool) -> None:
    """Summarizes a saved run again from its raw numbers (after a change to the statistics or
    the tables) and prints it; rewrites results.md unless --no-markdown."""
    import types as _types

    saved = json.loads(Path(path).read_text())
    summaries = []
    for old in saved["summaries"]:
        it = _types.SimpleNamespace(tag=old["tag"], path=old["path"], build_note=old["build"],
                                    variants=(lambda v=old["variants"]: v))
        s = summarize(it, saved["raw"][old["tag"]])
        s["errors"] = saved["raw"][old["tag"]].get("errors", [])
        summaries.append(s)
    meta = saved["meta"]
    print(render(summaries, meta, markdown=False))
    if not no_markdown:
        RESULTS_MD.write_text(render(summaries, meta, markdown=True))
        print(f"wrote {RESULTS_MD}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and benchmarks (<= 5 min per interpreter)")
    parser.add_argument("--pythons", nargs="+", help="interpreter paths or versions: 3.9 3.12 3.13 fp ...")
    parser.add_argument("--benchmarks", nargs="+", choices=sorted(BENCHMARKS))
    parser.add_argument("--reps", type=int, help="pyperformance repetitions (processes per variant); "
                        "default: as many as fit the budget, at least 3 (quick: 2), at most 12")
    parser.add_argument("--budget", type=float, help="minutes for the whole run (default 24; quick 4.5)")
    parser.add_argument("--micro-reps", type=int)
    parser.add_argument("--inject-rounds", type=int)
    parser.add_argument("--skip", nargs="+", default=[], choices=["pyperformance", "micro", "toggle", "inject"])
    parser.add_argument("--no-build", action="store_true", help="measure the perftramp already in the venvs")
    parser.add_argument("--setup-only", action="store_true", help="make the venvs, print their paths")
    parser.add_argument("--no-markdown", action="store_true", help="do not write benchmarks/results.md")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="spread between two saved runs")
    parser.add_argument("--render", metavar="JSON", help="print (and write results.md from) a saved run again")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="time with the thread's CPU time (default: immune to waiting for a CPU) or wall time")
    parser.add_argument("--floor", action="store_true",
                        help="also run a null eval-frame hook (benchmarks/nullhook.c): the least any "
                             "eval hook costs, perftramp's or CPython's")
    args = parser.parse_args()
    global BENCH_CLOCK
    BENCH_CLOCK = args.clock
    if args.compare:
        compare(*args.compare)
        return
    if args.render:
        rerender(args.render, args.no_markdown)
        return

    started = time.monotonic()
    budget = (args.budget if args.budget else (4.5 if args.quick else 24.0)) * 60
    lock_runs()
    started = time.monotonic()  # the budget starts once we run
    deadline = started + budget
    interps = [Interp(p) for p in select_pythons(args.pythons)]
    if not interps:
        raise SystemExit("run.py: no interpreter found")
    global MEASURED_HASH
    MEASURED_HASH = setup(interps, args.no_build)
    if args.floor:
        for it in interps:
            it.null_hook = build_null_hook(it)
    if args.setup_only:
        for it in interps:
            print(it.tag, it.plain, it.tramp, it.build_note)
        return

    benches = args.benchmarks or (QUICK_SET if args.quick else FULL_SET)
    reps = (args.reps, args.reps) if args.reps else ((2, 12) if args.quick else (3, 12))
    micro_reps = args.micro_reps or (2 if args.quick else 5)
    inject_rounds = args.inject_rounds or (1 if args.quick else 3)
    rng = random.Random(args.seed)
    raws: Dict[str, dict] = {it.tag: {"stub_size": stub_size(it), "errors": []} for it in interps}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = WORK / f"results-{stamp}.json"

    def save(summaries=None):
        json_path.write_text(json.dumps({"meta": meta_now(started, args), "summaries": summaries or [],
                                         "raw": raws}, indent=1))

    def phase(it, name, fn):
        try:
            raws[it.tag][name] = fn()
        except Exception as err:  # noqa: BLE001 - one broken phase must not lose the others
            log(f"[{it.tag}] {name} FAILED: {err}")
            raws[it.tag]["errors"].append(f"{name}: {str(err).splitlines()[0][:300]}")
        save()

    with tempfile.TemporaryDirectory(prefix="perftramp-bench-") as tmpdir:
        cwd = Path(tmpdir)
        # Fixed-cost phases first, then pyperformance shares out what is left of the budget. The
        # micro benchmark processes run between pyperformance repetitions, so that they are
        # spread over minutes of the machine's changing load rather than bunched in one.
        def micro_rep(it, rep=None):
            if "micro" in args.skip or (rep is not None and rep >= micro_reps):
                return
            into = raws[it.tag].setdefault("micro", {})
            try:
                run_micro(it, 1, cwd, rng, args.quick, into=into)
            except Exception as err:  # noqa: BLE001
                log(f"[{it.tag}] micro FAILED: {err}")
                raws[it.tag]["errors"].append(f"micro: {str(err).splitlines()[0][:300]}")

        for it in interps:
            t0 = time.monotonic()
            if "toggle" not in args.skip:
                phase(it, "toggle", lambda: run_toggle(it, 1 if args.quick else 2, cwd))
            if "inject" not in args.skip and it.has_perf_jit and it.has_tramp:
                phase(it, "inject", lambda: run_inject(it, inject_rounds, 10000, cwd, rng))
            log(f"[{it.tag}] toggle and inject: {time.monotonic() - t0:.0f} s")
        weights = [len(it.variants()) for it in interps]
        for i, it in enumerate(interps):
            if "pyperformance" not in args.skip:
                share = (deadline - 20 - time.monotonic()) * weights[i] / sum(weights[i:])
                until = time.monotonic() + share
                phase(it, "pyperformance", lambda: run_pyperformance(it, benches, reps, until, cwd, rng,
                                                                     between=lambda rep: micro_rep(it, rep)))
            while "micro" not in args.skip and min(
                    (len(x) for x in raws[it.tag].get("micro", {}).values()), default=0) < micro_reps:
                before = sum(len(x) for x in raws[it.tag].get("micro", {}).values())
                micro_rep(it)
                if sum(len(x) for x in raws[it.tag].get("micro", {}).values()) == before:
                    break  # failing: the error is recorded
            save()

    summaries = [summarize(it, raws[it.tag]) for it in interps]
    for s_ in summaries:
        s_["errors"] = raws[s_["tag"]]["errors"]
    meta = meta_now(started, args)
    save(summaries)
    print(render(summaries, meta, markdown=False))
    if not args.no_markdown:
        RESULTS_MD.write_text(render(summaries, meta, markdown=True))
        print(f"wrote {RESULTS_MD} and {json_path}")
    else:
        print(f"wrote {json_path}")


_LOCK = None


def lock_runs() -> None:
    """One run.py at a time: runs share the venvs, and two runs would disturb each other's timings."""
    import fcntl

    global _LOCK
    WORK.mkdir(parents=True, exist_ok=True)
    _LOCK = open(WORK / ".run.lock", "a+")
    try:
        fcntl.flock(_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _LOCK.seek(0)
        log(f"run.py: another run ({_LOCK.read().strip() or '?'}) holds {WORK}/.run.lock; waiting")
        fcntl.flock(_LOCK, fcntl.LOCK_EX)
    _LOCK.seek(0)
    _LOCK.truncate()
    _LOCK.write(f"pid {os.getpid()}, {' '.join(sys.argv)}")
    _LOCK.flush()


MEASURED_HASH = ""


def meta_now(started: float, args) -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": "python3 benchmarks/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "minutes": (time.monotonic() - started) / 60,
        "commit": commit or "?",
        "src_hash": MEASURED_HASH + ("" if source_hash() == MEASURED_HASH else
                                     f" (the sources changed during the run: now {source_hash()})"),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, load average at end {os.getloadavg()[0]:.1f}, "
                   f"perf {subprocess.run(['perf', '--version'], capture_output=True, text=True).stdout.split()[-1] if shutil.which('perf') else 'absent'}",
    }


if __name__ == "__main__":
    main()
