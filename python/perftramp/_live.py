"""Live processes: `toggle PID` and `record --pid PID`.

A process started with `PERFTRAMP_SIGNAL=USR2` (perftramp's start hook), or one that calls
`perftramp.install_signal_toggle()`, turns perftramp on or off at each delivery of the signal,
in the mode it chose (`PERFTRAMP_MODE`, default jit). A CPython 3.14+ process without the toggle
is switched with sys.remote_exec instead (_remote.py). The state perftramp is in shows in
/proc/<pid>/maps (its `perftramp-enabled` memfd); its files are `/tmp/perf-<pid>.map` and
`jit-<pid>.dump` (mapped executable in the process while it lives)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import _perf
from . import _record as rec
from . import _remote
from . import _report as rp
from ._report import CliError, say


def parse_signal(text: str) -> int:
    """USR2, SIGUSR2, usr2 or 12."""
    value = text.strip().upper()
    if value.isdigit() and 0 < int(value) < signal.NSIG:
        return int(value)
    name = value if value.startswith("SIG") else "SIG" + value
    member = getattr(signal, name, None)
    if isinstance(member, signal.Signals):
        return int(member)
    raise CliError(f"{text!r} is not a signal name or number (e.g. USR2, 12)", 2)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def check_process(pid: int) -> None:
    """Raises a CliError unless `pid` exists and we may signal it."""
    if pid <= 0:
        raise CliError(f"{pid} is not a process id", 2)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise CliError(f"no process {pid} (it does not exist, or has exited)") from None
    except PermissionError:
        raise CliError(f"process {pid} is not yours (EPERM): run this as its user, or as root") from None


def catches(pid: int, signum: int) -> Optional[bool]:
    """Whether `pid` has a handler for `signum` (SigCgt in /proc/<pid>/status), None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        return None
    return None


def process_env(pid: int) -> Dict[str, str]:
    """The environment `pid` started with ({} if it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env: Dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


#: perftramp.MODES (kept here so the command line never imports the extension to start).
_MODES = {"map": "map", "perf": "map", "jit": "jit", "perf_jit": "jit", "both": "jit"}


def cmdline(pid: int) -> List[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return [arg for arg in raw.split("\0") if arg]
    except OSError:
        return []


def exe_of(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


@dataclass(frozen=True)
class Files:
    """What perftramp has written for a process so far."""

    map_size: Optional[int]
    dump: Optional[Path]
    dump_size: Optional[int]
    #: How many mappings of the dump the process has (the executable marker perf looks for).
    dump_mappings: int
    #: Whether perftramp says it is on (its `/memfd:perftramp-enabled` mapping); None when the
    #: process's maps cannot be read.
    enabled: Optional[bool] = None

    @property
    def modes(self) -> List[str]:
        return [m for m, present in (("map", self.map_size is not None), ("jit", self.dump is not None))
                if present]


def start_time(pid: int) -> Optional[float]:
    """When `pid` started (seconds since the epoch), from /proc; None if unknown."""
    try:
        # Field 22 (starttime, clock ticks after boot) comes after the command name, which may
        # itself hold spaces and parentheses: split after its closing parenthesis.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(path: Path, started: Optional[float]) -> Optional[int]:
    """Size of `path`, or None if it is missing or older than the process (left by an earlier
    process that had the same pid: pids are reused)."""
    try:
        st = path.stat()
    except OSError:
        return None
    # btime has one-second resolution: allow that much.
    if started is not None and st.st_mtime < started - 1.0:
        return None
    return st.st_size


#: How perftramp's on/off marker appears in /proc/PID/maps (src/runtime/state_marker.rs).
STATE_MARKER = "/memfd:perftramp-enabled (deleted)"


def files_of(pid: int, env: Dict[str, str]) -> Files:
    started = start_time(pid)
    dump: Optional[Path] = None
    mappings = 0
    enabled: Optional[bool] = None
    suffix = f"/jit-{pid}.dump"
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        enabled = any(line.endswith(STATE_MARKER) for line in lines)
        for line in lines:
            path = line.split(None, 5)[5] if len(line.split(None, 5)) == 6 else ""
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            if path.endswith(suffix):
                dump = Path(path)
                mappings += 1
    except OSError:
        pass
    dump_size = _size(dump, None) if dump else None  # mapped by the process: its own
    if dump is None:
        candidate = Path(env.get("PERFTRAMP_DIR") or "/tmp") / suffix[1:]
        if candidate.is_file():
            dump_size = _size(candidate, started)
            dump = candidate if dump_size is not None else None
    return Files(_size(Path(f"/tmp/perf-{pid}.map"), started), dump, dump_size, mappings, enabled)


def observe(pid: int, env: Dict[str, str], before: Files, timeout: float) -> Tuple[str, Files]:
    """After a toggle: what perftramp's state marker says once it changed (src/runtime/state_marker.rs);
    for an older perftramp without one, 'on' when its files appeared or grew, 'off' when they
    shrank (it cuts its unused reserve when it stops), else 'unknown'."""
    deadline = time.monotonic() + timeout
    while True:
        now = files_of(pid, env)
        if now.enabled is not None and before.enabled is not None and now.enabled != before.enabled:
            return ("on" if now.enabled else "off"), now
        if before.enabled:
            # Its marker was showing: only the marker decides (its files may still be growing
            # from before the signal).
            if time.monotonic() >= deadline:
                return "unknown", now
            time.sleep(0.05)
            continue
        grew = ((now.map_size or 0) > (before.map_size or 0) or (now.dump_size or 0) > (before.dump_size or 0)
                or (before.map_size is None and now.map_size is not None)
                or (before.dump is None and now.dump is not None)
                or now.dump_mappings > before.dump_mappings)
        shrank = ((before.map_size is not None and (now.map_size or 0) < before.map_size)
                  or (before.dump_size is not None and (now.dump_size or 0) < before.dump_size)
                  or now.dump_mappings < before.dump_mappings)
        if grew and not shrank:
            return "on", now
        if shrank:
            return "off", now
        if time.monotonic() >= deadline:
            return "unknown", now
        time.sleep(0.05)


def loads_perftramp(pid: int) -> Optional[bool]:
    """Whether perftramp's extension is mapped in `pid` (None if its maps cannot be read)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    return "/perftramp/_perftramp" in maps


