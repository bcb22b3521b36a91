"""The blocking transport: http.client with a small keep-alive pool,
bearer tokens, error mapping and streamed bodies both ways."""

from __future__ import annotations

import http.client
import json
import secrets
import select
import socket
import ssl
import threading
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from . import _wire
from .errors import AlcoveError, Timeout, Unreachable, error_from_response

#: A body: bytes (sent with Content-Length), or a file-like object or an
#: iterable of bytes (streamed with chunked transfer encoding).
Body = Union[bytes, bytearray, memoryview, BinaryIO, Iterable[bytes], None]

_DEFAULT: Any = object()
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def iter_file(f: Any, size: int = _wire.CHUNK) -> Iterator[bytes]:
    """A file-like object's contents in pieces (text files as UTF-8)."""
    while True:
        piece = f.read(size)
        if not piece:
            return
        yield piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)


def _client_error(e: BaseException, endpoint: _wire.Endpoint, during: str) -> AlcoveError:
    if isinstance(e, AlcoveError):
        return e
    if isinstance(e, socket.timeout):
        return Timeout(0, "client_timeout", f"no answer from {endpoint.url} in time ({during})")
    if isinstance(e, http.client.IncompleteRead):
        return Unreachable(0, "connection_broken", f"the answer from {endpoint.url} was cut short ({during})")
    if isinstance(e, (ConnectionRefusedError, socket.gaierror)) and during == "connecting":
        return Unreachable(
            0,
            "unreachable",
            f"could not reach the alcove daemon at {endpoint.url} ({e}); start it with `alcove serve`, "
            "or point server= or $ALCOVE_SERVER at it",
        )
    return Unreachable(0, "connection_broken", f"{type(e).__name__} talking to {endpoint.url} ({during}): {e}")


