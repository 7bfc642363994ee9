"""What a Python frame is called in the Python view: `qualname (file.py:LINE)`, from the name
perftramp gives perf (`py::<qualname>:<filename>`).

The line is the function's definition line (its code object's co_firstlineno: the first
decorator's line for a decorated function), found by reading the source file: perf-map names
carry no line. `def`/`class` lines are found by a fast scan of the text; lambdas, generator
expressions and (before 3.12) comprehensions, which have no `def` line, from the file's syntax
tree, parsed only when such a frame is drawn. Limits, by design: a file that is gone or changed
since the recording gives no line or a wrong one; a name that occurs twice in its scope (two
lambdas in one function, two functions of one name under `if`/`else`) and functions made by
`exec` get no line; 3.9/3.10 name code objects by co_name only, so a bare name (`<lambda>`
included) gets a line only when it is unique in its file.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    import ast

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


#: The names CPython gives code objects that have no `def` line (list, set and dict
#: comprehensions are code objects of their own before 3.12 only: PEP 709 inlined them).
ANONYMOUS = frozenset({"<lambda>", "<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"})


def scan_anonymous(source: str) -> Dict[str, List[int]]:
    """Qualname (and, for 3.9/3.10, name) -> first lines of the lambdas, generator expressions
    and comprehensions of a source file, from its syntax tree: CPython gives their code objects
    the line where the expression starts (co_firstlineno), which is the node's `lineno`.

    Qualnames follow CPython's rules (the children of a function or lambda get `<locals>.`,
    those of a class or comprehension do not).
    What a child is evaluated in decides its parent: decorators, default values, class bases and
    a comprehension's first iterable belong to the enclosing scope. A lambda or generator inside
    a list/set/dict comprehension is listed both under the comprehension (before 3.12) and
    without it (3.12+, where the comprehension is inlined)."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    found: Dict[str, List[int]] = {}
    names = {ast.Lambda: "<lambda>", ast.GeneratorExp: "<genexpr>", ast.ListComp: "<listcomp>",
             ast.SetComp: "<setcomp>", ast.DictComp: "<dictcomp>"}
    inlined = (ast.ListComp, ast.SetComp, ast.DictComp)

    def add(name: str, qualnames: List[str], line: int) -> None:
        for qualname in dict.fromkeys(qualnames):
            found.setdefault(qualname, []).append(line)
        if name not in qualnames:
            found.setdefault(name, []).append(line)

    def children_prefixes(qualnames: List[str], kind: str) -> List[str]:
        # CPython adds `<locals>` under functions and lambdas only (not classes, not
        # comprehensions: `f.<locals>.<genexpr>.<lambda>`).
        return [q + (".<locals>." if kind == "function" else ".") for q in qualnames]

    # (node, qualname prefixes of the code it makes: "" at module level)
    todo: List[Tuple[ast.AST, List[str]]] = [(tree, [""])]
    while todo:
        node, prefixes = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualnames = [p + node.name for p in prefixes]
            outer = list(node.decorator_list)
            if isinstance(node, ast.ClassDef):
                outer += list(node.bases) + [k.value for k in node.keywords]
                kind = "class"
            else:
                outer += _argument_values(node.args)
                kind = "function"
            todo.extend((child, prefixes) for child in outer)
            inner = children_prefixes(qualnames, kind)
            todo.extend((child, inner) for child in node.body)
            continue
        name = names.get(type(node))
        if name is None:
            todo.extend((child, prefixes) for child in ast.iter_child_nodes(node))
            continue
        qualnames = [p + name for p in prefixes]
        add(name, qualnames, node.lineno)  # type: ignore[attr-defined]
        inner = children_prefixes(qualnames, "function" if name == "<lambda>" else "comprehension")
        if isinstance(node, inlined):
            inner += prefixes  # 3.12+: no code object of its own
        if isinstance(node, ast.Lambda):
            todo.extend((child, prefixes) for child in _argument_values(node.args))
            todo.append((node.body, inner))
            continue
        generators = node.generators  # type: ignore[attr-defined]
        todo.append((generators[0].iter, prefixes))  # evaluated before entering it
        rest: List[ast.AST] = [generators[0].target, *generators[0].ifs]
        for generator in generators[1:]:
            rest += [generator.target, generator.iter, *generator.ifs]
        if isinstance(node, ast.DictComp):
            rest += [node.key, node.value]
        else:
            rest.append(node.elt)  # type: ignore[attr-defined]
        todo.extend((child, inner) for child in rest)
    return found


def _argument_values(args: ast.arguments) -> List[ast.AST]:
    """What a def or lambda evaluates where it is defined: defaults and annotations."""
    values: List[ast.AST] = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
    for arg in [*getattr(args, "posonlyargs", []), *args.args, *args.kwonlyargs,
                *(a for a in (args.vararg, args.kwarg) if a is not None)]:
        if arg.annotation is not None:
            values.append(arg.annotation)
    return values


class DefinitionLines:
    """Definition lines of Python functions, each source file read once."""

    def __init__(self) -> None:
        self._files: Dict[str, Optional[Dict[str, List[int]]]] = {}
        self._anonymous: Dict[str, Optional[Dict[str, List[int]]]] = {}

    @staticmethod
    def _read(filename: str) -> Optional[str]:
        if filename.startswith("/") and filename.endswith((".py", ".pyw")):
            try:
                if os.path.getsize(filename) <= MAX_SOURCE_BYTES:
                    with open(filename, encoding="utf-8", errors="replace") as file:
                        return file.read()
            except OSError:
                return None
        return None

    def _definitions(self, filename: str) -> Optional[Dict[str, List[int]]]:
        if filename not in self._files:
            source = self._read(filename)
            self._files[filename] = scan_definitions(source) if source is not None else None
        return self._files[filename]

    def _anonymous_code(self, filename: str) -> Optional[Dict[str, List[int]]]:
        if filename not in self._anonymous:
            source = self._read(filename)
            self._anonymous[filename] = scan_anonymous(source) if source is not None else None
        return self._anonymous[filename]

    def line_of(self, filename: str, qualname: str) -> Optional[int]:
        """The definition line of `qualname` in `filename`, None when unknown or ambiguous."""
        if qualname == "<module>":
            return None  # always line 1: no information
        if qualname.rsplit(".", 1)[-1] in ANONYMOUS:
            definitions = self._anonymous_code(filename)
        else:
            definitions = self._definitions(filename)
        if not definitions:
            return None
        lines = definitions.get(qualname)
        if lines is None or len(set(lines)) != 1:
            return None
        return lines[0]
