"""The request path's socket: both ends must hold the secret before anything is unpickled."""
from __future__ import annotations

import asyncio
import os
import pickle
import socket

import pytest

from shoal.exceptions import AuthenticationError
from shoal.serve import _wire


class _Boom:
    def __reduce__(self):   # unpickling this would run code: must never happen
        return (os.system, ("touch /nonexistent/should-not-run",))


def test_frames_flow_between_authenticated_ends(tmp_path):
    path = str(tmp_path / "r.sock")
    secret = os.urandom(32)

    async def main():
        got = []
        server = await _wire.serve_unix(path, secret,
                                        lambda conn, m: (got.append(m), conn.send(("ok", m))))
        answers = []
        done = asyncio.Event()
        client = await _wire.connect_unix(path, secret,
                                          lambda c, m: (answers.append(m), done.set()))
        for i in range(3):
            client.send((i, b"x" * 100_000))
        while len(answers) < 3:
            done.clear()
            await asyncio.wait_for(done.wait(), 10)
        client.close()
        server.close()
        return got, answers, oct(os.stat(path).st_mode & 0o777)
    got, answers, mode = asyncio.run(main())
    assert [m[0] for m in got] == [0, 1, 2] and answers[2] == ("ok", (2, b"x" * 100_000))
    assert mode == "0o600"


def test_a_client_without_the_secret_is_refused(tmp_path):
    path = str(tmp_path / "r.sock")

    async def main():
        got = []
        server = await _wire.serve_unix(path, os.urandom(32), lambda c, m: got.append(m))
        with pytest.raises((AuthenticationError, ConnectionError)):
            await _wire.connect_unix(path, os.urandom(32), lambda c, m: None, timeout=5)
        # a raw peer that skips the handshake and sends a pickle is cut off unread
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        await loop.sock_connect(s, path)
        await loop.sock_recv(s, 32)
        body = pickle.dumps(_Boom())
        await loop.sock_sendall(s, b"\0" * 64 + len(body).to_bytes(4, "little") + body)
        rest = await asyncio.wait_for(loop.sock_recv(s, 100), 5)
        s.close()
        server.close()
        return got, rest
    got, rest = asyncio.run(main())
    assert got == [] and rest == b""
