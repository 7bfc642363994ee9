"""Runs a benchmark script (argv[1:]) with the clock benchmarks/run.py chose.

BENCH_CLOCK=cpu (the default of run.py) makes time.perf_counter, and so pyperf's timer (pyperf
reads time.perf_counter) and the benchmarks' own pyperf.perf_counter(), the thread's CPU time
(CLOCK_THREAD_CPUTIME_ID, nanosecond resolution): on a shared machine a benchmark process is
often waiting for a CPU, which inflates wall time by up to 2x but not CPU time. These benchmarks
are single-threaded and do no I/O while timed, so without contention both clocks agree.
BENCH_CLOCK=wall leaves time.perf_counter alone.
"""

import os
import runpy
import sys
import time

if os.environ.get("BENCH_CLOCK", "cpu") == "cpu":
    time.perf_counter = time.thread_time

script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
runpy.run_path(script, run_name="__main__")
