"""The README's and the documentation pages' commands, checked against the code so they cannot
drift from it: every `python -m perftramp ...` they show is parsed by the real command-line
parser, the README's and guide's record/report/doctor commands are run end to end with real
perf on a small program, and every PERFTRAMP* variable, perftramp.* call and relative link they
name must exist."""

from __future__ import annotations

import ast
import contextlib
import gzip
import inspect
import io
import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from conftest import cli, interpreter_has_frame_pointers

import perftramp
from perftramp import cli as perftramp_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
GUIDE = DOCS / "guide.md"

#: Placeholders the pages use for values a reader fills in; what the parser is given instead.
PLACEHOLDERS = {"<pid>": "4242", "PID": "4242", "$PID": "4242", "<childpid>": "4242", "N": "5",
                "HZ": "249", "S": "30"}


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(text: str, language: str) -> Iterator[Tuple[int, str]]:
    """(first line number, body) of each ```language block (not indented ones: those are
    examples of output or layouts)."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            end = i + 1
            while end < len(lines) and not re.match(r"^```\s*$", lines[end]):
                end += 1
            if match.group(1) == language:
                yield i + 2, "\n".join(lines[i + 1:end])
            i = end + 1
        else:
            i += 1


def prose(text: str) -> str:
    """The page with its fenced blocks blanked out (lines kept: numbers stay right)."""
    return re.sub(r"^```.*?^```[ \t]*$", lambda m: "\n" * m.group(0).count("\n"), text,
                  flags=re.S | re.M)


def shell_commands(block: str, first_line: int) -> Iterator[Tuple[int, List[str]]]:
    """The commands of a bash block as words (comments dropped, continuations joined)."""
    pending, start = "", first_line
    for number, line in enumerate(block.split("\n"), first_line):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        if words:
            yield start, words


@dataclass(frozen=True)
class Invocation:
    where: str  # page:line
    words: Tuple[str, ...]  # the arguments after `python -m perftramp`
    runnable: bool  # a complete command from a bash block (synopses in prose are parsed only)


def without_env_assignments(words: List[str]) -> List[str]:
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return words


def synopsis_words(span: str) -> List[str]:
    """A command written as a synopsis in prose: optional parts kept, the first of alternatives
    taken (`--format pprof|speedscope|gecko [-o FILE]` -> `--format pprof -o FILE`)."""
    span = span.replace("...", " ").replace("[", " ").replace("]", " ")
    return [word.split("|")[0] for word in shlex.split(span)]


def invocations() -> List[Invocation]:
    found: List[Invocation] = []
    for page in PAGES:
        text = page.read_text()
        for first, block in fenced_blocks(text, "bash"):
            for number, words in shell_commands(block, first):
                words = without_env_assignments(words)
                if words[:3] == ["python", "-m", "perftramp"]:
                    words = [w for w in words[3:] if w != "&"]
                    found.append(Invocation(f"{rel(page)}:{number}", tuple(words), True))
        outside = prose(text)
        for match in re.finditer(r"`(python -m perftramp|record|report|toggle|doctor)( [^`]*)`",
                                 outside):
            words = synopsis_words(match.group(2))
            if match.group(1) != "python -m perftramp":
                words = [match.group(1), *words]
            if words:  # `python -m perftramp ...` names the tool, it is no command
                line = outside[:match.start()].count("\n") + 1
                found.append(Invocation(f"{rel(page)}:{line}", tuple(words), False))
    return found


INVOCATIONS = invocations()


def substitute(words: Tuple[str, ...]) -> List[str]:
    return [PLACEHOLDERS.get(word, word) for word in words]


def parse(words: List[str]) -> Tuple[Optional[object], List[str], str]:
    """Parses the way `main()` does: (options or None after --help/--version, command, errors)."""
    args, command = perftramp_cli.split_command(words)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            opts = perftramp_cli.build_parser().parse_args(args)
    except SystemExit as stop:
        if stop.code in (0, None):  # --help, --version
            return None, [], ""
        return None, [], err.getvalue() or f"exit {stop.code}"
    return opts, command if command is not None else list(getattr(opts, "command", []) or []), ""


@pytest.mark.once
def test_the_pages_show_commands_at_all():
    # A broken extractor must not turn every check below into a pass over nothing.
    runnable = [i for i in INVOCATIONS if i.runnable]
    assert len(runnable) >= 12, runnable
    assert {i.words[0] for i in runnable} >= {"record", "report", "doctor", "toggle"}
    assert any(i.where.startswith("README.md") for i in runnable)


@pytest.mark.once
@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[i.where for i in INVOCATIONS])
def test_every_documented_command_parses(invocation):
    words = substitute(invocation.words)
    opts, command, errors = parse(words)
    if errors and not invocation.runnable and words[-1].startswith("-") and "expected one argument" in errors:
        # Prose naming an option (`record --pid`): the option must exist and take a value.
        opts, command, errors = parse(words + ["1"])
    assert not errors, f"{invocation.where}: python -m perftramp {' '.join(invocation.words)}\n{errors}"
    if opts is not None and getattr(opts, "subcommand", None) == "record" and invocation.runnable:
        # cmd_record's own rule: a command or --pid, not both, not neither.
        assert bool(command) != (opts.pid is not None), invocation


# --- names the pages use: environment variables, API calls, files, links ------------------------

def code_text(*roots: str) -> str:
    texts = []
    for name in roots:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if file == Path(__file__).resolve():  # this test names what it looks for
                continue
            if file.suffix in (".py", ".rs", ".sh", ".pth", ".c", "") and "__pycache__" not in file.parts:
                try:
                    texts.append(file.read_text(errors="replace"))
                except OSError:
                    pass
    return "\n".join(texts)


#: Where a variable a page names may be read. The package and the extension for what users set;
#: the development page also documents the test scripts' switches.
USER_CODE = ("python", "src", "perftramp.pth")
DEVELOPMENT_CODE = USER_CODE + ("scripts", "tests", "benchmarks", ".ci")


@pytest.mark.once
def test_every_environment_variable_named_exists_in_the_code():
    user, development = code_text(*USER_CODE), code_text(*DEVELOPMENT_CODE)
    missing = []
    count = 0
    for page in PAGES:
        code = development if page.name == "development.md" else user
        for name in sorted(set(re.findall(r"\bPERFTRAMP[A-Z0-9_]*", page.read_text()))):
            count += 1
            if not re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", code):
                missing.append(f"{rel(page)}: {name}")
    assert count >= 8
    assert not missing, "named in the docs, read nowhere in the code: " + ", ".join(missing)


def resolve(dotted: str) -> object:
    """`perftramp.a.b` -> the object (importing submodules such as perftramp._perftramp)."""
    import importlib

    parts = dotted.split(".")
    obj: object = perftramp
    for i, part in enumerate(parts[1:], 1):
        if not hasattr(obj, part):
            obj = importlib.import_module(".".join(parts[:i + 1]))
        else:
            obj = getattr(obj, part)
    return obj


def dotted_name(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def check_call(call: ast.Call, where: str) -> List[str]:
    """The call names something perftramp has, and its arguments bind to the real signature."""
    name = dotted_name(call.func)
    if not name or not name.startswith("perftramp."):
        return []
    try:
        target = resolve(name)
    except (AttributeError, ImportError):
        return [f"{where}: {name} does not exist"]
    if not callable(target):
        return [f"{where}: {name} is not callable"]
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return []
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a native function without a text signature
        return []
    try:
        signature.bind(*[object()] * len(call.args), **{k.arg: object() for k in call.keywords})
    except TypeError as err:
        return [f"{where}: {ast.unparse(call) if hasattr(ast, 'unparse') else name}: {err}"]
    return []


@pytest.mark.once
def test_every_perftramp_call_named_exists_and_binds():
    problems: List[str] = []
    calls = 0
    for page in PAGES:
        text = page.read_text()
        for first, block in fenced_blocks(text, "python"):
            tree = ast.parse(block)  # a Python block of the docs must at least be Python
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    calls += 1
                    problems += check_call(node, f"{rel(page)}:{first}")
        for span in re.findall(r"`([^`]*\bperftramp\.[\w.]+\([^`]*)`", prose(text)):
            span = span.replace("\\|", "|")
            try:
                tree = ast.parse(span.strip())
            except SyntaxError:
                # Not a whole expression: the names alone must exist.
                for dotted in re.findall(r"\b(perftramp(?:\.\w+)+)\(", span):
                    calls += 1
                    try:
                        resolve(dotted)
                    except (AttributeError, ImportError):
                        problems.append(f"{rel(page)}: {dotted} does not exist")
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    calls += 1
                    problems += check_call(node, f"{rel(page)}: `{span}`")
        for field in re.findall(r"\bstatus\(\)\.(\w+)", text):
            if field not in perftramp.Status.__slots__:
                problems.append(f"{rel(page)}: status().{field} is no Status field")
    assert calls >= 5
    assert not problems, "\n".join(problems)


def api_rows() -> List[Tuple[str, str]]:
    """(first cell, second cell) of the guide's API table."""
    text = GUIDE.read_text()
    section = text[text.index("\n## API\n"):]
    rows = []
    for line in section.split("\n"):
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append((cells[0], cells[1]))
    return rows


