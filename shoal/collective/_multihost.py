"""Collectives of a group that spans hosts.

Every op first exchanges the op descriptors of all ranks over TCP (the
metadata check). Allreduce is hierarchical: reduce within each host through
shared memory to the host's leader, allreduce among the leaders over TCP
(recursive doubling for small buffers when the number of hosts is a power of
two, a ring otherwise: each leader sends 2(h-1)/h of the data), broadcast
back through shared memory. A small allreduce of two ranks on two hosts
sends each rank's data right behind its descriptor: one round trip. The byte-stream exchanges (broadcast, gathers,
scatter, alltoall) send each consumer exactly the ranges it wants, in
``world_size - 1`` pairwise steps (rank r sends to r+s while receiving from r-s).
"""
from __future__ import annotations

import numpy as np

from shoal.collective import _descriptor as D
from shoal.collective._buffers import Reducer
from shoal.exceptions import CollectiveError

_ALIGN = 64


def _pairwise(comm, payload_for, sink_for) -> None:
    """Step s: send ``payload_for(r+s)`` (list of uint8 views) and receive ``sink_for(r-s)``."""
    p, r, mesh = comm.world_size, comm.rank, comm.mesh
    for s in range(1, p):
        to, frm = (r + s) % p, (r - s) % p
        sends = [v for v in payload_for(to) if v.size]
        pending = [mesh.send_async(to, v) for v in sends]
        try:
            for view in sink_for(frm):
                mesh.recv_into(frm, view)
        finally:
            for pend in pending:
                pend.wait(comm.timeout)


# A descriptor whose message starts with this carries the sender's data right behind
# it (a small allreduce between two ranks: one round trip instead of two).
_WITH_DATA = b"+data:"


def exchange_descs(comm, desc: np.ndarray, msg: bytes = b"") -> list[np.ndarray]:
    """All ranks' descriptors (checked: raises the same CollectiveError on every rank)."""
    p = comm.world_size
    size = desc.size * 8 + D.MSG_BYTES
    mine = np.zeros(size, np.uint8)
    mine[:desc.size * 8] = desc.view(np.uint8)
    mine[desc.size * 8:desc.size * 8 + len(msg)] = np.frombuffer(msg, np.uint8)
    got = np.zeros((p, size), np.uint8)
    got[comm.rank] = mine
    _pairwise(comm, lambda to: [mine], lambda frm: [got[frm]])
    metas = [got[q, :desc.size * 8].view(np.int64).copy() for q in range(p)]
    msgs = [got[q, desc.size * 8:].tobytes() for q in range(p)]
    fused = [q for q in range(p) if msgs[q].startswith(_WITH_DATA)]
    for q in fused:     # keep the stream in step before anything raises
        n = _data_bytes(msgs[q])
        _drain(comm, q, n)
        msgs[q] = b""
    D.check(metas, msgs)
    if fused:
        raise _fusion_mismatch(fused[0], comm.rank)
    return metas


def _data_bytes(msg: bytes) -> int:
    return int(msg[len(_WITH_DATA):].split(b"\0", 1)[0])


def _drain(comm, peer: int, n: int) -> None:
    if n:
        comm.mesh.recv_into(peer, comm.scratch("drain", n))


def _fusion_mismatch(fused_rank: int, plain_rank: int):
    err = CollectiveError(
        f"rank {fused_rank} sent a small allreduce's data with its descriptor but rank "
        f"{plain_rank} did not: their NativeConfig.tcp_small_bytes or prescale/postscale differ; "
        "give every rank the same")
    err.mismatch = True
    return err


