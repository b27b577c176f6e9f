"""Predict a list of image files into an output folder: PNGs + one JSON line per image.

Bad files never stop the run: each is reported with its reason, and the exit code tells.
Each image's record is appended to `predictions.jsonl` (flushed and fsynced) only after all
of its PNGs are completely written, so an interrupted or failed run keeps every finished
image, and `resume=True` continues it. A write error (disk full) stops the run.

The pieces both engines share (input lists, output names, the resume rule, one image's
prediction, atomic PNG writes, the record commit, failed.jsonl) are public here; the Ray engine
(`crackloc.inference.ray_engine`) runs the same ones in its workers and its driver.
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

import numpy as np
import torch
from tqdm import tqdm

from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError
from crackloc.inference.outdir import check_resumable, output_lock, png_stems, set_aside
from crackloc.inference.predictor import Predictor, colorize, heatmap_stats, overlay
from crackloc.io import (
    FILE_MODE,
    IMAGE_EXTENSIONS,
    atomic_write,
    failure_reason,
    file_digest,
    load_rgb,
    rgb_to_tensor,
    save_png,
)
from crackloc.tensors import MASK_LEVEL

PNG_KINDS = ("heatmap", "overlay", "color")  # each image gets `<stem>_<kind>.png`
# `predict --save`: which PNGs each image gets (its record is always written). `record` also skips
# the line guide, which only changes the drawn map below the mask level (not decisions or geometry)
SAVE_KINDS: dict[str, tuple[str, ...]] = {"all": PNG_KINDS, "mask": ("heatmap",), "record": ()}
SPACE_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # disk full, quota reached


@dataclass
class BatchReport:
    """What happened to each input (`records` includes those kept by a resume)."""

    records: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during `predict_files`: `done` of `total` images have their results on disk."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"interrupted after {done} of {total} images")
        self.done, self.total = done, total


class RecordWriter:
    """Appends JSON records to a JSON-lines file, one durable line per call.

    Each `append` writes one whole line, flushes and fsyncs it; a failed write (disk full) is
    cut back off, so the file only ever ends in a torn line after a crash (`read_records`
    skips it). Independent of any predictor: any engine that produces records can use it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._lock = threading.Lock()

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


