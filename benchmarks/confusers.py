"""How much of each crack look-alike a model marks as crack, on real crack-free concrete.

Each confuser kind of `crackloc.data.confusers` (formwork seam, joint, step, shadow edge, stain,
bug holes, spall) is drawn on the same real crack-free Özgenel patches (227 px), and each patch
goes through `Predictor` as `predict` runs it. Printed per kind: the share of the confuser's
pixels with map ≥ 0.5 (goal ≤ 2 %) and the median crack probability. Controls: the plain patches,
and drawn cracks of the same contrast (dark 0.45-0.8x) at two widths, scored as the share of
their length (skeleton) with a mask pixel within 2 px (goal ≥ 90 %).

    python -m benchmarks.confusers [--checkpoint MODEL.pt] [--negatives DIR] [--n 40] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from benchmarks.common import cpu_model, shown, table
from crackloc.data.confusers import CONFUSERS
from crackloc.data.synthetic import random_crack_mask
from crackloc.inference.predictor import ASSETS, Predictor
from crackloc.io import load_rgb, rgb_to_tensor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ozgenel" / "Negative"
CRACK_WIDTHS = {"crack 2-4 px": (2.0, 4.0), "crack 6-12 px": (6.0, 12.0)}


def negatives(folder: Path, n: int) -> torch.Tensor:
    """The first `n` crack-free patches of a seeded shuffle of `folder`: uint8 [n,3,227,227]."""
    files = sorted(folder.glob("*.jpg"))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:n]
    return torch.stack([rgb_to_tensor(load_rgb(files[i])) for i in order.tolist()])


def draw_cracks(images: torch.Tensor, width: tuple[float, float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A wandering crack (dark 0.45-0.8x, width in `width`) on each patch: → (images, masks bool [N,H,W])."""
    g = torch.Generator().manual_seed(seed)
    out, masks = images.clone(), []
    for i in range(len(images)):
        w = width[0] + (width[1] - width[0]) * float(torch.rand(1, generator=g))
        dark = 0.45 + 0.35 * float(torch.rand(1, generator=g))
        mask = random_crack_mask(images.shape[-2], images.shape[-1], generator=g, width=w)
        out[i] = torch.where(mask, (images[i].float() * dark).round().to(torch.uint8), images[i])
        masks.append(mask)
    return out, torch.stack(masks)


def marked_length(crack: torch.Tensor, pred: torch.Tensor) -> tuple[int, int]:
    """(skeleton pixels with a mask pixel within 2 px, skeleton pixels) of one drawn crack [H,W]."""
    skeleton = skeletonize(crack.numpy())
    near = ndimage.binary_dilation(pred.numpy(), structure=np.ones((5, 5), bool))
    return int((skeleton & near).sum()), int(skeleton.sum())


def figure(panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Each kind's first patch (top) and the same with its crack mask in red (bottom), labelled: → PNG."""
    from PIL import Image, ImageDraw

    size = panels[0][1].shape[-1]
    sheet = Image.new("RGB", (size * len(panels), 2 * size + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, image, mask) in enumerate(panels):
        rgb = image.permute(1, 2, 0).numpy().copy()
        sheet.paste(Image.fromarray(rgb), (i * size, 18))
        rgb[mask.numpy()] = (230, 30, 30)
        sheet.paste(Image.fromarray(rgb), (i * size, 18 + size))
        draw.text((i * size + 4, 3), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--negatives", type=Path, help="folder of crack-free patches (default: ../shared's Özgenel "
                                                  "negatives, else the bundled sample's)")
    p.add_argument("--n", type=int, default=40, help="patches per kind (default 40)")
    p.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    p.add_argument("--figure", type=Path, help="also draw the first patch of each kind and its crack mask (PNG)")
    a = p.parse_args()
    folder = a.negatives or (SHARED if SHARED.is_dir() else ASSETS / "sample" / "Negative")
    base = negatives(folder, a.n)
    predictor = Predictor(a.checkpoint)
    rows, record, panels = [], {}, []

    def run(batch: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
        preds = [predictor.predict(img) for img in batch]
        return [q.heatmap >= 0.5 for q in preds], [q.probability for q in preds]

    masks, probs = run(base)
    plain = float(torch.stack(masks).float().mean())
    record["plain"] = {"marked": plain, "probability_median": statistics.median(probs)}
    rows.append(["plain concrete (all pixels)", f"{100 * plain:.2f} %", f"{statistics.median(probs):.3f}", ""])
    for k, (name, draw) in enumerate(CONFUSERS.items()):
        images, region = draw(base, torch.Generator().manual_seed(100 + k))
        masks, probs = run(images)
        share = float(sum(int((m & r[0]).sum()) for m, r in zip(masks, region, strict=True)) / region.sum().clamp(min=1))
        record[name] = {"marked": share, "probability_median": statistics.median(probs)}
        panels.append((name, images[0], masks[0]))
        rows.append([name, f"{100 * share:.2f} %", f"{statistics.median(probs):.3f}", "≤ 2 %"])
    for k, (name, width) in enumerate(CRACK_WIDTHS.items()):
        images, cracks = draw_cracks(base, width, seed=200 + k)
        masks, probs = run(images)
        hits = [marked_length(c, m) for c, m in zip(cracks, masks, strict=True)]
        share = sum(h for h, _ in hits) / max(sum(t for _, t in hits), 1)
        record[name] = {"length_marked": share, "probability_median": statistics.median(probs)}
        panels.append((name, images[0], masks[0]))
        rows.append([f"control: {name}", f"{100 * share:.1f} % of length", f"{statistics.median(probs):.3f}", "≥ 90 %"])
    print(f"CPU: {cpu_model()}; model {shown(predictor.checkpoint)}; {a.n} crack-free patches from {shown(folder)}; "
          f"predict's defaults (precision {predictor.cfg.precision}, line guide {predictor.cfg.line_guide:g})\n")
    print(table(rows, ["drawn on crack-free concrete", "marked as crack (map ≥ 0.5)", "crack probability (median)",
                       "goal"]))
    if a.figure:
        figure(panels, a.figure)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"checkpoint": shown(predictor.checkpoint), "n": a.n, "negatives": shown(folder),
                                     "kinds": record}, indent=1))


if __name__ == "__main__":
    main()
