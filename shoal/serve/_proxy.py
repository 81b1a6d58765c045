"""The HTTP proxy: holds the listening socket, lends it to replicas, answers while none does.

It runs as its own actor, so parsing HTTP never competes with the driver
(where the local backend's scheduler runs) for one interpreter lock. It
binds the serve port once and keeps it for the life of serve; replicas of
ingress deployments borrow the socket (see _front) and answer HTTP
themselves. While no replica serves (before the first one is up, all of
them replaced at once, replicas on another host), the proxy accepts and
routes every request through its routers. It also answers other
processes' scrapes of its figures over its own authenticated Unix socket.
"""
from __future__ import annotations

import asyncio
import os

from shoal.serve import _front, _wire
from shoal.serve._router import registry


class Proxy:
    """The actor holding serve's HTTP port."""

    def __init__(self, host: str, port: int, body_limit: int, table: dict, routes: dict,
                 secret: bytes, sock_dir: str):
        registry.set_loop(asyncio.get_running_loop())
        registry.update(table)
        self.host, self.port, self.body_limit = host, port, body_limit
        self.secret = secret
        self.front = _front.HttpFront(body_limit, routes)
        self.http = _front.UvicornOn(self.front)
        self.sock = None
        self.lender = None
        self.wire = None
        self.lend_path = os.path.join(sock_dir, "http-listener.sock")
        self.wire_path = os.path.join(sock_dir, "proxy.sock")

    async def start(self) -> tuple:
        """Bind the port and accept; returns (port, path where replicas borrow the socket,
        path of the proxy's figures)."""
        try:
            self.sock = _front.bind(self.host, self.port)
        except OSError as e:
            raise OSError(f"the HTTP proxy could not listen on {self.host}:{self.port} ({e}); "
                          "pick another port") from None
        self.port = self.sock.getsockname()[1]
        self.lender = _front.SocketLender(self.lend_path, self.secret, self.sock)
        self.wire = await _wire.serve_unix(self.wire_path, self.secret, self._on_message)
        await self.http.start(self.sock)
        return self.port, self.lend_path, self.wire_path

    def _on_message(self, conn, msg) -> None:
        rid, kind, _ = msg
        if kind == _wire.METRICS:
            conn.send((rid, _wire.OK, self.front.snapshot()))

    async def update_routes(self, table: dict, routes: dict, peers: list, accept: bool) -> None:
        """New routes; ``accept``: serve HTTP here (no replica does)."""
        registry.update(table)
        self.front.update(routes, peers, self.secret)
        if accept and not self.http.running:
            await self.http.start(self.sock)
        elif not accept and self.http.running:
            asyncio.ensure_future(self.http.stop(1.0))

    async def stats(self) -> dict:
        return {"queued": registry.queued()}

    async def stop(self) -> None:
        await self.http.stop(0.5)
        if self.lender is not None:
            self.lender.close()
        if self.wire is not None:
            self.wire.close()
        if self.sock is not None:
            self.sock.close()
        registry.close()
