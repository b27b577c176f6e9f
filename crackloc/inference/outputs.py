"""The one output writer: what each image gets in an output folder, and how it gets there.

Every engine (`predict`'s local loop, the Ray actor pool, the viewer's folder job) writes through
this module, so the same photo with the same model and settings gives the same bytes:

- `image_outputs`: one mapped image (`Mapped`) → its JSON record and its PNG arrays;
- `OutputFolder`: the folder's plan and resume rule (`begin`), the commit of each image (PNGs
  written atomically, then its record appended, or neither), failures and `failed.jsonl`;
- `RecordWriter`: the durable append of one JSON line.

An engine is `run(todo, make_mapper, folder)`: `todo` is the (input, output stem) pairs still to
do, `make_mapper()` gives a function input → `Mapped` (built where the engine runs: in this
process, or once per Ray actor), and `folder` the `OutputFolder` every result goes to.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError
from crackloc.inference.outdir import RECORDS, check_resumable, png_stems, set_aside
from crackloc.inference.predictor import colorize, heatmap_stats, overlay
from crackloc.io import FILE_MODE, atomic_write, save_png
from crackloc.tensors import MASK_LEVEL

PNG_KINDS = ("heatmap", "overlay", "color")  # each image gets `<stem>_<kind>.png`
# `predict --save`: which PNGs each image gets (its record is always written). `record` also skips
# the line guide, which only changes the drawn map below the mask level (not decisions or geometry)
SAVE_KINDS: dict[str, tuple[str, ...]] = {"all": PNG_KINDS, "mask": ("heatmap",), "record": ()}
SPACE_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # disk full, quota reached
RESULT_SETTINGS = ("tile", "overlap", "scale", "auto_scale", "gate", "views", "scale_spread", "line_guide",
                   "ahr_percentile", "precision", "backend")  # InferenceConfig fields that change a map


# ---- one image: its record and PNGs ------------------------------------------------------------


class Mapped(Protocol):
    """One image mapped by a model: what its record and PNGs are made of."""

    image: torch.Tensor  # uint8 [3,H,W]
    heatmap: torch.Tensor  # float [H,W] in [0,1]
    probability: float
    decision_threshold: float
    n_tiles: int
    scale: float  # the resize factor the model saw
    cfg: InferenceConfig  # as it ran (the resolved precision)
    model_id: str  # the model file's digest (`Predictor.model_id`)
    digest: str | None  # the input file's sha256


@dataclass(frozen=True)
class Outputs:
    """What each image gets: the PNGs of `save` (`SAVE_KINDS`), crack geometry, the mask level."""

    save: str = "all"
    geometry: bool = False
    mm_per_px: float | None = None
    map_threshold: float = MASK_LEVEL  # the crack mask (map >= it) that geometry and the statistics use
    marker: str | None = None  # `--marker aruco:DICT:SIDE_MM`: geometry in mm on the marker's plane

    def __post_init__(self) -> None:
        save_kinds(self.save)  # an unknown --save is refused before anything is touched
        if self.marker is not None:
            from crackloc.imageops.marker import parse_marker

            parse_marker(self.marker)  # a malformed spec is refused up front too

    @property
    def kinds(self) -> tuple[str, ...]:
        return save_kinds(self.save)

    def made_by(self, predictor) -> dict:
        """What made the records a `Predictor` writes with these outputs (`record_maker`)."""
        return record_maker(predictor.model_id, predictor.cfg, threshold=predictor.threshold,
                            geometry=self.geometry, mm_per_px=self.mm_per_px, marker=self.marker)

    @property
    def line_guide(self) -> bool:
        """Whether the map is drawn with the line guide (`save="record"` draws none, so it skips it)."""
        return bool(self.kinds)


def save_kinds(save: str) -> tuple[str, ...]:
    """The PNG kinds a `--save` choice writes (CracklocError for an unknown one)."""
    if save not in SAVE_KINDS:
        raise CracklocError(f"--save must be one of {', '.join(SAVE_KINDS)}, got {save!r}")
    return SAVE_KINDS[save]


def png_names(stem: str, kinds: tuple[str, ...] = PNG_KINDS) -> dict[str, str]:
    """Record key → file name of an image's PNGs (of these `kinds`)."""
    return {f"{kind}_png": f"{stem}_{kind}.png" for kind in kinds}


