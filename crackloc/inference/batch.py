"""Predict a list of image files into an output folder: PNGs + one JSON line per image.

Bad files never stop the run: each is reported with its reason, and the exit code tells.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from crackloc.errors import CracklocError
from crackloc.inference.predictor import Predictor, colorize, heatmap_stats, overlay
from crackloc.io import IMAGE_EXTENSIONS, atomic_write, load_rgb, rgb_to_tensor, save_png


@dataclass
class BatchReport:
    """What happened to each input."""

    records: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given plus image files inside given folders (recursively); missing paths → failed."""
    files, failed = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                failed.append((str(p), "folder holds no images (jpg/png/bmp/tif)"))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            failed.append((str(p), "no such file or folder"))
    return files, failed


def safe_stem(path: Path, used: set[str]) -> str:
    """A file-name stem that cannot leave the output folder and does not collide."""
    stem = re.sub(r"[^\w.\-]+", "_", path.stem, flags=re.UNICODE).strip("._") or "image"
    name, k = stem[:120], 1
    while name in used:
        k += 1
        name = f"{stem[:110]}_{k}"
    used.add(name)
    return name


def predict_files(predictor: Predictor, inputs: list[str | Path], out: str | Path, *, geometry: bool = False,
                  mm_per_px: float | None = None, max_pixels: int | None = None,
                  progress: bool = True) -> BatchReport:
    """Write `<stem>_heatmap.png`, `<stem>_overlay.png` and `predictions.jsonl` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, failed = expand_inputs(inputs)
    report, used = BatchReport(failed=failed), set()
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    for path in tqdm(files, desc="predicting", unit="img", disable=not progress):
        try:
            image = rgb_to_tensor(load_rgb(path, **kwargs))
            pred = predictor.predict(image)
        except CracklocError as exc:
            report.failed.append((str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        except (RuntimeError, MemoryError) as exc:
            report.failed.append((str(path), f"prediction failed ({type(exc).__name__}: {str(exc)[:120]})"))
            continue
        stem = safe_stem(path, used)
        rec = {"path": str(path), "crack_probability": round(pred.probability, 5),
               "crack": pred.probability >= predictor.threshold, "decision_threshold": predictor.threshold,
               "width": int(image.shape[2]), "height": int(image.shape[1]), "n_tiles": pred.n_tiles,
               "heatmap": heatmap_stats(pred.heatmap)}
        over = overlay(image, pred.heatmap)
        if geometry:
            from crackloc.inference.geometry import draw_geometry, measure_cracks

            geo = measure_cracks((pred.heatmap >= 0.5).numpy(), mm_per_px=mm_per_px)
            rec["geometry"] = geo.to_dict()
            over = draw_geometry(over, geo)
        rec["heatmap_png"] = save_png(out / f"{stem}_heatmap.png", (pred.heatmap.numpy() * 255).round().astype("uint8")).name
        rec["overlay_png"] = save_png(out / f"{stem}_overlay.png", over).name
        rec["color_png"] = save_png(out / f"{stem}_color.png", colorize(pred.heatmap)).name
        report.records.append(rec)
    lines = "".join(json.dumps(r) + "\n" for r in report.records)
    atomic_write(out / "predictions.jsonl", lambda f: f.write(lines), binary=False)
    if report.failed:
        bad = "".join(json.dumps({"path": p, "error": e}) + "\n" for p, e in report.failed)
        atomic_write(out / "failed.jsonl", lambda f: f.write(bad), binary=False)
    return report
