#!/usr/bin/env python3
"""perftramp `record` side by side with py-spy, Austin and CPython's own -X perf + perf.

    python benchmarks/peers.py --python /root/.pyenv/versions/3.12.1/bin/python3.12 --rounds 3
    python benchmarks/peers.py --python PY --rounds 1 --workloads split --tools none py-spy
    python benchmarks/peers.py --render target/peers-results-<time>.json --out docs/x.md

Setup: a venv target/peers-venv-<version> made from --python, with sympy, py-spy and Austin
(austin-dist) from PyPI and perftramp from this source tree (`pip install .`, rebuilt only when
its sources changed; cargo's target directory target/peers-cargo). A tool that cannot be had is
named, with the reason, and left out of the table.

Tools, each with its defaults as a user would run it:

    none         the program alone (the baseline)
    perftramp    python -m perftramp record -o DIR -- PROG          (report: flamegraph.svg, top.txt)
    py-spy       py-spy record --format raw -o FILE -- PROG         (report: collapsed stacks)
    austin       austin -o FILE PROG                                (report: collapsed stacks)
    xperf        perf record -F 249 -g -- python -X perf PROG, then perf script > FILE (3.12+)
    xperf-dwarf  the same with --call-graph dwarf (without frame pointers in the interpreter,
                 -g finds no Python frame; dwarf finds the innermost one)

Workloads (benchmarks/peers_workloads.py): calls (call-heavy pure Python), sympy (a fixed
symbolic computation), split (three leaf functions whose CPU time splits 50/30/20 by
construction, checked in-process without a profiler).

Every round runs every (workload, tool) pair once, in a shuffled order (interleaved: the
machine's load hits all tools alike); a warm-up round first is not counted. For each pair:

- program s: from launching the command to the program's last line (its own clock, written to
  PEERS_RESULT); slowdown: that time / the baseline's in the same round, median over rounds;
- CPU slowdown: the same ratio for the program's own CPU time (process_time at its last line:
  what the tool adds inside the program, e.g. perf's sample copies in its kernel time; waiting
  for a CPU on a loaded machine does not count, so it is less noisy than wall time, though
  on a shared VM it still moves by up to 1.5x);
- tool CPU s: CPU time of the whole command (every process it waited for, and perf script)
  less the program's: what the profiler itself burns, report included;
- report s: from the program's last line to a readable report on disk (the tool's exit; for
  -X perf also `perf script`);
- MB left: every byte the run left on disk: the tool's output, /tmp/perf-<pid>.map and other
  per-process files, and the growth of perf's build-id cache (a directory of this benchmark's
  own, through PERF_CONFIG; warmed by the warm-up round, as a user's ~/.debug would be);
- split: each tool's share of each function, from the tool's own output: the samples (Austin:
  the sampled time) whose stack holds the function anywhere ("on stack"; these leaf functions'
  self time is the same), over the samples holding any of the three; error = share - nominal,
  in points. "named" is the share of all the recording's samples that name one of the three;
- reach run_workload: the share of all samples whose stack holds the program's run_workload(),
  under which all its work runs: how many stacks have all their Python callers (a tool that sees
  only the innermost Python frame scores low here while its split can still be right).

Prints a text table; --out FILE writes it as Markdown with the command and the machine; the raw
figures go to target/peers-results-<time>.json (--render re-prints them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import resource
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (benchmarks/run.py: interpreter probe, env, cleanup, tables)

WORKLOAD = HERE / "peers_workloads.py"
WORKLOADS = ("calls", "sympy", "split")
WORKLOAD_TITLES = {"calls": "call-heavy pure Python", "sympy": "sympy, a fixed symbolic computation",
                   "split": "three functions, 50/30/20 of the CPU time by construction"}
#: The split workload's functions and their nominal shares (5:3:2 iterations of one loop).
SPLIT = {"share_50": 0.50, "share_30": 0.30, "share_20": 0.20}

# Pinned so that a rerun measures the same tools on the same computation.
SYMPY = "sympy==1.14.0"
PY_SPY = "py-spy==0.4.3"
#: austin-dist 4.0.0's wheel is tagged manylinux_2_12 but its binary needs glibc 2.38 (Debian 12
#: has 2.36): when it does not run, the last 3.x (Python 3.8-3.13) is tried.
AUSTIN = ("austin-dist==4.0.0", "austin-dist==3.7.0")
XPERF_HZ = 249
#: Below this median share of samples naming the split's functions, a tool's shares are not shown.
MIN_NAMED = 0.10
TIMEOUT = 900


def log(msg: str) -> None:
    bench.log(f"peers: {msg}")


# --- setup ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Setup:
    python: str  # the venv's interpreter, which runs every program
    venv: Path
    fp: bool  # the interpreter keeps frame pointers (perftramp then records in map mode)
    bins: Dict[str, str]  # tool name -> the executable that runs it
    versions: Dict[str, str]  # tool or package -> its version (python: a description)
    missing: Dict[str, str]  # tool name -> why it cannot be measured here


def pip_install(venv: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """None on success, else the end of pip's output (what the user needs to see)."""
    proc = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *args],
                          capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return None
    return "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])


