#!/usr/bin/env bash
# The functions platform under load, on loopback: invocations per second and
# latency of a trivial shell handler through `alcove serve`, driven by wrk at
# concurrency 1, 2, 8 and 32; beside it, in the same run, the same handler
# started per request by `alcove run` and by `crun run`; then a bounded load
# test (ab, 20,000 invocations at concurrency 32) with the daemon's RSS.
#
#   bench/functions.sh                 # DURATION=10 seconds per wrk run
#   DURATION=20 REQUESTS=20000 bench/functions.sh
#   BASELINE=/path/to/older/alcove bench/functions.sh
#                                      # first: this build's daemon against an older
#                                      # build's, interleaved, at concurrency 1 and 8
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/functions.sh
alcove_install_packages wrk apache2-utils crun
./scripts/setup.sh --no-demo >/dev/null
ALCOVE=/usr/local/bin/alcove
DURATION=${DURATION:-10}
REQUESTS=${REQUESTS:-20000}
PER_REQUEST=${PER_REQUEST:-400}

work=/var/tmp/alcove-fnbench
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work/code" "$work/bundle/rootfs"
printf 'echo ok\n' > "$work/code/handler.sh"
printf 'hi' > "$work/body"
# Every request carries the daemon's token (an older daemon without one ignores it).
post_lua() {   # token file
    cat <<LUA
wrk.method = "POST"
wrk.body = "hi"
wrk.headers["Authorization"] = "Bearer $(cat "$1" 2>/dev/null)"
LUA
}

# crun gets the same view alcove's default gives: /usr and /etc read-only from
# the host, the code at /fn, fresh /proc, /dev and /tmp.
root=$work/bundle/rootfs
mkdir -p "$root/usr" "$root/etc" "$root/fn" "$root/proc" "$root/dev" "$root/tmp"
for l in bin lib lib64 sbin; do [ -e "/usr/$l" ] && ln -s "usr/$l" "$root/$l"; done
cat > "$work/bundle/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false, "user": {"uid": 65534, "gid": 65534},
    "args": ["sh", "/fn/handler.sh"], "env": ["PATH=/usr/bin:/bin"], "cwd": "/fn",
    "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bench",
  "mounts": [
    {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro", "nosuid", "nodev"]},
    {"destination": "/etc", "type": "bind", "source": "/etc", "options": ["rbind", "ro", "nosuid", "nodev"]},
    {"destination": "/fn", "type": "bind", "source": "$work/code", "options": ["rbind", "ro", "nosuid", "nodev"]},
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
  }
}
JSON

ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.2f", v / 1000; else if (v ~ /ms$/) printf "%.2f", v + 0; else printf "%.2f", v * 1000 }'; }
$ALCOVE gc >/dev/null
# Starts `$1 serve` on data dir $2, deploys the noop function, warms the pool;
# sets started_pid and started_url.
start_daemon() {
    local bin=$1 data=$2 addr
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$data" 2> "$data.log" &
    started_pid=$!
    for _ in $(seq 100); do grep -q "serving http://" "$data.log" && break; sleep 0.05; done
    addr=$(sed -n 's|.*serving http://\([^ ]*\).*|\1|p' "$data.log")
    [ -n "$addr" ] || { cat "$data.log"; exit 1; }
    started_url=http://$addr/v1/functions/noop/invoke
    ALCOVE_SERVER=http://$addr ALCOVE_TOKEN_FILE=$data/token \
        "$bin" fn deploy noop --handler 'sh /fn/handler.sh' --code "$work/code" >/dev/null
    for _ in $(seq 200); do
        curl -s -o /dev/null -H "Authorization: Bearer $(cat "$data/token" 2>/dev/null)" -X POST -d hi "$started_url"
    done
}

if [ -n "${BASELINE:-}" ]; then
    echo "== before/after: this build ($ALCOVE) against $BASELINE, interleaved, wrk ${DURATION}s per run, 3 runs each =="
    start_daemon "$BASELINE" "$work/before"; before_pid=$started_pid; before_url=$started_url
    start_daemon "$ALCOVE" "$work/after"; after_pid=$started_pid; after_url=$started_url
    post_lua "$work/before/token" > "$work/before.lua"
    post_lua "$work/after/token" > "$work/after.lua"
    printf '%-5s %-7s %10s %10s %10s   %s\n' conc build "inv/s" "p50 ms" "p99 ms" "(median of 3; rate range)"
    for c in 1 8; do
        for which in before after; do : > "$work/$which.runs"; done
        for round in 1 2 3; do
            for which in before after; do
                url_var=${which}_url
                out=$(wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d"${DURATION}s" --latency -s "$work/$which.lua" "${!url_var}")
                echo "$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out") \
