"""Mixed precision: the autocast context for forward passes and the loss scaling fp16 needs."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


class Precision:
    """fp32: nothing. bf16: autocast. fp16: autocast + GradScaler (dynamic loss scale)."""

    def __init__(self, mode: str, device: torch.device):
        if mode == "auto":
            # Not fp16 where bf16 is missing, though V100/T4 have fp16 tensor cores: fp16 needs loss scaling,
            # and activations beyond 65504 (fine in bf16 and fp32) overflow: skipped steps or NaNs that the
            # user never asked for. `auto` must not change what a run converges to; fp16 is one key away.
            mode = "bf16" if native_bf16(device) else "fp32"
        self.mode = mode
        self.device = device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        # Clipping must see true gradient magnitudes, so fp16 gradients are unscaled first.
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, skip: torch.Tensor | None = None) -> None:
        """Apply the update, decided on the device: skipped where `skip` (a 0-dim float tensor, 1 = skip)
        says so or, under fp16, where the scaler found inf/NaN gradients.

        No host sync: dtrain's optimizers are fused, and a fused step reads `found_inf` on the device
        (GradScaler hands it its own; with `.item()` otherwise). Its step counters skip along."""
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        if skip is None:
            optimizer.step()
        elif optimizer.defaults.get("fused"):
            optimizer.found_inf = skip
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        elif not bool(skip):  # an optimizer without a fused step: decided on the host
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: a CUDA GPU of compute capability 8.0 or more (Ampere on), or ROCm.

    Not `torch.cuda.is_bf16_supported()`: by default it also counts GPUs that only emulate bf16 (V100,
    T4), where a bf16 run is slower than fp32. Its `including_emulation=False` asks the same as this, but
    of the current device rather than `device`.
    """
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)
