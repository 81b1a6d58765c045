"""Length-prefixed pickled messages between the driver and its workers.

Both ends are authenticated (``_auth``) before the first message is read,
so unpickling here only ever sees bytes from a peer holding the secret.
"""
from __future__ import annotations

import errno
import pickle
import socket
import struct
import threading

_LEN = struct.Struct("<I")
_HDR = _LEN.size


def encode(msg) -> bytes:
    body = pickle.dumps(msg, protocol=5)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Accumulates bytes and yields whole messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data) -> list:
        buf = self._buf
        buf += data
        out, off, n = [], 0, len(buf)
        while n - off >= _HDR:
            (ln,) = _LEN.unpack_from(buf, off)
            if n - off - _HDR < ln:
                break
            out.append(pickle.loads(memoryview(buf)[off + _HDR: off + _HDR + ln]))
            off += _HDR + ln
        if off:
            del buf[:off]
        return out


class BlockingConn:
    """The worker's end: blocking sends under a lock (the worker reads the socket itself)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()

    def send_bytes(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def send(self, msg) -> None:
        self.send_bytes(encode(msg))


class NonBlockingConn:
    """The driver's end: sends never block; what the kernel does not take
    now is kept and flushed by the I/O loop when the socket is writable."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.reader = FrameReader()
        self.pending = bytearray()
        self.closed = False

    def send(self, msg) -> bool:
        """Queue ``msg``; returns True when bytes are left for the I/O loop."""
        return self.send_bytes(encode(msg))

    def send_bytes(self, data: bytes) -> bool:
        if self.closed:
            return False
        if self.pending:
            self.pending += data
            return True
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.closed = True
            return False
        if n < len(data):
            self.pending += memoryview(data)[n:]
            return True
        return False

    def flush(self) -> bool:
        """Send what is pending; True while bytes remain."""
        if not self.pending or self.closed:
            return False
        try:
            n = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.closed = True
            return False
        del self.pending[:n]
        return bool(self.pending)

    def read(self) -> list | None:
        """Messages available now; None when the peer closed."""
        out = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    return None if not out else out + [None]
                raise
            if not data:
                return out + [None] if out else None
            out.extend(self.reader.feed(data))
            if len(data) < (1 << 20):
                return out
