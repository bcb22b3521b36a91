#!/bin/bash
# The guest half of scripts/vm-test.sh: runs in the VM (host's userland on an
# overlay, cgroup v2 only) as systemd's alcove-vm.service, or as the child of
# tests/vm/shell-init. Its output is the serial console the host reads.
#
# Parts (ALCOVE_VM_PARTS):
#   info       kernel, LSMs, cgroups, `alcove doctor` (always)
#   root       the integration test binaries from the root cgroup
#   delegated  the same from a delegated cgroup (a scope's `supervisor` leaf)
#   daemon     dist/alcove.service started as a service; deploy and invoke a
#              function with the CLI; stop it; nothing left behind
#   smoke      `alcove run` from a delegated cgroup: OOM, a fork bomb, the
#              report's peaks, 20 runs leave nothing more behind
#              (smoke.sh); and from a cgroup it shares with other processes
#              (shared-scope.sh)
#   bench      with BPF LSM on: bench/peaks.sh, what the v2 run leaf costs
# Each part ends with `vm-tests: N passed, N failed (PART)`, then a total line
# and `ALCOVE-VM-DONE rc=N`, which the host looks for.
set -uo pipefail
. /etc/alcove-vm.conf
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 RUST_BACKTRACE=1
VM=$ALCOVE_VM_REPO/tests/vm
ALCOVE=/usr/local/bin/alcove
LOGS=/tmp/vm-logs
mkdir -p "$LOGS"
cd /

T_START=$EPOCHREALTIME
TOTAL_P=0 TOTAL_F=0 PART_P=0 PART_F=0 PART=none
FAILED_LIST=()

secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

part_begin() {
    PART=$1 PART_P=0 PART_F=0 PART_T0=$EPOCHREALTIME
    echo
    echo "=== part $PART (guest uptime $(uptime_s)s) ==="
}
part_end() {
    echo "vm-tests: $PART_P passed, $PART_F failed ($PART, $(secs "$PART_T0")s)"
    TOTAL_P=$((TOTAL_P + PART_P)) TOTAL_F=$((TOTAL_F + PART_F))
}
pass() { PART_P=$((PART_P + ${2:-1})); echo "ok   $1"; }
fail() {
    PART_F=$((PART_F + ${3:-1}))
    FAILED_LIST+=("$PART: $1")
    echo "FAIL $1: $2"
}
# check NAME COMMAND...: one check; the command's output is shown on failure.
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc = 0 ]; then pass "$name"; else fail "$name" "exit $rc: $(echo "$out" | tail -n 20)"; fi
    return $rc
}

# --- info --------------------------------------------------------------------
part_begin info
echo "kernel: $(uname -r) ($(uname -v))"
echo "cmdline: $(cat /proc/cmdline)"
echo "init: $ALCOVE_VM_INIT ($(readlink /proc/1/exe))"
lsm=$(cat /sys/kernel/security/lsm 2>/dev/null || echo "(securityfs not mounted)")
echo "lsm: $lsm"
echo "/proc/self/cgroup: $(tr '\n' ' ' < /proc/self/cgroup)"
echo "root cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "mounted cgroup filesystems: $(awk '$3 ~ /^cgroup/ { print $2 " (" $3 ")" }' /proc/mounts | tr '\n' ' ')"
echo "cpus: $(nproc), memory: $(awk '/MemTotal/ { print int($2 / 1024) " MiB" }' /proc/meminfo)"
echo "boot to tests: $(uptime_s)s guest uptime"
# A host address besides loopback, for the tests that connect to one (no
# network device here; the dummy module is in the initramfs).
# A documentation address (TEST-NET-1): nothing leaves this guest anyway.
if ip link add vm-dummy0 type dummy 2>/dev/null && ip addr add 192.0.2.15/24 dev vm-dummy0 && ip link set vm-dummy0 up; then
    echo "network: lo, vm-dummy0 192.0.2.15/24"
else
    echo "network: lo only (no dummy interface: tests that need a host address will say SKIPPED)"
