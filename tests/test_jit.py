"""jit mode: the jitdump, read back by perf inject and readelf, and full stacks without frame
pointers (perf record -k 1 --call-graph dwarf, perf inject --jit, perf script)."""

from __future__ import annotations

import os
import re
import signal
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FOO_BAR_BAZ, PERF_ENV, has_chain, native_stub, perf_record, perf_script, py_name, run_behaviour_suite


HEADER = struct.Struct("=IIIIIIQQ")
PREFIX = struct.Struct("=IIQ")
CODE_LOAD, DEBUG_INFO, UNWINDING_INFO = 0, 2, 4


def read_dump(path: Path):
    """A minimal independent reader: header fields and (id, body) of each record."""
    data = path.read_bytes()
    header = HEADER.unpack_from(data, 0)
    records = []
    pos = header[2]
    while pos + PREFIX.size <= len(data):
        rid, size, _ts = PREFIX.unpack_from(data, pos)
        if size < PREFIX.size:  # zero filler of a live or killed process
            break
        records.append((rid, data[pos + PREFIX.size: pos + size]))
        pos += size
    return header, records


def load_names(records):
    names = []
    for rid, body in records:
        if rid == CODE_LOAD:
            name_end = body.index(b"\0", 40)
            names.append(body[40:name_end].decode())
    return names


@pytest.fixture
def jit_workload(tmp_path: Path) -> Path:
    path = tmp_path / "jit_workload.py"
    path.write_text(FOO_BAR_BAZ)
    return path


@pytest.mark.perf
def test_full_python_stacks_without_frame_pointers(perf, jit_workload, tmp_path, jit_dir):
    data = tmp_path / "perf.data"
    injected = tmp_path / "perf.jit.data"
    perf_record(perf, data, [sys.executable, str(jit_workload), "jit", "1.5", str(jit_dir)],
                call_graph="dwarf,65528", extra=["-k", "1"])
    env = dict(os.environ, **PERF_ENV)
    inject = subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(injected)],
                            capture_output=True, text=True, env=env)
    assert inject.returncode == 0, inject.stderr
    jitted = sorted(jit_dir.glob("jitted-*.so"))
    assert jitted, "perf inject wrote no jitted-*.so: it did not find the jitdump"
    samples = [s for s in perf_script(perf, injected)
               if py_name("foo", str(jit_workload)) in s.symbols]
    assert len(samples) >= 200, f"only {len(samples)} samples name py::foo"
    names = [py_name(q, str(jit_workload)) for q in ("foo", "bar", "baz")]
    share = sum(has_chain(s.symbols, names) for s in samples) / len(samples)
    print(f"full py::foo <- py::bar <- py::baz stacks: {share:.1%} of {len(samples)}")
    assert share >= 0.90


@pytest.mark.perf
def test_jitdump_outside_tmp_jitted_is_not_unwound_by_libdw_perf(perf, perf_info, jit_workload, tmp_path):
    """Why jit_dir and `record` put dumps under /tmp/jitted-* for perf 7: its libdw unwinder
    places injected files correctly only there. If a perf ever unwinds them elsewhere, this fails
    and the workaround can go."""
    if not perf_info.jit_needs_tmp_jitted:
        pytest.skip(f"{perf_info.text} ({perf_info.unwinder}) unwinds jitted files anywhere")
    elsewhere = tmp_path / "dumps"
    elsewhere.mkdir()
    data = tmp_path / "perf.data"
    injected = tmp_path / "perf.jit.data"
    perf_record(perf, data, [sys.executable, str(jit_workload), "jit", "1.0", str(elsewhere)],
                call_graph="dwarf,65528", extra=["-k", "1"])
    env = dict(os.environ, **PERF_ENV)
    subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(injected)], check=True,
                   capture_output=True, env=env)
    assert list(elsewhere.glob("jitted-*.so")), "perf inject wrote no jitted-*.so"
    samples = perf_script(perf, injected)
    named = [s for s in samples if py_name("foo", str(jit_workload)) in s.symbols]
    assert len(samples) >= 200 and not named, (len(named), len(samples))


