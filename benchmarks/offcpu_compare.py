#!/usr/bin/env python3
"""Off-CPU accuracy side by side: tests/workloads/wait_mix.py (threads whose on/off-CPU split
is known by construction, with a truth file) under py-spy, CPython 3.15's profiling.sampling and
perftramp `record --off-cpu`; per thread, truth against each tool, errors in points.

    python benchmarks/offcpu_compare.py                       # all three, 1.5 s phases
    python benchmarks/offcpu_compare.py --seconds 2 --tools py-spy py-spy-sid sampling
    python benchmarks/offcpu_compare.py --perftramp-python target/some-venv/bin/python

Tools (each run is one wait_mix run, its own truth file alongside):

    py-spy     py-spy record --threads --format raw --rate R [--idle | (none) | --gil] -- PY wait_mix.py
               (from PyPI into the venv --venv, made from --pyspy-python, default pyenv 3.12.1)
               raw lines: `thread (TID): NAME;func (file:line);... COUNT` (NAME sometimes
               missing, or a dead thread's whose pthread id was reused: matched by TID)
    py-spy-sid the same on the chroot's python3.15: ... -- chroot /opt/sid python3.15 /tmp/.../wait_mix.py
    sampling   chroot /opt/sid python3.15 -m profiling.sampling run -a --mode {wall,cpu,gil}
               -r R --collapsed -o FILE /tmp/.../wait_mix.py   (wait_mix run by 3.15 itself;
               /tmp is shared with the chroot; -a: all threads, without it only the main one)
               collapsed lines: `tid:TID;file:func:line;... COUNT`
    perftramp  PY -m perftramp record --off-cpu -o DIR -- PY wait_mix.py     (--perftramp-python;
               skipped, with the reason, when its `record` has no --off-cpu); DIR/wall.raw read by
               tests/offcpu_truth.py:perftramp_shares

What each figure is, per thread (shares of the thread's wall time, in %):

    fn    the thread's function (compute_loop, sleep_loop, ...) as the innermost Python frame:
          the samplers' wall run (py-spy --idle, sampling --mode wall: every thread every tick),
          perftramp's wall view (µs)
    cpu   on CPU: the samplers' cpu run (py-spy without --idle: threads it finds active, i.e.
          running or runnable; sampling --mode cpu), perftramp's on-CPU µs
    wait  the thread's wait category (truth: 1 - thread_time/wall, put with the category the
          thread is built for: sleep, lock, io, gil; preempted for compute): perftramp's share
          of that off-CPU reason; the samplers cannot tell a reason: for the gil pair, 1 - the
          share of the gil run (py-spy --gil, sampling --mode gil: samples holding the GIL),
          else 1 - cpu (marked *: off CPU for any reason)

The samplers' cpu and gil runs keep only some samples, so a thread's share there is over the
ticks of its life: its wall time (that run's truth file) times the run's sampling rate (the rate
profiling.sampling reports, "Captured N samples in T seconds"; py-spy reports none: --rate).
seen: a thread's samples in the wall run over those ticks (below 100: ticks the sampler missed,
it fell behind; perftramp: the thread's µs in the wall view over its wall time, a little over
100 as a thread lives a little longer than its function). py-spy draws its intervals from an
exponential distribution (Poisson ticks, against aliasing), so its tick count itself varies by
about 1/sqrt(rate * wall_s) (6% over 3 s at 100 Hz): its seen ranges 92-117% and its cpu and
gil shares carry that noise (a cpu share over 100% is that noise). Threads are matched to the truth by OS tid (py-spy,
sampling) or comm (perftramp). Raw outputs, truths and the table go to --out (default
target/offcpu-compare-<time>/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
try:
    import perftramp  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

import offcpu_truth  # noqa: E402
from offcpu_truth import WAIT_MIX, Counts, load_truth, shares  # noqa: E402

PYENV_312 = "/root/.pyenv/versions/3.12.1/bin/python3"
ORDER = ["compute", "gil_a", "gil_b", "sleeper", "lock_holder", "pipe_writer", "lock_waiter",
         "pipe_reader", "MainThread"]


class Skip(Exception):
    """A tool that cannot run here, with the reason."""


_CAPTURED = re.compile(r"Captured (\d+) samples in ([\d.]+) seconds")


def run(cmd: List[str], log: Path, **kw) -> subprocess.CompletedProcess:
    print("  $ " + " ".join(cmd), flush=True)
    proc = subprocess.run(["nice"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        raise Skip(f"exit {proc.returncode}: {proc.stdout.strip()[-600:]}")
    return proc


def wait_mix_truth(truth_path: Path) -> dict:
    if not truth_path.exists():
        raise Skip(f"wait_mix wrote no truth file {truth_path}")
    return load_truth(truth_path)


# --- py-spy ---------------------------------------------------------------------------------

_PYSPY_THREAD = re.compile(r"^thread \((0x[0-9a-fA-F]+|\d+)\)(?::\s*(.*))?$")


def collapsed(text: str) -> Iterator[Tuple[str, List[str], int]]:
    """(line, frames with the thread first, count) of each `frame;frame;... count` line (py-spy's
    raw format and profiling.sampling's collapsed one)."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield line, stack.split(";"), int(count)


def parse_pyspy_raw(text: str, truth: dict) -> Counts:
    counts: Counts = {}
    for line, parts, count in collapsed(text):
        match = _PYSPY_THREAD.match(parts[0])
        if not match:
            raise ValueError(f"py-spy line without a thread (run with --threads?): {line[:120]}")
        tid = int(match.group(1), 0)
        frames = parts[1:]
        function = frames[-1].rsplit(" (", 1)[0] if frames else ""
        thread = offcpu_truth.thread_name(truth, match.group(2) or "", tid)
        key = (thread, function, "")
        counts[key] = counts.get(key, 0) + count
    return counts


def ensure_pyspy(venv: Path, python: str) -> Path:
    pyspy = venv / "bin" / "py-spy"
    if not pyspy.exists():
        print(f"py-spy: making {venv} from {python} and pip installing py-spy", flush=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise Skip(f"pip install py-spy failed: {proc.stdout.strip()[-400:]}")
    return pyspy


def tool_pyspy(args, out: Path, sid: bool = False) -> dict:
    """py-spy on --pyspy-python, or (sid) on the chroot's python3.15 (`py-spy record -- chroot
    /opt/sid python3.15 /tmp/.../wait_mix.py`: chroot execs the interpreter in the same pid)."""
    pyspy = ensure_pyspy(Path(args.venv), args.pyspy_python)
    version = subprocess.run([str(pyspy), "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    python = ["chroot", args.sid, args.sid_python] if sid else [args.pyspy_python]
    pyver = subprocess.run(python + ["-V"], stdout=subprocess.PIPE, text=True).stdout.strip()
    tag = "py-spy-sid" if sid else "py-spy"
    runs: Dict[str, Tuple[dict, Counts, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="offcpu-compare-", dir="/tmp"))  # seen by the chroot too
    try:
        script = tmp / "wait_mix.py"
        shutil.copy(WAIT_MIX, script)
        for mode, flags in (("wall", ["--idle"]), ("cpu", []), ("gil", ["--gil"])):
            raw, truth_path = out / f"{tag}-{mode}.txt", tmp / f"{tag}-{mode}-truth.json"
            command = [str(pyspy), "record", "--threads", "--format", "raw", "--rate", str(args.rate),
                       "-o", str(raw)] + flags + ["--"] + python
            run(command + [str(script), str(args.seconds), str(truth_path)], out / f"{tag}-{mode}.log")
            if truth_path.exists():
                shutil.copy(truth_path, out / truth_path.name)
            truth = wait_mix_truth(truth_path)
            runs[mode] = (truth, parse_pyspy_raw(raw.read_text(), truth), float(args.rate))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sampler_result(f"{version} on {pyver}, --rate {args.rate}", runs,
                          "wall: --idle; cpu: default (active threads); gil: --gil")


def tool_pyspy_sid(args, out: Path) -> dict:
    if not (Path(args.sid) / "usr" / "bin" / args.sid_python).exists():
        raise Skip(f"no {args.sid_python} in {args.sid}")
    return tool_pyspy(args, out, sid=True)


# --- CPython 3.15 profiling.sampling --------------------------------------------------------


def parse_collapsed(text: str, truth: dict) -> Counts:
    counts: Counts = {}
    for line, parts, count in collapsed(text):
        if not parts[0].startswith("tid:"):
            raise ValueError(f"collapsed line without tid: {line[:120]}")
        tid = int(parts[0][4:])
        function = ""
        for frame in reversed(parts[1:]):
            fields = frame.rsplit(":", 2)
            if len(fields) == 3:  # file:func:line; `<GC>`, `<native>` are not Python frames
                function = fields[1]
                break
        key = (offcpu_truth.thread_name(truth, "", tid), function, "")
        counts[key] = counts.get(key, 0) + count
    return counts


def tool_sampling(args, out: Path) -> dict:
    sid = Path(args.sid)
    if not (sid / "usr" / "bin" / args.sid_python).exists():
        raise Skip(f"no {args.sid_python} in {sid}")
    pyver = subprocess.run(["chroot", str(sid), args.sid_python, "-V"], stdout=subprocess.PIPE,
                           text=True).stdout.strip()
    runs: Dict[str, Tuple[dict, Counts, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="offcpu-compare-", dir="/tmp"))  # seen by the chroot too
    try:
        script = tmp / "wait_mix.py"
        shutil.copy(WAIT_MIX, script)
        for mode in ("wall", "cpu", "gil"):
            raw, truth_path = tmp / f"sampling-{mode}.txt", tmp / f"sampling-{mode}-truth.json"
            proc = run(["chroot", str(sid), args.sid_python, "-m", "profiling.sampling", "run",
                        "-a", "--mode", mode, "-r", str(args.rate), "--collapsed", "-o", str(raw),
                        str(script), str(args.seconds), str(truth_path)],
                       out / f"sampling-{mode}.log")
            captured = _CAPTURED.search(proc.stdout)
            rate = int(captured.group(1)) / float(captured.group(2)) if captured else float(args.rate)
            for path in (raw, truth_path):
                if path.exists():
                    shutil.copy(path, out / path.name)
            truth = wait_mix_truth(truth_path)
            runs[mode] = (truth, parse_collapsed(raw.read_text(), truth), rate)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sampler_result(f"profiling.sampling of {pyver} (/opt/sid chroot), -r {args.rate}", runs,
                          "-a --mode wall | cpu | gil, --collapsed")


def sampler_result(label: str, runs: Dict[str, Tuple[dict, Counts, float]], note: str) -> dict:
    """fn shares from the wall run; cpu and GIL-holding shares of the other runs: a thread's
    samples over its ticks (its wall time in that run times the run's rate)."""
    fractions: Dict[str, Dict[str, float]] = {}
    for mode in ("wall", "cpu", "gil"):
        truth, counts, rate = runs[mode]
        per_thread: Dict[str, float] = {}
        for (thread, _, _), weight in counts.items():
            per_thread[thread] = per_thread.get(thread, 0) + weight
        fractions[mode] = {name: per_thread.get(name, 0) / (t["wall_s"] * rate)
                           for name, t in truth["by_name"].items() if t["wall_s"] > 0}
    return {"label": label, "note": note, "truth": runs["wall"][0],
            "functions": shares(runs["wall"][1]), "seen": fractions["wall"],
            "cpu": fractions["cpu"], "gil_hold": fractions["gil"], "categories": None}


# --- perftramp ------------------------------------------------------------------------------


def tool_perftramp(args, out: Path) -> dict:
    python = args.perftramp_python
    helped = subprocess.run([python, "-m", "perftramp", "record", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if helped.returncode != 0:
        raise Skip(f"`{python} -m perftramp record --help` failed: {helped.stdout.strip()[-300:]}")
    if "--off-cpu" not in helped.stdout:
        raise Skip(f"`{python} -m perftramp record` has no --off-cpu yet")
    directory, truth_path = out / "perftramp", out / "perftramp-truth.json"
    run([python, "-m", "perftramp", "record", "--off-cpu", "--force", "-o", str(directory), "--",
         python, str(WAIT_MIX), str(args.seconds), str(truth_path)], out / "perftramp.log")
    truth = wait_mix_truth(truth_path)
    measured = offcpu_truth.perftramp_shares(directory, truth)
    pyver = subprocess.run([python, "-V"], stdout=subprocess.PIPE, text=True).stdout.strip()
    return {"label": f"perftramp record --off-cpu on {pyver}", "note": "wall.raw (µs)",
            "truth": truth, "functions": measured,
            "cpu": {t: s["categories"].get("cpu", 0.0) for t, s in measured.items()},  # type: ignore[union-attr]
            "gil_hold": None, "categories": {t: s["categories"] for t, s in measured.items()},
            "seen": {t: measured.get(t, {"total": 0.0})["total"] / (1e6 * th["wall_s"])  # type: ignore[operator]
                     for t, th in truth["by_name"].items() if th["wall_s"] > 0}}


TOOLS = {"py-spy": tool_pyspy, "py-spy-sid": tool_pyspy_sid, "sampling": tool_sampling,
         "perftramp": tool_perftramp}


# --- table ----------------------------------------------------------------------------------


def pct(value: Optional[float]) -> str:
    return "   -" if value is None else f"{100 * value:4.0f}"


def err(truth: Optional[float], got: Optional[float]) -> str:
    return "   -" if truth is None or got is None else f"{100 * abs(truth - got):4.1f}"


def other_wait(result: dict, name: str, category: str) -> str:
    """perftramp: the largest off-CPU reason other than the thread's own (where a misread
    wait went)."""
    if result["categories"] is None:
        return ""
    others = {c: v for c, v in result["categories"].get(name, {}).items() if c not in ("cpu", category)}
    if not others:
        return " | -"
    worst = max(others, key=others.__getitem__)
    return f" | {worst} {100 * others[worst]:.1f}"


def table(tool: str, result: dict) -> Tuple[str, Dict[str, List[float]]]:
    truth = result["truth"]
    lines = [f"{tool}: {result['label']} ({result['note']})",
             f"{'thread':<12} {'function':<14} {'seen':>4} | {'fn% truth':>9} {'tool':>4} {'err':>4} | "
             f"{'cpu% truth':>10} {'tool':>4} {'err':>4} | {'wait':<10} {'truth':>5} {'tool':>4} {'err':>4}"
             + (" | largest other wait" if result["categories"] is not None else "")]
    errors: Dict[str, List[float]] = {"fn": [], "cpu": [], "wait": []}
    names = [n for n in ORDER if n in truth["by_name"]] + sorted(set(truth["by_name"]) - set(ORDER))
    for name in names:
        thread = truth["by_name"][name]
        got = result["functions"].get(name, {"functions": {}, "categories": {}})
        function = next(iter(thread["functions"]), None)
        fn_truth = thread["functions"].get(function) if function else None
        fn_got = got["functions"].get(function, 0.0) if function else None
        cpu_truth, cpu_got = thread["expected"]["cpu"], result["cpu"].get(name, 0.0)
        category = next(c for c in thread["expected"] if c != "cpu")
        wait_truth = thread["expected"][category]
        if result["categories"] is not None:
            kind, wait_got = category, result["categories"].get(name, {}).get(category, 0.0)
        elif category == "gil" and result["gil_hold"] is not None:
            kind, wait_got = "gil(!hold)", 1.0 - result["gil_hold"].get(name, 0.0)
        else:
            kind, wait_got = category + "*", 1.0 - cpu_got
        for key, t, g in (("fn", fn_truth, fn_got), ("cpu", cpu_truth, cpu_got), ("wait", wait_truth, wait_got)):
            if t is not None and g is not None:
                errors[key].append(100 * abs(t - g))
        seen = result["seen"].get(name) if result["seen"] else None
        lines.append(f"{name:<12} {thread['function']:<14} {pct(seen)} | {pct(fn_truth):>9} {pct(fn_got)} "
                     f"{err(fn_truth, fn_got)} | {pct(cpu_truth):>10} {pct(cpu_got)} "
                     f"{err(cpu_truth, cpu_got)} | {kind:<10} {pct(wait_truth):>5} {pct(wait_got)} "
                     f"{err(wait_truth, wait_got)}" + other_wait(result, name, category))
    mean = {k: sum(v) / len(v) if v else float("nan") for k, v in errors.items()}
    lines.append(f"{'mean |err|':<32} | {'':>9} {'':>4} {mean['fn']:4.1f} | {'':>10} {'':>4} "
                 f"{mean['cpu']:4.1f} | {'':<10} {'':>5} {'':>4} {mean['wait']:4.1f}")
    return "\n".join(lines), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.5, help="wait_mix's phase length (2 phases)")
    parser.add_argument("--rate", type=int, default=100, help="the samplers' samples per second")
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--pyspy-python", default=PYENV_312)
    parser.add_argument("--venv", default=str(ROOT / "target" / "offcpu-venv-3.12"))
    parser.add_argument("--sid", default="/opt/sid")
    parser.add_argument("--sid-python", default="python3.15")
    parser.add_argument("--perftramp-python", default=sys.executable)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "target" / f"offcpu-compare-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    report = [f"wait_mix.py, 2 phases of {args.seconds} s; figures: % of each thread's wall time; "
              "err: |truth - tool| in points; * the tool cannot tell why a thread waits: 1 - cpu"]
    results = {}
    for tool in args.tools:
        print(f"{tool}:", flush=True)
        try:
            result = TOOLS[tool](args, out)
        except Skip as skip:
            report.append(f"{tool}: skipped: {skip}")
            print(f"  skipped: {skip}", flush=True)
            continue
        text, errors = table(tool, result)
        report.append(text)
        results[tool] = {"label": result["label"], "errors": errors, "seen": result["seen"],
                         "functions": result["functions"], "cpu": result["cpu"],
                         "gil_hold": result["gil_hold"], "categories": result["categories"],
                         "truth": result["truth"]["threads"]}
    text = "\n\n".join(report)
    print("\n" + text)
    (out / "table.txt").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n(outputs in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
