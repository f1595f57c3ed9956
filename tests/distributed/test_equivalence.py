"""2 ranks x B x accum 2  ==  1 rank x B x accum 4  ==  1 rank x 4B: same weights after 14 steps.

Real torchrun, real gloo. With 216 samples each rank's last window of an epoch holds micro-batches of
8 and 4 samples, so the per-sample weighting of a short, uneven window is proved too.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import final_checkpoint, launch, load_pt, run

COMMON = [
    "recipe=mlp", "task.num_train=216", "task.num_val=0", "task.dropout=0.0", "task.input_noise=0.0",
    "train.epochs=2", "train.grad_clip=1.0", "optim.lr=1e-2", "optim.warmup_steps=3", "optim.weight_decay=0.1",
    "checkpoint.every_epoch=false", "checkpoint.best_metric=null", "checkpoint.resume=none",
]


@pytest.mark.slow
def test_ranks_and_accumulation_give_the_same_weights(tmp_path):
    cfg = "recipes/mlp/config.yaml"
    launch(2, cfg, *COMMON, f"output_dir={tmp_path}/ddp", "train.batch_size=8", "train.grad_accum_steps=2")
    run(cfg, *COMMON, f"output_dir={tmp_path}/accum", "train.batch_size=8", "train.grad_accum_steps=4")
    run(cfg, *COMMON, f"output_dir={tmp_path}/big", "train.batch_size=32", "train.grad_accum_steps=1")
    run(cfg, *COMMON, f"output_dir={tmp_path}/init", "train.max_steps=1", "optim.lr=1e-12")

    states = {name: load_pt(final_checkpoint(tmp_path / name) / "model.pt") for name in ("ddp", "accum", "big", "init")}
    steps = {name: load_pt(final_checkpoint(tmp_path / name) / "train_state.pt")["step"] for name in ("ddp", "accum", "big")}
    assert steps == {"ddp": 14, "accum": 14, "big": 14}
    for key in states["big"]:
        torch.testing.assert_close(states["ddp"][key], states["big"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states["accum"][key], states["big"][key], rtol=1e-5, atol=1e-6)
    # The runs really trained: weights moved far beyond the tolerance above.
    moved = max((states["big"][k] - states["init"][k]).abs().max().item() for k in states["big"])
    assert moved > 1e-2
