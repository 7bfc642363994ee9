"""Workers started by exec, each spinning in a function of its own.

    python exec_workers.py spawn|forkserver|popen SECONDS
    python exec_workers.py popen-child a|b SECONDS      (what `popen` starts)

- spawn: a multiprocessing "spawn" Pool of two workers (each a new interpreter, exec'd).
- forkserver: a multiprocessing "forkserver" Pool of two workers (forked by an exec'd server).
- popen: two `subprocess.Popen([sys.executable, __file__, "popen-child", ...])`.

Each worker spins SECONDS of its own CPU time (time.process_time(), not the wall clock: the
machine may be loaded) in `<scenario>_spin_<a|b>`, and appends `WORKER <pid> <function>` to the
file named by PERFTRAMP_TEST_WORKERS (and prints it). The pools get one task per worker: each
task waits at a two-party barrier before spinning, so neither worker can take both tasks.
perftramp is enabled from the environment (PERFTRAMP=..., the start hook), as `record` does.
"""

import multiprocessing
import os
import subprocess
import sys
import time


def note(function):
    line = f"WORKER {os.getpid()} {function}\n"
    path = os.environ.get("PERFTRAMP_TEST_WORKERS")
    if path:
        with open(path, "a") as file:
            file.write(line)
    print(line, end="", flush=True)


# One function per worker, each with its own loop (the innermost Python frame of its samples).
def spawn_spin_a(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i * i
    return n


def spawn_spin_b(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i ^ i
    return n


def forkserver_spin_a(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i * i
    return n


def forkserver_spin_b(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i ^ i
    return n


def popen_spin_a(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i * i
    return n


def popen_spin_b(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i ^ i
    return n


_barrier = None


def _init(barrier):
    global _barrier
    _barrier = barrier


def pool_task(task):
    scenario, letter, seconds = task
    _barrier.wait(120)  # both workers hold a task: one task each
    name = f"{scenario}_spin_{letter}"
    note(name)
    globals()[name](seconds)
    return os.getpid(), name


def main():
    scenario = sys.argv[1]
    if scenario == "popen-child":
        name = f"popen_spin_{sys.argv[2]}"
        note(name)
        globals()[name](float(sys.argv[3]))
        return
    seconds = float(sys.argv[2])
    if scenario in ("spawn", "forkserver"):
        ctx = multiprocessing.get_context(scenario)
        barrier = ctx.Barrier(2)
        with ctx.Pool(2, initializer=_init, initargs=(barrier,)) as pool:
            result = pool.map_async(pool_task, [(scenario, "a", seconds), (scenario, "b", seconds)],
                                    chunksize=1)
            done = result.get(timeout=300)
            pool.close()
            pool.join()
        assert len({pid for pid, _ in done}) == 2, done
    elif scenario == "popen":
        children = [subprocess.Popen([sys.executable, __file__, "popen-child", letter, str(seconds)])
                    for letter in "ab"]
        for child in children:
            try:
                assert child.wait(timeout=300) == 0
            finally:
                if child.poll() is None:
                    child.kill()
    else:
        sys.exit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
