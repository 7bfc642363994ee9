"""The perf map file: CPython's format, safety of names, crash safety, flush policy."""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
import time

import pytest

from conftest import native_stub, py_name

LINE = re.compile(r"^[0-9a-f]+ [0-9a-f]+ py::\S.*$")


def entries(pid: int):
    """Non-blank lines of a process's map (a live or killed process's file ends in blank filler)."""
    with open(f"/tmp/perf-{pid}.map", "rb") as f:
        data = f.read()
    return [line.decode() for line in data.split(b"\n") if line]


def test_map_names_functions_in_cpythons_format(run_python, tmp_path):
    run = run_python(
        """
        import perftramp
        report_pid()
        perftramp.enable()
        def baz(): return 1
        def bar(): return baz()
        def foo(): return bar()
        class K:
            def meth(self): return foo()
        K().meth()
        perftramp.disable()
        """
    ).check()
    path = f"/tmp/perf-{run.pid}.map"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    raw = open(path).read()
    assert "\n\n" not in raw, "filler left after disable"
    lines = entries(run.pid)
    for line in lines:
        assert LINE.match(line), line
    script = str(tmp_path / "snippet.py")
    names = {line.split(" ", 2)[2]: line for line in lines}
    for qualname in ("foo", "bar", "baz", "K.meth"):
        assert py_name(qualname, script) in names, (qualname, lines)
    addr, size, _ = names[py_name("foo", script)].split(" ", 2)
    assert int(size, 16) == native_stub().code_size  # the stub's instructions, not its slot
    addresses = [int(line.split(" ")[0], 16) for line in lines]
    assert len(set(addresses)) == len(addresses), "an address was reused"
    os.unlink(path)


def test_hostile_names_keep_one_entry_per_line(run_python):
    run = run_python(
        r"""
        import perftramp
        report_pid()
        def f(): return 1
        names = ['new\nline', 'tab\there', 'nul\x00byte', 'surrogate\udcff', 'x' * 5000, 'ctl\x1b[31m']
        funcs = []
        for n in names:
            g = lambda: 1
            kwargs = dict(co_name=n, co_filename='/tmp/' + n + '.py')
            if sys.version_info >= (3, 11):
                kwargs['co_qualname'] = n
            g.__code__ = g.__code__.replace(**kwargs)
            funcs.append(g)
        perftramp.enable()
        for g in funcs:
            assert g() == 1
        print('made', perftramp.status().trampolines)
        perftramp.disable()
        """
    ).check()
    lines = entries(run.pid)
    for line in lines:
        assert LINE.match(line), repr(line)
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)
    text = "\n".join(lines)
    assert "py::new\\nline:/tmp/new\\nline.py" in text
    assert "tab\\there" in text and "nul\\x00byte" in text and "ctl\\x1b[31m" in text
    assert "surrogate\\udcff" in text  # backslashreplace of the lone surrogate
    long_line = next(line for line in lines if "xxxxxxxxxx" in line)
    assert len(long_line) < 4200 and "..." in long_line
    os.unlink(f"/tmp/perf-{run.pid}.map")


def test_entries_of_code_that_ran_survive_sigkill(run_python, tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(
        "import os, sys, time, perftramp\n"
        "perftramp.enable()\n"
        "def first(): return 1\n"
        "def second(): return first()\n"
        "second()\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    import subprocess

    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        os.kill(pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    names = [line.split(" ", 2)[2] for line in entries(pid)]
    assert py_name("first", str(script)) in names
    assert py_name("second", str(script)) in names
    for line in entries(pid):
        assert LINE.match(line), line
    os.unlink(f"/tmp/perf-{pid}.map")


def test_a_burst_of_new_functions_costs_few_write_syscalls(run_python):
    run = run_python(
        """
        import perftramp
        report_pid()
        src = '\\n'.join(f'def f{i}(): return {i}' for i in range(5000))
        ns = {}
        exec(compile(src, '/tmp/burst.py', 'exec'), ns)
        funcs = [ns[f'f{i}'] for i in range(5000)]
        def syscw():
            for line in open('/proc/self/io'):
                if line.startswith('syscw:'):
                    return int(line.split()[1])
        perftramp.enable()
        before = syscw()
        total = sum(f() for f in funcs)
        after = syscw()
        assert total == sum(range(5000))
        print('writes', after - before, 'trampolines', perftramp.status().trampolines)
        perftramp.disable()
        """
    ).check()
    writes = int(re.search(r"writes (\d+)", run.stdout).group(1))
    # 5000 entries of ~40 bytes: a handful of 64 KiB chunk extensions, not one write per entry.
    assert writes < 20, run.stdout
    assert sum(1 for line in entries(run.pid) if "/tmp/burst.py" in line) == 5000
    os.unlink(f"/tmp/perf-{run.pid}.map")


def test_no_mapping_is_ever_writable_and_executable(run_python):
    run_python(
        """
        import perftramp
        perftramp.enable()
        fs = []
        for i in range(10000):  # more than one arena
            exec(f'def f{i}(): return {i}', globals())
            globals()[f'f{i}']()
        rwx = [l for l in open('/proc/self/maps') if l.split()[1].startswith('rwx')]
        assert not rwx, rwx
        assert perftramp.status().executable_bytes >= 2 * 65536
        print('ok')
        """
    ).check()
