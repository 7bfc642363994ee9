"""What a Python frame is called in the Python view: `qualname (file.py:LINE)`, from the name
perftramp gives perf (`py::<qualname>:<filename>`).

The line is the function's definition line (its code object's co_firstlineno: the first
decorator's line for a decorated function), found by reading the source file: perf-map names
carry no line. Limits, by design: a file that is gone or changed since the recording gives no
line or a wrong one; names that occur twice in a file (`<lambda>`, `<genexpr>`, two functions
of one name under `if`/`else`) and functions made by `exec` get no line; 3.9/3.10 name code
objects by co_name only, so a bare name gets a line only when it is unique in its file.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

#: The prefix perftramp (and CPython's own trampoline) gives every Python frame.
PYTHON_PREFIX = "py::"

# A `def`/`class` statement at the start of a line (any indentation).
_DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?(?P<kind>def|class)[ \t]+(?P<name>\w+)")
#: Source files larger than this are not read for definition lines (generated code).
MAX_SOURCE_BYTES = 8 << 20


def parse_python_symbol(symbol: str) -> Optional[Tuple[str, str]]:
    """`py::Outer.run:/src/app.py` -> ("Outer.run", "/src/app.py"); None for other symbols.
    A qualname never holds `:`, a file name may: split at the first one."""
    if not symbol.startswith(PYTHON_PREFIX):
        return None
    qualname, sep, filename = symbol[len(PYTHON_PREFIX):].partition(":")
    if not sep:
        return qualname, ""
    return qualname, filename


def short_file(filename: str) -> str:
    """The base name of a source file (`<frozen importlib._bootstrap>` and `<string>` whole)."""
    if filename.startswith("<") and filename.endswith(">"):
        return filename
    return filename.rsplit("/", 1)[-1] or filename


def python_label(qualname: str, filename: str, line: Optional[int]) -> str:
    """`qualname (file.py:LINE)`, or `qualname (file.py)` without a line."""
    where = short_file(filename)
    if not where:
        return qualname
    return f"{qualname} ({where}:{line})" if line else f"{qualname} ({where})"


def _first_decorator(lines: List[str], index: int, indent: int) -> int:
    """The index of the first decorator line of the `def`/`class` at `lines[index]`
    (`index` itself when it has none): earlier lines at its indent that start with `@`, with
    what is indented deeper (a decorator's arguments over several lines) in between."""
    first = index
    j = index - 1
    while j >= 0:
        text = lines[j]
        stripped = text.strip()
        width = len(text) - len(text.lstrip())
        if not stripped or stripped.startswith("#") or width > indent or stripped[0] in ")]}":
            j -= 1
            continue
        if width == indent and stripped.startswith("@"):
            first = j
            j -= 1
            continue
        break
    return first


def scan_definitions(source: str) -> Dict[str, List[int]]:
    """Qualname (and, for 3.9/3.10's bare names, name) -> definition lines, by scanning `def` and
    `class` lines with their indentation (much faster than `ast` on the thousands of files a
    large program imports; a `def` inside a string literal is the price)."""
    found: Dict[str, List[int]] = {}
    lines = source.expandtabs().splitlines()
    # (indent width, qualname prefix for children) of the enclosing definitions.
    scopes: List[Tuple[int, str]] = []
    for index, text in enumerate(lines):
        match = _DEF.match(text)
        if match is None:
            continue
        indent = len(match.group("indent"))
        while scopes and scopes[-1][0] >= indent:
            scopes.pop()
        prefix = scopes[-1][1] if scopes else ""
        name = match.group("name")
        qualname = prefix + name
        first = _first_decorator(lines, index, indent) + 1
        found.setdefault(qualname, []).append(first)
        if qualname != name:
            found.setdefault(name, []).append(first)
        scopes.append((indent, qualname + (".<locals>." if match.group("kind") == "def" else ".")))
    return found


class DefinitionLines:
    """Definition lines of Python functions, each source file read once."""

    def __init__(self) -> None:
        self._files: Dict[str, Optional[Dict[str, List[int]]]] = {}

    def _definitions(self, filename: str) -> Optional[Dict[str, List[int]]]:
        if filename in self._files:
            return self._files[filename]
        definitions: Optional[Dict[str, List[int]]] = None
        if filename.startswith("/") and filename.endswith((".py", ".pyw")):
            try:
                if os.path.getsize(filename) <= MAX_SOURCE_BYTES:
                    with open(filename, encoding="utf-8", errors="replace") as file:
                        definitions = scan_definitions(file.read())
            except OSError:
                definitions = None
        self._files[filename] = definitions
        return definitions

    def line_of(self, filename: str, qualname: str) -> Optional[int]:
        """The definition line of `qualname` in `filename`, None when unknown or ambiguous."""
        if qualname == "<module>":
            return None  # always line 1: no information
        definitions = self._definitions(filename)
        if not definitions:
            return None
        lines = definitions.get(qualname)
        if lines is None or len(set(lines)) != 1:
            return None
        return lines[0]
