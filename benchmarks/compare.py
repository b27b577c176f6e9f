"""Registration and crack change for `crackloc compare` (#26) on synthetic inspection campaigns with known truth.

Each pair (`crackloc.data.campaigns.make_pair`): a BEFORE of concrete with 2-4 drawn cracks, and
an AFTER of the same surface with the pair's edits (the kinds cycle through unchanged, extended,
widened, new, mixed), seen through a known homography (rotation up to 20°, scale 0.7-1.4,
perspective), relit (brightness, gamma, white balance, a lighting gradient) and saved as JPEG
(quality 70-90). The surface is tiled from Özgenel's crack-free patches when `--ozgenel` names
the folder, else a synthetic texture. `crackloc.change.register` registers AFTER onto BEFORE;
per pair the error is the RMS distance (BEFORE px) between AFTER points mapped by the estimated
and by the true homography, over a grid of AFTER points that land inside BEFORE.

Prints per pair the error, the match residual, inliers, overlap and seconds, then the share of
pairs within 1 px (#26's acceptance: at least 95 % of at least 30 pairs) and the time per pair.
Then the crack changes (`crackloc.change.cracks`) scored against the edits: from the drawn cracks
as a perfect model would map them, and with `--model` from a model's maps as `crackloc compare`
runs (recall and precision of new/grown cracks, false changes on unchanged pairs, added length
and width change errors). Exit status 1 if the registration share is below 95 %.

    python -m benchmarks.compare [--pairs 30] [--ozgenel ../shared/data/ozgenel] [--size 900,1200]
        [--seed 0] [--out results.json] [--model [MODEL_FILE]] [--example FIGURE.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from crackloc.change.compare import map_pair
from crackloc.change.cracks import ChangeReport, compare_masks
from crackloc.change.register import Registration, register
from crackloc.data.campaigns import (
    CHANGES,
    CampaignPair,
    Crack,
    crack_distance,
    draw_cracks,
    homography_rms,
    make_pair,
)
from crackloc.errors import CracklocError

REPO = Path(__file__).resolve().parents[1]
ACCEPT_PX = 1.0
ACCEPT_SHARE = 0.95
MATCH_PX = 4.0  # a reported crack lies on a drawn one when its skeleton is this close


def load_negatives(root: Path, *, n: int = 600, seed: int = 0) -> list[np.ndarray]:
    """`n` distinct crack-free Özgenel patches (uint8 RGB), byte duplicates dropped (SHA256SUMS)."""
    seen: dict[str, str] = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name.startswith("Negative/"):
            seen.setdefault(digest, name)
    names = sorted(seen.values())
    picks = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
    return [cv2.cvtColor(cv2.imread(str(root / names[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for i in picks]


def campaign(n: int, *, seed: int = 0, shape: tuple[int, int] = (900, 1200),
             patches: list[np.ndarray] | None = None) -> Iterator[CampaignPair]:
    """`n` pairs, pair i of kind CHANGES[i % 5], each from its own generator (seed, i)."""
    for i in range(n):
        yield make_pair(np.random.default_rng([seed, i]), shape=shape, patches=patches,
                        change=CHANGES[i % len(CHANGES)])


def registration_row(pair: CampaignPair) -> tuple[dict, Registration | None]:
    """Register one pair: its row (error vs the truth, residual, inliers, overlap, seconds, or the
    refusal) and the registration (None if refused)."""
    t0 = time.perf_counter()
    try:
        reg = register(pair.before, pair.after)
    except CracklocError as e:
        return {"change": pair.change, "error_px": None, "refused": str(e),
                "seconds": round(time.perf_counter() - t0, 3)}, None
    seconds = time.perf_counter() - t0
    err = homography_rms(reg.homography, pair.homography, pair.after.shape[:2], before_shape=pair.before.shape[:2])
    scale = float(np.sqrt(abs(np.linalg.det(pair.homography[:2, :2]))))
    return {"change": pair.change, "after_shape": list(pair.after.shape[:2]), "true_scale": round(scale, 3),
            "error_px": round(err, 4), "residual_px": round(reg.rms_px, 3), "inliers": reg.inliers,
            "overlap": round(reg.overlap, 3), "refined": reg.refined, "seconds": round(seconds, 3)}, reg


def truth_masks(pair: CampaignPair, reg: Registration) -> tuple[np.ndarray, np.ndarray]:
    """The drawn cracks as crack masks, as a perfect model would map each photo: BEFORE's in its frame;
    AFTER's drawn in AFTER's own frame (the polylines through the true homography, widths divided by
    its scale, at least the nearest pixel), resampled into BEFORE's frame with `reg` as `map_pair`
    resamples AFTER's heatmap, and cut at 0.5."""
    h, w = pair.before.shape[:2]
    before = draw_cracks(np.zeros((h, w, 3), np.uint8), pair.cracks_before)[1]
    to_after = np.linalg.inv(pair.homography)  # BEFORE → AFTER
    scale = float(np.sqrt(abs(np.linalg.det(pair.homography[:2, :2]))))  # BEFORE px per AFTER px
    ha, wa = pair.after.shape[:2]
    seen_as = [Crack(cv2.perspectiveTransform(c.points[None].astype(np.float64), to_after)[0], c.width / scale,
                     c.depth) for c in pair.cracks_after]
    after_own = draw_cracks(np.zeros((ha, wa, 3), np.uint8), seen_as)[1]  # [h,w] AFTER's frame
    return before, (reg.warp(after_own.astype(np.float32)) >= 0.5) & reg.valid  # as map_pair warps a map


