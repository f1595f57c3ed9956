"""Classification metrics from a confusion matrix: sum-reducible across ranks, computed once."""

from __future__ import annotations

import torch


def confusion(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true label, columns: predicted label."""
    pred = logits.argmax(-1)
    return torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def report(cm: torch.Tensor, names: list[str]) -> dict:
    cm = cm.double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    return {
        "macro_f1": f1.mean().item(),
        "accuracy": (tp.sum() / cm.sum().clamp(min=1)).item(),
        "per_class": {
            name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                   "support": int(cm[i].sum().item())}
            for i, name in enumerate(names)
        },
        "confusion_matrix": cm.long().tolist(),
    }
