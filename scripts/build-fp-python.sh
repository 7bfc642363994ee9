#!/usr/bin/env bash
# Build a CPython with frame pointers (-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer)
# from the upstream tarball inside Debian's (sid) source package, and cache it.
#
# Why: perf's frame-pointer unwinding only gives full stacks through an interpreter built
# with frame pointers, and no prebuilt one is available here. This is the only way to test
# full `--call-graph fp` stacks.
#
# Usage: scripts/build-fp-python.sh [3.13|3.14|3.14t|3.15t]
# A trailing `t` builds the free-threaded variant (`./configure --disable-gil`, PEP 703), still
# with frame pointers (they cost ~1-2% here and give `--call-graph fp` stacks on it too); its
# interpreter is bin/python<ver>t.
# Prints the path of the built interpreter on stdout (last line). Cached under
# ${PERFTRAMP_CACHE:-$HOME/.cache/perftramp}/python<ver>[t]-fp; a second run is instant.
#
# Settings (environment):
#   MIRROR=<url>   the Debian mirror for the sid source entry, when apt has none for sid
#                  (default: the first Debian mirror this host's apt uses, as in sid-chroot.sh)
#   SOURCE_TARBALL=<file>  an upstream tarball of the series to build instead of Debian's
#                  (e.g. python3.14_3.14.4.orig.tar.xz from Ubuntu's source package, when the
#                  mirror has lost Debian's files: it answered 404 for python3.14 here)
set -euo pipefail

arg="${1:-3.13}"
series="${arg%t}"                   # the Debian source package: python<series>
variant="${arg#"$series"}"          # "t" for the free-threaded build, "" otherwise
case "$series" in 3.[0-9]|3.[0-9][0-9]) ;; *) echo "build-fp-python: bad version '$arg' (3.13, 3.14t, ...)" >&2; exit 2;; esac
cache="${PERFTRAMP_CACHE:-$HOME/.cache/perftramp}"
prefix="$cache/python${series}${variant}-fp"
exe="$prefix/bin/python${series}${variant}"
extra_configure=()
[ "$variant" != t ] || extra_configure=(--disable-gil)
log() { echo "build-fp-python: $*" >&2; }

if [ -x "$exe" ] && [ -f "$prefix/.complete" ]; then
    log "cached: $prefix ($(cat "$prefix/.complete"))"
    echo "$exe"
    exit 0
fi

need_root() { if [ "$(id -u)" != 0 ]; then log "need root to install build dependencies: $*"; exit 1; fi; }

# The first mirror URI in these apt source files (deb822 `URIs:` or one-line `deb [opts] URI`),
# skipping security archives (they carry no sid): the mirror this host is configured to reach
# (a local mirror, a proxy, a snapshot), where deb.debian.org itself may be unreachable.
apt_mirror() {
    cat "$@" 2>/dev/null | awk '
        /^[ \t]*URIs:/ || /^[ \t]*deb(-src)?[ \t]/ {
            for (i = 2; i <= NF; i++)
                if ($i ~ /^[a-z+]+:\/\// && $i !~ /security/) { print $i; exit }
        }'
}

if [ -n "${SOURCE_TARBALL:-}" ]; then
    SOURCE_TARBALL=$(cd "$(dirname "$SOURCE_TARBALL")" && pwd)/$(basename "$SOURCE_TARBALL")
    [ -f "$SOURCE_TARBALL" ] || { log "SOURCE_TARBALL=$SOURCE_TARBALL: no such file"; exit 1; }
fi

# Debian's source list for sid (deb-src only: we take sources, never binaries, from sid).
src_list=/etc/apt/sources.list.d/perftramp-sid-src.sources
if [ -z "${SOURCE_TARBALL:-}" ] && ! apt-cache showsrc "python${series}" 2>/dev/null | grep -q "^Package: python${series}"; then
    need_root "sid deb-src entry"
    if [ -z "${MIRROR:-}" ]; then
        shopt -s nullglob
        sources=()
        for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
            [ "$f" = "$src_list" ] || [ ! -f "$f" ] || sources+=("$f")
        done
        shopt -u nullglob
        MIRROR=$([ "${#sources[@]}" -eq 0 ] || apt_mirror "${sources[@]}")
    fi
    [ -n "${MIRROR:-}" ] || { log "no Debian mirror found in this host's apt sources (/etc/apt/sources.list.d/, /etc/apt/sources.list): set MIRROR=<url of a Debian mirror>, e.g. MIRROR=http://deb.debian.org/debian"; exit 1; }
    log "sid deb-src entry in $src_list, from the mirror $MIRROR"
    cat > "$src_list" <<SRC
Types: deb-src
URIs: $MIRROR
Suites: sid trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq >&2
fi

deps=(build-essential dpkg-dev xz-utils pkg-config zlib1g-dev libssl-dev libffi-dev libbz2-dev
      liblzma-dev libsqlite3-dev libreadline-dev libzstd-dev uuid-dev libgdbm-dev libncurses-dev)
missing=()
for d in "${deps[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ "${#missing[@]}" -gt 0 ]; then
    need_root "${missing[*]}"
    log "installing build deps: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

work="$cache/build-python${series}${variant}"
rm -rf "$work"; mkdir -p "$work"; cd "$work"
if [ -n "${SOURCE_TARBALL:-}" ]; then
    orig=$SOURCE_TARBALL
else
    # The mirror may list versions whose files it no longer holds: try each, newest first.
    got=""
    for v in $(apt-cache showsrc "python${series}" | awk '/^Version:/ {print $2}' | sort -rV | uniq); do
        log "downloading Debian source package python${series}=$v"
        if apt-get source --download-only -qq "python${series}=$v" >/dev/null 2>&1; then got=$v; break; fi
        rm -f ./*
    done
    [ -n "$got" ] || { log "no source package of python${series} could be downloaded from Debian (SOURCE_TARBALL= builds from a tarball you have)"; exit 1; }
    orig=$(ls python"${series}"_*.orig.tar.* | head -n1)
fi
log "unpacking upstream tarball $orig (without Debian's patches: a plain upstream build)"
tar xf "$orig"
srcdir=$(find . -maxdepth 1 -type d -name 'Python-*' | head -n1)
[ -n "$srcdir" ] || { log "no Python-* directory in $orig"; exit 1; }
cd "$srcdir"

fp_flags="-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer"
log "configuring with CFLAGS='$fp_flags' ${extra_configure[*]} into $prefix"
./configure -q --prefix="$prefix" --with-ensurepip=install --without-doc-strings "${extra_configure[@]}" \
    CFLAGS="$fp_flags" CFLAGS_NODIST="$fp_flags" >&2
log "building (a few minutes)"
make -s -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; exit 1; }
make -s install >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log" >&2; exit 1; }
"$exe" -c 'import sysconfig, sys
assert "-fno-omit-frame-pointer" in sysconfig.get_config_var("CFLAGS"), "frame pointers missing"
assert bool(sysconfig.get_config_var("Py_GIL_DISABLED")) == (sys.argv[1] == "t"), "wrong GIL variant"
print(sys.version)' "$variant" > "$prefix/.complete"
cd /; rm -rf "$work"
log "built: $(cat "$prefix/.complete")"
echo "$exe"
