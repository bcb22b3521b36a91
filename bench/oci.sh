#!/usr/bin/env bash
# OCI runtime benchmark: alcove-oci against crun and runc, interleaved round
# by round on one busybox bundle running `true`:
#   1. the raw lifecycle a caller drives: `create --pid-file`, `start`, wait
#      for the process to exit (a builtin-only poll of /proc/PID/stat, so the
#      wait costs every runtime the same), `delete`;
#   2. the runtime's own `run` (create, start, wait and delete in one call);
#   3. end to end through the real callers: `podman run --rm` (conmon) and
#      `ctr run --rm` (containerd's runc shim), one runtime after another.
# Medians with the p10-p90 spread, and alcove-oci's median over each peer's.
#
#   bench/oci.sh                          # ROUNDS=30
#   ROUNDS=100 bench/oci.sh
#   ALCOVE_OCI=/path/to/alcove-oci bench/oci.sh
#                                         # default: target/release/alcove-oci,
#                                         # built here if cargo can; without
#                                         # it, only crun's and runc's rows
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/oci.sh
alcove_install_packages "${ALCOVE_OCI_PACKAGES[@]}"
ROUNDS=${ROUNDS:-30}
repo=$PWD

# crun 1.8 refuses a cgroup-hybrid host (v1 controllers plus a cgroup2 tree
# at /sys/fs/cgroup/unified). So that all three runtimes see the same
# machine, the whole benchmark runs in a mount namespace of its own with
# that tree unmounted: a cgroup v1 host's layout. OCI_BENCH_HYBRID=1 keeps
# the host's layout instead, with crun alone behind a wrapper.
if [ -z "${ALCOVE_OCI_BENCH_NS:-}" ] && [ "${OCI_BENCH_HYBRID:-0}" != 1 ] &&
    grep -q ' /sys/fs/cgroup/unified ' /proc/self/mountinfo; then
    echo "note: cgroup-hybrid host: every runtime runs in one mount namespace with /sys/fs/cgroup/unified unmounted (a v1 host's layout; OCI_BENCH_HYBRID=1 keeps the host's)"
    exec env ALCOVE_OCI_BENCH_NS=1 unshare -m --propagation private \
        sh -c 'umount -l /sys/fs/cgroup/unified && exec "$0" "$@"' "$repo/bench/oci.sh" "$@"
fi

ALCOVE_OCI=${ALCOVE_OCI:-}
if [ -z "$ALCOVE_OCI" ]; then
    # Built as setup.sh installs it: static, so no dynamic loader at each call.
    target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
    ALCOVE_OCI=$repo/target/$target/release/alcove-oci
    if command -v cargo >/dev/null 2>&1; then
        RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q --locked \
            --target "$target" -p alcove-oci 2>/dev/null ||
            echo "note: cargo build --release -p alcove-oci failed; using what is there"
    fi
fi

work=/var/tmp/alcove-ocibench
containerd_pid=
bins=()
cleanup() {
    if [ -d "$work/podman" ]; then
        podman_cmd rm -af -t 0 >/dev/null 2>&1 || true
    fi
    local i id
    for i in "${!bins[@]}"; do   # containers a failed round left
        for id in $("${bins[$i]}" --root "$work/state-$i" list -q 2>/dev/null); do
            "${bins[$i]}" --root "$work/state-$i" delete -f "$id" >/dev/null 2>&1 || true
        done
    done
    if [ -n "$containerd_pid" ]; then
        kill "$containerd_pid" 2>/dev/null || true
        wait "$containerd_pid" 2>/dev/null || true
    fi
    # Deepest first: whatever a failed run left mounted beneath our dir.
    grep -o " $work/[^ ]*" /proc/self/mountinfo 2>/dev/null | awk '{ print length, $1 }' |
        sort -rn | cut -d' ' -f2 | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
    rm -rf "$work"
    # containerd's namespace cgroups (its containers' are gone with them).
    find /sys/fs/cgroup -maxdepth 4 -type d -name alcove-bench -exec rmdir {} + 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work/bundle/rootfs"

# One rootfs for everybody: static busybox, an applet link for each command.
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs"/{bin,etc,proc,sys,dev,tmp,root,run}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > "$rootfs/etc/group"

# The shape of `runc spec`'s default (namespaces, mounts, masked paths), no
# terminal, with a memory and a pids limit so that every runtime makes cgroups.
cat > "$work/bundle/config.json" <<'JSON'
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false, "user": {"uid": 0, "gid": 0},
    "args": ["/bin/true"], "env": ["PATH=/bin"], "cwd": "/",
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bench",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
  }
}
JSON