def make_venv(python: str, version: Tuple[int, ...]) -> Path:
    venv = ROOT / "target" / f"peers-venv-{'.'.join(map(str, version))}"
    if not (venv / "bin/python").exists():
        log(f"making {venv}")
        proc = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"peers: {python} -m venv failed (Debian: apt-get install python3-venv):\n"
                     f"{proc.stderr.strip()}")
    return venv


def install_perftramp(venv: Path) -> Optional[str]:
    """`pip install .` of this tree when its sources changed since the venv's last install."""
    marker = venv / "perftramp-src-hash"
    src = bench.source_hash()
    if marker.exists() and marker.read_text().strip() == src:
        return None
    log(f"building perftramp from {ROOT} (sources {src}; a few minutes the first time)")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "peers-cargo"))
    error = pip_install(venv, "--force-reinstall", "--no-deps", str(ROOT), env=env)
    if error is None:
        marker.write_text(src)
    return error


def tool_output(command: List[str]) -> Tuple[int, str]:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 1, str(err)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def install_austin(venv: Path) -> Tuple[Optional[str], str]:
    """(None, version) once an austin-dist whose binary runs here is installed, else (why, '')."""
    why = []
    for spec in AUSTIN:
        error = pip_install(venv, spec)
        if error:
            why.append(f"{spec}: pip failed: {error}")
            continue
        status, out = tool_output([str(venv / "bin/austin"), "-V"])
        if status == 0:
            return None, out.split()[-1] if out else spec
        why.append(f"{spec}: its binary does not run here: {out.splitlines()[0] if out else status}")
    return "; ".join(why), ""


def probe_sampler(name: str, command: List[str], out: Path) -> Optional[str]:
    """Runs a sampler on a 0.3 s busy loop: None when it wrote samples, else why not (py-spy
    needs ptrace: root, or CAP_SYS_PTRACE, or kernel.yama.ptrace_scope 0)."""
    status, text = tool_output(command)
    if status == 0 and out.is_file() and out.stat().st_size > 0:
        return None
    hint = " (ptrace not permitted? run as root, or sysctl kernel.yama.ptrace_scope=0)" \
        if "ermission" in text or "ptrace" in text.lower() else ""
    return f"{name} recorded nothing{hint}: {text.splitlines()[-1] if text else status}"


BUSY = "import time\nt = time.monotonic() + 0.3\nwhile time.monotonic() < t: pass\n"


def add_perf_tools(s: Setup, interp: "bench.Interp") -> None:
    """perftramp (built from this tree) and -X perf, which both need perf."""
    perf = shutil.which("perf")
    if perf is None:
        why = ("perf is not installed (Debian: apt-get install linux-perf; Ubuntu: "
               "linux-tools-$(uname -r); Fedora: dnf install perf)")
        s.missing.update({"perftramp": why, "xperf": why, "xperf-dwarf": why})
        return
    s.versions["perf"] = tool_output([perf, "--version"])[1].split()[-1]
    error = install_perftramp(s.venv)
    if error:
        s.missing["perftramp"] = f"`pip install .` failed (Rust and cargo needed):\n    {error}"
    else:
        s.bins["perftramp"] = s.python
        s.versions["perftramp"] = tool_output([s.python, "-m", "perftramp", "--version"])[1].split()[-1]
    if interp.has_perf:
        s.bins["xperf"] = s.bins["xperf-dwarf"] = perf
    else:
        s.missing["xperf"] = s.missing["xperf-dwarf"] = (
            f"CPython {interp.tag} has no -X perf (3.12+ on Linux x86-64/aarch64)")


