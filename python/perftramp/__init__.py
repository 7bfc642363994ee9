"""Make every Python function visible to Linux ``perf``.

``perftramp.enable()`` gives each Python code object its own tiny native trampoline and writes
its name, ``py::<qualname>:<filename>``, into ``/tmp/perf-<pid>.map``, so ``perf report`` and
``perf script`` show Python functions instead of one ``_PyEval_EvalFrameDefault``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple, Union

__all__ = [
    "MODES",
    "ConflictError",
    "PerftrampError",
    "Status",
    "UnsupportedError",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
    "status",
]

__version__ = "0.1.0"

#: Accepted values of ``mode``, with aliases (CPython's names) mapped to perftramp's.
MODES = {"map": "map", "perf": "map", "jit": "jit", "perf_jit": "jit", "both": "both"}

try:
    from . import _perftramp as _native
except ImportError as _import_error:  # pragma: no cover - exercised only on unsupported builds
    _native = None
    _native_import_error: Optional[BaseException] = _import_error

    class PerftrampError(RuntimeError):
        """Base class of perftramp's own errors."""

    class UnsupportedError(PerftrampError):
        """This OS, architecture or interpreter cannot be profiled by perftramp."""

    class ConflictError(PerftrampError):
        """Something else already does perftramp's job in this process."""

else:
    _native_import_error = None
    PerftrampError = _native.PerftrampError
    UnsupportedError = _native.UnsupportedError
    ConflictError = _native.ConflictError


@dataclass(frozen=True)
class Status:
    """A snapshot of perftramp's state, from :func:`status`."""

    enabled: bool
    #: "map", "jit" or "both"; None if perftramp was never enabled in this process.
    mode: Optional[str]
    pid: int
    #: The perf map being written, if any.
    perf_map_path: Optional[str]
    #: The jitdump being written (jit and both modes), if any.
    jitdump_path: Optional[str]
    #: Trampolines made so far (one per code object that ran while enabled).
    trampolines: int
    #: Executable memory mapped for trampolines, and the part of it handed out.
    executable_bytes: int
    executable_bytes_used: int
    #: Why writing or making trampolines stopped, if it did (the program is unaffected).
    errors: Tuple[str, ...]
    #: perftramp chains to an eval hook other than CPython's (a debugger or JIT installed first).
    chained_to_other_hook: bool
    #: perftramp was disabled while another hook installed after it still calls it: it stays in
    #: that hook's chain and passes every frame through.
    pass_through: bool


def _require_native():  # type: ignore[no-untyped-def]
    if _native is None:
        raise UnsupportedError(
            f"perftramp's native extension could not be loaded on this platform "
            f"({sys.platform}, Python {sys.version.split()[0]}): {_native_import_error}"
        )
    return _native


def _normalize_mode(mode: str) -> str:
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, not {type(mode).__name__}")
    try:
        return MODES[mode]
    except KeyError:
        valid = ", ".join(repr(m) for m in MODES)
        raise ValueError(f"unknown perftramp mode {mode!r}; valid modes: {valid}") from None


PathLike = Union[str, "os.PathLike[str]"]


def enable(mode: str = "map", *, directory: Optional[PathLike] = None) -> None:
    """Give every Python function that starts running from now on its own perf-visible frame.

    ``mode="map"`` (alias ``"perf"``) writes ``/tmp/perf-<pid>.map``: names for ``perf report``
    and frame-pointer stacks. ``mode="jit"`` (alias ``"perf_jit"``) writes ``jit-<pid>.dump``
    with unwind info into ``directory`` (default ``/tmp``), for ``perf record -k 1
    --call-graph dwarf`` and ``perf inject --jit``: full Python stacks on interpreters built
    without frame pointers. ``mode="both"`` writes both. Enabling again in the same mode is a
    no-op; one process uses one mode.

    Raises ValueError for an unknown mode, :class:`UnsupportedError` on a platform or
    interpreter perftramp cannot hook, :class:`ConflictError` when CPython's own perf trampoline
    is active or perftramp already runs in another mode, and OSError (naming the path) when a
    file cannot be written.
    """
    normalized = _normalize_mode(mode)
    if directory is not None:
        if normalized == "map":
            raise ValueError(
                "directory= places the jitdump (mode='jit' or 'both'); the perf map is always "
                "/tmp/perf-<pid>.map, where perf looks for it"
            )
        directory = os.fspath(directory)
    _require_native().enable(normalized, directory)


def disable() -> None:
    """Stop making and using trampolines; a no-op when perftramp is off.

    Frames already running keep their trampolines (their memory is never freed), and the perf
    map keeps its entries, so samples taken before this still resolve.
    """
    if _native is not None:
        _native.disable()


def is_enabled() -> bool:
    """Whether perftramp is on."""
    return _native is not None and _native.is_enabled()


def status() -> Status:
    """Return a :class:`Status` snapshot (mode, files, trampolines, memory, errors)."""
    native = _require_native()
    raw = native.status()
    raw["errors"] = tuple(raw["errors"])
    return Status(**raw)


@contextlib.contextmanager
def enabled(mode: str = "map", *, directory: Optional[PathLike] = None) -> Iterator[Status]:
    """Context manager: perftramp on inside the block, back to its previous state after it.

    >>> with perftramp.enabled():
    ...     run_workload()
    """
    was_enabled = is_enabled()
    enable(mode, directory=directory)
    try:
        yield status()
    finally:
        if not was_enabled:
            disable()
