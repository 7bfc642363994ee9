"""From perf data to what people read: collapsed stacks, a flamegraph SVG and a table of the
Python functions that cost the most (the `record` and `report` commands share this)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import _folding as fold
from . import _offcpu as oc
from . import _perf
from . import _perfscript as ps
from . import _rawstacks as raw
from ._measure import OFF_CPU, SAMPLES, WALL, Measure, event_measure, is_cpu_clock

# What a recording directory holds.
PERF_DATA = "perf.data"
JIT_DATA = "perf.jit.data"
JIT_DIR = "jit"
COLLAPSED = "stacks.collapsed"
RAW = "stacks.raw"
#: `record --off-cpu`: the wall view's stacks (microseconds on and off CPU) and its drawings.
WALL_RAW = "wall.raw"
#: ...and the CPU samples taken while other threads of their process waited for the GIL.
GIL_RAW = "gil-holders.raw"
WALL_SVG = "flamegraph.wall.svg"
OFF_CPU_SVG = "flamegraph.off-cpu.svg"
SVG = "flamegraph.svg"
#: `--native all`: every frame as perf recorded it.
ALL_FRAMES_SVG = "flamegraph.all-frames.svg"
#: Default output file of each `report --format` (in the recording directory).
EXPORTS = {"pprof": "profile.pb.gz", "speedscope": "profile.speedscope.json",
           "gecko": "profile.gecko.json"}
TOP = "top.txt"
META = "perftramp.json"
#: Every name `record` writes; `--force` removes exactly these (never anything else).
OUTPUTS = (PERF_DATA, PERF_DATA + ".old", JIT_DATA, COLLAPSED, RAW, WALL_RAW, GIL_RAW, WALL_SVG, OFF_CPU_SVG, SVG,
           ALL_FRAMES_SVG, TOP, META,
           *EXPORTS.values(),
           "stacks.python-only.collapsed", "flamegraph.python-only.svg", "top.python-only.txt",
           "stacks.no-python.collapsed", "flamegraph.no-python.svg", "top.no-python.txt")

SCRIPT_FIELDS = "comm,pid,tid,ip,sym,dso"


class CliError(Exception):
    """A failure explained to the user in one message (no traceback), with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def say(message: str) -> None:
    """A line of the command line's own output, on stderr (stdout is the program's)."""
    print(f"perftramp: {message}", file=sys.stderr, flush=True)


# --- perf itself -------------------------------------------------------------------------------

def install_hint() -> str:
    """The command that installs perf on this distribution."""
    ids = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith(("ID=", "ID_LIKE=")):
                ids += " " + line.split("=", 1)[1].strip('"').lower()
    except OSError:
        pass
    sudo = "" if os.geteuid() == 0 else "sudo "
    if "ubuntu" in ids:
        return f"{sudo}apt-get install linux-tools-common linux-tools-$(uname -r)"
    if "debian" in ids:
        return f"{sudo}apt-get install linux-perf"
    if any(name in ids for name in ("fedora", "rhel", "centos")):
        return f"{sudo}dnf install perf"
    if "arch" in ids.split():
        return f"{sudo}pacman -S perf"
    if "alpine" in ids:
        return f"{sudo}apk add perf"
    if "suse" in ids:
        return f"{sudo}zypper install perf"
    return ("install your distribution's perf package (Debian: linux-perf, Ubuntu: "
            "linux-tools-$(uname -r), Fedora: perf)")


def find_perf() -> str:
    """The perf binary, or a CliError saying how to install it."""
    path = shutil.which("perf")
    if path is None:
        raise CliError(f"perf is not installed (or not on PATH). Install it: {install_hint()}")
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CliError(f"{path} does not run ({err}). Reinstall it: {install_hint()}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CliError(f"{path} does not run: {detail[-1] if detail else f'exit {proc.returncode}'}."
                       f" Install the perf matching your kernel: {install_hint()}")
    return path


def perf_env() -> Dict[str, str]:
    return dict(os.environ)


# --- progress ------------------------------------------------------------------------------------

