"""DistributedDataParallel: a full replica per rank, gradients all-reduced in backward."""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import ContextManager

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dtrain.dist import has_group, mean_over_ranks_
from dtrain.model_init import ModelSource
from dtrain.strategies.base import OptimizerFactory, Strategy


class DDPStrategy(Strategy):
    name = "ddp"

    def setup(self, source: ModelSource, make_optimizer: OptimizerFactory) -> None:
        # A replica on every rank: each builds the same (seeded) weights; DDP checks they agree.
        model = source.full().to(self.dist.device)
        tc = self.cfg.train
        if tc.compile:
            model.compile(mode=None if tc.compile is True else tc.compile)
        self.model = model
        self.ddp = None
        if has_group():  # also at world size 1 under a launcher: the same collectives as at 8 ranks
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            sync = broadcast_buffers(model, self.cfg.ddp.broadcast_buffers)
            # torch >= 2.13 renamed the switch and warns on every rank at the old name. The new one also
            # sends the buffers once at construction: harmless, every rank built the same ones.
            key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
            self.ddp = DDP(model, device_ids=device_ids, gradient_as_bucket_view=True, **{key: sync})
            self.ddp.register_comm_hook(SteadyBucketLayout(self.ddp), steady_layout_hook)
        self.train_model = self.ddp or model
        self.optimizer = make_optimizer(model)

    def sync(self, last: bool) -> ContextManager:
        # DDP all-reduces gradients in backward; skip that on all but the last micro-batch of the
        # window (nanoGPT's trick) - the reduction of the summed gradients happens once.
        return contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()


def broadcast_buffers(model: nn.Module, setting: bool | str) -> bool:
    """ddp.broadcast_buffers, with auto = the model has batch norm (running statistics change as it trains)."""
    if setting != "auto":
        return bool(setting)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


class SteadyBucketLayout:
    """DDP comm hook that reduces the first step after construction in the bucket layout of every later step.

    Why: DDP reduces its first backward in one bucket of all parameters in definition order, then rebuilds
    its buckets in the order gradients became ready (last layer first). A collective sums each element in
    an order set by the element's position in its bucket (gloo's and NCCL's rings start each chunk at
    another rank), and with 3+ ranks that order changes the float result: (a+b)+c != a+(b+c). An unbroken
    run reduces step k in the rebuilt layout, a run resumed at step k in the first-step one, so resume was
    not bit for bit at 3+ ranks (2 ranks hide it: a+b == b+a). Here the first step records the ready order,
    computes the buckets DDP will rebuild from it (torch's own assignment function, torch's size limits),
    and reduces each of them as its own collective: every step of every run, fresh or resumed, sums each
    element in the same order. Later steps are torch's default hook (divide by world size, all-reduce).

    The first step costs one bucket-sized copy per bucket and loses overlap with backward once; the second
    step checks that DDP rebuilt what was predicted and says so on stderr if a torch version did not."""

    def __init__(self, ddp: DDP):
        self.ddp = ddp
        self.group = ddp.process_group
        self.params = [p for p in ddp.module.parameters() if p.requires_grad]
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self.ready: list[int] = []
        self.predicted: list[list[int]] | None = None
        self.checked = False
        self.hooks = [p.register_post_accumulate_grad_hook(self._record) for p in self.params]

    def _record(self, p: torch.Tensor) -> None:
        if self.ddp.require_backward_grad_sync:  # micro-batches under no_sync() are not reduced
            self.ready.append(self.index[id(p)])

    def reduce(self, bucket):
        if self.predicted is None:
            for h in self.hooks:
                h.remove()
            self.predicted = []  # the first call, whatever it finds
            params = bucket.parameters()
            if len(params) == len(self.params):  # the one all-parameter bucket of the first step
                return self._first_step(bucket, [self.index[id(p)] for p in params])
        elif not self.checked:
            self._check(bucket)
        return mean_over_ranks_(bucket.buffer(), self.group, async_op=True)

    def _first_step(self, bucket, layout: list[int]):
        order = list(dict.fromkeys(self.ready))
        # The hook may run before the last parameter's own post-accumulate hook: the one not seen is last.
        seen = set(order)
        order += [i for i in reversed(layout) if i not in seen]
        self.ready = []
        cfg = getattr(self.ddp, "_bucket_config", None)
        limits = [getattr(cfg, "first_bucket_bytes_cap", tdist._DEFAULT_FIRST_BUCKET_BYTES), self.ddp.bucket_bytes_cap]
        self.predicted, _ = tdist._compute_bucket_assignment_by_size(
            [self.params[i] for i in order], limits, [False] * len(order), order)
        buf, spans, at = bucket.buffer(), {}, 0
        for i in layout:  # the first step's bucket holds the gradients in definition order
            n = self.params[i].numel()
            spans[i] = (at, n)
            at += n
        for group in self.predicted:
            flat = torch.cat([buf.narrow(0, *spans[i]) for i in group])
            mean_over_ranks_(flat, self.group)
            at = 0
            for i in group:
                buf.narrow(0, *spans[i]).copy_(flat.narrow(0, at, spans[i][1]))
                at += spans[i][1]
        done = torch.futures.Future()
        done.set_result(buf)
        return done

    def _check(self, bucket) -> None:
        got = [self.index[id(p)] for p in bucket.parameters()]
        i = bucket.index()
        if self.predicted and (i >= len(self.predicted) or got != self.predicted[i]):
            self.checked = True  # said once
            print(f"dtrain: DDP rebuilt gradient bucket {bucket.index()} unlike the predicted layout; a resumed "
                  "run's first step may differ from an unbroken run's at float rounding", file=sys.stderr)
        if bucket.is_last():
            self.checked = True


def steady_layout_hook(state: SteadyBucketLayout, bucket):
    """The comm hook DDP calls per bucket: a named function with its state beside it, and no string return
    annotation (DDP checks it against torch.futures.Future[torch.Tensor], and this module's annotations are
    strings). Returns that future."""
    return state.reduce(bucket)
