"""A sharded data set through the whole Trainer: block-shuffled, resumed bitwise, and a resume on changed
shards refused naming the shard (issue 14, first part)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import dtrain
from dtrain import Task
from dtrain.shards import ShardedDataset
from tests.conftest import assert_bitwise_equal, final_checkpoint, load_pt


def _shards(d, n_files=3, rows=40):
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for k in range(n_files):
        x = torch.randn(rows, 4, generator=g)
        with open(d / f"part-{k:03d}.jsonl", "w") as f:
            for i in range(rows):
                f.write(json.dumps({"x": x[i].tolist(), "y": int(x[i].sum() > 0)}) + "\n")
    return d


def _task(d, cache):
    def collate(records):
        return torch.tensor([r["x"] for r in records]), torch.tensor([r["y"] for r in records])

    return Task(model=lambda: nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.Linear(16, 2)),
                train_data=ShardedDataset(d, cache_dir=cache), collate_fn=collate,
                loss_fn=lambda out, batch: nn.functional.cross_entropy(out, batch[1]))


def test_sharded_data_trains_resumes_bitwise_and_refuses_changed_shards(tmp_path):
    d = _shards(tmp_path / "shards")
    cache = tmp_path / "index"
    config = {"train": {"epochs": 2, "batch_size": 8}, "checkpoint": {"every_steps": 4}}
    straight = dtrain.fit(_task(d, cache), {**config, "output_dir": str(tmp_path / "straight")})
    with pytest.raises(Exception, match="crash after step 9"):  # mid-epoch 1 (15 steps per epoch)
        dtrain.fit(_task(d, cache), {**config, "output_dir": str(tmp_path / "resumed")},
                   overrides=["fault_injection.crash_after_step=9"])
    resumed = dtrain.fit(_task(d, cache), {**config, "output_dir": str(tmp_path / "resumed")})
    assert_bitwise_equal(resumed.model.state_dict(), straight.model.state_dict())
    for part in ("optim.pt", "train_state.pt"):
        assert_bitwise_equal(load_pt(final_checkpoint(tmp_path / "resumed") / part),
                             load_pt(final_checkpoint(tmp_path / "straight") / part), part)
    assert load_pt(final_checkpoint(tmp_path / "straight") / "train_state.pt")["config"]["data.train"]["shards"][0] \
        == ["part-000.jsonl", (d / "part-000.jsonl").stat().st_size, 40]

    # A shard rewritten between runs: the resume is refused, naming it.
    with open(d / "part-001.jsonl", "a") as f:
        f.write(json.dumps({"x": [0.0] * 4, "y": 0}) + "\n")
    with pytest.raises(Exception, match=r"other settings: data.train: part-001.jsonl: \d+ -> \d+ bytes, 40 -> 41 rows"):
        dtrain.fit(_task(d, cache), {**config, "output_dir": str(tmp_path / "resumed")},
                   overrides=[])
