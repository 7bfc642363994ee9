#!/usr/bin/env bash
# Where the time of a call-heavy workload goes with perftramp's map mode, against CPython's own
# -X perf and against no hook at all: perf record -g, then
# perf report --no-children --sort symbol (self time per symbol), grouped.
#
#   bash benchmarks/profile_hook.sh            # CPython 3.12 (the venvs of benchmarks/run.py)
#   bash benchmarks/profile_hook.sh 3.13       # another interpreter (3.9 ... 3.13, fp)
#   bash benchmarks/profile_hook.sh 3.12 first # first calls of new functions instead (the cold
#                                              # path: making and naming trampolines)
#   PROFILE_SECONDS=5 bash benchmarks/profile_hook.sh
#
# Uses (and, if needed, makes) /tmp/bench-venvs/<tag>-plain and -tramp through
# `benchmarks/run.py --setup-only`. Prints each variant's top symbols, then a table of shares:
# CPython's evaluator, perftramp's hook, the co_extra lookup, the trampolines, CPython's
# trampoline evaluator, everything else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=${1:-3.12}
workload=${2:-calls}
seconds=${PROFILE_SECONDS:-3}
case $workload in calls | first) ;; *) echo "profile_hook.sh: workload is calls or first" >&2; exit 2 ;; esac
command -v perf >/dev/null || { echo "profile_hook.sh: perf not found" >&2; exit 1; }

line=$(python3 "$here/run.py" --setup-only --pythons "$version" | tail -n1)
read -r tag plain tramp _ <<<"$line"
[ -x "$tramp/bin/python" ] || { echo "profile_hook.sh: no venv for $version" >&2; exit 1; }
has_perf=$("$plain/bin/python" -c 'import sys; print(int(hasattr(sys, "activate_stack_trampoline")))')

work=$(mktemp -d /tmp/perftramp-profile-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/calls.py" <<'PY'
# Call-heavy: a tight loop calling a tiny function, plus method calls and a closure.
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))

def tiny(x):
    return x

class C:
    def m(self, x):
        return x

def adder(k):
    def add(x):
        return x + k
    return add

def work(n):
    f, c, a = tiny, C(), adder(1)
    for i in range(n):
        f(i)
        c.m(i)
        a(i)

deadline = time.monotonic() + float(sys.argv[2])
calls = 0
while time.monotonic() < deadline:
    work(100_000)
    calls += 300_000
best = min(_timed() for _timed in [lambda: (lambda t: (work(100_000), time.thread_time() - t)[1])(time.thread_time())] * 10)
print(f"{best / 300_000 * 1e9:.1f} ns per call (thread CPU time, best of 10 rounds of 300,000), {calls} calls")
PY

cat >"$work/first.py" <<'PY'
# First calls: batches of 2,000 new code objects (copies with another co_filename, so compiling
# stays out of the profile), each called once, for about argv[2] seconds.
import os, sys, time, types
open(sys.argv[1], "w").write(str(os.getpid()))
src = "\n".join(f"def f_{i}(a):\n    return a + {i}" for i in range(2000))
ns = {}
exec(compile(src, "/bench/first.py", "exec"), ns)
template = [ns[f"f_{i}"] for i in range(2000)]
deadline = time.monotonic() + float(sys.argv[2])
batches, spent = 0, 0.0
while time.monotonic() < deadline:
    name = f"/bench/first_{batches}.py"
    fs = [types.FunctionType(f.__code__.replace(co_filename=name), f.__globals__) for f in template]
    t = time.thread_time()
    for f in fs:
        f(1)
    spent += time.thread_time() - t
    batches += 1
print(f"{spent / (batches * 2000) * 1e9:.1f} ns per first call (thread CPU time), {batches * 2000} new functions")
PY
[ "$workload" = first ] && cp "$work/first.py" "$work/calls.py"

export DEBUGINFOD_URLS= PERF_CONFIG=/dev/null PYTHONHASHSEED=0
unset PERFTRAMP PERFTRAMP_SIGNAL PERFTRAMP_DIR PYTHONPERFSUPPORT PYTHON_PERF_JIT_SUPPORT PYTHONPATH || true

