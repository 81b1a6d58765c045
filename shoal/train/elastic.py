"""Elastic training: state committed in memory every step, a gang that shrinks and grows.

    import shoal.train as st
    from shoal.train import elastic

    def train_loop(config):
        model = st.prepare_model(Net())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = st.prepare_data_loader(DataLoader(ds, batch_size=32, shuffle=True))
        state = elastic.State(model=model, optimizer=optimizer, loader=loader, epoch=0)

        @elastic.run
        def train(state):
            for state.epoch in range(state.epoch, config["epochs"]):
                loader.set_epoch(state.epoch)
                for x, y in loader:
                    ...                       # forward, backward, optimizer.step()
                    state.commit()            # a copy in memory; cheap
        train(state)

    st.Trainer(train_loop, num_workers=(2, 4)).fit()     # between 2 and 4 workers

When a rank dies, the survivors' next collective fails within a bounded
time; ``run`` rolls the state back to the last commit, joins the gang's next
generation (the driver re-forms it without the dead rank), broadcasts rank
0's state to every member, calls the reset callbacks and calls the function
again: the loop continues from the committed step, and the prepared loader
deals the rest of the epoch over the new world (each sample once per epoch).
When a worker slot appears the driver adds a rank: at the next ``commit()``
every rank stops together (MembershipChangedInterrupt, caught by ``run``),
the group re-forms and the new rank receives the state from rank 0, not from
disk. The same code runs under a fixed-size Trainer or ``shoal launch``:
there ``run`` syncs once and a failure propagates.

In an elastic run a worker joins the group at its first ``run`` call (a
worker added to a running gang builds its model and data first, while the
others keep training): before that, ``get_context().rank`` is -1 and the
loop must not call collectives; ``prepare_model`` and
``prepare_data_loader`` objects follow the group from then on. Each worker
is placed on its own (no gang placement group), and the driver asks for
``max`` workers all along, so a slot freed on the cluster is taken and its
worker joins at the next commit.

This is Elastic Horovod's model (``hvd.elastic.TorchState``, ``run``,
reset callbacks); ``shoal.horovod.elastic`` is that face over this module.
"""
from __future__ import annotations

import copy
import functools
import pickle
import time

import numpy as np
import torch

from shoal.exceptions import (CollectiveError, ElasticUnsupportedError,
                              MembershipChangedInterrupt, RankMismatchError)
from shoal.train.context import current_session
from shoal.train.data import PreparedDataLoader


