"""MLP recipe: a small multi-layer perceptron on data generated from a fixed random teacher.

No files, no downloads, seconds per run: the workload for equivalence/resume proofs and for
overhead-bound benchmarks, where the library's own cost is what gets measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dtrain.data import sample_rng
from dtrain.recipe import BuildContext, Task


@dataclass(kw_only=True)
class Config:
    num_train: int = 512
    """Training samples generated from the fixed random teacher."""
    num_val: int = 128
    """Validation samples generated alike (0: no evaluation)."""
    in_dim: int = 16
    """Input features."""
    hidden: int = 64
    """Width of each hidden layer."""
    depth: int = 2
    """Hidden layers."""
    num_classes: int = 4
    """Classes the teacher assigns."""
    dropout: float = 0.0
    """Dropout probability after each hidden layer."""
    input_noise: float = 0.0
    """Std of Gaussian noise added to training inputs (drawn per sample from its own seed: sample_rng)."""
    data_seed: int = 1234
    """Seed of the generated data set (fixed, so runs with different `seed`s share the data)."""

    def check(self) -> list[str]:
        bad = [f"task.{k}: must be > 0, got {getattr(self, k)}"
               for k in ("num_train", "in_dim", "hidden", "depth", "num_classes") if getattr(self, k) <= 0]
        if self.num_val < 0:
            bad.append(f"task.num_val: must be >= 0, got {self.num_val}")
        if not 0.0 <= self.dropout < 1.0:
            bad.append(f"task.dropout: must be in [0, 1), got {self.dropout}")
        return bad


def make_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.data_seed)
    n = cfg.num_train + cfg.num_val
    x = torch.randn(n, cfg.in_dim, generator=g)
    teacher = torch.randn(cfg.in_dim, cfg.num_classes, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, cfg.num_classes, generator=g)).argmax(-1)
    return x, y


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        layers, width = [], cfg.in_dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        layers.append(nn.Linear(width, cfg.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Noisy(torch.utils.data.Dataset):
    """Training inputs with Gaussian noise drawn from each sample's own seed (dtrain's sample_rng: run seed,
    epoch, sample index), so a resume on another number of ranks or workers sees the same noisy stream."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, scale: float):
        self.x, self.y, self.scale = x, y, scale

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        rng = sample_rng()
        if rng is None:  # not a training fetch
            return self.x[i], self.y[i]
        return self.x[i] + self.scale * torch.randn(self.x[i].shape, generator=rng), self.y[i]


def build(cfg: Config, ctx: BuildContext) -> Task:
    x, y = make_data(cfg)
    train = (Noisy(x[: cfg.num_train], y[: cfg.num_train], cfg.input_noise) if cfg.input_noise
             else torch.utils.data.TensorDataset(x[: cfg.num_train], y[: cfg.num_train]))
    val = torch.utils.data.TensorDataset(x[cfg.num_train :], y[cfg.num_train :])

    return Task(
        model=lambda: MLP(cfg),  # built where the strategy wants it (whole on rank 0 only for fsdp)
        train_data=train,
        val_data=val if cfg.num_val else None,
        loss_fn=lambda logits, batch: F.cross_entropy(logits.float(), batch[1]),
        eval_stats=lambda logits, batch: {
            "correct": (logits.argmax(-1) == batch[1]).sum(),
            "count": len(batch[1]),  # a Python number: the trainer puts sums on the device
            "confusion": torch.bincount(batch[1] * cfg.num_classes + logits.argmax(-1),
                                        minlength=cfg.num_classes**2).view(cfg.num_classes, -1),
        },
        summarize=lambda s: {
            "accuracy": (s["correct"] / s["count"]).item(),
            "macro_recall": (s["confusion"].diag() / s["confusion"].sum(1).clamp(min=1)).mean().item(),
        },
        # strategy fsdp: each Linear layer is one unit (the GELU/Dropout between them hold no parameters)
        shard_units=lambda m: [layer for layer in m.net if isinstance(layer, nn.Linear)],
    )
