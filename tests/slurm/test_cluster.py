"""On a real Slurm cluster (.ci/run starts one): submit, train, CPU binding, preempt -> requeue -> exact resume.

Where Slurm is not installed these tests skip with the reason; CI sets DTRAIN_REQUIRE_SLURM=1, which
turns a missing cluster into a failure instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import dtrain, final_checkpoint, launch


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "Slurm is not installed here (no sbatch); .ci/slurm/up.sh installs and starts one"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"sinfo failed: {exc}"
    if "idle" not in state and "mix" not in state and "alloc" not in state:
        return f"no usable Slurm node (sinfo says {state.strip()!r}); start one with .ci/slurm/up.sh"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("DTRAIN_REQUIRE_SLURM") == "1":
            pytest.fail(f"DTRAIN_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def layout() -> tuple[int, int]:
    """(nodes, CPUs per node) of the cluster: 1 node with the host's CPUs, or .ci/slurm/up.sh's 2-node mode."""
    rows = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True).stdout.split("\n")
    nodes = {r.split()[0]: int(r.split()[1]) for r in rows if r.strip()}
    return len(nodes), min(nodes.values())


def ranks_spec() -> list[str]:
    """2 ranks: over 2 nodes (one each) where the cluster has them, else 2 tasks on the one node."""
    return ["--nodes=2", "--procs-per-node=1"] if layout()[0] >= 2 else ["--procs-per-node=2"]


def job_field(job_id: str, key: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True).stdout
    m = re.search(rf"\b{key}=(\S+)", out)
    return m.group(1) if m else ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_done(job_id: str, timeout: float = 240) -> str:
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    return wait_for(lambda: (s := job_field(job_id, "JobState")) in final and s, timeout, f"job {job_id} to end")


def submit(config: str, *args: str, spec: list[str] | None = None, cpus: int = 1, launcher: str = "srun") -> str:
    """`dtrain slurm submit`; spec: the nodes and tasks (default: 2 ranks, see ranks_spec)."""
    proc = dtrain("slurm", "submit", f"--launcher={launcher}", *(spec or ranks_spec()), f"--cpus-per-task={cpus}",
                  "--time=10", config, *args)
    return proc.stdout.strip().splitlines()[-1]


def logs(run_dir: Path, job_id: str) -> str:
    return "".join(p.read_text() for p in sorted(run_dir.glob(f"slurm-{job_id}.*")))


@pytest.mark.slow
def test_job_trains_vision_end_to_end_on_the_cpus_it_asked_for(slurm, tmp_path):
    # One task with all CPUs of a node (both of a 2-CPU CI host in 1-node mode). The cluster binds each task
    # to its CPUs per task (.ci/slurm/up.sh): an srun step that does not pass --cpus-per-task on
    # (Slurm >= 22.05) gets one, which this catches wherever a node has 2 CPUs.
    cpus = layout()[1]
    run_dir = tmp_path / "vision"
    job = submit("recipes/vision/config.yaml", f"output_dir={run_dir}", "task.widths=[8,16]",
                 "task.blocks_per_stage=1", "train.max_steps=6", "train.log_every=2", spec=["--procs-per-node=1"],
                 cpus=cpus)
    assert wait_done(job) == "COMPLETED", logs(run_dir, job)
    assert (run_dir / "job.sbatch").is_file() and (run_dir / f"slurm-{job}.out").is_file()
    text = logs(run_dir, job)
    assert "1 rank(s) on cpu" in text and f"{cpus} CPU(s) per rank" in text, text
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert final_checkpoint(run_dir).name == "step_00000006"


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes_exactly(slurm, tmp_path):
    common = ["task.num_train=512", "task.dropout=0.1", "task.input_noise=0.05", "train.epochs=4",
              "train.batch_size=16", "train.log_every=2", "checkpoint.every_epoch=false", "checkpoint.keep_last=5"]
    run_dir = tmp_path / "preempted"
    job = submit("recipes/mlp/config.yaml", f"output_dir={run_dir}", *common, "fault_injection.step_sleep_s=0.25")

    def progressed():
        path = run_dir / "metrics.jsonl"
        return path.is_file() and any(json.loads(x).get("step", 0) >= 6 for x in path.read_text().splitlines())

    wait_for(progressed, 120, "the job to pass step 6")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_for(lambda: int(job_field(job, "Restarts") or 0) >= 1 and job_field(job, "JobState") == "PENDING",
             120, "the job to requeue itself")
    # The last attempt's step must be gone first, or Slurm kills the new start ("credential revoked").
    def no_steps_left():
        out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True)
        return out.returncode != 0 or len(out.stdout.strip().splitlines()) <= 1

    wait_for(no_steps_left, 60, "the preempted attempt's processes to end")
    time.sleep(1)
    # Slurm holds a requeued job back for ~120 s; let it start again now (only takes once it is PENDING).
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    assert wait_done(job) == "COMPLETED", logs(run_dir, job)

    text = logs(run_dir, job)
    assert "USR1: asking dtrain to checkpoint and stop" in text and "requeueing job" in text
    assert "1 CPU(s) per rank" in text  # two tasks, each bound to its own CPU
    if layout()[0] >= 2:  # and the requeued job ran across both nodes again
        assert text.count("ranks per node: ") >= 2 and "n1=[" in text and "n2=[" in text, text
    stopped = int(re.search(r"stopped at step (\d+) on request", text).group(1))
    assert 6 <= stopped < 64 and f"at step {stopped}" in text  # resumed from the step it stopped at
    assert not (run_dir / "PREEMPTED").exists()

    reference = tmp_path / "straight"
    launch(2, "recipes/mlp/config.yaml", f"output_dir={reference}", *common)
    from safetensors.torch import load_file

    for d in (run_dir, reference):
        dtrain("checkpoint", "export", str(final_checkpoint(d)), str(d / "final.safetensors"))
    a, b = load_file(run_dir / "final.safetensors"), load_file(reference / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
