#!/usr/bin/env bash
# What the daemon's eBPF monitoring costs (the issue's "Speed" targets: with
# `--monitor counters` at most 5% fewer invocations per second than `off`):
#   1. a trivial shell handler through `alcove serve`, wrk at concurrency 1
#      and 8, on three daemons started once and driven in turn (interleaved):
#      --monitor off; --monitor counters; --monitor counters with the function
#      guarded (--syscall-budget and a learned --policy, so sys_enter and
#      sys_exit are attached while it runs); medians and ratios against off;
#   2. how soon the event stream (GET /v1/events) shows an invocation's
#      start and exec events after the invoke is sent;
#   3. what a process outside any sandbox pays per syscall (10 million
#      getpid calls): no daemon; the daemons idle; while a guarded invocation
#      runs (sys_enter attached).
#
#   bench/monitor.sh                   # DURATION=10 seconds per wrk run, ROUNDS=3
#   DURATION=5 ROUNDS=5 GETPID_ROUNDS=5 EVENT_ROUNDS=20 bench/monitor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/monitor.sh
alcove_install_packages wrk
./scripts/setup.sh --no-demo >/dev/null
ALCOVE=/usr/local/bin/alcove
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
GETPID_ROUNDS=${GETPID_ROUNDS:-5}
EVENT_ROUNDS=${EVENT_ROUNDS:-20}
CONFIGS=(off counters guarded)

work=/var/tmp/alcove-monbench
pids=()   # every background process this script starts, killed by PID on exit
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$work"
mkdir -p "$work/code" "$work/sleeper"
printf 'echo ok\n' > "$work/code/handler.sh"
printf 'sleep 5\necho slept\n' > "$work/sleeper/handler.sh"

ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.2f", v / 1000; else if (v ~ /ms$/) printf "%.2f", v + 0; else printf "%.2f", v * 1000 }'; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
minmax() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "-" hi}'; }