class State:
    """What an elastic loop keeps across membership changes.

    Args:
        model: a module (prepared with ``prepare_model`` or plain), or None.
        optimizer: a torch optimizer, or None.
        local: a dict of this rank's own values (per-rank counters, RNG
            state...): never overwritten by ``sync()``; each commit replicates
            every rank's ``local`` on the other ranks, so when a rank is lost
            its last committed ``local`` is in ``state.lost_local`` (keyed by
            its rank before the change) on every rank after the change.
        background_copy: copy parameters and optimizer state on a
            background thread during the next step's forward and backward
            (the next ``optimizer.step()`` waits for it). Worth it on a host
            with a core to spare; on one whose cores all train, the copy
            competes with them (measured slower there: benchmarks/elastic.py).
        **extra: other values kept the same way (epoch, step counters, a
            PreparedDataLoader whose position in the epoch is kept). They are
            attributes of the state: ``state.epoch``. They must be picklable
            (checked here), since ``sync()`` sends them to new ranks.

    ``commit()`` copies the model's and optimizer's tensors into buffers kept
    in this process (reused between commits) and the extras by deep copy;
    in data-parallel training every rank commits the same values, so each
    survivor's copy is a replica of a dead rank's committed state.
    ``restore()`` puts the last commit back, ``sync()`` makes every rank hold
    rank 0's state.
    """

    def __init__(self, model=None, optimizer=None, local: dict | None = None,
                 background_copy: bool = False, **extra):
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name in extra:
            if name in ("model", "optimizer", "commits", "lost_local") or name.startswith("_"):
                raise ValueError(f"State(..., {name}=) is a reserved name; pick another")
        plain = {k: v for k, v in extra.items() if not _is_data(v)}
        for k, v in plain.items():
            try:
                pickle.dumps(v, protocol=5)
            except Exception as e:  # noqa: BLE001 - any pickling failure is the same error
                raise TypeError(f"State(..., {k}=) holds a {type(v).__name__} that cannot be "
                                f"pickled ({e}); elastic state is sent to new ranks, so keep "
                                "plain values, tensors or state_dicts there") from None
        if local is not None and not isinstance(local, dict):
            raise TypeError(f"State(local=) takes a dict of this rank's values, got "
                            f"{type(local).__name__}")
        self.model, self.optimizer = model, optimizer
        self.local = dict(local) if local is not None else {}
        self.lost_local: dict = {}      # rank -> committed ``local`` of ranks that left
        self._replicas: dict = {}       # worker id -> (rank, committed ``local``)
        self._loaders = {k: v for k, v in extra.items() if _is_data(v)}
        self._names = list(plain)
        for k, v in extra.items():
            setattr(self, k, v)
        self._callbacks: list = []
        self._flag = None           # (communicator, Work, array) of the pending agreement
        self._commits = 0
        self._saved_model: dict | None = None
        self._saved_optim: dict | None = None
        self._saved_extra: dict = {}
        self._saved_commits = 0
        self._copying = None
        self._copier = None
        if optimizer is not None and background_copy:
            import concurrent.futures
            self._copier = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="shoal-elastic-commit")
            optimizer.register_step_pre_hook(self._join_copy)
        self.save()

    @property
    def commits(self) -> int:
        """How many times the gang committed this state (the step a restore returns to)."""
        return self._commits

    # ---------------------------------------------------------------- commit
    def save(self) -> None:
        """Keep a copy of the current state in this process (``commit`` without the check).

        With ``background_copy`` (and an optimizer) the parameters' and
        optimizer state's copies run on a background thread, overlapped with
        the next step's forward and backward (which do not change them); the
        next ``optimizer.step()``, ``save``, ``restore`` or ``sync`` waits
        for them first.
        """
        self._join_copy()
        pairs: tuple[list, list] = ([], [])
        if self.model is not None:
            # buffers (BatchNorm statistics) change in forward: copied now; parameters later
            now: tuple[list, list] = ([], [])
            params = {p.data_ptr() for p in self.model.parameters()}
            self._saved_model = _copy_into(self._saved_model, self.model.state_dict(), pairs,
                                           now, lambda t: t.data_ptr() in params)
            if now[0]:
                torch._foreach_copy_(*now)
        if self.optimizer is not None:
            sd = self.optimizer.state_dict()
            saved = self._saved_optim or {"state": {}, "param_groups": []}
            saved["state"] = {i: _copy_into(saved["state"].get(i), s, pairs)
                              for i, s in sd["state"].items()}
            saved["param_groups"] = copy.deepcopy(sd["param_groups"])
            self._saved_optim = saved
        if pairs[0]:
            if self._copier is not None:
                self._copying = self._copier.submit(torch._foreach_copy_, *pairs)
            else:
                torch._foreach_copy_(*pairs)
        self._saved_extra = copy.deepcopy({k: getattr(self, k) for k in self._names})
        self._saved_extra["_local"] = copy.deepcopy(self.local)
        self._saved_extra.update({"_loader/" + k: v.state() for k, v in self._loaders.items()})
        self._saved_commits = self._commits

    def _join_copy(self, *_) -> None:
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.result()

    def commit(self) -> None:
        """Save this step's state, then stop here if the gang's membership changes.

        Call it after ``optimizer.step()``, on every rank, every step (or
        every few: a failure loses the steps since the last commit). Raises
        MembershipChangedInterrupt on every rank at once when workers were
        added or lost; ``run`` catches it.
        """
        self._commits += 1
        self._replicate()
        self.save()
        self.check_host_updates()

    def _replicate(self) -> None:
        """Every rank's ``local`` to every rank (before the save: a failure here rolls back
        to the previous commit, whose replicas are the ones kept)."""
        s = current_session(required=False)
        if not self.local or s is None or s.comm is None:
            return
        me = s.elastic.wid if s.elastic is not None else s.context.rank
        parts = s.comm.allgather_object((me, s.context.rank, self.local))
        self._replicas = {wid: (rank, local) for wid, rank, local in parts}

    def check_host_updates(self) -> None:
        """Raise MembershipChangedInterrupt (on every rank together) if the gang changed.

        The ranks agree through a one-element allreduce started here and
        read at the next call, so the check never waits on the step: a
        change seen at commit k stops every rank at commit k + 1.
        """
        s = current_session(required=False)
        link = s.elastic if s is not None else None
        if link is None:
            return
        comm = s.comm
        pending, self._flag = self._flag, None
        if comm.world_size == 1:
            changed = link.newer
        elif pending is not None and pending[0] is comm:
            pending[1].wait()
            changed = bool(pending[2][0])
        else:
            changed = False
        if changed:
            raise MembershipChangedInterrupt(
                f"the gang's membership changed after generation {link.generation}; "
                "re-forming the group at this step")
        if comm.world_size > 1:
            flag = np.array([1 if link.newer else 0], dtype=np.int64)
            work = comm.allreduce(flag, op="max", async_op=True, out=flag)
            self._flag = (comm, work, flag)

    def _settle(self) -> None:
        """Wait for the agreement started by the last commit (every rank does, at the end)."""
        pending, self._flag = self._flag, None
        s = current_session(required=False)
        if pending is not None and s is not None and pending[0] is s.comm:
            pending[1].wait()

    def restore(self) -> None:
        """Put back the last saved state (model, optimizer, extras, loader positions)."""
        self._join_copy()
        if self.model is not None and self._saved_model is not None:
            self.model.load_state_dict(self._saved_model)
        if self.optimizer is not None and self._saved_optim is not None:
            self.optimizer.load_state_dict(_clone(self._saved_optim))
        for k in self._names:
            setattr(self, k, copy.deepcopy(self._saved_extra[k]))
        self.local = copy.deepcopy(self._saved_extra["_local"])
        for k, loader in self._loaders.items():
            loader.load_state(self._saved_extra["_loader/" + k])
        self._commits = self._saved_commits

    # ---------------------------------------------------------------- sync
    def sync(self) -> None:
        """Make every rank hold rank 0's state (after a membership change), then save it."""
        self._join_copy()
        s = current_session(required=False)
        comm = s.comm if s is not None else None
        if comm is not None and comm.world_size > 1:
            if self.model is not None:
                _broadcast_module(self.model, comm)
            payload = None
            if comm.rank == 0:
                payload = {"optim": self.optimizer.state_dict() if self.optimizer else None,
                           "extra": {k: getattr(self, k) for k in self._names},
                           "loaders": {k: v.state() for k, v in self._loaders.items()},
                           "commits": self._commits, "report_index": s.report_index,
                           "lost": self._lost(s)}
            payload = comm.broadcast_object(payload, src=0)
            if comm.rank != 0:
                if self.optimizer is not None and payload["optim"] is not None:
                    self.optimizer.load_state_dict(payload["optim"])
                for k, v in payload["extra"].items():
                    setattr(self, k, v)
                for k, v in payload["loaders"].items():
                    self._loaders[k].load_state(v)
                self._commits = payload["commits"]
                s.report_index = payload["report_index"]
            self.lost_local = payload["lost"]
        elif s is not None:
            self.lost_local = self._lost(s)
        for loader in self._loaders.values():     # every rank continues the epoch where the
            loader.load_state(loader.state())     # gang is, dealt over the current world
        self.save()
        link = s.elastic if s is not None else None
        if link is not None and s.context.rank == 0:
            s.store.set(f"{link.prefix}/resumed/{link.generation}",
                        pickle.dumps({"step": self._commits, "time": time.time(),
                                      "world_size": s.context.world_size}, protocol=5))

    def _lost(self, s) -> dict:
        """rank -> committed ``local`` of the replicated ranks not in the current group."""
        if s.elastic is None:
            return {}
        members = set(s.elastic.members)
        return {rank: local for wid, (rank, local) in self._replicas.items()
                if wid not in members}

    # ---------------------------------------------------------------- reset
    def register_reset_callbacks(self, callbacks) -> None:
        """Call each of ``callbacks`` (no arguments) after every membership change, before the
        loop resumes: e.g. scale the learning rate to the new ``get_context().world_size``."""
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"reset callbacks must be callable, got {type(cb).__name__}")
            self._callbacks.append(cb)

    def on_reset(self) -> None:
        """Run the reset callbacks (``run`` calls this after the group re-formed)."""
        for cb in self._callbacks:
            cb()


