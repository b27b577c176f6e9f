"""Folders for the viewer: paths kept inside the served folder, `predict`'s results reused, the rest mapped.

`resolve_inside` keeps every path inside the served folder, `existing_results` reuses the
`predictions.jsonl` + PNGs that `predict` already wrote, and `FolderJob` maps the rest in a
background thread, appending in `predict`'s format.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError
from crackloc.inference.batch import run_local
from crackloc.inference.outdir import RECORDS
from crackloc.inference.outputs import OutputFolder, Outputs, png_names, read_records, safe_stem
from crackloc.io import (
    IMAGE_EXTENSIONS,
    file_digest,
)
from crackloc.viewer.logic import MappedPhoto
from crackloc.viewer.mapper import PhotoMapper

log = logging.getLogger(__name__)

THUMB_SIDE = 360  # gallery thumbnails
MAX_FOLDER_PHOTOS = 5000


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


def max_folder_photos() -> int:
    """The most photos one folder job maps (`CRACKLOC_VIEWER_MAX_PHOTOS`, default `MAX_FOLDER_PHOTOS`)."""
    text = os.environ.get("CRACKLOC_VIEWER_MAX_PHOTOS", "")
    return int(text) if text.isdigit() and int(text) > 0 else MAX_FOLDER_PHOTOS


def folder_photos(folder: str | Path, *, root: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Image files under `folder` (recursively, sorted, resolved), inside `root`, outside `exclude`
    and outside every crackloc output folder (one that holds a predictions.jsonl): maps are never photos."""
    folder, root = Path(folder), Path(root).resolve()
    if not folder.is_dir():
        raise CracklocError(f"{folder}: no such folder")
    entries = sorted(folder.rglob("*"))  # one walk of the tree: output folders first, then the photos
    skip = [Path(exclude).resolve()] if exclude is not None else []
    skip += [p.parent.resolve() for p in entries if p.name == RECORDS and p.is_file()]
    found = []
    for p in entries:
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        real = p.resolve()
        if not real.is_relative_to(root) or any(real.is_relative_to(s) for s in skip):
            continue
        found.append(real)
    return found


def _record_pngs_ok(rec: dict, out: Path) -> bool:
    """Each PNG the record names is a file inside `out` (`predict --save mask|record` names fewer)."""
    for name in png_names("x"):
        if name not in rec:
            continue
        value = rec[name]
        if not isinstance(value, str) or not value:
            return False
        target = (out / value).resolve()
        if not target.is_relative_to(out) or not target.is_file():
            return False
    return True


def existing_results(out: str | Path, photos: list[Path], folder: str | Path) -> dict[Path, dict]:
    """Records of `out/predictions.jsonl` (written by `predict` or by this viewer) for these photos.

    A record counts when the PNGs it names are in `out`, it was made from the photo's current
    content (`sha256`), and its path is one of the photos: as
    written (absolute, or relative to the current folder) or, for a relative path, by its
    trailing part relative to `folder` (`crackloc predict photos/ --out maps/` run elsewhere).
    Later lines win (a rerun appends).
    """
    out, folder = Path(out).resolve(), Path(folder).resolve()
    by_real = {p.resolve(): p for p in photos}
    by_rel = {p.resolve().relative_to(folder).as_posix(): p for p in photos
              if p.resolve().is_relative_to(folder)}
    found: dict[Path, dict] = {}
    for rec in read_records(out / RECORDS):
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
        if photo is not None and _same_content(rec, photo):
            found[photo] = rec
    return found


def _same_content(rec: dict, photo: Path) -> bool:
    """The record was made from this very file (its `sha256`): a photo replaced under the same name is
    mapped again, and so is one whose record does not say (made before records carried it)."""
    digest = rec.get("sha256")
    if not isinstance(digest, str):
        return False
    try:
        return file_digest(photo) == digest
    except CracklocError:
        return False


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
        cap = max_folder_photos()
        self.left_out, photos = max(len(photos) - cap, 0), photos[:cap]
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
        todo_items = {str(it.photo): it for it in self.items if it.record is None and it.error is None}
        folder = OutputFolder(self.out, Outputs(geometry=True, mm_per_px=self.mm_per_px),
                              on_record=lambda rec: setattr(todo_items[rec["path"]], "record", rec),
                              on_failure=lambda path, reason: setattr(todo_items[path], "error", reason))
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            used = {p.name[: -len("_heatmap.png")].casefold() for p in self.out.glob("*_heatmap.png")}
            todo = [(it.photo, safe_stem(it.photo, used)) for it in todo_items.values()]
            run_local(todo, lambda: self._map_one, folder, progress=False, stop=self._stop.is_set)
        except CracklocError as exc:  # a write error (disk full) stops the job
            self.error = str(exc)
        except OSError as exc:
            self.error = f"{self.out}: cannot write the maps ({' '.join(str(exc).split())})"
        except Exception as exc:  # never leave the thread with an unreported error
            log.exception("folder job failed")
            self.error = f"unexpected error ({type(exc).__name__}: {exc})"

    def _map_one(self, photo: Path) -> MappedPhoto:
        """Map one photo for the folder job (the local engine's mapper); any failure is a CracklocError."""
        try:
            return self.mapper.map_photo(photo, self.cfg, name=str(photo), keep=False)
        except CracklocError:
            raise
        except Exception as exc:
            log.exception("mapping %s failed", photo)
            raise CracklocError(f"{photo}: unexpected error ({type(exc).__name__}: {exc})") from None

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
        if self.left_out:
            text += (f" · {self.left_out} more photo(s) left out: a folder job maps at most {self.total}; open a "
                     "subfolder, or raise the cap with CRACKLOC_VIEWER_MAX_PHOTOS=N crackloc serve …")
        if self.error:
            text += f" · stopped: {self.error}"
        elif self.running:
            text += " · mapping…"
        return text


def _relative(p: Path, folder: Path) -> str:
    return p.relative_to(folder).as_posix() if p.is_relative_to(folder) else p.name


def thumbnail(png: str | Path, side: int = THUMB_SIDE) -> np.ndarray:
    """A small RGB copy of an image file (for the gallery)."""
    with Image.open(png) as img:
        img.draft("RGB", (side, side))
        img = img.convert("RGB")
        img.thumbnail((side, side), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
