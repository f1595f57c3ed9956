"""The mlp recipe, recording which training samples each rank draws (for the world-size-change proof).

Each training forward appends the batch's sample indices to <output_dir>/samples/w{world}-rank{r}.txt, in
the order drawn, so a run broken on 2 ranks and resumed on 1 leaves its two parts in separate files."""

from __future__ import annotations

import torch

from recipes.mlp import Config, build as build_mlp  # noqa: F401 - Config is part of the recipe contract
from dtrain.recipe import BuildContext, Task


class Indexed(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x, y, i


def build(cfg: Config, ctx: BuildContext) -> Task:
    task = build_mlp(cfg, ctx)
    task.train_data = Indexed(task.train_data)
    out = ctx.output_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"w{ctx.dist.world_size}-rank{ctx.dist.rank}.txt"

    def forward(model, batch):
        if model.training and len(batch) == 3:
            with open(path, "a") as f:
                f.write("".join(f"{i}\n" for i in batch[2].tolist()))
        return model(batch[0])

    task.forward = forward
    # Tokens that differ by rank, as text lengths do: rank r counts r + 1 per sample, so the job's
    # tokens/s is (world + 1) / 2 x its samples/s (rank 0's count x world would say 1x).
    task.count_tokens = lambda batch: len(batch[0]) * (ctx.dist.rank + 1)
    return task
