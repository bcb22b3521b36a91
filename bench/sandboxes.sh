#!/usr/bin/env bash
# Agent sandboxes, measured on one daemon in one run (bench/sandboxes.py does
# the measuring, with python's http.client on one kept-alive connection):
#
#   0. this machine (bench/machine_probes.py): what a CPUID instruction costs
#      (glibc's start-up makes ~80; in a VM each traps) and a pipe ping-pong
#      on one CPU, across two, and where the scheduler puts it;
#   1. create to first exec: POST /v1/sandboxes, then POST .../exec `true`
#      read to its exit line, as a client asking for nothing more gets it
#      (a ready sandbox from the daemon's pool, --sandbox-pool, SANDBOX_POOL
#      here, default 2) with an environment (also pooled) and made afresh (a pids limit given), interleaved;
#      against the fork+exec floor (python's
#      subprocess.run(["true"]) on the host) and `runc run` of a busybox
#      bundle running `true` (a container made, run and deleted), interleaved
#      (runc, not crun: Debian's crun 1.8 refuses a cgroup-hybrid host);
#   2. exec round trip of `true` in a live sandbox, against the same floor,
#      with http.client and with a minimal HTTP/1.1 client (the daemon's own
#      round trip), and its two unavoidable parts (a no-op API call, a spawn);
#      then back to back: the minimal client, curl (one process, one kept-
#      alive connection: a client in C) and posix_spawn+waitpid;
#   3. run_code `1+1` in a warm interpreter, against `python3 -c 1+1` (a
#      fresh interpreter each time, the cost a stateless tool pays);
#   4. pause and resume (the cgroup freezer), each;
#   5. N idle sandboxes at once (default 1000): what each costs the host
#      (MemAvailable before and after, over N) and the daemon (its RSS).
# Medians with the p10-p90 spread; ratios of the medians.
#
#   bench/sandboxes.sh [ALCOVE_BIN]     # default: target/release/alcove (static, as setup.sh builds it)
#   ROUNDS=200 IDLE=1000 bench/sandboxes.sh
#
# Needs root. Asserts nothing: it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/sandboxes.sh
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p' || true)
ALCOVE=${1:-target/${target:-x86_64-unknown-linux-gnu}/release/alcove}
[ -x "$ALCOVE" ] || ALCOVE=target/release/alcove
[ -x "$ALCOVE" ] || { echo "bench/sandboxes.sh: no alcove binary (build it: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target $target -p alcove)" >&2; exit 1; }
ALCOVE=$(realpath "$ALCOVE")
work=$(mktemp -d /var/tmp/alcove-sbbench.XXXXXX)
daemon=
cleanup() {
    [ -z "$daemon" ] || { kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true; }
    # Sandbox homes are the host's mounts and outlive a daemon (by design):
    # an interrupted run's are unmounted here.
    awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A busybox bundle for runc's row.
if command -v runc >/dev/null && command -v busybox >/dev/null; then
    mkdir -p "$work/bundle/rootfs/bin"
    cp "$(command -v busybox)" "$work/bundle/rootfs/bin/busybox"
    ln -s busybox "$work/bundle/rootfs/bin/true"
    (cd "$work/bundle" && runc spec >/dev/null 2>&1 && python3 - <<'EOF'
import json
c = json.load(open("config.json"))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
json.dump(c, open("config.json", "w"))
EOF
    ) || rm -rf "$work/bundle"
fi

printf 'bench-token-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/token"
chmod 600 "$work/token"
"$ALCOVE" serve --listen 127.0.0.1:0 --data-dir "$work/data" --token-file "$work/token" \
    --max-sandboxes "$(( ${IDLE:-1000} + 16 ))" --sandbox-pool "${SANDBOX_POOL:-2}" 2> "$work/daemon.log" &
daemon=$!
for _ in $(seq 100); do
    grep -q 'serving http://' "$work/daemon.log" && break
    sleep 0.1
done
addr=$(sed -n 's/.*serving http:\/\/\([^ ]*\).*/\1/p' "$work/daemon.log" | head -n 1)
[ -n "$addr" ] || { cat "$work/daemon.log"; exit 1; }
echo "alcove: $ALCOVE ($("$ALCOVE" --version)), daemon pid $daemon at $addr"
ALCOVE_SERVER=http://$addr ALCOVE_TOKEN=$(cat "$work/token") DAEMON_PID=$daemon \
    BUNDLE=$([ -d "$work/bundle" ] && echo "$work/bundle" || true) \
    python3 bench/sandboxes.py
