"""Preemption: a signal (or a marker file) asks the run to stop; the loop acts at a step boundary.

The handler only sets a flag (submitit's way; saving inside a handler can deadlock a collective).
The marker file `<output_dir>/PREEMPT` is how a Slurm batch script reaches every rank on every node
even under torchrun, which does not forward SIGUSR1. All ranks agree before anyone stops.

Agreeing costs a collective, so ranks meet about once a second rather than every step: at each meeting
rank 0 also says how many steps make a second, which fixes the next meeting's step for everyone. The
same meeting carries whether each rank's background checkpoint write has ended, so completing an async
save costs no collective of its own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import torch

from dtrain.dist import DistState, all_reduce_sum, has_group

EXIT_PREEMPTED = 75
"""Exit code of a run that checkpointed and stopped on request (EX_TEMPFAIL): requeue me."""
MARKER = "PREEMPT"
CHECK_EVERY_S = 1.0
"""About how often (seconds) the ranks agree on a stop request; a requested stop waits at most this long."""
DONE_FILE = "PREEMPTED"
"""Written by rank 0 after the checkpoint of a requested stop: the batch script requeues on it."""
LAUNCH_ENV = "DTRAIN_LAUNCH_STARTED"
"""Set by `dtrain launch` for its ranks: the time it started. A marker written after it is that
launch's own stop request (Ctrl-C, SIGTERM), not a stale one; and a stop on request exits 0 so that
torchrun does not restart the group (`dtrain launch` reports the stop with its own exit code)."""
ATTEMPT_ENV = "DTRAIN_ATTEMPT_STARTED"
"""Exported by the sbatch templates when an attempt (a job start or a requeue) begins: a marker the batch
script writes after it (Slurm's USR1 or TERM while the ranks still start up) is this attempt's request."""


def exit_code_of_stop(stop: "Preempted") -> int:
    """What a rank returns after a checkpointed stop on request."""
    if os.environ.get(LAUNCH_ENV):
        return 0
    return 130 if stop.interrupted else EXIT_PREEMPTED


class Preempted(RuntimeError):
    def __init__(self, message: str, interrupted: bool = False):
        super().__init__(message)
        self.interrupted = interrupted
        """Stopped by Ctrl-C (exit 130) rather than another request (75)."""


class StopRequest:
    def __init__(self, run_dir: Path, state: DistState, check_every_s: float = CHECK_EVERY_S):
        self.check_every_s = check_every_s
        self.meetings = 0
        self.marker = Path(run_dir) / MARKER
        self.dist = state
        self.received: str | None = None
        self._previous = {}
        self._next_check = 0
        self._last_check: tuple[int, float] | None = None  # (step, time) of the last meeting
        self._interval = 1  # steps between meetings, as rank 0 last measured (the same on every rank)
        self._local: str | None = None
        self._settled: tuple[int, str | None, bool] | None = None  # (step, outcome, all_written), last meeting
        self.all_written = False
        """Whether every rank passed checkpoint_written=True to this step's meeting (False: no meeting)."""
        # Under torchrun, SIGTERM is the agent stopping its workers (a peer died, a restart is due):
        # that must end the process, not wait for a step boundary that will never come.
        signals = (signal.SIGUSR1,) if state.launcher == "torchrun" else (signal.SIGUSR1, signal.SIGTERM)
        if state.launcher == "single":  # Ctrl-C on `dtrain run`: as on `dtrain launch`, a checkpoint first
            signals += (signal.SIGINT,)
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:  # the second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # os.write, not print: a handler that prints while the loop is printing to the same stream
            # raises "reentrant call" from inside the loop.
            os.write(2, b"\n[dtrain] SIGINT: stopping at the next step boundary with a checkpoint; Ctrl-C again "
                        b"to stop at once\n")

    def clear_stale_marker(self) -> None:
        """Markers left by an earlier attempt are not a request for (or a stop of) this one; a marker
        that `dtrain launch` wrote while the ranks started up is (a Ctrl-C during set-up)."""
        if self.dist.is_main:
            launched = min(float(os.environ.get(key) or "inf") for key in (LAUNCH_ENV, ATTEMPT_ENV))
            try:
                if self.marker.stat().st_mtime < launched:
                    self.marker.unlink(missing_ok=True)
            except OSError:
                pass
            (self.marker.parent / DONE_FILE).unlink(missing_ok=True)

    def agreed(self, device: torch.device, step: int, steps_to_log: int | None = None,
               checkpoint_written: bool = True) -> str | None:
        """After optimizer step `step`: the reason to stop if any rank was asked to, else None. Sets
        `all_written` from every rank's `checkpoint_written` (CheckpointManager.written).

        Collective on the steps all ranks meet on (every rank calls this after every step, with the same
        arguments). A meeting that falls due shortly before a log step waits for it and rides on the log
        line's all-reduce (`vote`/`settle`), so it costs no collective of its own."""
        if not has_group():
            self.all_written = checkpoint_written  # alone, this rank's answer is everyone's
            return self.received or self._marker_reason()
        if self._settled is not None and self._settled[0] == step:
            self.all_written = self._settled[2]
            return self._settled[1]
        self.all_written = False
        if step < self._next_check or (steps_to_log is not None and steps_to_log <= self._interval):
            return None
        return self.settle(step, all_reduce_sum(self.vote(step, checkpoint_written), self.dist).tolist())

    def _marker_reason(self) -> str | None:
        try:
            return self.marker.read_text(encoding="utf-8").strip() or "marker"
        except (OSError, ValueError):
            return None

    def due(self, step: int) -> bool:
        """A meeting is due at `step` (host-side only: every rank gives the same answer)."""
        return has_group() and step >= self._next_check

    def vote(self, step: int, checkpoint_written: bool = True) -> list[float]:
        """This rank's part of a meeting at `step`, to be summed over the ranks:
        [asked to stop, interval, its async checkpoint write still running]."""
        self._local = self.received or self._marker_reason()
        interval = 0.0
        if self.dist.is_main:
            now = time.monotonic()
            if self._last_check is not None:
                rate = (step - self._last_check[0]) / max(now - self._last_check[1], 1e-6)
                interval = max(1.0, min(float(int(rate * self.check_every_s)), 1000.0))
            self._last_check = (step, now)
        # Only rank 0 adds an interval, so the sum is its value on every rank.
        return [1.0 if self._local else 0.0, interval, 0.0 if checkpoint_written else 1.0]

    def settle(self, step: int, summed: list[float]) -> str | None:
        """The meeting's outcome from the summed votes; `agreed(step)` then returns it without a collective."""
        self._interval = max(1, int(summed[1]))
        self._next_check = step + self._interval
        self.meetings += 1
        self.all_written = summed[2] == 0
        self._settled = (step, (self._local or "another rank") if summed[0] > 0 else None, self.all_written)
        return self._settled[1]

    def record_stop(self, step: int) -> None:
        if self.dist.is_main:
            (self.marker.parent / DONE_FILE).write_text(f"{step}\n")

    def done(self) -> None:
        if self.dist.is_main:
            self.marker.unlink(missing_ok=True)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
