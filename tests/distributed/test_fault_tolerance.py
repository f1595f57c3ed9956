"""Damaged checkpoints fall back with a warning; a checkpoint of another model is a clear error.

(Elastic restart after a SIGKILLed rank is exercised by hand but not yet here: a restarted gloo group
sometimes fails to connect on this 2-core machine - see issue 5.)
"""

from __future__ import annotations

import pytest

from tests.conftest import final_checkpoint, run
from tests.distributed.test_resume import CFG, COMMON, _compare


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    out = tmp_path / "run"
    args = [*COMMON, f"output_dir={out}", "checkpoint.keep_last=10"]
    # 8 steps per epoch, checkpoints every 3 steps: 3 and 6; then a crash after step 7
    assert run(CFG, *args, "fault_injection.crash_after_step=7", check=False).returncode == 1
    newest = final_checkpoint(out)
    assert newest.name == "step_00000006"
    model = newest / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # truncated: meta.json still lists it
    proc = run(CFG, *args)
    assert "warning" in proc.stdout and str(model) in proc.stdout and "falling back" in proc.stdout
    assert "step_00000003 at step 3" in proc.stdout
    run(CFG, *COMMON, f"output_dir={tmp_path}/straight")
    _compare(tmp_path / "straight", out)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    run(CFG, *COMMON, f"output_dir={out}", "train.max_steps=3")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    # The settings the checkpoint recorded say it first, before any weight is read...
    proc = run(CFG, *COMMON, f"output_dir={out}", "task.hidden=32", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was written with other settings: task.hidden 64 -> 32" in proc.stderr
    # ...and a resume told to go on anyway finds that the weights do not fit.
    proc = run(CFG, *COMMON, f"output_dir={out}", "task.hidden=32", "checkpoint.allow_changes=true", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model.pt does not fit this model" in proc.stderr and "size mismatch" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing damaged