fi
case "$ALCOVE_VM_LSM" in
on) check "BPF LSM active (lsm ends in bpf)" grep -qw bpf /sys/kernel/security/lsm ;;
off) check "BPF LSM inactive (no bpf in lsm)" bash -c '! grep -qw bpf /sys/kernel/security/lsm' ;;
esac
check "cgroup v2 only (no v1 hierarchy mounted)" bash -c '! awk "\$3 == \"cgroup\"" /proc/mounts | grep -q .'
check "cpu, memory and pids controllers at the root" bash -c \
    'for c in cpu memory pids; do grep -qw $c /sys/fs/cgroup/cgroup.controllers || exit 1; done'
echo "pids.peak in cgroup v2: $([ -e /sys/fs/cgroup/system.slice/pids.peak ] || [ -e /sys/fs/cgroup/init.scope/pids.peak ] && echo yes || echo no)"
t0=$EPOCHREALTIME
"$ALCOVE" --version > /dev/null
echo "speed of this guest: alcove --version $(secs "$t0")s; sh -c true x20 $(t0=$EPOCHREALTIME; for _ in $(seq 20); do sh -c true; done; secs "$t0")s"
echo "--- alcove doctor (from a delegated cgroup, as alcove.service runs)"
"$VM/in-cgroup" delegated alcove-doctor -- "$ALCOVE" doctor 2>&1 | sed 's/^/  /'
part_end

