#!/usr/bin/env bash
# Real CPython 3.14 and 3.15 (Debian sid's packages, 3.15 built with frame pointers) on a Debian
# bookworm host, in a sid chroot, with sid's perf 7.x and the host's perf 6.1 copied in as
# /opt/hostperf/bin/perf. scripts/test.sh runs perftramp's tests there (it builds perftramp into
# the venvs itself). Adapted from the team's shared/tools/sid-pythons.sh (steps 1-2 only), so that
# a CI clone without that folder beside it still sets the chroot up.
#
# Idempotent: every step is skipped when its result is already there (a second run only mounts).
#
#   bash scripts/sid-chroot.sh            # chroot, interpreters, both perfs
#   bash scripts/sid-chroot.sh --umount   # unmount the chroot's bind mounts (before any rm -rf)
#
# Settings (environment):
#   SID_ROOT=/opt/sid      where the chroot lives
#   MIRROR=<url>           the Debian mirror (default: the first one this host's apt uses)
#   PYTHONS="3.14 3.15"    interpreters to install
#   HOST_PERF=1            also copy the host's perf into the chroot (0 to skip)
#
# The chroot shares the host's /tmp, /proc, /sys (with tracefs) and /dev (and so the pid space): files built
# or read inside must be under /tmp. Run things with:
#   chroot /opt/sid /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin CMD
set -euo pipefail

