"""The command line, end to end: `python -m perftramp record|report|toggle|doctor` with real perf,
on plain programs that never import perftramp (its start hook enables it from PERFTRAMP=...)."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from conftest import HOT_MIDDLE_OUTER, HOT_SERVER, table_rows, PERF_ENV, cli, interpreter_has_frame_pointers, py_name
from perftramp import _perfscript as ps

WORKLOAD = HOT_MIDDLE_OUTER

# A live server-like loop that installs perftramp's signal toggle itself (perftramp starts off).
TOGGLED = """\
import os, sys, time
import perftramp
perftramp.install_signal_toggle(directory=sys.argv[1])

""" + HOT_SERVER


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def perf_names(workload: Path) -> Tuple[str, str, str]:
    """The names perftramp gives perf (what stacks.collapsed and --python-only show)."""
    return (py_name("hot", str(workload)), py_name("middle", str(workload)),
            py_name("Outer.run", str(workload)))


#: Definition lines of WORKLOAD's functions (and TOGGLED's hot).
LINES = {"hot": 3, "middle": 9, "Outer.run": 13}


def _qualname(qualname: str) -> str:
    # 3.9/3.10 code objects have no qualname: perftramp names them by co_name.
    return qualname if sys.version_info >= (3, 11) else qualname.rsplit(".", 1)[-1]


def label(qualname: str, workload: Path, line: Optional[int] = None) -> str:
    """A Python frame in the default flamegraph: `qualname (file.py:LINE)`."""
    return f"{_qualname(qualname)} ({workload.name}:{line or LINES[qualname]})"


def row(qualname: str, workload: Path, line: Optional[int] = None) -> str:
    """A function in the table: `qualname  /path/file.py:LINE`."""
    return f"{_qualname(qualname)}  {workload}:{line or LINES[qualname]}"


def names(workload: Path) -> Tuple[str, str, str]:
    return label("hot", workload), label("middle", workload), label("Outer.run", workload)


def rows_of(workload: Path) -> Tuple[str, str, str]:
    return row("hot", workload), row("middle", workload), row("Outer.run", workload)


# A box: its name, then (the Python view) a line saying where the frame is.
SVG_FRAME = re.compile(r'<g><title>(.*?) \(([\d,]+) samples?, [\d.]+%\)(?:\n[^<]*)?</title>'
                       r'<rect x="([\d.]+)%" y="(\d+)" width="([\d.]+)%"')


def svg_frames(svg: str) -> Dict[str, Tuple[float, int, float]]:
    """The widest box of each frame name: (x %, y, width %). Callers are drawn below (larger y)."""
    frames: Dict[str, Tuple[float, int, float]] = {}
    for match in SVG_FRAME.finditer(svg):
        name = html.unescape(match.group(1))
        box = (float(match.group(3)), int(match.group(4)), float(match.group(5)))
        if name not in frames or box[2] > frames[name][2]:
            frames[name] = box
    return frames


def assert_called_by(frames: Dict[str, Tuple[float, int, float]], callee: str, caller: str,
                     *, icicle: bool = False) -> None:
    """`callee` is drawn on its caller: above it in a flame graph, below it in an icicle graph
    (the Python view, roots at the top)."""
    (cx, cy, cw), (px, py_, pw) = frames[callee], frames[caller]
    if icicle:
        assert py_ < cy, f"{caller} is not drawn above {callee}"
    else:
        assert py_ > cy, f"{caller} is not drawn below {callee}"
    assert px <= cx + 1e-6 and cx + cw <= px + pw + 1e-3, f"{callee} is not within {caller}"


def remove_perf_maps(directory: Path) -> None:
    meta = json.loads((directory / "perftramp.json").read_text())
    for pid in meta.get("pids", []):
        Path(f"/tmp/perf-{pid}.map").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Tuple[Path, Path, subprocess.CompletedProcess]:
    """One `record` of the workload, shared by the tests that read or re-render it."""
    import shutil

    perf = shutil.which("perf")
    if perf is None:
        pytest.skip("perf is not installed (apt-get install linux-perf)")
    base = tmp_path_factory.mktemp("cli")
    workload = base / "workload.py"
    workload.write_text(WORKLOAD)
    out = base / "out"
    proc = cli("record", "-o", str(out), "-F", "499", "--", sys.executable, str(workload), "1.2",
               cwd=base)
    yield workload, out, proc
    if (out / "perftramp.json").exists():
        remove_perf_maps(out)


@pytest.mark.perf
def test_record_draws_python_functions_with_their_callers(perf, recording):
    workload, out, proc = recording
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    hot, middle, outer = names(workload)
    for name in ("perf.data", "stacks.collapsed", "stacks.raw", "flamegraph.svg", "top.txt",
                 "perftramp.json"):
        assert (out / name).is_file(), name
    # --mode auto: frame pointers -> map mode + fp stacks, else elf mode + dwarf, no inject.
    meta = json.loads((out / "perftramp.json").read_text())
    if interpreter_has_frame_pointers():
        assert (meta["mode"], meta["call_graph"]) == ("map", "fp"), proc.stderr
        assert "has frame pointers: map mode" in proc.stderr
    else:
        assert (meta["mode"], meta["call_graph"]) == ("elf", "dwarf"), proc.stderr
        assert list((out / "elf").glob("perftramp-*/py-*.so")), "no arena image in DIR/elf"
        assert not (out / "perf.jit.data").exists() and not (out / "jit").exists()
        assert "jitted files" not in proc.stderr
    # The flamegraph: every function, each drawn on its caller (the Python view, an icicle graph).
    frames = svg_frames((out / "flamegraph.svg").read_text())
    for name in (hot, middle, outer):
        assert name in frames, f"{name} not in the SVG; it has {sorted(frames)[:20]}"
    assert_called_by(frames, hot, middle, icicle=True)
    assert_called_by(frames, middle, outer, icicle=True)
    # The collapsed stacks (as perf named the frames): most samples of hot have the whole
    # chain under them.
    hot, middle, outer = perf_names(workload)
    counts = ps.parse_collapsed((out / "stacks.collapsed").read_text())
    with_hot = {s: c for s, c in counts.items() if hot in s.split(";")}
    full = sum(c for s, c in with_hot.items() if ps.has_chain(s.split(";")[::-1], [hot, middle, outer]))
    assert sum(with_hot.values()) >= 100
    assert full / sum(with_hot.values()) >= 0.9, f"{full} of {sum(with_hot.values())} full stacks"
    # The table names the hot function first, with where it is defined, and is saved.
    hot, middle, outer = rows_of(workload)
    rows = table_rows(proc.stdout)
    assert rows and rows[0][2] == hot, proc.stdout
    assert rows[0][0] > 50
    assert {r[2]: r[1] for r in rows}[outer] >= rows[0][0]  # total of the caller >= self of hot
    assert (out / "top.txt").read_text() == proc.stdout


@pytest.mark.perf
def test_report_rerenders_and_filters(perf, recording):
    workload, out, proc = recording
    assert proc.returncode == 0, proc.stderr
    hot, middle, outer = perf_names(workload)
    hot_row = rows_of(workload)[0]
    svg = (out / "flamegraph.svg").read_text()
    (out / "flamegraph.svg").unlink()
    again = cli("report", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "flamegraph.svg").read_text() == svg  # deterministic from the same stacks
    assert again.stdout == proc.stdout

    only = cli("report", str(out), "--python-only")
    assert only.returncode == 0, only.stderr
    lines = (out / "stacks.python-only.collapsed").read_text().splitlines()
    assert lines
    for line in lines:
        stack = line.rsplit(" ", 1)[0]
        assert all(f.startswith("py::") for f in stack.split(";")) or stack == "[no Python frame]", line
    assert any(line.startswith(f"{outer};{middle};{hot} ") or f";{outer};{middle};{hot} " in line
               for line in lines), lines[:5]
    frames = svg_frames((out / "flamegraph.python-only.svg").read_text())
    assert hot in frames and not any(n.startswith("_PyEval") for n in frames)

    hidden = cli("report", str(out), "--no-python", "--top", "1")
    assert hidden.returncode == 0, hidden.stderr
    text = (out / "stacks.no-python.collapsed").read_text()
    assert text and "py::" not in text
    assert "py::" not in (out / "flamegraph.no-python.svg").read_text()
    assert len(table_rows(hidden.stdout)) == 1 and table_rows(hidden.stdout)[0][2] == hot_row

    both = cli("report", str(out), "--python-only", "--no-python")
    assert both.returncode == 2 and "not allowed with" in both.stderr

    # --rescan reads perf data again (the perf maps / jitted files are still there).
    rescan = cli("report", str(out), "--rescan")
    assert rescan.returncode == 0, rescan.stderr
    assert table_rows(rescan.stdout)[0][2] == hot_row


@pytest.mark.perf
def test_record_refuses_an_existing_directory_unless_forced(perf, tmp_path):
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "perf.data").write_text("precious")
    (out / "notes.txt").write_text("mine")
    refused = cli("record", "-o", str(out), "--", sys.executable, str(workload), "0.3")
    assert refused.returncode == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    no_traceback(refused)
    assert (out / "perf.data").read_text() == "precious"
    forced = cli("record", "-o", str(out), "--force", "-F", "499", "--", sys.executable, str(workload), "0.5")
    assert forced.returncode == 0, forced.stderr
    assert (out / "perf.data").read_bytes() != b"precious"
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only what record writes
    assert (out / "flamegraph.svg").is_file()
    remove_perf_maps(out)


@pytest.mark.perf
def wait_for_cpu(marker: str, seconds: float, *, timeout: float) -> None:
    """Waits until a process whose command line holds `marker` has used `seconds` of CPU."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    continue
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if (int(fields[11]) + int(fields[12])) / tick >= seconds:  # utime + stime
                return
        time.sleep(0.1)
    raise AssertionError(f"no process running {marker} used {seconds} s of CPU in {timeout} s")


