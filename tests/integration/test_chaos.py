"""The short chaos run: faults a real job meets, each struck at a fixed instant of a real 2-rank
`dtrain launch`, recovered as a user would, and compared bit for bit with an unbroken run
(benchmarks/chaos.py does the work; its 50-trial table is in benchmarks/results/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks import chaos  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("chaos")  # the unbroken reference runs are shared by the trials


def strike(work, n: int, kind: str, step: int, phase: str, *, rank: int = 0, async_save: bool = False,
           wandb: bool = False, world: int = 2) -> dict:
    plan = {"kind": kind, "phase": phase, "step": step, "at": f"{step}:{phase}", "rank": rank,
            "async": async_save, "wandb": wandb, "damage": "truncate", "world": world}
    result = chaos.run_trial(work, 10 + n, plan)  # trial_01N: the seeded run below writes trial_000, trial_001
    assert result["ran"], result
    if result.get("rc") == -999:  # hung: the log has every process's stacks
        print((work / f"trial_{10 + n:03d}" / "log.txt").read_text()[-20000:])
    return result


def test_ctrl_c_checkpoints_at_the_step_boundary_and_exits_130(work):
    r = strike(work, 0, "ctrl_c", 5, "backward", wandb=True)  # wandb: the rerun keeps its run id
    assert r["rc"] == 130 and r["recovered"], r
    assert "run the same command to continue" in (work / "trial_010" / "log.txt").read_text()


def test_second_ctrl_c_stops_at_once(work):
    r = strike(work, 1, "ctrl_c_twice", 6, "forward", rank=1)
    assert r["rc"] == 130 and r["recovered"], r
    assert "stopped at once on SIGINT" in (work / "trial_011" / "log.txt").read_text()


def test_sigterm_to_the_launcher_checkpoints_and_exits_75(work):
    r = strike(work, 2, "sigterm_launch", 9, "data", async_save=True)  # an epoch boundary, async saves
    assert r["rc"] == 75 and r["recovered"], r


def test_ranks_stop_when_their_launcher_is_killed(work):
    # kill -9 of the launcher's process group: the ranks (own sessions) must notice within seconds;
    # the harness counts a rank alive 5 s later as lost. Mid-way through the first save: the rerun
    # starts fresh, and metrics.jsonl must not repeat the steps the dead attempt logged.
    r = strike(work, 3, "kill9_job", 3, "checkpoint", wandb=True)
    assert r["rc"] == -9 and r["recovered"], r
    assert "its launcher (torchrun" in (work / "trial_013" / "log.txt").read_text()


def test_four_ranks_a_rank_killed_mid_async_save_restarts_and_resumes_bitwise(work):
    """4 ranks (the same global batch): torchrun restarts the group after rank 3 is SIGKILLed while an
    async checkpoint is being written; the restarted group resumes from the last complete one."""
    r = strike(work, 6, "kill9_rank_restart", 7, "forward", rank=3, async_save=True, world=4)
    assert r["rc"] == 0 and r["recovered"], r


def test_four_ranks_sigusr1_to_one_rank_stops_all_at_one_step(work):
    r = strike(work, 7, "sigusr1_rank", 10, "backward", rank=2, world=4)
    assert r["rc"] == 75 and r["recovered"], r


def test_a_second_job_on_the_run_directory_is_refused_and_harms_nothing(work):
    r = strike(work, 4, "second_command", 4, "eval")
    assert r["rc"] == 0 and r["recovered"], r


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting the small tmpfs needs root (CI runs as root)")
def test_disk_filling_up_mid_run_loses_nothing(work):
    r = strike(work, 5, "disk_full", 11, "backward")
    assert r["rc"] == 1 and r["recovery_rc"] == 0 and r["recovered"], r


def test_seeded_trials_from_the_command_line(work, tmp_path):
    out = tmp_path / "chaos.md"
    proc = subprocess.run([sys.executable, "benchmarks/chaos.py", "--trials", "2", "--seed", "3", "--kinds",
                           "kill9_rank_restart,sigusr1_rank", "--work", str(work), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = [json.loads(line) for line in (work / "trials.jsonl").read_text().splitlines()]
    assert [t["kind"] for t in trials] == ["kill9_rank_restart", "sigusr1_rank"]
    assert all(t["recovered"] and not t["lost"] for t in trials), trials
    assert "| **all** | 2 | 2 | 0 | 0 |" in out.read_text()
