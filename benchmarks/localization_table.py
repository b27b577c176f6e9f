"""The localisation table of issue #12: every row scored on the same CrackForest test images.

For each row (training-free floors, model files), every setting (scale, gate) is chosen on the
fixed dev images only (`fixed_partition`: the 30 images `evaluate-localization` uses as dev by
default), by dev PxAP; then `evaluate_localization` picks the map threshold on the same dev
images and scores the 88 test images at it. Prints a Markdown table and writes JSON.

    python -m benchmarks.localization_table --data ../shared/data/crackforest \
        --model stage1=crackloc/assets/crackloc_resnet18.pt --model stage2=RUN/model.pt \
        --scales 1,2,4,6,auto --out docs/results/localization_table
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

from benchmarks.common import cpu_model, table
from crackloc.config import InferenceConfig, ModelConfig
from crackloc.data.masks import MaskDataset
from crackloc.evaluation.localize_run import evaluate_localization, fixed_partition, score_folder
from crackloc.inference.predictor import Predictor
from crackloc.io import write_json
from crackloc.models.registry import build_model

FLOORS = ("darkness", "blackhat", "ridge", "blackhat_ridge_shape")


def make_predictor(source: str, cfg: InferenceConfig) -> Predictor:
    """`floor:NAME` (training-free) or a model file path."""
    if source.startswith("floor:"):
        return Predictor.from_model(build_model(ModelConfig(name=source[6:], pretrained="none")), cfg,
                                    name=source)
    return Predictor(source, cfg)


def settings(scale: str, gate: bool, views: int = 1, spread: float = 1.0, guide: float = 0.0) -> InferenceConfig:
    """`scale` is a number or 'auto' (`InferenceConfig.auto_scale`: chosen per image from its crack width)."""
    common = {"gate": gate, "views": views, "scale_spread": spread, "line_guide": guide}
    if scale == "auto":
        return InferenceConfig(auto_scale=True, **common)
    return InferenceConfig(scale=float(scale), **common)


def choose_on_dev(source: str, ds: MaskDataset, dev: list[str], *, scales: list[str], gates: list[bool],
                  views: list[int], spreads: list[float], guides: list[float]) -> tuple[InferenceConfig, list[dict]]:
    """The (scale, gate, views, spread, line guide) with the best dev PxAP, and every dev result."""
    tried = []
    for scale, gate, n, spread, guide in itertools.product(scales, gates, views, spreads, guides):
        t0 = time.time()
        res = score_folder(make_predictor(source, settings(scale, gate, n, spread, guide)), ds, dev, tolerance=2)
        tried.append({"scale": scale, "gate": gate, "views": n, "scale_spread": spread, "line_guide": guide,
                      "dev_pxap": res["pxap"], "dev_best_f1": res["best_f1"], "seconds": round(time.time() - t0, 1)})
        print(json.dumps({"row": source, **tried[-1]}), flush=True)
    best = max(tried, key=lambda r: r["dev_pxap"])
    return settings(best["scale"], best["gate"], best["views"], best["scale_spread"], best["line_guide"]), tried


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", action="append", default=[], help="NAME=MODEL_FILE (repeat)")
    p.add_argument("--floors", default=",".join(FLOORS))
    p.add_argument("--scales", default="1,2,4,6", help="scales tried on dev for the model files ('auto': "
                   "--auto-scale)")
    p.add_argument("--floor-scales", default="1", help="scales tried on dev for the floors")
    p.add_argument("--gates", default="off,on", help="gate settings tried on dev for the model files")
    p.add_argument("--floor-gates", default="off,on", help="gate settings tried on dev for the floors")
    p.add_argument("--views", default="1", help="--views settings tried on dev for the model files (e.g. 1,2,8)")
    p.add_argument("--spreads", default="1", help="--scale-spread settings tried on dev for the model files")
    p.add_argument("--guides", default="0", help="--line-guide settings tried on dev for the model files")
    p.add_argument("--out", required=True)
    p.add_argument("--overlays", type=int, default=0,
                   help="test images drawn in each row's overlays.png (default 0; CrackForest's licence is "
                        "non-commercial: never commit figures that show its images)")
    p.add_argument("--update", action="store_true",
                   help="keep the rows of OUT/table.json that this run does not redo (same row name: replaced)")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    ds = MaskDataset(a.data)
    dev, test = fixed_partition(ds.stems)
    def gates(text: str) -> list[bool]:
        return [{"off": False, "on": True}[g] for g in text.split(",")]

    tta = ([int(v) for v in a.views.split(",")], [float(v) for v in a.spreads.split(",")],
           [float(v) for v in a.guides.split(",")])
    rows = [(f"{n} (training-free)", f"floor:{n}", a.floor_scales.split(","), gates(a.floor_gates),
             ([1], [1.0], [0.0]))
            for n in a.floors.split(",") if n]
    rows += [(name, path, a.scales.split(","), gates(a.gates), tta)
             for name, path in (m.split("=", 1) for m in a.model)]
    out, results = Path(a.out), []
    if a.update and (out / "table.json").is_file():
        redo = {label for label, *_ in rows}
        results = [r for r in json.loads((out / "table.json").read_text())["rows"] if r["row"] not in redo]
    for label, source, scales, row_gates, (views, spreads, guides) in rows:
        t0 = time.time()
        cfg, tried = choose_on_dev(source, ds, dev, scales=scales, gates=row_gates, views=views, spreads=spreads,
                                   guides=guides)
        m = evaluate_localization(make_predictor(source, cfg), a.data, out / label.split()[0],
                                  partition=(dev, test), progress=False, n_overlays=a.overlays)
        results.append({"row": label, "source": source, "scale": "auto" if cfg.auto_scale else cfg.scale,
                        "gate": cfg.gate, "views": cfg.views, "scale_spread": cfg.scale_spread,
                        "line_guide": cfg.line_guide, "dev": tried,
                         "seconds": round(time.time() - t0, 1),
                         **{k: m[k] for k in ("pxap", "f1", "iou", "ods_f1", "ois_f1", "ods_f1_0px", "ois_f1_0px",
                                              "threshold",
                                              "width_error_px_median", "width_error_px_p90", "n_dev", "n_test")}})
        write_json(out / "table.json", {"cpu": cpu_model(), "rows": results})

    def f(x, d=3):
        return "—" if x is None else f"{x:.{d}f}"

    print(table([[r["row"], str(r["scale"]), "on" if r["gate"] else "off", f(r["pxap"]), f(r["f1"]),
                  f(r["iou"]), f(r["ods_f1"]), f(r["ois_f1"]), f(r.get("ods_f1_0px")), f(r.get("ois_f1_0px")),
                  f(r["width_error_px_median"], 2),
                  f(r["width_error_px_p90"], 2)] for r in results],
                ["map", "scale (dev)", "gate (dev)", "PxAP", "F1 (2 px, dev thr.)", "IoU", "ODS F1 (2 px)",
                 "OIS F1 (2 px)", "ODS F1 (0 px)", "OIS F1 (0 px)",
                 "width err. median px", "width err. p90 px"]))


if __name__ == "__main__":
    main()
