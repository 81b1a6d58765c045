"""Horovod's semantics on N ranks: mismatches, join, process sets, grouped and sparse ops,
SyncBatchNorm, timeline. Prints one 'CHECK name <json>' line per result."""
import json
import os
import sys

import torch

import shoal.horovod as hvd


def check(name, value):
    print(f"CHECK {name} {json.dumps(value)}", flush=True)


hvd.init()
r, n = hvd.rank(), hvd.size()
ones = torch.ones(3)


def attempt(fn):
    """[raised, exception type, message] of one call."""
    try:
        fn()
        return [False, None, None]
    except Exception as e:  # noqa: BLE001 - the test compares what every rank raised
        return [True, type(e).__name__, str(e), isinstance(e, RuntimeError)]


def next_op_ok():
    return hvd.allreduce(ones, op=hvd.Sum).tolist() == [float(n)] * 3


# ---------------------------------------------------------------- mismatches
cases = {
    "allreduce_shape": lambda: hvd.allreduce(torch.ones(r + 1)),
    "allreduce_dtype": lambda: hvd.allreduce(torch.ones(3, dtype=torch.float32 if r == 0
                                                        else torch.float64)),
    "allreduce_op": lambda: hvd.allreduce(ones, op=hvd.Sum if r == 0 else hvd.Max),
    "allreduce_prescale": lambda: hvd.allreduce(ones, prescale_factor=1.0 + r),
    "grouped_allreduce_count": lambda: hvd.grouped_allreduce([ones] * (1 + (r == 0))),
    "allgather_trailing_shape": lambda: hvd.allgather(torch.ones(2, r + 1)),
    "allgather_dtype": lambda: hvd.allgather(torch.ones(2, dtype=torch.int32 if r else torch.int64)),
    "broadcast_root": lambda: hvd.broadcast(ones, root_rank=r),
    "broadcast_shape": lambda: hvd.broadcast(torch.ones(r + 2), root_rank=0),
    "reducescatter_shape": lambda: hvd.reducescatter(torch.ones(n * (r + 1))),
    "alltoall_dtype": lambda: hvd.alltoall(torch.ones(n, dtype=torch.float32 if r else torch.int32)),
    "op_kind": lambda: hvd.allreduce(ones) if r == 0 else hvd.allgather(ones),
    "names": lambda: hvd.allreduce(ones, name=f"tensor-of-rank-{r}"),
    "root_out_of_range_on_one_rank": lambda: hvd.broadcast(ones, root_rank=99 if r == 0 else 0),
    "allgather_scalar_on_one_rank": lambda: hvd.allgather(torch.tensor(1.0) if r == 0 else ones),
    "alltoall_splits_on_one_rank": lambda: hvd.alltoall(torch.ones(n), splits=[n + 1] + [0] * (n - 1)
                                                        if r == 0 else None),
}
for what, fn in cases.items():
    check(f"mismatch_{what}", attempt(fn) + [next_op_ok()])

# ---------------------------------------------------------------- duplicate in-flight name
# The checking rank submits "dup" while the others wait on "gate" (so "dup" cannot finish
# yet), then submits it again: ValueError, as Horovod. Then it opens the gate.
t = torch.ones(4)
dups = []
for checker in (0, n - 1):
    if r == checker:
        h = hvd.allreduce_async(t, name=f"dup{checker}", op=hvd.Sum)
        dups.append(attempt(lambda: hvd.allreduce_async(t, name=f"dup{checker}"))[1])
        hvd.allreduce(t, name=f"gate{checker}")
    else:
        hvd.allreduce(t, name=f"gate{checker}")
        h = hvd.allreduce_async(t, name=f"dup{checker}", op=hvd.Sum)
    dups.append(hvd.synchronize(h).tolist())
check("duplicate_name", [dups, next_op_ok()])

# ---------------------------------------------------------------- integer average
xi = torch.tensor([3 * r + 1, -(3 * r + 1), 7, -7], dtype=torch.int32)
check("int_average", hvd.allreduce(xi).tolist())
check("int64_average", hvd.allreduce(xi.long(), op=hvd.Average).tolist())

