"""`crackloc compare BEFORE AFTER`: register, map both photos alike, match cracks, write the change.

OUT/
  changes.json          the pair (files, sha256), the registration (homography AFTER → BEFORE,
                        residual, inliers, overlap), the model and settings, counts, one entry per crack
  changes.csv           one row per crack (`CrackChange.to_dict`)
  change_overlay.png    BEFORE with unchanged cracks grey, grown parts orange, new cracks red, cracks
                        no longer visible blue, each labelled by its id
  after_registered.png  AFTER resampled into BEFORE's frame
Every file is written atomically; a pair that cannot be registered writes nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crackloc.change.cracks import FAINT_LEVEL, TOLERANCE_PX, ChangeReport, compare_masks
from crackloc.change.register import Registration, register
from crackloc.errors import CracklocError
from crackloc.imageops.marker import MarkerSpec, find_marker, parse_marker
from crackloc.inference.outputs import Outputs
from crackloc.inference.plane import marker_note, plane_scale
from crackloc.inference.predictor import Predictor
from crackloc.io import (
    DEFAULT_MAX_PIXELS,
    file_digest,
    load_rgb,
    rgb_to_tensor,
    save_png,
    write_json,
    write_text,
)
from crackloc.tensors import MASK_LEVEL

COLOURS = {"unchanged": (170, 170, 170), "grown": (255, 140, 0), "new": (230, 20, 20),
           "no longer visible": (40, 120, 255), "not in after": (120, 120, 120)}
LIGHT_SIGMA = 48.0  # px: window of `match_light`'s local means
CSV_COLUMNS = ("id", "status", "length_before_px", "length_after_px", "length_added_px", "mean_width_before_px",
               "mean_width_after_px", "max_width_before_px", "max_width_after_px", "width_change_px")


class RegistrationError(CracklocError):
    """The two photos cannot be registered: not one surface, too little overlap, a blank photo."""


@dataclass
class PairResult:
    """What `compare_photos` found: the registration and the crack changes."""

    registration: Registration
    report: ChangeReport
    before_map: np.ndarray  # float [H,W], BEFORE's heatmap
    after_map: np.ndarray  # float [H,W], AFTER's heatmap in BEFORE's frame (0 where AFTER shows nothing)


def map_pair(predictor: Predictor, before: np.ndarray, after: np.ndarray, *, mm_per_px: float | None = None,
             tolerance: float = TOLERANCE_PX) -> PairResult:
    """Register AFTER onto BEFORE (uint8 [H,W,3] each), map both with `predictor`, compare their crack masks.

    Raises:
        RegistrationError: the pair cannot be registered (before any model runs).
    """
    try:
        reg = register(before, after)
    except CracklocError as exc:
        raise RegistrationError(str(exc)) from None
    seen = reg.valid  # [H,W] bool
    before_map = predictor.predict(rgb_to_tensor(before)).heatmap.numpy()  # [H,W]
    # AFTER is mapped in BEFORE's frame, at BEFORE's pixel size and relit to BEFORE's light, so that the model
    # draws each crack at the same width in both (its width error depends on a crack's width in px and
    # contrast). Tried on other synthetic campaigns than the benchmark's (seeds 1, 2), and not kept: each
    # photo mapped in its own frame (1-2 px of false widening), the part AFTER does not show filled with
    # BEFORE (more false changes), local contrast matching (new cracks faded into the background).
    after_map = predictor.predict(rgb_to_tensor(match_light(reg.warp(after), before, seen))).heatmap.numpy()
    after_map = np.where(seen, after_map, 0.0).astype(np.float32)
    report = compare_masks(before_map >= MASK_LEVEL, after_map >= MASK_LEVEL, seen=seen, mm_per_px=mm_per_px,
                           faint_before=before_map >= FAINT_LEVEL, faint_after=after_map >= FAINT_LEVEL,
                           tolerance=tolerance)
    return PairResult(reg, report, before_map, after_map)


def match_light(after: np.ndarray, before: np.ndarray, seen: np.ndarray, *, sigma: float = LIGHT_SIGMA) -> np.ndarray:
    """AFTER (registered, uint8 [H,W,3]) relit to BEFORE: per channel, its local mean (a Gaussian window of
    `sigma` px, inside `seen`) replaced by BEFORE's, and its detail (the image minus that mean) scaled by one
    factor for the photo so that its spread matches BEFORE's. Brightness, white balance, light gradients and
    gamma then differ less, so the model draws each crack at about the same contrast in both photos; one
    factor for the whole photo keeps a new or wider crack as dark as it is."""
    w = seen.astype(np.float32)  # [H,W]
    norm = _local_mean(w, sigma) + 1e-6
    out = after.copy()
    for c in range(3):
        a, b = after[..., c].astype(np.float32), before[..., c].astype(np.float32)
        ma, mb = (_local_mean(x * w, sigma) / norm for x in (a, b))  # [H,W] local means
        gain = (b - mb)[seen].std() / max(float((a - ma)[seen].std()), 1e-3)
        out[..., c] = np.clip((a - ma) * gain + mb, 0, 255).round().astype(np.uint8)
    return np.where(seen[..., None], out, after)


def _local_mean(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of float32 [H,W] with `sigma` px, computed at 1/k of the size (k = sigma / 4, the
    blur is smooth at that scale) and resized back: seconds less on a 12 MP photo."""
    h, w = x.shape
    k = max(1, int(sigma // 4))
    small = cv2.resize(x, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / k), (w, h), interpolation=cv2.INTER_LINEAR)


def compare_files(predictor: Predictor, before: Path, after: Path, *, mm_per_px: float | None = None,
                  marker: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, tolerance: float = TOLERANCE_PX
                  ) -> tuple[PairResult, dict, dict[str, np.ndarray]]:
    """Load and compare two photo files: → (the result, its changes.json content, its PNGs by kind).

    Raises:
        CracklocError: a missing or unreadable photo, or (RegistrationError) a pair that cannot be
            registered, in one line naming both files.
    """
    images = [load_rgb(p, max_pixels=max_pixels) for p in (before, after)]
    try:
        result = map_pair(predictor, *images, mm_per_px=mm_per_px, tolerance=tolerance)
    except RegistrationError as exc:
        raise RegistrationError(f"{before.name} / {after.name}: {exc}") from None
    if marker is not None:
        result.report = on_marker_plane(result.report, images[0], parse_marker(marker))
    reg, report = result.registration, result.report
    made = Outputs(save="record", geometry=True, mm_per_px=mm_per_px, marker=marker).made_by(predictor)
    record = {"before": str(before), "after": str(after), "before_sha256": file_digest(before),
              "after_sha256": file_digest(after), **made, "registration": registration_dict(reg),
              "tolerance_px": tolerance, "map_threshold": MASK_LEVEL, **report.to_dict()}
    pngs = {"change_overlay": draw_changes(images[0], report), "after_registered": reg.warp(images[1])}
    return result, record, pngs


def on_marker_plane(report: ChangeReport, before: np.ndarray, spec: MarkerSpec) -> ChangeReport:
    """`report` with mm on the plane of the marker BEFORE (uint8 [H,W,3]) shows, or noted as not found."""
    found = find_marker(before, spec)
    if found is None:
        return dataclasses.replace(report, marker=marker_note(None, spec))
    shape = before.shape[:2]
    changes = [dataclasses.replace(c, mm_per_px=None, plane_scale=plane_scale(c.skeleton, shape, found))
               for c in report.changes]
    return dataclasses.replace(report, changes=changes, mm_per_px=None, marker=marker_note(found, spec))


def compare_photos(predictor: Predictor, before: str | Path, after: str | Path, out: str | Path, *,
                   mm_per_px: float | None = None, marker: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                   tolerance: float = TOLERANCE_PX) -> PairResult:
    """Compare two photos of one surface and write OUT's files (module docstring).

    Raises:
        CracklocError: a missing or unreadable photo, or a pair that cannot be registered (one
            line naming both files; nothing is written).
    """
    out = Path(out)
    result, record, pngs = compare_files(predictor, Path(before), Path(after), mm_per_px=mm_per_px, marker=marker,
                                         max_pixels=max_pixels, tolerance=tolerance)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "changes.json", record)
    write_text(out / "changes.csv", changes_csv(result.report))
    for kind, image in pngs.items():
        save_png(out / f"{kind}.png", image)
    return result


