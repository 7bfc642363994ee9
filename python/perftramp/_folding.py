"""The Python view: perf's stacks folded so that a Python call is one row.

Between two Python frames perf records how CPython got from one to the other
(`_PyEval_EvalFrameDefault`, `PyObject_Vectorcall`, `method_vectorcall`...): 3-4 rows per call.
This module folds those away and keeps the native frames that are real work.

The rules (built from what perf records on CPython 3.9-3.13 here: tests/test_folding.py and
docs/guide.md "Report: the Python view"):

* A frame is *interpreter* when its DSO is the interpreter (`python3.X`, `libpython3.X*.so`) or
  perftramp's extension (its hook frames); a frame in any other DSO is *native* (C extensions,
  libc, mypyc/Cython modules), a `py::` frame *python*, a kernel frame *kernel*.
* Below the outermost Python frame, interpreter frames, the process/thread entry points
  (`_start`, `__libc_start_main`, `start_thread`, `clone3`) and other libc / dynamic-loader
  frames (a stripped libc's unnamed start-up frames) are dropped: they are the same for every
  sample (`Py_BytesMain`, `pymain_run_python`, `run_mod`, `thread_run`...).
* Between two Python frames, every interpreter frame is dropped: it is how CPython called the
  next function (including a builtin that calls back into Python, e.g. `sorted(key=...)`).
  Native frames there stay (a C extension calling back into Python).
* Above the innermost Python frame, interpreter frames are the function running its bytecode
  (the eval loop, allocation, integer arithmetic: its self time) until the first named piece
  of CPython's own work (INTERPRETER_WORK: a builtin such as `sorted`, the garbage collector,
  an import, compiling), which stays with what it calls, except the call machinery
  (PLUMBING). Native frames there always stay (a C extension, libc, the kernel).
* In stacks without a Python frame (start-up, code that ran before perftramp was on), only
  the call machinery is dropped.
* A stack that does not start at a process or thread entry point (or at least at the
  interpreter running the main module or a thread) stopped unwinding early: it is put under
  `[stack cut short]` instead of being drawn as if its outermost frame were a root.
* Every stack starts with its process, `comm [pid N]`: forked workers never merge with the parent.
* Names are matched, and native frames labelled, without the suffixes GCC gives the copies it
  makes of a function (`gc_collect_main.lto_priv.0`, `PyObject_Vectorcall.constprop.2`,
  `encoder_call.isra.0`): LTO builds (Debian's, most distributions') name much of CPython so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from ._measure import OFF_CPU_DSO
from ._labels import DefinitionLines, parse_python_symbol, python_label
from ._rawstacks import RawStacks

# `python3`, `python3.12`, `python3.13t`, `libpython3.12.so.1.0`, `libpython3.13d.so`.
_INTERPRETER_DSO = re.compile(r"^(?:lib)?python\d+(?:\.\d+)*[a-z]*(?:\.so(?:\.[\d.]+)?)?$")

#: Where every complete stack starts: the process's entry point or a thread's (glibc, musl).
ENTRY_POINTS = frozenset({
    "_start", "__libc_start_main", "__libc_start_call_main", "__libc_start_main@@GLIBC_2.34",
    "__libc_start_main_impl", "start_thread", "clone", "clone3", "__clone", "__clone3",
    "libc_start_main_stage2", "start", "thread_start",
})

#: CPython's call machinery: the frames between a Python frame and the work it does, which
#: carry no information of their own. Names seen by perf on 3.9-3.13 here (3.9/3.10:
#: `function_code_fastcall`, `_PyFunction_Vectorcall`, `call_function`, `_PyEval_EvalCode`;
#: 3.11+: `_PyEval_Vector`, `_PyEvalFramePushAndInit`), and their families.
PLUMBING = re.compile(
    r"^(?:"
    r"_?PyEval_EvalFrame(?:Default|Ex)?|_PyEval_EvalFrame|_PyEval_Vector|_PyEval_EvalCode(?:WithName)?"
    r"|PyEval_EvalCode(?:Ex)?|_PyEvalFramePushAndInit|_PyEvalFrameClearAndPop"
    r"|_?PyFunction_Vectorcall|function_code_fastcall|call_function|do_call_core"
    r"|_?PyObject_Vectorcall(?:Tstate|Dict|Method)?|_?PyObject_VectorcallMethod\w*"
    r"|PyVectorcall_Call|_PyVectorcall_Call|_PyObject_MakeTpCall|_?PyObject_Call\w*"
    r"|_?PyObject_FastCall\w*|object_vacall|vectorcall_\w+|cfunction_vectorcall_\w+|cfunction_call"
    r"|method_vectorcall\w*|slot_tp_call|slot_tp_\w+|vgetargs1_impl|type_call"
    r"|_PyCFunction_FastCall\w*|_PyMethodDef_RawFastCall\w*|builtin___build_class__"
    r"|partial_vectorcall|partial_call|thread_run|pythread_wrapper|t_bootstrap"
    r"|_PyEval_EvalFrameDefault\.cold|[\w.]+\.(?:constprop|isra|part|cold)\.\d+_PyEval\w*"
    r")$")

#: CPython's own work worth a box above a Python function: builtins (`sorted`, `exec`...), the
#: garbage collector, imports, compiling. Other interpreter frames there (allocation, integer
#: arithmetic, dict lookups) are the function running its bytecode: its self time.
INTERPRETER_WORK = re.compile(
    r"^(?:builtin_\w+|gc_collect\w*|_?PyGC_Collect\w*|_Py_RunGC|PyImport_\w+|_PyImport_\w+"
    r"|PyMarshal_\w+|marshal_loads|Py_CompileString\w*|_PyAST_Compile|_PyPegen_run_parser\w*)$")

#: The marker under which a stack that stopped unwinding early is drawn.
CUT_SHORT = "[stack cut short]"

# What GCC appends to the copies it makes of a function (link-time and interprocedural
# optimisation, hot/cold splitting): `.lto_priv.0`, `.constprop.2`, `.isra.0`, `.part.1`, `.cold`.
_CLONE_SUFFIX = re.compile(r"(?:\.(?:lto_priv|constprop|isra|part|cold|localalias)(?:\.\d+)?)+$")


def base_symbol(symbol: str) -> str:
    """The function a compiler-made copy was made from: `gc_collect_main.lto_priv.0` ->
    `gc_collect_main`."""
    return _CLONE_SUFFIX.sub("", symbol)


# Kinds of frames (also the flamegraph's colours and the gecko categories).
PYTHON, NATIVE, INTERPRETER, KERNEL, PROCESS, MARKER, OFFCPU = (
    "python", "native", "interpreter", "kernel", "process", "marker", "off-cpu")


@dataclass(frozen=True)
class ViewFrame:
    """A frame as the views and exporters show it."""

    label: str
    kind: str
    #: The function: a qualname for Python frames, the symbol for native ones.
    function: str
    #: The source file of a Python frame, the DSO of a native one ("" when unknown).
    file: str
    #: The definition line of a Python function (0 when unknown).
    line: int = 0
    #: The name perf recorded.
    symbol: str = ""

    @property
    def detail(self) -> str:
        """What the flamegraph's tooltip adds: where the frame is."""
        if self.kind == PYTHON and self.file:
            return f"{self.file}:{self.line}" if self.line else self.file
        if self.kind in (NATIVE, INTERPRETER, KERNEL) and self.file:
            return self.file
        return ""