@pytest.mark.once
def test_the_api_table_matches_the_signatures():
    rows = api_rows()
    assert len(rows) >= 9, rows
    problems = []
    for cell, description in rows:
        for span in re.findall(r"`([^`]+)`", cell):
            match = re.match(r"^(?:with )?([\w.]+)\((.*)\)", span)
            if not match:
                continue
            name, arguments = match.groups()
            try:
                target = resolve(name if name.startswith("perftramp.") else "perftramp." + name)
            except (AttributeError, ImportError):
                problems.append(f"{span}: perftramp.{name} does not exist")
                continue
            try:
                parameters = inspect.signature(target).parameters
            except (TypeError, ValueError):
                continue
            for argument in arguments.split(","):
                argument = argument.strip()
                if argument in ("", "*", "...") or "=" not in argument and not argument.isidentifier():
                    continue
                key, _, default = argument.partition("=")
                key = key.strip()
                if key not in parameters:
                    problems.append(f"{span}: {name}() has no parameter {key!r}")
                elif default.strip().startswith('"'):
                    # A documented string default is the real one.
                    if parameters[key].default != ast.literal_eval(default.strip()):
                        problems.append(f"{span}: {key} defaults to {parameters[key].default!r}")
        if cell.startswith("`status()`"):
            fields = re.findall(r"`(\w+)`", description)
            assert fields, description
            missing = [f for f in fields if f not in perftramp.Status.__slots__ and f != "Status"]
            problems += [f"status(): no field {f}" for f in missing]
    assert not problems, "\n".join(problems)


