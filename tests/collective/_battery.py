"""Checks that run inside rank processes; each returns None (pass) or a failure message.

Every rank builds every rank's input from a seed, so each can compute the
single-process reference itself and compare exactly (reductions run in rank
order in the accumulation dtype, as the reference does).
"""
from __future__ import annotations

import functools

import numpy as np

NUMPY_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                "float16", "float32", "float64", "complex64", "complex128"]
OPS = ["sum", "avg", "min", "max", "prod"]
_UF = {"sum": np.add, "avg": np.add, "min": np.minimum, "max": np.maximum, "prod": np.multiply}


def make_input(dtype: str, n: int, rank: int, seed: int = 0):
    rng = np.random.default_rng(seed * 1000 + rank)
    if dtype == "bool":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.startswith("complex"):
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    if dtype.startswith("float") or dtype == "bfloat16":
        return (rng.standard_normal(n) * 10).astype("float32" if dtype == "bfloat16" else dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100), n, endpoint=True).astype(dtype)


def reference(dtype: str, op: str, inputs: list, prescale=1.0, postscale=1.0):
    """Single-process result: rank-order reduction in the accumulation dtype."""
    world, dt = len(inputs), np.dtype(dtype)
    scaled = prescale != 1.0 or postscale != 1.0
    if dtype == "float16":
        acc = np.dtype(np.float32)
    elif scaled:
        acc = dt if dt.kind in "fc" else np.dtype(np.float64)
    else:
        acc = None
    xs = inputs if acc is None else [x.astype(acc) * acc.type(prescale) for x in inputs]
    r = functools.reduce(lambda a, b: _UF[op](a, b), xs[1:], xs[0].copy())
    kind = (acc or dt).kind
    if op == "avg" and dt.kind != "b" or (op == "avg" and acc is not None):
        r = np.floor_divide(r, world) if dt.kind in "iu" else (r / world).astype(r.dtype)
    if acc is None:
        return r
    r = (r * acc.type(postscale)).astype(acc)
    if dt.kind == "b":
        return r != 0
    if dt.kind in "iu" and kind == "f":
        r = np.trunc(r)
    return r.astype(dt)


# Across hosts the reduction order follows the ring, not the rank order: floats then
# agree to rounding, not bit for bit.
TOLERANT = False


