"""A rerun on a run directory resumes it only with the settings that wrote its checkpoints (issue 13)."""

from __future__ import annotations

import yaml

from tests.conftest import dtrain, final_checkpoint, run
from tests.integration.test_bad_input import one_line, snapshot

CFG = "recipes/mlp/config.yaml"


def test_changed_settings_are_refused_then_allowed_and_every_start_is_recorded(tmp_path):
    out = tmp_path / "run"
    base = [f"output_dir={out}", "train.max_steps=4", "train.log_every=2"]
    run(CFG, *base)
    before = snapshot(out)

    # A finished run rerun with a new learning rate: refused, naming the key, nothing written.
    proc = dtrain("run", CFG, *base, "optim.lr=0.01", check=False)
    one_line(proc, 2, "step_00000004 was written with other settings: optim.lr 0.003 -> 0.01",
             "checkpoint.allow_changes=true")
    assert snapshot(out) == before

    # Under `dtrain launch` too: one line before any process starts.
    proc = dtrain("launch", "--nproc-per-node=2", CFG, *base, "train.max_steps=6", check=False)
    assert proc.returncode == 2 and "train.max_steps 4 -> 6" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before

    # A free setting (the log interval) passes with a note.
    proc = run(CFG, *base, "train.log_every=1")
    assert "settings changed since the last start (results unaffected): train.log_every 2 -> 1" in proc.stdout

    # Allowed: the run goes on with the new settings, and both configs are kept.
    proc = run(CFG, *base, "train.max_steps=6", "checkpoint.allow_changes=true")
    assert "resuming with changed settings (checkpoint.allow_changes): train.max_steps 4 -> 6" in proc.stdout
    assert final_checkpoint(out).name == "step_00000006"
    starts = sorted((out / "configs").glob("start_*.yaml"))
    assert [p.name for p in starts] == ["start_001.yaml", "start_002.yaml", "start_003.yaml"]
    assert yaml.safe_load(starts[0].read_text())["train"]["max_steps"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6
