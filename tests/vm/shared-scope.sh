#!/bin/bash
# `alcove run` from a cgroup it shares with other processes, as from a login
# shell's session scope: under systemd it must re-execute itself in a delegated
# scope of its own (systemd-run) and behave as if nothing happened (exit status,
# stdout, peaks); without systemd it must refuse, naming the other processes.
# Run by guest.sh (smoke part). Prints `check-ok: NAME` / `check-fail: NAME: WHY`.
set -uo pipefail
. "$(dirname "$0")/checks.sh"

if [ -d /run/systemd/system ]; then
    # A scope holding a shell and a sleeper besides alcove: the shape of a
    # login session.
    systemd-run --scope --quiet --collect --unit "alcove-shared-$$" bash -c '
        sleep 300 & sleeper=$!
        "$1" run --report "$2/report.json" -- sh -c "echo shared; exit 7" > "$2/out" 2> "$2/err"
        echo $? > "$2/rc"
        kill $sleeper' _ "$ALCOVE" "$tmp"
    rc=$(cat "$tmp/rc" 2>/dev/null)
    echo "shared-scope: exit $rc, stdout $(cat "$tmp/out" 2>/dev/null), stderr: $(tr '\n' ' ' < "$tmp/err" 2>/dev/null)"
    if [ "$rc" = 7 ] && [ "$(cat "$tmp/out")" = shared ]; then
        ok "from a shared scope: alcove runs in a scope of its own, exit status 7 and stdout passed through"
    else
        bad "from a shared scope: alcove runs in a scope of its own" "exit $rc: $(cat "$tmp/err" 2>/dev/null)"
    fi
    if grep -q "asking systemd for a scope of alcove's own" "$tmp/err"; then
        ok "from a shared scope: alcove says it asked systemd for a scope"
    else
        bad "from a shared scope: alcove says it asked systemd for a scope" "$(cat "$tmp/err")"
    fi
    peak=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pids_peak"])' "$tmp/report.json" 2>&1)
    if [[ "$peak" =~ ^[1-9][0-9]*$ ]]; then ok "from a shared scope: the report has pids_peak ($peak)"; else bad "from a shared scope: the report has pids_peak" "$peak"; fi
else
    # No systemd: a hand-made cgroup with a sleeper in it, then alcove.
    cg=/sys/fs/cgroup/alcove-shared-$$
    mkdir "$cg"
    sleep 300 & sleeper=$!
    echo $sleeper > "$cg/cgroup.procs"
    bash -c 'echo $$ > "$1/cgroup.procs"; exec "$2" run -- true' _ "$cg" "$ALCOVE" 2> "$tmp/err"
    rc=$?
    kill $sleeper; wait $sleeper 2>/dev/null
    leftover=$(find "$cg" -mindepth 1 -type d -printf '%P ')
    rmdir "$cg/supervisor" "$cg/alcove" "$cg" 2>/dev/null
    echo "shared-scope: exit $rc, stderr: $(cat "$tmp/err")"
    if [ "$rc" = 125 ] && grep -q "also holds other processes (sleep $sleeper" "$tmp/err"; then
        ok "from a shared cgroup without systemd: refused (125), naming the sleeper"
    else
        bad "from a shared cgroup without systemd: refused naming the sleeper" "exit $rc: $(cat "$tmp/err")"
    fi
    if [ -z "$leftover" ]; then ok "a refused start leaves nothing"; else bad "a refused start leaves nothing" "left in $cg: $leftover"; fi
fi
