"""The Python view: CPython's call machinery folded, one root per process, cut-short stacks
marked, labels `qualname (file.py:LINE)` (python/perftramp/_folding.py, _labels.py)."""

from __future__ import annotations

import html
import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import cli
from perftramp import _folding as fold
from perftramp import _labels, _perfscript, _rawstacks

LIB = "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0"
EXE = "/root/.pyenv/versions/3.12.1/bin/python3.12"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
JSON_EXT = "/usr/lib/python3.12/lib-dynload/_json.cpython-312-x86_64-linux-gnu.so"
JIT = "/tmp/jit/jitted-1-{}.so"

# A stack perf recorded on CPython 3.12 in jit mode (perf script, innermost first):
# Outer.run -> middle -> json.dumps -> the _json C encoder, on the main thread.
RECORDED_312: List[Tuple[str, str]] = [
    ("encoder_listencode_obj.isra.0", JSON_EXT),
    ("encoder_call", JSON_EXT),
    ("_PyObject_MakeTpCall", LIB),
    ("_PyEval_EvalFrameDefault", LIB),
    ("py::JSONEncoder.iterencode:/usr/lib/python3.12/json/encoder.py", JIT.format(3)),
    ("PyObject_Vectorcall", LIB),
    ("_PyEval_EvalFrameDefault", LIB),
    ("py::middle:/w.py", JIT.format(2)),
    ("PyObject_Vectorcall", LIB),
    ("_PyEval_EvalFrameDefault", LIB),
    ("py::Outer.run:/w.py", JIT.format(1)),
    ("PyObject_Vectorcall", LIB),
    ("_PyEval_EvalFrameDefault", LIB),
    ("py::<module>:/w.py", JIT.format(0)),
    ("PyEval_EvalCode", LIB),
    ("run_eval_code_obj", LIB),
    ("run_mod", LIB),
    ("_PyRun_SimpleFileObject", LIB),
    ("_PyRun_AnyFileObject", LIB),
    ("pymain_run_python.constprop.0", LIB),
    ("Py_RunMain", LIB),
    ("Py_BytesMain", LIB),
    ("__libc_start_call_main", LIBC),
    ("__libc_start_main@@GLIBC_2.34", LIBC),
    ("_start", EXE),
]


def view_of(frames_innermost_first: List[Tuple[str, str]], comm: str = "python3.12",
            pid: int = 100) -> List[fold.ViewStack]:
    stacks = {(comm, pid, tuple(reversed(frames_innermost_first))): 1}
    return fold.python_view(stacks, labeller=fold.Labeller(_labels.DefinitionLines()))


@pytest.mark.once
def test_a_python_call_is_one_row_and_native_work_stays():
    (stack,) = view_of(RECORDED_312)
    assert [f.label for f in stack.frames] == [
        "<module> (w.py)", "Outer.run (w.py)", "middle (w.py)",
        "JSONEncoder.iterencode (encoder.py)", "encoder_call", "encoder_listencode_obj"]
    assert [f.kind for f in stack.frames] == ["python"] * 4 + ["native"] * 2
    assert stack.process.label == "python3.12 [pid 100]"
    # Above the innermost Python frame, CPython's own work stays (not its call machinery).
    (tip,) = view_of([("list_sort_impl", LIB), ("builtin_sorted", LIB),
                      ("cfunction_vectorcall_FASTCALL_KEYWORDS", LIB),
                      ("_PyEval_EvalFrameDefault", LIB)] + RECORDED_312[7:])
    assert [f.label for f in tip.frames][-3:] == ["middle (w.py)", "builtin_sorted", "list_sort_impl"]
    assert tip.frames[-1].kind == "interpreter"
    # The eval loop's own samples, and what it does for the bytecode, are the function's self
    # time; the collector, called from there, is a box of its own, and so is libc.
    (self_time,) = view_of(RECORDED_312[9:])
    assert self_time.frames[-1].label == "Outer.run (w.py)"
    (arithmetic,) = view_of([("_PyObject_Free", LIB), ("long_dealloc", LIB), ("x_add", LIB)]
                            + RECORDED_312[9:])
    assert arithmetic.frames[-1].label == "Outer.run (w.py)"
    (collector,) = view_of([("__memset_avx2", LIBC), ("gc_collect_main", LIB),
                            ("_PyObject_GC_Link", LIB), ("_PyObject_Malloc", LIB)] + RECORDED_312[9:])
    assert [f.label for f in collector.frames][-3:] == ["Outer.run (w.py)", "gc_collect_main",
                                                        "__memset_avx2"]
    assert [f.kind for f in collector.frames][-2:] == ["interpreter", "native"]


