#!/usr/bin/env bash
# alcove-accel's CPU path against numpy and PyTorch, in one run (issue 18;
# bench/accel_cpu.py does the measuring):
#
#   1. square products, interleaved: ROUNDS rounds; in each, every (type, n)
#      runs its contenders in a rotated order, each one warm-up run then R
#      timed runs (R from 100 at n<=128 down to 5 at n=4096):
#        f32  n=64..4096   alcove against numpy (OpenBLAS) and torch.matmul
#        f64  n=64..2048   alcove against numpy
#        bf16 n=256..4096  alcove against torch on bf16 tensors
#        f16  n=256..2048  alcove against torch on half tensors
#      alcove's side is `alcove-accel time` (the product alone, each run
#      timed in the process with the operands already in memory); numpy's and
#      torch's are time.perf_counter around `a @ b` / torch.matmul(a, b)
#      (inference mode) on operands already of the type. All use every CPU.
#      Targets: f32 within 1.10x of numpy from n=256, bf16 within 1.20x of
#      torch's bf16.
#   2. small f32 products (n=8..64) from a sandboxed function, against numpy
#      in the same sandbox: a daemon on 127.0.0.1:0 with its own data dir and
#      two functions deployed with --accel cpu, one handler (accel_cpu.py
#      handler, with clients/python/alcove_accel.py as it is beside it):
#        mm-local    numpy importable (the venv bound in read-only: serve
#                    --allow-bind, fn deploy --bind): the client runs products
#                    up to 64x64x64 in the handler with numpy, by design;
#        mm-service  `python3 -S`, no site-packages and so no numpy: every
#                    acc.matmul goes through the service (the memfd, the
#                    request, the reply: the client's whole cost counted).
#      Each times acc.matmul and a bare round trip (acc.info); mm-local also
#      numpy's a @ b. Where the sandbox's python cannot load the venv's numpy
#      (another minor version), numpy is timed on the host and the output
#      says so. Target: no slower than numpy, call overhead included.
# Medians with the p10-p90 spread; ratios of the medians; GFLOP/s of the
# medians. Raw samples as JSON and this report under $OUT.
#
#   bench/accel-cpu.sh                       # about 4 minutes once the venv is made
#   QUICK=1 bench/accel-cpu.sh               # one round, fewer sizes: a smoke run
#   ROUNDS=9 SERVICE=0 bench/accel-cpu.sh    # products only (needs no root)
#   PRODUCTS=0 bench/accel-cpu.sh            # the sandboxed function only
#   ALCOVE_ACCEL_BIN=... ALCOVE_BIN=... bench/accel-cpu.sh
#
# Binaries: ALCOVE_ACCEL_BIN (default target/release/alcove-accel, built with
# `cargo build --release --locked -p alcove-accel` when missing) and, for 2,
# ALCOVE_BIN (default target/x86_64-unknown-linux-gnu/release/alcove, the
# static build setup.sh makes, built when missing). The daemon runs
# alcove-accel from beside its own executable, so both are copied into one
# temporary directory and the daemon started from there: the service is the
# alcove-accel measured in 1, never an installed one.
#
# Python: numpy and torch from PyPI in a venv at $ALCOVE_BENCH_VENV (default
# /var/tmp/alcove-bench-venv), made on first use and reused (torch brings its
# CUDA libraries: ~3 GB). Without torch, its columns are left out, and said so.
#
# Part 2 needs root. Asserts nothing: it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/alcove-accel-cpu}
SERVICE=${SERVICE:-1}
VENV=${ALCOVE_BENCH_VENV:-/var/tmp/alcove-bench-venv}
ACCEL_BIN=${ALCOVE_ACCEL_BIN:-target/release/alcove-accel}
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p' || true)
ALCOVE_BIN=${ALCOVE_BIN:-target/${target:-x86_64-unknown-linux-gnu}/release/alcove}
if [ "$SERVICE" = 1 ]; then
    source scripts/packages.sh
    alcove_require_root "bench/accel-cpu.sh (SERVICE=0 runs the products alone)"
fi
mkdir -p "$OUT"

