"""Learners: the module and its optimizer, updated on train batches.

``num_learners=0`` keeps one Learner in the driver. ``num_learners=N``
starts N learner actors that form a collective group
(``shoal.collective.create_actor_group``); with N > 1 each wraps its module
in shoal.train's DDP, so gradients are averaged by allreduce between the
learners, never through the driver. A train batch is put into the object
store once; every learner reads it zero-copy and trains on its own
contiguous shard (the driver shuffles rows first).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

import shoal

_groups = itertools.count()
log = logging.getLogger("shoal.rl")


def _get_first_error_first(refs: list, timeout: float) -> list:
    """The values of ``refs`` in order; the first error raises as soon as it is known.

    (``shoal.get`` of the list would wait on a live rank blocked in a
    collective with a dead one, up to the collective's timeout.)
    """
    import time
    deadline = time.monotonic() + timeout
    pending = list(refs)
    while pending:
        ready, pending = shoal.wait(pending, num_returns=1,
                                    timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        shoal.get(ready, timeout=1)          # raises the error of a failed rank now
    return shoal.get(refs, timeout=max(1.0, deadline - time.monotonic()))


def _is_user_error(e: BaseException) -> bool:
    # errors of the update's own code repeat on a fresh group: raise them
    from shoal.exceptions import ActorDiedError, CollectiveError, GetTimeoutError, WorkerCrashedError
    return not isinstance(e, (ActorDiedError, WorkerCrashedError, CollectiveError, GetTimeoutError))


@dataclass
class LearnerSpec:
    """What a learner is built from.

    ``update(learner, batch, **kwargs) -> dict`` is the algorithm's update
    (e.g. PPO's minibatch epochs); ``setup(learner)`` adds algorithm state
    (a target network) and is optional.
    """

    module_factory: object
    observation_space: object
    action_space: object
    lr: float
    update: object
    setup: object = None
    grad_clip: float | None = None
    seed: int | None = None
    adam_eps: float = 1e-5
    num_threads: int = 1


class Learner:
    """One learner: ``module`` (plain), ``model`` (DDP-wrapped when in a group), ``optimizer``."""

    def __init__(self, spec: LearnerSpec):
        import torch
        self.spec = spec
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(0 if spec.seed is None else spec.seed)
        self.module = spec.module_factory(spec.observation_space, spec.action_space)
        self.model = self.module
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=spec.lr, eps=spec.adam_eps, fused=True)
        self.rank, self.world_size = 0, 1
        self.comm = None
        self.extra: dict = {}
        if spec.setup is not None:
            spec.setup(self)

    def clip_and_step(self) -> float:
        """Clip the gradient norm (when configured) and step the optimizer; the norm before clipping."""
        import torch
        norm = 0.0
        if self.spec.grad_clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.spec.grad_clip))
        self.optimizer.step()
        return norm

    def update(self, batch: dict, **kwargs) -> dict:
        """Run the algorithm's update on ``batch`` (a dict of NumPy arrays).

        torch runs on ``spec.num_threads`` threads meanwhile (restored after:
        the driver's own setting is the user's).
        """
        import torch
        old = torch.get_num_threads()
        if old != self.spec.num_threads:
            torch.set_num_threads(self.spec.num_threads)
        try:
            self.module.train()
            return self.spec.update(self, batch, **kwargs)
        finally:
            if old != self.spec.num_threads:
                torch.set_num_threads(old)

    def get_weights(self) -> dict:
        """The module's state dict as NumPy arrays."""
        from shoal.rl.models import state_to_numpy
        return state_to_numpy(self.module)

    def get_state(self) -> dict:
        """Module, optimizer and algorithm state, for checkpoints."""
        from shoal.rl.models import state_to_numpy
        extra = {k: (state_to_numpy(v) if hasattr(v, "state_dict") else v)
                 for k, v in self.extra.items()}
        return {"module": self.get_weights(), "optimizer": self.optimizer.state_dict(),
                "extra": extra, "generator": self.generator.get_state()}

    def set_state(self, state: dict) -> None:
        """Load what ``get_state`` returned."""
        from shoal.rl.models import load_numpy_state
        load_numpy_state(self.module, state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state.get("extra", {}).items():
            if hasattr(self.extra.get(k), "state_dict"):
                load_numpy_state(self.extra[k], v)
            else:
                self.extra[k] = v
        if "generator" in state:
            self.generator.set_state(state["generator"])


class LearnerActor(Learner):
    """A learner in its own process, one rank of the learner group (``self.comm`` is set by the group)."""

    def pid(self) -> int:
        """This learner's process id."""
        import os
        return os.getpid()

    def join(self, rank: int, world_size: int) -> bool:
        import torch
        torch.set_num_threads(self.spec.num_threads)
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            from shoal.train import DDP
            self.model = DDP(overlap=False).prepare(self.module, self.comm)
        return True

    def update_shard(self, batch: dict, **kwargs) -> dict:
        """Update on this rank's contiguous shard of ``batch`` (every rank gets as many rows)."""
        n = len(batch["obs"]) // self.world_size
        shard = {k: v[self.rank * n:(self.rank + 1) * n] for k, v in batch.items()}
        return self.update(shard, **kwargs)


class LearnerGroup:
    """The driver's view of the learners: one local Learner, or N learner actors.

    Learner actors that fail (a dead process, a broken collective group) are
    replaced as a whole group that restarts from the state after the last
    successful update (kept in the driver), and the update is run again, up
    to ``max_restarts`` times.
    """

    def __init__(self, spec: LearnerSpec, num_learners: int = 0, num_cpus_per_learner: float = 0,
                 max_restarts: int = 3):
        self.spec = spec
        self.local = None
        self.actors: list = []
        self.num_cpus = num_cpus_per_learner
        self.max_restarts = max_restarts
        self.num_restarts = 0
        self._n = num_learners
        self._state = None
        if num_learners == 0:
            self.local = Learner(spec)
            return
        self._start()

    def _start(self) -> None:
        from shoal import collective
        self.actors = collective.create_actor_group(
            LearnerActor, self._n, self.spec, name=f"shoal-rl-learners-{id(self)}-{next(_groups)}",
            actor_options={"num_cpus": self.num_cpus}, timeout=120.0)
        shoal.get([a.join.remote(i, self._n) for i, a in enumerate(self.actors)], timeout=120)
        if self._state is not None:
            self.set_state(self._state)

    @property
    def num_learners(self) -> int:
        """Learner actors (0: the learner is in the driver)."""
        return len(self.actors)

    def update(self, batch: dict, shuffle_seed: int | None = None, shuffle: bool = True,
               **kwargs) -> dict:
        """Update on ``batch``; the metrics averaged over the learners.

        With several learners each trains on a contiguous shard of the
        rows (shuffled first unless ``shuffle=False``; a tail that does not
        divide evenly is dropped). A metric that is an array (one value per
        row, e.g. DQN's TD errors) comes back concatenated in rank order:
        unshuffled, its rows are the batch's.
        """
        if self.local is not None:
            return self.local.update(batch, **kwargs)
        n = len(self.actors)
        rows = len(batch["obs"]) // n * n
        if shuffle:
            perm = np.random.default_rng(shuffle_seed).permutation(len(batch["obs"]))[:rows]
            ref = shoal.put({k: v[perm] for k, v in batch.items()})
        else:
            ref = shoal.put({k: v[:rows] for k, v in batch.items()})
        while True:
            try:
                results = _get_first_error_first([a.update_shard.remote(ref, **kwargs)
                                                  for a in self.actors], timeout=600)
                self._state = self.get_state()
                break
            except Exception as e:  # noqa: BLE001 - a learner died or its group broke
                if self.num_restarts >= self.max_restarts or _is_user_error(e):
                    raise
                self.num_restarts += 1
                log.warning("learner group failed (%r); restarting it from the last update's state "
                            "(restart %d of %d)", e, self.num_restarts, self.max_restarts)
                self.stop()
                self._start()
        return {k: (np.concatenate([r[k] for r in results]) if isinstance(results[0][k], np.ndarray)
                    else float(np.mean([r[k] for r in results]))) for k in results[0]}

    def get_weights(self) -> dict:
        """The module's weights as NumPy arrays (rank 0's; every rank holds the same)."""
        if self.local is not None:
            return self.local.get_weights()
        return shoal.get(self.actors[0].get_weights.remote(), timeout=120)

    def get_state(self) -> dict:
        """Rank 0's learner state (module, optimizer, algorithm state)."""
        if self.local is not None:
            return self.local.get_state()
        return shoal.get(self.actors[0].get_state.remote(), timeout=120)

    def set_state(self, state: dict) -> None:
        """Load ``state`` into every learner."""
        if self.local is not None:
            self.local.set_state(state)
            return
        ref = shoal.put(state)
        shoal.get([a.set_state.remote(ref) for a in self.actors], timeout=120)

    def stop(self) -> None:
        """Kill the learner actors."""
        for a in self.actors:
            try:
                shoal.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