def add_pyspy(s: Setup, busy: Path) -> None:
    error = pip_install(s.venv, PY_SPY)
    if error:
        s.missing["py-spy"] = f"pip install {PY_SPY} failed: {error}"
        return
    spy = str(s.venv / "bin/py-spy")
    out = busy.with_name("py-spy.txt")
    error = probe_sampler("py-spy", [spy, "record", "--format", "raw", "-o", str(out), "--",
                                     s.python, str(busy)], out)
    if error:
        s.missing["py-spy"] = error
        return
    s.bins["py-spy"] = spy
    s.versions["py-spy"] = tool_output([spy, "--version"])[1].split()[-1]


def add_austin(s: Setup, busy: Path) -> None:
    error, version = install_austin(s.venv)
    if error:
        s.missing["austin"] = error
        return
    austin = str(s.venv / "bin/austin")
    out = busy.with_name("austin.txt")
    error = probe_sampler("austin", [austin, "-o", str(out), s.python, str(busy)], out)
    if error:
        s.missing["austin"] = error
        return
    s.bins["austin"] = austin
    s.versions["austin"] = version


def setup(python: str) -> Setup:
    """The venv and every tool that can be had; the others are named with the reason."""
    interp = bench.Interp(python)
    venv = make_venv(python, interp.version)
    vpy = str(venv / "bin/python")
    s = Setup(vpy, venv, interp.fp, {"none": vpy},
              {"python": f"CPython {interp.tag.replace('-fp', '')} ({python}, "
                         f"{'frame pointers' if interp.fp else 'no frame pointers'})"}, {})
    error = pip_install(venv, SYMPY)
    if error:
        sys.exit(f"peers: cannot install {SYMPY} (the sympy workload needs it):\n    {error}")
    s.versions["sympy"] = SYMPY.split("==")[1]
    add_perf_tools(s, interp)
    with tempfile.TemporaryDirectory(prefix="peers-probe-") as tmp:
        busy = Path(tmp) / "busy.py"
        busy.write_text(BUSY)
        add_pyspy(s, busy)
        add_austin(s, busy)
    for name, why in s.missing.items():
        log(f"NOT MEASURED: {name}: {why}")
    return s


# --- the tools ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tool:
    name: str
    #: (setup, program argv, output dir) -> the command to run
    command: Callable[[Setup, List[str], Path], List[str]]
    #: how the tool's output becomes stacks: (output dir) -> [(frames, weight, samples)]
    stacks: Callable[[Path], List[Tuple[List[str], float, int]]]
    #: work after the command, before the report is readable (-X perf: perf script)
    finish: Optional[Callable[[Setup, Path], None]] = None


