"""alcove's code interpreter: one long-lived Python session fed code cells.

    python3 -u /run/alcove/runtime/alcove_repl.py

Code runs in one persistent namespace (the session's ``__main__``), like a
Jupyter kernel: a name defined in one cell is there in the next.

Descriptors: fd 0 is /dev/null; fd 1 and fd 2 are the session's stdout and
stderr, read by the daemon directly (prints and the output of subprocesses go
there, never a byte of the protocol). The control channel is fd
``$ALCOVE_REPL_FD`` (default 3), a connected stream socket; it is moved at
once to a close-on-exec descriptor >= 100 and the original is closed.

Protocol: newline-delimited JSON, UTF-8, one object a line, both ways.

  out, once:   {"type":"ready","pid":PID,"python":"3.11.7"}
  in:          {"id":ID,"code":SOURCE}              (other keys ignored)
  out, per request, in order:
               {"type":"result","id":ID,"text":REPR,"mime":{"text/plain":REPR[,"text/html":HTML]}}
                   when the last statement is an expression whose value is not None
               {"type":"error","id":ID,"name":NAME,"value":STR,"traceback":[LINE,...]}
                   when the cell raised (SyntaxError, KeyboardInterrupt, SystemExit, ...)
               {"type":"done","id":ID,"ok":BOOL,"duration_ms":FLOAT}
                   always last; stdout and stderr are flushed before it is written,
                   together with the request's other frames (one write).
  out, between requests:
               {"type":"interrupt_missed","after":ID|null}
                   a SIGINT came while the session waited for a request; ID is
                   the last request it finished (see SIGINT below)

A line that is not JSON, or not a request, gets an error frame named
"BadRequest"; a line over 16 MiB one named "RequestTooLarge". Where the
request's id can still be read (``{"id":"...`` at its start), the error
carries it and a done frame follows; otherwise the id is null and no done
follows. SIGINT interrupts the running cell (KeyboardInterrupt); one that
comes after a request is read but before its code runs stops the code as it
starts, and one that comes while the session waits is said (interrupt_missed)
and otherwise ignored; SystemExit is reported, not obeyed; EOF on the control
channel ends the process with status 0.

One thread only: the session may be forked to copy its memory.
Python's standard library only, 3.9 or later.
"""
import signal as _signal

# Nothing may interrupt the setup; the real handler is installed before any cell runs.
_signal.signal(_signal.SIGINT, _signal.SIG_IGN)

import ast as _ast  # noqa: E402
import builtins as _builtins  # noqa: E402
import fcntl as _fcntl  # noqa: E402
import json as _json  # noqa: E402
import linecache as _linecache  # noqa: E402
import os as _os  # noqa: E402
import re as _re  # noqa: E402
import select as _select  # noqa: E402
import socket as _socket  # noqa: E402
import sys as _sys  # noqa: E402
import time as _time  # noqa: E402
import traceback as _traceback  # noqa: E402
import types as _types  # noqa: E402

_MAX_LINE = 16 << 20  # bytes in one request line, newline excluded
_MAX_TEXT = 1 << 20  # characters of a result's text before it is cut
_MAX_RESULT_FRAME = 1536 << 10  # bytes of a result's frame (the daemon takes 2 MiB)
_READ_CHUNK = 64 << 10  # the one buffer every read lands in: resident for good, so small
_HIGH_FD = 100
_F_DUPFD_CLOEXEC = getattr(_fcntl, "F_DUPFD_CLOEXEC", 1030)
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect
# How long a forkable session waits, after a call of code, for the next
# request before it backs its state with huge pages: a quick next call finds
# it waiting on the socket, not collapsing.
_IDLE_BEFORE_COLLAPSE_MS = 50
# Passes again, idle, while pages mostly present were a live fork's too (one
# removed later makes them the session's own): after 1, 2, 4, 8 and 16 s.
_COLLAPSE_RETRIES = 5
_MAX_HELD_FDS = 16  # descriptors a request line may bring (a fork brings six)
_CMSG_ROOM = _socket.CMSG_SPACE(_MAX_HELD_FDS * 4)
_ID_AT_START = _re.compile(rb'\A\s*\{\s*"id"\s*:\s*("(?:[^"\\]|\\.)*")')
_NUMBER_THEN_LETTER = _re.compile(r"[0-9]\.?[A-Za-z]")  # "1if", "0x1for", "1Jor": the lexer warns
_STATEMENT_START = _re.compile(
    r"\s*(?:(?:import|from|def|class|for|while|if|with|try|async|return|del|pass|global"
    r"|nonlocal|raise|assert|break|continue)\b|@|[\w.]+\s*(?:[-+*/%&|^@]|//|>>|<<|\*\*)?=(?!=))")
