"""The repository's own scripts: pieces that can be checked without running them whole (they
install packages and build interpreters)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent


def apt_mirror(files: List[Path]) -> str:
    """scripts/build-fp-python.sh's apt_mirror function, run on the given apt source files."""
    script = (ROOT / "scripts" / "build-fp-python.sh").read_text()
    start = script.index("apt_mirror() {")
    function = script[start:script.index("\n}\n", start) + 3]
    proc = subprocess.run(["bash", "-c", function + 'apt_mirror "$@"', "apt_mirror",
                           *map(str, files)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.once
def test_build_fp_python_takes_the_mirror_from_the_hosts_apt_sources(tmp_path):
    """The sid source entry uses the mirror this host's apt uses (issue 20: it wrote
    deb.debian.org, which a host behind its own mirror may not reach)."""
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example.internal/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example.internal/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    assert apt_mirror([deb822]) == "http://mirror.example.internal/debian"
    # A security archive first is skipped (it has no sid); one-line sources with options too.
    security = tmp_path / "security.list"
    security.write_text("deb http://security.debian.org/debian-security bookworm-security main\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# deb http://commented.example/debian sid main\n"
                        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] "
                        "https://ftp.example.org/debian bookworm main\n")
    assert apt_mirror([security, one_line]) == "https://ftp.example.org/debian"
    assert apt_mirror([security]) == ""
    assert apt_mirror([tmp_path / "missing.sources"]) == ""
    # No host name is written into the script's sid entry any more: it comes from $MIRROR.
    script = (ROOT / "scripts" / "build-fp-python.sh").read_text()
    entry = script[script.index("Types: deb-src"):script.index("\nSRC\n", script.index("Types: deb-src"))]
    assert "URIs: $MIRROR" in entry and "deb.debian.org" not in entry, entry
