#!/usr/bin/env bash
# The isolation tiers side by side: start-to-exit of a sandboxed `true` in
# alcove's container tier, in its gVisor tier (--isolation gvisor), and in
# plain runsc (`runsc run` of an OCI bundle, and `runsc do`), interleaved
# round by round on one busybox rootfs with the same limits; medians, the
# p10-p90 spread and ratios (alcove bench compare). Then what one gVisor
# sandbox costs in memory: the peak of its cgroup (Sentry, Gofer, program)
# for `true` and for an idle `sleep`. Last, HTTP invoke p50/p99 of a trivial
# function in each tier (bench/gvisor_http.py): container, gVisor cold, gVisor
# pooled, and what an idle pooled sandbox costs.
#
#   bench/gvisor.sh            # ROUNDS=50 by default
#   ROUNDS=200 bench/gvisor.sh
#
# Needs root. Asserts nothing: it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/gvisor.sh
alcove_install_packages runsc
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p' || true)
ALCOVE=${ALCOVE:-target/${target:-x86_64-unknown-linux-gnu}/release/alcove}
[ -x "$ALCOVE" ] || ALCOVE=/usr/local/bin/alcove
[ -x "$ALCOVE" ] || { echo "bench/gvisor.sh: no alcove binary (run scripts/setup.sh)" >&2; exit 1; }
ROUNDS=${ROUNDS:-50}

work=$(mktemp -d /var/tmp/alcove-gvbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs/bin" "$rootfs/proc" "$rootfs/dev" "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/true"
ln -s busybox "$rootfs/bin/sh"
ln -s busybox "$rootfs/bin/sleep"

# The bundle plain runsc runs: what alcove's gVisor tier writes for the same
# run (pid, network, ipc, uts and mount namespaces, read-only root, nobody).
cat > "$work/bundle/config.json" <<'JSON'
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false, "user": {"uid": 65534, "gid": 65534},
    "args": ["/bin/true"], "env": ["PATH=/bin"], "cwd": "/",
    "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bench",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
  }
}
JSON
# runsc run needs a fresh container id each time: a two-line wrapper (dash,
# ~1 ms of the ~150 ms a run takes).
cat > "$work/runsc-run" <<EOF
#!/bin/sh
exec runsc --root $work/state --platform ptrace --network none --ignore-cgroups run --bundle $work/bundle "b\$\$"
EOF
cat > "$work/runsc-do" <<EOF
#!/bin/sh
exec runsc --root $work/state-do --platform ptrace --network none do /bin/true
EOF
chmod +x "$work/runsc-run" "$work/runsc-do"

echo "alcove: $ALCOVE; $(runsc --version | head -n 1)"
limits="--memory 256M --pids 64 --cpus 1"
echo "== start-to-exit of a sandboxed 'true' (rounds: $ROUNDS, interleaved) =="
"$ALCOVE" bench compare --rounds "$ROUNDS" \
    --baseline runsc-run \
    --cmd "container=$ALCOVE run --rootfs $rootfs $limits -- /bin/true" \
    --cmd "gvisor=$ALCOVE run --isolation gvisor --rootfs $rootfs $limits -- /bin/true" \
    --cmd "runsc-run=$work/runsc-run" \
    --cmd "runsc-do=$work/runsc-do"

echo
echo "== memory one gVisor sandbox costs (its cgroup's peak: Sentry, Gofer and program) =="
for what in "true" "sleep 2"; do
    # shellcheck disable=SC2086
    "$ALCOVE" run --isolation gvisor --rootfs "$rootfs" $limits --report "$work/report.json" -- /bin/$what
    python3 - "$what" "$work/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"  {sys.argv[1]:<8} peak {r['memory_peak_bytes'] / 2**20:6.1f} MiB, {r['pids_peak']} host tasks, "
      f"{r['wall_ms']:.0f} ms wall, {r['cpu_user_ms'] + r['cpu_sys_ms']:.0f} ms CPU")
EOF
done
"$ALCOVE" run --rootfs "$rootfs" $limits --report "$work/report.json" -- /bin/sleep 2
python3 - "$work/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  container tier, sleep 2: peak {r['memory_peak_bytes'] / 2**20:6.1f} MiB, {r['pids_peak']} tasks")
EOF

echo
echo "== HTTP invoke of a trivial function (echo ok) through alcove serve (rounds: $ROUNDS, interleaved) =="
python3 bench/gvisor_http.py "$ALCOVE" "$ROUNDS"
