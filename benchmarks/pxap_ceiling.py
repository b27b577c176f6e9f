"""How high PxAP can go on a human mask set: the human masks themselves, moved or widened a little.

PxAP counts a pixel as right only where the human mask has it, so a map that finds every crack
but draws it one pixel off, or one pixel wider, loses much of its score. This scores each test
image's own human mask after such a change, with the same metrics and images as
`benchmarks.localization_table` (the fixed partition's test images; PxAP over all pixels, best
F1 with a 2 px tolerance):

    python -m benchmarks.pxap_ceiling --data ../shared/data/crackforest [--out docs/results/pxap_ceiling.json]

No model runs; it says what a near-perfect crack map would score, to read the table's rows against.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import table
from crackloc.data.masks import MaskDataset
from crackloc.evaluation.localization import PxAPEvaluator, ThresholdEvaluator
from crackloc.evaluation.localize_run import fixed_partition
from crackloc.imageops import dilate_square
from crackloc.io import write_json


def shifted(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """[H,W] moved by (dy, dx) px, zeros shifted in (no wrap-around)."""
    h, w = mask.shape
    padded = F.pad(mask[None, None].float(), (abs(dx), abs(dx), abs(dy), abs(dy)))  # [1,1,H+2|dy|,W+2|dx|]
    return padded[0, 0, abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w].contiguous()


def dilated(mask: torch.Tensor, r: int) -> torch.Tensor:
    """[H,W] widened by r px on every side (a (2r+1)² square, as the pseudo-labels' ignore band)."""
    return dilate_square(mask[None, None].bool(), r)[0, 0].float()


CHANGES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "the human mask itself": lambda m: m.float(),
    "moved 1 px down": lambda m: shifted(m, 1, 0),
    "moved 1 px right": lambda m: shifted(m, 0, 1),
    "moved 1 px down and right": lambda m: shifted(m, 1, 1),
    "1 px wider on each side": lambda m: dilated(m, 1),
    "2 px wider on each side": lambda m: dilated(m, 2),
}


def ceiling(ds: MaskDataset, stems: list[str]) -> list[dict]:
    """PxAP and best F1 (2 px) of every change of the human masks of `stems`."""
    index = {s: i for i, s in enumerate(ds.stems)}
    evaluators = {name: (PxAPEvaluator(), ThresholdEvaluator(tolerance=2, per_image=False)) for name in CHANGES}
    for stem in stems:
        _, _, mask = ds[index[stem]]  # [H,W] bool
        for name, change in CHANGES.items():
            for ev in evaluators[name]:
                ev.accumulate(change(mask), mask)
    return [{"map": name, "pxap": px.compute(), "f1": th.compute().ods_f1} for name, (px, th) in evaluators.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an images/ + masks/ folder (e.g. ../shared/data/crackforest)")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args()
    ds = MaskDataset(a.data)
    _, test = fixed_partition(ds.stems)
    rows = ceiling(ds, test)
    print(table([[r["map"], f"{r['pxap']:.3f}", f"{r['f1']:.3f}"] for r in rows],
                ["map (test images)", "PxAP", "F1 (2 px)"]))
    if a.out:
        write_json(Path(a.out), {"data": str(a.data), "n_test": len(test), "rows": rows})


if __name__ == "__main__":
    main()