class Progress:
    """Shows that a long step is alive: on a terminal one line rewritten every half second,
    otherwise a line every 5 seconds once the step has taken 2 seconds. `count()` says how far
    it is (e.g. '1,234 jitted files')."""

    def __init__(self, what: str, count: Optional[Callable[[], str]] = None) -> None:
        self.what = what
        self.count = count
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._tty = sys.stderr.isatty()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._printed = False

    def _line(self) -> str:
        detail = ""
        if self.count is not None:
            try:
                detail = f"{self.count()}, "
            except Exception:  # noqa: BLE001 - progress must never fail the step
                detail = ""
        return f"perftramp: {self.what}: {detail}{time.monotonic() - self.start:.1f} s"

    def _run(self) -> None:
        interval, first = (0.5, 0.5) if self._tty else (5.0, 2.0)
        if self._stop.wait(first):
            return
        while True:
            if self._tty:
                sys.stderr.write("\r\033[K" + self._line())
            else:
                sys.stderr.write(self._line() + "\n")
            sys.stderr.flush()
            self._printed = True
            if self._stop.wait(interval):
                return

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._tty and self._printed:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _stop_child(proc: "subprocess.Popen[str]") -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- perf inject --jit ---------------------------------------------------------------------------

def jit_dumps(directories: Iterable[Path], pids: Optional[Set[int]] = None) -> List[Path]:
    found: List[Path] = []
    for directory in directories:
        for dump in sorted(directory.glob("jit-*.dump")):
            pid = dump.name[4:-5]
            if pid.isdigit() and (pids is None or int(pid) in pids):
                found.append(dump)
    return found


def inject(perf: str, data: Path, out: Path, dumps: Sequence[Path]) -> int:
    """`perf inject --jit`: turns each trampoline of the jitdumps into a jitted-<pid>-<n>.so next
    to its dump, so perf can unwind and name them. Returns how many it wrote."""
    patterns = {(dump.parent, f"jitted-{dump.name[4:-5]}-*.so") for dump in dumps}

    def count_files() -> int:
        return sum(1 for directory, pattern in patterns for _ in directory.glob(pattern))

    before = count_files()
    tmp = out.with_name(out.name + ".tmp")
    names = ", ".join(str(d) for d in dumps)
    say(f"perf inject --jit: one ELF file per Python function, next to {names}")
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([perf, "inject", "--jit", "-i", str(data), "-o", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=stderr, env=perf_env(), text=True)
    try:
        def status() -> str:
            size = tmp.stat().st_size if tmp.exists() else 0
            return f"{count_files() - before:,} jitted files, {out.name} {size / 1e6:,.1f} MB"

        with Progress("perf inject --jit", status) as progress:
            proc.wait()
    finally:
        _stop_child(proc)
    written = count_files() - before
    if proc.returncode != 0:
        stderr.seek(0)
        tmp.unlink(missing_ok=True)
        raise CliError(f"perf inject --jit failed (exit {proc.returncode}):\n{_tail(stderr.read())}")
    os.replace(tmp, out)
    say(f"perf inject --jit: {written:,} jitted files in {progress.elapsed:.1f} s -> {out}")
    if written == 0 and _perf.is_compressed(data):
        say(f"warning: {data} was recorded compressed (perf record -z), and perf inject --jit "
            f"copies compressed records without opening them: it found no jitdump to inject, so "
            f"no Python frame can be named. Record jit mode without -z (record does), or use elf "
            f"mode")
    return written


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join("    " + line for line in kept[-lines:])


# --- perf script -> collapsed stacks ---------------------------------------------------------------

@dataclass
class Collapsed:
    #: Every frame as perf named it, one root per process (stacks.collapsed).
    counts: Dict[str, int]
    samples: int
    pids: Set[int]
    #: Chunks of samples perf lost while recording (its ring buffer overflowed).
    lost_chunks: int = 0
    #: The samples with their DSOs (stacks.raw), what the views are folded from.
    stacks: Optional[raw.RawStacks] = None
    #: The wall view (microseconds), when the recording has scheduler switches (--off-cpu).
    wall: Optional[raw.RawStacks] = None
    #: The reader's off-CPU accounting (switches, how their intervals ended), with `wall`.
    off_cpu: Optional[Dict[str, int]] = None
    #: With `wall`: the CPU samples taken while other threads of their process waited for the GIL.
    gil_holders: Optional[raw.RawStacks] = None


_LOST = re.compile(r"lost (\d+) chunks")


def lost_chunks(perf_stderr: str) -> int:
    """The chunks of samples perf says it lost ("Processed N events and lost M chunks!")."""
    return sum(int(m.group(1)) for m in _LOST.finditer(perf_stderr))


def say_lost(chunks: int, events: Optional[int] = None) -> None:
    """What either reader says when perf lost samples while recording."""
    if chunks:
        counted = f" ({events:,} events)" if events else ""
        say(f"perf lost {chunks:,} chunks of samples{counted} while recording: the profile "
            f"undercounts (perf could not keep up; a lower -F, or bigger buffers: "
            f"--perf-args='-m 32M')")


def script_collapse(perf: str, data: Path, *, inline: bool = False) -> Collapsed:
    """Runs `perf script` on `data` and collapses its samples (streamed, never held whole)."""
    command = [perf, "script", "-F", SCRIPT_FIELDS, "-i", str(data)]
    if not inline:
        command.insert(2, "--no-inline")
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=perf_env(),
                            text=True, errors="replace", bufsize=1 << 16)
    pids: Set[int] = set()
    seen = [0]

    def samples() -> Iterable[ps.RawSample]:
        assert proc.stdout is not None
        for sample in ps.iter_raw_samples(proc.stdout):
            seen[0] += 1
            if sample.pid is not None:
                pids.add(sample.pid)
            yield sample

    try:
        with Progress(f"perf script -i {data.name}", lambda: f"{seen[0]:,} samples") as progress:
            stacks = raw.from_samples(samples())
            proc.wait()
    finally:
        _stop_child(proc)
    stderr.seek(0)
    errors = stderr.read()
    if proc.returncode != 0:
        raise CliError(f"perf script -i {data} failed (exit {proc.returncode}):\n{_tail(errors)}")
    lost = lost_chunks(errors)
    say_lost(lost)
    if progress.elapsed > 2:
        say(f"perf script: {seen[0]:,} samples in {progress.elapsed:.1f} s")
    return Collapsed(raw.all_frames_collapsed(stacks), seen[0], pids, lost, stacks)


