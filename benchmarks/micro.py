"""Micro benchmarks run inside one variant's process by benchmarks/run.py; prints one JSON line.

    python micro.py calls  [--repeat N]        # per-call, steady-state mix, first calls, exec bytes
    python micro.py toggle MODE [--dir D]      # enable/disable latency (MODE: map jit perf perf_jit)
    python micro.py many N                     # N new functions called once (for perf inject timing)

The variant (perftramp on through PERFTRAMP=..., CPython's -X perf, nothing) is set by whoever
starts the process; this script only measures, with time.perf_counter, inside the process. It
must run on CPython 3.9-3.14 with or without perftramp installed.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import types

# run.py's BENCH_CLOCK: "cpu" (default) times with the thread's CPU time, immune to waiting for
# a CPU on a shared machine; "wall" with time.perf_counter.
perf_counter = time.thread_time if os.environ.get("BENCH_CLOCK", "cpu") == "cpu" else time.perf_counter


# --- workloads ------------------------------------------------------------------------------------

def tiny(x):
    return x


def loop_call(n):
    f = tiny
    for i in range(n):
        f(i)


def loop_empty(n):
    f = tiny  # noqa: F841 - same prologue as loop_call
    for i in range(n):
        pass


class Point:
    __slots__ = ("x",)

    def __init__(self, x):
        self.x = x

    def shifted(self, d):
        return self.x + d


def make_adder(k):
    def add(x):
        return x + k
    return add


def counter(n):
    for i in range(n):
        yield i


def mix(n):
    """Per iteration: a method call, a closure call, a generator created and run to its end."""
    p = Point(3)
    add = make_adder(2)
    s = 0
    for i in range(n):
        s += p.shifted(i)
        s += add(i)
        for v in counter(3):
            s += v
    return s


def best(fn, n, repeat):
    times = []
    for _ in range(repeat):
        t0 = perf_counter()
        fn(n)
        times.append(perf_counter() - t0)
    return min(times)


def exec_bytes():
    """Bytes in anonymous executable mappings (trampoline arenas of perftramp and of CPython)."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) == 5 and "x" in fields[1]:  # no path: anonymous
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                total += hi - lo
    return total


def new_functions(count, tag, template=None):
    """`count` distinct new functions. The first batch is exec-compiled; later batches copy its
    code objects with another co_filename (code.replace: distinct code objects, no co_extra, at
    a fraction of the compile time)."""
    if template is None:
        src = "\n".join(f"def f_{i}(a):\n    return a + {i}" for i in range(count))
        ns: dict = {}
        exec(compile(src, f"/bench/first_calls_{tag}.py", "exec"), ns)
        return [ns[f"f_{i}"] for i in range(count)]
    filename = f"/bench/first_calls_{tag}.py"
    return [types.FunctionType(f.__code__.replace(co_filename=filename), f.__globals__, f.__name__)
            for f in template]


def perftramp_status():
    mod = sys.modules.get("perftramp")
    if mod is None or not mod.is_enabled():
        return None
    st = mod.status()
    return {"trampolines": st.trampolines, "used": st.executable_bytes_used,
            "mapped": st.executable_bytes, "jitdump": st.jitdump_path}


