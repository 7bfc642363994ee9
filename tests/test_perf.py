"""End to end with the real perf: record, script, and check what perf shows."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import FOO_BAR_BAZ, has_chain, interpreter_has_frame_pointers, perf_record, perf_script, py_name

pytestmark = pytest.mark.perf



@pytest.fixture
def workload(tmp_path: Path) -> Path:
    path = tmp_path / "workload.py"
    path.write_text(FOO_BAR_BAZ)
    return path


def python_samples(samples, script: Path):
    """Samples of the workload process whose stack contains py::foo of the script."""
    foo = py_name("foo", str(script))
    return [s for s in samples if foo in s.symbols]


def test_perf_script_names_python_functions(perf, workload, tmp_path):
    data = tmp_path / "perf.data"
    # dwarf: on an interpreter without frame pointers this still gives the innermost frame.
    perf_record(perf, data, [sys.executable, str(workload), "map", "1.0"], call_graph="dwarf")
    samples = perf_script(perf, data)
    with_foo = python_samples(samples, workload)
    assert samples, "perf recorded nothing"
    # foo is where the workload spends its time: most samples must name it.
    assert len(with_foo) >= 0.5 * len(samples), (len(with_foo), len(samples))


def full_chain(symbols, script: Path) -> bool:
    return has_chain(symbols, [py_name(q, str(script)) for q in ("foo", "bar", "baz")])


def test_fp_stacks_are_full_on_a_frame_pointer_interpreter(perf, workload, tmp_path):
    if not interpreter_has_frame_pointers():
        if os.environ.get("PERFTRAMP_EXPECT_FP") == "1":
            pytest.fail("PERFTRAMP_EXPECT_FP=1 but this interpreter was built without frame pointers")
        pytest.skip("needs an interpreter built with -fno-omit-frame-pointer (scripts/build-fp-python.sh)")
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(workload), "map", "1.5"], call_graph="fp")
    with_foo = python_samples(perf_script(perf, data), workload)
    assert len(with_foo) >= 200, f"only {len(with_foo)} samples in foo"
    full = sum(full_chain(s.symbols, workload) for s in with_foo)
    share = full / len(with_foo)
    print(f"full py::foo <- py::bar <- py::baz stacks: {full}/{len(with_foo)} = {share:.1%}")
    assert share >= 0.90, f"{share:.1%} of samples with py::foo have the full chain"
