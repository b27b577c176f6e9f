"""One 4032×3024 photo end to end (decode → tiles → stitched map → geometry) vs the model alone.

"Model alone" runs the same number of 224 px tiles, batched the same way, through the same
model and precision: the ratio total/model is the overhead of decoding, tiling, blending and
geometry. Peak memory is the process's maximum resident set size (torch itself included).

    python benchmarks/bench_photo.py [--checkpoint MODEL.pt] [--photo FILE] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import cpu_model, interleaved
from crackloc.config import InferenceConfig
from crackloc.inference.geometry import measure_cracks
from crackloc.inference.predictor import ASSETS, Predictor
from crackloc.io import load_rgb, rgb_to_tensor
from crackloc.tensors import autocast_for

SIZE = (4032, 3024)


def make_photo(path: Path, src: Path) -> Path:
    """The bundled sample photo upscaled to 4032×3024 (a stand-in of a phone photo's size)."""
    Image.open(src).convert("RGB").resize(SIZE, Image.BICUBIC).save(path, quality=92)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--photo", help="a photo to use instead of the upscaled sample")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=["bf16", "32"], default="bf16")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    pred = Predictor(a.checkpoint, InferenceConfig(batch_size=a.batch_size, precision=a.precision))
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(a.photo) if a.photo else make_photo(Path(tmp) / "photo.jpg", ASSETS / "sample_photo.jpg")
        phases: dict[str, float] = {}

        def end_to_end() -> None:
            t0 = time.perf_counter()
            image = rgb_to_tensor(load_rgb(photo))
            t1 = time.perf_counter()
            res = pred.predict(image)
            t2 = time.perf_counter()
            report = measure_cracks((res.heatmap >= 0.5).numpy())
            t3 = time.perf_counter()
            phases.update(decode=t1 - t0, tiled_map=t2 - t1, geometry=t3 - t2, n_tiles=res.n_tiles,
                          cracks=report.count)

        end_to_end()
        tiles = torch.rand(int(phases["n_tiles"]), 3, 224, 224)
        if a.precision == "bf16":
            tiles = tiles.contiguous(memory_format=torch.channels_last)

        def model_only() -> None:
            with torch.inference_mode(), autocast_for("cpu", a.precision):
                for s in range(0, len(tiles), a.batch_size):
                    pred.model(tiles[s:s + a.batch_size])

        secs = interleaved({"end_to_end": end_to_end, "model_only": model_only}, rounds=a.rounds, warmup=0)
        w, h = Image.open(photo).size
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"CPU: {cpu_model()}")
    print(f"photo {w}×{h}, {int(phases['n_tiles'])} tiles of 224 px (overlap {pred.cfg.overlap}), batch "
          f"{a.batch_size}, {a.precision}; median of {a.rounds} interleaved rounds")
    print(f"end to end: {secs['end_to_end']:.2f} s (last round: decode {phases['decode']:.2f} s, tiled map "
          f"{phases['tiled_map']:.2f} s, geometry {phases['geometry']:.2f} s, {phases['cracks']} cracks)")
    print(f"model alone on the same tiles: {secs['model_only']:.2f} s")
    print(f"ratio end-to-end / model alone: {secs['end_to_end'] / secs['model_only']:.3f} (target ≤ 1.3)")
    print(f"peak resident memory of the process: {peak_gb:.2f} GB (target ≤ 3 GB)")


if __name__ == "__main__":
    main()