@dataclass(frozen=True)
class ViewStack:
    pid: int
    comm: str
    #: Outermost first, without the process root (CUT_SHORT first when cut short).
    frames: Tuple[ViewFrame, ...]
    count: int

    @property
    def process(self) -> ViewFrame:
        return process_frame(self.comm, self.pid)


def process_frame(comm: str, pid: int) -> ViewFrame:
    label = f"{comm} [pid {pid}]" if pid >= 0 else comm
    return ViewFrame(label, PROCESS, comm, "", 0, label)


def is_interpreter_dso(dso: str) -> bool:
    base = dso.rsplit("/", 1)[-1]
    return bool(_INTERPRETER_DSO.match(base)) or base.startswith("_perftramp")


def frame_kind(symbol: str, dso: str) -> str:
    if dso == OFF_CPU_DSO:
        return OFFCPU
    if symbol.startswith("py::"):
        return PYTHON
    if dso.startswith(("[kernel", "[guest.kernel")) or symbol.endswith("_[k]"):
        return KERNEL
    if is_interpreter_dso(dso) or (not dso and is_plumbing(symbol)):
        return INTERPRETER  # no DSO: a recording from before stacks.raw, known by name only
    return NATIVE


def is_plumbing(symbol: str) -> bool:
    return bool(PLUMBING.match(base_symbol(symbol)))


