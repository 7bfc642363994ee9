"""perftramp must not change what a program does.

Every test runs one deterministic workload three times in this process: with perftramp off, then
on (the first call of each code object makes its trampoline: the cold path), then on again (the
trampoline is reused: the hot path). The three results must be equal, and perftramp must have made
new trampolines during the "on" runs, so a hook that silently did nothing fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
import types

import pytest

import perftramp


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def perftramp_off_afterwards():
    perftramp.disable()
    yield
    perftramp.disable()
    assert not perftramp.is_enabled()


def trampolines() -> int:
    return perftramp.status().trampolines


def same_off_and_on(workload):
    """Run `workload()` off, on (cold) and on (warm); assert equal results; return the result.

    Also asserts the hook really ran: the "on" runs made trampolines.
    """
    assert not perftramp.is_enabled()
    off = workload()
    before = trampolines()
    with perftramp.enabled():
        assert perftramp.is_enabled()
        on_cold = workload()
        on_warm = workload()
    assert not perftramp.is_enabled()
    made = trampolines() - before
    assert made > 0, "perftramp made no trampoline while enabled: the hook did not run"
    assert on_cold == off, "first run with perftramp on differs from the run with it off"
    assert on_warm == off, "second run with perftramp on differs from the run with it off"
    return off


def describe_exception(exc: BaseException):
    """An exception and its chain as plain data: type, message, traceback (function, line)."""
    chain = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = [(f.name, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]
        link = "cause" if exc.__cause__ is not None else "context" if exc.__context__ is not None else None
        chain.append((type(exc).__name__, str(exc), frames, link, exc.__suppress_context__))
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return chain


def outcome(fn, *args, **kwargs):
    """("ok", value) or ("raised", described exception), for comparing runs."""
    try:
        return ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - every outcome is compared, KeyboardInterrupt too
        return ("raised", describe_exception(exc))


def relative_line(frame) -> int:
    return frame.f_lineno - frame.f_code.co_firstlineno


# --- plain calls ---------------------------------------------------------------------------------


class Account:
    rate = 3

    def __init__(self, balance):
        self.balance = balance

    def deposit(self, amount, *, fee=0):
        self.balance += amount - fee
        return self.balance

    @classmethod
    def opened_with(cls, amount):
        return cls(amount * cls.rate)

    @staticmethod
    def fee_for(amount, percent=2):
        return amount * percent // 100

    @property
    def doubled(self):
        return self.balance * 2

    def __add__(self, other):
        return Account(self.balance + other.balance)

    def __repr__(self):
        return f"Account({self.balance})"


class Savings(Account):
    def deposit(self, amount, *, fee=0):
        return super().deposit(amount, fee=fee) + 1


def make_counter(start):
    count = start

    def step(by=1):
        nonlocal count
        count += by
        return count

    return step


def star_args(a, b=10, *rest, c, d=4, **extra):
    return (a, b, rest, c, d, sorted(extra.items()))


def nested(n):
    def level1(x):
        def level2(y):
            def level3(z):
                return z * 7 + n

            return level3(y + 1) * 2

        return level2(x + 1) - 3

    return [level1(i) for i in range(n)]


def default_list(item, into=[]):  # noqa: B006 - the shared default is the point
    into.append(item)
    return list(into)


def test_return_values():
    def workload():
        default_list.__defaults__[0].clear()
        counter = make_counter(100)
        square = lambda x, k=2: x**k  # noqa: E731
        saved = Savings.opened_with(5)
        return [
            [counter(), counter(5), counter(by=-2)],
            [square(3), square(3, 3), (lambda *a, **k: (a, sorted(k)))(1, 2, z=3)],
            [Account(7).deposit(5), Account(7).deposit(5, fee=Account.fee_for(500))],
            [Account.opened_with(4).balance, Account.fee_for(1000, percent=7), Account(4).doubled],
            [repr(Account(1) + Account(2)), saved.deposit(10, fee=1), repr(saved)],
            star_args(1, c=3),
            star_args(1, 2, 3, 4, c=5, d=6, e=7, f=8),
            star_args(*[9, 8, 7], **{"c": 1, "z": 2}),
            nested(6),
            [default_list(1), default_list(2), default_list(3, [])],
            list(map(functools.partial(star_args, 0, c=1), [5, 6])),
            sorted(["pear", "fig", "banana"], key=lambda s: (len(s), s)),
        ]

    result = same_off_and_on(workload)
    assert result[0] == [101, 106, 104]
    assert result[8] == nested(6)


# --- exceptions ----------------------------------------------------------------------------------


class AppError(Exception):
    pass


def parse_number(text):
    return int(text)


def load(text):
    try:
        return parse_number(text)
    except ValueError as exc:
        raise AppError(f"bad number {text!r}") from exc


def load_with_context(text):
    try:
        return parse_number(text)
    except ValueError:
        raise KeyError(text)  # implicit __context__


def load_suppressed(text):
    try:
        return parse_number(text)
    except ValueError:
        raise AppError("suppressed") from None


def with_finally(log, fail):
    try:
        log.append("body")
        if fail:
            raise RuntimeError("in body")
        return "returned"
    finally:
        log.append("finally")


def finally_overrides(log):
    try:
        raise RuntimeError("lost")
    finally:
        log.append("finally runs")
        return "finally wins"  # noqa: B012 - swallowing is the behaviour under test


def raise_in_finally(log):
    try:
        raise ValueError("first")
    finally:
        log.append("cleanup")
        raise TypeError("second")


def reraise(depth):
    if depth == 0:
        raise LookupError("deep")
    try:
        reraise(depth - 1)
    except LookupError:
        raise


def test_exceptions_and_tracebacks():
    def workload():
        log = []
        results = [
            outcome(load, "12"),
            outcome(load, "twelve"),
            outcome(load_with_context, "x"),
            outcome(load_suppressed, "y"),
            outcome(with_finally, log, False),
            outcome(with_finally, log, True),
            outcome(finally_overrides, log),
            outcome(raise_in_finally, log),
            outcome(reraise, 5),
            outcome(lambda: {}["missing"]),
            outcome(lambda: [].pop()),
            outcome(lambda: 1 / 0),
            outcome(lambda: Account(1).missing_attribute),
        ]
        return results, log

    results, log = same_off_and_on(workload)
    assert results[0] == ("ok", 12)
    kind, chain = results[1]
    assert kind == "raised" and [link[0] for link in chain] == ["AppError", "ValueError"]
    assert chain[0][2][-1][0] == "load" and chain[1][2][-1][0] == "parse_number"
    assert [frame[0] for frame in results[8][1][0][2]][-6:] == ["reraise"] * 6
    assert log == ["body", "finally", "body", "finally", "finally runs", "cleanup"]


def test_exceptions_in_comprehensions_and_generator_expressions():
    def workload():
        values = [4, 2, 1, 0, 5]
        return [
            outcome(lambda: [10 // v for v in values]),
            outcome(lambda: {v: 10 // v for v in values}),
            outcome(lambda: {10 // v for v in values}),
            outcome(lambda: sum(10 // v for v in values)),
            outcome(lambda: list(x for x in (10 // v for v in values) if x)),
            outcome(lambda: [[a // b for b in range(2, -1, -1)] for a in range(3)]),
            outcome(lambda: sorted(values, key=lambda v: 1 / v)),
            outcome(lambda: [v for v in values if v > 1]),
        ]

    results = same_off_and_on(workload)
    assert results[0][0] == "raised" and results[0][1][0][0] == "ZeroDivisionError"
    assert results[-1] == ("ok", [4, 2, 5])


# --- generators ----------------------------------------------------------------------------------


def echo(log):
    """Yields what it is sent; catches ValueError thrown in and yields a marker instead."""
    received = yield "ready"
    try:
        while True:
            try:
                received = yield ("echo", received)
            except ValueError as exc:
                log.append(("caught", str(exc)))
                received = yield ("recovered", str(exc))
    except GeneratorExit:
        log.append("closing")
        raise
    finally:
        log.append("finally")


def averager():
    total, count = 0, 0
    while True:
        value = yield (total / count if count else None)
        if value is None:
            return ("done", total, count)
        total += value
        count += 1


def delegator(log):
    result = yield from averager()
    log.append(("inner returned", result))
    try:
        yield from echo(log)
    except KeyError as exc:
        log.append(("delegator caught", str(exc)))
        return "delegator done"


def test_generator_send_throw_close():
    def workload():
        log = []
        gen = echo(log)
        steps = [next(gen), gen.send(1), gen.send("two")]
        steps.append(gen.throw(ValueError("oops")))  # caught inside; yields a marker
        steps.append(gen.send(3))
        steps.append(outcome(gen.throw, KeyError("fatal")))  # not caught: propagates
        steps.append(outcome(next, gen))  # finished
        other = echo(log)
        next(other)
        other.send("x")
        other.close()
        steps.append(outcome(next, other))
        unstarted = echo(log)
        unstarted.close()  # never started: no finally
        steps.append(outcome(unstarted.throw, ValueError("into unstarted")))
        return steps, log

    steps, log = same_off_and_on(workload)
    assert steps[:5] == ["ready", ("echo", 1), ("echo", "two"), ("recovered", "oops"), ("echo", 3)]
    assert steps[5][1][0][:2] == ("KeyError", "'fatal'")
    assert log == [("caught", "oops"), "finally", "closing", "finally"]


def test_yield_from_delegation_and_return_value():
    def workload():
        log = []
        gen = delegator(log)
        steps = [next(gen), gen.send(10), gen.send(20), gen.send(60)]
        steps.append(gen.send(None))  # averager returns; echo starts
        steps.append(gen.send("hello"))
        steps.append(gen.throw(ValueError("through yield from")))
        steps.append(outcome(gen.throw, KeyError("stop")))  # delegator catches, returns

        def run_to_end(g):
            try:
                while True:
                    next(g)
            except StopIteration as stop:
                return stop.value

        steps.append(run_to_end(averager()))

        def counted(n):
            yield from range(n)
            return n * 100

        steps.append(run_to_end(counted(3)))
        steps.append(list(counted(4)))
        return steps, log

    steps, log = same_off_and_on(workload)
    assert steps[:4] == [None, 10.0, 15.0, 30.0]
    assert steps[4] == "ready" and steps[5] == ("echo", "hello")
    assert steps[6] == ("recovered", "through yield from")
    assert steps[7][0] == "raised" and steps[7][1][0][:2] == ("StopIteration", "delegator done")
    assert steps[8] == ("done", 0, 0) and steps[9] == 300
    assert log[0] == ("inner returned", ("done", 90, 3))


def test_generator_suspended_across_toggles():
    """A generator started in one state and resumed in the other behaves the same."""

    def fib_gen(log):
        a, b = 0, 1
        try:
            while True:
                sent = yield a
                if sent == "fail":
                    raise ArithmeticError("asked to")
                a, b = b, a + b
        finally:
            log.append("gen finally")

    def catcher(log):
        while True:
            try:
                yield "waiting"
            except ValueError as exc:
                log.append(("catcher caught", str(exc)))
                yield "caught"

    def thrown_before_start():
        yield "never"

    def drive(toggle):
        log = []
        gen = fib_gen(log)
        out = [next(gen) for _ in range(5)]
        catching = catcher(log)
        out.append(next(catching))
        toggle(True)
        # The first time the hook sees these code objects, an exception is being thrown in.
        out.append(catching.throw(ValueError("thrown after enable")))
        out.append(outcome(thrown_before_start().throw, KeyError("into a fresh generator")))
        out += [next(gen) for _ in range(5)]
        toggle(False)
        out.append(gen.send(None))
        toggle(True)
        out.append(outcome(gen.send, "fail"))
        toggle(False)
        return out, log

    def toggle_nothing(on):
        pass

    def toggle_perftramp(on):
        if on:
            perftramp.enable()
        else:
            perftramp.disable()

    expected = drive(toggle_nothing)
    before = trampolines()
    assert drive(toggle_perftramp) == expected
    assert trampolines() > before
    out, log = expected
    assert out[:5] + out[8:14] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
    assert out[5:7] == ["waiting", "caught"] and out[7][1][0][:2] == ("KeyError", "'into a fresh generator'")
    assert [frame[0] for frame in out[7][1][0][2]][-1] == "thrown_before_start"
    assert log == [("catcher caught", "thrown after enable"), "gen finally"]


# --- asyncio -------------------------------------------------------------------------------------


async def leaf(n, log):
    await asyncio.sleep(0)
    log.append(("leaf", n))
    if n == 3:
        raise ValueError(f"leaf {n} failed")
    return n * n


async def middle(n, log):
    try:
        return await leaf(n, log) + 1
    finally:
        log.append(("middle finally", n))


async def top(log):
    results = await asyncio.gather(*(middle(i, log) for i in range(3)))
    failures = await asyncio.gather(middle(3, log), middle(4, log), return_exceptions=True)
    failures = [describe_exception(f) if isinstance(f, BaseException) else f for f in failures]
    try:
        await middle(3, log)
    except ValueError as exc:
        caught = describe_exception(exc)
    task = asyncio.ensure_future(middle(5, log))
    await asyncio.sleep(0)
    return results, failures, caught, await task


async def ticker(n, log):
    try:
        for i in range(n):
            try:
                received = yield i
                log.append(("ticker got", received))
            except KeyError as exc:
                log.append(("ticker caught", str(exc)))
                yield "recovered"
            await asyncio.sleep(0)
    finally:
        log.append("ticker finally")


async def use_async_generators(log):
    agen = ticker(10, log)
    steps = [await agen.__anext__(), await agen.asend("a"), await agen.asend("b")]
    steps.append(await agen.athrow(KeyError("k")))
    steps.append(await agen.asend("c"))
    await agen.aclose()
    try:
        await agen.__anext__()
    except StopAsyncIteration:
        steps.append("exhausted")
    steps.append([i async for i in ticker(4, log)])
    failing = ticker(5, log)
    await failing.__anext__()
    try:
        await failing.athrow(RuntimeError("fatal"))
    except RuntimeError as exc:
        steps.append(describe_exception(exc))
    return steps


def test_coroutines_with_asyncio_run():
    def workload():
        log = []
        result = asyncio.run(top(log))
        return result, log

    (results, failures, caught, last), log = same_off_and_on(workload)
    assert results == [1, 2, 5]
    assert failures[0][0][:2] == ("ValueError", "leaf 3 failed") and failures[1] == 17
    assert [frame[0] for frame in caught[0][2]][-2:] == ["middle", "leaf"]
    assert last == 26


def test_async_generators():
    def workload():
        log = []
        steps = asyncio.run(use_async_generators(log))
        return steps, log

    steps, log = same_off_and_on(workload)
    assert steps[:5] == [0, 1, 2, "recovered", 3]
    assert steps[5:7] == ["exhausted", [0, 1, 2, 3]]
    assert steps[7][0][:2] == ("RuntimeError", "fatal")
    assert ("ticker caught", "'k'") in log


# --- recursion -----------------------------------------------------------------------------------


def deepest_recursion(limit):
    """How deep a plain recursive function gets under `limit` before RecursionError."""
    depth = 0

    def recurse(n):
        nonlocal depth
        depth = n
        return recurse(n + 1)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        recurse(1)
    except RecursionError as exc:
        message = str(exc)
    finally:
        sys.setrecursionlimit(old)
    return depth, message


def assert_close_depths(off, on):
    assert on[1] == off[1]
    tolerance = max(50, off[0] // 20)
    assert abs(on[0] - off[0]) <= tolerance, f"RecursionError at depth {on[0]} on, {off[0]} off"


def fresh_copy(function):
    """The same function on a new code object, which has no trampoline yet."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__)


