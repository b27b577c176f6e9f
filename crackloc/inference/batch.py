"""Predict a list of image files into an output folder: PNGs + one JSON line per image.

Bad files never stop the run: each is reported with its reason, and the exit code tells.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from crackloc.errors import CracklocError
from crackloc.inference.predictor import Predictor, colorize, heatmap_stats, overlay
from crackloc.io import (
    IMAGE_EXTENSIONS,
    atomic_write,
    failure_reason,
    load_rgb,
    rgb_to_tensor,
    save_png,
)

FLUSH_SECONDS = 10.0  # predictions.jsonl is rewritten at least this often during a run


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
    """A file-name stem that cannot leave the output folder and does not collide.

    Only letters, digits, `_`, `-` and inner dots survive (no `/`, no leading `.` or `-`), the
    stem is capped at 180 UTF-8 bytes, and names are unique ignoring case (`used` holds the
    casefolded names given out so far).
    """
    stem = re.sub(r"[^\w.\-]+", "_", path.stem, flags=re.UNICODE).lstrip("._-").rstrip("._") or "image"
    stem = stem.encode("utf-8")[:180].decode("utf-8", errors="ignore")
    name, k = stem, 1
    while name.casefold() in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name.casefold())
    return name


def _predict_one(predictor: Predictor, path: Path, out: Path, stem_used: set[str], *, geometry: bool,
                 mm_per_px: float | None, load_kwargs: dict) -> dict:
    """Predict one file and write its PNGs: → its JSON record (raises CracklocError for a bad file)."""
    image = rgb_to_tensor(load_rgb(path, **load_kwargs))  # [3,H,W] uint8
    try:
        pred = predictor.predict(image)
    except (RuntimeError, MemoryError) as exc:
        first = (str(exc).splitlines() or [""])[0][:120]
        raise CracklocError(f"{path}: prediction failed ({type(exc).__name__}: {first})") from None
    stem = safe_stem(path, stem_used)
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
    heat_u8 = (pred.heatmap.numpy() * 255).round().astype("uint8")
    rec["heatmap_png"] = save_png(out / f"{stem}_heatmap.png", heat_u8).name
    rec["overlay_png"] = save_png(out / f"{stem}_overlay.png", over).name
    rec["color_png"] = save_png(out / f"{stem}_color.png", colorize(pred.heatmap)).name
    return rec


def _write_jsonl(path: Path, records: list[dict]) -> None:
    """Atomically (re)write a JSON-lines file."""
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(lines), binary=False)


def predict_files(predictor: Predictor, inputs: list[str | Path], out: str | Path, *, geometry: bool = False,
                  mm_per_px: float | None = None, max_pixels: int | None = None,
                  progress: bool = True) -> BatchReport:
    """Write `<stem>_heatmap.png`, `<stem>_overlay.png` and `predictions.jsonl` into `out`.

    Bad inputs are skipped and listed in `failed.jsonl` (path, reason); `predictions.jsonl` is
    rewritten atomically every `FLUSH_SECONDS`, so an interrupted run keeps what it finished.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, failed = expand_inputs(inputs)
    report, used = BatchReport(failed=failed), set()
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    (out / "failed.jsonl").unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    last_flush = time.monotonic()
    for path in tqdm(files, desc="predicting", unit="img", disable=not progress):
        try:
            report.records.append(_predict_one(predictor, path, out, used, geometry=geometry,
                                               mm_per_px=mm_per_px, load_kwargs=kwargs))
        except CracklocError as exc:
            report.failed.append((str(path), failure_reason(exc, path)))
        if time.monotonic() - last_flush > FLUSH_SECONDS:
            _write_jsonl(out / "predictions.jsonl", report.records)
            last_flush = time.monotonic()
    _write_jsonl(out / "predictions.jsonl", report.records)
    if report.failed:
        _write_jsonl(out / "failed.jsonl", [{"path": p, "reason": e} for p, e in report.failed])
    return report