def collapsed_stacks(path: Path, weight_is_time: bool = False) -> List[Tuple[List[str], float, int]]:
    """Collapsed stacks ('frame;frame;... N' per line; '#' lines are Austin's metadata). N is a
    sample count (py-spy, perftramp) or, for Austin, the microseconds of one sample."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        stack, _, value = line.rpartition(" ")
        try:
            weight = float(value.split(",")[0])
        except ValueError:
            continue
        out.append((stack.split(";"), weight, 1 if weight_is_time else int(weight)))
    return out


_PERF_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def perf_script_stacks(path: Path) -> List[Tuple[List[str], float, int]]:
    """`perf script` text: a header line per sample, then one indented line per frame
    ('addr symbol+0xoff (dso)'), innermost first, and a blank line."""
    out: List[Tuple[List[str], float, int]] = []
    frames: Optional[List[str]] = None
    with open(path, errors="replace") as file:
        for line in file:
            if line[:1] in ("\t", " ") and line.strip():
                if frames is not None:
                    symbol = line.strip().split(None, 1)[-1].rsplit(" (", 1)[0]
                    frames.append(_PERF_OFFSET.sub("", symbol))
                continue
            if frames is not None:
                out.append((frames[::-1], 1.0, 1))
            frames = [] if line.strip() else None
    if frames is not None:
        out.append((frames[::-1], 1.0, 1))
    return out


def perftramp_command(s: Setup, prog: List[str], out: Path) -> List[str]:
    return [s.bins["perftramp"], "-m", "perftramp", "record", "-o", str(out / "record"), "--", *prog]


def pyspy_command(s: Setup, prog: List[str], out: Path) -> List[str]:
    return [s.bins["py-spy"], "record", "--format", "raw", "-o", str(out / "py-spy.txt"), "--", *prog]


def austin_command(s: Setup, prog: List[str], out: Path) -> List[str]:
    return [s.bins["austin"], "-o", str(out / "austin.txt"), *prog]


def xperf_command(call_graph: List[str]) -> Callable[[Setup, List[str], Path], List[str]]:
    def command(s: Setup, prog: List[str], out: Path) -> List[str]:
        return [s.bins["xperf"], "record", "-F", str(XPERF_HZ), *call_graph, "-o",
                str(out / "perf.data"), "--", prog[0], "-X", "perf", *prog[1:]]
    return command


def perf_script(s: Setup, out: Path) -> None:
    with open(out / "perf.script", "w") as sink:
        subprocess.run([s.bins["xperf"], "script", "-i", str(out / "perf.data")], stdout=sink,
                       stderr=subprocess.DEVNULL, env=run_env(s), check=True, timeout=TIMEOUT)


TOOLS = {
    "none": Tool("none", lambda s, prog, out: prog, lambda out: []),
    "perftramp": Tool("perftramp", perftramp_command,
                      lambda out: collapsed_stacks(out / "record" / "stacks.collapsed")),
    "py-spy": Tool("py-spy", pyspy_command, lambda out: collapsed_stacks(out / "py-spy.txt")),
    "austin": Tool("austin", austin_command,
                   lambda out: collapsed_stacks(out / "austin.txt", weight_is_time=True)),
    "xperf": Tool("xperf", xperf_command(["-g"]), lambda out: perf_script_stacks(out / "perf.script"),
                  finish=perf_script),
    "xperf-dwarf": Tool("xperf-dwarf", xperf_command(["--call-graph", "dwarf"]),
                        lambda out: perf_script_stacks(out / "perf.script"), finish=perf_script),
}


def tool_labels(s: Setup) -> Dict[str, str]:
    """How each tool is named in the table: version and sampling rate (each tool's default)."""
    v = s.versions
    return {
        "none": "no tool",
        "perftramp": f"perftramp {v.get('perftramp', '')} record ("
                     f"{'map mode, fp, 999 Hz' if s.fp else 'elf mode, dwarf, 249 Hz'})",
        "py-spy": f"py-spy {v.get('py-spy', '')} record (100 Hz)",
        "austin": f"Austin {v.get('austin', '')} (10 kHz)",
        "xperf": f"-X perf + perf record -g ({XPERF_HZ} Hz)",
        "xperf-dwarf": f"-X perf + perf record --call-graph dwarf ({XPERF_HZ} Hz)",
    }


# --- one run --------------------------------------------------------------------------------------

def run_env(s: Setup) -> Dict[str, str]:
    env = bench.clean_env()
    env["DEBUGINFOD_URLS"] = ""  # no network look-ups by perf
    env["PERF_CONFIG"] = str(perf_config(s))
    return env


def perf_config(s: Setup) -> Path:
    """A perfconfig whose build-id cache is this benchmark's own directory: what perf copies
    there counts as bytes left, and the user's ~/.debug is left alone."""
    path = s.venv / "perfconfig"
    if not path.exists():
        path.write_text(f"[buildid]\n\tdir = {s.venv / 'buildid-cache'}\n")
    return path


def children_cpu() -> float:
    """User + system seconds of all the processes we (and they, recursively) waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (links not followed: the build-id cache links
    each file twice)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def pid_leftovers(pid: int, since: float) -> List[Path]:
    """Files a profiled process left outside the tool's output: CPython's and perftramp's
    /tmp/perf-<pid>.map, jitdumps, jitted code (the names run.cleanup_pid knows). Only those
    written since `since` (time.time()): pids are reused, and an older file with the same name
    belongs to a process of someone else's."""
    candidates = [Path(f"/tmp/perf-{pid}.map"), Path(f"/tmp/jit-{pid}.dump"),
                  *Path("/tmp").glob(f"jitted-{pid}-*.so")]
    return [p for p in candidates if p.exists() and p.stat().st_mtime >= since]


def run_once(s: Setup, tool: Tool, workload: str, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{tool.name}-{workload}-"))
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)
    env = run_env(s)
    env["PEERS_RESULT"] = str(result_file)
    cache = s.venv / "buildid-cache"
    cache_before = tree_bytes(cache) if cache.exists() else 0
    command = tool.command(s, [s.python, str(WORKLOAD), workload], out)
    cpu_before = children_cpu()
    since = time.time() - 1  # file times are coarser than the clock
    launched = time.monotonic()
    with open(out.parent / "stdout.txt", "w") as stdout, open(out.parent / "stderr.txt", "w") as stderr:
        proc = subprocess.run(command, stdout=stdout, stderr=stderr, env=env, cwd=str(out),
                              timeout=TIMEOUT)
    try:
        if proc.returncode != 0 or not result_file.exists():
            tail = (out.parent / "stderr.txt").read_text(errors="replace").strip().splitlines()[-6:]
            return {"error": f"exit {proc.returncode}: {' / '.join(tail)}"}
        result = json.loads(result_file.read_text())
        if tool.finish:
            tool.finish(s, out)
        done = time.monotonic()
        cpu = children_cpu() - cpu_before
        left = pid_leftovers(result["pid"], since)
        parts = {"output": tree_bytes(out), "per-process files": sum(p.stat().st_size for p in left),
                 "build-id cache": max(0, (tree_bytes(cache) if cache.exists() else 0) - cache_before)}
        record = {
            "program_s": result["end"] - launched,
            "report_s": done - result["end"] if tool.name != "none" else None,
            "program_cpu_s": result["cpu"],
            "tool_cpu_s": cpu - result["cpu"],
            "bytes": sum(parts.values()),
            "bytes_parts": parts,
            "files": [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()][:20]
                     + [str(p) for p in left],
            "cpu_by_function": result.get("cpu_by_function"),
        }
        if tool.name != "none":
            record.update(attribution(tool.stacks(out)))
        return record
    finally:
        if result_file.exists():
            for path in pid_leftovers(json.loads(result_file.read_text())["pid"], since):
                path.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)


