#!/usr/bin/env bash
# Runs alcove's integration tests inside a VM that is a cgroup-v2-only host:
# Debian 12's stock cloud kernel (linux-image-cloud-amd64) under QEMU TCG
# (`-M microvm`, booted as a PVH ELF: the vmlinux taken out of the LZ4 bzImage),
# booted with `cgroup_no_v1=all`, once with BPF LSM on (Debian's default lsm
# list) and once with it off (the same list without bpf).
#
# The guest sees the host's whole root filesystem, read-only, over virtio-fs
# (QEMU's virtiofsd; that kernel has no 9p), under a tmpfs overlay, so the
# test binaries cargo built here, with the absolute paths compiled into them,
# and the host's bash, python3, umoci and skopeo work there as they are.
#
# Its init is the host's real systemd (default, `--init systemd`): systemd 252
# boots the overlay to alcove-vm.target (tests/vm/systemd/), which runs
# tests/vm/guest.sh after sysinit.target and basic.target as an ordinary
# service. So the delegated cgroup is a real `systemd-run --scope -p
# Delegate=yes`, and the daemon is the shipped dist/alcove.service, started and
# stopped with systemctl. Booting systemd costs a few seconds of the guest's
# time under TCG, which is small next to the tests. Without systemd installed,
# or with `--init shell`, a shell init (tests/vm/shell-init) mounts cgroup2
# itself and guest.sh makes the same systemd-shaped cgroups by hand.
#
# In each boot (tests/vm/guest.sh): kernel, LSMs and cgroups; the integration
# test binaries from the root cgroup, then from a delegated cgroup (the
# command in the scope's `supervisor` leaf, as DelegateSubgroup=supervisor
# would put it); the daemon from the unit file: deploy and invoke a function
# with the CLI, check the invocation's peaks, stop it, nothing left; `alcove
# run` from a delegated cgroup: OOM, fork bomb, report peaks, 20 runs leave
# nothing. Each part prints `vm-tests: N passed, N failed (PART)`.
#
# Cost, measured on the 2-core development machine: TCG runs this guest's
# syscalls and page faults 50-200x slower than the host (a debug `alcove
# --version` takes 0.17 s, most of it ld.so relocating the 95 MB binary), so
# one boot takes ~10 min: ~8 s to reach the tests, the root-cgroup part ~300 s
# (images ~60 s, functions ~120 s, teardown ~70 s), the delegated part ~245 s,
# the daemon ~6 s, the smoke checks ~30 s; both boots ~20 min. virtio-fs runs
# with cache=always (the guest never revalidates what it read: boot took 19 s
# and every exec 4x longer with cache=auto), so do not rebuild while it runs.
#
# Needs root and the Debian mirror (the kernel package, once; cached under
# target/vm/). Console logs go to target/vm/logs/. Exit status: 0 when every
# boot that ran passed (under ALCOVE_VM_DEADLINE the BPF-LSM-off boot may be
# left out, said in a SKIPPED line and in the summary), 1 when a test failed
# or a guest did not finish, 2 on bad usage, 3 when the VM could not be set up
# (the reason is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)

