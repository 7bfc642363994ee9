"""What a perf binary is and can do for perftramp: its version, which dwarf unwinder it was built
with, and what that means for map and jit mode.

perf's dwarf unwinding (`--call-graph dwarf`) comes from libunwind or from elfutils' libdw.
Debian's perf 6.1 uses libunwind; perf 7 dropped libunwind by default and uses libdw, which
behaves differently for the code perftramp makes (measured with perf 7.2 on CPython 3.14/3.15):

* perf-map code (map mode): libdw resolves no frame inside it at all (CPython's own `-X perf`
  included): map mode needs `--call-graph fp` there (full stacks with frame pointers, else the
  innermost Python frame of most samples).
* jitted code (jit mode): perf's libdw glue places the ELF files `perf inject --jit` writes at
  the right address only when their path starts with `/tmp/jitted-` (a string compare in
  tools/perf/util/unwind-libdw.c); inject writes them next to the jitdump, so the dump must be
  in a directory whose path starts with `/tmp/jitted-`, or in /tmp itself. Elsewhere 0% of
  samples unwind through Python frames, 100% there.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

#: Where jitted ELF files must be for perf's libdw unwinder (tools/perf/util/unwind-libdw.c).
JITTED_PREFIX = "/tmp/jitted-"

Version = Tuple[int, int, int]


def perf_version(perf: str) -> Tuple[Optional[Version], str]:
    """`perf --version` parsed, and its text (or why it did not run)."""
    try:
        out = subprocess.run([perf, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    text = (out.stdout or out.stderr).strip()
    if out.returncode != 0:
        return None, text.splitlines()[-1] if text else f"exit {out.returncode}"
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return None, text
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)), text


def jit_capable(version: Version) -> bool:
    """perf 6.8's genelf/unwind fixes, or their stable backports (6.7.2+, 6.6.x, 6.1.75+)."""
    major, minor, patch = version
    if (major, minor) >= (6, 8):
        return True
    if (major, minor) == (6, 7):
        return patch >= 2
    if (major, minor) == (6, 6):
        return True
    if (major, minor) == (6, 1):
        return patch >= 75
    return False


