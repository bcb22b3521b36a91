"""The asyncio transport: a small HTTP/1.1 client on asyncio streams, with
chunked transfer decoding (and encoding, for streamed uploads), a keep-alive
pool, bearer tokens and error mapping. Use it from one event loop."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    BinaryIO,
    Dict,
    Iterable,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import _wire
from .errors import AlcoveError, Timeout, Unreachable, error_from_response

T = TypeVar("T")

#: A body: bytes (sent with Content-Length), or a file-like object, an
#: iterable or an async iterable of bytes (streamed, chunked).
AsyncBody = Union[bytes, bytearray, memoryview, BinaryIO, Iterable[bytes], AsyncIterable[bytes], None]

_DEFAULT: Any = object()
_MAX_HEADERS = 100
#: Bytes bodies up to this are sent whole (and may be sent again on a
#: kept-alive connection the daemon closed); longer ones as a stream.
_SENT_WHOLE = 256 << 10
_LINE_LIMIT = 1 << 20


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


async def _timed(aw: Awaitable[T], timeout: Optional[float], what: str, endpoint: _wire.Endpoint) -> T:
    try:
        if timeout is None:
            return await aw
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise Timeout(0, "client_timeout", f"no answer from {endpoint.url} in time ({what})") from None
    except asyncio.IncompleteReadError:
        raise Unreachable(0, "connection_broken", f"the answer from {endpoint.url} was cut short ({what})") from None
    except asyncio.LimitOverrunError:
        raise AlcoveError(0, "bad_response", f"a line from {endpoint.url} is too long ({what})") from None
    except (ConnectionError, OSError) as e:
        raise Unreachable(0, "connection_broken", f"{type(e).__name__} talking to {endpoint.url} ({what}): {e}") from e


def _broken(what: str) -> AlcoveError:
    return AlcoveError(0, "bad_response", f"not an HTTP/1.1 answer ({what})")


class ChunkedReader:
    """Decodes a chunked body from ``reader``, handing out data as soon as it
    arrives (a chunk's trailing CRLF is consumed with the next chunk's size
    line, so a chunk flushed alone is delivered at once)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._left = 0  # bytes left in the current chunk
        self._need_crlf = False
        self.done = False

    async def read(self, n: int = _wire.CHUNK) -> bytes:
        """Up to ``n`` bytes; ``b""`` once the last chunk and trailers are read."""
        if self.done:
            return b""
        r = self._reader
        if self._left == 0:
            if self._need_crlf:
                if (await r.readline()).strip():
                    raise _broken("no CRLF after a chunk")
                self._need_crlf = False
            line = await r.readline()
            if not line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(line, None)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _broken(f"chunk size {size_text[:20]!r}") from None
            if size < 0 or size_text[:1] in (b"-", b"+"):
                raise _broken(f"chunk size {size_text[:20]!r}")
            if size == 0:
                while True:  # trailers, then an empty line
                    t = await r.readline()
                    if not t.endswith(b"\n"):
                        raise asyncio.IncompleteReadError(t, None)
                    if not t.strip():
                        break
                self.done = True
                return b""
            self._left = size
        data = await r.read(min(n, self._left))
        if not data:
            raise asyncio.IncompleteReadError(b"", self._left)
        self._left -= len(data)
        if self._left == 0:
            self._need_crlf = True
        return data


