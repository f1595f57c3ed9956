"""What a log line says about speed and cost: samples/s, tokens/s, achieved TFLOP/s and MFU, peak memory,
and the fraction of the time spent waiting for data.

Cheap by design: per step only host-side clocks and integer counters are touched (no device sync);
device values are read at log intervals, when the loss all-reduce syncs anyway. FLOPs are counted
once, with `torch.utils.flop_counter` around the first optimizer step this process runs, and scaled
by the samples (or tokens) of later steps.
"""

from __future__ import annotations

import contextlib
import re
import resource
import time
from typing import ContextManager, Iterator

import torch

# Dense (no sparsity) peak FLOP/s per device for bf16/fp16 tensor cores, by the model in the CUDA device
# name; fp32 runs count TF32, half of that. From the vendors' data sheets (SXM parts where both exist).
# Matched on whole name tokens, not substrings: "L4" must not match "NVIDIA L40S", nor "A10" "NVIDIA
# A100-SXM4-80GB". Keys of several tokens ("H100 PCIe") are tried first, so the variant wins.
PEAK_FLOPS_BF16 = {
    "H100 PCIe": 756e12,
    "B200": 2.25e15,
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}
FP16_ONLY = {"V100", "T4"}
"""Tensor cores for fp16 only (no bf16, no TF32; bf16 is emulated there): only fp16 runs get a peak."""


def gpu_model(name: str) -> str | None:
    """The table key naming this GPU: "NVIDIA A100-SXM4-80GB" -> "A100", "NVIDIA H100 PCIe" -> "H100 PCIe"."""
    tokens = re.split(r"[\s_-]+", name.strip().casefold())
    for key in sorted(PEAK_FLOPS_BF16, key=lambda k: -len(k.split())):
        k = key.casefold().split()
        if any(tokens[i:i + len(k)] == k for i in range(len(tokens))):
            return key
    return None


def default_peak_flops(device: torch.device, precision: str) -> float | None:
    """The table's peak for this GPU, or None (CPU, unknown GPU): MFU is then left out of log lines."""
    if device.type != "cuda":
        return None
    model = gpu_model(torch.cuda.get_device_name(device))
    if model is None or (model in FP16_ONLY and precision != "fp16"):
        return None
    peak = PEAK_FLOPS_BF16[model]
    return peak if precision in ("bf16", "fp16") else peak / 2


def host_peak_mb() -> float:
    """This process's peak resident set. VmHWM counts from this program's start; ru_maxrss (the fallback
    off Linux) also carries over what the launcher that forked it held."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory tensors have held on this device. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return host_peak_mb()


def memory_peaks(device: torch.device) -> dict[str, float]:
    """Peaks so far of this rank: host memory always, device memory on a GPU."""
    out = {"host_peak_mb": round(host_peak_mb(), 1)}
    if device.type == "cuda":
        out["device_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class StepMetrics:
    """Accumulates one log interval; `snapshot()` turns it into the numbers of a log line and starts the next."""

    def __init__(self, device: torch.device, world_size: int, peak_flops: float | None, compiled: bool = False):
        self.device, self.world_size, self.peak_flops = device, world_size, peak_flops
        self.compiled = compiled
        """The model is torch.compile'd: the counted step then runs eagerly (see `_count`)."""
        self.flops_per_sample: float | None = None  # of one rank's forward + backward, from the first step
        self._counted = False
        self._reset()

    def _reset(self) -> None:
        self._start = time.perf_counter()
        self.wait_s = 0.0
        """Seconds the loop waited for the DataLoader. The trainer adds to it around `next(batches)` inline:
        a context manager there would cost microseconds a step."""
        self._samples = 0  # this rank's
        self._tokens = 0

    def count_flops(self, samples: int) -> ContextManager:
        """Around the forward and backward passes of one optimizer step; counts only the first time."""
        if self._counted:
            return contextlib.nullcontext()
        self._counted = True
        return self._count(samples)

    @contextlib.contextmanager
    def _count(self, samples: int) -> Iterator[None]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, (torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()):
            # Eager: Dynamo skips a frame run under a dispatch mode such as the counter, and torch up to at
            # least 2.13 then skips that code for good (pytorch#190286): the model would never compile.
            # It compiles at the next step instead; and the counter sees every op of an eager step.
            yield
        flops = counter.get_total_flops()
        # A compiled graph can hide its ops from the counter: then report no FLOPs rather than wrong ones.
        self.flops_per_sample = flops / samples if flops > 0 and samples > 0 else None

    def add(self, samples: int, tokens: int = 0) -> None:
        """After each optimizer step: this rank's samples (and tokens) of the step."""
        self._samples += samples
        self._tokens += tokens

    @property
    def tokens(self) -> int:
        """This rank's tokens since the last snapshot."""
        return self._tokens

    def snapshot(self, all_tokens: float | None = None) -> dict[str, float]:
        """Rates since the last snapshot. `all_tokens`: the tokens of every rank (they differ by rank);
        without it this rank's count stands for each rank's."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        out = {"samples_per_s": self._samples * self.world_size / elapsed}
        tokens = self._tokens * self.world_size if all_tokens is None else all_tokens
        if tokens:
            out["tokens_per_s"] = tokens / elapsed
        if self.flops_per_sample is not None:
            achieved = self.flops_per_sample * self._samples / elapsed  # per device
            out["tflops"] = achieved / 1e12
            if self.peak_flops:
                out["mfu"] = achieved / self.peak_flops
        out["data_wait"] = self.wait_s / elapsed
        out["peak_mem_mb"] = peak_memory_mb(self.device)
        self._reset()
        return out


def count_tokens(task, batch) -> int:
    """The recipe's `count_tokens(batch)` as a host int (0 when the recipe has none), before the batch moves."""
    if task.count_tokens is None:
        return 0
    n = task.count_tokens(batch)
    return int(n.item()) if isinstance(n, torch.Tensor) else int(n)
