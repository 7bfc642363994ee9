"""Shared fixtures: running Python snippets in a child interpreter, and running real perf."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from perftramp._perfscript import Sample, has_chain, parse_perf_script  # noqa: F401 (re-exported)

# perf must never reach for the network or a user's config during tests.
PERF_ENV = {"DEBUGINFOD_URLS": "", "PERF_CONFIG": "/dev/null"}


def cli(*args: str, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m perftramp ARGS` as a user runs it (with PERF_ENV)."""
    full_env = dict(os.environ, **PERF_ENV)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "perftramp", *args], capture_output=True,
                          text=True, env=full_env, cwd=str(cwd) if cwd else None, timeout=timeout)


def pytest_configure(config: pytest.Config) -> None:
    # PERFTRAMP_PERF=/path/to/perf: the perf every test uses, the CLI's included (scripts/test.sh
    # runs the perf tests once with each perf it has): it goes first on PATH as `perf`.
    chosen = os.environ.get("PERFTRAMP_PERF")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise pytest.UsageError(f"PERFTRAMP_PERF={chosen} is not an executable")
        bindir = os.path.dirname(os.path.abspath(chosen))
        if os.path.basename(chosen) != "perf":
            import tempfile

            bindir = tempfile.mkdtemp(prefix="perftramp-perf-")
            os.symlink(os.path.abspath(chosen), os.path.join(bindir, "perf"))
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    # PERFTRAMP_TEST_MODE=jit runs the behaviour checks with jit-mode trampolines: the suite
    # calls enable()/enabled() with their default mode, which this switches (test-only).
    mode = os.environ.get("PERFTRAMP_TEST_MODE")
    if mode:
        import perftramp

        perftramp.enable.__defaults__ = (mode,)
        perftramp.enabled.__init__.__defaults__ = (mode,)  # type: ignore[misc]


