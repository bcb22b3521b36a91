"""alcove's Python runtime: one handler file, served cold or warm.

    python3 /run/alcove/runtime/alcove_runtime.py ENTRY      (cwd: the function's code)

ENTRY (e.g. ``main.py``) is imported as the module ``main``; its module-level
code is the function's initialisation and it defines ``handle(body: bytes)``.

* Cold (no ``ALCOVE_WARM``): the body is stdin, the result goes to stdout,
  and the process exits (0, or 1 with the traceback on stderr).
* Warm (``ALCOVE_WARM=1``): this process is the template of
  docs/warm-protocol.md. It initialises once, says ``ready`` and then forks
  one copy per ``fork`` packet; each copy isolates itself (new namespaces,
  no capabilities, seccomp), connects to alcove, serves one request and exits.
  This file owns the copy's side of that protocol, steps 1-12; the daemon
  owns every check made on a copy.

The result of ``handle``: bytes as they are, str as UTF-8, None as nothing.
For an HTTP function (``ALCOVE_PROTOCOL=http``) the output is a CGI response:
a ``(status, headers, body)`` tuple sets them, a plain result is sent as
``text/plain``. ``alcove_runtime.request()`` gives the handler the request's
method, path, query, headers and body from the CGI variables.

Python's standard library only, 3.9 or later.
"""
import ctypes
import fcntl
import importlib.util
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import traceback

