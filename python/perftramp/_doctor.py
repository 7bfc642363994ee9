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
from ._measure import is_cpu_clock
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


def probe_perf_record(perf: str, args: List[str], timeout: float = 60) -> Tuple[bool, str]:
    """Runs `perf record ARGS -o <tmp> -- true` quietly: (it worked, perf's first error lines)."""
    with tempfile.TemporaryDirectory(prefix="perftramp-doctor-") as tmp:
        data = os.path.join(tmp, "perf.data")
        try:
            proc = subprocess.run([perf, "record", *args, "-o", data, "--", "true"],
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, str(err)
        ok = proc.returncode == 0 and os.path.isfile(data)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return ok, ("" if ok else "\n".join(lines[:6]))


def probe_record(perf: str, call_graph: List[str]) -> Tuple[bool, str]:
    """Records `true` the way `record` would: the only sure test (containers, seccomp, mlock)."""
    return probe_perf_record(perf, ["-F", "99", *call_graph])


def event_problem(perf: str, event: str) -> Optional[str]:
    """What `record -e EVENT` calls before it runs the program: None when perf records EVENT
    itself here, else why not. perf silently records cpu-clock instead of a hardware event the
    machine lacks (cycles, instructions on a VM without a PMU): a view weighed by it would be
    CPU time under the event's name."""
    with tempfile.TemporaryDirectory(prefix="perftramp-event-") as tmp:
        data = os.path.join(tmp, "perf.data")
        try:
            proc = subprocess.run([perf, "record", "-e", event, "-o", data, "--", "true"],
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode != 0 or not os.path.isfile(data):
                lines = [line for line in proc.stderr.splitlines() if line.strip()][:4]
                return f"perf cannot record {event!r} here: " + " / ".join(lines)
            listed = subprocess.run([perf, "evlist", "-i", data], capture_output=True, text=True,
                                    timeout=60).stdout.split()
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"perf cannot record {event!r} here: {err}"
    recorded = listed[0] if listed else ""
    if is_cpu_clock(recorded) and not is_cpu_clock(event):
        return (f"perf records {recorded} in place of {event} here: this machine has no hardware "
                f"counter for it (a VM without a PMU, or no access to it). Software events work: "
                f"-e page-faults, -e context-switches (python -m perftramp doctor lists them)")
    return None


# --- Off-CPU time: the scheduler's tracepoints ---------------------------------------------------

#: Where tracefs is (the second: kernels before 4.1, and debugfs's automount of it).
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
SCHED_SWITCH = "sched:sched_switch"
TRACEFS_MOUNT_FIX = "sudo mount -t tracefs nodev /sys/kernel/tracing"
OFF_CPU_PARANOID_FIX = "sudo sysctl kernel.perf_event_paranoid=-1"


def probe_off_cpu(perf: str) -> Tuple[bool, str]:
    """The sure test for `record --off-cpu`: perf records the scheduler's switch tracepoint."""
    return probe_perf_record(perf, ["-e", SCHED_SWITCH, "-c", "1"], timeout=30)


def tracefs_mounts(mounts: str = "/proc/self/mounts") -> List[str]:
    """Mount points of tracefs this process sees (a chroot sees only those under its root)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            # /proc/self/mounts writes spaces, tabs, newlines and backslashes as octal escapes.
            found.append(fields[1].encode().decode("unicode_escape"))
    return found


def tracefs_state() -> Tuple[Optional[str], str]:
    """(tracefs's directory or None, "ok" | "unmounted" | "unreadable" | "missing"): can this
    user read events/sched/sched_switch/{id,format} there, which perf needs for the tracepoint."""
    mounted = tracefs_mounts()
    root = next((d for d in TRACEFS if d in mounted or os.path.isdir(os.path.join(d, "events"))),
                None)
    if root is None:
        return None, "unmounted"
    path = root
    for part in ("events", "sched", "sched_switch"):
        if not os.access(path, os.X_OK):
            return root, "unreadable"
        path = os.path.join(path, part)
        if not os.path.isdir(path):
            return root, "missing"
    if not all(os.access(os.path.join(path, f), os.R_OK) for f in ("id", "format")):
        return root, "unreadable"
    return root, "ok"


def perfmon_capable() -> bool:
    caps = capabilities()
    return os.geteuid() == 0 or bool(caps >> 38 & 1 or caps >> 21 & 1)


def off_cpu_diagnosis(perf: str) -> Optional[Tuple[str, str]]:
    """None when perf records sched:sched_switch here, else (what is missing, the exact fix)."""
    ok, why = probe_off_cpu(perf)
    if ok:
        return None
    problems: List[str] = []
    fixes: List[str] = []
    root, state = tracefs_state()
    if state == "unmounted":
        problems.append("tracefs is not mounted (no /sys/kernel/tracing/events), so perf cannot "
                        "find the tracepoint")
        fixes.append(TRACEFS_MOUNT_FIX)
    elif state == "unreadable":
        problems.append(f"{root}/events/sched/sched_switch/{{id,format}} is not readable by "
                        f"this user (uid {os.geteuid()})")
        chmod = f"sudo chmod -R o+rX {root}"
        if root and root.startswith("/sys/kernel/debug/"):
            chmod = f"sudo chmod o+rx /sys/kernel/debug && {chmod}"
        fixes.append(f"{chmod} (or run as root)")
    elif state == "missing":
        problems.append(f"this kernel has no {root}/events/sched/sched_switch (a kernel built "
                        "without tracepoints, CONFIG_TRACEPOINTS)")
    if not perfmon_capable():
        paranoid = rec.read_paranoid()
        if not (paranoid.lstrip("-").isdigit() and int(paranoid) <= -1):
            problems.append(f"kernel.perf_event_paranoid = {paranoid}: tracepoints need -1 "
                            "(or root, CAP_PERFMON)")
            fixes.append(f"{OFF_CPU_PARANOID_FIX} (or run as root)")
    if not problems:
        problems.append(f"perf cannot record the tracepoint {SCHED_SWITCH}")
    what = (f"record --off-cpu needs perf to record the scheduler tracepoint {SCHED_SWITCH}: "
            + "; ".join(problems))
    if why:
        what += " (perf says: " + " ".join(why.split()) + ")"
    if not fixes:
        fixes.append("run as root, or a kernel with tracepoints; `perf record -e "
                     f"{SCHED_SWITCH} -c 1 -- true` shows perf's whole error")
    return what, "; then ".join(fixes)


def off_cpu_problem(perf: str) -> Optional[str]:
    """What `record --off-cpu` calls before it runs the program: None when perf can record the
    scheduler's switches here, else one paragraph naming what is missing and the exact fix."""
    found = off_cpu_diagnosis(perf)
    if found is None:
        return None
    what, fix = found
    return f"{what}. Fix: {fix}."


# --- Other events (record -e) ----------------------------------------------------------------------

#: Software events: counted by the kernel itself (no PMU), for one's own processes at paranoid <= 2.
SOFTWARE_EVENTS = ("page-faults", "context-switches", "cpu-migrations", "cpu-clock")
HARDWARE_EVENTS = ("cycles", "instructions")


def probe_software_events(perf: str) -> Tuple[bool, str]:
    return probe_perf_record(perf, ["-e", "page-faults", "-c", "1"], timeout=30)


def stat_events(perf: str, events: Tuple[str, ...]) -> Tuple[Dict[str, Optional[int]], str]:
    """`perf stat` of `true`: each event's count, None where perf says <not supported> or
    <not counted>; an empty dict and perf's words when perf stat itself fails."""
    try:
        proc = subprocess.run([perf, "stat", "-x", ",", "-e", ",".join(events), "--", "true"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {}, str(err)
    counts: Dict[str, Optional[int]] = {}
    for line in proc.stderr.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and fields[2].split(":")[0] in events:
            value = fields[0].strip()
            counts[fields[2].split(":")[0]] = int(value) if value.isdigit() else None
    if not counts and "not supported" in proc.stderr:
        # perf 7 does not count at all when none of the events exists: "Error: No supported
        # events found. The cycles event is not supported."
        counts = {event: None for event in events}
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return counts, ("" if counts else " ".join(lines[:3]))


def event_checks(perf: str) -> List[Check]:
    """`record -e EVENT`: do software events record, and are there hardware counters at all."""
    checks: List[Check] = []
    ok, why = probe_software_events(perf)
    if ok:
        checks.append(Check("software events", "ok", "perf records page-faults, context-switches, "
                            "...: `record -e page-faults` works"))
    else:
        paranoid = rec.read_paranoid()
        fix = None
        if not perfmon_capable() and not (paranoid.lstrip("-").isdigit() and int(paranoid) <= 2):
            fix = "sudo sysctl kernel.perf_event_paranoid=2 (your own processes; or run as root)"
        checks.append(Check("software events", "warn", "perf cannot record page-faults here: "
                            + (" ".join(why.split()) or "no reason given"), fix))
    counts, why = stat_events(perf, HARDWARE_EVENTS)
    if counts and all(counts.get(e) is not None for e in HARDWARE_EVENTS):
        checks.append(Check("hw counters", "ok", "cycles, instructions: this CPU's counters are "
                            "available to `record -e`"))
    elif counts:
        missing = [e for e in HARDWARE_EVENTS if counts.get(e) is None]
        checks.append(Check("hw counters", "info", f"{', '.join(missing)}: <not supported>: no "
                            "hardware counters here (a VM without a PMU, or one not passed "
                            "through); `record -e` works with software events (page-faults, "
                            "context-switches, cpu-clock)"))
    else:
        checks.append(Check("hw counters", "info", f"perf stat -e cycles failed: {why}"))
    return checks


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

    if perf is not None and (record_fp or record_dwarf):
        off_cpu = off_cpu_diagnosis(perf)
        if off_cpu is None:
            checks.append(Check("off-CPU", "ok", f"scheduler tracepoints: perf records {SCHED_SWITCH}"
                                ": `record --off-cpu` works"))
        else:
            what, fix = off_cpu
            checks.append(Check("off-CPU", "warn", f"scheduler tracepoints: {what}", fix))
        checks.extend(event_checks(perf))

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
