"""Run a function on N rank processes that form a group; always cleans them up."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import secrets
import time
import traceback

from shoal.core.kv import TCPStore

_CTX = mp.get_context("spawn")


def _rank_main(fn, rank, world, port, secret, backend, name, timeout, config, q, args, env):
    # "{rank}" in a value becomes the rank (e.g. a host identity of its own per rank)
    os.environ.update({k: v.replace("{rank}", str(rank)) for k, v in (env or {}).items()})
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
        deadline = time.monotonic() + wait
        while len(out) < world:
            try:
                rank, status, value = q.get(timeout=0.2)
                out[rank] = (status, value)
                continue
            except queue.Empty:
                pass
            for r, p in enumerate(procs):  # a rank that exited without a result died
                if r not in out and p.exitcode is not None and q.empty():
                    out[r] = ("died", p.exitcode)
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks {sorted(set(range(world)) - set(out))} gave no result "
                                   f"within {wait}s")
        results = []
        for r in range(world):
            status, value = out[r]
            if status == "died":
                if not allow_errors:
                    raise RankError(f"rank {r} died with exit code {value}")
                results.append(("died", value))
                continue
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


def _pool_main(rank, port, secret, inbox, outbox):
    from shoal import collective
    store = TCPStore("127.0.0.1", port, secret=secret)
    while True:
        job = inbox.get()
        if job is None:
            return
        fn, world, backend, name, timeout, config, args = job
        try:
            comm = collective.init_group(rank, world, store, backend=backend, name=name,
                                         timeout=timeout, config=config)
            try:
                result = fn(comm, *args)
            finally:
                comm.destroy()
            outbox.put((rank, "ok", result))
        except BaseException as e:  # reported to the test
            outbox.put((rank, "error", (type(e).__name__, str(e), traceback.format_exc())))


class RankPool:
    """``size`` long-lived rank processes: each job forms a fresh group among the first ``world``.

    Starting a process that imports torch costs seconds on a loaded machine, so the
    tests that need no process to die share these.
    """

    def __init__(self, size: int):
        self.size = size
        secret = secrets.token_bytes(16)
        self.server = TCPStore("127.0.0.1", 0, secret=secret, is_server=True)
        self.outbox = _CTX.Queue()
        self.inboxes = [_CTX.Queue() for _ in range(size)]
        self.procs = [_CTX.Process(target=_pool_main, args=(r, self.server.port, secret, self.inboxes[r],
                                                            self.outbox), daemon=True)
                      for r in range(size)]
        for p in self.procs:
            p.start()
        self._jobs = 0

    def run(self, fn, world: int, *args, backend="native", config=None, timeout=60.0, wait=120.0):
        self._jobs += 1
        name = f"pool{self._jobs}"
        for r in range(world):
            self.inboxes[r].put((fn, world, backend, name, timeout, config, args))
        out = {}
        for _ in range(world):
            rank, status, value = self.outbox.get(timeout=wait)
            out[rank] = (status, value)
        for r in range(world):
            status, value = out[r]
            if status == "error":
                raise RankError(f"rank {r} raised {value[0]}: {value[1]}\n{value[2]}")
        return [out[r][1] for r in range(world)]

    def close(self):
        for q in self.inboxes:
            q.put(None)
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self.server.close()