# The handler imports us by name; as a script we are __main__, and a second
# copy of this module under another name would have its own request state.
sys.modules.setdefault("alcove_runtime", sys.modules[__name__])

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOSYMFOLLOW, MS_NOATIME, MS_NODIRATIME = 32, 256, 1024, 2048
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
# Per-mount flags a read-only remount restates: a user namespace may not clear
# nosuid, nodev or noexec on a mount it inherited, and the others are kept as they were.
KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "nosymfollow": MS_NOSYMFOLLOW, "nodiratime": MS_NODIRATIME}
PR_CAPBSET_DROP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 24, 22, 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 1
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}  # only if libc lacks capset()
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (the unified table)
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
MADV_COLLAPSE = 25
MAX_REQUEST = 1 << 20
FDS_SPACE = socket.CMSG_SPACE(3 * struct.calcsize("i"))  # room for the request's three descriptors


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Request:
    """The current request as CGI/1.1 describes it (RFC 3875 section 4.1)."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method, path, query, headers, body):
        self.method, self.path, self.query = method, path, query
        self.headers, self.body = headers, body

    def __repr__(self):
        return f"Request({self.method} {self.path!r} query={self.query!r})"


_body = b""


def request():
    """The request being handled, built from the CGI environment variables."""
    env = os.environ
    headers = {k[5:].lower().replace("_", "-"): v for k, v in env.items() if k.startswith("HTTP_")}
    # CGI takes these two out of the HTTP_ set; a handler still expects them as headers.
    for var, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if env.get(var):
            headers[name] = env[var]
    return Request(env.get("REQUEST_METHOD", "POST"), env.get("PATH_INFO", "/"),
                   env.get("QUERY_STRING", ""), headers, _body)


def fail(message, code=2):
    sys.stderr.write(f"alcove_runtime: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def load(entry):
    if not entry.endswith(".py") or not os.path.isfile(entry):
        fail(f"ENTRY {entry!r} is missing or not a .py file (it is a path relative to the function's code)")
    sys.path.insert(0, os.getcwd())  # so the handler can import its siblings
    spec = importlib.util.spec_from_file_location("main", os.path.abspath(entry))
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)  # the initialisation; an exception here is a traceback, exit 1
    if not callable(getattr(module, "handle", None)):
        fail(f"{entry} defines no handle(body) function")
    return module.handle


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def render(result, http):
    """The bytes to write for what handle() returned."""
    def as_bytes(value):
        if value is None:
            return b""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        raise TypeError(f"handle() returned a body of type {type(value).__name__}; "
                        "return bytes, str or None")

    if isinstance(result, tuple):
        if not http:
            raise TypeError("handle() returned (status, headers, body), which only an HTTP "
                            "function (--http) can answer; return bytes, str or None")
        if len(result) != 3:
            raise TypeError("handle() must return (status, headers, body) as a 3-tuple")
        status, headers, body = result
        head = [f"Status: {int(status)}"]
        for name, value in dict(headers or {}).items():
            line = f"{name}: {value}"
            if "\r" in line or "\n" in line:  # it would smuggle in a header of its own
                raise ValueError(f"header {name!r} holds a line break")
            head.append(line)
        return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + as_bytes(body)
    body = as_bytes(result)
    return b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body if http else body


def serve(handle, body, http):
    """Run handle(body) and write its result: (exit code, start ns, end ns)."""
    global _body
    _body = body
    start = end = time.monotonic_ns()
    try:
        try:
            result = handle(body)
        finally:
            end = time.monotonic_ns()
        out = render(result, http)
        sys.stdout.flush()  # anything it print()ed comes before its result
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            sys.stderr.write(f"{e.code}\n")
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away; the exit code still tells the story
    return code, start, end


def cold(handle):
    code, _, _ = serve(handle, read_all(0), os.environ.get("ALCOVE_PROTOCOL") == "http")
    sys.exit(code)


# ---- warm: the template ---------------------------------------------------

class Template:
    def __init__(self):
        env = os.environ
        try:
            self.control = socket.socket(fileno=int(env["ALCOVE_CONTROL_FD"]))
            self.copy_socket = env["ALCOVE_COPY_SOCKET"]
            self.flags = int(env["ALCOVE_UNSHARE_FLAGS"])
            self.tmpfs_size = int(env["ALCOVE_TMPFS_SIZE"])
            self.request_buffer = bytearray(MAX_REQUEST)
            with open(env["ALCOVE_COPY_FILTER"], "rb") as f:
                program = f.read()
        except (KeyError, ValueError, OSError) as e:
            fail(f"ALCOVE_WARM=1 without a usable warm environment: {e!r}")
        if not program or len(program) % 8:
            fail(f"the copy filter has {len(program)} bytes, not a whole number of 8-byte instructions")
        # Read once here: every copy installs the same program, and a copy's
        # view of the filesystem is about to change under it.
        self.filter = ctypes.create_string_buffer(program, len(program))
        self.fprog = SockFprog(len(program) // 8, ctypes.addressof(self.filter))
        self.shared_rw = {p for p in env.get("ALCOVE_SHARED_RW", "").split(":") if p}
        self.http = env.get("ALCOVE_PROTOCOL") == "http"
        self.uid, self.gid = os.getuid(), os.getgid()
        with open("/proc/sys/kernel/cap_last_cap") as f:
            self.cap_last = int(f.read())
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        # prctl is variadic: unsigned long arguments, never ints with undefined upper halves
        self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def run(self, handle):
        threads = threading.active_count()
        with open("/proc/self/status") as f:
            kernel = next(int(l.split()[1]) for l in f if l.startswith("Threads:"))
        if threads != 1 or kernel != 1:
            fail(f"the initialisation left {max(threads, kernel)} threads running "
                 f"(Python sees {threads}, the kernel {kernel}); a warm template must be "
                 "one thread, since fork copies only the calling one", 3)
        import gc
        gc.freeze()  # copies then leave init's objects alone instead of copying their pages
        collapse_large_regions(self.libc)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # we are pid 1: the kernel reaps the copies
        self.control.send(b"ready")
        while True:
            message = self.control.recv(64)
            if not message:
                sys.exit(0)  # alcove went away
            if message != b"fork":
                sys.stderr.write(f"alcove_runtime: ignoring control message {message[:32]!r}\n")
                continue
            sys.stdout.flush()
            sys.stderr.flush()  # or each copy would write init's buffered output again
            try:
                pid = os.fork()
            except OSError as e:
                sys.stderr.write(f"alcove_runtime: fork failed: {e}\n")
                continue
            if pid == 0:
                code = 70
                try:
                    code = self.copy(handle)
                finally:
                    os._exit(code)  # never back into the template's loop

    # ---- a copy -----------------------------------------------------------

    def copy(self, handle):
        err = 2  # the template's stderr until step 8, a saved duplicate after
        step = 0

        def check(rc, what):
            if rc != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"{what}: {os.strerror(errno)}")

        try:
            step = 1
            check(self.libc.unshare(self.flags), f"unshare({self.flags:#x})")
            step = 2
            self.map_own_ids()
            step = 3
            self.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
            step = 4
            self.isolate_mounts()
            step = 5
            loopback_up()
            step = 6
            if os.fork() != 0:
                os._exit(0)  # the middle process; its child is pid 1 of the new pid namespace
            step = 7
            self.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
            step = 8
            err = os.dup(2)  # a pipe alcove would refuse: closed before we connect
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            self.control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            step = 9
            for cap in range(self.cap_last + 1):
                check(self.libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"PR_CAPBSET_DROP {cap}")
            self.capset_empty()
            step = 10
            check(self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                                  ctypes.addressof(self.fprog), 0, 0), "PR_SET_SECCOMP")
            step = 11
            os.close(err)
            err = -1
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.connect(self.copy_socket)
            conn.send(b"copy")
            # Differ from every other copy, before any request is here.
            random.seed()  # os.urandom: what init seeded is the same in every copy
            tempfile = sys.modules.get("tempfile")
            if tempfile is not None:
                # its name generator reseeds only when the pid changes, and every copy is pid 1
                tempfile._name_sequence = None
            self.rehearse()
        except BaseException as e:
            if err >= 0:
                try:
                    os.write(err, f"alcove_runtime: a copy failed at step {step}: {e}\n".encode())
                except OSError:
                    pass
            return 70 + step

        # Step 12. alcove has looked at us and either sends the request or hangs up.
        try:
            # Into the template's buffer: its pages are untouched zeros, so only
            # what the request fills is faulted in (recv_fds would allocate 1 MiB).
            nbytes, ancdata, msg_flags, _ = conn.recvmsg_into([self.request_buffer], FDS_SPACE)
            payload, fds = parse_request(self.request_buffer, nbytes, ancdata)
        except OSError:
            return 82
        if not payload and not fds:
            return 0  # refused or alcove went away: nothing to serve
        if len(fds) != 3 or msg_flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            return 83
        take_stdio(fds)
        if msg_flags & socket.MSG_TRUNC:
            # Serving a cut environment would be a wrong answer; say why in the invocation's log.
            os.write(2, f"alcove_runtime: the request's environment is over {MAX_REQUEST} bytes\n".encode())
            now = time.monotonic_ns()
            release_output()
            conn.send(f"exit 83 {now} {now}".encode())
            return 83
        apply_environment(payload)
        http = os.environ.get("ALCOVE_PROTOCOL", "http" if self.http else "body") == "http"
        code, start, end = serve(handle, read_all(0), http)
        release_output()
        try:
            conn.send(f"exit {code} {start} {end}".encode())
        except OSError:
            pass
        return code

    def map_own_ids(self):
        """Step 2: in the new user namespace, keep our own uid and gid."""
        for path, text in (("setgroups", "deny"), ("uid_map", f"{self.uid} {self.uid} 1"),
                           ("gid_map", f"{self.gid} {self.gid} 1")):
            fd = os.open(f"/proc/self/{path}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

    def mount(self, source, target, fstype, flags, data):
        enc = lambda s: None if s is None else os.fsencode(s)
        if self.libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount {fstype or ''} on {target} "
                                 f"(flags {flags:#x}): {os.strerror(errno)}")

    def mount_setattr(self, path, recursive, attr_set, attr_clr):
        attr = struct.pack("QQQQ", attr_set, attr_clr, 0, 0)
        rc = self.libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD),
                               os.fsencode(path), ctypes.c_uint(AT_RECURSIVE if recursive else 0),
                               attr, ctypes.c_size_t(len(attr)))
        if rc != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount_setattr {path}: {os.strerror(errno)}")

    def isolate_mounts(self):
        """Step 4: every inherited writable mount read-only, then fresh private ones."""
        try:
            # Every mount at once, covered ones and /proc included (the fresh
            # proc of step 7 goes over a read-only one); then the owner's
            # shared binds get their write access back.
            self.mount_setattr("/", True, MOUNT_ATTR_RDONLY, 0)
            for point in self.shared_rw:
                self.mount_setattr(point, True, 0, MOUNT_ATTR_RDONLY)
        except OSError:
            self.remount_each_read_only()
        self.mount_fresh_places()

    def remount_each_read_only(self):
        """Step 4 on kernels without mount_setattr: mount by mount, by path."""
        with open("/proc/self/mountinfo", "rb") as f:
            mounts = reachable_mounts(f.read().decode("utf-8", "surrogateescape"))
        for _, point, options in mounts:
            if "rw" not in options or point in self.shared_rw:
                continue
            # /tmp, /dev/shm and /dev/pts too: covered below, but their old
            # superblocks are the template's and must not stay writable beneath.
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for name, bit in KEPT_FLAGS.items():
                if name in options:
                    flags |= bit
            # A locked mount's atime mode must be restated, and mount(2) would default to relatime.
            flags |= (MS_NOATIME if "noatime" in options else
                      MS_RELATIME if "relatime" in options else MS_STRICTATIME)
            self.mount(None, point, None, flags, None)

    def mount_fresh_places(self):
        tmpfs = f"mode=1777,size={self.tmpfs_size}"
        self.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
        if os.path.isdir("/dev/shm"):
            self.mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, tmpfs)
        if os.path.isdir("/dev/pts"):
            self.mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=0620")

    def rehearse(self):
        """Walk the request's path once without a request, while alcove checks
        this copy: the first write to each page shared with the template (a
        refcount is enough) copies it, and that is better done now than
        between the request's arrival and the handler."""
        template_env = b"\0".join(k + b"=" + v for k, v in os.environb.items())
        # A request's environment is the template's and the CGI variables:
        # set them and put the template's back, as a request will change them.
        cgi = b"\0".join(k + b"=x" for k in REHEARSED_VARIABLES)
        rehearsal = template_env + b"\0" + cgi
        self.request_buffer[: len(rehearsal)] = rehearsal
        fds = struct.pack("3i", 0, 1, 2)
        parse_request(self.request_buffer, len(rehearsal), [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        take_stdio([0, 1, 2])  # they are /dev/null now: dup2 onto themselves
        apply_environment(rehearsal)
        apply_environment(template_env)
        read_all(0)  # /dev/null until the request's stdin is here
        for http in (False, True):
            render(b"", http)
        time.monotonic_ns()

    def capset_empty(self):
        self.capset(0, 0, 0)

    def capset(self, effective, permitted, inheritable):
        header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
        sets = (effective, permitted, inheritable)
        # Two struct __user_cap_data_struct: capabilities 0-31, then 32-63.
        data = struct.pack("6I", *(s & 0xFFFFFFFF for s in sets), *(s >> 32 for s in sets))
        capset = getattr(self.libc, "capset", None)
        if capset is not None:
            rc = capset(header, data)
        else:
            rc = self.libc.syscall(ctypes.c_long(SYS_CAPSET[os.uname().machine]), header, data)
        if rc != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"capset: {os.strerror(errno)}")


def loopback_up():
    """Step 5: the new network namespace's `lo` up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0))
        flags = struct.unpack("16sh22x", ifr)[1] | IFF_UP
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags))


def parse_request(buf, nbytes, ancdata):
    """The request's environment payload and its descriptors, from recvmsg_into."""
    payload = bytes(memoryview(buf)[:nbytes])
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    return payload, fds


def take_stdio(fds):
    """The request's stdin, stdout and stderr become 0, 1 and 2."""
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)


