"""What a training loop sees of its gang: ``get_context``, ``report``, ``get_checkpoint``.

A worker started by ``Trainer.fit`` gets its session from the Trainer; a
process started by ``shoal launch`` or torchrun builds one from its
environment on first use (rank 0 then keeps metrics and checkpoints under
SHOAL_RUN_DIR, where a restarted job finds them again).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass

from shoal.train.checkpoint import Checkpoint, latest_in, persist


@dataclass(frozen=True)
class TrainContext:
    """A worker's place in its gang.

    ``attempt`` counts the gang's starts: restarts from a checkpoint, or in
    an elastic run its generations (each membership change is a new one).
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    experiment_name: str = ""
    attempt: int = 0

    # Ray Train's accessor names, for loops written against it.
    def get_world_rank(self) -> int:
        """This worker's rank in the gang (Ray Train's name for ``rank``)."""
        return self.rank

    def get_world_size(self) -> int:
        """Number of workers in the gang."""
        return self.world_size

    def get_local_rank(self) -> int:
        """This worker's rank among the gang's workers on its node."""
        return self.local_rank

    def get_local_world_size(self) -> int:
        """Number of the gang's workers on this node."""
        return self.local_world_size

    def get_node_rank(self) -> int:
        """This node's index among the gang's nodes."""
        return self.node_rank


class Session:
    """The worker-side state of one attempt of a run."""

    def __init__(self, context: TrainContext, comm, store, run_dir: str | None,
                 report_prefix: str | None, checkpoint: Checkpoint | None, strategy,
                 report_index: int = 0, use_gpu: bool | None = None):
        self.context = context
        self.use_gpu = use_gpu      # None: a GPU when the process has one
        self._device = None
        self.comm = comm
        self.store = store
        self.run_dir = run_dir
        self.report_prefix = report_prefix
        self.checkpoint = checkpoint
        self.strategy = strategy
        self.report_index = report_index
        self.samples = 0            # counted by prepared data loaders
        self._t_last = time.perf_counter()
        self._owns_comm = False
        self.elastic = None         # a MembershipLink when the Trainer runs elastic
        self.models: list = []      # what follows the group when it re-forms (elastic)
        self.loaders: list = []

    def regroup(self, min_generation: int) -> None:
        """Leave the current group and join the gang's next generation (elastic only).

        Prepared models average over the new group and prepared data loaders
        deal the rest of the epoch over the new world.
        """
        import dataclasses
        link = self.elastic
        if self.comm is not None:
            try:
                self.comm.destroy()
            except Exception:  # noqa: BLE001, S110 - the old group may be broken
                pass
            self.comm = None
        comm, rank, world = link.join(min_generation)
        self.comm = comm
        self.context = dataclasses.replace(self.context, rank=rank, world_size=world,
                                           attempt=link.generation,
                                           **place_of(link.members, link.where, link.wid))
        for m in self.models:
            m.rebind(comm)
        for loader in self.loaders:
            loader.reshard(rank, world)

    @property
    def device(self):
        """The torch device this rank trains on (see ``get_device``)."""
        if self._device is None:
            self._device = pick_device(self.context.local_rank, self.use_gpu)
        return self._device

    def report(self, metrics: dict, checkpoint: Checkpoint | None = None) -> None:
        if not isinstance(metrics, dict):
            raise TypeError(f"report() takes a dict of metrics, got {type(metrics).__name__}")
        loss = metrics.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            from shoal.exceptions import NonFiniteLossError
            raise NonFiniteLossError(
                f"reported loss is {loss} on rank {self.context.rank} (report "
                f"#{self.report_index}); lower the learning rate, clip gradients or check the "
                "input data for NaN/inf")
        now = time.perf_counter()
        metrics = dict(metrics)
        if self.samples:
            metrics.setdefault("samples_per_s", self.samples * self.context.world_size
                               / max(now - self._t_last, 1e-9))
        self.samples, self._t_last = 0, now
        index = self.report_index
        self.report_index += 1
        if self.context.rank != 0:
            return
        saved = None
        if checkpoint is not None and self.run_dir is not None:
            saved = persist(checkpoint, self.run_dir, index)
            self.checkpoint = saved
        record = {"index": index, "metrics": metrics, "time": time.time(),
                  "checkpoint": saved.path if saved else None}
        if self.report_prefix is not None:
            self.store.set(f"{self.report_prefix}/{index}", pickle.dumps(record, protocol=5))
        elif self.run_dir is not None:   # launched by shoal launch / torchrun
            with open(os.path.join(self.run_dir, "result.json"), "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")
            print(_progress_text(record), flush=True)


