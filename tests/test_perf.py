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


def test_perf_script_names_python_functions(perf, perf_info, workload, tmp_path):
    data = tmp_path / "perf.data"
    # dwarf: on an interpreter without frame pointers this still gives the innermost frame
    # (with libunwind; perf 7's libdw unwinder resolves no frame in perf-map code at all).
    perf_record(perf, data, [sys.executable, str(workload), "map", "1.0"], call_graph="dwarf")
    samples = perf_script(perf, data)
    with_foo = python_samples(samples, workload)
    assert samples, "perf recorded nothing"
    if not perf_info.map_dwarf_resolves:
        # What `record` and doctor rely on to never choose map mode with dwarf stacks on such a
        # perf: if this starts to fail, that perf names perf-map code with dwarf after all.
        assert not with_foo, f"{perf_info.text} ({perf_info.unwinder}) now resolves perf-map code"
        return
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


CALL_KINDS = """\
import sys, time
import perftramp
perftramp.enable("map")

def leaf(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

class C:
    def __init__(self):
        self.v = leaf(3000)
    @property
    def prop(self):
        return leaf(3000)
    def meth(self):
        return leaf(3000)
    def __getitem__(self, i):
        return leaf(3000)

def gen():
    while True:
        yield leaf(3000)

def via_init(): return C().v
def via_prop(c): return c.prop
def via_meth(c): return c.meth()
def via_item(c): return c[0]
def via_gen(g):
    for x in g:
        return x
def via_plain(): return leaf(3000)

c, g = C(), gen()
deadline = time.process_time() + float(sys.argv[1])  # CPU seconds: as many samples under load
while time.process_time() < deadline:
    via_init(); via_prop(c); via_meth(c); via_item(c); via_gen(g); via_plain()
"""


def test_fp_stacks_are_full_through_every_kind_of_call(perf, tmp_path):
    """Calls CPython can specialize into frame pushes without a C call (methods, __init__,
    properties, __getitem__, generators): each must still go through the hook and get its
    trampoline, so every sample in leaf also shows its caller (3.15: with or without the
    specialization opt-in of gh-146031, CPython's loop deoptimizes these under a hook)."""
    if not interpreter_has_frame_pointers():
        if os.environ.get("PERFTRAMP_EXPECT_FP") == "1":
            pytest.fail("PERFTRAMP_EXPECT_FP=1 but this interpreter was built without frame pointers")
        pytest.skip("needs an interpreter built with -fno-omit-frame-pointer")
    script = tmp_path / "kinds.py"
    script.write_text(CALL_KINDS)
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(script), "2.0"], call_graph="fp")
    samples = [s for s in perf_script(perf, data) if py_name("leaf", str(script)) in s.symbols]
    assert len(samples) >= 300, f"only {len(samples)} samples in leaf"
    # CPython 3.13 runs the __init__ of a class instantiated from Python inline, without calling
    # the eval hook (its CALL_ALLOC_AND_ENTER_INIT lacks the PEP 523 check 3.14 has): no hook
    # sees that frame, CPython's own -X perf neither (measured on 3.13.15: 1 of 88 samples).
    init_inline = sys.version_info[:2] == (3, 13)
    middle = {"via_init": None if init_inline else "C.__init__", "via_prop": "C.prop",
              "via_meth": "C.meth", "via_item": "C.__getitem__", "via_gen": "gen", "via_plain": None}
    counts = {}
    for caller, callee in middle.items():
        chain = [py_name(q, str(script)) for q in ("leaf", callee, caller) if q]
        counts[caller] = sum(has_chain(s.symbols, chain) for s in samples)
    if init_inline:
        init = py_name("C.__init__", str(script))
        # Only calls made before CPython specializes the call site go through the hook (-X
        # perf: 1 of 88 samples): a few samples may show it, most must not.
        with_init = sum(init in s.symbols for s in samples)
        assert with_init <= 0.1 * len(samples), f"3.13 gave __init__ a frame after all: {with_init}"
    print(f"{len(samples)} samples in leaf, full chains per call kind: {counts}")
    share = sum(counts.values()) / len(samples)
    assert share >= 0.90, f"{share:.1%} of leaf samples have a full chain: {counts}"
    assert all(n >= 0.05 * len(samples) for n in counts.values()), counts
