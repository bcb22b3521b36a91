"""The API's objects as typed dataclasses.

Every dataclass built from the daemon's JSON keeps that JSON in ``raw``, so
fields this version of the SDK does not know yet stay reachable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypedDict, Union

__all__ = [
    "SandboxLimits",
    "SandboxUsage",
    "SandboxInfo",
    "ProcessInfo",
    "Pty",
    "EntryInfo",
    "WriteInfo",
    "FilesystemEvent",
    "Output",
    "CommandResult",
    "Result",
    "ExecutionError",
    "Execution",
    "TemplateInfo",
]


def _opt_int(v: Any) -> Optional[int]:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_float(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_str(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


def _str_dict(v: Any) -> Dict[str, str]:
    if not isinstance(v, Mapping):
        return {}
    return {str(k): x if isinstance(x, str) else json.dumps(x) for k, x in v.items()}


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: Optional[int] = None
    cpus: Optional[float] = None
    pids: Optional[int] = None
    disk_bytes: Optional[int] = None

    @classmethod
    def from_dict(cls, d: Any) -> "SandboxLimits":
        if not isinstance(d, Mapping):
            return cls()
        return cls(
            memory_bytes=_opt_int(d.get("memory_bytes")),
            cpus=_opt_float(d.get("cpus")),
            pids=_opt_int(d.get("pids")),
            disk_bytes=_opt_int(d.get("disk_bytes")),
        )


@dataclass(frozen=True)
class SandboxUsage:
    memory_bytes: Optional[int] = None
    cpu_ms: Optional[float] = None

    @classmethod
    def from_dict(cls, d: Any) -> "SandboxUsage":
        if not isinstance(d, Mapping):
            return cls()
        return cls(memory_bytes=_opt_int(d.get("memory_bytes")), cpu_ms=_opt_float(d.get("cpu_ms")))


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the daemon describes it (``GET /v1/sandboxes/{id}``)."""

    id: str
    state: str
    #: Why a ``stopped`` sandbox stopped (a daemon restart, a guard's kill).
    reason: Optional[str] = None
    created_at: Optional[float] = None
    expires_at: Optional[float] = None
    timeout_s: Optional[float] = None
    idle_pause_s: Optional[float] = None
    image: Optional[str] = None
    template: Optional[str] = None
    parent: Optional[str] = None
    net: Optional[str] = None
    #: ``"container"`` or ``"gvisor"``.
    isolation: Optional[str] = None
    #: Where a ``net="outbound"`` sandbox may connect (empty: anywhere but
    #: the host and other sandboxes).
    allow_out: Tuple[str, ...] = ()
    #: In a fork's answer: "copied" when the interpreter's memory came along.
    interpreter: Optional[str] = None
    metadata: Dict[str, str] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    usage: Optional[SandboxUsage] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Any) -> "SandboxInfo":
        if not isinstance(d, Mapping) or not isinstance(d.get("id"), str):
            from .errors import AlcoveError

            raise AlcoveError(0, "bad_response", f"expected a sandbox object, got {str(d)[:200]}")
        return cls(
            id=d["id"],
            state=str(d.get("state", "")),
            reason=_opt_str(d.get("reason")),
            created_at=_opt_float(d.get("created_at")),
            expires_at=_opt_float(d.get("expires_at")),
            timeout_s=_opt_float(d.get("timeout_s")),
            idle_pause_s=_opt_float(d.get("idle_pause_s")),
            image=_opt_str(d.get("image")),
            template=_opt_str(d.get("template")),
            parent=_opt_str(d.get("parent")),
            net=_opt_str(d.get("net")),
            isolation=_opt_str(d.get("isolation")),
            allow_out=tuple(str(r) for r in (d.get("allow_out") or ()) if isinstance(r, str)),
            interpreter=_opt_str(d.get("interpreter")),
            metadata=_str_dict(d.get("metadata")),
            limits=SandboxLimits.from_dict(d.get("limits")),
            usage=SandboxUsage.from_dict(d["usage"]) if isinstance(d.get("usage"), Mapping) else None,
            raw=dict(d),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A process started in a sandbox (``GET .../processes``)."""

    pid: int
    cmd: Union[str, List[str], None]
    running: bool
    exit_code: Optional[int]
    signal: Optional[str] = None
    #: It was started on a terminal (``pty=``).
    pty: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProcessInfo":
        cmd = d.get("cmd")
        return cls(
            pid=int(d.get("pid", 0)),
            cmd=cmd if isinstance(cmd, (str, list)) else None,
            running=bool(d.get("running")),
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_str(d.get("signal")),
            pty=bool(d.get("pty")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Pty:
    """A terminal for a command (``commands.run(..., pty=Pty(120, 40))``, or
    a ``(cols, rows)`` tuple): it runs on a pseudo-terminal in the sandbox,
    so ``isatty`` is true, its stdout and stderr arrive as one stream
    (``stdout``, with ``\\r\\n`` line ends), what is sent to its stdin is
    typed (``"\\x03"`` is ^C), and ``commands.resize`` changes its size.
    Each side is 1 to 1000."""

    cols: int = 80
    rows: int = 24


@dataclass(frozen=True)
class EntryInfo:
    """One entry of a directory listing."""

    name: str
    path: str
    type: str  # "file" | "dir" | "symlink" | "other"
    size: Optional[int] = None
    mode: Optional[int] = None
    mtime: Optional[float] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EntryInfo":
        mode = d.get("mode")
        if isinstance(mode, str):  # tolerate "0644"
            try:
                mode = int(mode, 8)
            except ValueError:
                mode = None
        return cls(
            name=str(d.get("name", "")),
            path=str(d.get("path", "")),
            type=str(d.get("type", "other")),
            size=_opt_int(d.get("size")),
            mode=_opt_int(mode),
            mtime=_opt_float(d.get("mtime")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class WriteInfo:
    """What a write stored: the path and its size in bytes."""

    path: str
    size: Optional[int]

    @classmethod
    def from_dict(cls, d: Any, path: str) -> "WriteInfo":
        if not isinstance(d, Mapping):
            return cls(path=path, size=None)
        return cls(path=str(d.get("path", path)), size=_opt_int(d.get("size")))


@dataclass(frozen=True)
class FilesystemEvent:
    """A change under a watched directory."""

    event: str  # "create" | "modify" | "delete" | "move" | "overflow" (events lost: list again)
    path: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FilesystemEvent":
        return cls(event=str(d.get("event", "")), path=str(d.get("path", "")), raw=dict(d))


@dataclass(frozen=True)
class Output:
    """A piece of a process's output, as it arrived."""

    stream: str  # "stdout" | "stderr"
    text: str


@dataclass
class CommandResult:
    """A finished command. ``exit_code`` is ``None`` when a signal ended it
    (``signal``, such as ``"KILL"``); ``timed_out`` when its ``timeout`` did.
    A non-zero exit is a result, not an exception."""

    stdout: str
    stderr: str
    exit_code: Optional[int]
    signal: Optional[str] = None
    timed_out: bool = False
    pid: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Result:
    """A value a code cell produced (its last expression): ``text`` is its
    plain-text form, ``mime`` every representation by MIME type."""

    text: Optional[str]
    mime: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Result":
        return cls(text=_opt_str(d.get("text")), mime=_str_dict(d.get("mime")))


@dataclass(frozen=True)
class ExecutionError:
    """An exception raised by a code cell."""

    name: str
    value: str
    traceback: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExecutionError":
        tb = d.get("traceback")
        if isinstance(tb, str):
            lines = [tb]
        elif isinstance(tb, list):
            lines = [str(x) for x in tb]
        else:
            lines = []
        return cls(name=str(d.get("name", "")), value=str(d.get("value", "")), traceback=lines)


@dataclass
class Execution:
    """What a code cell did: its results, output, error and duration."""

    results: List[Result] = field(default_factory=list)
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)
    error: Optional[ExecutionError] = None
    duration_ms: Optional[float] = None

    @property
    def text(self) -> Optional[str]:
        """The plain text of the last result, if any."""
        for r in reversed(self.results):
            if r.text is not None:
                return r.text
        return None


class TemplateInfo(TypedDict, total=False):
    """A template as ``snapshot`` and ``list_templates`` return it; the
    daemon's fields beyond ``template``/``name`` pass through as they are."""

    template: str
    name: str