# --- perftramp's own reader and unwinder -> collapsed stacks --------------------------------------

#: Who turns perf data into stacks: perftramp's own reader and unwinder (the default: each
#: process unwound with its own mappings, in the extension), or `perf script` (perf's own
#: unwinder: the reference, and what --inline uses).
UNWINDERS = ("perftramp", "perf")
DEFAULT_UNWINDER = "perftramp"
#: The reader's warnings printed one per line; the rest are counted.
WARNINGS_SHOWN = 3


def read_collapse(data: Path, *, weigh: bool = False) -> Optional[Collapsed]:
    """Reads `data` with perftramp's own reader (crates/analysis): every sample unwound with
    the mappings of its own process (perf 6's unwinder reuses the first process's libpython
    address for all), the frames named as `perf script` names them. `weigh`: count each
    sample's period (a `record -e EVENT` recording: how many times the event happened) instead
    of the sample. With scheduler switches in it (`record --off-cpu`), the CPU view keeps the
    clock's samples only, and the wall view is built too. None, said, when the reader refuses
    the file (an architecture it does not know): perf script reads it then."""
    from ._perftramp import read_perf_data

    with Progress(f"reading {data.name}") as progress:
        try:
            rows, info = read_perf_data(str(data))
        except OSError as err:
            raise CliError(f"cannot read {data}: {err.strerror or err}") from None
        except ValueError as err:
            say(f"perftramp's reader cannot read it ({err}): reading it with perf script")
            return None
    off_cpu = info.get("off_cpu") is not None
    clocks = {event for *_, event, _ in rows if is_cpu_clock(event)}
    cpu_event = min(clocks) if clocks else None
    stacks: raw.RawStacks = {}
    pids: Set[int] = set()
    samples = 0
    for count, pid, comm, frames, event, weight in rows:
        if oc.is_off_cpu_event(event) or (off_cpu and event != cpu_event):
            continue
        key = raw.key(comm, pid, frames)
        stacks[key] = stacks.get(key, 0) + (weight if weigh else count)
        samples += count
        if pid >= 0:
            pids.add(pid)
    wall = holders = None
    if off_cpu:
        reasons = oc.reasons(rows)
        holders = oc.gil_holders(rows, reasons, info.get("timeline") or {})
        if cpu_event is None:
            say(f"warning: {data} has scheduler switches but no cpu-clock samples: its wall view "
                f"shows the time off CPU only")
        wall = oc.wall_stacks(rows, reasons, cpu_event or "")
    warnings = list(info.get("warnings", ()))
    for warning in warnings[:WARNINGS_SHOWN]:
        say(f"warning: {data}: {warning}")
    if len(warnings) > WARNINGS_SHOWN:
        # A system-wide recording (perf record -a) maps files of every process on the machine,
        # some of them out of reach (in a container or chroot): a few lines say it.
        say(f"  and {len(warnings) - WARNINGS_SHOWN} more warnings of the reader (their frames "
            f"stay unnamed; --unwinder perf reads with perf script)")
    lost = int(info.get("lost_chunks", 0))
    say_lost(lost, int(info.get("lost_events", 0)))
    if progress.elapsed > 2:
        say(f"read {samples:,} samples in {progress.elapsed:.1f} s")
    return Collapsed(raw.all_frames_collapsed(stacks), samples, pids, lost, stacks, wall,
                     info.get("off_cpu"), holders)