def place_of(members: list, where: dict, wid) -> dict:
    """local_rank, local_world_size and node_rank of worker ``wid`` among ``members``."""
    nodes = list(dict.fromkeys(where[m][0] for m in members))
    node = where[wid][0]
    local = [m for m in members if where[m][0] == node]
    return {"local_rank": local.index(wid), "local_world_size": len(local),
            "node_rank": nodes.index(node)}


def pick_device(local_rank: int, use_gpu: bool | None):
    """cuda:0 in a worker given its own GPUs (CUDA_VISIBLE_DEVICES names them);
    cuda:<local_rank mod GPUs> in a launched script on a GPU host; else cpu."""
    import torch
    if use_gpu is False or not torch.cuda.is_available():
        if use_gpu:
            raise RuntimeError("this worker was given a GPU but torch sees no CUDA device here "
                               f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                               f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA "
                               "build of torch, or train on CPU (no GPU in resources_per_worker)")
        return torch.device("cpu")
    from shoal.core._gpus import assigned_gpu_ids
    index = 0 if assigned_gpu_ids() else local_rank % torch.cuda.device_count()
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def _jsonable(record: dict) -> dict:
    out = dict(record)
    out["metrics"] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                      for k, v in record["metrics"].items()}
    return out


def _progress_text(record: dict) -> str:
    parts = []
    for k, v in record["metrics"].items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k}={v}")
    return f"[report {record['index']}] " + " ".join(parts)


_session: Session | None = None


def _set_session(s: Session | None) -> None:
    global _session
    _session = s


def current_session(required: bool = True) -> Session | None:
    """The session of this process (built from the launcher's environment if needed)."""
    global _session
    if _session is None and _launched():
        _session = _session_from_env()
    if _session is None and required:
        raise RuntimeError("no training session here: call this inside a train_loop run by "
                           "shoal.train.Trainer, or in a script started by `shoal launch`/torchrun")
    return _session


def _launched() -> bool:
    return "SHOAL_ELASTIC_PREFIX" in os.environ or (
        ("SHOAL_RANK" in os.environ or "RANK" in os.environ)
        and ("SHOAL_WORLD_SIZE" in os.environ or "WORLD_SIZE" in os.environ))


def _session_from_env() -> Session:
    env = os.environ
    if "SHOAL_ELASTIC_PREFIX" in env:
        return _elastic_session_from_env()
    from shoal.train._group import group_from_env
    comm, store = group_from_env()
    rank, world = comm.rank, comm.world_size
    local_rank = int(env.get("SHOAL_LOCAL_RANK", env.get("LOCAL_RANK", 0)))
    local_world = int(env.get("SHOAL_LOCAL_WORLD_SIZE", env.get("LOCAL_WORLD_SIZE", world)))
    node_rank = int(env.get("SHOAL_NODE_RANK", env.get("GROUP_RANK", 0)))
    ctx = TrainContext(rank, world, local_rank, local_world, node_rank,
                       env.get("SHOAL_JOB_NAME", ""), int(env.get("SHOAL_RESTART_COUNT", 0)))
    run_dir = env.get("SHOAL_RUN_DIR")
    ckpt = None
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        ckpt = latest_in(run_dir)
    from shoal.train.ddp import DDP
    use_gpu = env.get("SHOAL_USE_GPU", "").strip().lower() in ("1", "true", "yes")
    s = Session(ctx, comm, store, run_dir, None, ckpt, DDP(),
                report_index=_next_index(ckpt), use_gpu=use_gpu)
    s._owns_comm = True
    return s


