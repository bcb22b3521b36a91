#!/usr/bin/env bash
# Warm starts against cold ones, in one run on one daemon: the issue's function
# (examples/warm-python: a dozen stdlib imports, 50 MB written at init) and the
# tiny examples/hello-warm-python, each deployed twice, warm (--warm) and cold.
#
#   1. latency, one request at a time, interleaved warm/cold, of the HTTP round
#      trip as the client sees it (python http.client, one kept-alive
#      connection): p50, p10-p90, cold/warm ratio of the p50s;
#   2. where a warm request's time goes: medians of the Server-Timing fields,
#      and "request to user code" = take + hand;
#   3. throughput at concurrency 8 (wrk -t2 -c8, POST /fn/NAME), 3 rounds
#      interleaved: median and range of requests/s, warm/cold ratio;
#      with the CPU each request cost: the host's, the daemon's, and the
#      template cgroup's (where copies are made);
#   4. what each warm copy costs on top of its template (/proc/PID/smaps_rollup);
#   5. a summary block for the README.
# Between 2 and 3 it prints what alcove recorded for the latency requests
# (fn logs: the sandbox's wall time, CPU and memory peak).
#
#   bench/warm.sh [ALCOVE_BIN]          # default: target/release/alcove
#   WARM_N=200 COLD_N=50 HELLO_COLD_N=100 DURATION=8 ROUNDS=3 bench/warm.sh
#   SERVE_FLAGS=--no-favordynmods bench/warm.sh   # flags for the daemon (here: leave the
#                                       # cgroup2 tree without favordynmods)
#   PAUSE_MS=100 bench/warm.sh          # a pause after each latency request, so the
#                                       # pool's refill does not overlap the next one
#
# Needs root and wrk (installed here if missing). Asserts nothing: it prints.
set -euo pipefail
ALCOVE=$(realpath "${1:-$(dirname "$0")/../target/release/alcove}")
cd "$(dirname "$0")/.."
WARM_N=${WARM_N:-200}
COLD_N=${COLD_N:-50}
HELLO_COLD_N=${HELLO_COLD_N:-100}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
PAUSE_MS=${PAUSE_MS:-0}
source scripts/packages.sh
alcove_require_root bench/warm.sh
command -v wrk >/dev/null || alcove_install_packages wrk
[ -x "$ALCOVE" ] || { echo "bench/warm.sh: no alcove binary at $ALCOVE" >&2; exit 1; }

work=$(mktemp -d /var/tmp/alcove-warm.XXXXXX)
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the daemon and the four functions ------------------------------------
"$ALCOVE" serve --listen 127.0.0.1:0 --data-dir "$work/data" ${SERVE_FLAGS:-} > /dev/null 2> "$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 200); do grep -q "serving http://" "$work/daemon.log" 2>/dev/null && break; sleep 0.05; done
addr=$(sed -n 's|.*serving http://\([^ ]*\).*|\1|p' "$work/daemon.log" | head -n1)
[ -n "$addr" ] || { echo "the daemon did not start:" >&2; cat "$work/daemon.log" >&2; exit 1; }
export ALCOVE_SERVER=http://$addr ALCOVE_TOKEN_FILE=$work/data/token
token=$(cat "$ALCOVE_TOKEN_FILE")

deploy() { # name dir --warm|--warm=false
    local t0 t1
    t0=$(date +%s%N)
    "$ALCOVE" fn deploy "$1" --code "$2" --runtime python --entry main.py "$3" > "$work/deploy-$1.log" 2>&1 \
        || { echo "deploy $1 failed:" >&2; cat "$work/deploy-$1.log" >&2; tail -n 20 "$work/daemon.log" >&2; exit 1; }
    t1=$(date +%s%N)
    echo "$1 $(( (t1 - t0) / 1000000 ))" >> "$work/deploy-times"
}
deploy w examples/warm-python --warm
deploy c examples/warm-python --warm=false
deploy hw examples/hello-warm-python --warm
deploy hc examples/hello-warm-python --warm=false

echo "== alcove warm starts: $(nproc) CPUs, $(uname -r), $("$ALCOVE" --version 2>/dev/null | head -n1), $(/usr/bin/python3 --version 2>&1) in the sandbox =="
echo "functions: w/c = examples/warm-python warm/cold, hw/hc = examples/hello-warm-python warm/cold"
echo "load average at the start: $(cut -d" " -f1-3 /proc/loadavg)"
echo "deploy (CLI round trip, ms): $(awk '{printf "%s %s  ", $1, $2}' "$work/deploy-times")"
echo