@pytest.mark.once
def test_every_relative_link_points_at_a_file():
    problems = []
    links = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue
            links += 1
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{rel(page)}: {target} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                problems.append(f"{rel(page)}: {target}: no heading with that anchor")
    assert links >= 10
    assert not problems, "\n".join(problems)


def heading_anchors(page: Path) -> List[str]:
    """Anchors of a page's headings, as MkDocs (and GitHub, for these headings) make them."""
    anchors = []
    for line in prose(page.read_text()).split("\n"):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if match:
            slug = re.sub(r"[^\w\s-]", "", match.group(1)).strip().lower()
            anchors.append(re.sub(r"[-\s]+", "-", slug))
    return anchors


@pytest.mark.once
def test_the_repository_files_the_commands_use_exist():
    missing, count = [], 0
    for page in PAGES:
        for first, block in fenced_blocks(page.read_text(), "bash"):
            for number, words in shell_commands(block, first):
                for word in words:
                    if re.match(r"^(scripts|benchmarks|examples|tests|docs)/[\w./-]+$", word):
                        count += 1
                        if not (ROOT / word).exists():
                            missing.append(f"{rel(page)}:{number}: {word}")
    assert count >= 5
    assert not missing, missing


@pytest.mark.once
def test_the_readme_keeps_to_the_first_screens():
    text = README.read_text()
    # The two commands CI and newcomers start from stay first, word for word.
    assert text.startswith(
        "# perftramp\n\n```bash\nbash scripts/demo.sh     # sets up (perf, a venv, builds "
        "perftramp), profiles examples/demo.py, shows Python names\nbash scripts/test.sh     # the "
        "whole test suite: Rust unit tests + pytest with real perf runs, every CPython 3.9+ here,\n")
    assert len(text.split("\n")) <= 160
    assert "docs/flamegraph-sympy.png" in text


# --- the commands, run: a small program recorded and reported as the pages say ----------------

PROGRAM = """\
import sys, time
KEPT = []

def docs_leaf(n):
    s = 0
    for i in range(n):
        s += i * i
    # 16 KiB kept each call (16 MB a second): fresh pages, so the page faults a documented
    # `record -e page-faults` weighs the view by are this function's too.
    KEPT.append(bytes(16 * 1024))
    return s

def docs_branch(n):
    return docs_leaf(n)

def docs_main(seconds):
    deadline = time.process_time() + seconds  # CPU seconds: as many samples under load
    while time.process_time() < deadline:
        docs_branch(20000)

docs_main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
"""
FUNCTIONS = ("docs_leaf", "docs_branch", "docs_main")