def pair_allreduce(comm, src: np.ndarray, dst: np.ndarray | None, reducer: Reducer,
                   desc: np.ndarray) -> None:
    """A small allreduce of a group of two ranks on two hosts, in one round trip.

    Each rank sends its descriptor with its data behind it and checks the
    other's descriptor (both ranks see both: the same error on each); the sum
    is taken in rank order, so both hold the same bits.
    """
    peer, dbytes = 1 - comm.rank, desc.size * 8
    size = dbytes + D.MSG_BYTES
    out = comm.scratch("pair_out", size + src.nbytes)
    out[:size] = 0
    out[:dbytes] = desc.view(np.uint8)
    tag = _WITH_DATA + str(src.nbytes).encode()
    out[dbytes:dbytes + len(tag)] = np.frombuffer(tag, np.uint8)
    out[size:] = src.reshape(-1).view(np.uint8)
    head = comm.scratch("pair_head", size)
    pending = comm.mesh.send_async(peer, out)
    try:
        comm.mesh.recv_into(peer, head)
        msg = head[dbytes:].tobytes()
        with_data = msg.startswith(_WITH_DATA)
        n = _data_bytes(msg) if with_data else 0
        theirs = comm.scratch("pair_in", n)
        if n:
            comm.mesh.recv_into(peer, theirs)
    finally:
        pending.wait(comm.timeout)
    metas = [desc, head[:dbytes].view(np.int64)]
    if comm.rank == 1:
        metas.reverse()
    D.check(metas, [b"", b"" if with_data else msg])
    if not with_data:
        raise _fusion_mismatch(comm.rank, peer)
    if dst is not None:
        other = theirs.view(src.dtype).reshape(src.shape)
        reducer.reduce(dst, [src, other] if comm.rank == 0 else [other, src])


def exchange(comm, send: np.ndarray, desc: np.ndarray, ranges, sink) -> list[np.ndarray]:
    """Byte-stream exchange over TCP: see ``ShmGroup.exchange`` for ``ranges``/``sink``."""
    metas = exchange_descs(comm, desc)
    mine = ranges(metas, comm.rank)
    views = sink(metas)
    by_producer: dict[int, list] = {}
    for (q, off, n), view in zip(mine, views):
        by_producer.setdefault(q, []).append(view)
        if q == comm.rank:
            view[...] = send[off:off + n]

    def payload_for(c):
        return [send[off:off + n] for q, off, n in ranges(metas, c) if q == comm.rank]
    _pairwise(comm, payload_for, lambda frm: by_producer.get(frm, []) if frm != comm.rank else [])
    return metas


def allreduce(comm, src: np.ndarray, dst: np.ndarray | None, reducer: Reducer,
              desc: np.ndarray) -> None:
    if comm.world_size == 2 and reducer.acc is None and src.nbytes <= comm.config.tcp_small_bytes:
        return pair_allreduce(comm, src, dst, reducer, desc)
    exchange_descs(comm, desc)
    hier_allreduce(comm, src, dst, reducer)


def hier_allreduce(comm, src, dst, reducer: Reducer) -> None:
    """Reduce in the host, allreduce across host leaders, broadcast in the host.

    Types that reduce in a wider accumulator (float16, bfloat16, scaled
    integers) travel in it end to end, so the result is rounded once.
    """
    if reducer.acc is None:
        return _hier(comm, src, dst, reducer)
    n, acc = src.size, reducer.acc
    wsrc = comm.scratch("hier_in", n * acc.itemsize).view(acc)[:n]
    reducer._load(src, wsrc)  # converts and applies the prescale
    wdst = comm.scratch("hier_out", n * acc.itemsize).view(acc)[:n] if dst is not None else None
    inner = Reducer("sum" if reducer.op == "avg" else reducer.op, acc.name, comm.world_size)
    _hier(comm, wsrc, wdst, inner)
    if dst is not None:
        reducer._finalize_acc(wdst)
        reducer._store(wdst, dst)


