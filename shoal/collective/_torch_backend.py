"""The torch backend: the same Communicator API over torch.distributed process groups.

Gloo on CPU, NCCL on CUDA. The process group is built directly on shoal's
key-value store (an adapter implementing torch's Store), so several groups
live side by side and nothing global (``init_process_group``) is touched.
Each op first allgathers the op descriptors, so mismatched calls raise the
same CollectiveError as on the native backend. NumPy inputs are viewed as
torch tensors (moved to the GPU and back under NCCL). Ops Gloo lacks, or
that need equal sizes there, are composed: avg is sum then divide, float16
and bfloat16 sums run in float32, variable-size allgather pads to the
largest part.
"""
from __future__ import annotations

import datetime

import numpy as np

from shoal.collective import _descriptor as D
from shoal.collective._buffers import as_buffer, check_op, is_torch_tensor
from shoal.collective.communicator import Communicator, split_sizes
from shoal.exceptions import CollectiveError, GetTimeoutError


def _torch():
    import torch
    import torch.distributed as dist
    return torch, dist


def _store_adapter(kv, prefix: str, timeout: float):
    torch, dist = _torch()

    class KVStoreAdapter(dist.Store):
        """torch's Store interface over a shoal KVStore (keys under ``prefix``)."""

        def __init__(self):
            super().__init__()

        def set(self, key, value):
            kv.set(prefix + key, bytes(value))

        def get(self, key):
            try:
                return kv.get(prefix + key, timeout=timeout)
            except GetTimeoutError as e:
                raise RuntimeError(str(e)) from None

        def add(self, key, amount):
            return kv.add(prefix + key, int(amount))

        def compare_set(self, key, expected, desired):
            exp = bytes(expected) if expected else None
            return kv.compare_set(prefix + key, exp, bytes(desired))

        def wait(self, keys, timeout=None):
            kv.wait([prefix + k for k in keys], timeout=timeout.total_seconds()
                    if isinstance(timeout, datetime.timedelta) else timeout)

        def check(self, keys):
            return kv.check([prefix + k for k in keys])

        def delete_key(self, key):
            return kv.delete(prefix + key)

        def num_keys(self):
            return len(kv.keys(prefix))

    return KVStoreAdapter()


def _widen(torch) -> dict:
    """dtypes Gloo cannot reduce, and the type each is reduced in."""
    return {torch.int16: torch.int32, torch.uint16: torch.int32, torch.uint32: torch.int64,
            torch.uint64: torch.int64, torch.bool: torch.uint8, torch.float16: torch.float32,
            torch.bfloat16: torch.float32}


def _list_signature(xs) -> int:
    """Ints only (hashed the same in every process): count, dtypes and shapes of a list."""
    items = [len(xs)]
    for x in xs:
        name = str(x.dtype).replace("torch.", "")
        items += [D.DTYPES.index(name) if name in D.DTYPES else -2, x.dim()] + list(x.shape)
    return (hash(tuple(items)) & 0x3FFFFFFFFFFFFFFF) or 1


def _movable(x):
    """(a Gloo-movable view of ``x`` with the same rows, a function mapping results back)."""
    torch = _torch()[0]
    if x.device.type != "cpu" or x.dtype in (torch.float32, torch.float64, torch.float16, torch.int8,
                                             torch.uint8, torch.int32, torch.int64, torch.bfloat16):
        return x, (lambda y: y)
    shape, dtype = tuple(x.shape), x.dtype
    rows = shape[0] if shape else 1
    inner = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    y = x.contiguous().reshape(rows, inner).view(torch.uint8)

    def back(z):
        n = z.shape[0]
        out = z.contiguous().view(dtype).reshape((n,) + shape[1:]) if shape else z.view(dtype).reshape(())
        return out
    return y, back


_OPS = {"sum": "SUM", "avg": "SUM", "min": "MIN", "max": "MAX", "prod": "PRODUCT"}


