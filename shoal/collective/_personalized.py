"""Personalized exchanges of the native backend: scatter and alltoall.

Both are byte-stream exchanges (see ``ShmGroup.exchange``): each producer
publishes its whole send buffer once and each consumer takes the ranges
meant for it, whose sizes every rank learns from the producers' descriptors.
"""
from __future__ import annotations

import numpy as np

from shoal.collective import _descriptor as D
from shoal.collective._buffers import DTYPES, Buffer, as_buffer, empty_like_buffer
from shoal.collective.communicator import split_sizes


def _bytes(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


def _row_bytes(shape, itemsize: int) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) * itemsize if len(shape) > 1 else itemsize


def _new_array(dtype_name: str, shape):
    if dtype_name == "bfloat16":
        import torch
        t = torch.empty(tuple(shape), dtype=torch.bfloat16, device="cpu")
        return t, as_buffer(t)
    a = np.empty(tuple(shape), dtype=dtype_name)
    return a, Buffer(a, a, dtype_name, None)


def scatter(comm, parts, src: int, out):
    W, me = comm.world_size, comm.rank

    def prep():
        ob = as_buffer(out, name="out") if out is not None else None
        if me != src:
            return None, ob
        bufs = [as_buffer(p, name=f"parts[{q}]") for q, p in enumerate(parts)]
        for q, b in enumerate(bufs):
            if b.dtype_name != bufs[0].dtype_name or b.shape[1:] != bufs[0].shape[1:]:
                raise ValueError(f"scatter parts must share dtype and trailing shape; parts[{q}] has "
                                 f"{b.dtype_name} {b.shape}, parts[0] {bufs[0].dtype_name} {bufs[0].shape}")
        return bufs, ob
    bufs, ob = comm._prepare("scatter", prep)
    if W == 1:
        res, rb = (out, ob) if ob is not None else empty_like_buffer(bufs[0], bufs[0].shape)
        rb.array[...] = bufs[0].array
        rb.finish()
        return res
    if me == src:
        sizes = [b.array.nbytes for b in bufs]
        send = np.concatenate([_bytes(b.array) for b in bufs])
        desc = D.make("scatter", dtype=bufs[0].dtype_name, shape=bufs[0].shape, root=src,
                      nbytes=send.size, world=comm._meta_world(), splits=sizes)
    else:
        send = np.empty(0, np.uint8)
        desc = D.make("scatter", dtype=ob.dtype_name if ob else None, root=src,
                      world=comm._meta_world())
    state = {}

    def ranges(metas, c):
        sp = D.splits_of(metas[src], W)
        return [(src, int(sp[:c].sum()), int(sp[c]))]

    def sink(metas):
        m = metas[src]
        dname = DTYPES[m[D.F_DTYPE]]
        shape0 = D.shape_of(m)
        item = np.dtype(np.uint16 if dname == "bfloat16" else dname).itemsize
        nbytes = int(D.splits_of(m, W)[me])
        if shape0:
            shape = (nbytes // _row_bytes(shape0, item),) + tuple(shape0[1:])
        else:
            shape = ()
        res, rb = out, ob
        if rb is not None and (rb.array.nbytes != nbytes or rb.dtype_name != dname):
            state["error"] = ValueError(f"out has {rb.array.nbytes} bytes of {rb.dtype_name}; rank "
                                        f"{me}'s part is {nbytes} bytes of {dname}")
            rb = None
        if rb is None:
            res, rb = _new_array(dname, shape)
        state.update(res=res, rb=rb)
        return [_bytes(rb.array)]
    comm._exchange("scatter", send, desc, ranges, sink)
    if "error" in state:
        raise state["error"]
    state["rb"].finish()
    return state["res"]


def alltoall(comm, t, send_splits, recv_splits, out):
    W, me = comm.world_size, comm.rank

    def prep():
        buf = as_buffer(t)
        if not buf.shape:
            raise ValueError("alltoall needs a tensor with at least one dimension (rows are sent)")
        rows = buf.shape[0]
        splits = split_sizes(rows, W) if send_splits is None else [int(s) for s in send_splits]
        if len(splits) != W or sum(splits) != rows or min(splits) < 0:
            raise ValueError(f"send_splits={list(splits)} must have {W} non-negative entries "
                             f"summing to the {rows} rows of the input")
        if recv_splits is not None and len(recv_splits) != W:
            raise ValueError(f"recv_splits must have {W} entries, got {len(recv_splits)}")
        return buf, splits
    buf, splits = comm._prepare("alltoall", prep)
    item = buf.array.itemsize
    rbytes = _row_bytes(buf.shape, item)
    send = _bytes(buf.array)
    state = {}

    def ranges(metas, c):
        out_ranges = []
        for q in range(W):
            sp = D.splits_of(metas[q], W)
            out_ranges.append((q, int(sp[:c].sum()), int(sp[c])))
        return out_ranges

    def sink(metas):
        got = [int(D.splits_of(metas[q], W)[me]) for q in range(W)]
        rows = [g // rbytes for g in got]
        shape = (sum(rows),) + buf.shape[1:]
        res, ob = None, None
        if recv_splits is not None and [int(x) for x in recv_splits] != rows:
            state["error"] = ValueError(f"recv_splits={list(recv_splits)} but the senders send "
                                        f"{rows} rows to rank {me}")
        if out is not None:
            ob = as_buffer(out, name="out")
            if ob.shape != shape or ob.dtype_name != buf.dtype_name:
                state["error"] = ValueError(f"out has shape {ob.shape}; rank {me} receives {shape} "
                                            f"of {buf.dtype_name}")
                ob = None
            else:
                res = out
        if ob is None:
            res, ob = empty_like_buffer(buf, shape)
        state.update(res=res, ob=ob)
        dst = _bytes(ob.array)
        offs = np.concatenate([[0], np.cumsum(got)]).astype(np.int64)
        return [dst[offs[q]:offs[q + 1]] for q in range(W)]
    if W == 1:
        sink([D.make("alltoall", world=1, splits=[send.size])])
        _bytes(state["ob"].array)[...] = send
    else:
        desc = D.make("alltoall", dtype=buf.dtype_name, shape=buf.shape, nbytes=send.size,
                      world=comm._meta_world(), splits=[s * rbytes for s in splits])
        comm._exchange("alltoall", send, desc, ranges, sink)
    if "error" in state:
        raise state["error"]
    state["ob"].finish()
    return state["res"]
