"""Hostile files at the paths perftramp writes: it runs inside production processes, often as
root, and writes to world-writable /tmp under predictable names.

Each case runs in a child that plants something at its *own* pid's path before enabling:
a symlink, a hard link, a FIFO, a directory, or another user's file. enable() must fail with
an OSError naming the path, write nothing through the planted name (link targets, the other
user's file and the directory stay byte-for-byte and stat-for-stat the same), keep no
descriptor or mapping of it, and leave nothing half-enabled (enabling works once the plant is
gone). Stale files of our own are documented behaviour: a map last written before the process
started (an earlier process with our pid) is emptied, one written since (this process before an
exec) is appended to, as CPython does; a stale jitdump is replaced, never written through.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

LINE = re.compile(r"^[0-9a-f]+ [0-9a-f]+ py::\S.*$")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root")

# Shared by the children: plant a hostile object at `path`, fingerprint everything it could
# reach, and check nothing changed. `work` is the test's private directory.
CHILD_PRELUDE = r"""
import errno, json, stat, pwd
import perftramp

NOBODY = pwd.getpwnam('nobody')

def fingerprint(p):
    # Everything writing through `p` could change (lstat of the name and, if it is a file or
    # directory, its content).
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    fp = dict(ino=st.st_ino, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size,
              nlink=st.st_nlink, mtime=st.st_mtime_ns, ctime=st.st_ctime_ns)
    if stat.S_ISREG(st.st_mode):
        with open(p, 'rb') as f:
            fp['data'] = f.read().hex()
    elif stat.S_ISDIR(st.st_mode):
        fp['entries'] = sorted(os.listdir(p))
    elif stat.S_ISLNK(st.st_mode):
        fp['link'] = os.readlink(p)
    return fp

def plant(kind, path, work):
    # Plants `kind` at `path`; returns the paths whose fingerprints must not change. Whatever is
    # already there was left by a dead process that had our pid (pids are reused, and other test
    # runs share /tmp: a jit-mode process leaves its jitdump for perf inject): it goes first.
    remove(path)
    target = os.path.join(work, 'target')
    with open(target, 'wb') as f:
        f.write(b'precious target bytes\n' * 10)
    os.chmod(target, 0o644)
    watched = [path, target]
    if kind == 'symlink':
        os.symlink(target, path)
    elif kind == 'dangling_symlink':
        os.unlink(target)
        os.symlink(target, path)  # O_CREAT through it would create `target`
    elif kind == 'hardlink':
        os.link(target, path)
    elif kind == 'fifo':
        os.mkfifo(path, 0o666)
    elif kind == 'directory':
        os.mkdir(path, 0o777)
        with open(os.path.join(path, 'inside'), 'wb') as f:
            f.write(b'x')
        watched.append(os.path.join(path, 'inside'))
    elif kind == 'foreign':
        # Another user's file, 0666 so it looks writable to everybody. Root bypasses the
        # permission bits: only perftramp's owner check can refuse it.
        with open(path, 'wb') as f:
            f.write(b'somebody else\'s data\n')
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(path, 0o666)
    elif kind == 'foreign_symlink':
        # Another user's symlink to a root file (what an attacker in /tmp would plant).
        os.symlink(target, path)
        os.lchown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    else:
        raise AssertionError(kind)
    return watched

def remove(p):
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        for name in os.listdir(p):
            os.unlink(os.path.join(p, name))
        os.rmdir(p)
    else:
        os.unlink(p)

def open_fds_to(*paths):
    # Descriptors of this process pointing at any of `paths` (or at deleted copies of them).
    found = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            where = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            continue
        if any(where == p or where.startswith(p + ' (deleted)') for p in paths):
            found.append((fd, where))
    return found

def mappings_of(*paths):
    found = []
    with open('/proc/self/maps') as f:
        for line in f:
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) == 6 else ''
            if any(name == p or name.startswith(p + ' (deleted)') for p in paths):
                found.append(line.strip())
    return found

