"""The measuring half of bench/sandboxes.sh (see there). Talks to the daemon
with http.client on one kept-alive connection, reads every NDJSON stream to
its end, and prints medians, the p10-p90 spread and ratios."""
import http.client
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine_probes  # noqa: E402

SERVER = os.environ["ALCOVE_SERVER"].removeprefix("http://")
TOKEN = os.environ["ALCOVE_TOKEN"]
ROUNDS = int(os.environ.get("ROUNDS", "100"))
IDLE = int(os.environ.get("IDLE", "1000"))
BUNDLE = os.environ.get("BUNDLE") or None
OUTBOUND = os.environ.get("OUTBOUND", "1") == "1"  # also time net: outbound creates
DAEMON_PID = int(os.environ["DAEMON_PID"])
# Section 6, the gVisor tier beside the container tier (where runsc is installed).
GVISOR = os.environ.get("GVISOR", "1" if shutil.which("runsc") else "0") == "1"
GVISOR_ROUNDS = int(os.environ.get("GVISOR_ROUNDS", str(min(ROUNDS, 20))))
GVISOR_IDLE = int(os.environ.get("GVISOR_IDLE", "10"))

conn = http.client.HTTPConnection(SERVER, timeout=120)


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Authorization": f"Bearer {TOKEN}"})
    r = conn.getresponse()
    raw = r.read()
    if r.status >= 400:
        raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
    if r.headers.get("content-type", "").startswith("application/x-ndjson"):
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    return json.loads(raw) if raw else None


def ms(f):
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1e3


def exec_true(sid):
    lines = call("POST", f"/v1/sandboxes/{sid}/exec", {"cmd": ["true"]})
    assert lines[-1]["type"] == "exit" and lines[-1]["code"] == 0, lines


class MinimalClient:
    """HTTP/1.1 over one kept-alive socket, its clock stopped at the answer's
    last byte and the answer parsed after: what the daemon's round trip
    costs without the client's own parsing (http.client's, through the
    email package and a chunk line at a time, is ~0.3 ms of Python here;
    even this one's line splitting was ~0.05 ms)."""

    END = b"\r\n0\r\n\r\n"  # an NDJSON answer's last chunk (its lines hold no raw CR LF)

    def __init__(self):
        host, port = SERVER.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path, body):
        """(ms from the request's send to its answer's last byte, the answer's lines)."""
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: alcove\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
        got = b""
        t = time.perf_counter()
        self.sock.sendall(request)
        while not got.endswith(self.END):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"the daemon closed the connection: {got[-300:]!r}")
            got += chunk
        took = (time.perf_counter() - t) * 1e3
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        out = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        return took, [json.loads(line) for line in out.splitlines() if line.strip()]


def curl_execs(sid, n, argv=("true",)):
    """`n` execs of `argv` from curl, one process on one kept-alive
    connection (its own time_total per request, after 10 unrecorded): the
    API's round trip from a client written in C, without Python's share."""
    if not shutil.which("curl"):
        print("  (curl is not installed: its row is left out)")
        return []
    url = f"http://{SERVER}/v1/sandboxes/{sid}/exec"
    out = subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
         "-d", json.dumps({"cmd": list(argv)}), "-w", "\\n%{http_code} %{time_total}\\n"] + [url] * (n + 10),
        capture_output=True, text=True, check=True).stdout
    marks = [line.split() for line in out.splitlines() if line.startswith("200 ")]
    bodies = out.count('"type":"exit","code":0')
    assert len(marks) == n + 10 and bodies == n + 10, (len(marks), bodies, out[-300:])
    return [float(t) * 1e3 for _, t in marks[10:]]


def bare_true_elf():
    """An x86-64 program that only exits 0, with no C library: its start-up
    is the kernel's exec alone (glibc's, CPU detection above all, is not in
    it). 129 bytes: the ELF header, one loadable segment, three instructions."""
    code = bytes.fromhex("b83c00000031ff0f05")  # mov eax, 60 (exit); xor edi, edi; syscall
    base, head = 0x400000, 64 + 56
    size = head + len(code)
    header = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, 0x3E, 1,
                         base + head, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + segment + code


