"""Tensor fusion: small async allreduces submitted close together run as one.

The op thread takes the first fusible allreduce, keeps collecting the ones
queued behind it with the same (op, dtype, scale factors) for up to the cycle
time or the byte threshold, then negotiates with the other ranks how many of
them every rank has (one tiny allreduce-min, the "negotiation" phase of the
timeline): ops are issued in the same order everywhere, so the first ``k``
are the same tensors on every rank. Those ``k`` are packed into one reused
buffer, reduced in one collective and unpacked; the rest wait for the next
cycle.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from shoal.collective._buffers import Reducer, as_buffer, is_torch_tensor, storage_dtype
from shoal.collective.config import FusionConfig


def _dtype_name(t) -> str | None:
    if is_torch_tensor(t):
        if t.device.type != "cpu":
            return None
        return str(t.dtype).replace("torch.", "")
    dt = getattr(t, "dtype", None)
    return getattr(dt, "name", None)


class Fuser:
    """Fuses the async allreduces of one communicator (see the module docstring)."""

    def __init__(self, comm, config: FusionConfig):
        self.comm, self.config = comm, config
        self._buf: np.ndarray | None = None
        self.fused_ops = 0       # collectives that carried more than one tensor
        self.fused_tensors = 0   # tensors that travelled in them

    def key(self, t, op, out, prescale, postscale):
        if not self.config.enabled or out is not None:
            return None
        name = _dtype_name(t)
        nbytes = getattr(t, "nbytes", None)
        if nbytes is None and is_torch_tensor(t):
            nbytes = t.numel() * t.element_size()
        if name is None or nbytes is None or nbytes > self.config.threshold_bytes:
            return None
        return (op, name, float(prescale), float(postscale))

    def handle(self, head, queue) -> None:
        batch, total = [head], head.nbytes
        deadline = time.monotonic() + self.config.cycle_time_s
        while True:
            left = deadline - time.monotonic()
            nxt = queue.take(left if left > 0 else 0)
            if nxt is None:
                if left <= 0:
                    break
                continue
            if nxt.fusion_key != head.fusion_key or total + nxt.nbytes > self.config.threshold_bytes:
                queue.push_front([nxt])
                break
            batch.append(nxt)
            total += nxt.nbytes
        take = batch
        try:
            with queue.exec_lock:
                queue._runner = threading.get_ident()
                k = self._negotiate(len(batch))
                take = batch[:k]
                queue.push_front(batch[k:])
                op, _, pre, post = head.fusion_key
                if len(take) == 1:
                    it = take[0]
                    it.work._finish(self.comm._guard(self.comm._do_allreduce)(*it.args))
                else:
                    bufs = [as_buffer(it.args[0]) for it in take]
                    self.comm._guard(self.reduce_buffers)(bufs, op, pre, post)
                    for it in take:
                        it.work._finish(it.args[0])
        except BaseException as e:  # every op of the fused batch fails with it
            for it in take:
                if not it.work.is_completed():
                    it.work._finish(error=e)
        finally:
            queue._runner = None
            queue.done(len(take))

    def _negotiate(self, n: int) -> int:
        comm = self.comm
        if comm.world_size == 1:
            return n
        t0 = time.perf_counter()
        counts = np.array([n], np.int64)
        comm._allreduce_flat(counts, counts, Reducer("min", "int64", comm.world_size),
                             "allreduce", (1,))
        comm.timeline.phase("negotiation", t0)
        return int(counts[0])

    def reduce_buffers(self, bufs, op, prescale, postscale) -> None:
        """Allreduce ``bufs`` (in place), one fused collective per dtype, in first-seen order."""
        by_dtype: dict[str, list] = {}
        for b in bufs:
            by_dtype.setdefault(b.dtype_name, []).append(b)
        for dname, group in by_dtype.items():
            sizes = [b.array.size for b in group]
            total = int(sum(sizes))
            dt = storage_dtype(dname)
            if self._buf is None or self._buf.nbytes < total * dt.itemsize:
                self._buf = np.empty(max(total * dt.itemsize, 1 << 16), np.uint8)
            flat = self._buf[:total * dt.itemsize].view(dt)
            offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            for b, a, e in zip(group, offs[:-1], offs[1:]):
                flat[a:e] = b.flat
            reducer = Reducer(op, dname, self.comm.world_size, prescale, postscale)
            self.comm._allreduce_flat(flat, flat, reducer, "fused_allreduce", (total,))
            for b, a, e in zip(group, offs[:-1], offs[1:]):
                b.flat[...] = flat[a:e]
                b.finish()
            if len(group) > 1:
                self.fused_ops += 1
                self.fused_tensors += len(group)