class TorchCommunicator(Communicator):
    """Collectives through torch.distributed (Gloo on CPU, NCCL on CUDA)."""

    backend = "torch"

    def __init__(self, rank: int, world_size: int, store, name: str = "default",
                 timeout: float = 300.0, device: str | None = None):
        super().__init__(rank, world_size, name, timeout)
        torch, dist = _torch()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:   # NCCL needs the index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.store = store
        gen = store.add(f"shoal/collective-torch/{name}/gen/{rank}", 1)
        adapter = _store_adapter(store, f"shoal/collective-torch/{name}/{gen}/", timeout)
        # NCCL reads the store later (at its first collective), through this Python object
        self._store_keepalive = adapter
        td = datetime.timedelta(seconds=timeout)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = td
            self.pg = dist.ProcessGroupNCCL(adapter, rank, world_size, opts)
        else:
            from shoal.collective._rendezvous import listen_host_for
            opts = dist.ProcessGroupGloo._Options()
            opts._devices = [dist.ProcessGroupGloo.create_device(
                hostname=listen_host_for(store, None, spans_hosts=None))]
            opts._timeout = td
            self.pg = dist.ProcessGroupGloo(adapter, rank, world_size, opts)
        self._dist = dist

    # ------------------------------------------------------------- helpers
    def _tensor(self, x, name="tensor"):
        """(torch tensor on the group's device, write-back callable or None)."""
        torch = _torch()[0]
        if is_torch_tensor(x):
            t = x.detach()
            if t.device != self.device or not t.is_contiguous():
                work = t.to(self.device).contiguous()
                return work, (lambda w=work, d=t: d.copy_(w))
            return t, None
        buf = as_buffer(x, name=name)
        if buf.dtype_name == "bfloat16":
            raise TypeError(f"{name}: bfloat16 needs a torch tensor")
        t = torch.from_numpy(buf.array if buf.array.flags.writeable else buf.array.copy())
        if t.device != self.device:
            work = t.to(self.device)

            def back(w=work, b=buf):
                b.array[...] = w.cpu().numpy()
                b.finish()
            return work, back
        return t, (buf.finish if buf._writeback is not None else None)

    def _wait(self, work) -> None:
        try:
            work.wait()
        except RuntimeError as e:
            err = CollectiveError(f"torch.distributed op failed on rank {self.rank}: {e}")
            err.fatal = True
            raise err from e

    def _check(self, desc: np.ndarray, msg: bytes = b"") -> None:
        torch = _torch()[0]
        size = desc.size * 8 + D.MSG_BYTES
        mine = np.zeros(size, np.uint8)
        mine[:desc.size * 8] = desc.view(np.uint8)
        mine[desc.size * 8:desc.size * 8 + len(msg)] = np.frombuffer(msg, np.uint8)
        src = torch.from_numpy(mine).to(self.device)
        outs = [torch.empty_like(src) for _ in range(self.world_size)]
        self._wait(self.pg.allgather([outs], [src]))
        got = [o.cpu().numpy() for o in outs]
        D.check([g[:desc.size * 8].view(np.int64) for g in got], [g[desc.size * 8:].tobytes() for g in got])

    def _prepare(self, kind, fn):
        try:
            return fn()
        except (TypeError, ValueError) as e:
            d, m = D.error(kind, f"{type(e).__name__}: {e}", self.world_size)
            try:
                self._check(d, m)
            except CollectiveError:
                pass
            raise

    def _desc_of(self, kind, t, **kw):
        dname = str(t.dtype).replace("torch.", "")
        return D.make(kind, dtype=dname if dname in D.DTYPES else None, shape=tuple(t.shape),
                      world=self.world_size, **kw)

    def _reduce_op(self, op):
        return getattr(self._dist.ReduceOp, _OPS[op])

    def _allreduce_tensor(self, t, op, prescale=1.0, postscale=1.0, root=None):
        torch = _torch()[0]
        if t.is_complex() and op not in ("sum", "avg"):
            return self._reduce_by_gather(t, op, prescale, postscale, root)
        cpu = self.device.type == "cpu"
        wide = _widen(torch).get(t.dtype) if cpu else None
        if t.is_complex():
            x = torch.view_as_real(t)
        elif wide is not None:
            x = t.to(wide)
        elif prescale != 1.0 and not t.is_floating_point():
            x = t.double()
        else:
            x = t
        if prescale != 1.0:
            if not x.is_floating_point():
                x = x.double()
            x.mul_(prescale)
        if root is None:
            self._wait(self.pg.allreduce([x], self._allreduce_opts(op)))
        else:
            opts = self._dist.ReduceOptions()
            opts.reduceOp, opts.rootRank = self._reduce_op(op), root
            self._wait(self.pg.reduce([x], opts))
        if root is not None and root != self.rank:
            return t
        if op == "avg" and t.dtype != torch.bool:
            if x.is_floating_point():
                x.div_(self.world_size) if t.is_floating_point() or t.is_complex() else \
                    x.copy_(torch.floor(x / self.world_size))
            else:
                x.floor_divide_(self.world_size)
        if postscale != 1.0:
            if not x.is_floating_point():
                x = x.double()
            x.mul_(postscale)
        if t.is_complex():
            return t
        if x.data_ptr() != t.data_ptr():
            if x.is_floating_point() and not t.is_floating_point():
                x = x.trunc() if t.dtype != torch.bool else x != 0
            t.copy_(x)
        return t

    def _reduce_by_gather(self, t, op, prescale, postscale, root):
        """Ops Gloo cannot reduce (complex prod): gather everything and reduce in rank order."""
        from shoal.collective._buffers import Reducer
        parts = self._do_allgather(t.reshape(-1), None)
        if root is not None and root != self.rank:
            return t
        flat = [p.cpu().numpy() for p in parts]
        res = np.empty_like(flat[0])
        Reducer(op, str(t.dtype).replace("torch.", ""), self.world_size, prescale, postscale).reduce(res, flat)
        t.copy_(_torch()[0].from_numpy(res).reshape(t.shape))
        return t

    def _allreduce_opts(self, op):
        opts = self._dist.AllreduceOptions()
        opts.reduceOp = self._reduce_op(op)
        return opts

    # ---------------------------------------------------------- collectives
    def _do_allreduce(self, t, op, out, prescale, postscale):
        def prep():
            x, back = self._tensor(t)
            check_op(op, str(x.dtype).replace("torch.", ""))
            return x, back
        x, back = self._prepare("allreduce", prep)
        self._check(self._desc_of("allreduce", x, rop=op))
        if out is not None:
            y, yback = self._tensor(out, "out")
            y.copy_(x)
            self._allreduce_tensor(y, op, prescale, postscale)
            if yback:
                yback()
            return out
        self._allreduce_tensor(x, op, prescale, postscale)
        if back:
            back()
        return t

    def _do_grouped_allreduce(self, ts, op, prescale, postscale):
        """One metadata check for the whole list, then one allreduce per dtype: the
        tensors of a dtype are packed into one flat tensor (on their device), reduced
        together and copied back (Horovod's tensor fusion, NCCL's coalescing)."""
        if not ts:
            return ts
        torch = _torch()[0]

        def prep():
            xs = []
            for i, t in enumerate(ts):
                x, back = self._tensor(t, f"tensors[{i}]")
                check_op(op, str(x.dtype).replace("torch.", ""))
                xs.append((x, back))
            return xs
        xs = self._prepare("fused_allreduce", prep)
        groups: dict = {}
        for i, (x, _) in enumerate(xs):
            groups.setdefault(x.dtype, []).append(i)
        total = sum(x.numel() for x, _ in xs)
        with D.group_signature(_list_signature([x for x, _ in xs])):
            self._check(D.make("fused_allreduce", rop=op, shape=(total,), world=self.world_size))
        for idx in groups.values():
            if len(idx) == 1:
                self._allreduce_tensor(xs[idx[0]][0], op, prescale, postscale)
                continue
            parts = [xs[i][0] for i in idx]
            flat = torch.cat([x.reshape(-1) for x in parts])
            self._allreduce_tensor(flat, op, prescale, postscale)
            for x, piece in zip(parts, flat.split([x.numel() for x in parts])):
                x.copy_(piece.view(x.shape))
        for _, back in xs:
            if back:
                back()
        return ts

    def _do_reduce(self, t, dst, op, out):
        x, back = self._prepare("reduce", lambda: self._tensor(t))
        self._check(self._desc_of("reduce", x, rop=op, root=dst))
        y = x.clone()
        self._allreduce_tensor(y, op, root=dst)
        if self.rank == dst:
            target = out if out is not None else t
            tx, tback = self._tensor(target, "out")
            tx.copy_(y)
            if tback:
                tback()
            return target
        return t if out is None else out

    def _do_reduce_scatter(self, t, op, out):
        x, _ = self._prepare("reduce_scatter", lambda: self._tensor(t))
        if x.dim() == 0:
            raise ValueError("reduce_scatter needs a tensor with at least one dimension")
        self._check(self._desc_of("reduce_scatter", x, rop=op))
        y = x.clone()
        self._allreduce_tensor(y, op)
        rows = split_sizes(x.shape[0], self.world_size)
        a = sum(rows[:self.rank])
        part = y[a:a + rows[self.rank]]
        return self._deliver(part, t, out)

    def _deliver(self, result, like, out):
        """``result`` (a torch tensor) as the caller's kind, or copied into ``out``."""
        if out is not None:
            o, back = self._tensor(out, "out")
            o.copy_(result)
            if back:
                back()
            return out
        if is_torch_tensor(like):
            return result.to(like.device)
        return result.cpu().numpy().copy()

    def _do_allgather(self, t, out):
        torch = _torch()[0]
        x, _ = self._prepare("allgather", lambda: self._tensor(t))
        scalar = x.dim() == 0
        x = x.reshape(1) if scalar else x
        self._check(self._desc_of("allgather", x))
        rows = torch.tensor([x.shape[0]], dtype=torch.int64, device=self.device)
        all_rows = [torch.empty_like(rows) for _ in range(self.world_size)]
        self._wait(self.pg.allgather([all_rows], [rows]))
        counts = [int(r.item()) for r in all_rows]
        top = max(counts)
        y, unmove = _movable(x)
        pad = torch.zeros((top,) + tuple(y.shape[1:]), dtype=y.dtype, device=self.device)
        pad[:y.shape[0]] = y
        outs = [torch.empty_like(pad) for _ in range(self.world_size)]
        self._wait(self.pg.allgather([outs], [pad]))
        full = unmove(torch.cat([o[:c] for o, c in zip(outs, counts)]))
        res = self._deliver(full, t, out)
        offs = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        parts = [res[offs[q]:offs[q + 1]] for q in range(self.world_size)]
        return [p.reshape(()) for p in parts] if scalar else parts

    def _do_broadcast(self, t, src):
        x, back = self._prepare("broadcast", lambda: self._tensor(t))
        self._check(self._desc_of("broadcast", x, root=src))
        opts = self._dist.BroadcastOptions()
        opts.rootRank = src
        self._wait(self.pg.broadcast([_movable(x)[0]], opts))
        if back:
            back()
        return t

    def _do_gather(self, t, dst):
        parts = self._do_allgather(t, None)
        return parts if self.rank == dst else None

    def _do_scatter(self, parts, src, out):
        torch = _torch()[0]
        if self.rank == src:
            xs = [self._tensor(p, f"parts[{q}]")[0] for q, p in enumerate(parts)]
            meta = [(tuple(x.shape), str(x.dtype).replace("torch.", "")) for x in xs]
        else:
            meta = None
        meta = self.broadcast_object(meta, src)
        dtype = getattr(torch, meta[0][1])
        # Every part as Gloo-movable rows, padded to the longest part.
        templates = [_movable(torch.empty(shape, dtype=dtype)) for shape, _ in meta]
        moved = [tm[0] for tm in templates]
        top = max(m.shape[0] for m in moved)
        recv = torch.zeros((top,) + tuple(moved[0].shape[1:]), dtype=moved[0].dtype, device=self.device)
        opts = self._dist.ScatterOptions()
        opts.rootRank = src
        if self.rank == src:
            padded = []
            for x in xs:
                p = torch.zeros_like(recv)
                m = _movable(x)[0]
                p[:m.shape[0]] = m
                padded.append(p)
            self._wait(self.pg.scatter([recv], [padded], opts))
        else:
            self._wait(self.pg.scatter([recv], [], opts))
        res = templates[self.rank][1](recv[:moved[self.rank].shape[0]])
        if not meta[self.rank][0]:
            res = res.reshape(())
        like = parts[0] if self.rank == src else out if out is not None else np.empty(0)
        return self._deliver(res, like, out)

    def _do_alltoall(self, t, send_splits, recv_splits, out):
        torch = _torch()[0]
        x, _ = self._prepare("alltoall", lambda: self._tensor(t))
        rows = x.shape[0]
        splits = split_sizes(rows, self.world_size) if send_splits is None else [int(s) for s in send_splits]
        if len(splits) != self.world_size or sum(splits) != rows:
            raise ValueError(f"send_splits={splits} must have {self.world_size} entries summing to {rows}")
        self._check(self._desc_of("alltoall", x))
        sizes = torch.tensor(splits, dtype=torch.int64, device=self.device)
        got = torch.empty_like(sizes)
        self._wait(self.pg.alltoall_base(got, sizes, [], [], self._dist.AllToAllOptions()))
        recv = [int(v) for v in got.tolist()]
        if recv_splits is not None and [int(v) for v in recv_splits] != recv:
            raise ValueError(f"recv_splits={list(recv_splits)} but the senders send {recv} rows")
        xm, unmove = _movable(x)
        y = torch.empty((sum(recv),) + tuple(xm.shape[1:]), dtype=xm.dtype, device=self.device)
        self._wait(self.pg.alltoall_base(y, xm, recv, splits, self._dist.AllToAllOptions()))
        return self._deliver(unmove(y), t, out)

    def _do_barrier(self):
        self._check(D.make("barrier", world=self.world_size))
        return None

    def _do_send(self, t, dst, tag):
        x, _ = self._tensor(t)
        self._wait(self.pg.send([_movable(x)[0]], dst, tag))

    def _do_recv(self, t, src, tag):
        x, back = self._tensor(t)
        self._wait(self.pg.recv([_movable(x)[0]], src, tag))
        if back:
            back()
        return t

    def _make_subgroup(self, ranks, name):
        return TorchCommunicator(ranks.index(self.rank), len(ranks), self.store, name=name,
                                 timeout=self.timeout, device=str(self.device))

    def _close(self) -> None:
        try:
            self.pg.shutdown()
        except (RuntimeError, AttributeError):
            pass