# --- 1 and 2: one request at a time ---------------------------------------
python3 - "$addr" "$token" "$WARM_N" "$COLD_N" "$HELLO_COLD_N" "$work/latency.json" "$PAUSE_MS" <<'PY'
import http.client, json, re, statistics, sys, time

addr, token, warm_n, cold_n, hello_cold_n, out = sys.argv[1:7]
warm_n, cold_n, hello_cold_n = int(warm_n), int(cold_n), int(hello_cold_n)
pause = float(sys.argv[7]) / 1e3
host, port = addr.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=60)
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
TIMING = re.compile(r"(\w+);dur=([0-9.]+)")

results = {n: [] for n in ("w", "c", "hw", "hc")}
def call(name, keep=True):
    t0 = time.perf_counter()
    conn.request("POST", f"/fn/{name}", body=b"hi", headers=headers)
    r = conn.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t0) * 1e3
    if r.status != 200:
        print(f"  {name}: HTTP {r.status}: {body[:200]!r}", file=sys.stderr)
    if pause:
        time.sleep(pause)
    if keep:
        timing = {k: float(v) for k, v in TIMING.findall(r.getheader("server-timing") or "")}
        results[name].append({"ms": ms, "status": r.status, "start": r.getheader("x-alcove-start"),
                              "timing": timing})

for name in results:          # a few first requests, not measured
    for _ in range(3):
        call(name, keep=False)