def _hier(comm, src, dst, reducer: Reducer) -> None:
    topo, shm = comm.topology, comm.shm
    is_leader = comm.rank == topo.local_ranks[0]
    local = Reducer(reducer.op, reducer.dtype_name, comm.world_size, reducer.prescale)
    work = dst if (dst is not None) else (comm.scratch("hier", src.nbytes).view(src.dtype)
                                          if is_leader else None)
    if shm is not None:
        ldesc = D.make("allreduce", rop=reducer.op, dtype=reducer.dtype_name, shape=(src.size,),
                       world=shm.p)
        shm.allreduce(src, work if is_leader else None, local, ldesc, comm.config.small_bytes,
                      final=False)
    else:
        local.reduce(work, [src], final=False)
    if is_leader:
        cross = Reducer("sum" if reducer.op == "avg" else reducer.op, reducer.dtype_name,
                        comm.world_size)
        tcp_allreduce(comm, topo.leaders, work, cross)
        reducer.finalize(work)
    if shm is not None:
        data = work.reshape(-1).view(np.uint8) if is_leader else np.empty(0, np.uint8)
        bdesc = D.make("broadcast", dtype=reducer.dtype_name, shape=(src.size,), root=0,
                       nbytes=data.size, world=shm.p)
        take = not is_leader and dst is not None
        shm.exchange(data, bdesc, lambda metas, c: [(0, 0, D.nbytes_of(metas[0]))] if take else [],
                     lambda metas: [dst.reshape(-1).view(np.uint8)] if take else [])


def tcp_allreduce(comm, members: list[int], buf: np.ndarray, reducer: Reducer) -> None:
    """Allreduce flat ``buf`` in place among ``members`` (global ranks) over TCP."""
    P = len(members)
    if P == 1:
        return
    i, mesh, n = members.index(comm.rank), comm.mesh, buf.size
    if buf.nbytes <= comm.config.tcp_small_bytes and P & (P - 1) == 0:
        tmp = comm.scratch("tcp", buf.nbytes).view(buf.dtype)[:n]
        mask = 1
        while mask < P:
            partner = members[i ^ mask]
            mesh.sendrecv(partner, buf, partner, tmp)
            reducer.reduce(buf, [buf, tmp] if i < (i ^ mask) else [tmp, buf], final=False)
            mask <<= 1
        return
    _ring_allreduce(comm, members, buf, reducer)


_PIECE = 1 << 20


def _ring_allreduce(comm, members, buf, reducer) -> None:
    """Ring reduce-scatter + allgather, pipelined in pieces.

    Each received piece is reduced (or, in the allgather, forwarded) while the
    next one is still on the wire; the last reduce-scatter step hands each
    finished piece straight to the allgather.
    """
    P, n, mesh = len(members), buf.size, comm.mesh
    i = members.index(comm.rank)
    align = max(1, _ALIGN // buf.itemsize)
    per = -(-n // P)
    base = -(-per // align) * align
    bounds = [(min(c * base, n), min((c + 1) * base, n)) for c in range(P)]
    piece = max(align, _PIECE // buf.itemsize // align * align)
    tmp = comm.scratch("tcp", base * buf.itemsize).view(buf.dtype)
    nxt, prv = members[(i + 1) % P], members[(i - 1) % P]
    pending = []
    try:
        sa, sb = bounds[i]
        pending.append(mesh.send_async(nxt, buf[sa:sb]))
        for s in range(P - 1):  # reduce-scatter: leader i ends owning chunk i+1
            ra, rb = bounds[(i - s - 1) % P]
            for a in range(ra, rb, piece):
                b = min(a + piece, rb)
                mesh.recv_into(prv, tmp[:b - a])
                reducer.reduce(buf[a:b], [tmp[:b - a], buf[a:b]], final=False)
                # the next step sends this chunk on: reduce-scatter if not last, else allgather
                pending.append(mesh.send_async(nxt, buf[a:b]))
        for s in range(P - 1):  # allgather: receive chunk i-s, forward it unless it is the last
            ra, rb = bounds[(i - s) % P]
            for a in range(ra, rb, piece):
                b = min(a + piece, rb)
                mesh.recv_into(prv, buf[a:b])
                if s < P - 2:
                    pending.append(mesh.send_async(nxt, buf[a:b]))
    finally:
        for p in pending:
            p.wait(comm.timeout)


def reduce_scatter(comm, src, dst, parts, reducer: Reducer, desc) -> None:
    exchange_descs(comm, desc)
    full = comm.scratch("rs", src.nbytes).view(src.dtype)[:src.size]
    hier_allreduce(comm, src, full, reducer)
    a, b = parts[comm.rank]
    dst[...] = full[a:b]