def is_interpreter_work(symbol: str) -> bool:
    return bool(INTERPRETER_WORK.match(base_symbol(symbol)))


#: How CPython runs the main module or a thread's function: a stack whose outermost frames are
#: only these (and other interpreter frames) lost nothing the Python view shows (perf's DWARF
#: copy of 64 KiB often ends just short of `_start` on deep stacks).
_RUNS_MAIN = re.compile(r"^(?:run_mod|run_eval_code_obj|pymain_run_\w+|Py_RunMain|Py_BytesMain"
                        r"|_?PyRun_\w+|thread_run|t_bootstrap|pythread_wrapper)$")


def is_complete(frames: Tuple[Tuple[str, str], ...]) -> bool:
    """Whether a stack (outermost first) reaches an entry point, or the way CPython runs the main
    module or a thread: else unwinding stopped early. A kernel-only stack (a kernel thread, or
    an idle task) is complete."""
    if not frames:
        return True
    if base_symbol(frames[0][0]) in ENTRY_POINTS:
        return True
    kinds = [frame_kind(symbol, dso) for symbol, dso in frames]
    if all(kind == KERNEL for kind in kinds):
        return True
    first_python = kinds.index(PYTHON) if PYTHON in kinds else len(frames)
    below = [(frame, kind) for frame, kind in zip(frames[:first_python], kinds)
             if not is_start_up_noise(frame[1], kind)]
    if PYTHON in kinds:
        return (all(kind == INTERPRETER for _, kind in below)
                and any(_RUNS_MAIN.match(base_symbol(symbol)) for (symbol, _), _ in below))
    # No Python frame (start-up, shutdown): complete when, past the C runtime, it starts where
    # CPython runs the program (`Py_BytesMain`...).
    return bool(below) and below[0][1] == INTERPRETER and bool(_RUNS_MAIN.match(base_symbol(below[0][0][0])))


def fold_frames(frames: Tuple[Tuple[str, str], ...]) -> List[Tuple[str, str, str]]:
    """The Python view of one stack (outermost first): (symbol, dso, kind) of the kept frames."""
    kinds = [frame_kind(symbol, dso) for symbol, dso in frames]
    python = [i for i, kind in enumerate(kinds) if kind == PYTHON]
    last = python[-1] if python else -1
    # Above the innermost Python frame, CPython's work from its first named entry on (a builtin,
    # the collector, an import) stays; before that it is the function's own bytecode.
    work = next((i for i in range(last + 1, len(frames))
                 if kinds[i] == INTERPRETER and is_interpreter_work(frames[i][0])), len(frames))
    first = python[0] if python else len(frames)
    kept: List[Tuple[str, str, str]] = []
    for index, ((symbol, dso), kind) in enumerate(zip(frames, kinds)):
        if base_symbol(symbol) in ENTRY_POINTS:
            continue
        if index < first and is_start_up_noise(dso, kind):
            continue  # the C runtime starting the process or a thread (unnamed in a stripped libc)
        if kind == INTERPRETER:
            if python and index < work:
                continue  # how CPython got there, or the function's own bytecode
            if is_plumbing(symbol) or is_perftramp(dso):
                continue  # elsewhere only the call machinery goes
        kept.append((symbol, dso, kind))
    return kept


_C_RUNTIME = re.compile(r"^(?:libc|libpthread|ld-linux[\w.-]*|ld-musl[\w.-]*)(?:[.-]|$)")


