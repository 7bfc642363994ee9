"""A small CPU-bound HTTP server for trying perftramp on a live process.

    PERFTRAMP_SIGNAL=USR2 python examples/server.py [port]      # perftramp installed, off

Then, while it serves (e.g. `while :; do curl -s localhost:8000/?n=22 >/dev/null; done`):

    python -m perftramp record --pid <pid> --duration 30
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def render(result):
    return json.dumps({"result": result, "pid": os.getpid()}).encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        n = int(parse_qs(urlparse(self.path).query).get("n", ["20"])[0])
        body = render(fib(min(n, 30)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"pid {os.getpid()} serving on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