# The variables a request adds to the template's environment (the rehearsal sets them).
REHEARSED_VARIABLES = [k.encode() for k in (
    "ALCOVE_INVOCATION", "GATEWAY_INTERFACE", "SERVER_PROTOCOL", "SERVER_SOFTWARE",
    "SERVER_NAME", "SERVER_PORT", "REQUEST_METHOD", "REQUEST_URI", "SCRIPT_NAME",
    "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_ADDR",
    "REMOTE_PORT", "HTTP_HOST", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_AUTHORIZATION",
    "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH")]


def apply_environment(payload):
    """Make the environment the request's (`KEY=VALUE\\0` entries), changing only
    what differs from the template's."""
    env = os.environb
    # Python's start-up may have set LC_CTYPE (PEP 538 coerces the C locale);
    # the request carries the function's own locale variables, which the
    # template started with too, so a cold run's Python would set the same.
    coerced = env.get(b"LC_CTYPE")
    wanted = {}
    for entry in payload.split(b"\0"):
        key, eq, value = entry.partition(b"=")
        if key and eq:
            wanted[key] = value
    if coerced is not None:
        wanted[b"LC_CTYPE"] = coerced
    # Each change is an unsetenv or putenv; most of the environment is the same.
    gone = [k for k in env if k not in wanted]
    changed = [(k, v) for k, v in wanted.items() if env.get(k) != v]
    for key in gone:
        del env[key]
    for key, value in changed:
        env[key] = value


