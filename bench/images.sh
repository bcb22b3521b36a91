#!/usr/bin/env bash
# Images: import throughput against `umoci unpack` on the same image; start-up
# of a sandbox from a 5-layer image against the same files as one --rootfs
# directory; and the page cache 100 concurrent sandboxes of one image use.
#
#   bench/images.sh           # ROUNDS=300 start-ups, IMPORTS=3 imports each
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/images.sh
alcove_install_packages umoci
./scripts/setup.sh --no-demo >/dev/null
ALCOVE=/usr/local/bin/alcove
ROUNDS=${ROUNDS:-300}
IMPORTS=${IMPORTS:-3}
work=/var/tmp/alcove-imgbench
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work"
now() { date +%s%N; }

# 1. A real image built by umoci from host files: busybox, then python3.11's
# library, then perl's, then a 64 MB file of random bytes (for the memory test).
L=$work/oci
B=$work/bundle
umoci init --layout "$L"
umoci new --image "$L:big"
add_layer() {   # what to copy into the rootfs, as "SRC DEST" pairs
    rm -rf "$B"
    umoci unpack --image "$L:big" "$B" >/dev/null
    while [ $# -gt 0 ]; do mkdir -p "$B/rootfs/$(dirname "$2")"; cp -a "$1" "$B/rootfs/$2"; shift 2; done
    umoci repack --image "$L:big" "$B"
}
add_layer /bin/busybox bin/busybox
add_layer /usr/lib/python3.11 usr/lib/python3.11
add_layer /usr/share/perl usr/share/perl
head -c 64M /dev/urandom > "$work/random64"
add_layer "$work/random64" data/random64
for c in sh true cat sleep; do ln -sf busybox "$B/rootfs/bin/$c"; done
umoci repack --image "$L:big" "$B"
rm -rf "$B"
blobs=$(du -sb "$L/blobs" | cut -f1)

echo "== import: 5-layer gzip image ($((blobs / 1000000)) MB of blobs), alcove image import vs umoci unpack, $IMPORTS rounds each, cold page cache =="
printf '%-22s %10s %10s %10s\n' tool median min MB/s
a_times=(); u_times=(); unpacked=0
for i in $(seq "$IMPORTS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now); out=$($ALCOVE image --store "$work/store-$i" import "$L" --ref big --quiet --json); t1=$(now)
    a_times+=($(( (t1 - t0) / 1000 )))
    unpacked=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["unpacked_bytes"])' <<<"$out")
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now); umoci unpack --image "$L:big" "$work/umoci-$i" >/dev/null; t1=$(now)
    u_times+=($(( (t1 - t0) / 1000 )))
    rm -rf "$work/umoci-$i"
    [ "$i" -lt "$IMPORTS" ] && rm -rf "$work/store-$i"
done
report() {   # name, times in us...
    local name=$1; shift
    python3 - "$name" "$unpacked" "$@" <<'PY'
import statistics, sys
name, unpacked, times = sys.argv[1], int(sys.argv[2]), [int(t) / 1e6 for t in sys.argv[3:]]
m = statistics.median(times)
print(f"{name:<22} {m:>9.3f}s {min(times):>9.3f}s {unpacked / 1e6 / m:>10.1f}")
PY
}
report "alcove image import" "${a_times[@]}"
report "umoci unpack" "${u_times[@]}"
echo "(MB/s: unpacked file bytes, $((unpacked / 1000000)) MB, over the median time; alcove also verifies every digest and syncs)"
t0=$(now); $ALCOVE image --store "$work/store-$IMPORTS" import "$L" --ref big --quiet >/dev/null; t1=$(now)
echo "importing the same image again: $(( (t1 - t0) / 1000000 )) ms (every layer already stored)"
store=$work/store-$IMPORTS

# 2. Start-up: the image's 5 layers as overlay lower dirs, against the same
# files unpacked into one directory used as --rootfs.
echo
echo "== start-up: /bin/true from the 5-layer image vs the same files as one --rootfs dir (rounds: $ROUNDS) =="
umoci unpack --image "$L:big" "$work/flat" >/dev/null
$ALCOVE bench compare --rounds "$ROUNDS" --baseline rootfs \
    --cmd "rootfs=$ALCOVE run --rootfs $work/flat/rootfs -- /bin/true" \
    --cmd "image-5-layers=$ALCOVE run --image-store $store --image oci:big -- /bin/true"

# 3. Memory: 100 sandboxes of the image at once, each reading the 64 MB file
# of its base layers; the page cache holds it once.
echo
echo "== memory: 100 concurrent sandboxes of one image, each reading the same 64 MB file =="
sync; echo 3 > /proc/sys/vm/drop_caches
cached() { awk '/^Cached:/ {print $2}' /proc/meminfo; }
before=$(cached)
pids=()
for i in $(seq 100); do
    $ALCOVE run --image-store "$store" --image oci:big --memory 256M -- /bin/sh -c 'cat /data/random64 > /dev/null; sleep 4' &
    pids+=($!)
done
sleep 3
during=$(cached)
for p in "${pids[@]}"; do wait "$p"; done
echo "page cache (Cached in /proc/meminfo): before $((before / 1024)) MB, with 100 sandboxes having read the file $((during / 1024)) MB: +$(( (during - before) / 1024 )) MB for 100 x 64 MB read"
