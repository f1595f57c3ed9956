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
