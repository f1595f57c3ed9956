"""Elastic restart: a rank SIGKILLed at any point of a 2-rank torchrun job, `--max-restarts 1` restarts
the group, `resume: auto` picks the newest complete checkpoint, and the final weights equal those of an
uninterrupted run bit for bit (CPU, fp32, dropout and input noise on, so every RNG stream matters).
"""

from __future__ import annotations

import pytest

from tests.conftest import dtrain, final_checkpoint, load_pt
from tests.distributed.test_resume import CFG, COMMON, _compare

# (fault_injection overrides, what the restarted group must resume from)
KILLS = {
    # before the first checkpoint exists: the restart starts over from step 0
    "rank1-before-first-checkpoint": (["fault_injection.kill_at_step=2", "fault_injection.kill_rank=1"], None),
    # mid-epoch, one step after a checkpoint: that step is lost and redone
    "rank0-mid-epoch": (["fault_injection.kill_at_step=5", "fault_injection.kill_rank=0"], 4),
    # rank 0 dies half-way through writing the step-6 checkpoint: it must not count
    "rank0-during-checkpoint-write": (["fault_injection.kill_during_save_at_step=6"], 4),
}


def _launch(out, *extra):
    return dtrain("launch", "--nproc-per-node=2", "--max-restarts=1", CFG, *COMMON, f"output_dir={out}", *extra,
                  check=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    proc = _launch(out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(KILLS))
def test_killed_rank_restarts_and_ends_bitwise_equal(tmp_path, straight, kill):
    faults, resumed_from = KILLS[kill]
    out = tmp_path / "killed"
    proc = _launch(out, *faults)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exitcode: -9" in proc.stderr  # a rank really was SIGKILLed and the group restarted
    if resumed_from is None:
        assert "resumed from" not in proc.stdout
    else:
        assert f"at step {resumed_from} " in proc.stdout, proc.stdout
    # no half-written checkpoint survives, and the run finished where the straight one did
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert load_pt(final_checkpoint(out) / "train_state.pt")["step"] == load_pt(
        final_checkpoint(straight) / "train_state.pt")["step"]
    _compare(straight, out)