def is_not_half_enabled():
    st = perftramp.status()
    assert not perftramp.is_enabled()
    assert not st.enabled and st.mode is None and st.trampolines == 0, st
    assert st.perf_map_path is None and st.jitdump_path is None, st
"""

KINDS = ["symlink", "dangling_symlink", "hardlink", "fifo", "directory", "foreign", "foreign_symlink"]


def _planted_child(kind: str, where: str, mode: str, work: Path) -> str:
    """A child that plants `kind` at its map (`where="map"`) or jitdump (`where="jit"`) path,
    tries enable(mode), and checks the outcome."""
    return CHILD_PRELUDE + f"""
kind, where, mode, work = {kind!r}, {where!r}, {mode!r}, {str(work)!r}
pid = os.getpid()
map_path = f'/tmp/perf-{{pid}}.map'
# The jitdump goes to the default directory, /tmp: the world-writable production case.
dump_path = f'/tmp/jit-{{pid}}.dump'
path = map_path if where == 'map' else dump_path
for p in (map_path, dump_path):
    remove(p)  # a stale file of a dead process that had our pid (pids are reused)
watched = plant(kind, path, work)
before = {{p: fingerprint(p) for p in watched}}
others_before = {{p: fingerprint(p) for p in (map_path, dump_path) if p != path}}
try:
    perftramp.enable(mode)
except OSError as err:
    message = str(err)
    assert path in message, f'the error does not name {{path}}: {{message!r}}'
    print('REFUSED', type(err).__name__, message)
else:
    raise AssertionError(f'enable({{mode!r}}) accepted a {{kind}} at {{path}}')
is_not_half_enabled()

def after_refusal(): return 41
assert after_refusal() == 41

# Nothing was written through, nothing else was created or left open or mapped.
after = {{p: fingerprint(p) for p in watched}}
assert after == before, json.dumps(dict(before=before, after=after), indent=1)
assert {{p: fingerprint(p) for p in others_before}} == others_before, 'another file was created'
leaked_fds = open_fds_to(map_path, dump_path, f'/tmp/.jit-{{pid}}.dump.writer',
                        os.path.join(work, 'target'))
assert not leaked_fds, leaked_fds
leaked_maps = mappings_of(map_path, dump_path, f'/tmp/.jit-{{pid}}.dump.writer',
                          os.path.join(work, 'target'))
assert not leaked_maps, leaked_maps

# Once the plant is gone, enabling works: nothing was left half-enabled.
remove(path)
perftramp.enable(mode)
def after_cleanup(): return 42
assert after_cleanup() == 42
st = perftramp.status()
perftramp.disable()
assert st.enabled and st.mode == mode and not st.errors, st
if st.perf_map_path:
    assert st.perf_map_path == map_path
    assert 'py::' in open(map_path).read() and 'after_cleanup' in open(map_path).read()
    os.unlink(map_path)
if st.jitdump_path:
    assert st.jitdump_path == dump_path
    assert b'after_cleanup' in open(dump_path, 'rb').read()
    os.unlink(dump_path)
target_now = fingerprint(os.path.join(work, 'target'))
target_then = after[os.path.join(work, 'target')]
if target_then is not None:
    # (its link count and ctime change when we remove the planted hard link ourselves)
    assert (target_now['ino'], target_now['data'], target_now['mtime']) == (
        target_then['ino'], target_then['data'], target_then['mtime'])
else:
    assert target_now is None, 'the dangling symlink target was created'
print('ok')
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def _cleanup(pid):
    if pid is None:
        return
    for p in (f"/tmp/perf-{pid}.map", f"/tmp/jit-{pid}.dump"):
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                for name in os.listdir(p):
                    os.unlink(os.path.join(p, name))
                os.rmdir(p)
            elif os.path.lexists(p):
                os.unlink(p)
        except OSError:
            pass


