"""A real program from PyPI that forks, recorded as users record it: flake8 -j 2 checks files in
a multiprocessing fork pool. The table must name what the workers do (flake8's checkers), and no
worker sample may name the parent's pool threads (perftramp before fork-safe arenas showed the
parent's Pool._handle_results and friends for the workers' code, and none of the checkers)."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import PERF_ENV, cli
from perftramp import _report as rp
from perftramp._perfscript import iter_stack_samples

PARENT_ONLY = ("Pool._handle_results", "Pool._handle_tasks", "Pool._handle_workers")
#: Where the workers' work runs: flake8's checkers and what they call (a DWARF stack copy may be
#: too short for the outer frames of deep stacks, so the innermost ones are what is looked for).
CHECKER_FILES = ("/pycodestyle.py", "/pyflakes/", "/flake8/processor.py", "/flake8/checker.py",
                 "/flake8/plugins/", "/tokenize.py", "/ast.py")

pytestmark = pytest.mark.perf


def flake8() -> str:
    path = Path(sys.executable).parent / "flake8"
    if not path.exists():
        if os.environ.get("CI") or os.environ.get("PERFTRAMP_REQUIRE_PERF") == "1":
            pytest.fail(f"flake8 is not installed next to {sys.executable} (scripts/test.sh installs it)")
        pytest.skip("flake8 is not installed (pip install flake8)")
    return str(path)


# auto (elf, or map + fp) on every interpreter; jit mode (with perf inject) on the first one
# (`once`), to keep CI short: the fork fix itself is checked in every mode by test_fork_attribution.
def record_flake8(tmp_path: Path, mode: str) -> Path:
    """`perftramp record` of flake8 -j 2 on 80 stdlib modules; returns the output directory."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for source in sorted(stdlib.glob("*.py"))[:80]:
        shutil.copy(source, corpus / source.name)
    out = tmp_path / "rec"
    proc = cli("record", "-o", str(out), "--mode", mode, "--",
               flake8(), "-j", "2", "--exit-zero", "-q", str(corpus), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no samples lost" in proc.stderr, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("mode", ["auto", pytest.param("jit", marks=pytest.mark.once)])
def test_flake8_workers_are_named_by_their_own_work(perf, tmp_path, mode):
    out = record_flake8(tmp_path, mode)
    data = rp.data_file(out)
    script = subprocess.run([perf, "script", "-F", "comm,pid,tid,ip,sym,dso", "-i", str(data)],
                            capture_output=True, text=True, env=dict(os.environ, **PERF_ENV))
    assert script.returncode == 0, script.stderr
    per_pid = collections.defaultdict(lambda: [0, 0, 0])  # samples, doing the work, mislabelled
    for sample in iter_stack_samples(script.stdout.splitlines()):
        counts = per_pid[sample.pid]
        counts[0] += 1
        python = [f for f in sample.frames if f.startswith("py::")]
        counts[1] += any(any(part in f for part in CHECKER_FILES) for f in python)
        counts[2] += any(f.split(":")[2] in PARENT_ONLY for f in python if f.count(":") >= 3)
    workers = {pid: c for pid, c in per_pid.items() if c[1] >= 0.5 * c[0] and c[0] >= 50}
    assert len(workers) == 2, f"expected 2 flake8 workers doing the checks: {dict(per_pid)}"
    total = sum(c[0] for c in per_pid.values())
    work = sum(c[1] for c in workers.values())
    assert work >= 0.4 * total, f"only {work}/{total} samples are in the workers' checks: {dict(per_pid)}"
    for pid, (samples, doing, mislabelled) in workers.items():
        assert doing >= 0.8 * samples, f"worker {pid}: {doing}/{samples} samples in flake8's checkers"
        assert mislabelled == 0, f"worker {pid}: {mislabelled} samples name the parent's pool threads"
    # The table (top rows by self time) leads with what the workers run: flake8's checkers.
    table = (out / "top.txt").read_text()
    checker_rows = [line for line in table.splitlines()[2:12]
                    if any(part in line for part in ("pycodestyle", "pyflakes", "flake8/processor",
                                                     "flake8/checker", "tokenize.py", "ast.py"))]
    assert len(checker_rows) >= 3, table


PARENT_ONLY_FUNCTIONS = {name.rsplit(".", 1)[-1] for name in PARENT_ONLY}

#: Labels (`qualname (file.py:LINE)`) of code that runs in flake8's workers' checks.
CHECKER_LABELS = ("(pycodestyle.py:", "(checker.py:", "(processor.py:", "(tokenize.py:",
                  "(ast.py:", "(style_guide.py:", "(messages.py:")


@pytest.mark.once
def test_flake8_in_speedscope_one_profile_per_process(perf, tmp_path, speedscope):
    """The speedscope export of the same program, opened in speedscope itself: the parent and
    each worker are separate profiles, and each worker's frames are flake8's checkers, never the
    parent's pool threads."""
    import readers

    out = record_flake8(tmp_path, "auto")
    proc = cli("report", str(out), "--format", "speedscope", timeout=300)
    assert proc.returncode == 0, proc.stderr
    read = readers.read_with_speedscope(out / "profile.speedscope.json", speedscope)
    assert "flake8" in read.title, read.title
    names = [p.name for p in read.profiles]
    assert len(set(names)) == len(names) >= 3 and all("[pid " in n for n in names), names
    workers = []
    for profile in read.profiles:
        total = max(t for t, _ in profile.frames.values())
        checks = sum(s for name, (_, s) in profile.frames.items()
                     if any(part in name for part in CHECKER_LABELS))
        if checks >= 0.3 * total and total > 200:  # ms
            workers.append(profile)
            # 3.9/3.10 name code objects without their class: compare the function names.
            parent_only = [n for n in profile.frames
                           if n.split(" (")[0].rsplit(".", 1)[-1] in PARENT_ONLY_FUNCTIONS]
            assert not parent_only, f"{profile.name} shows the parent's pool threads: {parent_only}"
    assert len(workers) == 2, {p.name: sorted(p.frames.items(), key=lambda kv: -kv[1][1])[:8]
                               for p in read.profiles}