def is_c_runtime(dso: str) -> bool:
    """libc and the dynamic loader: below the outermost Python frame they only start the
    process or thread (Debian sid's stripped libc leaves those frames unnamed, `[libc.so.6]`)."""
    return bool(_C_RUNTIME.match(dso.rsplit("/", 1)[-1]))


def is_start_up_noise(dso: str, kind: str) -> bool:
    """Below the outermost Python frame: the C runtime, or an address in no mapping at all (a
    frame-pointer walk that went past the C runtime's start, which keeps no frame pointer)."""
    return kind == NATIVE and (is_c_runtime(dso) or dso in ("[unknown]", ""))


def is_perftramp(dso: str) -> bool:
    return dso.rsplit("/", 1)[-1].startswith("_perftramp")


class Labeller:
    """ViewFrames for raw frames, definition lines read once per source file."""

    def __init__(self, lines: Optional[DefinitionLines] = None) -> None:
        self.lines = lines or DefinitionLines()
        self._cache: Dict[Tuple[str, str, str], ViewFrame] = {}

    def frame(self, symbol: str, dso: str, kind: str) -> ViewFrame:
        key = (symbol, dso, kind)
        found = self._cache.get(key)
        if found is not None:
            return found
        if kind == PYTHON:
            qualname, filename = parse_python_symbol(symbol) or (symbol, "")
            line = self.lines.line_of(filename, qualname) or 0
            frame = ViewFrame(python_label(qualname, filename, line), PYTHON, qualname, filename,
                              line, symbol)
        else:
            name = base_symbol(symbol[:-4] if symbol.endswith("_[k]") else symbol)
            if name in ("[unknown]", "") and dso not in ("[unknown]", ""):
                base = dso.rsplit("/", 1)[-1]
                name = base if base.startswith("[") else f"[{base}]"
            frame = ViewFrame(name.replace(";", ":"), kind, name, dso, 0, symbol)
        self._cache[key] = frame
        return frame


_CUT = ViewFrame(CUT_SHORT, MARKER, CUT_SHORT, "", 0, CUT_SHORT)


def python_view(stacks: RawStacks, *, labeller: Optional[Labeller] = None,
                all_frames: bool = False) -> List[ViewStack]:
    """The stacks as the views show them: folded (the Python view), or with `all_frames` every
    frame as perf recorded it; in both, one root per process and cut-short stacks marked."""
    labeller = labeller or Labeller()
    merged: Dict[Tuple[int, str, Tuple[ViewFrame, ...]], int] = {}
    for (comm, pid, frames), count in stacks.items():
        if all_frames:
            kept = [(s, d, frame_kind(s, d)) for s, d in frames]
            view = tuple(ViewFrame(_perf_name(s, d), k, s, d, 0, s) for s, d, k in kept)
        else:
            view = tuple(labeller.frame(s, d, k) for s, d, k in fold_frames(frames))
        if not is_complete(frames):
            view = (_CUT,) + view
        key = (pid, comm, view)
        merged[key] = merged.get(key, 0) + count
    return [ViewStack(pid, comm, frames, count) for (pid, comm, frames), count in merged.items()]


def _perf_name(symbol: str, dso: str) -> str:
    from ._perfscript import frame_name

    return frame_name(symbol, dso)


def collapsed_lines(stacks: Iterable[ViewStack]) -> Tuple[Dict[str, int], Dict[str, str], Dict[str, str]]:
    """Collapsed stacks (process root first) of a view, with the kind and the tooltip detail of
    each label."""
    counts: Dict[str, int] = {}
    kinds: Dict[str, str] = {}
    details: Dict[str, str] = {}
    for stack in stacks:
        frames = (stack.process,) + stack.frames
        for frame in frames:
            kinds.setdefault(frame.label, frame.kind)
            if frame.detail:
                details.setdefault(frame.label, frame.detail)
        key = ";".join(frame.label.replace(";", ":") for frame in frames)
        counts[key] = counts.get(key, 0) + stack.count
    return counts, kinds, details


# --- per process ---------------------------------------------------------------------------------

#: Below this many samples a process's shares say little: no warning names it.
MIN_SAMPLES_TO_JUDGE = 10