# /proc/PID/pagemap: one 64-bit entry per page; bit 63 says present, bit 56
# mapped by this process alone (not the shared zero page, not a page a fork
# still shares). Both sit in an entry's top byte.
_TOP_BYTE_OWNED = bytes(1 if b & 0x81 == 0x81 else 0 for b in range(256))
_TOP_BYTE_PRESENT = bytes(b >> 7 for b in range(256))

# What a pass of collapse_large_regions came to.
STOPPED = "stopped"  # stop() said so: a request waits
DONE = "done"  # every region gone through
SHARED_LEFT = "shared left"  # gone through, but some huge pages were mostly present and not
# this process's alone (a live fork shares them, or the zero page): a later pass may do them


def open_pagemap():
    """This process's /proc/self/pagemap, open (close-on-exec, above the
    numbers code uses), or None. Opened while the process may: one that is
    not dumpable cannot open its own."""
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
    except OSError:
        return None  # no number from 100 up free (or an open-files limit below it)
    finally:
        os.close(fd)


def collapse_large_regions(libc, stop=None, pagemap=None):
    """Back the large anonymous regions init filled with huge pages
    (MADV_COLLAPSE, Linux 6.1+): each fork then copies one entry per 2 MiB
    instead of 512, which halves what a copy of a big template costs. A copy
    that writes there still copies only the 4 KiB page it writes. Best effort.

    One huge page per call: a collapse copies its pages in the kernel, where
    the cgroup freezer and signals wait for it (a 100 MiB region in one call
    kept a pause, and the next fork's freeze, waiting 0.2-1.9 s here); between
    calls the process is back in user space, so it freezes within one page's
    copy (milliseconds). `stop()`, asked between pages, ends it early. Returns
    STOPPED, DONE or SHARED_LEFT.

    A collapse gives the huge page's every small page memory of this
    process's own, so only a huge page seven eighths of whose pages already
    are (`pagemap`: this process's open /proc/self/pagemap, see open_pagemap;
    None to open it here) is collapsed: not a sparse region (a large buffer
    touched here and there), nor one read but never written (the kernel's
    shared zero page), nor one a fork still shares with this process, which
    would each grow, up to the sandbox's memory limit. Without a pagemap,
    nothing is collapsed."""
    own = pagemap if pagemap is not None else open_pagemap()
    if own is None:
        return DONE
    try:
        return _collapse(libc, stop, own)
    finally:
        if pagemap is None:
            os.close(own)


