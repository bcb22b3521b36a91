"""Unit tests for the alcove SDK with no daemon: the wire format (NDJSON,
chunked transfer, errors, URLs) and both clients against a tiny
http.server on 127.0.0.1 that gives canned answers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import alcove  # noqa: E402
import alcove._ahttp  # noqa: E402
import alcove._http  # noqa: E402
from alcove import _wire  # noqa: E402
from alcove._ahttp import ChunkedReader  # noqa: E402
from alcove.errors import error_from_response  # noqa: E402

SANDBOX = {
    "id": "sb-1",
    "state": "running",
    "created_at": 1764640000.123,
    "expires_at": 1764640300.0,
    "timeout_s": 300,
    "idle_pause_s": 60,
    "image": None,
    "template": None,
    "parent": None,
    "net": "none",
    "metadata": {"user": "alice"},
    "limits": {"memory_bytes": 536870912, "cpus": 1.0, "pids": 256, "disk_bytes": 268435456},
    "usage": {"memory_bytes": 3145728, "cpu_ms": 12.5},
}


def no_ambient_config() -> Any:
    """Tests see no $ALCOVE_* and no local daemon's token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALCOVE_")}
    return mock.patch.dict(os.environ, env, clear=True)


# --- the fake daemon ------------------------------------------------------------------


