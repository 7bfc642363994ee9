#!/usr/bin/env bash
# Fetches the third-party readers the export tests open perftramp's files with (tests/readers.py),
# from registries (never from this repository: they are other projects' code), into a cache:
#
#   speedscope 1.5.3's release build, with its published file-format-schema.json: shipped inside
#   Ray's wheel on PyPI (Ray's dashboard serves it); pinned by version and sha256.
#
# Prints "NAME=DIRECTORY" lines (PERFTRAMP_SPEEDSCOPE_DIR=...) for scripts/test.sh to export.
# Idempotent: a reader already in the cache is not fetched again.
#
#   bash scripts/fetch-readers.sh [PYTHON]     # PYTHON runs pip (default: python3)
set -euo pipefail

python=${1:-python3}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/perftramp/readers"
mkdir -p "$cache"

# speedscope: ray 2.60.0 carries ray/dashboard/client/build/speedscope-1.5.3/ (MIT licence, kept
# beside it). The wheel is 79 MB; only the 0.9 MB directory is kept.
speedscope="$cache/speedscope-1.5.3"
if ! grep -qs '^speedscope@1.5.3$' "$speedscope/release.txt"; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "ray==2.60.0 --hash=sha256:b951b40965947a63615830916be04f26440d234de1e9a29dbf2155d03fa9ad2a" \
        >"$work/requirements.txt"
    echo "fetch-readers: downloading speedscope 1.5.3 (inside ray 2.60.0's wheel, 79 MB) from PyPI" >&2
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --require-hashes -r "$work/requirements.txt" -d "$work" >&2
    "$python" - "$work"/ray-2.60.0-*.whl "$work/unpacked" <<'PY'
import sys, zipfile
prefix = "ray/dashboard/client/build/speedscope-1.5.3/"
with zipfile.ZipFile(sys.argv[1]) as wheel:
    members = [n for n in wheel.namelist() if n.startswith(prefix)]
    if not members:
        sys.exit(f"fetch-readers: {sys.argv[1]} has no {prefix}")
    wheel.extractall(sys.argv[2], members)
PY
    rm -rf "$speedscope"
    mv "$work/unpacked/ray/dashboard/client/build/speedscope-1.5.3" "$speedscope"
    grep -q '^speedscope@1.5.3$' "$speedscope/release.txt" \
        || { echo "fetch-readers: $speedscope/release.txt does not name speedscope@1.5.3" >&2; exit 1; }
fi
echo "PERFTRAMP_SPEEDSCOPE_DIR=$speedscope"