def _validated_signal(pid: int, env: Dict[str, str], requested: Optional[str]) -> int:
    """The toggle signal, once it is sure the process has perftramp's toggle: most programs die
    of SIGUSR2 (its default action), and some that catch it (shells) die anyway."""
    signum = parse_signal(requested or env.get("PERFTRAMP_SIGNAL") or "USR2")
    name = signal_name(signum)
    if loads_perftramp(pid) is False:
        raise CliError(
            f"process {pid} has not loaded perftramp (no perftramp/_perftramp*.so in "
            f"/proc/{pid}/maps), so its {name} is not perftramp's toggle; I did not send it. "
            f"Start the program with PERFTRAMP_SIGNAL=USR2 (perftramp installed in its Python), "
            f"or call perftramp.install_signal_toggle() in it")
    if catches(pid, signum) is False:
        short = name[3:] if name.startswith("SIG") else str(signum)
        raise CliError(
            f"process {pid} has no handler for {name}: sending it would terminate the process, "
            f"so I did not. Start the program with PERFTRAMP_SIGNAL={short} (perftramp installed "
            f"in its Python), or call perftramp.install_signal_toggle() in it")
    return signum


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise CliError(f"no process {pid} (it has exited)") from None
    except PermissionError:
        raise CliError(f"process {pid} is not yours (EPERM): run this as its user, or as root") from None


def _describe(files: Files) -> str:
    parts = []
    if files.dump is not None:
        parts.append(f"jit: {files.dump}")
    if files.map_size is not None:
        parts.append("map: /tmp/perf-<pid>.map")
    return ", ".join(parts)


def toggle_command(pid: int, requested_signal: Optional[str]) -> int:
    check_process(pid)
    env = process_env(pid)
    signum = _validated_signal(pid, env, requested_signal)
    before = files_of(pid, env)
    _send(pid, signum)
    state, after = observe(pid, env, before, timeout=1.0)
    name = signal_name(signum)
    if state == "on":
        say(f"sent {name} to {pid}: perftramp is now ON ({_describe(after)})")
    elif state == "off":
        say(f"sent {name} to {pid}: perftramp is now OFF")
    else:
        say(f"sent {name} to {pid}: perftramp toggled (its state is not visible from outside: "
            f"nothing new was written within a second)")
    return 0


def record_pid(perf: str, pid: int, *, duration: float, output: Path, force: bool,
               requested_signal: Optional[str], keep_tmp: bool, options: rec.RecordOptions) -> int:
    check_process(pid)
    env = process_env(pid)
    if _wants_remote_exec(pid, env, requested_signal):
        return _record_pid_remote(perf, pid, env, duration=duration, output=output, force=force,
                                  keep_tmp=keep_tmp, options=options)
    signum = _validated_signal(pid, env, requested_signal)
    name = signal_name(signum)
    directory = rec.prepare_output_dir(output, force)
    before = files_of(pid, env)
    _send(pid, signum)
    state, after = observe(pid, env, before, timeout=3.0)
    if state == "off":
        say(f"perftramp was already on in {pid}: {name} turned it off; sending it again")
        before = after
        _send(pid, signum)
        state, after = observe(pid, env, before, timeout=3.0)
    if state == "on":
        say(f"sent {name} to {pid}: perftramp is on ({_describe(after)})")
    elif after.modes:
        say(f"sent {name} to {pid}: perftramp toggled; assuming it is on again (nothing new to write)")
    else:
        say(f"sent {name} to {pid}, but it wrote no perftramp file within 3 s: is its handler "
            f"perftramp's toggle? Recording anyway")
    return _record_switched_on(perf, pid, env, after, directory, lambda: _turn_off(pid, signum, env),
                               duration=duration, keep_tmp=keep_tmp, options=options)


