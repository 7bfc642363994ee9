#!/usr/bin/env bash
# Release artifacts: one manylinux wheel per CPython found, plus an sdist, each checked.
#
#   bash scripts/build-wheels.sh [OUTDIR]          # default dist/
#   PERFTRAMP_PYTHONS="/path/python3.9 ..." bash scripts/build-wheels.sh   # chosen interpreters
#   PERFTRAMP_SID_WHEELS=0 ...                     # skip 3.14/3.15 from the sid chroot
#   PERFTRAMP_FT_WHEELS=0 ...                      # skip the free-threaded cp314t/cp315t wheels
#
# Wheels are built by maturin with zig as the linker (`--zig`), whose bundled glibc stubs make
# the extension link against glibc 2.17 symbols only: manylinux2014 / manylinux_2_17, the
# oldest policy Rust's std supports, so one wheel installs on any Linux of the last decade. No
# abi3: the extension reads CPython internals, so there is one wheel per interpreter. Interpreters:
# pyenv's CPython 3.9+ on the host; 3.14 and 3.15 are built inside the sid chroot
# (scripts/sid-chroot.sh or ../shared/tools/sid-pythons.sh) when it exists at ${SID_ROOT:-/opt/sid};
# free-threaded 3.14t/3.15t (cp314t, cp315t wheels) from scripts/build-fp-python.sh's cache when
# they were built there (this script does not build them: half an hour each).
# Each wheel is checked: `auditwheel show` must accept the manylinux_2_17 policy, and it must
# hold the start hook (perftramp.pth), py.typed, the stubs and nothing from tests/ or target/.
# Ends with one line per artifact: its name and size.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
policy=manylinux_2_17
log() { echo "build-wheels: $*" >&2; }

# Build tools in their own venv, pinned to what was tested.
tools="$root/.venvs/build-tools"
if [ ! -x "$tools/bin/maturin" ] || [ ! -x "$tools/bin/auditwheel" ] || ! "$tools/bin/python" -c 'import ziglang' 2>/dev/null; then
    host_python=$(command -v python3)
    "$host_python" -m venv "$tools"
    "$tools/bin/pip" install -q "maturin==1.16.*" "ziglang==0.17.*" "auditwheel==6.*" 2>/dev/null \
        || "$tools/bin/pip" install -q "maturin>=1.7,<2" ziglang auditwheel
fi
export PATH="$tools/bin:$PATH"

declare -a pythons=()
if [ -n "${PERFTRAMP_PYTHONS:-}" ]; then
    read -r -a pythons <<<"$PERFTRAMP_PYTHONS"
else
    for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*; do
        [ -x "$dir/bin/python3" ] || continue
        "$dir/bin/python3" -c 'import sys; sys.exit(not (sys.version_info >= (3, 9) and sys.implementation.name == "cpython"))' 2>/dev/null \
            && pythons+=("$dir/bin/python3")
    done
fi
if [ -z "${PERFTRAMP_PYTHONS:-}" ] && [ "${PERFTRAMP_FT_WHEELS:-1}" = 1 ]; then
    for t in 3.14t 3.15t; do
        ft="${PERFTRAMP_CACHE:-$HOME/.cache/perftramp}/python$t-fp/bin/python$t"
        if [ -x "$ft" ]; then pythons+=("$ft"); else log "no $t at $ft (scripts/build-fp-python.sh $t): no cp${t//./} wheel"; fi
    done
fi

built=()
for py in "${pythons[@]}"; do
    log "wheel for $("$py" -c 'import sys; print(sys.version.split()[0])') ($py)"
    maturin build --quiet --release --zig --compatibility manylinux2014 -i "$py" -o "$out" >&2
done

sid_root=${SID_ROOT:-/opt/sid}
if [ "${PERFTRAMP_SID_WHEELS:-1}" = 1 ] && [ -x "$sid_root/usr/bin/python3.14" ]; then
    # The chroot sees the host's /tmp only: build from a copy of the tree there.
    src=$(mktemp -d /tmp/perftramp-wheel-src.XXXXXX)
    trap 'rm -rf "$src"' EXIT
    git -C "$root" ls-files -z | (cd "$root" && xargs -0 tar cf - 2>/dev/null) | tar xf - -C "$src"
    in_sid() { chroot "$sid_root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/opt/venvs/wheel-tools/bin:/usr/local/bin:/usr/bin:/bin "$@"; }
    if ! in_sid test -x /opt/venvs/wheel-tools/bin/maturin; then
        in_sid python3.14 -m venv /opt/venvs/wheel-tools
        in_sid /opt/venvs/wheel-tools/bin/pip install -q "maturin>=1.7,<2" ziglang >&2
    fi
    for v in 3.14 3.15; do
        in_sid test -x "/usr/bin/python$v" || continue
        log "wheel for CPython $v (sid chroot)"
        in_sid sh -c "cd $src && maturin build --quiet --release --zig --compatibility manylinux2014 -i python$v -o $src/dist" >&2
    done
    cp "$src"/dist/*.whl "$out"/ 2>/dev/null || true
fi

log "sdist"
maturin sdist -o "$out" >&2

failed=0
for wheel in "$out"/perftramp-*.whl; do
    shown=$(auditwheel show "$wheel" 2>&1)
    if ! grep -q "\"$policy" <<<"$shown"; then
        log "auditwheel does not accept $(basename "$wheel") as $policy:"; echo "$shown" >&2; failed=1
    fi
    listing=$(python3 -m zipfile -l "$wheel")
    for needed in perftramp.pth perftramp/py.typed perftramp/_perftramp.pyi; do
        grep -q " *$needed " <<<"$listing" || grep -q "^$needed " <<<"$listing" \
            || { log "$(basename "$wheel") lacks $needed"; failed=1; }
    done
    if grep -qE '(^|/)(tests|target|\.venvs|benchmarks)/' <<<"$listing"; then
        log "$(basename "$wheel") carries build or test debris"; failed=1
    fi
done
for artifact in "$out"/perftramp-*; do
    printf '%8s  %s\n' "$(du -k "$artifact" | cut -f1)K" "$(basename "$artifact")"
done
[ "$failed" = 0 ]
