"""Crack width error against human masks, measured along the human skeleton.

Widths are `crackloc.imageops.width.local_width_map`, the one crack-width definition (documented
there), which crack geometry reports too. At every pixel of the human mask's skeleton, the true
width is that of the human mask there; the predicted width is that of the predicted mask
(heatmap ≥ threshold) at the same pixel, 0 where the prediction misses it. Errors
|predicted − true| are accumulated in a histogram of 0.25 px bins (streaming, like the other
evaluators) and summarised as median and 90th percentile. Users repair by width, so a map that
is right about where but 5× too wide scores badly here.
"""

from __future__ import annotations

import numpy as np
import torch

from crackloc.imageops.width import local_width_map

BIN_PX = 0.25
MAX_ERROR_PX = 200.0


def widths_along_skeleton(mask: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true widths, predicted widths) at the skeleton pixels of `mask`, both bool [H,W]: → ([N], [N])."""
    from skimage.morphology import skeletonize

    skel = skeletonize(mask)  # [H,W] bool
    true = local_width_map(mask)[skel]
    predicted = local_width_map(pred)[skel] if pred.any() else np.zeros_like(true)
    return true, predicted


class WidthErrorEvaluator:
    """Median and p90 of |predicted − true| crack width (px) along human skeletons, at one threshold."""

    def __init__(self, *, threshold: float) -> None:
        self.threshold = float(threshold)
        self.counts = torch.zeros(int(MAX_ERROR_PX / BIN_PX) + 1, dtype=torch.long)
        self.true_sum = 0.0
        self.pred_sum = 0.0

    def accumulate(self, heatmap: torch.Tensor, mask: torch.Tensor) -> None:
        """heatmap [H,W] in [0,1], mask [H,W] bool (one image)."""
        true, pred = widths_along_skeleton(mask.bool().numpy(), (heatmap >= self.threshold).numpy())
        if true.size == 0:
            return
        err = torch.from_numpy(np.abs(pred - true)).clamp(max=MAX_ERROR_PX)
        self.counts += torch.bincount((err / BIN_PX).round().long(), minlength=len(self.counts))
        self.true_sum += float(true.sum())
        self.pred_sum += float(pred.sum())

    def _quantile(self, q: float) -> float:
        cum = torch.cumsum(self.counts, 0).double()  # [bins]
        return float(torch.searchsorted(cum, torch.tensor([q * float(cum[-1])], dtype=torch.float64))[0]) * BIN_PX

    def compute(self) -> dict[str, float | int | None]:
        """{'width_error_px_median', 'width_error_px_p90', 'mean_true_width_px', 'mean_pred_width_px', 'n'}."""
        n = int(self.counts.sum())
        if n == 0:
            return {"width_error_px_median": None, "width_error_px_p90": None, "mean_true_width_px": None,
                    "mean_pred_width_px": None, "n_skeleton_px": 0}
        return {"width_error_px_median": self._quantile(0.5), "width_error_px_p90": self._quantile(0.9),
                "mean_true_width_px": self.true_sum / n, "mean_pred_width_px": self.pred_sum / n,
                "n_skeleton_px": n}
