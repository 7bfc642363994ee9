"""`doctor` on what `record --off-cpu` and `record -e EVENT` need: the scheduler's tracepoints
(tracefs mounted and readable, kernel.perf_event_paranoid, and a real `perf record -e
sched:sched_switch`), software events (page-faults) and hardware counters (cycles).
_doctor.off_cpu_problem is what `record --off-cpu` asks before it runs the program.

Unit tests with the probes mocked (both outcomes, each cause and its fix), then the real thing on
this machine (root, tracefs mounted: the probe succeeds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from perftramp import _doctor as doctor

PERF_SAYS = "event syntax error: 'sched:sched_switch'\n  \\___ unknown tracepoint"


@pytest.fixture
def failing_probe(monkeypatch):
    """The probe fails as perf does without tracefs; the caller sets the rest of the machine."""
    monkeypatch.setattr(doctor, "probe_off_cpu", lambda perf: (False, PERF_SAYS))
    monkeypatch.setattr(doctor, "perfmon_capable", lambda: True)
    monkeypatch.setattr(doctor, "tracefs_state", lambda: ("/sys/kernel/tracing", "ok"))


def test_off_cpu_problem_is_none_when_the_probe_records(monkeypatch):
    monkeypatch.setattr(doctor, "probe_off_cpu", lambda perf: (True, ""))
    # Whatever the static checks would say: the probe is the sure test.
    monkeypatch.setattr(doctor, "tracefs_state", lambda: (None, "unmounted"))
    assert doctor.off_cpu_problem("perf") is None
    assert doctor.off_cpu_diagnosis("perf") is None


def test_off_cpu_problem_without_tracefs_says_how_to_mount_it(monkeypatch, failing_probe):
    monkeypatch.setattr(doctor, "tracefs_state", lambda: (None, "unmounted"))
    message = doctor.off_cpu_problem("perf")
    assert message is not None
    assert "sched:sched_switch" in message and "tracefs is not mounted" in message, message
    assert "Fix: sudo mount -t tracefs nodev /sys/kernel/tracing." in message, message
    assert "unknown tracepoint" in message  # perf's own words, on one line
    assert "\n" not in message  # one paragraph


def test_off_cpu_problem_unreadable_tracefs_and_paranoid(monkeypatch, failing_probe):
    monkeypatch.setattr(doctor, "tracefs_state", lambda: ("/sys/kernel/tracing", "unreadable"))
    monkeypatch.setattr(doctor, "perfmon_capable", lambda: False)
    monkeypatch.setattr(doctor.rec, "read_paranoid", lambda: "2")
    message = doctor.off_cpu_problem("perf")
    assert message is not None
    assert "/sys/kernel/tracing/events/sched/sched_switch/{id,format} is not readable" in message
    assert "kernel.perf_event_paranoid = 2: tracepoints need -1" in message, message
    assert ("Fix: sudo chmod -R o+rX /sys/kernel/tracing (or run as root); then "
            "sudo sysctl kernel.perf_event_paranoid=-1 (or run as root).") in message, message


def test_off_cpu_problem_readable_but_paranoid(monkeypatch, failing_probe):
    monkeypatch.setattr(doctor, "perfmon_capable", lambda: False)
    monkeypatch.setattr(doctor.rec, "read_paranoid", lambda: "1")
    message = doctor.off_cpu_problem("perf")
    assert "chmod" not in message and "mount" not in message, message
    assert "Fix: sudo sysctl kernel.perf_event_paranoid=-1 (or run as root)." in message
    # -1 is enough: then only perf's words remain to go by.
    monkeypatch.setattr(doctor.rec, "read_paranoid", lambda: "-1")
    message = doctor.off_cpu_problem("perf")
    assert "paranoid" not in message and "perf cannot record the tracepoint" in message, message
    assert "unknown tracepoint" in message and "perf record -e sched:sched_switch" in message


def test_off_cpu_problem_debugfs_tracing_needs_debugfs_opened(monkeypatch, failing_probe):
    monkeypatch.setattr(doctor, "tracefs_state",
                        lambda: ("/sys/kernel/debug/tracing", "unreadable"))
    message = doctor.off_cpu_problem("perf")
    assert ("sudo chmod o+rx /sys/kernel/debug && sudo chmod -R o+rX /sys/kernel/debug/tracing"
            in message), message


def test_tracefs_mounts_are_read_from_proc_mounts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("sysfs /sys sysfs rw 0 0\n"
                      "tracefs /sys/kernel/tracing tracefs rw,relatime 0 0\n"
                      "none /opt/my\\040root/sys/kernel/tracing tracefs rw 0 0\n"
                      "debugfs /sys/kernel/debug debugfs rw 0 0\n")
    expected = ["/sys/kernel/tracing", "/opt/my root/sys/kernel/tracing"]
    assert doctor.tracefs_mounts(str(mounts)) == expected
    assert doctor.tracefs_mounts(str(tmp_path / "none")) == []


def test_tracefs_state_of_an_unmounted_tracefs(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "TRACEFS", (str(tmp_path / "tracing"),))
    monkeypatch.setattr(doctor, "tracefs_mounts", lambda: [])
    (tmp_path / "tracing").mkdir()  # as /sys/kernel/tracing is before tracefs is mounted on it
    assert doctor.tracefs_state() == (None, "unmounted")
    events = tmp_path / "tracing" / "events"
    (events / "sched").mkdir(parents=True)
    assert doctor.tracefs_state() == (str(tmp_path / "tracing"), "missing")
    switch = events / "sched" / "sched_switch"
    switch.mkdir()
    (switch / "id").write_text("316\n")
    (switch / "format").write_text("name: sched_switch\n")
    assert doctor.tracefs_state() == (str(tmp_path / "tracing"), "ok")


def test_event_checks_without_hardware_counters(monkeypatch):
    monkeypatch.setattr(doctor, "probe_software_events", lambda perf: (True, ""))
    monkeypatch.setattr(doctor, "stat_events",
                        lambda perf, events: ({"cycles": None, "instructions": None}, ""))
    checks = {c.name: c for c in doctor.event_checks("perf")}
    assert checks["software events"].state == "ok"
    assert "`record -e page-faults` works" in checks["software events"].detail
    hw = checks["hw counters"]
    assert hw.state == "info"
    assert hw.detail.startswith("cycles, instructions: <not supported>: no hardware counters "
                                "here (a VM without a PMU"), hw.detail
    assert "software events (page-faults" in hw.detail


def test_event_checks_with_hardware_counters_and_no_software_events(monkeypatch):
    monkeypatch.setattr(doctor, "probe_software_events",
                        lambda perf: (False, "Error:\nNo permission to enable page-faults event."))
    monkeypatch.setattr(doctor, "stat_events",
                        lambda perf, events: ({"cycles": 1234567, "instructions": 2345678}, ""))
    monkeypatch.setattr(doctor, "perfmon_capable", lambda: False)
    monkeypatch.setattr(doctor.rec, "read_paranoid", lambda: "3")
    checks = {c.name: c for c in doctor.event_checks("perf")}
    assert checks["hw counters"].state == "ok"
    sw = checks["software events"]
    assert sw.state == "warn"
    assert sw.detail == ("perf cannot record page-faults here: Error: No permission to enable "
                         "page-faults event."), sw.detail
    assert sw.fix is not None and "kernel.perf_event_paranoid=2" in sw.fix


def fake_perf(perf: str, tmp_path: Path, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "perf"
    fake.write_text(f"#!/bin/sh\n{body}\nexec {os.path.realpath(perf)} \"$@\"\n")
    fake.chmod(0o755)
    return fake


def test_stat_events_reads_perf_stat(perf, tmp_path):
    counts, why = doctor.stat_events(perf, ("page-faults", "cycles"))
    assert isinstance(counts.get("page-faults"), int) and counts["page-faults"] > 0, (counts, why)
    assert "cycles" in counts  # a count, or None (<not supported>, as in a VM)
    fake = fake_perf(perf, tmp_path, 'echo "perf: unknown command stat" >&2; exit 1')
    counts, why = doctor.stat_events(str(fake), ("cycles",))
    assert counts == {} and why == "perf: unknown command stat"


def test_stat_events_when_perf_counts_nothing(tmp_path):
    """perf 7.2 in a VM without a PMU: no count at all, only an error."""
    fake = tmp_path / "perf"
    fake.write_text("#!/bin/sh\necho 'Error:' >&2\necho 'No supported events found.' >&2\n"
                    "echo 'The cycles event is not supported.' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert doctor.stat_events(str(fake), ("cycles", "instructions")) == (
        {"cycles": None, "instructions": None}, "")


# --- The real thing ------------------------------------------------------------------------------

@pytest.mark.perf
def test_off_cpu_probe_succeeds_here(perf):
    """This machine: root, tracefs mounted at /sys/kernel/tracing (the sid chroot: by
    scripts/sid-chroot.sh)."""
    if os.geteuid() != 0:
        pytest.skip("the probe is expected to succeed as root")
    assert doctor.tracefs_state()[1] == "ok", doctor.tracefs_state()
    assert doctor.probe_off_cpu(perf) == (True, "")
    assert doctor.off_cpu_problem(perf) is None


def hardware_counters_here(perf: str) -> bool:
    proc = subprocess.run([perf, "stat", "-e", "cycles", "true"], capture_output=True, text=True)
    return proc.returncode == 0 and "<not supported>" not in proc.stderr


@pytest.mark.perf
def test_doctor_reports_off_cpu_and_events_here(perf):
    proc = cli("doctor")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    if os.geteuid() == 0:
        assert re.search(r"ok\s+off-CPU\s+scheduler tracepoints: perf records sched:sched_switch: "
                         r"`record --off-cpu` works", out), out
    assert re.search(r"ok\s+software events\s+perf records page-faults", out), out
    if hardware_counters_here(perf):
        assert re.search(r"ok\s+hw counters\s+cycles, instructions", out), out
    else:
        assert re.search(r"info\s+hw counters\s+cycles, instructions: <not supported>: no "
                         r"hardware counters here \(a VM without a PMU", out), out


@pytest.mark.perf
def test_doctor_when_perf_cannot_record_tracepoints(perf, tmp_path):
    """A perf that refuses the tracepoint (as without tracefs): a warning naming the fix, and
    recording still works."""
    fake = fake_perf(perf, tmp_path, 'case "$*" in *sched:sched_switch*) echo "event syntax error: '
                                     "'sched:sched_switch'\" >&2; echo '  \\___ unknown tracepoint' "
                                     '>&2; exit 129;; esac')
    proc = cli("doctor", env={"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"warn\s+off-CPU\s+scheduler tracepoints: record --off-cpu needs perf to "
                     r"record the scheduler tracepoint sched:sched_switch: ", out), out
    assert "unknown tracepoint" in out
    assert "recording will work" in out


def test_event_problem_names_a_hardware_event_perf_would_replace(perf):
    """perf records cpu-clock, silently, in place of a hardware event the machine lacks: record -e
    refuses then, instead of drawing CPU time under the event's name."""
    counts, _ = doctor.stat_events(perf, ("cycles",))
    problem = doctor.event_problem(perf, "cycles")
    if counts.get("cycles") is None:  # no PMU here (this project's machine)
        # perf 6.1 falls back to cpu-clock, perf 7 to task-clock.
        assert problem is not None and re.search(r"(cpu|task)-clock in place of cycles", problem), problem
    else:
        assert problem is None, problem
    assert doctor.event_problem(perf, "page-faults") is None
    bad = doctor.event_problem(perf, "no-such-event")
    assert bad is not None and "cannot record 'no-such-event'" in bad


def test_record_refuses_an_event_it_cannot_record(perf, tmp_path):
    proc = cli("record", "-e", "no-such-event", "-o", str(tmp_path / "rec"), "--", sys.executable,
               "-c", "pass")
    assert proc.returncode == 2, proc.stderr
    assert "-e no-such-event: perf cannot record" in proc.stderr
    assert not (tmp_path / "rec" / "perf.data").exists()