@pytest.mark.once
def test_every_frame_view_keeps_what_perf_recorded():
    stacks = {("python3.12", 100, tuple(reversed(RECORDED_312))): 2}
    (stack,) = fold.python_view(stacks, all_frames=True)
    assert len(stack.frames) == len(RECORDED_312)
    assert stack.frames[-1].label == "encoder_listencode_obj.isra.0"
    assert stack.frames[0].label == "_start" and stack.count == 2


@pytest.mark.once
def test_processes_apart_and_cut_short_stacks_marked():
    cut = RECORDED_312[:9]  # unwinding stopped inside middle's caller
    stacks = {
        ("python3.12", 100, tuple(reversed(RECORDED_312))): 3,
        ("python3.12", 101, tuple(reversed(RECORDED_312))): 2,  # a forked worker
        ("python3.12", 100, tuple(reversed(cut))): 1,
        ("swapper", 0, (("do_idle", "[kernel.kallsyms]"), ("cpu_idle", "[kernel.kallsyms]"))): 1,
    }
    counts, kinds, details = fold.collapsed_lines(fold.python_view(stacks))
    roots = {stack.split(";")[0] for stack in counts}
    assert roots == {"python3.12 [pid 100]", "python3.12 [pid 101]", "swapper [pid 0]"}
    cut_stacks = [s for s in counts if s.split(";")[1] == fold.CUT_SHORT]
    assert cut_stacks == ["python3.12 [pid 100];[stack cut short];middle (w.py);"
                          "JSONEncoder.iterencode (encoder.py);encoder_call;"
                          "encoder_listencode_obj"]
    assert kinds[fold.CUT_SHORT] == "marker" and kinds["swapper [pid 0]"] == "process"
    assert kinds["do_idle"] == "kernel"
    # Unwinding that ends among the frames running the main module lost nothing shown.
    assert fold.is_complete(tuple(reversed(RECORDED_312[:-5])))  # from Py_RunMain up
    assert not fold.is_complete(tuple(reversed(RECORDED_312[:-11])))  # from PyEval_EvalCode up
    nested_import = (("builtin_exec", LIB), ("py::<module>:/lib/x.py", JIT.format(9)))
    assert not fold.is_complete(nested_import)
    assert details["middle (w.py)"] == "/w.py" and details["encoder_call"] == JSON_EXT
    assert sum(counts.values()) == 7


@pytest.mark.once
@pytest.mark.parametrize("symbol", [
    # 3.9/3.10 (function_code_fastcall, _PyEval_EvalCode...), 3.11+ (_PyEval_Vector...), all.
    "_PyEval_EvalFrameDefault", "_PyEval_EvalFrame", "_PyEval_Vector", "_PyEvalFramePushAndInit",
    "_PyFunction_Vectorcall", "function_code_fastcall", "_PyEval_EvalCode", "PyObject_Vectorcall",
    "_PyObject_VectorcallTstate", "method_vectorcall", "method_vectorcall_FASTCALL_KEYWORDS",
    "slot_tp_call", "cfunction_call", "cfunction_vectorcall_FASTCALL", "_PyObject_MakeTpCall",
    "PyObject_Call", "_PyObject_Call", "object_vacall", "type_call",
])
def test_plumbing_names(symbol):
    assert fold.is_plumbing(symbol)


@pytest.mark.once
@pytest.mark.parametrize("symbol", ["list_sort_impl", "builtin_sorted", "PyUnicode_New",
                                    "_PyObject_Malloc", "gc_collect_main", "encoder_call",
                                    "long_to_decimal_string"])
def test_real_work_is_not_plumbing(symbol):
    assert not fold.is_plumbing(symbol)


# Debian's CPython 3.14 (LTO) in perf 7.2, flake8 -j 2: much of the interpreter is named by
# GCC's copies (benchmarks/python_view_survey.py found these among the most sampled frames).
LTO_314 = "/usr/bin/python3.14"


