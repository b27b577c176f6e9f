"""Experiment figures: training/validation curves (paper Fig. 2) and qualitative grids (Fig. 3).

`qualitative.png`: test patches of the shared manifest; columns image | teacher CAM |
proposed | Table I baselines. `qualitative_masks.png` (with --masks): tiled heatmaps of whole
human-annotated images, plus the mask. Heatmaps use one colour scale, [0,1].
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import torch

from crackloc.config import InferenceConfig, from_dict, load_config
from crackloc.data.dataset import decode_rows
from crackloc.data.masks import MaskDataset
from crackloc.data.split import read_manifest
from crackloc.experiments.methods import BASELINES, PROPOSED, method_dir
from crackloc.inference.predictor import Predictor
from crackloc.io import save_figure
from crackloc.training.fit import EPOCH_COLUMNS, epoch_rows

METRIC_LABELS = {"train_loss": "train loss", "val_loss": "val loss (BCE)", "val_auroc": "val AUROC",
                 "val_acc": "val accuracy"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_epochs(run: Path) -> dict[str, list[float]]:
    """The student fit's per-epoch columns of a run folder as float lists (Lightning's CSV logs via
    `epoch_rows`; runs made before them kept a student_epochs.csv, '' → NaN): {} if it has none."""
    old = run / "student_epochs.csv"
    if not (run / "logs" / "student").is_dir() and old.is_file():
        with old.open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        keys = rows[0].keys() if rows else []
        return {k: [float(r[k]) if r[k] not in ("", "None") else float("nan") for r in rows] for k in keys}
    rows = epoch_rows(run / "logs" / "student")
    return {k: [float(r[k]) for r in rows] for k in EPOCH_COLUMNS} if rows else {}


def plot_curves(exp: Path, out: Path) -> list[Path]:
    """curves.png: the proposed model's losses and validation AUROC/accuracy per seed (Fig. 2);
    curves_all.png: validation AUROC per epoch of every method (mean over seeds)."""
    plt, made = _plt(), []
    runs = [r for r in sorted((exp / "runs" / PROPOSED).glob("seed*")) if read_epochs(r)]
    if runs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for path in runs:
            cols, seed = read_epochs(path), path.name
            epochs = [e + 1 for e in cols.get("epoch", [])]
            for ax, keys in zip(axes, (("train_loss", "val_loss"), ("val_auroc", "val_acc")), strict=True):
                for key in keys:
                    ax.plot(epochs, cols.get(key, []), marker="o", label=f"{METRIC_LABELS[key]} ({seed})")
        for ax, title in zip(axes, ("loss", "validation"), strict=True):
            ax.set(xlabel="epoch", title=f"proposed model: {title}")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7)
        made.append(save_figure(out / "curves.png", fig))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method_path in sorted((exp / "runs").iterdir()):
        series = [read_epochs(p).get("val_auroc", []) for p in sorted(method_path.glob("seed*"))]
        series = [s for s in series if s]
        if series:
            n = min(map(len, series))
            mean = [sum(s[i] for s in series) / len(series) for i in range(n)]
            ax.plot(range(1, n + 1), mean, marker="o", label=method_path.name)
    ax.set(xlabel="epoch", ylabel="val AUROC (mean over seeds)", title="validation AUROC per method")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    made.append(save_figure(out / "curves_all.png", fig))
    plt.close(fig)
    return made


def _columns(exp: Path, seed: str) -> list[tuple[str, Path]]:
    """(column title, model file) for teacher CAM, proposed, baselines of one seed that exist."""
    cols = []
    proposed = exp / "runs" / PROPOSED / seed
    teacher = next((p for p in (proposed / "teacher.pt", exp / "teachers" / seed / "teacher.pt") if p.is_file()), None)
    if teacher:
        cols.append(("teacher CAM", teacher))
    for method in (PROPOSED, *BASELINES):
        model = exp / "runs" / method_dir(method) / seed / "model.pt"
        if model.is_file():
            cols.append(("proposed" if method == PROPOSED else method, model))
    return cols


def _grid(path: Path, titles: list[str], rows: list[list[torch.Tensor]]) -> Path:
    """Image grid: panels [H,W,3] (RGB), [H,W] heatmaps (jet, [0,1]) or masks (the 'mask' column)."""
    plt = _plt()
    h, w = rows[0][0].shape[:2]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.2 * len(titles), 2.2 * len(rows) * h / w + 0.3),
                             squeeze=False)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            cmap = None if panel.dim() == 3 else ("gray" if titles[c] == "mask" else "jet")
            ax.imshow(panel.float().numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    made = save_figure(path, fig)
    plt.close(fig)
    return made


def inference_config(spec: dict, *, tile: int) -> InferenceConfig:
    """The experiment's recorded inference settings (experiment.json), at the runs' tile size."""
    recorded = dict(spec.get("inference") or {"scale": spec.get("loc_scale", 1.0), "gate": spec.get("loc_gate", True)})
    if "half_turn" in recorded:  # folders made before --views replaced --half-turn
        recorded["views"] = 2 if recorded.pop("half_turn") else 1
    recorded.setdefault("line_guide", 0.0)  # folders made before the line guide mapped without it
    return dataclasses.replace(from_dict(InferenceConfig, recorded), tile=tile)


@torch.inference_mode()
def plot_qualitative(exp: Path, out: Path, spec: dict, *, n_images: int = 4) -> Path | None:
    """qualitative.png: the first `n_images` positive test patches of the manifest, one row each.

    Each patch is mapped as `crackloc predict` maps it (the experiment's inference settings,
    at scale 1: one window per patch).
    """
    seeds = sorted(p.name for p in (exp / "runs" / PROPOSED).glob("seed*") if (p / "config.yaml").is_file())
    if not seeds:
        return None
    cfg = load_config(exp / "runs" / PROPOSED / seeds[0] / "config.yaml")
    root, rows = read_manifest(cfg.data.manifest)
    if cfg.data.data and Path(cfg.data.data).is_dir():
        root = Path(cfg.data.data)
    chosen = sorted((r for r in rows if r.split == "test" and r.label == 1), key=lambda r: r.path)[:n_images]
    if not chosen:
        return None
    images = decode_rows(root, chosen, size=cfg.data.image_size, progress=False).images  # [n,3,S,S] uint8
    columns = _columns(exp, seeds[0])
    infer = dataclasses.replace(inference_config(spec, tile=cfg.data.image_size), scale=1.0)
    predictors = [Predictor(path, infer) for _, path in columns]
    grid = [[img.permute(1, 2, 0).float() / 255.0] + [p.predict(img).heatmap for p in predictors]
            for img in images]
    return _grid(out / "qualitative.png", ["image"] + [t for t, _ in columns], grid)


@torch.inference_mode()
def plot_qualitative_masks(exp: Path, out: Path, spec: dict, *, n_images: int = 3) -> Path | None:
    """qualitative_masks.png: tiled heatmaps of the first human-annotated images, with their masks.

    Mapped with the experiment's recorded inference settings, as the human-mask scores were.
    """
    masks = spec.get("masks", "")

    seeds = sorted(p.name for p in (exp / "runs" / PROPOSED).glob("seed*") if (p / "config.yaml").is_file())
    if not seeds or not masks or not Path(masks).is_dir():
        return None
    size = load_config(exp / "runs" / PROPOSED / seeds[0] / "config.yaml").data.image_size
    ds = MaskDataset(masks)
    samples = [ds[i] for i in range(min(n_images, len(ds)))]  # (stem, image [3,H,W] uint8, mask [H,W])
    columns = _columns(exp, seeds[0])
    grid = [[img.permute(1, 2, 0).float() / 255.0] for _, img, _ in samples]
    for _, path in columns:
        predictor = Predictor(path, inference_config(spec, tile=size))
        for row, (_, img, _) in zip(grid, samples, strict=True):
            row.append(predictor.predict(img).heatmap)
    for row, (_, _, mask) in zip(grid, samples, strict=True):
        row.append(mask.float())
    return _grid(out / "qualitative_masks.png", ["image"] + [t for t, _ in columns] + ["mask"], grid)


def make_figures(exp: Path, out: Path, spec: dict, *, n_images: int = 4) -> list[Path]:
    """Every figure the report shows; returns the files written."""
    made = plot_curves(exp, out)
    for fig in (plot_qualitative(exp, out, spec, n_images=n_images),
                plot_qualitative_masks(exp, out, spec, n_images=min(n_images, 3))):
        if fig is not None:
            made.append(fig)
    return made
