"""Errors: every failure the SDK reports is an :class:`AlcoveError`.

An error the daemon answered carries its HTTP status and the API's stable
``code`` and ``message`` (from ``{"error": {"code": ..., "message": ...}}``).
Failures on this side (the daemon unreachable, a client-side timeout, a
stream cut short) have ``status == 0`` and a code of their own.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type

__all__ = [
    "AlcoveError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Gone",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "Timeout",
    "Unavailable",
    "Unreachable",
    "error_from_response",
]


class AlcoveError(Exception):
    """The daemon refused or failed a request, or it could not be made.

    ``status``: the HTTP status (0 when no answer came); ``code``: the API's
    error code (``not_found``, ``invalid_request``, ...); ``message``: why;
    ``body``: the error object as the daemon sent it (``None`` for client-side
    failures).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        body: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "client"
        return f"{self.message} [{self.code}, {where}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class BadRequest(AlcoveError):
    """400: the request was refused as invalid (``invalid_request``)."""


class Unauthorized(AlcoveError):
    """401: no token, or the wrong one; also a daemon that failed to prove it
    holds the token read from a file (``token_proof_failed``, status 0)."""


class Forbidden(AlcoveError):
    """403: the sandbox's user may not do that (``permission_denied``)."""


class NotFound(AlcoveError):
    """404: no such sandbox, process, file or template."""


class Gone(NotFound):
    """410: the sandbox went away during the request (``sandbox_gone``)."""


class Conflict(AlcoveError):
    """409: the request conflicts with the sandbox's state."""


class PayloadTooLarge(AlcoveError):
    """413: a body over the daemon's limit."""


class RateLimited(AlcoveError):
    """429: the daemon is busy; try again shortly."""


class Timeout(AlcoveError):
    """A request that ran out of time: 408 or 504 from the daemon, or no
    answer within the client's ``request_timeout`` (status 0,
    ``client_timeout``). A command or code cell that exceeds its own
    ``timeout`` is *not* this error: ``CommandResult.timed_out`` says so, and
    code gets an ``Execution.error``."""


class Unavailable(AlcoveError):
    """503: the daemon is stopping or overloaded."""


class Unreachable(AlcoveError):
    """No connection to the daemon (status 0, ``unreachable``), or one that
    broke before the answer was complete (``connection_broken``)."""


_BY_STATUS: Dict[int, Type[AlcoveError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
    504: Timeout,
}

_GENERIC_CODES: Dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    429: "busy",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


def error_from_response(status: int, body: bytes, reason: str = "") -> AlcoveError:
    """The error for an HTTP answer with ``status`` >= 400 and ``body``.

    The API's ``{"error": {"code", "message"}}`` gives code and message;
    any other body (a proxy's HTML page, plain text) becomes the message.
    """
    cls = _BY_STATUS.get(status, AlcoveError)
    parsed: Any = None
    try:
        parsed = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        code = err.get("code")
        message = err.get("message")
        return cls(
            status,
            code if isinstance(code, str) and code else _GENERIC_CODES.get(status, "http_error"),
            message if isinstance(message, str) and message else (reason or f"HTTP {status}"),
            err,
        )
    text = body.decode("utf-8", "replace").strip()
    if len(text) > 500:
        text = text[:500] + "..."
    message = text or reason or f"HTTP {status}"
    return cls(status, _GENERIC_CODES.get(status, "http_error"), message, None)
