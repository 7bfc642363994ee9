"""What the exports carry for each stack of a view, decided from its Measure in this one place.

A sample view (SAMPLES) is exported as before, each exporter turning samples into CPU time with
the sampling period. The other measures give each stack one value per column:

- WALL (counts are microseconds): wall, on-CPU and off-CPU time; a stack is off-CPU when its
  innermost frame is an `[off-CPU: reason]` frame (kind `off-cpu`), so it counts in wall and
  off-CPU, an on-CPU stack in wall and on-CPU.
- OFF_CPU: off-CPU time only.
- an event (`event_measure("page-faults")`): the event's count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from . import _folding as fold
from ._measure import OFF_CPU, WALL, Measure
from ._offcpu import is_off_cpu


@dataclass(frozen=True)
class Column:
    """One value of every exported stack."""

    #: pprof's sample type ("wall", "on-cpu", "off-cpu", "page-faults").
    name: str
    #: pprof's unit ("microseconds", "count").
    unit: str
    #: How speedscope's profile names say it ("wall", "on-CPU", "off-CPU", "page-faults").
    title: str

    @property
    def is_time(self) -> bool:
        return self.unit == "microseconds"


_US = "microseconds"
_WALL, _ON, _OFF = Column("wall", _US, "wall"), Column("on-cpu", _US, "on-CPU"), Column("off-cpu", _US, "off-CPU")


def value_columns(measure: Measure) -> Tuple[Column, ...]:
    """The values each stack carries in an export of a view of `measure`."""
    if measure == WALL:
        return (_WALL, _ON, _OFF)
    if measure == OFF_CPU:
        return (_OFF,)
    return (Column(measure.name, measure.unit, measure.name),)


def values(measure: Measure, stack: fold.ViewStack) -> Tuple[int, ...]:
    """`stack`'s value in each of `value_columns(measure)`."""
    if measure == WALL:
        off = is_off_cpu(stack)
        return (stack.count, 0 if off else stack.count, stack.count if off else 0)
    return (stack.count,)
