"""The asyncio SDK: :class:`AsyncSandbox`, the same API as
:class:`alcove.Sandbox` with ``await``. Callbacks may be plain functions or
coroutine functions. Use a sandbox object from one event loop."""

from __future__ import annotations

import asyncio
import inspect
import os
from types import TracebackType
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    BinaryIO,
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Type,
    Union,
    overload,
)

from . import _wire
from ._ahttp import AsyncResponse, AsyncTransport
from ._http import json_object
from .errors import NotFound
from .models import (
    CommandResult,
    EntryInfo,
    Execution,
    ExecutionError,
    FilesystemEvent,
    Output,
    ProcessInfo,
    Result,
    SandboxInfo,
    TemplateInfo,
    WriteInfo,
)

__all__ = ["AsyncSandbox", "AsyncCommands", "AsyncFiles", "AsyncCommandHandle", "AsyncWatchHandle"]

AsyncOutputCallback = Callable[[str], Union[Awaitable[Any], Any]]
AsyncWriteData = Union[str, bytes, bytearray, memoryview, BinaryIO, Iterable[bytes], AsyncIterable[bytes]]


async def _call(cb: Optional[Callable[[Any], Any]], arg: Any) -> None:
    if cb is not None:
        r = cb(arg)
        if inspect.isawaitable(r):
            await r


class AsyncCommandHandle:
    """A background process (see :class:`alcove.CommandHandle`); ``async for
    out in handle`` follows its output."""

    def __init__(self, commands: "AsyncCommands", pid: int) -> None:
        self._commands = commands
        self._transport = commands._transport
        self._id = commands._id
        self.pid = pid
        self.result: Optional[CommandResult] = None

    def __repr__(self) -> str:
        return f"AsyncCommandHandle(sandbox={self._id!r}, pid={self.pid})"

    async def __aiter__(self) -> AsyncIterator[Output]:
        fold = _wire.CommandFold(self.pid)
        path = _wire.sandbox_path(self._id, "processes", self.pid, "output")
        resp = await self._transport.stream("GET", path, timeout=None)
        async with resp:
            async for ev in resp.iter_ndjson():
                out = fold.apply(ev)
                if out is not None:
                    yield out
        self.result = fold.finish()

    async def wait(
        self,
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
    ) -> CommandResult:
        async for out in self:
            await _call(on_stdout if out.stream == "stdout" else on_stderr, out.text)
        assert self.result is not None
        return self.result

    async def kill(self, signal: Union[str, int] = "KILL") -> bool:
        return await self._commands.kill(self.pid, signal)

    async def send_stdin(self, data: Union[str, bytes], close: bool = False) -> None:
        await self._commands.send_stdin(self.pid, data, close=close)

    async def close_stdin(self) -> None:
        """Closes the process's stdin (it reads end of file; ^D on a terminal)."""
        await self._commands.send_stdin(self.pid, b"", close=True)

    async def resize(self, cols: int, rows: int) -> None:
        """Resizes its terminal (it was started with ``pty``)."""
        await self._commands.resize(self.pid, cols, rows)