@pytest.mark.perf
def test_perf_inject_output_matches_the_stub(perf, jit_workload, tmp_path, jit_dir):
    """perf inject's ELF files, read with binutils: code, symbol and FDE cover exactly the stub."""
    data = tmp_path / "perf.data"
    perf_record(perf, data, [sys.executable, str(jit_workload), "jit", "0.3", str(jit_dir)],
                call_graph="dwarf,16384", extra=["-k", "1"])
    env = dict(os.environ, **PERF_ENV)
    subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(tmp_path / "out.data")],
                   check=True, capture_output=True, env=env)
    foo = py_name("foo", str(jit_workload))
    for so in jit_dir.glob("jitted-*.so"):
        syms = subprocess.run(["objdump", "-t", str(so)], capture_output=True, text=True).stdout
        if foo in syms:
            break
    else:
        pytest.fail("no jitted-*.so names py::foo")
    disasm = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True).stdout
    body = disasm.split(f"<{foo}>:", 1)[1]
    for instruction in ("endbr64", "push   %rbp", "mov    %rsp,%rbp", "call   *%rcx", "pop    %rbp", "ret"):
        assert instruction in body, (instruction, body[:400])
    frames = subprocess.run(["readelf", "--debug-dump=frames", str(so)], capture_output=True, text=True).stdout
    text_start = int(re.search(r"^\s*([0-9a-f]+) <", disasm, re.M).group(1), 16)
    fde = re.search(r"FDE cie=\w+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", frames)
    assert fde, frames
    assert (int(fde.group(1), 16), int(fde.group(2), 16)) == (text_start, text_start + 12)
    # The CFA rules of the x86_64 stub, in order.
    for rule in ("DW_CFA_def_cfa: r7 (rsp) ofs 8", "DW_CFA_def_cfa_offset: 16",
                 "DW_CFA_offset: r6 (rbp) at cfa-16", "DW_CFA_def_cfa_register: r6 (rbp)"):
        assert rule in frames, (rule, frames)