# The host's cost of one syscall: ns per syscall(SYS_getpid), over 10 million.
cat > "$work/getpid.c" <<'C'
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000000L;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        syscall(SYS_getpid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
C
gcc -O2 -o "$work/getpid" "$work/getpid.c"
getpid_round() { "$work/getpid" 10000000; }

$ALCOVE gc >/dev/null
# (a) first: before any daemon of this script runs.
for _ in $(seq "$GETPID_ROUNDS"); do getpid_round >> "$work/getpid.none"; done

# Starts a daemon with --monitor $2 on data dir $work/$1, deploys noop, warms
# it; sets base_$1 (the server's URL) and the PID in pids.
start_daemon() {
    local name=$1 monitor=$2 data=$work/$1 addr
    "$ALCOVE" serve --listen 127.0.0.1:0 --data-dir "$data" --monitor "$monitor" 2> "$data.log" &
    pids+=($!)
    for _ in $(seq 200); do grep -q "serving http://" "$data.log" 2>/dev/null && break; sleep 0.05; done
    addr=$(sed -n 's|.*serving http://\([^ ]*\).*|\1|p' "$data.log")
    [ -n "$addr" ] || { cat "$data.log" >&2; exit 1; }
    printf -v "base_$name" '%s' "http://$addr"
    cli "$name" fn deploy noop --handler 'sh /fn/handler.sh' --code "$work/code" >/dev/null
    warm "$name" 200
}
cli() {   # daemon name, alcove args...
    local name=$1; shift
    local base=base_$name
    ALCOVE_SERVER=${!base} ALCOVE_TOKEN_FILE=$work/$name/token "$ALCOVE" "$@"
}
token() { cat "$work/$1/token"; }
invoke_once() {   # daemon name, function: the HTTP status
    local base=base_$1
    curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(token "$1")" \
        -X POST -d hi "${!base}/v1/functions/$2/invoke"
}
warm() {   # daemon name, invocations of noop
    local i
    for i in $(seq "$2"); do invoke_once "$1" noop >/dev/null; done
}
attached() {   # daemon name, program: its alcove_monitor_program_attached line
    local base=base_$1
    curl -s -H "Authorization: Bearer $(token "$1")" "${!base}/metrics" |
        grep "^alcove_monitor_program_attached{program=\"$2\"}" || echo "(no alcove_monitor_program_attached{program=\"$2\"} in /metrics)"
}

# Waits (at most 10 s) until daemon $1 has no per-syscall program attached:
# they stay attached a while after the last guarded run, and would otherwise
# slow whatever runs next.
wait_detached() {
    for _ in $(seq 200); do
        attached "$1" sys_enter | grep -q '} 0' && attached "$1" sys_exit | grep -q '} 0' && return 0
        sleep 0.05
    done
    echo "warning: $1 still has a per-syscall program attached after 10 s" >&2
}

start_daemon off off
start_daemon counters counters
start_daemon guarded counters
# The guarded one: learn noop's policy from 20 invocations, then deploy it
# with a syscall budget and the learned policy.
cli guarded fn learn noop --invocations 20 >/dev/null
for _ in $(seq 20); do invoke_once guarded noop >/dev/null; done
learned() { cli guarded fn learn noop --show | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(v.get("learning"), v.get("invocations"), len((v.get("profile") or {}).get("syscalls") or []))'; }
for _ in $(seq 100); do
    read -r learning learned_from learned_syscalls < <(learned)
    [ "$learning" = True ] || break
    sleep 0.1
done
[ "$learning" = False ] && [ "$learned_from" -ge 20 ] ||
    { echo "learning noop did not finish: learning $learning, from $learned_from invocations" >&2; exit 1; }
cli guarded fn deploy noop --handler 'sh /fn/handler.sh' --code "$work/code" \
    --syscall-budget 1000000 --policy learned >/dev/null
status=$(invoke_once guarded noop)
[ "$status" = 200 ] || { echo "the guarded noop answers HTTP $status, not 200:" >&2; cli guarded fn logs noop -n 1 >&2; exit 1; }
warm guarded 200
wait_detached guarded

for name in "${CONFIGS[@]}"; do
    cat > "$work/$name.lua" <<LUA
wrk.method = "POST"
wrk.body = "hi"
wrk.headers["Authorization"] = "Bearer $(token "$name")"
LUA
done

echo "== 1. a trivial shell handler (sh /fn/handler.sh: echo ok), $(nproc) CPUs: --monitor off, counters, counters + guard =="
echo "   (three daemons, wrk ${DURATION}s per run, $ROUNDS rounds interleaved; guarded = --syscall-budget 1000000"
echo "   --policy learned, learned from $learned_from invocations: $learned_syscalls syscalls)"
printf '%-5s %-9s %10s %13s %9s %9s %7s   %10s %10s %10s\n' conc monitor "inv/s" "(range)" "p50 ms" "p99 ms" errors \
    "inv/s/off" "p50/off" "p99/off"
for c in 1 8; do
    t=$(( c < 2 ? 1 : 2 ))
    for name in "${CONFIGS[@]}"; do : > "$work/$name.runs"; done
    for round in $(seq "$ROUNDS"); do
        for name in "${CONFIGS[@]}"; do
            base=base_$name
            sampler=
            if [ "$name" = guarded ] && [ "$round" = 1 ]; then
                # Halfway through, what the guarded daemon has attached.
                ( sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 2}')"
                  { attached guarded sys_enter; attached guarded sys_exit; } > "$work/attached.$c" ) &
                sampler=$!
                pids+=("$sampler")
            fi
            out=$(wrk -t$t -c$c -d"${DURATION}s" --latency -s "$work/$name.lua" "${!base}/v1/functions/noop/invoke")
            [ -n "$sampler" ] && { wait "$sampler" || true; }
            if [ "$name" = guarded ]; then wait_detached guarded; fi
            rate=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
            errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i + 0} END {print n + 0}' <<<"$out")
            echo "$rate $(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")") $errors" >> "$work/$name.runs"
        done
    done
    for name in "${CONFIGS[@]}"; do
        for col in 1 2 3; do cut -d' ' -f$col "$work/$name.runs" | median > "$work/$name.med$col"; done
    done
    for name in "${CONFIGS[@]}"; do
        printf '%-5s %-9s %10s %13s %9s %9s %7s   %10s %10s %10s\n' "$c" "$name" "$(cat "$work/$name.med1")" \
            "($(cut -d' ' -f1 "$work/$name.runs" | minmax))" "$(cat "$work/$name.med2")" "$(cat "$work/$name.med3")" \
            "$(awk '{n += $4} END {print n}' "$work/$name.runs")" \
            "$(awk -v a="$(cat "$work/$name.med1")" -v b="$(cat "$work/off.med1")" 'BEGIN {printf "%.3f", a / b}')" \
            "$(awk -v a="$(cat "$work/$name.med2")" -v b="$(cat "$work/off.med2")" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')" \
            "$(awk -v a="$(cat "$work/$name.med3")" -v b="$(cat "$work/off.med3")" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')"
    done
    awk -v a="$(cat "$work/counters.med1")" -v b="$(cat "$work/off.med1")" -v c="$c" 'BEGIN {
        d = (1 - a / b) * 100
        printf "conc %s: counters has %.1f%% %s invocations/s than off (target: at most 5%% fewer): %s\n",
            c, (d < 0 ? -d : d), (d < 0 ? "more" : "fewer"), (d <= 5 ? "met" : "NOT met") }'
    echo "conc $c: the guarded daemon halfway through its first run: $(tr '\n' ' ' < "$work/attached.$c")"
done

echo
echo "== 2. time to first event: GET /v1/events?function=noop open, one invoke, $EVENT_ROUNDS rounds (counters daemon) =="
python3 - "$base_counters" "$(token counters)" "$EVENT_ROUNDS" <<'PY'
import http.client, statistics, sys, threading, time, urllib.parse
base, token, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
host = urllib.parse.urlparse(base).netloc
auth = {"Authorization": f"Bearer {token}"}
stream = http.client.HTTPConnection(host, timeout=30)
stream.request("GET", "/v1/events?function=noop", headers={**auth, "Accept": "text/event-stream"})
resp = stream.getresponse()
assert resp.status == 200, (resp.status, resp.read())
time.sleep(0.2)  # the subscription is made when the stream's first poll runs

