"""The classification head's starting point: a linear probe on the pretrained encoder's frozen features.

Fine-tuning from a random head spends its first steps sending the encoder gradients from a head that
knows nothing, which bends the pretrained features before the head has learned to read them (Kumar et
al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution": linear
probe, then fine-tune). A sentence encoder's features alone already route most tickets (a probe on the
shipped MiniLM's reaches within about a point of full fine-tuning on HWU64's test split), so the head
starts as a multinomial logistic regression fitted on them; then everything is fine-tuned as before.

The probe runs where the whole model is built (inside the Task's model function: on every rank under
DDP and ZeRO 1/2, on rank 0 alone under FSDP and ZeRO-3, never in `dtrain plan`), once per process, and
needs no collective: each rank that builds the model fits the same deterministic regression on the same
features (every rank's are the same batches through the same weights). The features are computed on the
run's device, in batches sorted by length (little padding). A resumed run fits it again before its
checkpoint replaces it (seconds on a GPU, under a minute on CPU ranks for CLINC150).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

MAX_SAMPLES = 20_000
"""Tickets the probe reads at most (every k-th of a larger training set): enough for a linear head,
and a bounded pass over data that may be sharded and larger than memory."""


@dataclass(frozen=True)
class ProbeHead:
    weight: torch.Tensor
    bias: torch.Tensor
    samples: int
    train_accuracy: float
    seconds: float

    def apply_to(self, model: nn.Module) -> nn.Module:
        head = model.classifier
        with torch.no_grad():
            head.weight.copy_(self.weight)
            head.bias.copy_(self.bias)
        return model


def probe_rows(n: int, max_samples: int = MAX_SAMPLES) -> range:
    """Which training rows the probe reads: all of them, or every k-th of a larger set."""
    return range(0, n, max(1, math.ceil(n / max_samples)))


def frozen_features(encoder: nn.Module, items: Sequence[tuple[list[int], int]], collate: Callable,
                    device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """What `encoder.classifier` reads for each item, in eval mode (no dropout), as float32 on the CPU."""
    head = encoder.classifier
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    out = torch.zeros(len(items), head.in_features)
    seen = {}
    hook = head.register_forward_pre_hook(lambda _module, args: seen.__setitem__("x", args[0]))
    was_training = encoder.training
    encoder.eval().to(device)
    try:
        with torch.inference_mode():
            for rows in batches:
                batch = collate([items[i] for i in rows])
                encoder(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
                out[rows] = seen["x"].float().cpu()
    finally:
        hook.remove()
        encoder.train(was_training).to("cpu")  # where the Task's model function is expected to build it
    return out


def fit_head(features: torch.Tensor, labels: torch.Tensor, num_labels: int, label_smoothing: float,
             weight_decay: float = 1e-4, iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (the fine-tuning loss, plus an L2 penalty that keeps the head's
    logits moderate, so the encoder still gets gradients), full batch, L-BFGS from zeros: deterministic."""
    weight = torch.zeros(num_labels, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_labels, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels, label_smoothing=label_smoothing)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


class ProbedModel:
    """The Task's model function: the classifier `build` returns, its fresh head replaced by the probe's
    (fitted on the first call; a classifier whose head is not one linear layer keeps its random head)."""

    def __init__(self, build: Callable[[], nn.Module], train, collate: Callable, num_labels: int,
                 label_smoothing: float, device: torch.device, announce: bool = False):
        self.build, self.train, self.collate = build, train, collate
        self.num_labels, self.label_smoothing, self.device, self.announce = num_labels, label_smoothing, device, announce
        self.head: ProbeHead | None = None

    def __call__(self) -> nn.Module:
        model = self.build()
        if not isinstance(getattr(model, "classifier", None), nn.Linear):
            return model
        if self.head is None:
            self.head = probe_head(model, self.train, self.collate, self.num_labels, self.label_smoothing, self.device)
            if self.announce:
                print(f"[ticket_router] head: a linear probe on {self.head.samples} training tickets' frozen features, "
                      f"{100 * self.head.train_accuracy:.1f} % of them right ({self.head.seconds:.0f} s)", flush=True)
        return self.head.apply_to(model)


def probe_head(model: nn.Module, train, collate: Callable, num_labels: int, label_smoothing: float,
               device: torch.device) -> ProbeHead:
    """The head fitted on `model`'s frozen features of `train` (items (token ids, label))."""
    start = time.perf_counter()
    items = [train[i] for i in probe_rows(len(train))]
    features = frozen_features(model, items, collate, device)
    labels = torch.tensor([label for _, label in items])
    weight, bias = fit_head(features, labels, num_labels, label_smoothing)
    accuracy = (features @ weight.T + bias).argmax(1).eq(labels).float().mean().item()
    return ProbeHead(weight, bias, len(items), accuracy, time.perf_counter() - start)