time.sleep(1)                 # let the warm pools fill again
every_c = max(1, warm_n // max(1, cold_n))
every_hc = max(1, warm_n // max(1, hello_cold_n))
for i in range(warm_n):
    call("w")
    if i % every_c == 0 and len(results["c"]) < cold_n:
        call("c")
    call("hw")
    if i % every_hc == 0 and len(results["hc"]) < hello_cold_n:
        call("hc")
conn.close()
json.dump(results, open(out, "w"))

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

print("== latency, one request at a time, interleaved (HTTP round trip at the client, kept-alive connection"
      + (f"; {pause * 1e3:.0f} ms pause after each" if pause else "") + ") ==")
print(f"{'fn':<4} {'n':>4} {'served':>12} {'p50 ms':>8} {'p10-p90 ms':>16} {'mean ms':>8} {'non-200':>7}")
p50 = {}
for name, rs in results.items():
    ms = [r["ms"] for r in rs]
    starts = {}
    for r in rs:
        starts[r["start"]] = starts.get(r["start"], 0) + 1
    served = " ".join(f"{k}:{v}" for k, v in sorted(starts.items(), key=lambda kv: str(kv[0])))
    p50[name] = statistics.median(ms)
    print(f"{name:<4} {len(ms):>4} {served:>12} {p50[name]:>8.2f} {pct(ms,10):>7.2f}-{pct(ms,90):<8.2f} "
          f"{statistics.fmean(ms):>8.2f} {sum(r['status'] != 200 for r in rs):>7}")
print(f"cold/warm p50: warm-python {p50['c'] / p50['w']:.1f}x ({p50['c']:.1f} / {p50['w']:.2f} ms), "
      f"hello-warm-python {p50['hc'] / p50['hw']:.1f}x ({p50['hc']:.1f} / {p50['hw']:.2f} ms)")
print()
print("== where a warm request's time goes: medians of Server-Timing (ms) over the warm responses ==")
fields = ["take", "isolate", "hand", "user", "response", "teardown"]
print(f"{'fn':<4} {'n':>4} " + " ".join(f"{f:>9}" for f in fields) + f" {'take+hand':>10} {'HTTP p50':>9} {'rest':>7}")
for name in ("w", "hw"):
    rs = [r for r in results[name] if r["start"] == "warm" and r["timing"]]
    if not rs:
        print(f"{name:<4} no warm responses"); continue
    med = {f: statistics.median(r["timing"].get(f, float("nan")) for r in rs) for f in fields}
    th = statistics.median(r["timing"].get("take", 0) + r["timing"].get("hand", 0) for r in rs)
    http = statistics.median(r["ms"] for r in rs)
    rest = statistics.median(r["ms"] - sum(r["timing"].get(f, 0) for f in ("take", "hand", "user", "response"))
                             for r in rs)
    print(f"{name:<4} {len(rs):>4} " + " ".join(f"{med[f]:>9.3f}" for f in fields)
          + f" {th:>10.3f} {http:>9.3f} {rest:>7.3f}")
    ths = [r["timing"].get("take", 0) + r["timing"].get("hand", 0) for r in rs]
    print(f"     request to user code (take + hand): median {th:.3f} ms, p10 {pct(ths,10):.3f}, p90 {pct(ths,90):.3f}; "
          f"p90 of user {pct([r['timing'].get('user', 0) for r in rs], 90):.3f}, "
          f"of response {pct([r['timing'].get('response', 0) for r in rs], 90):.3f}, "
          f"of teardown {pct([r['timing'].get('teardown', 0) for r in rs], 90):.3f}")
print("(isolate is done before the request arrives; rest = median over requests of the round trip minus"
      " take+hand+user+response: the client, HTTP, routing, the record)")
print()
PY

# What alcove recorded for those invocations (fn logs): the sandbox's wall
# time and the CPU it charged, beside the client's round trip.
for n in w c hw hc; do "$ALCOVE" fn logs "$n" -n 1000 --json > "$work/logs-$n.json"; done
python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
print("== as alcove recorded them (fn logs, the latency requests above): medians ==")
print(f"{'fn':<4} {'n':>4} {'wall ms':>9} {'cpu user ms':>12} {'cpu sys ms':>11} {'memory peak MiB':>16}")
for n in ("w", "c", "hw", "hc"):
    rs = json.load(open(f"{work}/logs-{n}.json"))["invocations"]
    def med(key, scale=1.0):
        xs = [r[key] * scale for r in rs if r.get(key) is not None]
        return f"{statistics.median(xs):.2f}" if xs else "-"
    print(f"{n:<4} {len(rs):>4} {med('wall_ms'):>9} {med('cpu_user_ms'):>12} {med('cpu_sys_ms'):>11} "
          f"{med('memory_peak_bytes', 1 / 2**20):>16}")
print("(warm: the copy's own cgroup, from the request on; making the copy is not in it)")
print()
PY

# --- 3: throughput at concurrency 8 ---------------------------------------
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "hi"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/octet-stream"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) warm = 0; cold = 0; other = 0 end
function response(status, headers, body)
  local s = headers["x-alcove-start"] or headers["X-Alcove-Start"]
  if s == "warm" then warm = warm + 1 elseif s == "cold" then cold = cold + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local w, c, o = 0, 0, 0
  for _, t in ipairs(threads) do w = w + t:get("warm"); c = c + t:get("cold"); o = o + t:get("other") end
  io.write(string.format("starts warm=%d cold=%d other=%d\n", w, c, o))
end
LUA
# CPU used during each wrk run, in ms: the whole host (wrk included), the
# daemon itself, and a warm function's template's cgroup (where copies are
# made: fork, namespaces, mounts, until alcove moves each into its own).
cat > "$work/snap.py" <<'PY'
import os, sys
daemon, fn = sys.argv[1], sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")
f = open("/proc/stat").readline().split()[1:]
busy = sum(int(x) for x in f[:8]) - int(f[3]) - int(f[4])
st = open(f"/proc/{daemon}/stat").read().rsplit(")", 1)[1].split()
daemon_ms = (int(st[11]) + int(st[12])) * 1000 / hz
template_ms = 0.0
want = f"ALCOVE_FUNCTION={fn}".encode()
found = []
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        env = open(f"/proc/{p}/environ", "rb").read().split(b"\0")
        if b"ALCOVE_WARM=1" in env and want in env:
            nspid = next(l for l in open(f"/proc/{p}/status") if l.startswith("NSpid:"))
            found.append((len(nspid.split()), p))  # the template is the shallowest
    except (OSError, StopIteration):
        pass
if found:
    template = min(found)[1]
    for line in open(f"/proc/{template}/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        path = path.lstrip("/")
        if "cpuacct" in controllers.split(",") and path:
            template_ms = int(open(f"/sys/fs/cgroup/{controllers}/{path}/cpuacct.usage").read()) / 1e6
            break
        if controllers == "" and path:
            for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
                try:
                    for l in open(f"{root}/{path}/cpu.stat"):
                        if l.startswith("usage_usec"):
                            template_ms = int(l.split()[1]) / 1e3
                    break
                except OSError:
                    pass
print(busy * 1000 / hz, daemon_ms, template_ms)
PY
echo "== throughput at concurrency 8: wrk -t2 -c8 -d${DURATION}s POST /fn/NAME, $ROUNDS rounds interleaved =="
names=(w c hw hc)
for n in "${names[@]}"; do : > "$work/$n.runs"; done
for n in "${names[@]}"; do wrk -t1 -c1 -d1s -s "$work/post.lua" "http://$addr/fn/$n" > /dev/null; done
for _ in $(seq "$ROUNDS"); do
    for n in "${names[@]}"; do
        before=$(python3 "$work/snap.py" "$daemon_pid" "$n")
        out=$(wrk -t2 -c8 -d"${DURATION}s" --timeout 30s --latency -s "$work/post.lua" "http://$addr/fn/$n")
        after=$(python3 "$work/snap.py" "$daemon_pid" "$n")
        cpu=$(awk -v b="$before" -v a="$after" -v r="$(awk '/requests in/ {print $1}' <<<"$out")" 'BEGIN {
            split(b, x); split(a, y); r = r > 0 ? r : 1
            printf "host=%.3f daemon=%.3f template=%.3f", (y[1] - x[1]) / r, (y[2] - x[2]) / r, (y[3] - x[3]) / r }')
        rate=$(awk '/^Requests\/sec/ {printf "%.1f", $2}' <<<"$out")
        p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
        errs=$(awk '/Non-2xx|Socket errors/ {n++} END {print n + 0}' <<<"$out")
        starts=$(sed -n 's/^starts //p' <<<"$out")
        echo "$rate $p50 $errs $starts $cpu" >> "$work/$n.runs"
        [ "$errs" = 0 ] || grep -E "Non-2xx|Socket errors" <<<"$out" | sed "s/^/  $n: /"
    done
done
printf '%-4s %10s %18s %10s   %-28s %s\n' fn "req/s" "range" "p50" "starts (all rounds)" "CPU ms per request (median run): host daemon template"
for n in "${names[@]}"; do
    sort -n "$work/$n.runs" | awk -v n="$n" '
        {r[NR] = $1; p[NR] = $2
         for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] ~ /^(warm|cold|other)$/) s[kv[1]] += kv[2]; else c[NR, kv[1]] = kv[2] } }
        END { m = int((NR + 1) / 2)
              printf "%-4s %10.1f %8.1f-%-9.1f %10s   warm=%-5d cold=%-4d other=%-3d %8.2f %6.2f %8.2f\n", n, r[m], r[1], r[NR], p[m],
                  s["warm"], s["cold"], s["other"], c[m, "host"], c[m, "daemon"], c[m, "template"] }'