# ---------------------------------------------------------------- join with each collective
if r == 0:
    check("join_last", hvd.join())
else:
    out = {}
    out["avg"] = hvd.allreduce(torch.full((2,), float(r))).tolist()
    out["sum"] = hvd.allreduce(torch.full((2,), float(r)), op=hvd.Sum).tolist()
    out["int_avg"] = hvd.allreduce(torch.tensor([r * 5 + 1, -1], dtype=torch.int64)).tolist()
    out["grouped"] = [x.tolist() for x in hvd.grouped_allreduce(
        [torch.ones(2), torch.ones(1, dtype=torch.float64)], op=hvd.Sum)]
    out["allgather"] = hvd.allgather(torch.full((1, 2), float(r))).tolist()
    out["grouped_allgather"] = [x.tolist() for x in hvd.grouped_allgather(
        [torch.full((r,), float(r)), torch.full((1, 2), float(r))])]
    hvd.barrier()
    out["barrier"] = True
    for what, fn in [("broadcast", lambda: hvd.broadcast(ones, root_rank=1)),
                     ("alltoall", lambda: hvd.alltoall(torch.ones(n))),
                     ("reducescatter", lambda: hvd.reducescatter(torch.ones(n))),
                     ("grouped_reducescatter", lambda: hvd.grouped_reducescatter([torch.ones(n)]))]:
        res = attempt(fn)
        out[f"{what}_raised"] = res[0] and "hvd.join()" in res[2]
    check("join_ops", out)
    if r == n - 1:
        # completes only once every other rank has joined (they stand in with zeros), so
        # this rank joins strictly last
        check("alone_after_joins", hvd.allreduce(torch.full((2,), float(r)), op=hvd.Sum,
                                                 name="alone").tolist())
    check("join_last", hvd.join())
check("after_join_ok", next_op_ok())

# ---------------------------------------------------------------- process sets at once
# sizes 1 and 1 (two ranks), or 1, 1, 2 and 2 (three ranks); the global set besides
last = hvd.add_process_set([n - 1])
first = hvd.add_process_set(hvd.ProcessSet([0]))
sets = [last, first]
if n > 2:
    sets += [hvd.add_process_set([0, 1]), hvd.add_process_set([0, 2])]
pair = sets[2] if n > 2 else hvd.global_process_set
hs = []
for ps in sets + [hvd.global_process_set]:
    if ps.included():
        hs.append((ps, hvd.allreduce_async(torch.full((2,), float(r + 1)), op=hvd.Sum,
                                           process_set=ps)))
check("process_set_sums", {str(ps.ranks): hvd.synchronize(h).tolist() for ps, h in hs})
check("process_set_info", [[ps.size(), ps.rank(), ps.included()] for ps in sets])
check("process_set_duplicate", attempt(lambda: hvd.add_process_set([n - 1]))[1])
if pair.included():
    check("process_set_allgather", hvd.allgather(torch.tensor([r]), process_set=pair).tolist())
    check("process_set_broadcast", hvd.broadcast(torch.tensor([float(r)]), root_rank=1,
                                                 process_set=pair).tolist())
    m = torch.nn.Linear(2, 1)
    torch.manual_seed(r)
    torch.nn.init.normal_(m.weight)
    hvd.broadcast_parameters(m.state_dict(), root_rank=0, process_set=pair)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1),
                                   named_parameters=m.named_parameters(), process_set=pair)
    m(torch.full((1, 2), float(r + 1))).sum().backward()
    opt.step()
    check("process_set_optimizer_bias_grad", m.bias.grad.tolist())
check("not_a_member", attempt(lambda: hvd.allreduce(ones, process_set=last))[1] if r != n - 1
      else "member")
check("remove_process_set", [hvd.remove_process_set(last), hvd.remove_process_set(last)])
check("after_sets_ok", next_op_ok())

