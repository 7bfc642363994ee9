"""`uvicorn --workers 2` under a bounded local load, then shut down (tests/test_exec_workers.py).

    python exec_uvicorn.py APP_DIR

Starts uvicorn (APP_DIR/exec_asgi_app.py, on a free local port), waits for it to accept, makes
requests from two client threads until both workers have spun all they will (at most
MAX_REQUESTS requests, DEADLINE seconds; a pause after each answer from a finished worker), then
sends SIGINT and waits for uvicorn to exit (SIGKILL to its whole session after a timeout).
Exits 1 unless both workers finished spinning."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

MAX_REQUESTS = 400
DEADLINE = 180.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_accepting(port, server, until):
    while time.monotonic() < until:
        if server.poll() is not None:
            sys.exit(f"uvicorn exited early: {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("uvicorn never accepted")


def main():
    app_dir = sys.argv[1]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "exec_asgi_app:app", "--app-dir", app_dir,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--lifespan", "off",
         "--loop", "asyncio", "--http", "h11", "--log-level", "warning"],
        start_new_session=True)
    spun = set()
    served = {}
    lock = threading.Lock()
    count = [0]
    until = time.monotonic() + DEADLINE

    def client():
        while time.monotonic() < until:
            with lock:
                if len(spun) >= 2 or count[0] >= MAX_REQUESTS:
                    return
                count[0] += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/", headers={"Connection": "close"})
                pid, done = conn.getresponse().read().decode().split()
                conn.close()
            except (OSError, http.client.HTTPException, ValueError) as err:
                print(f"request failed: {err!r}", file=sys.stderr)
                time.sleep(0.2)
                continue
            with lock:
                served[int(pid)] = served.get(int(pid), 0) + 1
                if done == "1":
                    spun.add(int(pid))
            if done == "1":
                time.sleep(0.1)  # that worker is done: few cheap requests while the other spins

    try:
        wait_accepting(port, server, time.monotonic() + 60)
        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE + 70)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
    print(f"SERVED {served} DONE {sorted(spun)} REQUESTS {count[0]}", flush=True)
    sys.exit(0 if len(spun) == 2 else 1)


if __name__ == "__main__":
    main()
