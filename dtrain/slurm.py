"""Slurm: render an sbatch script from the templates in slurm/ (installed as the package data
dtrain.slurm_templates: pyproject.toml), submit it, and read an allocation.

The batch script asks Slurm for USR1 ahead of the time limit. Its trap touches <run_dir>/PREEMPT,
every rank sees it at the next step boundary, rank 0 checkpoints, dtrain writes <run_dir>/PREEMPTED
and exits; the script then requeues the job (at most `max_requeues` times) and `resume: auto` continues
exactly. A run that ends, or fails in any other way, is never requeued.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar, Mapping

from dtrain.preemption import DONE_FILE as PREEMPTED_FILE

TEMPLATES = "dtrain.slurm_templates"
"""The checkout's slurm/, mapped to this package by pyproject.toml: found in a wheel and an editable install."""

COMMON = """\
set -uo pipefail
cd {workdir}
RUN_DIR={run_dir}
mkdir -p "$RUN_DIR"
echo "[sbatch] job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, restart ${{SLURM_RESTART_COUNT:-0}}"
# Slurm signals this shell with USR1 {signal_lead_s} s before the time limit; scancel and preemption send
# TERM. The marker file reaches every rank on every node (torchrun does not forward USR1): dtrain
# checkpoints at the next step boundary and stops.
request_stop() {{ echo "[sbatch] $1: asking dtrain to checkpoint and stop"; touch "$RUN_DIR/PREEMPT"; }}
# A marker older than this attempt is stale; one written from here on (a signal while the ranks start
# up) is this attempt's request, and dtrain keeps it.
rm -f "$RUN_DIR/PREEMPT" "$RUN_DIR/{preempted}"
export DTRAIN_ATTEMPT_STARTED="$(date +%s.%N)"
trap 'request_stop USR1' USR1
trap 'request_stop TERM' TERM
"""

FINISH = """\
TRAIN_PID=$!
# A trapped signal interrupts `wait`: wait again until the training step has really ended.
while true; do
    wait "$TRAIN_PID"; rc=$?
    kill -0 "$TRAIN_PID" 2>/dev/null || break
done
if [ -f "$RUN_DIR/{preempted}" ]; then
    if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeues} ]; then
        echo "[sbatch] checkpointed on request: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    echo "[sbatch] not requeueing: restarted ${{SLURM_RESTART_COUNT:-0}} times already (limit {max_requeues})"
fi
exit "$rc"
"""


@dataclass(kw_only=True)
class SlurmJob:
    config: str
    overrides: list[str]
    run_dir: Path
    nodes: int = 1
    gpus_per_node: int = 0
    procs_per_node: int | None = None
    """Processes per node (default: one per GPU, or 1 without GPUs)."""
    cpus_per_task: int | None = None
    time: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "dtrain"
    launcher: str = "torchrun"
    """'torchrun' (one srun task per node runs torchrun) or 'srun' (one srun task per process)."""
    signal_lead_s: int = 90
    max_requeues: int = 3
    replica_groups: int = 0
    """Fault tolerance: R replica groups over the nodes (slurm/replica_groups.sbatch); 0: off."""

    COUNTS: ClassVar[dict[str, int]] = {"nodes": 1, "gpus_per_node": 0, "procs_per_node": 1, "cpus_per_task": 1,
                                        "signal_lead_s": 0, "max_requeues": 0, "replica_groups": 0}
    """The whole-number fields, each with its least allowed value."""

    def check(self) -> list[str]:
        """Every bad value, each named by its `dtrain slurm submit` flag (none: an empty list)."""
        bad = []
        for key, low in self.COUNTS.items():
            v = getattr(self, key)
            if v is not None and v < low:
                bad.append(f"{flag(key)}: must be >= {low}, got {v}")
        if self.launcher not in ("torchrun", "srun"):
            bad.append(f"--launcher: must be torchrun or srun, got {self.launcher!r}")
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", self.time):
            bad.append(f"--time: {self.time!r} is not a Slurm time limit: give MM, HH:MM:SS or D-HH:MM:SS "
                       "(e.g. 30, 04:00:00, 1-00:00:00)")
        if not re.fullmatch(r"[\w.-]+", self.job_name):
            bad.append(f"--job-name: use letters, digits, '.', '_' or '-', got {self.job_name!r}")
        return bad


def flag(field: str) -> str:
    """The `dtrain slurm submit` flag that sets a SlurmJob field."""
    return "--signal-lead" if field == "signal_lead_s" else "--" + field.replace("_", "-")


