import time

import pytest
import torch

from dtrain.metrics import StepMetrics, default_peak_flops, peak_memory_mb


def test_flops_are_counted_once_from_the_first_step_and_scale_with_samples():
    m = StepMetrics(torch.device("cpu"), world_size=2, peak_flops=1e9)
    layer = torch.nn.Linear(16, 8)
    with m.count_flops(samples=4):
        layer(torch.randn(4, 16)).sum().backward()
    # forward x@W^T and backward grad-weight (the input needs no grad): 2 matmuls of 2*B*16*8 FLOPs
    assert m.flops_per_sample == 2 * 2 * 16 * 8
    with m.count_flops(samples=4):  # not counted again
        layer(torch.randn(4, 16, 16)).sum().backward()
    assert m.flops_per_sample == 2 * 2 * 16 * 8
    m.add(samples=100, tokens=500)
    snap = m.snapshot()
    assert snap["tokens_per_s"] == pytest.approx(5 * snap["samples_per_s"])
    # achieved FLOP/s per device uses this rank's samples; samples/s counts all ranks
    assert snap["tflops"] * 1e12 == pytest.approx(512 * snap["samples_per_s"] / 2, rel=1e-6)
    assert snap["mfu"] == pytest.approx(snap["tflops"] * 1e12 / 1e9)


def test_data_wait_fraction_and_peak_memory():
    m = StepMetrics(torch.device("cpu"), world_size=1, peak_flops=None)
    t = time.perf_counter()  # as the trainer times `next(batches)`
    time.sleep(0.1)
    m.wait_s += time.perf_counter() - t
    time.sleep(0.02)
    m.add(samples=8)
    snap = m.snapshot()
    assert 0.3 < snap["data_wait"] <= 1.0
    assert "mfu" not in snap and "tflops" not in snap and "tokens_per_s" not in snap
    assert snap["peak_mem_mb"] == pytest.approx(peak_memory_mb(torch.device("cpu")), rel=0.1) and snap["peak_mem_mb"] > 10
    assert m.snapshot()["data_wait"] < 0.3  # a new interval starts after each snapshot


def test_no_default_peak_on_the_cpu():
    assert default_peak_flops(torch.device("cpu"), "bf16") is None


@pytest.mark.parametrize("name, bf16_peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA B200", 2.25e15),
    ("NVIDIA A100-SXM4-80GB", 312e12),  # not A10's
    ("NVIDIA A10G", 70e12),
    ("NVIDIA A10", 125e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40", 181e12),  # not L4's
    ("NVIDIA L40S", 362e12),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_default_peak_matches_whole_model_names(monkeypatch, name, bf16_peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    gpu = torch.device("cuda", 0)
    assert default_peak_flops(gpu, "bf16") == bf16_peak
    assert default_peak_flops(gpu, "fp16") == bf16_peak
    assert default_peak_flops(gpu, "fp32") == (bf16_peak and bf16_peak / 2)


@pytest.mark.parametrize("name, fp16_peak", [("Tesla V100-SXM2-16GB", 125e12), ("Tesla T4", 65e12)])
def test_fp16_only_gpus_have_a_peak_for_fp16_runs_only(monkeypatch, name, fp16_peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    gpu = torch.device("cuda", 0)
    assert default_peak_flops(gpu, "fp16") == fp16_peak
    assert default_peak_flops(gpu, "bf16") is None and default_peak_flops(gpu, "fp32") is None