class Response:
    """A streamed answer with status < 400. Read it with :meth:`iter_bytes`,
    :meth:`iter_ndjson` or :meth:`read`; :meth:`close` returns a fully read
    connection to the pool (or drops it)."""

    def __init__(
        self, transport: "Transport", conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, sock: Any
    ) -> None:
        self._transport = transport
        self._conn: Optional[http.client.HTTPConnection] = conn
        self._resp = resp
        self._sock = sock
        self.status = resp.status
        self.headers: Dict[str, str] = {k.lower(): v for k, v in resp.getheaders()}

    def read1(self, size: int = _wire.CHUNK) -> bytes:
        """Bytes as they arrive (at most ``size``); ``b""`` at the end."""
        try:
            data = self._resp.read1(size)
        except Exception as e:
            self.close()
            raise _client_error(e, self._transport.endpoint, "reading") from e
        if not data:
            left = self._resp.length
            self.close()
            if not self._resp.chunked and left:
                raise Unreachable(
                    0, "connection_broken", f"the answer from {self._transport.endpoint.url} was cut short (reading)"
                )
        return data

    def iter_bytes(self, size: int = _wire.CHUNK) -> Iterator[bytes]:
        try:
            while True:
                data = self.read1(size)
                if not data:
                    return
                yield data
        finally:
            self.close()

    def iter_ndjson(self) -> Iterator[Dict[str, Any]]:
        splitter = _wire.NDJSONSplitter()
        try:
            for data in self.iter_bytes():
                yield from splitter.feed(data)
            yield from splitter.close()
        finally:
            self.close()

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def json(self) -> Any:
        body = self.read()
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
        """Ends the stream from another thread: a read blocked in it returns."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._resp.isclosed() and not self._resp.chunked and self._resp.length == 0:
            self._resp.read()  # all read: marks the response closed
        if self._resp.isclosed() and not self._resp.will_close:
            self._transport._checkin(conn)
        else:
            self._resp.close()
            conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Transport:
    """One daemon, one token, a pool of idle keep-alive connections. Safe to
    share between threads: each request has a connection of its own."""

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
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # connections

    def _new_conn(self) -> http.client.HTTPConnection:
        ep = self.endpoint
        conn: http.client.HTTPConnection
        if ep.scheme == "https":
            conn = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=_wire.CONNECT_TIMEOUT, context=self._ssl, blocksize=_wire.CHUNK
            )
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=_wire.CONNECT_TIMEOUT, blocksize=_wire.CHUNK)
        try:
            conn.connect()
        except Exception as e:
            conn.close()
            raise _client_error(e, ep, "connecting") from e
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _checkout(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                sock = conn.sock
                # An idle connection with something to read was closed by the
                # daemon (its idle timeout): drop it.
                if sock is not None and sock.fileno() >= 0 and not select.select([sock], [], [], 0)[0]:
                    return conn, True
                conn.close()
        return self._new_conn(), False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 8 and conn.sock is not None:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Closes the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __del__(self) -> None:
        try:
            for conn in self._idle:
                conn.close()
        except Exception:
            pass

    # requests

    def _prove(self) -> None:
        with self._lock:
            if self._proven:
                return
        nonce = secrets.token_hex(16)
        resp = self.open("GET", "/healthz", [("proof", nonce)], auth=False, check=False)
        body = resp.read()
        _wire.check_proof(self._creds, nonce, resp.status, body, self.endpoint)
        with self._lock:
            self._proven = True

    def open(
        self,
        method: str,
        path: str,
        query: Optional[_wire.Query] = None,
        *,
        json_body: Any = None,
        body: Body = None,
        content_type: Optional[str] = None,
        timeout: Any = _DEFAULT,
        auth: bool = True,
        check: bool = True,
    ) -> Response:
        """Sends a request and returns its answer once the headers are in;
        an answer >= 400 raises its :class:`AlcoveError` (with ``check``)."""
        if auth and not self._proven:
            self._prove()
        read_timeout = self.request_timeout if timeout is _DEFAULT else timeout
        headers = {"User-Agent": _wire.USER_AGENT, "Accept": "application/json, application/x-ndjson"}
        if auth and self._creds.token:
            headers["Authorization"] = f"Bearer {self._creds.token}"
        payload: Any
        replayable = True
        if json_body is not None:
            payload = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif body is None:
            payload = None
            if method in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = "0"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            payload = bytes(body)
        else:
            payload = iter_file(body) if hasattr(body, "read") else (_wire.as_bytes(b) for b in body)
            replayable = False
        if payload is not None and content_type is None and json_body is None:
            content_type = "application/octet-stream"
        if content_type:
            headers["Content-Type"] = content_type
        target = self.endpoint.target(path, query)

        attempts = 2 if replayable else 1
        while True:
            attempts -= 1
            if replayable:
                conn, reused = self._checkout()
            else:
                conn, reused = self._new_conn(), False
            sock = conn.sock
            if sock is not None:
                sock.settimeout(read_timeout)
            sent = False
            try:
                conn.request(method, target, body=payload, headers=headers)
                sent = True
                resp = conn.getresponse()
            except Exception as e:
                if not isinstance(e, (OSError, http.client.HTTPException)):
                    conn.close()
                    raise  # the body's own iterator failed, say
                # A daemon may refuse a body before reading it all (404, 413,
                # a full disk's 507): its answer says more than the broken pipe.
                early = self._early_answer(conn) if not sent else None
                conn.close()
                if early is not None:
                    raise early from e
                if isinstance(e, _STALE) and reused and attempts > 0:
                    continue  # the daemon closed the idle connection as we sent: once more
                raise _client_error(e, self.endpoint, "sending" if not sent else "waiting for the answer") from e
            break

        if resp.will_close:
            conn.close()  # the response keeps the socket until it is read
        r = Response(self, conn, resp, sock)
        if check and resp.status >= 400:
            try:
                data = resp.read(1 << 20)
            except Exception:
                data = b""
            r.close()
            raise error_from_response(resp.status, data, resp.reason)
        return r

    def _early_answer(self, conn: http.client.HTTPConnection) -> Optional[AlcoveError]:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(2.0)
            resp = conn.getresponse()
            if resp.status >= 400:
                return error_from_response(resp.status, resp.read(1 << 20), resp.reason)
        except Exception:
            pass
        return None

    def call(
        self,
        method: str,
        path: str,
        query: Optional[_wire.Query] = None,
        *,
        json_body: Any = None,
        body: Body = None,
        content_type: Optional[str] = None,
        timeout: Any = _DEFAULT,
    ) -> Any:
        """A request whose answer is JSON (``None`` for 204 or no body)."""
        resp = self.open(
            method, path, query, json_body=json_body, body=body, content_type=content_type, timeout=timeout
        )
        if resp.status == 204:
            resp.read()
            return None
        return resp.json()

    def stream(
        self,
        method: str,
        path: str,
        query: Optional[_wire.Query] = None,
        *,
        json_body: Any = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """A request whose answer is NDJSON, read as it arrives."""
        return self.open(method, path, query, json_body=json_body, timeout=timeout)


def json_object(value: Any, key: str) -> List[Mapping[str, Any]]:
    """``value[key]`` as a list of objects (``[]`` when absent)."""
    items = value.get(key) if isinstance(value, Mapping) else None
    return [x for x in items if isinstance(x, Mapping)] if isinstance(items, list) else []
