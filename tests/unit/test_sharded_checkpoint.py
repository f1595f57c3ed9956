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
    manager.poll(manager.written)  # not done: nothing changes (alone, this rank's answer is the agreement)
    assert (manager.root / "latest").read_text().strip() == "step_00000002"
    assert not (manager.root / "step_00000004").exists()
    future.set_result(None)
    deadline = time.monotonic() + 10
    while manager.pending and time.monotonic() < deadline:  # the files are hashed in the background next
        manager.poll(manager.written)
        time.sleep(0.01)
    assert not manager.pending and (manager.root / "latest").read_text().strip() == "step_00000004"


def test_a_pending_async_save_adds_no_collective_to_the_steps(manager, tmp_path, monkeypatch):
    """In a process group (one rank here: the same calls as at 64), the ranks learn that a background
    write has ended at the stop-request meeting they hold anyway: over 300 steps with a save in flight
    the checkpoint code adds no collective until it completes the save, soon after its write ended."""
    import torch.distributed as tdist

    from dtrain.dist import destroy_distributed, ensure_process_group
    from dtrain.preemption import StopRequest

    ensure_process_group(manager.dist)
    calls: list[str] = []
    for name in ("all_reduce", "all_gather_object"):
        real = getattr(tdist, name)
        monkeypatch.setattr(tdist, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    stop = StopRequest(tmp_path, manager.dist, check_every_s=0.05)
    future: Future = Future()
    try:

        def write_later(d):
            write_dcp(d)
            return future

        manager.begin_save(4, {"step": 4}, write_later, "dcp")
        calls.clear()
        completed_at = None
        for step in range(1, 301):
            time.sleep(0.002)  # the step's work
            if step == 100:
                future.set_result(None)  # the write ends
            stop.agreed(torch.device("cpu"), step, checkpoint_written=manager.written)
            manager.poll(stop.all_written)
            if completed_at is None and not manager.pending:
                completed_at, calls_then, meetings_then = step, len(calls), stop.meetings
        assert completed_at is not None and 100 <= completed_at < 300
        assert (manager.root / "latest").read_text().strip() == "step_00000004"
        # every collective was a meeting's, except the three that completed the save (once, not per step)
        assert stop.meetings < 300 / 5 and calls_then - meetings_then == 3
        assert len(calls) - calls_then == stop.meetings - meetings_then
    finally:
        if not future.done():  # a failed assertion must not leave the hashing thread waiting forever
            future.set_result(None)
        manager.abandon()
        stop.done()
        destroy_distributed()


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


def test_async_staging_is_pinned_and_reused_on_cuda_and_dcps_own_on_the_cpu(monkeypatch, tmp_path):
    """Which stager async_save gets (the staging itself needs a GPU: unverified here)."""
    import torch.distributed.checkpoint.staging as staging

    from dtrain.dist import DistState
    from dtrain.strategies.base import Strategy

    made: list = []
    passed: list = []

    class FakeStager:
        def __init__(self, options):
            made.append(options)

        def close(self):
            made.append("closed")

    monkeypatch.setattr(staging, "DefaultStager", FakeStager)
    monkeypatch.setattr(dcp, "async_save", lambda state, **kw: passed.append(kw["async_stager"]))
    for device in ("cpu", "cuda"):
        strategy = Strategy(None, DistState(0, 1, 0, 1, torch.device(device), "single"), None)
        monkeypatch.setattr(strategy, "_dcp_state", lambda: {})
        monkeypatch.setattr(strategy, "checkpoint_group", lambda: None)
        for _ in range(3):
            strategy.save_state(tmp_path, async_save=True)
        strategy.close()
    assert passed[:3] == [None] * 3  # the CPU: DCP's default staging, as before
    assert isinstance(passed[3], FakeStager) and passed[3] is passed[4] is passed[5]  # CUDA: one, reused
    options = made[0]
    assert options.use_pinned_memory and not options.use_shared_memory and not options.use_async_staging
    assert made[1:] == ["closed"]
