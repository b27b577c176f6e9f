"""Campaign folders: `crackloc compare --before 2024/ --after 2026/ --out OUT` (or `--pairs PAIRS.csv`).

Photos are paired by stem (the file name without its extension, with its sub-folder, ignoring
case), or listed in a CSV with `before,after` columns (paths relative to the CSV's folder). Each
pair is compared as `crackloc compare BEFORE AFTER` does, and OUT is written through the one output
writer (`crackloc.inference.outputs.OutputFolder`), with `predict`'s rules: one run at a time,
earlier results set aside unless `--resume`, each pair committed whole (its PNGs, then its line).

OUT/
  changes.jsonl                     one line per finished pair: its changes.json (`compare_files`)
  <stem>_change_overlay.png         the pair's change overlay (BEFORE's stem)
  <stem>_after_registered.png       AFTER in BEFORE's frame
  changes.csv                       every crack of every pair (a `pair` column first)
  summary.csv                       one row per pair, pairs with new or grown cracks first
  failed.jsonl                      photos without a partner, pairs that could not be registered
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from tqdm import tqdm

from crackloc.change.compare import compare_files, crack_rows_csv
from crackloc.change.cracks import STATUSES, TOLERANCE_PX
from crackloc.errors import CracklocError
from crackloc.inference.batch import BatchInterrupted, expand_inputs
from crackloc.inference.outdir import CHANGE_RECORDS, output_lock
from crackloc.inference.outputs import (
    BatchReport,
    OutputFolder,
    Outputs,
    plan_outputs,
    png_names,
    write_pngs,
)
from crackloc.inference.predictor import Predictor
from crackloc.io import DEFAULT_MAX_PIXELS, failure_reason, write_text

SUMMARY_COLUMNS = ("pair", "before", "after", *(s.replace(" ", "_") for s in STATUSES), "length_added_px",
                   "registration_rms_px")


def pair_folders(before: Path, after: Path) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Photos of two campaign folders paired by stem → (pairs, photos without a partner and why)."""
    def by_stem(folder: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
        files, failed = expand_inputs([folder])
        return {str(p.relative_to(folder).with_suffix("")).casefold(): p for p in files}, failed

    (b, failed_b), (a, failed_a) = by_stem(before), by_stem(after)
    pairs = [(b[k], a[k]) for k in sorted(b) if k in a]
    alone = [(str(b[k]), f"no photo with this stem in {after}") for k in sorted(b) if k not in a]
    alone += [(str(a[k]), f"no photo with this stem in {before}") for k in sorted(a) if k not in b]
    return pairs, failed_b + failed_a + alone


def read_pairs(path: Path) -> list[tuple[Path, Path]]:
    """(BEFORE, AFTER) paths of a CSV with `before` and `after` columns (relative to the CSV's folder)."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CracklocError(f"{path}: cannot read the pairs CSV ({exc})") from None
    if not rows or not {"before", "after"} <= set(rows[0]):
        raise CracklocError(f"{path}: a pairs CSV needs a header with 'before' and 'after' columns and one row "
                            "per pair")
    return [(path.parent / r["before"].strip(), path.parent / r["after"].strip()) for r in rows]


def compare_campaign(predictor: Predictor, pairs: list[tuple[Path, Path]], out: str | Path, *,
                     failed: list[tuple[str, str]] | None = None, mm_per_px: float | None = None,
                     marker: str | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, tolerance: float = TOLERANCE_PX, resume: bool = False,
                     overwrite: bool = False, progress: bool = True, log: Callable[[str], None] | None = None
                     ) -> BatchReport:
    """Compare each (BEFORE, AFTER) pair and write OUT (module docstring); → what happened to each pair.

    Raises:
        BatchInterrupted: on Ctrl-C, after writing the summaries; finished pairs are on disk.
    """
    out, log = Path(out), log or (lambda message: None)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        outputs = Outputs(save="record", geometry=True, mm_per_px=mm_per_px, marker=marker)
        folder = OutputFolder(out, outputs, records_name=CHANGE_RECORDS)
        after_of = {str(b): a for b, a in pairs}
        made = outputs.made_by(predictor)  # as `compare_files` records it: --resume keeps only alike
        todo = folder.begin(plan_outputs([b for b, _ in pairs]), list(failed or []), resume=resume, log=log,
                            made=made, overwrite=overwrite)
        try:
            with folder.writing():
                for before, stem in tqdm(todo, desc="comparing", unit="pair", disable=not progress,
                                         initial=folder.report.resumed, total=folder.report.resumed + len(todo)):
                    _one(predictor, Path(before), after_of[str(before)], stem, folder, mm_per_px=mm_per_px,
                         marker=marker, max_pixels=max_pixels, tolerance=tolerance)
        except KeyboardInterrupt:
            with suppress(OSError):
                _finish(folder)
            raise BatchInterrupted(len(folder.report.records), folder.report.resumed + len(todo)) from None
        _finish(folder)
        return folder.report


def _one(predictor: Predictor, before: Path, after: Path, stem: str, folder: OutputFolder, **options) -> None:
    """Compare one pair and commit it (its PNGs, then its record), or note why it failed."""
    try:
        _, record, pngs = compare_files(predictor, before, after, **options)
    except CracklocError as exc:
        folder.fail(str(before), failure_reason(exc, before))
        return
    names = png_names(stem, tuple(pngs))  # the record keys and file names predict's PNGs get
    record = {"path": str(before), "stem": stem, **record, **names}
    try:
        write_pngs(folder.out, {names[f"{k}_png"]: v for k, v in pngs.items()})
        folder.commit_written(record)
    except OSError as exc:
        raise folder.write_failed(exc, before, None) from None


def _finish(folder: OutputFolder) -> None:
    """failed.jsonl, and changes.csv + summary.csv from every record (so a resumed run lists all pairs)."""
    folder.finish()
    records = folder.report.records
    rows = [{"pair": r["stem"], **c} for r in records for c in r.get("cracks", [])]
    write_text(folder.out / "changes.csv", crack_rows_csv(rows, first=("pair",)))
    summary = sorted(records, key=lambda r: (-(r["counts"]["new"] + r["counts"]["grown"]), r["stem"]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for r in summary:
        writer.writerow([r["stem"], r["before"], r["after"], *(r["counts"][s] for s in STATUSES),
                         r["length_added_px"], r["registration"]["rms_px"]])
    write_text(folder.out / "summary.csv", buf.getvalue())
