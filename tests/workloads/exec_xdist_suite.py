"""A test suite for pytest-xdist's workers (tests/test_exec_workers.py copies it into a temporary
directory as test_mpmath_work.py): each test spends its CPU time in mpmath (pure Python without
gmpy), computing until TEST_SECONDS of the worker's CPU time have gone. Each test appends
`WORKER <pid> <xdist worker id>` to the file named by PERFTRAMP_TEST_WORKERS."""

import os
import time

import mpmath
import pytest

TESTS = int(os.environ.get("PERFTRAMP_TEST_XDIST_TESTS", "24"))
TEST_SECONDS = float(os.environ.get("PERFTRAMP_TEST_XDIST_SECONDS", "0.2"))


def note():
    with open(os.environ["PERFTRAMP_TEST_WORKERS"], "a") as file:
        file.write(f"WORKER {os.getpid()} {os.environ.get('PYTEST_XDIST_WORKER', 'none')}\n")


def work(k):
    ctx = mpmath.MPContext()
    ctx.dps = 50 + k
    total = ctx.mpf(0)
    deadline = time.process_time() + TEST_SECONDS
    while time.process_time() < deadline:
        total += ctx.zeta(ctx.mpf(2) + ctx.mpf(k) / 7)
        total += ctx.quad(lambda x: ctx.exp(-x * x) * ctx.cos(k * x), [0, 2])
        total += ctx.besselj(k % 5, ctx.mpf(k) / 3)
    return total


@pytest.mark.parametrize("k", range(TESTS))
def test_mpmath_work(k):
    note()
    assert work(k) > 0
