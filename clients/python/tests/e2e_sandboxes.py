"""End-to-end tests of alcove's agent sandboxes through the Python SDK,
against a real daemon.

    ALCOVE_SERVER=http://127.0.0.1:PORT ALCOVE_TOKEN=... \\
        python3 -m unittest -v e2e_sandboxes            # from clients/python/tests

Without $ALCOVE_SERVER every case is skipped (and says so). The file is not
named test_*.py on purpose: `python3 -m unittest discover -s tests` runs the
SDK's unit tests, which need no daemon, and must not pick these up.
crates/alcove/tests/sandboxes.rs starts a daemon, runs each TestCase class
here against it, then checks from the host that nothing of the sandboxes is
left.

Every check asserts that the situation it is about arose (the output came
before the end, the process was running before it was killed, ...), so a
case cannot pass by nothing having happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest
import uuid
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alcove import (  # noqa: E402
    AlcoveError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Sandbox,
    Unauthorized,
)
from alcove._http import Transport  # noqa: E402
from alcove.models import SandboxInfo  # noqa: E402

SERVER = os.environ.get("ALCOVE_SERVER", "")
SKIP_WHY = "set ALCOVE_SERVER (and ALCOVE_TOKEN) to a running alcove daemon to run these"
if not SERVER:
    print(f"SKIPPED e2e_sandboxes: {SKIP_WHY}", file=sys.stderr)
needs_server = unittest.skipUnless(SERVER, SKIP_WHY)

#: Marks this run's sandboxes (metadata), so lists see only them.
RUN = uuid.uuid4().hex[:12]
# Run again in the gVisor tier by crates/alcove/tests/gvisor_sandboxes.rs
# (and sandbox_network.rs): every sandbox made here is then a gVisor one.
ISOLATION = os.environ.get("SANDBOX_ISOLATION", "")


def make(test: unittest.TestCase, **options) -> Sandbox:
    """A sandbox for `test`, removed when the test ends (or its class, when
    `test` is the class)."""
    if ISOLATION:
        options.setdefault("isolation", ISOLATION)
    options.setdefault("timeout", 120)
    # A create that hangs (a sandbox frozen at birth, say) fails in 30 s, not 120.
    options.setdefault("request_timeout", 30)
    metadata = {"e2e": RUN}
    metadata.update(options.pop("metadata", {}))
    sb = Sandbox.create(metadata=metadata, **options)
    if sb.last_info.isolation != (ISOLATION or "container"):
        sb.kill()
        raise AssertionError(f"asked for {ISOLATION or 'container'}, got {sb.last_info.isolation}")
    cleanup = test.addClassCleanup if isinstance(test, type) else test.addCleanup
    cleanup(sb.close)
    cleanup(sb.kill)
    return sb


def wait_for(what: str, limit: float, check, every: float = 0.05):
    """Polls `check` until it returns something true; fails after `limit` s."""
    end = time.monotonic() + limit
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {limit} s waiting until {what}")
        time.sleep(every)


def server_address():
    parts = urlsplit(SERVER if "://" in SERVER else "http://" + SERVER)
    return parts.hostname, parts.port or 80


# A connect to HOST:PORT from inside a sandbox: prints connected or failed.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as e:
    print("failed", type(e).__name__, e)
"""


