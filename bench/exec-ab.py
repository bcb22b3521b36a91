"""Exec round trip of `true`, several builds interleaved:

    python3 bench/exec-ab.py ALCOVE_A ALCOVE_B [...]     # ROUNDS=400 by default
    CMD=/path/to/program python3 bench/exec-ab.py ...    # another command (no arguments;
                                                         # it must exit 0 in the sandbox)

Starts a daemon of each build at once (--sandbox-pool 0, data under /var/tmp/alcove-exec-ab-*),
creates one sandbox on each, then execs `true` in each in turn (the order reversed every other
round) over one kept-alive connection per daemon, with a raw-socket HTTP/1.1 client (no
http.client parsing: the daemon's own round trip). The first 20 rounds are left out. Prints the
median, p10-p90, the ratio to the first build, and the client's reads per exec. Run as root.
"""
import json
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from alcove import Sandbox  # noqa: E402
from bench_daemon import Daemon  # noqa: E402

WARMUP = 20
ROUNDS = os.environ.get("ROUNDS", "400")
if not ROUNDS.isdigit() or not WARMUP + 2 <= int(ROUNDS) <= 100000:
    raise SystemExit(f"ROUNDS={ROUNDS!r}: give {WARMUP + 2} to 100000 (the first {WARMUP} are left out)")
ROUNDS = int(ROUNDS)
COMMAND = os.environ.get("CMD", "true")
if not COMMAND.strip() or len(COMMAND) > 4096:
    raise SystemExit(f"CMD={COMMAND[:80]!r}: give one program (a name on PATH or a path), no arguments")


def start(binary):
    daemon = Daemon(binary, "exec-ab", "--sandbox-pool", "0")
    d = {"bin": binary, "daemon": daemon, "times": [], "reads": []}
    d["sandbox"] = Sandbox.create(timeout=3600, **daemon.server())
    host, port = daemon.addr.rsplit(":", 1)
    d["sock"] = socket.create_connection((host, int(port)))
    d["sock"].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps({"cmd": [COMMAND]}).encode()
    d["request"] = (f"POST /v1/sandboxes/{d['sandbox'].id}/exec HTTP/1.1\r\nHost: alcove\r\n"
                    f"Authorization: Bearer {daemon.token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return d


def exec_true(d):
    """One exec; the answer is read to its end (the last chunk, or a whole body)."""
    sock, got, reads = d["sock"], b"", 0
    t = time.perf_counter()
    sock.sendall(d["request"])
    while not (got.endswith(b"\r\n0\r\n\r\n") or got.endswith(b"}\n") and b"content-length" in got.lower()):
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"{d['bin']}: the daemon closed the connection")
        got += chunk
        reads += 1
    assert b'"type":"exit","code":0' in got, got
    return (time.perf_counter() - t) * 1e3, reads


def stop(d):
    try:
        d["sandbox"].kill()
    except Exception:  # the daemon's teardown below covers it
        pass
    d["daemon"].stop()


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    daemons = []
    try:
        for binary in sys.argv[1:]:
            daemons.append(start(binary))
        for i in range(ROUNDS):
            for d in daemons if i % 2 == 0 else daemons[::-1]:
                took, reads = exec_true(d)
                if i >= WARMUP:
                    d["times"].append(took)
                    d["reads"].append(reads)
        base = statistics.median(daemons[0]["times"])
        for d in daemons:
            deciles = statistics.quantiles(d["times"], n=10)
            median = statistics.median(d["times"])
            print(f"{d['bin']}: exec {COMMAND} p50 {median:.3f} ms (p10 {deciles[0]:.3f}, p90 {deciles[-1]:.3f})"
                  f"  {median / base:.2f}x  reads per exec {statistics.mean(d['reads']):.2f}")
    finally:
        for d in daemons:
            stop(d)


if __name__ == "__main__":
    main()