class AsyncResponse:
    """A streamed answer with status < 400 (see :class:`alcove._http.Response`)."""

    def __init__(
        self,
        transport: "AsyncTransport",
        conn: _Conn,
        status: int,
        reason: str,
        headers: Dict[str, str],
        keep_alive: bool,
        no_body: bool,
        timeout: Optional[float],
    ) -> None:
        self._transport = transport
        self._conn: Optional[_Conn] = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._timeout = timeout
        self._keep_alive = keep_alive
        self._chunked: Optional[ChunkedReader] = None
        self._length: Optional[int] = None
        te = headers.get("transfer-encoding", "").lower()
        if no_body:
            self._length = 0
        elif "chunked" in te:
            self._chunked = ChunkedReader(conn.reader)
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise _broken("Content-Length") from None
        else:
            self._keep_alive = False  # the body runs to the end of the connection
        self._done = False

    async def read1(self, n: int = _wire.CHUNK) -> bytes:
        """Bytes as they arrive; ``b""`` at the end."""
        if self._done or self._conn is None:
            return b""
        ep = self._transport.endpoint
        try:
            if self._chunked is not None:
                data = await _timed(self._chunked.read(n), self._timeout, "reading", ep)
            elif self._length is not None:
                if self._length == 0:
                    data = b""
                else:
                    data = await _timed(self._conn.reader.read(min(n, self._length)), self._timeout, "reading", ep)
                    if not data:
                        raise Unreachable(0, "connection_broken", f"the answer from {ep.url} was cut short (reading)")
                    self._length -= len(data)
            else:
                data = await _timed(self._conn.reader.read(n), self._timeout, "reading", ep)
        except BaseException:
            self._keep_alive = False
            await self.aclose()
            raise
        if not data:
            self._done = True
            await self.aclose()
        elif self._length == 0 and self._chunked is None:
            self._done = True
            await self.aclose()
        return data

    async def iter_bytes(self, n: int = _wire.CHUNK) -> AsyncIterator[bytes]:
        try:
            while True:
                data = await self.read1(n)
                if not data:
                    return
                yield data
        finally:
            await self.aclose()

    async def iter_ndjson(self) -> AsyncIterator[Dict[str, Any]]:
        splitter = _wire.NDJSONSplitter()
        try:
            async for data in self.iter_bytes():
                for obj in splitter.feed(data):
                    yield obj
            for obj in splitter.close():
                yield obj
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        parts: List[bytes] = []
        async for data in self.iter_bytes():
            parts.append(data)
        return b"".join(parts)

    async def json(self) -> Any:
        body = await self.read()
        if not body.strip():
            return None
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise AlcoveError(
                self.status,
                "bad_response",
                f"HTTP {self.status}, not JSON: is {self._transport.endpoint.url} an alcove daemon?",
            ) from None

    def abort(self) -> None:
        """Closes the connection now: a read waiting on it ends."""
        conn, self._conn = self._conn, None
        self._done = True
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep_alive and conn.usable():
            self._transport._checkin(conn)
        else:
            conn.close()

    async def __aenter__(self) -> "AsyncResponse":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


async def _body_pieces(body: Any) -> AsyncIterator[bytes]:
    if hasattr(body, "__aiter__"):
        async for piece in body:
            yield _wire.as_bytes(piece)
    elif hasattr(body, "read"):
        read = body.read
        while True:
            piece = await asyncio.to_thread(read, _wire.CHUNK)
            if not piece:
                return
            yield _wire.as_bytes(piece)
    else:
        for piece in body:
            yield _wire.as_bytes(piece)


