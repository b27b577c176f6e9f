"""Streaming pixel-level localisation metrics against human masks (wsolevaluation style).

Evaluators `accumulate(heatmap, mask)` image batch by image batch into fixed-size histograms
over `num_thresholds` thresholds t_j = j / num_thresholds (j = 0 … n−1; a pixel is predicted
positive at t_j when heatmap ≥ t_j), so memory does not grow with the data set, then
`compute()` at the end. Everything stays in torch; metric values come out as python floats.

- `PxAPEvaluator`: pixel average precision over all pixels of the data set (Choe et al.,
  CVPR 2020): AP = Σ_j precision_j · Δrecall_j, thresholds descending, as in wsolevaluation.
- `ThresholdEvaluator`: per-threshold precision / recall / F1 / IoU of the crack class,
  optionally with a tolerance of k px, plus ODS F1 and OIS F1 (per-image best F1).
- `pick_threshold` / `scores_at` / `dev_test_scores`: choose the F1-best threshold on a DEV
  evaluator and apply it to a TEST evaluator (never tuned on the images it scores).

Tolerance k (Euclidean disk of radius k): a predicted pixel within k px of a true crack pixel
is a true positive (precision), and a true crack pixel within k px of a predicted pixel is
matched (recall). Instead of one binary dilation per threshold, it uses two exact identities:
"pixel within k of the mask" does not depend on the threshold (one dilation of the mask), and
"a prediction ≥ t lies within k px" equals "the disk-max of the heatmap ≥ t" (one grey
dilation of the heatmap). Tolerant counts are therefore exact at all `num_thresholds`
thresholds for the cost of two dilations per image. Tolerance 0 is exact pixel matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crackloc.imageops import disk_max

DEFAULT_THRESHOLDS = 1000


def _as_images(heatmap: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and reshape ([H,W] | [B,H,W] | [B,1,H,W]) pairs → (heatmap [N,H,W], mask [N,H,W] bool)."""
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap and mask shapes differ: {tuple(heatmap.shape)} vs {tuple(mask.shape)}")
    if heatmap.ndim not in (2, 3, 4) or (heatmap.ndim == 4 and heatmap.shape[1] != 1):
        raise ValueError(f"expected [H,W], [B,H,W] or [B,1,H,W], got {tuple(heatmap.shape)}")
    if not heatmap.is_floating_point():
        raise ValueError(f"heatmap must be a float tensor in [0,1], got {heatmap.dtype}")
    if heatmap.numel() and not bool(((heatmap >= 0) & (heatmap <= 1)).all()):
        raise ValueError("heatmap values must lie in [0,1] (no NaN); normalise the heatmap first")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be binary (bool or values in {0,1})")
        mask = mask != 0
    h, w = heatmap.shape[-2:]
    return heatmap.reshape(-1, h, w).float(), mask.reshape(-1, h, w)


@dataclass
class ThresholdCurves:
    """Per-threshold scores (all tensors [T], thresholds ascending) of one evaluator.

    With tolerance k > 0: tp counts predicted pixels within k px of the mask, fn counts mask
    pixels with no prediction within k px, precision = tp / (tp + fp), recall = 1 − fn / n_gt,
    F1 = 2PR / (P + R) and IoU = F1 / (2 − F1). With k = 0 these are the usual definitions
    (then F1 / (2 − F1) = tp / (tp + fp + fn) exactly); with k > 0 the tp of precision counts
    predicted pixels and the matches of recall count crack pixels, so IoU is defined through
    F1 rather than by mixing the two counts. Precision with no predicted pixel is 1 (the
    curve's start, as in sklearn).
    """

    thresholds: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    iou: torch.Tensor
    per_image_f1: list[float]
    tolerance: int

    @property
    def ap(self) -> float:
        """Average precision Σ_j P_j (R_j − R_{j+1}), R beyond the top threshold = 0."""
        recall_next = torch.cat([self.recall[1:], self.recall.new_zeros(1)])  # [T]
        return float((self.precision * (self.recall - recall_next)).sum())

    @property
    def ods_f1(self) -> float:
        """Best F1 at one threshold for the whole data set (optimal data-set scale)."""
        return float(self.f1.max())

    @property
    def ois_f1(self) -> float:
        """Mean over images of each image's best F1 (images with an empty mask skipped)."""
        vals = [f for f in self.per_image_f1 if f == f]  # drop NaN
        return sum(vals) / len(vals) if vals else float("nan")


