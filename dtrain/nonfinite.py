"""Non-finite guard: a NaN/Inf loss or gradient skips the update instead of poisoning the weights.

The test is the total gradient norm after DDP's all-reduce, which every rank holds identically, so
every rank takes the same decision with no extra collective on a healthy step (one host sync for the
`.item()`, which `train.on_nonfinite: off` saves). Only on a bad step do the ranks exchange which of
them had a non-finite loss, for the report. Under fp16 the GradScaler skips overflowing steps itself;
those are its normal business and count toward the limit only when some rank's loss was non-finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from dtrain.dist import DistState, gather_objects


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row (or one, with on_nonfinite: stop)."""


class NonFiniteGuard:
    def __init__(self, mode: str, max_in_a_row: int, run_dir: Path, dist: DistState):
        self.mode, self.max_in_a_row, self.run_dir, self.dist = mode, max_in_a_row, Path(run_dir), dist
        self.in_a_row = 0
        self.skipped = 0
        """Updates skipped over the whole run (saved in checkpoints, logged)."""

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def bad_step(self, step: int, local_loss: torch.Tensor, model: nn.Module, scaler_overflow: bool, log) -> None:
        """Collective: call on every rank when the update was not applied (a global event).

        Counts it; raises NonFiniteError, after writing nonfinite_report.json, when the run must stop."""
        loss_ok = bool(torch.isfinite(local_loss).all())
        losses = gather_objects({"rank": self.dist.rank, "loss_finite": loss_ok,
                                 "loss": local_loss.item() if loss_ok else str(local_loss.item())}, self.dist)
        bad_ranks = [r["rank"] for r in losses if not r["loss_finite"]]
        if scaler_overflow and not bad_ranks:
            return  # fp16 overflow with finite losses: the scaler lowers its scale and goes on
        self.skipped += 1
        self.in_a_row += 1
        params = [name for name, p in model.named_parameters()
                  if p.grad is not None and not torch.isfinite(p.grad).all()]
        log(f"warning: step {step}: non-finite {'loss on rank(s) ' + str(bad_ranks) if bad_ranks else 'gradients'}"
            f", update skipped ({self.in_a_row} in a row, {self.skipped} in all); "
            f"parameters with non-finite gradients: {_short(params)}")
        if self.mode == "stop" or self.in_a_row >= self.max_in_a_row:
            report = {"step": step, "in_a_row": self.in_a_row, "skipped_total": self.skipped,
                      "ranks_with_nonfinite_loss": bad_ranks, "per_rank": losses,
                      "parameters_with_nonfinite_grad": params}
            path = self.run_dir / "nonfinite_report.json"
            if self.dist.is_main:
                path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
            raise NonFiniteError(
                f"stopped at step {step}: {self.in_a_row} non-finite step(s) in a row "
                f"(train.on_nonfinite={self.mode}, train.max_nonfinite_in_a_row={self.max_in_a_row}); "
                f"non-finite loss on rank(s) {bad_ranks or 'none'}, gradients of {len(params)} parameter(s); "
                f"report in {path}; the last good checkpoint is kept - lower optim.lr or check the data, "
                "then rerun with checkpoint.resume=auto"
            )

    def good_step(self) -> None:
        self.in_a_row = 0

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = state.get("in_a_row", 0), state.get("skipped", 0)


def _short(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "") if names else "none"


def is_finite(norm: torch.Tensor) -> bool:
    return math.isfinite(norm.item())
