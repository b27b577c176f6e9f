"""AHR: adaptive heatmap refinement (paper eq. 4–5) of a CAM (see `crackloc.models.heads`)."""

from __future__ import annotations

import torch
from torch import nn

from crackloc.models.base import minmax_normalize


def percentile_threshold(cam: torch.Tensor, q: float) -> torch.Tensor:
    """Per-image q-th percentile of a map: [B,1,h,w] → [B,1,1,1]."""
    return torch.quantile(cam.flatten(1).float(), q / 100.0, dim=1).view(-1, 1, 1, 1)


def normalize_heatmap(cam: torch.Tensor, *, mode: str, threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Map a CAM [B,1,h,w] to [0,1], optionally zeroing values below a per-image threshold.

    `max`: (cam − T)₊ / max (or min-max without T), so every image's peak is 1.
    `sigmoid`: σ(cam) where cam ≥ T, else 0: absolute, so a crack-free image can stay dark.
    """
    cam = cam.float()
    if mode == "sigmoid":
        heat = torch.sigmoid(cam)
        return heat if threshold is None else heat * (cam >= threshold).float()
    if threshold is None:
        return minmax_normalize(cam)
    kept = torch.relu(cam - threshold)  # [B,1,h,w]
    return kept / (kept.flatten(1).max(dim=1).values.view(-1, 1, 1, 1) + 1e-6)


class AdaptiveHeatmapRefinement(nn.Module):
    """A = σ(Conv1x1(F)); F·A feeds the classifier; CAM(F·A) is cut at its per-image percentile."""

    def __init__(self, channels: int, *, percentile: float = 90.0, norm: str = "max") -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, 1, kernel_size=1)
        self.percentile = percentile
        self.norm = norm

    def attend(self, feats: torch.Tensor) -> torch.Tensor:
        """F [B,C,h,w] → F·A [B,C,h,w] (noise suppression, eq. 4)."""
        return feats * torch.sigmoid(self.attention(feats))  # [B,C,h,w] * [B,1,h,w]

    def refine(self, cam: torch.Tensor) -> torch.Tensor:
        """CAM [B,1,h,w] → heatmap [B,1,h,w] in [0,1] kept above the percentile T (eq. 5)."""
        return normalize_heatmap(cam, mode=self.norm, threshold=percentile_threshold(cam, self.percentile))