# --- integration test binaries -------------------------------------------------
# ALCOVE_VM_TESTS, ALCOVE_VM_DELEGATED_TESTS: NAME:EXECUTABLE:CWD words, chosen
# by the host from cargo's list of built test executables.
scope_n=0
run_test_bins() { # root|delegated SPECS
    local where=$1 specs=$2 spec name exe cwd log t0 rc p f took skipped entry skips
    for spec in $specs; do
        IFS=: read -r name exe cwd <<< "$spec"
        # ALCOVE_VM_SKIP: BINARY::TEST words; this binary's become --skip TEST.
        skips=()
        for entry in ${ALCOVE_VM_SKIP:-}; do
            [ "${entry%%::*}" != "$name" ] || skips+=(--skip "${entry#*::}")
        done
        log="$LOGS/$where-$name.log"
        t0=$EPOCHREALTIME
        # Which binary runs, so that a guest that hangs says where.
        echo "...  $name (from $where, guest uptime $(uptime_s)s)"
        scope_n=$((scope_n + 1))
        # shellcheck disable=SC2086 # ALCOVE_VM_TEST_ARGS is a word list
        "$VM/in-cgroup" "$where" "alcove-tests-$scope_n" -- bash -c 'cd "$1" && shift && exec "$@"' _ "$cwd" \
            env RUSTC_BOOTSTRAP=1 ALCOVE_EMULATED=1 timeout -k 10 "$ALCOVE_VM_TEST_TIMEOUT" "$exe" --test-threads="$ALCOVE_VM_THREADS" \
            -Z unstable-options --report-time $ALCOVE_VM_TEST_ARGS "${skips[@]}" \
            > "$log" 2>&1 < /dev/null
        rc=$?
        took=$(secs "$t0")
        p=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
        f=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
        skipped=$(grep -c '^SKIPPED' "$log")
        grep '^SKIPPED\|^in-cgroup:' "$log" | sed "s/^/  [$name] /"
        if [ ${#skips[@]} != 0 ]; then
            # libtest's own count: a name that matches nothing (renamed, or a
            # typo) or more than one test shows as a mismatch here.
            filtered=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^filtered/) s += $i } END { print s + 0 }' "$log")
            echo "  [$name] not run here (ALCOVE_VM_SKIP; the host's run covers them): $(printf '%s\n' "${skips[@]}" | grep -vx -- --skip | paste -sd' ')"
            [ "$filtered" = $((${#skips[@]} / 2)) ] ||
                echo "  [$name] WARNING: ALCOVE_VM_SKIP names $((${#skips[@]} / 2)) test(s) here and libtest left out $filtered: check the names"
        fi
        # The slowest tests (libtest's --report-time: "test NAME ... ok <1.234s>").
        sed -n 's/^test \(.*\) \.\.\. [a-zA-Z]* <\([0-9.]*\)s>$/\2 \1/p' "$log" | sort -rn | head -n 3 |
            awk -v n="$name" '{ printf "  [%s] %6.1fs %s\n", n, $1, $2 }'

        PART_P=$((PART_P + p))
        if [ "$rc" = 0 ] && [ "$f" = 0 ]; then
            echo "ok   $name: $p passed, $skipped skipped (${took}s)"
            continue
        fi
        [ "$f" -gt 0 ] || f=1
        PART_F=$((PART_F + f))
        case $rc in
        124 | 137) why="timed out after ${ALCOVE_VM_TEST_TIMEOUT}s" ;;
        *) why="exit $rc" ;;
        esac
        echo "FAIL $name: $p passed, $f failed, $why (${took}s)"
        while read -r t; do
            FAILED_LIST+=("$where: $name::$t")
            echo "     failed: $name::$t"
        done < <(sed -n 's/^test \(.*\) \.\.\. FAILED\( <[0-9.]*s>\)\{0,1\}$/\1/p' "$log")
        FAILED_LIST+=("$where: $name ($why)")
        echo "----- $name output (failures; full log in the guest at $log) -----"
        if grep -q '^failures:$' "$log"; then
            sed -n '/^failures:$/,/^test result:/p' "$log" | head -n 300
        else
            tail -n 60 "$log"
        fi
        echo "----- end of $name output -----"
    done
}

if [[ " $ALCOVE_VM_PARTS " == *" root "* ]]; then
    part_begin root
    run_test_bins root "$ALCOVE_VM_TESTS"
    part_end
fi
if [[ " $ALCOVE_VM_PARTS " == *" delegated "* ]]; then
    part_begin delegated
    run_test_bins delegated "$ALCOVE_VM_DELEGATED_TESTS"
    part_end
fi

# --- the daemon from the shipped unit -------------------------------------------
# Everything the host's alcoves left: sandbox cgroups beneath any `alcove`
# directory, alcove's mounts, processes of nobody (sandboxes run as nobody).
alcove_cgroups() { find /sys/fs/cgroup -mindepth 2 -type d -path '*/alcove/*' -printf '%P\n' 2>/dev/null | sort; }
# Mounts, but not alcove's bounded pool of prepared namespaces and mount
# templates, which outlive runs and daemons by design (`alcove gc` removes them).
alcove_mounts() { awk '$2 ~ /alcove/ && $2 !~ "^/run/alcove/(pool|templates)/" { print $2 }' /proc/self/mounts | sort; }
pooled_mounts() { awk '$2 ~ "^/run/alcove/(pool|templates)/" { print $2 }' /proc/self/mounts | sort; }
nobody_procs() { ps -u 65534 -o pid=,args= 2>/dev/null; }

wait_http() { # URL SECONDS
    local _
    for _ in $(seq $(($2 * 10))); do
        curl -sf -o /dev/null --max-time 2 "$1" && return 0
        sleep 0.1
    done
    return 1
}

cgroup2_options() {
    sed -n 's/.* - cgroup2 [^ ]* \([^ ]*\)$/\1/p' /proc/self/mountinfo | head -n 1
}

daemon_part() {
    local svc_cg=/sys/fs/cgroup/system.slice/alcove.service pid=0 mounts_before out rec t0 tree_before keep scratch cleared back what
    export ALCOVE_SERVER=http://127.0.0.1:8480
    mounts_before=$(alcove_mounts)
    tree_before=$(cgroup2_options)
    echo "sandbox cgroups left by the test binaries (pooled slots are kept by design): $(alcove_cgroups | tr '\n' ' ')"
    t0=$EPOCHREALTIME
    if [ "$ALCOVE_VM_INIT" = systemd ]; then
        check "systemctl start alcove (dist/alcove.service)" systemctl start alcove
        pid=$(systemctl show -p MainPID --value alcove)
    else
        # The unit's ExecStart, as the sole process of system.slice/alcove.service.
        local exec_start
        exec_start=$(sed -n 's/^ExecStart=//p' "$ALCOVE_VM_REPO/dist/alcove.service")
        echo "ExecStart (from dist/alcove.service): $exec_start"
        mkdir -p /var/lib/alcove /run/alcove
        for c in $(sed 's/\([a-z_]*\)/+\1/g' /sys/fs/cgroup/cgroup.controllers); do
            echo "$c" > /sys/fs/cgroup/cgroup.subtree_control
            mkdir -p /sys/fs/cgroup/system.slice
            echo "$c" > /sys/fs/cgroup/system.slice/cgroup.subtree_control
        done
        mkdir -p "$svc_cg"
        # shellcheck disable=SC2086 # the unit's command line, split as systemd would (no quotes in it)
        bash -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$svc_cg" $exec_start \
            > "$LOGS/alcove-serve.log" 2>&1 < /dev/null &
        pid=$!
    fi
    if wait_http http://127.0.0.1:8480/healthz 120; then
        pass "daemon serves on 127.0.0.1:8480 ($(secs "$t0")s after start)"
    else
        fail "daemon serves on 127.0.0.1:8480" "no answer in 120 s"
    fi
    out=$(sed -n 's/^0:://p' /proc/"$pid"/cgroup 2>/dev/null)
    echo "daemon pid $pid, cgroup $out"
    if [ "$out" = /system.slice/alcove.service/supervisor ]; then
        pass "the daemon moved itself into alcove.service/supervisor"
    else
        fail "the daemon moved itself into alcove.service/supervisor" "its cgroup is ${out:-unknown}"
    fi
    # The service adds favordynmods to systemd's cgroup2 tree, keeping nsdelegate
    # and memory_recursiveprot (the root part's test put the tree back as found).
    out=$(cgroup2_options)
    echo "cgroup2 tree options before the service: $tree_before; with it running: $out"
    case ",$out," in
        *,favordynmods,*nsdelegate*|*nsdelegate*,favordynmods,*)
            case ",$tree_before," in
                *,favordynmods,*) pass "the cgroup2 tree is favordynmods (it was before the service), nsdelegate kept" ;;
                *) pass "the service mounted the cgroup2 tree favordynmods, nsdelegate kept" ;;
            esac ;;
        *) fail "the service mounted the cgroup2 tree favordynmods, nsdelegate kept" "its options: ${out:-unknown}" ;;
    esac
    # What a container runtime does for a container sharing the host's cgroup
    # namespace: a new cgroup2 mount, whose options become the tree's (here the
    # tree's own without favordynmods). The service puts the option back. Only
    # from a tree the check above passed on: a bare mount would clear nsdelegate.
    what="the service puts favordynmods back after a new cgroup2 mount, nsdelegate kept"
    case ",$out," in
    *,favordynmods,*nsdelegate*|*nsdelegate*,favordynmods,*)
        keep=$(tr ',' '\n' <<<"$out" | grep -vx -e rw -e favordynmods | paste -sd, -)
        scratch=$(mktemp -d)
        if ! mount -t cgroup2 -o "$keep" none "$scratch"; then
            fail "$what" "mount -t cgroup2 -o $keep failed"
        elif ! umount "$scratch"; then
            fail "$what" "umount of the new cgroup2 mount at $scratch failed"
        else
            cleared=$(cgroup2_options)
            echo "cgroup2 tree options after a new mount with \"$keep\": $cleared"
            back=$cleared
            for _ in $(seq 1 40); do
                case ",$back," in *,favordynmods,*) break ;; esac
                sleep 0.5
                back=$(cgroup2_options)
            done
            echo "cgroup2 tree options 20 s later at most: $back"
            case ",$cleared,|,$back," in
                *,favordynmods,*\|*) echo "SKIPPED: $what: a new mount did not clear favordynmods (the kernel keeps it on)" ;;
                *\|*,favordynmods,*nsdelegate*|*\|*nsdelegate*,favordynmods,*) pass "$what" ;;
                *) fail "$what" "its options: $back (the service's log is below)" ;;
            esac
        fi
        rmdir "$scratch" 2>/dev/null || true ;;
    *) fail "$what" "not tried: the tree did not show favordynmods and nsdelegate ($out)" ;;
    esac
    echo "system.slice/alcove.service: $(find "$svc_cg" -mindepth 1 -type d -printf '%P ' 2>/dev/null)"
    out=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8480/v1/functions)
    if [ "$out" = 401 ]; then pass "the API refuses a request without the token (401)"; else fail "the API refuses a request without the token (401)" "HTTP $out"; fi
    t0=$EPOCHREALTIME
    check "fn deploy hello" "$ALCOVE" fn deploy hello --http --handler 'python3 /fn/main.py' \
        --code "$ALCOVE_VM_REPO/examples/hello-python" --memory 128M --timeout 5s
    out=$("$ALCOVE" fn invoke hello --data '{"name": "Ada"}' 2>&1)
    echo "fn invoke hello: $out ($(secs "$t0")s for deploy and invoke)"
    if [[ "$out" == *'"greeting": "hello, Ada"'* ]]; then pass "fn invoke hello answers hello, Ada"; else fail "fn invoke hello answers hello, Ada" "$out"; fi
    rec=$("$ALCOVE" fn logs hello --json 2>&1)
    if python3 - "$rec" <<'EOF'; then pass "invocation record has memory and pids peaks"; else fail "invocation record has memory and pids peaks" "$rec"; fi
