"""`python -m perftramp record -- CMD`: run a command under `perf record` with perftramp enabled
in its Python processes through the environment (`PERFTRAMP`, `PERFTRAMP_DIR`, read by the
`perftramp.pth` start hook), then draw what was recorded."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import _perf
from . import _report as rp
from ._report import CliError, say

#: Whether a Python build keeps frame pointers (what perf's fp unwinding needs): the same test as
#: the test suite's, run by the interpreter in question.
#: 3.15+ records it as `_Py_WITH_FRAME_POINTERS` (frame pointers are its default, and a build can
#: turn them off); older builds only show it in their compiler flags.
FP_CHECK = (
    "import sysconfig; v = sysconfig.get_config_var('_Py_WITH_FRAME_POINTERS'); "
    "flags = ' '.join(str(sysconfig.get_config_var(n) or '') "
    "for n in ('CFLAGS', 'CONFIG_ARGS', 'PY_CFLAGS')); "
    "print(int(bool(int(v))) if v is not None else int('-fno-omit-frame-pointer' in flags))"
)
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)*)?[a-z]?$")

#: How each mode is recorded (see the table in docs/modes.md). Map mode on an interpreter without frame
#: pointers: fp unwinding finds no Python frame at all there, dwarf at least the innermost one.
CALL_GRAPH = {
    "fp": ["-g", "--call-graph", "fp"],
    "dwarf": ["--call-graph", "dwarf,65528"],
    "jit": ["-k", "1", "--call-graph", "dwarf,65528"],
    # elf mode: perf reads names and unwind tables from the arena images; no -k 1, no inject.
    "elf": ["--call-graph", "dwarf,65528"],
}

#: The `perf report` the hint after a recording suggests (and the tests run): the library
#: before the symbol, because `--sort symbol` alone can list one function twice when many
#: entries have no symbol, as on a stripped interpreter (docs/limitations.md).
PERF_REPORT_ARGS = ("--children", "--sort", "dso,symbol")


@dataclass(frozen=True)
class Sampling:
    """What perf samples: CPU time (the default), CPU time plus every scheduler switch
    (`--off-cpu`: the wall and off-CPU views), or another event (`-e EVENT`: the views weighed
    by its count)."""

    off_cpu: bool = False
    event: Optional[str] = None
    #: With `event`: sample every Nth event (perf record -c); None: EVENT_PERIODS, else a rate.
    period: Optional[int] = None

    @property
    def event_period(self) -> Optional[int]:
        return self.period or EVENT_PERIODS.get(self.event or "")

    def perf_args(self, hz: int) -> List[str]:
        if self.off_cpu:
            # The clock keeps its frequency in its own term; `-c 1` then applies to the
            # tracepoint alone: every switch is recorded (a rate would sample some of them).
            return ["-e", f"cpu-clock/freq={hz}/", "-e", SCHED_SWITCH, "-c", "1", "--switch-events"]
        if self.event:
            period = self.event_period
            return ["-e", self.event, *(["-c", str(period)] if period else ["-F", str(hz)])]
        return ["-F", str(hz)]

    def meta(self) -> Dict[str, object]:
        return {"off_cpu": self.off_cpu, "event": self.event,
                "event_period": self.event_period if self.event else None}

    def describe(self, hz: int) -> str:
        if self.off_cpu:
            return f"{hz} Hz on CPU and every scheduler switch (off-CPU time)"
        if self.event:
            period = self.event_period
            return f"{self.event}, " + (f"every {period:,}" if period else f"at {hz} Hz")
        return f"{hz} Hz"


@dataclass(frozen=True)
class RecordOptions:
    """How `record` samples, reads and draws, whatever it records (a command or a live pid)."""

    #: -F HZ; None: the unwinder's default (DEFAULT_HZ).
    frequency: Optional[int] = None
    #: Rows of the table of Python functions.
    top: int = 15
    inline: bool = False
    #: Who reads perf.data: "perftramp" or "perf" (perf script).
    unwinder: str = "perftramp"
    #: Passed to perf record as they are (--perf-args).
    perf_args: Tuple[str, ...] = ()
    #: Draw every native frame (--native all) rather than the Python view.
    all_frames: bool = False
    compress: bool = True
    sampling: Sampling = Sampling()

    def perf_record_args(self, perf: str, *, hz: int, unwind: str, inject: bool) -> List[str]:
        """perf record's options, whatever it records: the sampling, the call graph (`unwind`, a
        key of CALL_GRAPH), the ring buffer, compression (none when the recording goes through
        perf inject --jit: `inject`), then --perf-args last, so that the user's choice wins."""
        return [*self.sampling.perf_args(hz), *CALL_GRAPH[unwind],
                *ring_buffer_args(unwind, self.perf_args),
                *compress_args(perf, self.compress, unwind=unwind, inject=inject,
                               perf_args=self.perf_args),
                *self.perf_args]


