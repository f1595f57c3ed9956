"""The benchmark scripts are not run in CI (they take minutes and want a quiet machine), but they must parse."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, child_env


@pytest.mark.parametrize("script", ["step_time.py", "overheads.py", "gpu_throughput.py", "data_loading.py"])
def test_benchmark_script_help(script):
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_script_says_it_needs_a_gpu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py"], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
