"""End-to-end tests of an agent sandbox's guard (kernel-enforced budgets and
network rules over its whole life) through the Python SDK, against a real
daemon (crates/alcove/tests/sandboxes.rs runs the class). Every kill is
checked to have happened, and to have been the guard's."""

from __future__ import annotations

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_sandboxes import CONNECT, make, needs_server, server_address, wait_for  # noqa: E402

from alcove import BadRequest, Sandbox  # noqa: E402


@needs_server
class Guard(unittest.TestCase):
    def stopped_reason(self, sb: Sandbox) -> str:
        info = wait_for("the sandbox is stopped", 20, lambda: (lambda i: i if i.state == "stopped" else None)(sb.info()))
        return info.reason or ""

    def test_cpu_budget_kills_a_spinner_and_the_next_call_starts_it_again(self):
        # Enough for the agent's own start, even under an emulated CPU.
        sb = make(self, guard={"cpu_budget_ms": 3000})
        sb.files.write("kept.txt", "still here\n")
        started = time.monotonic()
        r = sb.commands.run(["python3", "-c", "while True: pass"], timeout=60)
        took = time.monotonic() - started
        self.assertNotEqual(r.exit_code, 0, r)
        self.assertLess(took, 55, "the spinner ran to the command's timeout: the budget did nothing")
        reason = self.stopped_reason(sb)
        self.assertIn("killed by its guard", reason)
        self.assertIn("CPU", reason)
        # Its files were kept, and the next call starts it with a fresh budget.
        r = sb.commands.run("cat kept.txt")
        self.assertEqual(r.stdout, "still here\n", r)
        self.assertEqual(sb.info().state, "running")

    def test_syscall_budget(self):
        sb = make(self, guard={"syscall_budget": 200000})
        r = sb.commands.run("echo fine")
        self.assertEqual(r.stdout, "fine\n")
        sb.commands.run(["python3", "-c", "import os\nwhile True: os.getppid()"], timeout=60)
        reason = self.stopped_reason(sb)
        self.assertIn("killed by its guard", reason)
        self.assertIn("syscall", reason)

    def test_deny_net_on_the_hosts_network(self):
        host, port = server_address()
        socket.create_connection((host, port), timeout=3).close()
        sb = make(self, net="host", guard={"deny_net": True})
        r = sb.commands.run(["python3", "-c", CONNECT, host, str(port)])
        # Loopback is always allowed by deny_net: the daemon's port answers.
        self.assertEqual(r.stdout, "connected\n", r)
        r = sb.commands.run(["python3", "-c", CONNECT, "192.0.2.200", "80"])
        self.assertIn("PermissionError", r.stdout)

    def test_bad_guards_are_refused(self):
        for guard, word in [
            ({"allow_paths": ["/tmp"]}, "allow_paths"),
            ({"deny_net": True}, "deny_net"),
            ({"cpu_budget_ms": 0}, "CPU budget"),
            ({"colour": "red"}, "colour"),
        ]:
            with self.assertRaises(BadRequest) as caught:
                Sandbox.create(guard=guard, timeout=10)
            self.assertIn(word, caught.exception.message)


if __name__ == "__main__":
    unittest.main()
