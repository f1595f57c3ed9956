"""Ranks that see different listings of the run directory (an NFS client's cached view lags for
seconds) still resume from one checkpoint: rank 0 chooses and tells the others."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from dtrain.checkpoint import CheckpointManager
from dtrain.dist import DistState
from tests.conftest import ROOT, child_env


@pytest.mark.slow
def test_every_rank_resumes_from_rank_0s_choice(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    ckpt = CheckpointManager(root, DistState(0, 1, 0, 1, torch.device("cpu"), "single"))
    for step in (2, 4):
        ckpt.save(step, {"w": torch.zeros(1)}, {}, {"step": step})
    lagging = tmp_path / "lagging" / "checkpoints"  # what a node whose listing lags sees: no step 4 yet
    shutil.copytree(root, lagging)
    shutil.rmtree(lagging / "step_00000004")
    (lagging / "latest").write_text("step_00000002\n")
    views = [str(root), str(lagging), str(lagging)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                           "tests/distributed/listing_worker.py", json.dumps(views)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    every = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["own"][0] for r in every] == ["step_00000004", "step_00000002", "step_00000002"]  # the split
    assert all(r["agreed"] == every[0]["agreed"] for r in every)
    assert every[0]["agreed"][0] == str(root / "step_00000004")


@pytest.mark.slow
def test_ranks_index_the_shards_in_turns(tmp_path):
    """9 shards, 3 ranks, no index yet: each rank indexes 3 of them, and every rank reads all 9. The labels
    found without being listed (issue 26): each rank reads its 3 shards for them, every rank gets all."""
    data = tmp_path / "data"
    data.mkdir()
    for k in range(9):
        (data / f"part-{k}.jsonl").write_text("".join(json.dumps({"id": k * 10 + i, "label": f"c{k}"}) + "\n" for i in range(10)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                           "tests/distributed/index_worker.py", str(data), str(tmp_path / "index")],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    every = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [sorted(r["built"]) for r in every] == [[f"part-{k}.jsonl" for k in range(r, 9, 3)] for r in range(3)]
    assert all(r["rows"] == 90 and r["last"] == {"id": 89, "label": "c8"} for r in every)
    assert [sorted(r["read_labels"]) for r in every] == [[f"part-{k}.jsonl" for k in range(r, 9, 3)] for r in range(3)]
    assert all(r["labels"] == [f"c{k}" for k in range(9)] for r in every)
