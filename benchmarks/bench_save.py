"""Seconds per image of `predict` by `--save` choice: all (3 PNGs + line guide), mask, record.

Runs the bundled model over the 200 bundled Özgenel sample patches (227 px, as a user sorting
an archive of patches by crack probability would) into a temporary folder, once per choice,
the choices interleaved over the rounds. Prints the CPU's capability beside the times.

    python -m benchmarks.bench_save [--rounds 2] [--images 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import cpu_model, interleaved, table
from crackloc.inference.batch import predict_files
from crackloc.inference.outputs import SAVE_KINDS
from crackloc.inference.predictor import ASSETS, Predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=200)
    a = p.parse_args()
    files = sorted((ASSETS / "sample").rglob("*.jpg"))[: a.images]
    predictor = Predictor()
    with tempfile.TemporaryDirectory() as tmp:
        fns = {save: (lambda save=save: predict_files(predictor, files, Path(tmp) / save, save=save, progress=False))
               for save in SAVE_KINDS}
        secs = interleaved(fns, rounds=a.rounds, warmup=0)
    print(f"CPU: {cpu_model()}; precision {predictor.cfg.precision}; {len(files)} patches of 227 px, bundled model, "
          f"median of {a.rounds} interleaved rounds\n")
    print(table([[f"--save {k}", f"{v:.1f}", f"{1000 * v / len(files):.0f}", f"{secs['all'] / v:.2f}×"]
                 for k, v in secs.items()], ["choice", "seconds", "ms per image", "speed-up vs all"]))


if __name__ == "__main__":
    main()
