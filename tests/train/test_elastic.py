"""Elastic training: State commit/restore, shrink on a dead rank, grow on a new slot."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import threading
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shoal
import shoal.train as st
from shoal.exceptions import TrainingFailedError
from shoal.train import elastic
from tests._elastic_logs import assert_each_epoch_used_every_sample_once

N = 96          # samples per epoch
BATCH = 4       # per rank


def _digest(model, optimizer) -> tuple[str, str]:
    hp = hashlib.sha256()
    for t in model.state_dict().values():
        hp.update(t.detach().numpy().tobytes())
    ho = hashlib.sha256()
    for i, s in sorted(optimizer.state_dict()["state"].items()):
        for k, v in sorted(s.items()):
            ho.update(f"{i}{k}".encode())
            ho.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode())
    return hp.hexdigest(), ho.hexdigest()


def _elastic_loop(config):
    """Trains until the gang has shrunk and grown back, then one more epoch; every rank
    writes what it trained on (before each commit) and what it holds after each sync."""
    out = config["out"]
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(N, 8), torch.randn(N, 1), torch.arange(N))
    model = st.prepare_model(nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = st.prepare_data_loader(DataLoader(ds, batch_size=BATCH, shuffle=True))
    state = elastic.State(model=model, optimizer=optimizer, loader=loader, epoch=0,
                          worlds=[], done=False, local={"steps": 0})

    def on_reset():
        state.worlds = state.worlds + [st.get_context().world_size]
    state.register_reset_callbacks([on_reset])
    pid = os.getpid()

    @elastic.run
    def train(state):
        ctx = st.get_context()
        p, o = _digest(model, optimizer)
        with open(f"{out}/sync-{pid}", "a") as f:
            f.write(json.dumps([state.commits, ctx.world_size, ctx.rank, p, o,
                                state.lost_local]) + "\n")
        for state.epoch in range(state.epoch, 200):
            loader.set_epoch(state.epoch)
            for x, y, idx in loader:
                # logged before the step, with its number and the gang's generation: a step
                # cut short by a dead rank is done again by the next generation (tests/_elastic_logs.py)
                ctx = st.get_context()
                with open(f"{out}/steps-{pid}", "a") as f:
                    f.write(json.dumps([state.epoch, ctx.rank, ctx.world_size, idx.tolist(),
                                        state.commits + 1, ctx.attempt]) + "\n")
                optimizer.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                state.local["steps"] += 1
                state.commit()
                time.sleep(0.03)
            w = state.worlds
            if state.done:
                break
            small, full = config.get("sizes", (2, 3))
            state.done = small in w and w[-1] == full and w.index(small) < len(w) - 1
    train(state)
    return st.get_context().world_size


def _kill_rank_one(out: str, stop: threading.Event, world: int = 3, sig=signal.SIGKILL,
                   ranks=(1,), victims: list | None = None) -> None:
    """Once ``world`` ranks have trained a few steps, send ``sig`` to the processes of
    ``ranks`` (rank 1 by default); their pids are appended to ``victims``."""
    while not stop.is_set():
        rows = {}
        for f in glob.glob(f"{out}/steps-*"):
            with open(f) as fh:
                lines = fh.read().splitlines()
            if len(lines) >= 5:
                last = json.loads(lines[-1])
                rows[int(f.rsplit("-", 1)[1])] = last
        found = [pid for pid, r in rows.items() if r[2] == world and r[1] in ranks]
        if len(rows) >= world and len(found) == len(ranks):
            for pid in found:
                os.kill(pid, sig)
                if victims is not None:
                    victims.append(pid)
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_shrinks_on_a_dead_rank_and_grows_back(cluster, tmp_path):
    out = str(tmp_path)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank_one, args=(out, stop), daemon=True)
    killer.start()
    try:
        result = st.Trainer(_elastic_loop, num_workers=(2, 3), config={"out": out},
                            collective_timeout=60,
                            elastic_config=st.ElasticConfig(settle_s=30),
                            run_config=st.RunConfig(storage_path=out, verbose=0)).fit()
    finally:
        stop.set()
        killer.join(timeout=5)
    changes = result.membership_changes
    sizes = [c["world_size"] for c in changes]
    assert sizes[0] == 3
    shrink = next(i for i, c in enumerate(changes) if c["left"])
    assert changes[shrink]["world_size"] == 2 and changes[shrink]["left"][0]["rank"] == 1
    assert 3 in sizes[shrink + 1:], changes
    for c in changes:
        assert c["resumed_step"] is not None and c["took_s"] is not None
    with open(os.path.join(result.path, "membership.json")) as f:
        assert json.load(f) == changes

    # every rank of a generation holds the same parameters and optimizer state after the
    # sync: the new rank got exactly the survivors' (momentum buffers included)
    syncs: dict = {}
    replica_seen = False
    for f in glob.glob(f"{out}/sync-*"):
        for line in open(f).read().splitlines():
            commits, world, rank, p, o, lost = json.loads(line)
            syncs.setdefault((commits, world), []).append((p, o))
            if world == 2 and lost:
                # the dead rank's committed per-rank state, from its replica on the others:
                # it trained every committed step of generation 0 (its count == the commits)
                assert lost == {"1": {"steps": commits}}, lost
                replica_seen = True
    assert replica_seen
    grown = [v for (c, w), v in syncs.items() if w == 3 and c > 0]
    assert grown and all(len(v) == 3 for v in grown), syncs
    for v in syncs.values():
        assert len(set(v)) == 1, v

    # each epoch's samples were used once (plus at most world-1 of DistributedSampler's
    # end-of-epoch padding), across the shrink and the grow
    assert_each_epoch_used_every_sample_once(out, N, max_world=3)


def test_state_commit_and_restore_round_trip():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    state = elastic.State(model=model, optimizer=optimizer, epoch=3, history=[1])
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    state.epoch, state.history = 4, [1, 2]
    state.commit()
    committed = _digest(model, optimizer)
    for _ in range(2):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
    state.epoch = 9
    state.history.append(3)
    assert _digest(model, optimizer) != committed
    state.restore()
    assert _digest(model, optimizer) == committed
    assert state.epoch == 4 and state.history == [1, 2] and state.commits == 1
    # restoring does not alias the saved copy: training on and restoring again gives it back
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    state.restore()
    assert _digest(model, optimizer) == committed


def test_data_loader_resumes_an_epoch_resharded():
    from shoal.train.data import ShardSampler
    n = 30
    a = ShardSampler(n, 3, 0, shuffle=True, seed=1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist()
    used = []
    for r in range(3):                     # two rounds of batch 2 on 3 ranks: 12 items
        s = ShardSampler(n, 3, r, shuffle=True, seed=1)
        used += s.indices().tolist()[:4]
    assert sorted(used) == sorted(order[:12])
    rest = []
    for r in range(2):                     # the rest, dealt over 2 ranks
        s = ShardSampler(n, 3, 0, shuffle=True, seed=1)
        s.set_start(12)
        s.reshard(2, r)
        rest += s.indices().tolist()
    assert sorted(used + rest) == list(range(n))
    assert len(a) == 10


def test_num_workers_range_is_checked():
    with pytest.raises(ValueError, match="min 3 > max 2"):
        st.Trainer(lambda: None, num_workers=(3, 2))
    with pytest.raises(ValueError, match="min >= 1"):
        st.Trainer(lambda: None, num_workers=(0, 2))
    with pytest.raises(ValueError, match="two ints"):
        st.Trainer(lambda: None, num_workers=(1, 2, 3))
    with pytest.raises(ValueError, match="max_repeated_failures"):
        st.ElasticConfig(max_repeated_failures=0)


def test_a_sharded_strategy_is_rejected_at_start_naming_what_to_do():
    from shoal.exceptions import ElasticUnsupportedError
    for strategy in (st.ZeRO(stage=2), st.FSDP()):
        with pytest.raises(ElasticUnsupportedError, match=r"not (ZeRO|FSDP).*strategy=DDP\(\).*"
                                                          r"FailureConfig\(max_failures=N\)"):
            st.Trainer(lambda: None, num_workers=(1, 2), strategy=strategy)
    st.Trainer(lambda: None, num_workers=2, strategy=st.ZeRO(stage=2))     # fixed size: fine


def test_unpicklable_state_is_an_error_at_start():
    with pytest.raises(TypeError, match="lock.*cannot be pickled"):
        elastic.State(model=nn.Linear(2, 2), lock=threading.Lock())


def _noop_loop():
    pass


@pytest.mark.timeout(60)
def test_fewer_than_min_workers_fails_naming_what_is_missing(cluster, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(TrainingFailedError, match=r"only \d of the minimum 9 workers"):
        st.Trainer(_noop_loop, num_workers=(9, 9), elastic_config=st.ElasticConfig(
            min_workers_timeout=2), run_config=st.RunConfig(storage_path=str(tmp_path),
                                                            verbose=0)).fit()
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_workers_that_never_reach_elastic_run_fail_the_start_saying_so(cluster, tmp_path):
    with pytest.raises(TrainingFailedError, match=r"placed but only 0 of the minimum 1 reached "
                                                  r"their first elastic.run call within 30s"):
        st.Trainer(_noop_loop, num_workers=(1, 2), elastic_config=st.ElasticConfig(
            min_workers_timeout=30), run_config=st.RunConfig(storage_path=str(tmp_path),
                                                            verbose=0)).fit()


def _failing_loop():
    model = st.prepare_model(nn.Linear(2, 2))
    state = elastic.State(model=model)

    @elastic.run
    def train(state):
        raise ValueError("bad batch 7")
    train(state)


@pytest.mark.timeout(90)
def test_a_rank_failing_the_same_way_three_times_stops_the_run(cluster, tmp_path):
    with pytest.raises(TrainingFailedError, match="same exception 3 times") as info:
        st.Trainer(_failing_loop, num_workers=(1, 2), collective_timeout=20,
                   run_config=st.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert "bad batch 7" in str(info.value) and "Traceback" in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_hung_rank_is_dropped_after_the_collective_timeout_and_replaced(cluster, tmp_path):
    # rank 1 stops (SIGSTOP: alive, never answering): the survivor's collective times out,
    # the driver kills the stuck worker after the collective timeout, a new one joins
    out = str(tmp_path)
    stop, stopped = threading.Event(), []
    hang = threading.Thread(target=_kill_rank_one, args=(out, stop, 2),
                            kwargs={"sig": signal.SIGSTOP, "victims": stopped}, daemon=True)
    hang.start()
    try:
        result = st.Trainer(_elastic_loop, num_workers=(1, 2), collective_timeout=10,
                            config={"out": out, "sizes": (1, 2)},
                            elastic_config=st.ElasticConfig(settle_s=30),
                            run_config=st.RunConfig(storage_path=out, verbose=0)).fit()
    finally:
        stop.set()
        hang.join(timeout=5)
        for pid in stopped:             # the run killed it; make sure even if the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert stopped
    changes = result.membership_changes
    sizes = [c["world_size"] for c in changes]
    assert sizes[0] == 2 and sizes[-1] == 2, changes
    shrink = next(c for c in changes if c["left"])
    assert shrink["world_size"] == 1 and shrink["left"][0]["rank"] == 1, changes
    assert shrink["resumed_step"] is not None


def _short_loop(config):
    model = st.prepare_model(nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = elastic.State(model=model, optimizer=optimizer, step=0)

    @elastic.run
    def train(state):
        while state.step < config["steps"]:
            optimizer.zero_grad()
            model(torch.ones(4, 2)).sum().backward()
            optimizer.step()
            state.step += 1
            state.commit()
            time.sleep(0.02)
    train(state)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_run_starts_with_what_can_be_placed_between_min_and_max(cluster, tmp_path):
    # 16 workers wanted, the cluster holds 4: the run starts once 2 are ready and never
    # waits for the rest (they stay asked for, and are dropped at the end)
    result = st.Trainer(_short_loop, num_workers=(2, 16), config={"steps": 30},
                        elastic_config=st.ElasticConfig(settle_s=1),
                        run_config=st.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    sizes = [c["world_size"] for c in result.membership_changes]
    assert 2 <= sizes[0] <= 4 and max(sizes) <= 4, result.membership_changes


@shoal.remote
class _Holder:
    """Holds a CPU of the cluster while it lives."""

    def ping(self):
        return True


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_fewer_than_min_workers_during_a_run_fails_naming_what_is_missing(cluster, tmp_path):
    # a rank dies and its CPU goes to another user of the cluster (asked for before the
    # replacement): one worker of the minimum 2 is left for longer than min_workers_timeout
    out = str(tmp_path)
    holders: list = []

    def take_the_slot_then_kill():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = {}
            for f in glob.glob(f"{out}/steps-*"):
                lines = open(f).read().splitlines()
                if len(lines) >= 3:
                    rows[int(f.rsplit("-", 1)[1])] = json.loads(lines[-1])
            victims = [pid for pid, r in rows.items() if r[2] == 2 and r[1] == 1]
            if len(rows) >= 2 and victims:
                free = int(shoal.available_resources().get("CPU", 0))
                holders.extend(_Holder.options(num_cpus=1).remote() for _ in range(free + 1))
                shoal.wait([h.ping.remote() for h in holders], num_returns=free, timeout=30)
                os.kill(victims[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    taker = threading.Thread(target=take_the_slot_then_kill, daemon=True)
    taker.start()
    try:
        with pytest.raises(TrainingFailedError, match=r"only 1 of the minimum 2 workers could be "
                                                      r"placed within 30s") as info:
            st.Trainer(_elastic_loop, num_workers=(2, 2), collective_timeout=30,
                       config={"out": out, "sizes": (1, 2)},
                       elastic_config=st.ElasticConfig(min_workers_timeout=30),
                       run_config=st.RunConfig(storage_path=out, verbose=0)).fit()
    finally:
        taker.join(timeout=40)
        for h in holders:
            shoal.kill(h)
    assert holders, "the rank was never killed"
    assert "Add capacity" in str(info.value)
    assert [c["world_size"] for c in info.value.result.membership_changes] == [2]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_losing_every_worker_at_once_without_a_checkpoint_stops_the_run(cluster, tmp_path):
    # both ranks SIGKILLed together: nobody holds the committed state and nothing is on
    # disk; new workers would silently start over from step 0
    out = str(tmp_path)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank_one, args=(out, stop, 2),
                              kwargs={"ranks": (0, 1)}, daemon=True)
    killer.start()
    try:
        with pytest.raises(TrainingFailedError, match="lost at once") as info:
            st.Trainer(_elastic_loop, num_workers=(1, 2), collective_timeout=30,
                       config={"out": out, "sizes": (1, 2)},
                       elastic_config=st.ElasticConfig(settle_s=30),
                       run_config=st.RunConfig(storage_path=out, verbose=0)).fit()
    finally:
        stop.set()
        killer.join(timeout=5)
    assert "report(..., checkpoint=)" in str(info.value) and "get_checkpoint()" in str(info.value)