def _wants_remote_exec(pid: int, env: Dict[str, str], requested_signal: Optional[str]) -> bool:
    """sys.remote_exec (3.14+) when the process has no toggle to signal: no signal asked for,
    none declared in its environment, and no handler for the default one."""
    if requested_signal or env.get("PERFTRAMP_SIGNAL"):
        return False
    version = _remote.python_version_of(pid)
    if version is None or version < (3, 14):
        return False
    return catches(pid, signal.SIGUSR2) is not True or loads_perftramp(pid) is False


def _record_pid_remote(perf: str, pid: int, env: Dict[str, str], *, duration: float, output: Path,
                       force: bool, keep_tmp: bool, options: rec.RecordOptions) -> int:
    """record --pid for a process without the signal toggle, on CPython 3.14+: perftramp is
    enabled in it with sys.remote_exec and disabled the same way at the end (unless it was on
    already, which is left as found)."""
    exe = exe_of(pid)
    if exe is None or not os.path.exists(exe):
        raise CliError(f"cannot find the interpreter of process {pid} (/proc/{pid}/exe): "
                       f"sys.remote_exec needs it")
    disabled = _remote.remote_debugging_disabled(env, cmdline(pid))
    if disabled:
        raise CliError(f"process {pid} does not allow remote execution: {disabled}. Restart it "
                       f"with PERFTRAMP_SIGNAL=USR2 to use the signal toggle instead")
    directory = rec.prepare_output_dir(output, force)
    was_on = files_of(pid, env).enabled
    fp = rec.has_frame_pointers(exe)
    perf_info = _perf.inspect(perf)
    if was_on:
        # Started with PERFTRAMP=..., or turned on by its own code: record it as it is.
        say(f"perftramp is already on in {pid} ({_describe(files_of(pid, env))}): recording it "
            f"as it is, and leaving it on")
        return _record_switched_on(
            perf, pid, env, files_of(pid, env), directory,
            lambda: f"perftramp was on in {pid} before this recording, and is left on",
            duration=duration, keep_tmp=keep_tmp, options=options)
    session = _remote.RemoteSession(pid, exe)
    jit_dir: Optional[Path] = None
    try:
        if fp:
            action = _remote.enable_action("map", None)
        else:
            jit_dir = _perf.make_tmp_jitted_directory(f"pid{pid}") if perf_info.jit_needs_tmp_jitted \
                else Path(tempfile.mkdtemp(prefix=f"perftramp-jit-{pid}-"))
            if os.geteuid() == 0 and session.owner != 0:
                os.chown(jit_dir, session.owner, -1)
            action = _remote.enable_action("jit", str(jit_dir))
        outcome = session.run(action, "turn perftramp on")
        say(f"attached to {pid} with sys.remote_exec (it has no signal toggle): perftramp is on "
            f"({outcome.files})")
        after = files_of(pid, env)

        def turn_off() -> str:
            try:
                off = session.run(_remote.DISABLE_ACTION, "turn perftramp off")
            except CliError as err:
                return f"{err}; perftramp may still be on in {pid}"
            marker = files_of(pid, env).enabled
            state = "OFF" if not off.on and marker is not True else "still ON"
            return (f"perftramp is {state} in {pid} (turned off through sys.remote_exec; its "
                    f"trampolines stay, unused)")

        return _record_switched_on(perf, pid, env, after, directory, turn_off,
                                   duration=duration, keep_tmp=keep_tmp, options=options)
    finally:
        session.close()


