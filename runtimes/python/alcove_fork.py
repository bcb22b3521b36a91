"""A fork of alcove's code interpreter into a new sandbox, memory and all.

The daemon asks the session (alcove_repl.py) for a fork with one request line
and six descriptors (docs/sandboxes-api.md, "Fork with the interpreter's
memory"). The session forks; the child (C) makes the new sandbox:

  C   says ``child`` (the kernel attaches its pid; the daemon moves it into
      the new sandbox's cgroup, says ``moved`` with the agent's log pipe,
      then copies the files into the new home) and makes the namespaces a
      warm copy makes (docs/warm-protocol.md, steps 1-5: user, mount,
      network, IPC, UTS and pid). On ``moved`` it spawns the sandbox's
      agent as pid 1 of the new pid namespace (posix_spawn: no copy of this
      memory), with CAP_SYS_ADMIN alone, as an ambient capability, to mount
      its /proc (only a process of that namespace can); the agent drops it
      before it says ready. On ``go`` (the files are there) C mounts the new
      home (a detached mount from the daemon) over its own, drops every
      capability, forks the interpreter (D) and says ``left``; the daemon
      kills it then (it was ending). D's parent was outside the new pid
      namespace, so D is not the agent's child: the agent watches it
      through a pidfd.
  D   the new sandbox's interpreter: the session's memory, its variables
      and modules, with a new control channel and output pipes. Every other
      descriptor the session had (files, sockets, an event loop's epoll)
      now reads /dev/null: they were the old sandbox's. It leads a process
      group of its own, in the session C made first (which holds the new
      agent too): neither is in the parent session's group, which the
      parent's agent signals as a whole to interrupt or end the session.

A step that fails says why on the daemon's socket and exits non-zero; the
daemon then removes what it made. Nothing here is trusted (the session's
own code may have changed any of it): once C has said ``left`` and the agent
is ready, the daemon checks every process of the new sandbox from /proc (its
agent and its interpreter, nothing else) before it uses it.
"""
import ctypes
import fcntl
import os
import socket

import alcove_runtime as _rt

MOVE_MOUNT_F_EMPTY_PATH = 0x4
SYS_MOVE_MOUNT = 429  # the same on every architecture (the unified table)
PR_SET_DUMPABLE = 4
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4
CAP_SETPCAP, CAP_SYS_ADMIN = 8, 21
HIGH_FD = 64  # above every number the spawn's dup2s target (the agent's link is < 64)
FD_COUNT = 6  # conn, home tree, agent link, control, stdout, stderr


class Fork(_rt.Template):
    """The copy steps of a warm template's copy, with the daemon's numbers."""

    def __init__(self, flags, tmpfs_size):
        self.flags = flags
        self.tmpfs_size = tmpfs_size
        self.shared_rw = set()
        self.uid, self.gid = os.getuid(), os.getgid()
        with open("/proc/sys/kernel/cap_last_cap") as f:
            self.cap_last = int(f.read())
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def mount_fresh_places(self):
        tmpfs = f"mode=1777,size={self.tmpfs_size}"
        self.mount("tmpfs", "/tmp", "tmpfs", _rt.MS_NOSUID | _rt.MS_NODEV, tmpfs)
        if os.path.isdir("/dev/shm"):
            self.mount("tmpfs", "/dev/shm", "tmpfs",
                       _rt.MS_NOSUID | _rt.MS_NODEV | _rt.MS_NOEXEC, tmpfs)
        if os.path.isdir("/dev/pts"):
            # The bound an agent sandbox's own devpts has.
            self.mount("devpts", "/dev/pts", "devpts", _rt.MS_NOSUID | _rt.MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=0620,max=16")

    def check(self, rc, what):
        if rc != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def spawn_init(self, argv, env, fds):
        """pid 1 of the new pid namespace: the agent, spawned (no copy of
        this memory) with CAP_SYS_ADMIN alone, ambient, and an empty
        bounding set; `fds` maps the numbers it gets to ours. Then this
        process holds CAP_SYS_ADMIN alone, until drop_all."""
        admin, setpcap = 1 << CAP_SYS_ADMIN, 1 << CAP_SETPCAP
        # Inheritable only while the bounding set still holds it.
        self.capset(admin | setpcap, admin | setpcap, admin)
        self.check(self.libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0),
                   "raising CAP_SYS_ADMIN as ambient")
        prctl = self.libc.prctl  # one lookup: each step here costs the copy page faults
        for cap in range(self.cap_last + 1):
            if prctl(_rt.PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                self.check(-1, f"PR_CAPBSET_DROP {cap}")
        # Only what it is given: every other descriptor closes at its exec.
        high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for target, fd in fds.items()}
        for name in os.listdir("/proc/self/fd"):
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass  # the listing's own descriptor
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in high.items()]
        try:
            return os.posix_spawn(argv[0], argv, env, file_actions=actions)
        finally:
            for fd in high.values():
                os.close(fd)
            self.check(self.libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
                       "clearing the ambient capabilities")
            self.capset(admin, admin, 0)  # for the home's mount, then none (drop_all)

    def drop_all(self):
        self.capset_empty()