def _run(run_python, code):
    run = run_python("report_pid()\n" + code)
    _cleanup(run.pid)
    return run


@pytest.mark.parametrize("mode", ["map", "both"])
@pytest.mark.parametrize("kind", KINDS)
def test_hostile_object_at_the_map_path_is_refused(run_python, work, kind, mode):
    # In "both" mode the jitdump is created first: when the map is then refused, the dump must
    # be removed again, with no descriptor or mapping of it left behind.
    run = _run(run_python, _planted_child(kind, "map", mode, work))
    run.check()
    assert "REFUSED" in run.stdout and "ok" in run.stdout, run.stdout
    if kind == "foreign":
        assert "belongs to uid" in run.stdout, run.stdout  # the owner check, not DAC, refused it


# A hard link of ours at the jitdump path is a stale regular file of our uid: it is replaced
# (its name removed, a new file created with O_EXCL), never written through; see
# test_stale_jitdump_hard_link_is_replaced_and_its_other_name_untouched.
@pytest.mark.parametrize("mode", ["jit", "both"])
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "hardlink"])
def test_hostile_object_at_the_jitdump_path_is_refused(run_python, work, kind, mode):
    run = _run(run_python, _planted_child(kind, "jit", mode, work))
    run.check()
    assert "REFUSED" in run.stdout and "ok" in run.stdout, run.stdout


def test_stale_jitdump_hard_link_is_replaced_and_its_other_name_untouched(run_python, work):
    run = _run(run_python, CHILD_PRELUDE + f"""
work = {str(work)!r}
dump_path = f'/tmp/jit-{{os.getpid()}}.dump'
target = os.path.join(work, 'target')
plant('hardlink', dump_path, work)
before = fingerprint(target)
perftramp.enable('jit')
def fresh(): return 1
assert fresh() == 1
perftramp.disable()
after = fingerprint(target)
assert after['data'] == before['data'] and after['ino'] == before['ino'], 'written through'
assert after['mtime'] == before['mtime']
new = os.lstat(dump_path)
assert new.st_ino != before['ino'] and new.st_nlink == 1 and stat.S_IMODE(new.st_mode) == 0o600
data = open(dump_path, 'rb').read()
assert data[:4] == (0x4A695444).to_bytes(4, sys.byteorder) and b'py::fresh:' in data
os.unlink(dump_path)
print('ok')
""")
    run.check()


@pytest.mark.parametrize("written", ["since_start", "before_start"])
@pytest.mark.parametrize("old", ["clean", "no_final_newline", "killed_with_filler"])
def test_stale_map_of_ours_is_appended_to_or_emptied(run_python, old, written):
    """A map of ours (same uid, one link) already at our path. Written since this process started
    (by its image before an exec: perf needs those entries for the samples taken then):
    perftramp appends, as CPython does; the old bytes stay exactly, and every new entry is a whole
    line. Last written before the process started, it is an earlier process's with our pid (pids
    are reused), whose entries would name its code at addresses we may now use: it is emptied."""
    run = _run(run_python, f"""
import re, stat, time
import perftramp
LINE = re.compile(r'^[0-9a-f]+ [0-9a-f]+ py::\\S.*$')
path = f'/tmp/perf-{{os.getpid()}}.map'
if os.path.lexists(path):
    os.unlink(path)  # left by a dead process that had our pid
old = b''.join(b'%x b py::old_%d:/old/file.py\\n' % (0x7f0000000000 + 16 * i, i) for i in range(50))
kind = {old!r}
if kind == 'no_final_newline':
    old += b'7f0000001000 b py::torn_entry_of_a_killed_proc'   # killed mid-line
elif kind == 'killed_with_filler':
    old += b'\\n' * 65536   # blank filler a killed perftramp process leaves
with open(path, 'wb') as f:
    f.write(old)
os.chmod(path, 0o644)
if {written!r} == 'before_start':
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    old = b''   # what must remain of it
perftramp.enable()
src = '\\n'.join(f'def fresh_{{i}}(): return {{i}}' for i in range(3000))   # > one 64 KiB chunk
ns = {{}}
exec(compile(src, '/tmp/fresh.py', 'exec'), ns)
assert sum(ns[f'fresh_{{i}}']() for i in range(3000)) == sum(range(3000))
st = perftramp.status()
perftramp.disable()
assert not st.errors, st.errors
made = perftramp.status().trampolines
data = open(path, 'rb').read()
assert data.startswith(old), 'the old content changed'
assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, 'made private'
new = data[len(old):]
assert new.endswith(b'\\n') and not new.endswith(b'\\n\\n'), 'filler left after disable'
text = data.decode()
lines = [l for l in text.split('\\n') if l]
for l in lines:
    assert LINE.match(l), repr(l[:200])
names = [l.split(' ', 2)[2] for l in lines]
name_set = set(names)
for i in range(3000):
    assert f'py::fresh_{{i}}:/tmp/fresh.py' in name_set, f'fresh_{{i}} lost: {{[n for n in names if "torn" in n]}}'
old_lines = [l for l in old.decode().split('\\n') if l]
# The old lines stay whole lines (a torn last line is ended, not glued to our first entry) ...
assert lines[:len(old_lines)] == old_lines, (lines[len(old_lines) - 1:len(old_lines) + 1])
# ... and exactly one whole new line follows per trampoline made.
assert len(lines) - len(old_lines) == made, (len(lines) - len(old_lines), made)
os.unlink(path)
print('ok')
""")
    run.check()