def record_maker(model_id: str, cfg: InferenceConfig, *, threshold: float, geometry: bool,
                 mm_per_px: float | None, marker: str | None = None) -> dict:
    """What made a record: {"model": the model file's digest, "settings": every setting that changes
    the result} (`--resume` keeps only records made alike: `crackloc.inference.outdir.check_resumable`)."""
    values = dataclasses.asdict(cfg)
    settings = {k: values[k] for k in RESULT_SETTINGS}
    settings.update(threshold=threshold, geometry=bool(geometry), mm_per_px=mm_per_px)
    if marker is not None:  # (absent otherwise, so records made before markers existed still match)
        settings["marker"] = marker
    return {"model": model_id, "settings": settings}


def image_outputs(mapped: Mapped, outputs: Outputs, *, path: str, stem: str) -> tuple[dict, dict[str, np.ndarray]]:
    """One mapped image → (its JSON record, PNG file name → uint8 array); `path` names it in the record."""
    from crackloc.inference.geometry import draw_geometry, measure_cracks

    heatmap, threshold = mapped.heatmap, outputs.map_threshold
    line_guide = mapped.cfg.line_guide if outputs.line_guide else 0.0
    rec = {"path": path, "sha256": mapped.digest or None, "crack_probability": round(mapped.probability, 5),
           "crack": mapped.probability >= mapped.decision_threshold,
           "decision_threshold": mapped.decision_threshold,
           "width": int(heatmap.shape[1]), "height": int(heatmap.shape[0]), "n_tiles": mapped.n_tiles,
           "scale": round(mapped.scale, 4), "heatmap": heatmap_stats(heatmap, threshold=threshold),
           "precision": mapped.cfg.precision, "line_guide": line_guide,
           **record_maker(mapped.model_id, mapped.cfg, threshold=mapped.decision_threshold,
                          geometry=outputs.geometry, mm_per_px=outputs.mm_per_px, marker=outputs.marker)}
    draw = {"overlay_png": lambda: overlay(mapped.image, heatmap), "color_png": lambda: colorize(heatmap),
            "heatmap_png": lambda: (heatmap.numpy() * 255).round().astype("uint8")}
    names = png_names(stem, outputs.kinds)
    arrays = {key: draw[key]() for key in names}
    if outputs.geometry:
        geo = measure_cracks((heatmap >= threshold).numpy(), mm_per_px=outputs.mm_per_px)
        if outputs.marker is not None:
            from crackloc.imageops.marker import parse_marker
            from crackloc.inference.plane import measure_on_plane

            geo = measure_on_plane(geo, mapped.image.permute(1, 2, 0).numpy(), parse_marker(outputs.marker))
        rec["geometry"] = geo.to_dict()
        if "overlay_png" in arrays:
            arrays["overlay_png"] = draw_geometry(arrays["overlay_png"], geo)
    rec.update(names)
    return rec, {names[key]: arrays[key] for key in names}


# ---- output names ------------------------------------------------------------------------------


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


def plan_outputs(files: list[Path], *, used: set[str] | None = None) -> dict[Path, str]:
    """Each distinct input file (sorted) → its output stem, so a rerun gives the same names.

    `used` (casefolded stems already given out) is updated, so a second call can name more
    inputs (the Ray engine's remote URIs) without colliding with these.
    """
    plan: dict[Path, str] = {}
    seen: set[Path] = set()
    used = set() if used is None else used
    for path in sorted(files):
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            plan[path] = safe_stem(path, used)
    return plan


# ---- durable records ---------------------------------------------------------------------------


