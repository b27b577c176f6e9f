"""Score a model's tiled heatmaps against human masks: PxAP, dev-tuned F1/IoU, ODS/OIS.

`evaluate_localization` splits the image stems of an `images/` + `masks/` folder into a DEV
part (picks the threshold) and a TEST part (is scored at it), deterministically from a seed,
and writes `partition.json`, `metrics.json`, `pr_curve.png` and `overlays.png`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from crackloc.data.masks import MaskDataset
from crackloc.errors import CracklocError
from crackloc.evaluation.localization import (
    DEFAULT_THRESHOLDS,
    PxAPEvaluator,
    ThresholdCurves,
    ThresholdEvaluator,
    dev_test_scores,
    pick_threshold,
)
from crackloc.evaluation.widths import WidthErrorEvaluator
from crackloc.inference.predictor import Predictor
from crackloc.io import save_figure, write_json

OVERLAY_SIDE = 384  # longest side of each overlay panel, px


def partition_stems(stems: list[str], *, dev_fraction: float, seed: int,
                    max_images: int | None = None) -> tuple[list[str], list[str]]:
    """Deterministic (dev, test) split of `stems` from `seed`; each part sorted, both non-empty.

    With `max_images`, a seeded random subset of that many stems is split.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise CracklocError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    order = torch.randperm(len(stems), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [sorted(stems)[i] for i in order][: max_images or len(stems)]
    if len(chosen) < 2:
        raise CracklocError(f"need at least 2 images for a dev/test split, got {len(chosen)}")
    n_dev = min(max(1, round(dev_fraction * len(chosen))), len(chosen) - 1)
    return sorted(chosen[:n_dev]), sorted(chosen[n_dev:])


SETTINGS_DEV_FRACTION, SETTINGS_SEED = 0.25, 0  # the fixed dev partition every setting is chosen on


def fixed_partition(stems: list[str], *, max_images: int | None = None) -> tuple[list[str], list[str]]:
    """The fixed (dev, test) partition of a mask set: dev chooses every setting, test is only scored.

    It is `partition_stems(stems, dev_fraction=0.25, seed=0)`, the partition
    `evaluate-localization` uses by default; with `max_images`, a seeded subset of each part
    (a quarter of them dev), so a small run never scores an image that chose a setting.
    """
    dev, test = partition_stems(stems, dev_fraction=SETTINGS_DEV_FRACTION, seed=SETTINGS_SEED)
    if max_images is not None:
        n_dev = min(len(dev), max(1, round(SETTINGS_DEV_FRACTION * max_images)))
        pick = torch.Generator().manual_seed(SETTINGS_SEED + 1)
        dev = sorted(dev[i] for i in torch.randperm(len(dev), generator=pick)[:n_dev].tolist())
        test = sorted(test[i] for i in torch.randperm(len(test), generator=pick)[: max_images - n_dev].tolist())
    if set(dev) & set(test):
        raise CracklocError(f"dev and test images overlap: {sorted(set(dev) & set(test))[:5]}")
    return dev, test


def _small(x: torch.Tensor, *, binary: bool = False, side: int = OVERLAY_SIDE) -> torch.Tensor:
    """Shrink [C,H,W] so the longest side is ≤ `side`: → [C,h,w] float.

    Area averaging; max pooling for binary maps so one-pixel cracks stay visible.
    """
    h, w = x.shape[-2:]
    f = min(1.0, side / max(h, w))
    if f == 1.0:
        return x.float()
    size = (max(1, round(h * f)), max(1, round(w * f)))
    if binary:
        return F.adaptive_max_pool2d(x[None].float(), size)[0]
    return F.interpolate(x[None].float(), size=size, mode="area")[0]


def _overlay_panels(image: torch.Tensor, heatmap: torch.Tensor, mask: torch.Tensor,
                    threshold: float) -> list[torch.Tensor]:
    """One overlay row: image [3,h,w], heatmap [h,w], mask [h,w], prediction [h,w] (small)."""
    pred = (heatmap >= threshold).float()  # [H,W] at full resolution, then shrunk
    return [_small(image.float() / 255.0).permute(1, 2, 0), _small(heatmap[None])[0],
            _small(mask[None], binary=True)[0], _small(pred[None], binary=True)[0]]


def _plot_pr(path: Path, curves: ThresholdCurves, threshold: float, pxap: float) -> None:
    """PR curve of the TEST part with the dev-chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(curves.recall.numpy(), curves.precision.numpy(), lw=1.5, label="test")
    j = int(torch.argmin((curves.thresholds - threshold).abs()))
    ax.scatter([float(curves.recall[j])], [float(curves.precision[j])], color="red", zorder=3,
               label=f"dev threshold {threshold:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"test PR, tolerance {curves.tolerance} px (PxAP {pxap:.3f}, exact)")
    ax.legend(loc="lower left")
    save_figure(path, fig)
    plt.close(fig)


def _plot_overlays(path: Path, rows: list[tuple[str, list[torch.Tensor]]]) -> None:
    """Grid: one row per image, columns image | heatmap | mask | thresholded prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ("image", "heatmap", "mask", "prediction")
    h, w = rows[0][1][1].shape  # heatmap panel [h,w] sets the row height
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, len(rows) * (3 * h / w + 0.4)),
                             squeeze=False)
    for r, (stem, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel.numpy(), cmap=None if panel.ndim == 3 else ("jet" if c == 1 else "gray"),
                      vmin=0, vmax=1)
            ax.set_axis_off()
            ax.set_title(f"{stem}: {titles[c]}" if c == 0 else titles[c], fontsize=9)
    save_figure(path, fig)
    plt.close(fig)


