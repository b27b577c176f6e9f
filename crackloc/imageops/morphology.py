"""Morphology: square max filters, closing and dilation (torch), disk max (torch), components (numpy).

The torch operations run on the device, batched ([B,1,H,W]) or per image ([H,W]); each equals a
scipy.ndimage reference bit for bit (tests/test_imageops.py). scipy is imported only inside the
functions that use it, so importing this module stays cheap.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


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


def square_max(g: torch.Tensor, size: int) -> torch.Tensor:
    """Max over a size×size window (odd size; a row pass, then a column pass), edges replicated: [B,1,H,W].

    Equals `scipy.ndimage.maximum_filter(g, size, mode="nearest")`.
    """
    return _axis_max(_axis_max(g, size, 2), size, 3)


def grey_closing(g: torch.Tensor, size: int) -> torch.Tensor:
    """Flat square grey closing (dilation, then erosion) of [B,1,H,W], odd size, edges replicated."""
    return -square_max(-square_max(g, size), size)


def dilate_square(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of bool [B,1,H,W] by a (2·radius + 1)² square: → bool [B,1,H,W].

    Pixels outside the image count as unset; `radius` ≤ 0 returns `mask` itself.
    """
    if radius <= 0:
        return mask
    return square_max(mask.float(), 2 * radius + 1) > 0


def disk_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation of [H,W] by a Euclidean disk (dy² + dx² ≤ radius²): → [H,W] (max over the disk)."""
    if radius <= 0:
        return x
    h, w = x.shape
    padded = F.pad(x[None, None], (radius,) * 4, value=float("-inf"))[0, 0]  # [H+2r, W+2r]
    out = x.clone()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                shifted = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
                torch.maximum(out, shifted, out=out)
    return out


def component_spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of bool [H,W] and their size.

    Returns:
        labels int [H,W] (0 = background), the bounding-box diagonal (px) of each component
        [n+1] and its pixel count [n+1]; index = label, index 0 is the background (diagonal 0).
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    diag = np.zeros(n + 1)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        diag[i] = math.hypot(box[0].stop - box[0].start, box[1].stop - box[1].start)
    return labels, diag, np.bincount(labels.ravel(), minlength=n + 1)
