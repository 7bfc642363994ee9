"""elf mode: trampoline arenas mapped from ELF images perftramp writes, so that perf alone
(`perf record --call-graph dwarf`, then `perf script`: no -k 1, no perf inject, no jitdump, no
perf map) names the Python functions and unwinds through them. Checked through perf: what perf
attributes, not what the files contain."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FOO_BAR_BAZ, PERF_ENV, has_chain, perf_record, perf_script, py_name, run_behaviour_suite

# Stack bytes perf copies per sample: enough for a few Python frames through the evaluator.
DWARF = "dwarf,16384"


def chain_share(samples, path: Path):
    foo = [s for s in samples if py_name("foo", str(path)) in s.symbols]
    names = [py_name(q, str(path)) for q in ("foo", "bar", "baz")]
    full = sum(has_chain(s.symbols, names) for s in foo)
    return foo, full


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    path = tmp_path / "elf_workload.py"
    path.write_text(FOO_BAR_BAZ)
    return path


def images_of(directory: Path):
    return sorted(directory.glob("perftramp-*/py-*.so"))


@pytest.mark.perf
def test_full_python_stacks_from_perf_alone(perf, workload, tmp_path):
    data = tmp_path / "perf.data"
    started = time.time()
    proc = perf_record(perf, data, [sys.executable, str(workload), "elf", "1.5", str(tmp_path)],
                       call_graph=DWARF)
    samples = perf_script(perf, data)
    foo, full = chain_share(samples, workload)
    print(f"full py::foo <- py::bar <- py::baz stacks: {full}/{len(foo)}")
    assert len(foo) >= 200, f"only {len(foo)} samples name py::foo"
    assert full / len(foo) >= 0.97, f"{full}/{len(foo)} full stacks"
    # Nothing but the images: no jitdump, no perf map, no inject output.
    assert images_of(tmp_path), "no arena image written"
    assert not list(tmp_path.glob("jit-*.dump")) and not list(tmp_path.glob("jitted-*.so"))
    pid = images_of(tmp_path)[0].parent.name.split("-")[1]
    # (A map of that path from before is an earlier process's: pids are reused.)
    stale_map = Path(f"/tmp/perf-{pid}.map")
    assert not stale_map.exists() or stale_map.stat().st_mtime < started - 1
    del proc


@pytest.mark.perf
def test_perf_report_children_shows_the_python_callers(perf, workload, tmp_path):
    """`perf report --children --sort dso,symbol` (PERF_REPORT_ARGS), as perftramp's hint and
    docs say: each Python function once, in its arena image, with its callers' share.
    (`--sort symbol` alone can list a function twice when many entries have no symbol, as on
    stripped 3.14: perf's order between entries with and without a symbol is not consistent.
    See docs/limitations.md.)"""
    from perftramp._record import PERF_REPORT_ARGS

    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(workload), "elf", "1.0", str(tmp_path)],
                call_graph=DWARF)
    env = dict(os.environ, **PERF_ENV)
    report = subprocess.run([perf, "report", "-i", str(data), *PERF_REPORT_ARGS, "--stdio", "-g",
                             "none"], capture_output=True, text=True, env=env)
    assert report.returncode == 0, report.stderr
    rows = []
    for line in report.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+(\S+)\s+\[\.\]\s+(py::\S+)", line)
        if m:
            rows.append((m.group(4), m.group(3), float(m.group(1))))
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)), f"a Python function listed twice: {rows}"
    assert all(dso.startswith("py-") and dso.endswith(".so") for _, dso, _ in rows), rows
    shares = {name: share for name, _, share in rows}
    baz = shares.get(py_name("baz", str(workload)), 0.0)
    foo = shares.get(py_name("foo", str(workload)), 0.0)
    # baz is on the stack of (nearly) every sample foo is: "children" needs whole stacks.
    assert foo > 50 and baz >= foo - 2, shares


SIGKILLED = """\
import os, signal, sys, time
import perftramp
perftramp.enable("elf", directory=sys.argv[1])

