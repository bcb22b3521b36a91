"""HTTP invoke of a trivial function through `alcove serve`, per isolation
tier, interleaved round by round: the container tier, gVisor cold (--pool 0:
each request boots its sandbox) and gVisor pooled (--pool 1: each request
runs in a sandbox booted ahead; each round starts once the pool has one
again, so every pooled request is measured pooled and no refill overlaps a
measured request). Prints p50, p99 and the p10-p90
spread in ms, the ratios to the container tier, and what each idle pooled
sandbox costs (its cgroup's memory and tasks).

    python3 bench/gvisor_http.py ALCOVE ROUNDS

Run by bench/gvisor.sh; asserts nothing.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def runsc_cgroups():
    """The memory cgroups holding runsc processes (the pooled sandboxes')."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "runsc":
                continue
            for line in open(f"/proc/{pid}/cgroup"):
                _, controllers, path = line.strip().split(":", 2)
                if controllers == "" and os.path.exists(f"/sys/fs/cgroup{path}/memory.current"):
                    found.add(f"/sys/fs/cgroup{path}")
                elif "memory" in controllers.split(","):
                    found.add(f"/sys/fs/cgroup/memory{path}")
        except OSError:
            pass
    return sorted(found)


def main():
    alcove, rounds = sys.argv[1], int(sys.argv[2])
    data = tempfile.mkdtemp(prefix="alcove-gvhttp.", dir="/var/tmp")
    daemon = subprocess.Popen(
        [alcove, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    addr = None
    for line in daemon.stderr:
        m = re.search(r"serving http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    if addr is None:
        sys.exit("bench/gvisor_http.py: the daemon did not start")
    token = open(os.path.join(data, "token")).read().strip()
    host, port = addr.rsplit(":", 1)
    env = dict(os.environ, ALCOVE_SERVER=f"http://{addr}", ALCOVE_TOKEN=token)
    tiers = {
        "container": [],
        "gvisor-cold": ["--isolation", "gvisor", "--pool", "0"],
        "gvisor-pooled": ["--isolation", "gvisor", "--pool", "1"],
    }
    try:
        for name, flags in tiers.items():
            subprocess.run([alcove, "fn", "deploy", name, "--handler", "echo ok",
                            "--memory", "256M", "--public", *flags],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        conn = http.client.HTTPConnection(host, int(port))

        def invoke(name):
            conn.request("POST", f"/fn/{name}", body=b"hi")
            reply = conn.getresponse()
            body = reply.read()
            if reply.status != 200 or body != b"ok\n":
                sys.exit(f"{name}: {reply.status} {body[:200]!r}")

        def pool_ready():
            conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
            text = conn.getresponse().read().decode()
            m = re.search(r'alcove_gvisor_pool_ready\{function="gvisor-pooled"\} (\d+)', text)
            return int(m.group(1)) if m else 0

        for name in tiers:  # one unmeasured round each
            invoke(name)
        times = {name: [] for name in tiers}
        for _ in range(rounds):
            # The pool's refill (a boot, ~150 ms of CPU) is done before the
            # round starts, so that it slows no tier's request.
            deadline = time.monotonic() + 30
            while pool_ready() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.05)
            for name in tiers:
                t0 = time.perf_counter()
                invoke(name)
                times[name].append((time.perf_counter() - t0) * 1e3)
        base = percentile(times["container"], 0.5)
        print(f"  {'function':<15} {'p50 ms':>9} {'p99 ms':>9} {'p10-p90 ms':>17} {'vs container':>13}")
        for name, t in times.items():
            p50 = percentile(t, 0.5)
            print(f"  {name:<15} {p50:9.2f} {percentile(t, 0.99):9.2f} "
                  f"{percentile(t, 0.1):8.2f}-{percentile(t, 0.9):<8.2f} {p50 / base:12.1f}x")

        # What an idle pooled sandbox costs: its cgroup, read while it waits.
        deadline = time.monotonic() + 30
        while pool_ready() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        print("  idle pooled sandbox (its cgroup: Sentry, Gofer and the waiter):")
        for cgroup in runsc_cgroups():
            for f in ("memory.current", "memory.usage_in_bytes"):
                p = os.path.join(cgroup, f)
                if os.path.exists(p):
                    procs = len(open(os.path.join(cgroup, "cgroup.procs")).read().split())
                    mib = int(open(p).read()) / 2**20
                    print(f"    {mib:.1f} MiB ({f}), {procs} host processes")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