# crun 1.8 refuses a hybrid cgroup layout (v1 controllers plus a cgroup2 tree
# at /sys/fs/cgroup/unified): on such a host it runs in a mount namespace of
# its own with that tree unmounted, through this wrapper, whose own cost is
# measured and printed beside the results.
crun_bin=$(command -v crun)
wrapper_note=
if grep -q ' /sys/fs/cgroup/unified ' /proc/self/mountinfo; then
    cat > "$work/crun" <<EOF
#!/bin/sh
exec unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec $crun_bin "\$@"' crun "\$@"
EOF
    chmod +x "$work/crun"
    crun_bin=$work/crun
    wrapper_note="crun* ran inside \`unshare -m\` with /sys/fs/cgroup/unified unmounted (crun 1.8: \"cgroups in hybrid mode not supported\")"
fi

names=()
if [ -x "$ALCOVE_OCI" ]; then
    names+=(alcove-oci)
    bins+=("$ALCOVE_OCI")
else
    echo "note: no alcove-oci at $ALCOVE_OCI: its rows are left out (set ALCOVE_OCI=...)"
fi
names+=("crun${wrapper_note:+*}" runc)
bins+=("$crun_bin" "$(command -v runc)")

# Milliseconds since an EPOCHREALTIME reading (bash builtin: no fork).
since_ms() { local now=$EPOCHREALTIME; echo "$(( (${now/./} - ${1/./}) ))" | awk '{ printf "%.3f\n", $1 / 1000 }'; }

# One raw cycle; prints its milliseconds. Fails loudly on any runtime error.
cycle() {   # bin root id
    local bin=$1 root=$2 id=$3 t0 pid st
    t0=$EPOCHREALTIME
    "$bin" --root "$root" create --bundle "$work/bundle" --pid-file "$work/pid" "$id" </dev/null >/dev/null
    read -r pid < "$work/pid" || [ -n "$pid" ]   # no newline at its end
    "$bin" --root "$root" start "$id"
    # Exited once /proc/PID is gone or a zombie; builtins only.
    while read -r _ _ st _ 2>/dev/null < "/proc/$pid/stat" && [ "$st" != Z ]; do :; done
    "$bin" --root "$root" delete "$id"
    since_ms "$t0"
}

one_run() {   # bin root id
    local t0=$EPOCHREALTIME
    "$1" --root "$2" run --bundle "$work/bundle" "$3" </dev/null >/dev/null
    since_ms "$t0"
}

# median p10 p90 of the numbers in file $1.
stats() { sort -n "$1" | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p10 = v[int((NR - 1) * 0.1) + 1]; p90 = v[int((NR - 1) * 0.9 + 0.5) + 1]
    printf "%.2f %.2f %.2f", m, p10, p90 }'; }

# Prints one table from $work/times/<table>.<name> files.
table() {   # table title
    local t=$1 alcove_med= i name s med p10 p90 ratio
    echo
    echo "== $2 (rounds: $ROUNDS) =="
    printf '%-14s %10s %10s %10s %14s\n' runtime "median ms" "p10" "p90" "alcove/peer"
    if [ -s "$work/times/$t.alcove-oci" ]; then
        alcove_med=$(stats "$work/times/$t.alcove-oci" | cut -d' ' -f1)
    fi
    for i in "${!names[@]}"; do
        name=${names[$i]}
        [ -s "$work/times/$t.$name" ] || continue
        read -r med p10 p90 <<< "$(stats "$work/times/$t.$name")"
        ratio=-
        if [ -n "$alcove_med" ] && [ "$name" != alcove-oci ]; then
            ratio=$(awk -v a="$alcove_med" -v b="$med" 'BEGIN { printf "%.2fx", a / b }')
        fi
        printf '%-14s %10s %10s %10s %14s\n' "$name" "$med" "$p10" "$p90" "$ratio"
    done
}

mkdir -p "$work/times"
echo "== warming up (one cycle each) =="
for i in "${!names[@]}"; do
    cycle "${bins[$i]}" "$work/state-$i" "warm-$i" >/dev/null
    echo "${names[$i]}: ok"
