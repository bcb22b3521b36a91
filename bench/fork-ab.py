"""Fork with memory, two builds interleaved:

    python3 bench/fork-ab.py OLD_ALCOVE NEW_ALCOVE [ROUNDS]

Starts a daemon of each build (--sandbox-pool 0, data under /tmp/alcove-fork-ab-old and -new),
gives each a forkable sandbox holding 100 MiB of random bytes and a dict, then forks each in
turn (the order alternating), removing every fork before the next. The first two rounds are
left out (the source's huge-page collapse after its first fork). Prints medians, p10-p90 and
the ratio. Run as root, like the daemon.
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
    old_binary, new_binary = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    daemons = {"old": Daemon(old_binary, "old"), "new": Daemon(new_binary, "new")}
    sources = {}
    for tag, d in daemons.items():
        sources[tag] = d.call("POST", "/v1/sandboxes",
                              {"timeout_s": 3600, "memory": "1G", "disk": "64M", "forkable": True})["id"]
        d.call("POST", f"/v1/sandboxes/{sources[tag]}/code", {"code": STATE})
    time.sleep(3)
    for i in range(rounds + 2):
        for tag in ("old", "new") if i % 2 == 0 else ("new", "old"):
            d, source = daemons[tag], sources[tag]
            t = time.perf_counter()
            fork = d.call("POST", f"/v1/sandboxes/{source}/fork", {"memory": True})["id"]
            took = (time.perf_counter() - t) * 1e3
            if i >= 2:
                d.times.append(took)
            d.call("DELETE", f"/v1/sandboxes/{fork}")
            time.sleep(0.2)
    for tag, d in daemons.items():
        d.call("DELETE", f"/v1/sandboxes/{sources[tag]}")
        d.stop()
        s = sorted(d.times)
        print(f"{tag}: fork p50 {statistics.median(s):.2f} ms "
              f"(p10 {s[len(s) // 10]:.2f}, p90 {s[len(s) * 9 // 10]:.2f}) n={len(s)}")
    ratio = statistics.median(daemons["new"].times) / statistics.median(daemons["old"].times)
    print(f"new/old: {ratio:.2f}x")


if __name__ == "__main__":
    main()
