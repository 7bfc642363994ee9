"""An HTTP service whose handler waits on a slow backend, under a bounded local load; it exits by
itself when the load is done (tests/test_offcpu_programs.py, for `record --off-cpu`).

    python slow_backend.py                   # the whole program: three processes
    python slow_backend.py backend           # (internal) the backend, prints its port
    python slow_backend.py load PORT N C     # (internal) the load: N requests, C at a time

- the server (this process): uvicorn (PyPI) serving an ASGI app, handle_request, which calls
  ask_backend: a blocking socket round trip to the backend (connect, send a line, recv the answer)
  made in the event loop's thread, so each request's BACKEND_DELAY wait is the handler's own
  off-CPU time (reason io), under handle_request -> ask_backend; the loop serves one request at a
  time (the blocking call holds it), so the requests are served one after another;
- the backend (a child process): a threaded TCP server whose backend_answer sleeps BACKEND_DELAY
  (50 ms) before it answers each line (off-CPU, reason sleep);
- the load (a child process): REQUESTS (40) GET requests from CONCURRENCY (4) client threads.

When the load has finished, the server is told to exit and the backend is stopped. Exits 1 unless
every request got the backend's answer. PERFTRAMP_TEST_WORKERS=FILE: the processes' pids are
written there as `SERVER <pid>`, `BACKEND <pid>`, `LOAD <pid>`.

Settings (environment): SLOW_BACKEND_REQUESTS=40, SLOW_BACKEND_CONCURRENCY=4,
SLOW_BACKEND_DELAY=0.05 (seconds)."""

import http.client
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time

REQUESTS = int(os.environ.get("SLOW_BACKEND_REQUESTS", "40"))
CONCURRENCY = int(os.environ.get("SLOW_BACKEND_CONCURRENCY", "4"))
BACKEND_DELAY = float(os.environ.get("SLOW_BACKEND_DELAY", "0.05"))
DEADLINE = 120.0


def note(role, pid):
    path = os.environ.get("PERFTRAMP_TEST_WORKERS")
    if path:
        with open(path, "a") as file:
            file.write(f"{role} {pid}\n")


# --- the backend -----------------------------------------------------------------------------

def backend_answer(line):
    time.sleep(BACKEND_DELAY)  # the slow part of the backend
    return b"answer to " + line.strip() + b"\n"


class BackendHandler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        if line:
            self.wfile.write(backend_answer(line))


class BackendServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def backend_main():
    note("BACKEND", os.getpid())
    with BackendServer(("127.0.0.1", 0), BackendHandler) as server:
        print(server.server_address[1], flush=True)
        # Stops when the server closes our stdin (or dies).
        threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
        server.serve_forever(poll_interval=0.5)


# --- the server (uvicorn + an ASGI app) ------------------------------------------------------

BACKEND_PORT = 0


def ask_backend(question):
    """The handler's blocking round trip to the backend: the wait is in recv (off-CPU, io)."""
    with socket.create_connection(("127.0.0.1", BACKEND_PORT), timeout=30) as sock:
        sock.sendall(question + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


async def handle_request(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ask_backend(scope["path"].encode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --- the load --------------------------------------------------------------------------------

def load_main(port, requests, concurrency):
    note("LOAD", os.getpid())
    lock = threading.Lock()
    left = [requests]
    answered = [0]

    def client():
        conn = None
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
                n = left[0]
            for attempt in range(3):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    conn.request("GET", f"/q{n}")
                    body = conn.getresponse().read()
                    if body == f"answer to /q{n}\n".encode():
                        with lock:
                            answered[0] += 1
                    else:
                        print(f"load: unexpected answer {body!r}", file=sys.stderr)
                    break
                except (OSError, http.client.HTTPException) as err:
                    print(f"load: request failed ({err!r}), retrying", file=sys.stderr)
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.1)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"load: {answered[0]}/{requests} answered", flush=True)
    sys.exit(0 if answered[0] == requests else 1)


# --- the whole program -----------------------------------------------------------------------

def wait_accepting(port, until):
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def main():
    global BACKEND_PORT
    import uvicorn

    note("SERVER", os.getpid())
    backend = subprocess.Popen([sys.executable, __file__, "backend"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    BACKEND_PORT = int(backend.stdout.readline())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(handle_request, host="127.0.0.1", port=port, lifespan="off",
                            loop="asyncio", http="h11", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    outcome = {}

    def drive_load():
        try:
            if not wait_accepting(port, time.monotonic() + 60):
                outcome["load"] = "the server never accepted"
                return
            load = subprocess.run([sys.executable, __file__, "load", str(port), str(REQUESTS),
                                   str(CONCURRENCY)], timeout=DEADLINE)
            outcome["load"] = load.returncode
        finally:
            server.should_exit = True

    driver = threading.Thread(target=drive_load)
    driver.start()
    try:
        server.run()
    finally:
        driver.join()
        backend.stdin.close()
        try:
            backend.wait(timeout=10)
        except subprocess.TimeoutExpired:
            backend.kill()
            backend.wait()
    print(f"slow_backend: load {outcome.get('load')}, backend exit {backend.returncode}", flush=True)
    sys.exit(0 if outcome.get("load") == 0 else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["backend"]:
        backend_main()
    elif sys.argv[1:2] == ["load"]:
        load_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
