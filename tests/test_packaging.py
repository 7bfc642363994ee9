"""What an installed perftramp carries: one version number everywhere, and the files a user's
install needs (start hook, typing marker, stubs), whichever way it was installed (wheel, sdist,
source tree)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import perftramp

ROOT = Path(__file__).resolve().parent.parent


def cargo_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    assert match, "no version in Cargo.toml"
    return match.group(1)


def test_one_version_everywhere():
    version = cargo_version()
    assert perftramp.__version__ == version
    assert importlib.metadata.version("perftramp") == version
    out = subprocess.run([sys.executable, "-m", "perftramp", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"perftramp {version}"


def test_an_install_carries_the_start_hook_typing_marker_and_stubs():
    package = Path(perftramp.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_perftramp.pyi").is_file()
    assert not (package / "tests").exists()
    purelib = Path(sysconfig.get_paths()["purelib"])
    platlib = Path(sysconfig.get_paths()["platlib"])
    hooks = [d / "perftramp.pth" for d in {purelib, platlib} if (d / "perftramp.pth").is_file()]
    assert hooks, f"no perftramp.pth in {purelib}"
    assert "perftramp._startup" in hooks[0].read_text()
    files = importlib.metadata.files("perftramp") or []
    debris = [str(f) for f in files if re.search(r"(^|/)(tests?|target|\.venvs|benchmarks)/", str(f))]
    assert not debris, debris