def test_dump_header_records_and_file_safety(run_python, tmp_path):
    run = run_python(
        f"""
        import perftramp
        perftramp.enable("jit", directory={str(tmp_path)!r})
        def foo(): return 1
        foo()
        st = perftramp.status()
        print(st.jitdump_path, st.trampolines, st.executable_bytes_used, st.perf_map_path)
        perftramp.disable()
        report_pid()
        """
    ).check()
    path_text, trampolines, used, map_path = run.stdout.split()[:4]
    path = Path(path_text)
    assert path == tmp_path / f"jit-{run.pid}.dump"
    assert map_path == "None"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    header, records = read_dump(path)
    magic, version, size, mach, _pad, pid, timestamp, flags = header
    assert (magic, version, size, pid, flags) == (0x4A695444, 1, 40, run.pid, 0)
    assert mach == native_stub().elf_machine  # EM_X86_64 62, EM_AARCH64 183
    assert timestamp > 0
    kinds = [rid for rid, _ in records]
    # Per trampoline: debug info and unwinding info, then its load (disable() itself runs
    # Python code, so there may be more than status() counted just before).
    assert len(kinds) % 3 == 0 and len(kinds) // 3 >= int(trampolines)
    assert kinds == [DEBUG_INFO, UNWINDING_INFO, CODE_LOAD] * (len(kinds) // 3)
    names = load_names(records)
    assert py_name("foo", str(tmp_path / "snippet.py")) in names
    indexes = [struct.unpack_from("=Q", body, 32)[0] for rid, body in records if rid == CODE_LOAD]
    assert len(set(indexes)) == len(indexes)
    # Executable memory per jit trampoline: stub + unwind data rounded to 16 (96 on x86_64).
    assert int(used) == native_stub().jit_slot * int(trampolines)


def test_debug_info_points_at_the_definition(run_python, tmp_path):
    run = run_python(
        f"""
        import perftramp
        perftramp.enable("jit", directory={str(tmp_path)!r})


        def defined_here(): return 1
        defined_here()
        report_pid()
        print('LINE', defined_here.__code__.co_firstlineno)
        """
    ).check()
    expected = int(re.search(r"LINE (\d+)", run.stdout).group(1))
    _, records = read_dump(tmp_path / f"jit-{run.pid}.dump")
    script = str(tmp_path / "snippet.py").encode()
    for rid, body in records:
        if rid == DEBUG_INFO and script in body:
            code_addr, nr = struct.unpack_from("=QQ", body, 0)
            addr, line, _disc = struct.unpack_from("=QiI", body, 16)
            if line == expected:
                assert nr == 2 and addr == code_addr
                break
    else:
        pytest.fail(f"no debug info maps a trampoline to line {expected} of the script")


def test_records_of_code_that_ran_survive_sigkill(tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(
        "import os, sys, time, perftramp\n"
        f"perftramp.enable('jit', directory={str(tmp_path)!r})\n"
        "def first(): return 1\n"
        "def second(): return first()\n"
        "second()\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        os.kill(pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    _, records = read_dump(tmp_path / f"jit-{pid}.dump")
    names = load_names(records)
    assert py_name("first", str(script)) in names and py_name("second", str(script)) in names


def test_both_mode_writes_map_and_dump(run_python, tmp_path):
    run = run_python(
        f"""
        import perftramp
        perftramp.enable("both", directory={str(tmp_path)!r})
        def foo(): return 1
        foo()
        st = perftramp.status()
        print(st.mode, st.perf_map_path, st.jitdump_path)
        perftramp.disable()
        """
    ).check()
    mode, map_path, dump_path = run.stdout.split()
    assert mode == "both"
    assert "py::foo:" in Path(map_path).read_text()
    assert any("py::foo:" in n for n in load_names(read_dump(Path(dump_path))[1]))
    os.unlink(map_path)


def test_bad_directory_and_mode_combinations(run_python, tmp_path):
    run_python(
        f"""
        import perftramp
        missing = {str(tmp_path / "missing")!r}
        try:
            perftramp.enable("jit", directory=missing)
        except OSError as err:
            assert missing in str(err), err
        else:
            raise AssertionError("enabled with a missing directory")
        assert not perftramp.is_enabled()
        try:
            perftramp.enable("map", directory={str(tmp_path)!r})
        except ValueError as err:
            assert "directory" in str(err)
        else:
            raise AssertionError("map mode accepted directory=")
        perftramp.enable("jit", directory={str(tmp_path)!r})
        try:
            perftramp.enable("map")
        except perftramp.ConflictError as err:
            assert "one mode per process" in str(err), err
        else:
            raise AssertionError("switched modes")
        print("ok")
        """
    ).check()


def test_a_stale_dump_is_replaced_never_written_through(run_python, tmp_path):
    run = run_python(
        f"""
        import perftramp
        d = {str(tmp_path)!r}
        path = os.path.join(d, f'jit-{{os.getpid()}}.dump')
        with open(path, 'wb') as f:
            f.write(b'OLD-DUMP-BYTES' * 100)
        os.symlink(os.path.join(d, 'elsewhere'), os.path.join(d, 'link'))
        perftramp.enable("jit", directory=d)
        def foo(): return 1
        foo()
        perftramp.disable()
        data = open(path, 'rb').read()
        assert data[:4] == (0x4A695444).to_bytes(4, sys.byteorder), data[:8]
        assert b'OLD-DUMP-BYTES' not in data
        print('ok')
        """
    ).check()


def test_disk_full_warns_once_and_the_program_finishes(run_python, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        run = run_python(
            f"""
            import perftramp
            perftramp.enable("jit", directory={str(small)!r})
            src = '\\n'.join(f'def f{{i}}(): return {{i}}' for i in range(3000))
            ns = {{}}
            exec(compile(src, '/tmp/many.py', 'exec'), ns)
            total = sum(ns[f'f{{i}}']() for i in range(3000))
            assert total == sum(range(3000)), total
            st = perftramp.status()
            assert st.enabled and st.trampolines >= 3000
            assert any('jitdump' in e for e in st.errors), st.errors
            print('finished', st.errors)
            """
        ).check()
        assert "finished" in run.stdout
        warnings = [line for line in run.stderr.splitlines() if line.startswith("perftramp: writing")]
        assert len(warnings) == 1, run.stderr
        assert str(small) in warnings[0] and "No space left" in warnings[0]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_behaviour_suite_passes_in_jit_mode(tmp_path):
    """The whole behaviour module again, with jit-mode trampolines (one mode per process)."""
    run_behaviour_suite("jit", tmp_path)


@pytest.mark.perf
def test_perf_sees_exactly_one_mapping_named_like_the_dump(perf, tmp_path):
    """perf inject re-reads the whole dump for every mapping of a file named jit-<pid>.dump:
    the writer's own mappings must not carry that name, or inject becomes quadratic."""
    script = tmp_path / "many.py"
    script.write_text(
        "import os, sys, perftramp\n"
        f"perftramp.enable('jit', directory={str(tmp_path)!r})\n"
        "src = '\\n'.join(f'def f{i}(): return {i}' for i in range(1500))\n"
        "ns = {}\n"
        "exec(compile(src, 'many.py', 'exec'), ns)\n"
        "assert sum(ns[f'f{i}']() for i in range(1500)) == sum(range(1500))\n"
        "print(os.getpid())\n"
    )
    data = tmp_path / "perf.data"
    proc = perf_record(perf, data, [sys.executable, str(script)], call_graph="dwarf,4096",
                       extra=["-k", "1"], cwd=tmp_path)
    pid = proc.stdout.split()[-1]
    dump_size = (tmp_path / f"jit-{pid}.dump").stat().st_size
    assert dump_size > 4 * 65536, "too few records to need several write windows"
    env = dict(os.environ, **PERF_ENV)
    raw = subprocess.run([perf, "report", "-D", "-i", str(data)], capture_output=True, text=True, env=env).stdout
    named = [line for line in raw.splitlines() if "PERF_RECORD_MMAP" in line and line.endswith(f"jit-{pid}.dump")]
    assert len(named) == 1 and " r-xp " in named[0], named


def test_exec_continues_the_previous_images_dump(tmp_path):
    """After os.exec*, the new image has the same pid: it continues the dump (samples taken
    before the exec still resolve) instead of replacing it, with code indexes that do not
    collide (perf inject names its files jitted-<pid>-<index>.so)."""
    second = tmp_path / "second.py"
    second.write_text(
        "import os, perftramp\n"
        f"perftramp.enable('jit', directory={str(tmp_path)!r})\n"
        "def image_b(): return 2\n"
        "image_b()\n"
        "print(os.getpid(), flush=True)\n"
    )
    first = tmp_path / "first.py"
    first.write_text(
        "import os, sys, perftramp\n"
        f"perftramp.enable('jit', directory={str(tmp_path)!r})\n"
        "def image_a(): return 1\n"
        "image_a()\n"
        f"os.execv(sys.executable, [sys.executable, {str(second)!r}])\n"
    )
    out = subprocess.run([sys.executable, str(first)], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    header, records = read_dump(tmp_path / f"jit-{pid}.dump")
    assert header[5] == pid
    names = load_names(records)
    assert any(n.startswith("py::image_a:") for n in names), names
    assert any(n.startswith("py::image_b:") for n in names), names
    indexes = [struct.unpack_from("=Q", body, 32)[0] for rid, body in records if rid == CODE_LOAD]
    assert len(set(indexes)) == len(indexes), "code indexes collide across the exec"
    assert [rid for rid, _ in records] == [DEBUG_INFO, UNWINDING_INFO, CODE_LOAD] * (len(records) // 3)
