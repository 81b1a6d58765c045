"""The request path between routers and replicas: framed pickles over a Unix socket.

Deploying goes through shoal's actors (the authenticated cluster); requests
do not, because a call through the cluster costs two extra hops through
the scheduler. Instead each replica listens on a Unix socket in a directory
only this user can enter, and both ends prove they hold the application's
secret (HMAC over a nonce the other side chose, the secret itself handed
out through the cluster) before a byte is unpickled. Frames written in one
event-loop turn leave in one send.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import pickle
import struct

from shoal.exceptions import AuthenticationError

_LEN = struct.Struct("<I")
_NONCE = 32
_MAC = 32

# Message kinds (router -> replica) and statuses (replica -> router).
CALL, HTTP, METRICS = 0, 1, 2
OK, ERR, ITEM, END = 0, 1, 2, 3


def _mac(secret: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, role + nonce, "sha256").digest()


class FramedProtocol(asyncio.Protocol):
    """One authenticated connection; ``on_message(conn, msg)`` gets each frame."""

    def __init__(self, secret: bytes, server: bool, on_message, on_lost=None):
        self.secret = secret
        self.server = server
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport = None
        self.buf = bytearray()
        self.authed = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False
        self._out: list = []
        self._nonce = os.urandom(_NONCE)

    # -------------------------------------------------------------- connection
    def connection_made(self, transport):
        self.transport = transport
        if self.server:
            transport.write(self._nonce)

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(AuthenticationError(
                "the replica closed the connection during authentication"))
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data):
        self.buf += data
        if not self.authed and not self._authenticate():
            return
        buf, off, n = self.buf, 0, len(self.buf)
        msgs = []
        while n - off >= 4:
            (ln,) = _LEN.unpack_from(buf, off)
            if n - off - 4 < ln:
                break
            msgs.append(pickle.loads(memoryview(buf)[off + 4: off + 4 + ln]))
            off += 4 + ln
        if off:
            del buf[:off]
        for m in msgs:
            self.on_message(self, m)

    def _authenticate(self) -> bool:
        """Run the handshake on what has arrived; True once authenticated."""
        buf = self.buf
        if self.server:   # got: client nonce + mac over our nonce
            if len(buf) < _NONCE + _MAC:
                return False
            peer_nonce, mac = bytes(buf[:_NONCE]), bytes(buf[_NONCE:_NONCE + _MAC])
            del buf[:_NONCE + _MAC]
            if not hmac.compare_digest(mac, _mac(self.secret, b"C", self._nonce)):
                self.transport.abort()
                return False
            self.transport.write(_mac(self.secret, b"S", peer_nonce))
        else:
            if not self.ready.done() and self._peer_nonce is None:   # got: server nonce
                if len(buf) < _NONCE:
                    return False
                self._peer_nonce = bytes(buf[:_NONCE])
                del buf[:_NONCE]
                self.transport.write(self._nonce + _mac(self.secret, b"C", self._peer_nonce))
            if len(buf) < _MAC:
                return False
            mac = bytes(buf[:_MAC])
            del buf[:_MAC]
            if not hmac.compare_digest(mac, _mac(self.secret, b"S", self._nonce)):
                self.transport.abort()
                self.ready.set_exception(AuthenticationError(
                    "the replica's socket answered without the application's secret"))
                return False
        self.authed = True
        if not self.ready.done():
            self.ready.set_result(None)
        return True

    _peer_nonce = None

    # -------------------------------------------------------------- sending
    def send(self, msg) -> None:
        """Queue ``msg``; frames queued in one loop turn go out in one write."""
        if self.closed:
            return
        body = pickle.dumps(msg, protocol=5)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(_LEN.pack(len(body)))
        self._out.append(body)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed:
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve_unix(path: str, secret: bytes, on_message, on_lost=None):
    """Listen on ``path`` (owner-only); returns the asyncio server."""
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(
        lambda: FramedProtocol(secret, True, on_message, on_lost), path)
    os.chmod(path, 0o600)
    return server


async def connect_unix(path: str, secret: bytes, on_message, on_lost=None,
                       timeout: float = 10.0) -> FramedProtocol:
    """Connect and authenticate to a replica's socket."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_unix_connection(
        lambda: FramedProtocol(secret, False, on_message, on_lost), path), timeout)
    await asyncio.wait_for(proto.ready, timeout)
    return proto
