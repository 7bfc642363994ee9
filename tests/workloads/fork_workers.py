"""Forked workers that spin in their own functions while the parent makes new functions.

    python fork_workers.py SCENARIO SECONDS

perftramp is enabled from the environment (PERFTRAMP=..., the start hook), as `record` does.
Prints one line per worker, `WORKER <pid> <function>`, and `PARENT <pid>`, so a test can check,
per process, what perf attributes its samples to. Scenarios:

- os_fork: two os.fork() children, each making its spin function's trampoline after the fork.
- inherited: the parent runs both spin functions (briefly) before forking: children only run
  trampolines they inherited.
- pool: a multiprocessing fork Pool of two workers.
- forkserver: a multiprocessing forkserver Pool of two workers (forked by a server process).
- c_fork: fork() called through ctypes (no Python at-fork hooks run; perftramp notices late).

Meanwhile the parent makes 300 new functions and spins in parent_spin: a child that reused the
parent's trampoline addresses would have its samples named after the parent's functions.

Every spin lasts SECONDS of the process's CPU time, not of the wall clock: on a loaded machine a
wall-clock spin gets less CPU while the pool's fixed work (start-up, pickling) does not, and a
worker's own share of its samples fell to 83% in one CI run (the tests want 90%).
"""

import os
import sys
import time

SCENARIO = sys.argv[1]
SECONDS = float(sys.argv[2])


def spin(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i * i
    return n


def worker_spin_a(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i * i
    return n


def worker_spin_b(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i ^ i
    return n


def parent_spin(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i | 1
    return n


def parent_makes_new_functions():
    namespace = {}
    exec("\n".join(f"def parent_new_{i}(): return {i}" for i in range(300)), namespace)
    for i in range(300):
        namespace[f"parent_new_{i}"]()


WORKERS = {"a": worker_spin_a, "b": worker_spin_b}


def say(line):
    os.write(1, (line + "\n").encode())  # one write: processes share the pipe


def run_worker(name):
    say(f"WORKER {os.getpid()} worker_spin_{name}")
    WORKERS[name](SECONDS)
    return os.getpid(), name


def fork_children(fork):
    pids = []
    for name in "ab":
        pid = fork()
        if pid == 0:
            try:
                run_worker(name)
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def main():
    say(f"PARENT {os.getpid()}")
    parent_spin(0.05)  # the parent's own code, made before any fork
    if SCENARIO == "inherited":
        worker_spin_a(0.001)
        worker_spin_b(0.001)
    if SCENARIO in ("os_fork", "inherited", "c_fork"):
        if SCENARIO == "c_fork":
            import ctypes
            fork = ctypes.CDLL(None, use_errno=True).fork
        else:
            fork = os.fork
        pids = fork_children(fork)
        parent_makes_new_functions()
        parent_spin(SECONDS / 2)
        for pid in pids:
            os.waitpid(pid, 0)
    elif SCENARIO in ("pool", "forkserver"):
        import multiprocessing
        context = multiprocessing.get_context("fork" if SCENARIO == "pool" else "forkserver")
        with context.Pool(2) as pool:
            result = pool.map_async(run_worker, ["a", "b"], chunksize=1)
            parent_makes_new_functions()
            parent_spin(SECONDS / 2)
            result.get(timeout=120)
    else:
        sys.exit(f"unknown scenario {SCENARIO!r}")


if __name__ == "__main__":
    main()
