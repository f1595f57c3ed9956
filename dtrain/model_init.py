"""Where a model's weights come into being: whole on the CPU, as an empty skeleton, and the copy of the
source rank's weights into a sharded model.

The sharding strategies never hold the whole model on a GPU: rank 0 (the source) builds it on the CPU
with its real weights, every rank builds an empty skeleton and shards it, and rank 0's weights are sent
into the shards tensor by tensor. Building on rank 0 only (not a random init per shard) also keeps the
initial weights exactly those of a ddp run with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from dtrain.dist import DistState, broadcast_

SOURCE_RANK = 0


@dataclass(frozen=True)
class ModelSource:
    """How to get the recipe's model: `full()` with its weights, `skeleton()` without."""

    build: Callable[[], nn.Module] | None
    """None when the recipe handed over a built module (`prebuilt`)."""
    skeleton_fn: Callable[[], nn.Module] | None
    seed: int
    prebuilt: nn.Module | None = None

    @classmethod
    def of(cls, model: nn.Module | Callable[[], nn.Module], skeleton: Callable[[], nn.Module] | None,
           seed: int) -> "ModelSource":
        if isinstance(model, nn.Module):
            return cls(None, None, seed, prebuilt=model)
        if not callable(model):
            raise TypeError(f"the recipe's Task.model must be an nn.Module or a function returning one, "
                            f"got {type(model).__name__}")
        return cls(model, skeleton, seed)

    @property
    def can_defer(self) -> bool:
        """True when the model is not built yet, so a sharding strategy can avoid building it whole."""
        return self.prebuilt is None

    def full(self) -> nn.Module:
        """The model with its weights, on the CPU. Every rank that calls this gets the same weights: the
        build runs under `seed`, in a forked RNG so the ranks' own streams are left as they were."""
        if self.prebuilt is not None:
            return self.prebuilt
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return _checked(self.build(), "Task.model")

    def skeleton(self, meta: bool = True) -> nn.Module:
        """The architecture without weights (under torch.device('meta') unless `meta=False`, for callers
        that set their own allocation context, such as DeepSpeed's zero.Init)."""
        fn = self.skeleton_fn or self.build
        if not meta:
            return _checked(fn(), "Task.model_skeleton")
        with torch.device("meta"):
            return _checked(fn(), "Task.model_skeleton")


def _checked(model, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"the recipe's {what} returned {type(model).__name__}, not an nn.Module")
    return model


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers a state dict leaves out (e.g. BERT's position_ids): a skeleton's are empty after
    `to_empty`, so they are sent from the source rank like the weights."""
    out = {}
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            buf = module._buffers.get(name)
            if buf is not None:
                out[f"{prefix}.{name}" if prefix else name] = buf
    return out


def send_buffers(target: dict[str, torch.Tensor], source: Mapping[str, torch.Tensor] | None,
                 state: DistState) -> None:
    """Copy the source rank's tensors into `target`, by name, on every rank (`source`: the source rank's
    whole tensors, e.g. `dict(full.named_buffers())`, on the source rank; None elsewhere)."""
    for name, buf in sorted(target.items()):
        if source is not None:
            buf.copy_(source[name])
        broadcast_(buf, state, src=SOURCE_RANK)
