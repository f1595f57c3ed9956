"""Issue 25: fault tolerance without restart (torchft replica groups, `dtrain launch --replica-groups`).

Real processes: the launcher's Lighthouse, one `dtrain run` per group, gloo between groups, SIGKILL and
SIGSTOP from outside or from fault injection. Each group records every step it computed
(ft.record_steps: quorum size, its place, the sample indices it trained on, a digest of the weights after
the step, whether the step committed), and the proofs read those records:

* a fixed membership of 2 groups is bitwise the 2-rank ddp run (same samples per step, same sums);
* a group SIGKILLed while the others are inside the gradient reduction costs them one discarded step and
  a stall of about the heartbeat timeout; restarted, it heals from a live peer and then holds the same
  weights as the survivors, bit for bit, at every later step; every sample of every epoch was trained
  exactly once across the groups, whatever the quorum was at each step;
* a hung group (SIGSTOP) is left behind after the collective timeout; the job finishes without it;
* every group lost: a rerun resumes from the newest checkpoint on disk and ends bitwise where the unbroken
  run ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dtrain.ft import audit, read_records
from tests.conftest import ROOT, assert_bitwise_equal, child_env, launch, load_pt, final_checkpoint

pytest.importorskip("torchft", reason="dtrain[ft] is part of the dev install")

CFG = "recipes/mlp/config.yaml"
N_TRAIN, BATCH = 512, 16
BASE = ["train.epochs=2", "train.log_every=100", "train.sanity_eval_batches=0", "checkpoint.every_steps=10",
        "checkpoint.resume=auto", "checkpoint.keep_last=10"]
FT = ["ft.record_steps=true", "ft.heartbeat_timeout_ms=1000", "ft.timeout_s=3", "ft.finish_grace_s=3"]


def ft_launch(groups: int, out: Path, *overrides: str, check: bool = True, until=None) -> subprocess.CompletedProcess:
    """`dtrain launch --replica-groups`; `until(out, proc)` runs in a thread beside it (to strike)."""
    args = [sys.executable, "-m", "dtrain.cli", "launch", f"--replica-groups={groups}", CFG, *BASE, *FT,
            f"output_dir={out}", *overrides]
    proc = subprocess.Popen(args, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    striker = threading.Thread(target=until, args=(out, proc), daemon=True) if until else None
    if striker:
        striker.start()
    stdout, stderr = proc.communicate(timeout=300)
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check:
        assert done.returncode == 0, f"exit {done.returncode}\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return done


def records(out: Path, group: int) -> list[dict]:
    return read_records(out, group)


def committed(out: Path, groups: int) -> dict[int, dict[int, dict]]:
    """group -> step -> its committed record (the last one of that step: a restarted group may redo one)."""
    return {g: {r["step"]: r for r in records(out, g) if r["committed"]} for g in range(groups)}


def assert_every_sample_once(out: Path, groups: int, epochs: int) -> None:
    """dtrain.ft.audit: each epoch's samples once across the groups, and equal weights after every step."""
    problems = audit(out, groups, N_TRAIN, epochs)
    assert not problems, problems


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    launch(2, CFG, *BASE, f"output_dir={out}")
    return out


@pytest.mark.slow
def test_a_group_killed_inside_the_reduction_costs_one_step_and_heals_bitwise(tmp_path):
    out = tmp_path / "ft"
    kill_at = 5
    proc = ft_launch(3, out, "train.epochs=4", "fault_injection.step_sleep_s=0.3",
                     f"fault_injection.kill_in_reduce_at_step={kill_at}", "fault_injection.kill_rank=1")
    assert "replica group 1 killed by signal 9; restart 1 of 3" in proc.stderr
    for g in (0, 2):  # the survivors
        mine = records(out, g)
        lost = [r for r in mine if not r["committed"]]
        assert [r["step"] for r in lost] == [kill_at], f"group {g} discarded {[r['step'] for r in lost]}"
        # The stall: the discarded step waited for the dead group's part (it dies 0.3 s into the reduction,
        # the gloo connection closes at once), then the next quorum waited out the heartbeat timeout.
        stall = sum(r["seconds"] for r in mine if r["step"] == kill_at)
        assert stall < 1.0 + 1.0 + 0.3 + 0.5, f"group {g} stalled {stall:.2f} s"
        print(f"group {g}: discarded step {kill_at}, stalled {stall:.2f} s (heartbeat timeout 1.0 s)")
    steps = committed(out, 3)
    after = sorted(s for s in steps[1] if s > kill_at)
    assert after, "the restarted group never rejoined before the end"
    healed_at = after[0]
    for s in after:  # bitwise the survivors' weights at every step after it healed
        assert steps[1][s]["digest"] == steps[0][s]["digest"] == steps[2][s]["digest"], f"step {s}"
    sizes = Counter(r["members"] for r in steps[0].values())
    assert sizes[2] >= 1 and sizes[3] >= 1, sizes  # it ran without group 1, then with it again
    print(f"group 1 healed at step {healed_at}; quorum sizes {dict(sizes)}")
    assert_every_sample_once(out, 3, epochs=4)


