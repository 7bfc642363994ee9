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
from typing import Callable, Dict, List, Optional, Sequence

from . import _perfscript as ps
from . import _report as rp
from ._report import CliError, say

#: Whether a Python build keeps frame pointers (what perf's fp unwinding needs): the same test as
#: the test suite's, run by the interpreter in question.
FP_CHECK = (
    "import sysconfig; flags = ' '.join(str(sysconfig.get_config_var(n) or '') "
    "for n in ('CFLAGS', 'CONFIG_ARGS', 'PY_CFLAGS')); "
    "print(int('-fno-omit-frame-pointer' in flags))"
)
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)*)?[a-z]?$")

#: How each mode is recorded (see the README's table). Map mode on an interpreter without frame
#: pointers: fp unwinding finds no Python frame at all there, dwarf at least the innermost one.
CALL_GRAPH = {
    "fp": ["-g", "--call-graph", "fp"],
    "dwarf": ["--call-graph", "dwarf,65528"],
    "jit": ["-k", "1", "--call-graph", "dwarf,65528"],
    # elf mode: perf reads names and unwind tables from the arena images; no -k 1, no inject.
    "elf": ["--call-graph", "dwarf,65528"],
}
#: Default sampling rates. A DWARF sample copies 64 KiB of stack (what deep Python stacks need:
#: each Python call takes ~1 KiB of C stack), so at 499 Hz two busy cores produce 64 MB/s, more
#: than perf drains on a 2-core machine: a forking program (black on 170 files) lost 136 chunks.
#: At 249 Hz with the ring buffer below it lost none (README: "Sampling defaults").
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
                frequency: Optional[int]) -> Plan:
    """--mode auto: frame pointers give full stacks in map mode at the lowest cost; otherwise
    elf mode, whose arena images let perf's dwarf unwinder walk through every Python frame
    with nothing to run after the recording."""
    if requested == "auto":
        if fp:
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
        if fp is False:
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
            for pattern in ("jit-*.dump", "jitted-*.so"):
                for file in jit.glob(pattern):
                    file.unlink()
            try:
                jit.rmdir()
            except OSError:
                pass
    path.mkdir(parents=True, exist_ok=True)
    return path


def explain_perf_failure(stderr: str, status: int) -> CliError:
    low = stderr.lower()
    if any(text in low for text in ("perf_event_paranoid", "no permission", "access to performance",
                                     "operation not permitted", "permission denied")):
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


def record_command(perf: str, command: List[str], *, output: Path, mode: str, frequency: Optional[int],
                   force: bool, top: int, inline: bool, perf_args: List[str]) -> int:
    if not command:
        raise CliError("record needs a command to run: python -m perftramp record -- python app.py", 2)
    executable = resolve_command(command[0])
    if executable is None:
        raise CliError(f"command not found: {command[0]}", 127)
    python = python_of(executable)
    fp = has_frame_pointers(python) if python else None
    plan = choose_mode(mode, python, fp, frequency)
    directory = prepare_output_dir(output, force)
    env = dict(os.environ)
    env["PERFTRAMP"] = plan.mode
    jit_dir = directory / rp.JIT_DIR
    elf_dir = directory / ELF_DIR
    if plan.mode == "jit":
        jit_dir.mkdir(exist_ok=True)
        env["PERFTRAMP_DIR"] = str(jit_dir.resolve())
    elif plan.mode == "elf":
        elf_dir.mkdir(exist_ok=True)
        env["PERFTRAMP_DIR"] = str(elf_dir.resolve())
    else:
        env.pop("PERFTRAMP_DIR", None)
    data = directory / rp.PERF_DATA
    perf_command = [perf, "record", "-F", str(plan.frequency), *CALL_GRAPH[plan.unwind],
                    *ring_buffer_args(plan.unwind, perf_args), *perf_args, "-o", str(data), "--", *command]
    say(f"{plan.reason}")
    say(f"running: PERFTRAMP={plan.mode}"
        + (f" PERFTRAMP_DIR={env['PERFTRAMP_DIR']}" if plan.mode in ("jit", "elf") else "")
        + " " + " ".join(perf_command))
    meta: Dict[str, object] = {
        "command": command, "mode": plan.mode, "call_graph": plan.call_graph,
        "frequency": plan.frequency, "perf_record": perf_command,
        "jit_dirs": [str(jit_dir.resolve())] if plan.mode == "jit" else [],
        "summary": (f"{plan.mode} mode, {plan.call_graph} call graphs, {plan.frequency} Hz"),
    }
    rp.write_meta(directory, meta)
    run = run_perf(perf_command, env)
    if not run.captured or not data.is_file():
        if run.interrupted:
            raise CliError("interrupted before perf recorded anything", 130)
        raise explain_perf_failure(run.stderr, run.status)
    if run.interrupted:
        say("stopped by Ctrl-C: keeping what was recorded")
    return _draw(perf, directory, plan.mode, top=top, inline=inline,
                 status=130 if run.interrupted else run.status, command=command)


def _draw(perf: str, directory: Path, mode: str, *, top: int, inline: bool, status: int,
          command: List[str], pid: Optional[int] = None) -> int:
    try:
        written, table, counts = rp.finish(perf, directory, rescan=True, python=None, limit=top,
                                           inline=inline)
    except KeyboardInterrupt:
        raise CliError(f"interrupted; the recording is kept: python -m perftramp report {directory}",
                       130) from None
    if not any(ps.PYTHON_PREFIX in stack for stack in counts):
        say(_not_enabled_hint(mode, directory, command, pid))
    sys.stdout.write(table)
    sys.stdout.flush()
    data = rp.data_file(directory)
    lost = rp.read_meta(directory).get("lost_chunks")
    samples = sum(counts.values())
    say(f"{samples:,} samples; " + (f"perf LOST {lost:,} chunks of samples (see above)"
                                   if isinstance(lost, int) and lost else "no samples lost"))
    say("wrote " + ", ".join(str(p) for p in written))
    say(f"open {directory / rp.SVG} in a browser (click to zoom, Ctrl-F to search); "
        f"more: perf report -i {data} --children --sort symbol")
    if status not in (0, 130):
        say(f"the command exited with status {status}")
    return status


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
