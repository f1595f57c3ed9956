"""Checkpoint files: atomic layout, pruning, best kept, RNG round trip, and nothing unpickled."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from dtrain.checkpoint import (
    CheckpointError, CheckpointManager, capture_rng, export_model, load_file, restore_rng,
)
from dtrain.dist import init_distributed


@pytest.fixture
def manager(tmp_path):
    return CheckpointManager(tmp_path / "checkpoints", init_distributed("cpu", env={}), keep_last=2)


def save(manager, step, model=None):
    model = model or {"w": torch.full((2, 2), float(step))}
    return manager.save(step, model, {"state": {}, "param_groups": []}, {"step": step})


def test_layout_and_latest_pointer(manager):
    path = save(manager, 5)
    assert path.name == "step_00000005"
    meta = json.loads((path / "meta.json").read_text())
    assert meta["files"] == ["model.pt", "optim.pt", "rng_rank0.pt", "train_state.pt"]
    assert set(meta["sha256"]) == set(meta["files"])
    assert (manager.root / "latest").read_text().strip() == "step_00000005"
    loaded = manager.load(path)
    assert torch.equal(loaded.model["w"], torch.full((2, 2), 5.0)) and loaded.train_state == {"step": 5}


def test_keep_last_and_best_survive_pruning(manager):
    for step in (1, 2):
        save(manager, step)
    manager.mark_best(manager.root / "step_00000001", "accuracy", 0.9, 1)
    for step in (3, 4):
        save(manager, step)
    names = [p.name for p in manager.list_steps()]
    assert names == ["step_00000001", "step_00000003", "step_00000004"]
    assert manager.best()["checkpoint"] == "step_00000001"


def test_missing_part_is_named(manager):
    save(manager, 1)
    good = save(manager, 2)
    (good / "optim.pt").unlink()  # damaged: a listed file is missing
    with pytest.raises(CheckpointError, match=r"step_00000002/optim.pt is missing"):
        manager.load(good)


def test_unfinished_directory_is_not_a_checkpoint(manager):
    save(manager, 1)
    half = manager.root / "step_00000002"
    half.mkdir()
    (half / "model.pt").write_bytes(b"x")  # no meta.json: never finished
    assert manager.newest_complete().name == "step_00000001"
    with pytest.raises(CheckpointError, match="not a complete dtrain checkpoint"):
        manager.load(half)


def test_bit_flip_is_caught_by_the_checksum(manager):
    path = save(manager, 3, {"w": torch.zeros(4096)})
    model = path / "model.pt"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit inside the tensor data: torch.load alone accepts the file
    model.write_bytes(bytes(raw))
    assert torch.load(model, weights_only=True)["w"].count_nonzero() == 1
    with pytest.raises(CheckpointError, match=r"model.pt is corrupted: its sha256 does not match"):
        manager.load(path)


def test_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint(manager):
    save(manager, 1)
    with pytest.raises(CheckpointError, match=r"step_00000002 failed: No space left on device .*step_00000001 is intact"):
        manager.save(2, {"w": torch.zeros(10_000)}, {"state": {}, "param_groups": []}, {"step": 2}, disk_full=True)
    assert (manager.root / "latest").read_text().strip() == "step_00000001"
    assert [p.name for p in manager.root.iterdir() if p.name.startswith(("step_", ".tmp"))] == ["step_00000001"]
    assert manager.load(manager.root / "step_00000001").train_state == {"step": 1}


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "model.pt"
    torch.save({"w": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_file(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=str(path)):
        load_file(path)


def test_rng_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(load_file(tmp_path / "rng.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_export_to_safetensors(manager, tmp_path):
    from safetensors.torch import load_file as load_st

    lin = torch.nn.Linear(3, 2)
    save(manager, 7, lin.state_dict())
    out = tmp_path / "model.safetensors"
    assert export_model(manager.root, out) == 2  # the checkpoints dir: newest is used
    got = load_st(out)
    assert torch.equal(got["weight"], lin.weight.detach()) and torch.equal(got["bias"], lin.bias.detach())


# ------------------------------------------------------------------ what a load holds (issue 22)
RESUME = r"""
import json, sys
from pathlib import Path
import torch
from dtrain.checkpoint import CheckpointManager
from dtrain.dist import init_distributed
from tests.memtrack import Peak

model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
optimizer = torch.optim.AdamW(model.parameters())  # no state yet, as at a resume
manager = CheckpointManager(Path(sys.argv[1]), init_distributed("cpu", env={}))
with Peak() as peak:  # what Trainer._start does with a torch-format checkpoint
    loaded = manager.load(manager.newest_complete())
    model.load_state_dict(loaded.model)
    optimizer.load_state_dict(loaded.optim)
    del loaded
print(json.dumps({"peak": peak.bytes, "step": [s["step"].item() for s in optimizer.state.values()][:1]}))
"""


def test_a_resume_holds_each_checkpoint_file_once(manager, tmp_path):
    """model.pt and optim.pt are mapped, not read whole and then unpickled beside their bytes: the peak of
    a resume stays under the files' size (it was 2x: bytes + tensors, on every rank)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, child_env
    from tests.memtrack import MALLOC_ENV

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])  # 34 MB, AdamW state 67 MB
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    optimizer.step()
    path = manager.save(1, model.state_dict(), optimizer.state_dict(), {"step": 1})
    del model, optimizer
    files = (path / "model.pt").stat().st_size + (path / "optim.pt").stat().st_size
    proc = subprocess.run([sys.executable, "-c", RESUME, str(manager.root)], cwd=ROOT, env=child_env(**MALLOC_ENV),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    print(f"resume peak: {result['peak'] / files:.2f}x the size of model.pt + optim.pt")
    assert result["step"] == [1.0]  # the optimizer state really was loaded
    assert result["peak"] < 1.1 * files, f"the resume held {result['peak'] / files:.2f}x the checkpoint's bytes"


def test_a_model_only_load_neither_reads_nor_checks_the_optimizer_state(manager):
    path = save(manager, 4, {"w": torch.ones(3)})
    (path / "optim.pt").write_bytes(b"damaged")  # would fail its checksum if it were read
    loaded = manager.load(path, model_only=True)
    assert loaded.optim is None and torch.equal(loaded.model["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="optim.pt is corrupted"):
        manager.load(path)


def test_evaluating_the_best_checkpoint_reads_no_optimizer_state(tmp_path, monkeypatch):
    """Trainer.test() loads the best checkpoint's weights only (it never uses the optimizer state)."""
    import dtrain
    import dtrain.checkpoint
    from dtrain import Task

    read = []
    real = dtrain.checkpoint.load_file
    monkeypatch.setattr(dtrain.checkpoint, "load_file", lambda p, *a, **k: read.append(p.name) or real(p, *a, **k))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    data = list(zip(x, (x.sum(1) > 0).long()))
    task = Task(model=lambda: torch.nn.Linear(4, 2), train_data=data[:32], val_data=data[32:40],
                test_data=data[40:], loss_fn=lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1]))
    config = {"output_dir": str(tmp_path / "run"), "train": {"epochs": 2, "batch_size": 16},
              "checkpoint": {"best_metric": "val_loss", "best_mode": "min"}}
    dtrain.fit(task, config)
    assert (tmp_path / "run" / "test_report.json").is_file()  # test() ran, from the best checkpoint
    assert "model.pt" in read and "optim.pt" not in read, read
