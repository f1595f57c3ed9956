"""Abstention: below a confidence threshold chosen on the validation split, a ticket goes to a person.

The threshold is the lowest one that meets the user's target on the validation split (its out-of-scope
tickets included), so as many tickets as possible are routed. It is judged on the test split, written to
RUN_DIR/test_report.json ("abstain") beside the checkpoint it belongs to, and drawn as a trade-off curve
(abstain.md, abstain.png).
`dtrain export` carries it into the exported model; `dtrain predict` answers needs_review below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recipes.ticket_router.metrics import BINS, CURVE_THRESHOLDS, choose_threshold, curve, point

NEEDS_REVIEW = "needs_review"


@dataclass(kw_only=True)
class Abstain:
    """task.abstain: state one target; the threshold is chosen on the validation split to meet it."""

    min_oos_recall: float | None = None
    """Send at least this share of the out-of-scope tickets to a person (needs task.out_of_scope)."""
    max_misrouted: float | None = None
    """Let at most this share of the routed tickets reach a wrong team."""
    top_k: int = 3
    """Candidates (label and confidence) shown with each ticket sent to a person."""

    def check(self, out_of_scope: str | None) -> list[str]:
        bad = []
        targets = [k for k in ("min_oos_recall", "max_misrouted") if getattr(self, k) is not None]
        if len(targets) != 1:
            bad.append("task.abstain: state exactly one target, task.abstain.min_oos_recall or "
                       f"task.abstain.max_misrouted (got {', '.join(targets) or 'neither'})")
        for key in targets:
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad.append(f"task.abstain.{key}: a share between 0 and 1, got {getattr(self, key)}")
        if self.min_oos_recall is not None and out_of_scope is None:
            bad.append("task.abstain.min_oos_recall: needs task.out_of_scope, the label of tickets that fit no "
                       "team (e.g. task.out_of_scope=oos); or use task.abstain.max_misrouted")
        if self.top_k < 1:
            bad.append(f"task.abstain.top_k: must be >= 1, got {self.top_k}")
        return bad

    def target(self) -> dict:
        if self.min_oos_recall is not None:
            return {"min_oos_recall": self.min_oos_recall}
        return {"max_misrouted": self.max_misrouted}


def calibrate(val: torch.Tensor, test: torch.Tensor, cfg: Abstain) -> dict:
    """Choose the threshold on `val` counts (metrics.confidence_counts), judge it on `test`."""
    val, test = val.cpu(), test.cpu()  # off the device once: many small reductions follow
    k = choose_threshold(val, **cfg.target())
    return {"threshold": k / BINS, "target": cfg.target(), "top_k": cfg.top_k,
            "val": point(val, k).row(), "test": point(test, k).row(),
            "curve_thresholds": [t / BINS for t in CURVE_THRESHOLDS],
            "curve_val": curve(val, CURVE_THRESHOLDS), "curve_test": curve(test, CURVE_THRESHOLDS)}


def write_report(result: dict, out_dir: Path) -> None:
    """abstain.md (the trade-off table) and abstain.png (the curve); the threshold itself goes into
    test_report.json ("abstain"), beside the checkpoint it belongs to: serving reads it there."""
    (out_dir / "abstain.md").write_text(table(result), encoding="utf-8")
    try:
        draw(result, out_dir / "abstain.png")
    except ImportError:  # matplotlib is the optional dtrain[plot]; the table says the same
        pass


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(result: dict) -> str:
    target = ", ".join(f"{k} {v}" for k, v in result["target"].items())
    lines = [f"Abstention on the test split; threshold {result['threshold']:.3f} chosen on the validation split "
             f"for {target}.", "",
             "| threshold | routed accuracy % | sent to a person % | in-scope accuracy % | out-of-scope recall % |",
             "| --- | --- | --- | --- | --- |"]
    rows = sorted(result["curve_test"] + [{**result["test"], "chosen": True}], key=lambda r: r["threshold"])
    for r in rows:
        mark = " **(chosen)**" if r.get("chosen") else ""
        lines.append(f"| {r['threshold']:.3f}{mark} | {_pct(r['routed_accuracy'])} | {_pct(r['review_share'])} | "
                     f"{_pct(r['in_scope_accuracy'])} | {_pct(r['oos_recall'])} |")
    return "\n".join(lines) + "\n"


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for split, style in (("curve_val", "--"), ("curve_test", "-")):
        rows = result[split]
        ax.plot([100 * r["review_share"] for r in rows], [100 * r["routed_accuracy"] for r in rows], style,
                marker="o", markersize=3, label=split.split("_")[1])
    chosen = result["test"]
    ax.plot([100 * chosen["review_share"]], [100 * chosen["routed_accuracy"]], "r*", markersize=12,
            label=f"chosen threshold {result['threshold']:.3f}")
    ax.set_xlabel("tickets sent to a person (%)")
    ax.set_ylabel("accuracy of routed tickets (%)")
    ax.set_title("Routing accuracy vs share sent to a person")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