class RecordWriter:
    """Appends JSON records to a JSON-lines file, one durable line per call.

    Each `append` writes one whole line, flushes and fsyncs it; a failed write (disk full) is
    cut back off, so the file only ever ends in a torn line after a crash (`read_records` skips
    it, and the next writer finishes that line first so its own records stay whole).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._lock = threading.Lock()
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")  # a torn last line of a crashed run ends here

    def append(self, record: dict) -> None:
        """Write `record` as one line and make it durable (raises OSError, line not kept)."""
        data = memoryview((json.dumps(record) + "\n").encode("utf-8"))
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path}: record writer is closed")
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(self._fd, data):]
                os.fsync(self._fd)
            except BaseException:
                with suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file ([] if missing); a torn or malformed line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        with suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                records.append(rec)
    return records


def write_records(path: str | Path, records: list[dict]) -> Path:
    """Atomically (re)write a JSON-lines file."""
    lines = "".join(json.dumps(r) + "\n" for r in records)
    return atomic_write(path, lambda f: f.write(lines), binary=False)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done (main thread only), so a record is written whole or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and previous != signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            else:
                raise KeyboardInterrupt


def remove_files(out: Path, names: Iterable[str]) -> None:
    """Remove these files of `out` (missing ones and errors ignored)."""
    for name in names:
        with suppress(OSError):
            (out / name).unlink(missing_ok=True)


def write_pngs(out: Path, pngs: dict[str, np.ndarray]) -> None:
    """Write an image's PNGs into `out`, each atomically; on any failure none of them is left."""
    try:
        for name, array in pngs.items():
            save_png(out / name, array)
    except BaseException:
        remove_files(out, pngs)
        raise


# ---- the output folder -------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What happened to each input (`records` includes those kept by a resume)."""

    records: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0


