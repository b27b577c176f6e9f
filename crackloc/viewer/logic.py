"""The inspection viewer's logic, without gradio: a mapped photo re-thresholded at will.

- `measure` (threshold → mask → `CrackReport`), `table_rows`, `crack_csv`, `render_view` and
  `summary` turn a mapped photo and the page's settings into what the page shows.
- `export_files` writes `predict`'s JSON line and PNGs (`crackloc.inference.outputs.image_outputs`,
  the one output writer) with the mask and the crack CSV.
- Mapping photos with a cache: `crackloc.viewer.mapper.PhotoMapper`; folders (paths kept inside
  the served folder, `predict`'s results reused, the rest mapped): `crackloc.viewer.folders`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from crackloc.config import InferenceConfig, check_value
from crackloc.errors import CracklocError
from crackloc.inference.geometry import CrackReport, measure_cracks
from crackloc.inference.outdir import RECORDS
from crackloc.inference.outputs import Outputs, image_outputs, safe_stem, write_records
from crackloc.inference.predictor import (
    colorize,
)
from crackloc.io import (
    save_png,
    write_text,
)
from crackloc.tensors import MASK_LEVEL

MAP_THRESHOLD = MASK_LEVEL  # predict's map threshold for geometry (`heatmap >= MASK_LEVEL`)
OVERLAY_ALPHA = 0.55  # predict's overlay opacity (crackloc.inference.predictor.overlay)
OVERLAY_FLOOR = 0.2  # map values below this are not tinted (same function)
MIN_AREA = 20  # smallest crack kept, px (measure_cracks' default, as predict)
PREVIEW_SIDE = 1600  # the page shows the photo at most this many px on its longer side
SKELETON_COLOR, BOX_COLOR, HIGHLIGHT_COLOR = (255, 255, 0), (0, 200, 255), (255, 0, 255)
TABLE_HEADERS = ["#", "length px", "mean width px", "max width px", "length mm", "mean width mm",
                 "max width mm", "angle °"]  # angle: orientation from horizontal, counter-clockwise
CSV_COLUMNS = ["index", "length_px", "mean_width_px", "max_width_px", "length_mm", "mean_width_mm",
               "max_width_mm", "orientation_deg", "area_px", "area_mm2", "bbox_x0", "bbox_y0", "bbox_x1",
               "bbox_y1"]
_CSV_INTS = {"index", "area_px", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"}


# ---- units ----------------------------------------------------------------------------------


def to_mm(px: float, mm_per_px: float | None) -> float | None:
    """A length in px → mm (None without a scale)."""
    return None if mm_per_px is None else px * mm_per_px


def parse_mm_per_px(value: Any) -> float | None:
    """The page's scale box → mm per px; empty or 0 means 'no scale' (None). CracklocError if bad."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CracklocError(f"scale: not a number: {value!r}") from None
    if number == 0:
        return None
    return float(check_value("mm_per_px", number, option="scale (mm per px)"))


def check_threshold(threshold: Any) -> float:
    """A map threshold in (0, 1]."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise CracklocError(f"map threshold: not a number: {threshold!r}") from None
    if not (math.isfinite(t) and 0.0 < t <= 1.0):
        raise CracklocError(f"map threshold must be in (0, 1], got {threshold!r}")
    return t


# ---- threshold → mask → cracks → table / CSV -------------------------------------------------


def crack_mask(heatmap: torch.Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """bool [H,W]: map ≥ threshold (predict's rule, `heatmap >= 0.5`)."""
    heat = heatmap.numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    return heat >= check_threshold(threshold)


def measure(heatmap: torch.Tensor | np.ndarray, threshold: float = MAP_THRESHOLD, *,
            mm_per_px: float | None = None, min_area: int = MIN_AREA) -> CrackReport:
    """Threshold a heatmap [H,W] and measure its cracks (as `predict --geometry` at 0.5)."""
    return measure_cracks(crack_mask(heatmap, threshold), mm_per_px=mm_per_px, min_area=min_area)


def with_scale(report: CrackReport, mm_per_px: float | None) -> CrackReport:
    """The same report in another scale (no re-measuring: mm values are px × mm_per_px)."""
    if mm_per_px == report.mm_per_px:
        return report
    cracks = [dataclasses.replace(c, mm_per_px=mm_per_px) for c in report.cracks]
    return dataclasses.replace(report, cracks=cracks, mm_per_px=mm_per_px)


def table_rows(report: CrackReport) -> list[list[Any]]:
    """One row per crack (TABLE_HEADERS): index, length, mean/max width in px and mm, orientation."""
    rows = []
    for c in report.cracks:
        d = c.to_dict()
        rows.append([d["index"], d["length_px"], d["mean_width_px"], d["max_width_px"], d.get("length_mm"),
                     d.get("mean_width_mm"), d.get("max_width_mm"), d["orientation_deg"]])
    return rows


def crack_csv(report: CrackReport) -> str:
    """The crack table as CSV (CSV_COLUMNS), values as in predict's `geometry.cracks` (mm empty without scale)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in report.cracks:
        d = c.to_dict()
        x0, y0, x1, y1 = d["bbox"]
        values = {**d, "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1}
        writer.writerow(["" if values.get(k) is None else values[k] for k in CSV_COLUMNS])
    return buf.getvalue()


def read_crack_csv(text: str) -> list[dict[str, Any]]:
    """`crack_csv` text → dicts shaped like predict's `geometry.cracks` entries (`Crack.to_dict`)."""
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        d: dict[str, Any] = {}
        for k in CSV_COLUMNS:
            if row.get(k, "") != "" and not k.startswith("bbox_"):
                d[k] = int(row[k]) if k in _CSV_INTS else float(row[k])
        d["bbox"] = [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")]
        out.append(d)
    return out


# ---- a mapped photo --------------------------------------------------------------------------


@dataclass
class Preview:
    """A photo and its map shrunk for the page: `scale` page px per photo px."""

    scale: float
    rgb: np.ndarray  # float32 [h,w,3] in 0..255
    heat: np.ndarray  # float32 [h,w] in [0,1]
    color: np.ndarray  # float32 [h,w,3] colorized heat


def make_preview(image: torch.Tensor, heatmap: torch.Tensor, *, side: int = PREVIEW_SIDE) -> Preview:
    """uint8 [3,H,W] + heatmap [H,W] → a Preview at most `side` px on its longer side."""
    height, width = heatmap.shape
    s = min(1.0, side / max(height, width))
    size = (max(1, round(width * s)), max(1, round(height * s)))
    rgb = image.permute(1, 2, 0).numpy()
    heat = heatmap.numpy().astype(np.float32, copy=False)
    if s < 1.0:
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BILINEAR))
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.BILINEAR))
    heat = np.clip(heat, 0.0, 1.0).astype(np.float32)
    color = colorize(torch.from_numpy(heat)).astype(np.float32)
    return Preview(scale=s, rgb=rgb.astype(np.float32), heat=heat, color=color)


