#!/usr/bin/env bash
# The functions platform across daemons, in one run on one machine: a trivial
# shell handler (sh /fn/handler.sh: echo ok) invoked through HAProxy in front
# of one, two and three daemons sharing PostgreSQL 15, beside one daemon on
# its own SQLite file, directly and behind the same HAProxy; then the async
# queue: JOBS async invocations enqueued through HAProxy (ab -c 16) and the
# time until every one has finished, on the same three daemons claiming up to
# 16 jobs per query (the default) and one job per query (Windmill's way:
# one `FOR UPDATE SKIP LOCKED` pull per job), beside one daemon on SQLite.
#
#   bench/cluster.sh                      # builds and installs alcove (scripts/setup.sh)
#   ALCOVE=target/release/alcove bench/cluster.sh   # that binary, no build
#   DURATION=5 ROUNDS=3 CONCS="1 8 32" JOBS=500 QROUNDS=3 bench/cluster.sh
#
# Sync: wrk --latency for DURATION seconds per run, every setup once per
# concurrency per round, rounds interleaved; the table gives the median of
# the rounds' rates (and their range), the median p50 and p99, errors
# (non-2xx and socket errors, summed), and the median rate over SQLite's.
# Async: jobs/s from the first enqueue to the last job finished (polling
# the records), the enqueue rate, and the queue wait (started_at -
# created_at) p50/p99 over all rounds' jobs; medians and ranges over QROUNDS.
#
# Every daemon, the database and the balancer share this machine's CPUs:
# more daemons here measure what the shared store and the balancer cost,
# not what more machines would add. PostgreSQL keeps its durable defaults
# (fsync on). Needs root. Asserts nothing: it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/cluster.sh
alcove_install_packages wrk apache2-utils curl "${ALCOVE_CLUSTER_PACKAGES[@]}"
if [ -z "${ALCOVE:-}" ]; then
    ./scripts/setup.sh --no-demo >/dev/null
    ALCOVE=/usr/local/bin/alcove
fi
ALCOVE=$(realpath "$ALCOVE")
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-3}
CONCS=${CONCS:-1 8 32}
JOBS=${JOBS:-500}
QROUNDS=${QROUNDS:-3}
PG_BIN=/usr/lib/postgresql/15/bin
[ -x "$PG_BIN/postgres" ] || { echo "bench/cluster.sh: no PostgreSQL 15 in $PG_BIN" >&2; exit 1; }
[ "$JOBS" -le 1000 ] || { echo "bench/cluster.sh: JOBS at most 1000 (fn logs returns 1000)" >&2; exit 1; }

# Ports on loopback: PostgreSQL, the daemons, the balancers.
PG_PORT=25432
PG_DAEMON_PORTS=(28481 28482 28483)
SQLITE_PORT=28490
LB_PG_PORTS=(28471 28472 28473)   # in front of 1, 2 and 3 daemons
LB_SQLITE_PORT=28479
for port in $PG_PORT "${PG_DAEMON_PORTS[@]}" $SQLITE_PORT "${LB_PG_PORTS[@]}" $LB_SQLITE_PORT; do
    if ss -Hltn "sport = :$port" | grep -q .; then
        echo "bench/cluster.sh: port $port is in use" >&2
        exit 1
    fi
done

work=$(mktemp -d /var/tmp/alcove-clusterbench.XXXXXX)
chmod 755 "$work"
declare -A daemon_pid=()
lb_pids=()
cleanup() {
    for pid in "${daemon_pid[@]}" "${lb_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${daemon_pid[@]}" "${lb_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -f "$work/pg/data/postmaster.pid" ] &&
        { runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true; }
    rm -rf "$work"
}
trap cleanup EXIT

head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$work/token"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secrets.key"
chmod 600 "$work/token" "$work/secrets.key"
TOKEN=$(cat "$work/token")
mkdir -p "$work/code"
printf 'echo ok\n' > "$work/code/handler.sh"
printf 'hi' > "$work/body"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "hi"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

# PostgreSQL 15 in $work/pg, as the postgres user (it refuses root).
mkdir -p "$work/pg/sock"
chown -R postgres:postgres "$work/pg"
(cd "$work/pg" && runuser -u postgres -- "$PG_BIN/initdb" -A trust -U postgres -E UTF8 -D "$work/pg/data" >/dev/null)
cat >> "$work/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$work/pg/sock'
max_connections = 300
CONF
(cd "$work/pg" && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w start >/dev/null)
(cd "$work/pg" && runuser -u postgres -- "$PG_BIN/psql" -X -q -h "$work/pg/sock" -p $PG_PORT -d postgres -c 'CREATE DATABASE alcove')
STORE=postgres://postgres@127.0.0.1:$PG_PORT/alcove

