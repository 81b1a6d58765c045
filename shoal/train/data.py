"""Sharding a DataLoader over the ranks of a gang.

``ShardSampler`` is torch's DistributedSampler contract: every rank sees
``ceil(n / world_size)`` indices (padded by wrapping around, or the tail
dropped with ``drop_last``), a fresh permutation each epoch from
``seed + epoch``, the same permutation on every rank.
"""
from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

from shoal.exceptions import RankMismatchError


class ShardSampler(Sampler):
    """Indices of this rank's shard of a dataset of ``n`` items."""

    def __init__(self, n: int, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.n, self.num_replicas, self.rank = n, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0
        self._size()

    def _size(self) -> None:
        left = max(self.n - self.start, 0)
        if self.drop_last:
            self.num_samples = left // self.num_replicas
        else:
            self.num_samples = math.ceil(left / self.num_replicas)
        self.total = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Seed the next shuffle with ``seed + epoch`` (every rank must pass the same epoch)."""
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` items of this epoch's order (those the whole gang has
        already consumed): an elastic job re-shards what is left over its new world."""
        self.start = int(start)
        self._size()

    def reshard(self, num_replicas: int, rank: int) -> None:
        """Take rank ``rank``'s shard of ``num_replicas`` from now on (a membership change)."""
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.num_replicas, self.rank = num_replicas, rank
        self._size()

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch (padded by repeating, unless ``drop_last``).

        The items at positions ``start, start + 1, ...`` of the epoch's order are
        dealt round-robin: after k batches of b on each of W ranks the gang has
        consumed positions ``start .. start + k*b*W - 1`` exactly.
        """
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        idx = idx[self.start:]
        if self.total > len(idx):
            reps = math.ceil(self.total / max(len(idx), 1))
            idx = idx.repeat(reps)[:self.total]
        else:
            idx = idx[:self.total]
        return idx[self.rank:self.total:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class PreparedDataLoader:
    """A DataLoader over this rank's shard; iterating it starts a new epoch.

    Call ``set_epoch(epoch)`` before each epoch for a reproducible order
    (needed to resume a run exactly); without it the epoch counts up by
    itself. On each new epoch, the ranks check that they will yield the same
    number of batches (RankMismatchError otherwise, instead of a hang).

    ``position`` is how many items of the current epoch's order the whole
    gang has consumed (every rank's batches so far); an elastic job commits
    it (``shoal.train.elastic.State``) and, after a membership change,
    resumes the epoch there with the rest re-sharded over the new world.
    """

    def __init__(self, loader: DataLoader, sampler: ShardSampler | None, session,
                 device=None):
        self.loader = loader
        self.device = device        # batches are moved here (None: left where they are)
        self.sampler = sampler
        self._session = session
        self._epoch = 0
        self._epoch_set = False
        self._checked_len = None
        self.position = 0
        self._current = 0           # the epoch being (or last) iterated
        self._resume: tuple[int, int] | None = None     # (epoch, position) to continue

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose shard order the next iteration uses (the same on every rank)."""
        self._epoch, self._epoch_set = int(epoch), True

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, item):
        return getattr(self.__dict__["loader"], item)

    # ---------------------------------------------------------- elastic
    def state(self) -> tuple[int, int]:
        """(epoch, position): where the gang is in the data (see ``position``)."""
        return self._current, self.position

    def load_state(self, state: tuple[int, int]) -> None:
        """Continue at ``state`` (from ``state()``): the next iteration of that epoch starts
        at that position; ``set_epoch`` of another epoch starts it from the beginning."""
        self._resume = (int(state[0]), int(state[1]))
        self._epoch, self.position = self._resume
        self._current = self._epoch

    def reshard(self, rank: int, world_size: int) -> None:
        """Deal the rest of the data over a new world (after a membership change)."""
        if self.sampler is not None:
            self.sampler.reshard(world_size, rank)
        self._checked_len = None

    def _check_lengths(self) -> None:
        try:
            n = len(self.loader)
        except TypeError:
            return
        if self._checked_len == n or self._session.context.world_size == 1:
            return
        counts = self._session.comm.allgather_object(n)
        if len(set(counts)) != 1:
            raise RankMismatchError(
                f"the data loaders yield different numbers of batches per rank: {counts}; "
                "every rank must run the same number of steps. Use prepare_data_loader on "
                "a map-style dataset, or give each rank an equal shard (drop_last=True)")
        self._checked_len = n

    def __iter__(self):
        if self._resume is not None and self._resume[0] != self._epoch:
            self._resume = None                 # another epoch was asked for: start it afresh
        start = self._resume[1] if self._resume is not None else 0
        self._resume = None
        if self.sampler is not None:
            self.sampler.set_epoch(self._epoch)
            self.sampler.set_start(start)
        self.position = start
        self._current = self._epoch
        self._check_lengths()
        if not self._epoch_set:
            self._epoch += 1
        self._epoch_set = False
        session = self._session
        if session.samples == 0:          # throughput counts from the first batch on
            session._t_last = time.perf_counter()
        device = self.device
        n = self.sampler.n if self.sampler is not None else None
        for batch in self.loader:
            k = _batch_len(batch)
            session.samples += k
            world = session.context.world_size
            self.position = min(self.position + k * world, n) if n is not None \
                else self.position + k * world
            yield batch if device is None else _to_device(batch, device)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)((k, _to_device(v, device)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):     # a namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_len(batch) -> int:
    if isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    elif isinstance(batch, dict) and batch:
        batch = next(iter(batch.values()))
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 1


def prepare_data_loader(loader: DataLoader, session, seed: int = 0,
                        move_to_device: bool = True) -> PreparedDataLoader:
    """Rebuild ``loader`` on a ShardSampler of this rank (shuffled if it shuffled)."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"prepare_data_loader takes a torch DataLoader, got "
                        f"{type(loader).__name__}")
    ctx = session.context
    device = session.device if move_to_device else None
    if device is not None and device.type == "cpu":
        device = None                      # CPU batches stay as the loader made them
    if isinstance(loader.sampler, ShardSampler):
        return PreparedDataLoader(loader, loader.sampler, session, device)
    try:
        n = len(loader.dataset)
    except TypeError:
        # an iterable dataset shards itself; the lengths are still checked per epoch
        return PreparedDataLoader(loader, None, session, device)
    if loader.batch_size is None:
        raise ValueError("prepare_data_loader needs a DataLoader with batch_size (not a "
                         "custom batch_sampler); shard the data yourself with ShardSampler")
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = ShardSampler(n, ctx.world_size, max(ctx.rank, 0), shuffle=shuffle, seed=seed,
                           drop_last=loader.drop_last)
    new = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                     num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                     pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                     timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                     persistent_workers=loader.persistent_workers if loader.num_workers else False)
    return PreparedDataLoader(new, sampler, session, device)
