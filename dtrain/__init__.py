"""dtrain: a small distributed training library. Public API:

    from dtrain import fit, Task, Hooks   # a script or notebook: your task, a config, a run directory
    from dtrain import load_config, train, Trainer, BuildContext, FitResult, Hooks

Names resolve lazily so that `dtrain --help` does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "dtrain.config",
    "RunConfig": "dtrain.config",
    "ConfigError": "dtrain.config",
    "train": "dtrain.runner",
    "fit": "dtrain.runner",
    "FitResult": "dtrain.runner",
    "Trainer": "dtrain.trainer",
    "Task": "dtrain.recipe",
    "BuildContext": "dtrain.recipe",
    "Hooks": "dtrain.recipe",
    "DistState": "dtrain.dist",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dtrain' has no attribute {name!r}")
