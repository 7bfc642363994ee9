"""`python -m perftramp doctor`: can perf record Python functions here, with full stacks, and
what to run to fix what cannot."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import _perf
from . import _record as rec
from . import _report as rp
from ._perf import jit_capable, perf_version  # noqa: F401 (doctor's public helpers)

SUPPORTED_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

FP_FIX = ("use elf mode, which needs no frame pointers (record's default when there are none; "
          "jit mode needs none either: record --mode jit), or, for map mode, an interpreter "
          "built with them: CPython 3.15+ builds them by default; with pyenv: "
          "PYTHON_CFLAGS='-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer' pyenv install "
          "3.13; from source: ./configure "
          "CFLAGS='-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer' (docs/modes.md)")

#: Run by the interpreter being checked (it may not be this one): what doctor needs to know.
PROBE = r"""
import json, os, sys, sysconfig
flags = ' '.join(str(sysconfig.get_config_var(n) or '') for n in ('CFLAGS', 'CONFIG_ARGS', 'PY_CFLAGS'))
# 3.15+ says so itself (frame pointers are its default); older builds only through their flags.
fp_var = sysconfig.get_config_var('_Py_WITH_FRAME_POINTERS')
info = {'version': sys.version.split()[0], 'version_info': list(sys.version_info[:2]),
        'implementation': sys.implementation.name, 'executable': sys.executable,
        'fp': bool(int(fp_var)) if fp_var is not None else '-fno-omit-frame-pointer' in flags,
        'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')),
        'perftramp': None, 'native': None, 'native_error': None, 'pth': None}
try:
    import perftramp
    info['perftramp'] = os.path.dirname(perftramp.__file__)
    try:
        from perftramp import _perftramp
        info['native'] = _perftramp.native_arch()
    except Exception as err:
        info['native_error'] = str(err)
    import site
    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    dirs.append(os.path.dirname(info['perftramp']))
    for d in dirs:
        if os.path.isfile(os.path.join(d, 'perftramp.pth')):
            info['pth'] = os.path.join(d, 'perftramp.pth')
            break
except Exception as err:
    info['perftramp_error'] = str(err)