@needs_server
class Commands(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sb = make(cls)

    def test_shell_command_output_and_exit_code(self):
        r = self.sb.commands.run("echo hi; echo err >&2; exit 3")
        self.assertEqual(r.stdout, "hi\n")
        self.assertEqual(r.stderr, "err\n")
        self.assertEqual(r.exit_code, 3)
        self.assertIsNone(r.signal)
        self.assertFalse(r.timed_out)
        self.assertFalse(r.ok)
        self.assertIsInstance(r.pid, int)
        ok = self.sb.commands.run("true")
        self.assertEqual((ok.exit_code, ok.stdout, ok.stderr), (0, "", ""))

    def test_argv_is_not_run_by_a_shell(self):
        r = self.sb.commands.run(["printf", "%s|", "a b", "$HOME", "*"])
        self.assertEqual(r.stdout, "a b|$HOME|*|")
        self.assertEqual(r.exit_code, 0)
        # The same through sh -c expands: the difference is real.
        self.assertEqual(self.sb.commands.run("printf '%s|' $HOME").stdout, "/home/user|")

    def test_env_and_cwd(self):
        r = self.sb.commands.run("echo $FOO-$BAR; pwd", env={"FOO": "foo value", "BAR": "2"}, cwd="/tmp")
        self.assertEqual(r.stdout, "foo value-2\n/tmp\n")
        # Without them: the default working directory is home, and FOO unset.
        r = self.sb.commands.run("echo \"[$FOO]\"; pwd; echo $HOME")
        self.assertEqual(r.stdout, "[]\n/home/user\n/home/user\n")

    def test_stdin_given(self):
        r = self.sb.commands.run("wc -l; echo done", stdin="one\ntwo\nthree\n")
        self.assertEqual(r.stdout.split(), ["3", "done"])
        r = self.sb.commands.run(["cat"], stdin="h\u00e9llo\n")
        self.assertEqual(r.stdout, "h\u00e9llo\n")
        # No stdin given: the command reads end of file at once (does not hang).
        r = self.sb.commands.run("cat; echo eof", timeout=10)
        self.assertEqual((r.stdout, r.timed_out), ("eof\n", False))

    def test_programs_are_found_as_execvp_finds_them(self):
        # On the command's own PATH, and by a relative path from its cwd.
        self.sb.files.write("bin/hello-e2e", "#!/bin/sh\necho \"$0 from PATH\"\n")
        self.sb.commands.run("chmod +x bin/hello-e2e")
        r = self.sb.commands.run(["hello-e2e"], env={"PATH": "/home/user/bin:/usr/bin:/bin"})
        self.assertEqual((r.exit_code, r.stdout), (0, "/home/user/bin/hello-e2e from PATH\n"), r)
        r = self.sb.commands.run(["./hello-e2e"], cwd="/home/user/bin")
        self.assertEqual((r.exit_code, r.stdout), (0, "./hello-e2e from PATH\n"), r)
        # Not executable: refused, not run.
        self.sb.files.write("bin/notexec-e2e", "#!/bin/sh\necho ran\n")
        with self.assertRaises(AlcoveError) as caught:
            self.sb.commands.run(["notexec-e2e"], env={"PATH": "/home/user/bin"})
        self.assertIn("notexec-e2e", str(caught.exception))

    def test_a_command_starts_clean_in_a_group_of_its_own(self):
        # No signal blocked or ignored (the agent ignores SIGPIPE, glibc
        # its own 32 and 33: its commands must not), and its own process
        # group (kills reach its children). /proc lists SigBlk, then SigIgn.
        r = self.sb.commands.run(
            ["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status; cut -d' ' -f5 /proc/$$/stat; echo $$"]
        )
        lines = r.stdout.split("\n")
        self.assertEqual(r.exit_code, 0, r)
        if ISOLATION == "gvisor":
            # gVisor's /proc/PID/status has no signal lines: the group alone.
            self.assertEqual(lines[0], lines[1], r.stdout)
            return
        self.assertEqual(int(lines[0].split()[1], 16), 0, r.stdout)
        self.assertEqual(int(lines[1].split()[1], 16), 0, r.stdout)
        self.assertEqual(lines[2], lines[3], r.stdout)

    def test_command_not_found(self):
        # argv form: the agent cannot start it; the daemon answers 404 file_not_found.
        with self.assertRaises(NotFound) as caught:
            self.sb.commands.run(["no-such-command-e2e", "x"])
        self.assertEqual(caught.exception.status, 404)
        self.assertEqual(caught.exception.code, "file_not_found")
        self.assertIn("no-such-command-e2e", caught.exception.message)
        # Shell form: the shell starts, and says so with 127.
        r = self.sb.commands.run("no-such-command-e2e x")
        self.assertEqual(r.exit_code, 127)
        self.assertIn("not found", r.stderr)
        # A missing working directory is refused too (not a silent cwd change).
        with self.assertRaises(AlcoveError) as caught:
            self.sb.commands.run("pwd", cwd="/no/such/dir")
        self.assertEqual(caught.exception.status, 404, repr(caught.exception))
        self.assertIn("working directory /no/such/dir", str(caught.exception))

    def test_timeout_kills_the_command(self):
        t0 = time.monotonic()
        # Many members in the group: their deaths race the leader's report.
        # The timeout leaves room for 16 starts on a slow (emulated) CPU;
        # the sleeps are far longer than any run of it.
        # gVisor in a TCG guest starts a process in seconds: 4 members there,
        # and a limit below the client's own 30-s request timeout (make()).
        members, timeout = (4, 20) if ISOLATION == "gvisor" else (16, 4)
        r = self.sb.commands.run(
            f"for i in $(seq {members}); do sleep 120 & done;"
            " echo started; sleep 120; echo never",
            timeout=timeout,
        )
        elapsed = time.monotonic() - t0
        self.assertEqual(r.stdout, "started\n")
        self.assertTrue(r.timed_out, r)
        self.assertEqual(r.signal, "KILL")
        self.assertIsNone(r.exit_code)
        self.assertGreaterEqual(elapsed, timeout - 0.1)
        self.assertLess(elapsed, 100, "the timeout did not end it")
        # The sleep went with it (the whole process group is killed).
        ps = self.sb.commands.run(["ps", "-eo", "args"])
        self.assertIn("ps -eo args", ps.stdout, "ps sees no process: it proves nothing")
        self.assertNotIn("sleep 120", ps.stdout)
        listed = {p.pid: p for p in self.sb.commands.list()}
        self.assertFalse(listed[r.pid].running)
        self.assertEqual(listed[r.pid].signal, "KILL")

    def test_output_is_streamed_as_it_comes(self):
        seen = []
        t0 = time.monotonic()
        r = self.sb.commands.run(
            "echo a; sleep 1; echo b >&2; echo c",
            on_stdout=lambda t: seen.append((time.monotonic(), "out", t)),
            on_stderr=lambda t: seen.append((time.monotonic(), "err", t)),
        )
        end = time.monotonic()
        self.assertEqual((r.stdout, r.stderr, r.exit_code), ("a\nc\n", "b\n", 0))
        self.assertGreaterEqual(end - t0, 0.9)
        first = seen[0]
        self.assertEqual(first[1:], ("out", "a\n"), seen)
        self.assertGreater(end - first[0], 0.7, f"'a' came only at the end: {seen}")
        self.assertIn(("err", "b\n"), [s[1:] for s in seen])

    def test_background_command_and_reattach(self):
        h = self.sb.commands.run("echo before; sleep 1; echo after; exit 4", background=True)
        self.assertIsInstance(h.pid, int)
        # It runs while nobody is attached.
        running = {p.pid: p.running for p in self.sb.commands.list()}
        self.assertTrue(running.get(h.pid), running)
        time.sleep(0.4)  # "before" is printed before anyone attaches
        seen = []
        r = h.wait(on_stdout=lambda t: seen.append(t))
        self.assertEqual(r.stdout, "before\nafter\n")
        self.assertEqual(r.exit_code, 4)
        self.assertEqual(seen[0], "before\n", "the replay came first")
        # Reattaching by pid after the end replays the whole output again.
        again = self.sb.commands.connect(h.pid).wait()
        self.assertEqual((again.stdout, again.exit_code), ("before\nafter\n", 4))
        info = {p.pid: p for p in self.sb.commands.list()}[h.pid]
        self.assertEqual((info.running, info.exit_code), (False, 4))
        self.assertIn("echo before", str(info.cmd))

    def test_send_stdin_to_a_background_cat(self):
        h = self.sb.commands.run("cat", background=True)
        h.send_stdin("ping\n")
        got = []
        for out in h:  # the echo comes back while cat still runs; then close its stdin
            got.append(out.text)
            if "".join(got) == "ping\n":
                running = {p.pid: p.running for p in self.sb.commands.list()}
                self.assertTrue(running[h.pid], "cat ended before its stdin was closed")
                h.send_stdin(b"bye\n", close=True)
        self.assertEqual(h.result.stdout, "ping\nbye\n")
        self.assertEqual(h.result.exit_code, 0)
        # Its stdin is closed now: another write is a conflict.
        with self.assertRaises(AlcoveError):
            h.send_stdin("late\n")

    def test_kill_a_background_process(self):
        h = self.sb.commands.run("sleep 30", background=True)
        wait_for("sleep runs", 5, lambda: {p.pid: p.running for p in self.sb.commands.list()}.get(h.pid))
        t0 = time.monotonic()
        self.assertTrue(h.kill())
        r = h.wait()
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual((r.exit_code, r.signal, r.timed_out), (None, "KILL", False))
        # An ended process cannot be signalled: the daemon says 409.
        with self.assertRaises(Conflict):
            h.kill()

    def test_term_reaches_a_trap(self):
        h = self.sb.commands.run(
            "trap 'echo got-term; exit 7' TERM; echo ready; sleep 30 & wait", background=True
        )
        out = []
        for o in h:
            out.append(o.text)
            if "ready\n" in "".join(out) and len(out) == 1:
                self.assertTrue(h.kill("TERM"))
        self.assertEqual(h.result.stdout, "ready\ngot-term\n")
        self.assertEqual(h.result.exit_code, 7)


@needs_server
class Files(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sb = make(cls)

    def test_bytes_and_text_round_trip(self):
        data = bytes(range(256)) * 4 + b"\x00\xff end"
        w = self.sb.files.write("/home/user/data.bin", data)
        self.assertEqual(w.size, len(data))
        self.assertEqual(self.sb.files.read("/home/user/data.bin"), data)
        text = "h\u00e9llo \u2713\nline two\n"
        self.sb.files.write("notes/t.txt", text)  # relative: under home, parents made
        self.assertEqual(self.sb.files.read_text("/home/user/notes/t.txt"), text)
        # It is really in the sandbox: a command there sees the same bytes.
        r = self.sb.commands.run("sha256sum /home/user/data.bin; cat notes/t.txt")
        self.assertEqual(r.stdout.split()[0], hashlib.sha256(data).hexdigest())
        self.assertTrue(r.stdout.endswith(text))
        # Overwriting truncates.
        self.sb.files.write("notes/t.txt", "short")
        self.assertEqual(self.sb.files.read_text("notes/t.txt"), "short")
        # And what a command writes, a read sees.
        self.sb.commands.run("printf 'from sh' > /tmp/sh.txt")
        self.assertEqual(self.sb.files.read("/tmp/sh.txt"), b"from sh")

    def test_five_megabytes_streamed_both_ways(self):
        size = 5 << 20
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "up.bin")
            with open(src, "wb") as f:
                f.write(os.urandom(size))
            with open(src, "rb") as f:
                want = hashlib.sha256(f.read()).hexdigest()
            with open(src, "rb") as f:  # a file object: sent chunked
                w = self.sb.files.write("/home/user/big.bin", f)
            self.assertEqual(w.size, size)
            # wc, not stat: coreutils' statx flags are refused by Debian's gVisor.
            r = self.sb.commands.run("sha256sum /home/user/big.bin; wc -c < /home/user/big.bin")
            self.assertEqual(r.stdout.split()[0], want)
            self.assertEqual(r.stdout.split()[2], str(size))
            self.assertEqual(self.sb.files.upload(src, "/tmp/big2.bin").size, size)
            dst = os.path.join(tmp, "down.bin")
            self.assertEqual(self.sb.files.download("/tmp/big2.bin", dst), size)
            with open(dst, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want)
            pieces = list(self.sb.files.read_stream("/home/user/big.bin"))
            self.assertGreater(len(pieces), 1, "read_stream gave one piece")
            self.assertEqual(hashlib.sha256(b"".join(pieces)).hexdigest(), want)

    def test_list_make_dir_and_remove(self):
        self.sb.files.make_dir("tree/sub/deeper")  # parents made too
        self.sb.files.write("tree/f.txt", "x")
        self.sb.commands.run("ln -s f.txt tree/link")
        entries = {e.name: e for e in self.sb.files.list("/home/user/tree")}
        self.assertEqual(sorted(entries), ["f.txt", "link", "sub"])
        self.assertEqual(entries["f.txt"].type, "file")
        self.assertEqual(entries["f.txt"].size, 1)
        self.assertEqual(entries["f.txt"].path, "/home/user/tree/f.txt")
        self.assertEqual(entries["sub"].type, "dir")
        self.assertEqual(entries["link"].type, "symlink")
        self.assertGreater(entries["f.txt"].mtime, time.time() - 600)
        self.assertTrue(self.sb.files.exists("tree/sub/deeper"))
        # A directory that is not empty stays.
        with self.assertRaises(Conflict) as caught:
            self.sb.files.remove("tree/sub")
        self.assertEqual(caught.exception.code, "directory_not_empty")
        self.sb.files.remove("tree/sub/deeper")
        self.sb.files.remove("tree/sub")
        self.sb.files.remove("tree/f.txt")
        self.assertEqual(sorted(e.name for e in self.sb.files.list("tree")), ["link"])
        self.assertFalse(self.sb.files.exists("tree/f.txt"))
        with self.assertRaises(NotFound):
            self.sb.files.remove("tree/f.txt")
        with self.assertRaises(NotFound):
            self.sb.files.list("/home/user/no-such-dir")
        # Reading a directory is refused as such.
        with self.assertRaises(BadRequest) as caught:
            self.sb.files.read("tree")
        self.assertEqual(caught.exception.code, "is_a_directory")

    def test_missing_file(self):
        with self.assertRaises(NotFound) as caught:
            self.sb.files.read("/home/user/no-such-file")
        self.assertEqual(caught.exception.code, "file_not_found")
        self.assertEqual(caught.exception.status, 404)

    def test_outside_home_read_only_and_as_nobody(self):
        passwd = self.sb.files.read_text("/etc/passwd")
        self.assertIn("root:", passwd)
        with self.assertRaises(Forbidden) as caught:
            self.sb.files.write("/etc/x", "no")
        self.assertEqual(caught.exception.code, "permission_denied")
        r = self.sb.commands.run("test -e /etc/x && echo exists || echo absent")
        self.assertEqual(r.stdout, "absent\n")
        # /home/user is writable, the root of the filesystem is not.
        with self.assertRaises(Forbidden):
            self.sb.files.make_dir("/not-allowed-dir")

    def test_uploads_raced_by_the_sandboxs_own_code(self):
        """What the sandbox's code does to a file or its directory while an
        upload runs: the upload lands whole where it was aimed, or fails
        with 409 leaving the file as it was; it never mixes, and leaves no
        new file behind."""
        other = Sandbox.connect(self.sb.id)

        def slowly(then, beside):
            for i in range(6):
                if i == 2:
                    # The race is on only once the upload's new file is there.
                    wait_for(
                        "the upload's new file",
                        10,
                        lambda: other.commands.run(f"find {beside} -maxdepth 1 -name '.alcove-upload-*'").stdout,
                    )
                    then()
                yield b"z" * (64 << 10)
                time.sleep(0.05)

        def leftovers():
            r = self.sb.commands.run("find /home/user -name '.alcove-upload-*'")
            return r.stdout

        # Its directory renamed mid-way: the file lands in it, where it is now.
        self.sb.commands.run("mkdir -p race/moving && echo old > race/moving/t")
        self.sb.files.write(
            "race/moving/t",
            slowly(lambda: other.commands.run("mv race/moving race/moved && mkdir race/moving"), "race/moving"),
        )
        self.assertEqual(self.sb.files.read("race/moved/t"), b"z" * (6 << 16))
        self.assertEqual(leftovers(), "")
        # Made read-only mid-way: refused at its landing, the file as it was.
        self.sb.commands.run("echo old > race/ro")
        with self.assertRaises(Conflict):
            self.sb.files.write("race/ro", slowly(lambda: other.commands.run("chmod 444 race/ro"), "race"))
        self.assertEqual(self.sb.files.read_text("race/ro"), "old\n")
        r = self.sb.commands.run("find race/ro -printf '%m\\n'")
        self.assertEqual(r.stdout, "444\n", r.stderr)
        self.assertEqual(leftovers(), "")
        # A name that is a directory's, given or through a link, is refused first.
        self.sb.commands.run("mkdir -p race/d && ln -s d/ race/to-dir")
        for path in ["race/new/.", "race/d/..", "race/to-dir"]:
            with self.assertRaises(BadRequest, msg=path) as caught:
                self.sb.files.write(path, "x")
            self.assertEqual(caught.exception.code, "is_a_directory", path)
        # Uploads at once to a hard-linked file (copied into in place): one
        # whole upload wins, never a mix.
        self.sb.commands.run("echo old > race/h && ln race/h race/h2")
        for _ in range(3):
            errors = []

            def upload(byte):
                try:
                    Sandbox.connect(self.sb.id).files.write("race/h", bytes([byte]) * (2 << 20))
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    errors.append(e)

            threads = [threading.Thread(target=upload, args=(b,)) for b in b"abcd"]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [])
            got = self.sb.files.read("race/h2")
            self.assertEqual(len(got), 2 << 20)
            self.assertEqual(len(set(got)), 1, "two uploads mixed in one file")
        self.assertEqual(leftovers(), "")

    def test_watch_sees_a_create(self):
        self.sb.files.make_dir("watched")
        events = []
        got = threading.Event()

        def on_event(ev):
            events.append(ev)
            got.set()

        w = self.sb.files.watch("/home/user/watched", on_event=on_event)
        try:
            self.assertEqual(events, [], "events before anything happened")
            self.sb.files.write("watched/new.txt", "1")
            wait_for(
                "a create event",
                5,
                lambda: any(e.event == "create" and e.path == "/home/user/watched/new.txt" for e in events),
            )
            self.sb.commands.run("rm watched/new.txt")
            wait_for(
                "a delete event",
                5,
                lambda: any(e.event == "delete" and e.path == "/home/user/watched/new.txt" for e in events),
            )
        finally:
            w.stop()
        self.assertIsNone(w.error)
        kinds = [e.event for e in events]
        self.assertLess(kinds.index("create"), kinds.index("delete"), kinds)
        # The upload's own new file, before it landed, is not shown.
        self.assertFalse([e for e in events if "alcove-upload" in e.path], events)

    def test_an_upload_replaces_the_file_whole(self):
        self.sb.files.write("whole/keep.txt", "old")
        self.sb.commands.run("chmod 750 whole/keep.txt && ln -s keep.txt whole/link")

        def cut_short():
            for _ in range(4):
                yield b"n" * (1 << 20)
            raise RuntimeError("the client gave up")

        with self.assertRaises(Exception):
            self.sb.files.write("whole/keep.txt", cut_short())
        # The daemon lets the upload go once its body breaks off: the old
        # file stays, and the new one is removed.
        wait_for(
            "the cut upload's new file to go",
            10,
            lambda: [e.name for e in self.sb.files.list("whole")] == ["keep.txt", "link"],
        )
        self.assertEqual(self.sb.files.read_text("whole/keep.txt"), "old")
        # A whole upload lands: through the link, onto the file it names,
        # with that file's permissions; the link stays a link.
        self.sb.files.write("whole/link", "new")
        # find, not stat: gVisor refuses the statx flags coreutils' stat uses.
        r = self.sb.commands.run("find whole/keep.txt -printf '%m %y\\n'; find whole/link -printf '%y\\n'")
        self.assertEqual(r.stdout, "750 f\nl\n", r.stderr)
        self.assertEqual(self.sb.files.read_text("whole/keep.txt"), "new")
        self.assertEqual(sorted(e.name for e in self.sb.files.list("whole")), ["keep.txt", "link"])
        # A link to nothing yet: the file it names is made, the link stays.
        self.sb.commands.run("ln -s later.txt whole/ahead")
        self.sb.files.write("whole/ahead", "made")
        self.assertEqual(self.sb.files.read_text("whole/later.txt"), "made")
        r = self.sb.commands.run("find whole/ahead -printf '%y\\n'")
        self.assertEqual(r.stdout, "l\n", r.stderr)
        # Hard links keep sharing the file; a writable file in a directory
        # the sandbox's user may not write is written too (both in place).
        self.sb.commands.run("ln whole/keep.txt whole/hard && mkdir whole/shut && echo a > whole/shut/f && chmod 555 whole/shut")
        self.sb.files.write("whole/keep.txt", "shared")
        self.assertEqual(self.sb.files.read_text("whole/hard"), "shared")
        self.sb.files.write("whole/shut/f", "in place")
        self.assertEqual(self.sb.files.read_text("whole/shut/f"), "in place")
        r = self.sb.commands.run("find whole/shut /home/user -maxdepth 1 -name 'f' -o -name '.alcove-upload-*'")
        self.assertEqual(r.stdout, "whole/shut/f\n", r.stderr)
        with self.assertRaises(BadRequest) as caught:
            self.sb.files.write("whole/nothing/", "x")
        self.assertEqual(caught.exception.code, "is_a_directory")
        self.sb.commands.run("chmod 755 whole/shut")


