"""`crackloc compare`: crack change between two photos of one surface, or two campaign folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crackloc.cli.registry import (
    add_inference_options,
    add_scale_options,
    check_scale_options,
    command,
    inference_config,
)
from crackloc.errors import CracklocError


@command("compare", "crack change between two photos of one surface (or two campaign folders): register, map "
                    "both, match the cracks (new / grown / unchanged / no longer visible), changes.json + .csv + "
                    "overlay")
def _compare_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("before", metavar="BEFORE", nargs="?", help="the earlier photo")
    p.add_argument("after", metavar="AFTER", nargs="?",
                   help="the later photo of the same surface (any angle, scale, light)")
    p.add_argument("--before", dest="before_dir", metavar="DIR",
                   help="campaign folders instead of two photos: the earlier campaign's photos ...")
    p.add_argument("--after", dest="after_dir", metavar="DIR",
                   help="... and the later one's, paired by file name without extension (sub-folders kept)")
    p.add_argument("--pairs", metavar="CSV", help="or a CSV with 'before' and 'after' columns, one pair per row "
                                                  "(paths relative to the CSV's folder)")
    p.add_argument("--out", required=True, help="output folder: changes.json, changes.csv, change_overlay.png, "
                                                "after_registered.png; for campaigns changes.jsonl (one line "
                                                "per pair), <stem>_*.png, changes.csv, summary.csv")
    add_scale_options(p, photo="BEFORE")
    p.add_argument("--tolerance", type=float, default=4.0,
                   help="px (in BEFORE) within which an AFTER crack is the BEFORE crack it lies on (default 4)")
    p.add_argument("--max-pixels", type=int, help="refuse photos above this many pixels (default 100 MP)")
    p.add_argument("--resume", action="store_true", help="campaigns: keep the pairs already done in --out, "
                   "do the rest (as predict --resume)")
    p.add_argument("--overwrite", action="store_true", help="campaigns: replace earlier results instead of "
                   "moving them to OUT/earlier-<time>/")
    add_inference_options(p)
    p.set_defaults(func=_run_compare)


def _pairs(a: argparse.Namespace) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]] | None:
    """The campaign's pairs and unpaired photos, or None for two photos (refusing a mix of both forms)."""
    from crackloc.change.campaign import pair_folders, read_pairs

    photos, folders = a.before is not None, a.before_dir is not None or a.after_dir is not None
    if sum([photos, folders, a.pairs is not None]) != 1 or (photos and a.after is None):
        raise CracklocError("give two photos (compare BEFORE AFTER), or --before DIR --after DIR, or --pairs CSV")
    if photos:
        for photo in (a.before, a.after):  # before the model loads
            if not Path(photo).is_file():
                raise CracklocError(f"{photo}: no such file")
        return None
    if a.pairs is not None:
        if not Path(a.pairs).is_file():
            raise CracklocError(f"{a.pairs}: no such file")
        return read_pairs(Path(a.pairs)), []
    for d in (a.before_dir, a.after_dir):
        if d is None or not Path(d).is_dir():
            raise CracklocError(f"{d}: no such folder" if d else "--before and --after go together")
    return pair_folders(Path(a.before_dir), Path(a.after_dir))


def _run_compare(a: argparse.Namespace) -> int:
    from crackloc.change.campaign import compare_campaign
    from crackloc.change.compare import RegistrationError, compare_photos
    from crackloc.inference.predictor import Predictor

    check_scale_options(a)
    campaign = _pairs(a)
    predictor = Predictor(a.checkpoint, inference_config(a), cache_dir=a.cache_dir)
    options = {"mm_per_px": a.mm_per_px, "marker": a.marker, "tolerance": a.tolerance, **({"max_pixels": a.max_pixels} if a.max_pixels
                                                                       else {})}
    if campaign is not None:
        report = compare_campaign(predictor, campaign[0], a.out, failed=campaign[1], resume=a.resume,
                                  overwrite=a.overwrite, log=lambda m: print(m, file=sys.stderr), **options)
        for path, reason in report.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        changed = sum(r["counts"]["new"] + r["counts"]["grown"] > 0 for r in report.records)
        print(f"{len(report.records)} pair(s) compared, {changed} with new or grown cracks → {a.out}/summary.csv")
        return 1 if report.failed else 0
    try:
        result = compare_photos(predictor, a.before, a.after, a.out, **options)
    except RegistrationError as exc:  # not one surface: no change report (exit 1, as a skipped input)
        print(f"crackloc compare: error: {exc}", file=sys.stderr)
        return 1
    counts = result.report.to_dict()["counts"]
    if result.report.marker is not None and not result.report.marker["found"]:
        print(f"marker {a.marker} not found in {a.before}: lengths and widths in px only", file=sys.stderr)
    print(f"registered with {result.registration.rms_px:.2f} px residual; "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" → {a.out}/changes.json")
    return 0
