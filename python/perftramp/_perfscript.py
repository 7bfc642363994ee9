"""Reading `perf script` output: samples as lists of symbol names, innermost frame first.

Shared by the test suite, the benchmarks and the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = [
    "Sample", "parse_perf_script", "has_chain",
    "StackSample", "iter_stack_samples", "frame_name", "collapse", "format_collapsed",
    "parse_collapsed", "filter_collapsed", "PythonTop", "python_top",
    "RawSample", "iter_raw_samples",
]

# "\t    7f0b48856240 py::foo:/t.py+0x9 (/tmp/perf-123.map)"
_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)(?:\+0x[0-9a-f]+)?\s+\((.*)\)$")


@dataclass
class Sample:
    """One perf sample: the header line and its stack's symbols, innermost first."""

    header: str
    symbols: List[str] = field(default_factory=list)


def parse_perf_script(text: str) -> List[Sample]:
    samples: List[Sample] = []
    current: Optional[Sample] = None
    for line in text.splitlines():
        if not line.strip():
            if current is not None:
                samples.append(current)
            current = None
        elif line[0] not in " \t":
            if current is not None:
                samples.append(current)
            current = Sample(line)
        elif current is not None:
            match = _FRAME.match(line)
            if match:
                current.symbols.append(match.group(1))
    if current is not None:
        samples.append(current)
    return samples


def has_chain(symbols: Sequence[str], chain: Sequence[str]) -> bool:
    """Whether every name of `chain` (innermost first) is on the stack, in that order."""
    try:
        positions = [list(symbols).index(name) for name in chain]
    except ValueError:
        return False
    return positions == sorted(positions)


# --- Collapsing for flamegraphs (the command line) ------------------------------------------------

#: The prefix of every Python frame perftramp (and CPython's own trampoline) names.
PYTHON_PREFIX = "py::"
#: FlameGraph's annotation of kernel frames (stackcollapse-perf.pl --kernel).
KERNEL_SUFFIX = "_[k]"

# "python3.12 12345/12346 " (perf script -F comm,pid,tid,...), else "comm  pid[/tid] ..." (default).
_HEADER_FIELDS = re.compile(r"^(?P<comm>.*?\S)\s+(?P<pid>\d+)/(?P<tid>\d+)\s*$")
_HEADER_DEFAULT = re.compile(r"^(?P<comm>.*?\S)\s+(?P<pid>\d+)(?:/\d+)?(?:\s|$)")
# A frame whose dso is the LAST parenthesized group, so names holding " (" (a file name like
# "a (copy).py", a demangled C++ signature) stay whole.
_STACK_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)(?:\+0x[0-9a-f]+)?\s+\(([^()]*)\)$")


@dataclass
class StackSample:
    """One perf sample with what flamegraphs need: process name and pid, frames innermost first."""

    comm: str
    pid: Optional[int]
    frames: List[str] = field(default_factory=list)


def frame_name(symbol: str, dso: str) -> str:
    """A frame as FlameGraph's stackcollapse-perf.pl names it: the symbol; `[dso basename]` for
    an unresolved one; kernel frames annotated `_[k]`; `;` (the stack separator) made `:`."""
    if symbol in ("[unknown]", "") and dso not in ("[unknown]", ""):
        base = dso.rsplit("/", 1)[-1]
        symbol = base if base.startswith("[") else f"[{base}]"
    name = symbol.replace(";", ":")
    if dso.startswith(("[kernel", "[guest.kernel")) and not name.startswith(PYTHON_PREFIX):
        name += KERNEL_SUFFIX
    return name


def iter_stack_samples(lines: Iterable[str]) -> Iterator[StackSample]:
    """Stream `perf script` output (any `-F` that includes comm, pid, ip, sym and dso) into
    samples, without holding the whole text. Frames keep perf's names (offsets dropped)."""
    for sample in iter_raw_samples(lines):
        yield StackSample(sample.comm, sample.pid,
                          [frame_name(symbol, dso) for symbol, dso in sample.frames])