def run(func):
    """Decorate ``func(state, ...)``: rerun it from the last commit after a membership change.

    On a broken group (a rank died, a collective timed out) the state is
    restored to the last commit; on MembershipChangedInterrupt (workers
    added or lost at a commit) it is kept. Either way the worker joins the
    gang's next generation, the reset callbacks run, the state is synced
    from rank 0 and ``func`` is called again. Other exceptions propagate.
    """
    return run_with(func)


def run_with(func, on_regroup=None):
    """``run``, calling ``on_regroup()`` each time the group re-formed (before the reset
    callbacks): shoal.horovod re-initializes itself there."""
    @functools.wraps(func)
    def wrapper(state: State, *args, **kwargs):
        if not isinstance(state, State):
            raise TypeError(f"an elastic.run function takes a shoal.train.elastic.State first, "
                            f"got {type(state).__name__}")
        session = current_session(required=False)
        link = session.elastic if session is not None else None
        if link is not None and session.comm is None:
            _regroup(session, 0)        # first call: join the gang (see Trainer's elastic run)
            if on_regroup is not None:
                on_regroup()
        while True:
            try:
                state.sync()
                out = func(state, *args, **kwargs)
                state._settle()
                return out
            except MembershipChangedInterrupt:
                if link is None:
                    raise
            except Exception as e:
                if link is None:
                    raise
                if _group_failure(e) is None:
                    if hasattr(link, "report_raised"):
                        try:
                            link.report_raised(state.commits)
                        except Exception:  # noqa: BLE001 - the store went away: the run ends
                            pass
                    raise
                link.report_failure(str(_group_failure(e)))
                state.restore()
            state._flag = None          # its group is gone
            _regroup(session, link.generation + 1)
            if on_regroup is not None:
                on_regroup()
            state.on_reset()
    return wrapper


