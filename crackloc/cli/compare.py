"""`crackloc compare`: crack change between two photos of one surface (inspection campaigns)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crackloc.cli.registry import add_inference_options, command, inference_config
from crackloc.errors import CracklocError


@command("compare", "crack change between two photos of one surface: register, map both, match the cracks "
                    "(new / grown / unchanged / no longer visible), changes.json + changes.csv + overlay")
def _compare_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("before", metavar="BEFORE", help="the earlier photo")
    p.add_argument("after", metavar="AFTER", help="the later photo of the same surface (any angle, scale, light)")
    p.add_argument("--out", required=True, help="output folder (changes.json, changes.csv, change_overlay.png, "
                                                "after_registered.png)")
    p.add_argument("--mm-per-px", type=float, help="BEFORE's scale, to report lengths and widths in mm too")
    p.add_argument("--tolerance", type=float, default=4.0,
                   help="px (in BEFORE) within which an AFTER crack is the BEFORE crack it lies on (default 4)")
    p.add_argument("--max-pixels", type=int, help="refuse photos above this many pixels (default 100 MP)")
    add_inference_options(p)
    p.set_defaults(func=_run_compare)


def _run_compare(a: argparse.Namespace) -> int:
    from crackloc.change.compare import RegistrationError, compare_photos
    from crackloc.inference.predictor import Predictor

    if a.mm_per_px is not None and a.mm_per_px <= 0:
        raise CracklocError("--mm-per-px must be positive")
    for photo in (a.before, a.after):  # before the model loads
        if not Path(photo).is_file():
            raise CracklocError(f"{photo}: no such file")
    predictor = Predictor(a.checkpoint, inference_config(a), cache_dir=a.cache_dir)
    kwargs = {"max_pixels": a.max_pixels} if a.max_pixels else {}
    try:
        result = compare_photos(predictor, a.before, a.after, a.out, mm_per_px=a.mm_per_px,
                                tolerance=a.tolerance, **kwargs)
    except RegistrationError as exc:  # not one surface: no change report (exit 1, as a skipped input)
        print(f"crackloc compare: error: {exc}", file=sys.stderr)
        return 1
    counts = result.report.to_dict()["counts"]
    print(f"registered with {result.registration.rms_px:.2f} px residual; "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" → {a.out}/changes.json")
    return 0
