"""Sharded (DCP) checkpoints: same completion rule as the torch format, async writes completed only once
they end, consolidation to safetensors, and a DCP index that tries to run code is refused unexecuted."""

from __future__ import annotations

import json
import os
import pickle
import time
from concurrent.futures import Future

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file as load_safetensors

from dtrain.checkpoint import CheckpointError, CheckpointManager, export_model
from dtrain.dcp import UnsafeCheckpointError, read_full_model
from dtrain.dist import init_distributed

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
MODEL = {"layer.weight": torch.arange(12.0).view(3, 4), "layer.bias": torch.ones(3)}


@pytest.fixture
def manager(tmp_path):
    return CheckpointManager(tmp_path / "checkpoints", init_distributed("cpu", env={}), keep_last=2)


def write_dcp(path, model=MODEL):
    dcp.save({"model": model, "optim": {"state": {"layer.weight": {"exp_avg": torch.zeros(3, 4)}}}},
             checkpoint_id=str(path), no_dist=True)


def test_sync_save_is_complete_and_exports_whole_weights(manager, tmp_path):
    path = manager.begin_save(3, {"step": 3}, lambda d: write_dcp(d), "dcp")
    assert (manager.root / "latest").read_text().strip() == path.name == "step_00000003"
    meta = json.loads((path / "meta.json").read_text())
    assert meta["kind"] == "dcp" and "state/.metadata" in meta["files"] and "train_state.pt" in meta["files"]
    loaded = manager.load(path)
    assert loaded.model is None and loaded.train_state == {"step": 3} and loaded.rng is not None
    assert export_model(manager.root, tmp_path / "m.safetensors") == 2
    out = load_safetensors(str(tmp_path / "m.safetensors"))
    assert all(torch.equal(out[k], MODEL[k]) for k in MODEL)


def test_async_save_is_complete_only_once_its_write_has_ended(manager):
    manager.begin_save(2, {"step": 2}, lambda d: write_dcp(d), "dcp")
    future: Future = Future()

    def write_later(d):
        write_dcp(d)
        return future  # the write "is still running" until the test resolves it

    manager.begin_save(4, {"step": 4}, write_later, "dcp")
    assert manager.pending and (manager.root / ".tmp-step_00000004").is_dir()
    manager.poll()  # not done: nothing changes
    assert (manager.root / "latest").read_text().strip() == "step_00000002"
    assert not (manager.root / "step_00000004").exists()
    future.set_result(None)
    deadline = time.monotonic() + 10
    while manager.pending and time.monotonic() < deadline:  # the files are hashed in the background next
        manager.poll()
        time.sleep(0.01)
    assert not manager.pending and (manager.root / "latest").read_text().strip() == "step_00000004"


def test_failed_async_write_marks_nothing_complete(manager):
    manager.begin_save(2, {"step": 2}, lambda d: write_dcp(d), "dcp")
    future: Future = Future()
    manager.begin_save(4, {"step": 4}, lambda d: future, "dcp")
    future.set_exception(OSError(28, "No space left on device", "shard"))
    with pytest.raises(CheckpointError, match="No space left on device.*step_00000002 is intact"):
        manager.finish()
    assert not (manager.root / ".tmp-step_00000004").exists() and not (manager.root / "step_00000004").exists()
    assert (manager.root / "latest").read_text().strip() == "step_00000002"


def test_malicious_dcp_metadata_is_refused_unexecuted(manager, tmp_path):
    path = manager.begin_save(1, {"step": 1}, lambda d: write_dcp(d), "dcp")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (path / "state" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        read_full_model(path / "state")
    with pytest.raises(CheckpointError, match="sha256 does not match"):  # dtrain's own path checks bytes first
        export_model(path, tmp_path / "m.safetensors")
    assert not (tmp_path / "pwned").exists()