@needs_server
class Code(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sb = make(cls)

    def test_state_is_kept(self):
        ex = self.sb.run_code("x = 1")
        self.assertEqual((ex.results, ex.error), ([], None))
        ex = self.sb.run_code("x + 1")
        self.assertEqual(ex.text, "2")
        self.assertEqual(ex.results[0].mime.get("text/plain"), "2")
        self.assertIsNone(ex.error)
        self.assertIsNotNone(ex.duration_ms)

    def test_an_interpreter_that_dies_ends_the_call_though_its_child_lives(self):
        # Its child keeps the interpreter's channel open: the call must end
        # with the interpreter, not with the child (60 s later).
        started = time.monotonic()
        ex = self.sb.run_code(
            "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\nos._exit(5)",
            timeout=120,
        )
        took = time.monotonic() - started
        self.assertIsNotNone(ex.error)
        self.assertEqual(ex.error.name, "InterpreterDied", ex.error)
        self.assertLess(took, 30, "the call waited for the interpreter's child")
        self.assertEqual(self.sb.run_code("1 + 1").text, "2")

    def test_a_large_result_is_cut_and_the_session_kept(self):
        self.sb.run_code("kept_here = 41")
        # 3 MiB of text, and one whose JSON form is larger still than its text.
        for big in ["'z' * (3 << 20)", "'\u00e9\x01' * (1 << 20)"]:
            ex = self.sb.run_code(big)
            self.assertIsNone(ex.error, ex.error)
            self.assertTrue(ex.text.endswith("..."), ex.text[-20:])
            self.assertGreater(len(ex.text), 100 << 10)
        self.assertEqual(self.sb.run_code("kept_here + 1").text, "42")

    def test_print_is_streamed(self):
        seen = []
        t0 = time.monotonic()
        ex = self.sb.run_code(
            "import sys, time\nprint('a')\ntime.sleep(1)\nprint('err', file=sys.stderr)\nprint('b')\n'end'",
            on_stdout=lambda t: seen.append((time.monotonic(), t)),
        )
        end = time.monotonic()
        self.assertEqual("".join(ex.stdout), "a\nb\n")
        self.assertEqual("".join(ex.stderr), "err\n")
        self.assertEqual(ex.text, "'end'")
        self.assertGreaterEqual(end - t0, 0.9)
        # print writes "a" and "\n" apart: how it is cut is not the point, when it comes is.
        self.assertTrue(seen[0][1].startswith("a"), seen)
        # What came before "b" (the "\n" after it may come apart, later).
        first_b = next(i for i, (_, text) in enumerate(seen) if "b" in text)
        before_b = [t for t, _ in seen[:first_b]]
        self.assertGreater(end - max(before_b), 0.7, f"'a' came only at the end: {seen}")

    def test_error_has_name_value_and_traceback(self):
        errors = []
        ex = self.sb.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
        self.assertIsNotNone(ex.error)
        self.assertEqual(ex.error.name, "ZeroDivisionError")
        self.assertEqual(ex.error.value, "division by zero")
        self.assertEqual(errors, [ex.error])
        tb = "\n".join(ex.error.traceback)
        self.assertIn("in f", tb)
        self.assertIn("ZeroDivisionError: division by zero", tb)
        self.assertNotIn("alcove_repl", tb, "the interpreter's own frames leaked")
        # The session goes on.
        self.assertEqual(self.sb.run_code("40 + 2").text, "42")

    def test_syntax_error(self):
        self.sb.run_code("before_syntax_error = 5")
        ex = self.sb.run_code("def f(:\n    pass")
        self.assertEqual(ex.error.name, "SyntaxError")
        self.assertEqual(ex.results, [])
        self.assertEqual(self.sb.run_code("before_syntax_error").text, "5")

    def test_interrupt(self):
        self.sb.run_code("kept = 'yes'")
        with self.assertRaises(Conflict):  # nothing runs yet
            self.sb.interrupt_code()
        started = threading.Event()
        box = {}

        def worker():
            try:
                box["ex"] = self.sb.run_code(
                    "print('started')\nwhile True:\n    pass",
                    on_stdout=lambda t: started.set() if "started" in t else None,
                    timeout=30,
                )
            except BaseException as e:  # noqa: BLE001 - reported below
                box["exc"] = e

        th = threading.Thread(target=worker, daemon=True)
        th.start()
        self.assertTrue(started.wait(15), f"the cell did not start: {box}")
        time.sleep(0.2)
        self.assertTrue(th.is_alive(), "the loop ended by itself")
        t0 = time.monotonic()
        self.sb.interrupt_code()
        th.join(10)
        self.assertFalse(th.is_alive(), "the cell was not interrupted")
        self.assertNotIn("exc", box)
        ex = box["ex"]
        self.assertIsNotNone(ex.error)
        self.assertEqual(ex.error.name, "KeyboardInterrupt")
        self.assertLess(time.monotonic() - t0, 3)
        # Same session, same variables.
        self.assertEqual(self.sb.run_code("kept").text, "'yes'")

    def test_an_interrupt_before_the_code_runs_is_not_lost(self):
        """The interpreter, held stopped, gets the call and the interrupt at
        once; it says it was waiting and the daemon interrupts again."""
        self.sb.run_code("kept = 'yes'")
        pid = int(self.sb.run_code("import os\nos.getpid()").text)
        self.assertEqual(self.sb.commands.run(f"kill -STOP {pid}").exit_code, 0)
        box = {}
        th = threading.Thread(target=lambda: box.update(ex=self.sb.run_code(
            "while True:\n    pass", timeout=60)), daemon=True)
        try:
            th.start()
            until = time.monotonic() + 15
            while True:  # once the call is sent (the interpreter cannot have read it)
                try:
                    self.sb.interrupt_code()
                    break
                except Conflict:
                    self.assertLess(time.monotonic(), until, "the call was never sent")
                    time.sleep(0.005)
            state = self.sb.commands.run(f"cat /proc/{pid}/stat").stdout.split(") ")[1][0]
            self.assertEqual(state, "T", "the interpreter was not held stopped")
        finally:
            self.sb.commands.run(f"kill -CONT {pid}")
        th.join(10)
        self.assertFalse(th.is_alive(), "the interrupt was lost: the code ran on")
        self.assertEqual(box["ex"].error.name, "KeyboardInterrupt", box["ex"].error)
        self.assertEqual(self.sb.run_code("kept").text, "'yes'")

    def test_cell_timeout_interrupts(self):
        self.sb.run_code("survivor = 9")
        t0 = time.monotonic()
        ex = self.sb.run_code("while True:\n    pass", timeout=1)
        self.assertEqual(ex.error.name, "KeyboardInterrupt")
        self.assertLess(time.monotonic() - t0, 6)
        self.assertEqual(self.sb.run_code("survivor").text, "9")

    def test_runs_as_nobody(self):
        self.assertEqual(self.sb.run_code("import os\nos.getuid(), os.getgid()").text, "(65534, 65534)")


@needs_server
class Lifecycle(unittest.TestCase):
    def test_metadata_and_state_filters(self):
        tag = uuid.uuid4().hex[:8]
        a = make(self, metadata={"t": tag, "role": "a"})
        b = make(self, metadata={"t": tag, "role": "b"})
        self.assertEqual(a.last_info.metadata, {"e2e": RUN, "t": tag, "role": "a"})
        ids = lambda **q: sorted(s.id for s in Sandbox.list(**q))  # noqa: E731
        self.assertEqual(ids(metadata={"t": tag}), sorted([a.id, b.id]))
        self.assertEqual(ids(metadata={"t": tag, "role": "a"}), [a.id])
        self.assertEqual(ids(metadata={"t": tag, "role": "c"}), [])
        b.pause()
        self.assertEqual(ids(metadata={"t": tag}, state="paused"), [b.id])
        self.assertEqual(ids(metadata={"t": tag}, state="running"), [a.id])
        listed = {s.id: s for s in Sandbox.list(metadata={"t": tag})}
        self.assertEqual(listed[b.id].state, "paused")
        self.assertEqual(listed[a.id].metadata["role"], "a")
        # Removed running: removing a paused one is PausedRemoval's case.
        self.assertEqual(b.resume().state, "running")

    def test_pause_resume_keeps_memory_and_files(self):
        sb = make(self)
        sb.run_code("v = 41")
        sb.files.write("keep.txt", "kept")
        ticker = sb.commands.run("while :; do date +%s.%N >> ticks.txt; sleep 0.05; done", background=True)

        def ticks():
            try:
                text = sb.files.read_text("ticks.txt")
            except NotFound:
                return []
            # Whole lines only: the last may be mid-write.
            return [float(t) for t in text.split("\n")[:-1]]

        # A few ticks first, however long a tick takes (a TCG guest, gVisor in one).
        wait_for("the ticker ticks", 60, lambda: len(ticks()) >= 2, every=0.1)
        info = sb.pause()
        self.assertEqual(info.state, "paused")
        self.assertEqual(sb.info().state, "paused")
        paused_at = time.time()
        time.sleep(1.5)
        self.assertEqual(sb.info().state, "paused", "it resumed by itself")
        # A call resumes it: the interpreter's memory and the file are there.
        self.assertEqual(sb.run_code("v + 1").text, "42")
        self.assertEqual(sb.info().state, "running")
        self.assertEqual(sb.files.read_text("keep.txt"), "kept")
        # The ticker was frozen, not merely unobserved: a gap as long as the pause.
        wait_for("the ticker ticks again", 60, lambda: any(t > paused_at + 1.5 for t in ticks()), every=0.1)
        self.assertTrue(ticker.kill())
        ticker.wait()
        seen = ticks()
        self.assertGreaterEqual(len(seen), 3, f"too few ticks to see a gap: {seen}")
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        self.assertGreater(max(gaps), 1.2, f"no gap while paused: {gaps}")
        during = [t for t in seen if paused_at + 0.2 < t < paused_at + 1.3]
        self.assertEqual(during, [], "it ticked while paused")
        # pause and resume as calls of their own.
        self.assertEqual(sb.pause().state, "paused")
        self.assertEqual(sb.pause().state, "paused")  # again: no change, no error
        self.assertEqual(sb.resume().state, "running")
        self.assertEqual(sb.commands.run("cat keep.txt").stdout, "kept")

    def test_idle_pause(self):
        sb = make(self, idle_pause=1)
        self.assertEqual(sb.last_info.idle_pause_s, 1)
        sb.run_code("y = 7")
        used = time.monotonic()
        self.assertEqual(sb.info().state, "running")
        wait_for("it pauses when idle", 5, lambda: sb.info().state == "paused", every=0.1)
        idle = time.monotonic() - used
        self.assertGreaterEqual(idle, 0.9, "paused before it was idle for idle_pause")
        self.assertEqual(sb.run_code("y").text, "7")
        self.assertEqual(sb.info().state, "running")
        sb.kill()  # now, before it pauses again (removing a paused one is PausedRemoval's case)

    def test_idle_pause_waits_for_a_call_in_progress(self):
        # A call that takes longer than idle_pause is use, not idleness: the
        # sandbox must not be frozen under it.
        sb = make(self, idle_pause=1)
        box = {}

        def worker():
            try:
                box["r"] = sb.commands.run("sleep 2.5; echo done", timeout=20)
            except BaseException as e:  # noqa: BLE001 - reported below
                box["e"] = e

        t0 = time.monotonic()
        th = threading.Thread(target=worker, daemon=True)
        th.start()
        th.join(8)
        hung = th.is_alive()
        state = sb.info().state
        if hung:
            sb.resume()  # thaw it, so that the call ends and nothing is left waiting
            th.join(30)
        self.assertFalse(
            hung,
            f"a 2.5 s command in a sandbox with idle_pause=1 had not ended after 8 s; "
            f"the sandbox was {state} (paused under a running call)",
        )
        self.assertNotIn("e", box)
        self.assertEqual(box["r"].stdout, "done\n")
        self.assertLess(time.monotonic() - t0, 6)
        sb.kill()  # now, before it pauses (removing a paused one is PausedRemoval's case)

    def test_timeout_reclaims_and_set_timeout_extends(self):
        t0 = time.monotonic()
        tag = uuid.uuid4().hex[:8]
        short = make(self, timeout=2, metadata={"t": tag})
        extended = make(self, timeout=2, metadata={"t": tag})
        info = extended.set_timeout(60)
        self.assertEqual(info.timeout_s, 60)
        self.assertGreater(info.expires_at, time.time() + 50)
        self.assertEqual(short.last_info.timeout_s, 2)

        def gone():
            try:
                short.info()
                return False
            except NotFound as e:
                return e

        err = wait_for("the short one is reclaimed", 8, gone, every=0.1)
        self.assertGreaterEqual(time.monotonic() - t0, 1.5, "reclaimed before its timeout")
        self.assertEqual(err.status, 404)
        self.assertEqual(err.code, "sandbox_not_found")
        ids = [s.id for s in Sandbox.list(metadata={"t": tag})]
        self.assertEqual(ids, [extended.id])
        with self.assertRaises(NotFound):
            short.commands.run("true")
        self.assertFalse(short.kill())
        # The extended one outlives its first timeout.
        time.sleep(max(0.0, t0 + 3.5 - time.monotonic()))
        self.assertEqual(extended.info().state, "running")
        self.assertEqual(extended.commands.run("echo alive").stdout, "alive\n")
        # What the reclaimed ones held serves new sandboxes (none frozen at birth).
        for i in range(3):
            nxt = make(self, request_timeout=15)
            self.assertEqual(nxt.commands.run(f"echo next-{i}", timeout=10).stdout, f"next-{i}\n")

    def test_kill(self):
        sb = make(self)
        self.assertEqual(sb.commands.run("echo up").stdout, "up\n")
        self.assertTrue(sb.kill())
        self.assertEqual(sb.last_info.state, "removed")
        with self.assertRaises(NotFound):
            sb.info()
        with self.assertRaises(NotFound):
            Sandbox.connect(sb.id)
        with self.assertRaises(NotFound):
            sb.commands.run("true")
        self.assertFalse(sb.kill())
        self.assertNotIn(sb.id, [s.id for s in Sandbox.list(metadata={"e2e": RUN})])

    def test_connect_sees_the_same_sandbox(self):
        sb = make(self)
        sb.files.write("/tmp/marker", "m")
        other = Sandbox.connect(sb.id)
        self.addCleanup(other.close)
        self.assertEqual(other.files.read_text("/tmp/marker"), "m")
        self.assertEqual(other.info().id, sb.id)


@needs_server
class PausedRemoval(unittest.TestCase):
    """A paused (frozen) sandbox removed, by a call or by its timeout: all of
    it goes, and what it held (its cgroups, a slot of the pool) serves the
    next sandboxes thawed."""

    def assertNextSandboxesWork(self):
        for i in range(3):
            t0 = time.monotonic()
            try:
                nxt = make(self, request_timeout=10)
            except AlcoveError as e:
                # Say whether the daemon still answers at all.
                probe = Transport(request_timeout=5)
                try:
                    t1 = time.monotonic()
                    n = len(probe.call("GET", "/v1/sandboxes")["sandboxes"])
                    answers = f"it lists {n} sandboxes in {time.monotonic() - t1:.2f} s"
                except AlcoveError as e2:
                    answers = f"and a list gets no answer either: {e2}"
                try:
                    t1 = time.monotonic()
                    probe.call("DELETE", "/v1/sandboxes/sb-none")
                except NotFound:
                    answers += f"; a DELETE of no sandbox is a 404 in {time.monotonic() - t1:.2f} s"
                except AlcoveError as e2:
                    answers += f"; a DELETE of no sandbox: {e2}"
                finally:
                    probe.close()
                self.fail(f"sandbox {i} after the removal did not start: {e!r}; {answers}")
            self.assertEqual(nxt.commands.run(f"echo next-{i}", timeout=10).stdout, f"next-{i}\n")
            self.assertLess(time.monotonic() - t0, 10)
            nxt.kill()

    def test_kill_a_paused_sandbox(self):
        sb = make(self, request_timeout=10)
        sb.run_code("z = 1")
        h = sb.commands.run("sleep 60", background=True)
        self.assertTrue({p.pid: p.running for p in sb.commands.list()}[h.pid])
        self.assertEqual(sb.pause().state, "paused")
        t0 = time.monotonic()
        self.assertTrue(sb.kill())
        self.assertLess(time.monotonic() - t0, 5)
        with self.assertRaises(NotFound):
            sb.info()
        self.assertNextSandboxesWork()

    def test_timeout_reclaims_a_paused_sandbox(self):
        sb = make(self, timeout=2, request_timeout=10)
        sb.commands.run("sleep 60", background=True)
        self.assertEqual(sb.pause().state, "paused")
        wait_for("the paused one is reclaimed", 8, lambda: sb.id not in [s.id for s in Sandbox.list()])
        with self.assertRaises(NotFound):
            sb.info()
        self.assertNextSandboxesWork()


@needs_server
class Limits(unittest.TestCase):
    def test_a_full_disk_refuses_the_upload_and_the_sandbox_lives_on(self):
        # Files are kept in memory and count against it: the default disk is
        # half the memory, so the disk says it is full (507) before the
        # memory limit could end the sandbox.
        sb = make(self)
        sleeper = sb.commands.run("sleep 600", background=True)
        big = (b"\0" * (1 << 20) for _ in range(300))
        with self.assertRaises(AlcoveError) as refused:
            sb.files.write("big", big)
        self.assertEqual((refused.exception.status, refused.exception.code), (507, "sandbox_disk_full"))
        self.assertEqual(sb.commands.run("echo alive").stdout, "alive\n")
        # The upload failed whole: the file it was to replace is as it was,
        # and its own part is gone (the disk is free again).
        sb.files.write("kept", "before")
        with self.assertRaises(AlcoveError) as refused:
            sb.files.write("kept", (b"\0" * (1 << 20) for _ in range(300)))
        self.assertEqual(refused.exception.code, "sandbox_disk_full")
        self.assertEqual(sb.files.read_text("kept"), "before")
        self.assertEqual(sorted(e.name for e in sb.files.list("/home/user") if "alcove-upload" in e.name), [])
        running = [p.pid for p in sb.commands.list() if p.running]
        self.assertIn(sleeper.pid, running)
        # A body refused before it was all read gets the daemon's answer, not a broken pipe.
        for data in [b"x" * (8 << 20), (b"x" * (1 << 20) for _ in range(8))]:
            with self.assertRaises(AlcoveError) as cm:
                sb.files.write("/usr/x", data)
            self.assertIn(cm.exception.status, (403, 507), cm.exception)

        async def write_async():
            from alcove.aio import AsyncSandbox

            async with await AsyncSandbox.connect(sb.id) as asb:
                await asb.files.write("/usr/x", b"x" * (8 << 20))

        import asyncio

        with self.assertRaises(AlcoveError) as cm:
            asyncio.run(write_async())
        self.assertIn(cm.exception.status, (403, 507), cm.exception)

    def test_a_disk_as_large_as_the_memory_is_refused(self):
        with self.assertRaises(BadRequest) as refused:
            make(self, memory="256M", disk="256M")
        self.assertIn("not less than memory", str(refused.exception))

    def test_code_in_the_sandbox_cannot_take_the_agents_socket(self):
        sb = make(self)
        if ISOLATION == "gvisor":
            return self.gvisor_agent_socket_is_out_of_reach(sb)
        probe = (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "pidfd = libc.syscall(434, 1, 0)\n"  # pidfd_open(1): the agent
            "print('pidfd', pidfd)\n"
            "got = [libc.syscall(438, pidfd, n, 0) for n in range(3, 256)]\n"  # pidfd_getfd
            "print('stolen', [g for g in got if g >= 0])\n"
            "try:\n    os.listdir('/proc/1/fd'); print('fds listed')\nexcept PermissionError:\n    print('fds hidden')\n"
        )
        r = sb.commands.run(["python3", "-c", probe])
        self.assertEqual(r.exit_code, 0, r)
        pidfd = int(r.stdout.split("pidfd ")[1].split()[0])
        self.assertGreaterEqual(pidfd, 0, f"the probe could not even name the agent: {r.stdout}")
        self.assertIn("stolen []", r.stdout)
        self.assertIn("fds hidden", r.stdout)
        self.assertEqual(sb.commands.run("echo still served").stdout, "still served\n")

    def gvisor_agent_socket_is_out_of_reach(self, sb):
        # gVisor (Debian's 2022 runsc) has no pidfds, and lists pid 1's
        # descriptors despite the agent being non-dumpable: neither path
        # may hand its socket over, nor may ptrace.
        probe = (
            "import ctypes, os, stat\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('pidfd', libc.syscall(434, 1, 0))\n"
            "fds = os.listdir('/proc/1/fd')\n"
            "print('fds', len(fds))\n"
            "got = []\n"
            "for n in fds:\n"
            "    try:\n"
            "        fd = os.open('/proc/1/fd/' + n, os.O_RDWR)\n"
            "    except OSError:\n"
            "        continue\n"
            "    if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
            "        got.append(n)\n"
            "print('stolen', got)\n"
            "print('ptrace', libc.ptrace(16, 1, 0, 0))\n"
        )
        r = sb.commands.run(["python3", "-c", probe])
        self.assertEqual(r.exit_code, 0, r)
        self.assertIn("pidfd -1", r.stdout)
        # The socket is there to be tried: stdio and it.
        self.assertGreaterEqual(int(r.stdout.split("fds ")[1].split()[0]), 4, r.stdout)
        self.assertIn("stolen []", r.stdout)
        self.assertIn("ptrace -1", r.stdout)
        self.assertEqual(sb.commands.run("echo still served").stdout, "still served\n")

    def test_memory_limit_kills_the_command_not_the_sandbox(self):
        sb = make(self, memory="64M")
        self.assertEqual(sb.last_info.limits.memory_bytes, 64 << 20)
        small = sb.commands.run(["python3", "-c", "b = b'x' * (16 << 20); print('small ok')"])
        self.assertEqual(small.stdout, "small ok\n", small)
        if ISOLATION == "gvisor":
            sb.files.write("kept.txt", "kept")
        r = sb.commands.run(["python3", "-c", "b = b'x' * (200 << 20); print('allocated')"], timeout=30)
        self.assertNotIn("allocated", r.stdout)
        self.assertFalse(r.timed_out)
        if ISOLATION == "gvisor":
            # The limit holds the whole sandbox (its Sentry holds the guest's
            # memory): it ends, stopped with its files, and the next call
            # starts it again.
            wait_for("the sandbox stops", 15, lambda: sb.info().state == "stopped")
            info = sb.info()
            self.assertEqual(info.state, "stopped", info)
            self.assertIn("memory limit", info.reason or "", info)
            self.assertEqual(sb.commands.run("cat kept.txt").stdout, "kept")
            self.assertEqual(sb.info().state, "running")
            return
        self.assertTrue(r.signal == "KILL" or (r.exit_code or 0) != 0, r)
        self.assertEqual(sb.commands.run("echo survived").stdout, "survived\n")
        self.assertEqual(sb.info().state, "running")

    def test_pids_limit_stops_a_fork_bomb(self):
        sb = make(self, pids=32)
        self.assertEqual(sb.last_info.limits.pids, 32)
        sb.run_code("import os")  # the interpreter is up before the bomb: it counts without forking
        r = sb.commands.run(
            "for i in $(seq 200); do sleep 4 >/dev/null 2>&1 & done; echo all-forked", timeout=30
        )
        self.assertNotIn("all-forked", r.stdout)
        self.assertNotEqual(r.exit_code, 0, r)
        if ISOLATION == "gvisor":
            # The limit holds the Sentry's host tasks: past it the sandbox
            # ends, stopped with its files, and the next call starts it again.
            wait_for("the sandbox stops", 15, lambda: sb.info().state == "stopped")
            info = sb.info()
            self.assertEqual(info.state, "stopped", info)
            self.assertIn("task limit", info.reason or "", info)
            self.assertEqual(sb.commands.run("echo survived").stdout, "survived\n")
            self.assertEqual(sb.info().state, "running")
            return
        self.assertIn("fork", r.stderr.lower(), r)
        alive = sb.run_code("len([p for p in os.listdir('/proc') if p.isdigit()])")
        count = int(alive.text)
        self.assertLessEqual(count, 32)
        self.assertGreaterEqual(count, 20, "the bomb never reached the limit")

        def works():
            try:
                return sb.commands.run("echo survived").stdout == "survived\n"
            except AlcoveError:
                return False  # no pid to start it yet

        wait_for("a command runs again", 15, works, every=0.5)
        self.assertEqual(sb.info().state, "running")

    def test_cannot_see_host_processes(self):
        sb = make(self)
        listing = sb.commands.run(
            [
                "python3",
                "-c",
                "import json, os\n"
                "procs = {}\n"
                "for p in os.listdir('/proc'):\n"
                "    if p.isdigit():\n"
                "        try:\n"
                "            procs[p] = open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
                "        except OSError:\n"
                "            pass\n"
                "print(json.dumps(procs))",
            ]
        )
        procs = json.loads(listing.stdout)
        self.assertLess(len(procs), 10, procs)
        self.assertIn("sandbox-agent", procs.get("1", ""), procs)
        joined = "\n".join(procs.values())
        self.assertNotIn("e2e_sandboxes", joined)
        self.assertNotIn("alcove serve", joined)
        # The host does see this test's process: the check above could fail.
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            self.assertIn(b"e2e_sandboxes", f.read())
        ps = sb.commands.run("ps aux")
        self.assertEqual(ps.exit_code, 0, ps)
        self.assertLess(len(ps.stdout.splitlines()), 10, ps.stdout)

    def test_no_network_by_default(self):
        host, port = server_address()
        # From here the daemon's port answers ...
        socket.create_connection((host, port), timeout=3).close()
        sb = make(self)
        self.assertEqual(sb.last_info.net, "none")
        r = sb.commands.run(["python3", "-c", CONNECT, host, str(port)])
        self.assertTrue(r.stdout.startswith("failed"), r)
        # ... and from a sandbox on the host's network too: the check can fail.
        open_net = make(self, net="host")
        self.assertEqual(open_net.last_info.net, "host")
        r = open_net.commands.run(["python3", "-c", CONNECT, host, str(port)])
        self.assertEqual(r.stdout, "connected\n", r)

    def test_runs_as_nobody(self):
        sb = make(self)
        r = sb.commands.run("id -u; id -g")
        self.assertEqual(r.stdout, "65534\n65534\n")
        # Root's files stay root's.
        r = sb.commands.run("touch /etc/e2e-x 2>&1; echo rc=$?")
        self.assertIn("rc=1", r.stdout)


@needs_server
class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sb = make(cls)
        cls.transport = Transport()
        cls.addClassCleanup(cls.transport.close)

    def assertBad(self, fn, *args, code="invalid_request", **kw):
        with self.assertRaises(BadRequest) as caught:
            fn(*args, **kw)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.code, code, caught.exception.message)
        return caught.exception

    def test_create_timeout_zero(self):
        e = self.assertBad(Sandbox.create, timeout=0)
        self.assertIn("timeout_s", e.message)
        self.assertBad(Sandbox.create, timeout=7 * 24 * 3600 + 1)
        self.assertBad(Sandbox.create, idle_pause=7 * 24 * 3600 + 1)

    def test_create_unknown_field(self):
        e = self.assertBad(self.transport.call, "POST", "/v1/sandboxes", json_body={"timeout_s": 5, "colour": "red"})
        self.assertIn("colour", e.message)
        self.assertBad(self.transport.call, "POST", "/v1/sandboxes", body=b"{not json", content_type="application/json")

    def test_create_bad_options(self):
        self.assertBad(Sandbox.create, memory="lots")
        self.assertBad(Sandbox.create, memory="1K")
        self.assertBad(Sandbox.create, pids=0)
        self.assertBad(Sandbox.create, net="bridge")
        self.assertBad(Sandbox.create, cpus=0.0)

    def test_metadata_bounds(self):
        many = {f"k{i}": "v" for i in range(33)}
        e = self.assertBad(Sandbox.create, metadata=many)
        self.assertIn("33", e.message)
        self.assertBad(Sandbox.create, metadata={"bad key": "v"})
        self.assertBad(Sandbox.create, metadata={"k" * 65: "v"})
        self.assertBad(Sandbox.create, metadata={"k": "v" * 257})
        # The bounds themselves are accepted: 32 keys (with ours), a 64-byte key.
        ok = {f"k{i}": "v" for i in range(30)}
        ok["k" * 64] = "v" * 256
        sb = make(self, metadata=ok)
        self.assertEqual(len(sb.last_info.metadata), 32)
        self.assertBad(Sandbox.list, metadata={"bad key": "v"})
        self.assertBad(Sandbox.list, state="sleeping")
        self.assertBad(self.transport.call, "GET", "/v1/sandboxes", [("colour", "red")])

    def test_missing_sandbox(self):
        ghost = Sandbox(SandboxInfo(id="sb-does-not-exist", state="running"), self.transport)
        for call in (
            lambda: ghost.commands.run("true"),
            lambda: ghost.files.read("/etc/passwd"),
            lambda: ghost.run_code("1"),
            ghost.info,
            ghost.pause,
            lambda: ghost.set_timeout(10),
        ):
            with self.assertRaises(NotFound) as caught:
                call()
            self.assertEqual(caught.exception.code, "sandbox_not_found")
        self.assertFalse(ghost.kill())
        with self.assertRaises(NotFound):
            Sandbox.connect("sb-does-not-exist")

    def test_bad_exec_bodies(self):
        path = f"/v1/sandboxes/{self.sb.id}/exec"
        self.assertBad(self.transport.call, "POST", path, json_body={"cmd": []})
        self.assertBad(self.transport.call, "POST", path, json_body={"cmd": "true", "timeout_s": 0})
        self.assertBad(self.transport.call, "POST", path, json_body={"cmd": "true", "shell": True})
        self.assertBad(self.transport.call, "POST", path, json_body={"cmd": 5})
        self.assertBad(self.sb.set_timeout, 0)
        self.assertBad(self.transport.call, "POST", f"/v1/sandboxes/{self.sb.id}/code", json_body={"code": "1", "language": "ruby"})

    def test_too_long_path(self):
        long_path = "/tmp/" + "a" * 5000
        e = self.assertBad(self.sb.files.read, long_path)
        self.assertIn("4096", e.message)
        self.assertBad(self.sb.files.write, long_path, "x")
        self.assertBad(self.sb.files.list, long_path)
        # A name over NAME_MAX (255) in an otherwise short path: refused, not a 500.
        with self.assertRaises(AlcoveError) as caught:
            self.sb.files.write("/tmp/" + "n" * 300, "x")
        self.assertTrue(400 <= caught.exception.status < 500, repr(caught.exception))

    def test_process_not_found(self):
        with self.assertRaises(NotFound) as caught:
            self.sb.commands.connect(999999).wait()
        self.assertEqual(caught.exception.code, "process_not_found")
        self.assertFalse(self.sb.commands.kill(999999))
        with self.assertRaises(NotFound):
            self.sb.commands.send_stdin(999999, "x")
        self.assertBad(self.transport.call, "GET", f"/v1/sandboxes/{self.sb.id}/processes/abc/output")
        self.assertBad(self.transport.call, "POST", f"/v1/sandboxes/{self.sb.id}/processes/1/kill", json_body={"signal": "NOPE"})

    def test_wrong_token(self):
        with self.assertRaises(Unauthorized):
            Sandbox.list(token="not-the-token")