#: Events sampled every Nth occurrence rather than at a rate: in frequency mode the kernel's
#: period for bursty software events lags (seen here: one sample of interpreter start-up
#: weighed 23,780 page faults, 76% of the program's, most of them made later by another
#: function), so each sample's period would not be the events at its stack. A fixed period
#: makes every sample weigh the same. Others (cycles, instructions, tracepoints) use the rate.
EVENT_PERIODS = {"page-faults": 100, "faults": 100, "minor-faults": 100, "major-faults": 1,
                 "context-switches": 1, "cs": 1, "cpu-migrations": 1, "migrations": 1}


def check_sampling(perf: str, sampling: Sampling) -> None:
    """Refuses, before the program runs, a recording that could not measure what was asked:
    off-CPU time where perf cannot record the scheduler's tracepoints (never a recording
    silently without it), an event perf cannot record or would replace by cpu-clock."""
    if sampling.off_cpu:
        from ._doctor import off_cpu_problem  # _doctor imports this module

        problem = off_cpu_problem(perf)
        if problem:
            raise CliError(f"--off-cpu: {problem}")
    if sampling.event:
        from ._doctor import event_problem

        problem = event_problem(perf, sampling.event)
        if problem:
            raise CliError(f"-e {sampling.event}: {problem}", 2)


#: The scheduler tracepoint whose samples are switch-outs.
SCHED_SWITCH = "sched:sched_switch"

#: Default sampling rates. A DWARF sample copies 64 KiB of stack (what deep Python stacks need:
#: each Python call takes ~1 KiB of C stack), so at 499 Hz two busy cores produce 64 MB/s, more
#: than perf drains on a 2-core machine: a forking program (black on 170 files) lost 136 chunks.
#: At 249 Hz with the ring buffer below it lost none (docs/guide.md: "Sampling defaults").
DEFAULT_HZ = {"fp": 999, "dwarf": 249, "jit": 249, "elf": 249}
#: Where `record` has elf mode put its arena images (inside the output directory).
ELF_DIR = "elf"
#: perf's ring buffer per CPU. Its default (512 KiB) holds 8 DWARF samples: any scheduling hiccup
#: of perf itself loses samples. 16 MiB holds ~1 s of DWARF samples per CPU. Only root may lock
#: that much (others are bounded by kernel.perf_event_mlock_kb, and perf would refuse).
RING_BUFFER = ["-m", "16M"]


def ring_buffer_args(unwind: str, perf_args: Sequence[str]) -> List[str]:
    """`-m 16M` for DWARF recordings by root, unless the user chose a size (-m/--mmap-pages)."""
    chosen = any(a in ("-m", "--mmap-pages") or a.startswith(("-m", "--mmap-pages="))
                 for a in perf_args)
    if unwind == "fp" or chosen or os.geteuid() != 0:
        return []
    return list(RING_BUFFER)


#: Why jit mode records uncompressed (measured with perf 6.1; perf 7.2's builtin-inject.c passes
#: compressed records through the same way).
JIT_UNCOMPRESSED = ("jit mode records uncompressed: perf inject --jit copies compressed (-z) "
                    "records without opening them, so it would miss the jitdump each process maps "
                    "and name no Python frame (elf mode gives the same full stacks, compressed: "
                    "--mode elf, or PERFTRAMP_MODE=elf for a live process)")


def compress_args(perf: str, compress: bool, *, unwind: str, inject: bool,
                  perf_args: Sequence[str]) -> List[str]:
    """`-z` (zstd) when wanted and this perf can, unless the user chose a compression level in
    --perf-args; where perf cannot, or the recording goes through perf inject --jit (`inject`),
    one line saying so."""
    if not compress or any(a.startswith(("-z", "--compression-level")) for a in perf_args):
        return []
    if inject:
        say(JIT_UNCOMPRESSED)
        return []
    found = _perf.compression(perf)
    if found.works:
        return list(_perf.COMPRESS)
    size = " (dwarf stacks: about 16 MB per second per busy process)" if unwind != "fp" else ""
    say(f"{perf} cannot compress recordings ({found.why}): recording uncompressed{size}. A perf "
        f"built with zstd makes them 10x smaller or more; --no-compress skips this check")
    return []


