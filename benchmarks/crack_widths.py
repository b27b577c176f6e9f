"""Crack widths the model was trained on, and the automatic scale's estimate on other images.

`crackloc.inference.autoscale` resizes a photo by TRAIN_CRACK_WIDTH / (its estimated crack
width). TRAIN_CRACK_WIDTH is measured here, with the same estimator, on Özgenel crack patches
of the training split at the model's input size (224 px): a property of the training data.
With `--masks` it also prints the estimate and the chosen scale on the dev images of a mask set
(never its test images), against the width the human masks give (the median along the mask
skeleton of `crackloc.imageops.width`'s crack width, the one geometry and the width error use).

    python -m benchmarks.crack_widths --data ../shared/data/ozgenel \
        --manifest docs/results/ozgenel_split.csv [--n 400] [--masks ../shared/data/crackforest]
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import numpy as np

from crackloc.data.dataset import resize_uint8
from crackloc.data.masks import MaskDataset
from crackloc.data.split import read_manifest
from crackloc.evaluation.localize_run import fixed_partition
from crackloc.imageops.width import skeleton_widths
from crackloc.inference.autoscale import TRAIN_CRACK_WIDTH, auto_scale, estimate_crack_width
from crackloc.io import load_rgb, rgb_to_tensor


def quartiles(values: list[float]) -> str:
    q = np.percentile(values, [25, 50, 75])
    return f"median {q[1]:.2f} px (quartiles {q[0]:.2f}–{q[2]:.2f}, n={len(values)})"


def training_widths(data: Path, manifest: Path, *, n: int, size: int = 224) -> list[float]:
    """The estimate on n random crack patches of the training split, resized to `size` px."""
    _, rows = read_manifest(manifest)
    cracks = [r for r in rows if r.split == "train" and r.label == 1]
    random.Random(0).shuffle(cracks)
    out = []
    for r in cracks[:n]:
        w = estimate_crack_width(resize_uint8(rgb_to_tensor(load_rgb(data / r.path)), size))
        if w is not None:
            out.append(w)
    return out


def mask_width(mask: np.ndarray) -> float:
    """Median crack width (px) along the mask's skeleton (`crackloc.imageops.width`)."""
    return float(np.median(skeleton_widths(mask)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Özgenel folder")
    p.add_argument("--manifest", required=True, help="its split (training patches only are read)")
    p.add_argument("--n", type=int, default=400, help="crack patches to measure (default 400)")
    p.add_argument("--masks", help="a mask set: also show the estimate on its dev images")
    a = p.parse_args()
    widths = training_widths(Path(a.data), Path(a.manifest), n=a.n)
    print(f"Özgenel training crack patches at 224 px: {quartiles(widths)}; "
          f"TRAIN_CRACK_WIDTH in the code = {TRAIN_CRACK_WIDTH}")
    if a.masks:
        ds = MaskDataset(a.masks)
        dev, _ = fixed_partition(ds.stems)
        est, truth, scales = [], [], []
        for stem in dev:
            _, image, mask = ds[ds.stems.index(stem)]
            w = estimate_crack_width(image)
            est.append(w if w is not None else float("nan"))
            truth.append(mask_width(mask.numpy().astype(bool)))
            scales.append(auto_scale(image))
        ratio = [e / t for e, t in zip(est, truth, strict=True) if t > 0 and e == e]
        print(f"{a.masks} dev images ({len(dev)}): estimate {quartiles([e for e in est if e == e])}; "
              f"human masks {quartiles(truth)}; estimate / mask median {statistics.median(ratio):.2f}; "
              f"auto scale {quartiles(scales).replace(' px', '')}")


if __name__ == "__main__":
    main()