def bare_true_rows(sid, n):
    """The exec round trip of a command without a C library, beside its
    own bare spawn: alcove's share of an exec without the command's libc
    start-up. x86-64 only (the program is machine code)."""
    if os.uname().machine != "x86_64":
        print(f"  (not x86-64 ({os.uname().machine}): the libc-free command's rows are left out)")
        return
    elf = bare_true_elf()
    inside = "/tmp/alcove-bench-bare-true"
    conn.request("PUT", f"/v1/sandboxes/{sid}/files?path={inside}", body=elf,
                 headers={"Authorization": f"Bearer {TOKEN}"})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:300])
    lines = call("POST", f"/v1/sandboxes/{sid}/exec", {"cmd": ["chmod", "755", inside]})
    assert lines[-1].get("code") == 0, lines
    fd, host = tempfile.mkstemp(prefix="alcove-bench-bare-true-")
    try:
        os.write(fd, elf)
        os.fchmod(fd, 0o755)
        os.close(fd)
        curled = curl_execs(sid, n, [inside])
        spawns = [ms(lambda: os.waitpid(os.posix_spawn(host, [host], {}), 0)) for _ in range(n)]
    finally:
        os.unlink(host)
    peer_name[id(spawns)] = "its posix_spawn + waitpid"
    if curled:
        row("  back to back: curl, exec a libc-free true", curled, spawns)
    row("  back to back: posix_spawn + waitpid of it", spawns)


def stats(xs):
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10)
    return statistics.median(xs), q[0], q[-1]


def row(name, xs, peer=None):
    p50, p10, p90 = stats(xs)
    line = f"  {name:<44} p50 {p50:8.3f} ms   (p10 {p10:7.3f}, p90 {p90:8.3f})"
    if peer is not None:
        line += f"   {p50 / stats(peer)[0]:.2f}x of {peer_name[id(peer)]}"
    print(line)
    return p50


peer_name = {}


def floor_true():
    subprocess.run(["true"], check=True)