def clean_env() -> Dict[str, str]:
    """This environment without perftramp's start-up variables (for probing interpreters)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PERFTRAMP")}


def resolve_command(name: str) -> Optional[str]:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def python_of(path: str) -> Optional[str]:
    """The Python interpreter `path` runs: itself when it is one (python, python3.12, a venv's
    python), the interpreter of its `#!` line when it is a script (pytest, a console script,
    an executable app.py), else None."""
    if _PYTHON_NAME.match(os.path.basename(path)):
        return path
    try:
        with open(path, "rb") as file:
            first = file.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").split()
    if not parts:
        return None
    interpreter = parts[0]
    if os.path.basename(interpreter) == "env":
        names = [p for p in parts[1:] if not p.startswith("-") and "=" not in p]
        if not names:
            return None
        interpreter = shutil.which(names[0]) or names[0]
    return interpreter if _PYTHON_NAME.match(os.path.basename(interpreter)) else None


def has_frame_pointers(python: str) -> Optional[bool]:
    """Whether `python` was built with frame pointers; None if it cannot be asked."""
    try:
        proc = subprocess.run([python, "-I", "-c", FP_CHECK], capture_output=True, text=True,
                              timeout=60, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return out == "1" if proc.returncode == 0 and out in ("0", "1") else None


@dataclass
class Plan:
    mode: str  # "map" or "jit"
    unwind: str  # a key of CALL_GRAPH
    reason: str
    frequency: int

    @property
    def call_graph(self) -> str:
        return "fp" if self.unwind == "fp" else "dwarf"


def choose_mode(requested: str, python: Optional[str], fp: Optional[bool],
                frequency: Optional[int], map_dwarf_resolves: bool = True,
                off_cpu: bool = False) -> Plan:
    """--mode auto: frame pointers give full stacks in map mode at the lowest cost; otherwise
    elf mode, whose arena images let perf's dwarf unwinder walk through every Python frame
    with nothing to run after the recording. `map_dwarf_resolves`: whether this perf's dwarf
    unwinder names perf-map code at all (perf 7's libdw does not: map mode without frame
    pointers would show no Python frame). `off_cpu`: waits are mostly inside libc, which has
    no frame pointers: a frame-pointer walk from there loses the Python frames (seen on 3.15:
    half of the GIL waits unattributed), so auto takes elf mode's dwarf stacks even then."""
    if requested == "auto":
        if fp and off_cpu:
            mode, unwind, reason = "elf", "elf", (
                f"{python} has frame pointers, but waits happen inside libc, which has none: "
                f"elf mode, dwarf stacks (--off-cpu)")
        elif fp:
            mode, unwind, reason = "map", "fp", f"{python} has frame pointers: map mode, --call-graph fp"
        elif fp is False:
            mode, unwind, reason = "elf", "elf", (
                f"{python} has no frame pointers: elf mode, dwarf stacks (no perf inject)")
        else:
            mode, unwind, reason = "elf", "elf", (
                "the command is not a Python interpreter I can inspect: elf mode (full stacks with "
                "or without frame pointers)")
    elif requested == "elf":
        mode, unwind, reason = "elf", "elf", "elf mode, dwarf stacks (no perf inject)"
    elif requested == "map":
        if fp is False and not map_dwarf_resolves:
            # Measured on 3.14 with perf 7.2: dwarf names no Python frame, fp the innermost one
            # in 79% of samples (the evaluator leaves rbp pointing at its trampoline's frame).
            mode, unwind, reason = "map", "fp", (
                f"map mode; {python} has no frame pointers, and this perf's dwarf unwinder "
                f"(libdw) resolves no frame in perf-map code, so --call-graph fp: the innermost "
                f"Python frame of most samples (--mode jit gives full stacks)")
        elif fp is False:
            mode, unwind, reason = "map", "dwarf", (
                f"map mode; {python} has no frame pointers, so --call-graph dwarf: only the "
                f"innermost Python frame of each sample (--mode jit gives full stacks)")
        else:
            mode, unwind, reason = "map", "fp", "map mode, --call-graph fp"
    else:
        mode, unwind, reason = "jit", "jit", "jit mode, dwarf stacks, then perf inject --jit"
    return Plan(mode, unwind, reason, frequency or DEFAULT_HZ[unwind])


