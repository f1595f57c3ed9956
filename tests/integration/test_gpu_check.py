"""benchmarks/gpu_check.sh must be ready before a GPU is at hand: its CPU rehearsal (--dry) runs here, the
same driver and matrix code as on a GPU, with gloo in place of NCCL, bf16 only and compile off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, child_env


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, run benchmarks/gpu_check.sh itself")
def test_gpu_check_dry_run_passes_every_recipe_and_strategy(tmp_path):
    env = child_env(GPU_CHECK_OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    reports = list(tmp_path.glob("gpu_check_cpu-dry_*.json"))
    assert proc.returncode == 0 and reports, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    runs = {r["name"]: r for r in json.loads(reports[0].read_text())["runs"]}
    failed = {n: r.get("detail") for n, r in runs.items() if r["status"] != "passed"}
    assert not failed, failed
    # 3 recipes x 4 strategies, and a bitwise resume per strategy
    assert len([n for n in runs if not n.startswith("resume/")]) == 12
    assert {n for n in runs if n.startswith("resume/")} == {f"resume/{s}" for s in ("ddp", "fsdp", "zero2", "zero3")}
    assert all(runs[f"resume/{s}"]["detail"] == "max |diff| 0" for s in ("ddp", "fsdp", "zero2", "zero3"))
    md = next(tmp_path.glob("gpu_check_cpu-dry_*.md")).read_text()
    assert "## dtrain env" in md and "16 passed, 0 failed" in md, md[-2000:]
