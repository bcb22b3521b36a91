"""The blocking SDK: :class:`Sandbox` with its ``commands`` and ``files``."""

from __future__ import annotations

import os
import threading
from typing import (
    Any,
    BinaryIO,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Type,
    Union,
    overload,
)
from types import TracebackType

from . import _wire
from ._http import Response, Transport, json_object
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


__all__ = ["Sandbox", "Commands", "Files", "CommandHandle", "WatchHandle"]

OutputCallback = Callable[[str], Any]
WriteData = Union[str, bytes, bytearray, memoryview, BinaryIO, Iterable[bytes]]


class CommandHandle:
    """A background process. :meth:`wait` (re)attaches to its output, which
    the daemon replays from the start, then follows it live to the exit."""

    def __init__(self, commands: "Commands", pid: int) -> None:
        self._commands = commands
        self._transport = commands._transport
        self._id = commands._id
        self.pid = pid
        self.result: Optional[CommandResult] = None

    def __repr__(self) -> str:
        return f"CommandHandle(sandbox={self._id!r}, pid={self.pid})"

    def __iter__(self) -> Iterator[Output]:
        """Its output as it comes (replayed first); :attr:`result` is set once
        it has exited and the iteration ends."""
        fold = _wire.CommandFold(self.pid)
        path = _wire.sandbox_path(self._id, "processes", self.pid, "output")
        with self._transport.stream("GET", path, timeout=None) as resp:
            for ev in resp.iter_ndjson():
                out = fold.apply(ev)
                if out is not None:
                    yield out
        self.result = fold.finish()

    def wait(
        self,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> CommandResult:
        """Blocks until the process exits; callbacks get its output as it comes."""
        for out in self:
            cb = on_stdout if out.stream == "stdout" else on_stderr
            if cb is not None:
                cb(out.text)
        assert self.result is not None
        return self.result

    def kill(self, signal: Union[str, int] = "KILL") -> bool:
        """Sends ``signal`` (``"TERM"``, ``"KILL"``, ...); False if no such process."""
        return self._commands.kill(self.pid, signal)

    def send_stdin(self, data: Union[str, bytes], close: bool = False) -> None:
        self._commands.send_stdin(self.pid, data, close=close)

    def close_stdin(self) -> None:
        """Closes the process's stdin (it reads end of file; ^D on a terminal)."""
        self._commands.send_stdin(self.pid, b"", close=True)

    def resize(self, cols: int, rows: int) -> None:
        """Resizes its terminal (it was started with ``pty``)."""
        self._commands.resize(self.pid, cols, rows)


class Commands:
    """Processes in a sandbox: ``sb.commands``."""

    def __init__(self, transport: "Transport", sandbox_id: str) -> None:
        self._transport = transport
        self._id = sandbox_id

    @overload
    def run(
        self,
        cmd: _wire.Cmd,
        *,
        background: Literal[False] = False,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        stdin: Union[str, bytes, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        pty: Optional[_wire.PtyLike] = None,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: _wire.Cmd,
        *,
        background: Literal[True],
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        stdin: Union[str, bytes, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        pty: Optional[_wire.PtyLike] = None,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: _wire.Cmd,
        *,
        background: bool = False,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        stdin: Union[str, bytes, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        pty: Optional[_wire.PtyLike] = None,
    ) -> Union[CommandResult, CommandHandle]:
        """Runs ``cmd`` (a string for ``/bin/sh -c``, or an argv list).

        Waits for it and returns a :class:`CommandResult`, calling
        ``on_stdout``/``on_stderr`` with output as it arrives; a non-zero exit
        is a result, not an error. ``timeout``: seconds before the daemon
        kills it (``None``: the daemon's default, 60 s, and no limit for a
        background command). With ``background=True``
        returns a :class:`CommandHandle` once it has started (the callbacks
        are then given to :meth:`CommandHandle.wait`).

        ``pty``: run it on a terminal, a :class:`Pty` or ``(cols, rows)``
        (see :class:`Pty`): its output all comes as stdout, and its stdin
        stays open to type into (:meth:`send_stdin`; closing it sends ^D)
        unless ``stdin`` is given to a foreground command."""
        body = _wire.exec_body(
            cmd, background=background, env=env, cwd=cwd, stdin=stdin, timeout=timeout, pty=pty
        )
        path = _wire.sandbox_path(self._id, "exec")
        fold = _wire.CommandFold()
        if background:
            limit = self._transport.request_timeout
        else:
            limit = _wire.read_timeout(timeout or _wire.EXEC_DEFAULT_TIMEOUT)
        with self._transport.stream("POST", path, json_body=body, timeout=limit) as resp:
            for ev in resp.iter_ndjson():
                out = fold.apply(ev)
                if out is not None:
                    cb = on_stdout if out.stream == "stdout" else on_stderr
                    if cb is not None:
                        cb(out.text)
        if background:
            if fold.pid is None:
                raise _wire.incomplete("exec")
            return CommandHandle(self, fold.pid)
        return fold.finish()

    def connect(self, pid: int) -> CommandHandle:
        """A handle on a process started earlier (``background=True``)."""
        return CommandHandle(self, int(pid))

    def list(self) -> List[ProcessInfo]:
        value = self._transport.call("GET", _wire.sandbox_path(self._id, "processes"))
        return [ProcessInfo.from_dict(p) for p in json_object(value, "processes")]

    def kill(self, pid: int, signal: Union[str, int] = "KILL") -> bool:
        """Sends ``signal`` to process ``pid``; False if there is no such process."""
        try:
            self._transport.call(
                "POST", _wire.sandbox_path(self._id, "processes", int(pid), "kill"), json_body={"signal": signal}
            )
        except NotFound:
            return False
        return True

    def send_stdin(self, pid: int, data: Union[str, bytes], close: bool = False) -> None:
        """Writes ``data`` to the stdin of background process ``pid``; with
        ``close``, then closes it (the process reads end of file)."""
        self._transport.call(
            "POST",
            _wire.sandbox_path(self._id, "processes", int(pid), "stdin"),
            [("close", "true")] if close else None,
            body=_wire.as_bytes(data),
        )

    def resize(self, pid: int, cols: int, rows: int) -> None:
        """Resizes the terminal of process ``pid`` (started with ``pty``);
        the kernel sends SIGWINCH to its foreground group. A process without
        a terminal, or whose terminal has closed, is a :class:`Conflict`."""
        self._transport.call(
            "POST",
            _wire.sandbox_path(self._id, "processes", int(pid), "resize"),
            json_body=_wire.pty_size(cols, rows),
        )


class WatchHandle:
    """Changes under a directory, as they happen. Iterate over it, or give
    ``on_event`` to :meth:`Files.watch` to have a thread call it; :meth:`stop`
    (or leaving a ``with`` block) ends the watch."""

    def __init__(self, resp: Response, on_event: Optional[Callable[[FilesystemEvent], Any]] = None) -> None:
        self._resp = resp
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        if on_event is not None:
            self._thread = threading.Thread(target=self._pump, args=(on_event,), name="alcove-watch", daemon=True)
            self._thread.start()

    def _pump(self, on_event: Callable[[FilesystemEvent], Any]) -> None:
        try:
            for ev in self:
                on_event(ev)
        except BaseException as e:  # kept for the caller: see .error
            self.error = e
        finally:
            self._resp.close()

    def __iter__(self) -> Iterator[FilesystemEvent]:
        try:
            for ev in self._resp.iter_ndjson():
                _wire.raise_if_error_line(ev)
                if "event" in ev:
                    yield FilesystemEvent.from_dict(ev)
        except Exception:
            if not self._stopped:
                raise
        finally:
            self._resp.close()

    def stop(self) -> None:
        """Ends the watch; an iteration in progress (in any thread) ends."""
        self._stopped = True
        self._resp.abort()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        else:
            self._resp.close()

    def __enter__(self) -> "WatchHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Files:
    """The sandbox's filesystem: ``sb.files``."""

    def __init__(self, transport: "Transport", sandbox_id: str) -> None:
        self._transport = transport
        self._id = sandbox_id

    def _path(self, *rest: str) -> str:
        return _wire.sandbox_path(self._id, "files", *rest)

    def read(self, path: str) -> bytes:
        return self._transport.open("GET", self._path(), [("path", path)]).read()

    def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read(path).decode(encoding, errors)

    def read_stream(self, path: str, chunk_size: int = _wire.CHUNK) -> Iterator[bytes]:
        """The file's bytes in pieces, as they arrive (nothing is buffered)."""
        resp = self._transport.open("GET", self._path(), [("path", path)], timeout=None)
        return resp.iter_bytes(chunk_size)

    def write(self, path: str, data: WriteData) -> WriteInfo:
        """Writes ``data`` to ``path``: str (as UTF-8) or bytes, sent whole; a
        binary file-like object or an iterable of bytes is streamed (chunked)."""
        body = data.encode("utf-8") if isinstance(data, str) else data
        value = self._transport.call("PUT", self._path(), [("path", path)], body=body, timeout=None)
        return WriteInfo.from_dict(value, path)

    def upload(self, local_path: Union[str, "os.PathLike[str]"], path: str) -> WriteInfo:
        """Streams the local file ``local_path`` to ``path`` in the sandbox."""
        with open(local_path, "rb") as f:
            return self.write(path, f)

    def download(self, path: str, local_path: Union[str, "os.PathLike[str]"]) -> int:
        """Streams ``path`` from the sandbox into the local file ``local_path``;
        returns the bytes written. A failed download leaves no partial file."""
        resp = self._transport.open("GET", self._path(), [("path", path)], timeout=None)
        written = 0
        try:
            with resp, open(local_path, "wb") as f:
                for data in resp.iter_bytes():
                    f.write(data)
                    written += len(data)
        except BaseException:
            try:
                os.unlink(local_path)
            except OSError:
                pass
            raise
        return written

    def list(self, path: str) -> List[EntryInfo]:
        value = self._transport.call("GET", self._path("list"), [("path", path)])
        return [EntryInfo.from_dict(e) for e in json_object(value, "entries")]

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (its parent directory lists it)."""
        parent, slash, name = path.rstrip("/").rpartition("/")
        if not name:
            return True  # "/"
        parent = (parent or "/") if slash else "."  # a relative path is under the sandbox's home  # "/"
        try:
            return any(e.name == name for e in self.list(parent))
        except NotFound:
            return False

    def remove(self, path: str) -> None:
        """Removes a file or an empty directory."""
        self._transport.call("DELETE", self._path(), [("path", path)])

    def make_dir(self, path: str) -> None:
        """Makes a directory and its parents."""
        self._transport.call("POST", self._path("mkdir"), [("path", path)])

    def watch(self, path: str, on_event: Optional[Callable[[FilesystemEvent], Any]] = None) -> WatchHandle:
        """Watches the directory ``path``. Returns once the watch is in place."""
        resp = self._transport.stream("GET", self._path("watch"), [("path", path)], timeout=None)
        return WatchHandle(resp, on_event)


class Sandbox:
    """A long-lived sandbox. Make one with :meth:`create`, reach an existing
    one with :meth:`connect`; ``with Sandbox.create() as sb:`` kills it at
    the end of the block."""

    def __init__(self, info: SandboxInfo, transport: Transport) -> None:
        self._transport = transport
        self._info = info
        self.id = info.id
        self.commands = Commands(transport, info.id)
        self.files = Files(transport, info.id)

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, server={self._transport.endpoint.url!r})"

    @property
    def last_info(self) -> SandboxInfo:
        """The sandbox object from the last call that returned one (no request)."""
        return self._info

    # --- class-level --------------------------------------------------------------

    @classmethod
    def create(
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
    ) -> "Sandbox":
        """Creates a sandbox. Options left ``None`` take the daemon's defaults
        (``timeout`` 300 s, ``idle_pause`` 0 = never, no image: the host's
        view). ``memory``/``disk``: ``"512M"`` or bytes; ``net``: ``"none"``,
        ``"outbound"`` (a link of its own out; ``allow_out`` lists where it
        may connect: CIDR ranges, addresses, host names, ``"*.domain"``) or
        ``"host"``; ``template``: a snapshot's name; ``guard``: kernel-enforced
        rules over its life, such as ``{"cpu_budget_ms": 60000}``;
        ``isolation``: ``"container"`` (the default) or ``"gvisor"`` (gVisor's
        user-space kernel, runsc)."""
        transport = Transport(server, token, token_file=token_file, request_timeout=request_timeout)
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
            value = transport.call("POST", "/v1/sandboxes", json_body=body)
            return cls(SandboxInfo.from_dict(value), transport)
        except BaseException:
            transport.close()
            raise

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        server: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        request_timeout: Optional[float] = _wire.DEFAULT_REQUEST_TIMEOUT,
    ) -> "Sandbox":
        """An existing sandbox (raises :class:`NotFound` if there is none)."""
        transport = Transport(server, token, token_file=token_file, request_timeout=request_timeout)
        try:
            value = transport.call("GET", _wire.sandbox_path(sandbox_id))
            return cls(SandboxInfo.from_dict(value), transport)
        except BaseException:
            transport.close()
            raise

    @staticmethod
    def list(
        *,
        metadata: Optional[Mapping[str, str]] = None,
        state: Optional[str] = None,
        server: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
    ) -> List[SandboxInfo]:
        """The sandboxes whose metadata has every pair in ``metadata``
        (and in ``state``, if given)."""
        transport = Transport(server, token, token_file=token_file)
        try:
            value = transport.call("GET", "/v1/sandboxes", _wire.list_query(metadata, state))
        finally:
            transport.close()
        return [SandboxInfo.from_dict(s) for s in json_object(value, "sandboxes")]

    @staticmethod
    def list_templates(
        *, server: Optional[str] = None, token: Optional[str] = None, token_file: Optional[str] = None
    ) -> List[TemplateInfo]:
        transport = Transport(server, token, token_file=token_file)
        try:
            value = transport.call("GET", "/v1/sandbox-templates")
        finally:
            transport.close()
        return [dict(t) for t in json_object(value, "templates")]  # type: ignore[misc]

    @staticmethod
    def delete_template(
        name: str, *, server: Optional[str] = None, token: Optional[str] = None, token_file: Optional[str] = None
    ) -> None:
        transport = Transport(server, token, token_file=token_file)
        try:
            transport.call("DELETE", "/v1/sandbox-templates/" + _wire.seg(name))
        finally:
            transport.close()

    # --- this sandbox ---------------------------------------------------------------

    def _update(self, value: Any) -> SandboxInfo:
        self._info = SandboxInfo.from_dict(value)
        return self._info

    def info(self) -> SandboxInfo:
        return self._update(self._transport.call("GET", _wire.sandbox_path(self.id)))

    def is_running(self) -> bool:
        """True while the sandbox exists and is not paused."""
        try:
            return self.info().state == "running"
        except NotFound:
            return False

    def set_timeout(self, seconds: float) -> SandboxInfo:
        """Reclaim the sandbox ``seconds`` from now (unless extended again)."""
        return self._update(
            self._transport.call(
                "POST", _wire.sandbox_path(self.id, "timeout"), json_body={"timeout_s": _wire.secs(seconds)}
            )
        )

    def pause(self) -> SandboxInfo:
        return self._update(self._transport.call("POST", _wire.sandbox_path(self.id, "pause")))

    def resume(self) -> SandboxInfo:
        return self._update(self._transport.call("POST", _wire.sandbox_path(self.id, "resume")))

    def start(self) -> SandboxInfo:
        """Starts a ``stopped`` sandbox again (one whose processes ended with
        the daemon): its files, metadata, limits and expiry are kept; its
        processes and code interpreter start afresh. Any call that needs the
        sandbox does this by itself; a running one is left as it is."""
        return self._update(self._transport.call("POST", _wire.sandbox_path(self.id, "start")))

    def kill(self) -> bool:
        """Removes the sandbox; False if it was already gone."""
        try:
            self._update(self._transport.call("DELETE", _wire.sandbox_path(self.id)))
        except NotFound:
            return False
        return True

    def fork(self, metadata: Optional[Mapping[str, str]] = None, *, memory: bool = False) -> "Sandbox":
        """A new sandbox with a copy of this one's files (``parent`` set).
        With ``memory=True``, of its code interpreter's memory too (its
        variables, imports and open cells' state): the fork then lives in
        this sandbox's process tree and ends with it (``net="none"`` only)."""
        body = {"metadata": dict(metadata)} if metadata else {}
        if memory:
            body["memory"] = True
        value = self._transport.call("POST", _wire.sandbox_path(self.id, "fork"), json_body=body)
        return Sandbox(SandboxInfo.from_dict(value), self._transport)

    def snapshot(self, name: str) -> TemplateInfo:
        """Saves this sandbox as template ``name``: ``Sandbox.create(template=name)``."""
        value = self._transport.call("POST", _wire.sandbox_path(self.id, "snapshot"), json_body={"name": name})
        return dict(value) if isinstance(value, Mapping) else {"template": name}  # type: ignore[return-value]

    def run_code(
        self,
        code: str,
        *,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        on_result: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[ExecutionError], Any]] = None,
        timeout: Optional[float] = 60,
    ) -> Execution:
        """Runs ``code`` in the sandbox's Python interpreter, which keeps its
        state between calls. An exception in the code is ``Execution.error``,
        not an exception here."""
        body = _wire.drop_none({"code": code, "timeout_s": _wire.secs(timeout)})
        fold = _wire.CodeFold()
        callbacks: Dict[str, Optional[Callable[[Any], Any]]] = {
            "stdout": on_stdout,
            "stderr": on_stderr,
            "result": on_result,
            "error": on_error,
        }
        path = _wire.sandbox_path(self.id, "code")
        with self._transport.stream("POST", path, json_body=body, timeout=_wire.read_timeout(timeout)) as resp:
            for ev in resp.iter_ndjson():
                out = fold.apply(ev)
                if out is not None:
                    cb = callbacks[out[0]]
                    if cb is not None:
                        cb(out[1])
        return fold.finish()

    def interrupt_code(self) -> None:
        """Interrupts the code running now (it ends with ``KeyboardInterrupt``)."""
        self._transport.call("POST", _wire.sandbox_path(self.id, "code", "interrupt"))

    def close(self) -> None:
        """Closes this client's idle connections (the sandbox lives on)."""
        self._transport.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()
