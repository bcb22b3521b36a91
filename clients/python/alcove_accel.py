"""Client for alcove's accelerator service, for functions deployed with
--accel auto|cpu|gpu. Standard library only; Python 3.9 or newer.

    import alcove_accel
    acc = alcove_accel.connect()          # the socket alcove passed in
    c = acc.matmul(a, b, m, n, k)         # a, b: sequences of floats, row-major
    c = acc.matmul(x, y, m, n, k, dtype="bf16")   # numpy arrays or raw bytes work too
    print(acc.last["device"], acc.last["seconds"])

Operands go through a memfd shared with the service (sealed against
shrinking), never through the socket; only a small JSON request and reply do.
"""

import array
import fcntl
import json
import math
import mmap
import os
import socket
import struct
import time

__all__ = ["connect", "Accel", "AccelError", "bf16_encode", "bf16_decode"]


class AccelError(Exception):
    """The service refused or failed an operation; the message says why."""


# Element types: (array typecode or None, bytes per element).
_TYPES = {"f32": ("f", 4), "f64": ("d", 8), "f16": ("e", 2), "bf16": (None, 2)}
_PAGE = 4096
# Work up to a 64x64x64 product runs in this process when numpy is there:
# a call to the service (a socket round trip, ~4 us here, plus the memfd)
# costs more than the product itself.
_LOCAL_FLOPS = 2 * 64**3
_numpy = None
# acc.last after work run here (no time: measuring it would cost more than a small product).
_LOCAL_REPLY = {"ok": True, "device": "cpu", "local": True}


def _np():
    """numpy if this function has it, else False (looked up once)."""
    global _numpy
    if _numpy is None:
        try:
            import numpy

            _numpy = numpy
        except ImportError:
            _numpy = False
    return _numpy


