#!/usr/bin/env bash
# The GPU half of alcove-accel, for a machine with an NVIDIA GPU (driver and
# cuBLAS installed). It builds nothing: it runs an alcove-accel binary built
# elsewhere (carry target/release/alcove-accel), in under five minutes:
#   1. what it finds (devices and the calibrated cost model),
#   2. GPU results against the CPU executor (f32, f16, bf16, batched, ReLU),
#   3. CPU and GPU times from tiny to large products, the model's choice,
#      the regret (chosen / best) and the crossover size,
#   4. alcove's GPU path end to end (host buffers in and out) against the
#      same product in PyTorch (host tensors -> .cuda() -> matmul -> .cpu()),
#      when PyTorch is installed.
#
#   bench/gpu.sh [ALCOVE_ACCEL]      # results also under $OUT (default /tmp/alcove-gpu)
set -uo pipefail
BIN=${1:-target/release/alcove-accel}
OUT=${OUT:-/tmp/alcove-gpu}
mkdir -p "$OUT"
step() { echo; echo "== $* =="; }

step "CUDA libraries"
# alcove-accel (cudarc, built against CUDA 12.8) opens cuBLAS and NVRTC by
# the names CUDA 12 gives them: libcublas.so, libcublas.so.12, ... A machine
# with only another major version (CUDA 13's libcublas.so.13, from the
# toolkit or from PyTorch's nvidia-* wheels) has none of those names, so the
# newest library found is linked under the unversioned name in a directory
# of our own, put first on the library path with the directories found.
links=$(mktemp -d /tmp/alcove-cudalibs.XXXXXX)
roots=(/usr/local /usr/lib /usr/lib64 /opt)
sites=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) && roots+=($sites)
dirs=
wanted=(cublas cublasLt nvrtc)
# The driver is normally on the loader's path already; look for it only if not.
python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null || wanted+=(cuda)
for lib in "${wanted[@]}"; do
    found=$(find "${roots[@]}" -maxdepth 9 -name "lib$lib.so*" -not -path '*/stubs/*' 2>/dev/null |
        grep -E "/lib$lib\.so(\.[0-9]+)*$" | sort -V | tail -n 1)
    if [ -z "$found" ]; then
        echo "lib$lib.so: not found under ${roots[*]}"
        continue
    fi
    ln -sf "$found" "$links/lib$lib.so"
    dirs=$dirs:$(dirname "$found")
    echo "lib$lib.so -> $found"
done
export LD_LIBRARY_PATH=$links$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step "device"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found") | tee "$OUT/device.txt"
step "alcove-accel info"
timeout 90 "$BIN" info | tee "$OUT/info.txt"
step "GPU against CPU"
timeout 120 "$BIN" check | tee "$OUT/check.txt"
check_rc=${PIPESTATUS[0]}
step "f32 products, CPU vs GPU, choice and regret"
timeout 150 "$BIN" bench --max 16384 --json > "$OUT/bench-f32.json"
python3 - "$OUT/bench-f32.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"{'n':>6} {'cpu ms':>11} {'gpu ms':>10} {'choice':>6} {'regret':>7}")
for r in b["rows"]:
    g = "-" if r["gpu_ms"] is None else f"{r['gpu_ms']:.3f}"
    print(f"{r['n']:>6} {r['cpu_ms']:>11.3f} {g:>10} {r['choice']:>6} {r['regret']:>7.3f}")
cross = next((r["n"] for r in b["rows"] if r["gpu_ms"] is not None and r["gpu_ms"] < r["cpu_ms"]), None)
print(f"mean regret {b['mean_regret']:.3f} (target <= 1.05); crossover (smallest n where the GPU wins): {cross}")
PY
step "PyTorch on the same products (f32, host -> GPU -> host)"
python3 - "$OUT/bench-f32.json" <<'PY' | tee "$OUT/torch.txt"
import json, sys, time
try:
    import torch
except ImportError:
    print("PyTorch is not installed here: comparison not run")
    sys.exit(0)
if not torch.cuda.is_available():
    print("PyTorch sees no GPU: comparison not run")
    sys.exit(0)
rows = {r["n"]: r for r in json.load(open(sys.argv[1]))["rows"]}
print(f"{'n':>6} {'alcove ms':>10} {'torch ms':>10} {'alcove/torch':>12}")
for n in (2048, 4096, 8192, 16384):
    if n not in rows or rows[n]["gpu_ms"] is None:
        continue
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        c = (a.cuda() @ b.cuda()).cpu()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    ours = rows[n]["gpu_ms"]
    print(f"{n:>6} {ours:>10.2f} {best * 1e3:>10.2f} {ours / (best * 1e3):>12.2f}   (target <= 1.3)")
PY
echo
echo "results in $OUT"
exit "$check_rc"
