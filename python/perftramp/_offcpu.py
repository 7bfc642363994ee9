"""Off-CPU time (`record --off-cpu`): why each wait happened, the wall view, and its tables.

The reader (crates/analysis, off_cpu.rs) turns every `sched:sched_switch` sample into an
interval, from the thread's switch-out (its stack: where it waits) to its next switch-in, named
`off-cpu:<state>` with the kernel's state letters. Here each interval gets a reason from that
state and its stack, and joins the on-CPU samples (each weighed by its period) in the wall
view: a thread's whole life, in microseconds, on CPU or waiting.

Reasons (in this order: the first that matches wins):

* preempted: the state is `R` (runnable): the thread wanted a CPU and had none (but gil when
  it was preempted inside `drop_gil` or `take_gil`, or as the interpreter signalled a condition
  variable: handing the GIL over, the thread it woke took its CPU, and it would wait for the
  GIL next).
* page-fault: the kernel stack is handling a page fault (it had to wait for memory or disk).
* gil: the interpreter waits on a condition variable (`pthread_cond_timedwait`: on Linux
  CPython has one for the GIL only, its locks are semaphores), or the innermost named
  interpreter frame takes the GIL (`take_gil`, `PyEval_RestoreThread`, `PyEval_AcquireThread`,
  `PyGILState_Ensure`, `_PyThreadState_Attach`, the eval breaker) or hands it over (`drop_gil`
  waits until another thread has taken it), or the eval loop itself waits on a futex.
* sleep: `time.sleep` (CPython's `pysleep`: select() on 3.9-3.10), nanosleep, timers.
* lock: a futex (Python locks, Condition, Queue, C mutexes).
* io: sockets, pipes, terminals, select/poll/epoll, files and disks (and any wait in state D).
* other: anything else (waitpid, signals, a stopped thread).
"""

from __future__ import annotations

import heapq
import re
from typing import Dict, List, Mapping, Sequence, Tuple

from . import _folding as fold
from . import _rawstacks as raw
from ._measure import OFF_CPU_DSO, off_cpu_reason, off_cpu_symbol

#: The event prefix of the reader's off-CPU intervals.
OFF_CPU_EVENT = "off-cpu:"

_PAGE_FAULT = re.compile(r"^(?:asm_exc_page_fault|exc_page_fault|do_user_addr_fault|handle_mm_fault"
                         r"|__handle_mm_fault|do_page_fault|handle_page_fault)$")
_GIL = frozenset({
    "take_gil", "drop_gil", "PyEval_RestoreThread", "PyEval_AcquireThread", "PyEval_AcquireLock",
    "PyGILState_Ensure", "_PyThreadState_Attach", "_PyEval_AcquireLock", "eval_frame_handle_pending",
    "_Py_HandlePending", "_PyEval_HandlePending", "handle_eval_breaker", "_PyEval_EvalFrameDefault",
})
_SLEEP_USER = frozenset({"pysleep", "time_sleep"})
_SLEEP_KERNEL = re.compile(r"^(?:hrtimer_nanosleep|do_nanosleep|common_nsleep|__x64_sys_clock_nanosleep"
                           r"|__x64_sys_nanosleep|__arm64_sys_clock_nanosleep|__arm64_sys_nanosleep)$")
_FUTEX = re.compile(r"^(?:futex_wait\w*|__futex_wait\w*|do_futex|__x64_sys_futex|__arm64_sys_futex"
                    r"|futex_q_lock\w*)$")
_IO = re.compile(
    r"^(?:pipe_read|pipe_write|do_epoll_wait|ep_poll|do_select|core_sys_select|do_sys_poll|do_poll"
    r"|sock_\w+|tcp_\w+|udp_\w+|unix_\w+|inet_\w+|sk_wait_data|sk_stream_wait\w*|wait_woken"
    r"|n_tty_read|tty_read|io_schedule\w*|blk_\w+|ext4_\w+|xfs_\w+|btrfs_\w+|nfs_\w+|fuse_\w+"
    r"|folio_wait\w*|wait_on_page\w*|__lock_page\w*|filemap_\w+|vfs_read|vfs_write|ksys_read"
    r"|ksys_write|__sys_recv\w*|__sys_send\w*|__sys_accept\w*|__sys_connect|io_uring\w*)$")


