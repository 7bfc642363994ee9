"""The programs benchmarks/peers.py profiles, one per run:

    python benchmarks/peers_workloads.py calls|sympy|split

- calls: call-heavy pure Python (recursion, small methods, a closure), ~3 s here;
- sympy: a fixed symbolic computation with sympy (expand, factor, integrate, series, solve);
- split: three leaf functions running the same loop with iteration counts in 5:3:2, so that
  their CPU time splits 50/30/20 by construction; each call is timed in-process (thread CPU
  time) so the split is checked without any profiler.

The work is fixed (not a duration), so that a profiler's slowdown shows as a longer run. When
PEERS_RESULT is set, the program writes there, as its last act, a JSON object: its pid, its
time.monotonic() at its first and last line (CLOCK_MONOTONIC is system-wide: the harness
compares it with its own clock), its CPU time until then and, for split, the CPU seconds spent
in each function.
"""

import json
import os
import sys
import time

FIRST_LINE = time.monotonic()


# --- calls ----------------------------------------------------------------------------------------

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Vec:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def add(self, other):
        return Vec(self.x + other.x, self.y + other.y)

    def dot(self, other):
        return self.x * other.x + self.y * other.y


def walk(n):
    v, step, total = Vec(0, 0), Vec(1, 2), 0
    for _ in range(n):
        v = v.add(step)
        total += v.dot(step)
    return total


def make_scaler(k):
    def scale(x):
        return x * k
    return scale


def apply_all(n):
    scalers = [make_scaler(k) for k in range(8)]
    return sum(f(i) for i in range(n) for f in scalers)


def calls():
    for _ in range(80):
        fib(22)
        walk(30000)
        apply_all(6000)


# --- sympy ----------------------------------------------------------------------------------------

def symbolic():
    import sympy as sp

    x, y, z = sp.symbols("x y z")
    sp.factor(sp.expand((x + y + 1) ** 8 * (x - z) ** 5))
    sp.integrate(sp.sin(x) ** 5 * sp.cos(x) ** 4, x)
    sp.integrate(x ** 3 * sp.exp(-x ** 2), (x, 0, sp.oo))
    sp.series(sp.tan(x) * sp.exp(x), x, 0, 12)
    sp.limit((sp.sin(x) - x + x ** 3 / 6) / x ** 5, x, 0)
    sp.solve([x ** 2 + y ** 2 - 4, x - y - 1], [x, y])
    sp.simplify((sp.sin(x) ** 2 + sp.cos(x) ** 2) * sp.exp(sp.log(y + 1)))
    sp.Matrix(5, 5, lambda i, j: sp.Symbol(f"a{i}{j}")).det(method="berkowitz")
    sp.integrate(1 / (x ** 3 + 1), x)
    f = sp.Function("f")
    sp.dsolve(f(x).diff(x, 2) + 3 * f(x).diff(x) + 2 * f(x) - sp.sin(x), f(x))
    sp.integrate(sp.exp(x) * sp.sin(2 * x) * x ** 2, x)
    sp.integrate(sp.sqrt(1 + x ** 2) / x, x)
    sp.simplify(sp.cos(x) ** 6 - sp.sin(x) ** 6 + 3 * sp.sin(x) ** 2 * sp.cos(x) ** 2)


# --- split ----------------------------------------------------------------------------------------
# Three copies of one loop (not one shared helper): each function is a leaf, so its self time
# and its time on the stack are the same, and a profiler that only sees the innermost Python
# frame is not at a disadvantage.

def share_50(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def share_30(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def share_20(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


SPLIT = ((share_50, 5), (share_30, 3), (share_20, 2))
#: Iterations per unit of the 5:3:2 ratio, and rounds: the three functions alternate in short
#: turns (~25 ms per round), so that a burst of load on the machine hits all three alike.
SPLIT_UNIT = 40000
SPLIT_ROUNDS = 75


def split():
    spent = {f.__name__: 0.0 for f, _ in SPLIT}
    for _ in range(SPLIT_ROUNDS):
        for function, units in SPLIT:
            t0 = time.thread_time()
            function(units * SPLIT_UNIT)
            spent[function.__name__] += time.thread_time() - t0
    return spent


WORKLOADS = {"calls": calls, "sympy": symbolic, "split": split}


# Not main(): benchmarks/peers.py finds this function by name in every tool's stacks (it is on
# the stack of all the program's own work), and a name as common as main would match others.
def run_workload():
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in WORKLOADS:
        sys.exit(f"usage: peers_workloads.py {'|'.join(WORKLOADS)}")
    detail = WORKLOADS[name]()
    end = time.monotonic()
    cpu = time.process_time()
    out = os.environ.get("PEERS_RESULT")
    if out:
        with open(out, "w") as file:
            json.dump({"pid": os.getpid(), "first_line": FIRST_LINE, "end": end, "cpu": cpu,
                       "cpu_by_function": detail if isinstance(detail, dict) else None}, file)


if __name__ == "__main__":
    run_workload()