usage() {
    cat <<'EOF'
usage: scripts/vm-test.sh [OPTIONS]

Boots Debian 12's cloud kernel under QEMU (TCG) as a cgroup-v2-only host and
runs alcove's integration tests in it, from the root cgroup and from a
delegated one, plus the daemon from dist/alcove.service and `alcove run` smoke
checks.

options:
  --lsm on|off|both   boot with BPF LSM on (Debian's default lsm list), off
                      (the same list without bpf), or both, one after the
                      other (default: both; the second boot then runs only
                      ALCOVE_VM_LSM_OFF_TESTS from the root cgroup)
  --init systemd|shell|auto
                      the guest's init: the host's systemd, or a shell init
                      that makes systemd-shaped cgroups itself (default: auto,
                      systemd when /lib/systemd/systemd exists)
  --parts "LIST"      which guest parts to run, of: root delegated daemon smoke
                      bench (bench/peaks.sh, in the BPF-LSM-on boot)
                      (default: the first four; bench is a benchmark, run
                      when named)
  --no-build          use the test binaries already built (skip cargo)
  --timeout SECONDS   kill a guest that runs longer (default: 3000: a hang guard;
                      one boot took 585-622 s on one machine, ~1,600 s on another)
  --keep              keep target/vm/run-* (initramfs, config, virtiofsd's
                      log) as well as the console logs
  -h, --help          this text

environment:
  ALCOVE_VM_TESTS     test binaries to run from the root cgroup (default:
                      "limits run_basics teardown ebpf guard images
                      functions hostile isolation router control
                      warm_isolation sandboxes sandbox_restart
                      sandbox_pool lifecycle hardening spec_features
                      podman containerd gvisor gvisor_functions": the alcove package's integration
                      tests, alcove-api's router, which runs sandboxes, and
                      alcove-oci's (the OCI runtime under podman and
                      containerd on a cgroup v2 host under systemd);
                      left out: accel, whose accelerator calibrates CPU
                      kernels for minutes under TCG and has nothing cgroup-v2
                      specific; alcove-api's fuzz, which runs no sandbox; and
                      http_functions (HTTP framing and streaming through the
                      functions path the others run), config,
                      code_and_host, cli_edges, quickstart and the
                      hostile_* files of issue 11, whose cgroup work is the
                      daemon path functions and control already run, and
                      warm_lifecycle and hostile_warm (restarts, a thousand
                      invocations: ~4 min under TCG; name them here to run
                      them in the guest), and sandbox_network, whose
                      outbound sandboxes need netfilter, which the guest's
                      kernel lacks (neither nf_tables nor ip_tables))
  ALCOVE_VM_DELEGATED_TESTS  test binaries to run from the delegated cgroup
                      (default: those of ALCOVE_VM_TESTS whose work is making
                      cgroups beneath the cgroup they start in: "limits
                      run_basics lifecycle"; the others make the same
                      cgroups through the same code, and the daemon part
                      starts the daemon from a delegated cgroup)
  ALCOVE_VM_LSM_OFF_TESTS  with --lsm both, what the BPF-LSM-off boot runs,
                      from the root cgroup only: the tests whose outcome
                      depends on BPF LSM (default: "ebpf guard": doctor's
                      report of it, and the eBPF guard's fallback); with
                      --lsm off, that boot runs everything as --lsm on does
  ALCOVE_VM_TEST_ARGS arguments for every test binary: a name filter, --skip
                      NAME, --exact... (default: none)
  ALCOVE_VM_SKIP      BINARY::TEST words: tests not run in the guest, the name
                      a substring within that binary (default: seven tests
                      with no cgroup, systemd or LSM work, covered by the
                      host's run, listed at the start of the run; set it
                      empty to run them)
  ALCOVE_VM_THREADS   --test-threads for the test binaries (default: 2)
  ALCOVE_VM_TEST_TIMEOUT  seconds one test binary may take (default: 900)
  ALCOVE_VM_MEMORY    guest memory (default: 3584M)
  ALCOVE_VM_CPUS      guest CPUs (default: 2)
  ALCOVE_VM_APPEND    more kernel command line
  ALCOVE_VM_BOOT_LIMIT  seconds the guest may take to reach its tests (default: 180)
  ALCOVE_VM_VIRTIOFS_CACHE  virtiofsd's cache mode (default: always)
  ALCOVE_VM_CPU_MODEL QEMU's -cpu (default: max)
  ALCOVE_VM_DEADLINE  a time (seconds since the epoch) the whole run must end
                      by (.ci/run sets CI's): no guest runs past it, and with
                      --lsm both the BPF-LSM-off boot runs only if the first
                      boot's figures say it fits (said when it does not)

Console logs: target/vm/logs/console-lsm-{on,off}.log.
EOF
}

LSM=both INIT=auto PARTS="root delegated daemon smoke" BUILD=1 TIMEOUT=3000 KEEP=0
BOOT_LIMIT=${ALCOVE_VM_BOOT_LIMIT:-180}
VFS_CACHE=${ALCOVE_VM_VIRTIOFS_CACHE:-always}
CPU_MODEL=${ALCOVE_VM_CPU_MODEL:-max}
while [ $# -gt 0 ]; do
    case $1 in
    --lsm) LSM=${2:?--lsm needs on, off or both}; shift 2 ;;
    --init) INIT=${2:?--init needs systemd, shell or auto}; shift 2 ;;
    --parts) PARTS=${2?--parts needs a list}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "vm-test.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $LSM in on | off) LSMS=("$LSM") ;; both) LSMS=(on off) ;; *) echo "vm-test.sh: --lsm on|off|both" >&2; exit 2 ;; esac
case $INIT in systemd | shell | auto) ;; *) echo "vm-test.sh: --init systemd|shell|auto" >&2; exit 2 ;; esac
for p in $PARTS; do
    case $p in root | delegated | daemon | smoke | bench) ;; *) echo "vm-test.sh: unknown part $p" >&2; exit 2 ;; esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "vm-test.sh: --timeout needs a number of seconds" >&2; exit 2; }
