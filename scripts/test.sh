#!/usr/bin/env bash
# perftramp's whole test suite: Rust unit tests, then the pytest suite (including real perf runs)
# on every CPython 3.9+ found (pyenv's, plus the frame-pointer build from
# scripts/build-fp-python.sh, which is built and cached on first use).
#
#   bash scripts/test.sh                 # everything
#   PERFTRAMP_PYTHONS="/usr/bin/python3.12" bash scripts/test.sh   # chosen interpreters only
#   PERFTRAMP_NO_FP_BUILD=1 bash scripts/test.sh                    # skip the frame-pointer build
#   PERFTRAMP_NO_REGRTEST=1 bash scripts/test.sh                    # skip CPython's own tests
#   bash scripts/test.sh -k perf         # extra arguments go to pytest
#
# Ends with one line "perftramp: N passed, N failed, N skipped" and exits non-zero if anything
# failed, errored, or if an interpreter ran no test at all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/install-deps.sh

# Interpreters: explicit list, or every CPython >= 3.9 pyenv has.
declare -a pythons=()
if [ -n "${PERFTRAMP_PYTHONS:-}" ]; then
    read -r -a pythons <<<"$PERFTRAMP_PYTHONS"
else
    pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    for dir in "$pyenv_root"/versions/3.*; do
        [ -x "$dir/bin/python3" ] || continue
        if "$dir/bin/python3" -c 'import sys; sys.exit(not (sys.version_info >= (3, 9) and sys.implementation.name == "cpython"))' 2>/dev/null; then
            pythons+=("$dir/bin/python3")
        fi
    done
    if [ "${#pythons[@]}" -eq 0 ] && command -v python3 >/dev/null; then pythons+=("$(command -v python3)"); fi
fi
fp_python=""
if [ "${PERFTRAMP_NO_FP_BUILD:-0}" != 1 ]; then
    fp_python=$(bash scripts/build-fp-python.sh 3.13 | tail -n1)
    pythons+=("$fp_python")
fi
[ "${#pythons[@]}" -gt 0 ] || { echo "test.sh: no CPython >= 3.9 found" >&2; exit 1; }

first="${pythons[0]}"
mkdir -p "$root/target"
echo "== Rust unit tests (cargo test, linked against $first)"
libdir=$("$first" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PYO3_PYTHON="$first" LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --quiet 2>&1 | tee "$root/target/cargo-test.log" || true
cargo_summary=$(grep -E '^test result:' "$root/target/cargo-test.log" || true)
rust_passed=$(awk '/^test result:/ {s += $4} END {print s+0}' <<<"$cargo_summary")
rust_failed=$(awk '/^test result:/ {s += $6} END {print s+0}' <<<"$cargo_summary")
if [ -z "$cargo_summary" ] || grep -q 'error\[\|could not compile' "$root/target/cargo-test.log"; then
    echo "test.sh: cargo test did not run" >&2; rust_failed=$((rust_failed + 1))
fi

# The live jitdump reader (samply's reader library) that tests/test_jit_live.py follows dumps with.
if cargo build --quiet --example jitdump_follow; then
    export PERFTRAMP_JITDUMP_FOLLOWER="$root/target/debug/examples/jitdump_follow"
else
    echo "test.sh: building examples/jitdump_follow failed" >&2; rust_failed=$((rust_failed + 1))
fi

total_passed=$rust_passed total_failed=$rust_failed total_skipped=0
declare -a report=("rust: $rust_passed passed, $rust_failed failed")
mkdir -p "$root/.venvs" "$root/target/pytest"
index=0
for py in "${pythons[@]}"; do
    tag=$("$py" -c 'import sys, sysconfig; fp = "-fp" if "-fno-omit-frame-pointer" in (sysconfig.get_config_var("CFLAGS") or "") else ""; print(f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}{fp}")')
    echo "== CPython $tag ($py)"
    venv="$root/.venvs/$tag"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q pytest flake8  # flake8: a real forking program (tests/test_fork_third_party.py)
    if ! "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$root"; then
        echo "test.sh: building perftramp for $tag failed" >&2
        total_failed=$((total_failed + 1)); report+=("$tag: BUILD FAILED"); continue
    fi
    xml="$root/target/pytest/$tag.xml"
    env_extra=()
    [ "$index" -gt 0 ] && env_extra+=(PERFTRAMP_SKIP_ONCE=1)
    [ "$py" = "$fp_python" ] && env_extra+=(PERFTRAMP_EXPECT_FP=1)
    set +e
    (cd "$root" && env "${env_extra[@]}" PERFTRAMP_REQUIRE_PERF=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        --junitxml="$xml" -o junit_family=xunit2 "$@" tests)
    code=$?
    set -e
    counts=$("$venv/bin/python" - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print("0 0 0 0"); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) for s in suites)
e = sum(int(s.get("errors", 0)) for s in suites)
k = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - e - k, f + e, k, t)
PY
)
    read -r passed failed skipped tests <<<"$counts"
    if [ "$code" -eq 5 ] || [ "$tests" -eq 0 ]; then
        echo "test.sh: pytest ran no test on $tag" >&2; failed=$((failed + 1))
    elif [ "$code" -ne 0 ] && [ "$failed" -eq 0 ]; then
        echo "test.sh: pytest exited $code on $tag" >&2; failed=1
    fi
    # CPython's own regression tests (a reduced set) with perftramp on in every process, compared
    # case by case with a run without it (scripts/cpython_regrtest.py; the full set without --quick).
    if [ "${PERFTRAMP_NO_REGRTEST:-0}" != 1 ]; then
        echo "-- CPython regression tests with and without perftramp ($tag)"
        if "$venv/bin/python" "$root/scripts/cpython_regrtest.py" --quick; then
            passed=$((passed + 1))
        else
            echo "test.sh: CPython's regression tests differ with perftramp on $tag" >&2
            failed=$((failed + 1))
        fi
    fi
    total_passed=$((total_passed + passed)); total_failed=$((total_failed + failed)); total_skipped=$((total_skipped + skipped))
    report+=("$tag: $passed passed, $failed failed, $skipped skipped")
    index=$((index + 1))
done

echo
echo "== Summary"
printf '  %s\n' "${report[@]}"
echo "perftramp: $total_passed passed, $total_failed failed, $total_skipped skipped"
[ "$total_failed" -eq 0 ]
