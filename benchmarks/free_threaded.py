"""Free-threaded CPython (3.14t+): what perftramp costs in parallel, and CPython's own trampoline
under the same stress. Prints figures; asserts nothing.

    python benchmarks/free_threaded.py [--repeat 5] [--units 2000] [--stress-runs 3]

1. Throughput: pure-Python work (many small calls: what the eval hook sees) in 1 thread, then the
   same work per thread in 2 threads, each in a fresh interpreter, with perftramp off and on,
   and with CPython's own trampoline for reference.
   Scaling = 2 threads' work per second / 1 thread's. On a free-threaded build with 2 free cores
   the goal is >= 1.7 with perftramp on, as with it off. (On a GIL build it stays near 1.0.)
2. Stress (tests/workloads/ft_stress.py: 8 threads making 50,000 new functions, perf support
   toggled every 10 ms, then left on throughout), perftramp's map mode and CPython's own trampoline (`xperf`: the
   sys.activate_stack_trampoline that -X perf uses) side by side: crashes (non-zero exits,
   signals) and wrong names in the perf map (one address given two names: two threads handed the
   same trampoline slot, or the map naming one slot after another thread's function).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRESS = HERE.parent / "tests" / "workloads" / "ft_stress.py"

# One measurement, in a fresh interpreter: argv = on|off|xperf, threads, units.
INNER = r"""
import sys, threading, time
mode, threads, units = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "on":
    import perftramp
    perftramp.enable("map")
elif mode == "xperf":
    sys.activate_stack_trampoline("perf")

def leaf(a, b):
    return a * b + 1

def middle(n):
    total = 0
    for i in range(n):
        total += leaf(i, 3)
    return total

def work(units):
    for _ in range(units):
        middle(1000)

work(2)  # warm up (and make the trampolines) before timing
barrier = threading.Barrier(threads + 1)
def run():
    barrier.wait()
    work(units)
ts = [threading.Thread(target=run) for _ in range(threads)]
[t.start() for t in ts]
barrier.wait()
start = time.perf_counter()
[t.join() for t in ts]
print(time.perf_counter() - start)
"""


def env() -> dict:
    e = dict(os.environ)
    for name in ("PYTHON_GIL", "PYTHONPERFSUPPORT", "PERFTRAMP"):
        e.pop(name, None)
    return e


def timed(mode: str, threads: int, units: int) -> float:
    out = subprocess.run([sys.executable, "-c", INNER, mode, str(threads), str(units)],
                         capture_output=True, text=True, env=env(), check=True)
    return float(out.stdout.strip())


def throughput(repeat: int, units: int) -> None:
    print(f"== throughput: {units} units of pure-Python calls per thread, best of {repeat}")
    results = {}
    for mode in ("off", "on", "xperf"):
        # Interleave 1- and 2-thread runs so load from elsewhere hits both alike.
        one, two = [], []
        for _ in range(repeat):
            one.append(timed(mode, 1, units))
            two.append(timed(mode, 2, units))
        rate1 = units / min(one)
        rate2 = 2 * units / min(two)
        results[mode] = (rate1, rate2)
        label = {"off": "perftramp off", "on": "perftramp on", "xperf": "CPython -X perf"}[mode]
        print(f"{label:15}: 1 thread {min(one):.3f} s (median {statistics.median(one):.3f}), "
              f"2 threads {min(two):.3f} s (median {statistics.median(two):.3f}): "
              f"scaling {rate2 / rate1:.2f}x")
    off1, off2 = results["off"]
    for mode in ("on", "xperf"):
        one, two = results[mode]
        print(f"{mode:5} vs off: 1 thread {one / off1:.1%} of the speed, 2 threads {two / off2:.1%}")


def map_names(pid: int):
    path = Path(f"/tmp/perf-{pid}.map")
    if not path.exists():
        return None
    by_address = collections.defaultdict(set)
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            by_address[parts[0]].add(parts[2])
    path.unlink()
    return by_address


def stress(runs: int) -> None:
    print(f"== stress: 8 threads x 50,000 new functions, toggled every 10 ms, {runs} runs each")
    for mode, toggle in (("map", "10"), ("xperf", "10"), ("map", "0"), ("xperf", "0")):
        crashes, failures, wrong, entries, seconds = 0, 0, 0, 0, []
        for _ in range(runs):
            proc = subprocess.run([sys.executable, str(STRESS), mode, "--toggle-ms", toggle],
                                  capture_output=True, text=True, env=env(), timeout=900)
            match = re.search(r"^PID (\d+)$", proc.stdout, re.M)
            if proc.returncode < 0 or "Fatal Python error" in proc.stderr:
                crashes += 1
                fatal = [line for line in proc.stderr.splitlines() if "Fatal" in line or "error" in line.lower()]
                how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
                print(f"  {mode} crash: {how}; {fatal[0] if fatal else proc.stderr.strip()[-200:]!r}")
            elif proc.returncode != 0:
                failures += 1
            took = re.search(r"^SECONDS ([\d.]+)$", proc.stdout, re.M)
            if took:
                seconds.append(float(took.group(1)))
            names = map_names(int(match.group(1))) if match else None
            if names:
                entries += sum(len(n) for n in names.values())
                wrong += sum(1 for n in names.values() if len(n) > 1)
        label = ("perftramp map" if mode == "map" else "CPython -X perf") + (
            ", toggled" if toggle != "0" else ", always on")
        print(f"{label:26}: {crashes} crashes, {failures} other failures, "
              f"{wrong} addresses named twice among {entries} map entries, "
              f"median {statistics.median(seconds) if seconds else float('nan'):.1f} s per run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--stress-runs", type=int, default=3)
    args = parser.parse_args()
    free = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    print(f"{sys.version.split()[0]} {'free-threaded' if free else 'with the GIL'}, "
          f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable)")
    throughput(args.repeat, args.units)
    stress(args.stress_runs)


if __name__ == "__main__":
    main()
