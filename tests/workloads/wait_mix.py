"""Threads that each do one known thing, so an off-CPU profile's split is known by construction.

    python wait_mix.py [SECONDS [TRUTH.json]]      (or env WAIT_MIX_SECONDS, WAIT_MIX_TRUTH)

Python 3.9+, stdlib only. SECONDS (default 1.5) is the length of each of two phases; the
program runs for about 2 * SECONDS. Every thread runs one function with a distinctive name and
sets its OS thread name (prctl PR_SET_NAME, so perf's comm tells the threads apart; also the
threading name):

    thread       function       what it does                                   expected split
    compute      compute_loop   pure-Python loop, phase 1 only                 ~100% cpu
    sleeper      sleep_loop     time.sleep(0.25) in a loop, both phases        ~100% sleep
    lock_holder  hold_lock      "holds" a threading.Lock (the main thread      ~100% sleep
                                took it) while sleeping; releases it at the end
    lock_waiter  wait_for_lock  lock.acquire() on that lock, both phases       ~100% lock
    pipe_writer  feed_pipe      writes a byte every 0.25 s, sleeping between   ~100% sleep
    pipe_reader  read_pipe      os.read(fd, 1) on the pipe until EOF           ~100% io
    gil_a/gil_b  gil_spin_a/_b  pure-Python loops, phase 2 only, together:     cpu = thread_time/wall,
                                they contend for the GIL (~50% CPU each)       the rest gil

The main thread (threading name MainThread, comm the interpreter's) starts the threads and
joins them in main() (lock wait; start-up and the truth file are its only CPU; its innermost
Python frame is threading's Thread.join or a helper of it, so its "functions" is empty).
compute runs alone in phase 1 and the gil pair in phase 2, so that no CPU-bound thread shares
the GIL with compute. A CPU-bound thread that is preempted (a loaded machine) loses CPU time
too: its measured thread_time says so, and the expected split puts that loss with its wait
category ("gil" for the gil pair, "preempted" for compute).

A waiting thread that wakes up must take the GIL before its function goes on, and in both
phases a CPU-bound thread holds it: each wake-up may wait up to the switch interval (5 ms) for
the GIL. The waiters therefore wake rarely (every 0.25 s: at most 2% of their time is GIL wait),
and the truth gives the bound: gil_wait_max_s = wake-ups * sys.getswitchinterval().

Truth (a JSON file, when a path is given): each thread measures its own wall time with
time.perf_counter from entering its function to leaving it, and its CPU time with
time.thread_time over the same span. Per thread: name, function, ident (threading.get_ident,
the pthread id: a later thread may reuse an exited one's), native_id (the OS tid: perf's tid,
py-spy's `thread (TID)`, profiling.sampling's `tid:TID`; match threads by it), wall_s, cpu_s,
startup_s (from the main thread's Thread.start() to the function's first line: threading's
bootstrap, outside the function), functions ({function: share of wall_s}, 1.0 by
construction: the function calls no Python function while it runs, so it is the innermost
Python frame of every sample in its span), expected ({category: share of wall}: cpu plus one
wait category; categories as perftramp's off-CPU reasons: gil, lock, io, sleep, preempted) and
main_category (the category the thread is built for), wakeups and gil_wait_max_s (above).
Top level: version, python, pid, seconds (phase length), process_wall_s (first line of the
program to the truth write).
"""

import json
import os
import sys
import threading
import time

T0 = time.perf_counter()

TRUTH = {}  # name -> dict
_TRUTH_LOCK = threading.Lock()
_STARTED = {}  # name -> perf_counter at Thread.start()
WAKE = 0.25  # a waiting thread's wake-up period, s


try:  # loaded here, not in the threads: an import in a thread is time outside its function
    import ctypes

    _PRCTL = ctypes.CDLL(None).prctl
except Exception:  # not Linux
    _PRCTL = None


def set_os_thread_name(name):
    """perf's comm for this thread (15 bytes at most); a no-op where prctl is not there."""
    if _PRCTL is not None:
        _PRCTL(15, name.encode()[:15], 0, 0, 0)


class Span:
    """Wall and CPU time of the calling thread from here to done()."""

    def __init__(self, name, function):
        set_os_thread_name(name)
        self.name = name
        self.function = function
        self.wall0 = time.perf_counter()
        self.cpu0 = time.thread_time()

    def done(self, main_category, wakeups=0):
        wall = time.perf_counter() - self.wall0
        cpu = time.thread_time() - self.cpu0
        cpu_share = min(1.0, cpu / wall) if wall > 0 else 0.0
        if main_category == "cpu":
            expected = {"cpu": cpu_share, "preempted": 1.0 - cpu_share}
        else:
            expected = {"cpu": cpu_share, main_category: 1.0 - cpu_share}
        with _TRUTH_LOCK:
            TRUTH[self.name] = {
                "name": self.name,
                "function": self.function,
                "ident": threading.get_ident(),
                "native_id": threading.get_native_id(),
                "wall_s": wall,
                "cpu_s": cpu,
                "startup_s": self.wall0 - _STARTED.get(self.name, self.wall0),
                "functions": {self.function: 1.0},
                "expected": expected,
                "main_category": main_category,
                "wakeups": wakeups,
                "gil_wait_max_s": wakeups * sys.getswitchinterval(),
            }


