"""The contract between a recipe and the Trainer.

A recipe is a module with two things:

    @dataclass(kw_only=True)
    class Config:            # the `task:` section of the YAML, typed and checked like the rest
        ...

    def build(cfg: Config, ctx: BuildContext) -> Task:
        ...                  # model, data sets, loss and metrics; no training loop

The Trainer owns the loop, devices, precision, distribution and checkpoints; a recipe never does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from dtrain.dist import DistState


@dataclass
class BuildContext:
    """What a recipe may need to know while building its task."""

    dist: DistState
    seed: int
    output_dir: Path


def _default_forward(model: nn.Module, batch: Any) -> Any:
    inputs = batch[0] if isinstance(batch, (list, tuple)) else batch["input"]
    return model(inputs)


@dataclass
class Task:
    model: nn.Module | Callable[[], nn.Module]
    """A function that builds the model on the CPU, weights and all (preferred), or the built module.

    With a function, the strategy decides where the model comes into being: ddp and ZeRO 1/2 build it
    on every rank (seeded alike); fsdp and ZeRO-3 build it whole on rank 0 only, every other rank builds
    an empty skeleton (`model_skeleton`) and receives just its shard of rank 0's weights, so no GPU
    (and no other rank's memory) ever holds the whole model. A module built in `build` exists whole on
    every rank: fine for ddp, a waste for the sharding strategies."""
    train_data: Dataset
    loss_fn: Callable[[Any, Any], torch.Tensor]
    """(outputs, batch) -> the MEAN loss over the batch's samples (the Trainer relies on mean)."""
    val_data: Dataset | None = None
    test_data: Dataset | None = None
    """Held out: evaluated once at the end, with the best checkpoint, into test_report.json."""
    forward: Callable[[nn.Module, Any], Any] = _default_forward
    """(model, batch) -> outputs. Default: model(batch[0]) for tuples, model(batch['input']) for dicts."""
    eval_stats: Callable[[Any, Any], dict[str, torch.Tensor]] | None = None
    """(outputs, batch) -> SUMS over the batch (counts, correct, a confusion matrix...).

    Sums are added over batches and ranks, then `summarize` turns them into metrics. Sums, never
    per-rank means, so uneven eval shards give the same answer as a single process."""
    summarize: Callable[[dict[str, torch.Tensor]], dict[str, Any]] | None = None
    """Reduced sums -> metrics: numbers, or JSON-able values such as a confusion matrix."""
    train_transform: Callable[[Any], Any] | None = None
    """Applied to each training batch on the device (augmentation). Random draws must use the
    global torch RNG, which checkpoints save and restore, so a resumed run sees the same draws."""
    collate_fn: Callable | None = None
    count_tokens: Callable[[Any], int | torch.Tensor] | None = None
    """(batch) -> tokens in it, for text: log lines then carry tokens/s. Called on the host batch before it
    moves to the device, so a CPU tensor's sum costs no device sync (e.g. batch['attention_mask'].sum())."""
    shard_units: Callable[[nn.Module], list[nn.Module]] | None = None
    """strategy: fsdp only. model -> the blocks to shard one by one (`fully_shard` each, e.g. every
    transformer layer or every ResNet stage); the root is sharded too, for the rest. Each unit's
    parameters are gathered for its own forward/backward only, so peak memory is about one unit's full
    parameters plus everything's shards. None: the whole model is one unit. With
    fsdp.activation_checkpointing these are also the units whose activations are recomputed."""
    model_skeleton: Callable[[], nn.Module] | None = None
    """The same architecture built without reading any weights file, e.g. `from_config` where `model`
    calls `from_pretrained` (which refuses the meta device). Called under `torch.device('meta')`, or
    DeepSpeed's `zero.Init`; None: `model` itself is used (fine when it only initializes randomly)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Anything the recipe wants to keep (label names, tokenizer...)."""


RECIPE_PACKAGE = "recipes"


def resolve_recipe(name: str) -> ModuleType:
    """'vision' -> recipes.vision; 'pkg.mod' -> that module. The module must define Config and build."""
    module_name = name if "." in name else f"{RECIPE_PACKAGE}.{name}"
    module = importlib.import_module(module_name)
    for attr in ("Config", "build"):
        if not hasattr(module, attr):
            raise AttributeError(f"recipe module {module_name} defines no `{attr}`")
    return module
