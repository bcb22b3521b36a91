"""What the sync and async clients share, free of I/O: where the daemon is,
which token to send, how URLs and bodies are built, how NDJSON streams are
split into objects and folded into results."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlencode, urlsplit

from .errors import AlcoveError, Unauthorized
from .models import (
    CommandResult,
    Execution,
    ExecutionError,
    Output,
    Pty,
    Result,
)

DEFAULT_SERVER = "http://127.0.0.1:8480"
#: Where a local daemon with the default data directory keeps its token.
LOCAL_TOKEN_FILE = "/var/lib/alcove/token"
#: Seconds a plain (non-streaming) request may wait for its answer.
DEFAULT_REQUEST_TIMEOUT = 120.0
#: Seconds to connect.
CONNECT_TIMEOUT = 30.0
#: Added to a command's or cell's own timeout for the stream's read timeout:
#: the daemon ends the stream itself when the timeout fires.
STREAM_GRACE = 30.0
#: The longest NDJSON line accepted.
MAX_LINE = 64 << 20
#: Bytes per read or upload chunk.
CHUNK = 64 << 10
USER_AGENT = "alcove-python/0.1.0"

Query = Sequence[Tuple[str, str]]
Number = Union[int, float]


@dataclass(frozen=True)
class Endpoint:
    """The daemon's address: ``scheme://host:port`` and an optional path
    prefix (a daemon behind a reverse proxy under ``/alcove``)."""

    scheme: str
    host: str
    port: int
    prefix: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.scheme == "http" and self.host in ("127.0.0.1", "localhost", "::1")

    def target(self, path: str, query: Optional[Query] = None) -> str:
        """The request target for ``path`` (``/v1/...``) and ``query``."""
        t = self.prefix + path
        if query:
            t += "?" + urlencode(list(query), quote_via=quote, safe="/")
        return t


def parse_server(server: Optional[str]) -> Endpoint:
    """``server``, or ``$ALCOVE_SERVER``, or http://127.0.0.1:8480.
    ``HOST:PORT`` means ``http://HOST:PORT``."""
    given = (server if server is not None else os.environ.get("ALCOVE_SERVER") or DEFAULT_SERVER).strip()
    if not given:
        raise ValueError("the server address is empty: give one such as http://127.0.0.1:8480")
    if "://" not in given:
        given = "http://" + given
    parts = urlsplit(given)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"server {given!r}: alcove speaks http or https, not {scheme!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"server {given!r}: give scheme://host:port and at most a path prefix")
    host = parts.hostname
    if not host:
        raise ValueError(f"server {given!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"server {given!r}: the port is not a number from 1 to 65535") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    prefix = parts.path.rstrip("/")
    return Endpoint(scheme=scheme, host=host, port=port, prefix=prefix)


@dataclass(frozen=True)
class Credentials:
    """The token to send. One read from a file (``needs_proof``) goes only to
    a daemon that first proves it holds it: any program on the host may
    listen on the daemon's port while the daemon is down."""

    token: Optional[str]
    needs_proof: bool = False
    source: Optional[str] = None


def resolve_token(token: Optional[str], token_file: Optional[str], endpoint: Endpoint) -> Credentials:
    """``token``, ``$ALCOVE_TOKEN``, ``token_file`` or ``$ALCOVE_TOKEN_FILE``,
    or, for a daemon on loopback, the local daemon's /var/lib/alcove/token
    when this user can read it (as ``alcove fn`` does)."""
    if token:
        return Credentials(token)
    env = os.environ.get("ALCOVE_TOKEN")
    if env:
        return Credentials(env)
    named = token_file or os.environ.get("ALCOVE_TOKEN_FILE") or None
    if named is None:
        if not endpoint.is_loopback:
            return Credentials(None)
        try:
            with open(LOCAL_TOKEN_FILE, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            return Credentials(None)  # no local daemon's token, or not ours to read
        path = LOCAL_TOKEN_FILE
    else:
        path = os.fspath(named)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    text = text.strip()
    return Credentials(text or None, needs_proof=bool(text), source=path)


def expected_proof(token: str, nonce: str) -> str:
    """What a daemon holding ``token`` answers ``GET /healthz?proof=nonce``."""
    h = hashlib.sha256()
    h.update(b"alcove-token-proof\0")
    h.update(token.encode())
    h.update(b"\0")
    h.update(nonce.encode())
    return h.hexdigest()


def check_proof(creds: Credentials, nonce: str, status: int, body: bytes, endpoint: Endpoint) -> None:
    """Raises unless the daemon's answer to the proof request proves it
    holds ``creds.token``."""
    assert creds.token is not None
    proof: Any = None
    try:
        proof = json.loads(body.decode("utf-8")).get("proof")
    except (ValueError, UnicodeDecodeError, AttributeError):
        proof = None
    if status != 200 or proof != expected_proof(creds.token, nonce):
        raise Unauthorized(
            0,
            "token_proof_failed",
            f"the server at {endpoint.url} could not prove it holds the token in {creds.source}, "
            "so it was not sent: is another program listening on the daemon's port?",
        )


def seg(value: Union[str, int]) -> str:
    """``value`` as one path segment."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{text!r} is not a valid id or name")
    return quote(text, safe="")


def sandbox_path(sandbox_id: str, *rest: Union[str, int]) -> str:
    path = "/v1/sandboxes/" + seg(sandbox_id)
    for part in rest:
        path += "/" + (part if isinstance(part, str) else seg(part))
    return path


def list_query(metadata: Optional[Mapping[str, str]], state: Optional[str]) -> List[Tuple[str, str]]:
    q = [(f"metadata.{k}", str(v)) for k, v in (metadata or {}).items()]
    if state is not None:
        q.append(("state", state))
    return q


def _size(v: Union[str, int, None]) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError("a size is a string such as '512M' or a number of bytes")
    return str(v) if isinstance(v, int) else v


def secs(v: Optional[Number]) -> Optional[int]:
    """Seconds as the API takes them: a whole number (rounded up)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"a number of seconds, not {v!r}")
    return int(math.ceil(v))


def drop_none(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def create_body(
    *,
    template: Optional[str],
    image: Optional[str],
    timeout: Optional[Number],
    idle_pause: Optional[Number],
    env: Optional[Mapping[str, str]],
    metadata: Optional[Mapping[str, str]],
    memory: Union[str, int, None],
    cpus: Optional[Number],
    pids: Optional[int],
    disk: Union[str, int, None],
    net: Optional[str],
    allow_out: Optional[Sequence[str]] = None,
    guard: Optional[Mapping[str, Any]] = None,
    forkable: bool = False,
    isolation: Optional[str] = None,
) -> Dict[str, Any]:
    return drop_none(
        {
            "template": template,
            "image": image,
            "timeout_s": secs(timeout),
            "idle_pause_s": secs(idle_pause),
            "env": dict(env) if env else None,
            "metadata": dict(metadata) if metadata else None,
            "memory": _size(memory),
            "cpus": cpus,
            "pids": pids,
            "disk": _size(disk),
            "net": net,
            "allow_out": list(allow_out) if allow_out else None,
            "guard": dict(guard) if guard else None,
            "forkable": True if forkable else None,
            "isolation": isolation,
        }
    )


Cmd = Union[str, Sequence[str]]


#: A terminal's size: a :class:`Pty`, or ``(cols, rows)``.
PtyLike = Union[Pty, Tuple[int, int]]
#: The most columns or rows a terminal may have.
PTY_MAX = 1000


def pty_size(cols: Any, rows: Any) -> Dict[str, int]:
    """``{"cols": C, "rows": R}``, each an int in 1..=1000."""
    size = {}
    for name, n in (("cols", cols), ("rows", rows)):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"pty {name} is an int, not {type(n).__name__}")
        if not 1 <= n <= PTY_MAX:
            raise ValueError(f"pty {name} {n}: give 1 to {PTY_MAX}")
        size[name] = n
    return size


def pty_body(pty: Optional[PtyLike]) -> Optional[Dict[str, int]]:
    if pty is None:
        return None
    if isinstance(pty, Pty):
        return pty_size(pty.cols, pty.rows)
    if isinstance(pty, tuple) and len(pty) == 2:
        return pty_size(pty[0], pty[1])
    raise TypeError("pty is a Pty or a (cols, rows) tuple")


def exec_body(
    cmd: Cmd,
    *,
    background: bool,
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    stdin: Union[str, bytes, None],
    timeout: Optional[Number],
    pty: Optional[PtyLike] = None,
) -> Dict[str, Any]:
    if isinstance(cmd, (bytes, bytearray)):
        raise TypeError("cmd is a str (run with /bin/sh -c) or a list of str")
    command: Union[str, List[str]] = cmd if isinstance(cmd, str) else [str(a) for a in cmd]
    if not command:
        raise ValueError("cmd is empty")
    if isinstance(stdin, (bytes, bytearray)):
        stdin = bytes(stdin).decode("utf-8")  # the API takes stdin as text
    return drop_none(
        {
            "cmd": command,
            "env": dict(env) if env else None,
            "cwd": cwd,
            "stdin": stdin,
            "timeout_s": secs(timeout),
            "background": True if background else None,
            "pty": pty_body(pty),
        }
    )


#: The daemon's timeout for a foreground command given none.
EXEC_DEFAULT_TIMEOUT = 60


def read_timeout(own: Optional[Number]) -> Optional[float]:
    """The socket read timeout for a stream bounded by ``own`` seconds."""
    return None if own is None or own <= 0 else math.ceil(own) + STREAM_GRACE


def as_bytes(data: Union[str, bytes, bytearray, memoryview]) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


# --- NDJSON -------------------------------------------------------------------


class NDJSONSplitter:
    """Bytes in, JSON objects out, one per complete line, as soon as the line
    is complete. Blank lines are skipped; a line split anywhere (within a
    UTF-8 sequence too) waits for its end."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        self._buf += data
        out: List[Dict[str, Any]] = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self._buf[start:nl])
            start = nl + 1
            obj = _parse_line(line)
            if obj is not None:
                out.append(obj)
        del self._buf[:start]
        if len(self._buf) > self._max:
            raise AlcoveError(0, "bad_response", f"an NDJSON line is longer than {self._max} bytes")
        return out

    def close(self) -> List[Dict[str, Any]]:
        """Objects of a last line that had no newline."""
        line, self._buf = bytes(self._buf), bytearray()
        obj = _parse_line(line)
        return [] if obj is None else [obj]


def _parse_line(line: bytes) -> Optional[Dict[str, Any]]:
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AlcoveError(0, "bad_response", f"a stream line is not JSON: {line[:200]!r}") from None
    if not isinstance(obj, dict):
        raise AlcoveError(0, "bad_response", f"a stream line is not a JSON object: {line[:200]!r}")
    return obj


def raise_if_error_line(ev: Mapping[str, Any]) -> None:
    """A stream that fails after its 200 answers ``{"error": {...}}``."""
    err = ev.get("error")
    if "type" not in ev and isinstance(err, Mapping):
        raise AlcoveError(
            200, str(err.get("code") or "stream_error"), str(err.get("message") or "the stream failed"), dict(err)
        )


def incomplete(what: str) -> AlcoveError:
    return AlcoveError(0, "incomplete_stream", f"the {what} stream ended before its last line")


# --- folding streams into results --------------------------------------------------

Event = Tuple[str, Any]  # ("stdout" | "stderr", str), ("result", Result), ("error", ExecutionError)


class CommandFold:
    """Folds an exec or process-output stream into a :class:`CommandResult`."""

    def __init__(self, pid: Optional[int] = None) -> None:
        self.pid = pid
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self.result: Optional[CommandResult] = None

    def apply(self, ev: Mapping[str, Any]) -> Optional[Output]:
        """The output to hand to callbacks, if ``ev`` carries any."""
        raise_if_error_line(ev)
        kind = ev.get("type")
        if kind == "started":
            pid = ev.get("pid")
            if isinstance(pid, int):
                self.pid = pid
        elif kind in ("stdout", "stderr"):
            text = str(ev.get("text", ""))
            (self.stdout if kind == "stdout" else self.stderr).append(text)
            return Output(kind, text)
        elif kind == "exit":
            code = ev.get("code")
            sig = ev.get("signal")
            self.result = CommandResult(
                stdout="".join(self.stdout),
                stderr="".join(self.stderr),
                exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                signal=sig if isinstance(sig, str) else None,
                timed_out=bool(ev.get("timed_out", False)),
                pid=self.pid,
            )
        elif kind == "error":
            raise AlcoveError(
                200, str(ev.get("code") or "stream_error"), str(ev.get("message") or "the command failed"), dict(ev)
            )
        return None

    def finish(self) -> CommandResult:
        if self.result is None:
            raise incomplete("command")
        return self.result


class CodeFold:
    """Folds a code stream into an :class:`Execution`."""

    def __init__(self) -> None:
        self.execution = Execution()
        self.done = False

    def apply(self, ev: Mapping[str, Any]) -> Optional[Event]:
        raise_if_error_line(ev)
        kind = ev.get("type")
        ex = self.execution
        if kind in ("stdout", "stderr"):
            text = str(ev.get("text", ""))
            (ex.stdout if kind == "stdout" else ex.stderr).append(text)
            return (kind, text)
        if kind == "result":
            r = Result.from_dict(ev)
            ex.results.append(r)
            return ("result", r)
        if kind == "error":
            e = ExecutionError.from_dict(ev)
            ex.error = e
            return ("error", e)
        if kind == "done":
            d = ev.get("duration_ms")
            ex.duration_ms = float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None
            self.done = True
        return None

    def finish(self) -> Execution:
        if not self.done:
            raise incomplete("code")
        return self.execution
