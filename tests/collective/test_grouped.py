"""Grouped collectives (lists of tensors packed into one op) equal the single-process reference.

Every rank builds every rank's inputs from a seed, computes the reference
(per-tensor allgather / reduce / reduce_scatter / alltoall done in one
process) and compares. Inputs hold small integer values, so float sums are
exact whatever order a backend reduces in.
"""
import numpy as np
import pytest

from _battery import _eq

# (dtype, shape after dim 0, first dim as a function of rank) for the mixed group
SPECS = [("float32", (3,), lambda r: 5 + r), ("int64", (), lambda r: 2 * r), ("float64", (2, 2), lambda r: 1),
         ("int32", (4,), lambda r: 7), ("uint8", (), lambda r: 0), ("float32", (), lambda r: 3 + r % 2)]


def _inputs(rank, world, same_rows=False):
    out = []
    for k, (dt, row, rows) in enumerate(SPECS):
        n = 7 if same_rows else rows(rank)
        rng = np.random.default_rng(100 * k + rank)
        out.append(rng.integers(0, 9, (n,) + row).astype(dt))
    return out


def _torch_bf16(rank):
    import torch
    rng = np.random.default_rng(999 + rank)
    return torch.from_numpy(rng.integers(0, 4, (6, 2)).astype(np.float32)).to(torch.bfloat16)


def _first_error(pairs):
    return next((e for e in pairs if e), None)


def _allgather(comm, async_op=False):
    w, r = comm.world_size, comm.rank
    ts = _inputs(r, w) + [np.float64(r + 0.5) * np.ones(()), _torch_bf16(r)]
    res = comm.grouped_allgather(ts, async_op=async_op)
    res = res.wait() if async_op else res
    every = [_inputs(q, w) + [np.float64(q + 0.5) * np.ones(()), _torch_bf16(q)] for q in range(w)]
    if len(res) != len(ts):
        return f"{len(res)} results for {len(ts)} tensors"
    errs = []
    for k in range(len(ts)):
        for q in range(w):
            got, want = res[k][q], every[q][k]
            if hasattr(want, "float"):  # torch bfloat16
                if got.dtype != want.dtype:
                    return f"tensor {k}: dtype {got.dtype}"
                got, want = got.float().numpy(), want.float().numpy()
            elif got.dtype != want.dtype:
                return f"tensor {k} rank {q}: dtype {got.dtype} != {want.dtype}"
            errs.append(_eq(got, want, f"tensor {k} from rank {q}"))
    return _first_error(errs)


def _reduce(comm, async_op=False):
    w, r = comm.world_size, comm.rank
    ts = _inputs(r, w, same_rows=True) + [_torch_bf16(r)]
    dst = w - 1
    res = comm.grouped_reduce(ts, dst=dst, op="sum", async_op=async_op)
    res = res.wait() if async_op else res
    if res is not ts and res != ts:
        return "grouped_reduce did not return its list"
    errs = []
    for k, t in enumerate(ts):
        mine = (_inputs(r, w, True) + [_torch_bf16(r)])[k]
        if k == len(ts) - 1:
            want = sum(_torch_bf16(q).float() for q in range(w)) if r == dst else mine.float()
            errs.append(_eq(t.float().numpy(), want.numpy(), f"bf16 on rank {r}"))
            continue
        want = sum(_inputs(q, w, True)[k] for q in range(w)).astype(mine.dtype) if r == dst else mine
        errs.append(_eq(t, want, f"tensor {k} on rank {r}"))
    return _first_error(errs)


def _reduce_scatter(comm, op="sum", async_op=False):
    w, r = comm.world_size, comm.rank
    uf = {"sum": np.add, "max": np.maximum}[op]
    ts = [t for t in _inputs(r, w, same_rows=True)] + [np.arange(w * 3 + 1, dtype=np.int16) * (r + 1)]
    res = comm.grouped_reduce_scatter(ts, op=op, async_op=async_op)
    res = res.wait() if async_op else res
    every = [_inputs(q, w, True) + [np.arange(w * 3 + 1, dtype=np.int16) * (q + 1)] for q in range(w)]
    errs = []
    for k in range(len(ts)):
        full = every[0][k].copy()
        for q in range(1, w):
            full = uf(full, every[q][k]).astype(full.dtype)
        want = np.array_split(full, w)[r]
        if res[k].dtype != want.dtype:
            return f"tensor {k}: dtype {res[k].dtype} != {want.dtype}"
        errs.append(_eq(res[k], want, f"{op} tensor {k} part {r}"))
    return _first_error(errs)