done | tee "$work/throughput.txt"
echo "(host: all CPU on the machine, wrk and other tenants included, per request served; the cold runs' sandboxes are in host only)"
med() { awk -v n="$1" '$1 == n {print $2}' "$work/throughput.txt"; }
echo "warm/cold throughput (medians): warm-python $(awk -v a="$(med w)" -v b="$(med c)" 'BEGIN {printf "%.1fx", a / b}'), hello-warm-python $(awk -v a="$(med hw)" -v b="$(med hc)" 'BEGIN {printf "%.1fx", a / b}')"
echo

# --- 4: what a warm copy costs on top of its template ---------------------
python3 - "$addr" "$token" "$work/memory.txt" <<'PY'
import http.client, os, sys, time
addr, token, out = sys.argv[1:4]

def environ(pid):
    try:
        return open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return []

def status(pid):
    d = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            d[k] = v.split()
    except OSError:
        pass
    return d

def rollup(pid):
    d = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            d[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return d

def find(fn):
    want = f"ALCOVE_FUNCTION={fn}".encode()
    procs = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        env = environ(p)
        if b"ALCOVE_WARM=1" in env and want in env:
            st = status(p)
            if st.get("NSpid"):
                procs.append((int(p), st))
    if not procs:
        return None, []
    template = min(procs, key=lambda x: len(x[1]["NSpid"]))
    depth = len(template[1]["NSpid"])
    copies = [pid for pid, st in procs if len(st["NSpid"]) == depth + 1
              and st.get("PPid", [""])[0] == str(template[0]) and st.get("State", ["?"])[0] in "SR"]
    return template[0], copies

def poke(fn):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("POST", f"/fn/{fn}", body=b"hi", headers={"Authorization": f"Bearer {token}"})
    c.getresponse().read()
    c.close()

lines = ["== what a warm copy costs on top of its template (/proc/PID/smaps_rollup, MiB) =="]
lines.append(f"{'fn':<4} {'process':<14} {'Rss':>8} {'Pss':>8} {'Priv_Clean':>10} {'Priv_Dirty':>10} {'Shared':>8}")
for fn in ("w", "hw"):
    template, copies = find(fn)
    for _ in range(20):
        if template and copies:
            break
        poke(fn)
        time.sleep(0.5)
        template, copies = find(fn)
    if not (template and copies):
        lines.append(f"{fn:<4} template {template}, ready copies {copies}: not found")
        continue
    t = rollup(template)
    cs = []
    for pid in copies:
        try:
            cs.append((pid, rollup(pid)))
        except OSError:
            pass
    if not cs:
        lines.append(f"{fn:<4} copies went away while being read"); continue
    cpid, c = cs[0]
    for label, pid, r in (("template", template, t), ("copy", cpid, c)):
        lines.append(f"{fn:<4} {label + ' ' + str(pid):<14} {r['Rss']:>8.1f} {r['Pss']:>8.1f} {r['Private_Clean']:>10.2f} "
                     f"{r['Private_Dirty']:>10.2f} {r['Shared_Clean'] + r['Shared_Dirty']:>8.1f}")
    privs = sorted(r["Private_Clean"] + r["Private_Dirty"] for _, r in cs)
    lines.append(f"{fn:<4} {len(cs)} ready copies: each holds {privs[len(privs) // 2]:.2f} MiB of its own "
                 f"(Private_Clean+Private_Dirty, median; {privs[0]:.2f}-{privs[-1]:.2f}), "
                 f"the rest of its {c['Rss']:.1f} MiB Rss is the template's, shared")
print("\n".join(lines))
open(out, "w").write("\n".join(lines) + "\n")
PY
echo

echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg)"
echo

