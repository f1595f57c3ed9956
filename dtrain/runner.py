"""`train(cfg)`, the one function behind `dtrain run`, and `fit(task, config)`, the same for a script or
a notebook: join the group (under torchrun or srun), build the task, run the Trainer."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from dtrain.checkpoint import seed_everything
from dtrain.config import RunConfig, load_config, to_dict
from dtrain.determinism import configure_kernels
from dtrain.dist import DistState, distributed, read_env
from dtrain.lifeline import stop_with_launcher
from dtrain.recipe import BuildContext, RecipeError, Task, resolve_recipe
from dtrain.runlock import hold
from dtrain.trainer import Trainer

TaskSource = Callable[[BuildContext], Task]


@dataclass
class FitResult:
    model: nn.Module | None
    """The trained model, unwrapped from DDP/DeepSpeed (under fsdp: its sharded form); None from `train`."""
    metrics: dict[str, Any]
    """The last evaluation's metrics."""
    run_dir: Path


def train(cfg: RunConfig) -> dict[str, float]:
    """Train `cfg` with its recipe in this process (as the only rank, or one rank of torchrun / srun)."""
    return _run(cfg, None, keep_model=False).metrics


def fit(task: Task | TaskSource, config: str | Path | dict | RunConfig | None = None,
        overrides: Sequence[str] = ()) -> FitResult:
    """Train `task` (a Task, or a function BuildContext -> Task, called in the process group) with
    `config`: a YAML file, a dict of the same keys, or a RunConfig; `overrides` as on the command line
    (`["optim.lr=1e-3"]`). Without `recipe:` and `task:` keys: the task is this one. Validated like the
    YAML path (ConfigError lists every problem); writes the same run directory; under torchrun or srun
    every rank calls it and it joins their group."""
    if isinstance(config, RunConfig):  # its own recipe and task section give way to `task`
        raw = {k: v for k, v in to_dict(config).items() if k not in ("recipe", "task")}
        cfg = load_config(None, list(overrides), raw=raw, task_in_code=True)
    elif isinstance(config, dict) or config is None:
        cfg = load_config(None, list(overrides), raw=dict(config or {}), task_in_code=True)
    else:
        cfg = load_config(config, list(overrides), task_in_code=True)
    return _run(cfg, task, keep_model=True)


def _run(cfg: RunConfig, task: Task | TaskSource | None, keep_model: bool) -> FitResult:
    # First: joining the group may already touch the GPU, and cuBLAS reads its setting only once.
    configure_kernels(cfg.train.deterministic, cfg.train.tf32, cfg.train.cudnn_benchmark)
    env = read_env()
    if env.launcher == "torchrun":  # from the start: joining the group waits for peers a dead launcher never starts
        stop_with_launcher(env.rank)
    with distributed(cfg.dist.device, cfg.dist.timeout_s) as ds:
        # Rank 0 holds the run directory before anything is written into it (the recipe's build may
        # write already): a second job on the same output_dir stops here, the first one untouched.
        with hold(_own_dir(cfg)) if ds.is_main else contextlib.nullcontext():
            trainer = build_trainer(cfg, ds, task)
            metrics = trainer.fit()
            model = trainer.model if keep_model else None
            # The Trainer (DDP's reducer, the strategy's groups; the model too unless asked for) must go
            # while the process group still exists: freed after it, gloo's teardown can hang the process.
            del trainer
    return FitResult(model, metrics, Path(cfg.output_dir))


def _own_dir(cfg: RunConfig) -> str | Path:
    """The directory this process's job holds: a replica group of a fault-tolerant job holds its own."""
    if cfg.ft.enabled:
        from dtrain.ft import GROUP_ENV, group_run_dir

        return group_run_dir(cfg.output_dir, int(os.environ.get(GROUP_ENV, "0")))
    return cfg.output_dir


def build_trainer(cfg: RunConfig, ds: DistState, task: Task | TaskSource | None = None) -> Trainer:
    """The task (the recipe's, or `task`) and its Trainer, in a process group that already exists (several
    runs may share one: the test workers and benchmarks/gpu_check.py)."""
    # Same seed on every rank while the recipe builds its data (and a model it builds itself); the
    # Trainer builds a model given as a function under the same seed. Then one stream per rank for
    # augmentation and dropout.
    tc = cfg.train
    configure_kernels(tc.deterministic, tc.tf32, tc.cudnn_benchmark)  # again: this run's, not an earlier one's
    seed_everything(cfg.seed)
    ctx = BuildContext(dist=ds, seed=cfg.seed, output_dir=Path(cfg.output_dir))
    if task is None:
        built, source = resolve_recipe(cfg.recipe).build(cfg.task, ctx), f"recipe {cfg.recipe!r}: build()"
    else:
        built, source = (task, "fit()'s task") if isinstance(task, Task) else (task(ctx), "the task function")
    if not isinstance(built, Task):
        raise RecipeError(f"{source} returned {type(built).__name__}, not a Task; return "
                          "Task(model=..., train_data=..., loss_fn=...) (from dtrain.recipe)")
    seed_everything(cfg.seed + ds.rank)
    if cfg.ft.enabled:  # a replica group of a fault-tolerant job
        from dtrain.ft import FaultTolerantTrainer

        return FaultTolerantTrainer(cfg, ds, built)
    return Trainer(cfg, ds, built)
