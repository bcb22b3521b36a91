"""Fork with memory, two builds interleaved:

    python3 bench/fork-ab.py OLD_ALCOVE NEW_ALCOVE [ROUNDS] [--apart]

Starts a daemon of each build (--sandbox-pool 0, data under /tmp/alcove-fork-ab-old and -new),
gives each a forkable sandbox holding 100 MiB of random bytes and a dict, then forks each in
turn (the order alternating), removing every fork before the next. Prints the first three
forks of each (those a state not yet backed by huge pages makes slow), then medians and
p10-p90 of all of them and of the rest, and the ratios. Run as root, like the daemon.

--apart: one daemon at a time (OLD's whole series, then NEW's), for the first forks: interleaved,
what one build does in the background after a fork (a huge-page collapse) runs beside the
other's forks.
"""
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time

STATE = "import os\nblob = bytearray(os.urandom(100 << 20))\nkeys = {i: str(i) for i in range(10000)}"


class Daemon:
    def __init__(self, binary, tag):
        self.dir = f"/tmp/alcove-fork-ab-{tag}"
        subprocess.run(["rm", "-rf", self.dir], check=True)
        os.makedirs(self.dir)
        log_path = f"{self.dir}/log"
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", f"{self.dir}/data",
             "--sandbox-pool", "0"],
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        for _ in range(200):
            found = re.search(r"serving http://(\S+)", open(log_path).read())
            if found:
                break
            time.sleep(0.05)
        else:
            self.stop()
            sys.exit(f"{binary} did not start: see {log_path}")
        self.conn = http.client.HTTPConnection(found.group(1), timeout=60)
        self.token = open(f"{self.dir}/data/token").read().strip()
        self.times = []

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                          headers={"Authorization": f"Bearer {self.token}"})
        reply = self.conn.getresponse()
        raw = reply.read()
        if reply.status >= 400:
            raise RuntimeError(f"{method} {path}: {reply.status} {raw[:300]!r}")
        return json.loads(raw) if raw.startswith(b"{") else raw

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["rm", "-rf", self.dir])  # its sandboxes were removed first


def main():
    apart = "--apart" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--apart"]
    old_binary, new_binary = args[0], args[1]
    rounds = int(args[2]) if len(args) > 2 else 30
    if apart:
        daemons = {}
        for tag, binary in (("old", old_binary), ("new", new_binary)):
            daemons[tag] = series(Daemon(binary, tag), rounds)
    else:
        daemons = interleaved(Daemon(old_binary, "old"), Daemon(new_binary, "new"), rounds)
    for tag, d in daemons.items():
        first = " / ".join(f"{t:.2f}" for t in d.times[:3])
        print(f"{tag}: first three forks {first} ms; {spread(d.times)} all; "
              f"{spread(d.times[3:])} after the third")
    for what, part in (("all", slice(None)), ("after the third", slice(3, None))):
        ratio = (statistics.median(daemons["new"].times[part])
                 / statistics.median(daemons["old"].times[part]))
        print(f"new/old, p50 of {what}: {ratio:.2f}x")


def make_source(d):
    """A forkable sandbox of `d` holding STATE; its id."""
    source = d.call("POST", "/v1/sandboxes",
                    {"timeout_s": 3600, "memory": "1G", "disk": "64M", "forkable": True})["id"]
    d.call("POST", f"/v1/sandboxes/{source}/code", {"code": STATE})
    return source


def series(d, rounds):
    """`rounds` forks of one daemon's source, alone; the daemon stopped after."""
    source = make_source(d)
    time.sleep(3)
    for _ in range(rounds):
        t = time.perf_counter()
        fork = d.call("POST", f"/v1/sandboxes/{source}/fork", {"memory": True})["id"]
        d.times.append((time.perf_counter() - t) * 1e3)
        d.call("DELETE", f"/v1/sandboxes/{fork}")
        time.sleep(0.2)
    d.call("DELETE", f"/v1/sandboxes/{source}")
    d.stop()
    return d


def interleaved(old, new, rounds):
    daemons = {"old": old, "new": new}
    sources = {tag: make_source(d) for tag, d in daemons.items()}
    time.sleep(3)
    for i in range(rounds):
        for tag in ("old", "new") if i % 2 == 0 else ("new", "old"):
            d, source = daemons[tag], sources[tag]
            t = time.perf_counter()
            fork = d.call("POST", f"/v1/sandboxes/{source}/fork", {"memory": True})["id"]
            d.times.append((time.perf_counter() - t) * 1e3)
            d.call("DELETE", f"/v1/sandboxes/{fork}")
            time.sleep(0.2)
    for tag, d in daemons.items():
        d.call("DELETE", f"/v1/sandboxes/{sources[tag]}")
        d.stop()
    return daemons


def spread(times):
    s = sorted(times)
    return (f"p50 {statistics.median(s):.2f} ms (p10 {s[len(s) // 10]:.2f}, "
            f"p90 {s[len(s) * 9 // 10]:.2f}, n={len(s)})")


if __name__ == "__main__":
    main()