@dataclass(eq=False)
class MappedPhoto:
    """One photo mapped once: the image, its full-resolution heatmap and the prediction numbers."""

    key: str  # content hash + model + settings (the cache key)
    name: str  # shown in the page and written as the record's "path"
    image: torch.Tensor  # uint8 [3,H,W]
    heatmap: torch.Tensor  # float32 [H,W] in [0,1]
    probability: float
    decision_threshold: float
    n_tiles: int
    cfg: InferenceConfig
    seconds: float = 0.0
    grayscale: bool = False
    scale: float = 1.0  # the resize factor the model saw (cfg.scale, or chosen per photo with auto_scale)
    cached: bool = False  # True when served from the cache (no model run)
    model_id: str = ""  # the Predictor's `model_id` (records name the model that made them)
    digest: str = ""  # sha256 of the photo file (records carry it; the viewer reuses results by it)
    _preview: list = field(default_factory=list, repr=False)  # shared by copies of a cached photo

    @property
    def height(self) -> int:
        return int(self.heatmap.shape[0])

    @property
    def width(self) -> int:
        return int(self.heatmap.shape[1])

    @property
    def crack(self) -> bool:
        return self.probability >= self.decision_threshold

    def preview(self) -> Preview:
        if not self._preview:
            self._preview.append(make_preview(self.image, self.heatmap))
        return self._preview[0]


# ---- what the page shows ---------------------------------------------------------------------