def test_stale_jitdump_of_ours_is_replaced_never_written_through(run_python):
    """At the default /tmp path: a descriptor kept on the stale file still reads the old bytes
    after enable (nothing was written through it), and the new dump is a different file."""
    run = _run(run_python, """
import stat
import perftramp
path = f'/tmp/jit-{os.getpid()}.dump'
old = b'STALE-DUMP-OF-AN-EARLIER-PROCESS' * 4096
with open(path, 'wb') as f:
    f.write(old)
os.chmod(path, 0o644)
keep = os.open(path, os.O_RDONLY)
old_ino = os.fstat(keep).st_ino
perftramp.enable('jit')
def fresh(): return 1
assert fresh() == 1
perftramp.disable()
assert os.pread(keep, len(old) + 1, 0) == old, 'the stale dump was written through'
assert os.fstat(keep).st_nlink == 0, 'the stale dump was not unlinked'
os.close(keep)
st = os.lstat(path)
assert st.st_ino != old_ino and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
data = open(path, 'rb').read()
assert data[:4] == (0x4A695444).to_bytes(4, sys.byteorder) and b'STALE' not in data
assert b'py::fresh:' in data
os.unlink(path)
print('ok')
""")
    run.check()


def test_hostile_writer_alias_name_is_never_written_through(run_python, work):
    """The jitdump is written through a hard-link alias `.jit-<pid>.dump.writer` created and
    removed at enable. Something planted at that name (a symlink to a precious file, another
    user's file) must be neither written through nor removed, and enable still works."""
    run = _run(run_python, CHILD_PRELUDE + f"""
work = {str(work)!r}
target = os.path.join(work, 'target')
with open(target, 'wb') as f:
    f.write(b'precious')
# One process can enable once (one dump per process): plant both in turn across a fork.
for kind in ('symlink', 'foreign'):
    child = os.fork()
    if child == 0:
        try:
            me = os.getpid()
            a = f'/tmp/.jit-{{me}}.dump.writer'
            remove(a)  # left by a dead process that had this pid
            if kind == 'symlink':
                os.symlink(target, a)
            else:
                with open(a, 'wb') as f:
                    f.write(b'foreign')
                os.chown(a, NOBODY.pw_uid, NOBODY.pw_gid)
            before = (fingerprint(a), fingerprint(target))
            perftramp.enable('jit')
            def fresh(): return 1
            assert fresh() == 1
            perftramp.disable()
            assert (fingerprint(a), fingerprint(target)) == before, 'alias plant changed'
            data = open(f'/tmp/jit-{{me}}.dump', 'rb').read()
            assert b'py::fresh:' in data
            os.unlink(f'/tmp/jit-{{me}}.dump')
            os.unlink(a)
            os._exit(0)
        except BaseException:
            import traceback; traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(child, 0)
    remove(f'/tmp/.jit-{{child}}.dump.writer'); remove(f'/tmp/jit-{{child}}.dump')
    assert status == 0, (kind, status)
print('ok')
""")
    run.check()