def run_calls(repeat: int, first_count: int, batches: int, calls: int, mix_n: int) -> dict:
    gc.disable()
    out: dict = {"pid": os.getpid()}
    # Warm everything this function runs so first-call batches only create their own trampolines.
    best(loop_call, 1000, 2)
    best(loop_empty, 1000, 2)
    best(mix, 100, 2)
    warm = new_functions(50, "warm")
    for f in warm:
        f(1)
    for f in new_functions(50, "warm2", warm):
        f(1)
    exec_bytes()
    perftramp_status()

    # Samples of a few ms, alternating, so a burst of noise on this shared machine hits a few
    # samples of each kind rather than all of one; minimum of each.
    t_call, t_empty, t_mix = [], [], []
    for _ in range(repeat * 4):
        t_call.append(best(loop_call, calls, 1))
        t_empty.append(best(loop_empty, calls, 1))
        t_mix.append(best(mix, mix_n, 1))
    out["ns_per_call"] = (min(t_call) - min(t_empty)) / calls * 1e9
    out["ns_per_loop_with_call"] = min(t_call) / calls * 1e9
    out["ns_per_mix"] = min(t_mix) / mix_n * 1e9

    template = new_functions(first_count, "0")
    status0 = perftramp_status()
    bytes0 = exec_bytes()
    first = []
    for batch in range(batches):
        fs = template if batch == 0 else new_functions(first_count, str(batch), template)
        t0 = perf_counter()
        for f in fs:
            f(1)
        first.append((perf_counter() - t0) / first_count * 1e6)
    out["us_per_first_call"] = min(first)
    out["us_per_first_call_all"] = first
    out["new_functions"] = first_count * batches
    out["exec_bytes_growth"] = exec_bytes() - bytes0
    status1 = perftramp_status()
    if status0 and status1:
        made = status1["trampolines"] - status0["trampolines"]
        out["tramp_made"] = made
        out["tramp_bytes_used_growth"] = status1["used"] - status0["used"]
        out["status_bytes_per_trampoline"] = status1["used"] / max(1, status1["trampolines"])
        out["jitdump"] = status1["jitdump"]
    return out


def run_toggle(mode: str, directory: str | None, rounds: int) -> dict:
    if mode in ("perf", "perf_jit"):
        def on():
            sys.activate_stack_trampoline(mode)

        def off():
            sys.deactivate_stack_trampoline()
    else:
        import perftramp

        def on():
            perftramp.enable(mode, directory=directory if mode != "map" else None)

        def off():
            perftramp.disable()
    out: dict = {"pid": os.getpid()}
    t0 = perf_counter()
    try:
        on()
    except ValueError as err:  # CPython 3.13's sys.activate_stack_trampoline has only "perf"
        return {"pid": os.getpid(), "unsupported": str(err)}
    t1 = perf_counter()
    for _ in range(3):
        tiny(1)
        mix(10)
    t2 = perf_counter()
    off()
    t3 = perf_counter()
    out["enable_cold_us"] = (t1 - t0) * 1e6
    out["disable_cold_us"] = (t3 - t2) * 1e6
    # The first toggle on its own line: re-activating may crash CPython (run.py keeps this line).
    print(json.dumps(out), flush=True)
    ons, offs = [], []
    for i in range(rounds):
        t0 = perf_counter()
        on()
        t1 = perf_counter()
        new_functions(1, f"toggle{i}")[0](1)  # one new function each time: a real state change
        t2 = perf_counter()
        off()
        t3 = perf_counter()
        ons.append((t1 - t0) * 1e6)
        offs.append((t3 - t2) * 1e6)
    ons.sort()
    offs.sort()
    out["enable_warm_us"] = ons[len(ons) // 2]
    out["disable_warm_us"] = offs[len(offs) // 2]
    return out


def run_many(n: int) -> dict:
    fs = new_functions(n, "many")
    assert sum(f(0) for f in fs) == sum(range(n))
    return {"pid": os.getpid()}


def main(argv: list) -> None:
    import argparse
    import random

    # Layout randomization (see run.py): shift the heap by a random amount in every process.
    global _heap_pad
    _heap_pad = [object() for _ in range(random.randrange(0, 2000))], bytearray(random.randrange(1, 9000))

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calls")
    c.add_argument("--repeat", type=int, default=5)
    c.add_argument("--first", type=int, default=20000)
    c.add_argument("--batches", type=int, default=3)
    c.add_argument("--calls", type=int, default=200_000)
    c.add_argument("--mix", type=int, default=10_000)
    t = sub.add_parser("toggle")
    t.add_argument("mode", choices=("map", "jit", "perf", "perf_jit"))
    t.add_argument("--dir")
    t.add_argument("--rounds", type=int, default=21)
    m = sub.add_parser("many")
    m.add_argument("n", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "calls":
        out = run_calls(args.repeat, args.first, args.batches, args.calls, args.mix)
    elif args.cmd == "toggle":
        out = run_toggle(args.mode, args.dir, args.rounds)
    else:
        out = run_many(args.n)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
