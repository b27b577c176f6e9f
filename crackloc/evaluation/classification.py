"""Image-level metrics (torchmetrics), threshold choice on validation, and the paper's IoU."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

from crackloc.training.pseudo import cam_masks


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, *, threshold: float = 0.5) -> dict:
    """AUROC and thresholded accuracy/precision/recall/F1 (labels in {0,1})."""
    target = labels.long()
    return {
        "auroc": float(binary_auroc(probs, target)),
        "accuracy": float(binary_accuracy(probs, target, threshold=threshold)),
        "precision": float(binary_precision(probs, target, threshold=threshold)),
        "recall": float(binary_recall(probs, target, threshold=threshold)),
        "f1": float(binary_f1_score(probs, target, threshold=threshold)),
        "threshold": float(threshold),
    }


@torch.inference_mode()
def pseudo_mask_iou(heatmaps: torch.Tensor, teacher_cams: torch.Tensor, *, heat_threshold: float = 0.5,
                    percentile: float = 95.0, phase: float = 0.0) -> dict:
    """The paper's IoU: heatmap > t vs the teacher's p95 CAM mask (circular: rewards agreeing).

    heatmaps [N,1,S,S] in [0,1]; teacher_cams [N,1,h,w] raw CAMs, upsampled to S×S here.
    """
    ref = cam_masks(teacher_cams, size=tuple(heatmaps.shape[-2:]), percentile=percentile, phase=phase)  # [N,1,S,S]
    pred = heatmaps >= heat_threshold
    inter = (pred & ref).flatten(1).sum(1).float()
    union = (pred | ref).flatten(1).sum(1).float().clamp(min=1)
    iou = inter / union  # [N]
    return {"iou_vs_teacher_pseudo_mean": float(iou.mean()),
            "iou_vs_teacher_pseudo_std": float(iou.std()) if len(iou) > 1 else 0.0, "n": len(iou)}
