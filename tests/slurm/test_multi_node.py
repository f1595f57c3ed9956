"""On a real 2-node Slurm cluster (.ci/slurm/up.sh with DTRAIN_SLURM_NODES=2: two slurmd on this host):
both multi-node templates train 2 ranks over 2 nodes to the same weights as 2 ranks on one node, each rank
bound to the CPUs the job asked for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import dtrain, final_checkpoint, launch
from tests.slurm.test_cluster import (  # noqa: F401  (slurm: the fixture)
    job_field, layout, logs, slurm, submit, wait_done, wait_for,
)

MLP = "recipes/mlp/config.yaml"
COMMON = ["task.num_train=256", "task.dropout=0.1", "train.epochs=2", "train.batch_size=16", "train.log_every=4",
          "checkpoint.every_epoch=true"]


@pytest.fixture(scope="module")
def two_nodes(slurm):  # noqa: F811
    nodes, _ = layout()
    if nodes < 2:
        message = f"the Slurm cluster has {nodes} node; start 2 with DTRAIN_SLURM_NODES=2 bash .ci/slurm/up.sh"
        if os.environ.get("DTRAIN_SLURM_NODES", "1") != "1" and os.environ.get("DTRAIN_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def one_node_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node")
    launch(2, MLP, f"output_dir={out}", *COMMON)
    return weights(out)


def weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    dtrain("checkpoint", "export", str(final_checkpoint(run_dir)), str(run_dir / "final.safetensors"))
    return load_file(run_dir / "final.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("launcher, template", [("torchrun", "multi_node"), ("srun", "srun_tasks")])
def test_two_nodes_train_to_the_weights_of_one(two_nodes, one_node_weights, tmp_path, launcher, template):
    run_dir = tmp_path / template
    job = submit(MLP, f"output_dir={run_dir}", *COMMON, spec=["--nodes=2", "--procs-per-node=1"], launcher=launcher)
    state = wait_done(job)
    text = logs(run_dir, job)
    assert state == "COMPLETED", f"job {job} ({template}.sbatch over n[1-2]) ended {state}:\n{text}"
    script = (run_dir / "job.sbatch").read_text()
    assert ("--rdzv-backend=c10d" in script) == (launcher == "torchrun") and "#SBATCH --nodes=2" in script
    assert "2 rank(s) on cpu" in text and "1 CPU(s) per rank" in text, text  # the binding, from each rank
    nodes = re.search(r"ranks per node: (\S+=\[\d\]), (\S+=\[\d\])", text)
    assert nodes and {n.split("=")[0] for n in nodes.groups()} == {"n1", "n2"}, text
    got = weights(run_dir)
    assert got.keys() == one_node_weights.keys()
    differ = [k for k in got if not torch.equal(got[k], one_node_weights[k])]
    assert not differ, f"{template}.sbatch over 2 nodes: {differ} differ from 2 ranks on one node"


def _processes(job: str, node: str | None = None) -> list[int]:
    """PIDs of the job's dtrain ranks that Slurm started on `node` (several slurmd share this host); without
    a node, every process of the job left anywhere: its step daemons, batch script and ranks."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            env = dict(x.split("=", 1) for x in (proc / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in x)
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if node is None:
            if env.get("SLURM_JOB_ID") == job or cmd.startswith(f"slurmstepd: [{job}."):
                found.append(int(proc.name))
        elif env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node and "dtrain.cli" in cmd:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_node_loss_fails_fast_names_it_and_the_job_resumes_exactly(two_nodes, tmp_path):
    """n2's slurmd, its step daemon and its rank killed mid-run: the rank left fails at once naming itself,
    Slurm names n2; with n2 back, the same submit command resumes from the newest checkpoint and ends
    bitwise equal to an unbroken run."""
    common = ["task.num_train=512", "train.epochs=4", "train.batch_size=16", "train.log_every=2",
              "checkpoint.every_epoch=false", "checkpoint.every_steps=4", "checkpoint.keep_last=5"]
    run_dir = tmp_path / "node_loss"
    args = [MLP, f"output_dir={run_dir}", *common, "fault_injection.step_sleep_s=0.25"]
    spec = ["--nodes=2", "--procs-per-node=1"]
    jobs = [submit(*args, spec=spec)]
    try:
        _lose_n2_then_resume(jobs, run_dir, args, spec)
    finally:  # whatever failed, no job of this test stays to hold the nodes the next tests need
        subprocess.run(["scancel", *jobs], check=False)
    reference = tmp_path / "unbroken"
    launch(2, MLP, f"output_dir={reference}", *common)
    a, b = weights(run_dir), weights(reference)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not differ, f"after losing n2, {differ} differ from an unbroken run"