import json, sys
r = json.loads(sys.argv[1])["invocations"][0]
print("invocation record: status %s, memory_peak_bytes %s, pids_peak %s, wall_ms %s" % (r["status"], r["memory_peak_bytes"], r["pids_peak"], r["wall_ms"]))
sys.exit(0 if r["status"] == "exited" and (r["memory_peak_bytes"] or 0) > 0 and (r["pids_peak"] or 0) >= 1 else 1)
EOF
    # The service's daemon loaded its eBPF monitor in its own cgroup and watched the invocation.
    if python3 - "$rec" <<'EOF'; then pass "the service's daemon watched the invocation (eBPF counters)"; else fail "the service's daemon watched the invocation (eBPF counters)" "$rec"; fi
import json, sys
k = json.loads(sys.argv[1])["invocations"][0].get("kernel") or {}
print("invocation record's kernel counters: %s" % k)
sys.exit(0 if k.get("execs", 0) >= 1 and k.get("bytes_written", 0) > 0 else 1)
EOF
    echo "sandbox cgroups while the daemon runs: $(find "$svc_cg" -mindepth 1 -type d -printf '%P ' 2>/dev/null)"
    t0=$EPOCHREALTIME
    if [ "$ALCOVE_VM_INIT" = systemd ]; then
        check "systemctl stop alcove" systemctl stop alcove
        out=$(systemctl show -p Result -p ActiveState -p NRestarts alcove | tr '\n' ' ')
        echo "after stop: $out ($(secs "$t0")s)"
        if [[ "$out" == *"Result=success"* && "$out" == *"ActiveState=inactive"* ]]; then
            pass "alcove.service stopped cleanly"
        else
            fail "alcove.service stopped cleanly" "$out; $(journalctl -u alcove --no-pager 2>&1 | tail -n 20)"
        fi
        echo "--- journalctl -u alcove"
        journalctl -u alcove --no-pager -o cat 2>&1 | tail -n 20 | sed 's/^/  /'
    else
        kill -TERM "$pid"
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            fail "alcove serve stopped on SIGTERM" "still running after 30 s"
        else
            wait "$pid"
            check "alcove serve stopped on SIGTERM with status 0" test "$?" = 0
        fi
        echo "--- alcove serve's log"
        tail -n 20 "$LOGS/alcove-serve.log" | sed 's/^/  /'
        # KillMode=mixed: whatever is left in the cgroup is killed; count it first.
        out=$(find "$svc_cg" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')
        if [ -z "${out// /}" ]; then pass "no process left in alcove.service's cgroup"; else fail "no process left in alcove.service's cgroup" "$out"; fi
        echo 1 > "$svc_cg/cgroup.kill" 2>/dev/null
        out=$(find "$svc_cg" -mindepth 1 -type d -printf '%P ' 2>/dev/null)
        echo "cgroups the stopped daemon left in its service cgroup: ${out:-none}"
        find "$svc_cg" -depth -type d -exec rmdir {} + 2>/dev/null
    fi
    out=$(find "$svc_cg" -type d -printf '%p ' 2>/dev/null)
    if [ -z "$out" ]; then pass "alcove.service's cgroup tree is gone after stop"; else fail "alcove.service's cgroup tree is gone after stop" "$out"; fi
    out=$(nobody_procs)
    if [ -z "$out" ]; then pass "no sandbox process left after stop"; else fail "no sandbox process left after stop" "$out"; fi
    echo "pooled namespaces and templates now: $(pooled_mounts | tr '\n' ' ')"
    out=$(comm -13 <(echo "$mounts_before") <(alcove_mounts) | tr '\n' ' ')
    if [ -z "${out// /}" ]; then pass "no mount left after stop"; else fail "no mount left after stop" "$out"; fi
}

