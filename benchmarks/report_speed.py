"""Reading a big recording: perftramp's own reader and unwinder against `perf script`, side by
side in one run, on the same perf.data.

    .venvs/dev312/bin/python benchmarks/report_speed.py [--mb 200] [--rounds 3] [--data DIR]

Without --data it first records, with plain `perf record --call-graph dwarf -F 999` (no -z, so
`perf script` and perftramp read the same uncompressed bytes), a multiprocessing spawn pool
whose workers each spin a function of their own under PERFTRAMP=elf, until perf.data holds
--mb megabytes. Then, alternating round by round so machine noise hits both alike:

- `report --rescan --unwinder perf`: perf script reads and unwinds, perftramp folds and draws
  (the pipeline before perftramp had its own reader);
- `report --rescan`: perftramp's reader (Rust, in the extension) reads and unwinds.

It prints each one's wall seconds and CPU seconds (children included), the ratio, and per
spawn worker the share of its samples that name its own function (perf 6's unwinder loses
processes started by exec when the interpreter runs from a shared libpython).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from perftramp import _rawstacks as raw
from perftramp._report import RAW

ENV = dict(os.environ, DEBUGINFOD_URLS="", PERF_CONFIG="/dev/null")

POOL = """\
import multiprocessing as mp, sys, time

def spin(seconds):
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n

def worker_0(seconds): return spin(seconds)
def worker_1(seconds): return spin(seconds)
def worker_2(seconds): return spin(seconds)
def worker_3(seconds): return spin(seconds)

if __name__ == "__main__":
    workers, seconds = int(sys.argv[1]), float(sys.argv[2])
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = [pool.apply_async(globals()[f"worker_{i}"], (seconds,)) for i in range(workers)]
        print(sum(r.get() for r in results))
"""


def record(directory: Path, megabytes: float, workers: int) -> None:
    """Records the spawn pool, longer each time, until perf.data reaches `megabytes`."""
    script = directory / "pool.py"
    script.write_text(POOL)
    seconds = 3.0
    while True:
        data = directory / "perf.data"
        subprocess.run(["perf", "record", "-q", "--call-graph", "dwarf", "-F", "999", "-o", str(data),
                        "--", sys.executable, str(script), str(workers), str(seconds)],
                       env=dict(ENV, PERFTRAMP="elf"), check=True, stdout=subprocess.DEVNULL)
        size = data.stat().st_size / 1e6
        print(f"recorded {size:,.0f} MB ({workers} workers x {seconds:.0f} s CPU)", flush=True)
        if size >= megabytes:
            return
        seconds = seconds * megabytes / size * 1.1


def report(directory: Path, unwinder: str) -> Tuple[float, float]:
    """One `report --rescan`: (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "perftramp", "report", "--rescan", "--unwinder",
                           unwinder, str(directory)], env=ENV, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"report --unwinder {unwinder} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def worker_shares(directory: Path) -> Dict[int, Tuple[int, float]]:
    """Per process whose samples name a worker_N function anywhere: (samples, share naming it)."""
    stacks = raw.read_raw(directory / RAW)
    samples: Dict[int, int] = {}
    named: Dict[int, int] = {}
    for (_, pid, frames), count in stacks.items():
        samples[pid] = samples.get(pid, 0) + count
        if any(symbol.startswith("py::worker_") for symbol, _ in frames):
            named[pid] = named.get(pid, 0) + count
    workers = {pid for pid in samples if samples[pid] > 100 and pid != min(samples)}
    return {pid: (samples[pid], 100.0 * named.get(pid, 0) / samples[pid]) for pid in sorted(workers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the recording (MB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, choices=range(1, 5))
    parser.add_argument("--data", type=Path, help="a recording directory to read instead")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="perftramp-report-speed-"))
    try:
        directory = args.data or tmp
        if args.data is None:
            record(directory, args.mb, args.workers)
        size = (directory / "perf.data").stat().st_size / 1e6
        times: Dict[str, List[Tuple[float, float]]] = {"perf": [], "perftramp": []}
        shares: Dict[str, Dict[int, Tuple[int, float]]] = {}
        for round_ in range(args.rounds):
            for unwinder in (("perf", "perftramp") if round_ % 2 == 0 else ("perftramp", "perf")):
                times[unwinder].append(report(directory, unwinder))
                shares[unwinder] = worker_shares(directory)
        print(f"\nperf.data: {size:,.0f} MB; perf {perf_version()}; Python {sys.version.split()[0]}; "
              f"{args.rounds} rounds, alternating")
        print(f"{'reader':<30} {'wall s (median)':>16} {'cpu s (median)':>15}   per worker: samples, "
              f"share naming its function")
        for unwinder, label in (("perf", "perf script (--unwinder perf)"), ("perftramp", "perftramp")):
            wall = statistics.median(w for w, _ in times[unwinder])
            cpu = statistics.median(c for _, c in times[unwinder])
            per = "; ".join(f"pid {pid}: {n:,}, {share:.0f}%" for pid, (n, share) in shares[unwinder].items())
            print(f"{label:<30} {wall:>16.2f} {cpu:>15.2f}   {per}")
        ratio = statistics.median(w for w, _ in times["perf"]) / statistics.median(
            w for w, _ in times["perftramp"])
        print(f"perftramp reads it {ratio:.1f}x faster (wall, medians)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def perf_version() -> str:
    proc = subprocess.run(["perf", "--version"], capture_output=True, text=True)
    return proc.stdout.strip().removeprefix("perf version ")


if __name__ == "__main__":
    main()
