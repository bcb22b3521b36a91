"""Tests of alcove_repl.py, the code interpreter's session process.

    python3 -m unittest runtimes/python/test_alcove_repl.py     (from the repository root)

Each test starts the interpreter as the daemon does: fd 0 /dev/null, fd 1 and
fd 2 pipes, fd 3 one end of a socketpair. Every wait has a deadline, so a
broken interpreter fails a test instead of hanging it.
"""
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import unittest

REPL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alcove_repl.py")

# Puts the inherited socket at fd 3 exactly (Popen cannot renumber a descriptor), then
# becomes the interpreter; ALCOVE_REPL_FD is left unset, so the default is what is tested.
LAUNCH = ("import os, sys\n"
          "fd = int(sys.argv[1])\n"
          "if fd != 3:\n"
          "    os.dup2(fd, 3)\n"
          "    os.close(fd)\n"
          "os.execv(sys.executable, [sys.executable, '-u', sys.argv[2]])\n")


def unread_by_peer(sock):
    """Bytes written to sock that its peer has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


class Repl:
    """One interpreter process and the daemon's ends of its descriptors."""

    def __init__(self, at_fd3=True, env_extra=None):
        self.sock, child = socket.socketpair()
        env = dict(os.environ, **(env_extra or {}))
        env.pop("ALCOVE_REPL_FD", None)
        env.pop("PYTHONUNBUFFERED", None)  # the interpreter's own -u and settings are under test
        if at_fd3:
            argv = [sys.executable, "-c", LAUNCH, str(child.fileno()), REPL]
        else:
            argv = [sys.executable, "-u", REPL]
            env["ALCOVE_REPL_FD"] = str(child.fileno())
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, pass_fds=(child.fileno(),), env=env)
        child.close()
        self.buf = b""
        self.out = {1: b"", 2: b""}
        self.cells = 0

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sock.close()
        self.proc.stdout.close()
        self.proc.stderr.close()

    # -- the control channel --
    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, code, rid=None):
        self.cells += 1
        rid = rid if rid is not None else f"c{self.cells}"
        self.send_raw(json.dumps({"id": rid, "code": code}).encode() + b"\n")
        return rid

    def pending(self, timeout=0.0):
        """Whether a frame (or part of one) is readable within timeout."""
        if b"\n" in self.buf:
            return True
        return bool(select.select([self.sock], [], [], timeout)[0])

    def frame(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise AssertionError(f"no frame within {timeout} s; stderr: {self.stderr()!r}")
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"control channel closed; stderr: {self.stderr()!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def until_done(self, rid, timeout=10.0):
        """The frames of one request, its done frame last."""
        frames = []
        while True:
            f = self.frame(timeout)
            frames.append(f)
            if f["type"] == "done":
                assert f["id"] == rid, frames
                return frames

    def run(self, code, timeout=10.0):
        return self.until_done(self.send(code), timeout)

    # -- the output pipes --
    def drain(self, timeout=0.0):
        """Read what the pipes hold, waiting up to timeout for more."""
        fds = {self.proc.stdout.fileno(): 1, self.proc.stderr.fileno(): 2}
        end = time.monotonic() + timeout
        while fds:
            ready = select.select(list(fds), [], [], max(0.0, end - time.monotonic()))[0]
            if not ready:
                return
            for fd in ready:
                data = os.read(fd, 1 << 16)
                if data:
                    self.out[fds[fd]] += data
                else:
                    del fds[fd]

    def stdout(self):
        self.drain()
        return self.out[1].decode(errors="replace")

    def stderr(self):
        try:
            self.drain()
        except (OSError, ValueError):
            pass
        return self.out[2].decode(errors="replace")

    def wait_stdout(self, text, timeout=5.0):
        deadline = time.monotonic() + timeout
        while text not in self.out[1].decode(errors="replace"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not on stdout within {timeout} s: {self.out[1]!r}")
            self.drain(min(left, 0.05))


def by_type(frames, kind):
    return [f for f in frames if f["type"] == kind]


class ReplTest(unittest.TestCase):
    def setUp(self):
        self.repl = Repl()
        self.addCleanup(self.repl.close)
        self.ready = self.repl.frame()

    def result(self, frames):
        results = by_type(frames, "result")
        self.assertEqual(len(results), 1, frames)
        return results[0]

    def error(self, frames):
        errors = by_type(frames, "error")
        self.assertEqual(len(errors), 1, frames)
        self.assertFalse(frames[-1]["ok"], frames)
        return errors[0]

    def test_ready(self):
        self.assertEqual(self.ready["type"], "ready")
        self.assertEqual(self.ready["pid"], self.repl.proc.pid)
        self.assertEqual(self.ready["python"], sys.version.split()[0])

    def test_state_is_kept(self):
        frames = self.repl.run("x = 1")
        self.assertEqual([f["type"] for f in frames], ["done"])
        self.assertTrue(frames[0]["ok"])
        self.assertIsInstance(frames[0]["duration_ms"], float)
        frames = self.repl.run("x + 1")
        self.assertEqual([f["type"] for f in frames], ["result", "done"])
        res = frames[0]
        self.assertEqual(res, {"type": "result", "id": frames[-1]["id"], "text": "2",
                               "mime": {"text/plain": "2"}})
        self.assertEqual(self.result(self.repl.run("_ * 10"))["text"], "20")

    def test_none_and_statements_give_no_result(self):
        for code in ("None", "y = 5", "def f():\n    return 1", "print(end='')"):
            frames = self.repl.run(code)
            self.assertEqual([f["type"] for f in frames], ["done"], code)
            self.assertTrue(frames[-1]["ok"], code)

    def test_print_streams_before_done(self):
        rid = self.repl.send("import time\nfor i in range(3):\n    print('line', i)\n"
                             "    time.sleep(0.2)\n")
        self.repl.wait_stdout("line 0\n", timeout=3.0)
        self.assertNotIn("line 2", self.repl.out[1].decode())
        self.assertFalse(self.repl.pending(), "done came before the first line was readable")
        frames = self.repl.until_done(rid)
        self.assertTrue(frames[-1]["ok"], frames)
        self.repl.drain(0.1)
        self.assertEqual(self.repl.stdout(), "line 0\nline 1\nline 2\n")

    def test_output_is_flushed_before_done(self):
        frames = self.repl.run("import sys\nsys.stdout.write('partial')\n"
                               "sys.stderr.write('err-partial')\nNone")
        self.assertTrue(frames[-1]["ok"], frames)
        self.repl.drain(0.2)
        self.assertEqual(self.repl.stdout(), "partial")
        self.assertIn("err-partial", self.repl.stderr())
        # A cell's own buffered sys.stdout is flushed too.
        frames = self.repl.run("import io\nsys.stdout = io.TextIOWrapper(open(1, 'wb', closefd=False))\n"
                               "sys.stdout.write('+buffered')\nNone")
        self.assertTrue(frames[-1]["ok"], frames)
        self.repl.drain(0.2)
        self.assertEqual(self.repl.stdout(), "partial+buffered")

    def test_subprocess_output_goes_to_stdout_pipe(self):
        frames = self.repl.run("import os\nos.system('echo hi; echo oops >&2')")
        self.assertEqual(self.result(frames)["text"], "0")
        self.repl.drain(0.2)
        self.assertEqual(self.repl.stdout(), "hi\n")
        self.assertEqual(self.repl.stderr(), "oops\n")
        self.assertFalse(self.repl.pending(0.1))  # nothing else arrived on the control channel
        self.assertNotIn("hi", json.dumps(frames))

    def test_control_channel_hidden(self):
        # fd 3 is closed in the session and no child inherits the moved channel.
        code = ("import os, subprocess\n"
                "try:\n    os.fstat(3)\n    fd3 = 'open'\nexcept OSError:\n    fd3 = 'closed'\n"
                "kids = subprocess.run(['ls', '/proc/self/fd'], capture_output=True, text=True)"
                ".stdout.split()\n"
                "(fd3, sorted(int(x) for x in kids), 'ALCOVE_REPL_FD' in os.environ)")
        res = self.result(self.repl.run(code))
        fd3, kid_fds, env = eval(res["text"])
        self.assertEqual(fd3, "closed")
        self.assertTrue(all(fd < 3 for fd in kid_fds[:-1]), kid_fds)  # the last is ls's own dir fd
        self.assertFalse(env)
        # Closing every low descriptor does not break the session.
        self.repl.run("import os\nos.closerange(3, 100)")
        self.assertEqual(self.result(self.repl.run("40 + 2"))["text"], "42")

    def test_exception(self):
        frames = self.repl.run("def boom(n):\n    return 10 // n\n\nboom(0)")
        err = self.error(frames)
        self.assertEqual(err["name"], "ZeroDivisionError")
        self.assertEqual(err["value"], "integer division or modulo by zero")
        tb = "\n".join(err["traceback"])
        self.assertIn('File "<cell-1>", line 4, in <module>', tb)
        self.assertIn('File "<cell-1>", line 2, in boom', tb)
        self.assertIn("return 10 // n", tb)  # the source line, from linecache
        self.assertNotIn("alcove_repl.py", tb)
        self.assertEqual(err["traceback"][0], "Traceback (most recent call last):")
        self.assertEqual(err["traceback"][-1], "ZeroDivisionError: integer division or modulo by zero")
        # The function stays defined and its cell is still shown in a later traceback.
        err = self.error(self.repl.run("boom(0)"))
        self.assertIn("return 10 // n", "\n".join(err["traceback"]))

    def test_syntax_error(self):
        frames = self.repl.run("x = 1\ndef f(:\n    pass")
        err = self.error(frames)
        self.assertEqual(err["name"], "SyntaxError")
        tb = "\n".join(err["traceback"])
        self.assertIn('File "<cell-1>", line 2', tb)
        self.assertIn("def f(:", tb)
        self.assertNotIn("alcove_repl.py", tb)
        self.assertNotIn("ast.py", tb)
        # Nothing of the cell ran.
        self.assertEqual(self.error(self.repl.run("x"))["name"], "NameError")

    def test_sigint_interrupts_running_code(self):
        self.repl.run("kept = 'still here'")
        rid = self.repl.send("print('spinning', flush=True)\nwhile True:\n    pass")
        self.repl.wait_stdout("spinning\n")
        self.assertFalse(self.repl.pending(0.2))
        os.kill(self.repl.proc.pid, signal.SIGINT)
        frames = self.repl.until_done(rid, timeout=5.0)
        err = self.error(frames)
        self.assertEqual(err["name"], "KeyboardInterrupt")
        self.assertIn("<cell-2>", "\n".join(err["traceback"]))
        self.assertEqual(self.result(self.repl.run("kept"))["text"], "'still here'")

    def test_sigint_interrupts_sleep(self):
        rid = self.repl.send("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
        self.repl.wait_stdout("sleeping\n")
        time.sleep(0.1)
        os.kill(self.repl.proc.pid, signal.SIGINT)
        self.assertEqual(self.error(self.repl.until_done(rid, 5.0))["name"], "KeyboardInterrupt")
        self.assertEqual(self.result(self.repl.run("1"))["text"], "1")

    def test_sigint_while_idle_is_said_and_ignored(self):
        last = self.repl.send("y = 7")
        self.repl.until_done(last)
        for _ in range(3):
            os.kill(self.repl.proc.pid, signal.SIGINT)
            time.sleep(0.1)
        # Said, naming the last call finished: the daemon knows whether it was that call's.
        for _ in range(3):
            self.assertEqual(self.repl.frame(1.0), {"type": "interrupt_missed", "after": last})
        self.assertFalse(self.repl.pending(0.3), "an idle SIGINT produced more than its frame")
        self.assertIsNone(self.repl.proc.poll(), "an idle SIGINT ended the process")
        # Not carried into the next call.
        self.assertEqual(self.result(self.repl.run("y"))["text"], "7")
        self.assertNotIn("KeyboardInterrupt", self.repl.stderr())

    def test_sigint_before_the_code_runs_stops_it_or_is_said(self):
        self.repl.run("kept = 1")
        # Stopped, it gets the request and the interrupt together: whichever it
        # sees first, the interrupt is not lost.
        os.kill(self.repl.proc.pid, signal.SIGSTOP)
        try:
            rid = self.repl.send("import time\nwhile True:\n    time.sleep(0.01)")
            os.kill(self.repl.proc.pid, signal.SIGINT)
        finally:
            os.kill(self.repl.proc.pid, signal.SIGCONT)
        # Seen while it waited, it is said with the call before, and the daemon
        # sends it again, as here, for each such frame (a second signal that
        # lands while the first frame is written is said too).
        frames = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(self.repl.frame(5.0))
            if frames[-1]["type"] == "interrupt_missed":
                self.assertEqual(frames[-1]["after"], "c1")
                self.assertLess(len(frames), 20, frames)
                os.kill(self.repl.proc.pid, signal.SIGINT)
        self.assertEqual(frames[-1]["id"], rid)
        self.assertEqual(self.error(frames)["name"], "KeyboardInterrupt")
        self.assertEqual(self.result(self.repl.run("kept"))["text"], "1")

    def test_a_late_sigint_never_reaches_the_next_call(self):
        # As the daemon sends them: an interrupt for a call, at any moment up to
        # that call's end (the interpreter may have finished it already), and
        # the next call's request only once the signal is sent. Whatever moment
        # the signal lands in, the next call runs whole.
        self.repl.run("import time\nn = 0")
        rounds, counted, missed = 300, 0, 0
        for i in range(rounds):
            if i % 10:
                rid = self.repl.send("n += 1")
                time.sleep((i % 7) * 0.00005)
            else:
                # Every tenth, a call its own signal stops: sent once the
                # request is read, while its code sleeps.
                rid = self.repl.send("time.sleep(0.2)\nn += 1")
                deadline = time.monotonic() + 5.0
                while unread_by_peer(self.repl.sock) and time.monotonic() < deadline:
                    time.sleep(0.0002)
            os.kill(self.repl.proc.pid, signal.SIGINT)
            frames = self.repl.until_done(rid, 5.0)
            counted += frames[-1]["ok"]
            nxt = self.repl.send("n += 1")
            after = self.repl.until_done(nxt, 5.0)
            self.assertTrue(after[-1]["ok"], f"round {i}: the next call was interrupted: {after}")
            self.assertEqual(by_type(after, "error"), [], f"round {i}: {after}")
            counted += 1
            for f in by_type(frames + after, "interrupt_missed"):
                self.assertIn(f["after"], (rid, f"c{self.repl.cells - 2}"), f)
                missed += 1
        # Every call that said it ran did (one stopped may have run its line first).
        n = int(self.result(self.repl.run("n"))["text"])
        self.assertTrue(counted <= n <= 2 * rounds, (counted, n))
        # Both cases arose: signals that stopped their call, and ones that came late.
        self.assertGreater(missed, 0, "no signal came after its call ended")
        self.assertLess(counted, 2 * rounds, "no signal stopped its own call")
        print(f"\n  late interrupts said missed: {missed}; calls stopped: {2 * rounds - counted}",
              file=sys.stderr)

    def test_an_interrupt_resent_at_once_finds_its_call(self):
        # The daemon answers a missed frame with the signal again at once; on a
        # busy host that signal lands as the frame's write returns, before the
        # waiting request is read. Said at once, it would be answered again, and
        # so on until the daemon's retries ran out (the code then ran on): the
        # saying waits until the request is read, and the next signal stops it.
        cpus = min(len(os.sched_getaffinity(0)), 4)
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   for _ in range(cpus)]
        try:
            rounds, resent = 30, 0
            for i in range(rounds):
                repl = Repl()
                try:
                    repl.frame()
                    repl.run("kept = 1")
                    os.kill(repl.proc.pid, signal.SIGSTOP)
                    try:
                        rid = repl.send("import time\nwhile True:\n    time.sleep(0.01)")
                        os.kill(repl.proc.pid, signal.SIGINT)
                    finally:
                        os.kill(repl.proc.pid, signal.SIGCONT)
                    frames = []
                    while not frames or frames[-1]["type"] != "done":
                        frames.append(repl.frame(5.0))
                        if frames[-1]["type"] == "interrupt_missed":
                            self.assertLess(len(frames), 5, f"round {i}: {frames}")
                            os.kill(repl.proc.pid, signal.SIGINT)
                            resent += 1
                    self.assertEqual(frames[-1]["id"], rid)
                    self.assertEqual(self.error(frames)["name"], "KeyboardInterrupt")
                finally:
                    repl.close()
        finally:
            for b in burners:
                b.kill()
                b.wait()
        self.assertGreater(resent, 0, "no interrupt came before its request was read")

    def test_sigint_after_the_request_is_read_stops_its_code_as_it_starts(self):
        # A request line of 3M numbers (~9 MB) takes the interpreter ~0.2 s to
        # decode: an interrupt sent once it has read the whole line (nothing
        # left unread in the socket) comes before the code runs.
        rid = "big"
        line = json.dumps({"id": rid, "pad": [0] * (3 << 20),
                           "code": "import time\nwhile True:\n    time.sleep(0.01)"})
        self.repl.send_raw(line.encode() + b"\n")
        deadline = time.monotonic() + 5.0
        while unread_by_peer(self.repl.sock) and time.monotonic() < deadline:
            time.sleep(0.0002)
        self.assertEqual(unread_by_peer(self.repl.sock), 0, "the request was not read")
        # As the daemon does: an interrupt said to be missed (it came while the
        # line was still being taken in) is sent again.
        os.kill(self.repl.proc.pid, signal.SIGINT)
        frames, missed = [], 0
        while not frames or frames[-1]["type"] != "done":
            try:
                frames.append(self.repl.frame(3.0))
            except AssertionError:
                os.kill(self.repl.proc.pid, signal.SIGINT)
                raise AssertionError("the interrupt was lost: the code ran on") from None
            if frames[-1]["type"] == "interrupt_missed":
                missed += 1
                os.kill(self.repl.proc.pid, signal.SIGINT)
        err = self.error(frames)
        self.assertEqual(err["name"], "KeyboardInterrupt")
        # Stopped before any of the cell ran, not while its loop ran.
        self.assertNotIn("<cell-", "\n".join(err["traceback"]))

    def test_exit_is_survived(self):
        self.repl.run("z = 3")
        # The value is str(SystemExit(...)): sys.exit() raises SystemExit(), exit() SystemExit(None).
        for code, value in (("import sys\nsys.exit()", ""), ("sys.exit(4)", "4"),
                            ("exit()", "None"), ("quit(5)", "5")):
            err = self.error(self.repl.run(code))
            self.assertEqual(err["name"], "SystemExit", code)
            self.assertEqual(err["value"], value, code)
            self.assertIsNone(self.repl.proc.poll(), code)
        self.assertEqual(self.result(self.repl.run("z"))["text"], "3")
        # exit() closes sys.stdin; input() still fails fast with EOFError, not ValueError.
        self.assertEqual(self.error(self.repl.run("input()"))["name"], "EOFError")

    def test_input_raises_eof(self):
        start = time.monotonic()
        err = self.error(self.repl.run("input('name? ')"))
        self.assertEqual(err["name"], "EOFError")
        self.assertLess(time.monotonic() - start, 5.0)

    def test_top_level_await(self):
        frames = self.repl.run("import asyncio\nawait asyncio.sleep(0.1)\nt = 1")
        self.assertTrue(frames[-1]["ok"], frames)
        self.assertGreaterEqual(frames[-1]["duration_ms"], 100.0)
        res = self.result(self.repl.run("await asyncio.sleep(0, result=t + 6)"))
        self.assertEqual(res["text"], "7")
        # A task started in one cell lives on in the session's loop.
        self.repl.run("async def later():\n    await asyncio.sleep(0.05)\n    return 'ok'\n"
                      "task = asyncio.ensure_future(later())")
        self.assertEqual(self.result(self.repl.run("await task"))["text"], "'ok'")
        err = self.error(self.repl.run("async def bad():\n    raise ValueError('async')\n"
                                       "await bad()"))
        self.assertEqual((err["name"], err["value"]), ("ValueError", "async"))
        tb = "\n".join(err["traceback"])
        self.assertIn("<cell-", tb)
        self.assertNotIn("asyncio", tb)
        # Plain asyncio.run in a synchronous cell still works.
        self.assertEqual(self.result(self.repl.run("asyncio.run(later())"))["text"], "'ok'")

    def test_sigint_interrupts_await(self):
        rid = self.repl.send("import asyncio\nprint('waiting', flush=True)\n"
                             "await asyncio.sleep(60)")
        self.repl.wait_stdout("waiting\n")
        time.sleep(0.1)
        os.kill(self.repl.proc.pid, signal.SIGINT)
        self.assertEqual(self.error(self.repl.until_done(rid, 5.0))["name"], "KeyboardInterrupt")
        self.assertEqual(self.result(self.repl.run("await asyncio.sleep(0, result=8)"))["text"], "8")

    def test_large_result_truncated(self):
        res = self.result(self.repl.run("'x' * 3_000_000"))
        # Cut to 1 Mi characters, then to what fits the daemon's 2 MiB frame
        # (the text goes twice: as text and as text/plain).
        frame = json.dumps(res, ensure_ascii=False, separators=(",", ":")).encode()
        self.assertLessEqual(len(frame), 1536 << 10)
        self.assertGreater(len(res["text"]), 256 << 10)
        self.assertTrue(res["text"].startswith("'xxx"))
        self.assertTrue(res["text"].endswith("..."))
        self.assertEqual(res["mime"]["text/plain"], res["text"])
        small = self.result(self.repl.run("'y' * 1000"))
        self.assertEqual(small["text"], repr("y" * 1000))

    def test_a_large_error_is_cut_to_fit(self):
        frames = self.repl.run("raise ValueError('x' * 3_000_000)")
        error = next(f for f in frames if f["type"] == "error")
        frame = json.dumps(error, ensure_ascii=False, separators=(",", ":")).encode()
        self.assertLessEqual(len(frame), 1536 << 10)
        self.assertEqual(error["name"], "ValueError")
        self.assertTrue(error["value"].startswith("xxx") and error["value"].endswith("..."))
        deep = self.repl.run("def f(n):\n    return f(n + 1)\nf(0)")
        self.assertEqual(next(f for f in deep if f["type"] == "error")["name"], "RecursionError")
        self.assertEqual(self.result(self.repl.run("6 * 7"))["text"], "42")

    def test_html_repr(self):
        code = ("class Table:\n    def __repr__(self):\n        return 'Table()'\n"
                "    def _repr_html_(self):\n        return '<table></table>'\nTable()")
        res = self.result(self.repl.run(code))
        self.assertEqual(res["mime"], {"text/plain": "Table()", "text/html": "<table></table>"})
        broken = ("class Broken:\n    def _repr_html_(self):\n        raise RuntimeError\n"
                  "    def __repr__(self):\n        return 'Broken()'\nBroken()")
        self.assertEqual(self.result(self.repl.run(broken))["mime"], {"text/plain": "Broken()"})

    def test_repr_error_is_reported(self):
        err = self.error(self.repl.run("class R:\n    def __repr__(self):\n"
                                       "        raise TypeError('no repr')\nR()"))
        self.assertEqual((err["name"], err["value"]), ("TypeError", "no repr"))

    def test_malformed_json_then_works(self):
        self.repl.send_raw(b"{not json\n")
        err = self.repl.frame()
        self.assertEqual(err["type"], "error")
        self.assertIsNone(err["id"])
        self.assertEqual(err["name"], "BadRequest")
        self.repl.send_raw(b"[1, 2]\n")
        self.assertEqual(self.repl.frame()["name"], "BadRequest")
        # With a readable id the request is also closed by a done frame.
        self.repl.send_raw(b'{"id": "m1", "code": oops}\n')
        frames = self.repl.until_done("m1")
        self.assertEqual([(f["type"], f["id"]) for f in frames], [("error", "m1"), ("done", "m1")])
        self.assertFalse(frames[-1]["ok"])
        self.repl.send_raw(b'{"id": "m2", "code": 5}\n')
        self.assertEqual(self.error(self.repl.until_done("m2"))["name"], "BadRequest")
        self.assertFalse(self.repl.pending(0.2))
        self.assertEqual(self.result(self.repl.run("2 ** 10"))["text"], "1024")

    def test_a_bad_fork_request_is_refused_and_its_descriptors_closed(self):
        self.repl.run("kept = 5")
        # Without its six descriptors: refused, the session goes on.
        self.repl.send_raw(b'{"type": "fork", "id": "f1"}\n')
        frames = self.repl.until_done("f1")
        self.assertEqual(self.error(frames)["name"], "ForkRefused")
        self.assertIn("needs 6 descriptors", self.error(frames)["value"])
        # With descriptors but no usable numbers: refused, and what came is closed.
        r, w = os.pipe()
        fds = [r] * 6
        self.repl.sock.sendmsg([b'{"type": "fork", "id": "f2", "agent": {}}\n'],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("6i", *fds))])
        os.close(r)
        frames = self.repl.until_done("f2")
        self.assertIn("agent needs argv", self.error(frames)["value"])
        # Every copy of the read end is gone: the write end sees a broken pipe.
        deadline = time.monotonic() + 5
        while True:
            try:
                os.write(w, b"x")
            except BrokenPipeError:
                break
            self.assertLess(time.monotonic(), deadline, "the session kept a fork's descriptor")
            time.sleep(0.05)
        os.close(w)
        self.assertEqual(self.result(self.repl.run("kept"))["text"], "5")

    def test_request_too_large(self):
        huge = json.dumps({"id": "big", "code": "# " + "a" * (17 << 20)}).encode() + b"\n"
        self.repl.send_raw(huge + json.dumps({"id": "after", "code": "'fine'"}).encode() + b"\n")
        frames = self.repl.until_done("big", timeout=20.0)
        self.assertEqual(self.error(frames)["name"], "RequestTooLarge")
        self.assertEqual(self.result(self.repl.until_done("after"))["text"], "'fine'")

    def test_request_under_limit_runs(self):
        code = "s = '" + "b" * (4 << 20) + "'\nlen(s)"
        self.assertEqual(self.result(self.repl.run(code, timeout=20.0))["text"], str(4 << 20))

    def test_frames_in_order_and_ids_echoed(self):
        for rid in ("a", "b", "c"):
            self.repl.send(f"'{rid}' * 2", rid=rid)
        for rid in ("a", "b", "c"):
            frames = self.repl.until_done(rid)
            self.assertEqual(self.result(frames), {"type": "result", "id": rid, "text": repr(rid * 2),
                                                   "mime": {"text/plain": repr(rid * 2)}})

    def test_session_is_main_module(self):
        code = ("import pickle\nclass Point:\n    def __init__(self, x):\n        self.x = x\n"
                "pickle.loads(pickle.dumps(Point(3))).x, __name__")
        self.assertEqual(self.result(self.repl.run(code))["text"], "(3, '__main__')")
        res = self.result(self.repl.run("sorted(k for k in globals() if not k.startswith('__'))"))
        self.assertEqual(eval(res["text"]), ["Point", "_", "pickle"])

    def test_expression_cells(self):
        # One expression, compiled as such: its value is the result and becomes _.
        frames = self.repl.run("[n * n for n in range(4)]")
        self.assertEqual([f["type"] for f in frames], ["result", "done"])
        self.assertEqual(frames[0]["text"], "[0, 1, 4, 9]")
        self.assertEqual(self.result(self.repl.run("_[-1]"))["text"], "9")
        self.assertEqual(self.repl.run("None")[0]["type"], "done")
        self.assertEqual(self.result(self.repl.run("_"))["text"], "9")  # None did not replace it
        # Over several lines, and a cell whose later lines sit at column 0 (the full path).
        self.assertEqual(self.result(self.repl.run("sum(\n    [1,\n     2],\n)\n"))["text"], "3")
        self.assertEqual(self.result(self.repl.run("(1 +\n2)"))["text"], "3")
        # Statements that start like an expression go the full path, as before.
        self.assertEqual([f["type"] for f in self.repl.run("v = 6")], ["done"])
        self.assertEqual(self.result(self.repl.run("v; v * 7"))["text"], "42")
        self.assertEqual(self.result(self.repl.run("import asyncio"
                                                    " ; await asyncio.sleep(0, result=v)"))["text"],
                         "6")
        self.assertEqual(self.result(self.repl.run("await asyncio.sleep(0, result=v + 1)"))["text"],
                         "7")
        # An expression that raises: the traceback is the cell's alone.
        err = self.error(self.repl.run("{}['missing']"))
        self.assertEqual(err["name"], "KeyError")
        tb = "\n".join(err["traceback"])
        self.assertIn("<cell-", tb)
        self.assertNotIn("alcove_repl.py", tb)
        self.assertEqual(len([ln for ln in err["traceback"] if ln.lstrip().startswith("File ")]), 1,
                         err["traceback"])
        # A bad one-line cell is reported by the full parse, as before.
        for code in ("foo(", "1 +", "yield 3", "print('a'"):
            err = self.error(self.repl.run(code))
            self.assertEqual(err["name"], "SyntaxError", code)
            tb = "\n".join(err["traceback"])
            self.assertRegex(tb, r'File "<cell-\d+>", line 1', code)
            self.assertNotIn("alcove_repl.py", tb)
            self.assertNotIn("ast.py", tb)

    def test_an_expression_is_compiled_once(self):
        # The audit hook sees every compile() of a cell: of its source (ast.parse included)
        # and of a tree (no file name given then, in some versions).
        self.repl.run("import sys\ncompiles = []\n"
                      "sys.addaudithook(lambda event, args: compiles.append(args[1])"
                      " if event == 'compile' and (args[1] is None"
                      " or str(args[1]).startswith('<cell-')) else None)")
        for code, count in (("2 + 2", 1), ("print(1); y = 2", 3), ("x = 1", 2), ("x = 1\nx", 3),
                            ("'\\n'", 3), ("0x1f + 1", 3)):
            self.repl.run("compiles.clear()")
            self.assertTrue(self.repl.run(code)[-1]["ok"], code)
            # The last compile is of the cell that asks.
            self.assertEqual(self.result(self.repl.run("len(compiles[:-1])"))["text"], str(count),
                             code)

    def test_parse_warnings_shown_once(self):
        # A cell is not parsed twice where the parse can warn (an escape, a number touching
        # a keyword): the warning is shown once, as from one parse.
        self.repl.run("import warnings\nwarnings.simplefilter('always')")
        cells = [("print(len('a\\d')); w = 1", "invalid escape sequence")]
        if sys.version_info >= (3, 11):
            cells.append(("print(1if True else 2); w = 2", "invalid decimal literal"))
        for code, warning in cells:
            frames = self.repl.run(code)
            self.assertTrue(frames[-1]["ok"], frames)
            self.repl.drain(0.2)
            self.assertEqual(self.repl.stderr().count(warning), 1, (code, self.repl.stderr()))
            self.repl.out[2] = b""

    def test_request_in_pieces(self):
        line = json.dumps({"id": "p1", "code": "'pie' + 'ces'"}).encode() + b"\n"
        for piece in (line[:5], line[5:20], line[20:-3]):
            self.repl.send_raw(piece)
            self.assertFalse(self.repl.pending(0.1), "a frame came before the line was whole")
        self.repl.send_raw(line[-3:])  # the closing quote, the brace, the newline
        self.assertEqual(self.result(self.repl.until_done("p1"))["text"], "'pieces'")

    def test_requests_in_one_read(self):
        # Two whole lines and the start of a third in one write; the third's end later.
        lines = [json.dumps({"id": f"m{i}", "code": f"{i} * 11"}).encode() + b"\n"
                 for i in range(3)]
        self.repl.send_raw(lines[0] + lines[1] + lines[2][:7])
        self.assertEqual(self.result(self.repl.until_done("m0"))["text"], "0")
        self.assertEqual(self.result(self.repl.until_done("m1"))["text"], "11")
        self.assertFalse(self.repl.pending(0.1))
        self.repl.send_raw(lines[2][7:])
        self.assertEqual(self.result(self.repl.until_done("m2"))["text"], "22")

    def test_result_and_done_come_together(self):
        # One write per request: the first read that finds anything finds the done too.
        for i in range(20):
            rid = self.repl.send(f"{i} + 1")
            self.assertTrue(select.select([self.repl.sock], [], [], 10.0)[0])
            first = self.repl.sock.recv(1 << 20)
            self.assertTrue(first.endswith(b"\n"), first)
            frames = [json.loads(ln) for ln in first.splitlines()]
            self.assertEqual([(f["type"], f["id"]) for f in frames],
                             [("result", rid), ("done", rid)])

    def test_last_line_without_newline_at_eof(self):
        self.repl.send_raw(b'{"id": "last", "code": "7 * 6"}')
        self.repl.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(self.result(self.repl.until_done("last"))["text"], "42")
        self.assertEqual(self.repl.proc.wait(timeout=10), 0)

    def test_eof_exits_zero(self):
        self.repl.run("a = 1")
        self.repl.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(self.repl.proc.wait(timeout=10), 0)
        self.assertEqual(self.repl.stderr(), "")


