"""`dtrain plot RUN_DIR [RUN_DIR ...]`: PNGs of loss, lr and every evaluation metric against step.

One figure per quantity; several run directories share each figure (one line per run), so runs can
be compared. Reads only metrics.jsonl. matplotlib (Agg, no display) is imported here, not before.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TRAIN_KEYS = ("loss", "lr", "samples_per_s", "grad_norm")
SKIP = {"step", "epoch", "time", "kind"}


class PlotError(ValueError):
    """Nothing to plot: a directory without metrics.jsonl, or one without train/eval records."""


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path} does not exist: give a run directory (the output_dir of a run)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return rows


def series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """'train/loss', 'eval/accuracy', ... -> (steps, values), numbers only."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        kind = r.get("kind", "train")
        if kind not in ("train", "eval") or "step" not in r:
            continue
        for k, v in r.items():
            if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if kind == "train" and k not in TRAIN_KEYS:
                continue
            xs, ys = out.setdefault(f"{kind}/{k}", ([], []))
            xs.append(r["step"])
            ys.append(v)
    return out


def plot_runs(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write one PNG per quantity into out_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(d): series(read_metrics(d)) for d in run_dirs}
    names = sorted({name for s in runs.values() for name in s})
    if not names:
        raise PlotError(f"no train or eval records in {', '.join(str(d) for d in run_dirs)}: nothing to plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        fig, ax = plt.subplots(figsize=(7, 4))
        for run_dir, s in runs.items():
            if name in s:
                xs, ys = s[name]
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=run_dir.resolve().name)
        ax.set_xlabel("step")
        ax.set_ylabel(name.split("/", 1)[1])
        ax.set_title(name)
        if name == "train/lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("/", "_")) + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