SID_ROOT=${SID_ROOT:-/opt/sid}
MIRROR=${MIRROR:-$( { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } | awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}')}
[ -n "$MIRROR" ] || { echo 'sid-pythons: set MIRROR (no Debian mirror found in apt sources)' >&2; exit 1; }
PYTHONS=${PYTHONS:-"3.14 3.15"}
HOST_PERF=${HOST_PERF:-1}
MOUNTS=(proc sys dev dev/pts tmp)
CLEAN_ENV=(/usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb
           PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)

log() { printf '[setup-sid %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mount)"

# tracefs: /sys is bind-mounted without its submounts (not --rbind: umount_all would have to
# undo every one), so the chroot's /sys/kernel/tracing is an empty directory unless tracefs is
# mounted there too; perf needs it for tracepoints (record --off-cpu's sched:sched_switch).
TRACEFS=sys/kernel/tracing

umount_all() {
    local i m
    if mountpoint -q "$SID_ROOT/$TRACEFS"; then umount "$SID_ROOT/$TRACEFS" && log "unmounted $SID_ROOT/$TRACEFS"; fi
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m="$SID_ROOT/${MOUNTS[i]}"
        if mountpoint -q "$m"; then umount "$m" && log "unmounted $m"; fi
    done
}
if [ "${1:-}" = "--umount" ]; then umount_all; exit 0; fi

mount_all() {
    local m
    for m in "${MOUNTS[@]}"; do
        mkdir -p "$SID_ROOT/$m"
        mountpoint -q "$SID_ROOT/$m" || mount --bind "/$m" "$SID_ROOT/$m"
    done
    # A tracefs instance of its own (the same kernel state as the host's), idempotently.
    mountpoint -q "$SID_ROOT/$TRACEFS" || mount -t tracefs nodev "$SID_ROOT/$TRACEFS"
    cp -L /etc/resolv.conf "$SID_ROOT/etc/resolv.conf"
}
in_sid() { chroot "$SID_ROOT" "${CLEAN_ENV[@]}" "$@"; }

declare -a TIMES=()
step_start=0 total_start=$(date +%s)
begin() { step_start=$(date +%s); log "== $*"; }
end() { local d=$(($(date +%s) - step_start)); TIMES+=("$(printf '%-44s %4ss' "$1" "$d")"); }

# --- 1. the chroot --------------------------------------------------------------------------
begin "host: debootstrap"
if ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
end "host: apt-get install debootstrap"

begin "debootstrap --variant=minbase sid $SID_ROOT"
if [ -x "$SID_ROOT/usr/bin/dpkg-query" ] &&
   [ "$(chroot "$SID_ROOT" dpkg-query -W -f='${Status}' apt 2>/dev/null)" = "install ok installed" ]; then
    log "chroot already there"
else
    # A half-made root (interrupted run): debootstrap is rerun over it.
    umount_all
    debootstrap --variant=minbase sid "$SID_ROOT" "$MIRROR"
fi
end "debootstrap minbase sid"

begin "mounts, CA certificates, apt settings"
mount_all
# The archive snapshot behind the mirror can carry an expired sid Release file.
echo 'Acquire::Check-Valid-Until "false";' >"$SID_ROOT/etc/apt/apt.conf.d/99no-check-valid-until"
echo 'APT::Install-Recommends "false";' >"$SID_ROOT/etc/apt/apt.conf.d/99no-recommends"
# HTTPS (the Python and Rust package registries) goes through the host's CAs (e.g. an intercepting proxy): copy the
# host's local CAs in; update-ca-certificates runs once ca-certificates is installed below.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$SID_ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$SID_ROOT/usr/local/share/ca-certificates/"
fi
end "mounts + CA + apt settings"

begin "apt-get install (interpreters, toolchain, perf) in the chroot"
# Not the aarch64 cross tools and qemu (their tests are interpreter-independent and run on the
# host) nor the -dbg interpreters (no tier here uses them): a fresh chroot is set up faster.
# golang-go: `go tool pprof`, the reader tests/test_export.py checks the pprof export with;
# chromium: runs speedscope's own app on the speedscope export (tests/readers.py).
packages=(ca-certificates git gcc libc6-dev pkg-config binutils cargo rustc linux-perf golang-go
          chromium)
for v in $PYTHONS; do
    # -testsuite: CPython's own tests, which scripts/test.sh runs through scripts/cpython_regrtest.py
    packages+=("python$v" "python$v-dev" "python$v-venv" "libpython$v-testsuite")
done
missing=()
for p in "${packages[@]}"; do in_sid dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    in_sid apt-get update -q
    in_sid env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
    log "all packages already installed"
fi
in_sid update-ca-certificates >/dev/null
end "apt-get install in chroot"

if [ "$HOST_PERF" = 1 ] && [ -x /usr/bin/perf ]; then
    begin "host perf into the chroot (/opt/hostperf/bin/perf)"
    h="$SID_ROOT/opt/hostperf"
    if [ ! -x "$h/bin/perf" ] || ! cmp -s /usr/bin/perf "$h/perf"; then
        rm -rf "$h"; mkdir -p "$h/lib" "$h/bin"
        cp /usr/bin/perf "$h/perf"
        ldd /usr/bin/perf | awk '$3 ~ /^\// {print $3}' | xargs cp -L -t "$h/lib/"
        cp -L /lib64/ld-linux-x86-64.so.2 "$h/lib/ld.so"
        cat >"$h/bin/perf" <<'EOF'
#!/bin/sh
# The host's perf (with its own libraries) inside the sid chroot.
exec /opt/hostperf/lib/ld.so --library-path /opt/hostperf/lib /opt/hostperf/perf "$@"
EOF
        chmod +x "$h/bin/perf"
    fi
    end "host perf copied into chroot"
fi

# --- 2. what the interpreters are ------------------------------------------------------------
begin "interpreter report"
for v in $PYTHONS; do
    for py in "python$v" "python${v}d"; do
        in_sid sh -c "command -v $py" >/dev/null || continue
        in_sid "$py" - <<'EOF'
import sys, sysconfig, subprocess
cv = sysconfig.get_config_var
cflags = " ".join(str(cv(k) or "") for k in ("CFLAGS", "PY_CFLAGS", "CONFIG_ARGS"))
fp = "-fno-omit-frame-pointer" in cflags
print(f"{sys.executable}: {sys.version.split()[0]} | frame pointers: {'yes' if fp else 'no'}"
      f" | PY_HAVE_PERF_TRAMPOLINE={cv('PY_HAVE_PERF_TRAMPOLINE')} | Py_GIL_DISABLED={cv('Py_GIL_DISABLED')}"
      f" | Py_DEBUG={cv('Py_DEBUG')}")
for opt in ("perf", "perf_jit"):
    r = subprocess.run([sys.executable, "-X", opt, "-c", "import sys; print(sys.is_stack_trampoline_active())"],
                       capture_output=True, text=True)
    print(f"    -X {opt}: {'works' if r.stdout.strip() == 'True' else 'FAILS ' + r.stderr.strip()[-200:]}")
EOF
    done
    in_sid sh -c "command -v python${v}t" >/dev/null && log "python${v}t exists" || log "no python${v}t (free-threaded) in sid"
done
in_sid rustc -V; in_sid cargo -V; in_sid perf version
end "interpreter report"

log "== times"
printf '  %s\n' "${TIMES[@]}" >&2
log "total: $(($(date +%s) - total_start))s"
log "mounted: ${MOUNTS[*]} $TRACEFS under $SID_ROOT (bash $0 --umount before removing it)"
