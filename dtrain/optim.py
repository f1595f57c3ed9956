"""Optimizer and learning-rate schedule, stepped once per optimizer step (not per micro-batch)."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from dtrain.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters. `lr_scale` (parameter name -> multiplier of optim.lr)
    gives parameters that should learn at another rate (a freshly initialised head) groups of their own;
    the schedule scales every group alike."""
    # Biases and norm weights (1-D tensors) take no weight decay, as in nanoGPT and torchtitan. The two
    # groups at scale 1 always come first, so checkpoints of runs without lr_scale keep their layout.
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((float(lr_scale(name)) if lr_scale else 1.0, _ndim(p) >= 2), []).append(p)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
                    for (scale, decay), params in groups.items() if params or scale == 1.0]
    # Fused: one kernel per parameter group and step on CUDA (faster than foreach there), and it reads the
    # skip flag of the non-finite guard and of GradScaler on the device, where foreach needs a host sync.
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    # FSDP2's parameters are DTensors, and torch has no sharded kernel for the fused SGD step
    # (aten._fused_sgd_): foreach there, and the guard's skip is decided on the host (a sync a step, guard on).
    sharded = any(hasattr(p, "device_mesh") for group in param_groups for p in group["params"])
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, fused=not sharded,
                           foreach=True if sharded else None)


def _ndim(p: nn.Parameter) -> int:
    # A parameter built under DeepSpeed's zero.Init holds only its flat partition; ds_shape is its shape.
    return len(getattr(p, "ds_shape", p.shape))


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for the update made at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    # A functools.partial of a module-level function keeps the scheduler's state_dict plain data,
    # so checkpoints load with weights_only=True.
    fn = functools.partial(
        lr_factor, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
