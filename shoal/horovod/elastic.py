"""Elastic Horovod (``hvd.elastic``) on shoal.train's elastic machinery.

    import shoal.horovod as hvd

    hvd.init()
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    sampler = hvd.elastic.ElasticSampler(dataset)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    state = hvd.elastic.TorchState(model=model, optimizer=optimizer, train_sampler=sampler,
                                   epoch=0, batch=0)
    state.register_reset_callbacks([lambda: scale_lr(hvd.size())])

    @hvd.elastic.run
    def train(state):
        for state.epoch in range(state.epoch, epochs):
            for state.batch, (x, y) in enumerate(loader):
                ...
                sampler.record_batch(state.batch, 32)
                state.commit()
            sampler.set_epoch(state.epoch + 1)
    train(state)

It runs in an elastic ``shoal.train.Trainer(train_loop, num_workers=(min,
max))``: on a dead rank the survivors get HorovodInternalError (shoal's
CollectiveError), restore the last commit and continue; when workers are
added, ``commit()`` raises HostsUpdatedInterrupt on every rank at the same
step. Either way ``run`` re-initializes Horovod over the new group
(``hvd.size()`` changes), calls the reset callbacks, broadcasts rank 0's
state and calls the function again. Elsewhere (``shoal launch``, a fixed
Trainer) ``run`` syncs the state once and errors propagate, as in Horovod
without ``horovodrun --min-np``.
"""
from __future__ import annotations

from shoal.exceptions import CollectiveError, MembershipChangedInterrupt
from shoal.train import elastic as _elastic
from shoal.train.data import ShardSampler

HorovodInternalError = CollectiveError
"""Raised by a collective whose group broke (a rank died or timed out)."""

HostsUpdatedInterrupt = MembershipChangedInterrupt
"""Raised by ``State.commit()`` on every rank when workers were added or lost."""


class State(_elastic.State):
    """Horovod's elastic state base: commit / restore / sync / reset callbacks."""


class ObjectState(State):
    """Plain values kept across membership changes (Horovod's ObjectState).

    ``bcast_object`` and ``get_rank`` are accepted for Horovod's signature;
    the values are broadcast through the job's group.
    """

    def __init__(self, bcast_object=None, get_rank=None, **kwargs):
        super().__init__(**kwargs)


class ElasticSampler(ShardSampler):
    """Horovod's ElasticSampler: this rank's share of what the epoch has not processed yet.

    Call ``record_batch(batch_idx, batch_size)`` after each batch (the index
    counts from the start of this iteration) and ``set_epoch`` at the end of
    each epoch. Kept in a TorchState, the processed part survives membership
    changes and the rest is dealt over the new world.
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int = 0):
        from shoal.horovod import _world
        rank, size = (_world.rank(), _world.size()) if _world.is_initialized() else (0, 1)
        super().__init__(len(dataset), size, rank, shuffle=shuffle, seed=seed)
        self.position = 0           # items of this epoch's order the whole job processed

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning."""
        super().set_epoch(epoch)
        self.position = 0
        self.set_start(0)

    def record_batch(self, batch_idx: int, batch_size: int) -> None:
        """Every rank processed batch ``batch_idx`` (of ``batch_size``) of this iteration."""
        self.position = min(self.start + (batch_idx + 1) * batch_size * self.num_replicas, self.n)

    def record_indices(self, indices) -> None:
        """Horovod's finer-grained form: count ``len(indices)`` more items on every rank."""
        self.position = min(self.position + len(indices) * self.num_replicas, self.n)

    def get_indices(self, batch_idx: int, batch_size: int) -> list:
        """The indices of batch ``batch_idx`` of this iteration on this rank."""
        idx = self.indices().tolist()
        return idx[batch_idx * batch_size:(batch_idx + 1) * batch_size]

    # the protocol of shoal.train.elastic.State's data objects
    def state(self) -> tuple[int, int]:
        """(epoch, position): what a TorchState commits."""
        return self.epoch, self.position

    def load_state(self, state) -> None:
        """Continue epoch ``state[0]`` after its first ``state[1]`` processed items."""
        self.epoch, self.position = int(state[0]), int(state[1])
        self.set_start(self.position)

    def reshard(self, num_replicas: int, rank: int) -> None:
        """Deal what the epoch has left over ``num_replicas`` ranks, as rank ``rank``."""
        super().reshard(num_replicas, rank)
        self.set_start(self.position)


class TorchState(State):
    """A model, an optimizer and other values kept across membership changes.

    Horovod's TorchState: ``model`` and ``optimizer`` (a DistributedOptimizer
    or plain) are committed in memory and broadcast from rank 0 on ``sync()``;
    an ElasticSampler among the keyword values keeps its processed position.
    """

    def __init__(self, model=None, optimizer=None, **kwargs):
        self._samplers = {k: v for k, v in kwargs.items() if isinstance(v, ElasticSampler)}
        super().__init__(model=model, optimizer=optimizer, **kwargs)

    def restore(self) -> None:
        """Back to the last commit; a DistributedOptimizer forgets a cut-short backward."""
        reset = getattr(self.optimizer, "_reset_handles", None)
        if reset is not None:
            reset()
        super().restore()

    def sync(self) -> None:
        """Rank 0's state on every rank, samplers dealt over the current world."""
        from shoal.horovod import _world
        if _world.is_initialized():
            for s in self._samplers.values():       # deal the rest over the current world
                s.reshard(_world.size(), _world.rank())
        super().sync()

    def on_reset(self) -> None:
        """After a membership change: reset the optimizer's pending allreduces, then the
        registered callbacks."""
        reset = getattr(self.optimizer, "_reset_handles", None)
        if reset is not None:
            reset()
        super().on_reset()


def run(func):
    """Horovod's ``hvd.elastic.run``: ``func(state)`` rerun after each membership change,
    with Horovod re-initialized over the new group before the reset callbacks."""
    return _elastic.run_with(func, on_regroup=_reinit)


def _reinit() -> None:
    from shoal.horovod import _world
    _world.shutdown()
    _world.init()


__all__ = ["ElasticSampler", "HorovodInternalError", "HostsUpdatedInterrupt", "ObjectState",
           "State", "TorchState", "run"]