@pytest.mark.once
def test_lto_copies_are_known_by_their_function():
    assert fold.base_symbol("gc_collect_main.lto_priv.0") == "gc_collect_main"
    assert fold.base_symbol("PyObject_Vectorcall.constprop.2") == "PyObject_Vectorcall"
    assert fold.base_symbol("x.part.0.isra.0.cold") == "x"
    assert fold.base_symbol("list_sort_impl") == "list_sort_impl"
    for symbol in ("slot_tp_init.lto_priv.0", "type_call.lto_priv.0", "object_vacall.lto_priv.0",
                   "method_vectorcall.lto_priv.0", "_PyObject_MakeTpCall.constprop.1"):
        assert fold.is_plumbing(symbol), symbol
    # The collector under a Python function is CPython's work, not the function's bytecode;
    # the copies' suffixes do not reach the labels.
    (collector,) = view_of([("gc_collect_main.lto_priv.0", LTO_314),
                            ("_PyObject_GC_Link.lto_priv.0", LTO_314),
                            ("_PyEval_EvalFrameDefault", LTO_314)] + RECORDED_312[9:])
    assert [(f.label, f.kind) for f in collector.frames][-2:] == [
        ("Outer.run (w.py)", "python"), ("gc_collect_main", "interpreter")]
    # Without a Python frame (start-up), only the call machinery goes, suffix or not.
    (start_up,) = view_of([("builtin_exec.lto_priv.0", LTO_314),
                           ("cfunction_vectorcall_FASTCALL_KEYWORDS.lto_priv.0", LTO_314),
                           ("PyObject_Vectorcall.constprop.2", LTO_314), ("Py_BytesMain", LTO_314),
                           ("_start", LTO_314)])
    assert [f.label for f in start_up.frames] == ["Py_BytesMain", "builtin_exec"]
    # The flamegraph with every frame keeps perf's names.
    (every,) = fold.python_view({("p", 1, (("gc_collect_main.lto_priv.0", LTO_314),)): 1},
                                all_frames=True)
    assert every.frames[-1].label == "gc_collect_main.lto_priv.0"


@pytest.mark.once
def test_interpreter_dsos():
    for dso in (LIB, EXE, "/usr/bin/python3", "/usr/lib/libpython3.13t.so.1.0",
                "/opt/py/lib/libpython3.9.so", "/x/perftramp/_perftramp.cpython-312-x86_64-linux-gnu.so"):
        assert fold.is_interpreter_dso(dso), dso
    for dso in (JSON_EXT, LIBC, "/venv/lib/python3.12/site-packages/black/linegen.cpython-312.so",
                "[kernel.kallsyms]", "[unknown]", "/usr/bin/pythonista"):
        assert not fold.is_interpreter_dso(dso), dso


@pytest.mark.once
def test_c_runtime_start_up_below_python_goes_and_libc_work_above_stays():
    # Debian sid's stripped libc leaves its start-up frame unnamed: perf shows [unknown] in libc.
    frames = (("_start", EXE), ("[unknown]", LIBC), ("Py_BytesMain", EXE),
              ("py::<module>:/t/w.py", "/tmp/perf-1.map"), ("_PyEval_EvalFrameDefault", LIB),
              ("py::hot:/t/w.py", "/tmp/perf-1.map"), ("__memmove_avx_unaligned", LIBC))
    kept = [symbol for symbol, _, _ in fold.fold_frames(frames)]
    assert kept == ["py::<module>:/t/w.py", "py::hot:/t/w.py", "__memmove_avx_unaligned"]
    assert fold.is_c_runtime("/lib64/ld-linux-x86-64.so.2") and fold.is_c_runtime(LIBC)
    assert not fold.is_c_runtime("/usr/lib/x86_64-linux-gnu/libcrypto.so.3")
    assert not fold.is_c_runtime(JSON_EXT)
    # fp stacks on Debian's 3.15: the walk goes past libc's start into addresses in no mapping.
    root = (("[unknown]", "[unknown]"), ("[unknown]", "[unknown]"), ("[unknown]", LIBC),
            ("Py_BytesMain", EXE), ("run_mod", EXE), ("py::<module>:/t/w.py", "/tmp/perf-1.map"))
    assert fold.is_complete(root)
    assert [symbol for symbol, _, _ in fold.fold_frames(root)] == ["py::<module>:/t/w.py"]
    # The same walk in a stack without a Python frame (the collector at shutdown) is complete.
    shutdown = root[:5] + (("_Py_Finalize.constprop.0", EXE), ("gc_collect_main.lto_priv.0", EXE))
    assert fold.is_complete(shutdown[:3] + shutdown[3:4] + shutdown[5:])
    assert not fold.is_complete(root[:3])  # nothing but the C runtime: unwinding stopped there
    assert not fold.is_complete((("_Py_Finalize.constprop.0", EXE), ("gc_collect_main", EXE)))