@pytest.mark.parametrize("limit", [1000, 3000])  # CPython's default, and a raised one
def test_recursion_limit_in_process(limit):
    assert len(inspect.stack(0)) < limit - 300
    measure = fresh_copy(deepest_recursion)
    off = measure(limit)
    before = trampolines()
    with perftramp.enabled():
        on_cold = measure(limit)
        on_warm = measure(limit)
    assert trampolines() > before
    assert off[0] > limit - 300
    assert_close_depths(off, on_cold)
    assert_close_depths(off, on_warm)
    # The process is fine afterwards: ordinary calls still work, on and off.
    assert same_off_and_on(functools.partial(fresh_copy(nested), 3)) == nested(3)


RECURSION_CHILD = textwrap.dedent(
    """
    import sys, perftramp

    depth = 0

    def recurse(n):
        global depth
        depth = n
        return recurse(n + 1)

    if sys.argv[1] == "on":
        perftramp.enable()
    sys.setrecursionlimit(int(sys.argv[2]))
    stack_bound = 0
    try:
        recurse(1)
    except RecursionError as exc:
        # Stopped by the C stack rather than the recursion limit: perftramp's guard (3.11-3.13)
        # or CPython's own stack check (3.14+: "Stack overflow (used N kB)").
        stack_bound = int("C stack is nearly exhausted" in str(exc) or "Stack overflow" in str(exc))
    print(depth, perftramp.status().trampolines, stack_bound, flush=True)
    """
)


