"""The inspection viewer's logic, without gradio: map a photo once, then re-threshold it at will.

- `PhotoMapper` maps a photo with `Predictor.predict`, exactly as `crackloc predict` does, and
  keeps the result (photo + full-resolution heatmap) in an LRU cache keyed by the photo's
  content hash, the model file's hash and the `InferenceConfig`: moving the map threshold, the
  opacity or the scale (mm per px) never runs the model again.
- `measure` (threshold → mask → `CrackReport`), `table_rows`, `crack_csv`, `render_view` and
  `summary` turn a mapped photo and the page's settings into what the page shows.
- `predict_record` / `predict_images` build `predict`'s JSON line and PNGs (the same code
  path as `crackloc.inference.batch`), and `export_files` writes them with the mask and CSV.
- Folders: `resolve_inside` keeps every path inside the served folder, `existing_results`
  reuses `predictions.jsonl` + PNGs that `predict` already wrote, and `FolderJob` maps the
  rest in a background thread, appending in `predict`'s format.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from crackloc.config import InferenceConfig, check_value, from_dict
from crackloc.errors import CracklocError
from crackloc.inference.batch import (
    RecordWriter,
    commit_record,
    png_names,
    read_records,
    safe_stem,
    write_pngs,
)
from crackloc.inference.geometry import CrackReport, draw_geometry, measure_cracks
from crackloc.inference.predictor import (
    Predictor,
    colorize,
    default_checkpoint,
    heatmap_stats,
    overlay,
)
from crackloc.inference.tiling import tile_grid
from crackloc.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    failure_reason,
    file_digest,
    load_rgb,
    open_image,
    rgb_to_tensor,
    save_png,
    write_text,
)

log = logging.getLogger(__name__)

MAP_THRESHOLD = 0.5  # predict's map threshold for geometry (`heatmap >= 0.5`)
OVERLAY_ALPHA = 0.55  # predict's overlay opacity (crackloc.inference.predictor.overlay)
OVERLAY_FLOOR = 0.2  # map values below this are not tinted (same function)
MIN_AREA = 20  # smallest crack kept, px (measure_cracks' default, as predict)
PREFETCH_NEAR = 0.05  # measured ahead first: the slider positions this close to the threshold shown
PREVIEW_SIDE = 1600  # the page shows the photo at most this many px on its longer side
THUMB_SIDE = 360  # gallery thumbnails
MAX_FOLDER_PHOTOS = 5000
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
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
        f"scale {photo.scale:.3g} · mapped in {photo.seconds:.1f} s",
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


# ---- predict's record and images -------------------------------------------------------------


def predict_record(path: str, photo: MappedPhoto, stem: str, report: CrackReport | None, *,
                   map_threshold: float = MAP_THRESHOLD) -> dict[str, Any]:
    """The JSON line `crackloc predict` writes for this photo (`--geometry` when `report` is given).

    Same keys, order and rounding as `crackloc.inference.batch`; the heatmap statistics use
    `map_threshold` (predict's is 0.5, the value that makes the two identical).
    """
    rec: dict[str, Any] = {
        "path": path, "crack_probability": round(photo.probability, 5), "crack": photo.crack,
        "decision_threshold": photo.decision_threshold, "width": photo.width, "height": photo.height,
        "n_tiles": photo.n_tiles, "scale": round(photo.scale, 4), "heatmap": heatmap_stats(photo.heatmap, threshold=map_threshold)}
    if report is not None:
        rec["geometry"] = report.to_dict()
    rec.update(png_names(stem))
    return rec


def predict_images(photo: MappedPhoto, report: CrackReport | None) -> dict[str, np.ndarray]:
    """Record key → the PNG array `predict` writes for it: 8-bit heatmap, overlay (+ geometry), colour map."""
    over = overlay(photo.image, photo.heatmap)
    if report is not None:
        over = draw_geometry(over, report)
    return {"heatmap_png": (photo.heatmap.numpy() * 255).round().astype("uint8"), "overlay_png": over,
            "color_png": colorize(photo.heatmap)}


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
    rec = predict_record(photo.name, photo, stem, report, map_threshold=threshold)
    images = predict_images(photo, report)
    names = png_names(stem)
    paths = [save_png(folder / names["overlay_png"], images["overlay_png"]),
             save_png(folder / f"{stem}_mask.png", mask_png(photo.heatmap, threshold)),
             write_text(folder / f"{stem}_cracks.csv", crack_csv(report)),
             write_text(folder / "predictions.jsonl", json.dumps(rec) + "\n")]
    paths += [save_png(folder / names[k], images[k]) for k in ("heatmap_png", "color_png")]
    return paths


# ---- mapping photos, with a cache ------------------------------------------------------------


def settings_key(photo_digest: str, model_id: str, cfg: InferenceConfig) -> str:
    """The cache key of a photo's map: photo content, model file content and every inference setting."""
    text = json.dumps({"photo": photo_digest, "model": model_id, "cfg": dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def estimate_tiles(height: int, width: int, cfg: InferenceConfig) -> int:
    """How many windows `Predictor.predict` runs on an image of this size (for progress)."""
    h, w = max(round(height * cfg.scale), cfg.tile), max(round(width * cfg.scale), cfg.tile)
    return len(tile_grid(h, w, tile=cfg.tile, overlap=cfg.overlap))


class LRU:
    """A small thread-safe least-recently-used dict."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._d:
                return None
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


class PhotoMapper:
    """Maps photos with one model file (the one inference path) and caches the maps.

    Args:
        checkpoint: Model file (default: the bundled model).
        cfg: The server's `InferenceConfig` (the page may override scale and tile).
        cache_dir: ONNX export cache (for `backend="onnx"`).
        max_pixels: Larger photos are refused before decoding.
        capacity: Photos kept in memory (a 12 MP photo and its map take ~85 MB).
        make_predictor: `cfg → Predictor` (default: `Predictor(checkpoint, cfg)`); for tests.
        model_id: Identifies the model in cache keys (default: the model file's sha256).
    """

    def __init__(self, checkpoint: str | Path | None = None, cfg: InferenceConfig | None = None, *,
                 cache_dir: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, capacity: int = 4,
                 make_predictor: Callable[[InferenceConfig], Predictor] | None = None,
                 model_id: str | None = None) -> None:
        self.base_cfg = from_dict(InferenceConfig, dataclasses.asdict(cfg or InferenceConfig()))
        self.max_pixels = max_pixels
        self.checkpoint: Path | None = None
        if make_predictor is None:
            self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
            if not self.checkpoint.is_file():
                raise CracklocError(f"{self.checkpoint}: no such model file")
            make_predictor = lambda c: Predictor(self.checkpoint, c, cache_dir=cache_dir)  # noqa: E731
            model_id = model_id or file_digest(self.checkpoint)
        self._make_predictor = make_predictor
        self.model_id = model_id or "in-memory model"
        self._predictors = LRU(3)
        self._photos = LRU(capacity)
        self._reports = LRU(200)  # 91 slider positions per photo; a 12 MP photo's report is ~0.3 MB
        self._inflight: dict[tuple, concurrent.futures.Future] = {}
        self._inflight_lock = threading.Lock()
        self._plan: list[tuple[MappedPhoto, float]] = []  # thresholds to measure ahead (newest request wins)
        self._plan_cv = threading.Condition()
        self._prefetcher: threading.Thread | None = None
        self._prefetching = False
        self._foreground = 0  # reports being measured for a request: measuring ahead waits for them
        self._model_lock = threading.Lock()  # one model run at a time (2-core machines)
        self._build_lock = threading.Lock()
        self.seconds_per_tile = 0.25  # updated after each run, for progress estimates
        self.predictor(self.base_cfg)  # load the model now: a bad model file fails at start-up

    def settings(self, **overrides: Any) -> InferenceConfig:
        """The server's config with some fields replaced (validated: CracklocError names the field)."""
        values = {**dataclasses.asdict(self.base_cfg), **{k: v for k, v in overrides.items() if v is not None}}
        return from_dict(InferenceConfig, values)

    def predictor(self, cfg: InferenceConfig) -> Predictor:
        key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        with self._build_lock:
            pred = self._predictors.get(key)
            if pred is None:
                pred = self._make_predictor(cfg)
                self._predictors.put(key, pred)
        return pred

    def cached(self, key: str) -> MappedPhoto | None:
        return self._photos.get(key)

    def estimate_seconds(self, height: int, width: int, cfg: InferenceConfig) -> float:
        return estimate_tiles(height, width, cfg) * self.seconds_per_tile

    def map_photo(self, path: str | Path, cfg: InferenceConfig | None = None, *, name: str | None = None,
                  keep: bool = True, on_start: Callable[[int, int, float], None] | None = None) -> MappedPhoto:
        """Map one photo file (or take its map from the cache).

        Args:
            path: The photo.
            cfg: Inference settings (default: the server's).
            name: Shown in messages and written as the record's path (default: the file name).
            keep: Put the result in the cache.
            on_start: Called with (height, width, expected seconds) before the model runs.

        Raises:
            CracklocError: one line naming `name`, for a missing, corrupt, too large file, or a
                model failure (out of memory, NaN weights).
        """
        path, cfg = Path(path), cfg or self.base_cfg
        name = name or path.name
        if not path.is_file():
            raise CracklocError(f"{name}: no such file")
        key = settings_key(file_digest(path), self.model_id, cfg)
        hit = self._photos.get(key)
        if hit is not None:
            return dataclasses.replace(hit, name=name, cached=True)
        try:
            rgb = load_rgb(path, max_pixels=self.max_pixels)
            with open_image(path, max_pixels=self.max_pixels) as img:
                grayscale = img.mode in GRAY_MODES
        except CracklocError as exc:
            raise CracklocError(f"{name}: {failure_reason(exc, path)}") from None
        image = rgb_to_tensor(rgb)  # [3,H,W] uint8
        del rgb
        if on_start is not None:
            on_start(image.shape[1], image.shape[2], self.estimate_seconds(image.shape[1], image.shape[2], cfg))
        predictor = self.predictor(cfg)
        with self._model_lock:
            t0 = time.perf_counter()
            try:
                pred = predictor.predict(image)
            except (RuntimeError, MemoryError) as exc:
                raise _model_error(exc, name) from None
            seconds = time.perf_counter() - t0
        self.seconds_per_tile = 0.5 * self.seconds_per_tile + 0.5 * seconds / max(pred.n_tiles, 1)
        photo = MappedPhoto(key=key, name=name, image=image, heatmap=pred.heatmap.float(),
                            probability=pred.probability, decision_threshold=predictor.threshold,
                            n_tiles=pred.n_tiles, cfg=cfg, seconds=seconds, grayscale=grayscale,
                            scale=pred.scale)
        if keep:
            self._photos.put(key, photo)
        return photo

    def report(self, photo: MappedPhoto, threshold: float, mm_per_px: float | None = None) -> CrackReport:
        """The photo's cracks at this map threshold (measured once per photo and threshold), in this scale.

        A threshold being measured ahead (`prefetch`) is waited for, not measured twice.
        """
        key = (photo.key, round(check_threshold(threshold), 6))
        base = self._reports.get(key)
        if base is None:
            with self._inflight_lock:
                future = self._inflight.get(key)
                owner = future is None
                if owner:
                    future = self._inflight[key] = concurrent.futures.Future()
            if not owner:
                return with_scale(future.result(), mm_per_px)
            foreground = threading.current_thread() is not self._prefetcher
            with self._plan_cv:
                self._foreground += foreground
            try:
                base = measure(photo.heatmap, key[1])
                self._reports.put(key, base)
                future.set_result(base)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            finally:
                with self._inflight_lock:
                    self._inflight.pop(key, None)
                with self._plan_cv:
                    self._foreground -= foreground
                    self._plan_cv.notify_all()
        return with_scale(base, mm_per_px)

    def prefetch(self, photo: MappedPhoto, threshold: float, *, lo: float = 0.05, hi: float = 0.95,
                 step: float = 0.01) -> list[float]:
        """Measure every slider position of this photo in a background thread: → the plan, in order.

        Measuring a 12 MP photo's cracks costs about a second of CPU (skeletons and distance
        transforms of every crack); measured ahead while the page is idle, a slider move then
        answers at once. Order: the positions within ±0.05 of `threshold`, then the 0.05 grid,
        then the rest, nearest first; those already measured are skipped. A new call replaces
        the previous plan, and a request's own measuring always goes first.
        """
        t = round(check_threshold(threshold), 6)
        n = round((hi - lo) / step)
        values = {round(lo + k * step, 6) for k in range(n + 1)} - {t}

        def order(v: float) -> tuple:
            near = abs(v - t) <= PREFETCH_NEAR + 1e-9
            on_grid = abs(v / 0.05 - round(v / 0.05)) < 1e-6
            return (0 if near else 1 if on_grid else 2, abs(v - t), v)

        plan = sorted(values, key=order)
        with self._plan_cv:
            self._plan = [(photo, v) for v in plan if self._reports.get((photo.key, v)) is None]
            if self._prefetcher is None or not self._prefetcher.is_alive():
                self._prefetcher = threading.Thread(target=self._prefetch_loop, name="crackloc-prefetch",
                                                    daemon=True)
                self._prefetcher.start()
            self._plan_cv.notify_all()
        return plan

    def prefetch_idle(self, timeout: float) -> bool:
        """Wait until the prefetch plan is done (benchmarks, tests): → True if it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._plan_cv:
                if not self._plan and not self._prefetching:
                    return True
            time.sleep(0.05)
        return False

    def _prefetch_loop(self) -> None:
        while True:
            with self._plan_cv:
                while not self._plan or self._foreground:  # a request's own measuring goes first
                    self._plan_cv.wait()
                photo, t = self._plan.pop(0)
                self._prefetching = True
            try:
                self.report(photo, t)
            except Exception:  # a failure here only costs the speed-up
                log.exception("measuring ahead at threshold %s failed", t)
            finally:
                with self._plan_cv:
                    self._prefetching = False
        self._foreground = 0  # reports being measured for a request: measuring ahead waits for them


def _model_error(exc: BaseException, name: str) -> CracklocError:
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "allocate" in text.lower():
        return CracklocError(f"{name}: out of memory while mapping: lower the model scale (e.g. 0.5), or "
                             "restart the server with a smaller --batch-size")
    return CracklocError(f"{name}: the model failed on this photo ({type(exc).__name__}: {text[:200]})")


# ---- folders ---------------------------------------------------------------------------------


def resolve_inside(text: str | Path, root: str | Path) -> Path:
    """A path typed in the page (absolute, or relative to `root`) → the resolved path, if inside `root`.

    Symbolic links and `..` are resolved first, so nothing outside `root` can be reached.
    """
    root = Path(root).resolve()
    raw = str(text).strip()
    if not raw:
        return root
    p = Path(raw)
    real = (p if p.is_absolute() else root / p).resolve()
    if not real.is_relative_to(root):
        raise CracklocError(f"{raw}: outside the served folder {root} (only paths inside it can be opened)")
    return real


def folder_photos(folder: str | Path, *, root: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Image files under `folder` (recursively, sorted, resolved), inside `root` and outside `exclude`."""
    folder, root = Path(folder), Path(root).resolve()
    if not folder.is_dir():
        raise CracklocError(f"{folder}: no such folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        real = p.resolve()
        if not real.is_relative_to(root) or (skip is not None and real.is_relative_to(skip)):
            continue
        found.append(real)
        if len(found) >= MAX_FOLDER_PHOTOS:
            break
    return found


def _record_pngs_ok(rec: dict, out: Path) -> bool:
    """The record names its three PNGs, each a file inside `out`."""
    for name in png_names("x"):
        value = rec.get(name)
        if not isinstance(value, str) or not value:
            return False
        target = (out / value).resolve()
        if not target.is_relative_to(out) or not target.is_file():
            return False
    return True


def existing_results(out: str | Path, photos: list[Path], folder: str | Path) -> dict[Path, dict]:
    """Records of `out/predictions.jsonl` (written by `predict` or by this viewer) for these photos.

    A record counts when its three PNGs are in `out` and its path is one of the photos: as
    written (absolute, or relative to the current folder) or, for a relative path, by its
    trailing part relative to `folder` (`crackloc predict photos/ --out maps/` run elsewhere).
    Later lines win (a rerun appends).
    """
    out, folder = Path(out).resolve(), Path(folder).resolve()
    by_real = {p.resolve(): p for p in photos}
    by_rel = {p.resolve().relative_to(folder).as_posix(): p for p in photos
              if p.resolve().is_relative_to(folder)}
    found: dict[Path, dict] = {}
    for rec in read_records(out / "predictions.jsonl"):
        path, prob = rec.get("path"), rec.get("crack_probability")
        if not isinstance(path, str) or isinstance(prob, bool) or not isinstance(prob, int | float):
            continue
        if not _record_pngs_ok(rec, out):
            continue
        p = Path(path)
        try:
            photo = by_real.get((p if p.is_absolute() else Path.cwd() / p).resolve())
        except (OSError, RuntimeError):
            photo = None
        if photo is None and not p.is_absolute():
            parts = p.parts
            photo = next((by_rel[k] for i in range(len(parts)) if (k := "/".join(parts[i:])) in by_rel), None)
        if photo is not None:
            found[photo] = rec
    return found


@dataclass
class FolderItem:
    """One photo of a folder and what is known of it so far."""

    photo: Path
    name: str  # relative to the folder
    record: dict | None = None
    error: str | None = None
    reused: bool = False  # the record was on disk already

    @property
    def probability(self) -> float | None:
        return None if self.record is None else float(self.record["crack_probability"])


class FolderJob:
    """Maps a folder's photos in a background thread into `out`, in `predict`'s format.

    Photos that already have a record and PNGs in `out/predictions.jsonl` are reused, not
    mapped again; each new one gets `predict --geometry`'s PNGs and its JSON line appended
    (never rewriting earlier lines). `items` is read from other threads while it runs.
    """

    def __init__(self, mapper: PhotoMapper, folder: str | Path, out: str | Path, *, root: str | Path,
                 cfg: InferenceConfig | None = None, mm_per_px: float | None = None) -> None:
        self.mapper, self.cfg, self.mm_per_px = mapper, cfg or mapper.base_cfg, mm_per_px
        self.folder, self.out = Path(folder).resolve(), Path(out).resolve()
        photos = folder_photos(self.folder, root=root, exclude=self.out)
        if not photos:
            raise CracklocError(f"{self.folder}: no photos (jpg, png, bmp, tif) in this folder")
        found = existing_results(self.out, photos, self.folder)
        self.items = [FolderItem(p, _relative(p, self.folder), record=found.get(p), reused=p in found)
                      for p in photos]
        self.error: str | None = None  # a write error that stopped the job
        self.started = time.time()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def done(self) -> int:
        return sum(it.record is not None or it.error is not None for it in self.items)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> FolderJob:
        if self._thread is None and any(it.record is None for it in self.items):
            self._thread = threading.Thread(target=self._run, name="crackloc-folder", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            used = {p.name[: -len("_heatmap.png")].casefold() for p in self.out.glob("*_heatmap.png")}
            _end_with_newline(self.out / "predictions.jsonl")
            with RecordWriter(self.out / "predictions.jsonl") as writer:
                for it in self.items:
                    if self._stop.is_set():
                        return
                    if it.record is None and it.error is None:
                        self._map_one(it, writer, used)
        except OSError as exc:
            self.error = f"{self.out}: cannot write the maps ({' '.join(str(exc).split())})"
        except Exception as exc:  # never leave the thread with an unreported error
            log.exception("folder job failed")
            self.error = f"unexpected error ({type(exc).__name__}: {exc})"

    def _map_one(self, it: FolderItem, writer: RecordWriter, used: set[str]) -> None:
        try:
            photo = self.mapper.map_photo(it.photo, self.cfg, name=str(it.photo), keep=False)
            report = measure(photo.heatmap, MAP_THRESHOLD, mm_per_px=self.mm_per_px)
            stem = safe_stem(it.photo, used)
            rec = predict_record(str(it.photo), photo, stem, report)
            images = predict_images(photo, report)
            pngs = {name: images[key] for key, name in png_names(stem).items()}
            write_pngs(self.out, pngs)  # as predict commits an image: PNGs, then its line (or none of them)
            commit_record(self.out, rec, list(pngs), writer, done=lambda r: setattr(it, "record", r))
        except CracklocError as exc:
            it.error = failure_reason(exc, it.photo)
        except OSError:
            raise
        except Exception as exc:
            log.exception("mapping %s failed", it.photo)
            it.error = f"unexpected error ({type(exc).__name__}: {exc})"

    def ranked(self) -> list[FolderItem]:
        """Mapped photos by crack probability (highest first), then those still to do, then failures."""
        def order(it: FolderItem) -> tuple:
            if it.record is not None:
                return (0, -it.probability, it.name)
            return (1 if it.error is None else 2, 0.0, it.name)
        return sorted(self.items, key=order)

    def progress_text(self) -> str:
        reused = sum(it.reused for it in self.items)
        failed = sum(it.error is not None for it in self.items)
        mapped = self.done - reused - failed
        text = (f"{self.done} of {self.total} photos done ({reused} reused from {self.out.name}/predictions.jsonl, "
                f"{mapped} mapped now, {failed} failed)")
        if self.error:
            text += f" · stopped: {self.error}"
        elif self.running:
            text += " · mapping…"
        return text


def _relative(p: Path, folder: Path) -> str:
    return p.relative_to(folder).as_posix() if p.is_relative_to(folder) else p.name


def _end_with_newline(path: Path) -> None:
    """Finish a torn last line of a JSON-lines file, so an appended record stays on its own line."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def thumbnail(png: str | Path, side: int = THUMB_SIDE) -> np.ndarray:
    """A small RGB copy of an image file (for the gallery)."""
    with Image.open(png) as img:
        img.draft("RGB", (side, side))
        img = img.convert("RGB")
        img.thumbnail((side, side), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
