"""False cracks on straight light/dark steps: how dark a step's dark side must be before a model marks it.

A crack is a dark *line*: lighter on both sides. A step is an edge: a light area beside a darker
one (a pour joint, a shadow's edge, a paint line, the seam between two mosaic cells of the
bundled sample photo). For each angle (0° = horizontal edge) and brightness ratio r of the dark
side to the light side, a 700×600 image of mottled concrete has one half darkened by r and no
crack; it goes through `Predictor` (default settings). Printed per (angle, r): the crack
probability, and the fraction of the step's length with a crack-mask pixel (map ≥ 0.5) within
±20 px of it (0: the step is not taken for a crack; 1: a false crack all along it). A dark line of
the same r is drawn beside it as the positive control.

    python -m benchmarks.step_edges [--checkpoint MODEL.pt] [--angles 0,30,90] [--ratios 0.9,0.8,0.7,0.6,0.5]
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import table
from crackloc.config import InferenceConfig
from crackloc.data.synthetic import concrete_texture, draw_line
from crackloc.inference.predictor import Predictor, default_checkpoint

NEAR = 20.0  # px: a mask pixel this close to the step counts as marking it


def marked_fraction(mask: torch.Tensor, dist: torch.Tensor, normal: torch.Tensor) -> float:
    """Fraction of the edge's length (1 px bins along it) with a mask pixel within `NEAR` px: mask, dist [H,W]."""
    h, w = mask.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    along = (-(yy - h / 2) * normal[1] + (xx - w / 2) * normal[0]).round().long()  # [H,W] position along the edge
    near = dist.abs() <= NEAR  # [H,W]
    positions = along[near]
    hit = along[near & mask]
    if positions.numel() == 0:
        return 0.0
    return len(set(hit.tolist())) / len(set(positions.tolist()))


def probe(predictor: Predictor, *, angle: float, ratio: float, kind: str) -> tuple[float, float]:
    """(crack probability, fraction of the edge/line marked) for a step or a 9 px line of darkness `ratio`."""
    g = torch.Generator().manual_seed(0)
    base = concrete_texture(600, 700, generator=g)  # [3,H,W] in [0,1]
    _, normal, dist = draw_line(600, 700, angle_deg=angle, offset=0.0)
    dark = dist > 0 if kind == "step" else dist.abs() <= 4.5  # [H,W]
    img = torch.where(dark, base * ratio, base).mul(255).round().to(torch.uint8)  # [3,H,W]
    pred = predictor.predict(img)
    return pred.probability, marked_fraction(pred.heatmap >= 0.5, dist, normal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--angles", default="0,30,90")
    p.add_argument("--ratios", default="0.9,0.8,0.7,0.6,0.5,0.4", help="dark side / light side brightness")
    p.add_argument("--line-guide", type=float, default=InferenceConfig.line_guide,
                   help="weight of the photo's dark-line evidence (default: predict's; the mask is the same)")
    a = p.parse_args()
    checkpoint = a.checkpoint or default_checkpoint()
    predictor = Predictor(checkpoint, InferenceConfig(line_guide=a.line_guide))
    rows, record = [], []
    for angle in (float(v) for v in a.angles.split(",")):
        for ratio in (float(v) for v in a.ratios.split(",")):
            step_p, step_f = probe(predictor, angle=angle, ratio=ratio, kind="step")
            line_p, line_f = probe(predictor, angle=angle, ratio=ratio, kind="line")
            record.append({"angle": angle, "ratio": ratio, "step_probability": round(step_p, 4),
                           "step_marked": round(step_f, 3), "line_probability": round(line_p, 4),
                           "line_marked": round(line_f, 3)})
            rows.append([f"{angle:g}", f"{ratio:g}", f"{step_p:.3f}", f"{step_f:.2f}", f"{line_p:.3f}", f"{line_f:.2f}"])
    print(table(rows, ["angle", "dark/light", "step: crack prob.", "step: length marked",
                       "9 px line: crack prob.", "line: length marked"]))
    print(json.dumps({"checkpoint": str(checkpoint), "line_guide": a.line_guide, "rows": record}))


if __name__ == "__main__":
    main()
