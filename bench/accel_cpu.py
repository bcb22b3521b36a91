"""The measuring half of bench/accel-cpu.sh (see there). Three modes:

    accel_cpu.py products   square products: alcove-accel's CPU path, numpy and
                            PyTorch on the CPU, interleaved, in one process
                            (alcove-accel runs as a child, timing itself)
    accel_cpu.py service    small products from sandboxed functions, by invoking
                            the two bench/accel-cpu.sh deployed
    accel_cpu.py handler    their handler, inside the sandbox: the standard
                            library, alcove_accel.py beside it, and numpy when
                            the sandbox can import it

Every figure is a median over all rounds with the p10-p90 spread; ratios are
ratios of medians. Raw samples go to $OUT as JSON."""
import json
import os
import statistics
import subprocess
import sys
import time

ROUNDS = int(os.environ.get("ROUNDS", "1" if os.environ.get("QUICK") == "1" else "5"))
QUICK = os.environ.get("QUICK") == "1"
OUT = os.environ.get("OUT", "/tmp/alcove-accel-cpu")

# (sizes, peers) per element type; alcove-accel is always the first contender.
PRODUCTS = {
    "f32": ([64, 128, 256, 512, 1024, 2048, 4096], ["numpy", "torch"]),
    "f64": ([64, 256, 1024, 2048], ["numpy"]),
    "bf16": ([256, 512, 1024, 2048, 4096], ["torch"]),
    "f16": ([256, 1024, 2048], ["torch"]),
}
QUICK_SIZES = {"f32": [64, 256, 1024], "f64": [256], "bf16": [256, 1024], "f16": [256]}
# The written targets (issue 18): (peer, ratio of medians at most, from n).
TARGETS = {"f32": ("numpy", 1.10, 256), "bf16": ("torch", 1.20, 0)}


REPS = ((128, 100), (256, 50), (512, 20), (1024, 10), (2048, 8))


def reps_for(n):
    """Timed runs per contender per round: a round stays short at n=4096
    (about half a second a product on two cores) and small sizes get
    enough samples for a steady median."""
    for limit, reps in REPS:
        if n <= limit:
            return reps
    return 5


