"""DDP: gradients averaged over ranks, bucketed and overlapped with backward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import shoal.train as st
from shoal.exceptions import NonFiniteLossError, RankMismatchError, TaskError
from shoal.train import _bucket
from shoal.train._bucket import BucketManager
from shoal.train.ddp import DDP


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 3))


def _data(n: int = 64):
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------ gang tests
def _steps_identical(config):
    ctx = st.get_context()
    model = st.prepare_model(_mlp(seed=100 + ctx.rank))   # different init on each rank
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    X, Y = _data()
    comm = st.get_communicator()
    same = []
    for step in range(config["steps"]):
        x = X[ctx.rank::2][step * 8:(step + 1) * 8]
        y = Y[ctx.rank::2][step * 8:(step + 1) * 8]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        flats = comm.allgather(_flat(model).clone())
        same.append(bool(torch.equal(flats[0], flats[1])))
    return same


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_parameters_identical_on_all_ranks_after_every_step(gang, overlap):
    for same in gang.run(_steps_identical, {"steps": 4}, DDP(bucket_cap_mb=0.001,
                                                                first_bucket_mb=0.001,
                                                                overlap=overlap)):
        assert same == [True] * 4


def _two_rank_training(config):
    ctx = st.get_context()
    model = st.prepare_model(_mlp(seed=7))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, Y = _data()
    for step in range(3):
        xb, yb = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]
        half = slice(ctx.rank * 8, (ctx.rank + 1) * 8)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb[half]), yb[half]).backward()
        opt.step()
    return _flat(model.module)


def _single_process_training():
    model = _mlp(seed=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, Y = _data()
    for step in range(3):
        xb, yb = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return _flat(model)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_two_ranks_equal_single_process_on_concatenated_batch(gang, overlap):
    expected = _single_process_training()
    for got in gang.run(_two_rank_training, strategy=DDP(bucket_cap_mb=0.002,
                                                         first_bucket_mb=0.001,
                                                         overlap=overlap)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _accumulate(config):
    ctx = st.get_context()
    model = st.prepare_model(_mlp(seed=7))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, Y = _data()
    for step in range(3):
        xb, yb = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]
        mine_x, mine_y = xb[ctx.rank * 8:(ctx.rank + 1) * 8], yb[ctx.rank * 8:(ctx.rank + 1) * 8]
        opt.zero_grad()
        with model.no_sync():       # two micro-batches of 4, synchronized on the second
            (nn.functional.cross_entropy(model(mine_x[:4]), mine_y[:4]) / 2).backward()
        if config.get("explicit"):  # or both local, then synchronized outside a backward
            with model.no_sync():
                (nn.functional.cross_entropy(model(mine_x[4:]), mine_y[4:]) / 2).backward()
            model.sync_gradients()
        else:
            (nn.functional.cross_entropy(model(mine_x[4:]), mine_y[4:]) / 2).backward()
        opt.step()
    return _flat(model.module)


# first_bucket_mb=0.001: the weights (>= 1 KB) are buckets of their own, reduced in place
@pytest.mark.parametrize("first_mb", [1.0, 0.001], ids=["flat-buckets", "in-place-weights"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
@pytest.mark.parametrize("explicit", [False, True], ids=["in-backward", "sync_gradients"])
def test_no_sync_accumulation_equals_large_batch(gang, first_mb, overlap, explicit):
    expected = _single_process_training()
    for got in gang.run(_accumulate, {"explicit": explicit},
                        strategy=DDP(first_bucket_mb=first_mb, overlap=overlap)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _compressed(config):
    ctx = st.get_context()
    model = st.prepare_model(_mlp(seed=7))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, Y = _data()
    for step in range(3):
        xb, yb = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]
        half = slice(ctx.rank * 8, (ctx.rank + 1) * 8)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb[half]), yb[half]).backward()
        opt.step()
    return _flat(model.module)


@pytest.mark.parametrize("first_mb", [1.0, 0.001], ids=["flat-buckets", "in-place-weights"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_fp16_gradient_compression_close_to_full_precision(gang, first_mb, overlap):
    expected = _single_process_training()
    a, b = gang.run(_compressed, strategy=DDP(gradient_compression="fp16",
                                              first_bucket_mb=first_mb, overlap=overlap))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, expected, rtol=1e-2, atol=1e-3)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.used(x)


def _unused_step(config):
    model = st.prepare_model(_Branchy())
    loss = model(torch.ones(3, 4)).sum()
    loss.backward()
    return model.module.used.weight.grad.clone()


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_unused_parameter_needs_find_unused_parameters(gang, overlap):
    with pytest.raises(TaskError, match="find_unused_parameters=True"):
        gang.run(_unused_step, strategy=DDP(overlap=overlap))


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_find_unused_parameters_tolerates_unused_ones(gang, overlap):
    a, b = gang.run(_unused_step, strategy=DDP(find_unused_parameters=True, overlap=overlap))
    torch.testing.assert_close(a, torch.full((2, 4), 3.0))
    assert torch.equal(a, b)


def _mismatched(config):
    width = 8 + st.get_context().rank
    st.prepare_model(nn.Linear(4, width))


def test_model_differing_between_ranks_is_rejected(gang):
    with pytest.raises(RankMismatchError, match="differs between ranks"):
        gang.run(_mismatched)


def _nan_loss(config):
    model = st.prepare_model(_mlp(seed=1))
    x = torch.randn(4, 12)
    if st.get_context().rank == 1:
        x[0, 0] = float("nan")
    model(x).sum().backward()


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_nan_loss_on_one_rank_raises_on_every_rank(gang, overlap):
    with pytest.raises(NonFiniteLossError, match="NaN"):
        gang.run(_nan_loss, strategy=DDP(overlap=overlap))


# ------------------------------------------------------------------ in-process units
class _RecordingComm:
    """A world of one: allreduce completes at once; records the order of buffers."""

    rank, world_size = 0, 1

    def __init__(self):
        self.launched = []
        self.ptrs = []

    def allreduce(self, t, op="sum", async_op=False, **kwargs):
        self.launched.append(t.numel())
        self.ptrs.append(t.data_ptr())

        class Done:
            def wait(self, timeout=None):
                return t
        return Done() if async_op else t


def test_buckets_follow_reverse_parameter_order_and_cap():
    model = _mlp(seed=0)
    params = list(model.parameters())
    bm = BucketManager(params, _RecordingComm(), cap_bytes=32 * 32 * 4, first_cap_bytes=200,
                       compression=None, solo_bytes=1 << 20)
    first = bm.buckets[0].params
    assert first[0] is params[-1]          # the output layer's bias comes first
    assert all(sum(p.numel() for p in b.params) * 4 <= 32 * 32 * 4 or len(b.params) == 1
               for b in bm.buckets)
    assert [p for b in bm.buckets for p in b.params] == params[::-1]


def test_large_parameters_do_not_close_the_small_bucket_and_launch_in_order():
    model = _mlp(seed=0)
    params = list(model.parameters())       # w1 b1 w2 b2 w3 b3; weights >= 384 bytes
    bm = BucketManager(params, _RecordingComm(), cap_bytes=1 << 20, first_cap_bytes=1 << 20,
                       compression=None, solo_bytes=384)
    w1, b1, w2, b2, w3, b3 = params
    # reverse order b3 w3 b2 w2 b1 w1: the biases share one bucket, which goes out once
    # its last one (b1) is ready, after w2 and before w1
    assert [(b.params, b.solo) for b in bm.buckets] == [([w3], True), ([w2], True),
                                                        ([b3, b2, b1], False), ([w1], True)]


def test_gradients_are_views_into_the_bucket_buffer():
    model = _mlp(seed=0)
    comm = _RecordingComm()
    params = list(model.parameters())
    bm = BucketManager(params, comm, cap_bytes=1 << 20, first_cap_bytes=1 << 20,
                       compression=None)
    hooks = [p.register_post_accumulate_grad_hook(bm.mark_ready) for p in params]
    model(torch.randn(2, 12)).sum().backward()
    bm.finish(find_unused=False)
    for h in hooks:
        h.remove()
    for p in model.parameters():
        b = bm.bucket_of[p]
        assert p.grad.data_ptr() == b.views[p].data_ptr()


def test_large_gradients_are_reduced_in_place_without_a_copy():
    model = _mlp(seed=0)
    params = list(model.parameters())
    comm = _RecordingComm()
    # 32x32 floats = 4 KB: the middle weight gets a bucket of its own
    bm = BucketManager(params, comm, cap_bytes=1 << 20, first_cap_bytes=4096, compression=None)
    big = params[2]
    assert [b.params for b in bm.buckets if b.solo] == [[big]]
    model.zero_grad(set_to_none=True)
    hooks = [p.register_post_accumulate_grad_hook(bm.mark_ready) for p in params]
    model(torch.randn(2, 12)).sum().backward()
    bm.finish(find_unused=False)
    for h in hooks:
        h.remove()
    assert big.grad.data_ptr() in comm.ptrs           # autograd's own tensor went out
    assert len(comm.launched) == len(bm.buckets) == 2      # the small ones go out together


def test_buckets_launch_in_index_order_whatever_order_grads_arrive():
    model = _mlp(seed=0)
    params = list(model.parameters())
    comm = _RecordingComm()
    bm = BucketManager(params, comm, cap_bytes=1, first_cap_bytes=1, compression=None)
    for p in params:                         # forward order: the last bucket first
        p.grad = torch.zeros_like(p)
        bm.mark_ready(p)
    in_order = [p.numel() for p in params[::-1]]
    # the last bucket has no backward left to overlap with: it is reduced inline in finish()
    assert comm.launched == in_order[:-1]
    bm.finish(find_unused=False)
    assert comm.launched == in_order


def _async_log(comm):
    """Which launches went out async (during backward) and which inline."""
    log, plain = [], comm.allreduce

    def allreduce(t, op="sum", async_op=False, **kwargs):
        log.append((t.numel(), async_op))
        return plain(t, op=op, async_op=async_op, **kwargs)
    comm.allreduce = allreduce
    return log


def test_a_bucket_with_little_backward_left_after_it_is_reduced_inline_with_the_rest(monkeypatch):
    monkeypatch.setattr(_bucket, "_MIN_OVERLAP_S", 30.0)   # a unit test's steps take far less
    model = _mlp(seed=0)
    params = list(model.parameters())
    comm = _RecordingComm()
    log = _async_log(comm)
    bm = BucketManager(params, comm, cap_bytes=1, first_cap_bytes=1, compression=None)
    n = len(bm.buckets)
    sizes = [b.params[0].numel() for b in bm.buckets]

    def step():
        log.clear()
        for p in params[::-1]:               # backward order: bucket 0 first
            p.grad = torch.ones_like(p)
            bm.mark_ready(p)
        bm.finish(find_unused=False)
        return list(log)

    # first step: no timings yet, so every bucket but the last goes out during backward
    assert step() == [(s, i < n - 1) for i, s in enumerate(sizes)]
    assert all(t is not None and t >= 0 for t in bm.tail_s)
    # backward ended long after bucket 0 but soon after bucket 1: from bucket 1 on, inline
    bm.tail_s = [60.0] + [0.0] * (n - 1)
    assert step() == [(s, i == 0) for i, s in enumerate(sizes)]
    # with plenty of backward after every bucket, all but the last overlap again
    bm.tail_s = [60.0] * n
    assert step() == [(s, i < n - 1) for i, s in enumerate(sizes)]
    # the timings of each step decide the next: here backward ended right after each
    # bucket was ready, so the next step reduces every bucket inline
    assert all(t < 30.0 for t in bm.tail_s)
    assert step() == [(s, False) for s in sizes]


def test_inline_mode_reduces_every_bucket_at_the_end_in_order():
    model = _mlp(seed=0)
    params = list(model.parameters())
    comm = _RecordingComm()
    bm = BucketManager(params, comm, cap_bytes=1, first_cap_bytes=1, compression=None,
                       overlap=False)
    for p in params:
        p.grad = torch.ones_like(p)
        bm.mark_ready(p)
    assert comm.launched == []               # nothing goes out during backward
    bm.finish(find_unused=False)
    assert comm.launched == [p.numel() for p in params[::-1]]


def test_ddp_rejects_unknown_compression():
    with pytest.raises(ValueError, match="gradient_compression"):
        DDP(gradient_compression="int4")


def _bn_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _sync_bn_training(config):
    ctx = st.get_context()
    model = st.prepare_model(_bn_model(), sync_batchnorm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, Y = _data()
    for step in range(3):
        xb, yb = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]
        half = slice(ctx.rank * 8, (ctx.rank + 1) * 8)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb[half]), yb[half]).backward()
        opt.step()
    bn = model.module[1]
    return _flat(model.module), bn.running_mean.clone(), bn.running_var.clone()


def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch(gang):
    model = _bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, Y = _data()
    for step in range(3):
        xb, yb = X[step * 16:(step + 1) * 16], Y[step * 16:(step + 1) * 16]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    for flat, rm, rv in gang.run(_sync_bn_training):
        torch.testing.assert_close(flat, _flat(model), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rm, model[1].running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rv, model[1].running_var, rtol=1e-4, atol=1e-5)


def test_gloo_adapter_backend_trains_the_same(gang):
    expected = _single_process_training()
    for got in gang.run(_two_rank_training, strategy=DDP(backend="gloo")):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_finite_check_is_exact_when_the_sum_overflows():
    big = torch.full((1000,), 3e38)                  # finite, but its float32 sum is inf
    assert _bucket._all_finite(big)
    assert _bucket._all_finite(torch.full((100,), 60000.0, dtype=torch.float16))
    mixed = torch.tensor([3e38, 3e38, -3e38, -3e38])  # partial sums inf - inf = nan
    assert _bucket._all_finite(mixed)
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(4096)
        t[1234] = bad
        assert not _bucket._all_finite(t)
