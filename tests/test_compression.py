"""Compressed recordings: `record` passes `perf record -z` (zstd) where perf supports it, and every
step after it still reads the file (perf script, perf report, perf inject --jit, report --rescan,
record --pid); where perf cannot compress, it records uncompressed and says so in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from conftest import HOT_MIDDLE_OUTER, HOT_SERVER, table_rows, PERF_ENV, cli, py_name

pytestmark = pytest.mark.perf


def hot_row(workload: Path, line: int = 3) -> str:
    """The table's row for the workload's hot function (3.9/3.10 have no qualname; hot has none)."""
    return f"hot  {workload}:{line}"


def perf_record_args(out: Path) -> List[str]:
    return json.loads((out / "perftramp.json").read_text())["perf_record"]


def header(perf: str, data: Path) -> str:
    proc = subprocess.run([perf, "report", "--header-only", "-i", str(data)], capture_output=True,
                          text=True, env=dict(os.environ, **PERF_ENV))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def perf_report_symbols(perf: str, data: Path) -> str:
    """`perf report` of a recording, by symbol (what the end-of-record hint tells people to run)."""
    from perftramp._record import PERF_REPORT_ARGS

    proc = subprocess.run([perf, "report", "--stdio", *PERF_REPORT_ARGS, "-g", "none", "-i",
                           str(data)], capture_output=True, text=True,
                          env=dict(os.environ, **PERF_ENV), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def remove_perf_maps(out: Path) -> None:
    for pid in json.loads((out / "perftramp.json").read_text()).get("pids", []):
        Path(f"/tmp/perf-{pid}.map").unlink(missing_ok=True)


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    path = tmp_path / "workload.py"
    path.write_text(HOT_MIDDLE_OUTER)
    return path


@pytest.mark.parametrize("mode", ["elf", "map"])
def test_record_compresses_and_every_reader_still_names_python(perf, workload, tmp_path, mode):
    packed, plain = tmp_path / "packed", tmp_path / "plain"
    first = cli("record", "--mode", mode, "-o", str(packed), "--", sys.executable, str(workload),
                "1.5")
    second = cli("record", "--mode", mode, "--no-compress", "-o", str(plain), "--",
                 sys.executable, str(workload), "1.5")
    try:
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert "-z" in perf_record_args(packed) and "-z" not in perf_record_args(plain)
        # perf itself says the file is compressed, and so does perftramp's own header check.
        assert "# compressed : Zstd" in header(perf, packed / "perf.data")
        assert "# compressed" not in header(perf, plain / "perf.data")
        from perftramp import _perf

        assert _perf.is_compressed(packed / "perf.data")
        assert not _perf.is_compressed(plain / "perf.data")
        # Clearly smaller for the same program. Measured: 100x and more for this one with dwarf
        # stacks (64 KiB of stack per sample); map mode records fp stacks with an interpreter
        # that has frame pointers, or with perf 7 (see test_cli), a few hundred bytes a sample.
        call_graph = json.loads((packed / "perftramp.json").read_text())["call_graph"]
        packed_size = (packed / "perf.data").stat().st_size
        plain_size = (plain / "perf.data").stat().st_size
        factor = 10 if call_graph == "dwarf" else 2
        assert packed_size * factor < plain_size, (call_graph, packed_size, plain_size)
        # The Python names, through perf script (record's table), report --rescan and perf report.
        for proc in (first, second):
            assert table_rows(proc.stdout)[0][2] == hot_row(workload), proc.stdout
        rescan = cli("report", str(packed), "--rescan")
        assert rescan.returncode == 0, rescan.stderr
        assert table_rows(rescan.stdout)[0][2] == hot_row(workload), rescan.stdout
        assert py_name("hot", str(workload)) in perf_report_symbols(perf, packed / "perf.data")
    finally:
        for out in (packed, plain):
            if (out / "perftramp.json").exists():
                remove_perf_maps(out)


def test_jit_mode_records_uncompressed_because_inject_cannot_read_compressed(perf, workload,
                                                                             tmp_path):
    """perf inject --jit copies compressed records unopened: the jitdump's marker mmap inside
    them is never seen. `record --mode jit` leaves -z out and says why; a jit recording
    compressed anyway (-z through --perf-args) gets a warning instead of a silent profile
    without Python frames. If a perf starts reading compressed records in inject, the second
    half fails: then jit mode can be compressed too."""
    out = tmp_path / "jit"
    proc = cli("record", "--mode", "jit", "-o", str(out), "--", sys.executable, str(workload), "1")
    assert proc.returncode == 0, proc.stderr
    assert "jit mode records uncompressed: perf inject --jit copies compressed" in proc.stderr
    assert "-z" not in perf_record_args(out)
    assert "# compressed" not in header(perf, out / "perf.jit.data")
    assert table_rows(proc.stdout)[0][2] == hot_row(workload), proc.stdout
    assert py_name("hot", str(workload)) in perf_report_symbols(perf, out / "perf.jit.data")

    forced = tmp_path / "jit-z"
    proc = cli("record", "--mode", "jit", "--perf-args=-z", "-o", str(forced), "--",
               sys.executable, str(workload), "1")
    assert proc.returncode == 0, proc.stderr
    assert "jit mode records uncompressed" not in proc.stderr  # the user chose -z
    assert "# compressed : Zstd" in header(perf, forced / "perf.data")
    assert "perf inject --jit: 0 jitted files" in proc.stderr, proc.stderr
    assert "was recorded compressed (perf record -z)" in proc.stderr
    assert "it found no jitdump to inject" in proc.stderr


# A perf without zstd has no -z option: it stops at parsing, as perf's own parse-options does.
# NO_ZSTD=trial: like a perf too old to list its build options (then record asks with a trial
# -z recording); NO_ZSTD=off: its build options say zstd OFF, as a real perf without zstd does.
NO_ZSTD_PERF = """\
#!/bin/sh
for arg in "$@"; do
    case "$arg" in
        -z|-z[0-9]*|--compression-level*)
            echo "  Error: unknown switch \\`z'" >&2
            echo "" >&2
            echo " Usage: perf record [<options>] [<command>]" >&2
            exit 129;;
    esac