def stats(xs):
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0], xs[-1]
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return statistics.median(xs), q[0], q[-1]


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def settle(limit=0.5):
    """Waits until this process's threads stop spinning: OpenBLAS's workers
    busy-wait for ~0.1 s after a call (measured: one core's worth), which on
    two cores would take half the machine from whichever contender runs
    next. Returns at the first quiet 20 ms."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        c = cpu_seconds()
        time.sleep(0.02)
        if cpu_seconds() - c < 0.002:
            return


# --- 1. square products ----------------------------------------------------


def numpy_info(np):
    blas = "?"
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{deps.get('name')} {deps.get('version')}"
        if deps.get("openblas configuration"):
            blas += f" ({deps['openblas configuration']})"
    except Exception as e:  # older numpy: no dicts mode
        blas = f"(show_config: {e})"
    threads, core = "?", "?"
    # numpy's wheel bundles OpenBLAS with prefixed symbols; ask it directly
    # (its configuration names the build's base target, not the kernels
    # chosen at run time: the core name does).
    import ctypes
    import glob
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
    for lib in libs:
        try:
            so = ctypes.CDLL(lib)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            if hasattr(so, f"{prefix}openblas_get_num_threads{suffix}"):
                threads = str(getattr(so, f"{prefix}openblas_get_num_threads{suffix}")())
                corename = getattr(so, f"{prefix}openblas_get_corename{suffix}", None)
                if corename is not None:
                    corename.restype = ctypes.c_char_p
                    core = corename().decode()
                break
    return blas, threads, core


class Contenders:
    def __init__(self, accel_bin):
        self.accel = accel_bin
        self.paths = {}
        self.errors = {}
        import numpy
        self.np = numpy
        try:
            import torch
            torch.set_grad_enabled(False)
            self.torch = torch
        except ImportError as e:
            self.torch = None
            self.torch_why = str(e)

    def alcove(self, dtype, n, reps):
        p = subprocess.run([self.accel, "time", "--dtype", dtype, "--sizes", str(n), "--reps", str(reps)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(p.stderr.strip() or f"alcove-accel exited {p.returncode}")
        out = json.loads(p.stdout)
        # Each run is a new process, which tunes oneDNN afresh: keep every path seen.
        seen = self.paths.setdefault(dtype, [])
        if out["path"] not in seen:
            seen.append(out["path"])
        return out["results"][0]["seconds"]

    def operands(self, lib, dtype, n):
        if lib == "numpy":
            rng = self.np.random.default_rng(n)
            t = {"f32": self.np.float32, "f64": self.np.float64}[dtype]
            return rng.standard_normal((n, n)).astype(t), rng.standard_normal((n, n)).astype(t)
        torch = self.torch
        g = torch.Generator().manual_seed(n)
        t = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
        # Converted before timing: alcove's operands are already of the type too.
        return torch.randn(n, n, generator=g).to(t), torch.randn(n, n, generator=g).to(t)

    def peer(self, lib, dtype, n, reps):
        a, b = self.operands(lib, dtype, n)
        if lib == "numpy":
            def f():
                return a @ b
        else:
            matmul = self.torch.matmul

            def f():
                return matmul(a, b)
        ctx = self.torch.inference_mode() if lib == "torch" else _Null()
        with ctx:
            f()  # warm-up, as alcove-accel does one
            xs = []
            for _ in range(reps):
                t = time.perf_counter()
                f()
                xs.append(time.perf_counter() - t)
        return xs


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def products():
    accel = os.environ["ACCEL_BIN"]
    c = Contenders(accel)
    np = c.np
    blas, blas_threads, blas_core = numpy_info(np)
    busy = busy_share()
    print(f"host: {os.cpu_count()} CPUs; {cpu_model()}; load average {load()}; "
          f"CPUs busy {busy:.0%} in the second before the start")
    if busy > 0.1:
        print("WARNING: something else is running: with every contender on every CPU, "
              "another process's time slices show up as spikes in the p90s and in the medians")
    print(f"alcove-accel: {accel}")
    print(f"numpy {np.__version__}: BLAS {blas}; kernels for {blas_core}, {blas_threads} threads")
    if c.torch is not None:
        t = c.torch
        cap = getattr(getattr(t.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
        threads = f"{t.get_num_threads()} threads"
        if t.get_num_threads() != os.cpu_count():
            # torch counts physical cores; the others use every logical CPU.
            t.set_num_threads(os.cpu_count())
            threads += f", set to {t.get_num_threads()} as the others use"
        import re
        built = t.__config__.show()
        blas_t = (re.findall(r"BLAS_INFO=([^,\s]*)", built) or ["?"])[0]
        dnnl = (re.findall(r"MKL-DNN (v[0-9.]+)", built) or [""])[0]
        print(f"torch {t.__version__}: {threads}, CPU capability {cap}, BLAS {blas_t}, "
              f"oneDNN {dnnl + ' ' if dnnl else ''}{'on' if t.backends.mkldnn.is_available() else 'off'}")
    else:
        print(f"torch: NOT INSTALLED ({c.torch_why}): its columns are left out")
    print(f"alcove-accel: rayon (gemm crate) and oneDNN's OpenMP use every CPU ({os.cpu_count()})")

    plan = []
    for dtype, (sizes, peers) in PRODUCTS.items():
        if QUICK:
            sizes = QUICK_SIZES[dtype]
        if c.torch is None:
            peers = [p for p in peers if p != "torch"]
        for n in sizes:
            plan.append((dtype, n, ["alcove"] + peers))
    samples = {(d, n, who): [] for d, n, whos in plan for who in whos}
    print(f"\n{ROUNDS} round(s); in each, every (type, n) runs its contenders in a rotated order, "
          f"each one warm-up run then R timed runs (R by size: {', '.join(f'n<={l}: {r}' for l, r in REPS)}, else {reps_for(1 << 30)})")
    started = time.perf_counter()
    for r in range(ROUNDS):
        t0 = time.perf_counter()
        for j, (dtype, n, whos) in enumerate(plan):
            k = (r + j) % len(whos)
            for who in whos[k:] + whos[:k]:
                if (dtype, who) in c.errors:
                    continue
                reps = reps_for(n)
                try:
                    xs = c.alcove(dtype, n, reps) if who == "alcove" else c.peer(who, dtype, n, reps)
                except Exception as e:
                    c.errors[(dtype, who)] = str(e)
                    print(f"  {who} {dtype} n={n}: failed, left out from here on: {e}", file=sys.stderr)
                    continue
                samples[(dtype, n, who)].extend(xs)
                settle()
        print(f"  round {r + 1}/{ROUNDS}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"  all rounds: {time.perf_counter() - started:.1f} s; load average now {load()}")

    rows = []
    for dtype, (sizes, peers) in PRODUCTS.items():
        present = [(n, whos) for d, n, whos in plan if d == dtype]
        if not present:
            continue
        peers = present[0][1][1:]
        target = TARGETS.get(dtype)
        print(f"\n{dtype}: ms per product, median (p10-p90); GFLOP/s of the medians")
        print(f"  alcove path: {'; '.join(c.paths.get(dtype, ['(did not run)']))}")
        for (d, who), why in c.errors.items():
            if d == dtype:
                print(f"  {who}: FAILED: {why}")
        head = f"  {'n':>5}  {'alcove':>24}"
        for p in peers:
            head += f"  {p:>24}"
        for p in peers:
            head += f"  {'alcove/' + p:>13}"
        head += f"  {'GFLOP/s ' + '/'.join(['alcove'] + peers):>28}"
        if target:
            head += f"  target: alcove/{target[0]} <= {target[1]:.2f}" + (f" at n >= {target[2]}" if target[2] else "")
        print(head)
        for n, whos in present:
            med = {}
            line = f"  {n:>5}"
            for who in whos:
                xs = samples[(dtype, n, who)]
                if xs:
                    m, lo, hi = stats(xs)
                    med[who] = m
                    line += f"  {fmt_ms(m) + ' (' + fmt_ms(lo) + '-' + fmt_ms(hi) + ')':>24}"
                else:
                    line += f"  {'-':>24}"
            for p in peers:
                ratio = med["alcove"] / med[p] if "alcove" in med and p in med else None
                line += f"  {ratio:>12.2f}x" if ratio else f"  {'-':>13}"
            gf = ["%.0f" % (2 * n ** 3 / med[w] / 1e9) if w in med else "-" for w in whos]
            line += f"  {'/'.join(gf):>28}"
            verdict = None
            if target and target[0] in med and "alcove" in med and n >= target[2]:
                ratio = med["alcove"] / med[target[0]]
                verdict = "met" if ratio <= target[1] else "MISSED"
                line += f"  {verdict} ({ratio:.3f}x)"
            elif target:
                line += "  -"
            print(line)
            rows.append({"dtype": dtype, "n": n, "reps_per_round": reps_for(n), "verdict": verdict,
                         "median_s": med, "seconds": {w: samples[(dtype, n, w)] for w in whos}})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "products.json"), "w") as f:
        json.dump({"rounds": ROUNDS, "quick": QUICK, "paths": c.paths, "numpy_blas": blas,
                   "torch": None if c.torch is None else c.torch.__version__,
                   "errors": {f"{d} {w}": e for (d, w), e in c.errors.items()}, "rows": rows}, f)


def fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def busy_share(seconds=1.0):
    """The share of all CPUs' time spent outside idle over `seconds` (from
    /proc/stat): the load average also remembers the last minutes."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # all, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
        return 1 - (i1 - i0) / max(t1 - t0, 1)
    except OSError:
        return 0.0


