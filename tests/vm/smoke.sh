#!/bin/bash
# `alcove run` checks for the VM guest, run by guest.sh from a delegated cgroup
# (tests/vm/in-cgroup delegated): limits, the report's peaks, and 20 runs that
# leave nothing more behind than one. Prints `check-ok: NAME` or
# `check-fail: NAME: WHY` per check (guest.sh counts them) and notes between.
set -uo pipefail
. "$(dirname "$0")/checks.sh"
# field FILE KEY: a report's field as JSON text (null when absent).
field() { python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])).get(sys.argv[2])))' "$1" "$2" 2>/dev/null || echo missing; }

echo "smoke: in cgroup $(sed -n 's/^0:://p' /proc/self/cgroup)"
own=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
deleg=${own%/supervisor}

# 1. A plain run reports its peaks.
"$ALCOVE" run --report "$tmp/plain.json" -- sh -c 'echo hi' > "$tmp/plain.out" 2> "$tmp/plain.err"
rc=$?
echo "smoke: plain run: exit $rc, report $(tr -d '\n' < "$tmp/plain.json" 2>/dev/null | cut -c1-400)"
if [ $rc = 0 ] && [ "$(cat "$tmp/plain.out")" = hi ]; then ok "alcove run -- sh -c 'echo hi'"; else bad "alcove run -- sh -c 'echo hi'" "exit $rc: $(cat "$tmp/plain.err")"; fi
mem=$(field "$tmp/plain.json" memory_peak_bytes)
pids=$(field "$tmp/plain.json" pids_peak)
if [[ "$mem" =~ ^[1-9][0-9]*$ ]]; then ok "report has memory_peak_bytes ($mem)"; else bad "report has memory_peak_bytes" "memory_peak_bytes is $mem"; fi
if [[ "$pids" =~ ^[1-9][0-9]*$ ]]; then ok "report has pids_peak ($pids)"; else bad "report has pids_peak" "pids_peak is $pids"; fi
echo "smoke: after the first run, $deleg has subtree_control: $(cat "$deleg/cgroup.subtree_control" 2>/dev/null), children: $(find "$deleg" -mindepth 1 -maxdepth 1 -type d -printf '%P ')"

# 2. A memory hog under --memory 32M is OOM-killed and reported as oom.
t0=$EPOCHREALTIME
"$ALCOVE" run --memory 32M --timeout 60s --report "$tmp/oom.json" -- tail /dev/zero > /dev/null 2> "$tmp/oom.err"
rc=$?
status=$(field "$tmp/oom.json" status)
echo "smoke: memory hog: exit $rc, status $status, memory_peak_bytes $(field "$tmp/oom.json" memory_peak_bytes), $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
if [ "$status" = '"oom"' ] && [ $rc = 137 ]; then ok "--memory 32M memory hog: status oom, exit 137"; else bad "--memory 32M memory hog: status oom, exit 137" "exit $rc, status $status: $(cat "$tmp/oom.err")"; fi

# 3. A fork bomb under --pids 8 never has more than 8 tasks.
t0=$EPOCHREALTIME
"$ALCOVE" run --pids 8 --timeout 5s --report "$tmp/bomb.json" -- sh -c 'bomb() { bomb | bomb & }; bomb; sleep 30' > /dev/null 2> "$tmp/bomb.err"
rc=$?
status=$(field "$tmp/bomb.json" status)
pids=$(field "$tmp/bomb.json" pids_peak)
took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "smoke: fork bomb: exit $rc, status $status, pids_peak $pids, ${took}s, stderr: $(head -c 200 "$tmp/bomb.err" | tr '\n' ' ')"
if [[ "$pids" =~ ^[0-9]+$ ]] && [ "$pids" -le 8 ] && [ "$pids" -ge 2 ]; then ok "--pids 8 fork bomb: pids_peak $pids <= 8"; else bad "--pids 8 fork bomb: pids_peak <= 8" "pids_peak $pids, status $status"; fi
# The shell gives up when fork fails (exit 2) or the timeout ends it (137);
# either way the whole sandbox is gone when alcove returns.
left=$(ps -u 65534 -o pid=,args= | tr '\n' ' ')
if [[ "$status" =~ ^\"(exited|timeout)\"$ ]] && [ -z "$left" ]; then
    ok "--pids 8 fork bomb over in ${took}s (status $status), no process left"
else
    bad "--pids 8 fork bomb over, no process left" "exit $rc, status $status, left: $left: $(cat "$tmp/bomb.err")"
fi

# 4. 20 runs leave nothing more behind than the runs before them did (alcove
# keeps a bounded pool of prepared cgroups and namespaces between runs; the
# host's tests run thousands, this checks the v2 leaves' teardown).
snapshot() {
    echo "cgroups: $(find /sys/fs/cgroup -mindepth 2 -type d -path '*/alcove/*' | sort | tr '\n' ' ')"
    echo "mounts: $(awk '{ print $2 }' /proc/self/mounts | sort | tr '\n' ' ')"
    echo "nobody processes: $(ps -u 65534 -o pid= | tr -d ' \n')"
    echo "alcove processes: $(ps -eo args= | grep -c '^[^ ]*alcove ')"
}
before=$(snapshot)
t0=$EPOCHREALTIME
failed=0
for _ in $(seq 20); do
    "$ALCOVE" run --memory 64M --pids 16 --timeout 20s -- true > /dev/null 2> "$tmp/run.err" || { failed=$((failed + 1)); cat "$tmp/run.err"; }
done
took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "smoke: 20 runs of true in ${took}s, $failed failed"
if [ $failed = 0 ]; then ok "20 runs succeed (${took}s)"; else bad "20 runs succeed" "$failed failed"; fi
after=$(snapshot)
if [ "$before" = "$after" ]; then
    ok "20 runs leave no cgroup, mount or process behind"
else
    bad "20 runs leave no cgroup, mount or process behind" "$(diff <(echo "$before" | tr ' ' '\n') <(echo "$after" | tr ' ' '\n') | grep '^[<>]')"
fi

# 5. alcove gc removes what the runs keep prepared.
"$ALCOVE" gc > "$tmp/gc.out" 2>&1
rc=$?
echo "smoke: alcove gc: $(tr '\n' ' ' < "$tmp/gc.out")"
left=$(find "$deleg" -mindepth 2 -type d -path '*/alcove/*' -printf '%P ')
if [ $rc = 0 ] && [ -z "$left" ]; then ok "alcove gc leaves no sandbox cgroup"; else bad "alcove gc leaves no sandbox cgroup" "exit $rc, left: $left"; fi
