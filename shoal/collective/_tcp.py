"""Authenticated TCP connections between the ranks of a group.

Each rank listens on one port (published in the store); a pair of ranks
shares one connection per channel, opened lazily by the lower rank and
authenticated with the group's secret (HMAC challenge-response, both ways)
before a byte of data flows. Channel 0 carries collectives, channel 1
point-to-point messages, so a ``send`` never interleaves with a collective.
Payloads are raw bytes whose sizes both sides know, so nothing is unpickled
from the wire here.
"""
from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time

import numpy as np

from shoal.core._auth import client_handshake, server_handshake
from shoal.exceptions import AuthenticationError, CollectiveError

_HELLO = struct.Struct("!qq")
# A peer's address is in the store only once it listens there, so a refused or
# unroutable connection means a wrong address: give up well before a collective's timeout.
CONNECT_TIMEOUT = 30.0
# Sends up to this size are written by the calling thread when nothing is queued
# (one write that never blocks): a small collective pays no hand-off to the sender thread.
INLINE_SEND_BYTES = 64 << 10


class TcpMesh:
    """Lazy, authenticated full mesh of TCP connections among ``world_size`` ranks."""

    def __init__(self, rank: int, world_size: int, secret: bytes, listen_host: str,
                 timeout: float):
        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self._secret = secret
        self._listener = socket.create_server((listen_host, 0))
        self._listener.settimeout(0.2)
        self.address = (listen_host, self._listener.getsockname()[1])
        self._peers: dict[int, tuple[str, int]] = {}
        self._conns: dict[tuple[int, int], socket.socket] = {}
        self._cond = threading.Condition()
        self._connect_lock = threading.Lock()
        self._closed = False
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"shoal-collective-accept-{rank}")
        self._accept_thread.start()
        self._send_q: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        self._queued = 0          # sends queued or in progress on the sender thread
        self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                        name=f"shoal-collective-send-{rank}")
        self._sender.start()

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        self._peers = dict(peers)

    # ------------------------------------------------------------ connecting
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            threading.Thread(target=self._admit, args=(conn,), daemon=True).start()

    def _admit(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server_handshake(conn, self._secret)
            peer, channel = _HELLO.unpack(_recv_exact(conn, _HELLO.size, -1))
            # One timeout for the socket's life: the sender thread and a receiving thread
            # share it, and toggling blocking mode under a concurrent sendall breaks it.
            conn.settimeout(self.timeout)
        except (AuthenticationError, OSError, CollectiveError):
            conn.close()
            return
        with self._cond:
            self._conns[(int(peer), int(channel))] = conn
            self._cond.notify_all()

    def wait_connected(self, peer: int, timeout: float, channel: int = 0) -> bool:
        """Wait up to ``timeout`` for ``peer`` (a lower rank) to open ``channel``; True if it did."""
        key = (peer, channel)
        with self._cond:
            return self._cond.wait_for(lambda: key in self._conns or self._closed, timeout) \
                and key in self._conns

    def conn(self, peer: int, channel: int = 0) -> socket.socket:
        """The connection to ``peer`` on ``channel`` (opened on first use)."""
        key = (peer, channel)
        c = self._conns.get(key)
        if c is not None:
            return c
        if self.rank < peer:
            with self._connect_lock:
                c = self._conns.get(key)
                if c is None:
                    c = self._connect(peer, channel)
                    with self._cond:
                        self._conns[key] = c
            return c
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while key not in self._conns:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    host, port = self.address
                    raise CollectiveError(
                        f"rank {peer} did not connect to rank {self.rank} at {host}:{port} within "
                        f"{self.timeout}s; is it alive, and can it reach that address? (if not, "
                        f"set SHOAL_COLLECTIVE_HOST on rank {self.rank} to one it can reach)")
                self._cond.wait(min(left, 0.5))
            return self._conns[key]

    def _connect(self, peer: int, channel: int) -> socket.socket:
        host, port = self._peers[peer]
        bound = min(self.timeout, CONNECT_TIMEOUT)
        deadline = time.monotonic() + bound
        while True:
            try:
                s = socket.create_connection((host, port), timeout=min(10.0, bound))
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise CollectiveError(
                        f"rank {self.rank} could not connect to rank {peer} at {host}:{port} (the "
                        f"address rank {peer} advertised) within {bound:.0f}s: {e}; if rank {peer} "
                        "is on another host, set SHOAL_COLLECTIVE_HOST on it to an address this "
                        "host reaches (on Ray the node IP is used by default)") from e
                time.sleep(0.05)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client_handshake(s, self._secret)
            s.sendall(_HELLO.pack(self.rank, channel))
        except (AuthenticationError, OSError) as e:
            s.close()
            raise CollectiveError(f"rank {peer} at {host}:{port} failed authentication: {e}") from e
        s.settimeout(self.timeout)
        return s

    # -------------------------------------------------------------- moving
    def send(self, peer: int, data, channel: int = 0) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        sock = self.conn(peer, channel)
        try:
            sock.sendall(view)
        except OSError as e:
            raise CollectiveError(f"lost the connection to rank {peer} while sending: {e}") from e

    def recv_into(self, peer: int, out, channel: int = 0) -> None:
        view = memoryview(out).cast("B")
        if not view.nbytes:
            return
        _recv_into(self.conn(peer, channel), view, peer, self.timeout)

    def send_async(self, peer: int, data, channel: int = 0,
                   inline_bytes: int = INLINE_SEND_BYTES, head=None) -> "_Pending":
        """Send on the background sender thread (while this thread receives).

        A send of at most ``inline_bytes`` with nothing queued before it is
        written here at once, without blocking; what the socket does not take
        goes to the thread, after anything queued before it. ``head``, if
        given, goes just before ``data`` in the stream, in the same write
        (``writev``: one system call, no copy).
        """
        p = _Pending()
        view = memoryview(data).cast("B")
        parts = [view] if head is None else [memoryview(head).cast("B"), view]
        total = sum(v.nbytes for v in parts)
        with self._send_lock:
            if total <= inline_bytes and self._queued == 0:
                try:
                    sent = _write_now(self.conn(peer, channel), parts)
                except OSError as e:
                    p.done(CollectiveError(f"lost the connection to rank {peer} while sending: {e}"))
                    return p
                except CollectiveError as e:
                    p.done(e)
                    return p
                if sent == total:
                    p.done(None)
                    return p
                while sent >= parts[0].nbytes:    # drop what was written
                    sent -= parts[0].nbytes
                    parts.pop(0)
                parts[0] = parts[0][sent:]
            self._queued += 1
            self._send_q.put((peer, parts, channel, p))
        return p

    def sendrecv(self, dst: int, send, src: int, recv, channel: int = 0) -> None:
        pending = self.send_async(dst, send, channel) if memoryview(send).nbytes else None
        try:
            self.recv_into(src, recv, channel)
        finally:
            if pending is not None:
                pending.wait(self.timeout)

    def _send_loop(self) -> None:
        run_send_queue(self._send_q, self.send, self._sent)

    def _sent(self, peer: int) -> None:
        with self._send_lock:
            self._queued -= 1

    def close(self) -> None:
        self._closed = True
        self._send_q.put(None)
        try:
            self._listener.close()
        except OSError:
            pass
        for c in list(self._conns.values()):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()


def run_send_queue(q, send, sent) -> None:
    """A sender thread's loop: ``send(peer, data, channel)`` each part of every
    ``(peer, parts, channel, pending)`` taken from ``q`` until None; ``sent(peer)``
    after each item, then its ``pending`` is done (with the error, if one was raised)."""
    while True:
        item = q.get()
        if item is None:
            return
        peer, parts, channel, pending = item
        try:
            for data in parts:
                send(peer, data, channel)
            err = None
        except BaseException as e:  # handed to the waiting thread
            err = e
        sent(peer)
        pending.done(err)


class _Pending:
    def __init__(self):
        self._ev = threading.Event()
        self._err: BaseException | None = None

    def done(self, err) -> None:
        self._err = err
        self._ev.set()

    def is_done(self) -> bool:
        return self._ev.is_set()

    def wait(self, timeout: float) -> None:
        if not self._ev.wait(timeout):
            raise CollectiveError(f"a send did not complete within {timeout}s")
        if self._err is not None:
            raise self._err


def _write_now(sock: socket.socket, views: list) -> int:
    """Write what the socket takes now of ``views``, in order (its descriptor is non-blocking when it has a timeout)."""
    if sock.gettimeout() is None:     # a blocking descriptor: leave it to the sender thread
        return 0
    try:
        return os.writev(sock.fileno(), views) if len(views) > 1 else os.write(sock.fileno(), views[0])
    except BlockingIOError:
        return 0


def _recv_into(sock: socket.socket, view: memoryview, peer: int, timeout: float) -> None:
    got, n = 0, view.nbytes
    try:
        while got < n:
            k = sock.recv_into(view[got:], min(n - got, 1 << 24))
            if k == 0:
                raise CollectiveError(f"rank {peer} closed its connection during a collective "
                                      "(did it die?); destroy() this group and form a new one")
            got += k
    except (socket.timeout, TimeoutError):
        raise CollectiveError(f"rank {peer} sent nothing for {timeout}s during a collective") from None
    except OSError as e:
        raise CollectiveError(f"lost the connection to rank {peer}: {e}") from e


def _recv_exact(sock: socket.socket, n: int, peer: int) -> bytes:
    buf = bytearray(n)
    sock.settimeout(10)
    _recv_into(sock, memoryview(buf), peer, 10)
    return bytes(buf)


def as_bytes(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)