def is_off_cpu_event(event: str) -> bool:
    return event.startswith(OFF_CPU_EVENT)


def reason(state: str, frames: Sequence[Tuple[str, str]]) -> str:
    """Why a thread waited: `state` as the reader names it (`S`, `D`, `R+`...), `frames` its
    stack at the switch-out, outermost first (see the module's docstring)."""
    kernel = [fold.base_symbol(s) for s, d in frames if fold.frame_kind(s, d) == fold.KERNEL]
    user = [(fold.base_symbol(s), d) for s, d in frames if fold.frame_kind(s, d) != fold.KERNEL]
    if state.startswith("R"):
        # Preempted while handing the GIL over (drop_gil woke the other thread, which took this
        # CPU) or taking it: the thread would wait for the GIL next; else it waits for a CPU.
        return "gil" if _in_gil_handover(user) else "preempted"
    if any(_PAGE_FAULT.match(s) for s in kernel):
        return "page-fault"
    futex = any(_FUTEX.match(s) for s in kernel)
    if (futex or not kernel) and _waits_for_gil(user):
        return "gil"
    if any(s in _SLEEP_USER for s, _ in user) or any(_SLEEP_KERNEL.match(s) for s in kernel):
        return "sleep"
    if futex:
        return "lock"
    if any(_IO.match(s) for s in kernel) or "D" in state:
        return "io"
    return "other"


#: On Linux CPython waits on a condition variable for the GIL only (its locks are semaphores):
#: an interpreter frame calling one of these is the GIL, named or not (a stripped interpreter).
_CONDVAR_WAIT = frozenset({"pthread_cond_wait", "pthread_cond_timedwait", "pthread_cond_clockwait"})
_CONDVAR_WAKE = frozenset({"pthread_cond_signal", "pthread_cond_broadcast"})


def _caller_and_libc_call(user: Sequence[Tuple[str, str]]) -> Tuple[Tuple[str, str], str]:
    """The innermost user frame outside the C runtime, and the C runtime function it called
    (its outermost named frame, without its symbol version: `pthread_cond_timedwait`)."""
    index = len(user)
    while index > 0 and fold.is_c_runtime(user[index - 1][1]):
        index -= 1
    caller = user[index - 1] if index > 0 else ("", "")
    called = next((s.split("@", 1)[0] for s, _ in user[index:] if s not in ("[unknown]", "")), "")
    return caller, called


def _in_gil_handover(user: Sequence[Tuple[str, str]]) -> bool:
    (symbol, dso), called = _caller_and_libc_call(user)
    if fold.frame_kind(symbol, dso) != fold.INTERPRETER:
        return False
    return symbol in ("drop_gil", "take_gil") or called in _CONDVAR_WAKE or called in _CONDVAR_WAIT


def _waits_for_gil(user: Sequence[Tuple[str, str]]) -> bool:
    """Whether the innermost user frame past the C runtime is the interpreter taking or handing
    over the GIL: by its name, by the condition variable it waits on, or, when it has no name
    (a static function of a stripped interpreter), by the innermost named interpreter frame."""
    (symbol, dso), called = _caller_and_libc_call(user)
    if fold.frame_kind(symbol, dso) != fold.INTERPRETER:
        return False  # a C extension's own wait, or none at all
    if called in _CONDVAR_WAIT:
        return True
    if symbol not in ("[unknown]", ""):
        return symbol in _GIL
    named = [s for s, d in user if fold.frame_kind(s, d) == fold.INTERPRETER and s not in ("[unknown]", "")]
    return bool(named) and named[-1] in _GIL


#: A stack as the reader returns it: (count, pid, comm, frames outermost first, event, weight).
Row = Tuple[int, int, str, Sequence[Tuple[str, str]], str, int]


def reasons(rows: Sequence[Row]) -> Dict[int, str]:
    """The reason of every off-CPU row, by its index (the reader's stack id)."""
    return {index: reason(event[len(OFF_CPU_EVENT):], frames)
            for index, (_, _, _, frames, event, _) in enumerate(rows) if is_off_cpu_event(event)}