def runnable_from(pages: List[Path], subcommand: str) -> List[Invocation]:
    names = {rel(p) for p in pages}
    seen, out = set(), []
    for invocation in INVOCATIONS:
        if (invocation.runnable and invocation.where.split(":")[0] in names
                and invocation.words[:1] == (subcommand,) and invocation.words not in seen):
            seen.add(invocation.words)
            out.append(invocation)
    return out


def record_commands() -> List[Invocation]:
    """The README's and guide's `record ... -- python app.py [args]` (a command, not --pid)."""
    return [i for i in runnable_from([README, GUIDE], "record")
            if "--" in i.words and i.words[i.words.index("--") + 1:][:2] == ("python", "app.py")]


def as_run(words: Tuple[str, ...], program: Path) -> List[str]:
    """A documented record command on the test program: `python` is this interpreter, `app.py`
    the program, `args` its run time."""
    split = words.index("--")
    command = [sys.executable, str(program)] + ["1.0" if w == "args" else w
                                                for w in words[split + 3:]]
    return [*substitute(words[:split]), "--", *command]


@dataclass
class Recording:
    workdir: Path
    directory: Path
    proc: object


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> List[Tuple[Invocation, Recording]]:
    """Each documented `record -- python app.py` run once, in a directory of its own."""
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed (apt-get install linux-perf)")
    base = tmp_path_factory.mktemp("docs")
    program = base / "app.py"
    program.write_text(PROGRAM)
    done = []
    for index, invocation in enumerate(record_commands()):
        workdir = base / f"run{index}"
        workdir.mkdir()
        proc = cli(*as_run(invocation.words, program), cwd=workdir, timeout=300)
        made = sorted(workdir.glob("perftramp-*"))  # ./perftramp-<date>-<time> unless -o
        directory = made[0] if made else workdir
        done.append((invocation, Recording(workdir, directory, proc)))
    yield done
    for _, recording in done:
        meta = recording.directory / "perftramp.json"
        if meta.is_file():
            for pid in json.loads(meta.read_text()).get("pids", []):
                Path(f"/tmp/perf-{pid}.map").unlink(missing_ok=True)


def output_files_the_guide_promises() -> List[str]:
    text = re.sub(r"\s+", " ", GUIDE.read_text())
    start = text.index("The output directory holds")
    sentence = text[start:text.index("top.txt`", start) + len("top.txt`")]
    return re.findall(r"`([\w.]+\.(?:data|svg|collapsed|raw|txt))`", sentence)


@pytest.mark.perf
def test_the_documented_record_commands_draw_the_programs_functions(perf, recordings):
    assert recordings, "the README and guide show no `record -- python app.py`"
    promised = output_files_the_guide_promises()
    assert {"perf.data", "flamegraph.svg", "stacks.collapsed", "stacks.raw", "top.txt"} <= set(promised)
    guide = re.sub(r"\s+", " ", GUIDE.read_text())
    for invocation, recording in recordings:
        proc = recording.proc
        where = f"{invocation.where}: python -m perftramp {' '.join(invocation.words)}"
        assert proc.returncode == 0, f"{where}\n{proc.stderr}"
        assert recording.directory.name.startswith("perftramp-"), f"{where}: no ./perftramp-<date>-<time>"
        for name in promised:
            assert (recording.directory / name).is_file(), f"{where}: no {name}"
        table = proc.stdout
        if "-e" in invocation.words:  # weighed by the event: the table says so
            event = invocation.words[invocation.words.index("-e") + 1]
            assert table.startswith(f"Python functions, by self {event.replace('-', ' ')} ("), table
        svg = (recording.directory / "flamegraph.svg").read_text()
        for function in FUNCTIONS:
            assert function in table, f"{where}: {function} not in the table\n{table}"
            assert function in svg, f"{where}: {function} not in flamegraph.svg"
        assert (recording.directory / "top.txt").read_text() == table
        assert "no samples lost" in proc.stderr or "perf LOST" in proc.stderr, proc.stderr
        # --mode auto does what the guide says, at the rates "Sampling defaults" gives.
        meta = json.loads((recording.directory / "perftramp.json").read_text())
        if "--off-cpu" in invocation.words:  # DWARF stacks even with frame pointers (waits in libc)
            assert (meta["mode"], meta["call_graph"], meta["frequency"]) == ("elf", "dwarf", 249)
            assert "`--mode auto` takes elf mode's DWARF stacks even for an interpreter with frame pointers" \
                in guide
        elif interpreter_has_frame_pointers():
            assert (meta["mode"], meta["call_graph"], meta["frequency"]) == ("map", "fp", 999)
            assert "map mode with `--call-graph fp` when that interpreter has frame pointers" in guide
            assert "Frame-pointer recordings sample at 999 Hz" in guide
        else:
            assert (meta["mode"], meta["call_graph"], meta["frequency"]) == ("elf", "dwarf", 249)
            assert "otherwise elf mode (`--call-graph dwarf,65528`" in guide
            assert "sample at 249 Hz" in guide


