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
import os
import sys
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


class RecipeError(RuntimeError):
    """A recipe that breaks the contract above; the message says which part and how to fix it."""


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    if isinstance(batch, dict) and "input" in batch:
        return model(batch["input"])
    what = f"a dict with keys {sorted(batch)}" if isinstance(batch, dict) else f"a {type(batch).__name__}"
    raise RecipeError(f"the default forward calls model(batch[0]) for tuples and model(batch['input']) for dicts, "
                      f"but the batch is {what}; give Task(forward=lambda model, batch: ...)")


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
    calibrate: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, Any]] | None = None
    """(validation sums, test sums), both of the checkpoint the test evaluates -> more test metrics. For a
    choice made on the validation split and judged on the test split (a confidence threshold below which
    the model abstains): called once at the end, on every rank, when there is test and validation data."""
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
    lr_scale: Callable[[str], float] | None = None
    """(parameter name) -> multiplier of optim.lr for that parameter, e.g. 10 for a freshly initialised
    head on a pretrained body. Names are the model's own (`model.named_parameters()`). None: 1 for all."""
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    """(model) -> your optimizer over its parameters (the model as the strategy holds it: sharded under
    fsdp, partitioned under ZeRO-3). None: AdamW or SGD from `optim.*`. Its lr is the peak the schedule
    scales; `optim.lr`, `betas`, `weight_decay` then do not apply. dtrain's own optimizers are fused and
    skip a non-finite update on the device; another one is skipped by a host-side check."""
    scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None
    """(optimizer, total optimizer steps) -> your LR scheduler, stepped once per optimizer step. None:
    warmup then `optim.schedule`. Its state_dict must be plain data (torch's own schedulers are; a
    LambdaLR of a lambda saves no function): checkpoints load with weights_only=True."""
    hooks: "Hooks" = field(default_factory=lambda: Hooks())
    """Your own code at a few points of the loop (see Hooks)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Anything the recipe wants to keep (label names, tokenizer...)."""


@dataclass
class Hooks:
    """Points where a recipe or script runs its own code; no callback classes, no other points.

    Each gets the model in eval mode under `torch.no_grad()`, and the RNG state is put back
    afterwards, so a hook that samples (text generation) changes nothing in training: a resumed run
    still ends bitwise equal. Under fsdp or ZeRO-3 a hook that runs the model must run on every rank
    (`all_ranks=True`): the forward gathers parameters, a collective."""

    after_eval: Callable[[nn.Module, int, dict[str, Any]], None] | None = None
    """(model, step, metrics) after each evaluation, e.g. print a generated sample."""
    after_log: Callable[[int, dict[str, Any]], None] | None = None
    """(step, the log line's record) after each training log line."""
    at_end: Callable[[nn.Module, int, dict[str, Any]], None] | None = None
    """(model, step, last evaluation) once, when training has finished."""
    all_ranks: bool = False
    """False: rank 0 only."""

    def run(self, hook: Callable | None, model: nn.Module, is_main: bool, *args: Any) -> None:
        """Call `hook(*args)` where it asked to run, the model in eval mode, the RNG put back after."""
        if hook is None or not (self.all_ranks or is_main):
            return
        from dtrain.checkpoint import capture_rng, restore_rng

        rng, was_training = capture_rng(), model.training
        model.eval()
        try:
            with torch.no_grad():  # not inference_mode: see Trainer.evaluate
                hook(*args)
        finally:
            model.train(was_training)
            restore_rng(rng)


RECIPE_PACKAGE = "recipes"


def resolve_recipe(name: str) -> ModuleType:
    """'vision' -> recipes.vision; 'pkg.mod' -> that module; 'pkg.mod:make' -> that module with `make` as
    its build function. The module must define build (or name it) and Config (a module without Config
    takes no `task:` keys). Modules are found on PYTHONPATH and in the current directory."""
    module_name, _, build_name = name.partition(":")
    module_name = module_name if "." in module_name or build_name else f"{RECIPE_PACKAGE}.{module_name}"
    # The `dtrain` console script puts its own directory on sys.path, not the working directory that
    # `python -m` and a script would: a recipe next to the user's config would not be found.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the recipe itself imports something missing: its own error says what
        raise ImportError(f"no module named {exc.name!r} in the current directory ({os.getcwd()}) or on "
                          "PYTHONPATH; run from the directory that holds it, or add that directory to "
                          "PYTHONPATH") from None
    build = getattr(module, build_name or "build", None)
    if not callable(build):
        raise AttributeError(f"recipe module {module_name} defines no function `{build_name or 'build'}`")
    if not build_name and hasattr(module, "Config"):
        return module
    view = ModuleType(f"{module_name}:{build_name or 'build'}")
    view.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    view.build = build
    view.Config = getattr(module, "Config", _NoSettings)
    return view


@dataclass(kw_only=True)
class _NoSettings:
    """The `task:` section of a recipe without its own Config: empty."""
