"""Is the fast path as accurate? fp32 vs bf16 + channels_last vs ONNX Runtime, same model.

Classification on the test split of a manifest (decision agreement, AUROC, accuracy), the
pixel decisions of the map on a photo (default: the bundled sample photo, gated as `predict`
does by default; IoU of `map ≥ 0.5` with fp32's) and, with --masks, localisation on a mask data
set (PxAP, best F1) at one tiling.

    python benchmarks/check_precision.py --manifest docs/results/ozgenel_split.csv \
        --data ../shared/data/ozgenel --masks ../shared/data/crackforest [--checkpoint M.pt]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

from benchmarks.common import cpu_model, table
from crackloc.config import InferenceConfig, RunConfig
from crackloc.data.manifest import ensure_manifest, load_splits
from crackloc.data.masks import MaskDataset
from crackloc.evaluation.classification import classification_metrics
from crackloc.evaluation.localize_run import score_folder
from crackloc.inference.predictor import ASSETS, Predictor, default_checkpoint
from crackloc.io import load_rgb, rgb_to_tensor
from crackloc.tensors import predict_batches

# The fast paths, each against fp32 eager; tiled maps use the inference defaults (ungated here,
# as this check was first run, so the map itself is compared).
SETTINGS = {"fp32 eager": {"precision": "32"}, "bf16 + channels_last": {"precision": "bf16"},
            "ONNX Runtime fp32": {"precision": "32", "backend": "onnx"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--masks")
    p.add_argument("--checkpoint")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--photo", default=str(ASSETS / "sample_photo.jpg"), help="photo for the pixel decisions")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    ckpt = Path(a.checkpoint) if a.checkpoint else default_checkpoint()
    cfg = RunConfig()
    cfg.data.manifest, cfg.data.data = a.manifest, a.data
    with tempfile.TemporaryDirectory() as tmp:
        root, rows = ensure_manifest(cfg, Path(tmp), progress=False)
        test = load_splits(cfg, root, rows, ("test",), progress=False)["test"]
        predictors = {k: Predictor(ckpt, InferenceConfig(scale=a.scale, gate=False, **v))
                      for k, v in SETTINGS.items()}
        probs = {k: predict_batches(p.model, test.images, precision=p.cfg.precision,
                                    channels_last=p.cfg.precision == "bf16")[0] for k, p in predictors.items()}
        masks = MaskDataset(a.masks) if a.masks else None
        photo = rgb_to_tensor(load_rgb(a.photo))
        pixels = {k: Predictor(ckpt, InferenceConfig(scale=a.scale, **v)).predict(photo).heatmap >= 0.5
                  for k, v in SETTINGS.items()}
        rows_out = []
        for k, pred in predictors.items():
            c = classification_metrics(probs[k], test.labels)
            agree = float(((probs[k] > 0.5) == (probs["fp32 eager"] > 0.5)).float().mean())
            ref = pixels["fp32 eager"]
            iou = float((pixels[k] & ref).sum() / (pixels[k] | ref).sum().clamp(min=1))
            row = [k, f"{c['auroc']:.4f}", f"{c['accuracy']:.4f}", f"{agree:.4f}", f"{iou:.4f}"]
            if masks is not None:
                loc = score_folder(pred, masks, masks.stems, tolerance=2)
                row += [f"{loc['pxap']:.4f}", f"{loc['best_f1']:.4f}"]
            rows_out.append(row)
    print(f"CPU: {cpu_model()}; model {ckpt}; {len(test.labels)} test patches")
    header = ["backend", "test AUROC", "test accuracy", "decisions equal to fp32",
              f"photo map ≥ 0.5: IoU with fp32 ({Path(a.photo).name}, gated)"]
    if masks is not None:
        header += [f"PxAP ({len(masks)} mask images, scale {a.scale})", "ODS F1 (2 px)"]
    print(table(rows_out, header))


if __name__ == "__main__":
    main()
