"""Hang watchdog: a job whose step or collective makes no progress ends with a report, not a silent hang.

The loop calls `beat(step, micro, phase)` as it goes (an assignment, no I/O, no collective). A thread
on every rank checks the time since the last beat; past the limit it
  1. writes every thread's Python stack (faulthandler) to <run_dir>/hang/stack_rank<r>.txt,
  2. writes where it stood (step, micro-batch, phase) to <run_dir>/hang/rank<r>.json,
  3. waits briefly for the other ranks' files and writes <run_dir>/hang_report.json naming the ranks
     that are behind the furthest one: those never reached the collective the others wait in,
  4. prints one line and exits with EXIT_HANG (torchrun then stops or restarts the group).
Ranks stuck in a collective release the GIL, and so does a rank that sleeps or waits on I/O, so every
such rank's thread runs. A rank that wrote nothing is reported as silent (dead, or holding the GIL).
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from dtrain.dist import DistState

EXIT_HANG = 124
"""Exit code of a rank stopped by the watchdog (as `timeout` uses)."""

PHASES = ("start", "data", "forward", "backward", "optimizer", "log", "eval", "checkpoint", "end")
# What may legitimately take long gets `slow_limit_s`: start-up and the first step of a process
# (cold caches, NCCL set-up - torchtitan's generous-then-tight habit), big writes, and every
# torch.compile (see `watch_compiles`), which may come at any step.
SLOW_PHASES = {"start", "checkpoint"}


class Watchdog:
    def __init__(self, run_dir: Path, dist: DistState, timeout_s: float | None, slow_limit_s: float,
                 grace_s: float = 10.0, watch_compiles: bool = False):
        self.dir = Path(run_dir) / "hang"
        self.report_path = Path(run_dir) / "hang_report.json"
        self.dist, self.timeout_s, self.slow_limit_s, self.grace_s = dist, timeout_s, slow_limit_s, grace_s
        self._where = (0, 0, "start")
        self._first_step: int | None = None
        self._warm = False
        self._compiling = False
        # Dynamo compiles when a frame is first called, so not only at the first step: recompiles for
        # a new batch shape (a short last batch, variable-length text) or evaluation's inference mode
        # come later, and a max-autotune compile of a real model outlasts the warm limit.
        self._watch_compiles = watch_compiles
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, step: int, micro: int, phase: str) -> None:
        self._where = (step, micro, phase)
        self._last = time.monotonic()
        if not self._warm:
            if self._first_step is None:
                self._first_step = step
            self._warm = step > self._first_step

    def start(self) -> "Watchdog":
        if self.dist.is_main and self.dir.is_dir():
            # An earlier attempt's hang (before an elastic restart or a rerun): keep it, out of the way.
            old = self.dir.with_name(f"hang-{int(self.dir.stat().st_mtime)}")
            os.replace(self.dir, old)
            if self.report_path.is_file():
                os.replace(self.report_path, old / self.report_path.name)
        if self.timeout_s:
            self._last = time.monotonic()
            if self._watch_compiles:
                from torch._dynamo.callback import callback_handler

                callback_handler.register_start_callback(self._compile_started)
                callback_handler.register_end_callback(self._compile_ended)
            self._thread = threading.Thread(target=self._watch, name="dtrain-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._watch_compiles:
            from torch._dynamo.callback import callback_handler

            for callbacks, fn in ((callback_handler.start_callbacks, self._compile_started),
                                  (callback_handler.end_callbacks, self._compile_ended)):
                if fn in callbacks:  # torch._dynamo.reset() clears them
                    callbacks.remove(fn)

    # Dynamo calls these (nested compiles once) on the thread that compiles. The clock restarts at each:
    # the compile's start and end are progress, and the step after a long compile starts afresh.
    def _compile_started(self, *_) -> None:
        self._last = time.monotonic()
        self._compiling = True

    def _compile_ended(self, *_) -> None:
        self._last = time.monotonic()  # before the flag: the thread must not see the warm limit and the old clock
        self._compiling = False

    def _limit(self) -> float:
        slow = self._where[2] in SLOW_PHASES or not self._warm or self._compiling
        return max(self.timeout_s, self.slow_limit_s) if slow else self.timeout_s

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(poll):
            limit = self._limit()  # before the clock is read (see _compile_ended)
            idle = time.monotonic() - self._last
            if idle > limit:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        r = self.dist.rank
        step, micro, phase = self._where
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"stack_rank{r}.txt", "w") as f:
                f.write(f"rank {r} on {socket.gethostname()} pid {os.getpid()}: no progress for {idle:.1f}s "
                        f"at step {step}, micro-batch {micro}, phase {phase}\n\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
            mine = {"rank": r, "host": socket.gethostname(), "pid": os.getpid(), "step": step, "micro": micro,
                    "phase": phase, "idle_s": round(idle, 1)}
            _write_json(self.dir / f"rank{r}.json", mine)
            report = self._report(self._collect())
            _write_json(self.report_path, report)
            summary = report["summary"]
        except OSError as exc:  # a broken run directory must not stop us from exiting
            summary = f"no progress for {idle:.0f}s at step {step} ({phase}); report not written: {exc}"
        print(f"dtrain: error: hang (rank {r}): {summary}", file=sys.stderr, flush=True)
        os._exit(EXIT_HANG)

    def _collect(self) -> dict[int, dict]:
        """The rank files that appear within the grace period (all ranks fire within about a poll)."""
        deadline = time.monotonic() + self.grace_s
        while True:
            found = {}
            for p in self.dir.glob("rank*.json"):
                try:
                    d = json.loads(p.read_text())
                    found[d["rank"]] = d
                except (OSError, ValueError, KeyError):
                    continue  # being written
            if len(found) >= self.dist.world_size or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def _report(self, ranks: dict[int, dict]) -> dict:
        key = lambda d: (d["step"], d["micro"], PHASES.index(d["phase"]))  # noqa: E731
        furthest = max(ranks.values(), key=key)
        behind = sorted(r for r, d in ranks.items() if key(d) < key(furthest))
        silent = sorted(set(range(self.dist.world_size)) - set(ranks))
        where = lambda d: f"step {d['step']} micro-batch {d['micro']} {d['phase']}"  # noqa: E731
        if behind or silent:
            parts = []
            if behind:
                parts.append(f"rank(s) {behind} never reached the point rank {furthest['rank']} waits at "
                             f"({where(furthest)}); they stand at "
                             + ", ".join(f"{r}: {where(ranks[r])}" for r in behind))
            if silent:
                parts.append(f"rank(s) {silent} wrote nothing (dead, or holding the GIL)")
            summary = "; ".join(parts)
        else:
            summary = f"all {len(ranks)} rank(s) stalled at {where(furthest)} (a deadlock, or a data source that never returns)"
        return {
            "summary": f"no progress for {self.timeout_s:g}s: {summary}; stacks in {self.dir}",
            "stuck_ranks": behind + silent,
            "behind": behind,
            "silent": silent,
            "ranks": [ranks[r] for r in sorted(ranks)],
            "timeout_s": self.timeout_s,
        }


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
