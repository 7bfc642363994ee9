"""record --pid on a CPython 3.14+ process that never prepared for it (no signal toggle, no
PERFTRAMP variables): perftramp is enabled inside it with sys.remote_exec (PEP 768), recorded,
and disabled again, and the target keeps running. Clear refusals when remote debugging is
disabled in the target or perftramp is not installed in its Python."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PERF_ENV

pytestmark = [
    pytest.mark.perf,
    pytest.mark.skipif(sys.version_info < (3, 14), reason="sys.remote_exec is CPython 3.14+"),
]

SERVER = """\
import os, sys, time
def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
os.write(1, f"READY {os.getpid()}\\n".encode())
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    hot(20000)
"""


def start_server(tmp_path: Path, *python_args: str, env_extra=None) -> subprocess.Popen:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFTRAMP")}
    env.update(env_extra or {})
    server = subprocess.Popen([sys.executable, *python_args, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("READY"), line + (server.stderr.read() if server.poll() is not None else "")
    return server


def record(pid: int, out: Path, seconds: str = "1.5") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFTRAMP")}
    env.update(PERF_ENV)
    if os.environ.get("PERFTRAMP_PERF"):
        env["PATH"] = os.path.dirname(os.environ["PERFTRAMP_PERF"]) + os.pathsep + env["PATH"]
    return subprocess.run([sys.executable, "-m", "perftramp", "record", "--pid", str(pid),
                           "--duration", seconds, "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)


def enabled_in(pid: int) -> bool:
    return "/memfd:perftramp-enabled" in Path(f"/proc/{pid}/maps").read_text()


def test_record_pid_attaches_to_an_unprepared_process(perf, tmp_path):
    server = start_server(tmp_path)
    try:
        assert not enabled_in(server.pid)
        out = tmp_path / "rec"
        proc = record(server.pid, out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "attached to" in proc.stderr and "sys.remote_exec" in proc.stderr, proc.stderr
        assert server.poll() is None, "the target died"
        table = (out / "top.txt").read_text()
        assert "hot" in table.splitlines()[2], table
        assert f"perftramp is OFF in {server.pid}" in proc.stderr, proc.stderr[-2000:]
        assert not enabled_in(server.pid)
        time.sleep(0.2)
        assert server.poll() is None, "the target died after the recording"
    finally:
        stop(server)


def test_a_process_that_was_already_on_is_left_on(perf, tmp_path):
    server = start_server(tmp_path, env_extra={"PERFTRAMP": "jit", "PERFTRAMP_DIR": "/tmp"})
    try:
        assert enabled_in(server.pid)
        proc = record(server.pid, tmp_path / "rec", "1.0")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"perftramp was on in {server.pid} before this recording, and is left on" in proc.stderr
        assert enabled_in(server.pid)
    finally:
        stop(server)


def test_remote_debugging_disabled_is_a_clear_refusal(perf, tmp_path):
    for how in (("-X", "disable-remote-debug"), ()):
        env = {} if how else {"PYTHON_DISABLE_REMOTE_DEBUG": "1"}
        server = start_server(tmp_path, *how, env_extra=env)
        try:
            proc = record(server.pid, tmp_path / f"rec{len(how)}", "0.5")
            assert proc.returncode != 0
            assert "does not allow remote execution" in proc.stderr, proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr
            assert server.poll() is None, "the target died"
            assert not enabled_in(server.pid)
        finally:
            stop(server)


def test_a_python_without_perftramp_is_a_clear_refusal(perf, tmp_path):
    # -S: no site-packages, so perftramp cannot be imported in the target.
    server = start_server(tmp_path, "-S")
    try:
        proc = record(server.pid, tmp_path / "rec", "0.5")
        assert proc.returncode != 0
        assert f"perftramp is not installed in the Python of process {server.pid}" in proc.stderr, \
            proc.stderr[-2000:]
        assert server.poll() is None, "the target died"
    finally:
        stop(server)
