"""``Dataset.streaming_split(n)``: one streaming execution shared by n consumers.

A coordinator actor runs the plan and hands each next block to whichever
split asks first, so fast training workers take more blocks and nothing is
materialized up front. An epoch starts when every split has finished the
previous one (as in Ray); a split that asks early waits.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterator

import cloudpickle

from shoal.data import _iterate
from shoal.data._plan import Bundle


class SplitCoordinator:
    """Actor: the shared stream of one ``streaming_split``."""

    def __init__(self, plan_bytes: bytes, n: int):
        self.plan = cloudpickle.loads(plan_bytes)
        self.n = n
        self.epoch = -1
        self.stream = None
        self.finished: set = set(range(n))
        # The refs handed out last stay pinned here until consumers hold their
        # own: with the local backend, a ref inside an actor's return value that
        # the actor does not keep is freed before the caller can get it.
        self.recent: deque = deque(maxlen=4 * n + 8)

    def next_block(self, split: int, epoch: int):
        """``[ref, meta]`` for the next block, ``[]`` at the end of the epoch, ``None``: retry."""
        from shoal.data._execution import Executor

        if epoch > self.epoch:
            if len(self.finished) < self.n:
                return None  # other splits are still on the previous epoch
            self.epoch = epoch
            self.stream = Executor().stream(self.plan)
            self.finished = set()
        elif epoch < self.epoch:
            return []
        if self.stream is not None:
            try:
                ref, meta = next(self.stream)
                self.recent.append(ref)
                return [ref, meta]
            except StopIteration:
                self.stream = None
        self.finished.add(split)
        return []


class StreamSplitIterator:
    """One consumer's share of a streaming split; pass it to a training worker.

    Each call of ``iter_batches`` / ``iter_torch_batches`` / ``iter_rows``
    is one epoch; all ``n`` splits must iterate each epoch.
    """

    def __init__(self, coordinator, index: int, n: int):
        self._coordinator = coordinator
        self._index = index
        self._n = n
        self._epoch = -1

    def __repr__(self) -> str:
        return f"StreamSplitIterator(split={self._index} of {self._n})"

    def _bundles(self) -> Iterator[Bundle]:
        import shoal

        self._epoch += 1
        epoch, wait = self._epoch, 0.002
        while True:
            got = shoal.get(self._coordinator.next_block.remote(self._index, epoch))
            if got is None:
                time.sleep(wait)
                wait = min(wait * 2, 0.05)
                continue
            if not got:
                return
            yield got[0], got[1]

    def iter_batches(self, **kwargs) -> Iterator[Any]:
        """As ``Dataset.iter_batches``."""
        return _iterate.iter_batches(self._bundles(), **kwargs)

    def iter_torch_batches(self, **kwargs) -> Iterator[Any]:
        """As ``Dataset.iter_torch_batches``."""
        return _iterate.iter_torch_batches(self._bundles(), **kwargs)

    def iter_tf_batches(self, **kwargs) -> Iterator[Any]:
        """As ``Dataset.iter_tf_batches``."""
        return _iterate.iter_tf_batches(self._bundles(), **kwargs)

    def iter_rows(self) -> Iterator[dict]:
        return _iterate.iter_rows(self._bundles())


def streaming_split(plan, n: int) -> list[StreamSplitIterator]:
    from shoal.data._execution import remote_fn

    coordinator = remote_fn(SplitCoordinator).options(num_cpus=0).remote(
        cloudpickle.dumps(plan), n)
    return [StreamSplitIterator(coordinator, i, n) for i in range(n)]
