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
    assert proc.stdout.count("[sample] step") == 1  # the evaluation hook, on rank 0 only
    assert f"starting fresh: {nproc} rank(s)" in proc.stdout
    assert (final_checkpoint(tmp_path / "run") / "model.pt").is_file()


def _own_task(calls: list | None = None, sample_in_hook: bool = False):
    task = _task()
    task.model = lambda: nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 2))  # dropout: the RNG matters
    task.optimizer = lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)  # not fused: host-side skip
    task.scheduler = lambda opt, total: torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total // 3), gamma=0.5)
    if calls is not None:
        def after_eval(model, step, metrics):
            assert not model.training and not torch.is_grad_enabled()
            if sample_in_hook:
                torch.randn(100)  # a hook that samples (generation) must not change training
            calls.append(("eval", step, sorted(metrics)))

        task.hooks = dtrain.Hooks(after_eval=after_eval, after_log=lambda step, rec: calls.append(("log", step)),
                                  at_end=lambda model, step, metrics: calls.append(("end", step)))
    return task


def test_own_optimizer_scheduler_and_hooks_resume_bitwise(tmp_path):
    config = {"train": {"epochs": 3, "batch_size": 16, "log_every": 2, "eval_every": 4},
              "checkpoint": {"every_steps": 3}}
    plain = dtrain.fit(_own_task(), {**config, "output_dir": str(tmp_path / "plain")})
    calls: list = []
    hooked = dtrain.fit(_own_task(calls, sample_in_hook=True), {**config, "output_dir": str(tmp_path / "hooked")})
    assert_bitwise_equal(hooked.model.state_dict(), plain.model.state_dict())  # hooks changed nothing
    assert ("eval", 4, ["val_loss"]) in calls and ("log", 2) in calls and calls[-1] == ("end", 12)
    optim = load_pt(final_checkpoint(tmp_path / "plain") / "optim.pt")
    assert "momentum_buffer" in optim["state"][0]  # the user's SGD, checkpointed
    # a crash after step 5 and a resume: the user's optimizer and scheduler continue exactly
    with pytest.raises(Exception, match="crash after step 5"):
        dtrain.fit(_own_task(), {**config, "output_dir": str(tmp_path / "resumed")},
                   overrides=["fault_injection.crash_after_step=5"])
    resumed = dtrain.fit(_own_task(), {**config, "output_dir": str(tmp_path / "resumed")})
    assert_bitwise_equal(resumed.model.state_dict(), plain.model.state_dict())
    for part in ("optim.pt", "train_state.pt"):
        assert_bitwise_equal(load_pt(final_checkpoint(tmp_path / "resumed") / part),
                             load_pt(final_checkpoint(tmp_path / "plain") / part), part)


@pytest.mark.slow
def test_the_readme_recipe_module_example_runs_under_dtrain_launch(tmp_path):
    from tests.conftest import launch

    proc = launch(2, "examples/own_recipe.yaml", "train.epochs=1", f"output_dir={tmp_path}/run")
    assert "starting fresh: 2 rank(s)" in proc.stdout and proc.stdout.count("[sample] step") == 1
    assert (final_checkpoint(tmp_path / "run") / "model.pt").is_file()
