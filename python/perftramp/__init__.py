"""Make every Python function visible to Linux ``perf``.

``perftramp.enable()`` gives each Python code object its own tiny native trampoline and writes
its name, ``py::<qualname>:<filename>``, into ``/tmp/perf-<pid>.map`` (or a jitdump), so
``perf report`` and ``perf script`` show Python functions instead of one
``_PyEval_EvalFrameDefault``.

This module imports nothing but its extension at import time: it is imported at interpreter
start when perftramp is enabled from the environment, and must not change what the program sees
(``threading`` not yet imported, for example) nor cost startup time.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~15 ms at startup
if TYPE_CHECKING:  # pragma: no cover - annotations only
    import types
    from typing import Any, Iterator, Optional, Set, Tuple, Union

    PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "MODES",
    "ConflictError",
    "PerftrampError",
    "Status",
    "UnsupportedError",
    "compile",
    "compile_all",
    "disable",
    "enable",
    "enabled",
    "install_signal_toggle",
    "is_enabled",
    "status",
    "uninstall_signal_toggle",
]

#: Accepted values of ``mode``, with aliases (CPython's names) mapped to perftramp's. Outputs
#: also combine with ``+`` ("elf+map", "elf+jit", "elf+map+jit"; "both" is "map+jit").
MODES = {"map": "map", "perf": "map", "jit": "jit", "perf_jit": "jit", "both": "both", "elf": "elf"}

# Canonical names of every combination of outputs, as the native core spells them.
_COMBINED = {
    frozenset({"map"}): "map", frozenset({"jit"}): "jit", frozenset({"map", "jit"}): "both",
    frozenset({"elf"}): "elf", frozenset({"elf", "map"}): "elf+map",
    frozenset({"elf", "jit"}): "elf+jit", frozenset({"elf", "map", "jit"}): "elf+map+jit",
}

try:
    from . import _perftramp as _native
except ImportError as _import_error:  # pragma: no cover - exercised only on unsupported builds
    _native = None
    _native_import_error: Optional[BaseException] = _import_error

    def _installed_version() -> str:
        try:
            from importlib.metadata import version

            return version("perftramp")
        except Exception:  # metadata missing too (a source tree on sys.path)
            return "unknown"

    __version__ = _installed_version()

    class PerftrampError(RuntimeError):
        """Base class of perftramp's own errors."""

    class UnsupportedError(PerftrampError):
        """This OS, architecture or interpreter cannot be profiled by perftramp."""

    class ConflictError(PerftrampError):
        """Something else already does perftramp's job in this process."""

else:
    _native_import_error = None
    __version__: str = _native.__version__
    PerftrampError = _native.PerftrampError
    UnsupportedError = _native.UnsupportedError
    ConflictError = _native.ConflictError


class Status:
    """A snapshot of perftramp's state, from :func:`status` (read-only).

    - ``enabled``: whether perftramp is on.
    - ``mode``: "map", "jit", "both", "elf" or a combination such as "elf+map"; None if
      perftramp was never enabled in this process.
    - ``pid``: the process the files belong to.
    - ``perf_map_path`` / ``jitdump_path``: the files being written, if any;
      ``elf_directory``: the directory of the elf mode's arena images (``py-<pid>-<n>.so``).
    - ``trampolines``: trampolines made so far (one per code object that ran while enabled).
    - ``executable_bytes`` / ``executable_bytes_used``: executable memory mapped for
      trampolines, and the part of it handed out.
    - ``errors``: why writing or making trampolines stopped, if it did (the program is
      unaffected).
    - ``chained_to_other_hook``: perftramp chains to an eval hook other than CPython's (a
      debugger or JIT installed first).
    - ``pass_through``: perftramp was disabled while another hook installed after it still calls
      it: it stays in that hook's chain and passes every frame through.
    """

    # A plain class rather than a dataclass: importing dataclasses costs ~15 ms at startup.
    __slots__ = (
        "enabled", "mode", "pid", "perf_map_path", "jitdump_path", "elf_directory", "trampolines",
        "executable_bytes", "executable_bytes_used", "errors", "chained_to_other_hook",
        "pass_through",
    )

    enabled: bool
    mode: Optional[str]
    pid: int
    perf_map_path: Optional[str]
    jitdump_path: Optional[str]
    elf_directory: Optional[str]
    trampolines: int
    executable_bytes: int
    executable_bytes_used: int
    errors: Tuple[str, ...]
    chained_to_other_hook: bool
    pass_through: bool

    def __init__(self, **fields: Any) -> None:
        missing = set(self.__slots__) - set(fields)
        unknown = set(fields) - set(self.__slots__)
        if missing or unknown:
            raise TypeError(f"Status fields: missing {sorted(missing)}, unknown {sorted(unknown)}")
        for name in self.__slots__:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Status is read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"Status({fields})"


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
    if mode in MODES:
        return MODES[mode]
    parts = set()
    for part in mode.split("+"):
        if part not in MODES:
            valid = ", ".join(repr(m) for m in MODES)
            raise ValueError(f"unknown perftramp mode {mode!r}; valid modes: {valid}, or "
                             f"several joined by '+' (e.g. 'elf+map')") from None
        parts.update({"map", "jit"} if MODES[part] == "both" else {MODES[part]})
    return _COMBINED[frozenset(parts)]