def load():
    """The 1, 5 and 15 minute load averages: anything else running skews every figure."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


# --- 2. small products from a sandboxed function ----------------------------
#
# The Python client runs products up to 64x64x64 in the caller's process when
# numpy is importable there (a service call costs more than such a product),
# and calls the service otherwise. Two functions, the same handler, show both:
# FN_LOCAL sees the venv's numpy (bound in), FN_SERVICE runs `python3 -S`
# (no site-packages: no numpy, whatever the host has) so every call goes
# through the service.

SIZES_SMALL = [8, 16, 32, 64]


def operand_values(n, seed):
    return [((i * 7 + seed) % 97 - 48) / 97.0 for i in range(n * n)]


def naive(a, b, n):
    return [sum(a[i * n + p] * b[p * n + j] for p in range(n)) for i in range(n) for j in range(n)]


def time_small(sizes, calls, rotate=0, acc=None, np=None):
    """Per n, `calls` timed calls of each kind, the kinds in an order rotated
    by `rotate`, after a warm-up of each. Kinds: accel (acc.matmul: the whole
    client call; numpy arrays where numpy is importable, as a numpy user
    passes them, else array('f')), info (a bare request and reply on the
    same socket, no memfd, a small JSON answer) and numpy (a @ b on
    ndarrays). Also per accel call: where it ran (acc.last) and the
    service's own compute time."""
    import array
    out = {}
    for n in sizes:
        av, bv = operand_values(n, 1), operand_values(n, 5)
        if np is not None:
            A = np.array(av, dtype=np.float32).reshape(n, n)
            B = np.array(bv, dtype=np.float32).reshape(n, n)
            a, b = A, B
        else:
            a, b = array.array("f", av), array.array("f", bv)
        kinds = {}
        if acc is not None:
            kinds["accel"] = lambda: acc.matmul(a, b, n, n, n)
            kinds["info"] = acc.info
        if np is not None:
            kinds["numpy"] = lambda: A @ B
        entry = {"seconds": {k: [] for k in kinds}, "service_seconds": [], "ran": None, "max_abs_error": None}
        if acc is not None:
            got = acc.matmul(a, b, n, n, n)
            got = got.ravel().tolist() if np is not None and isinstance(got, np.ndarray) else list(got)
            want = (A @ B).ravel().tolist() if np is not None else naive(a, b, n)
            entry["max_abs_error"] = max(abs(x - y) for x, y in zip(got, want))
            entry["ran"] = "in the caller (numpy)" if acc.last.get("local") else f"service, {acc.last.get('device')}"
        for f in kinds.values():  # warm: caches, the connection, BLAS threads
            for _ in range(50):
                f()
        names = list(kinds)
        k = rotate % max(len(names), 1)
        for name in names[k:] + names[:k]:
            f, xs = kinds[name], entry["seconds"][name]
            for _ in range(calls):
                t = time.perf_counter()
                f()
                xs.append(time.perf_counter() - t)
                if name == "accel":
                    entry["service_seconds"].append(acc.last.get("seconds"))
        out[n] = entry
    return out


