#!/usr/bin/env python3
"""What `--trace` costs in each tier (README: Isolation tiers, `--trace`).

`alcove run` of `true` and of a loop of 100,000 getppid calls in Python,
container and gVisor, each with and without --trace, interleaved round by
round; medians with the p10-p90 spread and the ratio to the same tier
without --trace. Run as root: ALCOVE=path/to/alcove python3 bench/gvisor_trace.py [ROUNDS]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ALCOVE = os.environ.get("ALCOVE", "target/x86_64-unknown-linux-gnu/release/alcove")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
if ROUNDS < 2:
    sys.exit("gvisor_trace.py: give 2 rounds or more (the spread needs them)")
PROGRAMS = {
    "true": ["true"],
    "100k getppid": ["python3", "-c", "import os\nfor _ in range(100000): os.getppid()"],
}


def main():
    with tempfile.TemporaryDirectory(prefix="alcove-trace-bench-") as work:
        measure(os.path.join(work, "report.json"))


def measure(report):
    cases = []
    for label, prog in PROGRAMS.items():
        for tier in ("container", "gvisor"):
            for trace in (False, True):
                cmd = [ALCOVE, "run", "--isolation", tier]
                if trace:
                    cmd += ["--trace", "--report", report]
                cases.append(((label, tier, trace), cmd + ["--"] + prog))
    times = {key: [] for key, _ in cases}
    counted = None
    for _ in range(ROUNDS):
        for key, cmd in cases:
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[key].append(time.perf_counter() - t)
            if key == ("100k getppid", "gvisor", True):
                with open(report) as f:
                    top = json.load(f)["trace"]["syscalls"]["top"]
                counted = next((e["count"] for e in top if e["name"] == "getppid"), None)
    print(f"{'program':14s} {'tier':10s} {'trace':6s} {'median ms':>10s} {'p10':>9s} {'p90':>9s}  ratio")
    for (label, tier, trace), v in times.items():
        q = statistics.quantiles(sorted(v), n=10)
        base = statistics.median(times[(label, tier, False)])
        med = statistics.median(v)
        print(f"{label:14s} {tier:10s} {str(trace):6s} {med*1000:10.1f} {q[0]*1000:9.1f} {q[-1]*1000:9.1f}  {med/base:5.2f}x")
    print(f"getppid calls counted by gVisor's --trace (100,000 made): {counted}")


if __name__ == "__main__":
    main()