def enable(
    mode: str = "map",
    *,
    directory: Optional[PathLike] = None,
    persist_after_fork: bool = False,
) -> None:
    """Give every Python function that starts running from now on its own perf-visible frame.

    ``mode="map"`` (alias ``"perf"``) writes ``/tmp/perf-<pid>.map``: names for ``perf report``
    and frame-pointer stacks. ``mode="jit"`` (alias ``"perf_jit"``) writes ``jit-<pid>.dump``
    with unwind info into ``directory`` (default ``/tmp``), for ``perf record -k 1
    --call-graph dwarf`` and ``perf inject --jit``: full Python stacks on interpreters built
    without frame pointers. ``mode="elf"`` maps the trampolines from ELF images with symbols and
    unwind tables, written into a 0700 directory ``perftramp-<pid>`` that perftramp creates in
    ``directory`` (default ``/tmp``): ``perf record --call-graph dwarf`` then ``perf report``
    show full Python stacks on any interpreter, with no ``perf inject`` and no ``-k 1``.
    ``mode="both"`` writes the map and the jitdump; outputs combine with ``+`` (``"elf+map"``).
    Enabling again in the same mode is a no-op; one process uses one mode.

    A fork child always writes its own files (``/tmp/perf-<childpid>.map``,
    ``jit-<childpid>.dump``), never its parent's. By default they hold only what the child
    creates; with ``persist_after_fork=True`` they also describe every trampoline the child
    inherited (use it with :func:`compile_all` in pre-fork servers).

    Raises ValueError for an unknown mode, :class:`UnsupportedError` on a platform or
    interpreter perftramp cannot hook, :class:`ConflictError` when CPython's own perf trampoline
    is active or perftramp already runs in another mode, and OSError (naming the path) when a
    file cannot be written.
    """
    normalized = _normalize_mode(mode)
    if directory is not None:
        if normalized == "map":
            raise ValueError(
                "directory= places the jitdump and the elf images (modes 'jit', 'both', 'elf'); "
                "the perf map is always "
                "/tmp/perf-<pid>.map, where perf looks for it"
            )
        directory = os.fspath(directory)
    _require_native().enable(normalized, directory, bool(persist_after_fork))


def disable() -> None:
    """Stop making and using trampolines; a no-op when perftramp is off.

    Frames already running keep their trampolines (their memory is never freed), and the files
    keep their entries, so samples taken before this still resolve.
    """
    if _native is not None:
        _native.disable()


def is_enabled() -> bool:
    """Whether perftramp is on."""
    return _native is not None and _native.is_enabled()


def status() -> Status:
    """Return a :class:`Status` snapshot (mode, files, trampolines, memory, errors)."""
    raw = _require_native().status()
    raw["errors"] = tuple(raw["errors"])
    return Status(**raw)


class enabled:  # noqa: N801 - used like a function: ``with perftramp.enabled(): ...``
    """Context manager: perftramp on inside the block, back to its previous state after it.

    >>> with perftramp.enabled() as status:
    ...     run_workload()
    """

    def __init__(
        self,
        mode: str = "map",
        *,
        directory: Optional[PathLike] = None,
        persist_after_fork: bool = False,
    ) -> None:
        self._args = (mode, directory, persist_after_fork)
        self._was_enabled = False

    def __enter__(self) -> Status:
        mode, directory, persist = self._args
        self._was_enabled = is_enabled()
        enable(mode, directory=directory, persist_after_fork=persist)
        return status()

    def __exit__(self, *exc_info: object) -> None:
        if not self._was_enabled:
            disable()