$(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")" >> "$work/$which.runs"
            done
        done
        for which in before after; do
            sort -n "$work/$which.runs" | awk -v c="$c" -v w="$which" '{r[NR]=$1; p50[NR]=$2; p99[NR]=$3}
                END {printf "%-5s %-7s %10s %10s %10s   %s-%s\n", c, w, r[2], p50[2], p99[2], r[1], r[3]}'
        done
        b=$(sort -n "$work/before.runs" | sed -n 2p | cut -d' ' -f1)
        a=$(sort -n "$work/after.runs" | sed -n 2p | cut -d' ' -f1)
        awk -v c="$c" -v a="$a" -v b="$b" 'BEGIN {printf "conc %s: after/before throughput ratio %.3f (medians)\n", c, a / b}'
    done
    kill "$before_pid" "$after_pid" 2>/dev/null; wait "$before_pid" "$after_pid" 2>/dev/null || true
    echo
fi

start_daemon "$ALCOVE" "$work/data"
daemon_pid=$started_pid
url=$started_url
export ALCOVE_SERVER=${url%/v1/functions/noop/invoke}
export ALCOVE_TOKEN_FILE=$work/data/token
post_lua "$ALCOVE_TOKEN_FILE" > "$work/post.lua"

rss() { awk '/^VmRSS/ {print $2 " kB"}' "/proc/$daemon_pid/status"; }

# Per-request starts, timed as a whole: N runs, C at a time.
per_request_rate() {   # concurrency, command...
    local c=$1; shift
    local start end
    start=$(date +%s%N)
    seq "$PER_REQUEST" | xargs -P "$c" -I{} "$@" > /dev/null
    end=$(date +%s%N)
    awk -v n="$PER_REQUEST" -v ns=$((end - start)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}
# crun refuses this host's hybrid cgroup layout (see bench/run.sh), so it runs
# in a mount namespace without the cgroup2 tree.
crun_rate() {
    unshare -m --propagation private sh -c "umount -l /sys/fs/cgroup/unified 2>/dev/null || true
        start=\$(date +%s%N)
        seq $PER_REQUEST | xargs -P $1 -I{} crun run --bundle $work/bundle fnbench-{} > /dev/null
        end=\$(date +%s%N)
        awk -v n=$PER_REQUEST -v ns=\$((end - start)) 'BEGIN { printf \"%.0f\", n / (ns / 1e9) }'"
}

echo "== a trivial shell handler (sh /fn/handler.sh: echo ok), $(nproc) CPUs, wrk ${DURATION}s per row =="
printf '%-5s %14s %9s %9s %9s %9s   %16s %10s   %12s %10s\n' conc "daemon inv/s" p50 p90 p99 errors "alcove run inv/s" ratio "crun inv/s" ratio
for c in 1 2 8 32; do
    t=$(( c < 2 ? 1 : 2 ))
    out=$(wrk -t$t -c$c -d"${DURATION}s" --latency -s "$work/post.lua" "$url")
    rate=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p90=$(ms "$(awk '$1 == "90%" {print $2}' <<<"$out")")
    p99=$(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {s = s $0 "; "} END {print (s == "" ? 0 : s)}' <<<"$out")
    run_rate=$(per_request_rate "$c" $ALCOVE run --bind "$work/code:/fn" --workdir /fn -- sh /fn/handler.sh)
    crun=$(crun_rate "$c")
    printf '%-5s %14s %7sms %7sms %7sms %9s   %16s %9.2fx   %12s %9.2fx\n' "$c" "$rate" "$p50" "$p90" "$p99" "$errors" \
        "$run_rate" "$(awk -v a="$rate" -v b="$run_rate" 'BEGIN {print a / b}')" \
        "$crun" "$(awk -v a="$rate" -v b="$crun" 'BEGIN {print a / b}')"
    if [ "$c" = 1 ]; then
        solo_p50=$p50
        $ALCOVE fn logs noop -n 1000 --json > "$work/solo.json"
    fi
done

echo
echo "== one request at a time: latency of each way to run the handler (interleaved) =="
$ALCOVE bench compare --rounds 300 --baseline alcove-run \
    --cmd "alcove-run=$ALCOVE run --bind $work/code:/fn --workdir /fn -- sh /fn/handler.sh" \
    --cmd "fn-invoke=$ALCOVE fn invoke noop --data hi" \
    --cmd "bare-sh=sh $work/code/handler.sh"
echo "(wrk's p50 at concurrency 1 above is the HTTP round trip without a client process to start.)"
echo
echo "== what the daemon adds to the sandbox at concurrency 1: HTTP p50 minus the sandbox's own p50 =="
python3 - "$work/solo.json" "$solo_p50" <<'PY'
import json, statistics, sys
records = json.load(open(sys.argv[1]))["invocations"]
walls = sorted(r["wall_ms"] for r in records if r["wall_ms"] is not None)
http_p50 = float(sys.argv[2])
sandbox = statistics.median(walls)
print(f"sandbox (clone to exit, as recorded) over {len(walls)} invocations: median {sandbox:.3f} ms, "
      f"p10 {walls[len(walls) // 10]:.3f} ms, p90 {walls[len(walls) * 9 // 10]:.3f} ms")
print(f"HTTP p50 {http_p50:.3f} ms - sandbox p50 {sandbox:.3f} ms = {http_p50 - sandbox:.3f} ms for HTTP, admission, "
      f"the store and preparing the sandbox")
PY
echo
echo "== load test: $REQUESTS invocations at concurrency 32 (ab), daemon RSS before and after =="
before=$(rss)
ab -q -n "$REQUESTS" -c 32 -p "$work/body" -T application/octet-stream \
    -H "Authorization: Bearer $(cat "$ALCOVE_TOKEN_FILE")" "$url" > "$work/ab.txt"
after=$(rss)
grep -E "^(Complete requests|Failed requests|Requests per second|Time per request:.*\(mean\))" "$work/ab.txt" || true
grep -E "^Non-2xx responses" "$work/ab.txt" || echo "Non-2xx responses:      0"
grep -A12 "Percentage of the requests" "$work/ab.txt" | grep -E " (50|99|100)%" || true
echo "daemon RSS: before $before, after $after"

# Then what eBPF monitoring costs the same handler (bench/monitor.sh), with this daemon stopped first.
cleanup || true; daemon_pid=; DURATION=$DURATION bench/monitor.sh