def _lose_n2_then_resume(jobs: list[str], run_dir: Path, args: list[str], spec: list[str]) -> None:
    job = jobs[0]
    wait_for(lambda: any(int(p.name.split("_")[1]) >= 8 for p in (run_dir / "checkpoints").glob("step_*")),
             120, "a checkpoint at step 8 or later")
    ranks = wait_for(lambda: _processes(job, "n2"), 30, f"job {job}'s rank on node n2")
    stepd = int(Path(f"/proc/{ranks[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    slurmd = int(Path("/run/slurmd-n2.pid").read_text())
    start = time.monotonic()
    for pid in (slurmd, stepd, *ranks):
        os.kill(pid, signal.SIGKILL)
    ended = wait_for(lambda: (s := job_field(job, "JobState")) in ("PENDING", "FAILED", "NODE_FAIL", "CANCELLED") and s,
                     120, f"job {job} to end its attempt after node n2 (ranks {ranks}) was killed")
    took = time.monotonic() - start
    text = logs(run_dir, job)
    assert took < 90, f"job {job} took {took:.0f}s to notice node n2 had gone:\n{text}"
    assert "Node failure on n2" in text or "n2" in job_field(job, "Reason"), text
    assert re.search(r"dtrain: error: rank \d on n1 lost its connection to another rank", text), text

    # The lost attempt must be gone from n1 first (KillWait), or the next one finds its nodes busy and hangs.
    wait_for(lambda: not _processes(job), 60, f"job {job}'s first attempt to leave n1")
    # n2 comes back (its new slurmd goes where down.sh will stop it); the job continues from its checkpoint
    subprocess.run(["slurmd", "-N", "n2"], check=True)
    # slurmd creates its pid file before it writes the number: an empty read means "not yet", not a failure
    wait_for(lambda: _pid_in("/run/slurmd-n2.pid") not in (None, slurmd),
             30, "n2's new slurmd")
    pids = Path("/tmp/dtrain-slurm.pids")  # down.sh stops exactly these: the new slurmd for the killed one
    kept = [x for x in pids.read_text().split() if x != str(slurmd)]
    pids.write_text("\n".join([*kept, Path("/run/slurmd-n2.pid").read_text().strip()]) + "\n")
    wait_for(lambda: subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                                    text=True).stdout.split() == ["idle", "idle"], 60, "n1 and n2 to be idle again")
    # Slurm requeued the job (--requeue) or it failed. Either way the same command is submitted again: on
    # these emulated nodes the requeued job id, restarted right after n2 came back, had its step refused
    # ("Requested nodes are busy") and hung, so a fresh job is what this proves.
    if ended == "PENDING":
        subprocess.run(["scancel", job], check=True)
        wait_done(job, 60)
    job = submit(*args, spec=spec)
    jobs.append(job)
    assert wait_done(job) == "COMPLETED", logs(run_dir, job)
    text = logs(run_dir, job)
    assert re.search(r"resumed from \S+step_000000\d\d at step (\d+)", text), text


def _pid_in(path: str) -> int | None:
    """The pid a daemon's pid file holds, or None while it is missing or still empty."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@pytest.mark.slow
def test_replica_groups_over_two_nodes_survive_a_lost_group_without_a_restart(two_nodes, tmp_path):
    """slurm/replica_groups.sbatch over n1 and n2, one replica group each (issue 25): the group on n2 is
    SIGKILLed mid-run; its node's launcher restarts it and it heals from n1's group while n1's goes on. The
    job completes in its first attempt (no requeue, no restart of n1's group), n1's group discarded at most
    one step, and the healed group matches it bit for bit at every later step."""
    pytest.importorskip("torchft")
    from tests.distributed.test_replica_groups import assert_every_sample_once, committed, records

    run_dir = tmp_path / "ft"
    job = submit(MLP, f"output_dir={run_dir}", "task.num_train=512", "train.epochs=2", "train.batch_size=16",
                 "train.log_every=8", "train.sanity_eval_batches=0", "fault_injection.step_sleep_s=0.3",
                 "ft.record_steps=true", "ft.heartbeat_timeout_ms=1000", "ft.timeout_s=5",
                 spec=["--nodes=2", "--replica-groups=2"], launcher="torchrun")
    try:
        wait_for(lambda: len(records(run_dir, 1)) >= 6, 180, "6 steps of the group on n2")
        pid = int((run_dir / "replica_1" / "pid").read_text())
        os.kill(pid, signal.SIGKILL)  # the group's process on n2 (several slurmd share this host)
        state = wait_done(job)
    finally:
        subprocess.run(["scancel", job], check=False)
    text = logs(run_dir, job)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{text}"
    assert "restart 0" in text and "restart 1," not in text.replace("restart 1 of", ""), text  # one attempt
    assert "replica group 1 killed by signal 9; restart 1 of 3" in text, text
    assert "every replica group finished" in text, text
    lost = [r["step"] for r in records(run_dir, 0) if not r["committed"]]
    assert len(lost) <= 1, lost
    steps = committed(run_dir, 2)
    struck = max(s for s in steps[1] if s <= 6)
    after = [s for s in steps[1] if s > struck + 1]
    assert after and all(steps[1][s]["digest"] == steps[0][s]["digest"] for s in after)
    assert_every_sample_once(run_dir, 2, epochs=2)
