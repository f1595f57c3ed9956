"""sbatch rendering, checked against recorded scripts (submitit's habit), and allocation parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtrain.slurm import SlurmJob, allocation, expand_nodelist, render
from tests.conftest import dtrain

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "one_node": dict(gpus_per_node=8),
    "multi_node": dict(nodes=4, gpus_per_node=8, partition="gpu", account="proj42", qos="high", time="2-00:00:00"),
    "srun_tasks": dict(nodes=2, gpus_per_node=4, launcher="srun", cpus_per_task=8),
    "replica_groups": dict(nodes=2, gpus_per_node=4, replica_groups=8),
}


def rendered(name: str) -> str:
    job = SlurmJob(config="/srv/configs/router.yaml", overrides=["train.epochs=3"], run_dir=Path("/srv/runs/router"),
                   job_name="router", **CASES[name])
    return render(job, python="/opt/venv/bin/python", workdir=Path("/srv/work"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_matches_the_recorded_one(name):
    text = rendered(name)
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("DTRAIN_RECORD_GOLDEN"):  # after an intended template change: re-record, then review
        golden.write_text(text)
    assert text == golden.read_text()


def test_multi_node_uses_first_host_and_one_torchrun_per_node():
    text = rendered("multi_node")
    assert "#SBATCH --nodes=4" in text and "#SBATCH --ntasks-per-node=1" in text
    assert 'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert '--rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$RDZV_PORT"' in text
    assert "--nproc-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --signal=B:USR1@90", "#SBATCH --requeue",
                 "#SBATCH --output=/srv/runs/router/slurm-%j.out", "#SBATCH --error=/srv/runs/router/slurm-%j.err"):
        assert line in text
    assert "output_dir=/srv/runs/router train.epochs=3" in text


def test_srun_tasks_runs_dtrain_directly():
    text = rendered("srun_tasks")
    assert "#SBATCH --ntasks-per-node=4" in text and "torch.distributed.run" not in text
    assert 'srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" /opt/venv/bin/python -m dtrain.cli run' in text


def test_replica_groups_run_one_launcher_per_node_around_one_lighthouse():
    text = rendered("replica_groups")
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text
    assert "#SBATCH --cpus-per-task=8" in text  # 4 groups a node, 2 CPUs each
    assert "--replica-groups=8" in text and '--node-rank="$SLURM_NODEID"' in text
    assert '"$HEAD_NODE:$LIGHTHOUSE_PORT"' in text and "--kill-on-bad-exit=0" in text


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_srun_step_passes_the_jobs_cpus_per_task_on(name):
    # Slurm >= 22.05 srun no longer inherits it from the job: its tasks would get one CPU each.
    steps = [line for line in rendered(name).splitlines() if line.startswith("srun ")]
    assert steps and all('--cpus-per-task="$SLURM_CPUS_PER_TASK"' in line for line in steps)


@pytest.mark.parametrize("change, message", [
    (dict(nodes=0), "--nodes: must be >= 1"),
    (dict(time="soon"), "--time: 'soon' is not a Slurm time"),
    (dict(job_name="my job"), "--job-name"),
])
def test_bad_parameters(change, message):
    with pytest.raises(ValueError, match=message):
        render(SlurmJob(config="c.yaml", overrides=[], run_dir=Path("/r"), **change))


def test_submit_dry_run_from_the_cli(tmp_path):
    proc = dtrain("slurm", "submit", "--dry-run", "--nodes=2", "--gpus-per-node=4", "--time=30",
                  "recipes/vision/config.yaml", f"output_dir={tmp_path}/run")
    assert "#SBATCH --nodes=2" in proc.stdout and f"RUN_DIR={tmp_path}/run" in proc.stdout
    assert not (tmp_path / "run").exists()  # a dry run writes and submits nothing
    bad = dtrain("slurm", "submit", "--dry-run", "recipes/vision/config.yaml", "train.batch_size=0", check=False)
    assert bad.returncode == 2 and "train.batch_size: must be > 0" in bad.stderr


def test_allocation_from_env_and_outside():
    assert allocation({}) is None
    a = allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_NUM_NODES": "2",
                    "SLURM_NTASKS": "16", "SLURM_GPUS_PER_NODE": "8"})
    assert (a.job_id, a.nodes, a.num_nodes, a.tasks, a.gpus_per_node) == ("7", ["gpu01", "gpu02"], 2, 16, "8")
    assert expand_nodelist("gpu[01-03,7],cpu1") == ["gpu01", "gpu02", "gpu03", "gpu7", "cpu1"]


def test_env_command_outside_an_allocation():
    proc = dtrain("slurm", "env", check=False)
    assert proc.returncode == 1 and "not inside a Slurm allocation" in proc.stdout