def sharded_strategy_error(strategy) -> ElasticUnsupportedError:
    """The error an elastic run gives for a strategy other than DDP (ZeRO, FSDP, Parallel)."""
    return ElasticUnsupportedError(
        f"an elastic run trains with DDP, not {type(strategy).__name__}: its State restores "
        "a lost rank from any survivor's copy, which only data-parallel training has (a "
        "sharded or model-parallel strategy keeps each rank's part of the parameters and "
        "optimizer state only on that rank). Use strategy=DDP() (the default) "
        "with num_workers=(min, max), or keep the sharded strategy with a fixed num_workers and "
        "FailureConfig(max_failures=N): the gang then restarts from the last checkpoint "
        "(report(..., checkpoint=) every few steps)")


def _regroup(session, min_generation: int) -> None:
    """Join the gang's next generation; a launched process the launcher took out of the
    job (its host left the discovery script's output) ends here, quietly and successfully."""
    from shoal.train._membership import WorkerRemovedError
    try:
        session.regroup(min_generation)
    except WorkerRemovedError as e:
        if not session.elastic.launched:
            raise
        import sys
        print(f"[shoal.train] {e}; this process ends here", file=sys.stderr, flush=True)
        raise SystemExit(0) from None


def _is_data(v) -> bool:
    """A data position kept by the state: a PreparedDataLoader, or anything with its
    ``state()`` / ``load_state()`` / ``reshard()`` (Horovod's ElasticSampler)."""
    return isinstance(v, PreparedDataLoader) or all(
        callable(getattr(v, m, None)) for m in ("state", "load_state", "reshard"))


def _group_failure(e: BaseException | None):
    """The CollectiveError behind ``e`` (itself, its cause or context), or None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, CollectiveError) and not isinstance(e, RankMismatchError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _copy_into(saved: dict | None, live: dict, pairs: tuple[list, list],
               now: tuple[list, list] | None = None, later=None) -> dict:
    """``live``'s values into ``saved``: tensors to copy into the buffers already there are
    added to ``pairs`` (destinations, sources), or to ``now`` when ``later(tensor)`` is
    false; new ones are cloned at once."""
    if saved is None or saved.keys() != live.keys():
        saved = {}
    for k, v in live.items():
        if isinstance(v, torch.Tensor):
            old = saved.get(k)
            if (isinstance(old, torch.Tensor) and old.shape == v.shape and old.dtype == v.dtype
                    and old.device == v.device):
                dst, src = pairs if later is None or later(v) else now
                dst.append(old)
                src.append(v.detach())
            else:
                saved[k] = v.detach().clone()
        else:
            saved[k] = copy.deepcopy(v)
    return saved


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return copy.deepcopy(obj)


@torch.no_grad()
def _broadcast_module(model: torch.nn.Module, comm) -> None:
    """Rank 0's parameters and buffers to every rank (after checking the models match)."""
    from shoal.train.ddp import model_signature
    module = getattr(model, "module", model)
    sigs = comm.allgather_object(model_signature(module))
    bad = [r for r, sig in enumerate(sigs) if sig != sigs[0]]
    if bad:
        raise RankMismatchError(f"the elastic State's model differs between ranks: ranks {bad} "
                                "have other parameter names/shapes/dtypes than rank 0. Build "
                                "the same model on every rank")
    tensors = [p.data for p in module.parameters()] + [b for b in module.buffers() if b.numel()]
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        comm.broadcast(flat, src=0)
        off = 0
        for t in group:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()


__all__ = ["State", "run", "MembershipChangedInterrupt"]
