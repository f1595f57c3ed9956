"""A sharded data set through the whole Trainer: block-shuffled, resumed bitwise, and a resume on changed
shards refused naming the shard (issue 14, first part)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import dtrain
from dtrain import Task
from dtrain.shards import ShardedDataset, content_digest
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
        == ["part-000.jsonl", (d / "part-000.jsonl").stat().st_size, 40, content_digest(d / "part-000.jsonl")]

    # A shard rewritten between runs: the resume is refused, naming it.
    with open(d / "part-001.jsonl", "a") as f:
        f.write(json.dumps({"x": [0.0] * 4, "y": 0}) + "\n")
    with pytest.raises(Exception, match=r"other settings: data.train: part-001.jsonl: \d+ -> \d+ bytes, 40 -> 41 rows"):
        dtrain.fit(_task(d, cache), {**config, "output_dir": str(tmp_path / "resumed")},
                   overrides=[])


def _image_tars(d, shards=2, per_shard=24, size=12):
    """Tar shards in webdataset's layout: key.png + key.cls, two classes (bright and dark squares)."""
    import io
    import tarfile

    from PIL import Image

    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for s in range(shards):
        with tarfile.open(d / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                label = (s + i) % 2
                pixels = (torch.rand(size, size, generator=g) * 100 + 150 * label).clamp(0, 255).byte()
                buf = io.BytesIO()
                Image.fromarray(pixels.numpy(), mode="L").save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"s{s}/{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return d


def test_vision_reads_tar_shards_in_workers_and_skips_a_bad_image_naming_it(tmp_path):
    from tests.conftest import run

    tars = _image_tars(tmp_path / "tars")
    val = _image_tars(tmp_path / "val", shards=1, per_shard=10)
    args = ["task.dataset=tar", f"task.root={tars}", f"task.val_root={val}", "task.image_size=12",
            "task.widths=[8,16]", "task.blocks_per_stage=1", "train.batch_size=8", "train.max_steps=6",
            "train.eval_every=3", "train.num_workers=2", f"output_dir={tmp_path / 'run'}"]
    proc = run("recipes/vision/config.yaml", *args)
    assert "[eval] step=6" in proc.stdout
    state = load_pt(final_checkpoint(tmp_path / "run") / "train_state.pt")
    assert [s[0] for s in state["config"]["data.train"]["shards"]] == ["shard-000.tar", "shard-001.tar"]

    import tarfile

    with tarfile.open(tmp_path / "bad.tar", "w") as tar:  # a sample whose PNG is not an image
        for ext, data in (("png", b"not a png"), ("cls", b"1")):
            info = tarfile.TarInfo(f"x/00000.{ext}")
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    (tmp_path / "bad.tar").rename(tars / "shard-002.tar")
    # Found only when decoded, mid-epoch: skipped with one warning naming it, the epoch goes on.
    bad = run("recipes/vision/config.yaml", *args, f"output_dir={tmp_path / 'bad'}", "train.max_steps=12",
              check=False)
    assert bad.returncode == 0 and "Traceback" not in bad.stderr
    assert f"unreadable image {tars / 'shard-002.tar'} sample 1" in bad.stderr
    assert "skipped, the next readable sample takes its place" in bad.stderr
