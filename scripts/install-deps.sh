#!/usr/bin/env bash
# Installs what perftramp's tests and demo need on a fresh Debian machine (idempotent: only
# missing packages are installed). Needs root for apt-get; prints what it would need otherwise.
set -euo pipefail

packages=(
    linux-perf                       # perf record / script / inject
    binutils                         # objdump, readelf
    gdb                              # reads core dumps of crashes at exit (tests/test_robustness.py)
    gcc libc6-dev                    # x86_64 slot harness
    gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross
    qemu-user-static                 # runs the aarch64 slot harness
    golang-go                        # go tool pprof reads report --format pprof (tests/test_export.py)
    chromium                         # runs speedscope's own app on report --format speedscope (tests/readers.py)
)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing packages (run as root): ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: no Rust toolchain (cargo) on PATH; install one with rustup" >&2
    exit 1
fi
