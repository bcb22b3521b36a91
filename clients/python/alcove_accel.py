"""Client for alcove's accelerator service, for functions deployed with
--accel auto|cpu|gpu. Standard library only; Python 3.9 or newer.

    import alcove_accel
    acc = alcove_accel.connect()          # the socket alcove passed in
    c = acc.matmul(a, b, m, n, k)         # a, b: sequences of floats, row-major
    print(acc.last["device"], acc.last["seconds"])

Operands go through a memfd shared with the service (sealed against
shrinking), never through the socket; only a small JSON request and reply do.
"""

import array
import fcntl
import json
import mmap
import os
import socket

__all__ = ["connect", "Accel", "AccelError"]


class AccelError(Exception):
    """The service refused or failed an operation; the message says why."""


_SIZES = {"f32": 4}


class Accel:
    def __init__(self, sock):
        self.sock = sock
        self.last = None

    def _call(self, request, fd=None):
        body = json.dumps(request).encode()
        if fd is None:
            self.sock.send(body)
        else:
            socket.send_fds(self.sock, [body], [fd])
        reply = json.loads(self.sock.recv(65536) or b"{}")
        if not reply.get("ok"):
            raise AccelError(reply.get("error", "the service closed the connection"))
        self.last = reply
        return reply

    def info(self):
        """The devices the service has and this connection's placement."""
        return self._call({"op": "info"})["info"]

    def _run(self, request, operands, out_len):
        a, b = operands
        a_bytes, b_bytes = a.tobytes(), b.tobytes()
        size = len(a_bytes) + len(b_bytes) + out_len * 4
        fd = os.memfd_create("alcove-operands", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # Every page allocated here, charged to this function's memory
            # limit: the service refuses regions left as holes.
            os.posix_fallocate(fd, 0, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
            with mmap.mmap(fd, size) as mem:
                mem[: len(a_bytes)] = a_bytes
                mem[len(a_bytes) : len(a_bytes) + len(b_bytes)] = b_bytes
                request.update(a=0, b=len(a_bytes), c=len(a_bytes) + len(b_bytes), dtype="f32")
                self._call(request, fd)
                out = array.array("f")
                out.frombytes(mem[len(a_bytes) + len(b_bytes) :])
                return out
        finally:
            os.close(fd)

    def matmul(self, a, b, m, n, k):
        """a (m x k) times b (k x n), row-major f32; returns array('f') of m*n."""
        a, b = array.array("f", a), array.array("f", b)
        if len(a) != m * k or len(b) != k * n:
            raise AccelError(f"a has {len(a)} values and b {len(b)}; {m}x{k} and {k}x{n} need {m * k} and {k * n}")
        return self._run({"op": "matmul", "m": m, "n": n, "k": k}, (a, b), m * n)

    def batched_matmul(self, a, b, batch, m, n, k):
        """batch products packed one after another; returns array('f')."""
        a, b = array.array("f", a), array.array("f", b)
        return self._run({"op": "batched_matmul", "batch": batch, "m": m, "n": n, "k": k}, (a, b), batch * m * n)

    def relu(self, a):
        """max(a, 0) elementwise; returns array('f')."""
        a = array.array("f", a)
        return self._run({"op": "relu", "len": len(a)}, (a, array.array("f")), len(a))


def connect():
    """The accelerator connection alcove passed to this function."""
    fd = os.environ.get("ALCOVE_ACCEL_FD")
    if fd is None:
        raise AccelError("ALCOVE_ACCEL_FD is not set: deploy the function with --accel auto|cpu|gpu")
    return Accel(socket.socket(fileno=int(fd)))
