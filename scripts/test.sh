#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests, and the integration tests,
# which need root and run for real against this kernel, then again inside a
# cgroup v2 guest booted with Debian's own kernel (scripts/vm-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root test.sh
# umoci and skopeo build the real images the image tests import; zsh and fish
# check the syntax of `alcove completions zsh|fish`; podman (with conmon and
# catatonit), containerd (ctr) and the peer runtimes runc and crun are the
# real callers and peers of alcove-oci's tests (crates/alcove-oci/tests),
# which under ALCOVE_CI=1 fail rather than skip when one is missing;
# PostgreSQL and HAProxy are the shared store and the balancer of the cluster
# tests (crates/alcove/tests/cluster.rs), which fail there too without them;
# Chromium, its driver and selenium run the console's browser test.
alcove_install_packages umoci skopeo zsh fish "${ALCOVE_OCI_PACKAGES[@]}" "${ALCOVE_CLUSTER_PACKAGES[@]}" \
    "${ALCOVE_CONSOLE_PACKAGES[@]}" "${ALCOVE_ACCEL_TEST_PACKAGES[@]}"
alcove_ensure_rust
# CI builds once: incremental caches only cost disk there (a CI machine ran
# out of space with them); a developer's own shell keeps cargo's default.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | sed 's/^/disk: /'
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Includes the short fuzz run (crates/alcove-fuzz/tests/replay.rs: every
# saved corpus and crash input, then seeded mutations); scripts/fuzz.sh is
# the long one, under libFuzzer.
cargo test --workspace --locked
# The same tests on a real cgroup v2 host under systemd: Debian's own kernel
# under QEMU, BPF LSM on and off (scripts/vm-test.sh --help).
if [ "${ALCOVE_SKIP_VM:-}" = 1 ]; then
    echo "SKIPPED scripts/vm-test.sh: ALCOVE_SKIP_VM=1 was given"
else
    scripts/vm-test.sh
fi