def read_input_list(path: str | Path) -> list[str]:
    """The inputs named in a list file: one path or URI per line, or a CSV's `path` column.

    A `.csv` file's column named `path` is used (else its first column; a first row that names
    no existing file is taken as a header). Other files: one entry per line. Blank lines and lines
    starting with `#` are skipped; entries are kept as written (relative paths are relative to
    the current folder, as on the command line).
    """
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CracklocError(f"{path}: no such input list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CracklocError(f"{path}: cannot read the input list ({type(exc).__name__})") from None
    if path.suffix.lower() != ".csv":
        lines = (ln.strip() for ln in text.splitlines())
        return [ln for ln in lines if ln and not ln.startswith("#")]
    rows = [r for r in csv.reader(text.splitlines()) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    if "path" in head:
        col, rows = head.index("path"), rows[1:]
    else:
        col = 0
        first = rows[0][0].strip()
        if "://" not in first and not Path(first).exists() and Path(first).suffix.lower() not in IMAGE_EXTENSIONS:
            rows = rows[1:]  # a header that names its column otherwise
    return [r[col].strip() for r in rows if len(r) > col and r[col].strip()]


def expand_inputs(inputs: list[str | Path], *, exclude: str | Path | None = None
                  ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given plus image files inside given folders (recursively); missing paths → failed.

    Files under `exclude` (the output folder, compared as resolved paths) are left out, so a
    run never reads its own outputs back as inputs; a file given by name there is reported.
    """
    skip = Path(exclude).resolve() if exclude is not None else None

    def excluded(q: Path) -> bool:
        return skip is not None and q.resolve().is_relative_to(skip)

    files, failed = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            kept = [q for q in found if not excluded(q)]
            if not kept:
                failed.append((str(p), f"all its images are in the output folder {exclude}" if found
                               else "folder holds no images (jpg/png/bmp/tif)"))
            files += kept
        elif p.is_file():
            if excluded(p):
                failed.append((str(p), f"inside the output folder {exclude} (outputs are not read as inputs)"))
            else:
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


def png_names(stem: str, kinds: tuple[str, ...] = PNG_KINDS) -> dict[str, str]:
    """Record key → file name of an image's PNGs (of these `kinds`)."""
    return {f"{kind}_png": f"{stem}_{kind}.png" for kind in kinds}


def save_kinds(save: str) -> tuple[str, ...]:
    """The PNG kinds a `--save` choice writes (CracklocError for an unknown one)."""
    if save not in SAVE_KINDS:
        raise CracklocError(f"--save must be one of {', '.join(SAVE_KINDS)}, got {save!r}")
    return SAVE_KINDS[save]


_MEMORY_WORDS = re.compile(r"out of memory|not enough memory|(tried|unable) to allocate|can(no|')t allocate", re.I)
_ALLOCATION = re.compile(r"allocate\s+([\d.]+)\s*(bytes|[KMGT]i?B)?", re.I)  # torch CPU/CUDA/MPS, numpy
_UNITS = {"bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40}


def model_failure(exc: BaseException, path: Path | str) -> CracklocError:
    """The one-line error for a model that failed on `path`; out of memory gets the size and a fix."""
    text = " ".join(str(exc).split())
    if not (isinstance(exc, MemoryError) or _MEMORY_WORDS.search(text)):
        return CracklocError(f"{path}: prediction failed ({type(exc).__name__}: {text[:200]})")
    size, m = "", _ALLOCATION.search(text)
    if m:
        n = float(m[1]) * _UNITS[(m[2] or "bytes").lower()]
        size = f" (it tried to allocate {n / 1e9:.1f} GB)" if n >= 1e8 else f" (it tried to allocate {n / 1e6:.1f} MB)"
    return CracklocError(f"{path}: out of memory{size}: use a smaller --batch-size, or --scale 0.5, or "
                         "refuse photos this large with a lower --max-pixels")


def predict_one(predictor: Predictor, path: Path | str, stem: str, *, geometry: bool, mm_per_px: float | None,
                load_kwargs: dict, source: Path | None = None, save: str = "all"
                ) -> tuple[dict, dict[str, np.ndarray]]:
    """Predict one file: → (its JSON record, PNG file name → array); CracklocError for a bad file.

    `path` names the input in the record and in errors; `source` is the local file decoded in its
    place (a downloaded copy of a remote object), default `path` itself. `save` chooses the PNGs
    (`SAVE_KINDS`).
    """
    if source is None:
        image = rgb_to_tensor(load_rgb(path, **load_kwargs))  # [3,H,W] uint8
    else:
        try:
            image = rgb_to_tensor(load_rgb(source, **load_kwargs))
        except CracklocError as exc:
            raise CracklocError(str(exc).replace(str(source), str(path))) from None
    digest = file_digest(source if source is not None else path, what="image")  # the viewer reuses by content
    try:
        return _maps(predictor, path, image, stem, geometry=geometry, mm_per_px=mm_per_px, kinds=save_kinds(save),
                     digest=digest)
    except (RuntimeError, MemoryError) as exc:
        raise model_failure(exc, path) from None


def _maps(predictor: Predictor, path: Path | str, image: torch.Tensor, stem: str, *, geometry: bool,
          mm_per_px: float | None, kinds: tuple[str, ...] = PNG_KINDS, digest: str | None = None
          ) -> tuple[dict, dict[str, np.ndarray]]:
    """The record and the PNG arrays (of `kinds`) of one decoded image (uint8 [3,H,W]; `digest`: its file's sha256)."""
    pred = predictor.predict(image, line_guide=bool(kinds))
    rec = {"path": str(path), "sha256": digest, "crack_probability": round(pred.probability, 5),
           "crack": pred.probability >= predictor.threshold, "decision_threshold": predictor.threshold,
           "width": int(image.shape[2]), "height": int(image.shape[1]), "n_tiles": pred.n_tiles,
           "scale": round(pred.scale, 4), "heatmap": heatmap_stats(pred.heatmap),
           **run_settings(predictor.cfg, line_guide=bool(kinds)),
           **made_by(predictor, geometry=geometry, mm_per_px=mm_per_px)}
    draw = {"overlay_png": lambda: overlay(image, pred.heatmap), "color_png": lambda: colorize(pred.heatmap),
            "heatmap_png": lambda: (pred.heatmap.numpy() * 255).round().astype("uint8")}
    names = png_names(stem, kinds)
    arrays = {key: draw[key]() for key in names}
    if geometry:
        from crackloc.inference.geometry import draw_geometry, measure_cracks

        geo = measure_cracks((pred.heatmap >= MASK_LEVEL).numpy(), mm_per_px=mm_per_px)
        rec["geometry"] = geo.to_dict()
        if "overlay_png" in arrays:
            arrays["overlay_png"] = draw_geometry(arrays["overlay_png"], geo)
    rec.update(names)
    return rec, {names[key]: arrays[key] for key in names}


def run_settings(cfg: InferenceConfig, *, line_guide: bool = True) -> dict:
    """What a record says of how it was made: the precision that ran (a `Predictor`'s resolved
    `cfg`), the line guide applied."""
    return {"precision": cfg.precision, "line_guide": cfg.line_guide if line_guide else 0.0}


RESULT_SETTINGS = ("tile", "overlap", "scale", "auto_scale", "gate", "views", "scale_spread", "line_guide",
                   "ahr_percentile", "precision", "backend")  # InferenceConfig fields that change a map


def made_by(predictor: Predictor, *, geometry: bool, mm_per_px: float | None) -> dict:
    """What made a record: the model file's digest and every setting that changes the result
    (`--resume` keeps only records made alike: `crackloc.inference.outdir.check_resumable`)."""
    return record_maker(predictor.model_id, predictor.cfg, threshold=predictor.threshold, geometry=geometry,
                        mm_per_px=mm_per_px)


def record_maker(model_id: str, cfg: InferenceConfig, *, threshold: float, geometry: bool,
                 mm_per_px: float | None) -> dict:
    """`made_by` from its parts (the viewer's records): {"model": model_id, "settings": {...}}."""
    values = dataclasses.asdict(cfg)
    settings = {k: values[k] for k in RESULT_SETTINGS}
    settings.update(threshold=threshold, geometry=bool(geometry), mm_per_px=mm_per_px)
    return {"model": model_id, "settings": settings}


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


def _remove_pngs(out: Path, names: Iterable[str]) -> None:
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
        _remove_pngs(out, pngs)
        raise


def commit_record(out: Path, rec: dict, png_files: list[str], writer: RecordWriter, *,
                  done: Callable[[dict], None]) -> None:
    """Append the record of an image whose PNGs are on disk, then call `done(rec)`.

    Ctrl-C during the append waits until both the line and `done` are through; if the append
    fails, the image's PNGs are removed (no PNG without its record is left by this run).
    """
    committed = False
    try:
        with _sigint_deferred():
            writer.append(rec)
            committed = True
            done(rec)
    except BaseException:
        if not committed:
            _remove_pngs(out, png_files)
        raise


def _commit(out: Path, rec: dict, pngs: dict[str, np.ndarray], writer: RecordWriter, *,
            done: Callable[[dict], None]) -> None:
    """Write an image's PNGs (each atomically), then append its record and call `done(rec)`.

    On any failure before the record is whole, the image's PNGs are removed; Ctrl-C during the
    append waits until both the line and `done` are through.
    """
    write_pngs(out, pngs)
    commit_record(out, rec, list(pngs), writer, done=done)


def _resume_state(out: Path, plan: dict[Path | str, str], *, resume: bool, log: Callable[[str], None],
                  kinds: tuple[str, ...], made: dict | None, overwrite: bool, mixed: bool
                  ) -> tuple[list[dict], dict[Path | str, str]]:
    """→ (records kept, the plan with stems that do not collide with kept records); rewrites predictions.jsonl.

    Without `resume` the earlier results are moved aside (`set_aside`), or replaced with
    `overwrite`. With it, a planned input's record is kept when the PNGs of `kinds` and every PNG
    it names are on disk, and the records of inputs not given this time stay as they are.
    """
    path = out / "predictions.jsonl"
    earlier = read_records(path)
    if not resume:
        if earlier and not overwrite:
            log(f"moved the {len(earlier)} earlier result(s) in {out} to {set_aside(out, earlier)} (--resume would "
                "keep them and do the rest; --overwrite replaces them)")
        elif earlier:
            log(f"replacing the {len(earlier)} earlier result(s) in {path} (--overwrite)")
        write_records(path, [])
        return [], plan
    wanted = {str(p): png_names(stem, kinds) for p, stem in plan.items()}
    kept: dict[str, dict] = {}
    others = [r for r in earlier if not isinstance(r.get("path"), str) or r["path"] not in wanted]
    for rec in earlier:
        names = wanted.get(rec["path"]) if isinstance(rec.get("path"), str) else None
        named = [v for k, v in rec.items() if k.endswith("_png") and isinstance(v, str)]
        if names is not None and rec["path"] not in kept and all(rec.get(k) == v for k, v in names.items()) \
                and all((out / v).is_file() for v in named):  # every PNG it names, asked for or not
            kept[rec["path"]] = rec
    if made is not None:
        check_resumable(out, list(kept.values()), made, mixed=mixed)
    taken = png_stems(others)
    used = taken | {stem.casefold() for stem in plan.values()}
    plan = {p: stem if str(p) in kept or stem.casefold() not in taken else safe_stem(Path(f"{stem}.x"), used)
            for p, stem in plan.items()}  # never over the PNGs of an input not given this time
    log(f"resuming: {len(kept)} of {len(plan)} image(s) already done in {out}"
        + (f"; the {len(others)} result(s) of inputs not given this time are kept" if others else ""))
    write_records(path, others + list(kept.values()))
    return list(kept.values()), plan


def start_run(out: Path, plan: dict[Path | str, str], failed: list[tuple[str, str]], *, resume: bool,
              log: Callable[[str], None], save: str = "all", made: dict | None = None, overwrite: bool = False,
              mixed: bool = False) -> tuple[BatchReport, list[tuple[Path | str, str]]]:
    """Apply the resume rule to `out`: → (report holding the kept records, (input, stem) still to do).

    A kept record needs the PNGs that `save` asks for on disk (more are fine) and, unless `mixed`,
    the same maker (`made`: `made_by`) as this run.
    """
    records, plan = _resume_state(out, plan, resume=resume, log=log, kinds=save_kinds(save), made=made,
                                  overwrite=overwrite, mixed=mixed)
    report = BatchReport(records=records, failed=failed)
    report.resumed = len(report.records)
    done = {r["path"] for r in report.records}
    return report, [(p, stem) for p, stem in plan.items() if str(p) not in done]


def save_failed(out: Path, failed: list[tuple[str, str]]) -> None:
    """Atomically write failed.jsonl (this invocation's failures), or remove a stale one."""
    if failed:
        write_records(out / "failed.jsonl", [{"path": p, "reason": e} for p, e in failed])
    else:
        (out / "failed.jsonl").unlink(missing_ok=True)


def write_error(exc: OSError, out: Path, path: Path | str, done: int, total: int) -> CracklocError:
    """The one-line error that stops a run whose outputs cannot be written."""
    what = ("no space left on device" if exc.errno in SPACE_ERRNOS
            else " ".join(str(exc).split()) or type(exc).__name__)
    fix = "free some space, then " if exc.errno in SPACE_ERRNOS else ""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    return CracklocError(f"{out}: {what} while writing the maps of {name}; stopped after {done} of "
                         f"{total} images, whose results are kept: {fix}rerun the same command with --resume to finish")


def _predict_all(predictor: Predictor, todo: list[tuple[Path, str]], out: Path, report: BatchReport, *,
                 total: int, progress: bool, **options) -> None:
    """Predict and commit each (path, stem) of `todo`; bad files go to `report.failed`."""
    with RecordWriter(out / "predictions.jsonl") as writer, \
            tqdm(todo, desc="predicting", unit="img", disable=not progress, initial=report.resumed,
                 total=total) as bar:
        for path, stem in bar:
            try:
                rec, pngs = predict_one(predictor, path, stem, **options)
            except CracklocError as exc:
                report.failed.append((str(path), failure_reason(exc, path)))
                continue
            try:
                _commit(out, rec, pngs, writer, done=report.records.append)
            except OSError as exc:
                raise write_error(exc, out, path, len(report.records), total) from None


def predict_files(predictor: Predictor, inputs: list[str | Path], out: str | Path, *, geometry: bool = False,
                  mm_per_px: float | None = None, max_pixels: int | None = None, resume: bool = False,
                  save: str = "all", overwrite: bool = False, resume_mixed: bool = False, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> BatchReport:
    """Write each image's `<stem>_{heatmap,overlay,color}.png` and its line of `predictions.jsonl` into `out`.

    `save` 'mask' writes only `<stem>_heatmap.png`, 'record' no PNG (`SAVE_KINDS`).

    Bad inputs are skipped and listed in `failed.jsonl` (path, reason). Without `resume`, the
    earlier results move to `out/earlier-<time>/` (`overwrite`: replaced); with it, images already
    done with the same model and settings are kept and skipped (`resume_mixed`: whatever made them),
    and records of other inputs stay. One run at a time writes to `out` (`output_lock`).
    Outputs are named up front (sorted inputs), so a rerun gives each image the same names.

    Raises:
        BatchInterrupted: on Ctrl-C, after saving failed.jsonl; finished images are on disk.
        CracklocError: when an output cannot be written (disk full): the run stops there.
    """
    out, log = Path(out), log or (lambda message: None)
    save_kinds(save)  # an unknown choice is refused before anything is touched
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _predict_locked(predictor, inputs, out, geometry=geometry, mm_per_px=mm_per_px, max_pixels=max_pixels,
                               resume=resume or resume_mixed, save=save, overwrite=overwrite, mixed=resume_mixed,
                               progress=progress, log=log)


def _predict_locked(predictor: Predictor, inputs: list[str | Path], out: Path, *, geometry: bool,
                    mm_per_px: float | None, max_pixels: int | None, resume: bool, save: str, overwrite: bool,
                    mixed: bool, progress: bool, log: Callable[[str], None]) -> BatchReport:
    """`predict_files` once `out` is locked."""
    files, failed = expand_inputs(inputs, exclude=out)
    made = made_by(predictor, geometry=geometry, mm_per_px=mm_per_px)
    report, todo = start_run(out, plan_outputs(files), failed, resume=resume, log=log, save=save, made=made,
                             overwrite=overwrite, mixed=mixed)
    total = report.resumed + len(todo)
    load_kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    try:
        _predict_all(predictor, todo, out, report, total=total, progress=progress, geometry=geometry,
                     mm_per_px=mm_per_px, load_kwargs=load_kwargs, save=save)
    except KeyboardInterrupt:
        with suppress(OSError):
            save_failed(out, report.failed)
        raise BatchInterrupted(len(report.records), total) from None
    except CracklocError:
        with suppress(OSError):
            save_failed(out, report.failed)
        raise
    save_failed(out, report.failed)
    return report