work=$(mktemp -d /var/tmp/alcove-accelbench.XXXXXX)
daemon=
cleanup() {
    [ -z "$daemon" ] || { kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x "$ACCEL_BIN" ]; then
    echo "building alcove-accel (release, a few minutes)"
    cargo build --release --locked -p alcove-accel
fi
ACCEL_BIN=$(realpath "$ACCEL_BIN")
if [ "$SERVICE" = 1 ] && [ ! -x "$ALCOVE_BIN" ]; then
    echo "building alcove (release, static, 4-5 minutes)"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "${target:-x86_64-unknown-linux-gnu}" -p alcove
fi

# The venv: numpy is required, torch is tried.
if ! "$VENV/bin/python" -c 'import numpy' 2>/dev/null; then
    echo "making $VENV (numpy and torch from PyPI)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q numpy
fi
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null && [ "${NO_TORCH:-0}" != 1 ]; then
    "$VENV/bin/pip" install -q torch ||
        echo "PyTorch could not be installed in $VENV: the torch columns will be missing (NO_TORCH=1 skips the attempt)"
fi
PY=$VENV/bin/python

exec > >(tee "$OUT/report.txt") 2>&1
if [ "${PRODUCTS:-1}" = 1 ]; then
    echo "== 1. square products on the CPU: alcove-accel, numpy, PyTorch (interleaved) =="
    ACCEL_BIN=$ACCEL_BIN "$PY" bench/accel_cpu.py products
fi

if [ "$SERVICE" = 1 ]; then
    echo
    echo "== 2. small f32 products from a sandboxed function: in the handler and through the accelerator service =="
    # Both binaries in one directory: the daemon starts the alcove-accel beside it.
    mkdir -p "$work/bin" "$work/fn"
    cp "$ALCOVE_BIN" "$work/bin/alcove"
    cp "$ACCEL_BIN" "$work/bin/alcove-accel"
    cp bench/accel_cpu.py clients/python/alcove_accel.py "$work/fn/"
    printf 'bench-token-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/token"
    chmod 600 "$work/token"
    "$work/bin/alcove" serve --listen 127.0.0.1:0 --data-dir "$work/data" --token-file "$work/token" \
        --allow-bind "$VENV" 2> "$work/daemon.log" &
    daemon=$!
    for _ in $(seq 100); do
        grep -q 'serving http://' "$work/daemon.log" && break
        sleep 0.1
    done
    addr=$(sed -n 's/.*serving http:\/\/\([^ ]*\).*/\1/p' "$work/daemon.log" | head -n 1)
    [ -n "$addr" ] || { cat "$work/daemon.log"; exit 1; }
    echo "alcove: $ALCOVE_BIN ($("$work/bin/alcove" --version)), daemon at $addr, its alcove-accel a copy of $ACCEL_BIN"
    # The handler runs the host's /usr/bin/python3; the venv's numpy loads
    # there only if it was built for the same Python minor version.
    bind=()
    host_py=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv_py=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$host_py" = "$venv_py" ]; then
        bind=(--bind "$VENV:/venv" --env "PYTHONPATH=/venv/lib/python$venv_py/site-packages")
    else
        echo "the venv's Python is $venv_py and the sandbox's /usr/bin/python3 is $host_py: numpy is not bound in"
    fi
    deploy() {   # name, handler, flags...
        local name=$1 handler=$2; shift 2
        ALCOVE_SERVER=http://$addr ALCOVE_TOKEN_FILE=$work/token "$work/bin/alcove" fn deploy "$name" \
            --handler "$handler" --code "$work/fn" --accel cpu --memory 1G --timeout 5m "$@" >/dev/null
    }
    deploy mm-local '/usr/bin/python3 /fn/accel_cpu.py handler' "${bind[@]}"
    deploy mm-service '/usr/bin/python3 -S /fn/accel_cpu.py handler'
    ALCOVE_SERVER=http://$addr ALCOVE_TOKEN=$(cat "$work/token") FN_LOCAL=mm-local FN_SERVICE=mm-service \
        "$PY" bench/accel_cpu.py service
fi
echo
echo "raw samples: $OUT/*.json; this report: $OUT/report.txt"