print(json.dumps(info))
"""


@dataclass
class Check:
    name: str
    state: str  # "ok", "warn", "FAIL", "info"
    detail: str
    fix: Optional[str] = None


def capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def probe_record(perf: str, call_graph: List[str]) -> Tuple[bool, str]:
    """Records `true` the way `record` would: the only sure test (containers, seccomp, mlock)."""
    with tempfile.TemporaryDirectory(prefix="perftramp-doctor-") as tmp:
        data = os.path.join(tmp, "perf.data")
        try:
            proc = subprocess.run([perf, "record", "-F", "99", *call_graph, "-o", data, "--", "true"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, str(err)
        ok = proc.returncode == 0 and os.path.isfile(data)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return ok, ("" if ok else "\n".join(lines[:6]))


def run_doctor(python: Optional[str]) -> int:
    checks: List[Check] = []
    interpreter = python or sys.executable

    # Platform.
    machine = platform.machine()
    arch = SUPPORTED_ARCHES.get(machine.lower())
    if sys.platform != "linux":
        checks.append(Check("platform", "FAIL", f"{sys.platform}: perf and perftramp are Linux only"))
    elif arch is None:
        checks.append(Check("platform", "FAIL", f"Linux {machine}: perftramp supports x86_64 and aarch64"))
    else:
        checks.append(Check("platform", "ok", f"Linux {machine}, kernel {platform.release()}"))

    # The interpreter and perftramp in it.
    info: Dict[str, Any] = {}
    try:
        proc = subprocess.run([interpreter, "-I", "-c", PROBE], capture_output=True, text=True,
                              timeout=60, env=rec.clean_env())
        info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        probe_error = proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as err:
        probe_error = [str(err)]
    fp = bool(info.get("fp"))
    if not info:
        checks.append(Check("python", "FAIL", f"{interpreter} does not run: {' '.join(probe_error)}"))
    else:
        py_version = tuple(info["version_info"])
        where = info["executable"]
        if info["implementation"] != "cpython" or not ((3, 9) <= py_version <= (3, 15)):
            checks.append(Check("python", "FAIL", f"{info['implementation']} {info['version']} ({where}): "
                                "perftramp hooks CPython 3.9 to 3.15"))
        elif info["free_threaded"] and py_version < (3, 14):
            checks.append(Check("python", "FAIL", f"{info['version']} free-threaded ({where}): not supported",
                                "use 3.14t or newer, or the default (GIL) build of CPython"))
        elif info["free_threaded"]:
            checks.append(Check("python", "ok", f"CPython {info['version']} free-threaded ({where})"))
        else:
            checks.append(Check("python", "ok", f"CPython {info['version']} ({where})"))
        if info.get("perftramp") is None:
            checks.append(Check("perftramp", "FAIL", f"not importable by {where}",
                                f"{where} -m pip install perftramp"))
        elif info.get("native") is None:
            checks.append(Check("perftramp", "FAIL", f"{info['perftramp']}: native core unusable here "
                                f"({info.get('native_error') or 'no trampoline for this architecture'})"))
        else:
            checks.append(Check("perftramp", "ok", f"{info['perftramp']} ({info['native']} trampolines)"))
        if info.get("perftramp") is not None:
            if info.get("pth"):
                checks.append(Check("start hook", "ok", f"{info['pth']}: PERFTRAMP=... enables perftramp "
                                    "at interpreter start (what `record` relies on)"))
            else:
                checks.append(Check("start hook", "warn", "perftramp.pth is not installed: `record` "
                                    "cannot enable perftramp through the environment; the program "
                                    "must call perftramp.enable() itself",
                                    f"{where} -m pip install --force-reinstall perftramp"))
        checks.append(Check("frame pointers", "ok" if fp else "info",
                            "yes: map mode + --call-graph fp gives full stacks" if fp else
                            "no (usual for distribution builds): map mode shows only the innermost "
                            "Python frame; elf mode (and jit mode) give full stacks",
                            None if fp else FP_FIX))

    # perf.
    perf = shutil.which("perf")
    version: Optional[Tuple[int, int, int]] = None
    perf_info: Optional[_perf.PerfInfo] = None
    jit_ok = False
    record_fp = record_dwarf = False
    if perf is None:
        checks.append(Check("perf", "FAIL", "not found on PATH", rp.install_hint()))
    else:
        perf_info = _perf.inspect(perf)
        version, text = perf_info.version, perf_info.text
        if version is None:
            checks.append(Check("perf", "FAIL", f"{perf} does not run: {text}",
                                f"install the perf matching your kernel: {rp.install_hint()}"))
            perf = None
        else:
            checks.append(Check("perf", "ok", f"{perf}: {text}"))
            jit_ok = perf_info.jit_capable
            checks.append(Check(
                "perf for jit", "ok" if jit_ok else "warn",
                f"{'has' if jit_ok else 'may lack'} the genelf/unwind fixes jit mode needs "
                f"(perf 6.8+, or 6.7.2+, 6.6.x, 6.1.75+)",
                None if jit_ok else "a newer perf (Debian bookworm: apt-get install -t "
                "bookworm-backports linux-perf), or an interpreter with frame pointers (map mode)"))
            checks.append(Check("perf unwinder", "info", perf_info.describe()))

    # Privileges.
    paranoid = rec.read_paranoid()
    if os.geteuid() == 0:
        checks.append(Check("privileges", "ok", f"root (kernel.perf_event_paranoid = {paranoid})"))
    else:
        caps = capabilities()
        if caps >> 38 & 1 or caps >> 21 & 1:
            checks.append(Check("privileges", "ok", "CAP_PERFMON/CAP_SYS_ADMIN"))
        elif paranoid.lstrip("-").isdigit() and int(paranoid) <= 1:
            checks.append(Check("privileges", "ok", f"kernel.perf_event_paranoid = {paranoid}"))
        elif paranoid == "2":
            checks.append(Check("privileges", "warn",
                                "kernel.perf_event_paranoid = 2: your own processes, user space "
                                "only (no kernel frames)", "sudo sysctl kernel.perf_event_paranoid=1"))
        else:
            checks.append(Check("privileges", "FAIL", f"kernel.perf_event_paranoid = {paranoid}: "
                                "perf may not record as your user",
                                "sudo sysctl kernel.perf_event_paranoid=1 (or run as root)"))

    # What recording actually does here.
    if perf is not None:
        record_fp, why_fp = probe_record(perf, rec.CALL_GRAPH["fp"])
        record_dwarf, why_dwarf = probe_record(perf, rec.CALL_GRAPH["jit"])
        if record_fp and record_dwarf:
            checks.append(Check("perf record", "ok", "works with fp and dwarf call graphs (-k 1)"))
        elif record_fp or record_dwarf:
            which, why = ("fp", why_dwarf) if record_fp else ("dwarf", why_fp)
            checks.append(Check("perf record", "warn", f"works with {which} call graphs only: {why}",
                                "sudo sysctl kernel.perf_event_mlock_kb=4096" if "mlock" in why or
                                "mapping" in why else None))
        else:
            fix = "sudo sysctl kernel.perf_event_paranoid=1 (or run as root)"
            if Path("/.dockerenv").exists() or "container" in os.environ:
                fix += ("; in a container, allow perf_event_open (docker run --cap-add PERFMON "
                        "or --privileged)")
            checks.append(Check("perf record", "FAIL", f"perf cannot record here:\n{why_fp}", fix))

    if perf is not None and (record_fp or record_dwarf):
        zstd = _perf.compression(perf)
        checks.append(Check(
            "compression", "ok" if zstd.works else "info",
            "perf record -z (zstd) works: record writes compressed recordings (10x smaller or "
            "more with dwarf stacks; jit mode excepted)" if zstd.works else
            f"perf record -z does not work here ({zstd.why}): recordings are uncompressed, about "
            f"16 MB per second per busy process with dwarf stacks",
            None if zstd.works else "a perf built with zstd (Debian's linux-perf is)"))

    full: List[str] = []
    if fp and record_fp:
        full.append("map mode (--call-graph fp)")
    if record_dwarf:
        # perf reads the images' .symtab and .eh_frame like any shared object's.
        full.append("elf mode (dwarf, perf alone)")
    if jit_ok and record_dwarf and perf_info is not None and perf_info.unwinder is not None:
        full.append("jit mode (dwarf + perf inject --jit)")
    works = all(c.state != "FAIL" for c in checks) and (record_fp or record_dwarf)
    auto = "map" if fp else "elf"

    print("perftramp doctor")
    for check in checks:
        lines = check.detail.splitlines() or [""]
        print(f"  {check.state:<5} {check.name:<15} {lines[0]}")
        for line in lines[1:]:
            print(f"  {'':<5} {'':<15} {line}")
        if check.fix:
            print(f"  {'':<5} {'':<15} fix: {check.fix}")
    if full:
        print(f"full Python stacks here: {', '.join(full)}")
    elif record_fp or record_dwarf:
        print("full Python stacks here: none (innermost Python frame only)")
    print("modes: map = /tmp/perf-<pid>.map, full stacks only with frame pointers (--call-graph fp); "
          "elf = trampolines mapped from ELF images perf reads itself, full stacks with "
          "--call-graph dwarf on any interpreter; jit = a jitdump, full stacks after perf inject --jit")
    if works:
        print(f"`python -m perftramp record -- {interpreter} app.py` will use {auto} mode")
    print("recording will work" if works else "recording will NOT work: see FAIL above")
    return 0 if works else 1
