"""Non-finite guard and hang watchdog, on real torchrun processes over gloo."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import assert_bitwise_equal, final_checkpoint, launch, load_pt, run
from tests.distributed.test_resume import CFG, COMMON

def _records(out, kind="train"):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in x]


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_that_update_on_every_rank(tmp_path):
    out = tmp_path / "run"
    proc = launch(2, CFG, *COMMON, f"output_dir={out}", "train.epochs=2", "fault_injection.nan_loss_at_steps=[5]",
                  "fault_injection.nan_rank=1")
    assert "step 5: non-finite loss on rank(s) [1], update skipped (1 in a row, 1 in all)" in proc.stdout
    assert _records(out)[-1]["nonfinite_skipped"] == 1
    state = load_pt(final_checkpoint(out) / "model.pt")
    assert all(t.isfinite().all() for t in state.values())  # the NaN never reached the weights
    assert load_pt(final_checkpoint(out) / "train_state.pt")["nonfinite"] == {"in_a_row": 0, "skipped": 1}


def test_skipped_updates_leave_the_weights_untouched(tmp_path):
    """Three steps with a NaN loss, all skipped: the weights are the initial ones, bit for bit."""
    from dtrain.checkpoint import seed_everything
    from dtrain.config import load_config
    from dtrain.dist import init_distributed
    from dtrain.model_init import ModelSource
    from dtrain.recipe import BuildContext, resolve_recipe

    args = [*COMMON, f"output_dir={tmp_path}/nan", "train.max_steps=3", "train.grad_accum_steps=1",
            "fault_injection.nan_loss_at_steps=[1,2,3]", "train.max_nonfinite_in_a_row=10"]
    proc = run(CFG, *args)
    assert "(3 in a row, 3 in all)" in proc.stdout
    cfg = load_config(CFG, args)
    seed_everything(cfg.seed)  # as dtrain.runner.train does before building the recipe
    initial = resolve_recipe(cfg.recipe).build(cfg.task, BuildContext(init_distributed("cpu", env={}), 0, tmp_path))
    model = ModelSource.of(initial.model, initial.model_skeleton, cfg.seed).full()
    assert_bitwise_equal(load_pt(final_checkpoint(tmp_path / "nan") / "model.pt"), model.state_dict())


@pytest.mark.slow
def test_too_many_in_a_row_stops_with_a_report_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [*COMMON, f"output_dir={out}", "train.epochs=2", "checkpoint.every_epoch=false", "checkpoint.best_metric=null", "fault_injection.nan_loss_at_steps=[4,5,6]",
            "train.max_nonfinite_in_a_row=3"]
    proc = launch(2, CFG, *args, check=False)
    assert proc.returncode == 1
    assert "stopped at step 6: 3 non-finite step(s) in a row" in proc.stderr
    report = json.loads((out / "nonfinite_report.json").read_text())
    assert report["step"] == 6 and report["ranks_with_nonfinite_loss"] == [0]
    assert report["parameters_with_nonfinite_grad"] == [
        "net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias", "net.6.weight", "net.6.bias"]
    assert final_checkpoint(out).name == "step_00000003"  # saved before the NaNs; nothing after them
    assert all(t.isfinite().all() for t in load_pt(final_checkpoint(out) / "model.pt").values())


def test_on_nonfinite_stop_stops_at_the_first(tmp_path):
    proc = run(CFG, *COMMON, f"output_dir={tmp_path}/run", "train.on_nonfinite=stop",
               "fault_injection.nan_loss_at_steps=[2]", check=False)
    assert proc.returncode == 1 and "stopped at step 2: 1 non-finite step(s) in a row" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_watchdog_names_the_rank_that_never_reached_the_collective(tmp_path):
    out = tmp_path / "run"
    timeout = 5.0
    t0 = time.monotonic()
    proc = launch(2, CFG, *COMMON, f"output_dir={out}", f"dist.watchdog_timeout_s={timeout}", "dist.timeout_s=120",
                  "fault_injection.hang_at_step=4", "fault_injection.hang_rank=1", check=False, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 124, proc.stderr
    report = json.loads((out / "hang_report.json").read_text())
    assert report["stuck_ranks"] == [1] and report["behind"] == [1] and report["silent"] == []
    assert "rank(s) [1] never reached" in report["summary"]
    by_rank = {r["rank"]: r for r in report["ranks"]}
    assert (by_rank[1]["step"], by_rank[1]["phase"]) == (4, "forward")  # asleep before its forward pass
    assert by_rank[0]["step"] == 4 and by_rank[0]["phase"] == "backward"  # waiting in DDP's all-reduce
    stack = (out / "hang" / "stack_rank1.txt").read_text()
    assert "phase forward" in stack and "in _train_step" in stack
    assert (out / "hang" / "stack_rank0.txt").is_file()
    assert "never reached" in proc.stderr and "Traceback" not in proc.stderr
    # start-up (~5 s) + 3 steps + the timeout + the poll, well short of the 120 s process-group timeout
    assert elapsed < timeout + 40, elapsed
