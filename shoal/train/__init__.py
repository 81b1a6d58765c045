"""shoal.train: run a PyTorch training loop data-parallel on a gang of workers.

    import shoal.train as st

    def train_loop(config):
        model = st.prepare_model(Net())
        loader = st.prepare_data_loader(DataLoader(ds, batch_size=64, shuffle=True))
        for epoch in range(config["epochs"]):
            loader.set_epoch(epoch)
            for x, y in loader:
                ...
            st.report({"epoch": epoch, "loss": loss}, checkpoint=st.Checkpoint.from_dict(...))

    result = st.Trainer(train_loop, num_workers=2, config={"epochs": 5}).fit()

With ``use_gpu=True`` (or "GPU" in ``resources_per_worker``) each worker gets
its GPU: ``get_device()`` names it, and prepare_model / prepare_data_loader
move the model and the batches there.

Scripts started by ``shoal launch`` (or torchrun) use the same functions.
"""
from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.train", "train", "torch", "pandas")

from shoal.train.checkpoint import Checkpoint
from shoal.train import elastic
from shoal.train.config import CheckpointConfig, ElasticConfig, FailureConfig, RunConfig
from shoal.train.context import TrainContext, get_checkpoint, get_context, get_device, report
from shoal.train.data import PreparedDataLoader, ShardSampler
from shoal.train.ddp import DDP, DistributedModel
from shoal.train.parallel import (FSDP, Mesh, Parallel, PipelineSchedule, ShardedModel, ZeRO,
                                  apply_tensor_parallel, load_sharded, parallelize, save_sharded,
                                  split_model, vocab_parallel_cross_entropy)
from shoal.train.sync_batchnorm import SyncBatchNorm
from shoal.train.tensorflow import TensorflowConfig
from shoal.train.trainer import Result, Trainer


def prepare_model(model, *, sync_batchnorm: bool | None = None, move_to_device: bool = True,
                  strategy=None):
    """Wrap ``model`` for data-parallel training in this gang (a DistributedModel).

    When this worker trains on a GPU (``get_device()``) the model is first
    moved there, unless ``move_to_device=False``; on the CPU it stays where
    it is. Rank 0's parameters and buffers are copied to every rank; a model
    whose parameters differ in names/shapes between ranks raises
    RankMismatchError. With one worker and DDP the (moved) model is
    returned unwrapped. ``strategy`` (e.g. ``ZeRO(stage=3)``) overrides the session's,
    the Trainer's ``strategy=`` or DDP in a script under ``shoal launch``.
    """
    from shoal.train.context import current_session
    s = current_session()
    if move_to_device and s.device.type != "cpu":
        model = model.to(s.device)
    strategy = strategy if strategy is not None else s.strategy
    if sync_batchnorm is not None and sync_batchnorm != strategy.sync_batchnorm:
        import dataclasses
        strategy = dataclasses.replace(strategy, sync_batchnorm=sync_batchnorm)
    if s.elastic is not None:         # the world may grow: always wrap, follow the group
        if not isinstance(strategy, DDP):
            raise elastic.sharded_strategy_error(strategy)
        wrapped = strategy.prepare(model, s.comm, sync_state=False)
        s.models.append(wrapped)
        return wrapped
    if s.context.world_size == 1 and isinstance(strategy, DDP):
        return model       # nothing to synchronize (ZeRO still wraps: its checkpoints, precision)
    return strategy.prepare(model, s.comm)


def prepare_data_loader(loader, *, seed: int = 0, move_to_device: bool = True):
    """This rank's shard of ``loader`` (see PreparedDataLoader).

    Batches (tensors, or tuples/lists/dicts of them) come out on this
    worker's device (``get_device()``) unless ``move_to_device=False``.
    """
    from shoal.train.context import current_session
    from shoal.train.data import prepare_data_loader as _prepare
    s = current_session()
    prepared = _prepare(loader, s, seed=seed, move_to_device=move_to_device)
    if s.elastic is not None:
        s.loaders.append(prepared)
    return prepared


def get_communicator():
    """The communicator of this gang (allreduce, broadcast, allgather, barrier)."""
    from shoal.train.context import current_session
    return current_session().comm


__all__ = [
    "DDP",
    "FSDP",
    "Checkpoint",
    "CheckpointConfig",
    "DistributedModel",
    "ElasticConfig",
    "FailureConfig",
    "Mesh",
    "Parallel",
    "PipelineSchedule",
    "PreparedDataLoader",
    "Result",
    "RunConfig",
    "ShardSampler",
    "ShardedModel",
    "SyncBatchNorm",
    "TrainContext",
    "TensorflowConfig",
    "Trainer",
    "ZeRO",
    "apply_tensor_parallel",
    "elastic",
    "get_checkpoint",
    "get_communicator",
    "get_context",
    "get_device",
    "load_sharded",
    "parallelize",
    "prepare_data_loader",
    "prepare_model",
    "report",
    "save_sharded",
    "split_model",
    "vocab_parallel_cross_entropy",
]