def compute_loop(deadline):
    span = Span("compute", "compute_loop")
    total = 0
    while time.perf_counter() < deadline:
        for i in range(2000):
            total += i * i % 7
    span.done("cpu")
    return total


def sleep_loop(deadline):
    span = Span("sleeper", "sleep_loop")
    wakeups = 0
    while time.perf_counter() < deadline:
        time.sleep(max(0.0, min(WAKE, deadline - time.perf_counter())))
        wakeups += 1
    span.done("sleep", wakeups)


def hold_lock(lock, deadline):
    span = Span("lock_holder", "hold_lock")
    wakeups = 0
    while time.perf_counter() < deadline:
        time.sleep(max(0.0, min(WAKE, deadline - time.perf_counter())))
        wakeups += 1
    lock.release()
    span.done("sleep", wakeups)


def wait_for_lock(lock):
    span = Span("lock_waiter", "wait_for_lock")
    lock.acquire()
    lock.release()
    span.done("lock", 1)


def feed_pipe(fd, deadline):
    span = Span("pipe_writer", "feed_pipe")
    wakeups = 0
    while time.perf_counter() < deadline:
        os.write(fd, b"x")
        time.sleep(max(0.0, min(WAKE, deadline - time.perf_counter())))
        wakeups += 1
    os.close(fd)
    span.done("sleep", wakeups)


def read_pipe(fd):
    span = Span("pipe_reader", "read_pipe")
    wakeups = 1
    while os.read(fd, 1):
        wakeups += 1
    os.close(fd)
    span.done("io", wakeups)


def gil_spin_a(deadline):
    span = Span("gil_a", "gil_spin_a")
    total = 0
    while time.perf_counter() < deadline:
        for i in range(2000):
            total += i * i % 7
    span.done("gil")
    return total


def gil_spin_b(deadline):
    span = Span("gil_b", "gil_spin_b")
    total = 0
    while time.perf_counter() < deadline:
        for i in range(2000):
            total += i * i % 7
    span.done("gil")
    return total


def start(name, target, *args):
    thread = threading.Thread(target=target, args=args, name=name)
    _STARTED[name] = time.perf_counter()
    thread.start()
    return thread


def main():
    seconds = float(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WAIT_MIX_SECONDS", "1.5"))
    truth_path = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("WAIT_MIX_TRUTH", "")
    main_wall0 = time.perf_counter()
    main_cpu0 = time.thread_time()

    now = time.perf_counter()
    end1, end2 = now + seconds, now + 2 * seconds
    lock = threading.Lock()
    lock.acquire()  # released by lock_holder (a Lock has no owner)
    read_fd, write_fd = os.pipe()
    waiters = [
        start("sleeper", sleep_loop, end2),
        start("lock_holder", hold_lock, lock, end2),
        start("lock_waiter", wait_for_lock, lock),
        start("pipe_reader", read_pipe, read_fd),
        start("pipe_writer", feed_pipe, write_fd, end2),
    ]
    compute = start("compute", compute_loop, end1)
    compute.join()
    gil = [start("gil_a", gil_spin_a, end2), start("gil_b", gil_spin_b, end2)]
    for thread in waiters + gil:
        thread.join()

    wall = time.perf_counter() - main_wall0
    cpu = time.thread_time() - main_cpu0
    cpu_share = min(1.0, cpu / wall) if wall > 0 else 0.0
    TRUTH["MainThread"] = {
        "name": "MainThread", "function": "main", "ident": threading.get_ident(),
        "native_id": threading.get_native_id(), "wall_s": wall, "cpu_s": cpu, "startup_s": 0.0,
        # its innermost Python frame is threading's join (version-dependent): no function share
        "functions": {}, "expected": {"cpu": cpu_share, "lock": 1.0 - cpu_share},
        "main_category": "lock", "wakeups": 0, "gil_wait_max_s": 0.0,
    }
    result = {
        "version": 1,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "seconds": seconds,
        "process_wall_s": time.perf_counter() - T0,
        "threads": [TRUTH[name] for name in sorted(TRUTH)],
    }
    if truth_path:
        with open(truth_path + ".tmp", "w") as out:
            json.dump(result, out, indent=1)
        os.replace(truth_path + ".tmp", truth_path)
    for t in result["threads"]:
        print("%-12s %-14s wall %.3f s cpu %.3f s" % (t["name"], t["function"], t["wall_s"], t["cpu_s"]))


if __name__ == "__main__":
    main()