def recursion_in_child(mode, limit):
    # "xperf": CPython's own perf trampoline (an eval hook too) instead of perftramp.
    flags = ["-X", "perf"] if mode == "xperf" else []
    return subprocess.run(
        [sys.executable, *flags, "-c", RECURSION_CHILD, mode, str(limit)],
        capture_output=True, text=True, timeout=120,
    )


def depth_any_eval_hook_reaches(limit):
    """How deep CPython's own `-X perf` (a PEP 523 hook plus a trampoline per call, like
    perftramp) recurses at `limit` on this build before the C stack stops it, or None where it
    does not exist, crashes, or stops for another reason.
    The C stack a call costs depends on the build (compiler, flags, interpreter loop): Debian's
    3.14.10 reaches 9,158 frames in 8 MiB with it (3.12/3.13 stop -X perf by a counter instead,
    and perftramp's own guard lets pyenv's 3.11-3.13 reach 15,000-18,000)."""
    if not hasattr(sys, "activate_stack_trampoline"):
        return None
    proc = recursion_in_child("xperf", limit)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    depth, _, stack_bound = map(int, proc.stdout.split())
    # 3.12/3.13 stop -X perf with their C-recursion counter (a few thousand frames at most),
    # which says nothing about the stack: only a stack-bound depth is a reference.
    return depth if stack_bound else None