def _record_switched_on(perf: str, pid: int, env: Dict[str, str], after: Files, directory: Path,
                        turn_off: Callable[[], str], *, duration: float, keep_tmp: bool,
                        options: rec.RecordOptions) -> int:
    """Records `pid` (perftramp on in it, writing `after`), turns it off, and draws."""
    declared = _MODES.get(env.get("PERFTRAMP_MODE", "jit").strip() or "jit", "jit")
    mode = "jit" if after.dump is not None else "map" if after.map_size is not None else declared
    exe = exe_of(pid)
    fp = rec.has_frame_pointers(exe) if exe and rec.python_of(exe) else None
    perf_info = _perf.inspect(perf)
    if mode == "jit" and not (after.map_size is not None and fp):
        unwind = "jit"
    else:
        # perf 7's libdw names no perf-map frame with dwarf stacks: fp finds the innermost one.
        dwarf = fp is False and perf_info.map_dwarf_resolves
        mode, unwind = "map", "dwarf" if dwarf else "fp"
    if unwind == "jit" and after.dump is not None and \
            not _perf.jit_directory_works(after.dump.parent, perf_info):
        say(f"warning: {perf_info.text} unwinds jitted code only under {_perf.JITTED_PREFIX}*, and "
            f"{pid} writes {after.dump}: Python frames will not be unwound. Start it with "
            f"PERFTRAMP_DIR=/tmp (or a directory named {_perf.JITTED_PREFIX}...)")
    elif mode == "map" and fp is False and not perf_info.map_dwarf_resolves:
        say(f"note: {perf_info.text} resolves no frame in perf-map code with dwarf stacks and "
            f"{exe} has no frame pointers: fp stacks, innermost Python frame only "
            f"(PERFTRAMP_MODE=jit gives full stacks)")
    hz = options.frequency or rec.DEFAULT_HZ[unwind]
    sampling = options.sampling
    rec.check_sampling(perf, sampling)
    data = directory / rp.PERF_DATA
    perf_command = [perf, "record",
                    *options.perf_record_args(perf, hz=hz, unwind=unwind,
                                              inject=mode == "jit" and after.dump is not None),
                    "-p", str(pid), "-o", str(data)]
    rp.write_meta(directory, {
        "command": [f"pid {pid}:", *cmdline(pid)],
        "pid": pid, "mode": mode, "call_graph": "fp" if unwind == "fp" else "dwarf", "frequency": hz,
        "perf_record": perf_command,
        "jit_dirs": [str(after.dump.parent)] if after.dump is not None and mode == "jit" else [],
        "summary": (f"pid {pid}, {mode} mode, {'fp' if unwind == 'fp' else 'dwarf'} call graphs, "
                    f"{sampling.describe(hz)}, {duration:g} s"),
        **sampling.meta(),
    })
    say(f"recording {pid} for {duration:g} s (Ctrl-C stops early): " + " ".join(perf_command))
    try:
        run = rec.run_perf(perf_command, dict(os.environ), duration=duration)
    finally:
        final = turn_off()
    if not run.captured or not data.is_file():
        if run.interrupted:
            raise CliError("interrupted before perf recorded anything", 130)
        raise rec.explain_perf_failure(run.stderr, run.status)
    try:
        status = rec.draw(perf, directory, mode, options, status=130 if run.interrupted else 0,
                          command=[str(pid)], pid=pid)
    finally:
        if after.dump is not None and not keep_tmp:
            _collect_jitted(pid, after.dump.parent, directory / rp.JIT_DIR)
    say(final)
    return status


def _turn_off(pid: int, signum: int, env: Dict[str, str]) -> str:
    """Sends the toggle signal once more and says the state perftramp ended in, as the
    process's own marker shows it (src/runtime/state_marker.rs)."""
    name = signal_name(signum)
    before = files_of(pid, env)
    try:
        os.kill(pid, signum)
    except OSError:
        return f"process {pid} has exited (perftramp ended with it)"
    state, after = observe(pid, env, before, timeout=3.0)
    if after.enabled is None and not Path(f"/proc/{pid}").exists():
        return f"process {pid} has exited (perftramp ended with it)"
    if state == "off" or after.enabled is False:
        return f"sent {name} to {pid} again: perftramp is OFF in {pid} (it runs at full speed)"
    if after.enabled:
        return (f"sent {name} to {pid} again, but perftramp is still ON in {pid}: run "
                f"`python -m perftramp toggle {pid}` to turn it off")
    return (f"sent {name} to {pid} again: perftramp should be off (this perftramp does not show "
            f"its state; `python -m perftramp toggle {pid}` says what a toggle does)")


def _collect_jitted(pid: int, source: Path, target: Path) -> None:
    """Moves the jitted-<pid>-*.so files `perf inject --jit` wrote next to the live process's
    jitdump (in /tmp by default) into the recording. perf finds them again by build id (perf
    inject puts them in its ~/.debug cache); the jitdump itself stays: the process still
    appends to it and reuses it when perftramp is turned on again."""
    import shutil

    if source.resolve() == target.resolve():
        return
    moved = 0
    for path in source.glob(f"jitted-{pid}-*.so"):
        target.mkdir(exist_ok=True)
        try:
            shutil.move(str(path), str(target / path.name))
            moved += 1
        except OSError as err:
            say(f"could not move {path} into {target}: {err.strerror or err}")
            break
    if moved:
        say(f"moved {moved:,} jitted-{pid}-*.so files from {source} into {target} "
            f"(--keep-tmp leaves them); {source}/jit-{pid}.dump stays: process {pid} owns it")
