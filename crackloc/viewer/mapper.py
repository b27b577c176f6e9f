"""Mapping photos for the viewer, with a cache: `PhotoMapper` runs `Predictor.predict` once per photo.

The map (photo + full-resolution heatmap) is kept in an LRU cache keyed by the photo's content
hash, the model file's hash and the `InferenceConfig`, so moving the threshold, the opacity or
the mm-per-px scale never runs the model again; reports at nearby thresholds are measured ahead.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from crackloc.config import InferenceConfig, from_dict
from crackloc.errors import CracklocError
from crackloc.inference.autoscale import MAX_PIXELS as AUTO_MAX_PIXELS
from crackloc.inference.autoscale import MAX_SCALE
from crackloc.inference.geometry import CrackReport
from crackloc.inference.predictor import (
    Predictor,
    default_checkpoint,
    map_scales,
)
from crackloc.inference.tiling import tile_grid
from crackloc.io import (
    DEFAULT_MAX_PIXELS,
    failure_reason,
    file_digest,
    load_rgb,
    open_image,
    rgb_to_tensor,
)
from crackloc.viewer.logic import MappedPhoto, check_threshold, measure, with_scale

log = logging.getLogger(__name__)

PREFETCH_NEAR = 0.05  # measured ahead first: the slider positions this close to the threshold shown
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})  # flagged as grayscale


# ---- mapping photos, with a cache ------------------------------------------------------------


_turns = threading.local()  # .stop: the Event that stops the map running in this thread (`map_photo`)


class MapStopped(CracklocError):
    """A map stopped on request (the viewer's Stop button) before it was done."""


class _TakingTurns(torch.nn.Module):
    """A model whose every forward pass (one batch of windows) holds `lock`: maps running in several
    threads share the cores batch by batch instead of photo by photo, and a stopped map ends at its
    next batch."""

    def __init__(self, model: Any, lock: threading.Lock) -> None:
        super().__init__()
        self.inner, self._lock = model, lock

    def forward(self, x: torch.Tensor) -> Any:
        stop = getattr(_turns, "stop", None)
        if stop is not None and stop.is_set():
            raise MapStopped("mapping stopped before it was done; nothing was kept")
        with self._lock:
            return self.inner(x)

    def __getattr__(self, name: str) -> Any:  # decode_min_prob, cell_phase...: the wrapped model's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def _header(path: Path, max_pixels: int) -> tuple[bool, int, int] | None:
    """(grayscale, width, height) from an image file's header; None when it cannot be read."""
    try:
        with open_image(path, max_pixels=max_pixels) as img:
            return img.mode in GRAY_MODES, img.size[0], img.size[1]
    except (CracklocError, OSError, ValueError, SyntaxError):
        return None


def settings_key(photo_digest: str, model_id: str, cfg: InferenceConfig) -> str:
    """The cache key of a photo's map: photo content, model file content and every inference setting."""
    text = json.dumps({"photo": photo_digest, "model": model_id, "cfg": dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def estimate_tiles(height: int, width: int, cfg: InferenceConfig, *, scale: float | None = None) -> int:
    """How many windows `Predictor.predict` runs on an image of this size, all views and scales (for progress).

    `scale` is the one the photo is mapped at (default `cfg.scale`; with `auto_scale` it is known
    only once the model has run).
    """
    total = 0
    for s in map_scales(cfg.scale if scale is None else scale, cfg.scale_spread):
        h, w = max(round(height * s), cfg.tile), max(round(width * s), cfg.tile)
        total += len(tile_grid(h, w, tile=cfg.tile, overlap=cfg.overlap))
    return total * cfg.views


class LRU:
    """A thread-safe least-recently-used cache: cachetools' `LRUCache` behind a lock."""

    def __init__(self, capacity: int) -> None:
        from cachetools import LRUCache

        self._cache: LRUCache = LRUCache(maxsize=max(1, capacity))
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            return self._cache.get(key)  # a hit becomes the most recently used

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._cache[key] = value

    def __len__(self) -> int:
        return len(self._cache)


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

    def check_size(self, height: int, width: int, cfg: InferenceConfig, *, name: str) -> None:
        """Refuse a map larger than `max_pixels` after scaling (with `auto_scale`: at its largest scale)."""
        scale = min(MAX_SCALE, math.sqrt(AUTO_MAX_PIXELS / (height * width))) if cfg.auto_scale else cfg.scale
        spread = cfg.scale_spread  # the largest of the averaged scales
        pixels = height * width * (scale * spread) ** 2
        if pixels > self.max_pixels:
            raise CracklocError(f"at scale {scale * spread:g} this {width}x{height} photo would be mapped at "
                                f"{pixels / 1e6:.0f} MP, above this server's limit of {self.max_pixels / 1e6:g} MP "
                                "(serve --max-pixels): use a smaller scale")

    def predictor(self, cfg: InferenceConfig) -> Predictor:
        key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        with self._build_lock:
            pred = self._predictors.get(key)
            if pred is None:
                pred = self._make_predictor(cfg)
                pred.model = _TakingTurns(pred.model, self._model_lock)
                self._predictors.put(key, pred)
        return pred

    def cached(self, key: str) -> MappedPhoto | None:
        return self._photos.get(key)

    def estimate_seconds(self, height: int, width: int, cfg: InferenceConfig) -> float:
        return estimate_tiles(height, width, cfg) * self.seconds_per_tile

    def map_photo(self, path: str | Path, cfg: InferenceConfig | None = None, *, name: str | None = None,
                  keep: bool = True, on_start: Callable[[int, int, float], None] | None = None,
                  stop: threading.Event | None = None) -> MappedPhoto:
        """Map one photo file (or take its map from the cache).

        Args:
            path: The photo.
            cfg: Inference settings (default: the server's).
            name: Shown in messages and written as the record's path (default: the file name).
            keep: Put the result in the cache.
            on_start: Called with (height, width, expected seconds) before the model runs.
            stop: Once set, the map ends at its next batch of windows (`MapStopped`).

        Raises:
            CracklocError: one line naming `name`, for a missing, corrupt, too large file, or a
                model failure (out of memory, NaN weights); `MapStopped` when stopped.
        """
        path, cfg = Path(path), cfg or self.base_cfg
        name = name or path.name
        if not path.is_file():
            raise CracklocError(f"{name}: no such file")
        digest = file_digest(path)
        key = settings_key(digest, self.model_id, cfg)
        hit = self._photos.get(key)
        if hit is not None:
            return dataclasses.replace(hit, name=name, cached=True)
        try:
            header = _header(path, self.max_pixels)  # the limits are checked before decoding
            if header is not None:
                self.check_size(header[2], header[1], cfg, name=name)
            rgb = load_rgb(path, max_pixels=self.max_pixels)  # any problem of the file is named here
            grayscale = header is not None and header[0]
        except CracklocError as exc:
            raise CracklocError(f"{name}: {failure_reason(exc, path)}") from None
        image = rgb_to_tensor(rgb)  # [3,H,W] uint8
        del rgb
        if on_start is not None:
            on_start(image.shape[1], image.shape[2], self.estimate_seconds(image.shape[1], image.shape[2], cfg))
        predictor = self.predictor(cfg)
        t0, _turns.stop = time.perf_counter(), stop
        try:  # the model takes turns batch by batch: a small photo is not stuck behind a 12 MP one
            pred = predictor.predict(image)
        except MapStopped as exc:
            raise MapStopped(f"{name}: {exc}") from None
        except (RuntimeError, MemoryError) as exc:
            raise _model_error(exc, name) from None
        finally:
            _turns.stop = None
        seconds = time.perf_counter() - t0
        windows = estimate_tiles(image.shape[1], image.shape[2], cfg, scale=pred.scale)
        self.seconds_per_tile = 0.5 * self.seconds_per_tile + 0.5 * seconds / max(windows, 1)
        photo = MappedPhoto(key=key, name=name, image=image, heatmap=pred.heatmap.float(),
                            probability=pred.probability, decision_threshold=predictor.threshold,
                            n_tiles=pred.n_tiles, cfg=predictor.cfg, seconds=seconds, grayscale=grayscale,
                            scale=pred.scale, model_id=predictor.model_id, digest=digest)
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