def bf16_encode(values):
    """Floats as bf16 bytes (rounded to nearest even, as numpy and torch do)."""
    words = array.array("I", array.array("f", values).tobytes())
    out = array.array("H")
    for w in words:
        if (w & 0x7F800000) == 0x7F800000 and (w & 0x007FFFFF):
            out.append(0x7FC0)  # NaN stays NaN
        else:
            out.append(((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF)
    return out.tobytes()


def bf16_decode(data):
    """bf16 bytes as a list of floats."""
    halves = array.array("H", bytes(data))
    return list(array.array("f", array.array("I", (h << 16 for h in halves)).tobytes()))


# numpy's names for each type's arrays (bf16: ml_dtypes' bfloat16, or raw 16-bit words).
_NUMPY_NAMES = {"f32": ("float32",), "f64": ("float64",), "f16": ("float16",), "bf16": ("bfloat16", "uint16", "int16")}


def _f16_bytes(values):
    """Floats as f16 bytes; beyond f16's range they become +-inf (as in numpy)."""
    big = 65520.0  # the first value that rounds past f16's largest, 65504
    clamped = [v if (v != v or -big < v < big) else math.copysign(math.inf, v) for v in map(float, values)]
    return struct.pack(f"{len(clamped)}e", *clamped)


def _operand(x, dtype, count):
    """x as the bytes of `count` values of `dtype`: any buffer (numpy array,
    array.array, bytes) taken as it is, else a sequence of floats. A numpy
    array must hold `dtype` values already: its bits are sent as they are."""
    if dtype not in _TYPES:
        raise AccelError(f"dtype {dtype!r}: use one of {', '.join(_TYPES)}")
    code, size = _TYPES[dtype]
    kind = getattr(x, "dtype", None)
    if kind is not None and str(kind) not in _NUMPY_NAMES[dtype]:
        raise AccelError(f"a numpy array of {kind} for dtype {dtype}: convert it (a.astype(numpy.{_NUMPY_NAMES[dtype][0]}))")
    try:
        view = memoryview(x)
    except TypeError:
        view = None
    if view is not None:
        try:
            data = view.cast("B")
        except TypeError:  # not contiguous
            data = view.tobytes()
    elif dtype == "bf16":
        data = bf16_encode(x)
    elif dtype == "f16":
        data = _f16_bytes(x)
    else:
        data = memoryview(array.array(code, x)).cast("B")
    if len(data) != count * size:
        raise AccelError(f"an operand of {len(data)} bytes; {count} values of {dtype} are {count * size}")
    return data


class Accel:
    def __init__(self, sock):
        self.sock = sock
        # What the last call says of itself; _LOCAL_REPLY (copied when read)
        # after work done here, so the shortcut below sets no new dict.
        self._last = None
        self._local = None  # may small work stay here (placement not gpu)?
        # Once it may: (numpy's array type, numpy's dtype per name) for
        # matmul's shortcut, which checks no more than it must.
        self._fast = None

    @property
    def last(self):
        """What the last call said of itself (device, seconds, ...), or None."""
        last = self._last
        return dict(last) if last is _LOCAL_REPLY else last

    def _here(self, dtype, flops, *operands):
        """numpy, if this work should run in this process: small, f32 or
        f64, numpy importable and the connection not placed on the GPU."""
        if flops > _LOCAL_FLOPS or dtype not in ("f32", "f64"):
            return None
        np = _np()
        if not np:
            return None
        if self._local is None:
            self._local = self.info()["placement"] != "gpu"
            if self._local:
                self._fast = (np.ndarray, {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64)})
        return np if self._local else None

    def _local_product(self, np, a, b, shape, dtype):
        """The product in this process, reading the operands exactly as the
        service would, and answering in the same form."""
        batch, m, n, k = shape
        kind = np.float32 if dtype == "f32" else np.float64
        lead = (batch,) if batch else ()
        def matrix(x, rows, cols):
            count = max(batch, 1) * rows * cols
            if type(x) is np.ndarray and x.dtype == kind and x.size == count:
                return x.reshape(lead + (rows, cols))  # the values the service would read
            return np.frombuffer(_operand(x, dtype, count), dtype=kind).reshape(lead + (rows, cols))

        c = matrix(a, m, k) @ matrix(b, k, n)
        self._last = _LOCAL_REPLY
        if isinstance(a, np.ndarray):
            return c
        result = array.array(_TYPES[dtype][0])
        result.frombytes(c.tobytes())
        return result

    def _call(self, request, fd=None):
        body = json.dumps(request).encode()
        if fd is None:
            self.sock.send(body)
        else:
            socket.send_fds(self.sock, [body], [fd])
        reply = json.loads(self.sock.recv(65536) or b"{}")
        if not reply.get("ok"):
            raise AccelError(reply.get("error", "the service closed the connection"))
        self._last = reply
        return reply

    def info(self):
        """The devices the service has and this connection's placement."""
        return self._call({"op": "info"})["info"]

    def _result(self, out, dtype, like, shape):
        """The result bytes as array('f'/'d'), or bytes for f16/bf16; as a
        numpy array of `shape` when the caller gave numpy arrays."""
        np = _np()
        if np and isinstance(like, np.ndarray):
            kind = {"f32": np.float32, "f64": np.float64, "f16": np.float16}.get(dtype)
            if kind is not None:
                return np.frombuffer(out, dtype=kind).reshape(shape)
        code = _TYPES[dtype][0]
        if code in ("f", "d"):
            result = array.array(code)
            result.frombytes(out)
            return result
        return out

    def _run(self, request, operands, out_count, dtype):
        a, b = operands
        la, lb, lc = len(a), len(b), out_count * _TYPES[dtype][1]
        size = la + lb + lc
        fd = os.memfd_create("alcove-operands", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, max(size, 1))
            # Every page allocated here, charged to this function's memory
            # limit: the service refuses regions left as holes.
            os.posix_fallocate(fd, 0, max(size, 1))
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
            with mmap.mmap(fd, max(size, 1)) as mem:
                mem[:la] = a
                mem[la : la + lb] = b
                # tmpfs counts pages only fallocated as holes: write each of the result's.
                for at in range(la + lb, size, _PAGE):
                    mem[at] = 0
                if lc:
                    mem[size - 1] = 0
                request.update(a=0, b=la, c=la + lb, dtype=dtype)
                self._call(request, fd)
                return mem[la + lb : size]
        finally:
            os.close(fd)

    def matmul(self, a, b, m, n, k, dtype="f32"):
        """a (m x k) times b (k x n), row-major. a and b: sequences of floats
        or buffers (numpy arrays, array.array, bytes) of `dtype` values, one
        of f32, f64, f16, bf16. Returns array('f') for f32, array('d') for
        f64, and the raw bytes for f16 and bf16 (bf16_decode, or
        numpy.frombuffer(..., numpy.float16)); given numpy arrays, an m x n
        numpy array (bf16 still as bytes). Products up to 64x64x64 in f32
        or f64 run in this process when numpy is importable (acc.last says
        "local")."""
        fast = self._fast
        # The shortcut, for the small numpy products an inner loop makes: the
        # arrays already of the dtype's kind and shape, so numpy's product
        # is what _local_product would compute. ndarray.dot, not `@`: for
        # two matrices it is the same product, and skips the ufunc machinery
        # matmul goes through (numpy 2.4, n=8: 0.64 us against 1.32).
        if fast is not None and type(a) is fast[0] and type(b) is fast[0]:
            kind = fast[1].get(dtype)
            if (
                kind is not None
                and a.dtype is kind
                and b.dtype is kind
                and a.shape == (m, k)
                and b.shape == (k, n)
                and 2 * m * n * k <= _LOCAL_FLOPS
            ):
                self._last = _LOCAL_REPLY
                return a.dot(b)
        np = self._here(dtype, 2 * m * n * k)
        if np:
            return self._local_product(np, a, b, (0, m, n, k), dtype)
        ops = _operand(a, dtype, m * k), _operand(b, dtype, k * n)
        out = self._run({"op": "matmul", "m": m, "n": n, "k": k}, ops, m * n, dtype)
        return self._result(out, dtype, a, (m, n))

    def batched_matmul(self, a, b, batch, m, n, k, dtype="f32"):
        """batch products packed one after another, as matmul."""
        np = self._here(dtype, 2 * batch * m * n * k)
        if np:
            return self._local_product(np, a, b, (batch, m, n, k), dtype)
        ops = _operand(a, dtype, batch * m * k), _operand(b, dtype, batch * k * n)
        request = {"op": "batched_matmul", "batch": batch, "m": m, "n": n, "k": k}
        out = self._run(request, ops, batch * m * n, dtype)
        return self._result(out, dtype, a, (batch, m, n))

    def relu(self, a, dtype="f32"):
        """max(a, 0) elementwise (NaN becomes 0), as matmul (always in the service)."""
        count = memoryview(a).nbytes // _TYPES[dtype][1] if _is_buffer(a) else len(a)
        out = self._run({"op": "relu", "len": count}, (_operand(a, dtype, count), b""), count, dtype)
        return self._result(out, dtype, a, (count,))


def _is_buffer(x):
    try:
        memoryview(x)
        return True
    except TypeError:
        return False


def connect():
    """The accelerator connection alcove passed to this function."""
    fd = os.environ.get("ALCOVE_ACCEL_FD")
    if fd is None:
        raise AccelError("ALCOVE_ACCEL_FD is not set: deploy the function with --accel auto|cpu|gpu")
    return Accel(socket.socket(fileno=int(fd)))
