"""DistributedDataParallel: a full replica per rank, gradients all-reduced in backward."""

from __future__ import annotations

import contextlib
import inspect
from typing import ContextManager

from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dtrain.dist import has_group
from dtrain.model_init import ModelSource
from dtrain.strategies.base import OptimizerFactory, Strategy


class DDPStrategy(Strategy):
    name = "ddp"

    def setup(self, source: ModelSource, make_optimizer: OptimizerFactory) -> None:
        # A replica on every rank: each builds the same (seeded) weights; DDP checks they agree.
        model = source.full().to(self.dist.device)
        tc = self.cfg.train
        if tc.compile:
            model.compile(mode=None if tc.compile is True else tc.compile)
        self.model = model
        self.ddp = None
        if has_group():  # also at world size 1 under a launcher: the same collectives as at 8 ranks
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            sync = broadcast_buffers(model, self.cfg.ddp.broadcast_buffers)
            # torch >= 2.13 renamed the switch and warns on every rank at the old name. The new one also
            # sends the buffers once at construction: harmless, every rank built the same ones.
            key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
            self.ddp = DDP(model, device_ids=device_ids, gradient_as_bucket_view=True, **{key: sync})
        self.train_model = self.ddp or model
        self.optimizer = make_optimizer(model)

    def sync(self, last: bool) -> ContextManager:
        # DDP all-reduces gradients in backward; skip that on all but the last micro-batch of the
        # window (nanoGPT's trick) - the reduction of the summed gradients happens once.
        return contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()


def broadcast_buffers(model: nn.Module, setting: bool | str) -> bool:
    """ddp.broadcast_buffers, with auto = the model has batch norm (running statistics change as it trains)."""
    if setting != "auto":
        return bool(setting)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())
