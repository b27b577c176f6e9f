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
evidence: sigmoid(logits) = max of the map.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from crackloc.config import ModelConfig
from crackloc.models.base import LocalizationModel
from crackloc.models.registry import register

LUMA = (0.299, 0.587, 0.114)
BLACKHAT_WINDOWS = (1.5, 2.25, 3.0)  # window sides, in crack widths
RIDGE_SIGMAS = (0.25, 0.5, 0.75)  # Gaussian scales, in crack widths
TAU_BLACKHAT = 0.15  # contrast (grey levels in [0,1]) at which the map reaches 1 − 1/e
TAU_RIDGE = 0.05
SHAPE_LEVEL = 0.5  # components are cut from the map at this level (chosen on CrackForest dev images)
SHAPE_MIN_LENGTH = 4.0  # a kept component spans at least this many crack widths ...
SHAPE_MAX_MEAN_WIDTH = 3.0  # ... and is at most this many crack widths wide on average
SHAPE_DAMPING = 0.25  # map values outside kept components are multiplied by this


def grey(x: torch.Tensor) -> torch.Tensor:
    """RGB [B,3,H,W] in [0,1] → luminance [B,1,H,W]."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _odd(size: float) -> int:
    return max(3, int(round(size)) // 2 * 2 + 1)


def _axis_max(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Centred running max of odd width `size` along `dim` of [B,1,H,W], edges replicated.

    Sparse-table doubling: log2(size) whole-tensor maxima instead of `size` comparisons a pixel.
    """
    pad = size // 2
    n = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    cur = torch.cat([first.expand_as(x.narrow(dim, 0, pad)) if pad else first[:0], x,
                     last.expand_as(x.narrow(dim, 0, pad)) if pad else last[:0]], dim=dim)  # [.., n + 2·pad]
    span = 1
    while span * 2 <= size:  # cur[i] = max of the padded input over [i, i + span)
        cur = torch.maximum(cur.narrow(dim, 0, cur.shape[dim] - span), cur.narrow(dim, span, cur.shape[dim] - span))
        span *= 2
    return torch.maximum(cur.narrow(dim, 0, n), cur.narrow(dim, size - span, n))


def _square_max(g: torch.Tensor, size: int) -> torch.Tensor:
    """Max over a size×size window (a row pass, then a column pass), edges replicated: [B,1,H,W]."""
    return _axis_max(_axis_max(g, size, 2), size, 3)


def grey_closing(g: torch.Tensor, size: int) -> torch.Tensor:
    """Flat square grey closing (dilation, then erosion) of [B,1,H,W], edges replicated."""
    return -_square_max(-_square_max(g, size), size)


def blackhat_response(g: torch.Tensor, *, width: float) -> torch.Tensor:
    """Max over windows of closing(g) − g: [B,1,H,W] → [B,1,H,W] ≥ 0 (grey-level contrast)."""
    return torch.stack([grey_closing(g, _odd(k * width)) - g for k in BLACKHAT_WINDOWS]).amax(dim=0).clamp(min=0)


def gauss_kernels(sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D Gaussian and its first and second derivatives, radius 3σ: each [K]."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-t**2 / (2 * sigma**2))
    g = g / g.sum()
    return g, -t / sigma**2 * g, (t**2 - sigma**2) / sigma**4 * g


def separable(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Separable convolution of [B,1,H,W] (rows by ky, columns by kx), reflect padding."""
    r = (len(ky) - 1) // 2
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, ky.view(1, 1, -1, 1).to(x))
    return F.conv2d(x, kx.view(1, 1, 1, -1).to(x))


def line_response(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """Dark-line strength at scale σ, σ²·max(λ_max, 0) of the Hessian: [B,1,H,W] → [B,1,H,W]."""
    g0, g1, g2 = gauss_kernels(sigma)
    ixx, iyy, ixy = separable(g, g0, g2), separable(g, g2, g0), separable(g, g1, g1)  # [B,1,H,W] each
    lam = (ixx + iyy) / 2 + torch.sqrt(((ixx - iyy) / 2) ** 2 + ixy**2)  # largest eigenvalue
    return sigma**2 * lam.clamp(min=0)


def ridge_response(g: torch.Tensor, *, width: float) -> torch.Tensor:
    """Dark-line strength: max over σ of σ²·max(λ_max, 0) of the Hessian: [B,1,H,W] → [B,1,H,W]."""
    out = torch.zeros_like(g)
    for k in RIDGE_SIGMAS:
        out = torch.maximum(out, line_response(g, max(0.5, k * width)))
    return out


def keep_thin_components(heat: torch.Tensor, *, width: float) -> torch.Tensor:
    """Damp map regions that are not long thin connected components: [B,1,H,W] → [B,1,H,W].

    Components of `heat ≥ SHAPE_LEVEL` (8-connected) are kept when their bounding-box diagonal
    is ≥ SHAPE_MIN_LENGTH crack widths and area / diagonal ≤ SHAPE_MAX_MEAN_WIDTH crack widths.
    """
    from scipy import ndimage

    keep = torch.zeros_like(heat, dtype=torch.bool)
    for b, level in enumerate((heat >= SHAPE_LEVEL).cpu().numpy()[:, 0]):  # [H,W] bool each
        labels, n = ndimage.label(level, structure=np.ones((3, 3)))
        if n == 0:
            continue
        good = np.zeros(n + 1, bool)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            diag = math.hypot(box[0].stop - box[0].start, box[1].stop - box[1].start)
            good[i] = diag >= SHAPE_MIN_LENGTH * width and areas[i] / diag <= SHAPE_MAX_MEAN_WIDTH * width
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
        return 1.0 - torch.exp(-ridge_response(grey(x.float()), width=self.width) / TAU_RIDGE)


class BlackHatRidgeShapeMap(TrainingFreeMap):
    """√(black-hat · ridge), then the long-thin-component shape filter."""

    def heat(self, x: torch.Tensor) -> torch.Tensor:
        g = grey(x.float())
        bh = 1.0 - torch.exp(-blackhat_response(g, width=self.width) / TAU_BLACKHAT)
        rg = 1.0 - torch.exp(-ridge_response(g, width=self.width) / TAU_RIDGE)
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