_libc = []
_fork = []
_pagemap = [None]  # (descriptor, (st_dev, st_ino)) of the process's own pagemap, or None
STOPPED, DONE, SHARED_LEFT = _rt.STOPPED, _rt.DONE, _rt.SHARED_LEFT  # what prepare() came to


def keep_pagemap():
    """Opens this process's /proc/self/pagemap for prepare() while it still
    can: before it stops being dumpable."""
    forget_pagemap()
    fd = _rt.open_pagemap()
    if fd is not None:
        st = os.fstat(fd)
        _pagemap[0] = (fd, (st.st_dev, st.st_ino))


def forget_pagemap():
    """Closes the pagemap kept (in a copy: its parent's memory's, which the
    copy must not go on holding)."""
    kept, _pagemap[0] = _pagemap[0], None
    if kept is not None:
        try:
            os.close(kept[0])
        except OSError:
            pass


def session_fork():
    """fork(2) of the session into C, without Python's own handling of a
    fork (the interpreter's state made fresh for the child, at-fork hooks):
    on this 2-core VM that is 0.6 ms of the child's start, and C needs none
    of it. C runs the few steps below and ends; the interpreter it forks (D)
    comes from os.fork, which does all of it. The session runs one thread
    (checked before), so no lock is held elsewhere; the call holds the GIL
    throughout (PyDLL), so both sides go on holding it."""
    if not _fork:
        _fork.append(ctypes.PyDLL(None, use_errno=True).fork)
    pid = _fork[0]()
    if pid < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return pid


def prepare(asked=None):
    """In the session, once it has been idle a while after a fork or a call
    of code: its large regions backed by huge pages
    (alcove_runtime.collapse_large_regions), so the next fork copies one
    page-table entry per 2 MiB of them instead of 512 (and its child's exit
    frees as few). Only pages that are the session's alone are gathered so
    (its pagemap says which): in a copy, what it still shares with its
    parent stays shared. The first collapse of a region copies it (0.2-1.9 s
    for 100 MiB here, by the day), which is why it is not done while a fork
    or a call waits, and stops as soon as `asked()` says a request is
    waiting (STOPPED: the session carries on after that request); SHARED_LEFT
    when pages mostly present were shared (a live fork's: a later pass may
    find them its own). Best effort."""
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    kept = _pagemap[0]
    try:
        st = os.fstat(kept[0]) if kept is not None else None
    except OSError:
        st = None
    # The session's code may have closed the number, or put another file there.
    if st is None or (st.st_dev, st.st_ino) != kept[1]:
        _pagemap[0] = None
        return DONE  # its own pages cannot be told apart: nothing is collapsed
    return _rt.collapse_large_regions(_libc[0], asked, kept[0])


def shared_with_parent():
    """Why the session's memory cannot be copied on its own, or None: a
    mapping the fork would go on sharing with its parent (shared memory, or
    a file of the parent's writable places, whose later writes it would see)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return f"its memory map cannot be read: {e}"
    for line in lines:
        fields = line.split(None, 5)
        path = fields[5] if len(fields) == 6 else ""
        if len(fields) < 5 or path.startswith("["):
            continue
        # Read-only shared mappings of the image's files (the gconv cache,
        # say) are as safe as private ones: nothing writes them.
        shared = fields[1][3] == "s" and fields[1][1] == "w"
        writable_place = path.startswith(("/home/", "/tmp/", "/dev/shm/")) or path.endswith(" (deleted)")
        if shared or writable_place:
            what = "shared memory" if shared else "a mapped file of its own"
            return (f"the session maps {what} ({path or 'anonymous'}), which a fork would go on "
                    "sharing with its parent: close it (or its mmap, multiprocessing or "
                    "shared_memory object) and fork again")
    return None


_made = {}


def fork_steps(flags, tmpfs_size):
    """The Fork for these numbers, made once in the session (by its first
    fork's parse) and found ready in every copy: made in the copy, its
    every write would cost a page the copy no longer shares (~0.4 ms)."""
    key = (flags, tmpfs_size)
    if key not in _made:
        _made.clear()
        _made[key] = Fork(flags, tmpfs_size)
    return _made[key]


def parse(request, fds):
    """The fork's numbers, checked; raises ValueError saying what is wrong."""
    if len(fds) != FD_COUNT:
        raise ValueError(f"a fork needs {FD_COUNT} descriptors, {len(fds)} came")
    agent = request.get("agent")
    if not isinstance(agent, dict):
        raise ValueError("a fork needs its agent")
    argv, env, link_fd = agent.get("argv"), agent.get("env"), agent.get("link_fd")
    if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
            or not isinstance(env, list)
            or not all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
                       for e in env)
            or not isinstance(link_fd, int) or not 3 <= link_fd < 64):
        raise ValueError("a fork's agent needs argv, env and link_fd")
    numbers = [request.get(k) for k in ("unshare_flags", "tmpfs_size")]
    if not all(isinstance(n, int) and n > 0 for n in numbers):
        raise ValueError("a fork needs unshare_flags and tmpfs_size")
    home = request.get("home")
    if not isinstance(home, str) or not home.startswith("/"):
        raise ValueError("a fork needs the home's path")
    fork_steps(numbers[0], numbers[1])
    return argv, dict(env), link_fd, numbers[0], numbers[1], home


