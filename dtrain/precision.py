"""Mixed precision: the autocast context for forward passes and the loss scaling fp16 needs."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


class Precision:
    """fp32: nothing. bf16: autocast. fp16: autocast + GradScaler (dynamic loss scale)."""

    def __init__(self, mode: str, device: torch.device):
        if mode == "auto":
            mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
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

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update; False when fp16 found inf/NaN gradients and skipped it."""
        if not self.scaler:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
