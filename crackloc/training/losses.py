"""Losses of the training loop: the paper's BCE + λ·L1 and stage 2's pixel BCE + Dice with ignore."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crackloc.data.dataset import PIXEL_IGNORE as IGNORE  # the refinement's uncertain band


def pixel_loss(map_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the pixels that are not IGNORE: map logits [B,1,S,S], labels [B,1,S,S].

    Dice is computed over the whole batch (crack-free patches add only background), so a batch
    without any crack pixel still has a defined, small Dice term.
    """
    valid = targets != IGNORE  # [B,1,S,S]
    y = (targets == 1).float()
    logits = map_logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp(min=1)
    p = torch.sigmoid(logits) * valid
    inter = (p * y).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + (y * valid).sum() + 1)
    return bce + dice
