"""Collectives on CUDA tensors (skipped without a CUDA device).

The native backend sends CUDA tensors to NCCL when every rank has a GPU of
its own, and otherwise (ranks sharing one GPU, which NCCL refuses) stages
them through host memory; either way the results equal the single-process
reference and stay on the caller's GPU. The torch backend on
``device="cuda"`` is NCCL itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from _battery import make_input, reference

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (these run on a GPU machine)")

DTYPES = ["float32", "float16", "bfloat16", "int64"]


def _t(a, dtype):
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    return t.cuda()


def _np(t):
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _check(out, got, want, what, tol=0.0):
    if not got.is_cuda:
        out[what] = f"{what}: result is on {got.device}, not the GPU"
        return
    g, w = _np(got), np.asarray(want)
    ok = g.shape == w.shape and (np.array_equal(g, w) if tol == 0
                                 else np.allclose(g, w, rtol=tol, atol=tol))
    out[what] = None if ok else f"{what}: {g.reshape(-1)[:4]} vs {w.reshape(-1)[:4]}"


def _cuda_battery(comm):
    torch.cuda.set_device(0)
    out = {}
    W, r = comm.world_size, comm.rank
    for dtype in DTYPES:
        tol = 1e-2 if dtype == "bfloat16" else 0.0
        for op in ("sum", "avg", "max"):
            if dtype == "int64" and op == "avg":
                continue
            for n in (0, 13, 3001):
                ins = [make_input(dtype, n, q) for q in range(W)]
                want = reference("float32" if dtype == "bfloat16" else dtype, op, ins)
                if dtype == "bfloat16":     # the reference of what bf16 inputs hold
                    want = reference("float32", op, [_np(_t(x, dtype)) for x in ins])
                t = _t(ins[r], dtype)
                res = comm.allreduce(t, op=op)
                _check(out, res, want, f"allreduce-{dtype}-{op}-{n}", tol)
                if res is not t:
                    out[f"inplace-{dtype}-{op}-{n}"] = "allreduce did not return its input"
    # out of place, async, grouped
    x = _t(make_input("float32", 1000, r), "float32")
    o = torch.empty_like(x)
    comm.allreduce(x, out=o)
    _check(out, o, reference("float32", "sum", [make_input("float32", 1000, q) for q in range(W)]),
           "allreduce-out")
    _check(out, x, make_input("float32", 1000, r), "allreduce-out-input-unchanged")
    ts = [_t(make_input("float32", n, r, seed=n), "float32") for n in (5, 70, 1 << 16)]
    comm.grouped_allreduce(ts, op="avg")
    for n, t in zip((5, 70, 1 << 16), ts):
        _check(out, t, reference("float32", "avg", [make_input("float32", n, q, seed=n)
                                                    for q in range(W)]), f"grouped-{n}")
    works = [comm.allreduce(_t(np.full(4, r + 1.0, np.float32), "float32"), async_op=True)
             for _ in range(3)]
    for i, w in enumerate(works):
        _check(out, w.wait(), np.full(4, W * (W + 1) / 2, np.float32), f"async-{i}")
    # movement
    b = _t(np.arange(10, dtype=np.float32) + 100 * r, "float32")
    comm.broadcast(b, src=W - 1)
    _check(out, b, np.arange(10, dtype=np.float32) + 100 * (W - 1), "broadcast")
    parts = comm.allgather(_t(np.full((r + 1, 3), r, np.int64), "int64"))
    for q, p in enumerate(parts):
        _check(out, p, np.full((q + 1, 3), q, np.int64), f"allgather-{q}")
    rows = W * 3 + 1
    rs = comm.reduce_scatter(_t(np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) * (r + 1),
                                "float32"))
    full = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) * (W * (W + 1) / 2)
    _check(out, rs, np.array_split(full, W)[r], "reduce_scatter")
    a2a = comm.alltoall(_t(np.repeat(np.arange(W, dtype=np.float32) + 10 * r, 2), "float32"))
    _check(out, a2a, np.repeat(np.arange(W, dtype=np.float32) * 10 + r, 2), "alltoall")
    red = _t(np.full(6, r + 1.0, np.float32), "float32")
    comm.reduce(red, dst=0)
    _check(out, red, np.full(6, W * (W + 1) / 2 if r == 0 else r + 1.0, np.float32), "reduce")
    if W > 1:
        if r == 0:
            comm.send(_t(np.arange(7, dtype=np.float32), "float32"), dst=1, tag=3)
        elif r == 1:
            got = comm.recv(torch.zeros(7, device="cuda"), src=0, tag=3)
            _check(out, got, np.arange(7, dtype=np.float32), "send_recv")
    route = getattr(comm, "_cuda", "torch")
    out["route"] = route if isinstance(route, str) else "nccl"
    return out


@pytest.mark.parametrize("world", [1, 2])
def test_native_backend_on_cuda(rank_pool, world):
    results = rank_pool.run(_cuda_battery, world, wait=240)
    for rank, res in enumerate(results):
        # two ranks share this machine's one GPU, which NCCL refuses: staged through the host
        want = "nccl" if world == 1 or torch.cuda.device_count() >= world else "host"
        assert res.pop("route") == want, f"rank {rank}"
        bad = {k: v for k, v in res.items() if v is not None}
        assert not bad, f"rank {rank}: {bad}"


def test_native_backend_forced_host_staging(rank_pool):
    from shoal.collective import NativeConfig
    results = rank_pool.run(_cuda_battery, 1, config=NativeConfig(cuda="host"), wait=240)
    assert results[0].pop("route") == "host"
    bad = {k: v for k, v in results[0].items() if v is not None}
    assert not bad, bad


def test_torch_backend_nccl(rank_pool):
    results = rank_pool.run(_cuda_battery, 1, backend="torch", wait=240)
    res = results[0]
    res.pop("route")
    bad = {k: v for k, v in res.items() if v is not None}
    assert not bad, bad
