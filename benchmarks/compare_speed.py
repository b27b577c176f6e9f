"""`crackloc compare` of two photos against one `crackloc predict`, side by side in one run (#26: ≤ 2.5×).

A synthetic campaign pair (`crackloc.data.campaigns.make_pair`) at `--size` (default 3000,4000:
12 MP) is written as JPEG; then, with one `Predictor` (the bundled model, `predict`'s defaults),
`predict_files` maps BEFORE (with `--geometry`), `compare_photos` compares BEFORE and AFTER, and
`predict_files` maps BEFORE again. Prints each time, the compare time over the mean of the two
predict times, and how the compare time splits (registration, the two maps, matching, files).

    python -m benchmarks.compare_speed [--size 3000,4000] [--ozgenel ../shared/data/ozgenel]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from crackloc.change import compare as compare_module
from crackloc.change.compare import compare_masks, compare_photos, register
from crackloc.data.campaigns import make_pair
from crackloc.inference.batch import predict_files
from crackloc.inference.predictor import Predictor


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _split(predictor: Predictor) -> dict[str, float]:
    """Wrap the compare module's steps to time them (registration, model, matching)."""
    spent = {"registration": 0.0, "model (2 photos)": 0.0, "matching": 0.0}
    originals = {name: getattr(compare_module, name) for name in ("register", "compare_masks")}

    def timing(name: str, key: str):
        def wrapper(*args, **kwargs):
            t, out = _timed(originals[name], *args, **kwargs)
            spent[key] += t
            return out
        return wrapper

    compare_module.register = timing("register", "registration")
    compare_module.compare_masks = timing("compare_masks", "matching")
    predict = predictor.predict

    def timed_predict(*args, **kwargs):
        t, out = _timed(predict, *args, **kwargs)
        spent["model (2 photos)"] += t
        return out

    predictor.predict = timed_predict
    return spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="3000,4000", help="BEFORE height,width (default 3000,4000: 12 MP)")
    p.add_argument("--ozgenel", help="tile the surface from this Özgenel folder's crack-free patches")
    a = p.parse_args()
    shape = tuple(int(v) for v in a.size.split(","))
    patches = None
    if a.ozgenel:
        from benchmarks.compare import load_negatives

        patches = load_negatives(Path(a.ozgenel))
    pair = make_pair(np.random.default_rng(0), shape=shape, patches=patches, change="mixed")
    predictor = Predictor()
    predictor.predict(_warm_image())  # load and warm up
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp) / "before.jpg", Path(tmp) / "after.jpg"
        Image.fromarray(pair.before).save(before, quality=92)
        Image.fromarray(pair.after).save(after, quality=92)
        t_p1, _ = _timed(predict_files, predictor, [before], Path(tmp) / "p1", geometry=True, progress=False)
        spent = _split(predictor)
        t_c, _ = _timed(compare_photos, predictor, before, after, Path(tmp) / "c")
        del predictor.predict  # the class's method again
        compare_module.register, compare_module.compare_masks = register, compare_masks
        t_p2, _ = _timed(predict_files, predictor, [before], Path(tmp) / "p2", geometry=True, progress=False)
    mean_p = (t_p1 + t_p2) / 2
    print(f"BEFORE {shape[0]}x{shape[1]} ({shape[0] * shape[1] / 1e6:.1f} MP), AFTER {pair.after.shape[0]}x"
          f"{pair.after.shape[1]}; bundled model, predict's defaults")
    print(f"predict --geometry (one photo): {t_p1:.1f} s, again {t_p2:.1f} s")
    print(f"compare (two photos):           {t_c:.1f} s = {t_c / mean_p:.2f}x one predict (goal <= 2.5x)")
    rest = t_c - sum(spent.values())
    print("compare's time: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()) + f", the rest (decoding, "
          f"relighting, overlay, files) {rest:.1f} s")


def _warm_image():
    import torch

    return torch.zeros((3, 256, 256), dtype=torch.uint8)


if __name__ == "__main__":
    main()