# --- outputs -------------------------------------------------------------------------------------

FILTERS = {None: "", True: ".python-only", False: ".no-python"}


@dataclass
class Report:
    """What finish() drew, for the summary."""

    written: List[Path]
    table: str
    #: Every frame as perf named it (stacks.collapsed).
    counts: Dict[str, int]
    samples: int
    #: Samples with at least one Python frame.
    python_samples: int
    cut_short: int
    #: Per process, most samples first.
    processes: List[fold.ProcessStats] = field(default_factory=list)


def top_table(stacks: Sequence[fold.ViewStack], limit: int = 15, measure: Measure = SAMPLES) -> str:
    """The Python functions that cost the most: self = the innermost Python frame of a sample,
    total = anywhere on its stack (once per sample). Each row names the function, then where it
    is defined (`file:line`)."""
    total_samples = sum(stack.count for stack in stacks)
    if total_samples == 0:
        return "no samples\n"
    self_samples: Dict[fold.ViewFrame, int] = {}
    total: Dict[fold.ViewFrame, int] = {}
    without = 0
    for stack in stacks:
        python = [f for f in stack.frames if f.kind == fold.PYTHON]
        if not python:
            without += stack.count
            continue
        self_samples[python[-1]] = self_samples.get(python[-1], 0) + stack.count
        for frame in set(python):
            total[frame] = total.get(frame, 0) + stack.count
    pct = 100.0 / total_samples
    rows = sorted(total, key=lambda f: (-self_samples.get(f, 0), -total[f], f.label, f.file))[:limit]
    by = "time" if measure == SAMPLES else measure.label
    lines = [f"Python functions, by self {by} ({total_samples:,} {measure.label}; self = "
             f"the innermost Python frame of a sample, total = anywhere on its stack):",
             f"{'self':>8} {'total':>8}  function  file:line"]
    for frame in rows:
        where = f"{frame.file}:{frame.line}" if frame.line else frame.file
        lines.append(f"{self_samples.get(frame, 0) * pct:7.2f}% {total[frame] * pct:7.2f}%  "
                     f"{frame.function}  {where}".rstrip())
    if not rows:
        lines.append("    (no Python frame in any sample: was perftramp enabled in the program?)")
    elif len(total) > len(rows):
        lines.append(f"    ... {len(total) - len(rows)} more (--top N)")
    if without:
        lines.append(f"{without * pct:7.2f}% of samples have no Python frame "
                     f"(interpreter start-up and exit, other processes, native threads)")
    return "\n".join(lines) + "\n"


_SVG_TITLE = re.compile(r"<title>(.*?) \(([\d,]+ [^,()<]+, [\d.]+%)\)</title>")


# inferno's script labels a box with its <title> minus the trailing "(N samples, P%)"; with a
# detail line after that, it must take the first line only.
_LABEL_JS = 'find_child(e, "title").textContent.replace('
_LABEL_JS_FIRST_LINE = 'find_child(e, "title").textContent.split("\\n")[0].replace('


def add_details(svg: str, details: Dict[str, str]) -> str:
    """Adds each frame's detail (its file, or DSO) to its tooltip, on a line of its own after
    inferno's `name (N samples, P%)`. Left as it is when inferno's script is not the one this
    was written for (its boxes would show the detail)."""
    import html

    if svg.count(_LABEL_JS) != 2:
        return svg
    svg = svg.replace(_LABEL_JS, _LABEL_JS_FIRST_LINE)

    def replace(match: "re.Match[str]") -> str:
        detail = details.get(html.unescape(match.group(1)))
        if not detail:
            return match.group(0)
        return f"<title>{match.group(1)} ({match.group(2)})\n{html.escape(detail, quote=False)}</title>"

    return _SVG_TITLE.sub(replace, svg)


def render_filtered(directory: Path, counts: Dict[str, int], *, python: bool, title: str,
                    subtitle: str) -> List[Path]:
    """--python-only / --no-python: the perf-named stacks with only (or without) Python frames."""
    from ._perftramp import render_flamegraph

    suffix = FILTERS[python]
    shown = ps.filter_collapsed(counts, python=python)
    if not shown:
        raise CliError("no samples to draw after filtering: the program ran too briefly (raise -F "
                       "or run it longer), or perf recorded nothing")
    path = directory / f"stacks{suffix}.collapsed"
    _write(path, ps.format_collapsed(shown))
    subtitle = f"{subtitle}; {'only Python frames' if python else 'Python frames hidden'}"
    svg_path = directory / f"flamegraph{suffix}.svg"
    _write(svg_path, render_flamegraph(ps.format_collapsed(shown), title, subtitle))
    return [path, svg_path]


