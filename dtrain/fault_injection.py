"""Deliberate failures for the resume, atomicity and chaos tests (`fault_injection.*`); off in real runs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable


class FaultInjected(RuntimeError):
    """Raised by `fault_injection.crash_after_step`; tests use it to stop a run on purpose."""


def first_attempt() -> bool:
    """False in a group torchrun restarted (fault injection fires once, so the restart can finish)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def holding(beat: Callable[[int, int, str], None], spec: str, seconds: float, run_dir: Path):
    """`beat`, and a pause at `spec` ('STEP:PHASE'): fault injection's `hold_at`."""
    step_text, _, phase = spec.partition(":")
    at, held = (int(step_text), phase), []

    def hold(step: int, micro: int, phase: str) -> None:
        beat(step, micro, phase)
        if (step, phase) == at and not held:
            held.append(True)
            (run_dir / ".hold").write_text(f"{os.getpid()}\n")
            time.sleep(seconds)

    return hold