#: The interpreter starting or finishing (before perftramp's start hook has run, or after the
#: program): no Python frame is expected there, whether perftramp is on or not.
_START_OR_EXIT = re.compile(
    r"^(?:Py_Initialize\w*|_Py_InitializeMain|pymain_init|pyinit_\w+|init_interp_main"
    r"|Py_FinalizeEx|_?Py_Finalize|finalize_\w+|Py_Exit|pymain_free|_PyRuntime_Finalize"
    r"|Py_EndInterpreter)$")


@dataclass
class ProcessStats:
    """What the recording holds for one process (the summary of record and report)."""

    pid: int
    #: Its most frequent command name (perf's comm, 15 characters at most).
    comm: str
    samples: int = 0
    #: Samples with at least one Python frame.
    python: int = 0
    #: Samples whose unwinding stopped early (drawn under [stack cut short]).
    cut_short: int = 0
    #: Samples that stop inside the interpreter: interpreter frames but no Python frame, cut
    #: short (perf's unwinding stopped there) or complete (perftramp not on); complete ones of
    #: the interpreter starting or exiting are not counted (no Python frame is expected there),
    #: nor samples cut short below named Python frames (their functions show).
    in_interpreter: int = 0
    #: Of those, the ones cut short.
    in_interpreter_cut: int = 0
    #: Whether its interpreter frames are in a shared libpython (libpython3.X.so).
    shared_libpython: bool = False

    @property
    def label(self) -> str:
        return f"pid {self.pid} ({self.comm})" if self.pid >= 0 else self.comm

    @property
    def stops_in_interpreter(self) -> bool:
        """Most of its samples stop inside the interpreter: its Python functions are missing."""
        return self.samples >= MIN_SAMPLES_TO_JUDGE and 2 * self.in_interpreter > self.samples

    @property
    def unwinding_stopped(self) -> bool:
        """Of its samples that stop inside the interpreter, most were cut short (perf lost the
        stack) rather than complete without a Python frame."""
        return 2 * self.in_interpreter_cut >= self.in_interpreter

    @property
    def lost_in_interpreter(self) -> bool:
        """perf's unwinding stopped inside the interpreter in most of its samples."""
        return self.stops_in_interpreter and self.unwinding_stopped

    @property
    def perftramp_off(self) -> bool:
        """Its stacks run the interpreter, complete, and never name a Python function: perftramp
        was not on in it (with perftramp on, some samples are named)."""
        return self.stops_in_interpreter and not self.unwinding_stopped and self.python == 0


def process_stats(stacks: RawStacks) -> List[ProcessStats]:
    """Per process (by pid; by name for recordings without pids), most samples first."""
    found: Dict[Tuple[int, str], ProcessStats] = {}
    comms: Dict[Tuple[int, str], Dict[str, int]] = {}
    for (comm, pid, frames), count in stacks.items():
        key = (pid, "" if pid >= 0 else comm)
        stats = found.get(key)
        if stats is None:
            stats = found[key] = ProcessStats(pid, comm)
        names = comms.setdefault(key, {})
        names[comm] = names.get(comm, 0) + count
        stats.samples += count
        kinds = [frame_kind(symbol, dso) for symbol, dso in frames]
        complete = is_complete(frames)
        python = PYTHON in kinds
        if python:
            stats.python += count
        if not complete:
            stats.cut_short += count
        interpreter = [dso for (_, dso), kind in zip(frames, kinds) if kind == INTERPRETER]
        if any(dso.rsplit("/", 1)[-1].startswith("libpython") for dso in interpreter):
            stats.shared_libpython = True
        if interpreter and not python:
            if not complete:
                stats.in_interpreter += count
                stats.in_interpreter_cut += count
            elif not any(_START_OR_EXIT.match(base_symbol(symbol)) for symbol, _ in frames):
                stats.in_interpreter += count
    for key, stats in found.items():
        names = comms[key]
        stats.comm = max(names, key=lambda name: (names[name], name))
    return sorted(found.values(), key=lambda s: (-s.samples, s.pid, s.comm))