@pytest.mark.once
def test_definition_lines_match_the_code_objects():
    """Every line the scanner gives is co_firstlineno; most functions get one."""
    lines = _labels.DefinitionLines()
    checked = given = 0
    for module_name in ("argparse", "json.decoder", "dataclasses", "pathlib", "asyncio.tasks"):
        module = importlib.import_module(module_name)
        filename = inspect.getsourcefile(module)
        assert filename is not None
        for code in _code_objects(module):
            if code.co_filename != filename or code.co_name.startswith("<"):
                continue
            qualname = getattr(code, "co_qualname", code.co_name)
            checked += 1
            line = lines.line_of(filename, qualname)
            if line is not None:
                given += 1
                assert line == code.co_firstlineno, (module_name, qualname)
    # 3.9/3.10 name code objects by co_name only: a name defined twice in a file (__init__ of
    # two classes) gets no line there.
    assert checked > 200 and given / checked > (0.8 if sys.version_info >= (3, 11) else 0.5), \
        (given, checked)
    assert lines.line_of("/nonexistent/x.py", "f") is None
    assert lines.line_of("<frozen importlib._bootstrap>", "_find_and_load") is None
    assert _labels.python_label("Outer.run", "/src/app/w.py", 12) == "Outer.run (w.py:12)"
    assert _labels.python_label("f", "<string>", None) == "f (<string>)"
    assert _labels.parse_python_symbol("py::C.m:/a:b/c.py") == ("C.m", "/a:b/c.py")
    assert _labels.parse_python_symbol("_PyEval_EvalFrameDefault") is None


# Lambdas, generator expressions and comprehensions in every kind of scope (line numbers matter:
# the test compares with the code objects the running interpreter makes of this text).
ANONYMOUS_SOURCE = """\
import functools

square = lambda x: x * x


def one_lambda(items):
    return sorted(items, key=lambda item: -item)


def two_lambdas(items):
    first = lambda a: a
    second = lambda b: b
    return first, second


def sole_genexpr(items):
    return sum(
        x * 2 for x in items
    )


def in_a_listcomp(rows):
    pairs = [(lambda r=row: r)() for row in rows]
    return [max(v for v in row) for row in pairs]


class Holder:
    key = lambda self: 1

    def method(self, values):
        return list(v for v in values if v)

    @functools.lru_cache(maxsize=None)
    def cached(self, n=(lambda: 3)()):
        return {k: (lambda: k)() for k in range(n)}


def outer():
    def inner():
        return (lambda: (y for y in range(3)))()
    return inner


total = sum(x for x in range(3))
"""


def _nested_code(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, type(code)):
            yield from _nested_code(const)


@pytest.mark.once
def test_lambdas_and_generator_expressions_get_their_line_when_unique(tmp_path):
    """co_firstlineno of every lambda, genexpr and comprehension whose name is unique in its
    scope (in its file on 3.9/3.10, which name code objects by co_name); none when ambiguous,
    never a wrong one."""
    path = tmp_path / "anonymous.py"
    path.write_text(ANONYMOUS_SOURCE)
    lines = _labels.DefinitionLines()
    found = {}
    for code in _nested_code(compile(ANONYMOUS_SOURCE, str(path), "exec")):
        if code.co_name not in _labels.ANONYMOUS:
            continue
        qualname = getattr(code, "co_qualname", code.co_name)
        line = lines.line_of(str(path), qualname)
        assert line in (None, code.co_firstlineno), (qualname, line, code.co_firstlineno)
        found[(qualname, code.co_firstlineno)] = line
    assert len(found) >= 12, found
    if sys.version_info >= (3, 11):
        named = {key for key, line in found.items() if line is not None}
        assert {("one_lambda.<locals>.<lambda>", 7),
                ("sole_genexpr.<locals>.<genexpr>", 17),  # the line of `sum(`, as CPython has it
                ("Holder.method.<locals>.<genexpr>", 31),
                ("outer.<locals>.inner.<locals>.<lambda>", 40),
                ("outer.<locals>.inner.<locals>.<lambda>.<locals>.<genexpr>", 40)} <= named, found
        # Within a comprehension: under it before 3.12, inlined into the function from 3.12.
        if sys.version_info >= (3, 12):
            assert {("in_a_listcomp.<locals>.<lambda>", 23),
                    ("in_a_listcomp.<locals>.<genexpr>", 24)} <= named, found
        else:
            assert {("in_a_listcomp.<locals>.<listcomp>.<lambda>", 23),
                    ("Holder.cached.<locals>.<dictcomp>.<lambda>", 35)} <= named, found
        # Two in one scope: no line (a default value's lambda runs in the class body).
        for ambiguous in (("two_lambdas.<locals>.<lambda>", 11), ("Holder.<lambda>", 28),
                          ("Holder.<lambda>", 34)):
            assert found[ambiguous] is None, ambiguous
    # A bare name unique in its file (what 3.9/3.10 record for every lambda) gets its line.
    single = tmp_path / "single.py"
    single.write_text("import sys\n\n\ndef f(xs):\n    return sorted(xs, key=lambda x: -x)\n\n\n"
                      "def g(xs):\n    return all(\n        x for x in xs)\n")
    assert lines.line_of(str(single), "<lambda>") == 5
    assert lines.line_of(str(single), "<genexpr>") == 9
    assert lines.line_of(str(single), "f.<locals>.<lambda>") == 5
    assert lines.line_of(str(single), "g.<locals>.<genexpr>") == 9
    assert lines.line_of(str(single), "g.<locals>.<lambda>") is None
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n    return (lambda: 1)\n")
    assert lines.line_of(str(broken), "<lambda>") is None  # not Python: no line, no error


