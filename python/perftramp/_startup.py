"""Start perftramp from the environment, with no code change (run by perftramp.pth at startup).

- ``PERFTRAMP=map|jit|both|elf`` (or ``perf``/``perf_jit``, or outputs joined by ``+``): enable
  at interpreter start, so even the main script's ``<module>`` frame gets a trampoline.
  ``PERFTRAMP_DIR``: the jitdump directory, and where elf mode makes its image directory.
- ``PERFTRAMP_SIGNAL=USR2`` (a name, with or without ``SIG``, or a number): install the signal
  toggle, in ``PERFTRAMP_MODE`` (default ``jit``); perftramp starts off unless ``PERFTRAMP`` is
  also set.
- ``PERFTRAMP_PERSIST_AFTER_FORK=1``: fork children's files also describe inherited trampolines.

An invalid value prints one warning naming the variable; the program always runs normally.
"""

from __future__ import annotations

import os
import sys


def _warn(message: str) -> None:
    print(f"perftramp: {message}; continuing without it", file=sys.stderr, flush=True)


def _parse_signal(value: str) -> "int | None":
    import signal  # only when a toggle is asked for: it imports enum

    text = value.strip().upper()
    if text.isdigit():
        number = int(text)
        return number if 0 < number < signal.NSIG else None
    name = text if text.startswith("SIG") else "SIG" + text
    member = getattr(signal, name, None)
    return int(member) if isinstance(member, int) else None


def start() -> None:
    import perftramp

    env = os.environ
    directory = env.get("PERFTRAMP_DIR") or None
    persist = env.get("PERFTRAMP_PERSIST_AFTER_FORK", "") not in ("", "0")
    mode = env.get("PERFTRAMP", "").strip()
    if mode:
        try:
            normalized = perftramp._normalize_mode(mode)
        except ValueError:
            _warn(f"PERFTRAMP={mode!r} is not a mode (valid: {', '.join(perftramp.MODES)})")
        else:
            try:
                perftramp.enable(mode, directory=None if normalized == "map" else directory,
                                 persist_after_fork=persist)
            except Exception as err:  # noqa: BLE001 - startup must never break the program
                _warn(f"PERFTRAMP={mode}: {err}")
    signal_value = env.get("PERFTRAMP_SIGNAL", "").strip()
    if signal_value:
        signum = _parse_signal(signal_value)
        toggle_mode = env.get("PERFTRAMP_MODE", "jit").strip() or "jit"
        if signum is None:
            _warn(f"PERFTRAMP_SIGNAL={signal_value!r} is not a signal name or number (e.g. USR2, 12)")
        elif toggle_mode not in perftramp.MODES and "+" not in toggle_mode:
            _warn(f"PERFTRAMP_MODE={toggle_mode!r} is not a mode (valid: {', '.join(perftramp.MODES)})")
        else:
            try:
                perftramp.install_signal_toggle(
                    signum, toggle_mode,
                    directory=None if perftramp._normalize_mode(toggle_mode) == "map" else directory,
                )
            except Exception as err:  # noqa: BLE001
                _warn(f"PERFTRAMP_SIGNAL={signal_value}: {err}")


try:
    start()
except Exception as _err:  # noqa: BLE001 - e.g. perftramp's extension missing on this platform
    _warn(f"start from the environment failed: {_err}")
