"""`train(cfg)`: the one function behind `dtrain run` — join the group, build the recipe, fit."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dtrain.checkpoint import seed_everything
from dtrain.config import RunConfig
from dtrain.determinism import configure_kernels
from dtrain.dist import DistState, distributed, read_env
from dtrain.lifeline import stop_with_launcher
from dtrain.recipe import BuildContext, RecipeError, Task, resolve_recipe
from dtrain.runlock import hold
from dtrain.trainer import Trainer


def train(cfg: RunConfig) -> dict[str, float]:
    """Train `cfg` in this process (as the only rank, or as one rank of torchrun / srun)."""
    # First: joining the group may already touch the GPU, and cuBLAS reads its setting only once.
    configure_kernels(cfg.train.deterministic, cfg.train.tf32, cfg.train.cudnn_benchmark)
    env = read_env()
    if env.launcher == "torchrun":  # from the start: joining the group waits for peers a dead launcher never starts
        stop_with_launcher(env.rank)
    with distributed(cfg.dist.device, cfg.dist.timeout_s) as ds:
        # Rank 0 holds the run directory before anything is written into it (the recipe's build may
        # write already): a second job on the same output_dir stops here, the first one untouched.
        with hold(cfg.output_dir) if ds.is_main else contextlib.nullcontext():
            return build_trainer(cfg, ds).fit()


def build_trainer(cfg: RunConfig, ds: DistState) -> Trainer:
    """The recipe's task and its Trainer, in a process group that already exists (several runs may
    share one: the test workers and benchmarks/gpu_check.py)."""
    # Same seed on every rank while the recipe builds its data (and a model it builds itself); the
    # Trainer builds a model given as a function under the same seed. Then one stream per rank for
    # augmentation and dropout.
    tc = cfg.train
    configure_kernels(tc.deterministic, tc.tf32, tc.cudnn_benchmark)  # again: this run's, not an earlier one's
    seed_everything(cfg.seed)
    recipe = resolve_recipe(cfg.recipe)
    task = recipe.build(cfg.task, BuildContext(dist=ds, seed=cfg.seed, output_dir=Path(cfg.output_dir)))
    if not isinstance(task, Task):
        raise RecipeError(f"recipe {cfg.recipe!r}: build() returned {type(task).__name__}, not a Task; return "
                          "Task(model=..., train_data=..., loss_fn=...) (from dtrain.recipe)")
    seed_everything(cfg.seed + ds.rank)
    return Trainer(cfg, ds, task)
