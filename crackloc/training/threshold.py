"""The decision threshold of a trained model, chosen on its validation split (never on test)."""

from __future__ import annotations

import torch


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The probability threshold that maximises F1 (ties → the one closest to 0.5)."""
    candidates = torch.unique(torch.cat([probs, torch.tensor([0.5])]))
    pos = labels > 0.5
    best, best_key = 0.5, (-1.0, 0.0)
    for t in candidates.tolist():
        pred = probs >= t
        tp = float((pred & pos).sum())
        f1 = 2 * tp / max(float(pred.sum()) + float(pos.sum()), 1.0)
        key = (round(f1, 12), -abs(t - 0.5))
        if key > best_key:
            best, best_key = t, key
    return float(best)
