"""Threads that make and call new functions at once while another thread toggles perf support.

    python ft_stress.py MODE [--threads 8] [--functions 50000] [--toggle-ms 10] [--work 2000]
                             [--directory DIR] [--compile-all]

MODE is a perftramp mode (map, jit, elf, elf+map, ...), or `xperf` for CPython's own trampoline
(sys.activate_stack_trampoline / deactivate_stack_trampoline, as `-X perf` uses), for comparison.

Thread k makes `functions / threads` new code objects named `w<k>_f<i>` (each a distinct code
object: `code.replace` of one template, far cheaper than compiling) and calls each; its driver is
itself a code object named `w<k>_driver`, so every Python frame of thread k has a name of thread k
(plus threading's bootstrap). A toggler turns perf support on and off every `toggle-ms` while they
run; with --compile-all another thread calls perftramp.compile_all() in a loop meanwhile.

Prints `PID <pid>`, `THREAD <k> <native thread id>` per worker, then `CALLS <n>`, `TOGGLES <n>`, `STATUS ...`
and `DONE` at the end. Exits non-zero on any error in any thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback


def template(n):
    # The work each new function does: enough loop iterations to be sampled inside it.
    total = 0
    for i in range(n):
        total += i * i
    return total


def driver_template(k, count, work, made, errors, start):
    make = template.__code__.replace
    function_type = type(template)
    globals_ = template.__globals__
    start.wait()
    calls = 0
    try:
        for i in range(count):
            name = f"w{k}_f{i}"
            fn = function_type(make(co_name=name, co_qualname=name), globals_, name)
            fn(work)
            fn(work)
            calls += 2
    except BaseException:  # noqa: BLE001 - reported by the main thread
        errors.append(traceback.format_exc())
    made[k] = calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--functions", type=int, default=50_000)
    parser.add_argument("--toggle-ms", type=float, default=10.0)
    parser.add_argument("--work", type=int, default=2000)
    parser.add_argument("--directory", default=None)
    parser.add_argument("--compile-all", action="store_true")
    args = parser.parse_args()

    if args.mode == "xperf":
        def on() -> None:
            sys.activate_stack_trampoline("perf")

        def off() -> None:
            sys.deactivate_stack_trampoline()

        def is_on() -> bool:
            return sys.is_stack_trampoline_active()
    else:
        import perftramp

        directory = args.directory if args.mode != "map" else None

        def on() -> None:
            perftramp.enable(args.mode, directory=directory)

        off = perftramp.disable
        is_on = perftramp.is_enabled

    errors: list = []
    made: dict = {}
    start = threading.Barrier(args.threads + 1)
    count = args.functions // args.threads
    workers = []
    for k in range(args.threads):
        name = f"w{k}_driver"
        driver = type(driver_template)(
            driver_template.__code__.replace(co_name=name, co_qualname=name),
            driver_template.__globals__, name)
        workers.append(threading.Thread(target=driver, args=(k, count, args.work, made, errors, start),
                                        name=name))
    print(f"PID {os.getpid()}", flush=True)
    on()
    for worker in workers:
        worker.start()
    for k, worker in enumerate(workers):
        print(f"THREAD {k} {worker.native_id}", flush=True)

    stop = threading.Event()
    toggles = [0]

    def toggler() -> None:
        try:
            while not stop.is_set():
                time.sleep(args.toggle_ms / 1000)
                off() if is_on() else on()
                toggles[0] += 1
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    def compiler() -> None:
        import perftramp

        try:
            while not stop.is_set():
                if perftramp.is_enabled():
                    perftramp.compile_all()
                time.sleep(0.05)
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    # --toggle-ms 0: no toggler (perf support stays on throughout).
    helpers = [threading.Thread(target=toggler, name="toggler")] if args.toggle_ms > 0 else []
    if args.compile_all:
        helpers.append(threading.Thread(target=compiler, name="compiler"))
    for helper in helpers:
        helper.start()
    began = time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    stop.set()
    for helper in helpers:
        helper.join()
    on()  # end on, so the files are complete and status() is comparable
    print(f"CALLS {sum(made.values())}", flush=True)
    print(f"TOGGLES {toggles[0]}", flush=True)
    print(f"SECONDS {elapsed:.2f}", flush=True)
    if args.mode != "xperf":
        import perftramp

        status = perftramp.status()
        print(f"STATUS trampolines={status.trampolines} errors={list(status.errors)}", flush=True)
        if status.errors:
            errors.append(f"status errors: {status.errors}")
    if sysconfig_gil_disabled():
        print(f"GIL {sys._is_gil_enabled()}", flush=True)
    for error in errors:
        print(error, file=sys.stderr)
    print("DONE" if not errors else f"FAILED {len(errors)}", flush=True)
    return 1 if errors else 0


def sysconfig_gil_disabled() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


if __name__ == "__main__":
    sys.exit(main())
