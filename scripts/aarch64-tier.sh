#!/usr/bin/env bash
# aarch64 tier: the arm64 build of perftramp, cross-compiled, packaged as a wheel, and run with
# Debian's arm64 CPython under qemu-user: the crate's Rust unit tests and the pytest files that
# need no perf (the real eval hook, arenas and instruction-cache flush on aarch64). Runs in the
# Debian sid chroot; every step is skipped when its result is already there.
#
#   bash scripts/aarch64-tier.sh [WHEEL_DIR] [PYTEST_ARGS...]   # wheel into WHEEL_DIR (dist/aarch64)
#
# Ends with `aarch64: N passed, N failed, N skipped`; exits non-zero on any failure or if no
# test ran. Needs root (chroot, apt). Settings (environment):
#   SID_ROOT=/opt/sid                      the chroot (made by scripts/sid-chroot.sh if missing)
#   AARCH64_CACHE=/tmp/perftramp-aarch64   build tree, cargo target, wheels by source hash (under /tmp:
#                                          the chroot sees the host's /tmp at the same path)
#   AARCH64_POLICY=manylinux_2_34          the manylinux policy auditwheel must accept: linking against
#                                          sid's glibc with aarch64-linux-gnu-gcc needs 2.34 symbols
#   AARCH64_ZIG=1                          link with zig (maturin --zig) instead: manylinux_2_17, like
#                                          scripts/build-wheels.sh's x86_64 release wheels
#   AARCH64_TESTS="tests/test_api.py ..."  the pytest files run
#   AARCH64_CARGO_TEST=0                   skip `cargo test --lib` for aarch64 under qemu
#
# In the chroot it adds (never upgrades or removes; it stops if apt would): the arm64 dpkg
# architecture, gcc-aarch64-linux-gnu, qemu-user(-static), libstd-rust-dev:arm64 (Rust std for
# aarch64-unknown-linux-gnu, the same version as the chroot's rustc) and libpython3.14{,-stdlib,-dev}:arm64
# (Multi-Arch: same). The arm64 python3.14 executable is not co-installable with the amd64 one: it
# is extracted from python3.14-minimal:arm64 into /opt/arm64-python3.14/root and run through a
# wrapper (`qemu-aarch64 -L / -0 <wrapper>`, no binfmt needed) that is also a venv's bin/python,
# so sys.executable re-enters qemu in subprocesses. perf is absent from the tier (a `perf` that
# exits 127 comes first in PATH): perf cannot profile an emulated process, and perf tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(mkdir -p "${1:-dist/aarch64}" && cd "${1:-dist/aarch64}" && pwd)
shift $(($# > 0 ? 1 : 0))
SID_ROOT=${SID_ROOT:-/opt/sid}
CACHE=${AARCH64_CACHE:-/tmp/perftramp-aarch64}
ZIG=${AARCH64_ZIG:-0}
if [ "$ZIG" = 1 ]; then POLICY=${AARCH64_POLICY:-manylinux_2_17}; else POLICY=${AARCH64_POLICY:-manylinux_2_34}; fi
PY=3.14
TARGET=aarch64-unknown-linux-gnu
TESTS=${AARCH64_TESTS:-"tests/test_api.py tests/test_behaviour.py tests/test_threads.py tests/test_live.py
  tests/test_map_file.py tests/test_hostile_names.py tests/test_hostile_files.py tests/test_robustness.py
  tests/test_deep_recursion.py tests/test_jit.py tests/test_packaging.py"}
PREFIX=/opt/arm64-python$PY            # inside the chroot
VENV=$PREFIX/venv
TOOLS=/opt/venvs/aarch64-tools
SITE=$VENV/lib/python$PY/site-packages
# qemu-user runs this interpreter ~10-20x slower than native (measured: 270 us vs 25 us to define
# and call a new function); tests that pace themselves against the clock scale by it.
SLOWDOWN=20

log() { printf '[aarch64 %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (chroot, apt-get in the chroot)"
case $CACHE in /tmp/*) ;; *) die "AARCH64_CACHE must be under /tmp (bind-mounted into the chroot)" ;; esac
# One run per cache at a time: a second one would replace the source tree under the first.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -n 9 || { log "another aarch64 tier is running on $CACHE; waiting"; flock 9; }

declare -a TIMES=()
step_start=0 total_start=$(date +%s)
begin() { step_start=$(date +%s); log "== $*"; }
end() { TIMES+=("$(printf '%-40s %4ss' "$1" "$(($(date +%s) - step_start))")"); }
# 9>&-: the lock taken above stays with this script, never with a process a test leaves behind.
in_sid() { chroot "$SID_ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin "$@" 9>&-; }
installed() { [ "$(in_sid dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# --- 0. the chroot, mounted --------------------------------------------------------------------
begin "sid chroot"
if [ ! -x "$SID_ROOT/usr/bin/python$PY" ]; then
    # The repository's own setup (what scripts/test.sh uses), else the team's shared one.
    setup=$root/scripts/sid-chroot.sh
    [ -f "$setup" ] || setup=$root/../shared/tools/sid-pythons.sh
    [ -f "$setup" ] || die "no sid chroot at $SID_ROOT and no scripts/sid-chroot.sh to make one; skipping the aarch64 tier"
    log "no chroot at $SID_ROOT: making it with $setup"
    SID_ROOT=$SID_ROOT PROJECT_SRC=$root bash "$setup"
fi
for m in proc sys dev dev/pts tmp; do
    mountpoint -q "$SID_ROOT/$m" || { mkdir -p "$SID_ROOT/$m"; mount --bind "/$m" "$SID_ROOT/$m"; }
done
# tracefs, as scripts/sid-chroot.sh mounts it (/sys is bound without its submounts): tracepoints.
mountpoint -q "$SID_ROOT/sys/kernel/tracing" || mount -t tracefs nodev "$SID_ROOT/sys/kernel/tracing"
end "chroot + mounts"

# --- 1. cross toolchain, qemu, arm64 CPython libraries ------------------------------------------
begin "arm64 packages in the chroot"
if ! in_sid dpkg --print-foreign-architectures | grep -qx arm64; then
    in_sid dpkg --add-architecture arm64
fi
packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross "libstd-rust-dev:arm64"
          "libpython$PY:arm64" "libpython$PY-stdlib:arm64" "libpython$PY-dev:arm64")
if ! in_sid test -x /usr/bin/qemu-aarch64-static && ! in_sid test -x /usr/bin/qemu-aarch64; then
    packages+=(qemu-user-static)
fi
missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    compgen -G "$SID_ROOT/var/lib/apt/lists/*_binary-arm64_Packages" >/dev/null && [ "${APT_UPDATE:-0}" != 1 ] \
        || in_sid apt-get update -q
    # sid replaced qemu-user-static by qemu-user (static binaries, same paths minus -static).
    if [[ " ${missing[*]} " == *" qemu-user-static "* ]] && ! in_sid apt-cache show qemu-user-static >/dev/null 2>&1; then
        missing=("${missing[@]/qemu-user-static/qemu-user}")
    fi
    # Others use this chroot's amd64 interpreters and perf: add, never upgrade or remove.
    plan=$(in_sid apt-get -s install "${missing[@]}")
    if changes=$(grep -E '^(Inst [^ ]+ \[|Remv )' <<<"$plan"); then
        die "installing ${missing[*]} would change installed packages (the archive moved on?):"$'\n'"$changes"
    fi
    in_sid env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
QEMU=/usr/bin/qemu-aarch64-static
in_sid test -x $QEMU || QEMU=/usr/bin/qemu-aarch64
in_sid sh -c "ls \"\$(rustc --print target-libdir --target $TARGET)\"/libstd-*.rlib" >/dev/null \
    || die "no Rust std for $TARGET next to $(in_sid rustc -V)"
end "apt (arm64 arch, cross gcc, qemu, std, libpython)"

# --- 2. the arm64 interpreter, and a venv around it --------------------------------------------
begin "arm64 python$PY + venv"
version=$(in_sid dpkg-query -W -f='${Version}' "libpython$PY-minimal:arm64")
if [ "$(cat "$SID_ROOT$PREFIX/root/.version" 2>/dev/null)" != "$version" ]; then
    in_sid sh -c "rm -rf $PREFIX/debs $PREFIX/root.new && mkdir -p $PREFIX/debs && cd $PREFIX/debs &&
        apt-get download -q -o APT::Sandbox::User=root python$PY-minimal:arm64=$version &&
        dpkg -x python${PY}-minimal_*_arm64.deb $PREFIX/root.new && rm -rf $PREFIX/root &&
        mv $PREFIX/root.new $PREFIX/root && echo $version >$PREFIX/root/.version" >&2
fi
# bin/python starts qemu with argv[0] = its own path: the interpreter then finds pyvenv.cfg (the
# venv's site-packages) and reports itself as sys.executable, so child interpreters run under qemu too.
mkdir -p "$SID_ROOT$VENV/bin" "$SID_ROOT$SITE" "$SID_ROOT$PREFIX/noperf"
cat >"$SID_ROOT$VENV/bin/python$PY" <<EOF
#!/bin/sh
exec $QEMU -L / -0 "\$0" $PREFIX/root/usr/bin/python$PY "\$@"
EOF
cat >"$SID_ROOT$VENV/pyvenv.cfg" <<EOF
home = $PREFIX/root/usr/bin
include-system-site-packages = false
version = $version
EOF
cat >"$SID_ROOT$PREFIX/noperf/perf" <<'EOF'
#!/bin/sh
echo "perf: not part of the aarch64 tier (qemu-user: perf cannot sample the emulated code)" >&2
exit 127
EOF
chmod +x "$SID_ROOT$VENV/bin/python$PY" "$SID_ROOT$PREFIX/noperf/perf"
ln -sfn "python$PY" "$SID_ROOT$VENV/bin/python"; ln -sfn "python$PY" "$SID_ROOT$VENV/bin/python3"
machine=$(in_sid "$VENV/bin/python" -c 'import platform, sys; print(platform.machine(), sys.prefix)')
[ "$machine" = "aarch64 $VENV" ] || die "the arm64 interpreter says '$machine' (expected 'aarch64 $VENV')"
end "arm64 interpreter"

# --- 3. build tools and pytest -----------------------------------------------------------------
begin "maturin, auditwheel, pytest"
if ! in_sid test -x $TOOLS/bin/maturin || ! in_sid test -x $TOOLS/bin/auditwheel; then
    in_sid "python$PY" -m venv $TOOLS
    in_sid $TOOLS/bin/pip install -q "maturin==1.16.*" "auditwheel==6.*" >&2 \
        || in_sid $TOOLS/bin/pip install -q "maturin>=1.7,<2" auditwheel >&2
fi
# Pure-Python packages for the arm64 interpreter, installed by the amd64 pip (no pip under qemu).
arm_pip() {
    in_sid $TOOLS/bin/pip install -q --target "$SITE" --platform "${POLICY}_aarch64" --python-version $PY \
        --implementation cp --only-binary=:all: "$@"
}
compgen -G "$SID_ROOT$SITE/pytest-*.dist-info" >/dev/null || arm_pip "pytest>=7" >&2
if [ "$ZIG" = 1 ] && ! in_sid $TOOLS/bin/python -c 'import ziglang' 2>/dev/null; then
    in_sid $TOOLS/bin/pip install -q "ziglang==0.17.*" >&2 || in_sid $TOOLS/bin/pip install -q ziglang >&2
fi
end "tools"

# --- 4. the wheel ------------------------------------------------------------------------------
begin "cross-build the wheel"
# The source tree the chroot builds from and the tests run in (mtimes kept: cargo rebuilds only
# what changed). Wheels are cached by a hash of everything but tests/ and scripts/.
rm -rf "$CACHE/src"; mkdir -p "$CACHE/src" "$CACHE/wheels"
git ls-files -z | xargs -0 tar cf - 2>/dev/null | tar xf - -C "$CACHE/src"
key=$( (git ls-files -z -- . ':!tests' ':!scripts' | xargs -0 sha256sum; echo "$ZIG $POLICY") | sha256sum | cut -c1-16)
wheels=$CACHE/wheels/$key
if [ "$ZIG" = 1 ]; then
    wheel_target=$CACHE/target-zig linker=() zig=--zig
else
    wheel_target=$CACHE/target linker=(CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc) zig=
fi
if ! compgen -G "$wheels/perftramp-*.whl" >/dev/null; then
    rm -rf "$wheels.tmp"
    # PYO3_CROSS_LIB_DIR: PyO3 and maturin read the arm64 _sysconfigdata there. No RUSTFLAGS (env -i):
    # .cargo/config.toml's force-frame-pointers applies to the target build.
    in_sid env PYO3_CROSS_LIB_DIR=/usr/lib/python$PY PYO3_CROSS_PYTHON_VERSION=$PY \
        CARGO_TARGET_DIR="$wheel_target" PATH=$TOOLS/bin:/usr/local/bin:/usr/bin:/bin "${linker[@]}" \
        sh -c "cd $CACHE/src && maturin build --release $zig --target $TARGET --compatibility $POLICY -o $wheels.tmp" >&2
    # The frame-pointer flag reached rustc for the extension (cargo records the flags it used).
    grep -q '"rustflags":\["-C","force-frame-pointers=yes"\]' \
        "$(ls -t "$wheel_target"/$TARGET/release/.fingerprint/perftramp-*/lib-_perftramp.json | head -1)" \
        || die "the $TARGET build was not made with -C force-frame-pointers=yes"
    mv "$wheels.tmp" "$wheels"
else
    log "wheel for source $key already built"
fi
wheel=$(ls "$wheels"/perftramp-*-cp${PY/./}-*_aarch64.whl)
shown=$(in_sid $TOOLS/bin/auditwheel show "$wheel")
grep -q "\"${POLICY}_aarch64\"" <<<"$shown" || { echo "$shown" >&2; die "auditwheel does not accept ${POLICY}_aarch64"; }
cp "$wheel" "$out/"
log "$(basename "$wheel"): auditwheel accepts ${POLICY}_aarch64; copied to $out"
end "wheel (build or cache) + auditwheel"

# --- 5. Rust unit tests, run on aarch64 -------------------------------------------------------
# The crate's own tests (the stub executed from a real arena, the stack guard, the file writers)
# built for aarch64 and run by qemu. AARCH64_CARGO_TEST=0 skips them.
cargo_log=$CACHE/cargo-test.log
rm -f "$cargo_log"
if [ "${AARCH64_CARGO_TEST:-1}" = 1 ]; then
    begin "cargo test --lib under qemu"
    in_sid env PYO3_CROSS_LIB_DIR=/usr/lib/python$PY PYO3_CROSS_PYTHON_VERSION=$PY \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -L /" CARGO_TARGET_DIR="$CACHE/target" \
        sh -c "cd $CACHE/src && cargo test --release --target $TARGET --lib" 2>&1 | tee "$cargo_log" >&2 || true
    end "cargo test (aarch64, qemu)"
fi

# --- 6. install, import under qemu -------------------------------------------------------------
begin "install + import under qemu"
arm_pip --no-deps --upgrade "$wheel" >&2
in_sid "$VENV/bin/python" - <<'EOF' >&2
import os, platform, perftramp
from perftramp import _perftramp
assert platform.machine() == "aarch64" and _perftramp.native_arch() == "aarch64", platform.machine()
perftramp.enable("map")
def smoke(): return 42
assert smoke() == 42
status = perftramp.status()
perftramp.disable()
entries = [l for l in open(status.perf_map_path).read().splitlines() if "py::smoke:" in l]
assert entries and entries[0].split()[1] == "14", entries  # 20 bytes: the aarch64 stub
os.unlink(status.perf_map_path)
print(f"import + enable under qemu: ok ({status.trampolines} trampolines, {entries[0]})")
EOF
end "install + smoke"

# --- 7. the tests ------------------------------------------------------------------------------
begin "pytest under qemu"
junit=$CACHE/junit.xml
rm -f "$junit"
read -r -a test_files <<<"$(echo $TESTS)"
set +e
# env -i: no CI and no PERFTRAMP_REQUIRE_PERF, so the perf fixture skips instead of failing.
chroot "$SID_ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH="$PREFIX/noperf:/usr/local/bin:/usr/bin:/bin" \
    PERFTRAMP_EMULATION_SLOWDOWN=$SLOWDOWN \
    timeout 2400 sh -c 'cd "$1" && shift && exec "$@"' sh "$CACHE/src" \
    "$VENV/bin/python" -m pytest -p no:cacheprovider -rfEs --basetemp="$CACHE/pytest-tmp" \
    --junitxml="$junit" "${test_files[@]}" "$@" 9>&-
rc=$?
set -e
end "pytest"

log "== times"
printf '  %s\n' "${TIMES[@]}" >&2
log "total: $(($(date +%s) - total_start))s"
[ -s "$junit" ] || { echo "aarch64: 0 passed, 0 failed, 0 skipped (pytest exit $rc, no report)"; exit 1; }
python3 - "$junit" "$rc" "$cargo_log" <<'EOF'
import collections, os, re, sys, xml.etree.ElementTree as ET
counts = collections.defaultdict(collections.Counter)
if os.path.exists(sys.argv[3]):
    # `test result: ok. 53 passed; 0 failed; 1 ignored`; no such line: the build or run failed.
    found = re.findall(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored",
                       open(sys.argv[3]).read(), re.M)
    c = counts["cargo test --lib (Rust)"]
    for passed, failed, ignored in found:
        c.update(passed=int(passed), failed=int(failed), skipped=int(ignored))
    if not found:
        c["failed"] += 1
for case in ET.parse(sys.argv[1]).iter("testcase"):
    path = "/".join(case.get("classname", "?").split(".")[:2]) + ".py"  # tests.test_x[.Class]
    outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
               else "skipped" if case.find("skipped") is not None else "passed")
    counts[path][outcome] += 1
total = collections.Counter()
for path in sorted(counts):
    c = counts[path]
    total.update(c)
    print(f"  {path:34} {c['passed']:4} passed {c['failed']:3} failed {c['skipped']:3} skipped")
print(f"aarch64: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
sys.exit(1 if total["failed"] or int(sys.argv[2]) or not total["passed"] + total["failed"] else 0)
EOF
