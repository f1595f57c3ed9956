"""Run by test_eval_metrics under torchrun (or alone): evaluate an untrained model, write the metrics."""

import json
import sys
from pathlib import Path

from dtrain.checkpoint import seed_everything
from dtrain.config import load_config
from dtrain.dist import distributed
from dtrain.recipe import BuildContext, resolve_recipe
from dtrain.trainer import Trainer

out, *overrides = sys.argv[1:]
cfg = load_config("recipes/mlp/config.yaml", overrides)
with distributed("cpu") as ds:
    seed_everything(cfg.seed)
    task = resolve_recipe(cfg.recipe).build(cfg.task, BuildContext(ds, cfg.seed, Path(cfg.output_dir)))
    metrics = Trainer(cfg, ds, task).evaluate()
    if ds.is_main:
        Path(out).write_text(json.dumps(metrics))
