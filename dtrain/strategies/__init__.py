"""How the model is spread over the ranks. The Trainer talks to one `Strategy`; each file here is one.

    ddp.py        replicas, gradients all-reduced (DistributedDataParallel)
    fsdp.py       FSDP2: parameters, gradients and optimizer state sharded per recipe block (fully_shard)
    deepspeed.py  ZeRO stage 1/2/3 through deepspeed.initialize (imported only when chosen)

The interface (base.py) is what the loop needs and nothing more: wrap model + optimizer, a context for
gradient sync across an accumulation window, backward, clip + step, zero_grad, and the model/optimizer
part of a checkpoint.
"""

from __future__ import annotations

from dtrain.config import RunConfig
from dtrain.dist import DistState
from dtrain.precision import Precision
from dtrain.recipe import Task
from dtrain.strategies.base import Strategy


def build_strategy(cfg: RunConfig, dist: DistState, precision: Precision, task: Task) -> Strategy:
    if cfg.strategy == "fsdp":
        from dtrain.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(cfg, dist, precision, shard_units=task.shard_units)
    if cfg.strategy == "deepspeed":
        from dtrain.strategies.deepspeed import DeepSpeedStrategy  # deepspeed itself is imported in setup

        return DeepSpeedStrategy(cfg, dist, precision)
    from dtrain.strategies.ddp import DDPStrategy

    return DDPStrategy(cfg, dist, precision)


__all__ = ["Strategy", "build_strategy"]