def render_view(directory: Path, stacks: Sequence[fold.ViewStack], *, all_frames: bool,
                title: str, subtitle: str, name: Optional[str] = None,
                measure: Measure = SAMPLES) -> Path:
    """The flamegraph of a view: an icicle graph (processes at the top, so the first screen
    shows the widest boxes), frames coloured by kind, each tooltip saying where the frame is.
    `name`: the file (default flamegraph.svg, or its all-frames twin)."""
    from ._perftramp import render_flamegraph

    counts, kinds, details = fold.collapsed_lines(stacks)
    if not counts:
        raise CliError("no samples to draw: the program ran too briefly (raise -F or run it "
                       "longer), or perf recorded nothing")
    view = ("every frame as perf recorded it" if all_frames else
            "Python view: CPython's call machinery folded (--native all shows every frame)")
    svg = render_flamegraph(ps.format_collapsed(counts), title, f"{subtitle}; {view}",
                            kinds=kinds, inverted=True, count_name=measure.label)
    path = directory / (name or (ALL_FRAMES_SVG if all_frames else SVG))
    _write(path, add_details(svg, details))
    return path


def export(stacks: Sequence[fold.ViewStack], fmt: str, path: Path, *, meta: Dict[str, object],
           title: str, measure: Measure = SAMPLES) -> Path:
    """Writes the view, a view of `measure`, in an exchange format (pprof, speedscope, gecko) to
    `path`. The sampling frequency (meta's) only matters to SAMPLES, whose counts are samples."""
    frequency = meta.get("frequency")
    hz = frequency if isinstance(frequency, int) and frequency > 0 else 999
    if fmt == "pprof":
        from ._export_pprof import pprof_bytes

        data = pprof_bytes(stacks, frequency_hz=hz, comment=title, measure=measure)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    elif fmt == "speedscope":
        from ._export_speedscope import speedscope_json

        _write(path, speedscope_json(stacks, frequency_hz=hz, name=title,
                                     exporter=f"perftramp {_version()}", measure=measure))
    elif fmt == "gecko":
        from ._export_gecko import gecko_json

        _write(path, gecko_json(stacks, frequency_hz=hz, product=title, measure=measure))
    else:
        raise CliError(f"unknown format {fmt!r} (pprof, speedscope, gecko)", 2)
    return path


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("perftramp")
    except Exception:  # noqa: BLE001 - only a label in the file
        return "unknown"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="replace")
    os.replace(tmp, path)


def write_collapsed(directory: Path, counts: Dict[str, int]) -> Path:
    path = directory / COLLAPSED
    _write(path, ps.format_collapsed(counts))
    return path