def _font(size: int):
    """PIL's built-in font at `size` px (FreeType), or its small bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def render_overlay(preview: Preview, report: CrackReport | None, *, opacity: float = OVERLAY_ALPHA,
                   selected: int | None = None) -> np.ndarray:
    """The page's overlay: the map tinted over the photo (predict's blend) + each crack's skeleton and box.

    `selected` (a crack index) is drawn in magenta, thicker, with its length and width.
    """
    a = (float(np.clip(opacity, 0.0, 1.0))
         * np.clip((preview.heat - OVERLAY_FLOOR) / (1 - OVERLAY_FLOOR), 0.0, 1.0))[..., None]
    out = (preview.rgb * (1 - a) + preview.color * a).round().astype(np.uint8)  # [h,w,3]
    if report is None or not report.cracks:
        return out
    h, w = out.shape[:2]
    s = preview.scale
    chosen = None
    for c in report.cracks:
        pts = np.minimum((c.skeleton * s).astype(np.int64), [h - 1, w - 1])
        if c.index == selected:
            chosen = c
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    out[np.clip(pts[:, 0] + dy, 0, h - 1), np.clip(pts[:, 1] + dx, 0, w - 1)] = HIGHLIGHT_COLOR
        else:
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # 2 px wide: visible on a shrunk photo
                out[np.minimum(pts[:, 0] + dy, h - 1), np.minimum(pts[:, 1] + dx, w - 1)] = SKELETON_COLOR
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    small, large = _font(max(11, round(w / 110))), _font(max(14, round(w / 55)))  # readable when shown shrunk
    for c in report.cracks:
        x0, y0, x1, y1 = (round(v * s) for v in c.bbox)
        box = (x0, y0, max(x1 - 1, x0), max(y1 - 1, y0))
        if c is chosen:
            continue
        draw.rectangle(box, outline=BOX_COLOR, width=1)
        draw.text((x0 + 2, y0 + 1), f"#{c.index}", fill=BOX_COLOR, font=small)
    if chosen is not None:
        x0, y0, x1, y1 = (round(v * s) for v in chosen.bbox)
        draw.rectangle((x0 - 2, y0 - 2, max(x1, x0) + 1, max(y1, y0) + 1), outline=HIGHLIGHT_COLOR, width=3)
        text = crack_label(chosen)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=large)
        tx = max(0, min(x0, w - (right - left) - 4))
        ty = y0 - (bottom - top) - 10 if y0 >= (bottom - top) + 10 else min(y1 + 6, h - (bottom - top) - 4)
        left, top, right, bottom = draw.textbbox((tx, ty), text, font=large)
        draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=(0, 0, 0))
        draw.text((tx, ty), text, fill=HIGHLIGHT_COLOR, font=large)
    return np.asarray(pil, dtype=np.uint8).copy()


def crack_label(c) -> str:
    """'#3: 72.4 px long, 5.1 px mean / 8.0 px max wide, 41.3°' (+ mm with a scale)."""
    text = (f"#{c.index}: {c.length_px:.1f} px long, {c.mean_width_px:.1f} px mean / "
            f"{c.max_width_px:.1f} px max wide, {c.orientation_deg:.1f}°")
    if c.mm_per_px is not None:
        text += f" ({c.length_mm:.1f} mm, {c.mean_width_mm:.2f} / {c.max_width_mm:.2f} mm)"
    return text


def summary(photo: MappedPhoto, report: CrackReport, threshold: float) -> str:
    """Markdown lines: probability and decision, cracks at the map threshold, photo and run facts."""
    n = report.count
    cracks = f"**{n} crack{'' if n == 1 else 's'}** at map threshold {threshold:.2f}"
    if n:
        mm = report.mm_per_px is not None
        cracks += (f" · total length {report.total_length_px:.1f} px"
                   + (f" = {report.total_length_mm:.1f} mm" if mm else "")
                   + f" · widest {report.max_width_px:.1f} px" + (f" = {report.max_width_mm:.2f} mm" if mm else "")
                   + f" · {100 * report.area_fraction:.2f} % of the photo")
    cfg = photo.cfg
    return "\n\n".join([
        f"**Crack probability {photo.probability:.3f}** → **{'crack' if photo.crack else 'no crack'}** "
        f"(decision threshold {photo.decision_threshold:.3f}, from the model file)",
        cracks,
        f"{photo.name} · {photo.width}×{photo.height} px · {photo.n_tiles} tiles of {cfg.tile} px at "
        f"scale {photo.scale:.3g} · {'bf16' if cfg.precision == 'bf16' else 'fp32'} · mapped in {photo.seconds:.1f} s",
    ])


@dataclass
class View:
    """Everything the page shows for one photo at one setting of the sliders."""

    report: CrackReport
    rows: list[list[Any]]
    overlay: np.ndarray  # uint8 [h,w,3], the preview size
    summary: str


def render_view(photo: MappedPhoto, report: CrackReport, *, threshold: float, opacity: float = OVERLAY_ALPHA,
                selected: int | None = None) -> View:
    """Table rows, overlay and summary of a photo whose cracks were measured at `threshold`."""
    return View(report=report, rows=table_rows(report),
                overlay=render_overlay(photo.preview(), report, opacity=opacity, selected=selected),
                summary=summary(photo, report, threshold))


# ---- export --------------------------------------------------------------------------------


def mask_png(heatmap: torch.Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """uint8 [H,W]: 255 where the map ≥ threshold (the mask that is measured), else 0."""
    return crack_mask(heatmap, threshold).astype(np.uint8) * 255


def export_files(photo: MappedPhoto, report: CrackReport, folder: str | Path, *, threshold: float) -> list[Path]:
    """Write predict's files for this photo at this threshold, plus the mask and the crack CSV.

    `<stem>_overlay.png`, `<stem>_mask.png`, `<stem>_cracks.csv`, `predictions.jsonl` (one line,
    predict's record with geometry), `<stem>_heatmap.png`, `<stem>_color.png`: → their paths.
    """
    folder = Path(folder)
    stem = safe_stem(Path(photo.name), set())
    outputs = Outputs(geometry=True, mm_per_px=report.mm_per_px, map_threshold=threshold)
    rec, pngs = image_outputs(photo, outputs, path=photo.name, stem=stem)
    paths = [save_png(folder / rec["overlay_png"], pngs[rec["overlay_png"]]),
             save_png(folder / f"{stem}_mask.png", mask_png(photo.heatmap, threshold)),
             write_text(folder / f"{stem}_cracks.csv", crack_csv(report)),
             write_records(folder / RECORDS, [rec])]
    paths += [save_png(folder / rec[k], pngs[rec[k]]) for k in ("heatmap_png", "color_png")]
    return paths
