"""Survey of the Python view's folding rules on real recordings (README "The Python view").

For each `perftramp record` output directory, prints what the folding kept and dropped:

- samples, frames per sample as perf recorded them and in the Python view;
- the interpreter frames the Python view keeps (named CPython work above a Python function, or
  stacks without a Python frame), by samples: a name here that is only call machinery is a rule
  to add to `_folding.PLUMBING`;
- the native frames kept between two Python frames, by DSO: C code calling back into Python
  (a DSO of the interpreter itself here would be a classification bug);
- the share of stacks marked cut short.

    python -m perftramp record -o /tmp/survey-3.12 -- flake8 -j 2 SOME_DIR
    python benchmarks/python_view_survey.py /tmp/survey-3.12 [/tmp/survey-3.15 ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Counter, Tuple

from perftramp import _folding as fold
from perftramp import _rawstacks as raw


def survey(directory: Path, top: int) -> None:
    meta_path = directory / "perftramp.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    stacks = raw.read_raw(directory / "stacks.raw")
    samples = sum(stacks.values())
    raw_frames = sum(len(frames) * n for (_, _, frames), n in stacks.items())
    kept_interpreter: Counter[Tuple[str, str]] = collections.Counter()
    native_between: Counter[str] = collections.Counter()
    view_frames = cut = with_python = 0
    for (_, _, frames), n in stacks.items():
        kept = fold.fold_frames(frames)
        view_frames += len(kept) * n
        cut += n * (not fold.is_complete(frames))
        kinds = [kind for _, _, kind in kept]
        python = [i for i, kind in enumerate(kinds) if kind == fold.PYTHON]
        with_python += n * bool(python)
        for i, (symbol, dso, kind) in enumerate(kept):
            if kind == fold.INTERPRETER:
                kept_interpreter[(symbol, "above Python" if python else "no Python frame")] += n
            elif kind == fold.NATIVE and python and python[0] < i < python[-1]:
                native_between[dso.rsplit("/", 1)[-1] or "[unknown]"] += n
    label = meta.get("python") or meta.get("command") or ""
    print(f"== {directory} {label}")
    print(f"   samples {samples:,}; frames per sample {raw_frames / max(samples, 1):.1f} as recorded, "
          f"{view_frames / max(samples, 1):.1f} in the Python view; "
          f"{100 * with_python / max(samples, 1):.0f}% with a Python frame; "
          f"{100 * cut / max(samples, 1):.0f}% cut short")
    print(f"   interpreter frames kept (top {top}, samples):")
    for (symbol, where), n in kept_interpreter.most_common(top):
        flag = "  <- call machinery?" if fold.is_plumbing(symbol) else ""
        print(f"     {n:6,}  {symbol}  [{where}]{flag}")
    print("   native frames between two Python frames, by DSO (samples):")
    for dso, n in native_between.most_common(top):
        flag = "  <- the interpreter's own DSO?" if fold.is_interpreter_dso(dso) else ""
        print(f"     {n:6,}  {dso}{flag}")
    if not native_between:
        print("     (none)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for directory in args.directories:
        if not (directory / "stacks.raw").exists():
            print(f"python_view_survey: {directory} has no stacks.raw (run `perftramp report` on it)",
                  file=sys.stderr)
            return 1
        survey(directory, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