def prepare_output_dir(path: Path, force: bool) -> Path:
    """Creates the output directory; an existing non-empty one is refused unless `force`, which
    removes only what `record` writes there (never other files)."""
    if path.exists() and not path.is_dir():
        raise CliError(f"{path} exists and is not a directory", 2)
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise CliError(f"{path} already exists: pass --force to replace the recording in it, "
                           f"or choose another -o DIR", 2)
        for name in rp.OUTPUTS:
            for candidate in (path / name, path / (name + ".tmp")):
                if candidate.is_file() or candidate.is_symlink():
                    candidate.unlink()
        elf = path / ELF_DIR
        if elf.is_dir():
            for image_dir in elf.glob("perftramp-*"):
                if image_dir.is_dir() and not image_dir.is_symlink():
                    for file in image_dir.glob("py-*.so"):
                        file.unlink()
                    try:
                        image_dir.rmdir()
                    except OSError:
                        pass
            try:
                elf.rmdir()
            except OSError:
                pass
        jit = path / rp.JIT_DIR
        if jit.is_dir():
            # A link to the /tmp/jitted-perftramp-* directory of an earlier recording (perf 7).
            target = jit.resolve() if jit.is_symlink() else jit
            for pattern in ("jit-*.dump", "jitted-*.so"):
                for file in target.glob(pattern):
                    file.unlink()
            if jit.is_symlink():
                jit.unlink()
            try:
                target.rmdir()
            except OSError:
                pass
        elif jit.is_symlink():  # dangling: its /tmp directory is gone
            jit.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_jit_dir(directory: Path, perf_info: "_perf.PerfInfo") -> Path:
    """The jitdump directory of a recording: DIR/jit, or where this perf needs it. perf's libdw
    unwinder (perf 7) unwinds injected files only under /tmp/jitted-*, so there the dumps go to
    a new /tmp/jitted-perftramp-* directory and DIR/jit is a symbolic link to it."""
    jit = directory / rp.JIT_DIR
    if _perf.jit_directory_works(jit, perf_info):
        jit.mkdir(exist_ok=True)
        return jit
    real = _perf.make_tmp_jitted_directory(directory.resolve().name)
    jit.symlink_to(real, target_is_directory=True)
    say(f"{perf_info.path} ({perf_info.text}) unwinds jitted code only under "
        f"{_perf.JITTED_PREFIX}*: jitdumps and jitted files go to {real} ({jit} links there)")
    return real


def explain_perf_failure(stderr: str, status: int) -> CliError:
    low = stderr.lower()
    permission = ("perf_event_paranoid", "no permission", "access to performance",
                  "operation not permitted", "permission denied")
    if any(text in low for text in permission):
        paranoid = read_paranoid()
        who = "root" if os.geteuid() == 0 else "not root"
        return CliError(
            f"perf is not permitted to record here (kernel.perf_event_paranoid = {paranoid}, you "
            f"are {who}); perf's message is above.\n"
            f"  fix: sudo sysctl kernel.perf_event_paranoid=1   (or run as root, or give perf "
            f"CAP_PERFMON)\n"
            f"  in a container, its seccomp profile must allow perf_event_open (docker run "
            f"--cap-add PERFMON, or --privileged)\n"
            f"  check everything with: python -m perftramp doctor")
    if "mlock" in low or "mapping pages" in low:
        return CliError(
            "perf could not map its sample buffers (perf's message is above).\n"
            "  fix: sudo sysctl kernel.perf_event_mlock_kb=4096, or pass smaller buffers: "
            "--perf-args='-m 64'")
    return CliError(f"perf record failed (exit {status}); its message is above")


def read_paranoid() -> str:
    try:
        return Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip()
    except OSError:
        return "unknown"


@dataclass
class PerfRun:
    status: int
    stderr: str
    interrupted: bool
    captured: bool


