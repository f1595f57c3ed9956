"""`profile: {start: a, steps: n}`: a torch.profiler trace of optimizer steps a .. a+n-1 into the run directory.

The trace is a Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing), one per
profiled rank: <output_dir>/profile/trace_rank<r>_steps<a>-<b>.json.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch

from dtrain.dist import DistState


class StepProfiler:
    def __init__(self, cfg, run_dir: Path, dist: DistState, log: Callable[[str], None] = print):
        self.start, self.steps = cfg.start, cfg.steps
        self.enabled = cfg.start is not None and dist.rank in cfg.ranks
        self.dir = Path(run_dir) / "profile"
        self.dist, self.log = dist, log
        self._prof = None
        self._first = None

    def step(self, step: int) -> ContextManager:
        """Around optimizer step `step` (counted from 1)."""
        return self._step(step) if self.enabled else contextlib.nullcontext()

    @contextlib.contextmanager
    def _step(self, step: int) -> Iterator[None]:
        if self._prof is None and self.start <= step < self.start + self.steps:
            # From `start`, or from the first step of a run resumed inside the window.
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.dist.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True)
            self._prof.__enter__()
            self._first = step
        if self._prof is None:
            yield
            return
        with torch.profiler.record_function(f"dtrain_step_{step}"):
            yield
        if step >= self.start + self.steps - 1:
            self._finish(step)

    def _finish(self, last: int) -> None:
        prof, self._prof = self._prof, None
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)
        prof.__exit__(None, None, None)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"trace_rank{self.dist.rank}_steps{self._first}-{last}.json"
        prof.export_chrome_trace(str(path))
        self.enabled = False  # once per process
        self.log(f"profiler trace of steps {self._first}-{last}: {path}")

    def close(self, step: int) -> None:
        """A run that ends inside the window still writes what it recorded."""
        if self._prof is not None:
            self._finish(step)
