"""Rank 0's console: a one-line progress bar on a terminal, plain lines everywhere else (Slurm logs, pipes).

The bar redraws at most a few times a second from host-side counters; loss, lr and throughput on it
are those of the last log line, so drawing it never waits for the device.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any, TextIO

REDRAW_S = 0.2


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) and abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def line_of(kind: str, record: dict[str, Any]) -> str:
    shown = " ".join(f"{k}={fmt(v)}" for k, v in record.items()
                     if k not in ("time", "kind") and not isinstance(v, (list, dict)))
    return f"[{kind}] {shown}"


class Console:
    def __init__(self, stream: TextIO, mode: str, total_steps: int | None = None):
        tty = hasattr(stream, "isatty") and stream.isatty()
        self.stream = stream
        self.bar = mode == "bar" or (mode == "auto" and tty)
        self.total_steps = total_steps
        self._last: dict[str, Any] = {}
        self._drawn = False
        self._last_draw = 0.0
        self._first: tuple[int, float] | None = None  # (step, time) of the first tick: ETA leaves start-up out
        self._step = 0

    def record(self, kind: str, record: dict[str, Any]) -> None:
        if self.bar and kind == "train":
            self._last = record
            self._draw(force=True)
        else:
            self.print(line_of(kind, record))

    def print(self, text: str) -> None:
        if self._drawn:  # a message goes above the bar, which is then drawn again below it
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()
        if self._drawn:
            self._draw(force=True)

    def tick(self, step: int) -> None:
        """After each optimizer step (host-side only)."""
        self._step = step
        if self._first is None:
            self._first = (step, time.perf_counter())
        if self.bar:
            self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < REDRAW_S:
            return
        self._last_draw = now
        total, step = self.total_steps, self._step
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        if total:
            width = 20
            done = int(width * min(step / total, 1.0))
            parts.append("[" + "#" * done + "." * (width - done) + "]")
        r = self._last
        for key, label in (("loss", "loss"), ("lr", "lr"), ("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s")):
            if key in r:
                parts.append(f"{label} {fmt(r[key])}")
        if total and self._first and step > self._first[0]:
            rate = (step - self._first[0]) / (now - self._first[1])
            parts.append(f"ETA {_duration((total - step) / rate)}")
        text = " ".join(parts)[: shutil.get_terminal_size((120, 20)).columns - 1]
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
