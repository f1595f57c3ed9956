"""Deliberate failures for the resume, atomicity and chaos tests (`fault_injection.*`); off in real runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable


class FaultInjected(RuntimeError):
    """Raised by `fault_injection.crash_after_step`; tests use it to stop a run on purpose."""


def first_attempt() -> bool:
    """False in a group torchrun restarted (fault injection fires once, so the restart can finish)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def after_step(fi, step: int, me: int) -> None:
    """fault_injection's strikes after optimizer step `step` (and its checkpoint) of `me`, the rank (or, in a
    fault-tolerant job, the replica group) that `kill_rank` names: kill_at_step, step_sleep_s, crash_after_step."""
    if fi.kill_at_step == step and fi.kill_rank == me and first_attempt():
        os.kill(os.getpid(), signal.SIGKILL)
    if fi.step_sleep_s:
        time.sleep(fi.step_sleep_s)
    if fi.crash_after_step == step:
        raise FaultInjected(f"fault injection: crash after step {step}")


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