class OutputFolder:
    """An output folder in `predict`'s format, written through one `RecordWriter`.

    Args:
        out: The folder (created).
        outputs: What each image gets.
        on_record, on_failure: Called after each image's record is on disk, or its failure noted.
        records_name: The record file's name (`predictions.jsonl`; `crackloc compare`'s campaigns:
            `changes.jsonl`, one line per pair).
    """

    def __init__(self, out: str | Path, outputs: Outputs, *, on_record: Callable[[dict], None] | None = None,
                 on_failure: Callable[[str, str], None] | None = None, records_name: str = RECORDS) -> None:
        self.out, self.outputs, self.records_name = Path(out), outputs, records_name
        self.report = BatchReport()
        self._on_record, self._on_failure = on_record, on_failure
        self._writer: RecordWriter | None = None

    @property
    def records(self) -> Path:
        return self.out / self.records_name

    def begin(self, plan: dict[Path | str, str], failed: list[tuple[str, str]], *, resume: bool,
              log: Callable[[str], None], made: dict | None = None, overwrite: bool = False,
              mixed: bool = False) -> list[tuple[Path | str, str]]:
        """Apply the resume rule: → the (input, stem) pairs still to do; `report` holds the kept records.

        Without `resume` the earlier results move aside (`set_aside`; `overwrite`: replaced). With
        it, a planned input's record is kept when every PNG it names and those `save` asks for are
        on disk and, unless `mixed`, it was made alike (`made`: `record_maker`); records of inputs
        not given this time stay, and their PNG names are never reused.
        """
        earlier = read_records(self.records)
        if not resume:
            if earlier and not overwrite:
                log(f"moved the {len(earlier)} earlier result(s) in {self.out} to {set_aside(self.out, earlier)} "
                    "(--resume would keep them and do the rest; --overwrite replaces them)")
            elif earlier:
                log(f"replacing the {len(earlier)} earlier result(s) in {self.records} (--overwrite)")
            kept, others = [], []
        else:
            kept, others = self._kept(earlier, plan)
            if made is not None:
                check_resumable(self.out, kept, made, mixed=mixed)
            taken = png_stems(others)
            used = taken | {stem.casefold() for stem in plan.values()}
            done = {r["path"] for r in kept}
            plan = {p: stem if str(p) in done or stem.casefold() not in taken else safe_stem(Path(f"{stem}.x"), used)
                    for p, stem in plan.items()}  # never over the PNGs of an input not given this time
            log(f"resuming: {len(kept)} of {len(plan)} image(s) already done in {self.out}"
                + (f"; the {len(others)} result(s) of inputs not given this time are kept" if others else ""))
        write_records(self.records, others + kept)
        self.report = BatchReport(records=list(kept), failed=list(failed), resumed=len(kept))
        return [(p, stem) for p, stem in plan.items() if str(p) not in {r["path"] for r in kept}]

    def _kept(self, earlier: list[dict], plan: dict[Path | str, str]) -> tuple[list[dict], list[dict]]:
        """(records of planned inputs whose PNGs are all on disk, records of inputs not planned)."""
        wanted = {str(p): png_names(stem, self.outputs.kinds) for p, stem in plan.items()}
        kept: dict[str, dict] = {}
        others = [r for r in earlier if not isinstance(r.get("path"), str) or r["path"] not in wanted]
        for rec in earlier:
            names = wanted.get(rec["path"]) if isinstance(rec.get("path"), str) else None
            named = [v for k, v in rec.items() if k.endswith("_png") and isinstance(v, str)]
            if names is not None and rec["path"] not in kept and all(rec.get(k) == v for k, v in names.items()) \
                    and all((self.out / v).is_file() for v in named):  # every PNG it names, asked for or not
                kept[rec["path"]] = rec
        return list(kept.values()), others

    @contextmanager
    def writing(self) -> Iterator[OutputFolder]:
        """Hold the record file open for appends during the block."""
        self.out.mkdir(parents=True, exist_ok=True)
        with RecordWriter(self.records) as writer:
            self._writer = writer
            try:
                yield self
            finally:
                self._writer = None

    def commit(self, mapped: Mapped, *, path: str, stem: str, total: int | None = None) -> dict:
        """Write one mapped image: its PNGs (each atomically), then its record; → the record.

        On any failure before the record is whole the image's PNGs are removed; Ctrl-C during the
        append waits until the line is through. A write error (disk full) → CracklocError that
        stops the run, saying how many images are done.
        """
        rec, pngs = image_outputs(mapped, self.outputs, path=path, stem=stem)
        try:
            write_pngs(self.out, pngs)
            self.commit_written(rec)
        except OSError as exc:
            raise self.write_failed(exc, path, total) from None
        return rec

    def commit_written(self, rec: dict) -> None:
        """Append the record of an image whose PNGs are on disk already (written by a worker)."""
        files = [rec[k] for k in png_names("") if k in rec]
        if self._writer is None:
            raise ValueError("OutputFolder.commit outside `writing()`")
        committed = False
        try:
            with _sigint_deferred():
                self._writer.append(rec)
                committed = True
                self.report.records.append(rec)
                if self._on_record is not None:
                    self._on_record(rec)
        except BaseException:
            if not committed:
                remove_files(self.out, files)
            raise

    def fail(self, path: str, reason: str) -> None:
        """Note an input that could not be mapped."""
        self.report.failed.append((path, reason))
        if self._on_failure is not None:
            self._on_failure(path, reason)

    def write_failed(self, exc: OSError, path: Path | str, total: int | None) -> CracklocError:
        """The one-line error that stops a run whose outputs cannot be written."""
        done = len(self.report.records)
        what = ("no space left on device" if exc.errno in SPACE_ERRNOS
                else " ".join(str(exc).split()) or type(exc).__name__)
        fix = "free some space, then " if exc.errno in SPACE_ERRNOS else ""
        name = str(path).rstrip("/").rsplit("/", 1)[-1]
        return CracklocError(f"{self.out}: {what} while writing the maps of {name}; stopped after {done} of "
                             f"{done if total is None else total} images, whose results are kept: {fix}rerun the "
                             "same command with --resume to finish")

    def finish(self) -> None:
        """Atomically write failed.jsonl (this invocation's failures), or remove a stale one."""
        failed = self.out / "failed.jsonl"
        if self.report.failed:
            write_records(failed, [{"path": p, "reason": e} for p, e in self.report.failed])
        else:
            failed.unlink(missing_ok=True)
