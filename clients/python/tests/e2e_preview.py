"""Port previews end to end (run by crates/alcove/tests/sandboxes.rs against a
real daemon): HTTP and a WebSocket to servers inside a sandbox, through the
daemon's /v1/sandboxes/{id}/ports/{port}/ proxy. Skipped without
$ALCOVE_SERVER."""
import base64
import hashlib
import http.client
import os
import re
import signal
import socket
import struct
import time
import unittest
import urllib.parse

from alcove import Sandbox

SERVER = os.environ.get("ALCOVE_SERVER")
TOKEN = os.environ.get("ALCOVE_TOKEN")
# Run again in the gVisor tier by crates/alcove/tests/gvisor_sandboxes.rs.
ISOLATION = os.environ.get("SANDBOX_ISOLATION", "")


def drop_template(name: str) -> None:
    """Removes the template `name` if a snapshot made it."""
    from alcove import NotFound

    try:
        Sandbox.delete_template(name)
    except NotFound:
        pass


def create(**options) -> Sandbox:
    """Sandbox.create, in the tier this run tests."""
    if ISOLATION:
        options.setdefault("isolation", ISOLATION)
    sb = Sandbox.create(**options)
    if sb.last_info.isolation != (ISOLATION or "container"):
        sb.kill()
        raise AssertionError(f"asked for {ISOLATION or 'container'}, got {sb.last_info.isolation}")
    return sb

