#!/usr/bin/env bash
# OCI conformance: a port of opencontainers/runtime-tools' validation/ suite
# (conformance.py: 45 test programs, TAP) against alcove-oci and runc side
# by side, printing a pass/fail table. Not part of scripts/test.sh: the
# README's conformance table is its output.
#
#   tests/oci-conformance/run.sh [RUNTIME ...]
#     default: target/debug/alcove-oci (built if missing) and runc
#   MODES="strict modern" (default: strict)
#     strict = runtime-tools' own default config (gen/default-config.json,
#              generate.New("linux"), with its seccomp profile)
#     modern = the same, plus openat2, faccessat2 and close_range allowed,
#              as today's docker and podman profiles do
#   CONFORMANCE_DIR  scratch directory (default /var/tmp/alcove-oci-conformance)
#
# gen/default-config.json came from gen/main.go (Debian's
# golang-github-opencontainers-runtime-tools-dev `generate` package, GOPATH
# mode: GO111MODULE=off GOPATH=/usr/share/gocode go build); it is committed
# so that no Go toolchain is needed to run the suite.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
scratch=${CONFORMANCE_DIR:-/var/tmp/alcove-oci-conformance}
export CONFORMANCE_DIR=$scratch
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (runtimes make namespaces and cgroups)" >&2; exit 1; }
if [ $# = 0 ]; then
    [ -x "$repo/target/debug/alcove-oci" ] || (cd "$repo" && cargo build -q -p alcove-oci)
    set -- "$repo/target/debug/alcove-oci" "$(command -v runc)"
fi
MODES=${MODES:-strict}

mkdir -p "$scratch/results" "$scratch/work"
template=$scratch/rootfs-template
if [ ! -x "$template/bin/busybox" ]; then
    mkdir -p "$template"/{bin,proc,sys,dev,tmp,etc,root}
    cp /bin/busybox "$template/bin/"
    /bin/busybox --install -s "$template/bin"
    (cd "$template/bin" && for l in *; do [ -L "$l" ] && ln -sf busybox "$l"; done)
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$template/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$template/etc/group"
fi
rm -rf "${scratch:?}/work/"*

cols=()
for rt in "$@"; do
    name=$(basename "$rt")
    for mode in $MODES; do
        flag=
        [ "$mode" = modern ] && flag=--modern-seccomp
        out=$scratch/results/$name-$mode
        echo "== $rt ($mode)" >&2
        timeout 900 python3 "$here/conformance.py" "$rt" $flag --json "$out.json" > "$out.tap" 2>&1 || true
        tail -1 "$out.tap" >&2
        cols+=("$name/$mode=$out.json")
        rm -rf "${scratch:?}/work/"*
    done
done

# leftover (empty) parent cgroups of the relative cgroupsPath tests
find /sys/fs/cgroup -maxdepth 4 -type d -name 'conformance-*' 2>/dev/null | sort -r | xargs -r rmdir 2>/dev/null || true

python3 - "${cols[@]}" <<'PY'
import json, sys
cols = [c.split("=", 1) for c in sys.argv[1:]]
data = [(n, json.load(open(p))) for n, p in cols]
tests = list(data[0][1])
w = max(len(t) for t in tests) + 2
cw = max(max(len(n) for n, _ in data) + 2, 14)
print("test".ljust(w) + "".join(n.ljust(cw) for n, _ in data))
for t in tests:
    row = t.ljust(w)
    for _, d in data:
        r = d.get(t)
        row += ("%s %d/%d" % (r["verdict"], r["passed"], r["total"]) if r else "-").ljust(cw)
    print(row)
print("".ljust(w) + "".join(
    ("%d pass/%d fail" % (sum(r["verdict"] == "PASS" for r in d.values()),
                          sum(r["verdict"] == "FAIL" for r in d.values()))).ljust(cw) for _, d in data))
PY
