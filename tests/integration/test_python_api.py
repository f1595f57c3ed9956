"""`dtrain.fit`: your own task from a script or notebook, validated like the YAML path, one process or
every rank of torchrun, the same run directory (issue 13)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import dtrain
from dtrain import ConfigError, Task
from tests.conftest import ROOT, assert_bitwise_equal, child_env, final_checkpoint, load_pt


def _task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x.sum(1) > 0).long()
    return Task(model=lambda: nn.Linear(4, 2), train_data=list(zip(x, y)), val_data=list(zip(x[:16], y[:16])),
                loss_fn=lambda out, batch: nn.functional.cross_entropy(out, batch[1]))


def test_fit_returns_the_trained_model_and_writes_the_run_directory(tmp_path):
    config = {"output_dir": str(tmp_path / "run"), "train": {"epochs": 2, "batch_size": 16}}
    result = dtrain.fit(_task(), config, overrides=["optim.lr=0.01"])
    assert result.run_dir == tmp_path / "run" and set(result.metrics) == {"val_loss"}
    saved = load_pt(final_checkpoint(result.run_dir) / "model.pt")
    assert_bitwise_equal(result.model.state_dict(), saved)  # the returned model is the one trained
    assert (result.run_dir / "config.yaml").read_text().count("lr: 0.01") == 1
    # the same again resumes the finished run: nothing trained, the same weights
    again = dtrain.fit(_task(), config, overrides=["optim.lr=0.01"])
    assert_bitwise_equal(again.model.state_dict(), saved)


def test_fit_validates_its_config_like_the_yaml_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        dtrain.fit(_task(), {"output_dir": str(tmp_path), "train": {"batch_sise": 8, "epochs": 0}})
    problems = "\n".join(info.value.problems)
    assert "train.batch_sise: unknown key; did you mean train.batch_size?" in problems
    assert "train.epochs" in problems
    with pytest.raises(ConfigError, match="task: settings for a recipe, but the task comes from your code"):
        dtrain.fit(_task(), {"output_dir": str(tmp_path), "task": {"hidden": 3}})


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_the_readme_example_runs_alone_and_under_torchrun(tmp_path, nproc):
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*prefix, "examples/own_model.py", f"output_dir={tmp_path}/run", "train.epochs=1"],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("char_accuracy 0.") == nproc  # every rank gets the result
    assert f"starting fresh: {nproc} rank(s)" in proc.stdout
    assert (final_checkpoint(tmp_path / "run") / "model.pt").is_file()