@pytest.mark.once
def test_anonymous_definition_lines_match_the_standard_library():
    """On real modules: never a wrong line, and most lambdas/genexprs named on 3.11+."""
    lines = _labels.DefinitionLines()
    checked = given = 0
    for module_name in ("argparse", "dataclasses", "pathlib", "inspect", "typing", "tokenize",
                        "email._header_value_parser", "traceback", "collections"):
        filename = inspect.getsourcefile(importlib.import_module(module_name))
        assert filename is not None
        code = compile(Path(filename).read_text(encoding="utf-8"), filename, "exec")
        for nested in _nested_code(code):
            if nested.co_name not in _labels.ANONYMOUS:
                continue
            checked += 1
            line = lines.line_of(filename, getattr(nested, "co_qualname", nested.co_name))
            if line is not None:
                given += 1
                assert line == nested.co_firstlineno, (module_name, nested.co_qualname
                                                       if sys.version_info >= (3, 11) else
                                                       nested.co_name)
    assert checked > 50, checked
    if sys.version_info >= (3, 11):
        assert given / checked > 0.5, (given, checked)
    else:
        assert given > 0, (given, checked)


def _code_objects(module):
    seen = set()
    todo = [obj for obj in vars(module).values()]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.isclass(obj) and obj.__module__ == module.__name__:
            todo.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, property):
            todo.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif inspect.isfunction(obj) and obj.__module__ == module.__name__:
            code = obj.__code__
            yield code


@pytest.mark.once
def test_raw_stacks_round_trip():
    stacks = {("my worker", 7, tuple(reversed(RECORDED_312))): 5,
              ("a\tb", -1, (("x", ""),)): 1}
    text = _rawstacks.format_raw(stacks)
    again = _rawstacks.parse_raw(text)
    assert again[("my worker", 7, tuple(reversed(RECORDED_312)))] == 5
    assert sum(again.values()) == 6
    collapsed = _rawstacks.all_frames_collapsed(again)
    assert any(s.startswith("my worker [pid 7];_start;") for s in collapsed)


WORKLOAD = """\
import sys, time, json

def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def middle(n):
    json.dumps([str(i) for i in range(200)])
    return hot(n)

class Outer:
    def run(self, seconds):
        deadline = time.process_time() + seconds  # CPU seconds: the same samples under load
        while time.process_time() < deadline:
            middle(20000)

Outer().run(float(sys.argv[1]))
"""


