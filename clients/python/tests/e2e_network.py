"""End-to-end tests of agent sandboxes' outbound network (``net="outbound"``
and ``allow_out``) through the Python SDK, against a real daemon.

crates/alcove/tests/sandbox_network.rs builds the world these run in and
passes it in the environment: a network namespace standing for the internet
(reached from the host over a veth pair) with web servers on two addresses
and a DNS server, which the daemon was told to use (``--sandbox-dns``); a web
server on the host's side of that veth, and one on the host's loopback. No
traffic leaves the machine.

Every refusal is checked beside a success that shows the check could fail.
"""

from __future__ import annotations

import os
import socket
import sys
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alcove import BadRequest, Sandbox  # noqa: E402

SERVER = os.environ.get("ALCOVE_SERVER", "")
WORLD = os.environ.get("NET_ALLOWED_IP", "")
SKIP_WHY = "run through crates/alcove/tests/sandbox_network.rs (it builds the network these need)"
if not (SERVER and WORLD):
    print(f"SKIPPED e2e_network: {SKIP_WHY}", file=sys.stderr)
needs_world = unittest.skipUnless(SERVER and WORLD, SKIP_WHY)

ALLOWED_IP = WORLD
OTHER_IP = os.environ.get("NET_OTHER_IP", "")
PRIVATE_IP = os.environ.get("NET_PRIVATE_IP", "")
PORT = os.environ.get("NET_PORT", "")
HOST_IP = os.environ.get("NET_HOST_IP", "")
HOST_PORT = os.environ.get("NET_HOST_PORT", "")
LOOPBACK_PORT = os.environ.get("NET_LOOPBACK_PORT", "")
RUN = uuid.uuid4().hex[:12]
# Run again in the gVisor tier by crates/alcove/tests/gvisor_sandboxes.rs
# (and sandbox_network.rs): every sandbox made here is then a gVisor one.
ISOLATION = os.environ.get("SANDBOX_ISOLATION", "")

# Fetches a URL from inside a sandbox: prints the body, or why not.
FETCH = """
import socket, sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())
except OSError as e:
    reason = getattr(e, "reason", e)
    print("failed", type(reason).__name__, reason)
"""

# Resolves a name from inside a sandbox: prints its addresses, or why not.
RESOLVE = """
import socket, sys
try:
    print(" ".join(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)})))
except OSError as e:
    print("failed", type(e).__name__)
"""


# A connect from an AF_INET6 socket: prints connected or why not.
MAPPED = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print("failed", type(e).__name__, e)
"""

# UDP to the broadcast and a multicast address: refused (EPERM) or sent.
BROADCAST = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for addr in ["255.255.255.255", "224.0.0.1"]:
    try:
        s.sendto(b"x", (addr, 9999))
        print("sent")
    except PermissionError:
        print("refused")
"""


def make(test: unittest.TestCase, **options) -> Sandbox:
    if ISOLATION:
        options.setdefault("isolation", ISOLATION)
    options.setdefault("timeout", 120)
    options.setdefault("request_timeout", 30)
    sb = Sandbox.create(metadata={"e2e": RUN}, **options)
    if sb.last_info.isolation != (ISOLATION or "container"):
        sb.kill()
        raise AssertionError(f"asked for {ISOLATION or 'container'}, got {sb.last_info.isolation}")
    test.addCleanup(sb.close)
    test.addCleanup(sb.kill)
    return sb


def fetch(sb: Sandbox, url: str) -> str:
    return sb.commands.run(["python3", "-c", FETCH, url]).stdout.strip()


def resolve(sb: Sandbox, name: str) -> str:
    return sb.commands.run(["python3", "-c", RESOLVE, name]).stdout.strip()


