"""Which kernels a run may use: `train.deterministic` (the switches that make GPU runs repeat bit for bit;
the CPU needs none), `train.tf32` and `train.cudnn_benchmark`. Process-wide settings of torch."""

from __future__ import annotations

import os

import torch


def make_deterministic() -> None:
    """Deterministic kernels from here on, in this process; an op that has none raises, naming itself.

    Call it before the first CUDA operation: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its
    handle, at the first matrix product on a device, and ignores it afterwards.
    """
    # cuBLAS otherwise picks its internal workspace per call when streams run side by side, which changes
    # results; fixed buffers per stream (8 of 4 MiB) avoid it, and PyTorch's deterministic mode refuses
    # cuBLAS calls without this set. ":16:8" (slower, less memory) is the other documented value: a
    # value the user set stays.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    # The benchmark picks the fastest convolution algorithm per shape by timing, so the choice can differ
    # between runs, and with it the rounding.
    torch.backends.cudnn.benchmark = False


def configure_kernels(deterministic: bool, tf32: bool, cudnn_benchmark: bool | str) -> None:
    """Set all three from a run's config (each explicitly: several runs may share one process)."""
    if deterministic:
        make_deterministic()
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = cudnn_benchmark in (True, "auto")
    # The CUDA switches only: set_float32_matmul_precision("high") would also let oneDNN round fp32
    # matrix products on CPUs that have reduced-precision units.
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