class AsyncCommands:
    """Processes in a sandbox: ``sb.commands``."""

    def __init__(self, transport: "AsyncTransport", sandbox_id: str) -> None:
        self._transport = transport
        self._id = sandbox_id

    @overload
    async def run(
        self,
        cmd: _wire.Cmd,
        *,
        background: Literal[False] = False,
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
        stdin: Union[str, bytes, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        pty: Optional[_wire.PtyLike] = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: _wire.Cmd,
        *,
        background: Literal[True],
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
        stdin: Union[str, bytes, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        pty: Optional[_wire.PtyLike] = None,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: _wire.Cmd,
        *,
        background: bool = False,
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
        stdin: Union[str, bytes, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        pty: Optional[_wire.PtyLike] = None,
    ) -> Union[CommandResult, AsyncCommandHandle]:
        """See :meth:`alcove.sandbox.Commands.run`."""
        body = _wire.exec_body(
            cmd, background=background, env=env, cwd=cwd, stdin=stdin, timeout=timeout, pty=pty
        )
        path = _wire.sandbox_path(self._id, "exec")
        fold = _wire.CommandFold()
        if background:
            limit = self._transport.request_timeout
        else:
            limit = _wire.read_timeout(timeout or _wire.EXEC_DEFAULT_TIMEOUT)
        resp = await self._transport.stream("POST", path, json_body=body, timeout=limit)
        async with resp:
            async for ev in resp.iter_ndjson():
                out = fold.apply(ev)
                if out is not None:
                    await _call(on_stdout if out.stream == "stdout" else on_stderr, out.text)
        if background:
            if fold.pid is None:
                raise _wire.incomplete("exec")
            return AsyncCommandHandle(self, fold.pid)
        return fold.finish()

    def connect(self, pid: int) -> AsyncCommandHandle:
        return AsyncCommandHandle(self, int(pid))

    async def list(self) -> List[ProcessInfo]:
        value = await self._transport.call("GET", _wire.sandbox_path(self._id, "processes"))
        return [ProcessInfo.from_dict(p) for p in json_object(value, "processes")]

    async def kill(self, pid: int, signal: Union[str, int] = "KILL") -> bool:
        try:
            await self._transport.call(
                "POST", _wire.sandbox_path(self._id, "processes", int(pid), "kill"), json_body={"signal": signal}
            )
        except NotFound:
            return False
        return True

    async def send_stdin(self, pid: int, data: Union[str, bytes], close: bool = False) -> None:
        await self._transport.call(
            "POST",
            _wire.sandbox_path(self._id, "processes", int(pid), "stdin"),
            [("close", "true")] if close else None,
            body=_wire.as_bytes(data),
        )

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        """See :meth:`alcove.sandbox.Commands.resize`."""
        await self._transport.call(
            "POST",
            _wire.sandbox_path(self._id, "processes", int(pid), "resize"),
            json_body=_wire.pty_size(cols, rows),
        )


class AsyncWatchHandle:
    """Changes under a directory: ``async for event in handle``, or an
    ``on_event`` callback run by a task; ``await handle.stop()`` ends it."""

    def __init__(self, resp: AsyncResponse, on_event: Optional[Callable[[FilesystemEvent], Any]] = None) -> None:
        self._resp = resp
        self._stopped = False
        self._task: Optional["asyncio.Task[None]"] = None
        self.error: Optional[BaseException] = None
        if on_event is not None:
            self._task = asyncio.ensure_future(self._pump(on_event))

    async def _pump(self, on_event: Callable[[FilesystemEvent], Any]) -> None:
        try:
            async for ev in self:
                await _call(on_event, ev)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # kept for the caller: see .error
            self.error = e

    async def __aiter__(self) -> AsyncIterator[FilesystemEvent]:
        try:
            async for ev in self._resp.iter_ndjson():
                _wire.raise_if_error_line(ev)
                if "event" in ev:
                    yield FilesystemEvent.from_dict(ev)
        except Exception:
            if not self._stopped:
                raise
        finally:
            await self._resp.aclose()

    async def stop(self) -> None:
        self._stopped = True
        self._resp.abort()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> "AsyncWatchHandle":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class AsyncFiles:
    """The sandbox's filesystem: ``sb.files``."""

    def __init__(self, transport: "AsyncTransport", sandbox_id: str) -> None:
        self._transport = transport
        self._id = sandbox_id

    def _path(self, *rest: str) -> str:
        return _wire.sandbox_path(self._id, "files", *rest)

    async def read(self, path: str) -> bytes:
        resp = await self._transport.open("GET", self._path(), [("path", path)])
        return await resp.read()

    async def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        return (await self.read(path)).decode(encoding, errors)

    async def read_stream(self, path: str, chunk_size: int = _wire.CHUNK) -> AsyncIterator[bytes]:
        resp = await self._transport.open("GET", self._path(), [("path", path)], timeout=None)
        async for data in resp.iter_bytes(chunk_size):
            yield data

    async def write(self, path: str, data: AsyncWriteData) -> WriteInfo:
        """See :meth:`alcove.sandbox.Files.write`; async iterables of bytes
        are streamed too."""
        body = data.encode("utf-8") if isinstance(data, str) else data
        value = await self._transport.call("PUT", self._path(), [("path", path)], body=body, timeout=None)
        return WriteInfo.from_dict(value, path)

    async def upload(self, local_path: Union[str, "os.PathLike[str]"], path: str) -> WriteInfo:
        f = await asyncio.to_thread(open, local_path, "rb")
        try:
            return await self.write(path, f)
        finally:
            f.close()

    async def download(self, path: str, local_path: Union[str, "os.PathLike[str]"]) -> int:
        resp = await self._transport.open("GET", self._path(), [("path", path)], timeout=None)
        written = 0
        try:
            f = await asyncio.to_thread(open, local_path, "wb")
            try:
                async for data in resp.iter_bytes():
                    await asyncio.to_thread(f.write, data)
                    written += len(data)
            finally:
                f.close()
        except BaseException:
            await resp.aclose()
            try:
                os.unlink(local_path)
            except OSError:
                pass
            raise
        return written

    async def list(self, path: str) -> List[EntryInfo]:
        value = await self._transport.call("GET", self._path("list"), [("path", path)])
        return [EntryInfo.from_dict(e) for e in json_object(value, "entries")]

    async def exists(self, path: str) -> bool:
        parent, slash, name = path.rstrip("/").rpartition("/")
        if not name:
            return True  # "/"
        parent = (parent or "/") if slash else "."  # a relative path is under the sandbox's home
        try:
            return any(e.name == name for e in await self.list(parent))
        except NotFound:
            return False

    async def remove(self, path: str) -> None:
        await self._transport.call("DELETE", self._path(), [("path", path)])

    async def make_dir(self, path: str) -> None:
        await self._transport.call("POST", self._path("mkdir"), [("path", path)])

    async def watch(self, path: str, on_event: Optional[Callable[[FilesystemEvent], Any]] = None) -> AsyncWatchHandle:
        resp = await self._transport.stream("GET", self._path("watch"), [("path", path)], timeout=None)
        return AsyncWatchHandle(resp, on_event)


class AsyncSandbox:
    """The asyncio twin of :class:`alcove.Sandbox`:
    ``async with await AsyncSandbox.create() as sb: ...``."""

    def __init__(self, info: SandboxInfo, transport: AsyncTransport) -> None:
        self._transport = transport
        self._info = info
        self.id = info.id
        self.commands = AsyncCommands(transport, info.id)
        self.files = AsyncFiles(transport, info.id)

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, server={self._transport.endpoint.url!r})"

    @property
    def last_info(self) -> SandboxInfo:
        return self._info

    @classmethod
    async def create(
        cls,
        *,
        template: Optional[str] = None,
        image: Optional[str] = None,
        timeout: Optional[float] = None,
        idle_pause: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        memory: Union[str, int, None] = None,
        cpus: Optional[float] = None,
        pids: Optional[int] = None,
        disk: Union[str, int, None] = None,
        net: Optional[str] = None,
        allow_out: Optional[Sequence[str]] = None,
        guard: Optional[Mapping[str, Any]] = None,
        forkable: bool = False,
        isolation: Optional[str] = None,
        server: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        request_timeout: Optional[float] = _wire.DEFAULT_REQUEST_TIMEOUT,
    ) -> "AsyncSandbox":
        transport = AsyncTransport(server, token, token_file=token_file, request_timeout=request_timeout)
        body = _wire.create_body(
            template=template,
            image=image,
            timeout=timeout,
            idle_pause=idle_pause,
            env=env,
            metadata=metadata,
            memory=memory,
            cpus=cpus,
            pids=pids,
            disk=disk,
            net=net,
            allow_out=allow_out,
            guard=guard,
            forkable=forkable,
            isolation=isolation,
        )
        try:
            value = await transport.call("POST", "/v1/sandboxes", json_body=body)
            return cls(SandboxInfo.from_dict(value), transport)
        except BaseException:
            await transport.aclose()
            raise

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        server: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        request_timeout: Optional[float] = _wire.DEFAULT_REQUEST_TIMEOUT,
    ) -> "AsyncSandbox":
        transport = AsyncTransport(server, token, token_file=token_file, request_timeout=request_timeout)
        try:
            value = await transport.call("GET", _wire.sandbox_path(sandbox_id))
            return cls(SandboxInfo.from_dict(value), transport)
        except BaseException:
            await transport.aclose()
            raise

    @staticmethod
    async def list(
        *,
        metadata: Optional[Mapping[str, str]] = None,
        state: Optional[str] = None,
        server: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
    ) -> List[SandboxInfo]:
        transport = AsyncTransport(server, token, token_file=token_file)
        try:
            value = await transport.call("GET", "/v1/sandboxes", _wire.list_query(metadata, state))
        finally:
            await transport.aclose()
        return [SandboxInfo.from_dict(s) for s in json_object(value, "sandboxes")]

    @staticmethod
    async def list_templates(
        *, server: Optional[str] = None, token: Optional[str] = None, token_file: Optional[str] = None
    ) -> List[TemplateInfo]:
        transport = AsyncTransport(server, token, token_file=token_file)
        try:
            value = await transport.call("GET", "/v1/sandbox-templates")
        finally:
            await transport.aclose()
        return [dict(t) for t in json_object(value, "templates")]  # type: ignore[misc]

    @staticmethod
    async def delete_template(
        name: str, *, server: Optional[str] = None, token: Optional[str] = None, token_file: Optional[str] = None
    ) -> None:
        transport = AsyncTransport(server, token, token_file=token_file)
        try:
            await transport.call("DELETE", "/v1/sandbox-templates/" + _wire.seg(name))
        finally:
            await transport.aclose()

    def _update(self, value: Any) -> SandboxInfo:
        self._info = SandboxInfo.from_dict(value)
        return self._info

    async def info(self) -> SandboxInfo:
        return self._update(await self._transport.call("GET", _wire.sandbox_path(self.id)))

    async def is_running(self) -> bool:
        try:
            return (await self.info()).state == "running"
        except NotFound:
            return False

    async def set_timeout(self, seconds: float) -> SandboxInfo:
        return self._update(
            await self._transport.call(
                "POST", _wire.sandbox_path(self.id, "timeout"), json_body={"timeout_s": _wire.secs(seconds)}
            )
        )

    async def pause(self) -> SandboxInfo:
        return self._update(await self._transport.call("POST", _wire.sandbox_path(self.id, "pause")))

    async def resume(self) -> SandboxInfo:
        return self._update(await self._transport.call("POST", _wire.sandbox_path(self.id, "resume")))

    async def start(self) -> SandboxInfo:
        """Starts a ``stopped`` sandbox again (see ``Sandbox.start``)."""
        return self._update(await self._transport.call("POST", _wire.sandbox_path(self.id, "start")))

    async def kill(self) -> bool:
        try:
            self._update(await self._transport.call("DELETE", _wire.sandbox_path(self.id)))
        except NotFound:
            return False
        return True

    async def fork(self, metadata: Optional[Mapping[str, str]] = None, *, memory: bool = False) -> "AsyncSandbox":
        body = {"metadata": dict(metadata)} if metadata else {}
        if memory:
            body["memory"] = True
        value = await self._transport.call("POST", _wire.sandbox_path(self.id, "fork"), json_body=body)
        return AsyncSandbox(SandboxInfo.from_dict(value), self._transport)

    async def snapshot(self, name: str) -> TemplateInfo:
        value = await self._transport.call("POST", _wire.sandbox_path(self.id, "snapshot"), json_body={"name": name})
        return dict(value) if isinstance(value, Mapping) else {"template": name}  # type: ignore[return-value]

    async def run_code(
        self,
        code: str,
        *,
        on_stdout: Optional[AsyncOutputCallback] = None,
        on_stderr: Optional[AsyncOutputCallback] = None,
        on_result: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[ExecutionError], Any]] = None,
        timeout: Optional[float] = 60,
    ) -> Execution:
        body = _wire.drop_none({"code": code, "timeout_s": _wire.secs(timeout)})
        fold = _wire.CodeFold()
        callbacks: Dict[str, Optional[Callable[[Any], Any]]] = {
            "stdout": on_stdout,
            "stderr": on_stderr,
            "result": on_result,
            "error": on_error,
        }
        path = _wire.sandbox_path(self.id, "code")
        resp = await self._transport.stream("POST", path, json_body=body, timeout=_wire.read_timeout(timeout))
        async with resp:
            async for ev in resp.iter_ndjson():
                out = fold.apply(ev)
                if out is not None:
                    await _call(callbacks[out[0]], out[1])
        return fold.finish()

    async def interrupt_code(self) -> None:
        await self._transport.call("POST", _wire.sandbox_path(self.id, "code", "interrupt"))

    async def close(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()