@needs_world
class Outbound(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The world answers from here: each refusal below could have been a success.
        for url, body in [
            (f"http://{ALLOWED_IP}:{PORT}/who", "allowed"),
            (f"http://{OTHER_IP}:{PORT}/who", "other"),
            (f"http://{PRIVATE_IP}:{PORT}/who", "private"),
            (f"http://{HOST_IP}:{HOST_PORT}/who", "host"),
            (f"http://127.0.0.1:{LOOPBACK_PORT}/who", "loopback"),
        ]:
            got = urllib.request.urlopen(url, timeout=5).read().decode().strip()
            assert got == body, (url, got)

    def test_anywhere_but_the_host(self):
        sb = make(self, net="outbound")
        self.assertEqual(sb.last_info.net, "outbound")
        self.assertEqual(sb.last_info.allow_out, ())
        self.assertEqual(fetch(sb, f"http://{OTHER_IP}:{PORT}/who"), "other")
        self.assertEqual(fetch(sb, f"http://{ALLOWED_IP}:{PORT}/who"), "allowed")
        # The host's address on the way out, its other addresses, its
        # loopback; and the private ranges (a LAN, a cloud network).
        for url in [
            f"http://{HOST_IP}:{HOST_PORT}/who",
            f"http://127.0.0.1:{LOOPBACK_PORT}/who",
            f"http://{PRIVATE_IP}:{PORT}/who",
        ]:
            self.assertTrue(fetch(sb, url).startswith("failed"), url)
        # A dual-stack socket's IPv4-mapped peer is judged as IPv4.
        r = sb.commands.run(["python3", "-c", MAPPED, f"::ffff:{OTHER_IP}", PORT])
        self.assertEqual(r.stdout.strip(), "connected", r)
        # Broadcast and multicast stay inside.
        r = sb.commands.run(["python3", "-c", BROADCAST])
        self.assertEqual(r.stdout.split(), ["refused", "refused"], r)
        r = sb.commands.run("cat /etc/resolv.conf")
        self.assertIn("nameserver 127.0.0.53", r.stdout)
        # Names resolve through the daemon (anything, with no allow-list).
        self.assertEqual(resolve(sb, "blocked.test"), OTHER_IP)
        self.assertEqual(fetch(sb, f"http://blocked.test:{PORT}/who"), "other")

    def test_a_domain_allow_list_lets_one_name_through_and_refuses_another(self):
        sb = make(self, net="outbound", allow_out=["allowed.test"])
        self.assertEqual(sb.last_info.allow_out, ("allowed.test",))
        # Before the name is resolved its address is closed too.
        self.assertTrue(fetch(sb, f"http://{ALLOWED_IP}:{PORT}/who").startswith("failed"))
        self.assertEqual(fetch(sb, f"http://allowed.test:{PORT}/who"), "allowed")
        self.assertEqual(fetch(sb, f"http://{ALLOWED_IP}:{PORT}/who"), "allowed")
        # Another name does not resolve, and its address stays closed.
        self.assertEqual(resolve(sb, "blocked.test"), "failed gaierror")
        self.assertTrue(fetch(sb, f"http://blocked.test:{PORT}/who").startswith("failed"))
        self.assertTrue(fetch(sb, f"http://{OTHER_IP}:{PORT}/who").startswith("failed"))
        # A server of its own on loopback still works.
        r = sb.commands.run(
            "python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & "
            "for i in $(seq 50); do sleep 0.1; "
            "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000), 1)' 2>/dev/null && break; done; "
            "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000), 1); print(\"local ok\")'"
        )
        self.assertIn("local ok", r.stdout)

    def test_private_ranges_are_closed_unless_listed(self):
        sb = make(self, net="outbound", allow_out=[PRIVATE_IP])
        self.assertEqual(fetch(sb, f"http://{PRIVATE_IP}:{PORT}/who"), "private")
        self.assertTrue(fetch(sb, f"http://{OTHER_IP}:{PORT}/who").startswith("failed"))
        # A ranges-only list leaves names free: the address still decides.
        self.assertEqual(resolve(sb, "blocked.test"), OTHER_IP)
        self.assertTrue(fetch(sb, f"http://blocked.test:{PORT}/who").startswith("failed"))
        r = sb.commands.run(["python3", "-c", MAPPED, f"::ffff:{OTHER_IP}", PORT])
        self.assertTrue(r.stdout.startswith("failed"), r)

    def test_wildcards_and_ranges(self):
        sb = make(self, net="outbound", allow_out=["*.wild.test", f"{OTHER_IP}/32"])
        self.assertEqual(fetch(sb, f"http://{OTHER_IP}:{PORT}/who"), "other")
        self.assertTrue(fetch(sb, f"http://{ALLOWED_IP}:{PORT}/who").startswith("failed"))
        self.assertEqual(fetch(sb, f"http://a.wild.test:{PORT}/who"), "allowed")
        # The pattern is for names below it, not the domain itself.
        self.assertEqual(resolve(sb, "wild.test"), "failed gaierror")

    def test_a_name_that_resolves_to_the_host_stays_closed(self):
        sb = make(self, net="outbound", allow_out=["rebind.test"])
        self.assertEqual(resolve(sb, "rebind.test"), HOST_IP)
        self.assertTrue(fetch(sb, f"http://rebind.test:{HOST_PORT}/who").startswith("failed"))

    def test_a_name_does_not_open_a_private_range_no_listed_range_opens(self):
        # An allowed name whose answer points into a LAN (rebinding, or a
        # split-horizon resolver): resolved, but the address stays closed...
        sb = make(self, net="outbound", allow_out=["private.test"])
        self.assertEqual(resolve(sb, "private.test"), PRIVATE_IP)
        self.assertTrue(fetch(sb, f"http://private.test:{PORT}/who").startswith("failed"))
        # ...unless a listed range opens it.
        sb = make(self, net="outbound", allow_out=["private.test", f"{PRIVATE_IP}/32"])
        self.assertEqual(fetch(sb, f"http://private.test:{PORT}/who"), "private")

    def test_sandboxes_cannot_reach_each_other(self):
        a = make(self, net="outbound")
        b = make(self, net="outbound")
        a.commands.run(["python3", "-m", "http.server", "9000"], background=True)
        address = a.commands.run(
            ["python3", "-c", f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.connect(('{OTHER_IP}', 9)); print(s.getsockname()[0])"]
        ).stdout.strip()
        self.assertTrue(address.startswith("10.231."), address)
        # A's server listens on every address of A's (seen from inside A) ...
        got = a.commands.run(
            "for i in $(seq 50); do sleep 0.1; "
            "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 9000), 1)' 2>/dev/null && break; done; "
            "grep -c ':2328 00000000:0000 0A' /proc/net/tcp"
        )
        self.assertEqual(got.stdout.strip(), "1", got)
        # ... and not to B.
        self.assertTrue(fetch(b, f"http://{address}:9000/").startswith("failed"))

    def test_bad_rules_are_refused(self):
        with self.assertRaises(BadRequest) as caught:
            Sandbox.create(allow_out=["example.com"], timeout=10)
        self.assertIn("allow_out", caught.exception.message)
        for bad in ["exa mple.com", "10.0.0.0/40", "*.", "169.254.169.254", "10.231.0.0/24"]:
            with self.assertRaises(BadRequest) as caught:
                Sandbox.create(net="outbound", allow_out=[bad], timeout=10)
            self.assertIn(repr(bad).strip("'"), caught.exception.message)
        with self.assertRaises(BadRequest):
            Sandbox.create(net="outbound", allow_out=[f"h{i}.test" for i in range(65)], timeout=10)


if __name__ == "__main__":
    unittest.main()
