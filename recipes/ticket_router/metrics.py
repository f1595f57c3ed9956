"""Classification metrics from sums that reduce across ranks: a confusion matrix, and counts of tickets by
confidence for abstention (send to a person below a threshold). Computed once, from the reduced sums."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BINS = 1000
"""Confidence resolution for abstention: thresholds are multiples of 1/BINS."""
# Columns of confidence_counts: how each ticket would fare if routed at its confidence.
RIGHT, WRONG, IN_AS_OOS, OOS_AS_OOS, OOS_ROUTED = range(5)


def confusion(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true label, columns: predicted label."""
    pred = logits.argmax(-1)
    return torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def confidence_counts(logits: torch.Tensor, labels: torch.Tensor, oos: int | None) -> torch.Tensor:
    """[BINS, 5] counts: tickets by the confidence of their top label (softmax) and by outcome (the columns
    above). Summed over batches and ranks, they give every threshold's outcome exactly (to 1/BINS)."""
    conf, pred = logits.float().softmax(-1).max(-1)
    bins = (conf * BINS).long().clamp(0, BINS - 1)
    if oos is None:
        outcome = torch.where(pred == labels, RIGHT, WRONG)
    else:
        true_oos, pred_oos = labels == oos, pred == oos
        in_scope = torch.where(pred == labels, RIGHT, torch.where(pred_oos, IN_AS_OOS, WRONG))
        outcome = torch.where(true_oos, torch.where(pred_oos, OOS_AS_OOS, OOS_ROUTED), in_scope)
    return torch.bincount(bins * 5 + outcome, minlength=BINS * 5).view(BINS, 5)


def report(cm: torch.Tensor, names: list[str], oos: int | None = None,
           domains: dict[str, list[str]] | None = None) -> dict:
    """Macro-F1 and accuracy over all labels; with an out-of-scope label also in-scope accuracy and the
    out-of-scope label's recall and precision; with domains ({domain: [labels]}) accuracy per domain."""
    cm = cm.double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    out = {"macro_f1": f1.mean().item(), "accuracy": (tp.sum() / cm.sum().clamp(min=1)).item()}
    if oos is not None:
        keep = torch.ones(len(names), dtype=torch.bool)
        keep[oos] = False
        out["in_scope_accuracy"] = (tp[keep].sum() / cm[keep].sum().clamp(min=1)).item()
        out["oos_recall"], out["oos_precision"] = recall[oos].item(), precision[oos].item()
    if domains:
        index = {name: i for i, name in enumerate(names)}
        out["per_domain_accuracy"] = {
            domain: round((tp[rows].sum() / cm[rows].sum().clamp(min=1)).item(), 4)
            for domain, labels in domains.items() if (rows := [index[x] for x in labels if x in index])
        }
    out["per_class"] = {
        name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
               "support": int(cm[i].sum().item())}
        for i, name in enumerate(names)
    }
    out["confusion_matrix"] = cm.long().tolist()
    return out


# ------------------------------------------------------------------------------------------ abstention


@dataclass
class Point:
    """Outcome of routing only the tickets with confidence >= threshold (the rest go to a person)."""

    threshold: float
    routed_accuracy: float
    """Share of routed tickets that went to the right team."""
    review_share: float
    """Share of all tickets sent to a person (below the threshold, or predicted out of scope)."""
    misrouted: float
    """Share of routed tickets that went to a wrong team (1 - routed_accuracy)."""
    in_scope_accuracy: float | None
    """Share of in-scope tickets routed to their team (one sent to a person counts as wrong)."""
    oos_recall: float | None
    """Share of out-of-scope tickets sent to a person."""

    def row(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def point(counts: torch.Tensor, k: int) -> Point:
    """The outcome at threshold k / BINS."""
    c = counts.double()
    above = c[k:].sum(0)
    total, n_oos = c.sum().item(), c[:, OOS_AS_OOS].sum().item() + c[:, OOS_ROUTED].sum().item()
    n_in = total - n_oos
    routed = (above[RIGHT] + above[WRONG] + above[OOS_ROUTED]).item()
    right = above[RIGHT].item()
    return Point(
        threshold=k / BINS,
        routed_accuracy=right / routed if routed else 1.0,
        review_share=1.0 - routed / total if total else 0.0,
        misrouted=1.0 - right / routed if routed else 0.0,
        in_scope_accuracy=right / n_in if n_in else None,
        oos_recall=(n_oos - above[OOS_ROUTED].item()) / n_oos if n_oos else None,
    )


def choose_threshold(counts: torch.Tensor, *, min_oos_recall: float | None = None,
                     max_misrouted: float | None = None) -> int:
    """The lowest threshold (in 1/BINS) that meets the target on these counts: the most tickets routed.
    BINS (route nothing) when no lower one does."""
    for k in range(BINS + 1):
        p = point(counts, k)
        if min_oos_recall is not None and (p.oos_recall is None or p.oos_recall >= min_oos_recall):
            return k
        if max_misrouted is not None and p.misrouted <= max_misrouted:
            return k
    return BINS


def curve(counts: torch.Tensor, thresholds: list[int]) -> list[dict]:
    return [point(counts, k).row() for k in thresholds]


CURVE_THRESHOLDS = [0, 100, 200, 300, 400, 500, 600, 700, 800, 850, 900, 950, 970, 990]