@pytest.fixture(scope="session", autouse=True)
def _remove_tmp_jitted_directories(tmp_path_factory):
    """`record` with perf 7 leaves its jitdumps in /tmp/jitted-perftramp-* (where perf needs them
    for later reports), linked from the recording's jit/: remove those of this session's
    recordings, and only those (other test sessions may be running)."""
    yield
    base = tmp_path_factory.getbasetemp()
    for link in base.rglob("jit"):
        if link.is_symlink():
            target = os.path.realpath(link)
            if target.startswith("/tmp/jitted-perftramp-"):
                shutil.rmtree(target, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    # scripts/test.sh runs the whole suite once per interpreter; interpreter-independent tests
    # (marked `once`) run on the first interpreter only.
    if os.environ.get("PERFTRAMP_SKIP_ONCE") == "1":
        skip = pytest.mark.skip(reason="interpreter-independent; ran on the first interpreter")
        for item in items:
            if "once" in item.keywords:
                item.add_marker(skip)


@dataclass(frozen=True)
class StubFacts:
    elf_machine: int  # jitdump header e_machine
    code_size: int  # the stub's instructions: the size the perf map and jitdump give
    map_slot: int  # executable bytes per map-mode trampoline
    jit_slot: int  # executable bytes per jit-mode trampoline (stub + unwind data, to 16)


# Written out here, not read from the extension, so the tests check src/arch/ against
# independent numbers on whichever architecture they run (aarch64: scripts/aarch64-tier.sh).
STUBS = {
    "x86_64": StubFacts(elf_machine=62, code_size=12, map_slot=16, jit_slot=96),
    "aarch64": StubFacts(elf_machine=183, code_size=20, map_slot=32, jit_slot=112),
}


def native_stub() -> StubFacts:
    machine = platform.machine()
    return STUBS[{"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)]


def interpreter_has_frame_pointers() -> bool:
    # 3.15+ records it (frame pointers are its default); older builds only in their flags.
    recorded = sysconfig.get_config_var("_Py_WITH_FRAME_POINTERS")
    if recorded is not None:
        return bool(int(recorded))
    flags = " ".join(
        str(sysconfig.get_config_var(name) or "") for name in ("CFLAGS", "CONFIG_ARGS", "PY_CFLAGS")
    )
    return "-fno-omit-frame-pointer" in flags


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    pid: Optional[int]

    def check(self) -> "Run":
        assert self.returncode == 0, f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return self


@pytest.fixture
def run_python(tmp_path: Path):
    """Run a dedented snippet in a fresh interpreter (this one), as a script file.

    The child prints `PID=<pid>` first if the snippet calls `report_pid()`.
    """

    def run(code: str, *, args: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
            timeout: float = 120, name: str = "snippet.py", python_args: Optional[List[str]] = None) -> Run:
        script = tmp_path / name
        prelude = "import os, sys\ndef report_pid():\n    print(f'PID={os.getpid()}', flush=True)\n"
        script.write_text(prelude + textwrap.dedent(code))
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, *(python_args or []), str(script), *(args or [])],
            capture_output=True, text=True, env=full_env, timeout=timeout, cwd=str(tmp_path),
        )
        match = re.search(r"^PID=(\d+)$", proc.stdout, re.M)
        return Run(proc.returncode, proc.stdout, proc.stderr, int(match.group(1)) if match else None)

    return run


@pytest.fixture
def perf() -> str:
    """Path of the perf binary. Missing perf fails under CI (it must have been installed)."""
    path = os.environ.get("PERFTRAMP_PERF") or shutil.which("perf")
    if path is None or subprocess.run([path, "--version"], capture_output=True).returncode != 0:
        if os.environ.get("CI") or os.environ.get("PERFTRAMP_REQUIRE_PERF") == "1":
            pytest.fail("perf is required here but not runnable (apt-get install linux-perf)")
        pytest.skip("perf is not installed (apt-get install linux-perf)")
    return path


def _reader_missing(what: str) -> None:
    """Third-party readers are fetched by scripts/test.sh (scripts/fetch-readers.sh), which sets
    PERFTRAMP_REQUIRE_READERS=1 where they must exist (the host and the sid chroot)."""
    if os.environ.get("PERFTRAMP_REQUIRE_READERS") == "1":
        pytest.fail(f"{what} is required here but missing")
    pytest.skip(f"{what} is missing (bash scripts/fetch-readers.sh; apt-get install chromium)")


@pytest.fixture(scope="session")
def speedscope_schema() -> Dict[str, object]:
    """speedscope's published file-format-schema.json (from its release build)."""
    import json

    import readers

    directory = readers.speedscope_dir()
    if directory is None or not (directory / "file-format-schema.json").is_file():
        _reader_missing("speedscope's release build (PERFTRAMP_SPEEDSCOPE_DIR)")
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        _reader_missing("jsonschema (pip install jsonschema)")
    return json.loads((directory / "file-format-schema.json").read_text())


@pytest.fixture(scope="session")
def speedscope(speedscope_schema) -> Path:
    """speedscope's app directory, with Chromium to run it in."""
    import readers

    if readers.chromium() is None:
        _reader_missing("chromium")
    return readers.speedscope_dir()


@pytest.fixture
def perf_info(perf: str):
    """What the perf under test is and can do (version, dwarf unwinder)."""
    from perftramp import _perf

    return _perf.inspect(perf)


@pytest.fixture
def jit_dir(perf_info, tmp_path: Path):
    """A jitdump directory this perf unwinds injected files in: the test's own tmp_path, except
    with perf's libdw unwinder (perf 7), which needs them under /tmp/jitted-* (see
    perftramp/_perf.py); then a new /tmp/jitted-perftramp-test-* directory, removed after."""
    from perftramp import _perf

    if _perf.jit_directory_works(tmp_path, perf_info):
        yield tmp_path
        return
    directory = _perf.make_tmp_jitted_directory("test")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def perf_script(perf: str, data: Path) -> List[Sample]:
    env = dict(os.environ, **PERF_ENV)
    proc = subprocess.run([perf, "script", "-i", str(data)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return parse_perf_script(proc.stdout)


def ring_buffer(perf_args: List[str]) -> List[str]:
    """perf's ring buffer as `record` sizes it (16 MiB for DWARF recordings by root). perf's
    default 512 KiB overflows within a second of DWARF samples when its reader is slow (the CI
    runs two test streams on 2 cores): the lost records can include the mmap of a process's
    new trampolines, and then none of its samples is named (seen once: both workers of a fork
    test at 0%)."""
    from perftramp._record import ring_buffer_args

    return ring_buffer_args("dwarf" if any("dwarf" in a for a in perf_args) else "fp", perf_args)


def perf_record(perf: str, data: Path, command: List[str], *, call_graph: str = "fp",
                extra: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
                cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **PERF_ENV)
    full_env.update(env or {})
    proc = subprocess.run(
        [perf, "record", "-F", "999", "-g", f"--call-graph={call_graph}",
         *ring_buffer([call_graph, *(extra or [])]), *(extra or []),
         "-o", str(data), "--", *command],
        capture_output=True, text=True, env=full_env, cwd=str(cwd) if cwd else None, timeout=300,
    )
    assert proc.returncode == 0, f"perf record failed:\n{proc.stderr}\n{proc.stdout}"
    return proc


def run_behaviour_suite(mode: str, cwd: Path) -> None:
    """The whole behaviour module again, in a child pytest with `mode`'s trampolines
    (PERFTRAMP_TEST_MODE; one mode per process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(Path(__file__).parent / "test_behaviour.py")],
        capture_output=True, text=True, env=dict(os.environ, PERFTRAMP_TEST_MODE=mode),
        cwd=str(cwd), timeout=600,
    )
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", tail) and "failed" not in tail, tail


# foo <- bar <- baz, hot in foo: `python workload.py MODE SECONDS [JITDUMP_DIRECTORY]`.
FOO_BAR_BAZ = """\
import sys, time
import perftramp
perftramp.enable(sys.argv[1], directory=sys.argv[3] if len(sys.argv) > 3 else None)

def foo(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def bar(n):
    return foo(n)

def baz(n):
    return bar(n)

# CPU seconds, not wall seconds: on a loaded machine a wall-clock budget leaves start-up a
# large share of the samples (foo was on 37% of them once, while builds shared the 2 cores).
deadline = time.process_time() + float(sys.argv[2])
while time.process_time() < deadline:
    baz(20000)
"""


# hot <- middle <- Outer.run, hot in hot: `python workload.py [SECONDS]` (the CLI's tests).
HOT_MIDDLE_OUTER = """\
import sys, time

def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def middle(n):
    return hot(n)

class Outer:
    def run(self, seconds):
        deadline = time.process_time() + seconds  # CPU seconds: the same samples under load
        while time.process_time() < deadline:
            middle(20000)

Outer().run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
"""


# A server that runs until killed: prints its pid, then calls hot() in a loop (a module's tail:
# the live tests put their own imports and set-up in front of it).
HOT_SERVER = """\
def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def serve():
    while True:
        hot(20000)
        time.sleep(0.0005)

print(os.getpid(), flush=True)
serve()
"""


def table_rows(stdout: str) -> List[Tuple[float, float, str]]:
    """(self %, total %, function) rows of record's and report's top table."""
    rows = []
    for line in stdout.splitlines():
        match = re.match(r"^\s*([\d.]+)%\s+([\d.]+)%\s+(\S.*)$", line)
        if match:
            rows.append((float(match.group(1)), float(match.group(2)), match.group(3)))
    return rows


def py_name(qualname: str, filename: str) -> str:
    """The name perftramp writes. 3.9/3.10 code objects have no qualname: co_name is used."""
    if sys.version_info < (3, 11):
        qualname = qualname.rsplit(".", 1)[-1]
    return f"py::{qualname}:{filename}"