def run_perf(command: Sequence[str], env: Dict[str, str], *,
             duration: Optional[float] = None,
             on_started: Optional[Callable[["subprocess.Popen[bytes]"], None]] = None) -> PerfRun:
    """Runs `perf record`, its stderr copied live to ours (and kept to explain failures).

    SIGINT or SIGTERM to us (Ctrl-C) is forwarded to perf as SIGINT: perf stops the workload,
    writes what it recorded and exits; we then go on to draw it. With `duration`, perf is
    stopped the same way after that many seconds."""
    proc = subprocess.Popen(list(command), stderr=subprocess.PIPE, env=env)
    kept: List[bytes] = []
    kept_size = [0]

    def tee() -> None:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if out is not None:
                try:
                    out.write(chunk)
                    out.flush()
                except (OSError, ValueError):  # our stderr is gone: keep draining perf's
                    out = None
            kept.append(chunk)
            kept_size[0] += len(chunk)
            while kept_size[0] > 1 << 16 and len(kept) > 1:
                kept_size[0] -= len(kept.pop(0))

    thread = threading.Thread(target=tee, daemon=True)
    thread.start()
    interrupted = [False]

    def forward(signum: int, frame: Optional[FrameType]) -> None:
        interrupted[0] = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_started is not None:
            on_started(proc)
        if duration is not None:
            deadline = time.monotonic() + duration
            while proc.poll() is None and not interrupted[0] and time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    thread.join(timeout=2)  # a daemon the workload left behind may hold the pipe open
    text = b"".join(kept).decode(errors="replace")
    return PerfRun(proc.returncode, text, interrupted[0], "captured and wrote" in text.lower())


def record_command(perf: str, command: List[str], *, output: Path, mode: str, force: bool,
                   options: RecordOptions) -> int:
    if not command:
        raise CliError("record needs a command to run: python -m perftramp record -- python app.py", 2)
    executable = resolve_command(command[0])
    if executable is None:
        raise CliError(f"command not found: {command[0]}", 127)
    python = python_of(executable)
    fp = has_frame_pointers(python) if python else None
    sampling = options.sampling
    check_sampling(perf, sampling)
    perf_info = _perf.inspect(perf)
    plan = choose_mode(mode, python, fp, options.frequency, perf_info.map_dwarf_resolves,
                       off_cpu=sampling.off_cpu)
    directory = prepare_output_dir(output, force)
    env = dict(os.environ)
    env["PERFTRAMP"] = plan.mode
    jit_dir = directory / rp.JIT_DIR
    elf_dir = directory / ELF_DIR
    if plan.mode == "jit":
        jit_dir = make_jit_dir(directory, perf_info)
        env["PERFTRAMP_DIR"] = str(jit_dir.resolve())
    elif plan.mode == "elf":
        elf_dir.mkdir(exist_ok=True)
        env["PERFTRAMP_DIR"] = str(elf_dir.resolve())
    else:
        env.pop("PERFTRAMP_DIR", None)
    data = directory / rp.PERF_DATA
    say(f"{plan.reason}")
    perf_command = [perf, "record",
                    *options.perf_record_args(perf, hz=plan.frequency, unwind=plan.unwind,
                                              inject=plan.mode == "jit"),
                    "-o", str(data), "--", *command]
    say(f"running: PERFTRAMP={plan.mode}"
        + (f" PERFTRAMP_DIR={env['PERFTRAMP_DIR']}" if plan.mode in ("jit", "elf") else "")
        + " " + " ".join(perf_command))
    meta: Dict[str, object] = {
        "command": command, "mode": plan.mode, "call_graph": plan.call_graph,
        "frequency": plan.frequency, "perf_record": perf_command,
        "jit_dirs": [str(jit_dir.resolve())] if plan.mode == "jit" else [],
        "summary": f"{plan.mode} mode, {plan.call_graph} call graphs, {sampling.describe(plan.frequency)}",
        **sampling.meta(),
    }
    rp.write_meta(directory, meta)
    run = run_perf(perf_command, env)
    if not run.captured or not data.is_file():
        if run.interrupted:
            raise CliError("interrupted before perf recorded anything", 130)
        raise explain_perf_failure(run.stderr, run.status)
    if run.interrupted:
        say("stopped by Ctrl-C: keeping what was recorded")
    return draw(perf, directory, plan.mode, options, status=130 if run.interrupted else run.status,
                command=command)


