"""A small authenticated key-value store: the rendezvous point of a cluster.

``TCPStore`` hosts the store (a thread in the hosting process) and/or
connects to it. The wire format is length-prefixed byte strings, so nothing
is ever unpickled, and every connection first proves it holds the secret.

    server = TCPStore(is_server=True, secret=s)          # binds 127.0.0.1
    client = TCPStore(host, server.port, secret=s)
    client.set("k", b"v"); client.get("k", timeout=5); client.add("n", 1)
"""
from __future__ import annotations

import socket
import struct
import threading
import time

from shoal.core._auth import client_handshake, recv_exact, server_handshake
from shoal.exceptions import AuthenticationError, GetTimeoutError, ShoalError

_SET, _GET, _ADD, _WAIT, _DELETE, _CHECK, _KEYS, _CAS = range(1, 9)
_OK, _TIMEOUT, _MISSING = 0, 1, 2
_U32 = struct.Struct("!I")


def _pack(parts: list[bytes]) -> bytes:
    out = [_U32.pack(len(parts))]
    for p in parts:
        out.append(_U32.pack(len(p)))
        out.append(p)
    body = b"".join(out)
    return _U32.pack(len(body)) + body


def _unpack(body: bytes) -> list[bytes]:
    (n,), off, parts = _U32.unpack_from(body, 0), 4, []
    for _ in range(n):
        (ln,) = _U32.unpack_from(body, off)
        parts.append(body[off + 4: off + 4 + ln])
        off += 4 + ln
    return parts


def _recv_frame(sock: socket.socket) -> bytes | None:
    head = recv_exact(sock, 4)
    if head is None:
        return None
    return recv_exact(sock, _U32.unpack(head)[0])


def _to_bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store values are bytes or str, got {type(value).__name__}; "
                    "encode the value first (for example with json or pickle on a trusted side)")


class KVStore:
    """Interface of a cluster key-value store (every method is thread-safe)."""

    def set(self, key: str, value: bytes | str) -> None: ...
    def get(self, key: str, timeout: float | None = None) -> bytes: ...
    def add(self, key: str, amount: int = 1) -> int: ...
    def wait(self, keys: list[str], timeout: float | None = None) -> None: ...
    def delete(self, key: str) -> bool: ...
    def check(self, keys: list[str]) -> bool: ...
    def keys(self, prefix: str = "") -> list[str]: ...
    def compare_set(self, key: str, expected: bytes | None, desired: bytes) -> bytes: ...

    def reachable_host(self) -> str | None:
        """An address of this process that the store's other users can reach, or None.

        Listeners for peers (a collective group's connections) advertise it.
        None means the store cannot tell; callers fall back to 127.0.0.1.
        """
        return None


class _StoreServer:
    def __init__(self, host: str, port: int, secret: bytes):
        self._secret = secret
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="shoal-kv-server", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="shoal-kv-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server_handshake(conn, self._secret)
        except (AuthenticationError, OSError):
            conn.close()
            return
        self._conns.add(conn)
        try:
            while True:
                frame = _recv_frame(conn)
                if frame is None:
                    return
                parts = _unpack(frame)
                conn.sendall(_pack(self._handle(parts[0][0], parts[1:])))
        except OSError:
            return
        finally:
            self._conns.discard(conn)
            conn.close()

    def _deadline_wait(self, pred, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not pred():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._cond.wait(left if left is None else min(left, 1.0))
            if self._closed:
                return False
        return True

    def _handle(self, op: int, args: list[bytes]) -> list[bytes]:
        with self._cond:
            if op == _SET:
                self._data[args[0].decode()] = args[1]
                self._cond.notify_all()
                return [bytes([_OK])]
            if op == _GET:
                key, timeout = args[0].decode(), _timeout(args[1])
                if not self._deadline_wait(lambda: key in self._data, timeout):
                    return [bytes([_TIMEOUT])]
                return [bytes([_OK]), self._data[key]]
            if op == _ADD:
                key = args[0].decode()
                value = int(self._data.get(key, b"0")) + int(args[1])
                self._data[key] = str(value).encode()
                self._cond.notify_all()
                return [bytes([_OK]), str(value).encode()]
            if op == _WAIT:
                keys, timeout = [k.decode() for k in args[1:]], _timeout(args[0])
                ok = self._deadline_wait(lambda: all(k in self._data for k in keys), timeout)
                return [bytes([_OK if ok else _TIMEOUT])]
            if op == _DELETE:
                existed = self._data.pop(args[0].decode(), None) is not None
                return [bytes([_OK if existed else _MISSING])]
            if op == _CHECK:
                ok = all(k.decode() in self._data for k in args)
                return [bytes([_OK if ok else _MISSING])]
            if op == _KEYS:
                prefix = args[0].decode()
                return [bytes([_OK])] + [k.encode() for k in self._data if k.startswith(prefix)]
            if op == _CAS:
                key, has_expected, expected, desired = args[0].decode(), args[1] == b"1", args[2], args[3]
                current = self._data.get(key)
                if (current is None and not has_expected) or (has_expected and current == expected):
                    self._data[key] = desired
                    self._cond.notify_all()
                    return [bytes([_OK]), desired]
                return [bytes([_OK]), current if current is not None else b""]
        return [bytes([_MISSING])]

    def close(self) -> None:
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        try:
            self._sock.close()
        except OSError:
            pass
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2)