def test_ctrl_c_stops_perf_and_still_draws(perf, tmp_path):
    workload = tmp_path / "forever.py"
    workload.write_text(WORKLOAD)
    out = tmp_path / "out"
    env = dict(os.environ, **PERF_ENV)
    proc = subprocess.Popen([sys.executable, "-m", "perftramp", "record", "-o", str(out), "-F", "499",
                             "--", sys.executable, str(workload), "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Ctrl-C once the workload has run 1 s of CPU (a wall-clock wait on a loaded machine may end
    # before it reached hot()).
    wait_for_cpu(str(workload), 1.0, timeout=60)
    proc.send_signal(signal.SIGINT)  # to the CLI only, as a test cannot press Ctrl-C
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped by Ctrl-C" in stderr
    assert (out / "flamegraph.svg").is_file()
    assert label("hot", workload) in svg_frames((out / "flamegraph.svg").read_text())
    assert table_rows(stdout)[0][2] == row("hot", workload)
    remove_perf_maps(out)


@pytest.mark.perf
def test_a_command_that_is_not_python_gets_elf_mode_through_the_environment(perf, tmp_path):
    """`sh -c "python app.py"`: the interpreter cannot be inspected, so elf mode (full stacks
    either way); the variables reach the Python grandchild."""
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD)
    out = tmp_path / "out"
    proc = cli("record", "-o", str(out), "-F", "499", "--", "/bin/sh", "-c",
               f"exec '{sys.executable}' '{workload}' 0.8")
    assert proc.returncode == 0, proc.stderr
    assert "not a Python interpreter I can inspect: elf mode" in proc.stderr
    assert list((out / "elf").glob("perftramp-*/py-*.so")), "no arena image in DIR/elf"
    assert table_rows(proc.stdout)[0][2] == row("hot", workload)


@pytest.mark.perf
def test_a_python_without_perftramp_is_explained(perf, tmp_path):
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD)
    # -S: no site, so no perftramp.pth: as if perftramp were not installed in that Python.
    proc = cli("record", "-o", str(tmp_path / "out"), "--", sys.executable, "-S", str(workload), "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "no Python function was named" in proc.stderr
    assert "Is perftramp installed in the Python" in proc.stderr
    assert (tmp_path / "out" / "flamegraph.svg").is_file()  # native frames are still drawn


@pytest.mark.perf
def test_record_returns_the_commands_failure(perf, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(WORKLOAD + "\nraise SystemExit(3)\n")
    proc = cli("record", "-o", str(tmp_path / "out"), "--", sys.executable, str(script), "0.3")
    assert proc.returncode == 3, proc.stderr
    assert "exited with status 3" in proc.stderr
    assert (tmp_path / "out" / "flamegraph.svg").is_file()
    remove_perf_maps(tmp_path / "out")


@pytest.mark.perf
def test_a_command_that_fails_before_its_own_code_is_not_blamed_on_perftramp(perf, tmp_path):
    out = tmp_path / "out"
    proc = cli("record", "-o", str(out), "--", sys.executable, str(tmp_path / "nosuchfile.py"))
    no_traceback(proc)
    assert proc.returncode == 2, proc.stderr  # python's own status for a missing script
    assert "can't open file" in proc.stderr  # the program's message, passed through
    assert "the command failed (exit status 2" in proc.stderr
    assert "Is perftramp installed" not in proc.stderr and "no jitdump" not in proc.stderr
    assert not (out / "flamegraph.svg").exists()  # nothing misleading drawn
    assert (out / "perf.data").is_file()


def test_perf_missing(tmp_path):
    bindir = tmp_path / "bin"  # a PATH without perf
    bindir.mkdir()
    proc = cli("record", "-o", str(tmp_path / "out"), "--", sys.executable, "-c", "pass",
               env={"PATH": str(bindir)})
    assert proc.returncode == 1
    assert "perf is not installed" in proc.stderr and "apt-get install linux-perf" in proc.stderr
    no_traceback(proc)
    assert not (tmp_path / "out").exists()
    doctor = cli("doctor", env={"PATH": str(bindir)})
    assert doctor.returncode == 1
    assert re.search(r"FAIL\s+perf\s+not found", doctor.stdout), doctor.stdout
    assert "recording will NOT work" in doctor.stdout
    no_traceback(doctor)


@pytest.mark.perf
def test_command_not_found(perf, tmp_path):
    proc = cli("record", "-o", str(tmp_path / "out"), "--", "perftramp-no-such-command", "x")
    assert proc.returncode == 127
    assert "command not found: perftramp-no-such-command" in proc.stderr
    no_traceback(proc)
    missing = cli("record", "-o", str(tmp_path / "out"))
    assert missing.returncode == 2 and "record needs a command" in missing.stderr


def test_perf_not_permitted_is_explained(tmp_path):
    """perf's own refusal (what perf 6.1 prints when perf_event_paranoid forbids recording),
    from a stand-in perf: this machine runs as root, where perf is always permitted."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "perf"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = "--version" ]; then echo "perf version 6.1.187"; exit 0; fi
        cat >&2 <<'EOF'
        Error:
        Access to performance monitoring and observability operations is limited.
        Consider adjusting /proc/sys/kernel/perf_event_paranoid setting to open
        access to performance monitoring and observability operations for processes
        without CAP_PERFMON, CAP_SYS_PTRACE or CAP_SYS_ADMIN Linux capability.
        perf_event_paranoid setting is 3:
        EOF
        exit 255
        """))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = cli("record", "-o", str(tmp_path / "out"), "--", sys.executable, "-c", "pass",
               env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert proc.returncode == 1
    assert "perf is not permitted to record here" in proc.stderr
    assert "sysctl kernel.perf_event_paranoid=1" in proc.stderr
    assert "Access to performance monitoring" in proc.stderr  # perf's own words, passed through
    no_traceback(proc)


@pytest.mark.perf
def test_doctor_reports_this_machine(perf):
    proc = cli("doctor")
    no_traceback(proc)
    out = proc.stdout
    assert proc.returncode == 0, out  # root and perf here: recording works
    assert re.search(r"ok\s+perf\s+.*perf version \d+\.\d+", out), out
    assert re.search(r"ok\s+platform\s+Linux x86_64", out), out
    assert re.search(r"ok\s+privileges\s+root", out), out
    assert re.search(r"ok\s+perf record\s+works", out), out
    from perftramp import _perf

    unwinder = _perf.inspect(perf).unwinder
    assert re.search(rf"info\s+perf unwinder\s+dwarf unwinding with {unwinder}:", out), out
    if interpreter_has_frame_pointers():
        assert re.search(r"ok\s+frame pointers\s+yes", out), out
        assert "will use map mode" in out
    else:
        assert re.search(r"info\s+frame pointers\s+no", out), out
        # The fix names what an installed user can run, nothing from a source checkout.
        assert "PYTHON_CFLAGS='-fno-omit-frame-pointer" in out and "scripts/" not in out
        assert "will use elf mode" in out
        # The fix's default mode is the one record uses (it said jit while record used elf).
        fix = re.search(r"fix: use (\w+) mode, which needs no frame pointers \(record's default", out)
        assert fix and fix.group(1) == "elf", out
    assert "recording will work" in out


@pytest.mark.once
def test_record_help_says_what_the_code_does():
    from perftramp import _record

    proc = cli("record", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    # The default rates record uses (dwarf is 249 Hz, not 499: see _record.DEFAULT_HZ).
    assert (f"default {_record.DEFAULT_HZ['fp']} with fp stacks, {_record.DEFAULT_HZ['dwarf']} "
            f"with dwarf") in text, text
    assert _record.DEFAULT_HZ["dwarf"] == _record.DEFAULT_HZ["elf"] == _record.DEFAULT_HZ["jit"]
    # --pid: 3.14+ processes need no preparation (sys.remote_exec, _remote.py).
    start = text.index("--pid PID record")
    pid_help = text[start:text.index("--duration S", start)]
    assert "CPython 3.14+" in pid_help and "sys.remote_exec" in pid_help, pid_help
    assert "PERFTRAMP_SIGNAL=USR2" in pid_help, pid_help
    assert "--no-compress" in text


PERF_7_OPTIONS = """perf version 7.2.13
                 dwarf: [ on  ]  # HAVE_LIBDW_SUPPORT
          dwarf-unwind: [ on  ]  # HAVE_DWARF_UNWIND_SUPPORT
    libdw-dwarf-unwind: [ on  ]  # HAVE_LIBDW_SUPPORT
             libunwind: [ OFF ]  # HAVE_LIBUNWIND_SUPPORT ( tip: Deprecated, use LIBUNWIND=1 )
"""
PERF_6_OPTIONS = """perf version 6.1.187
                 dwarf: [ on  ]  # HAVE_DWARF_SUPPORT
             libunwind: [ on  ]  # HAVE_LIBUNWIND_SUPPORT
    libdw-dwarf-unwind: [ on  ]  # HAVE_DWARF_SUPPORT
"""


@pytest.mark.once
@pytest.mark.parametrize("text,version,unwinder", [
    (PERF_7_OPTIONS, (7, 2, 13), "libdw"), (PERF_6_OPTIONS, (6, 1, 187), "libunwind"),
    ("", (7, 0, 0), "libdw"), ("", (6, 12, 0), "libunwind"), ("", None, None)])
def test_perf_unwinder_from_build_options(tmp_path, text, version, unwinder):
    """`perf version --build-options` of Debian's perf 6.1 and sid's perf 7.2 (verbatim lines),
    and the version fallback when perf cannot list them."""
    from perftramp import _perf

    fake = tmp_path / "perf"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + text + "EOF\n")
    fake.chmod(0o755)
    options = _perf.build_options(str(fake)) if text else {}
    assert _perf.dwarf_unwinder(options, version) == unwinder
    info = _perf.PerfInfo("perf", version, "", unwinder)
    assert info.map_dwarf_resolves is (unwinder == "libunwind")
    assert info.jit_needs_tmp_jitted is (unwinder == "libdw")
    if unwinder == "libdw":
        assert _perf.jit_directory_works(Path("/tmp"), info)
        assert not _perf.jit_directory_works(tmp_path, info) or str(tmp_path).startswith("/tmp/jitted-")
        made = _perf.make_tmp_jitted_directory("a/b c")
        try:
            assert str(made).startswith("/tmp/jitted-perftramp-a_b_c-")
            assert _perf.jit_directory_works(made, info) and stat.S_IMODE(made.stat().st_mode) == 0o700
        finally:
            made.rmdir()


def test_doctor_perf_versions():
    from perftramp._doctor import jit_capable

    for version in [(6, 8, 0), (6, 12, 1), (6, 7, 2), (6, 6, 0), (6, 1, 75), (6, 1, 187), (7, 0, 0)]:
        assert jit_capable(version), version
    for version in [(6, 7, 1), (6, 1, 74), (6, 5, 13), (5, 15, 140), (6, 2, 0)]:
        assert not jit_capable(version), version


def start_toggled(tmp_path: Path, *, own_toggle: bool, dumps: Optional[Path] = None) -> subprocess.Popen:
    """The toggled server, its script in tmp_path, its jitdump in `dumps` (default tmp_path)."""
    dumps = dumps or tmp_path
    script = tmp_path / "server.py"
    env = dict(os.environ, **PERF_ENV)
    if own_toggle:
        script.write_text(TOGGLED)
    else:  # the start hook installs the toggle: a plain program
        own = "import perftramp\nperftramp.install_signal_toggle(directory=sys.argv[1])\n"
        script.write_text(TOGGLED.replace(own, ""))
        env.update(PERFTRAMP_SIGNAL="USR2", PERFTRAMP_DIR=str(dumps))
    proc = subprocess.Popen([sys.executable, str(script), str(dumps)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert pid == proc.pid
    return proc


@pytest.mark.perf
@pytest.mark.parametrize("own_toggle", [True, False], ids=["install_signal_toggle", "PERFTRAMP_SIGNAL"])
def test_record_a_live_process(perf, tmp_path, jit_dir, own_toggle):
    server = start_toggled(tmp_path, own_toggle=own_toggle, dumps=jit_dir)
    # pids are reused: a map an earlier process with this pid left must not be taken for this
    # process's (the jit-mode server writes none).
    stale = Path(f"/tmp/perf-{server.pid}.map")
    stale.write_text("7f0000000000 10 py::stale:/old.py\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    try:
        out = tmp_path / "out"
        proc = cli("record", "--pid", str(server.pid), "--duration", "1.5", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        no_traceback(proc)
        assert server.poll() is None, "the live process died"
        server_py = tmp_path / "server.py"
        line = server_py.read_text().splitlines().index("def hot(n):") + 1
        assert table_rows(proc.stdout)[0][2] == row("hot", server_py, line), proc.stdout
        assert label("hot", server_py, line) in svg_frames((out / "flamegraph.svg").read_text())
        assert f"perftramp is on (jit: {jit_dir}/jit-{server.pid}.dump)" in proc.stderr
        assert (out / "perf.jit.data").is_file()
        # It says the state perftramp ended in, and leaves no jitted file next to the dump
        # (the process's own jitdump stays: it reuses it when turned on again).
        assert f"perftramp is OFF in {server.pid}" in proc.stderr, proc.stderr[-2000:]
        assert not list(Path(jit_dir).glob(f"jitted-{server.pid}-*.so"))
        assert list((out / "jit").glob(f"jitted-{server.pid}-*.so"))
        assert (Path(jit_dir) / f"jit-{server.pid}.dump").is_file()
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
        stale.unlink()
    # The process itself says it was turned on, then off.
    assert re.search(r"profiling support on \(jit\).*\n.*profiling support off", err), err


def test_toggle(tmp_path):
    server = start_toggled(tmp_path, own_toggle=True)
    try:
        on = cli("toggle", str(server.pid))
        assert on.returncode == 0, on.stderr
        assert f"perftramp is now ON (jit: {tmp_path}/jit-{server.pid}.dump)" in on.stderr
        off = cli("toggle", str(server.pid), "--signal", "USR2")
        assert off.returncode == 0 and "perftramp is now OFF" in off.stderr, off.stderr
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert "profiling support on (jit)" in err and "profiling support off" in err


def test_toggle_refuses_what_it_cannot_or_must_not_signal(tmp_path, run_python):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    proc = cli("toggle", str(gone.pid))
    assert proc.returncode == 1 and f"no process {gone.pid}" in proc.stderr
    no_traceback(proc)
    # A process without perftramp, or without a handler for the signal, would die of it:
    # refused, and it lives on.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    catcher = subprocess.Popen([sys.executable, "-c", "import perftramp, signal, time\n"
                                "signal.signal(signal.SIGUSR2, signal.SIG_DFL)\n"
                                "print(1, flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert catcher.stdout is not None and catcher.stdout.readline()
        time.sleep(0.3)
        proc = cli("toggle", str(sleeper.pid))
        assert proc.returncode == 1 and "has not loaded perftramp" in proc.stderr, proc.stderr
        assert "PERFTRAMP_SIGNAL=USR2" in proc.stderr
        proc = cli("toggle", str(catcher.pid))
        assert proc.returncode == 1 and "has no handler for SIGUSR2" in proc.stderr, proc.stderr
        assert sleeper.poll() is None and catcher.poll() is None
        catcher.kill()
        catcher.wait()
        bad = cli("toggle", str(sleeper.pid), "--signal", "NOPE")
        assert bad.returncode == 2 and "not a signal name" in bad.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    # EPERM (another user's process): as root every process is ours, so os.kill says it.
    run = run_python(
        """
        import errno, os
        import perftramp.cli
        def kill(pid, sig):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        os.kill = kill
        code = perftramp.cli.main(["toggle", str(os.getppid())])
        print("EXIT", code)
        """
    )
    assert "EXIT 1" in run.stdout, run.stderr
    assert "is not yours (EPERM)" in run.stderr and "Traceback" not in run.stderr


def test_record_pid_of_no_process(tmp_path):
    proc = cli("record", "--pid", "999999999", "-o", str(tmp_path / "out"))
    no_traceback(proc)
    assert proc.returncode in (1, 2)
    assert "no process 999999999" in proc.stderr or "perf is not installed" in proc.stderr


# --- pieces, on canned data --------------------------------------------------------------------

# perf script -F comm,pid,tid,ip,sym,dso output (its header lines end with a space).
PERF_SCRIPT = "\n".join([
    "python3.12 100/100 ",
    "\tffffffff81000130 do_syscall_64 ([kernel.kallsyms])",
    "\t    7f00000010 py::leaf:/a (copy).py (/tmp/perf-100.map)",
    "\t    7f00000020 py::Outer.run:/a (copy).py (/tmp/perf-100.map)",
    "\t          1234 _PyEval_EvalFrameDefault (/usr/lib/libpython3.12.so.1.0)",
    "\t          5678 [unknown] (/usr/lib/libc.so.6)",
    "",
    "python3.12 100/101 ",
    "\t    7f00000010 py::leaf:/a (copy).py (/tmp/perf-100.map)",
    "\t    7f00000020 py::Outer.run:/a (copy).py (/tmp/perf-100.map)",
    "",
    "my worker 200/200 ",
    "\t          1111 compute;thing (/usr/bin/x)",
    "",
])


@pytest.mark.once
def test_collapse_filters_and_table_on_canned_perf_script():
    samples = list(ps.iter_stack_samples(PERF_SCRIPT.splitlines(True)))
    assert [(s.comm, s.pid) for s in samples] == [
        ("python3.12", 100), ("python3.12", 100), ("my worker", 200)]
    counts = ps.collapse(samples)
    assert counts == {
        "python3.12;[libc.so.6];_PyEval_EvalFrameDefault;py::Outer.run:/a (copy).py;"
        "py::leaf:/a (copy).py;do_syscall_64_[k]": 1,
        "python3.12;py::Outer.run:/a (copy).py;py::leaf:/a (copy).py": 1,
        "my worker;compute:thing": 1,
    }
    assert ps.parse_collapsed(ps.format_collapsed(counts)) == counts
    only = ps.filter_collapsed(counts, python=True)
    assert only == {"py::Outer.run:/a (copy).py;py::leaf:/a (copy).py": 2, "[no Python frame]": 1}
    hidden = ps.filter_collapsed(counts, python=False)
    assert all("py::" not in stack for stack in hidden) and sum(hidden.values()) == 3
    top = ps.python_top(counts)
    assert top.rows() == [("py::leaf:/a (copy).py", 2, 2), ("py::Outer.run:/a (copy).py", 0, 2)]
    assert (top.total_samples, top.without_python) == (3, 1)


def test_render_flamegraph():
    from perftramp._perftramp import render_flamegraph

    svg = render_flamegraph(["python;py::main:/t.py;py::f:/t.py 3", "python;py::main:/t.py 1"], "T")
    assert svg.startswith("<?xml") and "py::f:/t.py" in svg and ">T<" in svg
    assert render_flamegraph("python;py::main:/t.py 1\n", "T", "sub") != svg
    with pytest.raises(ValueError, match="no flamegraph"):
        render_flamegraph([], "T")
    with pytest.raises(TypeError):
        render_flamegraph(3, "T")


@pytest.mark.once
def test_interpreter_detection(tmp_path):
    from perftramp import _record

    assert _record.python_of("/usr/bin/python3.12") == "/usr/bin/python3.12"
    assert _record.python_of(sys.executable) == sys.executable
    script = tmp_path / "tool"
    script.write_text("#!/usr/bin/env -S python3 -u\nprint(1)\n")
    assert _record.python_of(str(script)) is not None
    script.write_text(f"#!{sys.executable}\nprint(1)\n")
    assert _record.python_of(str(script)) == sys.executable
    script.write_text("#!/bin/sh\necho 1\n")
    assert _record.python_of(str(script)) is None
    assert _record.python_of("/bin/ls") is None
    assert _record.choose_mode("auto", "py", True, None).mode == "map"
    # Waits happen inside libc (no frame pointers): --off-cpu takes dwarf stacks even then.
    assert _record.choose_mode("auto", "py", True, None, off_cpu=True).unwind == "elf"
    plan = _record.choose_mode("auto", "py", False, None)
    assert (plan.mode, plan.unwind, plan.frequency) == ("elf", "elf", 249)
    assert _record.CALL_GRAPH["elf"] == ["--call-graph", "dwarf,65528"]  # no -k 1: no inject
    assert _record.choose_mode("jit", "py", False, None).mode == "jit"
    assert _record.choose_mode("elf", "py", True, None).mode == "elf"
    assert _record.choose_mode("auto", None, None, 97).frequency == 97
    assert _record.choose_mode("map", "py", False, None).unwind == "dwarf"


def test_ring_buffer_is_enlarged_for_dwarf_by_root_unless_chosen(monkeypatch):
    from perftramp import _record
    monkeypatch.setattr(_record.os, "geteuid", lambda: 0)
    assert _record.ring_buffer_args("jit", []) == ["-m", "16M"]
    assert _record.ring_buffer_args("dwarf", ["--call-graph", "dwarf"]) == ["-m", "16M"]
    assert _record.ring_buffer_args("fp", []) == []
    assert _record.ring_buffer_args("jit", ["-m", "64"]) == []
    assert _record.ring_buffer_args("jit", ["--mmap-pages=8M"]) == []
    monkeypatch.setattr(_record.os, "geteuid", lambda: 1000)
    assert _record.ring_buffer_args("jit", []) == []


def test_lost_chunks_are_read_from_perfs_warning():
    from perftramp import _report
    assert _report.lost_chunks("Warning:\nProcessed 58563 events and lost 136 chunks!\n") == 136
    assert _report.lost_chunks("nothing lost here\n") == 0


def test_map_mode_never_uses_dwarf_with_a_libdw_perf():
    """perf 7's libdw unwinder names no perf-map frame with dwarf stacks: `--mode map` without
    frame pointers records fp stacks there (the innermost Python frame), and says why."""
    from perftramp import _record

    plan = _record.choose_mode("map", "py", False, None, map_dwarf_resolves=False)
    assert (plan.mode, plan.unwind) == ("map", "fp")
    assert "libdw" in plan.reason and "--mode jit gives full stacks" in plan.reason
    plan = _record.choose_mode("map", "py", True, None, map_dwarf_resolves=False)
    assert (plan.mode, plan.unwind) == ("map", "fp")
    # auto without frame pointers is elf mode, which perf 7 unwinds as well as perf 6.
    plan = _record.choose_mode("auto", "py", False, None, map_dwarf_resolves=False)
    assert (plan.mode, plan.unwind) == ("elf", "elf")