def score_changes(pair: CampaignPair, report: ChangeReport) -> dict:
    """The report against the truth: each true crack ↔ the reported crack lying on it (skeleton within
    MATCH_PX of the drawn polyline along half its length or more)."""
    shape = pair.before.shape[:2]
    found = []
    for truth, crack in zip(pair.changes, pair.cracks_after, strict=True):
        dist = crack_distance(shape, crack)
        on = [c for c in report.changes if len(c.skeleton)
              and (dist[c.skeleton[:, 0], c.skeleton[:, 1]] <= MATCH_PX).mean() >= 0.5]
        found.append((truth, on[0] if on else None))
    claimed = [c for c in report.changes if c.status in ("new", "grown")]
    right = [(t, c) for t, c in found if c is not None and t.status in ("new", "grown") and c.status == t.status]
    true_ids = {id(c) for _, c in right}
    rows = {"true_changes": sum(t.status in ("new", "grown") for t in pair.changes),
            "found_changes": len(right), "claimed_changes": len(claimed),
            "right_claims": sum(id(c) in true_ids for c in claimed)}
    extended = [(t, c) for t, c in right if t.status == "grown" and t.added_length_px > 0]
    rows["length_errors"] = [abs(c.length_added_px - t.added_length_px) for t, c in extended]
    rows["length_ok"] = [abs(c.length_added_px - t.added_length_px) <= max(0.05 * t.added_length_px, 10.0)
                         for t, c in extended]
    rows["width_errors"] = [abs(c.width_change_px - t.width_change_px) for t, c in right
                            if t.status == "grown" and t.width_change_px > 0]
    return rows