def wall_stacks(rows: Sequence[Row], why: Mapping[int, str], cpu_event: str) -> raw.RawStacks:
    """The wall view's stacks in microseconds, from the reader's rows: `cpu_event`'s samples
    weighed by their period (nanoseconds on CPU), and every off-CPU interval under a last frame
    naming its reason (`why`, from reasons())."""
    nanoseconds: Dict[raw.RawKey, int] = {}
    for index, (_, pid, comm, frames, event, weight) in enumerate(rows):
        if index in why:
            frames = list(frames) + [(off_cpu_symbol(why[index]), OFF_CPU_DSO)]
        elif event != cpu_event:
            continue
        key = raw.key(comm, pid, frames)
        nanoseconds[key] = nanoseconds.get(key, 0) + weight
    return {key: round(ns / 1000) for key, ns in nanoseconds.items() if ns >= 500}


def gil_holders(rows: Sequence[Row], why: Mapping[int, str],
                timeline: Mapping[str, Sequence[Tuple[int, ...]]]) -> raw.RawStacks:
    """What ran while threads waited for the GIL: the CPU samples (microseconds, their
    stacks) taken in a process while another of its threads was in an off-CPU interval whose
    reason (`why`, from reasons()) is the GIL. `timeline` is the reader's: `intervals` (pid,
    tid, start, end, stack index) and `samples` (pid, tid, time, stack index, weight), stack
    index = row index."""
    gil = {index for index, named in why.items() if named == "gil"}
    waits: Dict[int, List[Tuple[int, int, int]]] = {}
    for pid, tid, start, end, stack in timeline.get("intervals", ()):
        if stack in gil:
            waits.setdefault(pid, []).append((start, end, tid))
    nanoseconds: Dict[raw.RawKey, int] = {}
    samples: Dict[int, List[Tuple[int, int, int, int]]] = {}
    for pid, tid, time, stack, weight in timeline.get("samples", ()):
        if pid in waits:
            samples.setdefault(pid, []).append((time, tid, stack, weight))
    for pid, pending in waits.items():
        pending.sort()
        active: List[Tuple[int, int]] = []  # (end, tid) of the waits covering the current time
        next_wait = 0
        for time, tid, stack, weight in sorted(samples.get(pid, ())):
            while next_wait < len(pending) and pending[next_wait][0] <= time:
                start, end, waiter = pending[next_wait]
                heapq.heappush(active, (end, waiter))
                next_wait += 1
            while active and active[0][0] < time:
                heapq.heappop(active)
            if any(waiter != tid for _, waiter in active):
                _, _, comm, frames, _, _ = rows[stack]
                key = raw.key(comm, pid, frames)
                nanoseconds[key] = nanoseconds.get(key, 0) + weight
    return {key: round(ns / 1000) for key, ns in nanoseconds.items() if ns >= 500}


def gil_table(stacks: Sequence[fold.ViewStack], limit: int = 10) -> str:
    """The Python functions on CPU while other threads of their process waited for the GIL
    (self = the innermost Python frame)."""
    total = sum(s.count for s in stacks)
    if total == 0:
        return ""
    held: Dict[Tuple[str, str, int, str], int] = {}
    for stack in stacks:
        python = [f for f in stack.frames if f.kind == fold.PYTHON]
        function, where = ("(no Python frame)", "")
        if python:
            leaf = python[-1]
            function, where = leaf.function, f"{leaf.file}:{leaf.line}" if leaf.line else leaf.file
        row = (function, where, stack.pid, stack.comm)
        held[row] = held.get(row, 0) + stack.count
    lines = [f"While threads waited for the GIL, on CPU in another thread of their process "
             f"({_ms(total)} ms; the likely GIL holders):",
             f"{'ms':>9} {'share':>7}  function  file:line  (thread)"]
    for (function, where, pid, comm), count in sorted(held.items(), key=lambda item: -item[1])[:limit]:
        lines.append(f"{_ms(count):>9} {100.0 * count / total:6.1f}%  {function}  {where}  "
                     f"({fold.process_frame(comm, pid).label})")
    return "\n".join(lines) + "\n"


def off_cpu_only(stacks: Sequence[fold.ViewStack]) -> List[fold.ViewStack]:
    return [s for s in stacks if is_off_cpu(s)]