# --- making trampolines ahead of time ----------------------------------------------------------


def _code_of(obj: Any) -> types.CodeType:
    import types

    if isinstance(obj, types.CodeType):
        return obj
    for attr in ("__code__", "__func__"):
        inner = getattr(obj, attr, None)
        if inner is not None:
            return _code_of(inner)
    raise TypeError(f"expected a function, method or code object, got {type(obj).__name__}")


def _nested_code(code: types.CodeType, seen: Set[int]) -> Iterator[types.CodeType]:
    import types

    if id(code) in seen:
        return
    seen.add(id(code))
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested_code(const, seen)


def compile(obj: Any) -> int:  # noqa: A001 - the name says what it does, like builtins.compile
    """Make trampolines now for a function, method or code object and the code nested in it.

    Returns how many were made (0 if they all existed). perftramp must be enabled first.
    """
    native = _require_native()
    return sum(native.compile_code(code) for code in _nested_code(_code_of(obj), set()))


def compile_all() -> int:
    """Make trampolines now for every Python function alive (and the code nested in them).

    For pre-fork servers (gunicorn, uwsgi, multiprocessing): call it in the parent after
    imports, with ``enable(..., persist_after_fork=True)``, so workers share the trampoline
    pages and their files are written in one copy instead of one entry per function per worker
    (cpython issue 109587). Returns how many trampolines were made.
    """
    import gc
    import types

    native = _require_native()
    made = 0
    seen: Set[int] = set()
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType):
            for code in _nested_code(obj.__code__, seen):
                made += native.compile_code(code)
    return made


# --- signal toggle ------------------------------------------------------------------------------

_toggle: Optional[Tuple[int, Any, str, Optional[PathLike]]] = None  # signum, previous, mode, dir


def _on_toggle_signal(signum: int, frame: Optional[types.FrameType]) -> None:
    # Python runs signal handlers in the main thread between bytecodes, whatever thread the
    # signal was delivered to, so enable/disable run where they are safe. Never raise into the
    # interrupted program: report on stderr instead.
    current = _toggle
    if current is None:
        return
    _, _, mode, directory = current
    try:
        if is_enabled():
            disable()
            state = "off"
        else:
            enable(mode, directory=directory)
            state = f"on ({mode})"
        print(f"perftramp: signal {signum}: profiling support {state} in pid {os.getpid()}",
              file=sys.stderr, flush=True)
    except Exception as err:  # noqa: BLE001 - a toggle must never break the program
        print(f"perftramp: signal {signum}: could not toggle: {err}", file=sys.stderr, flush=True)


def install_signal_toggle(
    signum: Optional[int] = None,
    mode: str = "jit",
    *,
    directory: Optional[PathLike] = None,
) -> Any:
    """Make each delivery of ``signum`` (default ``signal.SIGUSR2``) turn perftramp on (in
    ``mode``) or off.

    For live servers: start with the toggle installed and perftramp off (zero cost), then
    ``kill -USR2 <pid>`` (or ``python -m perftramp toggle <pid>``) before and after
    ``perf record -p <pid>``. Returns the previous handler. Call from the main thread (Python's
    rule for signal handlers). If the application uses SIGUSR2 itself, pass another signal,
    e.g. ``signal.SIGRTMIN + 1``.
    """
    import signal

    global _toggle
    normalized = _normalize_mode(mode)
    if directory is not None and normalized == "map":
        raise ValueError("directory= places the jitdump and the elf images (modes 'jit', 'both', 'elf')")
    signum = int(signal.SIGUSR2 if signum is None else signum)
    try:
        previous = signal.signal(signum, _on_toggle_signal)
    except ValueError as err:
        if "main thread" in str(err):
            raise ValueError("install_signal_toggle() must be called from the main thread "
                             "(Python only lets the main thread set signal handlers)") from None
        raise
    if _toggle is not None and _toggle[0] == signum:
        previous = _toggle[1]  # re-installing: keep the original handler to restore
    _toggle = (signum, previous, normalized, directory)
    return previous


def uninstall_signal_toggle() -> None:
    """Remove the toggle and restore the handler it replaced (perftramp's state is unchanged)."""
    import signal

    global _toggle
    if _toggle is None:
        return
    signum, previous, _, _ = _toggle
    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    _toggle = None


def _after_fork_in_child() -> None:
    if _native is not None:
        _native.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
