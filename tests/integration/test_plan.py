"""`dtrain plan` against real runs: its predicted memory per rank is within 15 % of what real torchrun
ranks over gloo peak at, for ddp and fsdp at 1, 2 and 4 ranks; bad input is one line and exit 2.

What is compared, per rank: the peak resident memory of a training run (VmHWM) minus the resident memory
the same process held just before it (interpreter, torch and dtrain loaded, process group up), measured by
tests/integration/plan_worker.py. Several runs share one process per world size; a tiny run of each
strategy goes first, so lazy imports (DDP imports torch._dynamo and sympy: ~90 MB) are not counted.
glibc's malloc keeps freed heap memory resident and raises its mmap threshold as large blocks are freed;
with the threshold fixed (MALLOC_MMAP_THRESHOLD_=65536) every tensor above 64 KiB is a mapping of its
own, returned when freed, so the resident set follows the bytes tensors hold, which is what the plan
predicts. The prediction is `plan(..., device cpu)`: every row is host memory, rank 0's `total` (the
larger of the training step's peak and the state kept between steps plus checkpoint staging) against
rank 0, `total_other_ranks` against the others.

Workload: the mlp recipe made large enough for parameters to dominate (8 layers of 1536: 16.6 M
parameters, 66 MB in fp32), micro-batch 16, AdamW, 2 steps and the checkpoint of the last one (ddp:
model.pt/optim.pt serialised in memory by rank 0; fsdp: dcp shards).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dtrain.cli import main
from dtrain.config import load_config
from dtrain.plan import Cluster, plan, to_json
from tests.conftest import ROOT, child_env

CFG = "recipes/mlp/config.yaml"
MODEL = ["task.hidden=1536", "task.depth=8"]
TINY = ["task.hidden=8", "task.depth=1"]
COMMON = ["task.num_train=64", "task.num_val=0", "train.batch_size=16", "train.max_steps=2",
          "checkpoint.best_metric=null", "checkpoint.resume=none", "dist.watchdog_timeout_s=null"]
WORLDS = (1, 2, 4)
STRATEGIES = ("ddp", "fsdp")
TOLERANCE = 0.15


def _worker(nproc: int, out) -> subprocess.Popen:
    steps = [{"name": f"warm-{s}", "overrides": [*COMMON, *TINY, f"strategy={s}", f"output_dir={out}/warm-{s}"]}
             for s in STRATEGIES]
    steps += [{"name": s, "overrides": [*COMMON, *MODEL, f"strategy={s}", f"output_dir={out}/{s}"]}
              for s in STRATEGIES]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "tests/integration/plan_worker.py", json.dumps(steps)]
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(MALLOC_MMAP_THRESHOLD_="65536"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _peaks(proc: subprocess.Popen) -> dict[str, list[float]]:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-6000:]}"
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"name"')]
    return {r["name"]: r["peaks_mb"] for r in rows}


@pytest.mark.slow
def test_plan_is_within_15_percent_of_real_peaks_at_1_2_and_4_ranks(tmp_path):
    # The three world sizes run at once (7 processes on the CI's 2 cores): memory peaks do not depend on
    # timing, and the test stays near a minute.
    procs = {n: _worker(n, tmp_path / f"w{n}") for n in WORLDS}
    measured = {n: _peaks(p) for n, p in procs.items()}
    report, bad = [], []
    for n in WORLDS:
        cfg = load_config(CFG, [*COMMON, *MODEL])
        predicted = to_json(plan(cfg, Cluster.parse(1, n, "24GB", None, device="cpu")))["strategies"]
        for s in STRATEGIES:
            peaks = measured[n][s]
            pairs = [("rank 0", predicted[s]["total"] / 2**20, peaks[0])]
            if n > 1:
                pairs.append(("others", predicted[s]["total_other_ranks"] / 2**20, max(peaks[1:])))
            for who, want, got in pairs:
                line = f"{s} x{n} {who}: predicted {want:.1f} MiB, measured {got:.1f} MiB ({want / got - 1:+.1%})"
                report.append(line)
                if abs(want / got - 1) > TOLERANCE:
                    bad.append(line)
    print("\n".join(report))
    assert not bad, "\n".join(bad)


def _one_line(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "Error" not in lines[0] and "Exception" not in lines[0], lines[0]  # no class names
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_input_is_one_line_naming_the_flag_or_key(capsys):
    base = ["plan", CFG, "--gpus-per-node", "8"]
    _one_line(capsys, [*base, "--gpu-memory", "80XB"], "--gpu-memory", "80XB", "80GB")
    _one_line(capsys, [*base, "--fs-bandwidth", "fast"], "--fs-bandwidth", "fast")
    _one_line(capsys, [*base, "--nodes", "0"], "--nodes", "at least 1")
    _one_line(capsys, ["plan", CFG, "--gpus-per-node", "two"], "--gpus-per-node", "two")
    _one_line(capsys, ["plan", CFG, "task.hidden=0", "--gpus-per-node", "8"], "task.hidden", "> 0")  # config check
    # A config that passes the checks but whose recipe cannot build its task.
    _one_line(capsys, ["plan", "recipes/ticket_router/config.yaml", "task.data_path=/nonexistent/tickets.csv",
                       "--gpus-per-node", "8"], "ticket_router", "/nonexistent/tickets.csv")


def test_plan_shards_over_nodes_times_gpus_and_says_what_fits(capsys):
    """Arithmetic that must hold at any scale: fsdp's shards are 1/(N*G) of the weights, ddp's copy is
    whole, and a GPU too small for ddp is reported as such, with the default bandwidth named."""
    code = main(["plan", CFG, *MODEL, "--nodes", "2", "--gpus-per-node", "4", "--gpu-memory", "250MB", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["world"] == 8 and out["fs_bandwidth_default"] and out["fs_bandwidth"] == 1e9
    s = out["strategies"]
    weights = out["param_bytes"]
    assert s["ddp"]["rows"]["parameters"] == weights
    assert abs(s["fsdp"]["rows"]["parameters"] - weights / 8) < 0.01 * weights
    assert not s["ddp"]["fits"] and s["fsdp"]["fits"]
    # ddp's torch format: rank 0 writes model.pt (weights) + optim.pt (AdamW: 2 fp32 tensors per weight).
    assert s["ddp"]["checkpoint"]["bytes_rank0"] == pytest.approx(3 * weights, rel=0.01)
    assert s["fsdp"]["checkpoint"]["bytes_rank0"] == pytest.approx(3 * weights / 8, rel=0.01)
    text_code = main(["plan", CFG, *MODEL, "--nodes", "2", "--gpus-per-node", "4", "--gpu-memory", "250MB"])
    text = capsys.readouterr().out
    assert text_code == 0 and "(default; set --fs-bandwidth)" in text and "NO" in text