def _elastic_session_from_env() -> Session:
    """A process of ``shoal launch``'s elastic form: no rank yet; the first ``elastic.run``
    joins the gang's current generation (the launcher owns the membership and the store)."""
    from shoal.core.kv import TCPStore
    from shoal.train._membership import MembershipLink
    from shoal.train.ddp import DDP
    env = os.environ
    _die_with_launcher(int(env.get("SHOAL_LAUNCHER_PID", 0)))
    timeout = float(env.get("SHOAL_COLLECTIVE_TIMEOUT", 60))
    store = TCPStore(env["SHOAL_MASTER_ADDR"], int(env["SHOAL_MASTER_PORT"]),
                     secret=bytes.fromhex(env["SHOAL_SECRET"]), timeout=timeout)
    wid = int(env["SHOAL_ELASTIC_WID"])
    link = MembershipLink(store, env["SHOAL_ELASTIC_PREFIX"], wid,
                          f"launch-{env.get('SHOAL_JOB_NAME', 'job')}", "auto", timeout,
                          float(env.get("SHOAL_ELASTIC_JOIN_TIMEOUT", timeout + 60)))
    link.launched = True
    ctx = TrainContext(-1, 1, int(env.get("SHOAL_LOCAL_RANK", 0)), 1, 0,
                       env.get("SHOAL_JOB_NAME", ""), 0)
    run_dir = env.get("SHOAL_RUN_DIR")
    ckpt = None
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        ckpt = latest_in(run_dir)
    use_gpu = env.get("SHOAL_USE_GPU", "").strip().lower() in ("1", "true", "yes")
    s = Session(ctx, None, store, run_dir, None, ckpt, DDP(), report_index=_next_index(ckpt),
                use_gpu=use_gpu)
    s.elastic = link
    return s


def _die_with_launcher(launcher_pid: int) -> None:
    """SIGKILL this process when its launcher dies (Linux), so that a lost launcher leaves
    no process training on its own. Only when the launcher started this process itself (a
    wrapper script in between is left alone; a launcher gone already shows as its store
    refusing the connection)."""
    if not launcher_pid or not sys.platform.startswith("linux") or os.getppid() != launcher_pid:
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher_pid:     # it died between the check and the prctl
        os.kill(os.getpid(), signal.SIGKILL)


def _next_index(ckpt: Checkpoint | None) -> int:
    if ckpt is None:
        return 0
    return int(os.path.basename(ckpt.path).split("_")[-1]) + 1


# ------------------------------------------------------------------ public API
def get_context() -> TrainContext:
    """Rank, world size, local rank and node rank of this worker."""
    return current_session().context


def report(metrics: dict, checkpoint: Checkpoint | None = None) -> None:
    """Report metrics (and optionally a checkpoint) from the training loop.

    Every rank may call it; rank 0's metrics are recorded and its checkpoint
    persisted (atomically) in the run directory. A non-finite ``loss``
    raises NonFiniteLossError.
    """
    current_session().report(metrics, checkpoint)


def get_device():
    """The torch device this worker trains on.

    In a Trainer worker with GPUs in its resources (or ``use_gpu=True``): its
    GPU; in a script started by ``shoal launch``/torchrun on a host with
    GPUs and SHOAL_USE_GPU=1: ``cuda:<local rank>`` (modulo the GPUs);
    otherwise the CPU (such scripts place their model and data themselves,
    as under torchrun).
    """
    return current_session().device


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from (after a restart or ``Trainer.restore``), or None."""
    return current_session().checkpoint