from alcove import Pty  # noqa: E402

# A process that opens terminals in its sandbox until the kernel refuses,
# says how many it got and why it stopped, and holds them.
OPEN_PTYS = """
import errno, os, sys, time
held = []
try:
    while True:
        held.append(os.openpty())
except OSError as e:
    print(len(held), errno.errorcode.get(e.errno, e.errno), flush=True)
time.sleep(60)
"""


@needs_server
class GvisorCopies(unittest.TestCase):
    """The gVisor tier's file copies (its agent pumps files and watches into
    pipes, as gVisor cannot hand descriptors out): a copy cut short fails
    the read, and a closed watch's copy ends. Run by gvisor_sandboxes.rs."""

    @classmethod
    def setUpClass(cls):
        cls.sb = make(cls, isolation="gvisor")

    def agent_children(self):
        # The agent is pid 1; its copies are forks of it (the same command line).
        r = self.sb.commands.run("ps -eo pid,ppid,args")
        self.assertIn("ps -eo", r.stdout, "ps sees nothing: it proves nothing")
        return [l for l in r.stdout.splitlines()[1:] if "sandbox-agent" in l and l.split()[0] != "1"]

    def test_a_read_cut_short_fails_rather_than_ending_early(self):
        # More than the pipe, the daemon and the sockets hold while the
        # client waits: the copy is still running when it is killed.
        size = 24 << 20
        self.sb.commands.run(f"head -c {size} /dev/zero > big.bin")
        stream = self.sb.files.read_stream("big.bin", chunk_size=1 << 16)
        got = len(next(iter(stream)))
        copies = wait_for("the copy runs", 10, self.agent_children)
        self.assertEqual(len(copies), 1, copies)
        # The sandbox's own code (its user is the agent's) kills the copy.
        self.sb.commands.run(["kill", "-9", copies[0].split()[0]])
        with self.assertRaises(Exception) as caught:
            for chunk in stream:
                got += len(chunk)
        self.assertLess(got, size, "the whole file came: the copy was not cut short")
        print(f"read cut at {got} of {size} bytes: {type(caught.exception).__name__}", file=sys.stderr)
        # A whole read still works.
        self.sb.files.write("small.txt", "whole")
        self.assertEqual(self.sb.files.read_text("small.txt"), "whole")

    def test_a_reader_that_goes_away_ends_its_copy(self):
        self.sb.commands.run(f"head -c {24 << 20} /dev/zero > gone.bin")
        stream = self.sb.files.read_stream("gone.bin", chunk_size=1 << 16)
        next(iter(stream))
        wait_for("the copy runs", 10, self.agent_children)
        stream.close()  # the client goes away mid-read
        wait_for("the copy ends", 15, lambda: not self.agent_children())

    def test_a_closed_watch_ends_its_copy(self):
        for i in range(5):
            w = self.sb.files.watch("/home/user")
            self.sb.commands.run(f"touch w{i}")
            w.stop()
        wait_for("the watches' copies end", 10, lambda: not self.agent_children())