def whole_numbers(values: Mapping[str, object]) -> tuple[dict[str, int | None], list[str]]:
    """Command-line strings of SlurmJob's whole-number fields as ints (None and ints pass through),
    and a line for each that is not a whole number."""
    numbers: dict[str, int | None] = {}
    bad = []
    for key, v in values.items():
        try:
            numbers[key] = None if v is None else int(v)  # type: ignore[call-overload]
        except ValueError:
            bad.append(f"{flag(key)}: must be a whole number, got {v!r}")
    return numbers, bad


def template_for(job: SlurmJob) -> str:
    """The template's file name in slurm/."""
    if job.replica_groups:
        return "replica_groups.sbatch"
    if job.launcher == "srun":
        return "srun_tasks.sbatch"
    return "one_node.sbatch" if job.nodes == 1 else "multi_node.sbatch"


def read_template(name: str) -> str:
    try:
        return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:  # an editable install made before slurm/ was mapped: reinstall once
        raise RuntimeError(f"the sbatch templates ({TEMPLATES}) are not installed; run "
                           "`pip install -e .` (or `make venv`) again in the checkout") from None


def render(job: SlurmJob, python: str = sys.executable, workdir: Path | None = None) -> str:
    problems = job.check()
    if problems:
        raise ValueError("; ".join(problems))
    procs = job.procs_per_node or max(job.gpus_per_node, 1)
    if job.replica_groups:  # the groups a node runs, one process each
        procs = -(-job.replica_groups // job.nodes)
    # torchrun's workers share its task's CPUs; an srun task per process gets its own.
    cpus = job.cpus_per_task or (max(procs * 2, 1) if job.launcher == "torchrun" else 2)
    extra = []
    if job.gpus_per_node:
        extra.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    for key in ("partition", "account", "qos"):
        if getattr(job, key):
            extra.append(f"#SBATCH --{key}={getattr(job, key)}")
    q = shlex.quote
    run_dir = Path(job.run_dir).resolve()
    overrides = [f"output_dir={run_dir}", *job.overrides]
    values = {
        "job_name": job.job_name,
        "nodes": str(job.nodes),
        "procs_per_node": str(procs),
        "replica_groups": str(job.replica_groups),
        "cpus_per_task": str(cpus),
        "time": job.time,
        "run_dir": q(str(run_dir)),
        "signal_lead_s": str(job.signal_lead_s),
        "extra_sbatch": "\n".join(extra),
        "python": q(python),
        "config": q(str(Path(job.config).resolve())),
        "overrides": " ".join(q(o) for o in overrides),
        "common": COMMON.format(workdir=q(str(workdir or Path.cwd())), run_dir=q(str(run_dir)),
                                signal_lead_s=job.signal_lead_s, preempted=PREEMPTED_FILE),
        "finish": FINISH.format(preempted=PREEMPTED_FILE, max_requeues=job.max_requeues),
    }
    text = read_template(template_for(job))
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{(\w+)\}\}", text)
    if left:
        raise ValueError(f"template slurm/{template_for(job)} has unknown placeholders: {sorted(set(left))}")
    return re.sub(r"\n{3,}", "\n\n", text)


def submit(script: Path) -> str:
    """sbatch the script; returns the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeError("sbatch not found: run this on a Slurm login node (or use --dry-run)") from None
    if out.returncode != 0:
        raise RuntimeError(f"sbatch failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]


@dataclass(frozen=True)
class Allocation:
    job_id: str
    nodes: list[str]
    num_nodes: int
    tasks: int
    gpus_per_node: str | None


def expand_nodelist(nodelist: str) -> list[str]:
    """'gpu[01-03,7],cpu1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu7', 'cpu1'] (what scontrol show hostnames prints)."""
    hosts = []
    for prefix, ranges, single in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if single:
            hosts.append(single)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
            else:
                hosts += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
    return hosts


def allocation(env: Mapping[str, str] = os.environ) -> Allocation | None:
    """The Slurm allocation this process runs in, or None outside one."""
    if "SLURM_JOB_ID" not in env:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST", "")
    return Allocation(
        job_id=env["SLURM_JOB_ID"],
        nodes=expand_nodelist(nodelist) if nodelist else [],
        num_nodes=int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1),
        tasks=int(env.get("SLURM_NTASKS") or 1),
        gpus_per_node=env.get("SLURM_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE"),
    )