def _alltoall(comm, async_op=False):
    w, r = comm.world_size, comm.rank
    ts = _inputs(r, w) + [_torch_bf16(r)]
    res = comm.grouped_alltoall(ts, async_op=async_op)
    res = res.wait() if async_op else res
    errs = []
    for k in range(len(ts)):
        parts = []
        for q in range(w):
            src = (_inputs(q, w) + [_torch_bf16(q)])[k]
            src = src.float().numpy() if hasattr(src, "float") else src
            parts.append(np.array_split(src, w)[r])
        got = res[k].float().numpy() if hasattr(res[k], "float") else res[k]
        errs.append(_eq(got, np.concatenate(parts), f"alltoall tensor {k}"))
    return _first_error(errs)


def _empty(comm):
    res = [comm.grouped_allgather([]), comm.grouped_reduce_scatter([]), comm.grouped_reduce([], dst=0),
           comm.grouped_alltoall([]), comm.grouped_allgather([], async_op=True).wait()]
    return None if all(x == [] for x in res) else f"empty groups gave {res}"


def _mismatch(comm, which):
    from shoal.exceptions import CollectiveError
    w, r = comm.world_size, comm.rank
    if which == "count":
        ts = _inputs(r, w)[: 3 if r == 0 else 4]
        call = lambda: comm.grouped_allgather(ts)  # noqa: E731
    elif which == "row":
        ts = [np.zeros((2, 3 if r == 1 else 4), np.float32)]
        call = lambda: comm.grouped_alltoall(ts)  # noqa: E731
    elif which == "split":  # same dtype and total size, split differently
        ts = [np.zeros(2 if r == 0 else 4), np.zeros(4 if r == 0 else 2)]
        call = lambda: comm.grouped_reduce(ts, dst=0)  # noqa: E731
    elif which == "dtype_groups":  # one packed collective here, two on the other ranks
        ts = [np.zeros(w * 2, np.float32)] + ([] if r == 0 else [np.zeros(w, np.int64)])
        call = lambda: comm.grouped_reduce_scatter(ts)  # noqa: E731
    else:  # same total size, different dtype
        ts = [np.zeros(6, np.float32 if r == 0 else np.int32)]
        call = lambda: comm.grouped_reduce(ts, dst=0)  # noqa: E731
    try:
        call()
    except CollectiveError as e:
        msg = str(e)
    else:
        return f"rank {r}: no CollectiveError"
    # the group stays usable after a mismatch
    x = np.ones(3)
    comm.allreduce(x)
    return None if (x == w).all() and msg else f"group unusable after mismatch: {x}"


class _CountingGroup:
    """Stands in for a torch process group and counts the collectives issued through it."""

    def __init__(self, pg):
        self._pg, self.calls = pg, {}

    def __getattr__(self, name):
        fn = getattr(self._pg, name)

        def counted(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*a, **k)
        return counted


def _allreduce_coalesced(comm, op="sum"):
    """grouped_allreduce of a mixed list equals per-tensor reductions; on the torch backend it
    issues one metadata check and one allreduce per dtype, not one per tensor."""
    import torch
    w, r = comm.world_size, comm.rank
    ts = _inputs(r, w, same_rows=True) + [_torch_bf16(r), torch.arange(6.0).reshape(2, 3) + r]
    counter = None
    if comm.backend == "torch":
        counter = comm.pg = _CountingGroup(comm.pg)
    try:
        res = comm.grouped_allreduce(ts, op=op)
    finally:
        if counter is not None:
            comm.pg = counter._pg
    if len(res) != len(ts) or any(a is not b for a, b in zip(res, ts)):
        return "grouped_allreduce did not return its tensors"
    every = [_inputs(q, w, True) + [_torch_bf16(q), torch.arange(6.0).reshape(2, 3) + q] for q in range(w)]
    for k, got in enumerate(ts):
        parts = [np.asarray(e[k].float() if hasattr(e[k], "float") else e[k], dtype=np.float64)
                 for e in every]
        want = np.sum(parts, axis=0) if op == "sum" else np.max(parts, axis=0)
        have = np.asarray(got.float() if hasattr(got, "float") else got, dtype=np.float64)
        err = _eq(have, want, f"tensor {k}")
        if err:
            return err
    if counter is not None:
        dtypes = len({str(t.dtype).replace("torch.", "") for t in ts})
        if counter.calls.get("allreduce", 0) != dtypes or counter.calls.get("allgather", 0) != 1:
            return f"expected 1 allgather and {dtypes} allreduces (one per dtype), got {counter.calls}"
    return None