# start_daemon NAME PORT [FLAGS...]: alcove serve on 127.0.0.1:PORT, data in $work/NAME.
start_daemon() {
    local name=$1 port=$2
    shift 2
    "$ALCOVE" serve --listen "127.0.0.1:$port" --data-dir "$work/$name" --token-file "$work/token" "$@" \
        2> "$work/$name.log" &
    daemon_pid[$name]=$!
}
stop_daemon() {
    kill "${daemon_pid[$1]}" 2>/dev/null || true
    wait "${daemon_pid[$1]}" 2>/dev/null || true
    unset "daemon_pid[$1]"
}
# wait_ready NAME PORT PATH: until PATH answers 200 (60 s).
wait_ready() {
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2$3")" = 200 ] && return
        kill -0 "${daemon_pid[$1]}" 2>/dev/null || { echo "daemon $1 exited:"; cat "$work/$1.log"; exit 1; }
        sleep 0.1
    done
    echo "daemon $1 not ready on :$2$3 after 60 s:"; cat "$work/$1.log"; exit 1
}
start_pg_daemons() {   # extra flags for all three
    local i
    for i in 1 2 3; do
        start_daemon "n$i" "${PG_DAEMON_PORTS[$((i - 1))]}" --store "$STORE" --node "n$i" \
            --secrets-key-file "$work/secrets.key" "$@"
    done
    for i in 1 2 3; do wait_ready "n$i" "${PG_DAEMON_PORTS[$((i - 1))]}" /readyz; done
}
stop_pg_daemons() { for i in 1 2 3; do stop_daemon "n$i"; done; }

# start_lb PORT SERVER_PORT...: HAProxy on 127.0.0.1:PORT, round robin, checks on /readyz.
start_lb() {
    local port=$1 cfg="$work/haproxy-$1.cfg" s
    shift
    cat > "$cfg" <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend f
    bind 127.0.0.1:$port
    default_backend daemons
backend daemons
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 500ms rise 1 fall 2
CFG
    for s in "$@"; do echo "    server s$s 127.0.0.1:$s check" >> "$cfg"; done
    haproxy -db -f "$cfg" > "$work/haproxy-$port.log" 2>&1 &
    lb_pids+=($!)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return
        sleep 0.1
    done
    echo "haproxy on :$port did not start:"; cat "$work/haproxy-$port.log"; exit 1
}
# deploy PORT NAME: the noop function, through the daemon on PORT.
deploy() {
    ALCOVE_SERVER=http://127.0.0.1:$1 ALCOVE_TOKEN=$TOKEN \
        "$ALCOVE" fn deploy "$2" --handler 'sh /fn/handler.sh' --code "$work/code" >/dev/null
}
warm() {   # URL: 200 requests, so pools and caches are as they will be
    for _ in $(seq 200); do
        curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" -X POST -d hi "$1"
    done
}
ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.2f", v / 1000; else if (v ~ /ms$/) printf "%.2f", v + 0; else printf "%.2f", v * 1000 }'; }

start_pg_daemons
start_daemon sqlite $SQLITE_PORT
wait_ready sqlite $SQLITE_PORT /healthz
p=("${PG_DAEMON_PORTS[@]}")
start_lb "${LB_PG_PORTS[0]}" "${p[0]}"
start_lb "${LB_PG_PORTS[1]}" "${p[0]}" "${p[1]}"
start_lb "${LB_PG_PORTS[2]}" "${p[0]}" "${p[1]}" "${p[2]}"
start_lb $LB_SQLITE_PORT $SQLITE_PORT
deploy "${p[0]}" noop
deploy $SQLITE_PORT noop
invoke=/v1/functions/noop/invoke
declare -A setup_url=(
    [sqlite]=http://127.0.0.1:$SQLITE_PORT$invoke
    [sqlite+lb]=http://127.0.0.1:$LB_SQLITE_PORT$invoke
    [pg-x1+lb]=http://127.0.0.1:${LB_PG_PORTS[0]}$invoke
    [pg-x2+lb]=http://127.0.0.1:${LB_PG_PORTS[1]}$invoke
    [pg-x3+lb]=http://127.0.0.1:${LB_PG_PORTS[2]}$invoke
)
setups=(sqlite sqlite+lb pg-x1+lb pg-x2+lb pg-x3+lb)
for s in "${setups[@]}"; do warm "${setup_url[$s]}"; done

