"""The bundled default model (stage 2) end to end: it draws cracks where they are and as wide as they are.

These run the shipped model file through the same path as `crackloc predict`, on drawn cracks
with exact geometry (no data files, no network).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.known_widths import measured_widths
from crackloc.config import InferenceConfig
from crackloc.data.synthetic import concrete_texture, draw_line
from crackloc.evaluation.registration import ridge_offsets
from crackloc.inference.predictor import STAGE1_MODEL, Predictor
from crackloc.models.checkpoint import read_model_file


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()  # the bundled model, default settings (bf16, 224 px tiles, overlap 0.25, gate)


def test_the_default_model_is_stage_2(predictor):
    assert read_model_file(predictor.checkpoint)["config"]["name"] == "crackseg"


@pytest.fixture(scope="module")
def stage1() -> Predictor:
    """The bundled stage 1 (the paper's model), registered: its learned map shift cancelled (--views 2),
    and tile-border effects averaged over twice as many windows (--overlap 0.5)."""
    return Predictor(STAGE1_MODEL, InferenceConfig(views=2, overlap=0.5))


def _offsets_on_drawn_lines(predictor: Predictor, angle: int) -> list[tuple[float, float]]:
    """(width, median offset px) of the map from dark lines across a 600×700 photo of synthetic concrete."""
    g = torch.Generator().manual_seed(angle)
    base = concrete_texture(600, 700, generator=g) * 255  # [3,H,W]
    found = []
    for width, offset in ((3.0, 5.0), (9.0, 13.5)):
        line, _, dist = draw_line(600, 700, angle_deg=angle, offset=offset, width=width)
        img = torch.where(line[:1] < 100, base * 0.45, base).to(torch.uint8)
        off = ridge_offsets(predictor.predict(img).heatmap, dist)
        assert len(off) > 20
        found.append((width, float(off.median())))
    return found


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 120, 150])
def test_stage2_map_lies_on_drawn_cracks_across_tiles(predictor, angle):
    """A dark line through a 600×700 photo of synthetic concrete crosses several tile borders; the
    map's centre across the line is within 1 px of it (median along the line)."""
    for width, median in _offsets_on_drawn_lines(predictor, angle):
        assert abs(median) <= 1.0, (angle, width, median)


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 120, 150])
def test_stage1_map_lies_on_drawn_cracks_with_two_views(stage1, angle):
    """Stage 1's 14×14 maps with --views 2 --overlap 0.5: within 1 px of the line too (plain: 2.6–8.2 px off)."""
    for width, median in _offsets_on_drawn_lines(stage1, angle):
        assert abs(median) <= 1.0, (angle, width, median)


def test_known_widths_end_to_end(tmp_path):
    """`crackloc predict --geometry --auto-scale` on 600×450 photos of 1, 3, 7 and 15 px cracks,
    image file to JSON: each crack found whole, its mean width within 1.25 px of the drawn one.

    (A regression bound, not #23's goal of 0.5 px: the model draws a 15 px crack about 1.1 px too
    wide, which the width measure on the 2× grid shows; the pixel-grid one read it 0.7 px thinner.)"""
    rows = measured_widths(tmp_path, size=(450, 600), options=("--auto-scale",))
    for r in rows:
        assert r["mean_width_px"] is not None, rows
        assert abs(r["mean_width_px"] - r["drawn_px"]) <= 1.25, rows
        assert abs(r["length_px"] - r["drawn_length_px"]) <= 0.05 * r["drawn_length_px"], rows


@pytest.mark.parametrize("kind", ["black", "near-black", "grey", "white", "gaussian noise"])
def test_a_flat_or_noisy_image_is_not_a_crack(predictor, kind):
    """#27: RGB (10,10,10) at 224² once got probability 1.0. Flat windows are gated to 0; the
    bundled model itself calls Gaussian noise (sd 20) crack-free."""
    level = {"black": 0, "near-black": 10, "grey": 128, "white": 255}.get(kind)
    if level is None:
        gen = torch.Generator().manual_seed(0)
        image = (128 + 20 * torch.randn(3, 224, 224, generator=gen)).clamp(0, 255).to(torch.uint8)
    else:
        image = torch.full((3, 224, 224), level, dtype=torch.uint8)
    pred = predictor.predict(image)
    assert pred.probability < min(0.01, predictor.threshold) and float(pred.heatmap.max()) < 0.05