DEADLINE=${ALCOVE_VM_DEADLINE:-}
[[ "$DEADLINE" =~ ^([1-9][0-9]{0,11})?$ ]] || { echo "vm-test.sh: ALCOVE_VM_DEADLINE needs a time in seconds since the epoch (such as \$((\$(date +%s) + 3600))), got '$DEADLINE'" >&2; exit 2; }
TESTS=${ALCOVE_VM_TESTS:-limits run_basics teardown ebpf guard images functions hostile isolation router control warm_isolation sandboxes sandbox_restart sandbox_pool lifecycle hardening spec_features podman containerd gvisor gvisor_functions}
# The delegated part checks that alcove makes its cgroups beneath the one it
# was started in; images, functions, hostile and the rest make theirs through
# the same code, and podman and containerd place their containers' cgroups
# themselves (absolute paths), whatever cgroup the tests start from.
# limits and run_basics make a run's cgroups, lifecycle an OCI container's;
# the daemon (ebpf's monitor, warm templates, functions) is started from a
# delegated cgroup by the daemon part, as alcove.service.
DELEGATED_TESTS=${ALCOVE_VM_DELEGATED_TESTS-$(tr ' ' '\n' <<< "$TESTS" | { grep -xE 'limits|run_basics|lifecycle' || true; } | paste -sd' ')}
# Two full boots outlast CI's time (~45 min each under TCG): with --lsm both,
# the second boot runs only what BPF LSM changes.
OFF_TESTS=$TESTS
[ "$LSM" != both ] || OFF_TESTS=${ALCOVE_VM_LSM_OFF_TESTS:-ebpf guard}
TEST_ARGS=${ALCOVE_VM_TEST_ARGS-}
# Tests the host's run covers and whose work has nothing of cgroup v2, systemd
# or BPF LSM in it, left out here for CI's time (~175x slower syscalls under
# TCG): BINARY::TEST, the test's name matched as a substring within that binary.
# The decompression-bomb and tampered-archive checks (200 MB gunzipped by a
# debug build, ~5 min); a gVisor function's layered image (~2 min; the tier's
# pool and kill -9 tests stay); the agent sandboxes' file, interpreter, input,
# terminal and preview classes (files, processes and sockets, no cgroup
# work: the command, lifecycle, pause, limit, fork and guard classes stay).
SKIP=${ALCOVE_VM_SKIP-"images::malicious_archives_are_refused_and_leave_nothing_behind
gvisor_functions::a_gvisor_function_runs_in_a_layered_image_that_it_cannot_change
sandboxes::files sandboxes::code_interpreter sandboxes::bad_input sandboxes::terminal sandboxes::port_previews"}
SKIP=$(tr -s ' \n' '  ' <<< "$SKIP" | sed 's/^ //; s/ $//')
for s in $SKIP; do
    [[ "$s" =~ ^[a-z0-9_]+::[A-Za-z0-9_]+$ ]] || { echo "vm-test: ALCOVE_VM_SKIP: $s is not BINARY::TEST" >&2; exit 2; }
done
THREADS=${ALCOVE_VM_THREADS:-2}
TEST_TIMEOUT=${ALCOVE_VM_TEST_TIMEOUT:-900}
MEMORY=${ALCOVE_VM_MEMORY:-3584M}
CPUS=${ALCOVE_VM_CPUS:-2}

source scripts/packages.sh
alcove_require_root vm-test.sh

VMDIR=$REPO/target/vm
mkdir -p "$VMDIR/logs"
exec 9> "$VMDIR/lock"
flock -n 9 || { echo "vm-test: another scripts/vm-test.sh is running on this checkout (target/vm/lock)" >&2; exit 3; }
T_ALL=$EPOCHREALTIME
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "vm-test: $*"; }
cannot() { echo "vm-test: cannot set up the VM: $*" >&2; exit 3; }
PY=/usr/bin/python3 # Debian's, whatever python3 is first on PATH

# --- tools ---------------------------------------------------------------------
# qemu-system-x86 (with qemu-system-common's virtiofsd), lz4 for the kernel
# image, cpio for the initramfs; busybox-static and python3 come with the base list.
alcove_install_packages qemu-system-x86 lz4 cpio umoci skopeo
[ "$BUILD" = 0 ] || alcove_ensure_rust
VIRTIOFSD=
for v in /usr/lib/qemu/virtiofsd /usr/libexec/virtiofsd /usr/lib/virtiofsd; do
    [ -x "$v" ] && { VIRTIOFSD=$v; break; }
done
if [ -z "$VIRTIOFSD" ]; then
    alcove_install_packages virtiofsd 2>/dev/null || true
    for v in /usr/libexec/virtiofsd /usr/lib/virtiofsd; do [ -x "$v" ] && { VIRTIOFSD=$v; break; }; done
fi
[ -n "$VIRTIOFSD" ] || cannot "no virtiofsd (Debian 12 ships it in qemu-system-common at /usr/lib/qemu/virtiofsd)"
if [ "$INIT" = auto ]; then
    if [ -x /lib/systemd/systemd ] && command -v systemd-run > /dev/null; then
        INIT=systemd
    else
        INIT=shell
        say "systemd is not installed here: the guest uses the shell init (tests/vm/shell-init), which makes the systemd-shaped cgroups itself"
    fi
fi
[ "$INIT" != systemd ] || [ -x /lib/systemd/systemd ] || cannot "--init systemd, but /lib/systemd/systemd is not installed"

