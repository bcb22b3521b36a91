# shellcheck shell=bash
# Sourced by setup.sh and test.sh: installs the Debian packages alcove's build
# and tests need, only those missing.

alcove_require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$1: run as root: alcove creates namespaces, cgroups and mounts" >&2
        exit 1
    fi
}

# gcc links the build; clang, libelf-dev, zlib1g-dev and pkg-config build the
# BPF programs and libbpf; busybox-static gives the tests and benchmark a rootfs;
# iproute2 (ip), util-linux (nsenter) and iptables give outbound agent sandboxes
# their links and NAT; python3, util-linux (setpriv) and iproute2 are used by the tests, which
# under ALCOVE_CI=1 fail rather than skip when one is missing; curl fetches
# rustup if needed; libdnnl2 (oneDNN) is what the accelerator multiplies bf16
# with on AMX/AVX512-BF16 CPUs (loaded at run time: without it bf16 runs as f32);
# runsc (gVisor) is the runtime of the gVisor isolation tier (--isolation gvisor).
ALCOVE_PACKAGES=(gcc libc6-dev clang libelf-dev zlib1g-dev pkg-config busybox-static util-linux procps python3 iproute2 iptables ca-certificates curl libdnnl2 runsc)

# What alcove-oci's tests and bench/oci.sh drive: podman 4 (through conmon;
# catatonit for --init), containerd 1.6 with ctr, the peer runtimes runc and
# crun, and umoci to build the OCI image containerd imports.
ALCOVE_OCI_PACKAGES=(podman conmon catatonit containerd runc crun umoci)

# What the cluster tests (crates/alcove/tests/cluster.rs) and bench/cluster.sh
# run daemons against and behind: PostgreSQL 15, the shared store, and HAProxy,
# the load balancer in front.
ALCOVE_CLUSTER_PACKAGES=(postgresql haproxy)

# What the accelerator's function test (crates/alcove/tests/accel.rs) checks
# small products against: numpy, with which the Python client keeps them in
# the function's own process.
ALCOVE_ACCEL_TEST_PACKAGES=(python3-numpy)

# What the console's browser test (crates/alcove/tests/console.rs) drives:
# headless Chromium through its WebDriver, from Python's selenium.
ALCOVE_CONSOLE_PACKAGES=(chromium chromium-driver python3-selenium)

alcove_install_packages() {
    local missing=() p
    for p in "${ALCOVE_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Puts a Rust toolchain of at least the workspace's rust-version on PATH.
alcove_ensure_rust() {
    export PATH="$HOME/.cargo/bin:$PATH"
    local want=1.82
    if command -v cargo >/dev/null 2>&1; then
        local have
        have=$(rustc --version | awk '{print $2}')
        if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" = "$want" ]; then
            return
        fi
        echo "rustc $have is older than $want; installing a newer toolchain with rustup"
    fi
    if ! curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt >/dev/null; then
        echo "cannot install Rust: https://sh.rustup.rs is unreachable. Install Rust $want or newer (https://rustup.rs) and run this again." >&2
        exit 1
    fi
}