class AsyncTransport:
    """One daemon, one token, idle keep-alive connections (of one event loop)."""

    def __init__(
        self,
        server: Optional[str] = None,
        token: Optional[str] = None,
        *,
        token_file: Optional[str] = None,
        request_timeout: Optional[float] = _wire.DEFAULT_REQUEST_TIMEOUT,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.endpoint = _wire.parse_server(server)
        self._creds = _wire.resolve_token(token, token_file, self.endpoint)
        self._proven = not self._creds.needs_proof
        self.request_timeout = request_timeout
        self._ssl = ssl_context
        if self.endpoint.scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        self._idle: List[_Conn] = []

    async def _new_conn(self) -> _Conn:
        ep = self.endpoint
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    ep.host,
                    ep.port,
                    ssl=self._ssl,
                    server_hostname=ep.host if self._ssl is not None else None,
                    limit=_LINE_LIMIT,
                ),
                _wire.CONNECT_TIMEOUT,
            )
        except asyncio.TimeoutError:
            raise Timeout(0, "client_timeout", f"connecting to {ep.url} took too long") from None
        except OSError as e:
            raise Unreachable(
                0,
                "unreachable",
                f"could not reach the alcove daemon at {ep.url} ({e}); start it with `alcove serve`, "
                "or point server= or $ALCOVE_SERVER at it",
            ) from e
        return _Conn(reader, writer)

    async def _checkout(self) -> Tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        return await self._new_conn(), False

    def _checkin(self, conn: _Conn) -> None:
        if len(self._idle) < 8:
            self._idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __del__(self) -> None:
        for conn in getattr(self, "_idle", ()):
            try:
                conn.close()
            except Exception:  # its event loop may be gone
                pass

    async def _prove(self) -> None:
        if self._proven:
            return
        nonce = secrets.token_hex(16)
        resp = await self.open("GET", "/healthz", [("proof", nonce)], auth=False, check=False)
        body = await resp.read()
        _wire.check_proof(self._creds, nonce, resp.status, body, self.endpoint)
        self._proven = True

    def _head(self, method: str, target: str, headers: Dict[str, str]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.endpoint.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(self, conn: _Conn, head: bytes, payload: Any, streamed: bool) -> None:
        w = conn.writer
        if not streamed:
            w.write(head + (payload or b""))
            await w.drain()
            return
        w.write(head)
        async for piece in _body_pieces(payload):
            if piece:
                w.write(b"%X\r\n" % len(piece) + piece + b"\r\n")
                await w.drain()
        w.write(b"0\r\n\r\n")
        await w.drain()

    async def _read_head(self, conn: _Conn, timeout: Optional[float]) -> Tuple[int, str, Dict[str, str], bool]:
        ep = self.endpoint
        r = conn.reader
        while True:
            line = await _timed(r.readline(), timeout, "waiting for the answer", ep)
            if not line:
                raise ConnectionResetError("the connection closed before an answer")
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise _broken(f"status line {line[:80]!r}")
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers: Dict[str, str] = {}
            for _ in range(_MAX_HEADERS + 1):
                h = await _timed(r.readline(), timeout, "reading the headers", ep)
                if not h.endswith(b"\n"):
                    raise Unreachable(0, "connection_broken", f"the answer from {ep.url} was cut short (headers)")
                if not h.strip():
                    break
                name, sep, value = h.decode("latin-1").partition(":")
                if not sep:
                    raise _broken(f"header {h[:80]!r}")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            else:
                raise _broken("too many headers")
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and friends: the answer follows
            connection = headers.get("connection", "").lower()
            keep_alive = version == "HTTP/1.1" and "close" not in connection
            return status, reason, headers, keep_alive

    async def open(
        self,
        method: str,
        path: str,
        query: Optional[_wire.Query] = None,
        *,
        json_body: Any = None,
        body: AsyncBody = None,
        content_type: Optional[str] = None,
        timeout: Any = _DEFAULT,
        auth: bool = True,
        check: bool = True,
    ) -> AsyncResponse:
        if auth and not self._proven:
            await self._prove()
        read_timeout = self.request_timeout if timeout is _DEFAULT else timeout
        headers = {"User-Agent": _wire.USER_AGENT, "Accept": "application/json, application/x-ndjson"}
        if auth and self._creds.token:
            headers["Authorization"] = f"Bearer {self._creds.token}"
        payload: Any = None
        streamed = False
        if json_body is not None:
            payload = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif isinstance(body, (bytes, bytearray, memoryview)) and len(body) <= _SENT_WHOLE:
            payload = bytes(body)
            headers["Content-Type"] = content_type or "application/octet-stream"
        elif body is not None:
            if isinstance(body, (bytes, bytearray, memoryview)):
                # Sent while listening for an answer, like a stream: a daemon
                # may refuse it before reading it all (403, 507), and asyncio
                # loses that answer behind the broken pipe of a plain send.
                body = [bytes(body)]
            payload = body
            streamed = True
            headers["Content-Type"] = content_type or "application/octet-stream"
            headers["Transfer-Encoding"] = "chunked"
        if not streamed and (payload is not None or method in ("POST", "PUT", "PATCH")):
            headers["Content-Length"] = str(len(payload or b""))
        head = self._head(method, self.endpoint.target(path, query), headers)
        ep = self.endpoint

        attempts = 1 if streamed else 2
        while True:
            attempts -= 1
            if streamed:
                conn, reused = await self._new_conn(), False
            else:
                conn, reused = await self._checkout()
            try:
                if streamed:
                    status, reason, rheaders, keep_alive = await self._exchange_streamed(
                        conn, head, payload, read_timeout
                    )
                else:
                    await _timed(self._send(conn, head, payload, False), read_timeout, "sending", ep)
                    status, reason, rheaders, keep_alive = await self._read_head(conn, read_timeout)
            except (OSError, Unreachable) as e:
                conn.close()
                if reused and attempts > 0:
                    continue  # the daemon closed the idle connection as we sent: once more
                if isinstance(e, AlcoveError):
                    raise
                raise Unreachable(0, "connection_broken", f"{type(e).__name__} talking to {ep.url}: {e}") from e
            except BaseException:
                conn.close()
                raise
            break

        no_body = method == "HEAD" or status in (204, 304)
        resp = AsyncResponse(self, conn, status, reason, rheaders, keep_alive, no_body, read_timeout)
        if check and status >= 400:
            try:
                data = await _timed(resp.read(), 10.0, "reading an error", ep)
            except AlcoveError:
                data = b""
            raise error_from_response(status, data, reason)
        return resp

    async def _exchange_streamed(
        self, conn: _Conn, head: bytes, payload: Any, timeout: Optional[float]
    ) -> Tuple[int, str, Dict[str, str], bool]:
        """Sends a streamed body while listening for the answer: a daemon may
        refuse the request (404, 413) before reading the whole body, and
        close the connection; its answer says more than the broken pipe."""
        send = asyncio.ensure_future(self._send(conn, head, payload, True))
        answer = asyncio.ensure_future(self._read_head(conn, None))

        def refused() -> bool:
            return answer.done() and not answer.cancelled() and answer.exception() is None and answer.result()[0] >= 400

        try:
            await asyncio.wait({send, answer}, return_when=asyncio.FIRST_COMPLETED)
            if refused():
                status, reason, headers, _ = answer.result()
                return status, reason, headers, False  # the body was cut short: no reuse
            try:
                await send
            except OSError:
                try:
                    await asyncio.wait_for(asyncio.shield(answer), 2.0)
                except Exception:
                    pass
                if refused():
                    status, reason, headers, _ = answer.result()
                    return status, reason, headers, False
                raise
            return await _timed(asyncio.shield(answer), timeout, "waiting for the answer", self.endpoint)
        finally:
            for task in (send, answer):
                if not task.done():
                    task.cancel()
            for task in (send, answer):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" warning

    async def call(
        self,
        method: str,
        path: str,
        query: Optional[_wire.Query] = None,
        *,
        json_body: Any = None,
        body: AsyncBody = None,
        content_type: Optional[str] = None,
        timeout: Any = _DEFAULT,
    ) -> Any:
        resp = await self.open(
            method, path, query, json_body=json_body, body=body, content_type=content_type, timeout=timeout
        )
        if resp.status == 204:
            await resp.read()
            return None
        return await resp.json()

    async def stream(
        self,
        method: str,
        path: str,
        query: Optional[_wire.Query] = None,
        *,
        json_body: Any = None,
        timeout: Optional[float] = None,
    ) -> AsyncResponse:
        return await self.open(method, path, query, json_body=json_body, timeout=timeout)