def socket_floor(cpus, trips=3000):
    """Median round trip of a small message between two host processes over
    a SOCK_SEQPACKET pair (what a service call rides on), each pinned: the
    floor under the service's round trip, with both on one CPU or not."""
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            a.close()
            os.sched_setaffinity(0, {cpus[1]})
            while m := b.recv(64):
                b.send(m)
        finally:
            os._exit(0)
    b.close()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    xs = []
    try:
        for _ in range(trips):
            t = time.perf_counter()
            a.send(b"x")
            a.recv(64)
            xs.append(time.perf_counter() - t)
    finally:
        a.close()
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, before)
    return statistics.median(xs)


def handler():
    """Runs in the sandbox; the request names sizes, calls and the rotation."""
    req = json.loads(sys.stdin.read() or "{}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import alcove_accel
    acc = alcove_accel.connect()
    try:
        import numpy as np
        numpy_where = f"numpy {np.__version__} ({os.path.dirname(np.__file__)})"
    except ImportError as e:
        np, numpy_where = None, f"none ({e})"
    results = time_small(req["sizes"], req["calls"], req.get("rotate", 0), acc=acc, np=np)
    json.dump({"python": sys.version.split()[0], "numpy": numpy_where, "results": results}, sys.stdout)


def service():
    import http.client
    server = os.environ["ALCOVE_SERVER"].removeprefix("http://")
    token = os.environ["ALCOVE_TOKEN"]
    functions = [os.environ["FN_LOCAL"], os.environ["FN_SERVICE"]]
    rounds, calls = (2, 200) if QUICK else (10, 500)
    conn = http.client.HTTPConnection(server, timeout=600)

    def invoke(fn, body):
        conn.request("POST", f"/v1/functions/{fn}/invoke", body=json.dumps(body).encode(),
                     headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        raw = r.read()
        if r.status != 200:
            raise RuntimeError(f"invoking {fn}: {r.status} {raw[:2000]!r}")
        return json.loads(raw)

    t = time.perf_counter()
    invoke(functions[1], {"sizes": [8], "calls": 1})  # starts alcove-accel serve (it calibrates once)
    first = time.perf_counter() - t
    # samples[fn][n][kind] over all rounds; the two functions alternate.
    samples = {fn: {n: {} for n in SIZES_SMALL} for fn in functions}
    service_s = {n: [] for n in SIZES_SMALL}
    per_invocation = {fn: {n: {} for n in SIZES_SMALL} for fn in functions}
    meta = {}
    for r in range(rounds):
        for fn in functions[r % 2:] + functions[:r % 2]:
            got = invoke(fn, {"sizes": SIZES_SMALL, "calls": calls, "rotate": r})
            meta[fn] = {"python": got["python"], "numpy": got["numpy"],
                        "ran": {int(n): v["ran"] for n, v in got["results"].items()},
                        "max_abs_error": {int(n): v["max_abs_error"] for n, v in got["results"].items()}}
            for n, v in got["results"].items():
                for kind, xs in v["seconds"].items():
                    samples[fn][int(n)].setdefault(kind, []).extend(xs)
                    if xs:
                        per_invocation[fn][int(n)].setdefault(kind, []).append(statistics.median(xs))
                if fn == functions[1]:
                    service_s[int(n)].extend(s for s in v["service_seconds"] if s is not None)
    local, remote = functions
    numpy_samples = {n: samples[local][n].get("numpy") for n in SIZES_SMALL}
    where = "in the sandbox"
    if not all(numpy_samples.values()):
        import numpy
        where = f"ON THE HOST (numpy {numpy.__version__}; the sandbox could not import it)"
        host = {}
        for r in range(rounds):
            for n, v in time_small(SIZES_SMALL, calls, r, np=numpy).items():
                host.setdefault(n, []).extend(v["seconds"]["numpy"])
        numpy_samples = host

    print(f"first invocation (starts alcove-accel serve, which calibrates): {first:.2f} s; load average {load()}")
    for fn in functions:
        m = meta[fn]
        print(f"function {fn}: python {m['python']}, numpy: {m['numpy']}; acc.matmul ran: "
              + ", ".join(sorted(set(m["ran"].values()))))
    print(f"numpy timed {where}")
    print(f"{rounds} invocations of each function, alternating; in each, {calls} timed calls per kind and n "
          "(after 50 untimed), kinds in a rotated order. us per call: median (p10-p90)")
    us = lambda x: f"{x * 1e6:.1f}"
    cell = lambda xs: (lambda s: f"{us(s[0])} ({us(s[1])}-{us(s[2])})")(stats(xs))
    print(f"  {'n':>3}  {'numpy a @ b':>20}  {'acc.matmul, numpy there':>24}  {'ratio':>6}"
          f"  {'acc.matmul via service':>23}  {'ratio':>6}  {'compute':>7}  {'round trip':>20}"
          f"  {'target <= numpy: numpy there, via service':>41}  {'max |err|':>9}")
    def verdict(ratio):
        return "-" if ratio is None else "met" if ratio <= 1.0 else "MISSED"

    rows = []
    for n in SIZES_SMALL:
        npm = stats(numpy_samples[n])[0]
        loc = samples[local][n].get("accel", [])
        rem = samples[remote][n].get("accel", [])
        rtt = samples[remote][n].get("info", [])
        comp = statistics.median(service_s[n]) if service_s[n] else None
        r_loc = stats(loc)[0] / npm if loc else None
        r_rem = stats(rem)[0] / npm if rem else None
        err = max((meta[f]["max_abs_error"].get(n) or 0) for f in functions)
        print(f"  {n:>3}  {cell(numpy_samples[n]):>20}  {cell(loc) if loc else '-':>24}  {r_loc:>5.1f}x"
              f"  {cell(rem) if rem else '-':>23}  {r_rem:>5.1f}x  {us(comp) if comp else '-':>7}"
              f"  {cell(rtt) if rtt else '-':>20}  {verdict(r_loc) + ', ' + verdict(r_rem):>41}"
              f"  {err:>9.1e}")
        rows.append({"n": n, "numpy_median_s": npm, "local_ratio": r_loc, "service_ratio": r_rem,
                     "service_compute_median_s": comp})
    print("  (ratio: of numpy's median. compute: the service's own time for the product, from its reply;"
          " round trip: acc.info on the same socket, no memfd)")
    # A round trip's cost depends on where the scheduler puts the handler and
    # the service's worker (one CPU or two): shown per invocation, with the
    # host's floor for both cases.
    cpus = sorted(os.sched_getaffinity(0))
    floor = {"same CPU": socket_floor((cpus[0], cpus[0]))}
    if len(cpus) > 1:
        floor["two CPUs"] = socket_floor((cpus[0], cpus[1]))
    print("  host floor, a SOCK_SEQPACKET round trip between two pinned processes (us): "
          + ", ".join(f"{k} {us(v)}" for k, v in floor.items()))
    for kind, what in (("accel", "acc.matmul via service, n=8"), ("info", "round trip (info), n=8")):
        xs = per_invocation[remote][SIZES_SMALL[0]].get(kind, [])
        print(f"  {what}, median of each invocation in turn (us): {', '.join(us(x) for x in xs)}")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "service.json"), "w") as f:
        json.dump({"rounds": rounds, "calls": calls, "first_invocation_s": first, "numpy_where": where,
                   "functions": meta, "rows": rows, "samples": samples, "numpy": numpy_samples,
                   "per_invocation_medians": per_invocation, "service_seconds": service_s,
                   "socket_floor_s": floor}, f)


if __name__ == "__main__":
    {"products": products, "service": service, "handler": handler}[sys.argv[1]]()
