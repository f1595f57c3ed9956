"""Early stopping: a pure policy over evaluation results, checkpointed with the trainer's state."""

from __future__ import annotations

import math


class EarlyStopping:
    """Stop when `metric` has not improved for `patience` evaluations in a row."""

    def __init__(self, metric: str | None, mode: str = "min", patience: int = 2, min_delta: float = 0.0):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0

    @property
    def enabled(self) -> bool:
        return self.metric is not None

    def update(self, metrics: dict[str, float]) -> bool:
        """Record one evaluation; True when training should stop now."""
        if not self.enabled:
            return False
        if self.metric not in metrics:
            raise KeyError(
                f"early_stopping.metric={self.metric!r} is not among the evaluation metrics {sorted(metrics)}"
            )
        value = metrics[self.metric]
        improved = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]
