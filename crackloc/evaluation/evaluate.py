"""`crackloc evaluate`: test-split classification metrics + the paper's (circular) IoU."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from crackloc.config import RunConfig, load_config
from crackloc.data.dataset import DecodedSplit
from crackloc.data.manifest import load_splits, resolve_manifest
from crackloc.errors import CracklocError
from crackloc.evaluation.classification import classification_metrics, pseudo_mask_iou
from crackloc.io import write_json, write_text
from crackloc.models.checkpoint import load_model
from crackloc.tensors import model_device, predict_batches, resolve_precision
from crackloc.training.pseudo import teacher_cams


def markdown_table(metrics: dict) -> str:
    """Test metrics as a Markdown table (one row per threshold)."""
    lines = ["| threshold | AUROC | accuracy | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    for key in ("at_0.5", "at_val_threshold"):
        m = metrics[key]
        lines.append(f"| {m['threshold']:.3f} ({key.replace('at_', '')}) | {m['auroc']:.4f} | {m['accuracy']:.4f} "
                     f"| {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |")
    iou = metrics.get("pseudo_iou")
    if iou:
        lines += ["", f"IoU vs the teacher's p95 pseudo masks (the paper's IoU; circular, positive test images): "
                      f"{iou['iou_vs_teacher_pseudo_mean']:.3f} ± {iou['iou_vs_teacher_pseudo_std']:.3f} (n={iou['n']})"]
    return "\n".join(lines) + "\n"


def paper_iou(teacher_path: Path | None, test: DecodedSplit, heatmaps: torch.Tensor, *,
              percentile: float) -> dict | None:
    """The paper's (circular) IoU on the positive test images; None without a teacher or a positive image."""
    pos = test.labels > 0.5
    if teacher_path is None or not teacher_path.is_file() or not bool(pos.any()):
        return None
    teacher = load_model(teacher_path)[0]
    cams = teacher_cams(teacher, test.images[pos])
    return pseudo_mask_iou(heatmaps[pos], cams, percentile=percentile, phase=teacher.cell_phase)


def evaluate_run(run: str | Path | None = None, *, checkpoint: str | Path | None = None,
                 manifest: str | Path | None = None, out: str | Path | None = None,
                 progress: bool = True) -> dict:
    """Score a trained model on its run's test split; writes metrics.json and metrics.md.

    Args:
        run: a RUN folder (uses RUN/model.pt, RUN/teacher.pt and its config/manifest).
        checkpoint: a model file instead of RUN/model.pt (then `manifest` is needed without `run`).
        out: where to write (default: the run folder, or the checkpoint's folder).
    """
    if run is None and checkpoint is None:
        raise CracklocError("give --run RUN or --checkpoint FILE")
    cfg = load_config(Path(run) / "config.yaml") if run else RunConfig()
    if manifest:
        cfg.data.manifest, cfg.data.data = str(manifest), ""
    if not cfg.data.manifest:
        raise CracklocError("no split manifest: pass --manifest (made by `crackloc split`)")
    checkpoint = Path(checkpoint) if checkpoint else Path(run) / "model.pt"
    out = Path(out) if out else (Path(run) if run else checkpoint.parent)
    model, payload = load_model(checkpoint)
    # A run's manifest was checked for leaks by `train`; a manifest given here is checked now.
    root, rows, _ = resolve_manifest(cfg, progress=progress, check=not run or bool(manifest))
    test = load_splits(cfg, root, rows, ("test",), progress=progress)["test"]  # refuses a test part lacking a class
    t0 = time.time()
    probs, heatmaps = predict_batches(model, test.images, with_heatmaps=True, progress=progress, desc="testing")
    seconds = time.time() - t0
    val_t = float(payload["meta"].get("val_threshold", 0.5))
    metrics = {
        "checkpoint": str(checkpoint), "model": payload["config"]["name"],
        "backbone": payload["config"]["backbone"],
        "pretrained_source": payload["meta"].get("pretrained_source", "unknown"),
        "n_test": len(test.labels), "test_positive": int(test.labels.sum()),
        "at_0.5": classification_metrics(probs, test.labels, threshold=0.5),
        "at_val_threshold": classification_metrics(probs, test.labels, threshold=val_t),
        "inference_images_per_s": round(len(test.labels) / max(seconds, 1e-9), 1),
        "precision": resolve_precision("auto", model_device(model)),
        "failed_images": test.failed,
    }
    iou = paper_iou(Path(run) / "teacher.pt" if run else None, test, heatmaps, percentile=cfg.train.pseudo_percentile)
    if iou is not None:
        metrics["pseudo_iou"] = iou
    write_json(out / "metrics.json", metrics)
    write_text(out / "metrics.md", markdown_table(metrics))
    return metrics