#: The program's function under which all its own work runs (peers_workloads.py).
ENTRY = "run_workload"
_NAME = re.compile(r"(?<![\w.])(" + "|".join([*SPLIT, ENTRY]) + r")(?!\w)")


def attribution(stacks: Iterable[Tuple[List[str], float, int]]) -> dict:
    """Each split function's share, 'on stack': the weight of the stacks holding it anywhere,
    over the weight of those holding any of the three. A frame names a function when the name
    stands in it as a word: py-spy 'f (file:line)', Austin 'file:f:line', perf 'py::f:file'."""
    on = {name: 0.0 for name in [*SPLIT, ENTRY]}
    named = total = 0.0
    samples = 0
    for frames, weight, count in stacks:
        total += weight
        samples += count
        found = {m.group(1) for frame in frames for m in _NAME.finditer(frame)}
        for name in found:
            on[name] += weight
        if found - {ENTRY}:
            named += weight
    return {"samples": samples,
            "named": named / total if total else 0.0,
            "reach": on[ENTRY] / total if total else 0.0,
            "shares": {name: on[name] / named for name in SPLIT} if named else None}


# --- the rounds -----------------------------------------------------------------------------------

def run_rounds(s: Setup, tools: List[str], workloads: List[str], rounds: int, warmup: int,
               seed: int, save: Callable[[dict], None]) -> dict:
    """results[workload][tool] = [one record per counted round]."""
    rng = random.Random(seed)
    results: dict = {w: {t: [] for t in tools} for w in workloads}
    pairs = [(w, t) for w in workloads for t in tools]
    with tempfile.TemporaryDirectory(prefix="peers-", dir=ROOT / "target") as tmp:
        for r in range(-warmup, rounds):
            order = pairs[:]
            rng.shuffle(order)
            t0 = time.monotonic()
            for workload, tool in order:
                record = run_once(s, TOOLS[tool], workload, Path(tmp))
                record["round"] = r
                if "error" in record:
                    log(f"round {r}: {tool} on {workload} FAILED: {record['error']}")
                if r >= 0:
                    results[workload][tool].append(record)
            log(f"{'warm-up round' if r < 0 else f'round {r + 1}/{rounds}'}: "
                f"{time.monotonic() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")
            save(results)
    return results


