"""The common part of every strategy: a plain torch optimizer stepped with dtrain's clipping and guard."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from dtrain.config import RunConfig
from dtrain.dist import DistState, all_reduce_max, new_gloo_group
from dtrain.model_init import ModelSource
from dtrain.precision import Precision

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class StepOutcome:
    """What an optimizer step left on the device; the host reads it only when it syncs anyway (log steps)."""

    norm: torch.Tensor
    """Global gradient norm before clipping."""
    bad: torch.Tensor | None
    """1.0 when the gradients were not finite and the update was skipped (DeepSpeed outside fp16: applied
    anyway, only counted); None when nobody looked (guard off, no scaler)."""
    params: list | None = None
    """The parameters that had gradients, in the order of `param_bad`."""
    param_bad: torch.Tensor | None = None
    """Per parameter of `params`: its gradient (this rank's shard of it) was not finite."""


class Strategy:
    name = "base"
    lockstep_eval = False
    """True when every rank must run the same number of forward passes (parameters are gathered)."""

    def __init__(self, cfg: RunConfig, dist: DistState, precision: Precision):
        self.cfg, self.dist, self.precision = cfg, dist, precision
        self.model: nn.Module | None = None
        """The module evaluation, state dicts and the recipe's forward see (sharded for fsdp)."""
        self.train_model: nn.Module | None = None
        """What the training loop calls (the DDP / DeepSpeed wrapper, or the module itself)."""
        self.optimizer: torch.optim.Optimizer | None = None
        """The torch optimizer (the learning-rate schedule steps its param groups)."""
        self._ckpt_group = None
        self._stager = None

    # ------------------------------------------------------------------ set-up and the step
    def setup(self, source: ModelSource, make_optimizer: OptimizerFactory) -> None:
        """Build the model where this strategy wants it (see dtrain.model_init), wrap it, make the optimizer."""
        raise NotImplementedError

    def sync(self, last: bool) -> ContextManager:
        """Context for one micro-batch's forward+backward; gradients are synchronised only when `last`."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def global_norm(self, local_norms: torch.Tensor) -> torch.Tensor:
        """The norm of all gradients from the per-parameter norms this rank holds."""
        return torch.linalg.vector_norm(local_norms)

    def step(self, guard_enabled: bool) -> StepOutcome:
        """Unscale, clip to train.grad_clip, step: all on the device, with no host sync (see StepOutcome)."""
        self.precision.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        # Per-parameter norms once (as get_total_norm does): the global norm from them, and the guard's
        # report of which parameters went bad.
        per_param = torch.stack(torch._foreach_norm([p.grad for p in params], 2.0))
        norm = self.global_norm(per_param)
        local = per_param.to_local() if hasattr(per_param, "to_local") else per_param  # this rank's shards
        clip = self.cfg.train.grad_clip
        if clip:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm, foreach=True)
        # Every rank holds the same (reduced) norm, so every rank skips the same updates, with no collective.
        # Under fp16 the scaler's own flag (the same test, on the scaled gradients) decides.
        bad = (~torch.isfinite(norm)).float() if guard_enabled or self.precision.scaler else None
        self.precision.step(self.optimizer, skip=bad if guard_enabled else None)
        return StepOutcome(norm, bad, params=params, param_bad=~torch.isfinite(local))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def extra_eval_passes(self, local_batches: int) -> int:
        """Forward passes this rank must add so every rank runs as many as the busiest one."""
        if not self.lockstep_eval:
            return 0
        return int(all_reduce_max(local_batches, self.dist).item()) - local_batches

    # ------------------------------------------------------------------ checkpoints (dcp format)
    def checkpoint_group(self):
        """A gloo group of its own for checkpoint I/O: an async save's collectives run in a background
        thread, and must never interleave with the training loop's on the default group."""
        if self._ckpt_group is None:
            self._ckpt_group = new_gloo_group(self.cfg.dist.timeout_s)
        return self._ckpt_group

    def _dcp_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {"model": get_model_state_dict(self.model), "optim": get_optimizer_state_dict(self.model, self.optimizer)}

    def save_state(self, path: Path, async_save: bool) -> Future | None:
        """Every rank writes its part of model + optimizer under `path`; with async_save the write
        continues in the background once the state is staged in memory, and the future says when it ended."""
        import torch.distributed.checkpoint as dcp

        # Each rank stages and writes only its share of the replicated tensors (all of them under ddp):
        # DCP would write each once anyway, but an async save stages the whole state dict first, a full
        # replica per rank (issue 22). Every tensor is still whole in the checkpoint: it loads at any world size.
        state = own_share(self._dcp_state(), self.dist.rank, self.dist.world_size)
        group = self.checkpoint_group()
        if async_save:
            return dcp.async_save(state, checkpoint_id=str(path), process_group=group,
                                  async_stager=self._async_stager())
        dcp.save(state, checkpoint_id=str(path), process_group=group)
        return None

    def _async_stager(self):
        """On CUDA, one stager for the whole run: pinned host buffers, allocated and pinned at the first
        save and refilled at each later one (torchtitan's way), so staging is a DMA copy and no save
        allocates. Reusing them is safe: one write is in flight at a time (CheckpointManager.begin_save
        completes the previous one before staging the next). Staging itself stays synchronous, so
        async_save still returns a plain future and the next optimizer step cannot race the copy.

        None elsewhere: DCP's default, a fresh pageable copy per save. Pinning needs CUDA (torch ignores
        it on the CPU and refuses a non-blocking copy without an accelerator), and the CPU path is the
        one the tests run."""
        if self.dist.device.type != "cuda":
            return None
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            self._stager = DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=False,
                                                        use_async_staging=False, use_non_blocking_copy=True))
        return self._stager

    def load_state(self, path: Path) -> None:
        """Model + optimizer from a dcp checkpoint, resharded to this run's world size if it differs."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        from dtrain.dcp import load_into

        state = self._dcp_state()
        load_into(state, path, process_group=self.checkpoint_group())
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])

    def load_model(self, path: Path) -> None:
        """Only the weights (evaluating the best checkpoint at the end)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        from dtrain.dcp import load_into

        state = {"model": get_model_state_dict(self.model)}
        load_into(state, path, process_group=self.checkpoint_group())
        set_model_state_dict(self.model, state["model"])

    def close(self) -> None:
        """Release what setup created (called once the run ends, before the process group goes)."""
        if self._stager is not None:  # a stager passed to async_save is its caller's to close
            self._stager.close()
            self._stager = None


def own_share(state: dict, rank: int, world: int) -> dict:
    """`state` (nested dicts) without the plain tensors other ranks write: each plain tensor is replicated,
    the same on every rank (DDP's whole state; buffers and step counts under fsdp), and goes to one rank,
    largest first to the least loaded, so every rank stages and writes about 1/world of them. DTensors (a
    rank's own shards) and non-tensor values stay. Every rank computes the same assignment from the same
    names and sizes, with no collective."""
    from torch.distributed.tensor import DTensor

    plain: list[tuple[str, int]] = []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, torch.Tensor) and not isinstance(v, DTensor):
                plain.append((f"{prefix}{k}", v.numel() * v.element_size()))

    walk(state, "")
    if world <= 1 or not plain:
        return state
    load, owner = [0] * world, {}
    for key, nbytes in sorted(plain, key=lambda kv: (-kv[1], kv[0])):
        r = min(range(world), key=lambda i: (load[i], i))
        owner[key], load[r] = r, load[r] + nbytes

    def keep(d: dict, prefix: str) -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                sub = keep(v, key + ".")
                if sub or not v:
                    out[k] = sub
            elif owner.get(key, rank) == rank:
                out[k] = v
        return out

    return keep(state, "")
