"""What a benchmark ran on, for the headers and file names of its report."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The GPU the benchmark used, else the CPU model."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()


def describe() -> str:
    """CPU, core count, GPU and torch version in one line."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}"