def score_images(predictor: Predictor, ds: MaskDataset, stems: list[str],
                 evaluators: list[ThresholdEvaluator | PxAPEvaluator], *,
                 failed: list[dict[str, str]] | None = None, bar: tqdm | None = None
                 ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The one "score a mask folder" loop: predict each stem's map, feed every evaluator.

    Yields (stem, image [3,H,W] uint8, heatmap [H,W], mask [H,W] bool) of the images that
    loaded; the others go to `failed` (path, reason), or raise when `failed` is None.
    """
    index = {s: i for i, s in enumerate(ds.stems)}
    for stem in stems:
        if bar is not None:
            bar.set_postfix_str(stem)
        try:
            _, image, mask = ds[index[stem]]  # [3,H,W] uint8, [H,W] bool
        except CracklocError as exc:
            if failed is None:
                raise
            failed.append({"path": str(ds.image_path(stem)), "reason": str(exc)})
            if bar is not None:
                bar.update(1)
            continue
        heatmap = predictor.predict(image).heatmap  # [H,W]
        for ev in evaluators:
            ev.accumulate(heatmap, mask)
        if bar is not None:
            bar.update(1)
        yield stem, image, heatmap, mask


def score_folder(predictor: Predictor, ds: MaskDataset, stems: list[str], *, tolerance: int = 2,
                 num_thresholds: int = DEFAULT_THRESHOLDS, progress: bool = False) -> dict[str, float]:
    """PxAP (exact) and best F1 (ODS, `tolerance` px) over `stems`: for sweeps and precision checks."""
    pxap = PxAPEvaluator(num_thresholds=num_thresholds)
    thr = ThresholdEvaluator(num_thresholds=num_thresholds, tolerance=tolerance, per_image=False)
    with tqdm(total=len(stems), desc="scoring", disable=not progress, leave=False) as bar:
        for _ in score_images(predictor, ds, stems, [pxap, thr], bar=bar):
            pass
    return {"pxap": pxap.compute(), "best_f1": thr.compute().ods_f1, "n_images": len(stems)}


@dataclass
class _Scores:
    """Evaluators filled by `_score_all`, failures, and overlay rows of the first test images."""

    dev: ThresholdEvaluator
    test: ThresholdEvaluator
    pxap_test: PxAPEvaluator
    pxap_all: PxAPEvaluator
    exact_test: ThresholdEvaluator  # pixel-exact ODS/OIS (0 px), the common protocol of published crack tables
    widths: WidthErrorEvaluator | None = None
    failed: list[dict[str, str]] = field(default_factory=list)
    scored_test: list[str] = field(default_factory=list)
    rows: list[tuple[str, list[torch.Tensor]]] = field(default_factory=list)


def _score_all(predictor: Predictor, ds: MaskDataset, dev_stems: list[str], test_stems: list[str], *,
               tolerance: int, num_thresholds: int, n_overlays: int, progress: bool) -> _Scores:
    """Tile and score the DEV images, pick the threshold, then the TEST images."""
    sc = _Scores(*(ThresholdEvaluator(num_thresholds=num_thresholds, tolerance=tolerance)
                   for _ in range(2)),
                 *(PxAPEvaluator(num_thresholds=num_thresholds) for _ in range(2)),
                 ThresholdEvaluator(num_thresholds=num_thresholds, tolerance=0))
    with tqdm(total=len(dev_stems) + len(test_stems), desc="localize", disable=not progress) as bar:
        for _ in score_images(predictor, ds, dev_stems, [sc.dev, sc.pxap_all], failed=sc.failed, bar=bar):
            pass
        if int(sc.dev.n_gt) == 0:
            failed = "; ".join(f"{Path(f['path']).name}: {f['reason'].removeprefix(f['path'] + ': ')}"
                               for f in sc.failed[:3]) \
                + ("; …" if len(sc.failed) > 3 else "")
            raise CracklocError(f"{ds.root}: no usable dev image with crack pixels to pick a threshold ("
                                + (f"{len(sc.failed)} image(s) failed: {failed}" if sc.failed
                                   else "the dev images have no crack pixels") + "; or raise --dev-fraction)")
        threshold = pick_threshold(sc.dev.compute())  # known before any test image is tiled
        sc.widths = WidthErrorEvaluator(threshold=threshold)
        evaluators = [sc.test, sc.pxap_test, sc.pxap_all, sc.widths, sc.exact_test]
        for stem, image, heatmap, mask in score_images(predictor, ds, test_stems, evaluators,
                                                       failed=sc.failed, bar=bar):
            sc.scored_test.append(stem)
            if len(sc.rows) < n_overlays:
                sc.rows.append((stem, _overlay_panels(image, heatmap, mask, threshold)))
    if int(sc.test.n_gt) == 0:
        raise CracklocError(f"{ds.root}: no usable test image with crack pixels to score")
    return sc


def evaluate_localization(predictor: Predictor, data_dir: str | Path, out_dir: str | Path, *,
                          dev_fraction: float = 0.25, seed: int = 0, tolerance: int = 2,
                          max_images: int | None = None,
                          partition: tuple[list[str], list[str]] | None = None,
                          n_overlays: int = 6, progress: bool = True,
                          num_thresholds: int = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Map every image of `data_dir` (images/ + masks/) with `predictor`, score, write the report.

    PxAP, F1, IoU, ODS and OIS are reported on the TEST part, F1/IoU at the threshold that
    maximises F1 on the DEV part; `pxap_all` covers both parts. F1/IoU/ODS/OIS use
    `tolerance` px, PxAP is exact, and `ods_f1_0px` / `ois_f1_0px` are ODS/OIS with no
    tolerance (one threshold for the set / the best per image, pixel-exact: the protocol of
    published crack tables). Images that fail to load are listed under `failed`.

    Args:
        predictor: The model file and its `InferenceConfig` (tiling, scale, gate, AHR cut, ...).
        data_dir: Folder with `images/` and `masks/`.
        out_dir: Where partition.json, metrics.json, pr_curve.png and overlays.png go.
        dev_fraction: Share of the images used to pick the threshold.
        seed: Seed of the dev/test partition (and of the `max_images` subset).
        tolerance: Matching tolerance in px for F1/IoU/ODS/OIS (0 = exact).
        max_images: Score a seeded random subset of this many images.
        partition: Explicit (dev, test) stems (e.g. `fixed_partition`); overrides dev_fraction,
            seed and max_images. The two must not overlap.
        n_overlays: Test images shown in overlays.png (0 = no figure).
        progress: Show a tqdm bar.
        num_thresholds: Threshold grid size of the evaluators.

    Returns:
        The metrics dict written to metrics.json.
    """
    out_dir = Path(out_dir)
    ds = MaskDataset(data_dir)
    if partition is None:
        dev_stems, test_stems = partition_stems(ds.stems, dev_fraction=dev_fraction, seed=seed,
                                                max_images=max_images)
    else:
        dev_stems, test_stems = sorted(partition[0]), sorted(partition[1])
        unknown = sorted(set(dev_stems + test_stems) - set(ds.stems))
        if set(dev_stems) & set(test_stems) or unknown or not dev_stems or not test_stems:
            raise CracklocError(f"{data_dir}: bad dev/test partition (overlap, empty part, or unknown "
                                f"images {unknown[:3]})")
    write_json(out_dir / "partition.json", {"seed": seed, "dev_fraction": dev_fraction,
                                            "max_images": max_images, "dev": dev_stems,
                                            "test": test_stems, "explicit": partition is not None})
    sc = _score_all(predictor, ds, dev_stems, test_stems, tolerance=tolerance,
                    num_thresholds=num_thresholds, n_overlays=n_overlays, progress=progress)
    inference = dataclasses.asdict(predictor.cfg)
    exact = sc.exact_test.compute()
    metrics = {"pxap": sc.pxap_test.compute(), **dev_test_scores(sc.dev, sc.test),
               "ods_f1_0px": exact.ods_f1, "ois_f1_0px": exact.ois_f1,
               "pxap_all": sc.pxap_all.compute(), **sc.widths.compute(),
               "n_images": sc.dev.n_images + sc.test.n_images,
               "n_dev": sc.dev.n_images, "n_test": sc.test.n_images, "tolerance": tolerance,
               "num_thresholds": num_thresholds, "data_dir": str(data_dir),
               "checkpoint": str(predictor.checkpoint), "inference": inference,
               **{k: inference[k] for k in ("tile", "overlap", "scale", "gate", "batch_size")},
               "dev_fraction": dev_fraction, "seed": seed, "max_images": max_images,
               "scored_test": sc.scored_test, "failed": sc.failed}
    write_json(out_dir / "metrics.json", metrics)
    _plot_pr(out_dir / "pr_curve.png", sc.test.compute(), metrics["threshold"], metrics["pxap"])
    if sc.rows:
        _plot_overlays(out_dir / "overlays.png", sc.rows)
    return metrics
