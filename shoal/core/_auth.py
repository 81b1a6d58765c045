"""Mutual challenge-response authentication on a fresh connection.

Both sides prove they hold the cluster secret (HMAC-SHA256 over a random
nonce chosen by the other side) before a single byte is unpickled.
"""
from __future__ import annotations

import hmac
import os
import socket

from shoal.exceptions import AuthenticationError

_NONCE = 32
_MAC = 32
_MAGIC = b"SHOAL1"


def _mac(secret: bytes, nonce: bytes, role: bytes) -> bytes:
    return hmac.new(secret, role + nonce, "sha256").digest()


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes from ``sock``; None if the peer closed first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = recv_exact(sock, n)
    if data is None:
        raise AuthenticationError("peer closed the connection during authentication")
    return data


def server_handshake(sock: socket.socket, secret: bytes, timeout: float = 10.0) -> None:
    """Authenticate the client on ``sock`` (the accepting side)."""
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        nonce = os.urandom(_NONCE)
        sock.sendall(_MAGIC + nonce)
        reply = _recv_exact(sock, _MAC + _NONCE)
        if not hmac.compare_digest(reply[:_MAC], _mac(secret, nonce, b"C")):
            raise AuthenticationError("a peer connected without the cluster secret; dropped it")
        sock.sendall(_mac(secret, reply[_MAC:], b"S"))
    except OSError as e:
        raise AuthenticationError(f"authentication failed: {e}") from e
    finally:
        sock.settimeout(old)


def client_handshake(sock: socket.socket, secret: bytes, timeout: float = 10.0) -> None:
    """Authenticate to the server on ``sock`` and check it holds the secret too."""
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        head = _recv_exact(sock, len(_MAGIC) + _NONCE)
        if head[:len(_MAGIC)] != _MAGIC:
            raise AuthenticationError("the server does not speak shoal's protocol")
        mine = os.urandom(_NONCE)
        sock.sendall(_mac(secret, head[len(_MAGIC):], b"C") + mine)
        proof = _recv_exact(sock, _MAC)
        if not hmac.compare_digest(proof, _mac(secret, mine, b"S")):
            raise AuthenticationError("the server could not prove it holds the cluster secret")
    except OSError as e:
        raise AuthenticationError(f"authentication failed: {e}") from e
    finally:
        sock.settimeout(old)