echo "== sync: POST $invoke (sh /fn/handler.sh: echo ok), $(nproc) CPUs, wrk ${DURATION}s per run, $ROUNDS rounds interleaved =="
results=$work/sync.tsv
: > "$results"
for round in $(seq "$ROUNDS"); do
    for c in $CONCS; do
        for s in "${setups[@]}"; do
            out=$(wrk -t$(( c < 2 ? 1 : 2 )) -c"$c" -d"${DURATION}s" --latency -s "$work/post.lua" "${setup_url[$s]}")
            rate=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
            p50=$(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
            p99=$(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
            errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$s" "$round" "$rate" "$p50" "$p99" "$errors" >> "$results"
        done
    done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    c, s, _, rate, p50, p99, err = line.split("\t")
    if (c, s) not in rows:
        order.append((c, s))
    rows[(c, s)].append((float(rate), float(p50), float(p99), int(err)))
print(f"{'conc':<5} {'setup':<10} {'inv/s':>8} {'(range)':>15} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'/sqlite':>8} {'/sqlite+lb':>10}")
med = {k: statistics.median(r[0] for r in v) for k, v in rows.items()}
for c, s in order:
    v = rows[(c, s)]
    rates = sorted(r[0] for r in v)
    print(f"{c:<5} {s:<10} {med[(c, s)]:>8.0f} {f'{rates[0]:.0f}-{rates[-1]:.0f}':>15} "
          f"{statistics.median(r[1] for r in v):>8.2f} {statistics.median(r[2] for r in v):>8.2f} "
          f"{sum(r[3] for r in v):>7} {med[(c, s)] / med[(c, 'sqlite')]:>7.2f}x "
          f"{med[(c, s)] / med[(c, 'sqlite+lb')]:>9.2f}x")
PY

# queue_round LABEL ENQUEUE_PORT DEPLOY_PORT ROUND: JOBS async invocations of a
# fresh function, enqueued through ENQUEUE_PORT (ab -c 16), then polled
# (fn logs) until all have finished; one line to $work/queue.tsv.
queue_round() {
    local label=$1 port=$2 deploy_port=$3 round=$4 fn t0
    fn=q$round-${label//[^a-z0-9]/}
    deploy "$deploy_port" "$fn"
    t0=$(date +%s.%N)
    ab -q -n "$JOBS" -c 16 -p "$work/body" -T application/octet-stream -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$port/v1/functions/$fn/invoke?async=true" > "$work/ab.txt"
    python3 - "$label" "$t0" "$(date +%s.%N)" "http://127.0.0.1:$port/v1/functions/$fn/logs?limit=1000" "$TOKEN" "$JOBS" "$work/ab.txt" <<'PY' >> "$work/queue.tsv"
import json, sys, time, urllib.request
label, t0, t1, url, token, jobs, ab = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7]
non2xx = sum(int(l.split()[-1]) for l in open(ab) if l.startswith("Non-2xx"))
deadline = time.time() + 600
while True:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    records = json.load(urllib.request.urlopen(req, timeout=30))["invocations"]
    done = [r for r in records if r["status"] not in ("queued", "running")]
    if len(done) >= jobs or time.time() > deadline:
        t2 = time.time()
        break
    time.sleep(0.05)
failed = sum(1 for r in done if r["status"] != "exited" or r.get("exit_code") != 0)
waits = [1000 * (r["started_at"] - r["created_at"]) for r in done if r.get("started_at")]
last = max((r["ended_at"] for r in done if r.get("ended_at")), default=t2)
print("\t".join(map(str, [label, len(records), len(done), failed + non2xx, jobs / (last - t0),
                          jobs / (t1 - t0), json.dumps(waits)])))
PY
}

echo
echo "== async: $JOBS jobs enqueued through HAProxy (ab -c 16), until all have finished; $QROUNDS rounds interleaved =="
: > "$work/queue.tsv"
for round in $(seq "$QROUNDS"); do
    for batch in 16 1; do
        stop_pg_daemons
        start_pg_daemons --queue-batch "$batch"
        for _ in $(seq 100); do   # until HAProxy's checks see all three again
            [ "$(curl -s "http://127.0.0.1:${LB_PG_PORTS[2]}/healthz" -o /dev/null -w '%{http_code}')" = 200 ] && break
            sleep 0.1
        done
        sleep 1.5
        queue_round "pg-x3 --queue-batch $batch" "${LB_PG_PORTS[2]}" "${p[0]}" "$round"
    done
    queue_round "sqlite x1" $SQLITE_PORT $SQLITE_PORT "$round"
done
python3 - "$work/queue.tsv" "$JOBS" <<'PY'
import collections, json, statistics, sys
jobs = int(sys.argv[2])
rows = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    label, seen, done, bad, rate, enq, waits = line.rstrip("\n").split("\t")
    if label not in rows:
        order.append(label)
    rows[label].append((int(seen), int(done), int(bad), float(rate), float(enq), json.loads(waits)))
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else float("nan")
print(f"{'setup':<24} {'jobs/s':>7} {'(range)':>11} {'enqueue/s':>10} {'wait p50 ms':>12} {'wait p99 ms':>12} {'unfinished':>10} {'failed':>7}")
for label in order:
    v = rows[label]
    rates = sorted(r[3] for r in v)
    waits = [w for r in v for w in r[5]]
    print(f"{label:<24} {statistics.median(rates):>7.0f} {f'{rates[0]:.0f}-{rates[-1]:.0f}':>11} "
          f"{statistics.median(r[4] for r in v):>10.0f} {pct(waits, 0.5):>12.1f} {pct(waits, 0.99):>12.1f} "
          f"{sum(jobs - r[1] for r in v):>10} {sum(r[2] for r in v):>7}")
b16, b1 = rows.get("pg-x3 --queue-batch 16"), rows.get("pg-x3 --queue-batch 1")
if b16 and b1:
    r16 = statistics.median(r[3] for r in b16)
    r1 = statistics.median(r[3] for r in b1)
    print(f"batch 16 / batch 1 (one job per query): {r16 / r1:.2f}x jobs/s (medians)")
PY