def _device_packing(comm):
    """The device (CUDA) paths of grouped reduce and broadcast pack each device's tensors into
    one collective; run here on CPU torch tensors and NumPy arrays, which pack the same way."""
    import torch
    from shoal.collective import _grouped
    w, r = comm.world_size, comm.rank

    def make(q):
        return [torch.arange(6.0).reshape(2, 3) + q, np.arange(4, dtype=np.int64) * (q + 1),
                torch.full((3,), q + 1, dtype=torch.bfloat16), torch.arange(8.0)[::2] * q]
    calls = {"reduce": 0, "broadcast": 0}
    real_reduce, real_bcast = comm._do_reduce, comm._do_broadcast

    def counted(name, fn):
        def call(*a):
            calls[name] += 1
            return fn(*a)
        return call
    comm._do_reduce, comm._do_broadcast = counted("reduce", real_reduce), counted("broadcast", real_bcast)
    try:
        ts = make(r)
        _grouped.device_reduce(comm, ts, 0, "sum")
        every = [make(q) for q in range(w)]
        for k, got in enumerate(ts):
            want = np.sum([np.asarray(e[k].float() if hasattr(e[k], "float") else e[k], np.float64)
                           for e in every], axis=0) if r == 0 else np.asarray(
                make(r)[k].float() if hasattr(make(r)[k], "float") else make(r)[k], np.float64)
            err = _eq(np.asarray(got.float() if hasattr(got, "float") else got, np.float64), want,
                      f"reduce tensor {k}")
            if err:
                return err
        ts = make(r)
        _grouped.device_broadcast(comm, ts, 1 % w)
        for k, got in enumerate(ts):
            want = make(1 % w)[k]
            same = (got == want).all() if hasattr(got, "dtype") and not isinstance(got, np.ndarray) \
                else np.array_equal(got, want)
            if not bool(same) or getattr(got, "dtype", None) != getattr(want, "dtype", None):
                return f"broadcast tensor {k}: {got} != {want}"
    finally:
        comm._do_reduce, comm._do_broadcast = real_reduce, real_bcast
    if calls != {"reduce": 3, "broadcast": 1}:  # float32, int64, bfloat16; one device
        return f"expected 3 reduces (one per dtype) and 1 broadcast, got {calls}"
    return None


def _battery(comm):
    out = {"device_packing": _device_packing(comm),"allreduce_coalesced": _allreduce_coalesced(comm),
           "allreduce_coalesced_max": _allreduce_coalesced(comm, "max"),"allgather": _allgather(comm), "reduce": _reduce(comm), "reduce_scatter_sum": _reduce_scatter(comm),
           "reduce_scatter_max": _reduce_scatter(comm, "max"), "alltoall": _alltoall(comm),
           "empty": _empty(comm)}
    handles = None
    try:  # several async grouped ops in flight, completed in submission order
        w, r = comm.world_size, comm.rank
        h1 = comm.grouped_allgather([np.full(2, r, np.int32)], async_op=True)
        h2 = comm.grouped_reduce_scatter([np.arange(2 * w, dtype=np.float32)], async_op=True)
        h3 = comm.grouped_alltoall([np.full(w, r, np.int64)], async_op=True)
        handles = (h1, h2, h3)
        g, rs, a2a = h1.wait(), h2.wait(), h3.wait()
        errs = [_eq(np.concatenate(g[0]), np.repeat(np.arange(w), 2).astype(np.int32), "async allgather"),
                _eq(rs[0], (np.arange(2 * w, dtype=np.float32) * w)[2 * r:2 * r + 2], "async reduce_scatter"),
                _eq(a2a[0], np.arange(w, dtype=np.int64), "async alltoall"),
                _allgather(comm, async_op=True), _reduce(comm, async_op=True),
                _reduce_scatter(comm, async_op=True), _alltoall(comm, async_op=True)]
        out["async"] = _first_error(errs) or (None if all(h.is_completed() for h in handles) else "not completed")
    except Exception as e:  # reported as the case's failure
        out["async"] = f"{type(e).__name__}: {e}"
    for which in ("count", "row", "dtype", "split", "dtype_groups"):
        out[f"mismatch_{which}"] = _mismatch(comm, which)
    return out


CASES = ["device_packing", "allreduce_coalesced", "allreduce_coalesced_max", "allgather", "reduce", "reduce_scatter_sum", "reduce_scatter_max", "alltoall", "empty", "async",
         "mismatch_count", "mismatch_row", "mismatch_dtype", "mismatch_split", "mismatch_dtype_groups"]


@pytest.fixture(scope="module")
def results(rank_pool):
    return {(b, w): rank_pool.run(_battery, w, backend=b, wait=150)
            for b in ("native", "torch") for w in (2, 4)}


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case", CASES)
def test_grouped_op_matches_reference(results, backend, world, case):
    for rank, res in enumerate(results[(backend, world)]):
        assert res[case] is None, f"{backend} world {world} rank {rank}: {res[case]}"