def read_meta(directory: Path) -> Dict[str, object]:
    try:
        meta = json.loads((directory / META).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def write_meta(directory: Path, meta: Dict[str, object]) -> None:
    _write(directory / META, json.dumps(meta, indent=2) + "\n")


def data_file(directory: Path) -> Path:
    """The perf data to read: the injected one when there is one."""
    for name in (JIT_DATA, PERF_DATA):
        if (directory / name).is_file():
            return directory / name
    raise CliError(f"{directory} holds no {PERF_DATA} (nor {COLLAPSED}): record into it first "
                   f"(python -m perftramp record -o {directory} -- python app.py)")


def load_stacks(perf: Optional[str], directory: Path, *, rescan: bool, inline: bool,
                meta: Dict[str, object], unwinder: str = DEFAULT_UNWINDER
                ) -> Tuple[raw.RawStacks, List[Path]]:
    """The recording's samples: from stacks.raw (or an older recording's stacks.collapsed), or
    from perf data (injecting jitdumps first when needed), writing stacks.raw and
    stacks.collapsed."""
    raw_path = directory / RAW
    collapsed_path = directory / COLLAPSED
    if not rescan and raw_path.is_file():
        return raw.read_raw(raw_path), []
    has_data = (directory / PERF_DATA).is_file() or (directory / JIT_DATA).is_file()
    if not rescan and collapsed_path.is_file() and not has_data:
        counts = ps.parse_collapsed(collapsed_path.read_text(encoding="utf-8", errors="replace"))
        return raw.from_collapsed(counts), []
    by_perf = unwinder == "perf" or inline
    weighed = meta.get("event") or (meta.get("off_cpu") and "off-CPU time")
    if by_perf and weighed:
        raise CliError(f"{directory} was recorded with {weighed}: only perftramp's reader "
                       f"weighs samples and builds off-CPU time (report it without "
                       f"--unwinder perf and --inline)", 2)
    data = directory / PERF_DATA
    jit_data = directory / JIT_DATA
    listed = meta.get("jit_dirs")
    dirs = [Path(d) for d in listed if isinstance(d, str)] if isinstance(listed, list) else []
    dirs = dirs or [directory / JIT_DIR]
    dumps = jit_dumps(dirs, _pids(meta))
    if perf is None and (by_perf or (dumps and data.is_file() and not jit_data.is_file())):
        perf = find_perf()
    if dumps and data.is_file() and not jit_data.is_file():
        assert perf is not None
        inject(perf, data, jit_data, dumps)
    source = data_file(directory)
    gone = [pid for pid in _recorded_pids(meta) if not Path(f"/tmp/perf-{pid}.map").exists()]
    if meta.get("mode") == "map" and gone:
        say(f"/tmp/perf-{gone[0]}.map is gone: the Python frames of process {gone[0]} can no "
            f"longer be named (report without --rescan reuses {RAW})")
    result = None if by_perf else read_collapse(source, weigh=bool(meta.get("event")))
    if result is None and weighed:
        raise CliError(f"{source} cannot be read by perftramp's reader, and perf script cannot "
                       f"weigh its samples ({weighed})")
    if result is None:
        perf = perf or find_perf()
        result = script_collapse(perf, source, inline=inline)
        by_perf = True
    assert result.stacks is not None
    raw.write_raw(raw_path, result.stacks)
    written = [write_collapsed(directory, result.counts), raw_path]
    for name, stacks in ((WALL_RAW, result.wall), (GIL_RAW, result.gil_holders)):
        if stacks is not None:
            raw.write_raw(directory / name, stacks)
            written.append(directory / name)
        elif (directory / name).exists():
            (directory / name).unlink()  # from an earlier recording in this directory
    meta["pids"] = sorted(result.pids)
    meta["lost_chunks"] = result.lost_chunks
    meta["unwinder"] = "perf" if by_perf else "perftramp"
    meta["off_cpu_summary"] = result.off_cpu
    write_meta(directory, meta)
    return result.stacks, written


def view_measure(meta: Dict[str, object], *, wall: bool = False) -> Measure:
    """What the main view counts: samples, a `-e EVENT` recording's events, or (`wall`) the
    wall view's time."""
    event = meta.get("event")
    if wall:
        return WALL
    return event_measure(event) if isinstance(event, str) and event else SAMPLES


def load_wall(directory: Path) -> Optional[raw.RawStacks]:
    """The wall view's stacks of an off-CPU recording (wall.raw), None for others."""
    path = directory / WALL_RAW
    return raw.read_raw(path) if path.is_file() else None


def render_wall(directory: Path, wall_view: Sequence[fold.ViewStack], *, title: str,
                subtitle: str) -> List[Path]:
    """flamegraph.wall.svg (on CPU and off CPU, the waits blue, under a box naming why) and
    flamegraph.off-cpu.svg (the waits alone)."""
    written = [render_view(directory, wall_view, all_frames=False, title=f"{title} (wall time)",
                           subtitle=f"{subtitle}; on CPU and off CPU (blue: waiting, and why)",
                           name=WALL_SVG, measure=WALL)]
    off_cpu = oc.off_cpu_only(wall_view)
    if off_cpu:
        written.append(render_view(directory, off_cpu, all_frames=False,
                                   title=f"{title} (off-CPU time)",
                                   subtitle=f"{subtitle}; off CPU only, by why the thread waited",
                                   name=OFF_CPU_SVG, measure=OFF_CPU))
    return written


def finish(perf: Optional[str], directory: Path, *, rescan: bool, python: Optional[bool],
           limit: int, inline: bool = False, title: Optional[str] = None,
           all_frames: bool = False, unwinder: str = DEFAULT_UNWINDER) -> Report:
    """What `record` does after perf stops and what `report` does: the samples (see
    load_stacks), then the flamegraph of the Python view (or of every frame, or filtered) and
    the table."""
    meta = read_meta(directory)
    stacks, written = load_stacks(perf, directory, rescan=rescan, inline=inline, meta=meta,
                                  unwinder=unwinder)
    counts = raw.all_frames_collapsed(stacks)
    if title is None:
        command = meta.get("command")
        title = f"perftramp: {' '.join(command)}" if isinstance(command, list) else f"perftramp: {directory}"
    measure = view_measure(meta)
    subtitle = str(meta.get("summary") or f"{sum(counts.values()):,} {measure.label}")
    wall = load_wall(directory)
    with Progress("drawing the flamegraph"):
        python_view = fold.python_view(stacks)
        if python is not None:
            written += render_filtered(directory, counts, python=python, title=title, subtitle=subtitle)
        elif all_frames:
            written.append(render_view(directory, fold.python_view(stacks, all_frames=True),
                                       all_frames=True, title=title, subtitle=subtitle))
        else:
            written.append(render_view(directory, python_view, all_frames=False, title=title,
                                       subtitle=subtitle, measure=measure))
        wall_view = fold.python_view(wall) if wall else []
        if wall_view:
            written += render_wall(directory, wall_view, title=title, subtitle=subtitle)
    table = top_table(python_view, limit, measure)
    if wall_view:
        table += "\n" + oc.wall_table(wall_view, limit) + "\n" + oc.thread_table(wall_view)
        holders = directory / GIL_RAW
        if holders.is_file():
            held = oc.gil_table(fold.python_view(raw.read_raw(holders)))
            table += "\n" + held if held else ""
    top_path = directory / f"top{FILTERS[python]}.txt"
    _write(top_path, table)
    written.append(top_path)
    samples = sum(s.count for s in python_view)
    with_python = sum(s.count for s in python_view if any(f.kind == fold.PYTHON for f in s.frames))
    cut = sum(s.count for s in python_view if s.frames and s.frames[0].kind == fold.MARKER)
    return Report(written, table, counts, samples, with_python, cut, fold.process_stats(stacks))


# --- the summary ---------------------------------------------------------------------------------

#: Processes listed one per line in the summary; the others are counted in one line.
SUMMARY_PROCESSES = 8


def summary_lines(report: Report, meta: Dict[str, object], *, limit: int = SUMMARY_PROCESSES,
                  say_not_on: bool = True) -> List[str]:
    """What record (after drawing) and report say about a recording: samples, what was lost,
    the share with a Python frame and cut short, then the same per process when there are
    several, and a warning naming each process whose stacks stop inside the interpreter
    (`say_not_on`: also those where perftramp was likely not on)."""
    samples = report.samples
    lost = meta.get("lost_chunks")
    share = 100.0 * report.python_samples / samples if samples else 0.0
    lines = [f"{samples:,} {view_measure(meta).label}; "
             + (f"perf LOST {lost:,} chunks of samples (see above)" if isinstance(lost, int) and lost
                else "no samples lost")
             + f"; {share:.0f}% with a Python frame"
             + (f"; {100.0 * report.cut_short / samples:.0f}% cut short (unwinding stopped early: "
                f"drawn under [stack cut short])" if report.cut_short and samples else "")]
    processes = [p for p in report.processes if p.samples]
    if len(processes) > 1:
        lines.append(f"per process ({len(processes)}, most samples first):")
        lines.append(f"  {'pid':>8}  {'command':<15}  {'samples':>8}  {'Python':>6}  cut short")
        for process in processes[:limit]:
            pid = str(process.pid) if process.pid >= 0 else "?"
            row = (f"  {pid:>8}  {process.comm[:15]:<15}  {process.samples:>8,}  "
                   f"{100.0 * process.python / process.samples:>5.0f}%  "
                   f"{100.0 * process.cut_short / process.samples:>8.0f}%")
            if process.lost_in_interpreter:
                row += "  <- stops inside the interpreter"
            elif process.perftramp_off and say_not_on:
                row += "  <- no Python frame: perftramp not on?"
            lines.append(row)
        rest = processes[limit:]
        if rest:
            lines.append(f"  and {len(rest)} more process{'es' if len(rest) > 1 else ''} "
                         f"({sum(p.samples for p in rest):,} samples)")
    lines += interpreter_warnings(processes, meta, limit=limit, say_not_on=say_not_on)
    lines += off_cpu_lines(meta)
    return lines


def off_cpu_lines(meta: Dict[str, object]) -> List[str]:
    """How the off-CPU intervals of a --off-cpu recording were closed, and what was lost."""
    summary = meta.get("off_cpu_summary")
    if not isinstance(summary, dict):
        if meta.get("off_cpu"):
            return ["off CPU: no scheduler switch was recorded (python -m perftramp doctor "
                    "checks that tracepoints can be recorded here)"]
        return []
    switches = int(summary.get("switches", 0))
    lines = [f"off CPU: {switches:,} scheduler switches, each timed to the thread's next "
             f"switch-in ({int(summary.get('ended_by_switch_in', 0)):,}), else its next sample "
             f"({int(summary.get('ended_by_sample', 0)):,}) or the end of the recording "
             f"({int(summary.get('open_at_end', 0)):,})"]
    unreadable = int(summary.get("unreadable", 0))
    if unreadable:
        lines.append(f"warning: {unreadable:,} switches had no readable state (an unexpected "
                     f"sched_switch layout): their time off CPU is missing from the wall view")
    return lines


def _names(processes: Sequence[fold.ProcessStats], limit: int) -> str:
    shown = [p.label for p in processes[:limit]]
    if len(processes) > limit:
        shown.append(f"{len(processes) - limit} more")
    return ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]