def build_options(perf: str) -> Dict[str, bool]:
    """`perf version --build-options` as {feature: on}; empty if perf cannot say."""
    try:
        out = subprocess.run([perf, "version", "--build-options"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    options = {}
    for match in re.finditer(r"^\s*([\w-]+):\s*\[\s*(on|OFF)\s*\]", out.stdout, re.M):
        options[match.group(1)] = match.group(2) == "on"
    return options


def dwarf_unwinder(options: Dict[str, bool], version: Optional[Version]) -> Optional[str]:
    """"libunwind" or "libdw" (what `--call-graph dwarf` uses; perf prefers libunwind when it has
    both), or None when perf cannot unwind with dwarf. Without build options: by version (perf 7
    stopped building with libunwind by default)."""
    if options:
        if options.get("libunwind"):
            return "libunwind"
        if options.get("libdw-dwarf-unwind"):
            return "libdw"
        return None
    if version is None:
        return None
    return "libdw" if version[0] >= 7 else "libunwind"


@dataclass(frozen=True)
class PerfInfo:
    path: str
    version: Optional[Version]
    text: str  # `perf --version`, or why it does not run
    unwinder: Optional[str]  # see dwarf_unwinder

    @property
    def runs(self) -> bool:
        return self.version is not None

    @property
    def jit_capable(self) -> bool:
        return self.version is not None and jit_capable(self.version)

    @property
    def map_dwarf_resolves(self) -> bool:
        """Whether `--call-graph dwarf` names perf-map code (the innermost Python frame)."""
        return self.unwinder == "libunwind"

    @property
    def jit_needs_tmp_jitted(self) -> bool:
        """Whether jitdumps must live where injected files land under /tmp/jitted-*."""
        return self.unwinder == "libdw"

    def describe(self) -> str:
        """One line: what this perf can do for perftramp."""
        if self.unwinder == "libdw":
            return ("dwarf unwinding with libdw: map mode needs --call-graph fp (libdw resolves no "
                    "frame in perf-map code; record does this); jit mode needs the jitdump in /tmp "
                    f"or a directory starting with {JITTED_PREFIX} (record does this)")
        if self.unwinder == "libunwind":
            return ("dwarf unwinding with libunwind: map mode with fp or dwarf stacks, jit mode "
                    "with the jitdump in any directory")
        return "no dwarf unwinding: map mode with --call-graph fp only"


_CACHE: Dict[str, PerfInfo] = {}

#: What `record` passes perf to compress its recordings (zstd, level 1: perf's fastest). A DWARF
#: sample is a 64 KiB copy of the stack, mostly the same bytes from one sample to the next.
COMPRESS = ["-z"]


@dataclass(frozen=True)
class Compression:
    """Whether `perf record -z` works with a perf binary, and if not, why (for one line)."""

    works: bool
    why: str = ""


_COMPRESSION: Dict[str, Compression] = {}

#: perf.data's header: magic, its size, attr size, three sections (attrs, data, event types),
#: then the bitmap of the feature sections it has (tools/perf/util/header.h).
_FEATURES_AT = 8 + 8 + 8 + 3 * 16
#: HEADER_COMPRESSED, the feature `perf record -z` adds (tools/perf/util/header.h).
HEADER_COMPRESSED = 27


def is_compressed(data: Path) -> bool:
    """Whether a perf.data file was recorded compressed (`perf record -z`): its header's feature
    bitmap has HEADER_COMPRESSED. False for what is not a perf.data file in file format."""
    try:
        with open(data, "rb") as file:
            header = file.read(_FEATURES_AT + 32)
    except OSError:
        return False
    if len(header) < _FEATURES_AT + 32 or header[:8] != b"PERFILE2":
        return False
    features = int.from_bytes(header[_FEATURES_AT:_FEATURES_AT + 32], "little")
    return bool(features >> HEADER_COMPRESSED & 1)


def compression(perf: str) -> Compression:
    """Whether this perf compresses recordings (`perf record -z`, zstd), asked once per process.

    A perf built without zstd has no `-z` option at all (it stops at "unknown switch `z'"). Its
    `perf version --build-options` says so (`zstd: [ on ]` is HAVE_ZSTD_SUPPORT, which is what
    adds -z); a perf that does not list its build options is asked with a trial recording of
    `true` (about 0.2 s; perf's bpf side-band thread, which makes any recording take a second,
    is left out)."""
    if perf not in _COMPRESSION:
        _COMPRESSION[perf] = _probe_compression(perf)
    return _COMPRESSION[perf]


def _probe_compression(perf: str) -> Compression:
    options = build_options(perf)
    if "zstd" in options:
        return Compression(True) if options["zstd"] else Compression(
            False, "built without zstd: `perf version --build-options` says zstd OFF")
    with tempfile.TemporaryDirectory(prefix="perftramp-zstd-") as tmp:
        data = os.path.join(tmp, "perf.data")
        try:
            proc = subprocess.run([perf, "record", *COMPRESS, "--no-bpf-event", "-o", data, "--",
                                   "true"], capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            return Compression(False, f"`perf record -z` did not run: {err}")
        if proc.returncode == 0 and os.path.isfile(data):
            return Compression(True)
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        about_z = [line for line in lines if re.search(r"\bz\b|compress|zstd", line, re.I)]
        if not about_z:
            # perf cannot record here at all (permissions, a container): not compression's
            # fault; the recording itself fails and explains that.
            return Compression(True)
        return Compression(False, f"`perf record -z` failed: {about_z[0]}")


def inspect(perf: str) -> PerfInfo:
    """What `perf` is (asked once per process)."""
    if perf not in _CACHE:
        version, text = perf_version(perf)
        options = build_options(perf) if version is not None else {}
        _CACHE[perf] = PerfInfo(perf, version, text, dwarf_unwinder(options, version))
    return _CACHE[perf]


def jit_directory_works(path: Path, info: PerfInfo) -> bool:
    """Whether jitted files injected next to a dump in `path` are unwound by this perf."""
    if not info.jit_needs_tmp_jitted:
        return True
    real = os.path.realpath(path)
    return real == "/tmp" or real.startswith(JITTED_PREFIX)


def make_tmp_jitted_directory(tag: str) -> Path:
    """A new private directory /tmp/jitted-perftramp-<tag>-XXXXXX for jitdumps (perf's libdw
    unwinder needs injected files there)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:40]
    return Path(tempfile.mkdtemp(prefix=f"{JITTED_PREFIX[len('/tmp/'):]}perftramp-{safe}-",
                                 dir="/tmp"))
