"""shoal.train.parallel: sharded data parallel (ZeRO/FSDP), pipeline and tensor parallel,
composed over one ``Mesh``.

    mesh = Mesh(dp=2)                                   # the gang as a dp x tp x pp grid
    model = parallelize(GPT(), mesh, zero_stage=3)      # TP, then PP, then sharded DP
    opt = torch.optim.AdamW(model.parameters())         # this rank's shards only

``ZeRO(stage=1|2|3)`` / ``FSDP()`` are also ``Trainer`` strategies
(``Trainer(loop, num_workers=2, strategy=ZeRO(stage=2))``; ``prepare_model``
shards the model).
"""
from shoal.train.parallel.api import Parallel, parallelize
from shoal.train.parallel.mesh import Mesh
from shoal.train.parallel.pipeline import (PipelineStage, pipeline_layers, profile_layers,
                                           rebalance, split_model, stage_costs)
from shoal.train.parallel.schedule import (SCHEDULES, PipelineSchedule, StepStats,
                                           pipeline_actions, replay_bubble, span_bubble,
                                           theoretical_bubble)
from shoal.train.parallel.sharded_checkpoint import load_sharded, save_sharded
from shoal.train.parallel.tensor import (ColumnParallelLinear, ColwiseParallel, HeadParallel,
                                         RowParallelLinear, RowwiseParallel, SequenceGather,
                                         SequenceParallel, SequenceScatter, VocabParallel,
                                         VocabParallelEmbedding, apply_tensor_parallel,
                                         vocab_parallel_cross_entropy)
from shoal.train.parallel.tp_comm import (copy_to_tp, gather_from_tp, gather_sequence,
                                          reduce_from_tp, reduce_scatter_sequence,
                                          replicated_param, scatter_sequence)
from shoal.train.parallel.zero import FSDP, ShardedModel, ZeRO

__all__ = ["ColumnParallelLinear", "ColwiseParallel", "FSDP", "HeadParallel", "Mesh", "Parallel",
           "PipelineSchedule", "PipelineStage", "RowParallelLinear", "RowwiseParallel",
           "SCHEDULES", "SequenceGather", "SequenceParallel", "SequenceScatter", "ShardedModel", "StepStats", "VocabParallel", "VocabParallelEmbedding", "ZeRO",
           "apply_tensor_parallel", "copy_to_tp", "gather_from_tp", "gather_sequence", "load_sharded",
           "parallelize", "pipeline_actions", "pipeline_layers", "profile_layers", "rebalance", "reduce_from_tp",
           "reduce_scatter_sequence", "replay_bubble", "replicated_param", "save_sharded", "scatter_sequence", "span_bubble", "split_model", "stage_costs", "theoretical_bubble", "vocab_parallel_cross_entropy"]