def _collapse(libc, stop, pagemap):
    huge = 2 << 20
    page = os.sysconf("SC_PAGE_SIZE")
    pages = huge // page
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return DONE
    outcome = DONE
    for line in lines:
        fields = line.split()
        if len(fields) != 5 or not fields[1].startswith("rw") or fields[1][3] != "p":
            continue  # only private, writable, anonymous (no path) regions
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        start, end = (lo + huge - 1) & ~(huge - 1), hi & ~(huge - 1)
        if end - start < 2 * huge:
            continue
        for at in range(start, end, huge):
            if stop is not None and stop():
                return STOPPED
            try:
                entries = os.pread(pagemap, 8 * pages, at // page * 8)
            except OSError:
                return DONE
            top = entries[7::8] if sys.byteorder == "little" else entries[::8]
            if top.translate(_TOP_BYTE_OWNED).count(1) * 8 < pages * 7:
                if top.translate(_TOP_BYTE_PRESENT).count(1) * 8 >= pages * 7:
                    outcome = SHARED_LEFT
                continue
            if libc.madvise(ctypes.c_void_p(at), ctypes.c_size_t(huge), MADV_COLLAPSE) != 0:
                break  # a kernel without it (before 6.1), or no huge page to be had: next region
    return outcome


def release_output():
    """Point 1 and 2 at /dev/null: alcove sees the output end now, not once the
    kernel has torn a copy's memory down after _exit."""
    try:
        null = os.open("/dev/null", os.O_WRONLY)
    except OSError:
        os.close(1)
        os.close(2)
        return
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def reachable_mounts(mountinfo):
    """(mount id, mount point, per-mount options) of each mount a path can still reach.

    A mount covered by a later one (mounted on the same point, or on a
    directory above it) cannot be named by a path, so remounting "its" path
    would change whatever covers it; and what no path reaches, no one writes.
    """
    mounts = {}
    for line in mountinfo.splitlines():
        f = line.split(" ")
        mounts[f[0]] = (f[1], unescape(f[4]), f[5].split(","))
    children = {}
    for mid, (parent, point, _) in mounts.items():
        children.setdefault(parent, []).append(mid)

    def top(mid):  # a mount on the same point as its parent covers it
        while True:
            above = [c for c in children.get(mid, ()) if mounts[c][1] == mounts[mid][1]]
            if not above:
                return mid
            mid = above[-1]

    def inside(point, directory):
        return directory == "/" or point == directory or point.startswith(directory + "/")

    def resolve(path):  # the mount a walk of path from / ends on
        roots = [m for m, (parent, point, _) in mounts.items() if parent not in mounts and point == "/"]
        if not roots:
            return None
        cur = top(roots[0])
        while True:
            steps = [c for c in children.get(cur, ())
                     if mounts[c][1] != mounts[cur][1] and inside(path, mounts[c][1])]
            if not steps:
                return cur
            cur = top(min(steps, key=lambda c: len(mounts[c][1])))

    return [(mid, point, options) for mid, (_, point, options) in mounts.items() if resolve(point) == mid]


def unescape(path):
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def main(argv):
    if len(argv) != 2:
        fail("usage: alcove_runtime.py ENTRY (a .py file, relative to the function's code)")
    warm = os.environ.get("ALCOVE_WARM") == "1"
    template = Template() if warm else None  # a broken warm setup fails before init runs
    handle = load(argv[1])
    if template is None:
        cold(handle)
    template.run(handle)


if __name__ == "__main__":
    main(sys.argv)