# --- 5: the summary ---------------------------------------------------------
python3 - "$work/latency.json" "$work/throughput.txt" "$work/memory.txt" "$(nproc)" \
    "WARM_N=$WARM_N COLD_N=$COLD_N HELLO_COLD_N=$HELLO_COLD_N DURATION=$DURATION ROUNDS=$ROUNDS PAUSE_MS=$PAUSE_MS bench/warm.sh $*" <<'PY'
import json, statistics, sys
lat = json.load(open(sys.argv[1]))
tp = {l.split()[0]: l.split() for l in open(sys.argv[2]) if l.strip()}
mem = open(sys.argv[3]).read().splitlines()
cpus, command = sys.argv[4:6]
def p50(n): return statistics.median(r["ms"] for r in lat[n])
def th(n):
    rs = [r for r in lat[n] if r["start"] == "warm" and r["timing"]]
    return statistics.median(r["timing"]["take"] + r["timing"]["hand"] for r in rs) if rs else float("nan")
def own(fn):
    for l in mem:
        if l.startswith(fn + " ") and "ready copies: each holds" in l:
            return l.split("each holds ")[1].split(" MiB")[0] + " MiB"
    return "n/a"
print("== summary (for the README) ==")
print("```")
print(f"warm starts, {cpus} CPUs, one daemon on loopback        warm      cold   cold/warm")
print(f"warm-python   p50, one at a time            {p50('w'):>8.2f} ms {p50('c'):>6.1f} ms {p50('c')/p50('w'):>7.1f}x")
print(f"hello-warm-python p50, one at a time        {p50('hw'):>8.2f} ms {p50('hc'):>6.1f} ms {p50('hc')/p50('hw'):>7.1f}x")
print(f"warm-python   req/s at concurrency 8        {float(tp['w'][1]):>8.0f}    {float(tp['c'][1]):>6.0f}    {float(tp['w'][1])/float(tp['c'][1]):>7.1f}x")
print(f"hello-warm-python req/s at concurrency 8    {float(tp['hw'][1]):>8.0f}    {float(tp['hc'][1]):>6.0f}    {float(tp['hw'][1])/float(tp['hc'][1]):>7.1f}x")
print(f"request to user code (take + hand, median): warm-python {th('w'):.3f} ms, hello {th('hw'):.3f} ms")
def iso(n):
    rs = [r["timing"]["isolate"] for r in lat[n] if r["start"] == "warm" and "isolate" in r["timing"]]
    return statistics.median(rs) if rs else float("nan")
print(f"making a copy, off the request path: {iso('w'):.0f} ms wall and {float(tp['w'][-1]):.1f} ms CPU (warm-python), "
      f"{iso('hw'):.0f} ms and {float(tp['hw'][-1]):.1f} ms (hello)")
print(f"memory of each ready copy beyond its template: warm-python {own('w')}, hello {own('hw')}")
print("```")
print(f"command: {command.rstrip()}")
PY