done
if [ "$1 $2" = "version --build-options" ]; then
    if [ "$NO_ZSTD" = off ]; then
        {real} version --build-options | sed 's/zstd: \\[ on  \\]/zstd: [ OFF ]/'
        exit 0
    fi
    echo "  Error: unknown option \\`build-options'" >&2
    exit 129
fi
exec {real} "$@"
"""


def no_zstd_perf(perf: str, tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "perf"
    fake.write_text(NO_ZSTD_PERF.format(real=os.path.realpath(perf)))
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("variant", ["trial", "off"], ids=["trial", "build-options"])
def test_a_perf_without_zstd_records_uncompressed_and_says_so(perf, workload, tmp_path, variant):
    fake = no_zstd_perf(perf, tmp_path)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "NO_ZSTD": variant}
    listed = subprocess.run([str(fake), "version", "--build-options"], capture_output=True,
                            text=True, env=dict(os.environ, **env)).stdout
    assert bool(re.search(r"zstd: \[ OFF \]", listed)) == (variant == "off"), listed
    out = tmp_path / "out"
    proc = cli("record", "--mode", "elf", "-o", str(out), "--", sys.executable, str(workload),
               "0.8", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "cannot compress recordings" in line]
    assert len(lines) == 1, proc.stderr
    why = "zstd OFF" if variant == "off" else "`perf record -z` failed: Error: unknown switch `z'"
    assert f"{fake} cannot compress recordings (" in lines[0] and why in lines[0], lines[0]
    assert "recording uncompressed" in lines[0] and "a perf built with zstd" in lines[0].lower()
    assert "-z" not in perf_record_args(out)
    assert "Usage: perf record" not in proc.stderr  # the trial's failure is not shown
    assert table_rows(proc.stdout)[0][2] == hot_row(workload), proc.stdout
    # --no-compress: no check, no message.
    quiet = cli("record", "--mode", "elf", "--no-compress", "-o", str(tmp_path / "quiet"), "--",
                sys.executable, str(workload), "0.5", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "cannot compress" not in quiet.stderr


SERVER = "import os, time\n\n" + HOT_SERVER


@pytest.mark.parametrize("mode", ["elf", "map", "jit"])
def test_record_pid_compresses_where_nothing_is_injected(perf, tmp_path, jit_dir, mode):
    """A live process with the signal toggle, in each mode it can be in: elf and map recordings
    are compressed and read back (record's table, report --rescan); jit goes through
    perf inject --jit, so uncompressed."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    env = dict(os.environ, **PERF_ENV, PERFTRAMP_SIGNAL="USR2", PERFTRAMP_MODE=mode)
    if mode != "map":
        env["PERFTRAMP_DIR"] = str(jit_dir)
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    out = tmp_path / "out"
    try:
        assert server.stdout is not None and int(server.stdout.readline()) == server.pid
        # --keep-tmp for jit: by default record --pid moves the jitted files out of the
        # jitdump's directory into DIR/jit, and perf 7's libdw unwinds them only at their
        # /tmp/jitted-* path, so a later --rescan names nothing there (a problem of its own,
        # with or without compression).
        keep = ["--keep-tmp"] if mode == "jit" else []
        proc = cli("record", "--pid", str(server.pid), "--duration", "1.5", *keep, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert server.poll() is None, "the live process died"
        compressed = "-z" in perf_record_args(out)
        from perftramp import _perf

        assert compressed == (mode != "jit") == _perf.is_compressed(out / "perf.data"), proc.stderr
        if mode == "jit":
            assert "jit mode records uncompressed" in proc.stderr
        assert table_rows(proc.stdout)[0][2] == hot_row(script), proc.stdout
        rescan = cli("report", str(out), "--rescan")
        assert rescan.returncode == 0, rescan.stderr
        assert table_rows(rescan.stdout)[0][2] == hot_row(script), rescan.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
        Path(f"/tmp/perf-{server.pid}.map").unlink(missing_ok=True)


@pytest.mark.once
def test_compression_header_check_on_canned_headers(tmp_path):
    from perftramp import _perf

    def file_with(features: List[int], magic: bytes = b"PERFILE2") -> Path:
        bitmap = sum(1 << f for f in features).to_bytes(32, "little")
        path = tmp_path / f"data-{len(list(tmp_path.iterdir()))}"
        path.write_bytes(magic + bytes(64) + bitmap + bytes(64))
        return path

    assert _perf.is_compressed(file_with([3, 4, _perf.HEADER_COMPRESSED, 31]))
    assert not _perf.is_compressed(file_with([2, 3, 4, 26, 28, 31]))
    assert not _perf.is_compressed(file_with([_perf.HEADER_COMPRESSED], magic=b"PERFFILE"))
    short = tmp_path / "short"
    short.write_bytes(b"PERFILE2")
    assert not _perf.is_compressed(short) and not _perf.is_compressed(tmp_path / "missing")


def test_compress_args_respects_the_users_choice_and_jit(monkeypatch, capsys):
    from perftramp import _perf, _record

    monkeypatch.setitem(_perf._COMPRESSION, "perf-x", _perf.Compression(True))
    assert _record.compress_args("perf-x", True, unwind="elf", inject=False, perf_args=[]) == ["-z"]
    assert _record.compress_args("perf-x", False, unwind="elf", inject=False, perf_args=[]) == []
    for chosen in (["-z"], ["-z5"], ["--compression-level=3"]):
        assert _record.compress_args("perf-x", True, unwind="elf", inject=False,
                                     perf_args=chosen) == []
    assert capsys.readouterr().err == ""
    assert _record.compress_args("perf-x", True, unwind="jit", inject=True, perf_args=[]) == []
    assert "jit mode records uncompressed" in capsys.readouterr().err
    monkeypatch.setitem(_perf._COMPRESSION, "perf-y", _perf.Compression(False, "built without zstd"))
    assert _record.compress_args("perf-y", True, unwind="fp", inject=False, perf_args=[]) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "perf-y cannot compress recordings (built without zstd)" in err
    assert "16 MB" not in err  # fp samples are small: no size warning
    _record.compress_args("perf-y", True, unwind="elf", inject=False, perf_args=[])
    assert "about 16 MB per second per busy process" in capsys.readouterr().err


def test_how_compression_is_probed(tmp_path):
    """From the build options when perf lists them (no trial recording then); else a trial
    `perf record -z`, where perf refusing to record at all (permissions) is not a missing -z:
    the recording itself fails and explains that."""
    from perftramp import _perf

    fake = tmp_path / "perf"
    trials = tmp_path / "trials"

    def probe(build_options: str, record_error: str) -> _perf.Compression:
        (tmp_path / "options").write_text(build_options)
        (tmp_path / "error").write_text(record_error + "\n")
        fake.write_text("#!/bin/sh\n"
                        f"if [ \"$1\" = version ]; then cat {tmp_path / 'options'}; exit 0; fi\n"
                        f"echo \"$@\" >> {trials}\n"
                        f"cat {tmp_path / 'error'} >&2\n"
                        "exit 129\n")
        fake.chmod(0o755)
        trials.unlink(missing_ok=True)
        return _perf._probe_compression(str(fake))

    listed = "perf version 6.1.0\n              libunwind: [ on  ]  # HAVE_LIBUNWIND_SUPPORT\n"
    assert probe(listed + "                   zstd: [ on  ]  # HAVE_ZSTD_SUPPORT\n", "x").works
    assert not trials.exists()
    found = probe(listed + "                   zstd: [ OFF ]  # HAVE_ZSTD_SUPPORT\n", "x")
    assert not found.works and "zstd OFF" in found.why and not trials.exists()
    found = probe("perf version 4.9.0\n", "  Error: unknown switch `z'")
    assert not found.works and found.why == "`perf record -z` failed: Error: unknown switch `z'"
    assert trials.read_text().split()[:2] == ["record", "-z"]
    assert probe("perf version 4.9.0\n", "Access to performance monitoring and observability "
                 "operations is limited.").works


def test_doctor_says_whether_recordings_are_compressed(perf, tmp_path):
    from perftramp import _perf

    works = _perf.compression(perf).works
    proc = cli("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if works:
        assert re.search(r"ok\s+compression\s+perf record -z \(zstd\) works", proc.stdout), proc.stdout
    else:
        assert re.search(r"info\s+compression\s+perf record -z does not work here", proc.stdout)
    # And with a perf that has no -z (the stand-in above, asked with a trial).
    fake = no_zstd_perf(perf, tmp_path)
    proc = cli("doctor", env={"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
                              "NO_ZSTD": "trial"})
    assert re.search(r"info\s+compression\s+perf record -z does not work here \(`perf record -z` "
                     r"failed: Error: unknown switch `z'\)", proc.stdout), proc.stdout
    assert "fix: a perf built with zstd" in proc.stdout
