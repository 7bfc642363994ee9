"""What a view's numbers measure: samples (the default), time (the wall and off-CPU views of a
`record --off-cpu` recording), or a perf event's count (`record -e EVENT`).

A wall view's stacks are either on-CPU or off-CPU: an off-CPU stack ends with a frame of kind
`off-cpu` (`[off-CPU: <reason>]`, DSO `[off-cpu]`) that says why the thread waited. Every view,
table and export takes its labels and units from the Measure it is given."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The DSO of the synthetic frame that ends an off-CPU stack, and its symbol's prefix.
OFF_CPU_DSO = "[off-cpu]"
OFF_CPU_PREFIX = "[off-CPU: "

#: Why a thread was off CPU, from the kernel's switch state and the stack at the switch-out.
#: gil: waiting to take the GIL; lock: a futex (Python lock, Condition, Queue, C mutex);
#: io: sockets, pipes, files, select/poll/epoll, disk (state D); sleep: time.sleep and timers;
#: page-fault: a fault that had to wait (I/O or memory); preempted: runnable, waiting for a CPU
#: (state R); other: anything else (waitpid, signals, stopped).
REASONS = ("gil", "lock", "io", "sleep", "page-fault", "preempted", "other")


def off_cpu_symbol(reason: str) -> str:
    return f"{OFF_CPU_PREFIX}{reason}]"


def off_cpu_reason(symbol: str) -> str:
    """`[off-CPU: lock]` -> `lock` ("" when `symbol` is not an off-CPU frame)."""
    if symbol.startswith(OFF_CPU_PREFIX) and symbol.endswith("]"):
        return symbol[len(OFF_CPU_PREFIX):-1]
    return ""


@dataclass(frozen=True)
class Measure:
    """What a view counts."""

    #: pprof's sample type / the export's name for it: "samples", "wall", "page-faults".
    name: str
    #: pprof's unit: "count", "microseconds".
    unit: str
    #: How a number of it reads in a title or table: "samples", "µs", "page faults".
    label: str

    @property
    def is_time(self) -> bool:
        return self.unit == "microseconds"


SAMPLES = Measure("samples", "count", "samples")
#: Wall view: on-CPU (each sample's period) plus off-CPU time, in microseconds.
WALL = Measure("wall", "microseconds", "µs")
#: Off-CPU view: off-CPU time only, in microseconds.
OFF_CPU = Measure("off-cpu", "microseconds", "µs")


#: The clock events whose samples are time on CPU (their period is in nanoseconds).
CPU_CLOCKS = ("cpu-clock", "task-clock")


def is_cpu_clock(event: str) -> bool:
    """`cpu-clock`, `cpu-clock/freq=249/`, `task-clock:u`: samples of time on CPU."""
    return re.split(r"[/:]", event, maxsplit=1)[0] in CPU_CLOCKS


def event_measure(event: str) -> Measure:
    """A `record -e EVENT` view: weighted by the event's count (the samples' periods)."""
    return Measure(event, "count", event.replace("-", " ").replace("_", " "))
