"""A sanity evaluation before the first step: a recipe's evaluation mistakes surface in seconds, named,
not after an epoch of training with no checkpoint (Lightning's num_sanity_val_steps, with checks).

The Trainer evaluates a few validation batches (`train.sanity_eval_batches`) through the same code as
every evaluation, then `check_metrics` looks at what came out: values `summarize` returns must be
numbers or JSON (not tensors), the metric a checkpoint or early stopping watches must exist, and
numbers that are surely wrong (a ratio above 1: a per-batch mean summed as if it were a sum) are said,
here and after every evaluation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dtrain.recipe import RecipeError, Task

# Names of metrics that are fractions in [0, 1] (as words in the name: val_accuracy, macro_f1, top1_acc).
RATIO = re.compile(r"(^|_)(acc|accuracy|precision|recall|f1|auc|auroc|rate|ratio|fraction)(_|$)", re.IGNORECASE)


class MetricNameError(RecipeError):
    """A config names a metric the recipe's evaluation does not give: bad input (exit 2)."""

    bad_input = True


def sanity_subset(data: Dataset, rank: int, world_size: int, batch_size: int, batches: int) -> Subset:
    """The same number of validation samples on every rank (so sharded evaluation stays in step), the
    first ones, strided over the ranks."""
    n = len(data)  # type: ignore[arg-type]
    per_rank = min(batches * batch_size, n // world_size) or min(1, n)
    # Fewer samples than ranks: a rank past the end checks one again, because under fsdp and ZeRO-3 every
    # rank must run the forward passes the others gather parameters for.
    return Subset(data, [(i * world_size + rank) % n for i in range(per_rank)])


def check_eval_stats(stats: Any) -> None:
    """What `Task.eval_stats` returned for one batch must be a dict of numbers or tensors."""
    if not isinstance(stats, dict):
        raise RecipeError(f"Task.eval_stats returned {type(stats).__name__}, not a dict of sums over the batch "
                          "(e.g. {'correct': (pred == y).sum(), 'count': len(y)})")
    for key, value in stats.items():
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise RecipeError(f"Task.eval_stats returned {type(value).__name__} for {key!r}: give a number or a "
                              "tensor of sums (they are added over batches and ranks)")


def check_metrics(metrics: dict[str, Any], task: Task, watched: dict[str, str | None],
                  warn: Callable[[str], None]) -> None:
    """The sanity evaluation's metrics: JSON-able, the watched ones present, ratios in [0, 1]."""
    for key, value in metrics.items():
        if hasattr(value, "detach"):
            raise RecipeError(f"Task.summarize returned a tensor for {key!r}: return a Python number (.item()) "
                              "or a list (.tolist())")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise RecipeError(f"Task.summarize returned {type(value).__name__} for {key!r}, which cannot be "
                              "logged: return numbers, lists or dicts of them") from None
    for config_key, name in watched.items():
        if name is not None and name not in metrics:
            raise MetricNameError(f"{config_key}: {name!r} is not a metric of this recipe; its evaluation gives "
                                  f"{', '.join(sorted(metrics))}")
    if task.eval_stats is not None and task.summarize is None:
        warn("Task.eval_stats is given but Task.summarize is not: the sums are dropped and no metric besides "
             "val_loss is reported; add summarize=lambda sums: {...}")
    warn_out_of_range(metrics, set(), warn)


def warn_out_of_range(metrics: dict[str, Any], warned: set[str], warn: Callable[[str], None]) -> None:
    """Say once per metric when a fraction (named like one) is outside [0, 1]: the usual cause is
    eval_stats returning a per-batch mean, which the sum over batches turns into nonsense. Called after
    every evaluation (a few sanity batches may not show it yet)."""
    for key, value in metrics.items():
        if key not in warned and RATIO.search(key) and isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
            warned.add(key)
            warn(f"{key} = {value:.4g}, outside [0, 1]: Task.eval_stats must return SUMS over the batch (e.g. "
                 "correct predictions and a count) and summarize divides them; a per-batch mean adds up wrong")


def doubled(batch: Any) -> Any:
    """The batch followed by itself (2n samples, the same n twice), or None where its structure is not
    known (a batch object): tensors are concatenated along the first dimension, lists extended."""
    if isinstance(batch, torch.Tensor):
        return torch.cat([batch, batch]) if batch.dim() else batch
    if isinstance(batch, Mapping):
        parts = {k: doubled(v) for k, v in batch.items()}
        return None if any(v is None for v in parts.values()) else parts
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        parts = [doubled(v) for v in batch]
        return None if any(v is None for v in parts) else type(batch)(*parts)
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(v, (str, int, float)) for v in batch):
        return type(batch)(list(batch) + list(batch))  # per-sample values (texts, ids)
    if isinstance(batch, (list, tuple)):
        parts = [doubled(v) for v in batch]
        return None if any(v is None for v in parts) else type(batch)(parts)
    if isinstance(batch, (str, int, float, bool)) or batch is None:
        return batch
    return None


def check_loss_is_mean(task: Task, model: nn.Module, batch: Any, autocast, warn: Callable[[str], None]) -> None:
    """The Trainer weights micro-batches by their size, so `loss_fn` must give the MEAN over the batch. The
    loss of the batch followed by itself is the same for a mean and twice as large for a sum (the model in
    eval mode: no dropout, batch norm on its running statistics). Every rank runs it (a sharded forward
    is a collective)."""
    twice = doubled(batch)
    if twice is None:
        return
    with torch.no_grad(), autocast():
        once_loss = task.loss_fn(task.forward(model, batch), batch).float()
        twice_loss = task.loss_fn(task.forward(model, twice), twice).float()
    if once_loss.numel() != 1 or twice_loss.numel() != 1:
        raise RecipeError(f"Task.loss_fn returned a tensor of shape {tuple(once_loss.shape)}, not one number: "
                          "return the mean over the batch (.mean())")
    ratio = (twice_loss / once_loss).item() if once_loss.item() != 0 else 1.0
    if abs(ratio - 2.0) < 0.05:
        warn(f"Task.loss_fn looks like a SUM over the batch (a batch doubled with itself gives {ratio:.2f}x its "
             "loss): return the mean, or the learning rate and the gradient accumulation weights are off")
