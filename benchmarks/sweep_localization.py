"""Choose tiled-inference settings on the DEV part of a mask data set only (never on test).

For each model file and each setting (scale, gate, AHR percentile at inference), tiles the
dev images of `crackloc evaluate-localization`'s partition (same --dev-fraction/--seed) and
prints dev PxAP and dev best F1 (2 px tolerance). The test images are not read.

    python benchmarks/sweep_localization.py --data CRACKFOREST model.pt teacher.pt \
        --scales 0.5,1,2 --percentiles keep,50,0 --gate both
"""

from __future__ import annotations

import argparse
import itertools
import json
import warnings

import torch

from crackloc.data.masks import MaskDataset
from crackloc.evaluation.localization import PxAPEvaluator, ThresholdEvaluator
from crackloc.evaluation.localize_run import partition_stems
from crackloc.inference.tiling import predict_tiled
from crackloc.models.checkpoint import load_model


def score_dev(model: torch.nn.Module, ds: MaskDataset, stems: list[str], *, scale: float, gate: bool,
              tolerance: int) -> dict[str, float]:
    """Dev PxAP (exact) and best F1 (with tolerance) of one setting."""
    pxap, thr = PxAPEvaluator(), ThresholdEvaluator(tolerance=tolerance, per_image=False)
    index = {s: i for i, s in enumerate(ds.stems)}
    for stem in stems:
        _, image, mask = ds[index[stem]]
        heat = predict_tiled(model, image, scale=scale, gate=gate, amp_dtype=torch.bfloat16,
                             channels_last=True).heatmap
        pxap.accumulate(heat, mask)
        thr.accumulate(heat, mask)
    return {"dev_pxap": pxap.compute(), "dev_best_f1": thr.compute().ods_f1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--scales", default="1")
    p.add_argument("--percentiles", default="keep", help="AHR percentiles at inference; 'keep' = as trained")
    p.add_argument("--gate", choices=["off", "on", "both"], default="both")
    p.add_argument("--dev-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=int, default=2)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    ds = MaskDataset(a.data)
    dev, _ = partition_stems(ds.stems, dev_fraction=a.dev_fraction, seed=a.seed)
    gates = {"off": [False], "on": [True], "both": [False, True]}[a.gate]
    for ckpt in a.checkpoints:
        model = load_model(ckpt)[0].to(memory_format=torch.channels_last)
        ahr = getattr(model, "ahr", None)
        percentiles = [q for q in a.percentiles.split(",") if ahr is not None or q == "keep"]
        for scale, gate, q in itertools.product([float(s) for s in a.scales.split(",")], gates, percentiles):
            if ahr is not None:
                ahr.percentile = model.cfg.ahr_percentile if q == "keep" else float(q)
            res = score_dev(model, ds, dev, scale=scale, gate=gate, tolerance=a.tolerance)
            print(json.dumps({"checkpoint": ckpt, "scale": scale, "gate": gate, "ahr_percentile": q,
                              "n_dev": len(dev), **{k: round(v, 4) for k, v in res.items()}}), flush=True)


if __name__ == "__main__":
    main()