def _curves(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, n_gt: torch.Tensor
            ) -> tuple[torch.Tensor, ...]:
    """Counts [.., T] → (precision, recall, f1, iou) [.., T] as float64."""
    tp, fp, fn, n_gt = tp.double(), fp.double(), fn.double(), n_gt.double()
    n_pred = tp + fp
    precision = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), torch.ones_like(tp))
    recall = (n_gt.unsqueeze(-1) - fn) / n_gt.clamp(min=1).unsqueeze(-1)
    f1 = torch.where(precision + recall > 0,
                     2 * precision * recall / (precision + recall).clamp(min=1e-300), 0.0)
    iou = f1 / (2 - f1)  # = tp / (tp + fp + fn) when tolerance is 0
    return precision, recall, f1, iou


class _PixelHistogram:
    """Shared state: thresholds, histogram accumulation and input validation."""

    def __init__(self, *, num_thresholds: int, tolerance: int, per_image: bool) -> None:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be ≥ 2, got {num_thresholds}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be ≥ 0 px, got {tolerance}")
        self.num_thresholds = num_thresholds
        self.tolerance = int(tolerance)
        self.per_image = per_image
        self.thresholds = torch.arange(num_thresholds, dtype=torch.float64).div(num_thresholds).float()
        self.reset()

    def reset(self) -> None:
        """Clear all accumulated counts."""
        n = self.num_thresholds
        self.tp = torch.zeros(n, dtype=torch.int64)  # predicted ≥ t_j and (near) a crack
        self.fp = torch.zeros(n, dtype=torch.int64)  # predicted ≥ t_j, no crack (near)
        self.matched = torch.zeros(n, dtype=torch.int64)  # crack pixels with a prediction (near)
        self.n_gt = torch.zeros((), dtype=torch.int64)
        self.n_images = 0
        self.per_image_f1: list[float] = []

    def _bin(self, heatmap: torch.Tensor) -> torch.Tensor:
        """Heatmap [..] → index of the highest threshold ≤ value, in [0, T−1]."""
        thresholds = self.thresholds.to(heatmap.device)
        idx = torch.bucketize(heatmap, thresholds, right=True, out_int32=True)  # [..] in [1, T]
        return (idx - 1).clamp(min=0)

    def _at_least(self, values: torch.Tensor) -> torch.Tensor:
        """Bin indices [P] → counts of values ≥ t_j for every j: [T] (reverse cumulative sum)."""
        hist = torch.bincount(values.flatten(), minlength=self.num_thresholds).cpu()  # [T]
        return hist.flip(0).cumsum(0).flip(0)

    def _image_counts(self, heatmap: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image heatmap [H,W], mask [H,W] → (tp, fp, matched) [T] and n_gt []."""
        k = self.tolerance
        near = disk_max(mask.float(), k) > 0 if k else mask  # [H,W] within k px of a crack
        bins = self._bin(heatmap)  # [H,W]
        tp = self._at_least(bins[near])
        fp = self._at_least(bins[~near])
        reach = self._bin(disk_max(heatmap, k)) if k else bins  # [H,W] best score within k px
        matched = self._at_least(reach[mask])
        return tp, fp, matched, mask.sum().cpu()

    def accumulate(self, heatmap: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch: heatmap float in [0,1] and binary mask, both [H,W], [B,H,W] or [B,1,H,W]."""
        heatmaps, masks = _as_images(heatmap, mask)  # [N,H,W], [N,H,W]
        for h, m in zip(heatmaps, masks, strict=True):
            tp, fp, matched, n_gt = self._image_counts(h, m)
            self.tp += tp
            self.fp += fp
            self.matched += matched
            self.n_gt += n_gt
            self.n_images += 1
            if self.per_image:
                self.per_image_f1.append(_best_image_f1(tp, fp, matched, n_gt))

    def curves(self) -> ThresholdCurves:
        """Per-threshold scores over everything accumulated; raises if there is no crack pixel."""
        if self.n_images == 0:
            raise ValueError("nothing accumulated: call accumulate() before compute()")
        if int(self.n_gt) == 0:
            raise ValueError("no crack pixel in the accumulated masks: precision/recall undefined")
        fn = self.n_gt - self.matched  # [T]
        precision, recall, f1, iou = _curves(self.tp, self.fp, fn, self.n_gt)
        return ThresholdCurves(self.thresholds.clone(), self.tp.clone(), self.fp.clone(), fn,
                               precision, recall, f1, iou, list(self.per_image_f1), self.tolerance)


def _best_image_f1(tp: torch.Tensor, fp: torch.Tensor, matched: torch.Tensor,
                   n_gt: torch.Tensor) -> float:
    """One image's best F1 over thresholds; NaN when its mask is empty (skipped by OIS)."""
    if int(n_gt) == 0:
        return float("nan")
    _, _, f1, _ = _curves(tp, fp, n_gt - matched, n_gt)
    return float(f1.max())


class PxAPEvaluator(_PixelHistogram):
    """Pixel average precision (PxAP) over all pixels of the data set; exact matching.

    Args:
        num_thresholds: Histogram bins / thresholds t_j = j / n in [0, 1).
    """

    def __init__(self, *, num_thresholds: int = DEFAULT_THRESHOLDS) -> None:
        super().__init__(num_thresholds=num_thresholds, tolerance=0, per_image=False)

    def compute(self) -> float:
        """PxAP = Σ_j precision_j · Δrecall_j over the accumulated pixels."""
        return self.curves().ap


class ThresholdEvaluator(_PixelHistogram):
    """Precision / recall / F1 / IoU of the crack class at every threshold, ODS and OIS F1.

    Args:
        num_thresholds: Histogram bins / thresholds t_j = j / n in [0, 1).
        tolerance: k px (Euclidean); 0 = exact. Exact at every threshold (module docstring).
        per_image: Keep each image's best F1 for OIS.
    """

    def __init__(self, *, num_thresholds: int = DEFAULT_THRESHOLDS, tolerance: int = 0,
                 per_image: bool = True) -> None:
        super().__init__(num_thresholds=num_thresholds, tolerance=tolerance, per_image=per_image)

    def compute(self) -> ThresholdCurves:
        """Per-threshold curves; `.ods_f1`, `.ois_f1` and `.ap` are properties of the result."""
        return self.curves()


def pick_threshold(dev: ThresholdCurves) -> float:
    """The threshold j / T maximising F1 on DEV curves (ties: the lowest such threshold)."""
    return int(torch.argmax(dev.f1)) / len(dev.thresholds)


def scores_at(curves: ThresholdCurves, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and IoU at one of the curves' thresholds (e.g. one picked on dev)."""
    index = int(torch.argmin((curves.thresholds.double() - threshold).abs()))
    if abs(float(curves.thresholds[index]) - threshold) > 1e-6:
        raise ValueError(f"threshold {threshold} is not on this evaluator's grid")
    return {name: float(getattr(curves, name)[index])
            for name in ("precision", "recall", "f1", "iou")}


def dev_test_scores(dev: ThresholdEvaluator, test: ThresholdEvaluator) -> dict[str, float]:
    """Pick the F1-best threshold on `dev` and score `test` at it (F1/IoU/P/R + ODS/OIS of test)."""
    if dev.num_thresholds != test.num_thresholds or dev.tolerance != test.tolerance:
        raise ValueError("dev and test evaluators need the same num_thresholds and tolerance")
    dev_curves, test_curves = dev.compute(), test.compute()
    threshold = pick_threshold(dev_curves)
    return {
        "threshold": threshold,
        "dev_f1": scores_at(dev_curves, threshold)["f1"],
        **scores_at(test_curves, threshold),
        "ods_f1": test_curves.ods_f1,
        "ois_f1": test_curves.ois_f1,
    }
