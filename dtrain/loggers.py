"""Metric sinks. Only rank 0 writes; other ranks get a logger that drops everything.

metrics.jsonl is always written; wandb and TensorBoard when the config's `logging` section asks for
them (imported only then). The console is a progress bar or plain lines (dtrain/progress.py).
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dtrain.progress import Console

WANDB_ID_FILE = "wandb_run_id"


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("time", "step")}


class WandbSink:
    """One wandb run per run directory: its id is kept in <run_dir>/wandb_run_id, so a restarted or requeued
    job (same output_dir) resumes the same run instead of starting a new one."""

    def __init__(self, run_dir: Path, cfg, config: dict):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.run_name or run_dir.resolve().name,
            id=run_id, resume="allow", config=config, tags=list(cfg.tags), dir=str(run_dir),
        )
        # Our own step as the x axis: after a resume, steps past the checkpoint are logged again, which
        # wandb's internal step (monotonic) would drop.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, kind: str, record: dict[str, Any]) -> None:
        data = {f"{kind}/{k}": v for k, v in _scalars(record).items()}
        if "step" in record:
            data["step"] = record["step"]
        self.run.log(data)

    def close(self) -> None:
        self.run.finish()


class TensorBoardSink:
    def __init__(self, run_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        # purge_step: a resumed run drops the events after its checkpoint, as metrics.jsonl does.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, kind: str, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        for k, v in _scalars(record).items():
            self.writer.add_scalar(f"{kind}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricsLogger:
    """metrics.jsonl (one JSON object per record), the console, and the sinks the config chose."""

    def __init__(self, run_dir: Path, enabled: bool, stream: TextIO = sys.stdout, *, logging_cfg=None,
                 run_config: dict | None = None, total_steps: int | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.console = Console(stream, logging_cfg.progress if logging_cfg else "lines", total_steps)
        self.cfg, self.run_config = logging_cfg, run_config or {}
        self._file = None  # opened on first write, after a resume has truncated the file
        self._sinks: list | None = None  # opened on first write too (wandb takes seconds to start)
        self._resumed_at: int | None = None
        if enabled and logging_cfg is not None:
            # Sinks open at the first record; a missing package should stop the run before training, not then.
            for on, module, extra in ((logging_cfg.wandb, "wandb", "wandb"), (logging_cfg.tensorboard, "tensorboard", "tensorboard")):
                if on and importlib.util.find_spec(module) is None:
                    raise RuntimeError(f"logging.{module}=true needs the {module} package: "
                                       f"pip install 'dtrain[{extra}]', or set logging.{module}=false")

    def _open_sinks(self) -> list:
        sinks = []
        if self.cfg is not None and self.cfg.wandb:
            sinks.append(WandbSink(self.run_dir, self.cfg, self.run_config))
        if self.cfg is not None and self.cfg.tensorboard:
            sinks.append(TensorBoardSink(self.run_dir, self._resumed_at))
        return sinks

    def log(self, record: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **record}
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._sinks is None:
            self._sinks = self._open_sinks()
        for sink in self._sinks:
            sink.log(kind, record)
        self.console.record(kind, record)

    def tick(self, step: int) -> None:
        if self.enabled:
            self.console.tick(step)

    def info(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[dtrain] {message}")

    def start_fresh(self) -> None:
        """A start with no checkpoint to resume: records of an earlier attempt that died before its
        first checkpoint are all logged again, so drop them (metrics.jsonl never repeats a step)."""
        self.resumed_at(-1)

    def resumed_at(self, step: int) -> None:
        """Records after the checkpoint's step will be logged again: drop them from every sink."""
        if self.enabled:
            truncate_after(self.path, step)
            self._resumed_at = step + 1

    def close(self) -> None:
        self.console.close()
        if self._file:
            self._file.close()
            self._file = None
        for sink in self._sinks or []:
            sink.close()
        self._sinks = None


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