@pytest.mark.parametrize("limit", [5_000, 20_000])
def test_recursion_limit_high_in_child_process(limit):
    """With a raised limit that the interpreter survives without perftramp, it survives with it.

    Up to what the C stack holds, the depth is the same as without perftramp. With any eval hook
    every Python call also uses C stack (cpython issue 105003), so at limits the 8 MiB stack
    cannot hold (20000 here), RecursionError comes from the C stack (perftramp's guard on
    3.11-3.13, CPython's own check on 3.14+), never a crash: the depth is then bounded by the
    stack, and must be at least what CPython's own eval hook (-X perf) reaches on this build.
    """
    off = recursion_in_child("off", limit)
    if off.returncode != 0:
        pytest.skip(f"this interpreter crashes at recursion limit {limit} even without perftramp")
    off_depth, _, _ = map(int, off.stdout.split())
    on = recursion_in_child("on", limit)
    assert on.returncode == 0, (
        f"with perftramp on, recursion under limit {limit} killed the process (exit "
        f"{on.returncode}); without it, RecursionError at depth {off_depth}\n{on.stderr}"
    )
    on_depth, on_trampolines, stack_bound = map(int, on.stdout.split())
    assert on_trampolines > 0
    if limit <= 5_000:
        # The stack holds this depth: no guard, same depth as without perftramp.
        assert not stack_bound
        assert_close_depths((off_depth, ""), (on_depth, ""))
    elif not stack_bound:
        assert_close_depths((off_depth, ""), (on_depth, ""))
    else:
        # Stopped by the C stack: as deep as CPython's own eval hook gets on this build (5%
        # slack), else well past the default limits (10,000, measured on 3.11-3.13 builds).
        reference = depth_any_eval_hook_reaches(limit)
        floor = int(reference * 0.95) if reference is not None else 10_000
        assert on_depth >= floor, (
            f"RecursionError from the C stack at depth {on_depth} (off: {off_depth}, "
            f"CPython's -X perf: {reference})")