def runc_true():
    cid = "sbbench-" + uuid.uuid4().hex[:8]
    subprocess.run(["runc", "run", "--bundle", BUNDLE, cid], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024


def gvisor_tier():
    """The same calls in both tiers, interleaved round by round."""
    tiers = {"container": {}, "gvisor": {"isolation": "gvisor"}}
    print(f"\n6. the gVisor tier beside the container tier, interleaved, {GVISOR_ROUNDS} rounds:")
    first = {name: [] for name in tiers}
    for _ in range(GVISOR_ROUNDS):
        for name, body in tiers.items():
            t = time.perf_counter()
            sb = call("POST", "/v1/sandboxes", body)
            exec_true(sb["id"])
            first[name].append((time.perf_counter() - t) * 1e3)
            call("DELETE", f"/v1/sandboxes/{sb['id']}")
    live = {name: call("POST", "/v1/sandboxes", dict(body, timeout_s=3600))["id"] for name, body in tiers.items()}
    rounds = {name: {"exec": [], "code": [], "pause": [], "resume": []} for name in tiers}
    for sid in live.values():
        call("POST", f"/v1/sandboxes/{sid}/code", {"code": "x = 1"})
    for _ in range(GVISOR_ROUNDS):
        for name, sid in live.items():
            r = rounds[name]
            r["exec"].append(ms(lambda: exec_true(sid)))
            r["code"].append(ms(lambda: call("POST", f"/v1/sandboxes/{sid}/code", {"code": "1+1"})))
            r["pause"].append(ms(lambda: call("POST", f"/v1/sandboxes/{sid}/pause")))
            r["resume"].append(ms(lambda: call("POST", f"/v1/sandboxes/{sid}/resume")))
    for sid in live.values():
        call("DELETE", f"/v1/sandboxes/{sid}")
    peer_name[id(first["container"])] = "the container tier"
    row("container: create + exec true", first["container"])
    row("gvisor: create + exec true", first["gvisor"], first["container"])
    for what, label in [("exec", "exec true"), ("code", "run_code 1+1"), ("pause", "pause"), ("resume", "resume")]:
        peer_name[id(rounds["container"][what])] = "the container tier"
        row(f"container: {label}", rounds["container"][what])
        row(f"gvisor: {label}", rounds["gvisor"][what], rounds["container"][what])
    # What an idle gVisor sandbox costs: the host's memory, and its cgroup's charge.
    time.sleep(1)
    avail0 = available()
    ids = [call("POST", "/v1/sandboxes", {"isolation": "gvisor", "timeout_s": 600})["id"] for _ in range(GVISOR_IDLE)]
    time.sleep(2)
    avail1 = available()
    charged = sorted(call("GET", f"/v1/sandboxes/{i}")["usage"].get("memory_bytes") or 0 for i in ids)
    print(f"  {GVISOR_IDLE} idle gVisor sandboxes: host memory each {(avail0 - avail1) / GVISOR_IDLE / 1024 / 1024:.1f} MiB "
          f"(MemAvailable fell {(avail0 - avail1) >> 20} MiB); cgroup charge each, median {charged[len(charged) // 2] / 1024 / 1024:.1f} MiB")
    for i in ids:
        call("DELETE", f"/v1/sandboxes/{i}")


def main():
    if os.environ.get("ONLY") == "gvisor":  # section 6 alone
        return gvisor_tier()
    print(f"rounds: {ROUNDS}, idle sandboxes: {IDLE}")
    # What this host charges any exec, before alcove does anything (bench/machine_probes.py).
    print("\n0. this machine:")
    machine_probes.report()
    # Warm everything once (first start loads what later ones share).
    first = call("POST", "/v1/sandboxes", {})
    exec_true(first["id"])
    call("DELETE", f"/v1/sandboxes/{first['id']}")

    create_first, env_first, fresh_first, floor, crun, removes, outbound = [], [], [], [], [], [], []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        sb = call("POST", "/v1/sandboxes", {})
        exec_true(sb["id"])
        create_first.append((time.perf_counter() - t) * 1e3)
        removes.append(ms(lambda: call("DELETE", f"/v1/sandboxes/{sb['id']}")))
        # From the pool too: its agent is given the environment at the claim.
        t = time.perf_counter()
        sb = call("POST", "/v1/sandboxes", {"env": {"BENCH": "1"}})
        exec_true(sb["id"])
        env_first.append((time.perf_counter() - t) * 1e3)
        call("DELETE", f"/v1/sandboxes/{sb['id']}")
        # A limit is set when the sandbox starts: never from the pool.
        t = time.perf_counter()
        sb = call("POST", "/v1/sandboxes", {"env": {"BENCH": "1"}, "pids": 1024})
        exec_true(sb["id"])
        fresh_first.append((time.perf_counter() - t) * 1e3)
        call("DELETE", f"/v1/sandboxes/{sb['id']}")
        if OUTBOUND:
            t = time.perf_counter()
            sb = call("POST", "/v1/sandboxes", {"net": "outbound", "allow_out": ["example.com"]})
            exec_true(sb["id"])
            outbound.append((time.perf_counter() - t) * 1e3)
            call("DELETE", f"/v1/sandboxes/{sb['id']}")
        floor.append(ms(floor_true))
        if BUNDLE:
            crun.append(ms(runc_true))
    peer_name[id(floor)] = "fork+exec floor"
    peer_name[id(crun)] = "runc run (true)"
    print(f"\n1. create to first exec (`true`), interleaved (ready pool: --sandbox-pool {os.environ.get('SANDBOX_POOL', '2')}):")
    row("alcove: create + exec true", create_first, floor)
    row("alcove: create with env + exec true", env_first, floor)
    row("alcove: create made afresh (pids) + exec true", fresh_first, floor)
    if crun:
        print(f"  {'':<44} {stats(create_first)[0] / stats(crun)[0]:.2f}x of runc run (true)")
        row("runc run of a busybox bundle (true)", crun, floor)
    if outbound:
        row("alcove: create (net outbound) + exec true", outbound, floor)
    row("fork+exec floor (subprocess.run true)", floor)
    row("alcove: remove (kill, wait, teardown)", removes)

    sb = call("POST", "/v1/sandboxes", {"timeout_s": 3600})
    sid = sb["id"]
    execs, lean, floor2, gets, spawns = [], [], [], [], []
    true_path = shutil.which("true") or "/bin/true"
    minimal = MinimalClient()

    def exec_lean():
        took, lines = minimal.post(f"/v1/sandboxes/{sid}/exec", {"cmd": ["true"]})
        assert lines[-1]["type"] == "exit" and lines[-1]["code"] == 0, lines
        return took

    for _ in range(ROUNDS):
        execs.append(ms(lambda: exec_true(sid)))
        lean.append(exec_lean())
        floor2.append(ms(floor_true))
        gets.append(ms(lambda: call("GET", f"/v1/sandboxes/{sid}")))
        spawns.append(ms(lambda: os.waitpid(os.posix_spawn(true_path, [true_path], {}), 0)))
    peer_name[id(floor2)] = "fork+exec floor"
    print("\n2. exec round trip in a live sandbox, over the API:")
    row("alcove: POST exec true, read to exit", execs, floor2)
    row("  the same, minimal HTTP client", lean, floor2)
    row("fork+exec floor", floor2)
    # Its two unavoidable parts, for where the time goes: an API round trip
    # that does no work, and the bare spawn and wait of `true` on the host.
    row("  part: GET the sandbox (HTTP round trip)", gets)
    row("  part: posix_spawn + waitpid of true", spawns)
    # An agent's commands one after another, nothing else between them
    # (above, each exec follows a fork+exec, an http.client call and a spawn).
    burst, burst_spawns = [], []
    for _ in range(ROUNDS):
        burst.append(exec_lean())
    for _ in range(ROUNDS):
        burst_spawns.append(ms(lambda: os.waitpid(os.posix_spawn(true_path, [true_path], {}), 0)))
    peer_name[id(burst_spawns)] = "posix_spawn + waitpid back to back"
    row("  back to back: minimal client, exec true", burst, burst_spawns)
    curled = curl_execs(sid, max(ROUNDS, 100))
    if curled:
        row("  back to back: curl, exec true", curled, burst_spawns)
    row("  back to back: posix_spawn + waitpid", burst_spawns)
    # The same for a command with no C library: what is left is alcove's
    # own share (true's glibc start-up is the command's: CPUID, which glibc
    # runs dozens of times to learn the CPU, exits to the hypervisor in a VM).
    bare_true_rows(sid, max(ROUNDS, 100))

    call("POST", f"/v1/sandboxes/{sid}/code", {"code": "x = 1"})
    code, cold = [], []
    for _ in range(ROUNDS):
        def one():
            lines = call("POST", f"/v1/sandboxes/{sid}/code", {"code": "1+1"})
            assert any(l.get("text") == "2" for l in lines), lines
        code.append(ms(one))
        # This interpreter itself: `python3` from PATH can be a version
        # manager's shell shim (pyenv's added ~55 ms here), not a Python.
        cold.append(ms(lambda: subprocess.run([sys.executable, "-c", "1+1"], check=True)))
    peer_name[id(cold)] = "python3 -c 1+1"
    print("\n3. run_code `1+1`, warm interpreter:")
    row("alcove: POST code 1+1, read to done", code, cold)
    row("python3 -c 1+1 (a fresh interpreter)", cold)

    pauses, resumes = [], []
    for _ in range(ROUNDS):
        pauses.append(ms(lambda: call("POST", f"/v1/sandboxes/{sid}/pause")))
        resumes.append(ms(lambda: call("POST", f"/v1/sandboxes/{sid}/resume")))
    print("\n4. pause and resume (cgroup freezer), over the API:")
    row("alcove: pause", pauses)
    row("alcove: resume", resumes)
    call("DELETE", f"/v1/sandboxes/{sid}")

    fork_rounds = int(os.environ.get("FORK_ROUNDS", str(min(ROUNDS, 50))))
    state = "import os\nblob = bytearray(os.urandom(100 << 20))\nkeys = {i: str(i) for i in range(10000)}"
    sb = call("POST", "/v1/sandboxes", {"timeout_s": 3600, "memory": "1G", "disk": "64M", "forkable": True})
    sid = sb["id"]
    call("POST", f"/v1/sandboxes/{sid}/code", {"code": state})
    rss = call("POST", f"/v1/sandboxes/{sid}/code", {"code": "int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20"})
    rss_mib = next(l["text"] for l in rss if l.get("type") == "result")
    forks, forks_used, files_only, rebuild = [], [], [], []
    for i in range(fork_rounds):
        child = {}
        got = []
        def fork_and_use():
            forks.append(ms(lambda: child.update(call("POST", f"/v1/sandboxes/{sid}/fork", {"memory": True}))))
            got.extend(call("POST", f"/v1/sandboxes/{child['id']}/code", {"code": "len(blob), blob[-1] == blob[-1], len(keys)"}))
        forks_used.append(ms(fork_and_use))
        # The state is there, and the fork's own.
        assert any(l.get("text") == f"({100 << 20}, True, 10000)" for l in got), got
        call("DELETE", f"/v1/sandboxes/{child['id']}")
        plain = {}
        files_only.append(ms(lambda: plain.update(call("POST", f"/v1/sandboxes/{sid}/fork", {}))))
        call("DELETE", f"/v1/sandboxes/{plain['id']}")
        fresh = {}
        def remake():
            fresh.update(call("POST", "/v1/sandboxes", {"timeout_s": 600, "memory": "1G", "disk": "64M"}))
            call("POST", f"/v1/sandboxes/{fresh['id']}/code", {"code": state})
        rebuild.append(ms(remake))
        call("DELETE", f"/v1/sandboxes/{fresh['id']}")
    call("DELETE", f"/v1/sandboxes/{sid}")
    peer_name[id(rebuild)] = "create + rebuild the state"
    print(f"\n4b. fork of a live interpreter holding {rss_mib} MiB resident (100 MiB of random bytes and a dict), {fork_rounds} rounds:")
    row("alcove: POST fork {memory: true}", forks, rebuild)
    row("  the same, and its first run_code after it", forks_used, rebuild)
    row("alcove: POST fork (files only, fresh interpreter)", files_only, rebuild)
    row("create + run the same state-building cell", rebuild)

    if GVISOR:
        gvisor_tier()
    else:
        print("\n6. the gVisor tier: skipped (no runsc on PATH; GVISOR=1 forces it)")

    if IDLE == 0:
        return
    print(f"\n5. {IDLE} idle sandboxes held at once:")
    def daemon_rss():
        for line in open(f"/proc/{DAEMON_PID}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    time.sleep(1)
    avail0, rss0 = available(), daemon_rss()
    ids, t = [], time.perf_counter()
    for i in range(IDLE):
        ids.append(call("POST", "/v1/sandboxes", {"timeout_s": 3600})["id"])
    took = time.perf_counter() - t
    time.sleep(2)
    avail1, rss1 = available(), daemon_rss()
    listed = len(call("GET", "/v1/sandboxes")["sandboxes"])
    exec_true(ids[len(ids) // 2])
    print(f"  created {IDLE} in {took:.1f} s ({took / IDLE * 1e3:.2f} ms each, one at a time); listed {listed}")
    print(f"  host memory each: {(avail0 - avail1) / IDLE / 1024:.0f} KiB (MemAvailable fell {(avail0 - avail1) >> 20} MiB)")
    print(f"  daemon RSS each: {(rss1 - rss0) / IDLE / 1024:.1f} KiB (its RSS {rss0 >> 20} -> {rss1 >> 20} MiB)")
    t = time.perf_counter()
    for i in ids:
        call("DELETE", f"/v1/sandboxes/{i}")
    print(f"  removed all in {time.perf_counter() - t:.1f} s")


main()
