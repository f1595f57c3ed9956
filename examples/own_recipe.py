"""The same model as examples/own_model.py, as a recipe module: a YAML file names it, and `dtrain run`,
`dtrain launch` and `dtrain slurm submit` run it like a shipped recipe.

    dtrain run examples/own_recipe.yaml
    dtrain launch --nproc-per-node 2 examples/own_recipe.yaml train.epochs=1
"""

from __future__ import annotations

from dataclasses import dataclass

from dtrain import BuildContext, Task
from examples.own_model import make_task


@dataclass(kw_only=True)
class Config:  # the YAML's `task:` section, typed and checked like the rest
    samples: bool = True
    """Print a generated sample after each evaluation."""


def build(cfg: Config, ctx: BuildContext) -> Task:
    task = make_task(ctx)
    if not cfg.samples:
        task.hooks.after_eval = None
    return task
