"""Run by test_eval_metrics under torchrun (or alone): evaluate an untrained model, write the metrics."""

import json
import sys
from pathlib import Path

from dtrain.config import load_config
from dtrain.dist import distributed
from dtrain.runner import build_trainer

out, *overrides = sys.argv[1:]
cfg = load_config("recipes/mlp/config.yaml", overrides)
with distributed("cpu") as ds:
    metrics = build_trainer(cfg, ds).evaluate()
    if ds.is_main:
        Path(out).write_text(json.dumps(metrics))
