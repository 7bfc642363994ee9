"""The samples of a recording as perf named them, with each frame's DSO and each sample's
process: what every view and export is computed from (`stacks.raw` in a recording directory,
so `report` redraws without running perf script again).

Format of `stacks.raw`: a first line `# perftramp raw stacks 1`, then one line per distinct
stack: `count<TAB>pid<TAB>comm<TAB>frame<TAB>frame...`, frames outermost first, each
`symbol<US>dso` (US = \\x1f). perftramp's names hold no control characters (src/names.rs), so
neither separator occurs in a field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Set, Tuple

from ._perfscript import KERNEL_SUFFIX, RawSample

#: (comm, pid (-1 when unknown), frames outermost first as (symbol, dso)) -> samples.
RawKey = Tuple[str, int, Tuple[Tuple[str, str], ...]]
RawStacks = Dict[RawKey, int]

HEADER = "# perftramp raw stacks 1"
_US = "\x1f"


def clean(text: str) -> str:
    """A field without the format's separators (tab, newline, US)."""
    return text.replace("\t", " ").replace("\n", " ").replace(_US, " ")


def key(comm: str, pid: Optional[int], frames: Iterable[Tuple[str, str]]) -> RawKey:
    """A stack's key: its fields cleaned, -1 for an unknown pid; `frames` outermost first."""
    return (clean(comm) or "[unknown]", pid if pid is not None else -1,
            tuple((clean(s), clean(d)) for s, d in frames))


def from_samples(samples: Iterable[RawSample]) -> RawStacks:
    stacks: RawStacks = {}
    for sample in samples:
        k = key(sample.comm, sample.pid, reversed(sample.frames))
        stacks[k] = stacks.get(k, 0) + 1
    return stacks


def format_raw(stacks: RawStacks) -> str:
    lines = [HEADER + "\n"]
    for (comm, pid, frames), count in sorted(stacks.items(), key=lambda item: (item[0][1], item[0])):
        fields = [str(count), str(pid), comm] + [f"{s}{_US}{d}" for s, d in frames]
        lines.append("\t".join(fields) + "\n")
    return "".join(lines)


def parse_raw(text: str) -> RawStacks:
    stacks: RawStacks = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        try:
            pid = int(fields[1])
        except ValueError:
            continue
        frames = tuple(_frame(f) for f in fields[3:])
        key: RawKey = (fields[2], pid, frames)
        stacks[key] = stacks.get(key, 0) + int(fields[0])
    return stacks


def _frame(field: str) -> Tuple[str, str]:
    symbol, _, dso = field.partition(_US)
    return symbol, dso


def write_raw(path: Path, stacks: RawStacks) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(format_raw(stacks), encoding="utf-8", errors="replace")
    os.replace(tmp, path)


def read_raw(path: Path) -> RawStacks:
    return parse_raw(path.read_text(encoding="utf-8", errors="replace"))


def from_collapsed(counts: Dict[str, int]) -> RawStacks:
    """Stacks of a recording made before stacks.raw existed (its stacks.collapsed: process
    name as root, no pid, no DSO but the kernel's `_[k]`): folding then knows the interpreter's
    frames by name only."""
    stacks: RawStacks = {}
    for stack, count in counts.items():
        names = stack.split(";")
        comm, names = names[0], names[1:]
        frames = tuple((n[: -len(KERNEL_SUFFIX)], "[kernel.kallsyms]") if n.endswith(KERNEL_SUFFIX)
                       else (n, "") for n in names)
        key = (comm, -1, frames)
        stacks[key] = stacks.get(key, 0) + count
    return stacks


def pids_of(stacks: RawStacks) -> Set[int]:
    return {pid for _, pid, _ in stacks if pid >= 0}


def all_frames_collapsed(stacks: RawStacks) -> Dict[str, int]:
    """Every frame as perf named it (stackcollapse-perf style), one root per process:
    `comm [pid N];outermost;...;innermost`."""
    from ._perfscript import frame_name

    counts: Dict[str, int] = {}
    for (comm, pid, frames), count in stacks.items():
        root = f"{comm} [pid {pid}]" if pid >= 0 else comm
        key = ";".join([root.replace(";", ":")] + [frame_name(s, d) for s, d in frames])
        counts[key] = counts.get(key, 0) + count
    return counts