def collapse(samples: Iterable[StackSample], *, root_comm: bool = True) -> Dict[str, int]:
    """`outermost;...;innermost` -> sample count (the collapsed-stacks format), with the process
    name as the root frame when `root_comm`."""
    counts: Dict[str, int] = {}
    for sample in samples:
        frames = list(reversed(sample.frames))
        if root_comm:
            frames.insert(0, sample.comm.replace(";", ":") or "[unknown]")
        if not frames:
            continue
        key = ";".join(frames)
        counts[key] = counts.get(key, 0) + 1
    return counts


def format_collapsed(counts: Dict[str, int]) -> str:
    """Collapsed stacks as text, one `stack count` line each, sorted by stack."""
    return "".join(f"{stack} {count}\n" for stack, count in sorted(counts.items()))


def parse_collapsed(text: str) -> Dict[str, int]:
    """Read collapsed stacks back (`stack count` lines; blank and `#` lines skipped)."""
    counts: Dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[stack] = counts.get(stack, 0) + int(count)
    return counts


def filter_collapsed(counts: Dict[str, int], *, python: Optional[bool]) -> Dict[str, int]:
    """Keep only Python frames (`python=True`: a sample without any becomes `[no Python frame]`,
    so shares stay shares of all samples), hide them (`python=False`), or keep all (None)."""
    if python is None:
        return dict(counts)
    out: Dict[str, int] = {}
    for stack, count in counts.items():
        frames = stack.split(";")
        if python:
            kept = [f for f in frames if f.startswith(PYTHON_PREFIX)] or ["[no Python frame]"]
        else:
            kept = [f for f in frames if not f.startswith(PYTHON_PREFIX)]
            if not kept:
                continue
        key = ";".join(kept)
        out[key] = out.get(key, 0) + count
    return out


@dataclass
class PythonTop:
    """Per Python function: samples where it is the innermost Python frame (self) and samples
    where it is anywhere on the stack (total, counted once per sample even when recursive)."""

    total_samples: int
    self_samples: Dict[str, int]
    total: Dict[str, int]
    without_python: int

    def rows(self, limit: Optional[int] = None) -> List[Tuple[str, int, int]]:
        names = sorted(self.total, key=lambda n: (-self.self_samples.get(n, 0), -self.total[n], n))
        return [(n, self.self_samples.get(n, 0), self.total[n]) for n in names[:limit]]


def python_top(counts: Dict[str, int]) -> PythonTop:
    self_samples: Dict[str, int] = {}
    total: Dict[str, int] = {}
    all_samples = without = 0
    for stack, count in counts.items():
        all_samples += count
        python = [f for f in stack.split(";") if f.startswith(PYTHON_PREFIX)]
        if not python:
            without += count
            continue
        innermost = python[-1]
        self_samples[innermost] = self_samples.get(innermost, 0) + count
        for name in set(python):
            total[name] = total.get(name, 0) + count
    return PythonTop(all_samples, self_samples, total, without)


# --- Samples with their DSOs (what the Python view folds) ------------------------------------------

@dataclass
class RawSample:
    """One perf sample as recorded: process name and pid, and each frame's symbol with the file
    (DSO) it is in, innermost first. The DSO is what tells CPython's plumbing from other native
    code (_folding.py)."""

    comm: str
    pid: Optional[int]
    frames: List[Tuple[str, str]] = field(default_factory=list)


def iter_raw_samples(lines: Iterable[str]) -> Iterator[RawSample]:
    """Stream `perf script` output into samples keeping (symbol, dso) per frame, without holding
    the whole text (iter_stack_samples gives display names instead)."""
    current: Optional[RawSample] = None
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            if current is not None:
                yield current
            current = None
        elif line[0] not in " \t":
            if current is not None:
                yield current
            match = _HEADER_FIELDS.match(line) or _HEADER_DEFAULT.match(line)
            if match:
                current = RawSample(match.group("comm"), int(match.group("pid")))
            else:
                current = RawSample(line.strip(), None)
        elif current is not None:
            match = _STACK_FRAME.match(line) or _FRAME.match(line)
            if match:
                current.frames.append((match.group(1), match.group(2)))
    if current is not None:
        yield current
