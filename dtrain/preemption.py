"""Preemption: a signal (or a marker file) asks the run to stop; the loop acts at a step boundary.

The handler only sets a flag (submitit's way; saving inside a handler can deadlock a collective).
The marker file `<output_dir>/PREEMPT` is how a Slurm batch script reaches every rank on every node
even under torchrun, which does not forward SIGUSR1. All ranks agree before anyone stops.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from dtrain.dist import DistState, all_reduce_sum

EXIT_PREEMPTED = 75
"""Exit code of a run that checkpointed and stopped on request (EX_TEMPFAIL): requeue me."""
MARKER = "PREEMPT"
DONE_FILE = "PREEMPTED"
"""Written by rank 0 after the checkpoint of a requested stop: the batch script requeues on it."""


class Preempted(RuntimeError):
    pass


class StopRequest:
    def __init__(self, run_dir: Path, state: DistState):
        self.marker = Path(run_dir) / MARKER
        self.dist = state
        self.received: str | None = None
        self._previous = {}
        # Under torchrun, SIGTERM is the agent stopping its workers (a peer died, a restart is due):
        # that must end the process, not wait for a step boundary that will never come.
        signals = (signal.SIGUSR1,) if state.launcher == "torchrun" else (signal.SIGUSR1, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def clear_stale_marker(self) -> None:
        """Markers left by an earlier attempt are not a request for (or a stop of) this one."""
        if self.dist.is_main:
            self.marker.unlink(missing_ok=True)
            (self.marker.parent / DONE_FILE).unlink(missing_ok=True)

    def agreed(self, device: torch.device) -> str | None:
        """Collective: the reason to stop if any rank was asked to, else None."""
        local = self.received or ("marker" if self.marker.exists() else None)
        if not self.dist.is_distributed:
            return local
        flag = all_reduce_sum(torch.tensor([1.0 if local else 0.0], device=device), self.dist)
        return (local or "another rank") if flag.item() > 0 else None

    def record_stop(self, step: int) -> None:
        if self.dist.is_main:
            (self.marker.parent / DONE_FILE).write_text(f"{step}\n")

    def done(self) -> None:
        if self.dist.is_main:
            self.marker.unlink(missing_ok=True)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
