"""Non-finite guard: a NaN/Inf loss or gradient skips the update instead of poisoning the weights.

The test is the total gradient norm after the gradients are reduced, which every rank holds identically,
so every rank skips the same updates with no collective. The decision stays on the device: the fused
optimizer reads the skip flag there (see Precision.step), and this guard only *records* each step's
flag and local loss in small device buffers. The host reads them at the next step that syncs anyway (a
log line, an evaluation, a checkpoint, a stop; at the latest after `window` steps): a healthy step costs
no host sync. Then the warnings are printed, the counts updated, and a run that must stop stops, naming
the step where the limit was reached; its report says which ranks had a non-finite loss and which
parameters non-finite gradients. Under fp16 the GradScaler skips overflowing steps itself; those are its
normal business and count toward the limit only when some rank's loss was non-finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from dtrain.dist import DistState, gather_objects

MAX_WINDOW = 1024
"""Steps recorded on the device between two reads at most (a forced read comes after that many)."""


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row (or one, with on_nonfinite: stop)."""


class NonFiniteGuard:
    def __init__(self, mode: str, max_in_a_row: int, run_dir: Path, dist: DistState, window: int = MAX_WINDOW,
                 scaler: bool = False):
        self.mode, self.max_in_a_row, self.run_dir, self.dist = mode, max_in_a_row, Path(run_dir), dist
        self.scaler = scaler
        """fp16: a flagged step whose losses are all finite is the GradScaler's overflow, not counted."""
        self.in_a_row = 0
        self.skipped = 0
        """Updates skipped over the whole run (saved in checkpoints, logged)."""
        self.window = max(1, min(window, MAX_WINDOW))
        self._bad = torch.zeros(self.window, device=dist.device)
        self._loss = torch.zeros(self.window, dtype=torch.float64, device=dist.device)
        self._first: int | None = None  # first step recorded and not read yet
        self._params: list | None = None
        self._param_bad: torch.Tensor | None = None  # since the last read, per parameter of _params

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def record(self, step: int, bad: torch.Tensor | None, local_loss: torch.Tensor,
               params: list | None = None, param_bad: torch.Tensor | None = None) -> None:
        """After optimizer step `step`: keep its flag (1.0 = skipped), this rank's mean loss and which
        parameters had non-finite gradients. Device writes only."""
        if bad is None:
            return
        if self._first is None:
            self._first = step
        slot = step - self._first
        self._bad[slot] = bad
        self._loss[slot] = local_loss
        if param_bad is not None:
            if self._params is None or len(self._params) != len(params):  # another set of parameters
                self._params, self._param_bad = params, param_bad.clone()
            else:
                self._param_bad |= param_bad

    def due(self, step: int) -> bool:
        """The device buffers are full: read them now, sync or not."""
        return self._first is not None and step - self._first + 1 >= self.window

    def check(self, step: int, model: nn.Module, log) -> None:
        """Collective (every rank calls it at the same steps). Read what was recorded up to `step`, report
        each skipped update, and raise NonFiniteError, after writing nonfinite_report.json, when the run
        must stop. A host sync; call it only where the loop syncs anyway."""
        if self._first is None:
            return
        first, n = self._first, step - self._first + 1
        self._first = None
        flags = self._bad[:n].tolist()
        if not any(flags):  # the usual case: one read, no collective
            self.in_a_row = 0
            self._param_bad = None if self._param_bad is None else self._param_bad.zero_()
            return
        # Every rank has the same flags (the norm is global), so every rank joins this gather.
        losses = self._loss[:n].tolist()
        names = {id(p): name for name, p in model.named_parameters()}
        mine = ([names.get(id(p), "?") for p, b in zip(self._params, self._param_bad.tolist()) if b]
                if self._param_bad is not None else [])
        ranks = gather_objects({"rank": self.dist.rank, "losses": losses, "params": mine}, self.dist)
        if self._param_bad is not None:
            self._param_bad.zero_()
        params = [name for name, _ in model.named_parameters() if any(name in r["params"] for r in ranks)]
        for k, flag in enumerate(flags):
            if not flag:
                self.in_a_row = 0
                continue
            per_rank = [{"rank": r["rank"], "loss_finite": math.isfinite(r["losses"][k]),
                         "loss": r["losses"][k] if math.isfinite(r["losses"][k]) else str(r["losses"][k])}
                        for r in ranks]
            bad_ranks = [r["rank"] for r in per_rank if not r["loss_finite"]]
            if self.scaler and not bad_ranks:
                continue  # fp16 overflow with finite losses: the scaler lowers its scale and goes on
            self._bad_step(first + k, bad_ranks, per_rank, params, log)

    def _bad_step(self, step: int, bad_ranks: list[int], per_rank: list[dict], params: list[str], log) -> None:
        self.skipped += 1
        self.in_a_row += 1
        log(f"warning: step {step}: non-finite {'loss on rank(s) ' + str(bad_ranks) if bad_ranks else 'gradients'}"
            f", update skipped ({self.in_a_row} in a row, {self.skipped} in all); "
            f"parameters with non-finite gradients: {_short(params)}")
        if self.mode == "stop" or self.in_a_row >= self.max_in_a_row:
            report = {"step": step, "in_a_row": self.in_a_row, "skipped_total": self.skipped,
                      "ranks_with_nonfinite_loss": bad_ranks, "per_rank": per_rank,
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

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = state.get("in_a_row", 0), state.get("skipped", 0)


def _short(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "") if names else "none"
