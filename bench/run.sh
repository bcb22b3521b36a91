#!/usr/bin/env bash
# Start-up benchmark: alcove against the bare fork+exec floor, bubblewrap, runc
# and crun, interleaved round by round, on one rootfs, with the same limits where
# the tool has them. Then alcove's start broken into phases.
#
#   bench/run.sh            # ROUNDS=300 by default
#   ROUNDS=1000 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/run.sh
alcove_install_packages bubblewrap crun runc
./scripts/setup.sh --no-demo >/dev/null
ALCOVE=/usr/local/bin/alcove
ROUNDS=${ROUNDS:-300}

# One rootfs for everybody: busybox (static), so `true` needs no loader.
work=/var/tmp/alcove-bench
rootfs=$work/bundle/rootfs
rm -rf "$work"
mkdir -p "$rootfs/bin" "$rootfs/proc" "$rootfs/dev" "$rootfs/tmp" "$rootfs/sys"
cp /bin/busybox "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/true"
ln -s busybox "$rootfs/bin/sh"

# The OCI bundle for runc and crun: the same namespaces as alcove (pid, mount,
# ipc, uts, network), read-only root, and alcove's limits.
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
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]}
  ],
  "linux": {
    "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}, "cpu": {"quota": 100000, "period": 100000}},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
  }
}
JSON

$ALCOVE gc >/dev/null
limits="--memory 64M --pids 64 --cpus 1"
bwrap_common="--unshare-all --die-with-parent --new-session --proc /proc --dev /dev --tmpfs /tmp"

echo "== start-up of a sandboxed 'true', all on the same busybox rootfs (rounds: $ROUNDS) =="
$ALCOVE bench compare --rounds "$ROUNDS" \
    --cmd "floor=$rootfs/bin/true" \
    --cmd "alcove=$ALCOVE run --rootfs $rootfs $limits -- /bin/true" \
    --cmd "bwrap=bwrap $bwrap_common --ro-bind $rootfs / /bin/true" \
    --cmd "runc=runc run --bundle $work/bundle alcove-bench-runc"

echo
echo "== host view (/usr read-only, /usr/bin/true) =="
$ALCOVE bench compare --rounds "$ROUNDS" \
    --cmd "floor=/usr/bin/true" \
    --cmd "alcove=$ALCOVE run $limits -- /usr/bin/true" \
    --cmd "bwrap=bwrap $bwrap_common --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 /usr/bin/true"

# crun refuses this host's hybrid cgroup layout while the cgroup2 tree holds a
# controller ("cgroups in hybrid mode not supported"), so its comparison runs
# in a private mount namespace without that tree, for every command alike.
echo
echo "== crun, in a mount namespace without the cgroup2 tree (crun rejects the hybrid layout) =="
unshare -m --propagation private sh -c "
    umount -l /sys/fs/cgroup/unified 2>/dev/null || true
    $ALCOVE bench compare --rounds $ROUNDS \
        --cmd 'floor=$rootfs/bin/true' \
        --cmd 'alcove=$ALCOVE run --rootfs $rootfs $limits -- /bin/true' \
        --cmd 'crun=crun run --bundle $work/bundle alcove-bench-crun'"

echo
echo "== alcove's start, phase by phase (in-process, host view) =="
$ALCOVE bench phases --rounds "$ROUNDS" $limits -- /usr/bin/true
echo
echo "== alcove's start, phase by phase (in-process, --rootfs) =="
$ALCOVE bench phases --rounds "$ROUNDS" --rootfs "$rootfs" $limits -- /bin/true