def interpreter_warnings(processes: Sequence[fold.ProcessStats], meta: Dict[str, object], *,
                         limit: int = SUMMARY_PROCESSES, say_not_on: bool = True) -> List[str]:
    """A warning naming the processes whose stacks stop inside the interpreter, with what it
    likely means and what to try: perf's unwinding stopped there (cut short), or perftramp was
    not on in them (complete stacks without a Python frame; with `say_not_on` False the caller
    says that for the whole recording itself)."""
    lost = [p for p in processes if p.lost_in_interpreter]
    off = [p for p in processes if p.perftramp_off]
    lines: List[str] = []
    if lost:
        by_perf = read_by_perf(meta)
        who = "perf's unwinding" if by_perf else "unwinding"
        lines.append(f"warning: {who} stopped inside the interpreter in most samples "
                     f"of {_names(lost, limit)}: {'their' if len(lost) > 1 else 'its'} Python "
                     f"functions are missing from the flamegraph and the table")
        if meta.get("call_graph") == "fp":
            lines.append("  likely: the interpreter has no frame pointers, which --call-graph fp "
                         "needs to walk through it")
            lines.append("  try: elf mode (python -m perftramp record --mode elf -- ...), which "
                         "unwinds with DWARF and needs no frame pointers")
        elif any(p.shared_libpython for p in lost) and by_perf:
            they, run, were, these = (("they", "run", "were", "these") if len(lost) > 1 else
                                      ("it", "runs", "was", "this one"))
            lines.append(
                f"  likely: {they} {run} from a shared libpython and {were} started by exec "
                f"(multiprocessing spawn or forkserver, subprocess.Popen([sys.executable, ...]), "
                f"pytest-xdist, uvicorn --workers): perf's DWARF unwinder keeps a shared "
                f"library's unwind tables at the address where the first process it unwound had "
                f"it, and address randomization put libpython elsewhere in {these} (forked "
                f"children inherit their parent's addresses and are not affected)")
            lines.append(
                "  try: reading it with perftramp's own unwinder, which unwinds each process with "
                "its own mappings (report without --unwinder perf)")
        elif not by_perf:
            lines.append("  likely: the unwind tables of their interpreter could not be read (the "
                         "file changed or was deleted since the recording), or their stacks are "
                         "deeper than the stack copy perf took (--perf-args='--call-graph "
                         "dwarf,65528')")
            lines.append("  try: `python -m perftramp report --rescan --unwinder perf DIR` to compare "
                         "with perf's own unwinder; jit mode; or an interpreter with frame pointers "
                         "(map mode, --call-graph fp)")
        else:
            lines.append("  likely: perf's DWARF unwinder could not walk their interpreter frames "
                         "(the loss can differ from run to run)")
            lines.append("  try: recording again; jit mode (record --mode jit); or an interpreter "
                         "with frame pointers (map mode, --call-graph fp)")
    if off and say_not_on:
        lines.append(f"warning: {_names(off, limit)} ran the interpreter without a Python frame "
                     f"in any sample: perftramp was likely not on in "
                     f"{'them' if len(off) > 1 else 'it'}")
        lines.append("  try: install perftramp in the Python those processes run (<that python> "
                     "-m pip install perftramp), and let PERFTRAMP=... reach them (a program "
                     "that starts its children with a clean environment drops it)")
    return lines


def read_by_perf(meta: Dict[str, object]) -> bool:
    """Whether perf script read the recording (--unwinder perf, --inline, or a recording made
    before perftramp had its own reader, whose perftramp.json says nothing)."""
    return meta.get("unwinder", "perf") == "perf"


def _recorded_pids(meta: Dict[str, object]) -> List[int]:
    pids = meta.get("pids")
    return [p for p in pids if isinstance(p, int)] if isinstance(pids, list) else []


def _pids(meta: Dict[str, object]) -> Optional[Set[int]]:
    pid = meta.get("pid")
    return {pid} if isinstance(pid, int) else None