def foo(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def bar(n):
    return foo(n)

def baz(n):
    return bar(n)

deadline = time.process_time() + 2.0  # CPU seconds: as many samples under load
while time.process_time() < deadline:
    baz(20000)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no trim: the names must already be there
"""


@pytest.mark.perf
def test_a_sigkilled_process_is_still_named_and_unwound(perf, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(SIGKILLED)
    data = tmp_path / "perf.data"
    env = dict(os.environ, **PERF_ENV)
    subprocess.run([perf, "record", "-q", "-F", "999", "--call-graph", DWARF, "-o", str(data), "--",
                    sys.executable, str(script), str(tmp_path)],
                   capture_output=True, text=True, env=env, timeout=120)
    assert data.exists() and data.stat().st_size > 0
    images = images_of(tmp_path)
    assert images
    # Not trimmed (no exit handler ran): .strtab still ends in its zero filler.
    assert images[0].read_bytes()[-4096:] == bytes(4096)
    samples = perf_script(perf, data)
    foo, full = chain_share(samples, script)
    assert len(foo) >= 200, f"only {len(foo)} samples name py::foo after SIGKILL"
    assert full / len(foo) >= 0.97, f"{full}/{len(foo)}"


def test_files_are_private_and_a_planted_link_is_never_written_through(run_python, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    run = run_python(
        f"""
        import os, stat, perftramp
        parent = {str(tmp_path)!r}
        # Planted where this process's directory would go: a link to somewhere else.
        os.symlink({str(target)!r}, os.path.join(parent, f'perftramp-{{os.getpid()}}'))
        perftramp.enable('elf', directory=parent)
        def f(): return 1
        f()
        st = perftramp.status()
        d = st.elf_directory
        print('DIR', d)
        assert d == os.path.join(parent, f'perftramp-{{os.getpid()}}.1'), d
        assert not os.path.islink(d)
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        files = os.listdir(d)
        assert files == [f'py-{{os.getpid()}}-0.so'], files
        assert stat.S_IMODE(os.stat(os.path.join(d, files[0])).st_mode) == 0o600
        assert st.errors == (), st.errors
        print('ok')
        """
    ).check()
    assert "ok" in run.stdout
    assert list(target.iterdir()) == []


def test_a_missing_directory_is_an_oserror_naming_it(run_python, tmp_path):
    missing = tmp_path / "nope"
    run_python(
        f"""
        import perftramp
        try:
            perftramp.enable('elf', directory={str(missing)!r})
        except OSError as err:
            assert err.filename == {str(missing)!r}, (err.filename, err)
            print('raised', err)
        else:
            raise SystemExit('no error')
        """
    ).check()


def test_elf_combines_with_map(run_python, tmp_path):
    run_python(
        f"""
        import os, perftramp
        perftramp.enable('map+elf', directory={str(tmp_path)!r})
        def f(): return 1
        f()
        st = perftramp.status()
        assert st.mode == 'elf+map', st.mode
        assert st.perf_map_path == f'/tmp/perf-{{os.getpid()}}.map'
        assert st.elf_directory and st.jitdump_path is None
        addr_lines = open(st.perf_map_path).read().split('\\n')
        assert any('py::f:' in l for l in addr_lines)
        """
    ).check()


@pytest.mark.parametrize("size,what", [("128k", "image"), ("360k", "names")])
def test_disk_full_is_a_clean_error_and_the_program_finishes(run_python, tmp_path, size, what):
    """128k: not even one image fits (creating it fails, functions run without trampolines);
    360k: the image fits but its names do not (.strtab cannot grow)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        run = run_python(
            f"""
            import perftramp
            perftramp.enable("elf", directory={str(small)!r})
            src = '\\n'.join(f'def f{{i}}(): return {{i}}' for i in range(3000))
            ns = {{}}
            exec(compile(src, '/tmp/many.py', 'exec'), ns)
            total = sum(ns[f'f{{i}}']() for i in range(3000))
            assert total == sum(range(3000)), total
            st = perftramp.status()
            assert st.enabled
            print('finished', st.trampolines, st.errors)
            assert any('No space left' in e for e in st.errors), st.errors
            """
        ).check()
        assert "finished" in run.stdout
        warnings = [line for line in run.stderr.splitlines() if line.startswith("perftramp:")]
        assert len(warnings) == 1, run.stderr
        assert str(small) in warnings[0] and "No space left" in warnings[0], warnings
        # Whatever is on the small disk is a valid ELF file (a failed image is removed).
        for image in images_of(small):
            head = image.read_bytes()[:4]
            assert head == b"\x7fELF", image
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_behaviour_suite_passes_in_elf_mode(tmp_path):
    """The whole behaviour module again, with elf-mode trampolines."""
    run_behaviour_suite("elf", tmp_path)


GROWING = """\
import os, sys, time
import perftramp
perftramp.enable("elf", directory=sys.argv[1])
print(os.getpid(), flush=True)
sys.stdin.readline()  # perf is recording now
# New functions keep appearing (and running hot) after perf attached: names written into an
# image after perf first saw it must resolve at report time.
for k in range(4):
    ns = {}
    exec(compile(f'def late_{k}(n):\\n    s = 0\\n    for i in range(n): s += i\\n    return s\\n',
                 '/tmp/late.py', 'exec'), ns)
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        ns[f'late_{k}'](5000)
"""


@pytest.mark.perf
def test_names_written_after_perf_attached_resolve(perf, tmp_path):
    script = tmp_path / "growing.py"
    script.write_text(GROWING)
    program = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    data = tmp_path / "perf.data"
    env = dict(os.environ, **PERF_ENV)
    try:
        assert program.stdout is not None and program.stdin is not None
        pid = int(program.stdout.readline())
        recorder = subprocess.Popen([perf, "record", "-q", "-F", "999", "--call-graph", DWARF,
                                     "-o", str(data), "-p", str(pid)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 30
        while not (data.exists() and data.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # perf has opened its events once the header is written
        program.stdin.write("go\n")
        program.stdin.flush()
        program.wait(timeout=60)
        recorder.wait(timeout=60)  # perf -p ends when the process does
    finally:
        if program.poll() is None:
            program.kill()
    samples = perf_script(perf, data)
    named = {f.split(":")[2] for s in samples for f in s.symbols if f.startswith("py::late_")}
    # Every late function was created after perf attached: their names were written into the
    # image after perf recorded its mapping.
    assert named == {"late_0", "late_1", "late_2", "late_3"}, named


def test_code_is_never_writable_and_a_live_image_reads_clean(run_python, tmp_path):
    """W^X: every mapping of an image that can execute is read-only, and every writable one
    (the symbol windows) cannot execute. And readelf, reading the image while the process is
    still writing it, finds valid headers and the names so far, without a warning."""
    run = run_python(
        f"""
        import os, subprocess, perftramp
        perftramp.enable('elf', directory={str(tmp_path)!r})
        src = '\\n'.join(f'def g{{i}}(): return {{i}}' for i in range(5000))
        ns = {{}}
        exec(compile(src, '/tmp/live.py', 'exec'), ns)
        for i in range(5000):
            ns[f'g{{i}}']()
        d = perftramp.status().elf_directory
        images = sorted(os.listdir(d))
        assert len(images) >= 2, images
        maps = [l.split() for l in open('/proc/self/maps') if d in l]
        assert maps, 'no mapping of the images'
        for fields in maps:
            perms = fields[1]
            assert not ('w' in perms and 'x' in perms), fields
        code = [f for f in maps if 'x' in f[1]]
        assert len(code) == len(images) and all(f[1] == 'r-xp' and f[5].endswith('.so') for f in code), code
        for name in images:
            out = subprocess.run(['readelf', '-W', '-s', os.path.join(d, name)],
                                 capture_output=True, text=True)
            assert out.returncode == 0 and 'arning' not in out.stderr, out.stderr
            print(name, out.stdout.count(' FUNC '))
        """
    ).check()
    from perftramp import _perftramp

    slots = 65536 // len(_perftramp.stub_code(_perftramp.native_arch()))  # per 64 KiB arena
    counts = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("py-")]
    # The first image is full; the rest (and the snippet's own functions) are in the second.
    assert counts[0] == slots and counts[1] >= 5000 - slots, run.stdout