# ---------------------------------------------------------------- grouped ops
ga = hvd.grouped_allgather([torch.full((r + 1,), float(r)), torch.full((1, 2), float(r))])
check("grouped_allgather", [x.tolist() for x in ga])
gr = hvd.grouped_reducescatter([torch.arange(float(2 * n)) * (r + 1), torch.ones(n, 2)],
                               op=hvd.Sum)
check("grouped_reducescatter", [x.tolist() for x in gr])

# ---------------------------------------------------------------- sparse
sp = torch.sparse_coo_tensor([[r, n]], [float(r + 1), 1.0], (n + 1,), check_invariants=True)
dense = hvd.synchronize(hvd.sparse_allreduce_async(sp, name="sp", op=hvd.Sum)).to_dense()
check("sparse_sum", dense.tolist())
for as_dense in (False, True):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=1.0),
                                   named_parameters=emb.named_parameters(),
                                   sparse_as_dense=as_dense)
    w0 = emb.weight.detach().clone()
    emb(torch.tensor([r, 4])).sum().backward()
    was_sparse = emb.weight.grad.is_sparse
    opt.step()
    # each rank's gradient is ones on rows r and 4; the average over n ranks
    counts = torch.zeros(5)
    counts[:n] += 1
    counts[4] += n
    want = w0 - (counts / n)[:, None]
    check(f"sparse_embedding_dense{as_dense}",
          [was_sparse, bool(torch.allclose(emb.weight.detach(), want, atol=1e-6))])

# ---------------------------------------------------------------- SyncBatchNorm
torch.manual_seed(1)
full = torch.randn(3 * n, 4, 5) * 3 + 1
mine = full[3 * r:3 * (r + 1)].clone().requires_grad_()
sbn, bn = hvd.SyncBatchNorm(4), torch.nn.BatchNorm1d(4)
with torch.no_grad():
    sbn.weight.copy_(torch.arange(1.0, 5.0))
    bn.weight.copy_(torch.arange(1.0, 5.0))
coef = torch.randn(3 * n, 4, 5)
y = sbn(mine)
(y * coef[3 * r:3 * (r + 1)]).sum().backward()
fullg = full.clone().requires_grad_()
yf = bn(fullg)
(yf * coef).sum().backward()
check("syncbn", {
    "out": bool(torch.allclose(y, yf[3 * r:3 * (r + 1)], atol=1e-5)),
    "grad_input": bool(torch.allclose(mine.grad, fullg.grad[3 * r:3 * (r + 1)], atol=1e-4)),
    "grad_weight": bool(torch.allclose(hvd.allreduce(sbn.weight.grad, op=hvd.Sum), bn.weight.grad,
                                       atol=1e-4)),
    "running": bool(torch.allclose(sbn.running_mean, bn.running_mean, atol=1e-5) and
                    torch.allclose(sbn.running_var, bn.running_var, atol=1e-5)),
})

# ---------------------------------------------------------------- timeline
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), "timeline.json")
hvd.start_timeline(path)
hvd.allreduce(ones, name="timed_tensor")
hvd.allgather(ones, name="gathered")
hvd.stop_timeline()
if r == 0:
    with open(path) as f:
        events = json.load(f)
    check("timeline", sorted({(e["tid"], e["name"]) for e in events if e.get("ph") == "X"}))
check("introspection", [hvd.mpi_built(), hvd.mpi_enabled(), hvd.gloo_enabled(),
                        hvd.ccl_built(), hvd.ddl_built(), hvd.rocm_built(),
                        attempt(hvd.mpi_threads_supported)[1]])
hvd.shutdown()

# ---------------------------------------------------------------- init again, with process sets
given = [hvd.ProcessSet([0]), hvd.ProcessSet([n - 1])]
hvd.init(process_sets=given)
check("reinit_process_sets", [hvd.is_initialized(), hvd.global_process_set.size(),
                              [ps.included() for ps in given] == [r == 0, r == n - 1],
                              hvd.allreduce(ones, op=hvd.Sum).tolist() == [float(n)] * 3])
hvd.shutdown()
check("done", True)
