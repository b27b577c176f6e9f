"""Training-free crack maps: the floors a learned map must beat (no weights, no training).

Each follows the model contract, x [B,3,H,W] in [0,1] → (logits [B], heatmap [B,1,H,W] in [0,1]),
so the same tiling, scoring and export code runs them. Their sizes are relative to the
expected crack width `ModelConfig.crack_width` (px at the model's input scale), not tuned to
one data set:

- `darkness`: 1 − grey level (strong on wide dark cracks).
- `blackhat`: multi-scale morphological black-hat (grey closing − image) with square windows
  of 1.5, 2.25 and 3 crack widths (7, 11, 15 px at the default width 5).
- `ridge`: a Sato-style Hessian ridge filter for dark lines: max over σ of σ²·λ_max(H_σ),
  σ = 0.25, 0.5, 0.75 crack widths.
- `blackhat_ridge_shape`: √(black-hat · ridge), then a shape filter that keeps long thin
  connected components at full strength and damps the rest (blobs, specks) by `SHAPE_DAMPING`.

Maps are absolute (1 − exp(−response / τ)), not normalised per tile, so tiles stitch without
seams and a crack-free tile stays dark. The crack probability of a tile is its strongest
evidence: sigmoid(logits) = max of the map. The image operations themselves are in
`crackloc.imageops`; this module holds the floors' own constants and the shape filter.
"""

from __future__ import annotations

import numpy as np
import torch

from crackloc.config import ModelConfig
from crackloc.imageops import blackhat_response, grey, ridge_evidence
from crackloc.imageops.morphology import component_spans
from crackloc.models.base import LocalizationModel
from crackloc.models.registry import register

TAU_BLACKHAT = 0.15  # contrast (grey levels in [0,1]) at which the map reaches 1 − 1/e
SHAPE_LEVEL = 0.5  # components are cut from the map at this level (chosen on CrackForest dev images)
SHAPE_MIN_LENGTH = 4.0  # a kept component spans at least this many crack widths ...
SHAPE_MAX_MEAN_WIDTH = 3.0  # ... and is at most this many crack widths wide on average
SHAPE_DAMPING = 0.25  # map values outside kept components are multiplied by this


def keep_thin_components(heat: torch.Tensor, *, width: float) -> torch.Tensor:
    """Damp map regions that are not long thin connected components: [B,1,H,W] → [B,1,H,W].

    Components of `heat ≥ SHAPE_LEVEL` (8-connected) are kept when their bounding-box diagonal
    is ≥ SHAPE_MIN_LENGTH crack widths and area / diagonal ≤ SHAPE_MAX_MEAN_WIDTH crack widths.
    """
    keep = torch.zeros_like(heat, dtype=torch.bool)
    for b, level in enumerate((heat >= SHAPE_LEVEL).cpu().numpy()[:, 0]):  # [H,W] bool each
        labels, diag, area = component_spans(level)  # [H,W], [n+1], [n+1]
        if len(diag) == 1:
            continue
        good = np.zeros(len(diag), bool)
        good[1:] = (diag[1:] >= SHAPE_MIN_LENGTH * width) & (area[1:] / diag[1:] <= SHAPE_MAX_MEAN_WIDTH * width)
        keep[b, 0] = torch.from_numpy(good[labels]).to(heat.device)
    return torch.where(keep, heat, heat * SHAPE_DAMPING)


class TrainingFreeMap(LocalizationModel):
    """An image filter as a localisation model: no parameters, nothing to train."""

    trainable = False
    kind = "darkness"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.cfg = cfg
        self.width = float(cfg.crack_width)

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in [0,1] → heatmap [B,1,H,W] in [0,1]."""
        return 1.0 - grey(x.float())

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # filters run in fp32 whatever the caller's precision
            heat = self.heat(x.float()).clamp(0.0, 1.0)  # [B,1,H,W]
        strongest = heat.flatten(1).amax(dim=1).clamp(1e-4, 1 - 1e-4)  # [B]
        return torch.logit(strongest), heat


class BlackHatMap(TrainingFreeMap):
    """Multi-scale morphological black-hat."""

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.exp(-blackhat_response(grey(x.float()), width=self.width) / TAU_BLACKHAT)


class RidgeMap(TrainingFreeMap):
    """Sato-style multi-scale Hessian ridge filter for dark lines."""

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        return ridge_evidence(grey(x.float()), width=self.width)


class BlackHatRidgeShapeMap(TrainingFreeMap):
    """√(black-hat · ridge), then the long-thin-component shape filter."""

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        g = grey(x.float())
        bh = 1.0 - torch.exp(-blackhat_response(g, width=self.width) / TAU_BLACKHAT)
        rg = ridge_evidence(g, width=self.width)
        return keep_thin_components(torch.sqrt(bh * rg), width=self.width)


@register("darkness")
def build_darkness(cfg: ModelConfig) -> TrainingFreeMap:
    """Floor: 1 − grey level."""
    return TrainingFreeMap(cfg)


@register("blackhat")
def build_blackhat(cfg: ModelConfig) -> BlackHatMap:
    """Floor: multi-scale morphological black-hat (windows of 1.5, 2.25, 3 crack widths)."""
    return BlackHatMap(cfg)


@register("ridge")
def build_ridge(cfg: ModelConfig) -> RidgeMap:
    """Floor: multi-scale Hessian ridge filter (Sato-style) for dark lines."""
    return RidgeMap(cfg)


@register("blackhat_ridge_shape")
def build_blackhat_ridge_shape(cfg: ModelConfig) -> BlackHatRidgeShapeMap:
    """Floor: black-hat × ridge with a long-thin-component shape filter."""
    return BlackHatRidgeShapeMap(cfg)
