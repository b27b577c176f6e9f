"""Stage 2 beside stage 1 on one 4032×3024 photo: time per photo (interleaved) and peak memory.

Both models map the same photo with the same `InferenceConfig` defaults (bf16, 224 px tiles,
overlap 0.25, batch 16) through `Predictor.predict`, alternating stage 1, stage 2, stage 1, …
over `--rounds`, in this process; the medians and their ratio are printed (goal ≤ 1.5). Peak
memory is measured apart, one fresh process per model (decode + one map), as the maximum
resident set size of that process (torch included; goal ≤ 3 GB).

    python -m benchmarks.bench_stage2 [--stage2 MODEL.pt] [--stage1 MODEL.pt] [--rounds 3]

Defaults: the two bundled models. "stage 2" runs as `predict` runs it by default (gated: windows
below 1 % crack probability skip its decoder); "stage 2, every window" runs the decoder on all;
"stage 1, --views 2" averages stage 1's map with that of the photo turned 180° (what registers it);
"stage 2, --line-guide 0" is stage 2 without the default line guide (the photo's dark-line evidence).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from benchmarks.bench_photo import make_photo
from benchmarks.common import cpu_model, interleaved
from crackloc.config import InferenceConfig
from crackloc.inference.predictor import ASSETS, BUNDLED_MODEL, STAGE1_MODEL, Predictor
from crackloc.io import load_rgb, rgb_to_tensor

PEAK = """
import resource, sys
from crackloc.config import InferenceConfig
from crackloc.inference.predictor import Predictor
from crackloc.io import load_rgb, rgb_to_tensor
Predictor(sys.argv[1], InferenceConfig()).predict(rgb_to_tensor(load_rgb(sys.argv[2])))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
"""


def peak_gb(checkpoint: str, photo: Path) -> float:
    """Peak resident memory (GB) of a fresh process that maps the photo once."""
    out = subprocess.run([sys.executable, "-c", PEAK, checkpoint, str(photo)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1", default=str(STAGE1_MODEL), help="stage-1 model file (default: the bundled one)")
    p.add_argument("--stage2", default=str(BUNDLED_MODEL), help="stage-2 model file (default: the bundled one)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    files = {"stage 1": a.stage1, "stage 2": a.stage2}
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photo(Path(tmp) / "photo.jpg", ASSETS / "sample_photo.jpg")
        image = rgb_to_tensor(load_rgb(photo))
        preds = {k: Predictor(v, InferenceConfig()) for k, v in files.items()}
        preds["stage 2, every window"] = Predictor(a.stage2, InferenceConfig())
        preds["stage 2, every window"].model.decode_min_prob = 0.0  # no gated skip of the decoder
        preds["stage 1, --views 2"] = Predictor(a.stage1, InferenceConfig(views=2))
        preds["stage 2, --line-guide 0"] = Predictor(a.stage2, InferenceConfig(line_guide=0.0))
        tiles: dict[str, int] = {}

        def run(name: str) -> None:
            tiles[name] = preds[name].predict(image).n_tiles

        secs = interleaved({k: (lambda k=k: run(k)) for k in preds}, rounds=a.rounds, warmup=1)
        peaks = {k: peak_gb(v, photo) for k, v in files.items()}
    print(f"CPU: {cpu_model()}")
    print(f"photo 4032×3024, {tiles['stage 1']} tiles of 224 px, bf16; "
          f"median of {a.rounds} interleaved rounds")
    for k in preds:
        peak = f", peak resident memory {peaks[k]:.2f} GB ({files[k]})" if k in peaks else ""
        print(f"{k}: {secs[k]:.2f} s per photo{peak}")
    print(f"stage 2 / stage 1 time: {secs['stage 2'] / secs['stage 1']:.2f} (goal ≤ 1.5; every window: "
          f"{secs['stage 2, every window'] / secs['stage 1']:.2f}; against stage 1 with --views 2: "
          f"{secs['stage 2'] / secs['stage 1, --views 2']:.2f}; the line guide's share: "
          f"{secs['stage 2'] / secs['stage 2, --line-guide 0']:.2f}x); stage 2 peak {peaks['stage 2']:.2f} GB "
          "(goal ≤ 3 GB)")


if __name__ == "__main__":
    main()
