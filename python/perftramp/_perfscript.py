"""Reading `perf script` output: samples as lists of symbol names, innermost frame first.

Shared by the test suite, the benchmarks and the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

__all__ = ["Sample", "parse_perf_script", "has_chain"]

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
