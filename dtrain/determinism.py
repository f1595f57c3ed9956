"""`train.deterministic`: the switches that make GPU runs repeat bit for bit (the CPU needs none)."""

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