_LATER_LINE_AT_COLUMN_0 = _re.compile(r"\n[^\s)\]}#]")
# json.dumps with options builds an encoder per call; the frames share one.
_encode = _json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _may_be_one_expression(code):
    """Whether a cell is worth compiling as one expression first (one parse and
    one compile instead of a parse and two). Not where the parse may warn (a
    backslash: an escape; a number touching a letter), since after a failed try
    the full path parses again and the warning would be shown twice; nor where
    statements are plain to see, for whom the try would only cost."""
    return not ("\\" in code or _NUMBER_THEN_LETTER.search(code) or _STATEMENT_START.match(code)
                or ("\n" in code and _LATER_LINE_AT_COLUMN_0.search(code)))


def _struct_iter(fmt, data):
    import struct
    return struct.iter_unpack(fmt, data)


def _load_sibling(name):
    """A module of this directory (the runtime's), loaded by path: the
    session imports from its working directory, not from here."""
    module = _sys.modules.get(name)
    if module is not None:
        return module
    here = _os.path.dirname(_os.path.realpath(__file__))
    _sys.path.insert(0, here)
    try:
        return __import__(name)
    finally:
        _sys.path.remove(here)


def _main():
    running = [False]  # True only while user code (or repr of its value) runs
    # An interrupt is a SIGINT, tied to no call. One that comes while a request
    # is handled but before its code runs stops the code as it starts; one that
    # comes while the session waits for a request is said (interrupt_missed,
    # with the last call finished), since only the daemon knows whether it was
    # meant for that call, which ended, or for the next, whose request is on
    # its way; the daemon sends the latter again. That one must find the call:
    # while a request waits to be read, or a frame is being written (the
    # daemon's answer to a missed frame lands just as its write returns), the
    # saying waits until the request is read (then the resent signal finds the
    # call), or until the session would wait for one with none there.
    calls = {"in_call": False, "pending": False, "last": None, "sending": False,
             "missed": False}

    def on_sigint(signum, frame):
        if running[0]:
            raise KeyboardInterrupt
        if calls["in_call"]:
            calls["pending"] = True
        elif calls["sending"] or request_waiting():
            calls["missed"] = True  # said by lines(), or once the request is read
        else:
            say_missed()

    def request_waiting():
        try:
            return bool(chan["sock"].recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT))
        except (OSError, NameError):  # none waiting (EAGAIN), or no channel yet
            return False

    def say_missed():
        try:
            send([{"type": "interrupt_missed", "after": calls["last"]}])
        except Exception:  # before the channel exists, or it is gone: nothing to tell
            pass

    _signal.signal(_signal.SIGINT, on_sigint)

    # The control channel: out of the way of user code and its children.
    try:
        fd = int(_os.environ.pop("ALCOVE_REPL_FD", "3"))
        ctl = _fcntl.fcntl(fd, _F_DUPFD_CLOEXEC, _HIGH_FD)
    except (ValueError, OSError) as e:
        _sys.stderr.write(f"alcove_repl: no control channel: {e}\n")
        _sys.stderr.flush()
        return 2
    _os.close(fd)
    _os.set_blocking(ctl, True)
    forkable = _os.environ.pop("ALCOVE_REPL_FORKABLE", "") == "1"
    if forkable:
        # Its fork code is the one this session started with (a daemon of
        # another build may replace the files later), and no command of the
        # sandbox's, the same user, may write into its memory through /proc
        # (its filter lets it make namespaces; theirs does not).
        try:
            _load_sibling("alcove_fork").keep_pagemap()  # before it is not dumpable
            import ctypes
            if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
                raise OSError(ctypes.get_errno(), "PR_SET_DUMPABLE")
        except (ImportError, OSError) as e:
            _sys.stderr.write(f"alcove_repl: cannot make the session forkable: {e}\n")
            _sys.stderr.flush()
            return 2
    # The channel: its socket, descriptors that came with requests (a fork's),
    # and a generation that changes when a fork's copy takes a new channel.
    chan = {"sock": _socket.socket(fileno=ctl), "fds": [], "gen": 0}

    # Output reaches the pipes as it is written (python3 -u makes the binary layer unbuffered).
    for stream in (_sys.stdout, _sys.stderr):
        try:
            stream.reconfigure(line_buffering=True, write_through=True)
        except (AttributeError, ValueError):
            pass

    # The session's namespace is a fresh __main__ (so pickle finds classes defined
    # in cells), not this module's globals.
    main_mod = _types.ModuleType("__main__")
    main_mod.__dict__["__builtins__"] = _builtins
    _sys.modules["__main__"] = main_mod
    ns = main_mod.__dict__
    _sys.argv = [""]
    here = _os.path.dirname(_os.path.realpath(__file__))
    if _sys.path and _sys.path[0] and _os.path.realpath(_sys.path[0]) == here:
        _sys.path[0] = ""  # imports from the working directory, as in the interactive interpreter

    own_file = _main.__code__.co_filename
    ast_file = getattr(_ast, "__file__", None)
    cells = [0]
    loop_box = [None]

    # ---- the channel ---------------------------------------------------------------

    def send(frames):
        """Write frames (a list) with one write: the daemon reads them at once."""
        text = "\n".join([_encode(frame) for frame in frames]) + "\n"
        data = text.encode("utf-8", "replace")  # a lone surrogate becomes "?"
        view = memoryview(data)
        calls["sending"] = True
        try:
            while view:
                view = view[_os.write(chan["sock"].fileno(), view):]
        finally:
            calls["sending"] = False

    def lines():
        """Yield ("line", bytes) per request line, ("big", first bytes) per line over the limit."""
        room = bytearray(_READ_CHUNK)  # every read lands here; a line is copied out of it
        got = memoryview(room)
        buf = bytearray()  # the start of a line whose newline has not come yet
        dropping = None  # first bytes of an oversized line being skipped
        gen = chan["gen"]
        while True:
            if gen != chan["gen"]:  # a fork's copy: what the old channel held is not ours
                gen = chan["gen"]
                buf.clear()
                dropping = None
            if calls["missed"] and not request_waiting():
                calls["missed"] = False  # none to read first: said before waiting
                say_missed()
            try:
                n, anc, _flags, _addr = chan["sock"].recvmsg_into([room], _CMSG_ROOM,
                                                                   _socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError:
                n, anc = 0, []
            for level, kind, data in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    for (fd,) in _struct_iter("i", data[: len(data) - len(data) % 4]):
                        if len(chan["fds"]) < _MAX_HELD_FDS:
                            chan["fds"].append(fd)
                        else:
                            _os.close(fd)
            if not n:
                if dropping is not None:
                    yield "big", dropping
                elif buf.strip():
                    yield "line", bytes(buf)
                return
            start = 0
            while gen == chan["gen"]:
                nl = room.find(b"\n", start, n)
                if nl < 0:
                    break
                if dropping is not None:
                    item = "big", dropping
                    dropping = None
                elif len(buf) + nl - start > _MAX_LINE:
                    buf += got[start:start + 4096]
                    item = "big", bytes(buf[:4096])
                elif buf:
                    buf += got[start:nl]
                    item = "line", bytes(buf)
                else:  # the usual case: the whole line came in this read
                    item = "line", bytes(got[start:nl])
                buf.clear()
                start = nl + 1
                yield item
            if gen != chan["gen"] or dropping is not None:
                continue  # the rest is the old channel's, or the oversized line's
            buf += got[start:n]
            if len(buf) > _MAX_LINE:
                dropping = bytes(buf[:4096])
                buf.clear()

    # ---- running user code -----------------------------------------------------------

    def call_user(fn, *args, cell=False):
        """fn(*args) with SIGINT live; any exception, KeyboardInterrupt included, propagates.
        A cell's code (cell) does not start when an interrupt came before it."""
        running[0] = True
        try:
            if cell and calls["pending"]:
                calls["pending"] = False
                raise KeyboardInterrupt
            return fn(*args)
        finally:
            running[0] = False

    def session_loop():
        """The one event loop of the session, made the current loop of the thread.

        Created at the first cell that awaits (or adopted, when a cell already made
        one current), so that tasks started in one cell go on in the next."""
        import asyncio
        loop = loop_box[0]
        if loop is None or loop.is_closed():
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    loop = asyncio.get_event_loop()
                except RuntimeError:
                    loop = None
            if loop is None or loop.is_closed() or loop.is_running():
                loop = asyncio.new_event_loop()
            loop_box[0] = loop
        asyncio.set_event_loop(loop)  # again, in case a cell's asyncio.run() unset it
        return loop

    def run_coroutine(coro):
        loop = session_loop()
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except BaseException:
            if not task.done():  # interrupted while the loop waited: stop the cell's task
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    pass
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning later
            raise

    def run_code(code):
        result = eval(code, ns)
        if code.co_flags & _CO_COROUTINE:
            result = run_coroutine(result)
        return result

    def html_of(value):
        if isinstance(value, type):
            return None
        try:
            method = getattr(value, "_repr_html_", None)
            if not callable(method):
                return None
            html = method()
        except Exception:
            return None
        return html if isinstance(html, str) else None

    def clip(text):
        return text[:_MAX_TEXT] + "..." if len(text) > _MAX_TEXT else text

    def execute(rid, code, filename):
        """Parse, run and display one cell; the frames to send before done."""
        flags = _ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        expression = None
        if _may_be_one_expression(code):
            try:  # a cell that is one expression: its value is the result
                expression = compile(code, filename, "eval", flags, dont_inherit=True)
            except Exception:
                pass  # statements, or a mistake: the full path runs or reports it as ever
        if expression is None:
            tree = _ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], _ast.Expr):
                last = _ast.Expression(tree.body.pop().value)
            run_code(compile(tree, filename, "exec", flags, dont_inherit=True))
            if last is None:
                return []
            expression = compile(last, filename, "eval", flags, dont_inherit=True)
        value = run_code(expression)
        if value is None:
            return []
        ns["_"] = value
        text = clip(repr(value))
        mime = {"text/plain": text}
        html = html_of(value)
        if html is not None:
            mime["text/html"] = clip(html)
        frame = {"type": "result", "id": rid, "text": text, "mime": mime}
        # The daemon takes frames up to 2 MiB: a larger one would end the
        # session. The HTML goes first, then the text is cut until it fits.
        while len(_encode(frame).encode("utf-8", "replace")) > _MAX_RESULT_FRAME:
            if "text/html" in mime:
                del mime["text/html"]
                continue
            text = text[: len(text) // 2] + "..."
            frame["text"] = mime["text/plain"] = text
        return [frame]

    def user_traceback(tb):
        """The traceback without the frames of this file, the parser or the event loop."""
        asyncio_mod = _sys.modules.get("asyncio")
        asyncio_dir = None
        if asyncio_mod is not None and getattr(asyncio_mod, "__file__", None):
            asyncio_dir = _os.path.dirname(asyncio_mod.__file__) + _os.sep
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if not (name == own_file or name == ast_file
                    or (asyncio_dir is not None and name.startswith(asyncio_dir))):
                break
            tb = tb.tb_next
        return tb

    def error_frame(rid, exc):
        name = type(exc).__name__
        try:
            value = call_user(str, exc)
        except BaseException:
            value = "<exception str() failed>"
        tb = user_traceback(exc.__traceback__)
        try:
            text = call_user(lambda: "".join(_traceback.format_exception(type(exc), exc, tb)))
            lines_ = text.splitlines()
        except BaseException:
            lines_ = [f"{name}: {value}"]
        frame = {"type": "error", "id": rid, "name": name, "value": clip(value), "traceback": lines_}
        # As for a result: a frame past the daemon's 2 MiB would end the session.
        while len(_encode(frame).encode("utf-8", "replace")) > _MAX_RESULT_FRAME:
            if len(lines_) > 50:
                lines_[25:-25] = [f"... {len(lines_) - 50} lines cut ..."]
                continue
            longest = max(range(len(lines_)), key=lambda i: len(lines_[i]), default=None)
            if longest is not None and len(lines_[longest]) > max(len(frame["value"]), 64):
                lines_[longest] = lines_[longest][: len(lines_[longest]) // 2] + "..."
            elif len(frame["value"]) > 64:
                frame["value"] = frame["value"][: len(frame["value"]) // 2] + "..."
            else:
                del lines_[:-1]  # 50 lines of 64 characters at most: cannot be reached
        return frame

    def flush_output():
        for stream in (_sys.stdout, _sys.stderr, _sys.__stdout__, _sys.__stderr__):
            try:
                call_user(stream.flush)
            except BaseException:
                pass

    def repair_stdin():
        # exit() and quit() close sys.stdin before raising SystemExit; fd 0 itself stays open.
        stdin = _sys.stdin
        if stdin is not None and stdin is _sys.__stdin__ and getattr(stdin, "closed", False):
            try:
                _sys.stdin = _sys.__stdin__ = open(0, "r", closefd=False)
            except OSError:
                pass

    def run_cell(rid, code):
        cells[0] += 1
        filename = f"<cell-{cells[0]}>"
        _linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            frames = call_user(execute, rid, code, filename, cell=True)
            ok = True
        except BaseException as exc:
            frames = [error_frame(rid, exc)]
            ok = False
            repair_stdin()
        return frames, ok

    def bad_request(out, raw, name, value):
        """Add the error frame for a line that is no request to out; its id, when it can be
        read (a done is owed then), else None."""
        rid = None
        match = _ID_AT_START.match(raw[:4096])
        if match:
            try:
                rid = _json.loads(match.group(1))
            except ValueError:
                rid = None
        out.append({"type": "error", "id": rid, "name": name, "value": value, "traceback": []})
        return rid

    # Whether to back the session's large regions with huge pages once it has
    # been idle a while, so that a fork copies one page-table entry per 2 MiB
    # of them: after a call of code in a forkable session (its first fork is
    # then as quick as the rest) and after a fork (for what was not collapsed
    # before: only once the fork no longer shares it, which a fork removed
    # at once no longer does 50 ms later; what a fork still shares is passed
    # over, and looked at again a few times while the session is idle).
    collapse = {"pending": False, "retries": 0}

    def fork_session(request, fds):
        """A fork into a new sandbox (alcove_fork.py): None when the copy is
        made, "copy" in the copy, else (error name, why): ForkRefused when
        the session did not fork (the caller can fix that), ForkFailed when
        its copy failed."""
        def close_all():
            for fd in fds:
                try:
                    _os.close(fd)
                except OSError:
                    pass
        with open("/proc/self/status") as f:
            threads = next((int(l.split()[1]) for l in f if l.startswith("Threads:")), 0)
        if threads != 1:
            close_all()
            return ("ForkRefused",
                    f"the session runs {threads} threads; a fork copies only one, so it is "
                    "refused (end the threads the code started)")
        try:
            fork_module = _load_sibling("alcove_fork")
            fork_module.parse(request, fds)
        except (ImportError, ValueError, OSError) as e:
            close_all()
            return "ForkRefused", f"the fork request is not usable: {e}"
        why = fork_module.shared_with_parent()
        if why is not None:
            close_all()
            return "ForkRefused", why
        flush_output()
        try:
            pid = fork_module.session_fork()
        except OSError as e:
            close_all()
            return "ForkRefused", f"fork: {e}"
        if pid == 0:
            try:
                def say_ready(fd):
                    # First, before the rest of its setup: the fork's answer waits for it.
                    line = _encode({"type": "ready", "pid": _os.getpid(),
                                    "python": _sys.version.split()[0], "forked": True}) + "\n"
                    _os.write(fd, line.encode())
                new_ctl = fork_module.become_copy(request, fds, [chan["sock"].fileno()], say_ready)
                chan["sock"].detach()  # closed by become_copy
                ctl2 = _fcntl.fcntl(new_ctl, _F_DUPFD_CLOEXEC, _HIGH_FD)
                _os.close(new_ctl)
                _os.set_blocking(ctl2, True)
                chan["sock"] = _socket.socket(fileno=ctl2)
                chan["fds"] = []
                chan["gen"] += 1
                loop_box[0] = None  # its epoll was the old sandbox's (now /dev/null)
                # A collapse the fork cut short is the parent's to finish (here
                # its pages are shared, and stay so): the copy's own calls
                # start its own.
                collapse.update(pending=False, retries=0)
                # No call of its own yet, nor an interrupt: those were its parent's.
                calls.update(in_call=False, pending=False, last=None, missed=False)
            except BaseException:
                try:  # its stderr is the new sandbox's by now, or /dev/null
                    _os.write(2, _traceback.format_exc().encode("utf-8", "replace"))
                finally:
                    _os._exit(71)
            return "copy"
        close_all()
        try:
            _, status = _os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0  # reaped by the code's own handler: the daemon knows how it went
        # Whatever became of it (the daemon kills it once it says `left`).
        collapse.update(pending=True, retries=0)  # huge pages for the next fork
        if _os.waitstatus_to_exitcode(status) != 0:
            return ("ForkFailed",
                    f"the copy's first process ended with {_os.waitstatus_to_exitcode(status)}")
        return None

    # ---- the session -----------------------------------------------------------------

    try:
        send([{"type": "ready", "pid": _os.getpid(), "python": _sys.version.split()[0]}])
        for kind, raw in lines():
            calls["in_call"] = True
            if calls["missed"]:  # came before this request was read (see calls)
                calls["missed"] = False
                say_missed()
            t0 = _time.perf_counter()
            out = []  # the request's frames: written with its done, in one write
            owed = True  # whether a done closes it (not where no id could be read)
            if kind == "big":
                rid = bad_request(out, raw, "RequestTooLarge",
                                  f"a request line is limited to {_MAX_LINE} bytes")
                ok, owed = False, rid is not None
            else:
                if not raw.strip():
                    calls["in_call"] = False
                    continue
                try:
                    request = _json.loads(raw)
                except ValueError as e:
                    request = e
                if isinstance(request, ValueError):
                    rid = bad_request(out, raw, "BadRequest", f"not JSON: {request}")
                    ok, owed = False, rid is not None
                elif not isinstance(request, dict):
                    out.append({"type": "error", "id": None, "name": "BadRequest",
                                "value": "a request is a JSON object", "traceback": []})
                    owed = False
                elif request.get("type") == "fork":
                    rid = request.get("id")
                    fds, chan["fds"] = chan["fds"], []
                    outcome = fork_session(request, fds)
                    if outcome == "copy":
                        continue  # the new sandbox's interpreter: it said ready
                    ok = outcome is None
                    if not ok:
                        out.append({"type": "error", "id": rid, "name": outcome[0],
                                    "value": outcome[1], "traceback": []})
                elif not isinstance(request.get("code"), str):
                    rid = request.get("id")
                    out.append({"type": "error", "id": rid, "name": "BadRequest",
                                "value": 'a request needs "code", a string', "traceback": []})
                    ok = False
                else:
                    rid = request.get("id")
                    out, ok = run_cell(rid, request["code"])
                    if forkable:
                        collapse.update(pending=True, retries=0)
            if not owed:
                calls.update(in_call=False, pending=False)
                send(out)
                continue
            flush_output()  # what the cell printed is readable before its done
            out.append({"type": "done", "id": rid, "ok": ok,
                        "duration_ms": round((_time.perf_counter() - t0) * 1000.0, 3)})
            # From here an interrupt is for a later call, or for this one, which has ended.
            calls.update(in_call=False, pending=False, last=rid if isinstance(rid, str) else None)
            send(out)
            del out
            if collapse["pending"]:
                waiting = _select.poll()  # not select(): the descriptor may be >= 1024
                waiting.register(chan["sock"].fileno(), _select.POLLIN)

                def asked(wait_ms=0):
                    """A request is waiting: it goes first (a fork, say). Only
                    the socket is asked: lines() holds nothing unread here, as
                    the daemon sends a request only once the last one is done."""
                    return bool(waiting.poll(wait_ms))

                fork_module = _sys.modules.get("alcove_fork")  # loaded: the session is forkable
                if fork_module is None:
                    collapse["pending"] = False
                while collapse["pending"]:
                    retry = collapse["retries"]
                    if asked(_IDLE_BEFORE_COLLAPSE_MS if retry == 0 else 1000 << (retry - 1)):
                        break  # a request first: carried on after it
                    try:
                        outcome = fork_module.prepare(asked)
                    except (OSError, AttributeError, ValueError):
                        outcome = fork_module.DONE
                    if outcome == fork_module.STOPPED:
                        break  # cut short by a request: carried on after it
                    if outcome == fork_module.SHARED_LEFT and retry < _COLLAPSE_RETRIES:
                        collapse["retries"] = retry + 1
                    else:
                        collapse.update(pending=False, retries=0)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon has gone: as good as EOF
    return 0


if __name__ == "__main__":
    _sys.exit(_main())