def invoke(out):
    c = http.client.HTTPConnection(host, timeout=30)
    c.request("POST", "/v1/functions/noop/invoke", body=b"hi", headers=auth)
    r = c.getresponse()
    r.read()
    out["done"] = time.perf_counter()
    out["status"] = r.status

seen = {k: [] for k in ("start", "exec", "exit", "end", "response")}
for _ in range(rounds):
    out = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=invoke, args=(out,))
    th.start()
    got = {}
    while "end" not in got:
        line = resp.readline()
        if not line:
            sys.exit("the event stream ended")
        line = line.decode().strip()
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
            got.setdefault(kind, (time.perf_counter() - t0) * 1000)
    th.join()
    assert out.get("status") == 200, out
    got["response"] = (out["done"] - t0) * 1000
    for k in seen:
        if k in got:
            seen[k].append(got[k])
print(f"{'event':<10} {'n':>3} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}   (from just before the invoke is sent)")
for k, v in seen.items():
    if not v:
        print(f"{k:<10} {0:>3}  (never arrived)")
        continue
    s = sorted(v)
    p90 = s[min(len(s) - 1, int(len(s) * 0.9))]
    print(f"{k:<10} {len(s):>3} {statistics.median(s):>10.2f} {p90:>8.2f} {s[0]:>8.2f} {s[-1]:>8.2f}")
PY

# (b) and (c) interleaved: (c) runs while a guarded invocation (sleep 5) of
# the counters daemon keeps sys_enter attached.
cli counters fn deploy sleeper --handler 'sh /fn/handler.sh' --code "$work/sleeper" --syscall-budget 1000000 >/dev/null
: > "$work/getpid.idle"; : > "$work/getpid.guarded"; : > "$work/getpid.attached"; : > "$work/getpid.running"; : > "$work/getpid.detached"
for _ in $(seq "$GETPID_ROUNDS"); do
    # Idle means detached (see wait_detached).
    wait_detached counters
    attached counters sys_enter >> "$work/getpid.detached"
    getpid_round >> "$work/getpid.idle"
    curl -s -o "$work/sleeper.out" -H "Authorization: Bearer $(token counters)" -X POST -d hi \
        "$base_counters/v1/functions/sleeper/invoke" &
    inv=$!
    pids+=("$inv")
    line=
    for _ in $(seq 100); do
        line=$(attached counters sys_enter)
        [[ "$line" == *"} 1"* ]] && break
        sleep 0.02
    done
    echo "$line" >> "$work/getpid.attached"
    getpid_round >> "$work/getpid.guarded"
    # The invocation must still have been running when the count ended.
    if kill -0 "$inv" 2>/dev/null; then echo still >> "$work/getpid.running"; else echo ended >> "$work/getpid.running"; fi
    wait "$inv" || true
    grep -q slept "$work/sleeper.out" || { echo "the guarded sleeper failed: $(cat "$work/sleeper.out")" >&2; exit 1; }
done
during=$(sort "$work/getpid.attached" | uniq -c | sed 's/^ *//' | paste -sd';')
after=$(attached counters sys_enter)

# (a) again, with no daemon: stop them all.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
for _ in $(seq "$GETPID_ROUNDS"); do getpid_round >> "$work/getpid.none2"; done

echo
echo "== 3. a host process outside any sandbox: ns per syscall(SYS_getpid), 10 million calls, median (range) of $GETPID_ROUNDS rounds =="
none=$(median < "$work/getpid.none")
printf '%-48s %8s  %-15s %s\n' "when" "ns/call" "(range)" "minus no daemon (first)"
for row in "none:(a) no daemon (before the daemons started)" "none2:(a) no daemon (after they were stopped)" \
    "idle:(b) the three daemons idle" "guarded:(c) a guarded invocation running (sys_enter)"; do
    f=${row%%:*}
    m=$(median < "$work/getpid.$f")
    printf '%-48s %8.2f  %-15s %+.2f ns\n' "${row#*:}" "$m" "($(minmax < "$work/getpid.$f"))" \
        "$(awk -v a="$m" -v b="$none" 'BEGIN {print a - b}')"
done
awk -v c="$(median < "$work/getpid.guarded")" -v b="$(median < "$work/getpid.idle")" \
    'BEGIN {printf "(c) - (b): %+.2f ns per syscall while sys_enter is attached\n", c - b}'
echo "the counters daemon's /metrics before (b), rounds per line: $(sort "$work/getpid.detached" | uniq -c | sed 's/^ *//' | paste -sd';')"
echo "the counters daemon's /metrics during (c), rounds per line: $during"
echo "and just after the last guarded invocation ended: $after"
echo "rounds of (c) whose invocation still ran when the count ended: $(grep -c still "$work/getpid.running" || true) of $GETPID_ROUNDS"