def _eq(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"{what}: shape {got.shape} != {want.shape}"
    if got.dtype.kind == "c":  # complex products differ in the last bit between numpy's loops
        ok = np.allclose(got, want, rtol=1e-5 if got.dtype == np.complex64 else 1e-12, equal_nan=True)
    elif got.dtype.kind == "f" and TOLERANT:
        ok = np.allclose(got, want, rtol=1e-2 if got.dtype == np.float16 else 1e-5, atol=1e-6,
                         equal_nan=True)
    elif got.dtype.kind == "f":
        ok = np.array_equal(got, want, equal_nan=True)
    else:
        ok = np.array_equal(got, want)
    if not ok:
        bad = np.flatnonzero(np.asarray(got != want).reshape(-1))[:3]
        return f"{what}: mismatch at {bad.tolist()}: {got.reshape(-1)[bad]} vs {want.reshape(-1)[bad]}"
    return None


def allreduce_cases(comm, sizes, dtypes=NUMPY_DTYPES, ops=OPS, with_torch=True):
    """{case: failure or None} for allreduce of every dtype x op x size (+ torch bfloat16)."""
    if with_torch:
        import torch
    out = {}
    W, r = comm.world_size, comm.rank
    for dtype in dtypes + (["bfloat16"] if with_torch else []):
        for op in ops:
            if dtype.startswith("complex") and op in ("min", "max"):
                continue
            for n in sizes:
                key = f"{dtype}-{op}-{n}"
                inputs = [make_input(dtype, n, q, seed=n) for q in range(W)]
                if dtype == "bfloat16":
                    ts = [torch.from_numpy(x).to(torch.bfloat16) for x in inputs]
                    mine = ts[r].clone()
                    comm.allreduce(mine, op=op)
                    acc = [t.float().numpy() for t in ts]
                    want = reference("float32", op, acc) if op in ("min", "max") else None
                    if want is None:
                        s = functools.reduce(lambda a, b: _UF[op](a, b), acc[1:], acc[0].copy())
                        if op == "avg":
                            s = s / np.float32(W)
                        want = s
                    want_t = torch.from_numpy(np.ascontiguousarray(want, np.float32)).to(torch.bfloat16)
                    out[key] = _eq(mine.view(torch.int16).numpy(), want_t.view(torch.int16).numpy(), key)
                else:
                    mine = inputs[r].copy()
                    comm.allreduce(mine, op=op)
                    out[key] = _eq(mine, reference(dtype, op, inputs), key)
    return out


def ops_cases(comm, with_torch=True):
    """{case: failure or None} for every other op of the API (torch inputs too, unless told)."""
    W, r = comm.world_size, comm.rank
    out = {}
    ins = [make_input("float32", 3001, q, seed=7) for q in range(W)]
    want = reference("float32", "sum", ins)

    x = ins[r].copy()
    o = np.empty_like(x)
    comm.allreduce(x, out=o)
    out["allreduce_out_of_place"] = _eq(o, want, "out") or _eq(x, ins[r], "input kept")

    base = np.zeros(6002, np.float32)
    base[::2] = ins[r]
    view = base[::2]
    comm.allreduce(view)
    out["allreduce_non_contiguous_numpy"] = _eq(base[::2], want, "strided") or _eq(base[1::2], 0 * want, "gaps")

    if with_torch:
        out.update(_torch_cases(comm, ins))

    for dtype in ("float32", "int32", "float16"):
        xs = [make_input(dtype, 500, q, seed=3) for q in range(W)]
        y = xs[r].copy()
        comm.allreduce(y, op="sum", prescale=0.5, postscale=3.0)
        out[f"allreduce_scaled_{dtype}"] = _eq(y, reference(dtype, "sum", xs, 0.5, 3.0), dtype)


    root = W - 1
    y = ins[r].copy()
    comm.reduce(y, dst=root, op="max")
    out["reduce_to_root"] = _eq(y, reference("float32", "max", ins) if r == root else ins[r], "reduce")

    rows = 2 * W + 1
    mats = [make_input("int64", rows * 3, q, seed=11).reshape(rows, 3) for q in range(W)]
    part = comm.reduce_scatter(mats[r].copy(), op="sum")
    full = reference("int64", "sum", mats)
    out["reduce_scatter_uneven_rows"] = _eq(part, np.array_split(full, W)[r], "reduce_scatter")
    bigs = [make_input("float32", 50_000, q, seed=12) for q in range(W)]
    part = comm.reduce_scatter(bigs[r], op="max")
    out["reduce_scatter_large"] = _eq(part, np.array_split(reference("float32", "max", bigs), W)[r], "rs")

    parts = comm.allgather(np.full((3, 2), r, np.int16))
    out["allgather_equal"] = _eq(np.concatenate(parts), np.repeat(np.arange(W), 6).reshape(-1, 2)
                                 .astype(np.int16), "allgather")
    parts = comm.allgather(np.full((r + 1, 2), r, np.float64))
    wantv = np.concatenate([np.full((q + 1, 2), q, np.float64) for q in range(W)])
    out["allgather_variable_rows"] = _eq(np.concatenate(parts), wantv, "allgatherv")
    bigs = [make_input("float64", 20_000 + q * 7, q, seed=13) for q in range(W)]
    o = np.empty(sum(b.size for b in bigs))
    comm.allgather(bigs[r], out=o)
    out["allgather_large_into_out"] = _eq(o, np.concatenate(bigs), "allgather out")
    parts = comm.allgather(np.float32(r))
    out["allgather_scalars"] = _eq(np.array(parts), np.arange(W, dtype=np.float32), "scalars")

    b = make_input("float64", 40_000, 99) if r == W - 1 else np.zeros(40_000)
    comm.broadcast(b, src=W - 1)
    out["broadcast_large"] = _eq(b, make_input("float64", 40_000, 99), "broadcast")

    g = comm.gather(np.full(r + 2, r, np.int32), dst=0)
    out["gather_to_root"] = (_eq(np.concatenate(g), np.concatenate([np.full(q + 2, q, np.int32)
                                                                    for q in range(W)]), "gather")
                             if r == 0 else (None if g is None else "non-root got a list"))

    sp = [np.arange(q + 1, dtype=np.int64) * 10 for q in range(W)] if r == 0 else None
    got = comm.scatter(sp, src=0)
    out["scatter_variable_parts"] = _eq(got, np.arange(r + 1, dtype=np.int64) * 10, "scatter")

    send_splits = [(q + r) % 3 for q in range(W)]
    rows_in = sum(send_splits)
    xin = np.stack([np.array([r, q, k], np.int32) for q in range(W) for k in range(send_splits[q])]) \
        if rows_in else np.zeros((0, 3), np.int32)
    got = comm.alltoall(xin, send_splits=send_splits)
    wanta = [np.array([q, r, k], np.int32) for q in range(W) for k in range((r + q) % 3)]
    wanta = np.stack(wanta) if wanta else np.zeros((0, 3), np.int32)
    out["alltoall_with_splits"] = _eq(got, wanta, "alltoall")
    got = comm.alltoall(np.arange(W * 2) + 100 * r)
    out["alltoall_even"] = _eq(got, np.array([100 * q + 2 * r + k for q in range(W) for k in range(2)]),
                               "alltoall even")

    comm.barrier()
    out["barrier"] = None

    gts = [np.full(5, float(r)), np.full((2, 3), r, np.int16), np.full(1, r == 0)]
    comm.grouped_broadcast(gts, src=0)
    out["grouped_broadcast"] = (_eq(gts[0], np.zeros(5), "g0") or _eq(gts[1], np.zeros((2, 3), np.int16), "g1")
                                or _eq(gts[2], np.ones(1, bool), "g2"))

    if W > 1:
        msg = np.full(1000, r, np.float32)
        rec = np.empty(1000, np.float32)
        w = comm.send(msg, dst=(r + 1) % W, tag=5, async_op=True)
        comm.recv(rec, src=(r - 1) % W, tag=5)
        w.wait(30)
        out["send_recv_ring"] = _eq(rec, np.full(1000, (r - 1) % W, np.float32), "p2p")
    if W > 1 and comm.nonblocking_send:
        # async sends larger than a socket buffer (finished by the sender thread) and a small
        # one after them arrive in the order they were sent; so does a synchronous send after
        # async ones (rank 0 to rank 1)
        n, q = 1 << 21, (r - 1) % W
        works = [comm.send(np.full(n, r * 10 + k, np.float32), dst=(r + 1) % W, tag=6,
                           async_op=True) for k in range(3)]
        works.append(comm.send(np.full(3, r, np.int64), dst=(r + 1) % W, tag=7, async_op=True))
        errs = [_eq(comm.recv(np.empty(n, np.float32), src=q, tag=6),
                    np.full(n, q * 10 + k, np.float32), f"big {k}") for k in range(3)]
        errs.append(_eq(comm.recv(np.empty(3, np.int64), src=q, tag=7), np.full(3, q, np.int64),
                        "small"))
        for w in works:
            w.wait(30)
        errs.append(None if all(w.is_completed() for w in works) else "a send is not completed")
        if r == 0:
            w = comm.send(np.full(n, 1.0, np.float32), dst=1, tag=8, async_op=True)
            comm.send(np.full(3, 2, np.int64), dst=1, tag=9)
            w.wait(30)
        elif r == 1:
            errs.append(_eq(comm.recv(np.empty(n, np.float32), src=0, tag=8),
                            np.full(n, 1.0, np.float32), "async then sync: async"))
            errs.append(_eq(comm.recv(np.empty(3, np.int64), src=0, tag=9),
                            np.full(3, 2, np.int64), "async then sync: sync"))
        out["send_async_in_order"] = next((e for e in errs if e), None)

    obj = comm.broadcast_object({"from": r, "list": [1, 2]} if r == 0 else None, src=0)
    out["broadcast_object"] = None if obj == {"from": 0, "list": [1, 2]} else f"got {obj}"
    objs = comm.allgather_object(("rank", r))
    out["allgather_object"] = None if objs == [("rank", q) for q in range(W)] else f"got {objs}"

    ts = [make_input("float32", 100, r, seed=1), make_input("int64", 7, r, seed=2),
          make_input("float32", 3, r, seed=4)]
    comm.grouped_allreduce(ts)
    wants = [reference("float32", "sum", [make_input("float32", 100, q, seed=1) for q in range(W)]),
             reference("int64", "sum", [make_input("int64", 7, q, seed=2) for q in range(W)]),
             reference("float32", "sum", [make_input("float32", 3, q, seed=4) for q in range(W)])]
    out["grouped_allreduce_mixed_dtypes"] = next((e for e in (_eq(a, b, "grouped") for a, b in
                                                              zip(ts, wants)) if e), None)

    tens = [make_input("float32", 50 + i, r, seed=20 + i) for i in range(20)]
    works = [comm.allreduce(t, async_op=True) for t in tens]
    done = [w.wait(60) for w in works]
    errs = [_eq(d, reference("float32", "sum", [make_input("float32", 50 + i, q, seed=20 + i)
                                                for q in range(W)]), f"async {i}")
            for i, d in enumerate(done)]
    out["async_allreduce_results"] = next((e for e in errs if e), None)
    out["async_handles_completed"] = None if all(w.is_completed() for w in works) else "not completed"
    x = np.ones(10)
    w = comm.allreduce(x, async_op=True)
    y = np.ones(10)
    comm.allreduce(y)  # a sync op queues behind the async one
    w.wait(30)
    out["sync_after_async_ordered"] = _eq(x, np.full(10, W, float), "x") or _eq(y, np.full(10, W, float), "y")
    return out


def _torch_cases(comm, ins):
    import torch
    W, r = comm.world_size, comm.rank
    out = {}
    m = torch.from_numpy(np.stack([x.reshape(-1)[:40] for x in ins])).float()  # W x 40
    mine = m[r].reshape(8, 5).clone().t()  # non-contiguous torch tensor
    comm.allreduce(mine)
    out["allreduce_non_contiguous_torch"] = _eq(mine.t().reshape(-1).numpy(), m.sum(0).numpy(), "torch")
    t = torch.from_numpy(ins[r].copy())
    comm.allreduce(t, op="avg")
    out["allreduce_torch_avg"] = _eq(t.numpy(), reference("float32", "avg", ins), "torch avg")
    tparts = comm.allgather(torch.full((2,), float(r), dtype=torch.bfloat16))
    out["allgather_torch_bfloat16"] = _eq(torch.cat(tparts).float().numpy(),
                                          np.repeat(np.arange(W), 2).astype(np.float32), "bf16")
    return out


def subgroup_cases(comm):
    W, r = comm.world_size, comm.rank
    out = {}
    evens = list(range(0, W, 2))
    g = comm.new_group(evens)
    if r in evens:
        x = np.array([r], np.int64)
        g.allreduce(x)
        out["new_group_allreduce"] = _eq(x, np.array([sum(evens)]), "new_group")
        g.destroy()
    else:
        out["new_group_allreduce"] = None if g is None else "non-member got a group"
    s = comm.split(color=r % 2, key=-r)
    members = sorted([q for q in range(W) if q % 2 == r % 2], reverse=True)
    out["split_rank_order_by_key"] = None if (s.rank, s.world_size) == (members.index(r), len(members)) \
        else f"split rank {s.rank}/{s.world_size}"
    x = np.array([r], np.int64)
    s.allreduce(x)
    out["split_allreduce"] = _eq(x, np.array([sum(members)]), "split")
    s.destroy()
    if W == 4:
        from shoal.collective import Mesh
        mesh = Mesh((2, 2), ("dp", "tp"), comm)
        tp = mesh.get_group("tp")
        dp = mesh.get_group("dp")
        x = np.array([r], np.int64)
        tp.allreduce(x)
        y = np.array([r], np.int64)
        dp.allreduce(y)
        ok = (mesh.coords == {"dp": r // 2, "tp": r % 2} and int(x[0]) == sum(mesh.ranks_of("tp"))
              and int(y[0]) == sum(mesh.ranks_of("dp")) and mesh.ranks_of("tp") == [2 * (r // 2), 2 * (r // 2) + 1])
        out["mesh_2x2_groups"] = None if ok else f"coords {mesh.coords} tp {x} dp {y}"
        mesh.destroy()
    return out
