"""Turning perftramp on and off inside another, unprepared Python process with `sys.remote_exec`
(PEP 768, CPython 3.14+): what `record --pid` does when the process has no signal toggle.

The target runs a small script at its next safe point (between bytecodes of its main thread). The
script imports perftramp in the target, enables or disables it, and writes the outcome into a
private directory this side made for the exchange, so failures inside the target (perftramp not
installed there, a conflicting mode) come back as clear errors instead of vanishing into the
target's stderr. `sys.remote_exec` is called by the target's own interpreter binary
(/proc/PID/exe), so this side may run any Python version.

Nothing here can kill or wedge the target: `sys.remote_exec` only queues the script; the script
catches everything it raises.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ._report import CliError

#: How long the target may take to reach a safe point and run the script.
TIMEOUT = 10.0

_SCRIPT = """\
# Run inside process {pid} by perftramp's `record --pid` (sys.remote_exec, PEP 768).
def _perftramp_remote(result_path):
    try:
        import perftramp
        {action}
        status = perftramp.status()
        outcome = "ok " + ("on" if status.enabled else "off") + " " + str(
            status.jitdump_path or status.perf_map_path or "")
    except BaseException as err:  # reported to the other side, never raised in the program
        outcome = "error " + type(err).__name__ + ": " + str(err).replace("\\n", " ")
    with open(result_path + ".tmp", "w") as out:
        out.write(outcome)
    import os
    os.replace(result_path + ".tmp", result_path)


_perftramp_remote({result!r})
del _perftramp_remote
"""


def python_version_of(pid: int) -> Optional[Tuple[int, int]]:
    """The CPython version `pid` runs, from the libpython or python binary it maps (None if it
    maps neither: not CPython, or its maps cannot be read)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    match = re.search(r"/(?:lib)?python(\d+)\.(\d+)[a-z]*(?:\.so[.\d]*)?(?: \(deleted\))?$", maps, re.M)
    return (int(match.group(1)), int(match.group(2))) if match else None


def remote_debugging_disabled(env: Dict[str, str], argv: List[str]) -> Optional[str]:
    """Why the target refuses remote execution, if its start-up said so (None if not known)."""
    if env.get("PYTHON_DISABLE_REMOTE_DEBUG"):
        return "it was started with PYTHON_DISABLE_REMOTE_DEBUG set"
    for i, arg in enumerate(argv[1:], 1):
        option = arg[2:] if arg.startswith("-X") and len(arg) > 2 else (
            argv[i + 1] if arg == "-X" and i + 1 < len(argv) else None)
        if option == "disable-remote-debug":
            return "it was started with -X disable-remote-debug"
    return None


@dataclass
class Outcome:
    on: bool
    files: str


class RemoteSession:
    """One live process driven through sys.remote_exec: `run(action)` executes perftramp code in
    it and returns what happened there."""

    def __init__(self, pid: int, exe: str):
        self.pid = pid
        self.exe = exe
        owner = os.stat(f"/proc/{pid}").st_uid
        # Private to the target's user: it reads the scripts and writes the results here.
        self.directory = Path(tempfile.mkdtemp(prefix=f"perftramp-remote-{pid}-"))
        if os.geteuid() == 0 and owner != 0:
            os.chown(self.directory, owner, -1)
        self.owner = owner
        self.count = 0

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def run(self, action: str, what: str, timeout: float = TIMEOUT) -> Outcome:
        self.count += 1
        result = self.directory / f"result-{self.count}"
        script = self.directory / f"script-{self.count}.py"
        script.write_text(_SCRIPT.format(pid=self.pid, action=action, result=str(result)))
        if os.geteuid() == 0 and self.owner != 0:
            os.chown(script, self.owner, -1)
        call = (f"import sys; sys.remote_exec({self.pid}, {str(script)!r})")
        try:
            proc = subprocess.run([self.exe, "-I", "-c", call], capture_output=True, text=True,
                                  timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise CliError(f"could not run {self.exe} to reach process {self.pid}: {err}") from None
        if proc.returncode != 0:
            raise explain_failure(self.pid, self.exe, proc.stderr)
        deadline = time.monotonic() + timeout
        while not result.exists():
            if not Path(f"/proc/{self.pid}").exists():
                raise CliError(f"process {self.pid} exited before it ran perftramp's script")
            if time.monotonic() > deadline:
                raise CliError(
                    f"process {self.pid} did not run perftramp's script ({what}) within "
                    f"{timeout:g} s: sys.remote_exec runs it when the main thread next executes "
                    f"Python code, and this one has not (blocked in C code?). It will still run it "
                    f"when it does")
            time.sleep(0.02)
        text = result.read_text()
        if not text.startswith("ok "):
            raise explain_script_error(self.pid, self.exe, text, what)
        _, state, files = (text.split(" ", 2) + [""])[:3]
        return Outcome(state == "on", files.strip())


def explain_failure(pid: int, exe: str, stderr: str) -> CliError:
    """sys.remote_exec's own refusal, in words that say what to do."""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    low = stderr.lower()
    if "not enabled" in low or "disable" in low:
        return CliError(
            f"process {pid} does not allow remote execution ({last}): it was started with "
            f"PYTHON_DISABLE_REMOTE_DEBUG set or -X disable-remote-debug (or its Python was built "
            f"--without-remote-debug). Restart it with PERFTRAMP_SIGNAL=USR2 to use the signal "
            f"toggle instead, or without that setting")
    if "permission" in low or "operation not permitted" in low or "eperm" in low:
        return CliError(
            f"not permitted to execute code in process {pid} ({last}): sys.remote_exec needs the "
            f"same rights as a debugger (ptrace): run as root, as the process's user with "
            f"kernel.yama.ptrace_scope=0, or with CAP_SYS_PTRACE")
    return CliError(f"sys.remote_exec into process {pid} failed ({exe}): {last}")


def explain_script_error(pid: int, exe: str, text: str, what: str) -> CliError:
    detail = text[len("error "):] if text.startswith("error ") else text
    if "No module named 'perftramp'" in detail or "ModuleNotFoundError" in detail:
        return CliError(
            f"perftramp is not installed in the Python of process {pid} ({exe}): install it "
            f"there (`<its python> -m pip install perftramp`, in its virtualenv if it has one); "
            f"nothing was changed in the process")
    return CliError(f"perftramp could not {what} in process {pid}: {detail}")


def enable_action(mode: str, directory: Optional[str]) -> str:
    return f"perftramp.enable({mode!r}, directory={directory!r})"


DISABLE_ACTION = "perftramp.disable()"
