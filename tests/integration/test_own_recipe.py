"""A newcomer's own recipe, written outside the repository: found from the working directory by the
`dtrain` console script, `module:function` as promised, and the user's own bugs shown where they are
(issue 13, items 4 and 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import child_env

RECIPE = textwrap.dedent('''
    from dataclasses import dataclass

    import torch
    from torch import nn

    from dtrain.recipe import Task


    @dataclass(kw_only=True)
    class Config:
        n: int = 64
        label_key: str = "y"
        batch: str = "dict"
        stats: str = "sums"
        reduction: str = "mean"


    def build(cfg, ctx):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(cfg.n, 4, generator=g), torch.randint(0, 2, (cfg.n,), generator=g)
        if cfg.batch == "tuple":
            return Task(model=lambda: nn.Linear(4, 2), train_data=list(zip(x, y)),
                        loss_fn=lambda out, b: nn.functional.cross_entropy(out, b[1]))
        data = [{"x": x[i], "y": y[i]} for i in range(cfg.n)]

        def loss_fn(out, batch):
            return nn.functional.cross_entropy(out, batch[cfg.label_key], reduction=cfg.reduction)

        forward = (lambda m, b: m(b["x"])) if cfg.batch == "dict" else None

        def eval_stats(out, batch):
            right = (out.argmax(-1) == batch["y"]).sum()
            if cfg.stats == "mean":  # a per-batch mean: summed over the batches it is no accuracy
                return {"accuracy": right / len(batch["y"])}
            return {"correct": right, "count": len(batch["y"])}

        def summarize(sums):
            acc = sums["accuracy"] if cfg.stats == "mean" else sums["correct"] / sums["count"]
            return {"accuracy": acc if cfg.stats == "tensor" else acc.item()}

        metrics = {} if cfg.stats == "none" else {"eval_stats": eval_stats}
        if cfg.stats not in ("none", "nosummarize"):
            metrics["summarize"] = summarize
        return Task(model=lambda: nn.Linear(4, 2), train_data=data, val_data=data[:40], loss_fn=loss_fn,
                    **({"forward": forward} if forward else {}), **metrics)


    def as_tuples(cfg, ctx):
        cfg.batch = "tuple"
        return build(cfg, ctx)


    def a_model(cfg, ctx):
        return nn.Linear(4, 2)
''')


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "mytasks").mkdir()
    (tmp_path / "mytasks" / "__init__.py").write_text("")
    (tmp_path / "mytasks" / "lm.py").write_text(RECIPE)
    (tmp_path / "c.yaml").write_text(f"recipe: mytasks.lm\noutput_dir: {tmp_path}/run\ntrain: {{max_steps: 2, batch_size: 8}}\n")
    return tmp_path


def dtrain(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed `dtrain` console script, run from the user's project directory (not -m, which
    would put the working directory on sys.path by itself)."""
    script = Path(sys.executable).parent / "dtrain"
    assert script.is_file(), f"{script}: the package is installed with its console script (pip install -e .)"
    # child_env's PYTHONPATH names this checkout only (an editable install may point elsewhere): the
    # project directory is on no path but the one dtrain adds.
    return subprocess.run([str(script), *args], cwd=project, env=child_env(), capture_output=True, text=True,
                          timeout=300)


def test_a_recipe_in_the_working_directory_trains_and_function_form_works(project):
    proc = dtrain(project, "run", "c.yaml")
    assert proc.returncode == 0, proc.stderr
    assert (project / "run" / "checkpoints" / "step_00000002").is_dir()
    proc = dtrain(project, "run", "c.yaml", "recipe=mytasks.lm:as_tuples", f"output_dir={project}/run2")
    assert proc.returncode == 0, proc.stderr
    proc = dtrain(project, "launch", "--nproc-per-node=2", "c.yaml", f"output_dir={project}/run3")
    assert proc.returncode == 0 and "starting fresh: 2 rank(s)" in proc.stdout, proc.stderr


def test_a_missing_recipe_module_says_where_it_was_looked_for(project):
    proc = dtrain(project, "run", "c.yaml", "recipe=nosuch.lm")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"no module named 'nosuch' in the current directory ({project})" in proc.stderr


def test_a_bug_in_the_users_code_shows_its_own_frames(project):
    proc = dtrain(project, "run", "c.yaml", "task.label_key=label")
    assert proc.returncode == 1
    assert "error in your code" in proc.stderr and "mytasks/lm.py" in proc.stderr and "in loss_fn" in proc.stderr
    assert "KeyError: 'label'" in proc.stderr
    assert "dtrain/trainer.py" not in proc.stderr and "torch/" not in proc.stderr  # theirs only
    # --debug after the command is accepted and shows every frame
    proc = dtrain(project, "run", "--debug", "c.yaml", "task.label_key=label")
    assert proc.returncode == 1 and "dtrain/trainer.py" in proc.stderr and "KeyError: 'label'" in proc.stderr


def test_launch_debug_reaches_the_ranks(project):
    proc = dtrain(project, "launch", "--debug", "--nproc-per-node=2", "c.yaml", "task.label_key=label")
    assert proc.returncode == 1
    assert "[rank0]" in proc.stderr or proc.stderr.count("dtrain/trainer.py") >= 2  # full tracebacks from the ranks
    assert "dtrain/trainer.py" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("recipe=mytasks.lm:a_model", "build() returned Linear, not a Task; return Task(model=..., train_data=..., loss_fn=...)"),
    ("task.batch=plain", "the default forward calls model(batch[0]) for tuples and model(batch['input']) for dicts, "
                         "but the batch is a dict with keys ['x', 'y']; give Task(forward="),
])
def test_recipe_contract_mistakes_are_one_line(project, override, message):
    proc = dtrain(project, "run", "c.yaml", override)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[dtrain]")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0]


@pytest.mark.parametrize("overrides, code, message", [
    (["task.stats=tensor"], 1, "Task.summarize returned a tensor for 'accuracy': return a Python number (.item())"),
    (["checkpoint.best_metric=acc"], 2, "checkpoint.best_metric: 'acc' is not a metric of this recipe; its "
                                        "evaluation gives accuracy, val_loss"),
    (["early_stopping.metric=loss"], 2, "early_stopping.metric: 'loss' is not a metric"),
])
def test_evaluation_mistakes_stop_the_run_before_its_first_step(project, overrides, code, message):
    proc = dtrain(project, "run", "c.yaml", *overrides)
    assert proc.returncode == code and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (project / "run" / "checkpoints").exists()  # not one step


@pytest.mark.parametrize("stats, warning", [
    ("mean", "warning: accuracy = "),
    ("nosummarize", "warning: Task.eval_stats is given but Task.summarize is not"),
    ("sums task.reduction=sum", "warning: Task.loss_fn looks like a SUM over the batch (a batch doubled with "
                                "itself gives 2.00x its loss)"),
])
def test_numbers_that_are_surely_wrong_are_said(project, stats, warning):
    proc = dtrain(project, "run", "c.yaml", *f"task.stats={stats}".split())
    assert proc.returncode == 0 and warning in proc.stdout, proc.stdout + proc.stderr
    assert "looks like a SUM" not in proc.stdout or "reduction=sum" in stats  # no false alarm on a mean
