"""A tiny ASGI app for `uvicorn --workers 2` (tests/test_exec_workers.py): each request spins up
to 0.25 s of the worker's CPU time in uvicorn_spin, until the worker has spun TEST_SECONDS in all;
later requests return at once (the first spinning request notes `WORKER <pid> uvicorn_spin` in
the file named by PERFTRAMP_TEST_WORKERS). Every response body is `<pid> <1 if this worker has
spun all it will, else 0>`. Small slices, not one long spin: while one worker spins, the other
accepts the next connections, and neither serves many requests with nothing left to spin (the
cheap requests are the worker's own work too, but not uvicorn_spin's)."""

import os
import time

TEST_SECONDS = float(os.environ.get("PERFTRAMP_TEST_SECONDS", "1.5"))
SLICE = 0.25
_spent = 0.0


def uvicorn_spin(seconds):
    deadline = time.process_time() + seconds
    n = 0
    while time.process_time() < deadline:
        for i in range(2000):
            n += i * i
    return n


async def app(scope, receive, send):
    global _spent
    if scope["type"] != "http":
        return
    if _spent < TEST_SECONDS:
        if _spent == 0.0:
            with open(os.environ["PERFTRAMP_TEST_WORKERS"], "a") as file:
                file.write(f"WORKER {os.getpid()} uvicorn_spin\n")
        start = time.process_time()
        uvicorn_spin(min(SLICE, TEST_SECONDS - _spent))  # blocks this worker: the other accepts
        _spent += max(time.process_time() - start, 1e-6)
    body = f"{os.getpid()} {int(_spent >= TEST_SECONDS)}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
