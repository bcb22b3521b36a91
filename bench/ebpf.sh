#!/usr/bin/env bash
# What eBPF monitoring costs: per syscall inside a sandbox (--trace and a
# syscall budget against none), on a real workload (gcc -O2 of a small file,
# interleaved with and without --trace), and for processes outside any sandbox
# while a traced sandbox keeps the per-syscall programs attached.
#
#   bench/ebpf.sh            # ROUNDS=15 by default
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root bench/ebpf.sh
./scripts/setup.sh --no-demo >/dev/null
exec /usr/local/bin/alcove bench ebpf --rounds "${ROUNDS:-15}" --probe /usr/local/bin/alcove-probe