class Req:
    def __init__(self, method: str, target: str, headers: Dict[str, str], body: bytes, peer: Tuple[str, int]) -> None:
        parts = urlsplit(target)
        self.method = method
        self.target = target
        self.path = parts.path
        self.query = parse_qsl(parts.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.peer = peer

    def json(self) -> Any:
        return json.loads(self.body.decode())


class Reply:
    """status, headers and either ``body`` (Content-Length) or ``parts``
    (chunked, each flushed alone; a callable part is called in between)."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        parts: Optional[List[Union[bytes, Callable[[], Any]]]] = None,
        content_type: str = "application/json",
        close_after: bool = False,
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        self.status = status
        self.body = body
        self.parts = parts
        self.content_type = content_type
        self.close_after = close_after
        self.headers = headers or {}


def j(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode())


def ndjson(*items: Union[Dict[str, Any], Callable[[], Any]]) -> Reply:
    parts: List[Union[bytes, Callable[[], Any]]] = [
        it if callable(it) else (json.dumps(it) + "\n").encode() for it in items
    ]
    return Reply(200, parts=parts, content_type="application/x-ndjson")


def api_error(status: int, code: str, message: str) -> Reply:
    return j({"error": {"code": code, "message": message}}, status)


Handler = Callable[[Req], Reply]


class FakeDaemon:
    def __init__(self) -> None:
        self.routes: Dict[Tuple[str, str], Handler] = {}
        self.requests: List[Req] = []
        daemon = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                req = Req(self.command, self.path, headers, self._body(), self.client_address)
                daemon.requests.append(req)
                handler = daemon.routes.get((req.method, req.path))
                reply = handler(req) if handler else api_error(404, "not_found", f"no route {req.method} {req.path}")
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.parts is None:
                    if reply.status != 204:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.status != 204:
                        self.wfile.write(reply.body)
                    self.wfile.flush()
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    for part in reply.parts:
                        if callable(part):
                            part()
                            continue
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                if reply.close_after:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a client that gave up is no error

        self.server = Server(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, method: str, path: str, handler: Union[Handler, Reply]) -> None:
        if isinstance(handler, Reply):
            reply = handler
            self.routes[(method, path)] = lambda _r: reply
        else:
            self.routes[(method, path)] = handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DaemonCase(unittest.TestCase):
    def setUp(self) -> None:
        env = no_ambient_config()
        env.start()
        self.addCleanup(env.stop)
        local = mock.patch.object(_wire, "LOCAL_TOKEN_FILE", "/nonexistent/alcove-token")
        local.start()
        self.addCleanup(local.stop)
        self.d = FakeDaemon()
        self.addCleanup(self.d.stop)
        self.d.route(
            "POST", "/v1/sandboxes", lambda r: j(dict(SANDBOX, **{"metadata": r.json().get("metadata", {})}), 201)
        )
        self.d.route("GET", "/v1/sandboxes/sb-1", j(SANDBOX))

    def sandbox(self) -> alcove.Sandbox:
        return alcove.Sandbox.create(server=self.d.url, token="tok")

    def run_async(self, coro: Any) -> Any:
        return asyncio.run(asyncio.wait_for(coro, 20))


# --- wire format, no sockets ----------------------------------------------------------------


class TestUrls(unittest.TestCase):
    def test_server_forms(self) -> None:
        with no_ambient_config():
            self.assertEqual(_wire.parse_server(None).url, "http://127.0.0.1:8480")
            with mock.patch.dict(os.environ, {"ALCOVE_SERVER": "10.0.0.2:9000"}):
                self.assertEqual(_wire.parse_server(None).url, "http://10.0.0.2:9000")
        ep = _wire.parse_server("https://alcove.example/base/")
        self.assertEqual((ep.scheme, ep.host, ep.port, ep.prefix), ("https", "alcove.example", 443, "/base"))
        self.assertEqual(ep.host_header, "alcove.example")
        v6 = _wire.parse_server("http://[::1]:8480")
        self.assertEqual(v6.host_header, "[::1]:8480")
        self.assertTrue(v6.is_loopback)
        self.assertFalse(_wire.parse_server("https://localhost:1").is_loopback)
        for bad in ("ftp://x", "http://", "http://h:99999", "http://h/?q=1", ""):
            with self.assertRaises(ValueError, msg=bad):
                _wire.parse_server(bad)

    def test_targets_and_queries(self) -> None:
        ep = _wire.parse_server("http://h:1/pre")
        self.assertEqual(
            ep.target("/v1/sandboxes/x/files", [("path", "/tmp/a b+c&d=é")]),
            "/pre/v1/sandboxes/x/files?path=/tmp/a%20b%2Bc%26d%3D%C3%A9",
        )
        q = _wire.list_query({"user": "alice", "team.name": "a&b"}, "paused")
        self.assertEqual(q, [("metadata.user", "alice"), ("metadata.team.name", "a&b"), ("state", "paused")])
        self.assertEqual(
            ep.target("/v1/sandboxes", q), "/pre/v1/sandboxes?metadata.user=alice&metadata.team.name=a%26b&state=paused"
        )
        self.assertEqual(
            _wire.sandbox_path("sb/../x", "processes", 12, "output"), "/v1/sandboxes/sb%2F..%2Fx/processes/12/output"
        )
        for bad in ("", ".", ".."):
            with self.assertRaises(ValueError):
                _wire.sandbox_path(bad)

    def test_bodies(self) -> None:
        body = _wire.create_body(
            template=None,
            image="python:3.12-slim",
            timeout=600,
            idle_pause=None,
            env={"K": "V"},
            metadata={},
            memory=1 << 20,
            cpus=0.5,
            pids=None,
            disk="1G",
            net="none",
        )
        self.assertEqual(
            body,
            {
                "image": "python:3.12-slim",
                "timeout_s": 600,
                "env": {"K": "V"},
                "memory": "1048576",
                "cpus": 0.5,
                "disk": "1G",
                "net": "none",
            },
        )
        self.assertEqual(
            _wire.exec_body("echo hi", background=False, env=None, cwd=None, stdin=None, timeout=1.2),
            {"cmd": "echo hi", "timeout_s": 2},
        )
        self.assertEqual(
            _wire.exec_body("echo hi", background=False, env=None, cwd=None, stdin=None, timeout=None),
            {"cmd": "echo hi"},
        )
        self.assertEqual(
            _wire.exec_body(("python3", "-c", "1"), background=True, env=None, cwd="/w", stdin=b"x\n", timeout=None),
            {"cmd": ["python3", "-c", "1"], "cwd": "/w", "stdin": "x\n", "background": True},
        )
        with self.assertRaises(TypeError):
            bad: Any = b"ls"
            _wire.exec_body(bad, background=False, env=None, cwd=None, stdin=None, timeout=None)
        self.assertEqual(_wire.read_timeout(60), 60 + _wire.STREAM_GRACE)
        self.assertIsNone(_wire.read_timeout(None))

    def test_pty_bodies(self) -> None:
        def body(pty: Any) -> Any:
            return _wire.exec_body("sh", background=False, env=None, cwd=None, stdin=None, timeout=None, pty=pty)

        self.assertEqual(body(alcove.Pty()), {"cmd": "sh", "pty": {"cols": 80, "rows": 24}})
        self.assertEqual(body((120, 40))["pty"], {"cols": 120, "rows": 40})
        self.assertNotIn("pty", body(None))
        for bad in ((0, 24), (80, 1001), (-1, 5)):
            with self.assertRaises(ValueError):
                body(bad)
        for wrong in ((80.0, 24), (True, 24), [80, 24], (80,), "80x24"):
            with self.assertRaises(TypeError):
                body(wrong)


class TestNDJSON(unittest.TestCase):
    def test_split_anywhere(self) -> None:
        data = (
            json.dumps({"type": "stdout", "text": "héllo ✓"}, ensure_ascii=False) + "\r\n\n" + '{"a":2}\n{"b":3}'
        ).encode()
        for cut in range(len(data) + 1):  # every split point, inside UTF-8 sequences too
            s = _wire.NDJSONSplitter()
            got = s.feed(data[:cut]) + s.feed(data[cut:]) + s.close()
            self.assertEqual(got, [{"type": "stdout", "text": "héllo ✓"}, {"a": 2}, {"b": 3}], cut)

    def test_byte_by_byte_yields_at_newline(self) -> None:
        s = _wire.NDJSONSplitter()
        line = b'{"type":"started","pid":7}\n'
        for b in line[:-1]:
            self.assertEqual(s.feed(bytes([b])), [])
        self.assertEqual(s.feed(b"\n"), [{"type": "started", "pid": 7}])
        self.assertEqual(s.close(), [])

    def test_bad_lines(self) -> None:
        for bad in (b"not json\n", b"[1,2]\n", b"\xff\xfe\n"):
            with self.assertRaises(alcove.AlcoveError) as c:
                _wire.NDJSONSplitter().feed(bad)
            self.assertEqual(c.exception.code, "bad_response")
        with self.assertRaises(alcove.AlcoveError):
            _wire.NDJSONSplitter(max_line=10).feed(b"x" * 11)


class TestErrors(unittest.TestCase):
    def test_mapping(self) -> None:
        cases = [
            (400, alcove.BadRequest),
            (401, alcove.Unauthorized),
            (404, alcove.NotFound),
            (408, alcove.Timeout),
            (403, alcove.Forbidden),
            (409, alcove.Conflict),
            (410, alcove.Gone),
            (413, alcove.PayloadTooLarge),
            (429, alcove.RateLimited),
            (503, alcove.Unavailable),
            (504, alcove.Timeout),
            (500, alcove.AlcoveError),
            (418, alcove.AlcoveError),
        ]
        for status, cls in cases:
            e = error_from_response(status, b'{"error": {"code": "c_%d", "message": "m"}}' % status)
            self.assertIs(type(e), cls, status)
            self.assertEqual((e.status, e.code, e.message), (status, f"c_{status}", "m"))
            self.assertIsInstance(e, alcove.AlcoveError)
        self.assertIsInstance(error_from_response(410, b""), alcove.NotFound)
        e = error_from_response(502, b"<html>Bad Gateway</html>", "Bad Gateway")
        self.assertEqual((e.code, e.message), ("bad_gateway", "<html>Bad Gateway</html>"))
        e = error_from_response(404, b"", "Not Found")
        self.assertEqual((type(e), e.code, e.message), (alcove.NotFound, "not_found", "Not Found"))
        e = error_from_response(409, b'{"error": {"code": "busy", "message": "m", "extra": 1}}')
        self.assertEqual(e.body, {"code": "busy", "message": "m", "extra": 1})
        self.assertIn("m [busy, HTTP 409]", str(e))


class TestFolds(unittest.TestCase):
    def test_command(self) -> None:
        f = _wire.CommandFold()
        outs = [
            f.apply(e)
            for e in (
                {"type": "started", "pid": 12},
                {"type": "stdout", "text": "a"},
                {"type": "stderr", "text": "b"},
                {"type": "stdout", "text": "c"},
                {"type": "future", "x": 1},
                {"type": "exit", "code": None, "signal": "KILL", "timed_out": True},
            )
        ]
        self.assertEqual(
            [o for o in outs if o],
            [alcove.Output("stdout", "a"), alcove.Output("stderr", "b"), alcove.Output("stdout", "c")],
        )
        r = f.finish()
        self.assertEqual(
            r, alcove.CommandResult(stdout="ac", stderr="b", exit_code=None, signal="KILL", timed_out=True, pid=12)
        )
        with self.assertRaises(alcove.AlcoveError) as c:
            _wire.CommandFold().finish()
        self.assertEqual(c.exception.code, "incomplete_stream")
        with self.assertRaises(alcove.AlcoveError) as c:
            _wire.CommandFold().apply({"error": {"code": "internal", "message": "boom"}})
        self.assertEqual((c.exception.code, c.exception.message), ("internal", "boom"))

    def test_code(self) -> None:
        f = _wire.CodeFold()
        for e in (
            {"type": "stdout", "text": "hi\n"},
            {"type": "result", "text": "2", "mime": {"text/plain": "2", "text/html": "<b>2</b>"}},
            {"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": ["t1", "t2"]},
            {"type": "done", "ok": False, "duration_ms": 0.4},
        ):
            f.apply(e)
        ex = f.finish()
        self.assertEqual(ex.stdout, ["hi\n"])
        self.assertEqual(ex.text, "2")
        self.assertEqual(ex.results[0].mime["text/html"], "<b>2</b>")
        self.assertEqual(ex.error, alcove.ExecutionError("ZeroDivisionError", "division by zero", ["t1", "t2"]))
        self.assertEqual(ex.duration_ms, 0.4)
        self.assertIsNone(alcove.Execution().text)

    def test_models(self) -> None:
        info = alcove.SandboxInfo.from_dict(SANDBOX)
        self.assertEqual(
            (info.id, info.state, info.limits.memory_bytes, info.usage and info.usage.cpu_ms),
            ("sb-1", "running", 536870912, 12.5),
        )
        self.assertEqual(info.raw["net"], "none")
        bare = alcove.SandboxInfo.from_dict({"id": "x", "state": "paused", "new_field": 1})
        self.assertIsNone(bare.usage)
        self.assertEqual(bare.raw["new_field"], 1)
        with self.assertRaises(alcove.AlcoveError):
            alcove.SandboxInfo.from_dict({"state": "running"})
        e = alcove.EntryInfo.from_dict(
            {"name": "a", "path": "/a", "type": "file", "size": 3, "mode": "0644", "mtime": 1.5}
        )
        self.assertEqual((e.mode, e.size), (0o644, 3))


class TestChunkedReader(unittest.TestCase):
    def decode(self, pieces: List[bytes], eof: bool = True) -> bytes:
        async def go() -> bytes:
            r = asyncio.StreamReader()
            for p in pieces:
                r.feed_data(p)
            if eof:
                r.feed_eof()
            c = ChunkedReader(r)
            out = b""
            while True:
                d = await c.read(3)
                if not d:
                    return out
                out += d

        return asyncio.run(go())

    def test_decoding(self) -> None:
        wire = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\nNEXT"
        self.assertEqual(self.decode([wire]), b"hello0123456789")
        self.assertEqual(self.decode([wire[i : i + 1] for i in range(len(wire))]), b"hello0123456789")

    def test_data_before_crlf(self) -> None:
        async def go() -> bytes:
            r = asyncio.StreamReader()
            r.feed_data(b"3\r\nabc")  # the CRLF and the next chunk have not come yet
            return await asyncio.wait_for(ChunkedReader(r).read(), 1)

        self.assertEqual(asyncio.run(go()), b"abc")

    def test_broken(self) -> None:
        with self.assertRaises(asyncio.IncompleteReadError):
            self.decode([b"5\r\nhel"])
        with self.assertRaises(asyncio.IncompleteReadError):
            self.decode([b"5\r\nhello\r\n"])
        with self.assertRaises(alcove.AlcoveError):
            self.decode([b"zz\r\n"])
        with self.assertRaises(alcove.AlcoveError):
            self.decode([b"2\r\nabXX"])


class TestTokens(unittest.TestCase):
    def test_resolution(self) -> None:
        ep = _wire.parse_server("http://127.0.0.1:8480")
        remote = _wire.parse_server("http://10.1.1.1:8480")
        with no_ambient_config(), tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "token")
            with open(path, "w") as f:
                f.write("filetok\n")
            with mock.patch.object(_wire, "LOCAL_TOKEN_FILE", path):
                self.assertEqual(_wire.resolve_token("given", None, ep), _wire.Credentials("given"))
                with mock.patch.dict(os.environ, {"ALCOVE_TOKEN": "envtok", "ALCOVE_TOKEN_FILE": path}):
                    self.assertEqual(_wire.resolve_token(None, None, ep), _wire.Credentials("envtok"))
                with mock.patch.dict(os.environ, {"ALCOVE_TOKEN_FILE": path}):
                    self.assertEqual(_wire.resolve_token(None, None, remote), _wire.Credentials("filetok", True, path))
                # the local daemon's file: for loopback only
                self.assertEqual(_wire.resolve_token(None, None, ep), _wire.Credentials("filetok", True, path))
                self.assertEqual(_wire.resolve_token(None, None, remote), _wire.Credentials(None))
            with mock.patch.object(_wire, "LOCAL_TOKEN_FILE", os.path.join(tmp, "absent")):
                self.assertEqual(_wire.resolve_token(None, None, ep), _wire.Credentials(None))
            with self.assertRaises(OSError):
                _wire.resolve_token(None, os.path.join(tmp, "absent"), ep)

    def test_proof(self) -> None:
        want = hashlib.sha256(b"alcove-token-proof\x00tok\x00n1").hexdigest()
        self.assertEqual(_wire.expected_proof("tok", "n1"), want)


# --- the sync client against the fake daemon ---------------------------------------------------


class TestSyncClient(DaemonCase):
    def test_create_info_list_kill(self) -> None:
        sb = alcove.Sandbox.create(
            server=self.d.url, token="tok", metadata={"user": "bob"}, memory="512M", timeout=600, net="none"
        )
        req = self.d.requests[-1]
        self.assertEqual(req.headers["authorization"], "Bearer tok")
        self.assertEqual(req.headers["content-type"], "application/json")
        self.assertEqual(req.json(), {"metadata": {"user": "bob"}, "memory": "512M", "timeout_s": 600, "net": "none"})
        self.assertEqual(sb.id, "sb-1")
        self.assertEqual(sb.last_info.metadata, {"user": "bob"})
        self.assertEqual(sb.info().limits.pids, 256)

        self.d.route("GET", "/v1/sandboxes", j({"sandboxes": [SANDBOX, dict(SANDBOX, id="sb-2")]}))
        with mock.patch.dict(os.environ, {"ALCOVE_SERVER": self.d.url, "ALCOVE_TOKEN": "envtok"}):
            got = alcove.Sandbox.list(metadata={"user": "alice"}, state="running")
        self.assertEqual([s.id for s in got], ["sb-1", "sb-2"])
        self.assertEqual(self.d.requests[-1].query, [("metadata.user", "alice"), ("state", "running")])
        self.assertEqual(self.d.requests[-1].headers["authorization"], "Bearer envtok")

        self.d.route("DELETE", "/v1/sandboxes/sb-1", j(dict(SANDBOX, state="removed")))
        self.assertTrue(sb.kill())
        self.assertEqual(sb.last_info.state, "removed")
        self.d.route("DELETE", "/v1/sandboxes/sb-1", api_error(404, "not_found", "no sandbox sb-1"))
        self.assertFalse(sb.kill())

    def test_lifecycle_routes(self) -> None:
        sb = self.sandbox()
        self.d.route("POST", "/v1/sandboxes/sb-1/timeout", lambda r: j(dict(SANDBOX, timeout_s=r.json()["timeout_s"])))
        self.assertEqual(sb.set_timeout(899.5).timeout_s, 900)
        self.assertEqual(self.d.requests[-1].json(), {"timeout_s": 900})
        self.d.route("POST", "/v1/sandboxes/sb-1/pause", j(dict(SANDBOX, state="paused")))
        self.assertEqual(sb.pause().state, "paused")
        self.assertEqual(self.d.requests[-1].headers.get("content-length"), "0")
        self.d.route("POST", "/v1/sandboxes/sb-1/resume", j(SANDBOX))
        self.assertEqual(sb.resume().state, "running")
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/fork",
            lambda r: j(dict(SANDBOX, id="sb-2", parent="sb-1", metadata=r.json()["metadata"]), 201),
        )
        child = sb.fork(metadata={"k": "v"})
        self.assertEqual((child.id, child.last_info.parent, child.last_info.metadata), ("sb-2", "sb-1", {"k": "v"}))
        self.d.route("POST", "/v1/sandboxes/sb-1/snapshot", lambda r: j({"template": r.json()["name"]}, 201))
        self.assertEqual(sb.snapshot("py-ready")["template"], "py-ready")
        self.d.route("GET", "/v1/sandbox-templates", j({"templates": [{"name": "py-ready"}]}))
        self.assertEqual(alcove.Sandbox.list_templates(server=self.d.url), [{"name": "py-ready"}])
        self.d.route("DELETE", "/v1/sandbox-templates/py%20ready", Reply(204))
        alcove.Sandbox.delete_template("py ready", server=self.d.url)
        self.assertEqual(self.d.requests[-1].target, "/v1/sandbox-templates/py%20ready")

    def test_errors(self) -> None:
        with self.assertRaises(alcove.NotFound) as c:
            alcove.Sandbox.connect("sb-9", server=self.d.url, token="tok")
        self.assertEqual((c.exception.status, c.exception.code), (404, "not_found"))
        self.d.route("POST", "/v1/sandboxes", api_error(401, "unauthorized", "this daemon needs its token"))
        with self.assertRaises(alcove.Unauthorized) as c2:
            alcove.Sandbox.create(server=self.d.url)
        self.assertEqual(c2.exception.message, "this daemon needs its token")
        self.assertNotIn("authorization", self.d.requests[-1].headers)
        self.d.route("POST", "/v1/sandboxes", api_error(409, "conflict", "busy"))
        with self.assertRaises(alcove.Conflict):
            alcove.Sandbox.create(server=self.d.url)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with self.assertRaises(alcove.Unreachable) as c3:
            alcove.Sandbox.connect("sb-1", server=f"127.0.0.1:{port}")
        self.assertEqual((c3.exception.status, c3.exception.code), (0, "unreachable"))

    def test_context_manager_kills(self) -> None:
        self.d.route("DELETE", "/v1/sandboxes/sb-1", j(dict(SANDBOX, state="removed")))
        with self.assertRaises(RuntimeError):
            with self.sandbox() as sb:
                self.assertEqual(sb.id, "sb-1")
                raise RuntimeError("body failed")
        self.assertEqual(self.d.requests[-1].method, "DELETE")

    def test_exec_streams_as_it_runs(self) -> None:
        seen_first = threading.Event()
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/exec",
            lambda r: ndjson(
                {"type": "started", "pid": 12},
                {"type": "stdout", "text": "first\n"},
                lambda: self.assertTrue(seen_first.wait(5), "the callback did not run before the stream ended"),
                {"type": "stderr", "text": "warn\n"},
                {"type": "stdout", "text": "second\n"},
                {"type": "exit", "code": 3},
            ),
        )
        sb = self.sandbox()
        got: List[Tuple[str, str]] = []

        def on_stdout(t: str) -> None:
            got.append(("out", t))
            seen_first.set()

        r = sb.commands.run(
            ["sh", "-c", "x"],
            on_stdout=on_stdout,
            on_stderr=lambda t: got.append(("err", t)),
            env={"A": "1"},
            cwd="/tmp",
            stdin="in",
            timeout=5,
        )
        self.assertEqual(
            self.d.requests[-1].json(),
            {"cmd": ["sh", "-c", "x"], "env": {"A": "1"}, "cwd": "/tmp", "stdin": "in", "timeout_s": 5},
        )
        self.assertEqual(got, [("out", "first\n"), ("err", "warn\n"), ("out", "second\n")])
        self.assertEqual(
            (r.stdout, r.stderr, r.exit_code, r.signal, r.timed_out, r.pid, r.ok),
            ("first\nsecond\n", "warn\n", 3, None, False, 12, False),
        )

    def test_exec_timeout_and_cut_stream(self) -> None:
        sb = self.sandbox()
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/exec",
            ndjson({"type": "started", "pid": 1}, {"type": "exit", "code": None, "signal": "KILL", "timed_out": True}),
        )
        r = sb.commands.run("sleep 99", timeout=1)
        self.assertEqual((r.exit_code, r.signal, r.timed_out), (None, "KILL", True))
        self.d.route("POST", "/v1/sandboxes/sb-1/exec", ndjson({"type": "started", "pid": 1}))
        with self.assertRaises(alcove.AlcoveError) as c:
            sb.commands.run("true")
        self.assertEqual(c.exception.code, "incomplete_stream")

    def test_background(self) -> None:
        sb = self.sandbox()
        self.d.route("POST", "/v1/sandboxes/sb-1/exec", ndjson({"type": "started", "pid": 42}))
        h = sb.commands.run("sleep 5; echo x", background=True)
        self.assertEqual(self.d.requests[-1].json(), {"cmd": "sleep 5; echo x", "background": True})
        self.assertEqual(h.pid, 42)
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/processes/42/output",
            ndjson({"type": "stdout", "text": "x\n"}, {"type": "exit", "code": 0}),
        )
        chunks: List[str] = []
        self.assertEqual(h.wait(on_stdout=chunks.append).stdout, "x\n")
        self.assertEqual(chunks, ["x\n"])
        self.assertEqual([o.text for o in sb.commands.connect(42)], ["x\n"])
        self.d.route("POST", "/v1/sandboxes/sb-1/processes/42/stdin", Reply(204))
        h.send_stdin(b"\x00data")
        self.assertEqual(self.d.requests[-1].body, b"\x00data")
        self.assertEqual(self.d.requests[-1].query, [])
        self.assertEqual(self.d.requests[-1].headers["content-type"], "application/octet-stream")
        h.close_stdin()
        self.assertEqual((self.d.requests[-1].body, self.d.requests[-1].query), (b"", [("close", "true")]))
        self.d.route("POST", "/v1/sandboxes/sb-1/processes/42/kill", Reply(204))
        self.assertTrue(h.kill("TERM"))
        self.assertEqual(self.d.requests[-1].json(), {"signal": "TERM"})
        self.assertTrue(h.kill())
        self.assertEqual(self.d.requests[-1].json(), {"signal": "KILL"})
        self.assertFalse(sb.commands.kill(43))
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/processes",
            j({"processes": [{"pid": 42, "cmd": "sleep 5", "running": False, "exit_code": 0}]}),
        )
        self.assertEqual(sb.commands.list(), [alcove.ProcessInfo(42, "sleep 5", False, 0, None)])

    def test_pty_and_resize(self) -> None:
        sb = self.sandbox()
        self.d.route("POST", "/v1/sandboxes/sb-1/exec", ndjson({"type": "started", "pid": 9}))
        h = sb.commands.run("bash", background=True, pty=alcove.Pty(100, 30))
        self.assertEqual(
            self.d.requests[-1].json(), {"cmd": "bash", "background": True, "pty": {"cols": 100, "rows": 30}}
        )
        self.d.route("POST", "/v1/sandboxes/sb-1/processes/9/resize", Reply(204))
        h.resize(132, 43)
        self.assertEqual(self.d.requests[-1].json(), {"cols": 132, "rows": 43})
        sb.commands.resize(9, 1, 1000)
        self.assertEqual(self.d.requests[-1].json(), {"cols": 1, "rows": 1000})
        asked = len(self.d.requests)
        with self.assertRaises(ValueError):
            h.resize(0, 24)
        self.assertEqual(len(self.d.requests), asked, "a bad size was sent")
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/processes",
            j({"processes": [{"pid": 9, "cmd": "bash", "running": True, "exit_code": None, "pty": True}]}),
        )
        self.assertTrue(sb.commands.list()[0].pty)

        async def go() -> None:
            async with await alcove.AsyncSandbox.connect("sb-1", server=self.d.url, token="tok") as asb:
                ah = await asb.commands.run("bash", background=True, pty=(80, 24))
                self.assertEqual(self.d.requests[-1].json()["pty"], {"cols": 80, "rows": 24})
                await ah.resize(90, 20)
                self.assertEqual(self.d.requests[-1].path, "/v1/sandboxes/sb-1/processes/9/resize")
                self.assertEqual(self.d.requests[-1].json(), {"cols": 90, "rows": 20})

        self.d.route("GET", "/v1/sandboxes/sb-1", j(SANDBOX))
        self.d.route("DELETE", "/v1/sandboxes/sb-1", j(dict(SANDBOX, state="removed")))
        asyncio.run(asyncio.wait_for(go(), 20))

    def test_files(self) -> None:
        sb = self.sandbox()
        store: Dict[str, bytes] = {}

        def put(r: Req) -> Reply:
            path = dict(r.query)["path"]
            store[path] = r.body
            return j({"path": path, "size": len(r.body)})

        self.d.route("PUT", "/v1/sandboxes/sb-1/files", put)
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/files",
            lambda r: Reply(200, store[dict(r.query)["path"]], content_type="application/octet-stream"),
        )
        self.assertEqual(sb.files.write("/w/a b.txt", "héllo"), alcove.WriteInfo("/w/a b.txt", 6))
        self.assertEqual(self.d.requests[-1].headers["content-length"], "6")
        self.assertEqual(sb.files.read_text("/w/a b.txt"), "héllo")

        big = os.urandom(300_000)
        self.assertEqual(sb.files.write("/big", io.BytesIO(big)).size, len(big))
        self.assertEqual(self.d.requests[-1].headers.get("transfer-encoding"), "chunked")
        self.assertEqual(store["/big"], big)
        sb.files.write("/gen", (bytes([i]) * 10 for i in range(3)))
        self.assertEqual(store["/gen"], b"\x00" * 10 + b"\x01" * 10 + b"\x02" * 10)
        self.assertEqual(sb.files.read("/big"), big)
        self.assertEqual(b"".join(sb.files.read_stream("/big")), big)

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
            with open(src, "wb") as f:
                f.write(big)
            sb.files.upload(src, "/up")
            self.assertEqual(store["/up"], big)
            self.assertEqual(sb.files.download("/up", dst), len(big))
            with open(dst, "rb") as got:
                self.assertEqual(got.read(), big)
            with self.assertRaises(alcove.NotFound):
                self.d.route("GET", "/v1/sandboxes/sb-1/files", api_error(404, "not_found", "no such file"))
                sb.files.download("/nope", os.path.join(tmp, "never"))
            self.assertFalse(os.path.exists(os.path.join(tmp, "never")))

        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/files/list",
            j(
                {
                    "entries": [
                        {"name": "a", "path": "/w/a", "type": "file", "size": 3, "mode": 420, "mtime": 1.0},
                        {"name": "d", "path": "/w/d", "type": "dir", "size": 0, "mode": 493, "mtime": 2.0},
                    ]
                }
            ),
        )
        entries = sb.files.list("/w")
        self.assertEqual([(e.name, e.type, e.mode) for e in entries], [("a", "file", 0o644), ("d", "dir", 0o755)])
        self.assertTrue(sb.files.exists("/w/a"))
        self.assertFalse(sb.files.exists("/w/zz"))
        self.assertEqual(self.d.requests[-1].query, [("path", "/w")])
        self.assertFalse(sb.files.exists("rel.txt"))
        self.assertEqual(self.d.requests[-1].query, [("path", ".")])  # relative: under the sandbox's home
        self.d.route("DELETE", "/v1/sandboxes/sb-1/files", Reply(204))
        sb.files.remove("/w/a")
        self.d.route("POST", "/v1/sandboxes/sb-1/files/mkdir", Reply(204))
        sb.files.make_dir("/w/x/y")
        self.assertEqual(self.d.requests[-1].query, [("path", "/w/x/y")])

    def test_watch(self) -> None:
        sb = self.sandbox()
        release = threading.Event()
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/files/watch",
            lambda r: ndjson(
                {"event": "create", "path": "/w/a"},
                {"event": "modify", "path": "/w/a"},
                lambda: release.wait(5),
                {"event": "delete", "path": "/w/a"},
            ),
        )
        with sb.files.watch("/w") as w:
            it = iter(w)
            self.assertEqual(next(it), alcove.FilesystemEvent("create", "/w/a"))
            self.assertEqual(next(it).event, "modify")
            release.set()
            self.assertEqual(next(it).event, "delete")
            self.assertEqual(list(it), [])

        # a callback run by a thread; stop() ends a watch that would go on
        forever = threading.Event()
        self.addCleanup(forever.set)
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/files/watch",
            lambda r: ndjson({"event": "create", "path": "/w/b"}, lambda: forever.wait(10)),
        )
        got: List[alcove.FilesystemEvent] = []
        arrived = threading.Event()

        def on_event(e: alcove.FilesystemEvent) -> None:
            got.append(e)
            arrived.set()

        w2 = sb.files.watch("/w", on_event=on_event)
        self.assertTrue(arrived.wait(5))
        t0 = time.monotonic()
        w2.stop()
        self.assertLess(time.monotonic() - t0, 3)
        self.assertEqual([e.path for e in got], ["/w/b"])
        self.assertIsNone(w2.error)

    def test_run_code(self) -> None:
        sb = self.sandbox()
        seen = threading.Event()
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/code",
            lambda r: ndjson(
                {"type": "stdout", "text": "hi\n"},
                lambda: self.assertTrue(seen.wait(5)),
                {"type": "result", "text": "2", "mime": {"text/plain": "2"}},
                {"type": "done", "ok": True, "duration_ms": 0.4},
            ),
        )
        results: List[alcove.Result] = []
        ex = sb.run_code("print('hi')\n1 + 1", on_stdout=lambda t: seen.set(), on_result=results.append, timeout=10)
        self.assertEqual(self.d.requests[-1].json(), {"code": "print('hi')\n1 + 1", "timeout_s": 10})
        self.assertEqual((ex.text, ex.stdout, ex.error, ex.duration_ms), ("2", ["hi\n"], None, 0.4))
        self.assertEqual(results, [alcove.Result("2", {"text/plain": "2"})])
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/code",
            ndjson(
                {"type": "error", "name": "KeyboardInterrupt", "value": "", "traceback": ["..."]},
                {"type": "done", "ok": False, "duration_ms": 5},
            ),
        )
        errors: List[alcove.ExecutionError] = []
        ex = sb.run_code("while True: pass", on_error=errors.append)
        self.assertEqual(ex.error and ex.error.name, "KeyboardInterrupt")
        self.assertEqual(len(errors), 1)
        self.d.route("POST", "/v1/sandboxes/sb-1/code/interrupt", Reply(204))
        sb.interrupt_code()

    def test_keep_alive_and_stale_connections(self) -> None:
        sb = self.sandbox()
        sb.info()
        sb.info()
        peers = {r.peer for r in self.d.requests}
        self.assertEqual(len(peers), 1, "requests should share one kept-alive connection")
        # the daemon closes a connection after answering, without saying so
        self.d.route("GET", "/v1/sandboxes/sb-1", Reply(200, json.dumps(SANDBOX).encode(), close_after=True))
        sb.info()
        time.sleep(0.1)
        self.assertEqual(sb.info().id, "sb-1")
        self.assertEqual(sb.info().id, "sb-1")

    def test_client_timeout(self) -> None:
        release = threading.Event()
        self.addCleanup(release.set)
        self.d.route("GET", "/v1/sandboxes/sb-1", lambda r: (release.wait(5), j(SANDBOX))[1])
        with self.assertRaises(alcove.Timeout) as c:
            alcove.Sandbox.connect("sb-1", server=self.d.url, request_timeout=0.3)
        self.assertEqual((c.exception.status, c.exception.code), (0, "client_timeout"))

    def test_token_file_needs_proof(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "token")
            with open(path, "w") as f:
                f.write("secret\n")
            self.d.route(
                "GET",
                "/healthz",
                lambda r: j({"ok": True, "proof": _wire.expected_proof("secret", dict(r.query)["proof"])}),
            )
            sb = alcove.Sandbox.connect("sb-1", server=self.d.url, token_file=path)
            self.assertEqual([r.path for r in self.d.requests[-2:]], ["/healthz", "/v1/sandboxes/sb-1"])
            self.assertNotIn("authorization", self.d.requests[-2].headers)
            self.assertEqual(self.d.requests[-1].headers["authorization"], "Bearer secret")
            sb.info()
            self.assertEqual(self.d.requests[-1].path, "/v1/sandboxes/sb-1")  # proved once

            n = len(self.d.requests)
            self.d.route("GET", "/healthz", j({"ok": True}))  # a squatter: no proof
            with mock.patch.dict(os.environ, {"ALCOVE_TOKEN_FILE": path}):
                with self.assertRaises(alcove.Unauthorized) as c:
                    alcove.Sandbox.connect("sb-1", server=self.d.url)
            self.assertEqual(c.exception.code, "token_proof_failed")
            self.assertEqual([r.path for r in self.d.requests[n:]], ["/healthz"])
            self.assertNotIn("authorization", self.d.requests[-1].headers)


class TestEarlyRefusal(unittest.TestCase):
    """A daemon that refuses an upload before reading its body (no such
    sandbox) and closes the connection: the client reports its answer, not
    the broken pipe."""

    def setUp(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.addCleanup(self.srv.close)
        threading.Thread(target=self._serve, daemon=True).start()
        self.url = f"127.0.0.1:{self.srv.getsockname()[1]}"
        self.big = b"x" * (32 << 20)

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with c:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += c.recv(65536)
                body = b'{"error": {"code": "sandbox_not_found", "message": "no sandbox sb-x"}}'
                c.sendall(
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                time.sleep(0.05)  # then close with the body unread (a reset)

    def test_sync(self) -> None:
        t = alcove._http.Transport(self.url, token="t")
        with self.assertRaises(alcove.NotFound) as c:
            t.call("PUT", "/v1/sandboxes/sb-x/files", [("path", "/a")], body=io.BytesIO(self.big), timeout=None)
        self.assertEqual(c.exception.code, "sandbox_not_found")

    def test_async(self) -> None:
        async def go() -> None:
            t = alcove._ahttp.AsyncTransport(self.url, token="t")
            with self.assertRaises(alcove.NotFound) as c:
                await t.call(
                    "PUT", "/v1/sandboxes/sb-x/files", [("path", "/a")], body=io.BytesIO(self.big), timeout=None
                )
            self.assertEqual(c.exception.code, "sandbox_not_found")

        asyncio.run(asyncio.wait_for(go(), 20))


# --- the async client ----------------------------------------------------------------------


class TestAsyncClient(DaemonCase):
    def test_create_exec_and_errors(self) -> None:
        seen_first = threading.Event()
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/exec",
            lambda r: ndjson(
                {"type": "started", "pid": 12},
                {"type": "stdout", "text": "first\n"},
                lambda: self.assertTrue(seen_first.wait(5), "the callback did not run before the stream ended"),
                {"type": "stderr", "text": "warn\n"},
                {"type": "exit", "code": 0},
            ),
        )
        self.d.route("DELETE", "/v1/sandboxes/sb-1", j(dict(SANDBOX, state="removed")))

        async def go() -> None:
            async with await alcove.AsyncSandbox.create(server=self.d.url, token="tok", metadata={"user": "al"}) as sb:
                self.assertEqual(self.d.requests[-1].json(), {"metadata": {"user": "al"}})
                self.assertEqual(self.d.requests[-1].headers["authorization"], "Bearer tok")
                errs: List[str] = []

                async def on_stdout(t: str) -> None:
                    seen_first.set()

                r = await sb.commands.run("echo", on_stdout=on_stdout, on_stderr=errs.append)
                self.assertEqual((r.stdout, r.stderr, r.exit_code, r.pid), ("first\n", "warn\n", 0, 12))
                self.assertEqual(errs, ["warn\n"])
                self.assertEqual((await sb.info()).limits.cpus, 1.0)
                with self.assertRaises(alcove.NotFound):
                    await alcove.AsyncSandbox.connect("sb-404", server=self.d.url)
            self.assertEqual(self.d.requests[-1].method, "DELETE")

        self.run_async(go())

    def test_background_files_code(self) -> None:
        store: Dict[str, bytes] = {}

        def put(r: Req) -> Reply:
            store[dict(r.query)["path"]] = r.body
            return j({"path": dict(r.query)["path"], "size": len(r.body)})

        self.d.route("PUT", "/v1/sandboxes/sb-1/files", put)
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/files",
            lambda r: Reply(200, store[dict(r.query)["path"]], content_type="application/octet-stream"),
        )
        self.d.route("POST", "/v1/sandboxes/sb-1/exec", ndjson({"type": "started", "pid": 7}))
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/processes/7/output",
            ndjson({"type": "stdout", "text": "a"}, {"type": "stdout", "text": "b"}, {"type": "exit", "code": 1}),
        )
        self.d.route(
            "POST",
            "/v1/sandboxes/sb-1/code",
            ndjson(
                {"type": "result", "text": "2", "mime": {"text/plain": "2"}},
                {"type": "done", "ok": True, "duration_ms": 1},
            ),
        )
        self.d.route(
            "GET", "/v1/sandboxes/sb-1/files/list", j({"entries": [{"name": "a", "path": "/a", "type": "file"}]})
        )
        self.d.route("POST", "/v1/sandboxes/sb-1/processes/7/kill", api_error(404, "not_found", "gone"))
        big = os.urandom(200_000)

        async def chunks() -> Any:
            for i in range(0, len(big), 70_000):
                yield big[i : i + 70_000]

        async def go() -> None:
            sb = await alcove.AsyncSandbox.connect("sb-1", server=self.d.url)
            h = await sb.commands.run("x", background=True)
            self.assertEqual(h.pid, 7)
            self.assertEqual([o.text async for o in h], ["a", "b"])
            self.assertEqual(h.result and h.result.exit_code, 1)
            self.assertEqual((await sb.commands.connect(7).wait()).stdout, "ab")
            self.assertFalse(await h.kill())

            self.assertEqual((await sb.files.write("/s", "héllo")).size, 6)
            self.assertEqual(await sb.files.read_text("/s"), "héllo")
            await sb.files.write("/a", chunks())
            self.assertEqual(self.d.requests[-1].headers.get("transfer-encoding"), "chunked")
            self.assertEqual(store["/a"], big)
            await sb.files.write("/f", io.BytesIO(big))
            self.assertEqual(store["/f"], big)
            self.assertEqual(await sb.files.read("/f"), big)
            self.assertEqual(b"".join([c async for c in sb.files.read_stream("/f")]), big)
            with tempfile.TemporaryDirectory() as tmp:
                dst = os.path.join(tmp, "dst")
                self.assertEqual(await sb.files.download("/f", dst), len(big))
                with open(dst, "rb") as f:
                    self.assertEqual(f.read(), big)
                await sb.files.upload(dst, "/u")
                self.assertEqual(store["/u"], big)
            self.assertEqual([e.name for e in await sb.files.list("/")], ["a"])

            results: List[alcove.Result] = []

            async def on_result(r: alcove.Result) -> None:
                results.append(r)

            ex = await sb.run_code("1 + 1", on_result=on_result)
            self.assertEqual((ex.text, len(results)), ("2", 1))
            peers = {r.peer for r in self.d.requests[-3:]}
            self.assertEqual(len(peers), 1, "kept-alive connection reused")
            await sb.close()

        self.run_async(go())

    def test_watch_and_timeout(self) -> None:
        forever = threading.Event()
        self.addCleanup(forever.set)
        self.d.route(
            "GET",
            "/v1/sandboxes/sb-1/files/watch",
            lambda r: ndjson(
                {"event": "create", "path": "/w/a"}, {"event": "move", "path": "/w/b"}, lambda: forever.wait(10)
            ),
        )

        async def go() -> None:
            sb = await alcove.AsyncSandbox.connect("sb-1", server=self.d.url)
            w = await sb.files.watch("/w")
            got = []
            async for ev in w:
                got.append(ev.event)
                if len(got) == 2:
                    break
            await w.stop()
            self.assertEqual(got, ["create", "move"])

            arrived = asyncio.Event()
            events: List[str] = []

            async def on_event(e: alcove.FilesystemEvent) -> None:
                events.append(e.path)
                if len(events) == 2:
                    arrived.set()

            async with await sb.files.watch("/w", on_event=on_event):
                await asyncio.wait_for(arrived.wait(), 5)
            self.assertEqual(events, ["/w/a", "/w/b"])

            release = threading.Event()
            self.addCleanup(release.set)
            self.d.route("GET", "/v1/sandboxes/sb-1", lambda r: (release.wait(5), j(SANDBOX))[1])
            with self.assertRaises(alcove.Timeout):
                await alcove.AsyncSandbox.connect("sb-1", server=self.d.url, request_timeout=0.3)

        self.run_async(go())

    def test_token_proof(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "token")
            with open(path, "w") as f:
                f.write("secret")
            self.d.route("GET", "/healthz", j({"ok": True, "proof": "0" * 64}))

            async def go() -> None:
                with self.assertRaises(alcove.Unauthorized):
                    await alcove.AsyncSandbox.connect("sb-1", server=self.d.url, token_file=path)
                self.d.route(
                    "GET", "/healthz", lambda r: j({"proof": _wire.expected_proof("secret", dict(r.query)["proof"])})
                )
                sb = await alcove.AsyncSandbox.connect("sb-1", server=self.d.url, token_file=path)
                self.assertEqual(self.d.requests[-1].headers["authorization"], "Bearer secret")
                await sb.close()

            self.run_async(go())


if __name__ == "__main__":
    unittest.main()
