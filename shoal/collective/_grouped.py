"""Grouped collectives: a list of tensors packed so the group costs one collective.

Reductions (reduce, reduce_scatter) pack the group's tensors per dtype into
one flat buffer of that dtype (as grouped_allreduce does), so a group costs one
collective per distinct dtype; the packed buffer's descriptor (dtype, size)
goes through the usual cross-rank check. Movement ops (allgather, alltoall)
pack every tensor's bytes, whatever its dtype, into one byte buffer led by an
int64 header (count, and per tensor dtype code, rows and a signature of the
shape after dimension 0): one collective for the whole group, and every rank
checks every header it receives. Every descriptor a grouped op publishes also
carries a signature of its whole list (``_descriptor.group_signature``), so
ranks whose lists differ in count, dtypes or shapes fail the first packed
collective's metadata check together with the same CollectiveError, even when
the packed sizes happen to agree or the per-dtype collective counts differ.
"""
from __future__ import annotations

import numpy as np

from shoal.collective._buffers import as_buffer, dtype_code, empty_like_buffer, is_torch_tensor
from shoal.collective import _descriptor as D
from shoal.collective._descriptor import _mismatch

_ALIGN = 8


def _pad(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _row_sig(shape: tuple) -> int:
    """A deterministic signature of the dimensions after the first (ints hash stably)."""
    return hash((len(shape),) + tuple(shape[1:])) & 0x7FFFFFFFFFFFFFFF


_KIND = {"reduce": 1, "reduce_scatter": 2, "allgather": 3, "alltoall": 4}


def _signature(kind: str, bufs, full_shape: bool) -> int:
    """Ints only (their hash is the same in every process): the list's count, dtypes and
    shapes (without dimension 0 for ops whose first dimensions may differ between ranks)."""
    items = [_KIND[kind], len(bufs)]
    for b in bufs:
        items += [dtype_code(b.dtype_name), len(b.shape)]
        items += list(b.shape if full_shape else b.shape[1:])
    return (hash(tuple(items)) & 0x3FFFFFFFFFFFFFFF) or 1


def _bufs(comm, kind, tensors, need_dim=False):
    def prep():
        out = []
        for i, t in enumerate(tensors):
            b = as_buffer(t, name=f"tensors[{i}]")
            if need_dim and not b.shape:
                raise ValueError(f"{kind}: tensors[{i}] is a scalar; it needs at least one "
                                 "dimension (dimension 0 is split among the ranks)")
            out.append(b)
        return out
    return comm._prepare(kind, prep)


def _device(tensors) -> bool:
    return any(is_torch_tensor(t) and t.device.type != "cpu" for t in tensors)


def _packed_of(dname: str, n: int):
    """A new flat tensor of ``n`` elements of ``dname`` (torch for bfloat16) and its Buffer."""
    if dname == "bfloat16":
        import torch
        t = torch.zeros(n, dtype=torch.bfloat16, device="cpu")
    else:
        t = np.zeros(n, dtype=dname)
    return t, as_buffer(t)


def _by_dtype(bufs) -> dict:
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(bufs):
        groups.setdefault(b.dtype_name, []).append(i)
    return groups


# ------------------------------------------------------------------ reduce
def device_packed(tensors, by_dtype: bool):
    """Torch tensors on a device (CUDA) packed where they live: ``[(indices, flat, pieces)]``,
    one flat tensor per device (and dtype, when ``by_dtype``; else their bytes), in order of
    first appearance, so every rank packs alike. ``pieces[j]`` views ``flat`` for tensor j."""
    import torch
    xs = [t.detach() if is_torch_tensor(t) else torch.from_numpy(as_buffer(t).array) for t in tensors]
    groups: dict = {}
    for i, x in enumerate(xs):
        key = (str(x.device), x.dtype if by_dtype else None)
        groups.setdefault(key, []).append(i)
    out = []
    for idx in groups.values():
        parts = [xs[i].contiguous().reshape(-1) for i in idx]
        if not by_dtype:
            parts = [x.view(torch.uint8) for x in parts]
        flat = torch.cat(parts)
        out.append((idx, flat, list(flat.split([x.numel() for x in parts]))))
    return out


def device_unpack(tensors, idx, pieces, by_dtype: bool) -> None:
    """Copy the pieces of a packed group back into their tensors."""
    for i, piece in zip(idx, pieces):
        t = tensors[i]
        if is_torch_tensor(t):
            if not by_dtype:  # bytes: view them as the dtype (from an aligned copy if need be)
                aligned = piece.storage_offset() % t.element_size() == 0
                piece = (piece if aligned else piece.clone()).view(t.dtype)
            t.detach().copy_(piece.view(t.shape))
        else:
            buf = as_buffer(t)
            arr = piece.cpu().numpy()
            buf.array[...] = (arr if by_dtype else arr.view(buf.array.dtype)).reshape(buf.array.shape)
            buf.finish()


def device_reduce(comm, tensors, dst, op):
    """grouped_reduce of device tensors: one reduce per device and dtype, packed there."""
    for idx, flat, pieces in device_packed(tensors, by_dtype=True):
        comm._do_reduce(flat, dst, op, None)
        if comm.rank == dst:
            device_unpack(tensors, idx, pieces, by_dtype=True)
    return tensors


def device_broadcast(comm, tensors, src):
    """grouped_broadcast of device tensors: one broadcast of their bytes per device."""
    for idx, flat, pieces in device_packed(tensors, by_dtype=False):
        comm._do_broadcast(flat, src)
        if comm.rank != src:
            device_unpack(tensors, idx, pieces, by_dtype=False)
    return tensors


def grouped_reduce(comm, tensors, dst, op):
    if not tensors:
        return tensors
    if _device(tensors):
        return device_reduce(comm, tensors, dst, op)
    bufs = _bufs(comm, "reduce", tensors)
    with D.group_signature(_signature("reduce", bufs, True)):
        _reduce_packed(comm, bufs, dst, op)
    return tensors


def _reduce_packed(comm, bufs, dst, op):
    for dname, idx in _by_dtype(bufs).items():
        sizes = np.array([bufs[i].array.size for i in idx], np.int64)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        packed, pb = _packed_of(dname, int(offs[-1]))
        for i, a, e in zip(idx, offs[:-1], offs[1:]):
            pb.flat[a:e] = bufs[i].flat
        comm._do_reduce(packed, dst, op, None)
        if comm.rank == dst:
            pb = as_buffer(packed)
            for i, a, e in zip(idx, offs[:-1], offs[1:]):
                bufs[i].flat[...] = pb.flat[a:e]
                bufs[i].finish()


# ---------------------------------------------------------- reduce_scatter
def grouped_reduce_scatter(comm, tensors, op):
    if not tensors:
        return []
    if _device(tensors):
        return [comm._do_reduce_scatter(t, op, None) for t in tensors]
    bufs = _bufs(comm, "reduce_scatter", tensors, need_dim=True)
    with D.group_signature(_signature("reduce_scatter", bufs, True)):
        return _reduce_scatter_packed(comm, bufs, op)


def _reduce_scatter_packed(comm, bufs, op):
    from shoal.collective.communicator import split_sizes
    world, me = comm.world_size, comm.rank
    results: list = [None] * len(bufs)
    for dname, idx in _by_dtype(bufs).items():
        # part[j, q]: elements of tensor idx[j] that go to rank q (array_split of its rows)
        rows = np.array([split_sizes(bufs[i].shape[0], world) for i in idx], np.int64)
        re = np.array([bufs[i].array.size // bufs[i].shape[0] if bufs[i].shape[0] else 0
                       for i in idx], np.int64)
        part = rows * re[:, None]
        start = np.concatenate([np.zeros((len(idx), 1), np.int64), np.cumsum(part, 1)], 1)
        col = np.concatenate([np.zeros((1, world), np.int64), np.cumsum(part, 0)], 0)
        width = int(col[-1].max())
        # row q of the packed (world, width) buffer holds every tensor's part q, in order,
        # zero-padded to the longest row: one reduce_scatter gives each rank its row.
        packed, pb = _packed_of(dname, world * width)
        grid = pb.array.reshape(world, width)
        for j, i in enumerate(idx):
            src = bufs[i].flat
            for q in range(world):
                grid[q, col[j, q]:col[j + 1, q]] = src[start[j, q]:start[j, q + 1]]
        shaped = packed.reshape(world, width)
        mine = as_buffer(comm._do_reduce_scatter(shaped, op, None)).flat
        for j, i in enumerate(idx):
            res, ob = empty_like_buffer(bufs[i], (int(rows[j, me]),) + bufs[i].shape[1:])
            ob.flat[...] = mine[col[j, me]:col[j + 1, me]]
            ob.finish()
            results[i] = res
    return results


# ------------------------------------------------------- byte-packed movement
def _header(bufs, rows) -> np.ndarray:
    """int64 header: count, then (dtype code, rows, row signature, bytes) per tensor."""
    h = np.empty(1 + 4 * len(bufs), np.int64)
    h[0] = len(bufs)
    for k, (b, r) in enumerate(zip(bufs, rows)):
        shape = b.shape or (1,)
        row_bytes = b.array.itemsize * (int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1)
        h[1 + 4 * k:5 + 4 * k] = (dtype_code(b.dtype_name), r, _row_sig(b.shape), r * row_bytes)
    return h


def _pack(bufs, pieces, rows) -> np.ndarray:
    """One byte buffer: header, then each piece (a flat uint8 view) padded to 8 bytes."""
    h = _header(bufs, rows)
    total = h.nbytes + sum(_pad(p.size) for p in pieces)
    out = np.zeros(total, np.uint8)
    out[:h.nbytes] = h.view(np.uint8)
    off = h.nbytes
    for p in pieces:
        out[off:off + p.size] = p
        off += _pad(p.size)
    return out


def _parse(kind, data: np.ndarray, bufs, sender: int):
    """(header rows, list of uint8 slices) of one rank's packed chunk; checks it against ``bufs``."""
    n = int(data[:8].view(np.int64)[0]) if data.size >= 8 else -1
    if n != len(bufs):
        raise _mismatch(f"{kind} called with {len(bufs)} tensors here but {n} on rank {sender}; "
                        "every rank must pass the same number of tensors")
    h = data[:8 * (1 + 4 * n)].view(np.int64)[1:].reshape(n, 4)
    mine = _header(bufs, [0] * n)[1:].reshape(n, 4)
    bad = np.flatnonzero((h[:, 0] != mine[:, 0]) | (h[:, 2] != mine[:, 2]))
    if bad.size:
        k = int(bad[0])
        raise _mismatch(f"{kind}: tensors[{k}] has dtype {bufs[k].dtype_name} and shape after the "
                        f"first dimension {bufs[k].shape[1:]} here, different on rank {sender}; every "
                        "rank must pass tensors of the same dtypes and row shapes, in the same order")
    off, pieces = 8 * (1 + 4 * n), []
    for nb in h[:, 3]:
        pieces.append(data[off:off + int(nb)])
        off += _pad(int(nb))
    return h[:, 1], pieces


def _bytes(b) -> np.ndarray:
    return b.array.reshape(-1).view(np.uint8)


def grouped_allgather(comm, tensors):
    if not tensors:
        return []
    if _device(tensors):
        return [comm._do_allgather(t, None) for t in tensors]
    bufs = _bufs(comm, "allgather", tensors)
    rows = [b.shape[0] if b.shape else 1 for b in bufs]
    packed = _pack(bufs, [_bytes(b) for b in bufs], rows)
    with D.group_signature(_signature("allgather", bufs, False)):
        parts = comm._do_allgather(packed, None)
    parsed = []
    for q, p in enumerate(parts):
        p = np.ascontiguousarray(p.numpy() if is_torch_tensor(p) else p)
        parsed.append(_parse("grouped_allgather", p, bufs, q))
    return [_assemble(b, [(r[k], ps[k]) for r, ps in parsed]) for k, b in enumerate(bufs)]


def _assemble(b, chunks):
    """The rank-ordered parts of one tensor, as views of one new tensor like ``b``."""
    scalar = not b.shape
    shape = b.shape or (1,)
    counts = [int(r) for r, _ in chunks]
    res, ob = empty_like_buffer(b, (sum(counts),) + shape[1:])
    dst = ob.array.reshape(-1).view(np.uint8)
    off = 0
    for _, piece in chunks:
        dst[off:off + piece.size] = piece
        off += piece.size
    ob.finish()
    offs = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    out = [res[offs[q]:offs[q + 1]] for q in range(len(counts))]
    return [p.reshape(()) for p in out] if scalar else out


def grouped_alltoall(comm, tensors):
    from shoal.collective.communicator import split_sizes
    if not tensors:
        return []
    if _device(tensors):
        return [comm._do_alltoall(t, None, None, None) for t in tensors]
    bufs = _bufs(comm, "alltoall", tensors, need_dim=True)
    world = comm.world_size
    splits = [split_sizes(b.shape[0], world) for b in bufs]
    chunks = []
    for q in range(world):
        pieces, rows = [], []
        for b, sp in zip(bufs, splits):
            rb = b.array.nbytes // b.shape[0] if b.shape[0] else 0
            a = sum(sp[:q]) * rb
            pieces.append(_bytes(b)[a:a + sp[q] * rb])
            rows.append(sp[q])
        chunks.append(_pack(bufs, pieces, rows))
    send = np.concatenate(chunks)
    with D.group_signature(_signature("alltoall", bufs, False)):
        got = comm._do_alltoall(send, [c.size for c in chunks], None, None)
    got = np.ascontiguousarray(got.numpy() if is_torch_tensor(got) else got)
    parsed, off = [], 0
    for q in range(world):
        rows, pieces = _parse("grouped_alltoall", got[off:], bufs, q)
        parsed.append((rows, pieces))
        off += 8 * (1 + 4 * len(bufs)) + sum(_pad(p.size) for p in pieces)
    out = []
    for k, b in enumerate(bufs):
        chunks_k = [(r[k], ps[k]) for r, ps in parsed]
        out.append(_assemble_cat(b, chunks_k))
    return out


def _assemble_cat(b, chunks):
    counts = [int(r) for r, _ in chunks]
    res, ob = empty_like_buffer(b, (sum(counts),) + b.shape[1:])
    dst = ob.array.reshape(-1).view(np.uint8)
    off = 0
    for _, piece in chunks:
        dst[off:off + piece.size] = piece
        off += piece.size
    ob.finish()
    return res
