"""``parallelize``: apply tensor, pipeline and sharded data parallelism, in that order.

As torchtitan's ``parallelize`` functions: each kind of parallelism is one
small function applied to the model in a fixed order, every one reading its
group from the one ``Mesh``. Tensor parallelism (``tensor.py``) and pipeline
parallelism (``pipeline.py``) are imported only when the mesh asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from shoal.exceptions import InvalidInputError
from shoal.train.parallel.mesh import Mesh
from shoal.train.parallel.zero import ZeRO


def parallelize(model: nn.Module, mesh: Mesh, plan: dict | None = None, *, zero_stage: int | None = 3,
                pipeline: dict | None = None, mixed_precision: str | None = None,
                offload_optimizer: bool = False, units: tuple | None = None,
                prefetch: bool = True) -> nn.Module:
    """This rank's part of ``model`` under ``mesh``: TP, then PP, then sharded DP.

    Args:
        model: the whole model, built identically on every rank.
        mesh: the layout (``Mesh(dp=, tp=, pp=)``).
        plan: tensor-parallel plan of module-name patterns to "colwise" /
            "rowwise" / ... (see ``shoal.train.parallel.tensor``); needed when
            ``mesh.tp > 1``.
        zero_stage: 1, 2 or 3 (FSDP) for the dp dimension; None replicates
            (plain data parallel, shoal.train.DDP).
        pipeline: keyword arguments of ``split_model`` (e.g. ``split_points``,
            or ``balance="time"`` with ``sample`` and ``loss_fn``: every rank
            of the mesh times the layers and all cut alike) when
            ``mesh.pp > 1``; the result is this rank's stage. With
            ``"virtual_stages": v`` the model is cut into ``pp * v`` stages and
            the result is an ``nn.ModuleList`` of this rank's ``v`` stages
            (for ``PipelineSchedule(..., schedule="interleaved")``), each
            sharded over dp on its own.
        mixed_precision, offload_optimizer, units, prefetch: see ``ZeRO``.

    Returns:
        The module this rank trains; build the optimizer from its
        ``parameters()`` afterwards.

    Raises:
        InvalidInputError: ``mesh.tp > 1`` without a plan, or a plan/pipeline
            given for a dimension of size 1 that cannot use it.
    """
    if not isinstance(mesh, Mesh):
        raise InvalidInputError(f"parallelize needs a shoal.train.parallel.Mesh, got "
                                f"{type(mesh).__name__}")
    if mesh.tp > 1:
        if not plan:
            raise InvalidInputError(f"mesh has tp={mesh.tp} but no tensor-parallel plan was given; "
                                    "pass plan={'blocks.*.attn.qkv': 'colwise', ...}")
        from shoal.train.parallel.tensor import apply_tensor_parallel
        model = apply_tensor_parallel(model, mesh.tp_group, plan)
    elif plan:
        raise InvalidInputError("a tensor-parallel plan was given but the mesh has tp=1; "
                                "pass Mesh(tp=...) or drop the plan")
    if mesh.pp > 1:
        from shoal.train.parallel.pipeline import split_model
        options = dict(pipeline or {})
        v = options.pop("virtual_stages", 1)
        if not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"pipeline virtual_stages must be an int >= 1, got {v!r}")
        if options.get("balance") == "time":
            # every rank of the mesh times and cuts alike (pp and dp peers must agree)
            options.setdefault("group", mesh.comm)
        stages = split_model(model, num_stages=mesh.pp * v, **options)[mesh.pp_rank::mesh.pp]
        model = stages[0] if v == 1 else nn.ModuleList(stages)
    elif pipeline:
        raise InvalidInputError("pipeline options were given but the mesh has pp=1; "
                                "pass Mesh(pp=...) or drop pipeline=")
    if mesh.dp > 1:
        if zero_stage is None:
            from shoal.train.ddp import DDP
            strategy = DDP()
        else:
            strategy = ZeRO(stage=zero_stage, mixed_precision=mixed_precision,
                            offload_optimizer=offload_optimizer, units=units, prefetch=prefetch)
        if isinstance(model, nn.ModuleList):     # virtual stages: each its own sharded model
            model = nn.ModuleList(strategy.prepare(m, mesh.dp_group) for m in model)
        else:
            model = strategy.prepare(model, mesh.dp_group)
    return model


@dataclass
class Parallel:
    """A ``Trainer`` strategy that lays the gang out as a ``Mesh`` and ``parallelize``s the model.

    ``Trainer(loop, num_workers=4, strategy=Parallel(dp=2, tp=2, plan=...))``;
    in the loop ``prepare_model(model)`` returns this rank's part. Arguments
    are those of ``Mesh`` and ``parallelize``.
    """

    dp: int | None = None
    tp: int = 1
    pp: int = 1
    plan: dict | None = None
    zero_stage: int | None = 3
    pipeline: dict | None = None
    mixed_precision: str | None = None
    offload_optimizer: bool = False
    backend: str = "auto"
    sync_batchnorm: bool = False
    options: dict = field(default_factory=dict)

    def prepare(self, model: nn.Module, comm) -> nn.Module:
        """Build the mesh over ``comm`` and parallelize ``model`` (what ``prepare_model`` calls)."""
        self.mesh = Mesh(dp=self.dp, tp=self.tp, pp=self.pp, comm=comm)
        return parallelize(model, self.mesh, self.plan, zero_stage=self.zero_stage,
                           pipeline=self.pipeline, mixed_precision=self.mixed_precision,
                           offload_optimizer=self.offload_optimizer, **self.options)
