"""A jitdump that readers can follow while it grows (samply reads dumps live): a reader that
reads each record header once and waits for its body (linux-perf-data's JitDumpReader, samply's
own; examples/jitdump_follow.rs) must see every record, never a header of size 0, both for a
process that exits and for one killed mid-way; perf inject must accept the file in both cases;
and samply itself, where it runs, names the functions of a jit-mode run as well as map mode's."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Set

import pytest

from conftest import PERF_ENV

# Makes COUNT new functions, a few at a time, then spins in them until killed or SECONDS pass.
GROWING = """\
import os, sys, time
count, seconds = int(sys.argv[1]), float(sys.argv[2])
os.write(1, f"PID {os.getpid()}\\n".encode())
time.sleep(0.3)  # the reader starts before the first record
made = []
for start in range(0, count, 20):
    ns = {}
    exec(compile("\\n".join(f"def func_{i}(n):\\n    return sum(range(n))" for i in range(start, start + 20)),
                 "/generated/many.py", "exec"), ns)
    made.extend(ns.values())
    for f in ns.values():
        if callable(f):
            f(10)
    time.sleep(0.002)
os.write(1, b"MADE\\n")
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for f in made:
        if callable(f):
            f(200)
"""


def follower() -> str:
    path = os.environ.get("PERFTRAMP_JITDUMP_FOLLOWER")
    if path and os.access(path, os.X_OK):
        return path
    if os.environ.get("CI") or os.environ.get("PERFTRAMP_REQUIRE_PERF") == "1":
        pytest.fail("PERFTRAMP_JITDUMP_FOLLOWER must name the built examples/jitdump_follow "
                    "(scripts/test.sh builds it)")
    pytest.skip("examples/jitdump_follow not built (cargo build --example jitdump_follow)")


def follow(reader: str, dump: Path, pid: int) -> subprocess.Popen:
    return subprocess.Popen([reader, str(dump), str(pid)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def code_loads(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"the reader failed (exit {proc.returncode}): {err}"
    match = re.search(r"code_loads=(\d+)", out)
    assert match, out
    return int(match.group(1))


def start_program(tmp_path: Path, count: int, seconds: float, perf: Optional[str] = None):
    script = tmp_path / "growing.py"
    script.write_text(GROWING)
    env = dict(os.environ, PERFTRAMP="jit", PERFTRAMP_DIR=str(tmp_path), **PERF_ENV)
    command = [sys.executable, str(script), str(count), str(seconds)]
    if perf is not None:
        command = [perf, "record", "-q", "-k", "1", "-F", "99", "-o", str(tmp_path / "perf.data"),
                   "--", *command]
    program = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    assert program.stdout is not None
    line = program.stdout.readline()
    assert line.startswith("PID "), line
    return program, int(line.split()[1])


def test_a_live_reader_sees_every_record_of_a_growing_dump(tmp_path):
    reader = follower()
    program, pid = start_program(tmp_path, 1500, 0.2)
    live = follow(reader, tmp_path / f"jit-{pid}.dump", pid)
    program.communicate(timeout=120)
    assert program.returncode == 0
    followed = code_loads(live)
    complete = code_loads(follow(reader, tmp_path / f"jit-{pid}.dump", pid))
    assert complete >= 1500, complete
    assert followed == complete, f"the live reader saw {followed} of {complete} functions"


@pytest.mark.perf
def test_a_killed_process_leaves_a_dump_that_readers_and_perf_inject_accept(tmp_path, perf):
    reader = follower()
    program, pid = start_program(tmp_path, 1500, 30, perf=perf)
    live = follow(reader, tmp_path / f"jit-{pid}.dump", pid)
    assert program.stdout is not None
    assert program.stdout.readline().strip() == "MADE"
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    program.communicate(timeout=120)
    followed = code_loads(live)
    complete = code_loads(follow(reader, tmp_path / f"jit-{pid}.dump", pid))
    assert followed == complete >= 1500, (followed, complete)
    injected = tmp_path / "perf.jit.data"
    inject = subprocess.run([perf, "inject", "--jit", "-i", str(tmp_path / "perf.data"), "-o",
                             str(injected)], capture_output=True, text=True,
                            env=dict(os.environ, **PERF_ENV))
    assert inject.returncode == 0, inject.stderr
    assert "unknown record" not in inject.stderr.lower(), inject.stderr
    jitted = list(tmp_path.glob(f"jitted-{pid}-*.so"))
    assert len(jitted) >= complete, f"perf inject wrote {len(jitted)} files for {complete} loads"


# --- samply, where it runs --------------------------------------------------------------------

SAMPLY_WORKLOAD = """\
import time
ns = {}
exec(compile("\\n".join(f"def func_{i}(n):\\n    s = 0\\n    for k in range(n):\\n        s += k\\n    return s"
                        for i in range(300)), "/generated/samply.py", "exec"), ns)
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    for i in range(300):
        ns[f"func_{i}"](400)
"""


def samply_names(samply: str, tmp_path: Path, mode: str) -> Set[int]:
    """The func_N named in a samply profile of the workload in `mode`. samply refuses to run
    when kernel.perf_event_paranoid > 1 even as root: it is shown 1 in a private mount
    namespace (unshare -m), which changes nothing outside this command."""
    script = tmp_path / "samply_workload.py"
    script.write_text(SAMPLY_WORKLOAD)
    out = tmp_path / f"{mode}.json.gz"
    paranoid = tmp_path / "paranoid"
    paranoid.write_text("1\n")
    env = dict(os.environ, PERFTRAMP=mode, PERFTRAMP_DIR=str(tmp_path))
    inner = (f"mount --bind {paranoid} /proc/sys/kernel/perf_event_paranoid && exec {samply} "
             f"record --save-only -o {out} -- {sys.executable} {script}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", inner], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0 or not out.is_file():
        pytest.skip(f"samply cannot record here: {proc.stderr.strip()[-300:]}")
    profile = json.load(gzip.open(out))
    shared = profile.get("shared", {})
    names: Set[int] = set()
    for thread in profile["threads"]:
        strings = thread.get("stringArray") or shared.get("stringArray") or []
        for index in thread["funcTable"]["name"]:
            match = re.search(r"func_(\d+)\b", strings[index])
            if match:
                names.add(int(match.group(1)))
    return names


@pytest.mark.once
def test_samply_names_a_jit_mode_run_as_well_as_map_mode(tmp_path):
    samply = shutil.which("samply") or str(Path.home() / ".cargo/bin/samply")
    if not os.access(samply, os.X_OK):
        pytest.skip("samply is not installed (cargo install samply --locked); the live reader "
                    "tests above check the same property with samply's own reader library")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to show samply a perf_event_paranoid of 1")
    mapped = samply_names(samply, tmp_path, "map")
    jitted = samply_names(samply, tmp_path, "jit")
    assert len(mapped) >= 250, f"map mode named only {len(mapped)} of 300 functions"
    assert len(jitted & mapped) >= 0.95 * len(mapped), (
        f"samply named {len(jitted)} functions in jit mode, {len(mapped)} in map mode")
