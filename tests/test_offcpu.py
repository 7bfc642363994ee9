"""Off-CPU time (python/perftramp/_offcpu.py): the reason of each wait, from stacks perf
recorded here (CPython 3.12, perf 6.1, `record --off-cpu`), and the wall view's arithmetic.
End-to-end runs are in tests/test_offcpu_record.py."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from perftramp import _folding as fold
from perftramp import _offcpu as oc
from perftramp._measure import OFF_CPU_DSO, REASONS, off_cpu_reason, off_cpu_symbol

LIBPYTHON = "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
K = "[kernel.kallsyms]"
ROOT = [("_start", "/usr/bin/python3.12"), ("__libc_start_main@@GLIBC_2.34", LIBC),
        ("Py_BytesMain", LIBPYTHON), ("py::main:/app/t.py", "/tmp/perf-1.map"),
        ("_PyEval_EvalFrameDefault", LIBPYTHON)]
SYSCALL = [("entry_SYSCALL_64_after_hwframe", K), ("do_syscall_64", K)]
FUTEX = SYSCALL + [("__x64_sys_futex", K), ("do_futex", K), ("futex_wait", K), ("__futex_wait", K),
                   ("futex_do_wait", K), ("schedule", K), ("__schedule", K)]


def stack(*middle: Tuple[str, str], kernel: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    return ROOT + list(middle) + kernel


def py(*names: str) -> List[Tuple[str, str]]:
    return [(n, LIBPYTHON) for n in names]


CASES = {
    # time.sleep, then the GIL taken back while another thread computes.
    "gil": ("S", stack(*py("time_sleep", "PyEval_RestoreThread", "take_gil"),
                       ("pthread_cond_timedwait@@GLIBC_2.3.2", LIBC), kernel=FUTEX)),
    # The eval breaker asked to drop the GIL, waiting for the other thread to take it.
    "gil-handover": ("S", stack(*py("_Py_HandlePending", "drop_gil"),
                                ("pthread_cond_wait@@GLIBC_2.3.2", LIBC), kernel=FUTEX)),
    # An interpreter without symbols for its static take_gil (Debian's stripped binaries).
    "gil-stripped": ("S", stack(("[unknown]", LIBPYTHON),
                                ("pthread_cond_timedwait@@GLIBC_2.3.2", LIBC), kernel=FUTEX)),
    # Debian's stripped 3.14: os.read's return takes the GIL through unnamed static functions.
    "gil-stripped-condvar": ("S", stack(("[unknown]", LIBPYTHON), ("[unknown]", LIBPYTHON),
                                        ("pthread_cond_timedwait@@GLIBC_2.3.2", LIBC), ("[unknown]", LIBC),
                                        kernel=FUTEX)),
    # ...and drop_gil, unnamed, preempted as it signals the GIL's condition variable.
    "preempted-stripped-handover": ("R+", stack(("_Py_HandlePending", LIBPYTHON), ("[unknown]", LIBPYTHON),
                                                ("pthread_cond_signal", LIBC),
                                                kernel=SYSCALL + [("exit_to_user_mode_loop", K)])),
    # A C extension's own condition variable is not the GIL.
    "ext-condvar": ("S", stack(("worker_wait", "/app/ext.so"), ("pthread_cond_wait@@GLIBC_2.3.2", LIBC),
                               kernel=FUTEX)),
    "lock": ("S", stack(*py("lock_PyThread_acquire_lock", "acquire_timed", "PyThread_acquire_lock_timed"),
                        ("__new_sem_wait_slow64.constprop.0", LIBC), kernel=FUTEX)),
    "io": ("S", stack(*py("os_read", "_Py_read"), ("read", LIBC),
                      kernel=SYSCALL + [("ksys_read", K), ("vfs_read", K), ("anon_pipe_read", K),
                                        ("schedule", K)])),
    "sleep": ("S", stack(*py("time_sleep"), ("clock_nanosleep@GLIBC_2.2.5", LIBC),
                         kernel=SYSCALL + [("__x64_sys_clock_nanosleep", K), ("hrtimer_nanosleep", K),
                                           ("do_nanosleep", K), ("schedule", K)])),
    # CPython 3.9/3.10's time.sleep is select() with a timeout: still a sleep.
    "sleep-select": ("S", stack(*py("time_sleep", "pysleep"), ("select", LIBC),
                                kernel=SYSCALL + [("core_sys_select", K), ("do_select", K),
                                                  ("schedule_hrtimeout_range", K), ("schedule", K)])),
    "page-fault": ("D", stack(("strchr", LIBC),
                              kernel=[("asm_exc_page_fault", K), ("exc_page_fault", K),
                                      ("handle_mm_fault", K), ("filemap_fault", K),
                                      ("folio_wait_bit_common", K), ("io_schedule", K)])),
    # Preempted in the middle of anything (here a write): runnable, waiting for a CPU.
    "preempted": ("R+", stack(*py("os_write", "_Py_write"), ("__GI___libc_write", LIBC),
                              kernel=SYSCALL + [("exit_to_user_mode_loop", K), ("schedule", K)])),
    # Preempted right after drop_gil woke the other thread (which took this CPU): the GIL.
    "preempted-handing-over": ("R+", stack(*py("_Py_HandlePending", "drop_gil"), ("__GI___lll_lock_wake", LIBC),
                                           kernel=SYSCALL + [("exit_to_user_mode_loop", K), ("schedule", K)])),
    "disk": ("D", stack(("__libc_openat64", LIBC),
                        kernel=SYSCALL + [("do_sys_openat2", K), ("out_of_line_wait_on_bit", K),
                                          ("bit_wait_io", K), ("schedule", K)])),
    "other": ("S", stack(("waitpid", LIBC), kernel=SYSCALL + [("do_wait", K), ("schedule", K)])),
}
EXPECTED = {"gil": "gil", "gil-handover": "gil", "gil-stripped": "gil", "gil-stripped-condvar": "gil",
            "preempted-stripped-handover": "gil", "ext-condvar": "lock", "lock": "lock", "io": "io",
            "sleep": "sleep", "sleep-select": "sleep", "page-fault": "page-fault",
            "preempted": "preempted", "preempted-handing-over": "gil", "disk": "io", "other": "other"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_wait_gets_its_reason(case: str) -> None:
    state, frames = CASES[case]
    assert oc.reason(state, frames) == EXPECTED[case]
    assert EXPECTED[case] in REASONS


def test_a_futex_wait_is_the_gil_only_under_the_gil_or_the_eval_loop_itself() -> None:
    # Debian's CPython 3.14 names no static function: the eval breaker's take_gil is an
    # unnamed frame right under _PyEval_EvalFrameDefault, which then counts as the GIL...
    state, frames = CASES["gil-stripped"]
    assert oc.reason(state, frames) == "gil"
    # ...but a lock taken through a named (exported) function stays a lock.
    locked = ROOT + [("[unknown]", LIBPYTHON)] + py("_PyMutex_LockTimed", "_PyParkingLot_Park") + FUTEX
    assert oc.reason("S", locked) == "lock"
    # A futex outside the interpreter (a C extension's mutex) is a lock too.
    assert oc.reason("S", ROOT + [("my_mutex_lock", "/app/ext.so")] + FUTEX) == "lock"
    # The eval loop itself waiting on a futex (through libc) is the eval breaker's GIL.
    assert oc.reason("S", ROOT + [("pthread_cond_timedwait@@GLIBC_2.3.2", LIBC)] + FUTEX) == "gil"


def test_the_off_cpu_frame_round_trips() -> None:
    for reason in REASONS:
        assert off_cpu_reason(off_cpu_symbol(reason)) == reason
    assert off_cpu_reason("py::main:/app/t.py") == ""
    assert fold.frame_kind(off_cpu_symbol("io"), OFF_CPU_DSO) == fold.OFFCPU


def test_wall_stacks_weigh_cpu_samples_and_waits_in_microseconds() -> None:
    compute = ROOT + py("long_add")
    _, lock = CASES["lock"]
    rows = [
        (3, 10, "worker", compute, "cpu-clock/freq=249/", 12_000_000),   # 12 ms on CPU
        (2, 10, "worker", lock, "off-cpu:S", 30_000_000),                # 30 ms waiting
        (5, 10, "worker", compute, "sched:sched_switch", 5),             # never counted itself
        (1, 10, "worker", compute, "page-faults", 100),                  # another event: not time
        (1, 10, "worker", lock, "off-cpu:S", 400),                       # under 0.5 µs: dropped
    ]
    wall = oc.wall_stacks(rows, oc.reasons(rows), "cpu-clock/freq=249/")
    assert sum(wall.values()) == 42_000
    waits = {k: v for k, v in wall.items() if k[2][-1] == (off_cpu_symbol("lock"), OFF_CPU_DSO)}
    assert sum(waits.values()) == 30_000


def view(stacks: dict) -> List[fold.ViewStack]:
    return fold.python_view(stacks)


def test_tables_split_each_thread_and_function_into_cpu_and_waits() -> None:
    _, lock = CASES["lock"]
    _, sleep = CASES["sleep"]
    rows = [
        (1, 10, "worker", ROOT + py("long_add"), "cpu-clock", 25_000_000),
        (1, 10, "worker", lock, "off-cpu:S", 75_000_000),
        (1, 10, "sleeper", sleep, "off-cpu:S", 100_000_000),
    ]
    stacks = view(oc.wall_stacks(rows, oc.reasons(rows), "cpu-clock"))
    threads = oc.thread_table(stacks)
    worker = next(line for line in threads.splitlines() if line.endswith("worker [pid 10]"))
    sleeper = next(line for line in threads.splitlines() if line.endswith("sleeper [pid 10]"))
    header = threads.splitlines()[1].split()
    assert header[:2] == ["wall", "ms"] and header[2:5] == ["cpu", "lock", "sleep"]
    assert worker.split()[:4] == ["100", "25.0%", "75.0%", "0.0%"]
    assert sleeper.split()[:4] == ["100", "0.0%", "0.0%", "100.0%"]
    table = oc.wall_table(stacks)
    main = next(line for line in table.splitlines() if " main " in f" {line} ")
    # main is the innermost Python frame of all 200 ms: 25 on CPU, 175 waiting, mostly sleep.
    assert main.split()[:5] == ["100.00%", "12.50%", "87.50%", "100.00%", "sleep"]
