"""Where a model draws a crack: the map's signed offset from dark lines drawn on synthetic concrete.

For each angle (0° = horizontal) and line width, a 700×600 image of mottled concrete with one
straight dark line through its centre goes through `Predictor` (default settings: 224 px tiles,
overlap 0.25, so the line crosses tile borders). Across the line, every 4 px along it, the map's
weighted mean signed distance within ±40 px is taken; the median is printed (px; + = below the
line, or left of it for steep lines). 0 means the map lies on the line.

    python -m benchmarks.registration [--checkpoint MODEL.pt] [--angles 0,30,60,90,120,150] [--widths 3,9]
        [--views 2] [--scale-spread 1.33] [--line-guide 0.9] [--overlap 0.5]
"""

from __future__ import annotations

import argparse
import json

import torch

from crackloc.config import InferenceConfig
from crackloc.data.synthetic import concrete_texture, draw_line
from crackloc.evaluation.registration import ridge_offsets
from crackloc.inference.predictor import Predictor, default_checkpoint


def offsets(predictor: Predictor, *, angles: list[float], widths: list[float]) -> dict[str, float]:
    """{"angle/width": median signed offset (px)} for lines drawn on synthetic concrete."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for angle in angles:
        for width in widths:
            base = concrete_texture(600, 700, generator=g) * 255  # [3,H,W]
            img, _, dist = draw_line(600, 700, angle_deg=angle, offset=5.0, width=width)
            img = torch.where(img[:1] < 100, base * 0.45, base).to(torch.uint8)  # the line, darkened concrete
            out[f"{angle:g}/{width:g}"] = round(float(ridge_offsets(predictor.predict(img).heatmap, dist).median()), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--angles", default="0,30,60,90,120,150")
    p.add_argument("--widths", default="3,9")
    p.add_argument("--views", type=int, default=1,
                   help="views averaged (2: + the photo turned 180°, which cancels stage 1's learned shift)")
    p.add_argument("--scale-spread", type=float, default=1.0, help="also map at ÷ and × this factor (averaged)")
    p.add_argument("--line-guide", type=float, default=InferenceConfig.line_guide,
                   help="weight of the photo's dark-line evidence (default: predict's)")
    p.add_argument("--overlap", type=float, default=InferenceConfig.overlap, help="window overlap fraction")
    a = p.parse_args()
    cfg = InferenceConfig(views=a.views, scale_spread=a.scale_spread, line_guide=a.line_guide, overlap=a.overlap)
    predictor = Predictor(a.checkpoint or default_checkpoint(), cfg)
    res = offsets(predictor, angles=[float(v) for v in a.angles.split(",")],
                  widths=[float(v) for v in a.widths.split(",")])
    print(json.dumps({"checkpoint": str(a.checkpoint or default_checkpoint()), "views": a.views,
                      "scale_spread": a.scale_spread, "line_guide": a.line_guide, "overlap": a.overlap, "offsets_px": res}))


if __name__ == "__main__":
    main()
