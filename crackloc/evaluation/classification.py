"""Image-level metrics (torchmetrics), threshold choice on validation, and the paper's IoU."""

from __future__ import annotations

import contextlib

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)
from tqdm import tqdm

from crackloc.training.module import to_input
from crackloc.training.pseudo import cam_masks


def autocast_for(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (CPU or CUDA), else a no-op."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict_batches(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 64,
                    precision: str = "bf16", channels_last: bool = True, with_heatmaps: bool = False,
                    progress: bool = False, desc: str = "predicting") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a model over uint8 images [N,3,S,S]: → (probabilities [N], heatmaps [N,1,S,S] or None)."""
    is_torch = isinstance(model, torch.nn.Module)  # else an ONNX Runtime predictor (CPU)
    device = next(model.parameters()).device if is_torch else torch.device("cpu")
    if channels_last and is_torch:
        model = model.to(memory_format=torch.channels_last)
    probs, heats = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_input(images[start:start + batch_size].to(device), channels_last=channels_last)
        with autocast_for(device, precision):
            logits, heatmap = model(x)
        probs.append(torch.sigmoid(logits.float()).cpu())
        if with_heatmaps:
            heats.append(heatmap.float().cpu())
    return torch.cat(probs), (torch.cat(heats) if with_heatmaps else None)


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


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The probability threshold that maximises F1 (ties → the one closest to 0.5)."""
    candidates = torch.unique(torch.cat([probs, torch.tensor([0.5])]))
    pos = labels > 0.5
    best, best_key = 0.5, (-1.0, 0.0)
    for t in candidates.tolist():
        pred = probs >= t
        tp = float((pred & pos).sum())
        f1 = 2 * tp / max(float(pred.sum()) + float(pos.sum()), 1.0)
        key = (round(f1, 12), -abs(t - 0.5))
        if key > best_key:
            best, best_key = t, key
    return float(best)


@torch.inference_mode()
def pseudo_mask_iou(heatmaps: torch.Tensor, teacher_cams: torch.Tensor, *, heat_threshold: float = 0.5,
                    percentile: float = 95.0) -> dict:
    """The paper's IoU: heatmap > t vs the teacher's p95 CAM mask (circular: rewards agreeing).

    heatmaps [N,1,S,S] in [0,1]; teacher_cams [N,1,h,w] raw CAMs, upsampled to S×S here.
    """
    ref = cam_masks(teacher_cams, size=tuple(heatmaps.shape[-2:]), percentile=percentile)  # [N,1,S,S]
    pred = heatmaps >= heat_threshold
    inter = (pred & ref).flatten(1).sum(1).float()
    union = (pred | ref).flatten(1).sum(1).float().clamp(min=1)
    iou = inter / union  # [N]
    return {"iou_vs_teacher_pseudo_mean": float(iou.mean()),
            "iou_vs_teacher_pseudo_std": float(iou.std()) if len(iou) > 1 else 0.0, "n": len(iou)}