def registration_dict(reg: Registration) -> dict:
    """changes.json's account of the registration."""
    return {"homography_after_to_before": [[round(float(v), 9) for v in row] for row in reg.homography],
            "rms_px": round(reg.rms_px, 3), "inliers": reg.inliers, "overlap": round(reg.overlap, 4),
            "refined": reg.refined, "before_size": list(reg.before_shape[::-1]), "after_size": list(reg.after_shape[::-1])}


def changes_csv(report: ChangeReport) -> str:
    """One row per crack: `CSV_COLUMNS`, then the mm columns when a scale is known, then the box."""
    return crack_rows_csv([c.to_dict() for c in report.changes])


def crack_rows_csv(rows: list[dict], *, first: tuple[str, ...] = ()) -> str:
    """CSV of crack dicts (`CrackChange.to_dict`, plus the `first` columns, e.g. the pair of a campaign)."""
    mm = list(dict.fromkeys(k for row in rows for k in row if k.endswith("_mm")))
    columns = [*first, *CSV_COLUMNS, *mm, "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        x0, y0, x1, y1 = row["bbox"]
        writer.writerow({**row, "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1})
    return buf.getvalue()


def draw_changes(before: np.ndarray, report: ChangeReport) -> np.ndarray:
    """BEFORE (uint8 [H,W,3], dimmed) with each crack drawn in its status colour, grown parts orange on
    top, and its id beside it: → uint8 [H,W,3]."""
    h, w = before.shape[:2]
    thick = max(1, round(max(h, w) / 800))
    canvas = (before.astype(np.float32) * 0.6).astype(np.uint8)
    layers: dict[str, list[np.ndarray]] = {}  # colour → skeleton pixels, painted in one pass each
    for change in report.changes:
        layers.setdefault("unchanged" if change.status == "grown" else change.status, []).append(change.skeleton)
    for status, pixels in layers.items():
        _paint(canvas, np.concatenate(pixels), COLOURS[status], thick)
    grown = [c.added for c in report.changes if c.status == "grown"]
    if grown:  # on top
        _paint(canvas, np.concatenate(grown), COLOURS["grown"], thick + 1)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, max(h, w) // 60))
    for change in report.changes:
        x0, y0 = change.bbox[:2]
        draw.text((x0, max(0, y0 - font.size - 2)), f"#{change.id}", fill=COLOURS[change.status], font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def _paint(canvas: np.ndarray, pixels: np.ndarray, colour: tuple[int, int, int], thick: int) -> None:
    """Colour `pixels` ([N,2] (y, x)) of `canvas` in place, grown by `thick` − 1 px."""
    if not len(pixels):
        return
    mask = np.zeros(canvas.shape[:2], np.uint8)
    mask[pixels[:, 0], pixels[:, 1]] = 1
    if thick > 1:
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=thick - 1)
    canvas[mask > 0] = colour