def evaluate_pair(pair: CampaignPair, predictor=None) -> dict:
    """Everything measured on one pair: the registration row, then the crack changes found from the
    drawn masks (`truth`) and, with a `predictor`, from its maps (`model`)."""
    row, reg = registration_row(pair)
    if reg is None:
        return row
    before, after = truth_masks(pair, reg)
    row["truth"] = score_changes(pair, compare_masks(before, after, seen=reg.valid))
    if predictor is not None:
        t0 = time.perf_counter()
        row["model"] = score_changes(pair, map_pair(predictor, pair.before, pair.after).report)
        row["model"]["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def change_summary(rows: list[dict], key: str) -> dict | None:
    """Recall and precision of new/grown cracks, false changes on unchanged pairs, size errors."""
    scored = [r[key] for r in rows if key in r]
    if not scored:
        return None
    total = lambda k: sum(s[k] for s in scored)  # noqa: E731
    lengths = [e for s in scored for e in s["length_errors"]]
    oks = [ok for s in scored for ok in s["length_ok"]]
    widths = [e for s in scored for e in s["width_errors"]]
    return {"recall": round(total("found_changes") / max(total("true_changes"), 1), 4),
            "precision": round(total("right_claims") / max(total("claimed_changes"), 1), 4),
            "false_changes_on_unchanged_pairs": sum(r[key]["claimed_changes"] for r in rows
                                                    if key in r and r["change"] == "unchanged"),
            "added_length_within_max_5pct_10px": f"{sum(oks)}/{len(oks)}",
            "added_length_error_px_median": round(statistics.median(lengths), 2) if lengths else None,
            "width_change_within_0.5px": f"{sum(e <= 0.5 for e in widths)}/{len(widths)}",
            "width_change_error_px_median": round(statistics.median(widths), 2) if widths else None}


def summary(rows: list[dict]) -> dict:
    """Share of pairs within ACCEPT_PX, error quantiles, refusals and the median seconds per pair."""
    errors = [r["error_px"] if r["error_px"] is not None else float("inf") for r in rows]
    within = sum(e <= ACCEPT_PX for e in errors)
    finite = [e for e in errors if e != float("inf")]
    return {"pairs": len(rows), "within_1px": within, "share_within_1px": round(within / len(rows), 4),
            "median_error_px": round(statistics.median(finite), 4) if finite else None,
            "max_error_px": round(max(errors), 4), "refused": sum(r["error_px"] is None for r in rows),
            "median_seconds": round(statistics.median(r["seconds"] for r in rows), 3)}


def example_figure(pair: CampaignPair, predictor, path: Path) -> None:
    """BEFORE | AFTER | the change overlay, side by side, each 600 px wide, saved at `path`."""
    from PIL import Image

    from crackloc.change.compare import draw_changes

    result = map_pair(predictor, pair.before, pair.after)
    panels = [pair.before, pair.after, draw_changes(pair.before, result.report)]
    width = 600
    resized = [Image.fromarray(p).resize((width, round(p.shape[0] * width / p.shape[1])), Image.LANCZOS)
               for p in panels]
    canvas = Image.new("RGB", (3 * width + 20, max(r.height for r in resized)), "white")
    for i, r in enumerate(resized):
        canvas.paste(r, (i * (width + 10), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    print(f"{path}: registration {result.registration.rms_px:.2f} px; "
          + ", ".join(f"{n} {k}" for k, n in result.report.to_dict()["counts"].items() if n))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=30, help="number of pairs (default 30)")
    p.add_argument("--ozgenel", help="Özgenel folder: tile its Negative/ patches (default: synthetic texture)")
    p.add_argument("--size", default="900,1200", help="BEFORE height,width (default 900,1200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the rows and the summary as JSON here")
    p.add_argument("--model", nargs="?", const="bundled", help="also map each pair with this model file "
                   "(`--model` alone: the bundled model) and score the changes `crackloc compare` reports")
    p.add_argument("--example", help="only draw BEFORE | AFTER | change overlay of one mixed pair (the bundled "
                   "model) into this image file")
    a = p.parse_args()
    predictor = None
    if a.model:
        from crackloc.inference.predictor import Predictor

        predictor = Predictor(None if a.model == "bundled" else a.model)
    shape = tuple(int(v) for v in a.size.split(","))
    patches, source = None, "synthetic texture"
    if a.ozgenel and (Path(a.ozgenel) / "SHA256SUMS").exists():
        patches, source = load_negatives(Path(a.ozgenel), seed=a.seed), os.path.relpath(Path(a.ozgenel).resolve(), REPO)
    elif a.ozgenel:
        print(f"{a.ozgenel}: no Özgenel folder there; using the synthetic texture")
    if a.example:
        from crackloc.inference.predictor import Predictor

        pair = make_pair(np.random.default_rng([a.seed, 4]), shape=shape, patches=patches, change="mixed")
        example_figure(pair, predictor or Predictor(None), Path(a.example))
        return 0
    print(f"{a.pairs} pairs, BEFORE {shape[0]}x{shape[1]}, surface: {source}")
    print("pair | change | error px | residual px | inliers | overlap | ECC | s")
    rows = []
    for i, pair in enumerate(campaign(a.pairs, seed=a.seed, shape=shape, patches=patches)):
        rows.append(evaluate_pair(pair, predictor))
        r = rows[-1]
        print(f"{i:>4} | {r['change']} | " + (f"refused: {r['refused']}" if r["error_px"] is None else
              f"{r['error_px']:.3f} | {r['residual_px']:.2f} | {r['inliers']} | {r['overlap']:.2f} | "
              f"{'yes' if r['refined'] else 'no'} | {r['seconds']:.2f}"))
    s = summary(rows)
    print(f"within {ACCEPT_PX:g} px: {s['within_1px']}/{s['pairs']} ({s['share_within_1px']:.0%}); median error "
          f"{s['median_error_px']} px, max {s['max_error_px']} px; refused {s['refused']}; "
          f"{s['median_seconds']} s per pair (median)")
    changes = {k: change_summary(rows, k) for k in ("truth", "model")}
    for key, c in changes.items():
        if c is not None:
            print(f"crack changes from {'the drawn masks' if key == 'truth' else 'the model maps'}: "
                  + "; ".join(f"{k} {v}" for k, v in c.items()))
    if a.out:
        Path(a.out).write_text(json.dumps({"surface": source, "shape": list(shape), "seed": a.seed,
                                           "summary": s, "changes": changes, "rows": rows}, indent=1) + "\n")
    return 0 if s["share_within_1px"] >= ACCEPT_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