def become_copy(request, fds, keep, say_ready):
    """In the session's child: the steps above. Returns only in D, with D's
    control descriptor; C never returns. `keep`: the session's own
    descriptors that D closes itself (its old control channel);
    `say_ready(fd)`: D's first words on its new control channel."""
    conn_fd, tree_fd, link_fd, ctl_fd, out_fd, err_fd = fds
    # Above every number the steps below dup2 onto (the agent's link is < 64).
    # The daemon moves us into the new sandbox's cgroup meanwhile: nothing
    # is spawned before its `moved`, so every process of the new sandbox is
    # born there.
    try:
        os.write(conn_fd, b"child")  # the kernel attaches our pid
    except OSError:
        os._exit(70)
    conn = socket.socket(fileno=fcntl.fcntl(conn_fd, fcntl.F_DUPFD_CLOEXEC, 64))
    os.close(conn_fd)
    forget_pagemap()  # the session's memory: not to be held by a process made dumpable below
    step = "setup"
    try:
        argv, env, agent_link_fd, flags, tmpfs_size, home = parse(request, fds)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # the old sandbox's output is not ours to write
        os.close(null)
        for fd in keep:
            os.close(fd)
        fork = fork_steps(flags, tmpfs_size)
        try:
            cwd = os.getcwd()  # resolved again below: in the new home, not the old one
        except OSError:
            cwd = home
        # Out of the session's process group, which the parent's agent
        # signals as a whole to interrupt or end the session, and out of its
        # session, so that no process of the parent can join a group of the
        # copy's: what C starts (the new agent, the interpreter) is too.
        step = "session"
        os.setsid()
        step = "unshare"
        fork.check(fork.libc.unshare(flags), f"unshare({flags:#x})")
        step = "id maps"
        fork.check(fork.libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "PR_SET_DUMPABLE")
        fork.map_own_ids()
        step = "mounts"
        fork.mount(None, "/", None, _rt.MS_REC | _rt.MS_PRIVATE, None)
        fork.isolate_mounts()
        step = "loopback"
        _rt.loopback_up()
        step = "moved"
        _, anc, msg_flags, _ = conn.recvmsg(16, socket.CMSG_SPACE(4))
        _, log = _rt.parse_request(b"", 0, anc)
        if len(log) != 1 or msg_flags & socket.MSG_CTRUNC:
            for fd in log:
                os.close(fd)
            os._exit(0)  # refused, or the daemon went away
        step = "pid 1"
        # Started while the daemon copies the files: its working directory
        # is / (here, the parent's home until the new one is mounted).
        os.chdir("/")
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        fork.spawn_init(argv, env, {0: null, 1: log[0], 2: log[0], agent_link_fd: link_fd})
        os.close(null)
        step = "go"
        if conn.recv(16) != b"go":
            os._exit(0)  # refused, or the daemon went away
        step = "home"
        fork.check(fork.libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(tree_fd), b"",
                                     ctypes.c_int(_rt.AT_FDCWD), os.fsencode(home),
                                     ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
                   f"mounting the new home on {home}")
        os.close(tree_fd)
        for place in (cwd, home):
            try:
                os.chdir(place)
                break
            except OSError:
                pass
        fork.drop_all()
        step = "interpreter"
        if os.fork() == 0:
            # A group of its own, as every interpreter leads: its agent
            # signals it to interrupt or end a call, with what it started.
            os.setpgid(0, 0)
            conn.close()
            for fd in log + [link_fd]:
                os.close(fd)
            say_ready(ctl_fd)
            return interpreter(ctl_fd, out_fd, err_fd)
        conn.send(b"left")  # the daemon checks the new sandbox while this process ends
        os._exit(0)
    except BaseException as e:  # the daemon logs why, and removes what it made
        why = f"failed at {step}: {e}"[:4000].encode("utf-8", "replace")
        try:
            conn.send(why)
        except OSError:
            try:
                os.write(2, b"alcove_fork: " + why + b"\n")  # /dev/null, or a test's terminal
            except OSError:
                pass
        os._exit(70)


def interpreter(ctl_fd, out_fd, err_fd):
    """D: the session's output goes to the new pipes and every descriptor
    it had reads /dev/null; returns the new control channel's descriptor."""
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in (ctl_fd, null):
            try:
                # Not closed: an object of the session's still holds the number
                # and would close whatever took it next.
                os.dup2(null, fd)
            except OSError:
                pass  # the listing's own descriptor, gone already
    os.close(null)
    keep_pagemap()  # its own memory's, while it may open it
    # Dumpable only for its id maps: no command of the new sandbox (the same
    # user) may write into its memory through /proc either.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    return ctl_fd
