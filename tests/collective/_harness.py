"""Run a function on N rank processes that form a group; always cleans them up."""
from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import traceback

from shoal.core.kv import TCPStore

_CTX = mp.get_context("spawn")


def _rank_main(fn, rank, world, port, secret, backend, name, timeout, config, q, args, env):
    os.environ.update(env or {})
    try:
        from shoal import collective
        store = TCPStore("127.0.0.1", port, secret=secret)
        comm = collective.init_group(rank, world, store, backend=backend, name=name,
                                     timeout=timeout, config=config)
        try:
            result = fn(comm, *args)
        finally:
            comm.destroy()
        q.put((rank, "ok", result))
    except BaseException as e:  # reported to the test
        q.put((rank, "error", (type(e).__name__, str(e), traceback.format_exc())))


class RankError(Exception):
    pass


def run_ranks(fn, world: int, *args, backend="native", name="t", timeout=30.0, config=None,
              wait=90.0, env=None, allow_errors=False):
    """Results of ``fn(comm, *args)`` on every rank, in rank order.

    With ``allow_errors`` a rank's exception comes back as ("error", type, message).
    """
    secret = secrets.token_bytes(16)
    server = TCPStore("127.0.0.1", 0, secret=secret, is_server=True)
    q = _CTX.Queue()
    procs = [_CTX.Process(target=_rank_main, args=(fn, r, world, server.port, secret, backend, name,
                                                   timeout, config, q, args, env), daemon=True)
             for r in range(world)]
    try:
        for p in procs:
            p.start()
        out = {}
        for _ in range(world):
            rank, status, value = q.get(timeout=wait)
            out[rank] = (status, value)
        results = []
        for r in range(world):
            status, value = out[r]
            if status == "error" and not allow_errors:
                raise RankError(f"rank {r} raised {value[0]}: {value[1]}\n{value[2]}")
            results.append(("error",) + tuple(value[:2]) if status == "error" else value)
        return results
    finally:
        for p in procs:
            if p.pid is None:
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        server.close()