# --- threads -------------------------------------------------------------------------------------


def collatz_work(seed):
    """Deterministic CPU work with calls, a generator and handled exceptions."""

    def steps(n):
        count = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            count += 1
        return count

    def evens(limit):
        for i in range(limit):
            if i % 2 == 0:
                yield i

    failures = 0
    for i in range(50):
        try:
            if (seed + i) % 7 == 0:
                raise ValueError(i)
        except ValueError:
            failures += 1
    return seed, sum(steps(seed * 1000 + k) for k in range(1, 300)), sum(evens(seed * 10)), failures


def test_threads_return_results_through_a_queue():
    def workload():
        results = queue.Queue()

        def worker(seed):
            results.put(collatz_work(seed))

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(1, 7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(results.get_nowait() for _ in threads)

    results = same_off_and_on(workload)
    assert results == [collatz_work(seed) for seed in range(1, 7)]


# --- introspection -------------------------------------------------------------------------------


def traced_subject(n):
    total = 0
    for i in range(n):
        total += helper_for_trace(i)
    try:
        helper_for_trace(-1)
    except ValueError:
        total = -total
    return total + sum(x for x in range(2))


def helper_for_trace(i):
    if i < 0:
        raise ValueError("negative")
    return i * 2


def test_settrace_events():
    def workload():
        events = []

        def tracer(frame, event, arg):
            events.append((event, frame.f_code.co_name, relative_line(frame)))
            return tracer

        old = sys.gettrace()
        sys.settrace(tracer)
        try:
            result = traced_subject(3)
        finally:
            sys.settrace(old)
        return result, events

    result, events = same_off_and_on(workload)
    assert result == -5
    names = {name for _, name, _ in events}
    assert {"traced_subject", "helper_for_trace", "<genexpr>"} <= names
    assert ("exception", "helper_for_trace", 2) in events


def test_setprofile_events():
    def workload():
        events = []

        def profiler(frame, event, arg):
            name = getattr(arg, "__name__", None) if event.startswith("c_") else None
            events.append((event, frame.f_code.co_name, name))

        old = sys.getprofile()
        sys.setprofile(profiler)
        try:
            result = traced_subject(4)
        finally:
            sys.setprofile(old)
        return result, events

    result, events = same_off_and_on(workload)
    assert result == -11
    assert ("call", "helper_for_trace", None) in events
    assert ("c_call", "traced_subject", "sum") in events


def frame_chain(stop_at):
    """(name, relative line) of each frame from the caller up to the function named stop_at."""
    chain = []
    frame = sys._getframe(1)
    while frame is not None:
        chain.append((frame.f_code.co_name, relative_line(frame)))
        if frame.f_code.co_name == stop_at:
            break
        frame = frame.f_back
    return chain


class Walker:
    def method(self):
        return [frame_chain("frames_entry"), sys._getframe().f_code.co_name, sys._getframe(1).f_lineno]

    @classmethod
    def from_class(cls):
        return (lambda: cls().method())()


def frames_entry():
    def gen():
        yield frame_chain("frames_entry")
        yield Walker.from_class()

    return [frame_chain("frames_entry"), list(gen()), [frame_chain("frames_entry") for _ in range(1)]]


def test_getframe_chain():
    result = same_off_and_on(frames_entry)
    assert result[0] == [("frames_entry", 5)]
    assert result[1][0] == [("gen", 1), ("frames_entry", 5)]
    walked, name, _ = result[1][1]
    assert [frame[0] for frame in walked] == ["method", "<lambda>", "from_class", "gen", "frames_entry"]
    assert name == "method" and result[2][0][-1] == ("frames_entry", 5)


def stack_entry():
    def inner():
        return [(f.function, f.lineno - f.frame.f_code.co_firstlineno, f.code_context)
                for f in inspect.stack()[:3]]

    def outer():
        return inner()

    return outer()


def test_inspect_stack():
    result = same_off_and_on(stack_entry)
    assert [entry[0] for entry in result] == ["inner", "outer", "stack_entry"]


# --- dynamic code --------------------------------------------------------------------------------

DYNAMIC_SOURCE = textwrap.dedent(
    """
    def scale(values, factor=3):
        return [v * factor for v in values]

    def explode(n):
        if n == 0:
            raise ZeroDivisionError("from exec'd code")
        return explode(n - 1)

    RESULT = scale(range(4))
    """
)


def test_exec_and_eval():
    def workload():
        code = compile(DYNAMIC_SOURCE, "<behaviour-exec>", "exec")
        namespace = {}
        exec(code, namespace)
        expression = compile("scale([1, 2], factor=k) + [k * 2]", "<behaviour-eval>", "eval")
        return [
            namespace["RESULT"],
            eval(expression, namespace, {"k": 5}),
            eval("lambda x: x + 1", {})(41),
            outcome(namespace["explode"], 3),
            outcome(exec, "raise KeyError('exec')", {}),
        ]

    results = same_off_and_on(workload)
    assert results[:3] == [[0, 3, 6, 9], [5, 10, 10], 42]
    assert results[3][1][0][2][-1] == ("explode", 7)


def test_functions_made_with_function_type():
    def template(a, b=2):
        return (a + b) * offset  # noqa: F821 - resolved in the globals given below

    def closure_template():
        captured = 10

        def inner(x):
            return x + captured

        return inner

    def workload():
        plain = types.FunctionType(template.__code__, {"offset": 3}, "made", (5,))
        inner = closure_template()
        cell = types.CellType(100) if hasattr(types, "CellType") else inner.__closure__[0]
        rebound = types.FunctionType(inner.__code__, {}, "rebound", None, (cell,))
        renamed = types.FunctionType(template.__code__.replace(co_name="renamed"), {"offset": -1})
        return [plain(1), plain(1, 1), rebound(1), renamed(4, 1), plain.__name__, renamed.__code__.co_name,
                outcome(types.FunctionType(template.__code__, {}, None, (2,)), 1)]

    results = same_off_and_on(workload)
    assert results[:6] == [18, 6, 101 if hasattr(types, "CellType") else 11, -5, "made", "renamed"]
    assert results[6][1][0][:2] == ("NameError", "name 'offset' is not defined")


def test_lru_cache_recursion():
    def workload():
        @functools.lru_cache(maxsize=None)
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        @functools.lru_cache(maxsize=8)
        def ways(n, k):
            if n == 0:
                return 1
            if n < 0 or k == 0:
                return 0
            return ways(n - k, k) + ways(n, k - 1)

        values = [fib(n) for n in (10, 50, 150)]
        info = fib.cache_info()
        return values, (info.hits, info.misses), ways(30, 10), ways.cache_info().currsize

    values, info, ways, size = same_off_and_on(workload)
    assert values[0] == 55 and values[1] == 12586269025
    assert info == (150, 151) and size == 8


def test_class_bodies_and_metaclasses():
    def workload():
        log = []

        class Meta(type):
            @classmethod
            def __prepare__(mcs, name, bases, **kwargs):
                log.append(("prepare", name, sorted(kwargs)))
                return {"prepared": True}

            def __new__(mcs, name, bases, namespace, **kwargs):
                log.append(("new", name, sorted(k for k in namespace if not k.startswith("__"))))
                return super().__new__(mcs, name, bases, dict(namespace))

            def __init__(cls, name, bases, namespace, **kwargs):
                super().__init__(name, bases, namespace)
                log.append(("init", name, kwargs.get("flavour")))

            def __call__(cls, *args):
                log.append(("call", cls.__name__, args))
                return super().__call__(*args)

        class Named:
            def __set_name__(self, owner, name):
                log.append(("set_name", owner.__name__, name))

        def decorate(cls):
            log.append(("decorated", cls.__name__))
            cls.decorated = True
            return cls

        @decorate
        class Base(metaclass=Meta, flavour="plain"):
            size = 3
            squares = [i * i for i in range(size)]
            field = Named()

            def __init_subclass__(cls, **kwargs):
                log.append(("init_subclass", cls.__name__, sorted(kwargs)))
                super().__init_subclass__()

            def __init__(self, x):
                self.x = x

        class Child(Base, tag="t"):
            pass

        child = Child(4)
        return log, Base.squares, Base.prepared, Child.decorated, child.x, type(Child).__name__

    log, squares, prepared, decorated, x, meta = same_off_and_on(workload)
    assert squares == [0, 1, 4] and prepared and decorated and x == 4 and meta == "Meta"
    assert ("init_subclass", "Child", []) in log and ("init", "Child", None) in log


# --- finalizers, context managers, signals -------------------------------------------------------


def test_del_finalizers_run_during_the_hook():
    class Tracked:
        def __init__(self, name, log, fail=False):
            self.name, self.log, self.fail, self.peer = name, log, fail, None

        def __del__(self):
            self.log.append(("del", self.name, describe_caller()))
            if self.fail:
                raise RuntimeError(f"__del__ of {self.name}")

    def describe_caller():
        return sys._getframe(1).f_code.co_name

    def workload():
        log = []
        unraisable = []
        old_hook = sys.unraisablehook
        sys.unraisablehook = lambda info: unraisable.append((type(info.exc_value).__name__, str(info.exc_value)))
        was_enabled = gc.isenabled()
        gc.disable()
        try:

            def scope():
                Tracked("local", log)
                temp = Tracked("rebound", log)
                temp = Tracked("failing", log, fail=True)  # noqa: F841
                log.append("leaving scope")

            scope()
            a, b = Tracked("cycle-a", log), Tracked("cycle-b", log)
            a.peer, b.peer = b, a
            del a, b
            log.append(("collected", gc.collect() >= 2))
        finally:
            if was_enabled:
                gc.enable()
            sys.unraisablehook = old_hook
        in_cycle = [entry for entry in log if entry[0] == "del" and entry[1].startswith("cycle")]
        rest = [entry for entry in log if entry not in in_cycle]
        cycle = sorted(in_cycle)  # the collector's order is not part of what is compared
        return rest, cycle, unraisable

    rest, cycle, unraisable = same_off_and_on(workload)
    assert rest[0] == ("del", "local", "__del__") and rest[-1] == ("collected", True)
    assert [entry[1] for entry in cycle] == ["cycle-a", "cycle-b"]
    assert unraisable == [("RuntimeError", "__del__ of failing")]


@contextlib.contextmanager
def recorded(name, log, swallow=()):
    log.append(("enter", name))
    try:
        yield name.upper()
    except swallow as exc:
        log.append(("swallowed", name, type(exc).__name__))
    finally:
        log.append(("exit", name))


def test_contextmanager_and_exit_stack():
    def workload():
        log = []
        with recorded("a", log) as a, recorded("b", log) as b:
            log.append(("body", a, b))
        with recorded("c", log, swallow=(KeyError,)):
            raise KeyError("swallowed")

        def leaks():
            with recorded("d", log, swallow=(KeyError,)):
                raise ValueError("escapes")

        escaped = outcome(leaks)
        with contextlib.ExitStack() as stack:
            for name in "xyz":
                stack.enter_context(recorded(name, log))
            stack.callback(log.append, "callback")
            stack.push(lambda *exc: log.append(("push", exc[0].__name__ if exc[0] else None)))

        def unwinding():
            with contextlib.ExitStack() as stack:
                stack.callback(log.append, "cleanup 1")
                stack.enter_context(recorded("e", log))
                stack.callback(lambda: 1 / 0)  # replaces the exception, chaining the original
                raise IndexError("original")

        replaced = outcome(unwinding)
        with contextlib.suppress(IndexError):
            [][0]
        return log, escaped, replaced

    log, escaped, replaced = same_off_and_on(workload)
    assert log[:4] == [("enter", "a"), ("enter", "b"), ("body", "A", "B"), ("exit", "b")]
    assert escaped[1][0][:2] == ("ValueError", "escapes")
    assert [link[0] for link in replaced[1]] == ["ZeroDivisionError", "IndexError"]


def test_keyboard_interrupt_from_signal_handler():
    def loop_until_interrupted(handler):
        old = signal.signal(signal.SIGINT, handler)
        done = 0
        try:
            for done in range(20):
                signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as exc:
            return ("interrupted", done, describe_exception(exc))
        finally:
            signal.signal(signal.SIGINT, old)
        return ("not interrupted", done)

    def workload():
        calls = []

        def third_time(signum, frame):
            calls.append((signum, frame.f_code.co_name))
            if len(calls) == 3:
                raise KeyboardInterrupt("third signal")

        return [
            loop_until_interrupted(signal.default_int_handler),
            loop_until_interrupted(third_time),
            calls,
        ]

    default, custom, calls = same_off_and_on(workload)
    assert default[:2] == ("interrupted", 0) and default[2][0][0] == "KeyboardInterrupt"
    assert custom[:2] == ("interrupted", 2) and custom[2][0][:2] == ("KeyboardInterrupt", "third signal")
    assert custom[2][0][2][-1][0] == "third_time"
    assert calls == [(signal.SIGINT, "loop_until_interrupted")] * 3