if [[ " $ALCOVE_VM_PARTS " == *" daemon "* ]]; then
    part_begin daemon
    daemon_part
    part_end
fi

# --- alcove run from a delegated cgroup -----------------------------------------
if [[ " $ALCOVE_VM_PARTS " == *" smoke "* ]]; then
    part_begin smoke
    # Prints a check script's notes and counts its `check-ok:` / `check-fail:` lines.
    count_checks() { # NAME OUTPUT RC
        local line rest f0=$PART_F
        grep -v '^check-' <<< "$2"
        while IFS= read -r line; do
            case $line in
            check-ok:*) pass "${line#check-ok: }" ;;
            check-fail:*) rest=${line#check-fail: }; fail "${rest%%: *}" "${rest#*: }" ;;
            esac
        done <<< "$2"
        if [ "$3" != 0 ] && [ "$PART_F" = "$f0" ]; then fail "$1" "exit $3"; fi
    }
    out=$("$VM/in-cgroup" delegated alcove-smoke -- bash "$VM/smoke.sh" 2>&1)
    count_checks smoke.sh "$out" $?
    # From a cgroup shared with other processes (a login session's shape),
    # not a delegated one: shared-scope.sh makes that cgroup itself.
    out=$(ALCOVE=$ALCOVE bash "$VM/shared-scope.sh" 2>&1)
    count_checks shared-scope.sh "$out" $?
    part_end
