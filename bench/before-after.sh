#!/usr/bin/env bash
# Before and after a change, in one run: the same trivial function (`sh
# /fn/handler.sh`, echo ok) on two daemons, an older build's and a newer
# one's, driven by wrk through POST /v1/functions/noop/invoke, interleaved, 3
# rounds of DURATION seconds per concurrency (1 and 8); and, on the newer
# daemon, the same function as an endpoint (GET /fn/noop/). Prints the
# median rate of 3 with its range, and the p50 of the median run.
#
#   bench/before-after.sh OLD/alcove NEW/alcove     # DURATION=8 by default
#
# Needs wrk (bench/functions.sh installs it) and root.
set -euo pipefail
BEFORE=$1 AFTER=$2 D=${DURATION:-8}
work=/var/tmp/alcove-fnb; rm -rf $work; mkdir -p $work/code
printf 'echo ok\n' > $work/code/handler.sh
trap 'kill $(cat $work/*.pid) 2>/dev/null; sleep 1; rm -rf $work' EXIT
start() { # bin name
  "$1" serve --listen 127.0.0.1:0 --data-dir $work/$2 > /dev/null 2> $work/$2.log &
  echo $! > $work/$2.pid
  for _ in $(seq 100); do grep -q "serving http://" $work/$2.log 2>/dev/null && break; sleep 0.05; done
  addr=$(sed -n 's|.*serving http://\([^ ]*\).*|\1|p' $work/$2.log)
  ALCOVE_SERVER=http://$addr ALCOVE_TOKEN_FILE=$work/$2/token "$1" fn deploy noop --handler 'sh /fn/handler.sh' --code $work/code >/dev/null
  echo $addr
}
lua() { printf 'wrk.method = "%s"\nwrk.body = "hi"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$1" "$(cat $2)"; }
b=$(start "$BEFORE" before); a=$(start "$AFTER" after)
lua POST $work/before/token > $work/b.lua; lua POST $work/after/token > $work/a.lua; lua GET $work/after/token > $work/g.lua
declare -A url=([before]=http://$b/v1/functions/noop/invoke [after]=http://$a/v1/functions/noop/invoke [fn]=http://$a/fn/noop/)
declare -A script=([before]=$work/b.lua [after]=$work/a.lua [fn]=$work/g.lua)
for w in before after fn; do for _ in $(seq 100); do wrk -t1 -c1 -d1s -s ${script[$w]} ${url[$w]} >/dev/null; break; done; done
for c in 1 8; do
  for w in before after fn; do : > $work/$w.runs; done
  for r in 1 2 3; do for w in before after fn; do
    out=$(wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${D}s --latency -s ${script[$w]} ${url[$w]})
    rate=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "$rate $p50 ${non2xx:-0}" >> $work/$w.runs
  done; done
  for w in before after fn; do
    sort -n $work/$w.runs | awk -v c=$c -v w=$w '{r[NR]=$1; p[NR]=$2; e+=$3} END {printf "c=%s %-7s median %s inv/s (range %s-%s), p50 %s, non-2xx %d\n", c, w, r[2], r[1], r[3], p[2], e}'
  done
done
