"""Linear and morphological filters of grey images, in torch: [B,1,H,W], any device, batched.

Luminance, Gaussian derivative kernels, the scale-normalised Hessian dark-line response and
its multi-scale forms (the `ridge` floor and the line guide), and the multi-scale black-hat
(the `blackhat` floor and the stage-2 pseudo-labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crackloc.imageops.morphology import grey_closing

LUMA = (0.299, 0.587, 0.114)  # Rec.601 luminance weights
BLACKHAT_WINDOWS = (1.5, 2.25, 3.0)  # window sides, in crack widths
RIDGE_SIGMAS = (0.25, 0.5, 0.75)  # Gaussian scales, in crack widths
TAU_RIDGE = 0.05  # ridge response at which `ridge_evidence` reaches 1 − 1/e


def grey(x: torch.Tensor) -> torch.Tensor:
    """RGB [B,3,H,W] in [0,1] → luminance [B,1,H,W]."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def odd_size(size: float) -> int:
    """`size` rounded to an odd window side, at least 3."""
    return max(3, int(round(size)) // 2 * 2 + 1)


def gauss_kernels(sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D Gaussian and its first and second derivatives, radius ⌈3σ⌉: each [K]."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-t**2 / (2 * sigma**2))
    g = g / g.sum()
    return g, -t / sigma**2 * g, (t**2 - sigma**2) / sigma**4 * g


def separable(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Separable cross-correlation of [B,1,H,W] (rows by ky, columns by kx), edges replicated."""
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
    """Dark-line strength: max over σ of σ²·max(λ_max, 0) of the Hessian: [B,1,H,W] → [B,1,H,W].

    σ = max(0.5, k·width) for k in `RIDGE_SIGMAS`.
    """
    out = torch.zeros_like(g)
    for k in RIDGE_SIGMAS:
        out = torch.maximum(out, line_response(g, max(0.5, k * width)))
    return out


def ridge_evidence(g: torch.Tensor, *, width: float) -> torch.Tensor:
    """Dark-line evidence 1 − exp(−ridge / `TAU_RIDGE`): grey [B,1,H,W] → [B,1,H,W] in [0,1).

    The `ridge` floor's map, and the line guide's evidence.
    """
    return 1.0 - torch.exp(-ridge_response(g, width=width) / TAU_RIDGE)


def blackhat_response(g: torch.Tensor, *, width: float) -> torch.Tensor:
    """Max over windows of closing(g) − g: [B,1,H,W] → [B,1,H,W] ≥ 0 (grey-level contrast).

    Square windows of side `odd_size(k·width)` for k in `BLACKHAT_WINDOWS`.
    """
    return torch.stack([grey_closing(g, odd_size(k * width)) - g for k in BLACKHAT_WINDOWS]).amax(dim=0).clamp(min=0)