fi

# --- what peaks cost on the start path (bench/peaks.sh), BPF LSM on only ----------
if [[ " $ALCOVE_VM_PARTS " == *" bench "* ]] && [ "$ALCOVE_VM_LSM" = on ]; then
    part_begin bench
    out=$("$VM/in-cgroup" delegated alcove-bench -- env ALCOVE="$ALCOVE" ROUNDS="${ALCOVE_VM_BENCH_ROUNDS:-60}" \
        bash "$ALCOVE_VM_REPO/bench/peaks.sh" 2>&1)
    rc=$?
    echo "$out" | sed 's/^/  /'
    if [ $rc = 0 ] && grep -q '^leaf ' <<< "$out"; then pass "bench/peaks.sh timed the run leaf"; else fail "bench/peaks.sh timed the run leaf" "exit $rc"; fi
    part_end
fi

# --- the end -----------------------------------------------------------------------
echo
if [ ${#FAILED_LIST[@]} -gt 0 ]; then
    echo "failed:"
    printf '  %s\n' "${FAILED_LIST[@]}"
fi
if [ "$TOTAL_F" -gt 0 ]; then
    echo "--- kernel messages (last 40)"
    dmesg | tail -n 40 | sed 's/^/  /'
fi
echo "vm-tests: $TOTAL_P passed, $TOTAL_F failed (total, lsm $ALCOVE_VM_LSM, init $ALCOVE_VM_INIT, $(secs "$T_START")s of tests, guest uptime $(uptime_s)s)"
echo "ALCOVE-VM-DONE rc=$((TOTAL_F > 0))"
sync
echo o > /proc/sysrq-trigger
sleep 10 2> /dev/null # the host's files may be gone by now
echo b > /proc/sysrq-trigger
