"""Forming the communicator of a training gang.

``form_group`` uses ``shoal.collective.init_group`` when that package is
importable, else ``GlooGroup``: torch.distributed's Gloo process group behind
the same interface (allreduce/broadcast/allgather/barrier with async ``Work``,
object collectives through the authenticated key-value store, never through
Gloo's unauthenticated sockets).
"""
from __future__ import annotations

import datetime
import pickle
import threading

import numpy as np
import torch

from shoal.exceptions import CollectiveError


def collective_available() -> bool:
    try:
        from shoal import collective
    except ImportError:
        return False
    return hasattr(collective, "init_group")


def form_group(rank: int, world_size: int, store, name: str, backend: str = "auto",
               timeout: float = 300.0):
    """A communicator among ``world_size`` ranks that meet in ``store`` under ``name``.

    backend: "auto" (shoal.collective's choice, Gloo if it is missing),
    "native" or "torch" (passed to shoal.collective), "gloo" (this module's
    adapter over torch.distributed).
    """
    if backend not in ("auto", "native", "torch", "gloo"):
        raise ValueError(f"unknown collective backend {backend!r}; use 'auto', 'native', "
                         "'torch' or 'gloo'")
    if backend != "gloo" and collective_available():
        from shoal import collective
        return collective.init_group(rank, world_size, store, backend=backend, name=name,
                                     timeout=timeout)
    if backend in ("native", "torch"):
        raise CollectiveError(f"collective backend {backend!r} needs shoal.collective, which "
                              "is not importable here; use backend='auto' or 'gloo'")
    return GlooGroup(rank, world_size, store, name, timeout)


class _KVTorchStore(torch.distributed.Store):
    """torch.distributed's Store interface over a shoal KVStore (authenticated)."""

    def __init__(self, kv, prefix: str, timeout: float):
        super().__init__()
        self._kv, self._prefix, self._timeout = kv, prefix, timeout

    def set(self, key, value):
        self._kv.set(self._prefix + key, bytes(value) if not isinstance(value, str) else value)

    def get(self, key):
        return self._kv.get(self._prefix + key, timeout=self._timeout)

    def add(self, key, amount):
        return self._kv.add(self._prefix + key, amount)

    def wait(self, keys, timeout=None):
        t = self._timeout if timeout is None else timeout.total_seconds()
        self._kv.wait([self._prefix + k for k in keys], timeout=t)

    def check(self, keys):
        return self._kv.check([self._prefix + k for k in keys])

    def delete_key(self, key):
        return self._kv.delete(self._prefix + key)

    def compare_set(self, key, expected, desired):
        exp = bytes(expected) if expected else None
        return self._kv.compare_set(self._prefix + key, exp, bytes(desired))

    def num_keys(self):
        return len(self._kv.keys(self._prefix))


class _GlooWork:
    def __init__(self, work, result, finish=None):
        self._work, self._result, self._finish = work, result, finish
        self._done = False

    def wait(self, timeout: float | None = None):
        if not self._done:
            try:
                self._work.wait()
            except RuntimeError as e:
                raise CollectiveError(f"collective operation failed: {e}") from e
            if self._finish is not None:
                self._finish()
            self._done = True
        return self._result

    def is_completed(self) -> bool:
        return self._done or self._work.is_completed()


_TORCH_OPS = {"sum": "SUM", "avg": "SUM", "min": "MIN", "max": "MAX", "prod": "PRODUCT"}