def skipped_without_collapse(test):
    """Whether `test` cannot check a collapse into huge pages here (and said
    so): MADV_COLLAPSE needs Linux 6.1, and with huge pages not by 'madvise'
    alone, what is huge before a collapse is not known."""
    import re
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError as e:
        thp = str(e)
    release = os.uname().release
    if "[madvise]" in thp and tuple(map(int, re.findall(r"\d+", release)[:2])) >= (6, 1):
        return False
    print(f"SKIPPED {test.id()}: needs MADV_COLLAPSE (Linux 6.1+, here {release}) and "
          f"transparent huge pages by 'madvise' alone (here: {thp})", file=sys.stderr)
    return True


class CollapseTest(unittest.TestCase):
    """alcove_runtime.collapse_large_regions: one huge page per madvise (so
    the process returns to user space, where the freezer and signals reach
    it, between pages), only huge pages mostly the process's own, and it
    stops when asked to."""

    HUGE = 2 << 20
    PAGE = os.sysconf("SC_PAGE_SIZE")

    class Recorder:
        def __init__(self):
            self.calls = []

        def madvise(self, start, length, advice):
            self.calls.append((start.value, length.value, advice))
            return 0

    def setUp(self):
        import ctypes
        import mmap
        import tempfile
        sys.path.insert(0, os.path.dirname(REPL))
        import alcove_runtime
        self.rt = alcove_runtime
        # Anonymous, private, rw: one of the regions it collapses.
        self.region = mmap.mmap(-1, 16 * self.HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.region[0] = 1
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.region))
        # A pagemap of our own making (a sparse file): every page of the
        # region present and this process's alone, nothing else.
        self.pagemap = tempfile.TemporaryFile()
        self.own(self.base, 16 * self.HUGE)

    def own(self, start, length, entry=0x81 << 56):
        n = length // self.PAGE
        os.pwrite(self.pagemap.fileno(), entry.to_bytes(8, sys.byteorder) * n,
                  start // self.PAGE * 8)

    def collapse(self, libc, stop=None):
        return self.rt.collapse_large_regions(libc, stop, self.pagemap.fileno())

    def tearDown(self):
        self.pagemap.close()
        self.region.close()
        sys.path.remove(os.path.dirname(REPL))

    def ours(self, rec):
        return [c for c in rec.calls if self.base <= c[0] < self.base + 16 * self.HUGE]

    def test_one_huge_page_per_call_over_the_region(self):
        rec = self.Recorder()
        self.assertEqual(self.collapse(rec), self.rt.DONE)
        ours = self.ours(rec)
        self.assertGreaterEqual(len(ours), 14, rec.calls)  # 15 or 16 whole huge pages in it
        self.assertTrue(all(length == self.HUGE and start % self.HUGE == 0
                            and advice == self.rt.MADV_COLLAPSE for start, length, advice in ours), ours)

    def test_a_refusal_ends_its_region(self):
        rec = self.Recorder()
        rec.madvise = lambda start, length, advice: rec.calls.append((start.value,)) or -1
        self.assertEqual(self.collapse(rec), self.rt.DONE)
        self.assertEqual(len(self.ours(rec)), 1, rec.calls)  # not one refused call per huge page

    def test_a_huge_page_not_mostly_its_own_is_left_alone(self):
        """A collapse gives every page memory of the process's own: a large
        buffer touched here and there, one only read (the zero page) or one a
        fork still shares would each grow."""
        first = (self.base + self.HUGE - 1) & ~(self.HUGE - 1)  # the region's first whole huge page
        not_own = self.HUGE // 8 + self.PAGE  # one page more than an eighth
        self.own(first, not_own, 0)  # not present
        self.own(first + self.HUGE, not_own, 1 << 63)  # present, shared (or the zero page)
        self.own(first + 2 * self.HUGE + self.HUGE - self.HUGE // 8, self.HUGE // 8, 0)  # an eighth
        rec = self.Recorder()
        # The shared one may be its own later (a fork removed): said so.
        self.assertEqual(self.collapse(rec), self.rt.SHARED_LEFT)
        starts = [c[0] for c in self.ours(rec)]
        self.assertNotIn(first, starts)
        self.assertNotIn(first + self.HUGE, starts)
        self.assertIn(first + 2 * self.HUGE, starts)  # seven eighths its own: collapsed
        # Only absent pages passed over: nothing a later pass could do.
        self.own(first + self.HUGE, not_own)
        self.assertEqual(self.collapse(self.Recorder()), self.rt.DONE)

    def test_without_a_pagemap_nothing_is_collapsed(self):
        rec = self.Recorder()
        self.pagemap.close()
        self.pagemap = open("/dev/null", "rb")
        self.assertEqual(self.collapse(rec), self.rt.DONE)
        self.assertEqual(self.ours(rec), [])

    def test_stops_when_asked(self):
        rec = self.Recorder()
        # Asked before each huge page of every large region; this one's alone are its own here.
        self.assertEqual(self.collapse(rec, lambda: len(self.ours(rec)) >= 3), self.rt.STOPPED)
        self.assertEqual(len(self.ours(rec)), 3, rec.calls)

    def test_with_the_kernel_only_memory_of_its_own_is_collapsed(self):
        """A mapping between two inaccessible pages (so no neighbour merges
        into it) and kept from forks: six huge pages written through, six
        with four pages each written, six only read (the zero page); and a
        mapping of six written and then shared with a child."""
        import ctypes
        import mmap
        if skipped_without_collapse(self):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        huge, flags = self.HUGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

        def mapping(huge_pages):
            """A mapping of that many whole huge pages, a guard page each side;
            the address of its first huge page and the mapping."""
            m = mmap.mmap(-1, (huge_pages + 2) * huge, flags=flags)
            self.addCleanup(m.close)
            base = ctypes.addressof(ctypes.c_char.from_buffer(m))
            first = ((base + huge - 1) & ~(huge - 1)) + huge
            for guard in (first - self.PAGE, first + huge_pages * huge):
                self.assertEqual(libc.mprotect(ctypes.c_void_p(guard), ctypes.c_size_t(self.PAGE), 0), 0)
            return first, m, first - base

        own, region, at = mapping(18)
        self.assertEqual(libc.madvise(ctypes.c_void_p(own), ctypes.c_size_t(18 * huge),
                                      10), 0)  # MADV_DONTFORK: the child below has none of it
        region[at:at + 6 * huge] = b"\1" * (6 * huge)
        for page in range(at + 6 * huge, at + 12 * huge, huge // 4):
            region[page] = 1
        self.assertEqual(region[at + 12 * huge:at + 18 * huge].count(0), 6 * huge)
        shared, other, other_at = mapping(6)
        other[other_at:other_at + 6 * huge] = b"\2" * (6 * huge)
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(writer)
            os.read(reader, 1)  # until the parent has collapsed
            os._exit(0)
        os.close(reader)

        def sizes(address):
            fields, ours = {}, False
            with open("/proc/self/smaps") as f:
                for line in f:
                    head = line.split()
                    if "-" in head[0] and not head[0].endswith(":"):
                        lo, hi = (int(x, 16) for x in head[0].split("-"))
                        ours = lo <= address < hi
                    elif ours and head[0] in ("Rss:", "AnonHugePages:"):
                        fields[head[0][:-1]] = int(head[1])
            return fields

        try:
            self.assertEqual(sizes(own)["AnonHugePages"] + sizes(shared)["AnonHugePages"], 0)
            # The shared ones (the child's too) may be its own later: said so.
            self.assertEqual(self.rt.collapse_large_regions(libc), self.rt.SHARED_LEFT)
            after, after_shared = sizes(own), sizes(shared)
        finally:
            os.close(writer)
            os.waitpid(child, 0)
        huge_kib = huge >> 10
        self.assertEqual(after["AnonHugePages"], 6 * huge_kib, after)  # the dense ones alone
        # Neither the sparse ones filled (12 MiB more) nor the read ones (12 MiB).
        self.assertLess(after["Rss"], 7 * huge_kib, after)
        # Collapsed, the shared ones would be copied: 12 MiB where there was one.
        self.assertEqual(after_shared["AnonHugePages"], 0, after_shared)


class IdleCollapseTest(unittest.TestCase):
    """A forkable session backs its state with huge pages once idle, passes
    over what a fork of it still shares, and looks again while idle."""

    def test_state_a_child_shares_is_collapsed_once_the_child_has_gone(self):
        if skipped_without_collapse(self):
            return
        if os.geteuid() != 0:
            print(f"SKIPPED {self.id()}: a forkable session is not dumpable: only root reads "
                  "its /proc/PID/smaps_rollup", file=sys.stderr)
            return
        repl = Repl(env_extra={"ALCOVE_REPL_FORKABLE": "1"})
        self.addCleanup(repl.close)
        self.assertEqual(repl.frame()["type"], "ready")

        def huge_kib():
            with open(f"/proc/{repl.proc.pid}/smaps_rollup") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("AnonHugePages:"))

        # A child of the code's own shares the whole state for 2 s.
        frames = repl.run("import os, time\nblob = bytearray(os.urandom(32 << 20))\n"
                          "child = os.fork()\n"
                          "if child == 0:\n    time.sleep(2)\n    os._exit(0)\n"
                          "child")
        child = int(next(f["text"] for f in frames if f["type"] == "result"))
        time.sleep(0.5)  # past the session's 50 ms of idleness: a pass was made
        shared = huge_kib()
        self.assertTrue(os.path.exists(f"/proc/{child}/stat"), "the child ended too soon")
        self.assertLess(shared, 8 << 10, "collapsed while a child shared it (copied)")
        # The passes after 1 and 2 s more find the child gone (a zombie maps nothing).
        deadline = time.monotonic() + 15
        while huge_kib() < 28 << 10:
            self.assertLess(time.monotonic(), deadline, "not collapsed once the child had gone")
            time.sleep(0.1)


class ReplFdTest(unittest.TestCase):
    def test_control_fd_from_environment(self):
        repl = Repl(at_fd3=False)
        self.addCleanup(repl.close)
        self.assertEqual(repl.frame()["type"], "ready")
        self.assertEqual(repl.until_done(repl.send("6 * 7"))[0]["text"], "42")
        repl.sock.close()
        self.assertEqual(repl.proc.wait(timeout=10), 0)

    def test_no_control_channel(self):
        proc = subprocess.run([sys.executable, "-u", REPL], stdin=subprocess.DEVNULL,
                              capture_output=True, env=dict(os.environ, ALCOVE_REPL_FD="97"),
                              timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"no control channel", proc.stderr)


if __name__ == "__main__":
    unittest.main()