# --- summary and tables ---------------------------------------------------------------------------

def median(xs: List[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def slowdowns(runs: List[dict], base: List[dict], key: str = "program_s") -> List[float]:
    """Per-round ratios to the baseline of the same round (interleaved: same machine moment)."""
    by_round = {b["round"]: b[key] for b in base if "error" not in b}
    return [r[key] / by_round[r["round"]] for r in runs
            if "error" not in r and r["round"] in by_round]


def summarize(results: dict) -> dict:
    out: dict = {}
    for workload, by_tool in results.items():
        base = by_tool.get("none", [])
        for tool, runs in by_tool.items():
            ok = [r for r in runs if "error" not in r]
            row = {
                "runs": len(ok),
                "errors": [r["error"] for r in runs if "error" in r],
                "program_s": median([r["program_s"] for r in ok]),
                "program_range": (min(r["program_s"] for r in ok), max(r["program_s"] for r in ok))
                if ok else None,
                "slowdown": median(slowdowns(ok, base)) if tool != "none" else None,
                "cpu_slowdown": median(slowdowns(ok, base, "program_cpu_s")) if tool != "none" else None,
                "tool_cpu_s": median([r["tool_cpu_s"] for r in ok]) if tool != "none" else None,
                "report_s": median([r["report_s"] for r in ok]),
                "mb": median([r["bytes"] / 1e6 for r in ok]),
                "samples": median([r.get("samples") for r in ok]),
                "named": median([r.get("named") for r in ok]),
                "reach": median([r.get("reach") for r in ok]),
            }
            if workload == "split":
                row.update(split_summary(ok, tool))
            out.setdefault(workload, {})[tool] = row
    return out


def split_summary(runs: List[dict], tool: str) -> dict:
    """Median share per function and its error against the nominal split, in points; 'worst'
    is the largest |error| of any function in any round. The baseline's shares are the
    program's own CPU-time measurement (no profiler)."""
    if tool == "none":
        per_run = []
        for r in runs:
            cpu = r.get("cpu_by_function") or {}
            total = sum(cpu.values())
            if total:
                per_run.append({k: v / total for k, v in cpu.items()})
    else:
        per_run = [r["shares"] for r in runs if r.get("shares")]
    if not per_run:
        return {"shares": None}
    shares = {name: statistics.median(p[name] for p in per_run) for name in SPLIT}
    return {
        "shares": shares,
        "error_pts": {name: 100 * (shares[name] - SPLIT[name]) for name in SPLIT},
        "worst_pts": max(abs(100 * (p[name] - SPLIT[name])) for p in per_run for name in SPLIT),
    }


def workload_table(by_tool: dict, labels: Dict[str, str]) -> Tuple[List[str], List[list]]:
    header = ["tool", "program s (median; min-max)", "slowdown", "CPU slowdown", "tool CPU s",
              "report s after end", "MB left", "samples", f"reach {ENTRY}"]
    rows = []
    for tool, row in by_tool.items():
        if not row["runs"]:
            rows.append([labels[tool], "failed: " + (row["errors"] or ["?"])[0][:120]]
                        + [""] * (len(header) - 2))
            continue
        lo, hi = row["program_range"]
        rows.append([labels[tool],
                     f"{row['program_s']:.2f} ({lo:.2f}-{hi:.2f})",
                     bench.fmt(row["slowdown"], ".2f") + ("x" if row["slowdown"] else ""),
                     bench.fmt(row["cpu_slowdown"], ".2f") + ("x" if row["cpu_slowdown"] else ""),
                     bench.fmt(row["tool_cpu_s"], ".2f"),
                     bench.fmt(row["report_s"], ".2f"),
                     bench.fmt(row["mb"], ".2f"),
                     bench.fmt(row["samples"], ",.0f"),
                     bench.fmt(row["reach"], ".1%")])
    return header, rows


def split_table(summary: dict, labels: Dict[str, str]) -> Tuple[List[str], List[list]]:
    header = ["tool"] + [f"{name} (nominal {SPLIT[name]:.0%})" for name in SPLIT] + \
             ["worst round, points", "named"]
    rows = []
    for tool, row in summary.get("split", {}).items():
        if not row["runs"]:
            continue
        if not row.get("shares") or (tool != "none" and (row["named"] or 0) < MIN_NAMED):
            # A few stray samples would give shares as wild as they are meaningless.
            rows.append([labels[tool]] + ["too few samples name them"] * len(SPLIT) + ["",
                        bench.fmt(row["named"], ".1%")])
            continue
        cells = [f"{100 * row['shares'][n]:.1f}% ({row['error_pts'][n]:+.1f})" for n in SPLIT]
        rows.append([labels[tool] if tool != "none" else "no tool: the program's own CPU time"]
                    + cells + [f"{row['worst_pts']:.1f}",
                               bench.fmt(row["named"], ".1%") if tool != "none" else ""])
    return header, rows


def failures(by_tool: dict, labels: Dict[str, str]) -> str:
    """The runs that failed (the medians are over the others), one line per tool."""
    lines = [f"{labels[tool]}: {len(row['errors'])} of {len(row['errors']) + row['runs']} runs "
             f"failed ({row['errors'][0][:300]})" for tool, row in by_tool.items() if row["errors"]]
    return "".join(f"\n\n{line}" for line in lines)


def render(saved: dict, markdown: bool) -> str:
    meta, summary = saved["meta"], summarize(saved["results"])
    labels = meta["labels"]
    table = bench.md_table if markdown else bench.text_table
    parts = []
    if markdown:
        parts.append(f"Command: `{meta['command']}`  \n"
                     f"Date: {meta['date']} (took {meta['minutes']:.0f} min), commit {meta['commit']}  \n"
                     f"Machine: {meta['machine']}  \n"
                     f"Interpreter: {meta['versions']['python']}; sympy {meta['versions'].get('sympy')}, "
                     f"perf {meta['versions'].get('perf', 'absent')}  \n"
                     f"Rounds: {meta['rounds']} counted (+{meta['warmup']} warm-up), interleaved")
    else:
        parts.append(f"{meta['command']}\n{meta['machine']}\n{meta['versions']['python']}")
    bold = "**" if markdown else ""
    for workload, by_tool in summary.items():
        parts.append(f"{bold}{workload}: {WORKLOAD_TITLES[workload]}{bold}\n\n"
                     + table(*workload_table(by_tool, labels)) + failures(by_tool, labels))
    if "split" in summary:
        parts.append(f"{bold}split: each tool's share of each function, on stack (error against "
                     f"the nominal split, points){bold}\n\n" + table(*split_table(summary, labels)))
    if meta["missing"]:
        parts.append("Not measured:\n" + "\n".join(f"- {t}: {why}" for t, why in meta["missing"].items()))
    return "\n\n".join(parts) + "\n"


# --- main -----------------------------------------------------------------------------------------

def machine() -> str:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, load average "
            f"{os.getloadavg()[0]:.1f} at the end")


def commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", help="the CPython to profile (a venv is made from it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default 1)")
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the tables as Markdown to this file")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print a saved run again")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
    else:
        if not args.python:
            parser.error("--python is required (e.g. --python /usr/bin/python3.12)")
        saved = measure(args)
    print(render(saved, markdown=False))
    if args.out:
        args.out.write_text(render(saved, markdown=True))
        log(f"wrote {args.out}")


def measure(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    s = setup(args.python)
    tools = ["none"] + [t for t in args.tools if t != "none" and t in s.bins]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = ROOT / "target" / f"peers-results-{stamp}.json"
    command = "python benchmarks/peers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def saved(results: dict) -> dict:
        return {"meta": {"command": command, "commit": commit(), "machine": machine(),
                         "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                         "minutes": (time.monotonic() - started) / 60, "versions": s.versions,
                         "labels": tool_labels(s), "rounds": args.rounds, "warmup": args.warmup,
                         "missing": {t: why for t, why in s.missing.items() if t in args.tools}},
                "results": results}

    def save(results: dict) -> None:
        json_path.write_text(json.dumps(saved(results), indent=1))

    log(f"tools {', '.join(tools)}; workloads {', '.join(args.workloads)}; "
        f"{args.rounds} rounds + {args.warmup} warm-up; raw figures in {json_path}")
    results = run_rounds(s, tools, args.workloads, args.rounds, args.warmup, args.seed, save)
    save(results)
    return saved(results)


if __name__ == "__main__":
    main()
