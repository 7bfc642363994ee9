"""perftramp's command line: from a Python program to a flamegraph of its Python functions.

    python -m perftramp record [-o DIR] [--mode auto|map|jit|elf] [-F HZ] [--force] [--no-compress]
                              -- CMD [ARGS...]
    python -m perftramp record --pid PID [--duration S] [-o DIR]
    python -m perftramp toggle PID [--signal USR2]
    python -m perftramp report DIR [--native all] [--format pprof|speedscope|gecko [-o FILE]]
                              [--python-only | --no-python] [--top N]
    python -m perftramp doctor

Messages go to stderr (the recorded program owns stdout); the table of Python functions goes to
stdout. Exit status: 0, the recorded command's own status when it failed, 1 when perftramp or
perf failed, 2 for a usage error, 127 when the command does not exist, 130 after Ctrl-C (what
was recorded until then is still drawn).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from ._report import CliError


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perftramp",
        description="Profile Python programs with Linux perf, Python functions named "
                    "py::<qualname>:<file>, native and kernel frames kept.")
    from . import __version__
    from ._record import DEFAULT_HZ

    parser.add_argument("--version", action="version", version=f"perftramp {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="{record,report,toggle,doctor}")
    sub.required = True

    record = sub.add_parser(
        "record", help="run a command (or attach to --pid) under perf record, then draw it",
        description="Run CMD under perf record with perftramp enabled in its Python processes "
                    "(through PERFTRAMP/PERFTRAMP_DIR, read by perftramp's start hook), then write "
                    "a flamegraph SVG, collapsed stacks and a table of the costliest Python "
                    "functions into DIR. With --pid: turn perftramp on in a live process started "
                    "with PERFTRAMP_SIGNAL=USR2 (or, on CPython 3.14+, in any process, through "
                    "sys.remote_exec), record it for --duration seconds, turn it off.",
        usage="%(prog)s [-o DIR] [--mode {auto,map,jit,elf}] [-F HZ] [--off-cpu | -e EVENT] [--force] "
              "[--no-compress] -- CMD [ARGS...]\n"
              "       %(prog)s --pid PID [--duration S] [-o DIR] [--off-cpu | -e EVENT] [--force] "
              "[--no-compress]")
    record.add_argument("-o", "--output", type=Path, metavar="DIR",
                        help="output directory (default: ./perftramp-<date>-<time>)")
    record.add_argument("--mode", choices=("auto", "map", "jit", "elf"), default="auto",
                        help="auto (default): map + frame pointers when CMD's Python has them, "
                             "else elf + dwarf; map; jit (dwarf + perf inject); elf")
    record.add_argument("-F", "--frequency", type=_positive_int, metavar="HZ",
                        help=f"samples per second (default {DEFAULT_HZ['fp']} with fp stacks, "
                             f"{DEFAULT_HZ['dwarf']} with dwarf: each dwarf sample copies 64 KiB "
                             f"of stack)")
    measured = record.add_mutually_exclusive_group()
    measured.add_argument("--off-cpu", action="store_true",
                          help="also record every scheduler switch (the sched:sched_switch "
                               "tracepoint, with stacks): where each thread waits and why (GIL, "
                               "lock, I/O, sleep, page fault, preempted), drawn with the CPU time "
                               "in flamegraph.wall.svg and alone in flamegraph.off-cpu.svg; needs "
                               "root, or kernel.perf_event_paranoid=-1 and a readable tracefs "
                               "(python -m perftramp doctor checks)")
    measured.add_argument("-e", "--event", metavar="EVENT",
                          help="sample this perf event instead of CPU time, and weigh the views "
                               "by its count: page-faults (memory touched), context-switches, "
                               "cycles or instructions where the machine has hardware counters "
                               "(perf list shows them)")
    record.add_argument("-c", "--period", type=_positive_int, metavar="N",
                        help="with -e: sample every Nth event (default for page faults: 100; "
                             "major faults, context switches, migrations: 1; other events: a "
                             "rate, -F)")
    record.add_argument("--force", action="store_true", help="replace the recording in an existing DIR")
    record.add_argument("--pid", type=_positive_int,
                        help="record this live process instead of a command: one started with "
                             "PERFTRAMP_SIGNAL=USR2 (or calling perftramp.install_signal_toggle()), "
                             "or, on CPython 3.14+, any process without preparation (perftramp is "
                             "turned on and off in it with sys.remote_exec; needs perftramp "
                             "installed in its Python, and a debugger's rights over it: ptrace)")
    record.add_argument("--duration", type=_positive_float, default=10.0, metavar="S",
                        help="with --pid: seconds to record (default 10; Ctrl-C stops earlier)")
    record.add_argument("--signal", metavar="SIG",
                        help="with --pid: the toggle signal (default: the process's "
                             "PERFTRAMP_SIGNAL, else USR2)")
    record.add_argument("--keep-tmp", action="store_true",
                        help="with --pid: leave the jitted-*.so files perf inject writes next to "
                             "the process's jitdump (default: moved into DIR/jit)")
    record.add_argument("--no-compress", dest="compress", action="store_false",
                        help="write perf.data uncompressed (default: compressed with zstd, perf "
                             "record -z, where this perf supports it; jit mode never is: perf "
                             "inject --jit cannot read compressed recordings)")
    _report_options(record)
    record.add_argument("--perf-args", default="", metavar="ARGS",
                        help="extra perf record options, e.g. --perf-args='-m 64'")
    record.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")

    report = sub.add_parser(
        "report", help="draw a recording again (optionally keeping only or hiding Python frames)",
        description="Re-render the flamegraph, collapsed stacks and table of a recording "
                    "directory, from its stacks.collapsed (or from perf data with --rescan, or "
                    "when it has none).")
    report.add_argument("directory", type=Path, metavar="DIR")
    which = report.add_mutually_exclusive_group()
    which.add_argument("--python-only", action="store_true",
                       help="keep only Python (py::) frames: writes flamegraph.python-only.svg")
    which.add_argument("--no-python", action="store_true",
                       help="hide Python frames (native and kernel only): writes flamegraph.no-python.svg")
    report.add_argument("--rescan", action="store_true",
                        help="read perf.data (perf.jit.data) again instead of stacks.raw")
    report.add_argument("--format", choices=("svg", "pprof", "speedscope", "gecko"), default="svg",
                        help="svg (default): flamegraph.svg and top.txt; pprof: gzipped "
                             "profile.proto (go tool pprof, Pyroscope, Parca, Grafana, Cloud "
                             "Profiler); speedscope; gecko (Firefox Profiler)")
    report.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="with --format: the file to write (default: DIR/profile.pb.gz, "
                             "DIR/profile.speedscope.json, DIR/profile.gecko.json)")
    _report_options(report)

    toggle = sub.add_parser(
        "toggle", help="turn perftramp on/off in a live process (its signal toggle)",
        description="Send the toggle signal to a process started with PERFTRAMP_SIGNAL (or that "
                    "calls perftramp.install_signal_toggle()), then say what it did.")
    toggle.add_argument("pid", type=_positive_int, metavar="PID")
    toggle.add_argument("--signal", metavar="SIG",
                        help="default: the process's PERFTRAMP_SIGNAL, else USR2")

    doctor = sub.add_parser(
        "doctor", help="check perf, privileges, frame pointers: what works here and how to fix the rest")
    doctor.add_argument("--python", metavar="PATH",
                        help="check this interpreter instead of the one running doctor")
    return parser


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--native", choices=("python", "all"), default="python",
                        help="python (default): the Python view, one row per Python call, "
                             "CPython's call machinery folded, other native frames kept; all: "
                             "every frame as perf recorded it (flamegraph.all-frames.svg)")
    parser.add_argument("--top", type=_positive_int, default=15, metavar="N",
                        help="rows of the table of Python functions (default 15)")
    parser.add_argument("--inline", action="store_true",
                        help="show inlined native functions as frames (perf script --inline; slower)")
    parser.add_argument("--unwinder", choices=("perftramp", "perf"), default="perftramp",
                        help="who reads perf.data: perftramp (default; each process unwound with "
                             "its own mappings, so processes started by exec keep their Python "
                             "frames) or perf (perf script: perf's own unwinder; --inline uses it)")


def split_command(argv: Sequence[str]) -> tuple[List[str], Optional[List[str]]]:
    """`record ... -- CMD ARGS`: the part after the first `--` is the command, untouched."""
    args = list(argv)
    if "record" in args[:1] and "--" in args:
        index = args.index("--")
        return args[:index], args[index + 1:]
    return args, None


def cmd_record(opts: argparse.Namespace, command: List[str]) -> int:
    from . import _record, _report

    output = opts.output or Path(time.strftime("perftramp-%Y%m%d-%H%M%S"))
    try:
        perf_args = shlex.split(opts.perf_args)
    except ValueError as err:
        raise CliError(f"--perf-args: {err}", 2) from None
    if opts.period and not opts.event:
        raise CliError("--period applies to -e EVENT (CPU time is sampled at a rate: -F)", 2)
    sampling = _record.Sampling(off_cpu=opts.off_cpu, event=opts.event, period=opts.period)
    options = _record.RecordOptions(
        frequency=opts.frequency, top=opts.top, inline=opts.inline, unwinder=opts.unwinder,
        perf_args=tuple(perf_args), all_frames=opts.native == "all", compress=opts.compress,
        sampling=sampling)
    if (opts.off_cpu or opts.event) and (opts.inline or opts.unwinder == "perf"):
        raise CliError("--off-cpu and -e need perftramp's reader (it weighs samples and builds "
                       "off-CPU time): drop --inline and --unwinder perf", 2)
    if opts.pid is not None:
        if command:
            raise CliError("give either --pid PID or a command, not both", 2)
        if opts.mode != "auto":
            raise CliError("--mode does not apply to --pid: the live process decides its mode "
                           "(PERFTRAMP_MODE, default jit)", 2)
        from . import _live

        perf = _report.find_perf()
        return _live.record_pid(perf, opts.pid, duration=opts.duration, output=output,
                                force=opts.force, requested_signal=opts.signal,
                                keep_tmp=opts.keep_tmp, options=options)
    if opts.keep_tmp:
        raise CliError("--keep-tmp applies to --pid only (a command's files go to DIR/jit)", 2)
    if not command:
        raise CliError("record needs a command: python -m perftramp record -- python app.py "
                       "(or --pid PID)", 2)
    perf = _report.find_perf()
    return _record.record_command(perf, command, output=output, mode=opts.mode, force=opts.force,
                                  options=options)


def cmd_report(opts: argparse.Namespace) -> int:
    from . import _report

    directory: Path = opts.directory
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory (record into it first: python -m "
                       f"perftramp record -o {directory} -- python app.py)", 2)
    python = True if opts.python_only else False if opts.no_python else None
    all_frames = opts.native == "all"
    if opts.format != "svg":
        if python is not None:
            raise CliError("--python-only/--no-python apply to the SVG; --format exports the "
                           "Python view (or, with --native all, every frame)", 2)
        return _export(opts, directory, all_frames)
    if opts.output is not None:
        raise CliError("-o FILE goes with --format pprof|speedscope|gecko (the SVG is written "
                       "into DIR)", 2)
    try:
        report = _report.finish(None, directory, rescan=opts.rescan, python=python,
                                limit=opts.top, inline=opts.inline, unwinder=opts.unwinder,
                                all_frames=all_frames)
    except KeyboardInterrupt:
        raise CliError("interrupted", 130) from None
    sys.stdout.write(report.table)
    sys.stdout.flush()
    for line in _report.summary_lines(report, _report.read_meta(directory)):
        _report.say(line)
    _report.say("wrote " + ", ".join(str(p) for p in report.written))
    return 0


def _export(opts: argparse.Namespace, directory: Path, all_frames: bool) -> int:
    from . import _folding, _report

    meta = _report.read_meta(directory)
    path = opts.output or directory / _report.EXPORTS[opts.format]
    try:
        stacks, _ = _report.load_stacks(None, directory, rescan=opts.rescan, inline=opts.inline,
                                        unwinder=opts.unwinder, meta=meta)
        # An off-CPU recording exports its wall view: on-CPU and off-CPU time side by side.
        wall = _report.load_wall(directory)
        measure = _report.view_measure(meta, wall=wall is not None)
        with _report.Progress(f"writing {opts.format}"):
            view = _folding.python_view(wall if wall is not None else stacks, all_frames=all_frames)
            command = meta.get("command")
            title = f"perftramp: {' '.join(command)}" if isinstance(command, list) else f"perftramp: {directory}"
            _report.export(view, opts.format, path, meta=meta, title=title, measure=measure)
    except KeyboardInterrupt:
        raise CliError("interrupted", 130) from None
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror or err}") from None
    samples = sum(s.count for s in view)
    _report.say(f"wrote {path} ({opts.format}, {samples:,} {measure.label}, "
                f"{path.stat().st_size / 1e6:,.2f} MB)")
    return 0


def cmd_toggle(opts: argparse.Namespace) -> int:
    from . import _live

    return _live.toggle_command(opts.pid, opts.signal)


def cmd_doctor(opts: argparse.Namespace) -> int:
    from . import _doctor

    return _doctor.run_doctor(opts.python)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, command = split_command(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    opts = parser.parse_args(args)
    try:
        if opts.subcommand == "record":
            return cmd_record(opts, command if command is not None else list(opts.command))
        if opts.subcommand == "report":
            return cmd_report(opts)
        if opts.subcommand == "toggle":
            return cmd_toggle(opts)
        return cmd_doctor(opts)
    except CliError as err:
        print(f"perftramp: error: {err}", file=sys.stderr, flush=True)
        return err.status
    except KeyboardInterrupt:
        print("perftramp: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # e.g. `... | head`
        return 0