@needs_server
class Terminal(unittest.TestCase):
    """Commands on a pseudo-terminal (``pty=``): isatty, size, resize,
    ^C through the line discipline, one merged stream, and a bound on how
    many terminals one sandbox may hold."""

    @classmethod
    def setUpClass(cls):
        cls.sb = make(cls)

    def running(self, pid):
        return {p.pid: p for p in self.sb.commands.list()}[pid]

    def test_a_terminal_is_a_tty_and_pipes_are_not(self):
        check = "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys"
        r = self.sb.commands.run(check, pty=(80, 24))
        self.assertRegex(r.stdout, r"^/dev/pts/\d+\r\nall-ttys\r\n$")
        self.assertEqual((r.exit_code, r.stderr), (0, ""))
        # The same without one: the difference is real.
        r = self.sb.commands.run(check)
        self.assertEqual((r.stdout, r.exit_code), ("not a tty\n", 1))
        # It is the command's controlling terminal, and its session's leader is the command.
        r = self.sb.commands.run("exec sh -c 'echo $$; ps -o sid= -p $$; exec < /dev/tty && echo ctty'", pty=(80, 24))
        pid, sid, ctty = r.stdout.split()
        self.assertEqual((pid, sid, ctty), (str(r.pid), str(r.pid), "ctty"))

    def test_a_terminal_is_closed_after_its_command_ends_whatever_still_holds_it(self):
        # A job that ignores the hangup its session leader's exit sends, and
        # keeps the terminal open as its stdio.
        r = self.sb.commands.run("trap '' HUP; sleep 300 & echo $!", pty=(80, 24))
        left = r.stdout.strip()
        self.assertTrue(left.isdigit(), r)
        self.assertEqual(self.sb.commands.run(f"kill -0 {left} && echo alive").stdout, "alive\n")
        self.assertEqual(
            self.sb.commands.run(f"ls -l /proc/{left}/fd/1").stdout.split()[-1][:9], "/dev/pts/"
        )

        def closed():
            try:
                self.sb.commands.resize(r.pid, 80, 24)
                return False  # the daemon still holds it open
            except Conflict:
                return True

        # The daemon closed it a moment after the command's end (its
        # descriptor and the sandbox's terminal are not held for the job).
        wait_for("the terminal is closed", 15, closed, every=0.5)

    def test_size_and_term(self):
        r = self.sb.commands.run("stty size; echo $TERM", pty=Pty(cols=132, rows=43))
        self.assertEqual(r.stdout, "43 132\r\nxterm-256color\r\n")
        r = self.sb.commands.run("stty size; echo $TERM", pty=Pty(cols=1, rows=1000), env={"TERM": "dumb"})
        self.assertEqual(r.stdout, "1000 1\r\ndumb\r\n")

    def test_stderr_arrives_on_the_one_stream(self):
        seen = []
        r = self.sb.commands.run(
            "echo out; echo err >&2; python3 -c 'import sys; sys.stderr.write(\"py-err\\n\")'",
            pty=(80, 24),
            on_stderr=seen.append,
        )
        self.assertEqual(r.stdout, "out\r\nerr\r\npy-err\r\n")
        self.assertEqual((r.stderr, seen, r.exit_code), ("", [], 0))

    def test_resize_reaches_a_winch_trap(self):
        h = self.sb.commands.run(
            "trap 'stty size' WINCH; echo ready; while :; do sleep 0.1; done", background=True, pty=(100, 30)
        )
        self.assertTrue(self.running(h.pid).pty)
        out = []
        resized = False
        for o in h:
            out.append(o.text)
            text = "".join(out)
            if "ready" in text and not resized:
                resized = True
                h.resize(120, 40)
            if "40 120\r\n" in text:
                self.assertTrue(self.running(h.pid).running, "it ended before it was resized")
                h.kill()
        self.assertEqual(h.result.stdout, "ready\r\n40 120\r\n")
        self.assertEqual(h.result.signal, "KILL")
        # Its terminal has closed: a resize now is refused, as for a command without one.
        with self.assertRaises(Conflict):
            h.resize(80, 24)

    def test_ctrl_c_is_sigint_through_the_line_discipline(self):
        done = {}
        cmd = "sh -c 'sleep 100; echo after'"
        t = threading.Thread(target=lambda: done.setdefault("r", self.sb.commands.run(cmd, pty=(80, 24), timeout=30)))
        t.start()

        def ps():
            return self.sb.commands.run(["ps", "-eo", "pid,args"]).stdout

        wait_for("sleep 100 runs under sh -c", 10, lambda: "sleep 100" in ps())
        pid = wait_for(
            "the command is listed",
            5,
            lambda: next((p.pid for p in self.sb.commands.list() if p.running and p.pty and "sleep 100" in str(p.cmd)), None),
        )
        t0 = time.monotonic()
        self.sb.commands.send_stdin(pid, "\x03")  # typed, not sent as a signal
        t.join(15)
        self.assertFalse(t.is_alive(), "^C did not end it")
        r = done["r"]
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual((r.exit_code, r.signal, r.timed_out), (None, "INT", False), r)
        self.assertNotIn("after", r.stdout)
        self.assertNotIn("sleep 100", ps(), "sleep outlived the ^C")

    def test_stdin_is_typed_and_closing_it_sends_eof(self):
        h = self.sb.commands.run("cat; echo cat-done", background=True, pty=(80, 24))
        h.send_stdin("ping\n")
        out = []
        for o in h:
            out.append(o.text)
            # The terminal echoes the line, then cat prints it; then ^D ends cat.
            if "".join(out) == "ping\r\nping\r\n":
                self.assertTrue(self.running(h.pid).running, "cat ended before its stdin was closed")
                h.close_stdin()
        self.assertEqual(h.result.stdout, "ping\r\nping\r\ncat-done\r\n")
        self.assertEqual(h.result.exit_code, 0)
        # Text given up front to a foreground command is typed, then ^D (twice
        # for a line left open): it ends on its own, long before its timeout.
        r = self.sb.commands.run("cat; echo end", pty=(80, 24), stdin="no newline", timeout=20)
        self.assertEqual((r.exit_code, r.timed_out), (0, False))
        self.assertEqual(r.stdout, "no newlineno newlineend\r\n")

    def test_reattach_replays_a_terminal(self):
        h = self.sb.commands.run("echo one; sleep 0.5; echo two; exit 5", background=True, pty=(80, 24))
        r = h.wait()
        self.assertEqual((r.stdout, r.exit_code), ("one\r\ntwo\r\n", 5))
        again = self.sb.commands.connect(h.pid).wait()
        self.assertEqual((again.stdout, again.exit_code), ("one\r\ntwo\r\n", 5))

    def test_resize_is_refused_clearly(self):
        h = self.sb.commands.run("sleep 30", background=True)
        with self.assertRaises(Conflict) as caught:
            h.resize(80, 24)
        self.assertIn("no terminal", caught.exception.message)
        h.kill()
        with self.assertRaises(ValueError):
            h.resize(0, 24)  # refused here, before the daemon
        t = Transport()
        self.addCleanup(t.close)
        path = f"/v1/sandboxes/{self.sb.id}/processes/{h.pid}/resize"
        for bad in ({"cols": 0, "rows": 24}, {"cols": 80, "rows": 1001}, {"cols": 80}, {"cols": -1, "rows": 2},
                    {"cols": 80, "rows": 24, "x": 1}):
            with self.assertRaises(BadRequest, msg=repr(bad)):
                t.call("POST", path, json_body=bad)
        exec_path = f"/v1/sandboxes/{self.sb.id}/exec"
        for bad in ({"cols": 1001, "rows": 24}, {"rows": 24}, {"cols": 1.5, "rows": 2}):
            with self.assertRaises(BadRequest, msg=repr(bad)):
                t.call("POST", exec_path, json_body={"cmd": "true", "pty": bad})
        with self.assertRaises(NotFound):
            t.call("POST", f"/v1/sandboxes/{self.sb.id}/processes/999999/resize", json_body={"cols": 80, "rows": 24})

    def test_terminals_per_sandbox_are_bounded(self):
        sb = make(self)
        hog = sb.commands.run(["python3", "-c", OPEN_PTYS], background=True)
        said = ""
        for o in hog:
            said += o.text
            if said.endswith("\n"):
                break
        count, why = said.split()
        # It stopped at the sandbox's own bound (ENOSPC), not at a file limit (EMFILE).
        self.assertEqual((count, why), ("16", "ENOSPC"))
        with self.assertRaises(AlcoveError) as caught:
            sb.commands.run("tty", pty=(80, 24))
        self.assertEqual(caught.exception.status, 422, repr(caught.exception))
        self.assertIn("no terminal is left", caught.exception.message)
        # Another sandbox is not affected.
        self.assertRegex(self.sb.commands.run("tty", pty=(80, 24)).stdout, r"^/dev/pts/\d+\r\n$")
        # Once the hog is gone, its terminals are free again.
        self.assertTrue(hog.kill())
        self.assertEqual(hog.wait().signal, "KILL")
        r = sb.commands.run("tty", pty=(80, 24))
        self.assertRegex(r.stdout, r"^/dev/pts/\d+\r\n$")


if __name__ == "__main__":
    unittest.main()