variants=(base map)
[ "$has_perf" = 1 ] && variants=(base perf map)
echo "== CPython $tag: perf record -F 2999 -g, ${seconds}s of $workload; perf report --no-children --sort symbol"
for variant in "${variants[@]}"; do
    case $variant in
        base) cmd=("$plain/bin/python" "$work/calls.py") ;;
        perf) cmd=("$plain/bin/python" -X perf "$work/calls.py") ;;
        map) cmd=(env PERFTRAMP=map "$tramp/bin/python" "$work/calls.py") ;;
    esac
    out=$(perf record -q -F 2999 -g -o "$work/$variant.data" -- "${cmd[@]}" "$work/$variant.pid" "$seconds" 2>/dev/null)
    echo "$out" >"$work/$variant.ns"
    pid=$(cat "$work/$variant.pid")
    perf report -i "$work/$variant.data" --no-children --sort symbol --stdio -q -g none \
        --percent-limit 0.05 2>/dev/null | sed '/^$/d' | sed -E 's/( +-)+ *$//' >"$work/$variant.txt"
    rm -f "/tmp/perf-$pid.map"
    echo
    echo "-- $variant: $out"
    head -n "$([ "$workload" = first ] && echo 20 || echo 12)" "$work/$variant.txt"
    if [ "$workload" = first ] && [ "$variant" != base ]; then
        echo "   total (children) of the trampoline-making path and what it calls:"
        perf report -i "$work/$variant.data" --children --sort symbol --stdio -q -g none --percent-limit 0.5 \
            2>/dev/null | sed -E 's/( +-)+ *$//' \
            | grep -E '_perftramp::|perf_map|trampoline|fmt::|vfprintf|fflush|_IO_|write$|page_fault' | head -n 14
    fi
done
[ "$workload" = first ] && exit 0

echo
python3 - "$work" "${variants[@]}" <<'PY'
import re, sys
work, variants = sys.argv[1], sys.argv[2:]
groups = [
    ("CPython evaluator (_PyEval_EvalFrameDefault)", lambda s: s == "_PyEval_EvalFrameDefault"),
    ("perftramp hook (_perftramp::hook::eval_frame)", lambda s: "hook::eval_frame" in s or s.startswith("_perftramp::")),
    ("co_extra lookup (PyUnstable_Code_GetExtra)", lambda s: "Code_GetExtra" in s),
    ("trampolines (py::... in the perf map)", lambda s: s.startswith("py::")),
    ("CPython -X perf (py_trampoline_evaluator)", lambda s: "trampoline_evaluator" in s),
    ("call path CPython inlines without a hook (frame push/init, vectorcall)",
     lambda s: s in ("_PyEvalFramePushAndInit", "initialize_locals", "_PyEval_Vector", "PyObject_Vectorcall",
                     "_PyFunction_Vectorcall", "_PyThreadState_PushFrame", "_PyEvalFrameClearAndPop",
                     "_PyThreadState_PopFrame", "_PyFrame_ClearExceptCode", "_PyObject_VectorcallTstate",
                     "_PyObject_Call_Prepend", "method_vectorcall", "slot_tp_call", "clear_thread_frame",
                     "_PyEval_FrameClearAndPop", "_Py_CheckFunctionResult")),
    ("memory (_PyObject_Malloc/Free, memset)", lambda s: s in ("_PyObject_Malloc", "_PyObject_Free")
     or s.startswith("__memset") or s.startswith("__memcpy") or s.startswith("__memmove")),
]
shares = {}
for v in variants:
    acc = {g: 0.0 for g, _ in groups}
    acc["other"] = 0.0
    for line in open(f"{work}/{v}.txt"):
        m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*\S)", line)
        if not m:
            continue
        pct, sym = float(m.group(1)), re.split(r"\s{2,}", m.group(2))[0]
        for g, pred in groups:
            if pred(sym):
                acc[g] += pct
                break
        else:
            acc["other"] += pct
    shares[v] = acc
ns = {v: float(open(f"{work}/{v}.ns").read().split()[0]) for v in variants}
w = max(len(g) for g in shares[variants[0]])
print(f"{'self time: % of samples (symbols >= 0.05%) | ns per call':{w}}"
      + "".join(f"{v:>8}" for v in variants) + " |" + "".join(f"{v:>8}" for v in variants))
for g in shares[variants[0]]:
    print(f"{g:{w}}" + "".join(f"{shares[v][g]:8.1f}" for v in variants) + " |"
          + "".join(f"{shares[v][g] * ns[v] / 100:8.2f}" for v in variants))
print(f"{'total (ns per call measured in the profiled process)':{w}}" + " " * 8 * len(variants) + " |"
      + "".join(f"{ns[v]:8.2f}" for v in variants))
PY
