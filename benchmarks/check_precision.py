"""Is the fast path as accurate? fp32 vs bf16 + channels_last vs ONNX Runtime, same model.

Classification on the test split of a manifest (decision agreement, AUROC, accuracy) and,
with --masks, localisation on a mask data set (PxAP, best F1) at one tiling.

    python benchmarks/check_precision.py --manifest docs/results/ozgenel_split.csv \
        --data ../shared/data/ozgenel --masks ../shared/data/crackforest [--checkpoint M.pt]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from benchmarks.common import cpu_model, table
from crackloc.config import RunConfig
from crackloc.data.masks import MaskDataset
from crackloc.evaluation.classification import classification_metrics, predict_batches
from crackloc.evaluation.localization import PxAPEvaluator, ThresholdEvaluator
from crackloc.inference.predictor import Predictor, default_checkpoint
from crackloc.training.run import ensure_manifest, load_splits


def localisation(model, masks: MaskDataset, *, amp: bool, scale: float) -> tuple[float, float]:
    """(PxAP, ODS F1 at 2 px) of tiled maps over every mask image."""
    from crackloc.inference.tiling import predict_tiled

    pxap, thr = PxAPEvaluator(), ThresholdEvaluator(tolerance=2, per_image=False)
    for i in range(len(masks)):
        _, image, mask = masks[i]
        heat = predict_tiled(model, image, scale=scale, amp_dtype=torch.bfloat16 if amp else None,
                             channels_last=amp).heatmap
        pxap.accumulate(heat, mask)
        thr.accumulate(heat, mask)
    return pxap.compute(), thr.compute().ods_f1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--masks")
    p.add_argument("--checkpoint")
    p.add_argument("--scale", type=float, default=1.0)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    ckpt = Path(a.checkpoint) if a.checkpoint else default_checkpoint()
    cfg = RunConfig()
    cfg.data.manifest, cfg.data.data = a.manifest, a.data
    with tempfile.TemporaryDirectory() as tmp:
        root, rows = ensure_manifest(cfg, Path(tmp), progress=False)
        test = load_splits(cfg, root, rows, ("test",), progress=False)["test"]
        torch_model = Predictor(ckpt, precision="32").model
        onnx_model = Predictor(ckpt, backend="onnx").model
        runs = {"fp32 eager": (torch_model, "32", False), "bf16 + channels_last": (torch_model, "bf16", True),
                "ONNX Runtime fp32": (onnx_model, "32", False)}
        probs = {k: predict_batches(m, test.images, precision=prec, channels_last=cl)[0]
                 for k, (m, prec, cl) in runs.items()}
        masks = MaskDataset(a.masks) if a.masks else None
        rows_out = []
        for k, (m, prec, _) in runs.items():
            c = classification_metrics(probs[k], test.labels)
            agree = float(((probs[k] > 0.5) == (probs["fp32 eager"] > 0.5)).float().mean())
            row = [k, f"{c['auroc']:.4f}", f"{c['accuracy']:.4f}", f"{agree:.4f}"]
            if masks is not None:
                px, f1 = localisation(m, masks, amp=prec == "bf16", scale=a.scale)
                row += [f"{px:.4f}", f"{f1:.4f}"]
            rows_out.append(row)
    print(f"CPU: {cpu_model()}; model {ckpt}; {len(test.labels)} test patches")
    header = ["backend", "test AUROC", "test accuracy", "decisions equal to fp32"]
    if masks is not None:
        header += [f"PxAP ({len(masks)} mask images, scale {a.scale})", "ODS F1 (2 px)"]
    print(table(rows_out, header))


if __name__ == "__main__":
    main()