@pytest.mark.parametrize("where", ["map", "jit"])
@pytest.mark.parametrize("kind", ["symlink", "foreign", "fifo", "hardlink"])
def test_hostile_object_at_a_fork_childs_path(run_python, work, kind, where):
    """A fork child writes its own /tmp/perf-<childpid>.map and jit-<childpid>.dump, opened when
    it first runs new Python code (at the latest in Python's at-fork callbacks). Something
    planted at the child's predictable path beforehand is refused too: the child keeps running
    with exact results, status().errors names the path, nothing is written through. The child's
    pid is chosen with /proc/sys/kernel/ns_last_pid (root)."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("choosing a child's pid needs a writable /proc/sys/kernel/ns_last_pid")
    run = _run(run_python, CHILD_PRELUDE + f"""
import random
kind, where, work = {kind!r}, {where!r}, {str(work)!r}
perftramp.enable('both')
def in_parent(): return 1
assert in_parent() == 1
pid_max = int(open('/proc/sys/kernel/pid_max').read())
for attempt in range(50):
    want = random.randrange(max(1000, pid_max // 2), pid_max - 1)
    if os.path.exists(f'/proc/{{want}}'):
        continue
    path = f'/tmp/perf-{{want}}.map' if where == 'map' else f'/tmp/jit-{{want}}.dump'
    other = f'/tmp/jit-{{want}}.dump' if where == 'map' else f'/tmp/perf-{{want}}.map'
    remove(path); remove(other)   # stale files of dead processes with that pid
    watched = plant(kind, path, work)
    before = {{p: fingerprint(p) for p in watched}}
    r, w = os.pipe()
    with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
        f.write(str(want - 1))
    child = os.fork()
    if child == 0:
        os.close(r)
        if os.getpid() != want:
            os._exit(3)  # another process took the pid: try again
        try:
            def in_child(x): return x * 2
            assert sum(in_child(i) for i in range(1000)) == 999000
            st = perftramp.status()
            os.write(w, repr(st.errors).encode())
            os._exit(0)
        except BaseException:
            import traceback; traceback.print_exc()
            os._exit(1)
    os.close(w)
    _, status = os.waitpid(child, 0)
    errors = os.read(r, 65536).decode()
    os.close(r)
    after = {{p: fingerprint(p) for p in watched}}
    remove(path); remove(other)
    if os.waitstatus_to_exitcode(status) == 3:
        remove(f'/tmp/perf-{{child}}.map'); remove(f'/tmp/jit-{{child}}.dump')
        continue
    assert status == 0, status
    break
else:
    raise AssertionError('could not give the child a chosen pid')
print('CHILD', want, errors)
if kind == 'hardlink' and where == 'jit':
    # A stale dump of ours: replaced (the child writes a new file), never written through.
    t = os.path.join(work, 'target')
    assert (after[t]['ino'], after[t]['data'], after[t]['mtime']) == (
        before[t]['ino'], before[t]['data'], before[t]['mtime'])
    assert errors == '()', errors
else:
    assert after == before, (before, after)
    assert path in errors, errors
perftramp.disable()
st = perftramp.status()
for p in (st.perf_map_path, st.jitdump_path):
    os.unlink(p)
print('ok')
""")
    run.check()
    assert "ok" in run.stdout, run.stdout
