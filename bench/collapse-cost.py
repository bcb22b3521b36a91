"""What a forkable session's idle collapse into huge pages costs a call:

    ALCOVE_SERVER=http://HOST:PORT ALCOVE_TOKEN=... python3 bench/collapse-cost.py [ROUNDS]

Against a running daemon: a forkable and a plain sandbox, in turn, each round a call that
allocates 16 MiB of new state, then 60-200 ms later (past the session's 50 ms of idleness,
while a forkable session may be collapsing the new region) a `run_code` of `1+1`, timed.
Prints its median, p90 and slowest for each. Asserts nothing.
"""
import http.client
import json
import os
import statistics
import sys
import time

SERVER = os.environ["ALCOVE_SERVER"].removeprefix("http://")
TOKEN = os.environ["ALCOVE_TOKEN"]
CONN = http.client.HTTPConnection(SERVER, timeout=60)


def call(method, path, body=None):
    CONN.request(method, path, body=None if body is None else json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {TOKEN}"})
    reply = CONN.getresponse()
    raw = reply.read()
    if reply.status >= 400:
        raise RuntimeError(f"{method} {path}: {reply.status} {raw[:300]!r}")
    return raw


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    sandboxes = {
        kind: json.loads(call("POST", "/v1/sandboxes", {
            "timeout_s": 3600, "memory": "2G", "forkable": kind == "forkable"}))["id"]
        for kind in ("forkable", "plain")
    }
    times = {kind: [] for kind in sandboxes}
    try:
        for i in range(rounds):
            for kind, sid in sandboxes.items():
                call("POST", f"/v1/sandboxes/{sid}/code",
                     {"code": f"import os\nb{i} = bytearray(os.urandom(16 << 20))"})
                time.sleep(0.06 + (i % 8) * 0.02)
                t = time.perf_counter()
                call("POST", f"/v1/sandboxes/{sid}/code", {"code": "1+1"})
                times[kind].append((time.perf_counter() - t) * 1e3)
                time.sleep(0.5)
    finally:
        for sid in sandboxes.values():
            call("DELETE", f"/v1/sandboxes/{sid}")
    for kind, t in times.items():
        s = sorted(t)
        print(f"{kind:9s} run_code 1+1 after 16 MiB of new state: p50 {statistics.median(s):.2f} ms, "
              f"p90 {s[len(s) * 9 // 10]:.2f}, slowest {s[-1]:.2f} (n={len(s)})")


if __name__ == "__main__":
    main()