@pytest.mark.slow
def test_a_hung_group_is_left_behind_and_the_job_finishes(tmp_path):
    out = tmp_path / "ft"
    stopped = {}

    def hang(out: Path, proc) -> None:
        while len(records(out, 1)) < 6 and proc.poll() is None:
            time.sleep(0.05)
        pid = int((out / "replica_1" / "pid").read_text())
        stopped["step"] = records(out, 1)[-1]["step"]
        os.kill(pid, signal.SIGSTOP)

    proc = ft_launch(2, out, "fault_injection.step_sleep_s=0.2", until=hang)
    assert "replica group 1 has not finished" in proc.stderr and "failed for good" in proc.stderr
    mine = records(out, 0)
    lost = [r["step"] for r in mine if not r["committed"]]
    assert len(lost) <= 1, lost
    worst = max(r["seconds"] for r in mine if r["step"] > stopped["step"])
    assert worst < 3.0 + 1.0 + 1.5, f"survivor stalled {worst:.2f} s (collective timeout 3 s, heartbeat 1 s)"
    print(f"hung at step {stopped['step']}: survivor discarded {lost}, longest step after it {worst:.2f} s")
    assert max(r["members"] for r in mine if r["step"] > stopped["step"] + 1) == 1
    assert_every_sample_once(out, 2, epochs=2)


@pytest.mark.slow
def test_a_fixed_membership_is_the_ddp_run_and_every_group_lost_resumes_from_disk_exactly(tmp_path, ddp_reference):
    """2 groups that never lose one another train the steps of the 2-rank ddp run; both crash after step 15
    (no restarts left), the same command loads step 10 in every group before the first quorum, and the
    run ends bitwise where the 2-rank ddp run (unbroken) ends."""
    out = tmp_path / "ft"
    first = ft_launch(2, out, "fault_injection.crash_after_step=15", "ft.max_restarts=0", "logging.progress=bar",
                      check=False)
    assert first.returncode == 1, first.stderr[-3000:]
    assert final_checkpoint(out).name == "step_00000010"
    # Each group (1 rank) plans the 2-group run's steps, and its progress bar counts them, not a 1-rank
    # run's twice as many.
    total = int(final_checkpoint(ddp_reference).name.split("_")[1])
    said = first.stdout + first.stderr
    assert f"1 rank(s) on cpu, {total} steps (" in said
    bars = re.findall(r"step \d+/(\d+) \[", said)
    assert bars and set(bars) == {str(total)}, set(bars)
    ft_launch(2, out)  # the same command, without the fault
    assert_bitwise_equal(load_pt(final_checkpoint(out) / "model.pt"), load_pt(final_checkpoint(ddp_reference) / "model.pt"))
    mine = [r for g in range(2) for r in records(out, g)]
    assert {r["members"] for r in mine} == {2} and all(r["committed"] for r in mine)
    resumed = [r for r in records(out, 0) if r["committed"]]
    assert [r["step"] for r in resumed][15:16] == [11]  # 15 steps, then the rerun from step 10


@pytest.mark.slow
def test_a_lighthouse_restart_then_sigterm_to_the_launcher_lose_nothing(tmp_path):
    """The Lighthouse SIGKILLed mid-run: restarted on its port, the groups' quorum requests find it again,
    nothing is discarded. Then SIGTERM to the launcher: the groups stop at a step boundary, the quorum's first
    member checkpoints, exit 75; the same command continues from there to the end, every sample once."""
    out = tmp_path / "ft"
    struck = {}

    def strike(out: Path, proc) -> None:
        while len(records(out, 0)) < 6 and proc.poll() is None:
            time.sleep(0.05)
        struck["lighthouse"] = records(out, 0)[-1]["step"]
        os.kill(int((out / ".ft_lighthouse").read_text()), signal.SIGKILL)
        while len(records(out, 0)) < struck["lighthouse"] + 4 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)

    first = ft_launch(2, out, "fault_injection.step_sleep_s=0.2", check=False, until=strike)
    assert first.returncode == 75, first.stderr[-3000:]
    assert "the Lighthouse exited" in first.stderr
    steps = committed(out, 2)
    worst = max(r["seconds"] for r in records(out, 0) if r["step"] > struck["lighthouse"])
    print(f"Lighthouse killed after step {struck['lighthouse']}: longest step after it {worst:.2f} s")
    assert not [r for g in range(2) for r in records(out, g) if not r["committed"]]
    stopped = int((out / "PREEMPTED").read_text())
    assert final_checkpoint(out).name == f"step_{stopped:08d}" and max(steps[0]) == stopped
    ft_launch(2, out)
    assert final_checkpoint(out).name == "step_00000032"
    again = [r["step"] for r in records(out, 0) if r["committed"]]
    assert again.count(stopped + 1) == 1 and again[-1] == 32  # continued after the stop, nothing redone
    assert_every_sample_once(out, 2, epochs=2)
