"""Predict a list of image files into an output folder: PNGs + one JSON line per image (the local engine).

Bad files never stop the run: each is reported with its reason, and the exit code tells.
Each image's record is appended to `predictions.jsonl` (flushed and fsynced) only after all
of its PNGs are completely written (`crackloc.inference.outputs.OutputFolder`), so an
interrupted or failed run keeps every finished image, and `resume=True` continues it. A write
error (disk full) stops the run.

Here: the input lists (`read_input_list`, `expand_inputs`), one file mapped (`FileMapper`, also
what each Ray actor runs), and the local engine (`run_local`, `predict_files`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError
from crackloc.inference.outdir import output_lock
from crackloc.inference.outputs import (
    BatchReport,
    Mapped,
    OutputFolder,
    Outputs,
    plan_outputs,
)
from crackloc.inference.predictor import Predictor
from crackloc.io import IMAGE_EXTENSIONS, failure_reason, file_digest, load_rgb, rgb_to_tensor


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `done` of `total` images have their results on disk."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"interrupted after {done} of {total} images")
        self.done, self.total = done, total


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


@dataclass
class MappedFile:
    """One file mapped by a `Predictor` (an `outputs.Mapped`)."""

    image: torch.Tensor  # uint8 [3,H,W]
    heatmap: torch.Tensor  # float [H,W]
    probability: float
    decision_threshold: float
    n_tiles: int
    scale: float
    cfg: InferenceConfig
    model_id: str
    digest: str | None


class FileMapper:
    """input file → `MappedFile` with one `Predictor`: decode (refusing images over `max_pixels`), map.

    `line_guide=False` skips the line guide (`--save record`). Called with `source`, the local
    file decoded in the input's place (a downloaded copy of a remote object).
    """

    def __init__(self, predictor: Predictor, *, max_pixels: int | None = None, line_guide: bool = True) -> None:
        self.predictor, self.line_guide = predictor, line_guide
        self.load_kwargs = {"max_pixels": max_pixels} if max_pixels else {}

    def __call__(self, path: Path | str, source: Path | None = None) -> MappedFile:
        local = path if source is None else source
        try:
            image = rgb_to_tensor(load_rgb(local, **self.load_kwargs))  # [3,H,W] uint8
        except CracklocError as exc:
            raise CracklocError(str(exc).replace(str(local), str(path))) from None
        digest = file_digest(local, what="image")  # the viewer reuses results by content
        predictor = self.predictor
        try:
            pred = predictor.predict(image, line_guide=self.line_guide)
        except (RuntimeError, MemoryError) as exc:
            raise model_failure(exc, path) from None
        return MappedFile(image=image, heatmap=pred.heatmap, probability=pred.probability,
                          decision_threshold=predictor.threshold, n_tiles=pred.n_tiles, scale=pred.scale,
                          cfg=predictor.cfg, model_id=predictor.model_id, digest=digest)


def run_local(todo: list[tuple[Path | str, str]], make_mapper: Callable[[], Callable[[Path | str], Mapped]],
              folder: OutputFolder, *, progress: bool = True, stop: Callable[[], bool] | None = None) -> None:
    """The local engine: map and commit each (input, stem) of `todo` in this process, in order.

    A bad file goes to `folder.fail`; a write error stops the run (CracklocError); `stop()`
    returning True ends it before the next image.
    """
    map_one, report = make_mapper(), folder.report
    total = report.resumed + len(todo)
    with folder.writing(), tqdm(todo, desc="predicting", unit="img", disable=not progress,
                                initial=report.resumed, total=total) as bar:
        for path, stem in bar:
            if stop is not None and stop():
                return
            try:
                mapped = map_one(path)
            except CracklocError as exc:
                folder.fail(str(path), failure_reason(exc, path))
                continue
            folder.commit(mapped, path=str(path), stem=stem, total=total)


def predict_files(predictor: Predictor, inputs: list[str | Path], out: str | Path, *, geometry: bool = False,
                  mm_per_px: float | None = None, marker: str | None = None, max_pixels: int | None = None,
                  resume: bool = False,
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
    outputs = Outputs(save=save, geometry=geometry or marker is not None, mm_per_px=mm_per_px, marker=marker)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        folder = OutputFolder(out, outputs)
        files, failed = expand_inputs(inputs, exclude=out)
        todo = folder.begin(plan_outputs(files), failed, resume=resume or resume_mixed, log=log,
                            made=outputs.made_by(predictor), overwrite=overwrite, mixed=resume_mixed)
        make_mapper = lambda: FileMapper(predictor, max_pixels=max_pixels, line_guide=outputs.line_guide)  # noqa: E731
        try:
            run_local(todo, make_mapper, folder, progress=progress)
        except KeyboardInterrupt:
            with suppress(OSError):
                folder.finish()
            raise BatchInterrupted(len(folder.report.records), folder.report.resumed + len(todo)) from None
        except CracklocError:
            with suppress(OSError):
                folder.finish()
            raise
        folder.finish()
        return folder.report
