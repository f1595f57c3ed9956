"""Evaluation over uneven shards (101 samples on 2 ranks: 51 + 50) equals the single-process result:
every sample counted once, sums reduced across ranks - not a mean of per-rank means."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

ARGS = ["task.num_val=101", "task.hidden=32", "train.batch_size=16", "checkpoint.resume=none"]


def evaluate(tmp_path, nproc):
    out = tmp_path / f"metrics{nproc}.json"
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*prefix, "tests/distributed/eval_worker.py", str(out), f"output_dir={tmp_path}/r{nproc}", *ARGS],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_distributed_metrics_equal_single_process(tmp_path):
    one, two = evaluate(tmp_path, 1), evaluate(tmp_path, 2)
    assert set(one) == {"val_loss", "accuracy", "macro_recall"}
    assert one["accuracy"] == two["accuracy"]  # counts: exact
    assert one["macro_recall"] == pytest.approx(two["macro_recall"], abs=1e-12)
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-6)
    # 101 samples: an accuracy of k/101 - a mean of two per-rank means would not land on that grid
    assert round(one["accuracy"] * 101, 6).is_integer()