# A WebSocket echo server (RFC 6455, text frames, stdlib), run in the sandbox.
WS_SERVER = r'''
import base64, hashlib, socket, struct, sys, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
print("listening", flush=True)

def serve(c):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(4096)
        if not chunk:
            break
        head += chunk
    if b"\r\n\r\n" not in head:
        c.close()
        return  # a probe that only connected
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        h = c.recv(2)
        if len(h) < 2:
            break
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", c.recv(2))[0]
        mask = c.recv(4)
        data = b""
        while len(data) < n:
            data += c.recv(n - len(data))
        text = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        if h[0] & 0x0F == 8:
            break
        reply = b"echo:" + text
        c.sendall(bytes([0x81, len(reply)]) + reply)
    c.close()

while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def ws_frame(text):
    data = text.encode()
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@unittest.skipUnless(SERVER, "needs $ALCOVE_SERVER: run by crates/alcove/tests/sandboxes.rs")
class Preview(unittest.TestCase):
    def setUp(self):
        self.sb = create(timeout=120)
        self.addCleanup(self.sb.kill)
        self.host = urllib.parse.urlparse(SERVER).netloc

    def wait_listening(self, port):
        for _ in range(100):
            r = self.sb.commands.run(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}))\"")
            if r.exit_code == 0:
                return
            time.sleep(0.1)
        self.fail(f"nothing listened on {port} in the sandbox")

    def get(self, path, token=True):
        c = http.client.HTTPConnection(self.host, timeout=10)
        headers = {"Authorization": f"Bearer {TOKEN}"} if token and TOKEN else {}
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        return r.status, r.read(), r

    def test_http_through_the_daemon_and_nothing_on_the_host(self):
        self.sb.files.write("site/index.html", "<h1>from the sandbox</h1>")
        self.sb.commands.run("cd site && exec python3 -m http.server 8765 --bind 127.0.0.1", background=True)
        self.wait_listening(8765)
        status, body, _ = self.get(f"/v1/sandboxes/{self.sb.id}/ports/8765/index.html")
        self.assertEqual(status, 200, body)
        self.assertIn(b"from the sandbox", body)
        # The server is in the sandbox's own network: the host's loopback has nothing there.
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", 8765), timeout=1).close()
        # The token is needed, and never passed to the sandbox's server.
        status, _, _ = self.get(f"/v1/sandboxes/{self.sb.id}/ports/8765/index.html", token=False)
        self.assertEqual(status, 401)
        status, body, _ = self.get(f"/v1/sandboxes/{self.sb.id}/ports/8766/")
        self.assertEqual(status, 502, body)
        self.assertIn(b"port_not_listening", body)

    def ws_open(self, port):
        """A WebSocket handshake through the daemon: the socket, the key and
        what the daemon answered (its head, and for a refusal its body)."""
        host, daemon_port = self.host.rsplit(":", 1)
        s = socket.create_connection((host, int(daemon_port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((
            f"GET /v1/sandboxes/{self.sb.id}/ports/{port}/chat HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            self.assertTrue(chunk, f"the connection closed: {head!r}")
            head += chunk
        return s, key, head

    def test_a_websocket_through_the_daemon(self):
        self.sb.files.write("ws.py", WS_SERVER)
        self.sb.commands.run("exec python3 ws.py 8770", background=True)
        self.wait_listening(8770)
        s, key, head = self.ws_open(8770)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.assertIn(want, head)
        for word in ["one", "two"]:
            s.sendall(ws_frame(word))
            h = s.recv(2)
            n = h[1] & 0x7F
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
            self.assertEqual(h[0], 0x81)
            self.assertEqual(data, f"echo:{word}".encode())
        s.close()

    def test_websockets_to_one_sandbox_are_capped(self):
        # An upgraded connection leaves the server's connection count: without
        # this cap a client could hold unbounded tunnels (daemon tasks and
        # sockets) open to one sandbox. Room for the server's 65 threads.
        self.sb = create(timeout=120, pids=256)
        self.addCleanup(self.sb.kill)
        self.sb.files.write("ws.py", WS_SERVER)
        self.sb.commands.run("exec python3 ws.py 8771", background=True)
        self.wait_listening(8771)
        cap = 64  # MAX_TUNNELS_PER_SANDBOX in crates/alcove-api/src/preview.rs
        held = []
        for _ in range(cap):
            s, _, head = self.ws_open(8771)
            held.append(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        s, _, head = self.ws_open(8771)
        self.assertTrue(head.startswith(b"HTTP/1.1 503"), head)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(head.partition(b"\r\n\r\n")[2]) < length:
            chunk = s.recv(4096)
            self.assertTrue(chunk, head)
            head += chunk
        s.close()
        self.assertIn(b"64 WebSocket connections are open to sandbox", head)
        # The ones held still work, and closing one frees its place.
        held[0].sendall(ws_frame("still"))
        self.assertEqual(held[0].recv(2)[0], 0x81)
        held.pop().close()
        for _ in range(50):
            s, _, head = self.ws_open(8771)
            if head.startswith(b"HTTP/1.1 101"):
                break
            s.close()
            time.sleep(0.1)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        held.append(s)
        for s in held:
            s.close()

    def test_http_requests_to_one_sandbox_are_capped(self):
        # A server that never answers holds each request (and one of the
        # daemon's connections) as long as it likes: without this cap one
        # sandbox could take every connection the API has.
        self.sb.commands.run(
            "exec python3 -c \"import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', 8772)); s.listen(512); time.sleep(600)\"", background=True)
        self.sb.files.write("site/index.html", "served")
        self.sb.commands.run("cd site && exec python3 -m http.server 8773 --bind 127.0.0.1", background=True)
        self.wait_listening(8773)
        host, daemon_port = self.host.rsplit(":", 1)

        def send(port):
            s = socket.create_connection((host, int(daemon_port)), timeout=10)
            s.sendall((f"GET /v1/sandboxes/{self.sb.id}/ports/{port}/ HTTP/1.1\r\nHost: {self.host}\r\n"
                       f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
            return s

        cap = 64  # MAX_REQUESTS_PER_SANDBOX in crates/alcove-api/src/preview.rs
        held = [send(8772) for _ in range(cap)]
        try:
            # Each is in flight (none answered) before the next is judged.
            time.sleep(1)
            for s in held[:3]:
                s.settimeout(0.2)
                with self.assertRaises(socket.timeout):
                    s.recv(1)
            over = send(8773)
            head = over.recv(4096)
            over.close()
            self.assertTrue(head.startswith(b"HTTP/1.1 503"), head)
            self.assertIn(b"64 preview requests are in flight to sandbox", head)
            # The API itself still answers.
            status, _, _ = self.get("/v1/sandboxes")
            self.assertEqual(status, 200)
        finally:
            for s in held:
                s.close()
        # Closed by their clients, they free their places.
        for _ in range(50):
            status, body, _ = self.get(f"/v1/sandboxes/{self.sb.id}/ports/8773/index.html")
            if status == 200:
                break
            time.sleep(0.1)
        self.assertEqual((status, body), (200, b"served"))


@unittest.skipUnless(SERVER, "needs $ALCOVE_SERVER: run by crates/alcove/tests/sandboxes.rs")
class ForkSnapshot(unittest.TestCase):
    def setUp(self):
        self.sb = create(timeout=120, metadata={"role": "parent"})
        self.addCleanup(self.sb.kill)

    def test_races_and_bounds_are_refused_not_failed(self):
        import threading
        from alcove import AlcoveError

        def statuses(calls):
            got = []

            def run(call):
                try:
                    call()
                    got.append(200)
                except AlcoveError as e:
                    got.append(e.status)

            threads = [threading.Thread(target=run, args=(c,)) for c in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return got

        # Four snapshots of one name at once: one is saved, the rest are told so.
        name = "race-" + os.urandom(4).hex()
        self.addCleanup(drop_template, name)
        got = statuses([lambda: self.sb.snapshot(name)] * 4)
        self.assertEqual(sorted(got), [200, 409, 409, 409], got)
        # A home nested past what a copy walks is the sandbox's doing: 409, saying so.
        self.sb.commands.run("d=deep; for i in $(seq 1 100); do d=$d/d; done; mkdir -p $d")
        with self.assertRaises(AlcoveError) as refused:
            self.sb.fork()
        self.assertEqual(refused.exception.status, 409, refused.exception)
        self.assertIn("nested more than 64 deep", str(refused.exception))
        self.sb.commands.run("rm -rf deep")
        # A pause or a snapshot racing the sandbox's removal: gone, not failed.
        for i in range(6):
            sb = create(timeout=60)
            call = sb.pause if i % 2 == 0 else (lambda sb=sb: sb.snapshot(name + f"-{i}"))
            self.addCleanup(drop_template, name + f"-{i}")
            got = statuses([call, sb.kill])
            self.assertNotIn(500, got, f"round {i}: {got}")

    def test_a_fork_diverges_from_its_parent(self):
        self.sb.files.write("proj/state.txt", "v1")
        self.sb.commands.run("ln -s state.txt proj/link && mkdir -p proj/deep/er && echo d > proj/deep/er/f")
        children = [self.sb.fork(metadata={"role": f"child{i}"}) for i in range(3)]
        for c in children:
            self.addCleanup(c.kill)
        self.assertEqual(len({c.id for c in children} | {self.sb.id}), 4)
        for c in children:
            info = c.info()
            self.assertEqual(info.parent, self.sb.id)
            self.assertEqual(c.files.read_text("proj/state.txt"), "v1")
            self.assertEqual(c.files.read_text("proj/deep/er/f"), "d\n")
            # Python's stat, not coreutils' (whose statx flags Debian's gVisor refuses).
            r = c.commands.run(
                "readlink proj/link; python3 -c 'import os, pwd; "
                "print(pwd.getpwuid(os.stat(\"proj/state.txt\").st_uid).pw_name)'"
            )
            self.assertEqual(r.stdout.split(), ["state.txt", "nobody"])
        # Changed in one, unchanged in the others.
        children[0].files.write("proj/state.txt", "child0")
        self.sb.files.write("proj/state.txt", "parent")
        self.assertEqual(children[0].files.read_text("proj/state.txt"), "child0")
        self.assertEqual(children[1].files.read_text("proj/state.txt"), "v1")
        self.assertEqual(self.sb.files.read_text("proj/state.txt"), "parent")
        listed = Sandbox.list(metadata={"role": "child1"})
        self.assertEqual([s.id for s in listed], [children[1].id])

    def test_a_fork_of_a_paused_sandbox_leaves_it_paused(self):
        self.sb.files.write("x", "1")
        self.sb.pause()
        child = self.sb.fork()
        self.addCleanup(child.kill)
        self.assertEqual(self.sb.info().state, "paused")
        self.assertEqual(child.files.read_text("x"), "1")

    def test_a_snapshot_is_a_template_new_sandboxes_start_from(self):
        name = "t" + os.urandom(4).hex()
        self.sb.files.write("ready/config.json", '{"ok": true}')
        snap = self.sb.snapshot(name)
        self.addCleanup(drop_template, name)
        names = [t["name"] for t in Sandbox.list_templates()]
        self.assertIn(name, names)
        self.sb.files.write("ready/config.json", "changed after")
        fresh = create(template=name, timeout=60)
        self.addCleanup(fresh.kill)
        self.assertEqual(fresh.files.read_text("ready/config.json"), '{"ok": true}')
        self.assertEqual(fresh.info().template, name)
        # A second snapshot under the same name is refused; a missing template too.
        from alcove import Conflict, NotFound
        with self.assertRaises(Conflict):
            self.sb.snapshot(name)
        with self.assertRaises(NotFound):
            Sandbox.create(template="no-such-template-" + os.urandom(3).hex())


def value(sb, code):
    """The text of `code`'s last expression in `sb`'s interpreter; fails on an error."""
    run = sb.run_code(code, timeout=30)
    if run.error is not None:
        raise AssertionError(f"{code!r} raised {run.error.name}: {run.error.value}")
    return run.text


@unittest.skipUnless(SERVER, "needs $ALCOVE_SERVER: run by crates/alcove/tests/sandboxes.rs")
class ForkMemory(unittest.TestCase):
    """fork(memory=True): the interpreter's memory comes along."""

    def setUp(self):
        self.sb = Sandbox.create(timeout=120, metadata={"role": "parent"}, forkable=True)
        self.addCleanup(self.sb.kill)

    def fork(self, sb):
        child = sb.fork(memory=True)
        self.addCleanup(child.kill)
        self.assertEqual(child.info().parent, sb.id)
        return child

    def test_variables_and_files_diverge(self):
        value(self.sb, "import json, os\nx = 41\nblob = bytearray(8 << 20)\nblob[-1] = 7")
        self.sb.files.write("f.txt", "v1")
        child = self.sb.fork(memory=True)
        self.addCleanup(child.kill)
        self.assertEqual(child.last_info.interpreter, "copied")
        # The state came along: a variable, an import, a big buffer.
        self.assertEqual(value(child, "x"), "41")
        self.assertEqual(value(child, "json.dumps([blob[-1], len(blob)])"), "'[7, 8388608]'")
        self.assertEqual(child.files.read_text("f.txt"), "v1")
        # Changed in one, unchanged in the other, both ways.
        self.assertEqual(value(child, "x += 1; x"), "42")
        self.assertEqual(value(self.sb, "x"), "41")
        value(self.sb, "x = 7")
        self.assertEqual(value(child, "x"), "42")
        child.files.write("f.txt", "child")
        self.assertEqual(self.sb.files.read_text("f.txt"), "v1")
        self.sb.files.write("f.txt", "parent")
        self.assertEqual(child.files.read_text("f.txt"), "child")
        # Its random stream is its own (reseeded by os.fork's hooks), and its
        # interpreter works as a forked one should: threads, imports, asyncio.
        value(self.sb, "import random")
        copy = self.sb.fork(memory=True)
        self.addCleanup(copy.kill)
        draw = "[random.random() for _ in range(3)]"
        self.assertNotEqual(value(copy, draw), value(self.sb, draw))
        self.assertEqual(value(copy, "import threading\nt = threading.Thread(target=lambda: None)\n"
                                     "t.start(); t.join(); threading.active_count()"), "1")
        self.assertEqual(value(copy, "import asyncio\nawait asyncio.sleep(0.01)\n"
                                     "import decimal; str(decimal.Decimal(1) / 8)"), "'0.125'")
        # Its interpreter is a process of its own sandbox.
        self.assertNotEqual(value(child, "os.getpid()"), None)
        self.assertNotEqual(child.commands.run("cat /proc/self/cgroup").stdout,
                            self.sb.commands.run("cat /proc/self/cgroup").stdout)

    def test_its_state_is_backed_by_huge_pages_once_idle_before_any_fork(self):
        """A forkable session, idle after a call, backs its dense large
        regions with huge pages (its first fork then copies a tenth of the
        page tables) and leaves a sparse one as sparse as it was."""
        try:
            with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                thp = f.read().strip()
        except OSError as e:
            thp = str(e)
        release = os.uname().release
        if "[madvise]" not in thp or tuple(map(int, re.findall(r"\d+", release)[:2])) < (6, 1):
            print(f"SKIPPED {self.id()}: needs MADV_COLLAPSE (Linux 6.1+, here {release}) and "
                  f"transparent huge pages by 'madvise' alone (here: {thp})")
            return
        rollup = ("def rollup():\n"
                  "    with open('/proc/self/smaps_rollup') as f:\n"
                  "        return {l.split()[0][:-1]: int(l.split()[1]) for l in f\n"
                  "                if l.split()[0] in ('Rss:', 'AnonHugePages:')}\n")
        before = eval(value(self.sb, rollup + "import mmap, os\n"
                            "dense = bytearray(os.urandom(32 << 20))\n"
                            "sparse = mmap.mmap(-1, 64 << 20,"
                            " flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
                            "for at in range(0, len(sparse), 1 << 20):\n"
                            "    sparse[at] = 1\n"
                            "rollup()"))
        self.assertLess(before["AnonHugePages"], 8 << 10, before)
        # Each call is followed by more than the session's 50 ms of idleness.
        wait_for_value("the state is backed by huge pages", 30, lambda: (
            lambda r: r if r["AnonHugePages"] >= 28 << 10 else None)(eval(value(self.sb, "rollup()"))))
        time.sleep(1)  # a whole pass more, idle: the sparse region was gone through
        after = eval(value(self.sb, "rollup()"))
        # Filled, the sparse one would have added 64 MiB.
        self.assertLess(after["Rss"] - before["Rss"], 16 << 10, (before, after))
        self.assertEqual(value(self.fork(self.sb), "bytes(sparse).count(1)"), "64")

    def test_many_forks_and_a_fork_of_a_fork(self):
        value(self.sb, "n = 1")
        children = [self.fork(self.sb) for _ in range(3)]
        for i, c in enumerate(children):
            value(c, f"n = {10 + i}")
        grandchild = self.fork(children[0])
        self.assertEqual(value(grandchild, "n"), "10")
        self.assertEqual([value(c, "n") for c in children], ["10", "11", "12"])
        self.assertEqual(value(self.sb, "n"), "1")
        self.assertEqual(len({c.id for c in children + [grandchild, self.sb]}), 5)

    def test_a_fork_sees_only_itself_and_holds_no_privilege(self):
        value(self.sb, "y = 1")
        marker = self.sb.commands.run("sleep 4242", background=True)
        self.assertIn("sleep 4242", self.sb.commands.run("ps -eo args").stdout)
        child = self.fork(self.sb)
        seen = child.commands.run("ps -eo args").stdout
        self.assertNotIn("sleep 4242", seen)
        self.assertIn("python3", seen)  # its own interpreter is there
        status = value(child, "open('/proc/self/status').read()")
        for line in ("CapEff:\\t0000000000000000", "CapBnd:\\t0000000000000000", "NoNewPrivs:\\t1",
                     "Seccomp:\\t2"):
            self.assertIn(line, status)
        # Its commands may not make namespaces (the copy filter); neither may the parent's.
        for sb in (child, self.sb):
            r = sb.commands.run("unshare -Ur true")
            self.assertNotEqual(r.exit_code, 0, r)
            self.assertIn("Operation not permitted", r.stderr)
        self.assertEqual(child.commands.run("id -un").stdout.strip(), "nobody")
        self.assertEqual(child.commands.run("ls /home/user/..").exit_code, 0)
        marker.kill()

    def test_removing_a_fork_leaves_its_parent_and_its_parents_end_stops_it(self):
        value(self.sb, "z = 3")
        child = self.fork(self.sb)
        child.files.write("kept.txt", "kept")
        other = self.fork(self.sb)
        other.kill()
        self.assertEqual(value(self.sb, "z"), "3")
        self.assertEqual(value(child, "z"), "3")
        self.sb.kill()

        def stopped():
            info = child.info()
            return info if info.state == "stopped" else None
        info = wait_for_value("the fork is stopped", 20, stopped)
        self.assertIn(self.sb.id, info.reason)
        self.assertIn("parent", info.reason)
        # Its files were kept, and it starts again (with a fresh interpreter).
        self.assertEqual(child.files.read_text("kept.txt"), "kept")
        self.assertIsNotNone(child.run_code("z").error)

    def test_the_fork_works_where_its_parent_worked_and_cannot_reach_its_home(self):
        value(self.sb, "import os\nos.makedirs('/home/user/w', exist_ok=True)\nos.chdir('/home/user/w')")
        child = self.fork(self.sb)
        self.sb.files.write("w/after.txt", "parent's, written after the fork")
        self.assertEqual(value(child, "os.getcwd()"), "'/home/user/w'")
        self.assertEqual(value(child, "os.path.exists('after.txt')"), "False")
        self.assertEqual(value(child, "open('rel.txt', 'w').write('x')"), "1")
        self.assertEqual(child.files.read_text("w/rel.txt"), "x")
        self.assertEqual(value(self.sb, "os.path.exists('rel.txt')"), "False")
        # Its commands start in its home, as a sandbox's do.
        self.assertEqual(child.commands.run("pwd").stdout, "/home/user\n")
        self.assertEqual(child.commands.run("cat w/rel.txt").stdout, "x")

    def test_shared_memory_is_refused_until_released(self):
        from alcove import Conflict
        value(self.sb, "import mmap\nshared = mmap.mmap(-1, 4096)\nshared[:5] = b'hello'")
        with self.assertRaises(Conflict) as caught:
            self.sb.fork(memory=True)
        self.assertIn("shared memory", str(caught.exception))
        value(self.sb, "shared.close()")
        self.assertEqual(value(self.fork(self.sb), "'forked'"), "'forked'")

    def test_only_a_forkable_sandbox_forks_and_only_its_interpreter_may_unshare(self):
        from alcove import BadRequest, Conflict
        plain = Sandbox.create(timeout=60)
        self.addCleanup(plain.kill)
        value(plain, "v = 1")
        with self.assertRaises(Conflict) as caught:
            plain.fork(memory=True)
        self.assertIn("forkable", str(caught.exception))
        probe = ("import ctypes, os\n"
                 "def probe():\n"
                 "    pid = os.fork()\n"
                 "    if pid == 0:\n"
                 "        os._exit(0 if ctypes.CDLL(None).unshare(0x7c020000) == 0 else 1)\n"
                 "    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
                 "probe()")
        # A sandbox that is not forkable: its interpreter may not make namespaces.
        self.assertEqual(value(plain, probe), "1")
        # A forkable one's interpreter may (that is how it forks) ...
        self.assertEqual(value(self.sb, probe), "0")
        # ... and its commands still may not, nor write into the interpreter's memory.
        r = self.sb.commands.run("unshare -Ur true")
        self.assertNotEqual(r.exit_code, 0, r)
        opens_mem = "python3 -c 'import os, sys; os.open(\"/proc/%s/mem\", os.O_RDWR)'"
        r = self.sb.commands.run(opens_mem % value(self.sb, "os.getpid()"))
        self.assertNotEqual(r.exit_code, 0, r)
        self.assertIn("PermissionError", r.stderr)
        # (where the interpreter cannot fork, its memory is as open as any process's of its user)
        r = plain.commands.run(opens_mem % value(plain, "import os; os.getpid()"))
        self.assertEqual(r.exit_code, 0, r)
        with self.assertRaises(BadRequest) as caught:
            Sandbox.create(timeout=60, net="host", forkable=True)
        self.assertIn("net: none", str(caught.exception))

    def test_a_forks_interpreter_that_ends_is_seen_to_end_and_replaced(self):
        """Its interpreter is not its agent's child (its parent left outside
        the fork's pid namespace): the agent still sees it end."""
        from alcove import Conflict
        value(self.sb, "import os\nx = 1")
        child = self.fork(self.sb)
        pid = value(child, "os.getpid()")
        killed = child.commands.run(f"kill -9 {pid}")
        self.assertEqual(killed.exit_code, 0, killed)
        time.sleep(1)  # the agent reports an end at once; no call has looked since
        with self.assertRaises(Conflict) as caught:
            child.fork(memory=True)
        self.assertIn("no code interpreter runs", str(caught.exception))
        ended = child.run_code("import os\nos._exit(3)", timeout=30)
        self.assertIsNotNone(ended.error)
        self.assertEqual(ended.error.name, "InterpreterDied", ended.error)
        # The next call starts a fresh interpreter: the old state is gone, it works.
        fresh = child.run_code("x", timeout=30)
        self.assertIsNotNone(fresh.error)
        self.assertEqual(fresh.error.name, "NameError", fresh.error)
        self.assertEqual(value(child, "2 + 2"), "4")
        self.assertEqual(value(self.sb, "x"), "1")

    def test_a_forks_interpreter_is_said_to_end_as_it_ended(self):
        """How a fork's interpreter ended comes from the kernel (Linux 6.15+
        keeps it on a pidfd once the source's agent, its parent, reaps it);
        an older kernel's fork says it cannot tell, never a made-up status."""
        value(self.sb, "import os, signal\nx = 1")
        release = os.uname().release.split("-")[0].split(".")
        keeps = (int(release[0]), int(release[1])) >= (6, 15)
        if not keeps:
            print(f"NOTE {self.id()}: this kernel ({os.uname().release}) keeps no exit "
                  "status on pidfds (Linux 6.15+): a fork's interpreter's end is unnamed")
        for code, said in [
            ("os._exit(3)", "exited with code 3"),
            ("os.kill(os.getpid(), signal.SIGSEGV)", f"killed by signal {signal.SIGSEGV}"),
            ("os.kill(os.getpid(), signal.SIGKILL)", "killed (SIGKILL"),
        ]:
            child = self.fork(self.sb)
            # The copied interpreter, not a fresh one: the parent's state is there.
            self.assertEqual(value(child, "x"), "1")
            ended = child.run_code(code, timeout=30)
            self.assertIsNotNone(ended.error, code)
            self.assertEqual(ended.error.name, "InterpreterDied", ended.error)
            want = said if keeps else "no exit status was reported"
            self.assertIn(want, ended.error.value, code)
            child.kill()
        # A sandbox's own interpreter (its agent's child) says the same.
        plain = Sandbox.create(timeout=60)
        self.addCleanup(plain.kill)
        ended = plain.run_code("import os\nos._exit(5)", timeout=30)
        self.assertEqual(ended.error.name, "InterpreterDied", ended.error)
        self.assertIn("exited with code 5", ended.error.value)
        self.assertEqual(value(self.sb, "x"), "1")

    def test_a_forkable_sandboxs_pid_1_catches_no_sigchld(self):
        """The source's agent (pid 1, the parent of its forks' interpreters
        once the session's child is gone) learns of their end through a
        pidfd the daemon has it open, not a SIGCHLD handler: a handled signal
        is one the sandbox's code could send its pid 1 in a loop (an
        unhandled one the kernel drops), each costing the agent a look. The
        only ones caught are the Rust runtime's SIGSEGV and SIGBUS (its
        stack-overflow report, which resets itself on a sent signal)."""
        value(self.sb, "x = 1")
        child = self.fork(self.sb)
        self.assertEqual(value(child, "x"), "1")
        ended = child.run_code("import os\nos._exit(4)", timeout=30)
        self.assertEqual(ended.error.name, "InterpreterDied", ended.error)
        for sb in (self.sb, child):
            caught = sb.commands.run(["grep", "^SigCgt:", "/proc/1/status"])
            self.assertEqual(caught.exit_code, 0, caught.stderr)
            field, mask = caught.stdout.split()
            runtime = 1 << (signal.SIGSEGV - 1) | 1 << (signal.SIGBUS - 1)
            self.assertEqual(int(mask, 16) & ~runtime, 0, f"{sb.id} catches {mask}")
        # Sent anyway, SIGCHLD at pid 1 changes nothing.
        spam = self.sb.commands.run("i=0; while [ $i -lt 200 ]; do kill -CHLD 1; i=$((i+1)); done")
        self.assertEqual(spam.exit_code, 0, spam.stderr)
        self.assertEqual(value(self.sb, "x"), "1")

    def test_a_forks_code_is_interrupted_and_timed_out_with_its_state_kept(self):
        """Interrupts and timeouts reach a fork's interpreter, which is not its
        agent's child: its agent signals it through its pidfd."""
        import threading
        from alcove import Conflict
        value(self.sb, "y = 7")
        child = self.fork(self.sb)
        result = {}
        looping = threading.Thread(target=lambda: result.update(
            run=child.run_code("import time\nwhile True:\n    time.sleep(0.05)", timeout=30)))
        looping.start()
        # One interrupt, as soon as the call is sent (most often before its
        # code runs: the interpreter says so and the daemon sends it again).
        until = time.monotonic() + 20
        while True:
            try:
                child.interrupt_code()
                break
            except Conflict:  # not sent yet
                self.assertLess(time.monotonic(), until, "the call was never sent")
                time.sleep(0.002)
        looping.join(10)
        self.assertFalse(looping.is_alive(), "the interrupt did not stop it")
        self.assertEqual(result["run"].error.name, "KeyboardInterrupt", result["run"].error)
        timed = child.run_code("while True:\n    pass", timeout=1)
        self.assertEqual(timed.error.name, "KeyboardInterrupt", timed.error)
        # The same interpreter, its state kept (a restart would have lost y).
        self.assertEqual(value(child, "y"), "7")

    def test_the_parents_interrupt_and_kill_leave_its_forks_alone(self):
        """A fork's interpreter leads a process group of its own: the parent's
        interrupt (SIGINT to its session's group) does not stop a call
        running in the fork, and the parent's stuck session, killed (SIGKILL
        to the group), takes neither the fork's agent nor its interpreter."""
        import threading
        from alcove import Conflict
        value(self.sb, "z = 5")
        child = self.fork(self.sb)
        forked = {}

        def in_fork():
            forked["run"] = child.run_code(
                "import time\nopen('running', 'w').close()\nt0 = time.monotonic()\n"
                "while time.monotonic() - t0 < 6:\n    time.sleep(0.01)\n'whole'", timeout=30)
            forked["returned_at"] = time.monotonic()

        fork_call = threading.Thread(target=in_fork)
        fork_call.start()
        until = time.monotonic() + 20
        while not child.files.exists("running"):  # the fork's call runs
            self.assertLess(time.monotonic(), until, "the fork's call never ran")
            time.sleep(0.01)
        parent = {}
        in_parent = threading.Thread(target=lambda: parent.update(
            run=self.sb.run_code("while True:\n    pass", timeout=30)))
        in_parent.start()
        while True:
            try:
                self.sb.interrupt_code()
                interrupted_at = time.monotonic()
                break
            except Conflict:  # not sent yet
                self.assertLess(time.monotonic(), until, "the parent's call was never sent")
                time.sleep(0.002)
        in_parent.join(10)
        self.assertEqual(parent["run"].error.name, "KeyboardInterrupt", parent["run"].error)
        # Stuck (SIGINT ignored) past its timeout: the parent's session is killed.
        stuck = self.sb.run_code(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
            timeout=1)
        self.assertIsNotNone(stuck.error)
        self.assertEqual(value(self.sb, "'z' in globals()"), "False", "the parent's session was not restarted")
        fork_call.join(30)
        run = forked["run"]
        self.assertIsNone(run.error, run.error)
        self.assertEqual(run.text, "'whole'")
        # The interrupt came while the fork's call ran (it had started, and
        # had not returned), so it could have reached it.
        self.assertLess(interrupted_at, forked["returned_at"])
        # The fork's interpreter outlived the parent's, with its state.
        self.assertEqual(value(child, "z"), "5")

    def test_a_forks_interrupt_reaches_what_its_code_started(self):
        """A fork's interpreter leads a process group of its own, and its
        agent signals that group through the interpreter's pidfd (Linux
        6.9+; before, by the group's id once the pidfd says the leader
        lives): an interrupt reaches what the call started, as in any
        sandbox."""
        import threading
        from alcove import Conflict
        value(self.sb, "import subprocess, time")
        child = self.fork(self.sb)
        result = {}
        call = threading.Thread(target=lambda: result.update(run=child.run_code(
            "p = subprocess.Popen(['sleep', '60'])\nopen('started', 'w').close()\n"
            "while True:\n    time.sleep(0.05)", timeout=30)))
        call.start()
        until = time.monotonic() + 20
        while not child.files.exists("started"):
            self.assertLess(time.monotonic(), until, "the fork's call never started its process")
            time.sleep(0.01)
        while True:
            try:
                child.interrupt_code()
                break
            except Conflict:
                self.assertLess(time.monotonic(), until, "the call was never sent")
                time.sleep(0.002)
        call.join(10)
        self.assertEqual(result["run"].error.name, "KeyboardInterrupt", result["run"].error)
        self.assertEqual(value(child, "p.wait(timeout=10)"), str(-signal.SIGINT))

    def test_a_session_that_cheats_its_own_fork_is_refused_and_leaves_nothing(self):
        """The session runs the fork's code, and the session's code may change
        it: the daemon believes only what the kernel says of the copy."""
        from alcove import AlcoveError
        value(self.sb, "import sys\nfork_code = sys.modules['alcove_fork']\n"
                       "honest = (fork_code.Fork.capset_empty, fork_code.Fork.spawn_init,"
                       " fork_code.session_fork, fork_code.parse)\nv = 5")
        before = {s.id for s in Sandbox.list()}

        def processes():
            ps = self.sb.commands.run("ps -eo pid=,args=").stdout.splitlines()
            return sorted(line.split(None, 1)[1] for line in ps if "ps -eo" not in line)
        alone = processes()
        self.assertEqual(sum("sandbox-agent" in p for p in alone), 1, alone)
        cheats = {
            # The copy keeps its capabilities: so does the interpreter it forks.
            "holds capabilities": "fork_code.Fork.capset_empty = lambda self: None",
            # The copy leaves one more process in the new sandbox.
            "not its agent and its interpreter alone": (
                "import os, time\n"
                "def spawn_and_stay(self, *args):\n"
                "    pid = honest[1](self, *args)\n"
                "    if os.fork() == 0:\n"
                "        time.sleep(60)\n"
                "        os._exit(0)\n"
                "    return pid\n"
                "fork_code.Fork.spawn_init = spawn_and_stay"),
            # The copy is made from a pid namespace of the session's own, whose
            # first process (in the parent sandbox, above the copy) stays.
            "levels below its parent's, not one": (
                "import ctypes, os, time\n"
                "numbers = {}\n"
                "def parse(request, fds):\n"
                "    numbers['all'] = honest[3](request, fds)\n"
                "    return numbers['all']\n"
                "def nested_fork():\n"
                "    libc = ctypes.CDLL(None, use_errno=True)\n"
                "    x = os.fork()\n"
                "    if x:\n"
                "        return x\n"
                "    try:\n"
                "        uid, gid = os.getuid(), os.getgid()\n"
                "        # the namespaces a copy makes (its filter allows those alone)\n"
                "        assert libc.unshare(numbers['all'][3]) == 0, 'unshare'\n"
                "        assert libc.prctl(4, 1, 0, 0, 0) == 0, 'dumpable'\n"
                "        for f, t in (('setgroups', 'deny'), ('uid_map', f'{uid} {uid} 1'),\n"
                "                     ('gid_map', f'{gid} {gid} 1')):\n"
                "            with open(f'/proc/self/{f}', 'w') as out:\n"
                "                out.write(t)\n"
                "        p = os.fork()\n"
                "        if p == 0:  # pid 1 of the session's namespace: stays\n"
                "            time.sleep(60)\n"
                "            os._exit(0)\n"
                "        with open('/tmp/above-the-copy', 'w') as out:\n"
                "            out.write(str(p))\n"
                "        c = os.fork()\n"
                "        if c == 0:\n"
                "            return 0  # the copy's first process, one namespace down\n"
                "        os._exit(os.waitstatus_to_exitcode(os.waitpid(c, 0)[1]) & 0xff)\n"
                "    except BaseException:\n"
                "        os._exit(99)\n"
                "fork_code.parse = parse\n"
                "fork_code.session_fork = nested_fork"),
        }
        for why, cheat in cheats.items():
            value(self.sb, cheat + "\n0")
            with self.assertRaises(AlcoveError) as caught:
                self.sb.fork(memory=True)
            self.assertEqual((caught.exception.status, caught.exception.code), (422, "fork_failed"))
            self.assertIn(why, str(caught.exception))
            self.assertEqual({s.id for s in Sandbox.list()}, before)
            above = self.sb.commands.run("cat /tmp/above-the-copy 2>/dev/null").stdout.strip()
            if above:  # the nested cheat's process in the parent sandbox: the cheat's to end
                self.sb.commands.run(f"kill -KILL {int(above)}; rm /tmp/above-the-copy")
            # Nothing of the copy runs (its pid namespace is nested in the parent's;
            # what was killed is reaped within the parent agent's next wake).
            wait_for_value("the copy's processes are gone", 5, lambda: processes() == alone)
            value(self.sb, "(fork_code.Fork.capset_empty, fork_code.Fork.spawn_init,"
                           " fork_code.session_fork, fork_code.parse) = honest\n0")
        # The parent is as it was, and forks again once honest.
        self.assertEqual(value(self.sb, "v"), "5")
        self.assertEqual(value(self.fork(self.sb), "v"), "5")

    def test_refused_with_why(self):
        from alcove import Conflict
        with self.assertRaises(Conflict) as caught:
            self.sb.fork(memory=True)
        self.assertIn("no code interpreter runs", str(caught.exception))
        value(self.sb, "w = 1")
        import threading
        running = threading.Thread(target=lambda: self.sb.run_code("import time; time.sleep(3)"))
        running.start()
        time.sleep(0.5)
        with self.assertRaises(Conflict) as caught:
            self.sb.fork(memory=True)
        self.assertIn("code call is running", str(caught.exception))
        running.join()
        self.assertEqual(value(self.fork(self.sb), "w"), "1")


def wait_for_value(what, limit, check):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {limit} s waiting until {what}")


if __name__ == "__main__":
    unittest.main()
