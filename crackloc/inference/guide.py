"""Line guide: sharpen a model's crack map with the photo's own dark-line evidence.

A learned map says *where* the cracks are; the photo says *which pixels* are dark thin lines.
With `InferenceConfig.line_guide` = g > 0 the map becomes

    map^(1 − g) · evidence^g

where `evidence` is the `ridge` floor's dark-line map (`crackloc.imageops.ridge_evidence`,
σ = ¼, ½, ¾ of a crack width) computed on the photo once, after stitching, for cracks of the
width the model is shown: `TRAIN_CRACK_WIDTH` / scale photo pixels. So the guide follows the
scale (or `--auto-scale`) the user picks, and nothing in it was fitted to an evaluation set.

Both factors must agree: where the model's map is 0 the product stays 0; where it is not, the
ridge filter puts the map on the dark line's pixels. A faint map counts for much at g = 0.9
(0.01^0.1 = 0.63), so below the mask level the guided map shows the photo's dim texture wherever
the model decoded a window. The ridge response is symmetric about a line's centre, so the guide
does not move a map.

Wide cracks are measured on a shrunken copy (expected width `WORK_WIDTH` px) and the evidence is
resized back, so a 12 MP photo costs a fraction of its model time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crackloc.imageops import grey, ridge_evidence
from crackloc.inference.autoscale import TRAIN_CRACK_WIDTH
from crackloc.tensors import MASK_LEVEL, unit_float  # the guide keeps the crack mask exactly

WORK_WIDTH = 5.0  # px: cracks expected wider than this are filtered on a copy shrunk to this width


@torch.inference_mode()
def line_evidence(image: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Dark-line evidence of a photo for cracks `TRAIN_CRACK_WIDTH / scale` px wide: uint8 [3,H,W] → [H,W] in [0,1]."""
    x = unit_float(image)  # [3,H,W]
    h, w = x.shape[-2:]
    width = TRAIN_CRACK_WIDTH / scale  # expected crack width, photo px
    shrink = min(1.0, WORK_WIDTH / width)
    g = grey(x[None])  # [1,1,H,W]
    if shrink < 1.0:
        size = (max(1, round(h * shrink)), max(1, round(w * shrink)))
        g = F.interpolate(g, size=size, mode="bilinear", antialias=True, align_corners=False)  # [1,1,h,w]
    ev = ridge_evidence(g, width=width * shrink)  # [1,1,h,w]
    if shrink < 1.0:
        ev = F.interpolate(ev, size=(h, w), mode="bilinear", align_corners=False)  # [1,1,H,W]
    return ev[0, 0].clamp(0.0, 1.0)


def guide_map(heatmap: torch.Tensor, evidence: torch.Tensor, *, weight: float) -> torch.Tensor:
    """The guided map of `heatmap` [H,W] by `evidence` [H,W], both in [0,1] → [H,W] in [0,1].

    guided = heatmap^(1 − weight) · evidence^weight. Pixels of the crack mask (heatmap ≥
    `MASK_LEVEL`) get MASK_LEVEL + (1 − MASK_LEVEL)·guided, the others min(guided, just below
    MASK_LEVEL): the mask, and every width and length measured on it, stay the model's own, and the
    guide reorders the pixels within each band. weight 0: the map as it is.
    """
    if weight <= 0.0:
        return heatmap
    if not math.isfinite(weight) or weight > 1.0:
        raise ValueError(f"line guide weight must be in [0, 1], got {weight}")
    heat = heatmap.clamp(0.0, 1.0)
    guided = heat.pow(1.0 - weight) * evidence.to(heat.device, heat.dtype).pow(weight)  # [H,W]
    below = torch.nextafter(torch.tensor(MASK_LEVEL, dtype=heat.dtype), torch.tensor(0.0, dtype=heat.dtype))
    return torch.where(heat >= MASK_LEVEL, MASK_LEVEL + (1.0 - MASK_LEVEL) * guided,
                       guided.clamp(max=float(below)))  # [H,W]