done

echo "== raw lifecycle and run: $ROUNDS interleaved rounds =="
for round in $(seq 1 "$ROUNDS"); do
    n=${#names[@]}
    for k in $(seq 0 $((n - 1))); do
        i=$(( (k + round) % n ))   # rotate who goes first
        cycle "${bins[$i]}" "$work/state-$i" "c-$round-$i" >> "$work/times/cycle.${names[$i]}"
        one_run "${bins[$i]}" "$work/state-$i" "r-$round-$i" >> "$work/times/run.${names[$i]}"
    done
done

# The wrapper's own cost: `--version` through it and directly.
if [ -n "$wrapper_note" ]; then
    for round in $(seq 1 "$ROUNDS"); do
        t0=$EPOCHREALTIME; "$crun_bin" --version >/dev/null; since_ms "$t0" >> "$work/times/wrap.with"
        t0=$EPOCHREALTIME; crun --version >/dev/null; since_ms "$t0" >> "$work/times/wrap.without"
    done
fi

# podman, with a store of its own; no systemd here (cgroupfs, file events);
# rlimits root may set without CAP_SYS_RESOURCE.
podman_cmd() {
    podman --root "$work/podman/root" --runroot "$work/podman/runroot" --tmpdir "$work/podman/tmp" \
        --network-config-dir "$work/podman/net" --cgroup-manager cgroupfs --events-backend file "$@"
}
mkdir -p "$work/podman"/{tmp,net}
tar -C "$rootfs" -cf "$work/rootfs.tar" .
podman_cmd import "$work/rootfs.tar" localhost/alcove-bench:latest >/dev/null
podman_flags=(run --rm --network none --ulimit nofile=4096:4096 --ulimit nproc=1000:1000)

# containerd, with its own root, state and socket; the image as an oci-archive.
mkdir -p "$work/containerd"
cat > "$work/containerd/config.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd/sock"
[ttrpc]
  address = "$work/containerd/sock.ttrpc"
EOF
containerd --config "$work/containerd/config.toml" > "$work/containerd/log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do [ -S "$work/containerd/sock" ] && break; sleep 0.1; done
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/unpacked" >/dev/null
cp -a "$rootfs/." "$work/unpacked/rootfs/"
umoci repack --image "$layout:latest" "$work/unpacked"
tar -C "$layout" -cf "$work/image.tar" .
ctr_cmd() { ctr -a "$work/containerd/sock" -n alcove-bench "$@"; }
ctr_cmd images import --base-name localhost/alcove-bench "$work/image.tar" >/dev/null

echo "== end to end: podman run --rm and ctr run --rm, $ROUNDS interleaved rounds =="
for i in "${!names[@]}"; do   # warm-up, and a check that each client works
    podman_cmd --runtime "${bins[$i]}" "${podman_flags[@]}" localhost/alcove-bench:latest true
    ctr_cmd run --rm --runc-binary "${bins[$i]}" localhost/alcove-bench:latest "w-$i" true
done
for round in $(seq 1 "$ROUNDS"); do
    n=${#names[@]}
    for k in $(seq 0 $((n - 1))); do
        i=$(( (k + round) % n ))
        t0=$EPOCHREALTIME
        podman_cmd --runtime "${bins[$i]}" "${podman_flags[@]}" localhost/alcove-bench:latest true
        since_ms "$t0" >> "$work/times/podman.${names[$i]}"
        t0=$EPOCHREALTIME
        ctr_cmd run --rm --runc-binary "${bins[$i]}" localhost/alcove-bench:latest "e-$round-$i" true
        since_ms "$t0" >> "$work/times/ctr.${names[$i]}"
    done
done

table cycle "raw: create --pid-file + start + wait for exit + delete, \`true\` in a busybox bundle"
table run "the runtime's \`run\` (create, start, wait, delete in one call)"
table podman "podman run --rm (conmon)"
table ctr "ctr run --rm (containerd 1.6 runc shim)"
if [ -n "$wrapper_note" ]; then
    echo
    echo "* $wrapper_note;"
    echo "  that wrapper's own cost (crun --version through it, median): $(stats "$work/times/wrap.with" | cut -d' ' -f1) ms" \
        "against $(stats "$work/times/wrap.without" | cut -d' ' -f1) ms directly; crun's rows include it."
fi