def report_outputs(words: Tuple[str, ...], directory: Path, workdir: Path) -> Tuple[Path, str]:
    """(the file a documented `report` writes, what kind of output it is)."""
    fmt = words[words.index("--format") + 1] if "--format" in words else "svg"
    if fmt != "svg":
        exports = {"pprof": "profile.pb.gz", "speedscope": "profile.speedscope.json",
                   "gecko": "profile.gecko.json"}
        out = words[words.index("-o") + 1] if "-o" in words else None
        return (workdir / out if out else directory / exports[fmt]), fmt
    if "--native" in words and words[words.index("--native") + 1] == "all":
        return directory / "flamegraph.all-frames.svg", "all-frames"
    if "--python-only" in words:
        return directory / "flamegraph.python-only.svg", "python-only"
    if "--no-python" in words:
        return directory / "flamegraph.no-python.svg", "no-python"
    return directory / "flamegraph.svg", "svg"


@pytest.mark.perf
def test_the_documented_report_commands_write_what_they_say(perf, recordings):
    reports = runnable_from([README, GUIDE], "report")
    kinds = set()
    assert recordings
    _, recording = recordings[0]
    assert recording.proc.returncode == 0, recording.proc.stderr
    # The pages call the recording `prof` (or DIR): here it is this one.
    workdir = recording.workdir
    for name in ("prof", "DIR"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(recording.directory.name, target_is_directory=True)
    for report in reports:
        words = report.words
        where = f"{report.where}: python -m perftramp {' '.join(words)}"
        proc = cli(*substitute(words), cwd=workdir, timeout=300)
        assert proc.returncode == 0, f"{where}\n{proc.stderr}"
        path, kind = report_outputs(words, workdir / words[1], workdir)
        kinds.add(kind)
        assert path.is_file(), f"{where}: {path} not written"
        if kind == "pprof":
            text = gzip.decompress(path.read_bytes()).decode("latin-1")
        elif kind == "speedscope":
            data = json.loads(path.read_text())
            text = " ".join(frame["name"] for frame in data["shared"]["frames"])
        else:
            text = path.read_text()
            if kind == "gecko":
                json.loads(text)
        if kind == "no-python":
            assert "py::" not in text and "docs_leaf" not in text, where
        else:
            for function in ("docs_leaf", "docs_branch"):
                assert function in text, f"{where}: {function} not in {path.name}"
        if kind == "python-only":
            assert "_PyEval_EvalFrameDefault" not in text, where
        if kind == "all-frames":
            assert "py::docs_leaf:" in text, where  # perf's own names, not the Python view's
        if kind in ("svg", "python-only", "no-python", "all-frames"):
            assert "docs_leaf" in proc.stdout or kind == "no-python", f"{where}: the table\n{proc.stdout}"
    # The kinds of report the pages promise, run: a page that drops one must drop it here too.
    assert kinds >= {"python-only", "all-frames", "pprof", "speedscope", "gecko"}, kinds


@pytest.mark.perf
def test_the_documented_doctor_command_says_what_record_will_do(perf):
    doctors = runnable_from(PAGES, "doctor")
    assert doctors
    for invocation in doctors:
        proc = cli(*substitute(invocation.words), timeout=300)
        where = f"{invocation.where}: python -m perftramp {' '.join(invocation.words)}"
        assert proc.returncode == 0, f"{where}\n{proc.stdout}\n{proc.stderr}"
        assert "recording will work" in proc.stdout, proc.stdout
        # The default mode doctor announces is the one record uses and the docs give.
        expected = "map" if interpreter_has_frame_pointers() else "elf"
        assert re.search(rf"record -- \S+ app\.py` will use {expected} mode", proc.stdout), proc.stdout