# --- the test binaries -------------------------------------------------------------
T0=$EPOCHREALTIME
if [ "$BUILD" = 1 ]; then
    say "building the test binaries (cargo test --workspace --locked --no-run)"
    cargo test --workspace --locked --no-run --message-format=json-render-diagnostics > "$VMDIR/build.json" ||
        { echo "vm-test: the build failed (above)" >&2; exit 1; }
    say "built in $(secs "$T0")s"
fi
[ -s "$VMDIR/build.json" ] || cannot "no target/vm/build.json: run without --no-build once"
# NAME:EXECUTABLE:CWD for each wanted test binary (cwd: its package's root, as
# cargo test runs it), and the alcove binary the tests themselves run.
SELECTION=$("$PY" - "$VMDIR/build.json" "$TESTS" "$DELEGATED_TESTS" "$OFF_TESTS" <<'EOF'
import json, os, sys
wanted = sys.argv[2].split()
wanted_delegated = sys.argv[3].split()
wanted_off = sys.argv[4].split()
packages = ("alcove", "alcove-api", "alcove-oci")  # whose integration tests can be chosen
found, alcove = {}, None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t, pkg = m["target"], m["package_id"]
    # package_id: "path+file:///.../crates/alcove#0.1.0", "path+file:///.../dir#name@0.1.0",
    # or before cargo 1.77 "alcove 0.1.0 (path+file:///...)"
    if " " in pkg:
        name = pkg.split(" ")[0]
    elif "@" in pkg.split("#")[-1]:
        name = pkg.split("#")[-1].split("@")[0]
    else:
        name = pkg.split("#")[0].rstrip("/").rsplit("/", 1)[-1]
    cwd = os.path.dirname(m["manifest_path"])
    if t["kind"] == ["test"] and name in packages:
        found[t["name"]] = "%s:%s:%s" % (t["name"], m["executable"], cwd)
    if t["kind"] == ["bin"] and t["name"] == "alcove" and not m["profile"]["test"]:
        alcove = m["executable"]
missing = sorted(set(w for w in wanted + wanted_delegated + wanted_off if w not in found))
if missing:
    sys.exit("no built test binary named %s (have: %s)" % (" ".join(missing), " ".join(sorted(found))))
if not alcove:
    sys.exit("no alcove binary in the build")
print(alcove)
print(" ".join(found[w] for w in wanted))
print(" ".join(found[w] for w in wanted_delegated))
print(" ".join(found[w] for w in wanted_off))
EOF
) || { echo "vm-test: cannot choose the test binaries from target/vm/build.json (above)" >&2; exit 2; }
ALCOVE_BIN=$(sed -n 1p <<< "$SELECTION")
TEST_SPECS=$(sed -n 2p <<< "$SELECTION")
DELEGATED_SPECS=$(sed -n 3p <<< "$SELECTION")
OFF_SPECS=$(sed -n 4p <<< "$SELECTION")
[[ "$REPO" != *[[:space:]:\']* ]] || cannot "the repository path ($REPO) has a space, colon or quote, which the guest's test list cannot carry"
[[ "$TEST_ARGS" != *\'* ]] || { echo "vm-test: ALCOVE_VM_TEST_ARGS cannot hold a single quote" >&2; exit 2; }

has_part() { [[ " $PARTS " == *" $1 "* ]]; }
if has_part root; then say "from the root cgroup: $TESTS"; else say "skipped: the root-cgroup test part (--parts)"; fi
if has_part delegated; then
    say "from a delegated cgroup: ${DELEGATED_TESTS:-nothing}${ALCOVE_VM_DELEGATED_TESTS+ (ALCOVE_VM_DELEGATED_TESTS)}"
    [ -n "${ALCOVE_VM_DELEGATED_TESTS+set}" ] ||
        say "skipped from the delegated cgroup: the rest (their cgroups are made by the code the binaries above run there, and the daemon part starts the daemon from a delegated cgroup)"
else
    say "skipped: the delegated-cgroup test part (--parts)"
fi
if has_part root || has_part delegated; then
    say "not run here, the host's run covers them (ALCOVE_VM_SKIP= runs them): ${SKIP:-none}"
    [ -z "$TEST_ARGS" ] || say "test binary arguments: $TEST_ARGS"
fi
[ "$LSM" != both ] || say "the BPF-LSM-off boot runs from the root cgroup only: $OFF_TESTS (ALCOVE_VM_LSM_OFF_TESTS)"
has_part daemon || say "skipped: the daemon part (--parts)"
has_part smoke || say "skipped: the alcove run smoke part (--parts)"
has_part bench || say "skipped: the peaks benchmark part (--parts)"

# --- the kernel ----------------------------------------------------------------------
# linux-image-cloud-amd64 depends on the real package (linux-image-6.1.0-NN-cloud-amd64);
# each version is fetched once into target/vm/kernel/PACKAGE_VERSION/.
fetch_kernel() {
    local pkg ver dir tmp
    rm -rf "$VMDIR"/kernel-dl.* # an interrupted download
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        apt-get update -qq || true
        pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    if [ -n "$pkg" ]; then
        ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
        dir=$VMDIR/kernel/${pkg}_$ver
    fi
    if [ -z "$pkg" ] || [ ! -s "$dir/vmlinux" ]; then
        if [ -n "$pkg" ]; then
            tmp=$(mktemp -d "$VMDIR/kernel-dl.XXXXXX")
            if ! (cd "$tmp" && apt-get download -q "$pkg=$ver" > /dev/null 2>&1) &&
                ! (apt-get update -qq && cd "$tmp" && apt-get download -q "$pkg=$ver" > /dev/null 2>&1); then
                rm -rf "$tmp"
                pkg=
            fi
        fi
        if [ -z "$pkg" ]; then
            dir=$(ls -d "$VMDIR"/kernel/linux-image-*/ 2>/dev/null | sort -V | tail -n 1)
            [ -n "$dir" ] && [ -s "$dir/vmlinux" ] ||
                cannot "cannot resolve or download linux-image-cloud-amd64 (apt-get update; apt-cache depends linux-image-cloud-amd64), and no kernel is cached in target/vm/kernel"
            say "cannot reach the package's current version; using the cached ${dir%/}"
            KDIR=${dir%/}
            return
        fi
        say "fetched $(cd "$tmp" && echo *.deb)"
        dpkg-deb -x "$tmp"/*.deb "$tmp/x"
        # The kernel's scripts/extract-vmlinux approach: decompress from the
        # first LZ4 magic that yields an ELF.
        "$PY" - "$tmp"/x/boot/vmlinuz-* "$tmp/vmlinux" <<'EOF' || { rm -rf "$tmp"; cannot "no vmlinux found in the LZ4 bzImage"; }
import subprocess, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\x02\x21\x4c\x18")
while at >= 0:
    out = subprocess.run(["lz4", "-dc"], input=data[at:], capture_output=True).stdout
    if out[:4] == b"\x7fELF":
        open(sys.argv[2], "wb").write(out)
        sys.exit(0)
    at = data.find(b"\x02\x21\x4c\x18", at + 1)
sys.exit(1)
EOF
        mkdir -p "$tmp/k"
        mv "$tmp/vmlinux" "$tmp/k/vmlinux"
        cp "$tmp"/x/boot/config-* "$tmp/k/config"
        mv "$tmp"/x/lib/modules/* "$tmp/k/modules"
        rm -rf "$dir"
        mkdir -p "$VMDIR/kernel"
        mv "$tmp/k" "$dir"
        rm -rf "$tmp"
        # Older versions are not needed any more.
        find "$VMDIR/kernel" -mindepth 1 -maxdepth 1 ! -name "${dir##*/}" -exec rm -rf {} +
    fi
    KDIR=$dir
}
T0=$EPOCHREALTIME
fetch_kernel
KVER=$(basename "$KDIR")
say "kernel $KVER (target/vm/kernel; $(secs "$T0")s)"

# Modules the guest loads (the rest of that kernel is built in), with what
# each depends on first, from the .modinfo `depends=` of each .ko.
MODULES=()
add_module() {
    local m=$1 ko dep
    for dep in "${MODULES[@]}"; do [ "$dep" = "$m" ] && return 0; done
    ko=$(find "$KDIR/modules/kernel" -name "$m.ko" | head -n 1)
    [ -n "$ko" ] || cannot "module $m is not in $KVER"
    for dep in $(grep -ao 'depends=[a-z0-9_,-]*' "$ko" | head -n 1 | cut -d= -f2 | tr ',' ' '); do
        add_module "$dep"
    done
    MODULES+=("$m")
}
# dummy: the guest's one non-loopback address (it has no network device),
# which ebpf's connect-rule test needs; bridge: the cluster tests' network.
for m in virtio_mmio virtiofs overlay veth dummy bridge; do add_module "$m"; done

# The default lsm list, and the same without bpf.
LSM_DEFAULT=$(sed -n 's/^CONFIG_LSM="\(.*\)"$/\1/p' "$KDIR/config")
[ -n "$LSM_DEFAULT" ] || cannot "no CONFIG_LSM in $KVER's config"
LSM_NO_BPF=$(tr ',' '\n' <<< "$LSM_DEFAULT" | grep -vx bpf | paste -sd,)
grep -q '^CONFIG_BPF_LSM=y' "$KDIR/config" || say "note: $KVER has no CONFIG_BPF_LSM: the lsm=on boot will fail its check"

# The host's TSC frequency, so the guest neither recalibrates (slow and wrong
# under TCG) nor falls back to jiffies, which breaks CPU-time sampling.
KHZ=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n 1)
[ -n "$KHZ" ] || KHZ=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -n 1)
[ -n "$KHZ" ] || KHZ=$(awk -F': ' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
[ -n "$KHZ" ] || cannot "cannot tell the host's TSC frequency (dmesg, /proc/cpuinfo)"
KHZ=$(awk -v m="$KHZ" 'BEGIN { printf "%d", m * 1000 + 0.5 }')

# The guest's units to mask: the host's timers and services that would fire
# or fail there and only cost time (it has no network, no udev, no real disk).
MASK="apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer
systemd-timesyncd.service systemd-pstore.service e2scrub_reap.service ldconfig.service systemd-firstboot.service
systemd-hwdb-update.service systemd-journal-catalog-update.service systemd-update-done.service
systemd-remount-fs.service systemd-fsck-root.service systemd-random-seed.service"

# --- one boot ----------------------------------------------------------------------------
VIRTIOFSD_PID='' QEMU_PID=''
cleanup() {
    [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null || true
    [ -z "$VIRTIOFSD_PID" ] || kill "$VIRTIOFSD_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RESULTS=()
OVERALL=0
GUEST_SECS=0
BOOTS=0
boot() { # on|off [PARTS: a second boot, after the guest's kernel panicked]
    local lsm=$1 again=${2:-} run=$VMDIR/run-lsm-$1 log=$VMDIR/logs/console-lsm-$1${2:+-again}.log
    local cmdline t0 rc=0 m took total label="lsm $1${2:+ (second boot)}" overall_before=$OVERALL
    local parts=$PARTS specs=$TEST_SPECS
    if [ "$lsm" = off ] && [ "$LSM" = both ]; then
        parts=root specs=$OFF_SPECS
    fi
    [ -z "$again" ] || parts=$again
    if [ -n "$DEADLINE" ] && [ $((DEADLINE - EPOCHSECONDS)) -lt 60 ]; then
        say "FAILED: $label not started: $((DEADLINE - EPOCHSECONDS))s left before ALCOVE_VM_DEADLINE"
        RESULTS+=("$label: FAILED: not started, $((DEADLINE - EPOCHSECONDS))s left before ALCOVE_VM_DEADLINE")
        OVERALL=1
        return 0
    fi
    BOOTS=$((BOOTS + 1))
    rm -rf "$run"
    mkdir -p "$run"/initramfs/{bin,modules,proc,sys,dev}
    cp /bin/busybox "$run/initramfs/bin/busybox"
    for m in "${MODULES[@]}"; do cp "$(find "$KDIR/modules/kernel" -name "$m.ko" | head -n 1)" "$run/initramfs/modules/"; done
    cp tests/vm/init "$run/initramfs/init"
    cat > "$run/initramfs/vm.conf" <<EOF
ALCOVE_VM_REPO='$REPO'
ALCOVE_VM_INIT='$INIT'
ALCOVE_VM_LSM='$lsm'
ALCOVE_VM_ALCOVE='$ALCOVE_BIN'
ALCOVE_VM_MODULES='${MODULES[*]}'
ALCOVE_VM_MASK='$(tr '\n' ' ' <<< "$MASK")'
ALCOVE_VM_PARTS='$parts'
ALCOVE_VM_TESTS='$specs'
ALCOVE_VM_DELEGATED_TESTS='$DELEGATED_SPECS'
ALCOVE_VM_TEST_ARGS='$TEST_ARGS'
ALCOVE_VM_SKIP='$SKIP'
ALCOVE_VM_THREADS='$THREADS'
ALCOVE_VM_TEST_TIMEOUT='$TEST_TIMEOUT'
EOF
    (cd "$run/initramfs" && find . | cpio -o -H newc --quiet > "$run/initramfs.cpio")

    # A soft lockup panics (and the panic replays the whole kernel log, with
    # the call traces loglevel=3 kept off the console) rather than spinning
    # until the time limit.
    cmdline="console=ttyS0 quiet loglevel=3 panic=-1 softlockup_panic=1 panic_print=0x20 tsc=reliable tsc_early_khz=$KHZ lpj=$((KHZ * 4)) no_timer_check cgroup_no_v1=all"
    [ "$lsm" = on ] || cmdline+=" lsm=$LSM_NO_BPF"
    [ -z "${ALCOVE_VM_APPEND:-}" ] || cmdline+=" $ALCOVE_VM_APPEND"
    [ "$INIT" != systemd ] || cmdline+=" systemd.unit=alcove-vm.target systemd.show_status=0 systemd.log_level=warning"

    # virtiofsd shares / (the guest mounts it read-only); sandbox=chroot
    # because its namespace sandbox cannot pivot_root out of /.
    if "$VIRTIOFSD" --help 2>&1 | grep -q -- --shared-dir; then
        "$VIRTIOFSD" --socket-path="$run/virtiofs.sock" --shared-dir=/ --sandbox=chroot --cache="$VFS_CACHE" \
            --rlimit-nofile=0 > "$run/virtiofsd.log" 2>&1 &
    else
        "$VIRTIOFSD" --socket-path="$run/virtiofs.sock" -o source=/ -o sandbox=chroot -o cache="$VFS_CACHE" \
            -o no_posix_lock --rlimit-nofile=0 > "$run/virtiofsd.log" 2>&1 &
    fi
    VIRTIOFSD_PID=$!
    for _ in $(seq 100); do [ -S "$run/virtiofs.sock" ] && break; sleep 0.05; done
    [ -S "$run/virtiofs.sock" ] || cannot "virtiofsd did not start: $(cat "$run/virtiofsd.log")"

    echo
    # Past the deadline the run is lost anyway; a guest killed just before it
    # still leaves the summary of what ran.
    local limit=$TIMEOUT
    [ -z "$DEADLINE" ] || [ $((DEADLINE - EPOCHSECONDS)) -ge "$limit" ] || limit=$((DEADLINE - EPOCHSECONDS))
    say "=== boot: BPF LSM $lsm, init $INIT, kernel $KVER, $CPUS CPUs, $MEMORY, guest time limit ${limit}s"
    say "kernel command line: $cmdline"
    t0=$EPOCHREALTIME
    # microvm's virtio-mmio devices default to legacy virtio, which vhost-user
    # (virtiofsd) refuses; vhost-user needs the guest's memory shared (memfd).
    : > "$log"
    timeout -k 10 "$limit" qemu-system-x86_64 -M microvm,rtc=on -accel tcg,thread=multi -cpu "$CPU_MODEL" -smp "$CPUS" -m "$MEMORY" \
        -nodefaults -no-user-config -display none -no-reboot \
        -object memory-backend-memfd,id=mem,size="$MEMORY",share=on -machine memory-backend=mem \
        -global virtio-mmio.force-legacy=false \
        -chardev socket,id=vfs,path="$run/virtiofs.sock" -device vhost-user-fs-device,chardev=vfs,tag=hostroot \
        -serial file:"$run/console.raw" -kernel "$KDIR/vmlinux" -initrd "$run/initramfs.cpio" -append "$cmdline" \
        < /dev/null > "$run/qemu.out" 2>&1 &
    QEMU_PID=$!
    # The console, as it comes (CRs dropped), to the terminal and the log.
    tail -n +1 -F --pid="$QEMU_PID" "$run/console.raw" 2> /dev/null | tr -d '\r' | tee "$log" &
    local tail_pid=$! started=0 reason='' done_wait=0
    # A guest that has not reached its tests in BOOT_LIMIT seconds is stuck in
    # boot: stop it then rather than at the time limit. One that said it is
    # done but has not powered off 60 s later is stopped too.
    while kill -0 "$QEMU_PID" 2> /dev/null; do
        sleep 1
        if grep -q '^ALCOVE-VM-DONE' "$run/console.raw" 2> /dev/null; then
            done_wait=$((done_wait + 1))
            if [ "$done_wait" = 60 ]; then
                say "the guest finished but did not power off in 60 s: stopping it"
                kill "$QEMU_PID" 2> /dev/null || true
            fi
            continue
        fi
        if [ "$started" = 0 ]; then
            if grep -q '^=== part info' "$run/console.raw" 2> /dev/null; then
                started=1
            elif [ "$(secs "$t0" | cut -d. -f1)" -ge "$BOOT_LIMIT" ]; then
                reason="the guest did not reach its tests in ${BOOT_LIMIT}s"
                started=killed
                kill "$QEMU_PID" 2> /dev/null || true
            fi
        fi
    done
    wait "$QEMU_PID" && rc=0 || rc=$?
    QEMU_PID=
    wait "$tail_pid" 2> /dev/null || true
    tee -a "$log" < "$run/qemu.out"
    took=$(secs "$t0")
    kill "$VIRTIOFSD_PID" 2>/dev/null || true
    wait "$VIRTIOFSD_PID" 2>/dev/null || true
    VIRTIOFSD_PID=
    [ "$rc" != 124 ] && [ "$rc" != 137 ] || reason="the guest ran past ${limit}s and was killed"

    total=$(grep '^vm-tests: .*(total' "$log" | tail -n 1 || true)
    if [ -n "$reason" ]; then
        RESULTS+=("$label: FAILED: $reason (${took}s)")
        OVERALL=1
    elif ! grep -q '^ALCOVE-VM-DONE rc=0$' "$log"; then
        RESULTS+=("$label: FAILED: ${total:-no result from the guest (qemu exit $rc)} (${took}s in the guest)")
        OVERALL=1
    else
        RESULTS+=("$label: ${total} (${took}s in the guest)")
    fi
    if ! grep -q '^ALCOVE-VM-DONE rc=0$' "$log"; then
        echo
        say "--- $label failed; what went wrong (the full console is $log):"
        # Failed checks and binaries, the tests that failed with their panic
        # message (the line after "panicked at"), the part totals.
        awk 'after { print; after = 0 }
             /^(FAIL|vm-tests:|vm-init|     failed:|Kernel panic|in-cgroup:|\.\.\.  )/ { print }
             /^thread .* panicked at/ { print; after = 1 }' "$log" | cut -c1-600 | tail -n 80
        if grep -q 'Kernel panic' "$log"; then
            # The replayed log ends with what led to the panic.
            grep -v 'Modules linked in' "$log" | tail -n 150
        elif [ "$rc" != 0 ]; then
            tail -n 30 "$log"
        fi
    fi
    local stage1 tests_at
    stage1=$(sed -n 's/^vm-init: stage 1 at \([0-9.]*\)s uptime/\1/p' "$log" | head -n 1)
    tests_at=$(sed -n 's/^boot to tests: \([0-9.]*\)s guest uptime/\1/p' "$log" | head -n 1)
    RESULTS+=("    boot: initramfs running at ${stage1:-?}s, tests start at ${tests_at:-?}s (guest uptime)")
    while read -r m; do
        RESULTS+=("    $m")
    done < <(sed -n 's/^vm-tests: \([0-9]*\) passed, \([0-9]*\) failed (\([a-z]*\), \([0-9.]*\)s)$/\3: \1 passed, \2 failed, \4s/p' "$log")
    GUEST_SECS=$(awk -v a="$GUEST_SECS" -v b="$took" 'BEGIN { print a + b }')
    [ "$KEEP" = 1 ] || rm -rf "$run"
    # The guest's kernel panicked (a soft lockup panics: see the command
    # line) before the tests finished: said above with its trace, and the
    # parts not yet finished get one more boot. The run passes only if they
    # pass there; the summary keeps both boots.
    if [ -z "$again" ] && ! grep -q '^ALCOVE-VM-DONE' "$log" && grep -q 'Kernel panic' "$log"; then
        local finished p left=''
        finished=$(sed -n 's/^vm-tests: [0-9]* passed, [0-9]* failed (\([a-z]*\), .*/\1/p' "$log")
        for p in $parts; do
            grep -qx "$p" <<< "$finished" || left+="${left:+ }$p"
        done
        if [ -n "$left" ]; then
            say "the guest's kernel panicked ($(grep -m 1 -o 'soft lockup.*\|Kernel panic.*' "$log" | cut -c1-120)); booting once more for the parts left: $left"
            grep -q '^FAIL' "$log" || OVERALL=$overall_before
            boot "$lsm" "$left"
        fi
    fi
}

# The seconds the BPF-LSM-off boot's binaries took in the first boot (their
# first lines: the root part runs first), its boot and info part, and half
# again for the spread between runs.
off_boot_estimate() {
    local log=$VMDIR/logs/console-lsm-on.log name took sum=0 start
    for name in $OFF_TESTS; do
        took=$(sed -n "s/^\(ok  \|FAIL\) $name: .*(\([0-9.]*\)s)\$/\2/p" "$log" | head -n 1)
        sum=$(awk -v a="$sum" -v b="${took:-300}" 'BEGIN { print a + b }')
    done
    start=$(sed -n 's/^boot to tests: \([0-9.]*\)s guest uptime/\1/p' "$log" | head -n 1)
    awk -v a="$sum" -v b="${start:-60}" 'BEGIN { printf "%d", (a + b + 30) * 1.5 }'
}

for lsm in "${LSMS[@]}"; do
    # CI's time is fixed and the emulated CPU's speed is not (one boot took
    # 600 s on one machine, 2,900 s on CI's): under a deadline the second
    # boot runs only if the first one's figures say it fits.
    if [ "$lsm" = off ] && [ "$LSM" = both ] && [ -n "$DEADLINE" ]; then
        need=$(off_boot_estimate)
        left=$((DEADLINE - EPOCHSECONDS))
        if [ "$need" -gt "$left" ]; then
            say "SKIPPED the BPF-LSM-off boot ($OFF_TESTS): ${left}s left before ALCOVE_VM_DEADLINE, and the first boot's figures say it needs ~${need}s on this machine; \`scripts/vm-test.sh --lsm off\` runs it alone"
            RESULTS+=("lsm off: SKIPPED, ${left}s left before the deadline, ~${need}s needed")
            continue
        fi
        say "the BPF-LSM-off boot needs ~${need}s by the first boot's figures; ${left}s left before ALCOVE_VM_DEADLINE"
    fi
    boot "$lsm"
done

echo
say "summary ($KVER, init $INIT; console logs in target/vm/logs/):"
printf '  %s\n' "${RESULTS[@]}"
say "guest time: ${GUEST_SECS}s over $BOOTS boot(s); whole harness: $(secs "$T_ALL")s"
exit "$OVERALL"
