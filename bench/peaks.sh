#!/usr/bin/env bash
# What reporting peaks costs on the start path. On cgroup v2 every pooled run
# lives in a fresh child `run` of its slot (v2 cannot reset pids.peak, nor
# memory.peak before 6.12): mkdir, memory.max and pids.max, rmdir. This times
# that leaf's life alone, beside a whole `alcove run --report` and the bare
# fork+exec floor, in the same sitting, and prints the leaf as a share of the
# start. On v1 (the hybrid development machines) it times the run only.
#
#   bench/peaks.sh                 # ROUNDS=300 by default; ALCOVE=path/to/alcove
set -euo pipefail
cd "$(dirname "$0")/.."
alcove=${ALCOVE:-alcove}
rounds=${ROUNDS:-300}
if [ "$(id -u)" != 0 ]; then
    echo "bench/peaks.sh: run as root" >&2
    exit 1
fi

"$alcove" bench compare --rounds "$rounds" --baseline alcove \
    --cmd "floor=/bin/true" \
    --cmd "alcove=$alcove run --report /dev/null --memory 64M --pids 64 -- /bin/true" |
    tee /tmp/alcove-peaks-compare.txt

own=$(sed -n 's/^0:://p' /proc/self/cgroup)
root=/sys/fs/cgroup
if [ "$(stat -f -c %T "$root")" != cgroup2fs ]; then
    echo "leaf: not cgroup v2 here (v1 restarts its peaks in place); nothing more to time"
    exit 0
fi
# A slot-shaped parent beneath alcove's own parent cgroup (made by the runs above).
parent=$root${own%/supervisor}/alcove
[ -d "$parent" ] || { echo "no $parent: did the runs above fail?" >&2; exit 1; }
slot=$parent/bench-peaks-$$
mkdir "$slot"
trap 'rmdir "$slot/run" 2>/dev/null || true; rmdir "$slot"' EXIT
echo "+memory +pids" > "$slot/cgroup.subtree_control"
python3 - "$slot" "$rounds" <<'EOF'
import os, sys, time, statistics
slot, rounds = sys.argv[1], int(sys.argv[2])
leaf = os.path.join(slot, "run")
times = []
for _ in range(rounds):
    t = time.perf_counter_ns()
    os.mkdir(leaf)
    with open(os.path.join(leaf, "memory.max"), "w") as f:
        f.write(str(64 << 20))
    if os.path.exists(os.path.join(leaf, "memory.swap.max")):
        with open(os.path.join(leaf, "memory.swap.max"), "w") as f:
            f.write("0")
    with open(os.path.join(leaf, "pids.max"), "w") as f:
        f.write("64")
    os.rmdir(leaf)
    times.append((time.perf_counter_ns() - t) / 1e6)
times.sort()
q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
run_median = None
for line in open("/tmp/alcove-peaks-compare.txt"):
    if line.startswith("alcove "):
        value = line.split()[1]
        run_median = float(value[:-2]) * (1e-3 if value.endswith("us") else 1)
print(f"leaf (mkdir, memory.max, memory.swap.max, pids.max, rmdir): median {statistics.median(times):.3f}ms"
      f"  p10 {q(0.1):.3f}ms  p90 {q(0.9):.3f}ms")
if run_median:
    print(f"leaf share of a whole `alcove run --report`: {statistics.median(times) / run_median * 100:.1f}%")
EOF
