#!/usr/bin/env bash
# The main job, from a fresh machine: install perf, build perftramp into a venv, profile
# examples/demo.py with perf (elf mode: no inject step), and show the Python functions perf sees
# (with full stacks).
#
#   bash scripts/demo.sh                  # with python3 on PATH
#   PYTHON=/path/to/python3.12 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python="${PYTHON:-python3}"
export DEBUGINFOD_URLS= PERF_CONFIG=/dev/null

if ! command -v perf >/dev/null 2>&1; then
    echo "demo: installing linux-perf" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >&2
fi
venv="$root/.venvs/demo-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "demo: building perftramp for $("$venv/bin/python" -V)" >&2
"$venv/bin/python" -m pip install -q "$root"

out=$(mktemp -d /tmp/perftramp-demo.XXXXXX)
cd "$out"
echo "demo: perf record (elf mode, DWARF call graphs: perf reads perftramp's arena images itself) into $out" >&2
perf record -q -F 249 --call-graph dwarf,65528 -o perf.data -- \
    "$venv/bin/python" "$root/examples/demo.py" elf 2 "$out" >&2
echo
echo "Python functions by share of samples they are on the stack of (total time):"
perf report -i perf.data --stdio --children --sort dso,symbol -g none 2>/dev/null \
    | grep 'py::' | head -n 8
echo
echo "One sampled stack (innermost first; Python frames are py::<qualname>:<file>):"
perf script -i perf.data 2>/dev/null | awk '
    /^[^ \t]/ { n = 0; keep = 0; buf = "" }
    /py::count_words/ { keep = 1 }
    /^[ \t]/  { buf = buf $0 "\n" }
    /^$/      { if (keep && !shown) { printf "%s", buf; shown = 1 } }' | grep -E 'py::|_PyEval_EvalFrameDefault' | head -n 12
echo
echo "Data kept in $out (perf report -i $out/perf.data; the arena images under $out/perftramp-* must stay)"
