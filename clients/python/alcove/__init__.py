"""alcove: a Python SDK for alcove's agent sandboxes (``/v1/sandboxes``).

    from alcove import Sandbox
    with Sandbox.create(metadata={"user": "alice"}) as sb:
        print(sb.commands.run("echo hi").stdout)
        print(sb.run_code("x = 1\\nx + 1").text)

Standard library only; Python 3.9 or newer. The daemon's address comes from
``server=``, ``$ALCOVE_SERVER`` or http://127.0.0.1:8480; its token from
``token=``, ``$ALCOVE_TOKEN``, ``token_file=``/``$ALCOVE_TOKEN_FILE``, or the
local daemon's /var/lib/alcove/token when this user can read it.
"""

from .aio import AsyncCommandHandle, AsyncCommands, AsyncFiles, AsyncSandbox, AsyncWatchHandle
from .errors import (
    AlcoveError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Timeout,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from .models import (
    CommandResult,
    EntryInfo,
    Execution,
    ExecutionError,
    FilesystemEvent,
    Output,
    ProcessInfo,
    Pty,
    Result,
    SandboxInfo,
    SandboxLimits,
    SandboxUsage,
    TemplateInfo,
    WriteInfo,
)
from .sandbox import CommandHandle, Commands, Files, Sandbox, WatchHandle

__version__ = "0.1.0"

__all__ = [
    "Sandbox",
    "AsyncSandbox",
    "Commands",
    "AsyncCommands",
    "Files",
    "AsyncFiles",
    "CommandHandle",
    "AsyncCommandHandle",
    "WatchHandle",
    "AsyncWatchHandle",
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
    "SandboxInfo",
    "SandboxLimits",
    "SandboxUsage",
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
    "__version__",
]