def _timeout(raw: bytes) -> float | None:
    t = float(raw)
    return None if t < 0 else t


class TCPStore(KVStore):
    """Key-value store over authenticated TCP.

    Args:
        host: address of the server (clients) or to bind (server). Binds
            127.0.0.1 unless told otherwise.
        port: server port; 0 lets the server pick one (read ``.port``).
        secret: shared secret that every peer must hold.
        is_server: host the store in this process (a background thread).
        timeout: seconds to keep trying to connect to the server.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, secret: bytes,
                 is_server: bool = False, timeout: float = 30.0):
        if not secret:
            raise ValueError("TCPStore needs a non-empty secret: every connection is authenticated")
        self.host = host
        self._secret = secret
        self._server = _StoreServer(host, port, secret) if is_server else None
        self.port = self._server.port if self._server else port
        self._lock = threading.Lock()
        self._timeout = timeout
        self._sock = self._connect(timeout)

    def _connect(self, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        host = "127.0.0.1" if self._server and self.host in ("0.0.0.0", "") else self.host
        while True:
            try:
                sock = socket.create_connection((host, self.port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client_handshake(sock, self._secret)
                sock.settimeout(None)
                return sock
            except AuthenticationError:
                raise
            except OSError as e:
                if time.monotonic() > deadline:
                    raise ShoalError(f"could not reach the key-value store at {host}:{self.port} "
                                     f"within {timeout}s ({e}); is the server (rank 0) running?") from e
                time.sleep(0.05)

    def _call(self, op: int, *args: bytes) -> list[bytes]:
        with self._lock:
            if self._sock is None:     # the last exchange was cut short: start clean
                self._sock = self._connect(self._timeout)
            try:
                self._sock.sendall(_pack([bytes([op]), *args]))
                frame = _recv_frame(self._sock)
            except OSError as e:
                self._drop_connection()
                raise ShoalError(f"lost the connection to the key-value store at "
                                 f"{self.host}:{self.port}: {e}") from e
            except BaseException:
                # Interrupted mid-exchange (a cancelled task, KeyboardInterrupt): a reply
                # may be left half-read, so the next call must not read from this socket.
                self._drop_connection()
                raise
        if frame is None:
            raise ShoalError(f"the key-value store at {self.host}:{self.port} closed the connection")
        return _unpack(frame)

    def set(self, key: str, value: bytes | str) -> None:
        self._call(_SET, key.encode(), _to_bytes(value))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """Value of ``key``, waiting up to ``timeout`` seconds for it to be set."""
        r = self._call(_GET, key.encode(), str(-1 if timeout is None else timeout).encode())
        if r[0][0] == _TIMEOUT:
            raise GetTimeoutError(f"key {key!r} was not set within {timeout}s")
        return r[1]

    def add(self, key: str, amount: int = 1) -> int:
        return int(self._call(_ADD, key.encode(), str(int(amount)).encode())[1])

    def wait(self, keys: list[str], timeout: float | None = None) -> None:
        r = self._call(_WAIT, str(-1 if timeout is None else timeout).encode(),
                       *[k.encode() for k in keys])
        if r[0][0] == _TIMEOUT:
            raise GetTimeoutError(f"keys {keys!r} were not all set within {timeout}s")

    def delete(self, key: str) -> bool:
        return self._call(_DELETE, key.encode())[0][0] == _OK

    def check(self, keys: list[str]) -> bool:
        return self._call(_CHECK, *[k.encode() for k in keys])[0][0] == _OK

    def keys(self, prefix: str = "") -> list[str]:
        return [k.decode() for k in self._call(_KEYS, prefix.encode())[1:]]

    def compare_set(self, key: str, expected: bytes | None, desired: bytes) -> bytes:
        """Set ``key`` to ``desired`` if it equals ``expected`` (None: unset); returns the value now."""
        return self._call(_CAS, key.encode(), b"0" if expected is None else b"1",
                          expected or b"", _to_bytes(desired))[1]

    def reachable_host(self) -> str | None:
        """The local address of this client's connection: the interface facing the server."""
        with self._lock:
            if self._sock is None:
                self._sock = self._connect(self._timeout)
            try:
                return self._sock.getsockname()[0]
            except OSError:
                return None

    def _drop_connection(self) -> None:
        sock, self._sock = self._sock, None
        try:
            sock.close()
        except OSError:
            pass

    def close(self) -> None:
        if self._sock is not None:
            self._drop_connection()
        if self._server is not None:
            self._server.close()

    def __reduce__(self):
        # A store travels to other processes as its address and secret (a client there).
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return (_rebuild_store, (host, self.port, self._secret))


def _rebuild_store(host: str, port: int, secret: bytes) -> TCPStore:
    return TCPStore(host, port, secret=secret)


