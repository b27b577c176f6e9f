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

from crackloc.config import InferenceConfig
from crackloc.data.masks import MaskDataset
from crackloc.evaluation.localize_run import partition_stems, score_folder
from crackloc.inference.predictor import Predictor


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
    percentiles = [None if q == "keep" else float(q) for q in a.percentiles.split(",")]
    for ckpt in a.checkpoints:
        for scale, gate, q in itertools.product([float(s) for s in a.scales.split(",")], gates, percentiles):
            pred = Predictor(ckpt, InferenceConfig(scale=scale, gate=gate, ahr_percentile=q))
            res = score_folder(pred, ds, dev, tolerance=a.tolerance)
            print(json.dumps({"checkpoint": ckpt, "scale": scale, "gate": gate,
                              "ahr_percentile": "keep" if q is None else q, "n_dev": len(dev),
                              "dev_pxap": round(res["pxap"], 4), "dev_best_f1": round(res["best_f1"], 4)}),
                  flush=True)


if __name__ == "__main__":
    main()