class GlooGroup:
    """shoal.collective's Communicator interface on a torch.distributed Gloo group."""

    backend = "gloo"

    def __init__(self, rank: int, world_size: int, store, name: str, timeout: float = 300.0):
        from torch.distributed import ProcessGroupGloo
        self.rank, self.world_size, self.name, self.timeout = rank, world_size, name, timeout
        self._kv = store
        self._prefix = f"gloo/{name}/"
        self._tstore = _KVTorchStore(store, self._prefix + "pg/", timeout)
        self._pg = ProcessGroupGloo(self._tstore, rank, world_size,
                                    datetime.timedelta(seconds=timeout))
        self._seq = 0
        self._lock = threading.Lock()

    @staticmethod
    def _tensor(t):
        if isinstance(t, np.ndarray):
            return torch.from_numpy(t)
        return t

    def allreduce(self, t, op: str = "sum", async_op: bool = False, **_):
        if op not in _TORCH_OPS:
            raise ValueError(f"unknown reduce op {op!r}; use one of {', '.join(_TORCH_OPS)}")
        tt = self._tensor(t)
        opts = torch.distributed.AllreduceOptions()
        opts.reduceOp = getattr(torch.distributed.ReduceOp, _TORCH_OPS[op])
        work = self._pg.allreduce([tt], opts)
        finish = (lambda: tt.div_(self.world_size)) if op == "avg" else None
        w = _GlooWork(work, t, finish)
        return w if async_op else w.wait()

    def broadcast(self, t, src: int = 0, async_op: bool = False):
        tt = self._tensor(t)
        opts = torch.distributed.BroadcastOptions()
        opts.rootRank = src
        w = _GlooWork(self._pg.broadcast([tt], opts), t)
        return w if async_op else w.wait()

    def allgather(self, t, async_op: bool = False):
        tt = self._tensor(t)
        outs = [torch.empty_like(tt) for _ in range(self.world_size)]
        work = self._pg.allgather([outs], [tt])
        res = [o.numpy() for o in outs] if isinstance(t, np.ndarray) else outs
        w = _GlooWork(work, res)
        return w if async_op else w.wait()

    def barrier(self, async_op: bool = False):
        w = _GlooWork(self._pg.barrier(), None)
        return w if async_op else w.wait()

    # Object collectives go through the authenticated store, never Gloo's sockets.
    def _next_key(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{self._prefix}obj/{self._seq}"

    def broadcast_object(self, obj=None, src: int = 0):
        key = self._next_key()
        if self.rank == src:
            self._kv.set(key, pickle.dumps(obj, protocol=5))
        self.barrier()
        if self.rank != src:
            obj = pickle.loads(self._kv.get(key, timeout=self.timeout))
        self.barrier()
        if self.rank == src:
            self._kv.delete(key)
        return obj

    def allgather_object(self, obj) -> list:
        key = self._next_key()
        self._kv.set(f"{key}/{self.rank}", pickle.dumps(obj, protocol=5))
        self.barrier()
        out = [pickle.loads(self._kv.get(f"{key}/{r}", timeout=self.timeout))
               for r in range(self.world_size)]
        self.barrier()
        self._kv.delete(f"{key}/{self.rank}")
        return out

    def destroy(self) -> None:
        self._pg = None


def group_from_env(backend: str = "auto", timeout: float = 300.0):
    """(communicator, store) of a process started by ``shoal launch`` / torchrun."""
    if backend != "gloo" and collective_available():
        from shoal import collective
        comm = collective.init_group_from_env(backend=backend, name="shoal-train",
                                              timeout=timeout)
        return comm, getattr(comm, "_owned_store", None)
    import os

    from shoal.core.kv import TCPStore
    env = os.environ
    rank = int(env.get("SHOAL_RANK", env.get("RANK")))
    world = int(env.get("SHOAL_WORLD_SIZE", env.get("WORLD_SIZE")))
    addr = env.get("SHOAL_MASTER_ADDR") or env.get("MASTER_ADDR") or "127.0.0.1"
    port = env.get("SHOAL_MASTER_PORT") or env.get("MASTER_PORT")
    secret = env.get("SHOAL_SECRET")
    if not port or not secret:
        raise CollectiveError("forming a group from the environment needs SHOAL_MASTER_PORT "
                              "(or MASTER_PORT) and SHOAL_SECRET; start the script with "
                              "`shoal launch`")
    store = TCPStore(addr, int(port), secret=bytes.fromhex(secret), is_server=rank == 0,
                     timeout=timeout)
    return GlooGroup(rank, world, store, "shoal-train", timeout), store
