"""Metric sinks. Only rank 0 writes; other ranks get a logger that drops everything."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) and abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


class MetricsLogger:
    """metrics.jsonl (one JSON object per record) plus a one-line summary on stdout."""

    def __init__(self, run_dir: Path, enabled: bool, stream: TextIO = sys.stdout):
        self.enabled = enabled
        self.stream = stream
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None  # opened on first write, after a resume has truncated the file

    def log(self, record: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **record}
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        shown = " ".join(
            f"{k}={_fmt(v)}" for k, v in record.items() if k not in ("time", "kind") and not isinstance(v, (list, dict))
        )
        print(f"[{kind}] {shown}", file=self.stream, flush=True)

    def info(self, message: str) -> None:
        if self.enabled:
            print(f"[dtrain] {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint's step: they will be logged again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut short by a crash
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