def is_off_cpu(stack: fold.ViewStack) -> bool:
    return bool(stack.frames) and stack.frames[-1].kind == fold.OFFCPU


def off_cpu_reason_of(stack: fold.ViewStack) -> str:
    """Why an off-CPU stack's thread waited ("" for an on-CPU stack)."""
    return off_cpu_reason(stack.frames[-1].symbol) if is_off_cpu(stack) else ""


def stack_reason(stack: fold.ViewStack) -> str:
    """`cpu` for on-CPU time, else the off-CPU reason."""
    return off_cpu_reason_of(stack) or "cpu"


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:,.0f}"


def wall_table(stacks: Sequence[fold.ViewStack], limit: int = 15) -> str:
    """The Python functions by wall time (self = the innermost Python frame of a stack), split
    into on-CPU and off-CPU, with the main reason each waited."""
    total = sum(s.count for s in stacks)
    if total == 0:
        return "no wall time recorded\n"
    on: Dict[fold.ViewFrame, int] = {}
    off: Dict[fold.ViewFrame, int] = {}
    inclusive: Dict[fold.ViewFrame, int] = {}
    reasons: Dict[fold.ViewFrame, Dict[str, int]] = {}
    for stack in stacks:
        python = [f for f in stack.frames if f.kind == fold.PYTHON]
        if not python:
            continue
        why = stack_reason(stack)
        leaf = python[-1]
        side = on if why == "cpu" else off
        side[leaf] = side.get(leaf, 0) + stack.count
        if why != "cpu":
            by = reasons.setdefault(leaf, {})
            by[why] = by.get(why, 0) + stack.count
        for frame in set(python):
            inclusive[frame] = inclusive.get(frame, 0) + stack.count
    pct = 100.0 / total
    rows = sorted(inclusive, key=lambda f: (-(on.get(f, 0) + off.get(f, 0)), -inclusive[f], f.label))[:limit]
    lines = [f"Python functions, by wall time ({_ms(total)} ms of threads' time; self = the "
             f"innermost Python frame, on CPU or waiting; total = anywhere on the stack):",
             f"{'self':>8} {'on-CPU':>8} {'off-CPU':>8} {'total':>8}  {'waiting on':<16} function  file:line"]
    for frame in rows:
        where = f"{frame.file}:{frame.line}" if frame.line else frame.file
        by = reasons.get(frame, {})
        waits = max(by, key=lambda r: by[r]) if by else ""
        mine_on, mine_off = on.get(frame, 0), off.get(frame, 0)
        lines.append(f"{(mine_on + mine_off) * pct:7.2f}% {mine_on * pct:7.2f}% {mine_off * pct:7.2f}% "
                     f"{inclusive[frame] * pct:7.2f}%  {waits:<16} {frame.function}  {where}".rstrip())
    if len(inclusive) > len(rows):
        lines.append(f"    ... {len(inclusive) - len(rows)} more (--top N)")
    return "\n".join(lines) + "\n"


def thread_table(stacks: Sequence[fold.ViewStack]) -> str:
    """Per thread (`comm [pid N]`): its wall time, and the share on CPU and waiting, by reason."""
    threads: Dict[Tuple[int, str], Dict[str, int]] = {}
    for stack in stacks:
        by = threads.setdefault((stack.pid, stack.comm), {})
        why = stack_reason(stack)
        by[why] = by.get(why, 0) + stack.count
    if not threads:
        return ""
    from ._measure import REASONS

    columns = ["cpu"] + [r for r in REASONS if any(r in by for by in threads.values())]
    lines = ["Threads, by wall time (on CPU, and off CPU by reason, % of the thread's time):",
             f"{'wall ms':>9} " + " ".join(f"{c:>10}" for c in columns) + "  thread"]
    for (pid, comm), by in sorted(threads.items(), key=lambda item: -sum(item[1].values())):
        wall = sum(by.values())
        cells = " ".join(f"{100.0 * by.get(c, 0) / wall:9.1f}%" for c in columns)
        lines.append(f"{_ms(wall):>9} {cells}  {fold.process_frame(comm, pid).label}")
    return "\n".join(lines) + "\n"
