"""The GPU check of `--precision auto`: what auto picks on CUDA, `predict` of the sample photo, a short training.

For a session that is lent a GPU (one short script, a few minutes): it prints the device, the
precision auto resolves to, the sample photo's map time with auto and with fp32 (interleaved,
same run) and the agreement of their crack masks, then trains the tiny preset for one epoch on
the bundled patches (Lightning picks the GPU). Without CUDA it says so and exits 0.

    python -m benchmarks.gpu_check [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import interleaved
from crackloc.config import InferenceConfig
from crackloc.inference.predictor import ASSETS, Predictor
from crackloc.io import load_rgb, rgb_to_tensor
from crackloc.tensors import resolve_precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (CPU numbers: benchmarks.bench_inference, bench_train)")
        return
    print(f"GPU: {torch.cuda.get_device_name(0)}; auto resolves to {resolve_precision('auto', 'cuda')}")
    image = rgb_to_tensor(load_rgb(ASSETS / "sample_photo.jpg"))
    preds = {k: Predictor(None, InferenceConfig(device="cuda", precision=k)) for k in ("auto", "32")}
    secs = interleaved({k: (lambda q=q: q.predict(image)) for k, q in preds.items()}, rounds=a.rounds)
    masks = {k: q.predict(image).heatmap >= 0.5 for k, q in preds.items()}
    iou = float((masks["auto"] & masks["32"]).sum() / (masks["auto"] | masks["32"]).sum().clamp(min=1))
    print(f"sample photo {tuple(image.shape[1:])}: auto {secs['auto']:.3f} s, fp32 {secs['32']:.3f} s; "
          f"crack-mask IoU auto vs fp32 {iou:.4f}")
    from crackloc.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rc = cli(["train", "--data", str(ASSETS / "sample"), "--preset", "tiny", "--pretrained", "none",
                  "--epochs", "1", "--teacher-epochs", "1", "--out", str(Path(tmp) / "run")])  # Lightning picks the GPU
        print(f"tiny training on the GPU: exit {rc}, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