def draw(perf: str, directory: Path, mode: str, options: RecordOptions, *, status: int,
         command: List[str], pid: Optional[int] = None) -> int:
    """Reads what was just recorded into `directory`, prints the table and draws the views."""
    inline, unwinder, all_frames = options.inline, options.unwinder, options.all_frames
    failed = status not in (0, 130)
    try:
        meta = rp.read_meta(directory)
        stacks, data_written = rp.load_stacks(perf, directory, rescan=True, inline=inline,
                                              unwinder=unwinder, meta=meta)
        if failed and not _ran_its_own_python(stacks):
            # Nothing but interpreter start-up was recorded: a flamegraph of that, or a hint that
            # perftramp is missing, would point away from the real cause.
            raise CliError(
                f"the command failed (exit status {status}; its own message is above) before "
                f"running any code of its own: nothing drawn. The recording is kept in "
                f"{directory} (python -m perftramp report {directory} draws it anyway)", status)
        report = rp.finish(perf, directory, rescan=False, python=None, limit=options.top,
                           inline=inline, unwinder=unwinder, all_frames=all_frames)
    except KeyboardInterrupt:
        raise CliError(f"interrupted; the recording is kept: python -m perftramp report {directory}",
                       130) from None
    unwinding_lost = any(p.lost_in_interpreter for p in report.processes)
    if report.python_samples == 0 and not unwinding_lost:
        say(_not_enabled_hint(mode, directory, command, pid))
    sys.stdout.write(report.table)
    sys.stdout.flush()
    data = rp.data_file(directory)
    # With no Python frame anywhere, the hint above says perftramp was not on (for the whole
    # recording): the summary does not say it again per process.
    for line in rp.summary_lines(report, rp.read_meta(directory),
                                 say_not_on=report.python_samples > 0 or unwinding_lost):
        say(line)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    say("wrote " + ", ".join(str(p) for p in data_written + report.written)
        + f" ({directory}: {size / 1e6:,.1f} MB in all)")
    svg = directory / (rp.ALL_FRAMES_SVG if all_frames else rp.SVG)
    say(f"open {svg} in a browser (click to zoom, Ctrl-F to search); "
        f"export: python -m perftramp report {directory} --format pprof|speedscope|gecko; "
        f"more: perf report -i {data} {' '.join(PERF_REPORT_ARGS)}")
    if failed:
        say(f"the command exited with status {status}")
    return status


#: What every interpreter runs before the program's own code (site, codecs, imports,
#: runpy for `-m`, perftramp's start hook, setuptools' .pth hook).
_START_UP_FILES = frozenset({"site.py", "_sitebuiltins.py", "codecs.py", "os.py", "stat.py",
                             "posixpath.py", "genericpath.py", "_collections_abc.py", "io.py",
                             "abc.py", "runpy.py", "types.py", "sitecustomize.py", "usercustomize.py"})
_START_UP_DIRS = ("/encodings/", "/importlib/", "/perftramp/", "/_distutils_hack/")


def _ran_its_own_python(stacks: "rp.raw.RawStacks") -> bool:
    """Whether the recording holds a Python frame of the program itself, i.e. one outside what
    an interpreter runs while starting (a `python nosuchfile.py` runs only that)."""
    from . import _labels

    for _, _, frames in stacks:
        for symbol, _ in frames:
            parsed = _labels.parse_python_symbol(symbol)
            if parsed is None:
                continue
            filename = parsed[1]
            if filename.startswith("<") or any(d in filename for d in _START_UP_DIRS):
                continue
            if filename.rsplit("/", 1)[-1] not in _START_UP_FILES:
                return True
    return False


def _not_enabled_hint(mode: str, directory: Path, command: List[str], pid: Optional[int]) -> str:
    if pid is not None:
        return (f"no Python function was named: perftramp did not run in process {pid} while perf "
                f"recorded. Was it started with PERFTRAMP_SIGNAL=USR2 (or does it call "
                f"perftramp.install_signal_toggle())? If perftramp was already on before this "
                f"recording, the signal turned it off: run `python -m perftramp toggle {pid}` "
                f"once and record again")
    where = (f"no jitdump in {directory / rp.JIT_DIR}" if mode == "jit"
             else f"no arena image in {directory / ELF_DIR}" if mode == "elf"
             else "no /tmp/perf-<pid>.map for the recorded processes")
    return (f"no Python function was named ({where}): perftramp was not enabled in the program. "
            f"Is perftramp installed in the Python that `{command[0]}` runs (`<that python> -m "
            f"pip install perftramp`)? Its start hook enables it from PERFTRAMP={mode}.")
