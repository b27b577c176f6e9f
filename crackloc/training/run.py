"""`crackloc train`: split → teacher → pseudo masks → student → test evaluation, in one RUN folder.

RUN/
  config.yaml            the full RunConfig (data.manifest names the split manifest)
  split.csv              the manifest, unless an existing one was given
  teacher.pt, model.pt   crackloc model files (weights_only-safe)
  pseudo_masks.pt        cached teacher pseudo masks of the training split
  teacher_epochs.csv, student_epochs.csv    per-epoch metrics
  checkpoints/{teacher,student}/            Lightning best/last (for --resume)
  metrics.json, metrics.md                  test metrics (written by evaluate)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import lightning as L
import torch

from crackloc.config import RunConfig, load_config, save_config
from crackloc.data.dataset import DecodedSplit, decode_rows, stratified_subset
from crackloc.data.folders import scan_labelled
from crackloc.data.split import Row, check_manifest, make_manifest, read_manifest, write_manifest
from crackloc.errors import CracklocError
from crackloc.evaluation.classification import choose_threshold, predict_batches
from crackloc.io import save_torch, write_json
from crackloc.models.checkpoint import load_model, save_model
from crackloc.training.fit import fit_model
from crackloc.training.pseudo import pseudo_masks


def ensure_manifest(cfg: RunConfig, out: Path, *, progress: bool) -> tuple[Path, list[Row]]:
    """Read the configured manifest, or make `out/split.csv` from the data folder; check for leaks."""
    if not cfg.data.manifest:
        root, items = scan_labelled(cfg.data.data)
        rows, stats = make_manifest(root, items, seed=cfg.train.seed, progress=progress)
        cfg.data.manifest = str(write_manifest(out / "split.csv", rows, root=root).resolve())
        write_json(out / "split_stats.json", stats)
    root, rows = read_manifest(cfg.data.manifest)
    if cfg.data.data and Path(cfg.data.data).is_dir():
        root = Path(cfg.data.data).resolve()
    check_manifest(rows)
    return root, rows


def load_splits(cfg: RunConfig, root: Path, rows: list[Row], names: tuple[str, ...], *,
                progress: bool) -> dict[str, DecodedSplit]:
    """Decode the (preset-limited) splits named in `names`."""
    limits = {"train": cfg.data.max_train, "val": cfg.data.max_val, "test": cfg.data.max_test}
    out = {}
    for name in names:
        part = stratified_subset([r for r in rows if r.split == name], limits[name], seed=cfg.train.seed)
        if not part:
            raise CracklocError(f"the manifest has no {name} images")
        out[name] = decode_rows(root, part, size=cfg.data.image_size, desc=f"decoding {name}", progress=progress)
    return out


def student_grid(cfg: RunConfig) -> tuple[int, int]:
    """(h, w) of the student's low-resolution heatmap at the configured input size."""
    from crackloc.models import build_model

    model = build_model(dataclasses.replace(cfg.model, pretrained="none")).eval()
    with torch.no_grad():
        _, low = model.forward_lowres(torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size))
    return tuple(low.shape[-2:])


def prepare_run(cfg: RunConfig, out: Path, *, resume: bool) -> RunConfig:
    """Create RUN (or reopen it with --resume, keeping its saved config)."""
    saved = out / "config.yaml"
    if saved.is_file() and not resume:
        raise CracklocError(f"{out} already holds a run: pass --resume to continue it, or choose a new --out")
    if resume and saved.is_file():
        return load_config(saved)
    if resume:
        raise CracklocError(f"{out}: nothing to resume (no config.yaml)")
    out.mkdir(parents=True, exist_ok=True)
    return cfg


def train_teacher(cfg: RunConfig, out: Path, splits: dict[str, DecodedSplit], *, progress: bool) -> torch.nn.Module:
    """Train (or reload) the CAM teacher on the training split."""
    path = out / "teacher.pt"
    if path.is_file():
        return load_model(path)[0]
    teacher = fit_model(cfg.teacher, cfg.train, splits["train"], splits["val"], ckpt_dir=out / "checkpoints/teacher",
                        csv_path=out / "teacher_epochs.csv", epochs=cfg.train.teacher_epochs, progress=progress)
    save_model(path, teacher, cfg.teacher, role="teacher")
    return teacher


def cached_pseudo_masks(cfg: RunConfig, out: Path, teacher: torch.nn.Module, train: DecodedSplit, *,
                        progress: bool) -> torch.Tensor:
    """Teacher pseudo masks of the training split, computed once and cached in RUN."""
    path = out / "pseudo_masks.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached["paths"] == train.paths:
            return cached["masks"]
    masks = pseudo_masks(teacher, train.images, train.labels, grid=student_grid(cfg),
                         percentile=cfg.train.pseudo_percentile, negatives=cfg.train.negative_pseudo,
                         progress=progress)
    save_torch(path, {"paths": train.paths, "masks": masks})
    return masks


def train_run(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Run the whole teacher → student pipeline; returns the path of the student's model file."""
    out = Path(out)
    cfg = prepare_run(cfg, out, resume=resume)
    t0 = time.time()
    root, rows = ensure_manifest(cfg, out, progress=progress)
    save_config(cfg, out / "config.yaml")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    splits = load_splits(cfg, root, rows, ("train", "val"), progress=progress)
    teacher = train_teacher(cfg, out, splits, progress=progress)
    pseudo = None
    if cfg.model.name == "crackloc" and cfg.train.lambda_l1 > 0:
        pseudo = cached_pseudo_masks(cfg, out, teacher, splits["train"], progress=progress)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = fit_model(cfg.model, cfg.train, splits["train"], splits["val"], ckpt_dir=out / "checkpoints/student",
                      csv_path=out / "student_epochs.csv", epochs=cfg.train.epochs, pseudo=pseudo,
                      progress=progress)
    val_probs, _ = predict_batches(model, splits["val"].images, precision=cfg.train.precision)
    threshold = choose_threshold(val_probs, splits["val"].labels)
    failed = [f for s in splits.values() for f in s.failed]
    meta = {"role": "student", "val_threshold": threshold, "train_seconds": round(time.time() - t0, 1),
            "n_train": len(splits["train"].labels), "n_val": len(splits["val"].labels),
            "pretrained": cfg.model.pretrained,
            "pretrained_source": getattr(getattr(model, "backbone", None), "pretrained_source", "none"),
            "failed_images": failed}
    write_json(out / "train_summary.json", meta)
    return save_model(out / "model.pt", model, cfg.model, **meta)