@pytest.mark.perf
def test_the_python_view_of_a_real_recording(perf, tmp_path):
    """On this interpreter (scripts/test.sh runs it on each): recorded through the CLI, the
    default view has Outer.run -> middle -> hot as adjacent rows, nothing of CPython's call
    machinery between or under them, one root per process."""
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD)
    out = tmp_path / "out"
    proc = cli("record", "-o", str(out), "--", sys.executable, str(workload), "1.0", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stacks = _rawstacks.read_raw(out / "stacks.raw")
    view = fold.python_view(stacks)
    run_name = "Outer.run" if sys.version_info >= (3, 11) else "run"
    chain = [f"{run_name} (workload.py:14)", "middle (workload.py:9)", "hot (workload.py:3)"]
    with_hot = [s for s in view if any(f.label == chain[2] for f in s.frames)]
    assert sum(s.count for s in with_hot) >= 50, [s.frames for s in view][:5]
    full = 0
    for stack in with_hot:
        labels = [f.label for f in stack.frames]
        i = labels.index(chain[2])
        if labels[max(0, i - 2):i + 1] == chain and labels[i - 3] == "<module> (workload.py)":
            full += stack.count
            assert labels[0] == "<module> (workload.py)", labels  # nothing under the program
        assert not any(f.kind == "interpreter" and fold.is_plumbing(f.function) for f in stack.frames)
    assert full >= 0.9 * sum(s.count for s in with_hot), f"{full} of {sum(s.count for s in with_hot)}"
    assert {s.pid for s in view} == set(json.loads((out / "perftramp.json").read_text())["pids"])
    # The SVG shows the labels, one root per process, with the full path in the tooltip.
    svg = (out / "flamegraph.svg").read_text()
    assert "<title>hot (workload.py:3) (" in svg and f"\n{workload}:3</title>" in svg
    assert f"[pid {proc_pid(out)}] (" in svg
    assert "_PyEval_EvalFrameDefault" not in svg
    # ... and --native all keeps every frame perf recorded, the interpreter's included, under
    # whatever name perf gave it on this interpreter: `_PyEval_EvalFrameDefault` where the build
    # has its local symbols (pyenv's, the fp build), `[python3.14]` on Debian's stripped ones
    # unless their -dbg package happens to be installed. The names come from this recording's
    # own stacks.raw, never from what a previous run installed.
    interpreter_names = {_perfscript.frame_name(s, d) for _, _, frames in stacks for s, d in frames
                         if fold.frame_kind(s, d) == fold.INTERPRETER}
    assert interpreter_names, "perf recorded no interpreter frame under the Python functions"
    every = cli("report", str(out), "--native", "all", timeout=300)
    assert every.returncode == 0, every.stderr
    all_svg = (out / "flamegraph.all-frames.svg").read_text()
    missing = sorted(n for n in interpreter_names if f"<title>{html.escape(n, quote=False)} (" not in all_svg)
    assert not missing, missing
    for name in interpreter_names - {f.label for s in view for f in s.frames}:
        assert f"<title>{html.escape(name, quote=False)} (" not in svg, name  # folded by default
    assert every.stdout == proc.stdout  # the table is the Python view's either way


def proc_pid(out: Path) -> int:
    return json.loads((out / "perftramp.json").read_text())["pids"][0]


# --- per process: the summary of record and report ----------------------------------------------

# What perf 6.1 recorded for the two workers of a spawn pool on pyenv's 3.12 (shared libpython):
# unwinding stopped at the first libpython frame, or one anonymous frame above it.
EXEC_WORKER_LOST = [
    [("PyObject_Vectorcall", LIB)],
    [("PyDict_Copy", LIB)],
    [("_PyEval_EvalFrameDefault", LIB)],
    [("[unknown]", "//anon"), ("_PyCode_New", LIB)],  # innermost first
]


def _raw(stack_innermost_first, pid, comm="python3.12"):
    return (comm, pid, tuple(reversed(stack_innermost_first)))


def summary_of(stacks, meta=None, **kwargs):
    from perftramp import _report

    processes = fold.process_stats(stacks)
    report = _report.Report([], "", {}, sum(stacks.values()), sum(p.python for p in processes),
                            sum(p.cut_short for p in processes), processes)
    return _report.summary_lines(report, meta or {"command": ["python3.12", "pool.py"],
                                                  "call_graph": "dwarf"}, **kwargs)


@pytest.mark.once
def test_per_process_shares_and_a_warning_for_an_exec_worker_lost_in_the_interpreter():
    stacks = {_raw(RECORDED_312, 100): 40, _raw(RECORDED_312[:9], 100): 10,  # the parent
              _raw(RECORDED_312, 101): 30}  # a forked worker: inherited addresses, full stacks
    for i, frames in enumerate(EXEC_WORKER_LOST):  # a spawned worker: 60 samples, all lost
        stacks[_raw(frames, 102)] = 15
    stacks[_raw([("py::hot:/w.py", JIT.format(5))] + RECORDED_312[-11:], 102)] = 2
    stats = {p.pid: p for p in fold.process_stats(stacks)}
    assert [p.pid for p in fold.process_stats(stacks)] == [102, 100, 101]  # most samples first
    parent, forked, spawned = stats[100], stats[101], stats[102]
    assert (parent.samples, parent.python, parent.cut_short) == (50, 50, 10)
    assert not parent.stops_in_interpreter and not forked.stops_in_interpreter
    assert (spawned.samples, spawned.python, spawned.cut_short) == (62, 2, 60)
    assert (spawned.in_interpreter, spawned.in_interpreter_cut) == (60, 60)
    assert spawned.stops_in_interpreter and spawned.unwinding_stopped and spawned.shared_libpython
    lines = summary_of(stacks)
    assert lines[0].startswith("142 samples; no samples lost; 58% with a Python frame; 49% cut short")
    assert lines[1] == "per process (3, most samples first):"
    rows = {int(line.split()[0]): line.split() for line in lines[3:6]}
    assert rows[102][:5] == ["102", "python3.12", "62", "3%", "97%"]
    assert lines[3].endswith("<- stops inside the interpreter")
    assert rows[100][:5] == ["100", "python3.12", "50", "100%", "20%"] and len(rows[100]) == 5
    assert rows[101][:5] == ["101", "python3.12", "30", "100%", "0%"] and len(rows[101]) == 5
    warning = [line for line in lines if line.startswith("warning:")]
    assert warning == ["warning: perf's unwinding stopped inside the interpreter in most samples "
                       "of pid 102 (python3.12): its Python functions are missing from the "
                       "flamegraph and the table"]
    text = "\n".join(lines)
    assert "it runs from a shared libpython and was started by exec" in text
    assert "report without --unwinder perf" in text
    # perftramp's own reader said the same: nothing about perf's unwinder, and what to compare.
    own = "\n".join(summary_of(stacks, {"command": ["python3.12", "pool.py"], "call_graph": "dwarf",
                                        "unwinder": "perftramp"}))
    assert "warning: unwinding stopped inside the interpreter in most samples of pid 102" in own
    assert "shared libpython" not in own and "--unwinder perf" in own


@pytest.mark.once
def test_what_is_not_an_interpreter_loss():
    """A native program, kernel-only stacks, a short-lived helper and a single process: no
    warning, no per-process table for one process."""
    sh = [("__GI___libc_write", LIBC), ("main", "/usr/bin/dash"), ("__libc_start_main", LIBC),
          ("_start", "/usr/bin/dash")]
    idle = [("do_idle", "[kernel.kallsyms]"), ("cpu_idle", "[kernel.kallsyms]")]
    stacks = {_raw(RECORDED_312, 100): 50, _raw(sh, 200, "sh"): 30, _raw(idle, 0, "swapper"): 20,
              _raw(EXEC_WORKER_LOST[0], 300): fold.MIN_SAMPLES_TO_JUDGE - 1}
    stats = {p.pid: p for p in fold.process_stats(stacks)}
    assert stats[200].in_interpreter == 0 and stats[0].in_interpreter == 0
    assert stats[300].in_interpreter == fold.MIN_SAMPLES_TO_JUDGE - 1
    assert not any(p.stops_in_interpreter for p in stats.values())  # 300: too few to judge
    lines = summary_of(stacks)
    assert not any(line.startswith("warning") for line in lines), lines
    assert not any(line.startswith("  and ") for line in lines) and len(lines) == 3 + 4
    assert summary_of({_raw(RECORDED_312, 100): 5}) == [
        "5 samples; no samples lost; 100% with a Python frame"]
    # Half the samples is not "most".
    half = {_raw(RECORDED_312, 100): 20, _raw(EXEC_WORKER_LOST[0], 100): 20}
    assert not fold.process_stats(half)[0].stops_in_interpreter


@pytest.mark.once
def test_complete_stacks_without_python_mean_perftramp_was_off():
    """Interpreter frames down to _start but no Python frame: not an unwinding loss, perftramp
    was not on there (a child whose Python lacks it, or whose environment was cleared)."""
    no_python = RECORDED_312[:2] + [("_PyObject_MakeTpCall", LIB), ("_PyEval_EvalFrameDefault", LIB)] \
        + RECORDED_312[-11:]
    assert fold.is_complete(tuple(reversed(no_python)))
    stacks = {_raw(RECORDED_312, 100): 50, _raw(no_python, 103): 40}
    (child,) = [p for p in fold.process_stats(stacks) if p.pid == 103]
    assert child.stops_in_interpreter and child.perftramp_off and not child.lost_in_interpreter
    lines = summary_of(stacks)
    assert "warning: pid 103 (python3.12) ran the interpreter without a Python frame in any " \
           "sample: perftramp was likely not on in it" in lines
    assert any(line.split()[0] == "103" and line.endswith("<- no Python frame: perftramp not on?")
               for line in lines), lines
    assert not any("unwinding stopped" in line or "stops inside" in line for line in lines)
    assert any("pip install perftramp" in line for line in lines)
    # record says that for the whole recording when nothing at all is named: not twice.
    quiet = summary_of(stacks, say_not_on=False)
    assert not any(line.startswith("warning") or "perftramp not on" in line for line in quiet)
    # With some of its samples named, perftramp was on: no warning, whatever the rest is.
    stacks[_raw(RECORDED_312, 103)] = 5
    (child,) = [p for p in fold.process_stats(stacks) if p.pid == 103]
    assert child.stops_in_interpreter and not child.perftramp_off
    assert not any(line.startswith("warning") for line in summary_of(stacks))


@pytest.mark.once
def test_a_short_helper_process_in_start_up_is_not_blamed():
    """A short-lived helper (multiprocessing's resource tracker) spends most of its few samples
    starting the interpreter, before perftramp's start hook: no Python frame is expected there.
    Seen with sid's 3.14: 10 samples, 4 named, the rest start-up."""
    start_up = [("_PyObject_Malloc", LIB), ("_PyImport_InitCore", LIB), ("pyinit_core", LIB),
                ("Py_InitializeFromConfig", LIB), ("pymain_init", LIB), ("Py_BytesMain", LIB),
                ("__libc_start_call_main", LIBC), ("__libc_start_main@@GLIBC_2.34", LIBC),
                ("_start", EXE)]
    exiting = [("_PyObject_Free", LIB), ("finalize_modules", LIB), ("Py_FinalizeEx", LIB),
               ("Py_RunMain", LIB)] + RECORDED_312[-4:]
    assert fold.is_complete(tuple(reversed(start_up))) and fold.is_complete(tuple(reversed(exiting)))
    stacks = {_raw(RECORDED_312, 100): 200, _raw(start_up, 104): 4, _raw(exiting, 104): 2,
              _raw(RECORDED_312, 104): 4}
    helper = [p for p in fold.process_stats(stacks) if p.pid == 104][0]
    assert helper.samples == 10 and helper.in_interpreter == 0
    assert not helper.stops_in_interpreter
    lines = summary_of(stacks)
    assert not any(line.startswith("warning") or "<-" in line for line in lines), lines


@pytest.mark.once
def test_fp_stacks_lost_in_the_interpreter_point_at_frame_pointers():
    stacks = {_raw(RECORDED_312, 100): 20, _raw(EXEC_WORKER_LOST[1], 100): 30}
    lines = summary_of(stacks, {"call_graph": "fp", "command": ["python3", "app.py"]})
    text = "\n".join(lines)
    assert "unwinding stopped inside the interpreter in most samples of pid 100" in text
    assert "no frame pointers" in text and "--mode elf" in text and "setarch" not in text
    # A statically linked interpreter: not the shared-libpython address problem.
    static = [(s, EXE if d == LIB else d) for s, d in EXEC_WORKER_LOST[1]]
    lines = summary_of({_raw(RECORDED_312, 100): 20, _raw(static, 101): 30})
    text = "\n".join(lines)
    assert "pid 101 (python3.12)" in text and "shared libpython" not in text
    assert "jit mode" in text


@pytest.mark.once
def test_many_processes_stay_readable():
    stacks = {_raw(RECORDED_312, pid): 100 - pid for pid in range(1, 21)}  # 20 healthy
    for pid in range(30, 42):  # 12 lost, fewer samples each
        stacks[_raw(EXEC_WORKER_LOST[0], pid)] = 12
    lines = summary_of(stacks, limit=5)
    rows = [line for line in lines if re.match(r"^\s+\d+\s", line)]
    assert [int(row.split()[0]) for row in rows] == [1, 2, 3, 4, 5]  # top 5 by samples
    assert f"  and 27 more processes ({1790 - 485 + 12 * 12:,} samples)" in lines
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert "pid 30 (python3.12), pid 31 (python3.12), pid 32 (python3.12), pid 33 " \
           "(python3.12), pid 34 (python3.12) and 7 more:" in warning
    assert len(lines) < 15
