"""Per-worker attribution of forked workers, as perf sees it, for every mode and scenario:
the share of each worker's samples that name its own function, and how many name a function
the worker never ran. Prints one table; the pytest suite asserts the same (>= 90%, 0).

    python benchmarks/fork_shares.py [SCENARIO ...]      # with the interpreter running it

Run it with an interpreter that has perftramp installed (e.g. .venvs/<tag>/bin/python).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pytest  # noqa: E402  (the test helpers skip through pytest)

import test_fork_attribution as fa  # noqa: E402


def main() -> None:
    perf = shutil.which("perf")
    if perf is None:
        sys.exit("perf is not installed")
    scenarios = sys.argv[1:] or ["os_fork", "inherited", "pool", "c_fork"]
    print(f"{sys.version.split()[0]}, {fa.subprocess.run([perf, 'version'], capture_output=True, text=True).stdout.strip()}")
    print(f"{'mode':<6} {'persist':<8} {'scenario':<10} worker shares (own function / samples, foreign)")
    for mode in ("map", "jit", "both"):
        for persist in (False, True):
            for scenario in scenarios:
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        workers = fa.run_scenario(perf, Path(tmp), mode, persist, scenario)
                    except pytest.skip.Exception as skip:
                        print(f"{mode:<6} {str(persist):<8} {scenario:<10} skipped: {skip}")
                        continue
                cells = [f"{w.function[-1]}: {100 * w.own_share:5.1f}% of {w.samples}, {w.foreign} foreign"
                         for w in sorted(workers.values(), key=lambda w: w.function)]
                print(f"{mode:<6} {str(persist):<8} {scenario:<10} " + " | ".join(cells))


if __name__ == "__main__":
    main()
