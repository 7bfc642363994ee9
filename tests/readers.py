"""Third-party readers of perftramp's exports, driven headless so tests can ask what *they* read.

The readers are not ours and not in this repository: scripts/fetch-readers.sh takes them from
the registries this project can reach and names their directories in the environment:

- PERFTRAMP_SPEEDSCOPE_DIR: speedscope's release build (the app at www.speedscope.app, with
  its published file-format-schema.json), as shipped inside Ray's wheel on PyPI.

Each reader runs in headless Chromium, served from 127.0.0.1: the page is the tool's own
index.html plus a small script of ours that switches views the way a user's keys do and copies
what the tool rendered (its tables, its profile names) into the DOM Chromium dumps.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple


def speedscope_dir() -> Optional[Path]:
    value = os.environ.get("PERFTRAMP_SPEEDSCOPE_DIR")
    return Path(value) if value else None


def chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the reader's directory, plus `extra` paths mapped to our files."""

    extra: Dict[str, Tuple[bytes, str]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("#", 1)[0].split("?", 1)[0]
        if path in self.extra:
            body, ctype = self.extra[path]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def _serve(root: Path, extra: Dict[str, Tuple[bytes, str]]
           ) -> Tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Handler", (_Handler,), {"extra": extra})
    serve_root = functools.partial(handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), serve_root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def dump_dom(url: str, *, budget_ms: int = 20000, timeout: float = 120) -> str:
    """The DOM of `url` after `budget_ms` of (virtual) time in headless Chromium."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="perftramp-chromium-") as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=1600,4000",
             f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium failed on {url} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


# --- speedscope ----------------------------------------------------------------------------

# Runs in speedscope's page (before its own script): once a profile is loaded (speedscope then titles the page
# "NAME - speedscope"), press "3" (sandwich view: a table of every frame with total and self
# time), and for each profile read the toolbar's profile name and the table, then press "n"
# (next profile). The result goes into <pre id="perftramp-read"> as JSON.
_SPEEDSCOPE_PROBE = r"""
<script>
(function () {
  const read = {title: null, profiles: []};
  // speedscope reports an unreadable file with alert(), which would block headless Chromium
  window.alert = (message) => { read.error = 'speedscope said: ' + message; finish(); };
  const key = (k) => window.dispatchEvent(new KeyboardEvent('keypress', {key: k}));
  const text = (el) => (el.textContent || '').trim();
  function table() {
    // speedscope draws the header and the (virtualised) rows as two tables
    const header = Array.from(document.querySelectorAll('th')).map(text);
    if (!header.length) return null;
    const rows = Array.from(document.querySelectorAll('tr'))
        .map((tr) => Array.from(tr.querySelectorAll('td')).map(text))
        .filter((cells) => cells.length === header.length);
    return {header, rows};
  }
  const ownText = (el) => Array.from(el.childNodes).filter((n) => n.nodeType === 3)
      .map((n) => n.textContent).join('').trim();
  function toolbarProfile() {
    // several profiles: "<button>NAME <span>(i/N)</span><button>"
    const counter = Array.from(document.querySelectorAll('span'))
        .find((s) => /^\(\d+\/\d+\)$/.test(text(s)));
    if (counter) {
      const m = text(counter).match(/(\d+)\/(\d+)/);
      return {name: ownText(counter.parentElement), index: +m[1], count: +m[2]};
    }
    // one profile: its name is a bare text node of the toolbar, beside the view buttons
    const views = Array.from(document.querySelectorAll('div'))
        .find((d) => text(d).endsWith('Sandwich') && d.children.length === 3);
    const toolbar = views && views.parentElement;
    return {name: toolbar ? ownText(toolbar) : null, index: 1, count: 1};
  }
  function finish() {
    if (document.getElementById('perftramp-read')) return;
    clearInterval(start);
    const pre = document.createElement('pre');
    pre.id = 'perftramp-read';
    pre.textContent = JSON.stringify(read);
    document.body.appendChild(pre);
  }
  let waited = 0;
  const start = setInterval(() => {
    waited += 100;
    if (document.title.endsWith(' - speedscope')) {
      clearInterval(start);
      read.title = document.title;
      key('3');
      setTimeout(step, 500);
    } else if (waited > 15000) {
      clearInterval(start);
      read.error = 'no profile loaded; page says: ' + (document.body.innerText || '').trim().slice(0, 500);
      finish();
    }
  }, 100);
  function step() {
    const where = toolbarProfile();
    const grid = table();
    read.profiles.push({name: where.name || read.title.replace(/ - speedscope$/, ''),
                        header: grid ? grid.header : [], rows: grid ? grid.rows : []});
    if (where.index < where.count && read.profiles.length < 64) {
      key('n');
      setTimeout(step, 500);
    } else {
      finish();
    }
  }
})();
</script>
"""


@dataclass
class SpeedscopeProfile:
    name: str
    # frame name -> (total ms, self ms), as speedscope's sandwich table shows them
    frames: Dict[str, Tuple[float, float]] = field(default_factory=dict)


@dataclass
class SpeedscopeReading:
    title: str
    profiles: List[SpeedscopeProfile]


def _ms(cell: str) -> float:
    """'1000.00ms (98%)' / '4.02ms (0.39%)' / '0.00ns (<0.01%)' / '1.20s (12%)' -> ms."""
    value = cell.split("(", 1)[0].strip()
    for unit, scale in (("ns", 1e-6), ("µs", 1e-3), ("us", 1e-3), ("ms", 1.0), ("s", 1000.0),
                        ("min", 60000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * scale
    return float(value)


class _Pre(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.inside = self.inside or (tag == "pre" and ("id", "perftramp-read") in attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text.append(data)


def read_with_speedscope(profile: Path, reader: Path) -> SpeedscopeReading:
    """Open `profile` in speedscope (its `#profileURL=` import path, as a user's link would)
    and return what it shows. Raises when speedscope does not load the file."""
    index = (reader / "index.html").read_text()
    page = index.replace("<body>", "<body>" + _SPEEDSCOPE_PROBE, 1).encode()
    extra = {"/perftramp-check.html": (page, "text/html"),
             "/perftramp-profile.json": (profile.read_bytes(), "application/json")}
    server, base = _serve(reader, extra)
    try:
        dom = dump_dom(f"{base}/perftramp-check.html#profileURL={base}/perftramp-profile.json")
    finally:
        server.shutdown()
    parser = _Pre()
    parser.feed(dom)
    if not parser.text:
        raise RuntimeError(f"speedscope's page never finished (no result element): {dom[-2000:]}")
    raw = json.loads("".join(parser.text))
    if raw.get("error"):
        raise RuntimeError(f"speedscope did not load {profile}: {raw['error']}")
    return SpeedscopeReading(raw["title"], list(_profiles(raw["profiles"])))


def _profiles(raw: List[dict]) -> Iterator[SpeedscopeProfile]:
    for item in raw:
        header = [h.lower() for h in item["header"]]
        if not item["rows"]:
            raise RuntimeError(f"speedscope showed no frame table for profile {item['name']!r}")
        total, self_, name = header.index("total"), header.index("self"), len(header) - 1
        frames = {row[name]: (_ms(row[total]), _ms(row[self_])) for row in item["rows"]}
        yield SpeedscopeProfile(item["name"], frames)
