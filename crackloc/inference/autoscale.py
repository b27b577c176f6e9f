"""Automatic inference scale: resize a photo so its cracks look as wide as in the training patches.

A model sees cracks at the pixel width of its training patches; a photo taken from further away
(or a road image like CrackForest's, 2–5 px cracks) needs enlarging first, a close-up shrinking.
The crack width of a photo is estimated from the photo itself, with no model:

- The scale-normalised Hessian response σ²·λ_max(H_σ) of a dark bar of width w (box profile)
  is ∝ (w/σ)·exp(−w²/8σ²) at its centre line, which peaks at **σ = w/2**. So at every pixel the
  σ with the strongest response, over a geometric ladder of σ, says how wide the dark line
  through it is: w ≈ 2σ.
- The estimate is the median of that width over the strongest dark-line pixels of the image
  (the top `TOP_FRACTION` of responses), measured on a copy at most `WORK_SIDE` px on its longer
  side and converted back to the photo's pixels.
- scale = `TRAIN_CRACK_WIDTH` / estimate, clipped to [`MIN_SCALE`, `MAX_SCALE`] and to a pixel
  budget. A photo where no dark line stands out of its texture (noise, plain concrete) keeps
  scale 1.

`TRAIN_CRACK_WIDTH` is the same estimator's median over Özgenel crack patches at the model's
224 px input (`python -m benchmarks.crack_widths`), so it is a property of the training data,
not of any evaluation set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crackloc.imageops import grey, line_response
from crackloc.tensors import unit_float

TRAIN_CRACK_WIDTH = 14.3  # px at 224 px: median over 145 Özgenel training crack patches (quartiles 10.1–17.0), benchmarks/crack_widths.py
WORK_SIDE = 1024  # the estimate runs on a copy at most this many px on its longer side
SIGMAS = tuple(0.75 * 2 ** (k / 4) for k in range(21))  # 0.75 … 24 px at the working size
TOP_FRACTION = 0.005  # pixels with the strongest line response that vote
MIN_CONTRAST = 0.02  # σ²·λ (grey levels in [0,1]) below which a pixel is not a dark line
MIN_PROMINENCE = 2.0  # the voters' median must beat the image's 90th percentile this many times
MIN_SCALE, MAX_SCALE = 0.25, 8.0
MAX_PIXELS = 64e6  # auto scale never makes a photo larger than this


def line_width_map(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark-line strength and width at every pixel: grey [B,1,H,W] → (strength, width), each [B,1,H,W].

    strength = max over σ of σ²·max(λ_max, 0); width = 2·(the σ of that maximum).
    """
    best = torch.zeros_like(g)  # [B,1,H,W]
    width = torch.zeros_like(g)
    for sigma in SIGMAS:
        r = line_response(g, sigma)  # [B,1,H,W]
        better = r > best
        best = torch.where(better, r, best)
        width = torch.where(better, torch.full_like(g, 2 * sigma), width)
    return best, width


@torch.inference_mode()
def estimate_crack_width(image: torch.Tensor) -> float | None:
    """Typical width (px, in the image's own pixels) of its dark lines; None if it has none.

    Args:
        image: uint8 [3,H,W] (or float in [0,1]).
    """
    x = unit_float(image)  # [3,H,W]
    h, w = x.shape[-2:]
    shrink = min(1.0, WORK_SIDE / max(h, w))
    g = grey(x[None])  # [1,1,H,W]
    if shrink < 1.0:
        size = (max(1, round(h * shrink)), max(1, round(w * shrink)))
        g = F.interpolate(g, size=size, mode="bilinear", antialias=True, align_corners=False)
    strength, width = line_width_map(g)
    s = strength.flatten()
    k = max(1, int(s.numel() * TOP_FRACTION))
    top = torch.topk(s, k).indices
    top = top[s[top] >= MIN_CONTRAST]
    background = torch.quantile(s[:: max(1, s.numel() // 100_000)], 0.9)  # texture and noise level
    if top.numel() == 0 or s[top].median() < MIN_PROMINENCE * background:
        return None  # no dark line stands out (plain texture or noise)
    return float(width.flatten()[top].median()) / shrink


def auto_scale(image: torch.Tensor, *, target: float = TRAIN_CRACK_WIDTH) -> float:
    """The factor that makes the image's cracks about `target` px wide (1.0 if it has no dark lines)."""
    est = estimate_crack_width(image)
    if est is None:
        return 1.0
    h, w = image.shape[-2:]
    budget = math.sqrt(MAX_PIXELS / (h * w))
    return float(min(max(target / est, MIN_SCALE), MAX_SCALE, max(budget, MIN_SCALE)))
