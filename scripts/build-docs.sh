#!/usr/bin/env bash
# Builds the documentation pages (docs/*.md, mkdocs.yml) into target/site with MkDocs, strictly:
# any warning (a broken link or anchor, a page missing from the nav) fails the build. Needs only
# a Python 3 and PyPI: MkDocs goes into its own venv under target/, made once and reused.
#
#   bash scripts/build-docs.sh                    # with python3 on PATH
#   bash scripts/build-docs.sh /path/to/python3   # the interpreter that makes the venv
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python="${1:-python3}"
# Pinned: a new MkDocs may add warnings (strict turns them into failures) or change the output.
mkdocs_version=1.6.1
venv="$root/target/docs-venv"

if ! "$venv/bin/python" -c 'import mkdocs, sys; sys.exit(mkdocs.__version__ != sys.argv[1])' \
        "$mkdocs_version" 2>/dev/null; then
    echo "build-docs: installing mkdocs==$mkdocs_version into $venv" >&2
    rm -rf "$venv"
    if "$python" -m venv "$venv" >/dev/null 2>&1; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "mkdocs==$mkdocs_version"
    else
        # Debian's python3 without python3-venv has no ensurepip: a venv without pip, filled by
        # the interpreter's own pip (22.3+ installs into another environment with --python).
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv" || {
            echo "build-docs: $python cannot make a venv; pass another python as \$1" >&2; exit 1; }
        "$python" -m pip --python "$venv/bin/python" install -q --disable-pip-version-check \
            "mkdocs==$mkdocs_version" || {
            echo "build-docs: no pip to install mkdocs with (apt-get install python3-venv, or pass" \
                 "a python that has pip as \$1)" >&2; exit 1; }
    fi
fi

# MkDocs' strict mode aborts on warnings it counts, but some messages (from Markdown extensions,
# or logged outside the counter) only print: fail on any WARNING line as well.
log="$root/target/docs-build.log"
set +e
"$venv/bin/python" -m mkdocs build --strict --clean --config-file "$root/mkdocs.yml" 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
set -e
if [ "$code" -ne 0 ]; then
    echo "build-docs: mkdocs build failed (exit $code)" >&2
    exit 1
fi
if grep -qE '^(WARNING|ERROR)\b' "$log"; then
    echo "build-docs: mkdocs printed warnings (above): failing" >&2
    exit 1
fi
echo "build-docs: the site is in $root/target/site (open $root/target/site/index.html)"
