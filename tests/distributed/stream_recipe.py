"""A recipe on JSONL shards whose every training sample carries a random draw from its own seed
(dtrain.data.sample_rng), recording the (sample id, draw) stream each rank trains on: the property test
of issue 14 compares these streams across stops and changes of world size and DataLoader workers.

Each training forward appends "id draw" lines to <output_dir>/stream/<task.tag>-rank<r>.txt, one line
per sample, in the order drawn; one forward is one optimizer step (no accumulation in the test)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dtrain.data import sample_rng
from dtrain.recipe import BuildContext, Task
from dtrain.shards import ShardedDataset, ShardedView
from recipes.mlp import Config as MlpConfig


@dataclass(kw_only=True)
class Config(MlpConfig):
    shards: str = ""
    tag: str = "run"


class Drawn(ShardedView):
    """Rows {"id", "x", "y"}; a training fetch adds noise and a 31-bit draw, both from the sample's seed."""

    def __getitem__(self, i: int):
        row = self.rows[i]
        x = torch.tensor(row["x"])
        rng = sample_rng()
        draw = int(torch.randint(0, 2**31 - 1, (1,), generator=rng)) if rng is not None else -1
        if rng is not None:
            x = x + 0.1 * torch.randn(x.shape, generator=rng)
        return x, torch.tensor(row["y"]), torch.tensor(row["id"]), torch.tensor(draw)


def build(cfg: Config, ctx: BuildContext) -> Task:
    out = ctx.output_dir / "stream"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{cfg.tag}-rank{ctx.dist.rank}.txt"

    def forward(model, batch):
        if model.training:
            with open(path, "a") as f:
                f.write("".join(f"{i} {d}\n" for i, d in zip(batch[2].tolist(), batch[3].tolist())))
        return model(batch[0])

    return Task(
        model=lambda: nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.num_classes)),
        train_data=Drawn(ShardedDataset(cfg.shards, cache_dir=ctx.output_dir / "index", dist=ctx.dist)),
        loss_fn=lambda logits, batch: F.cross_entropy(logits.float(), batch[1]),
        forward=forward,
    )
