"""Crack geometry on drawn masks of known length, width and orientation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from crackloc.errors import CracklocError
from crackloc.inference.geometry import draw_geometry, measure_cracks


def bar(h: int, w: int, *, centre: tuple[float, float], length: float, width: float,
        angle_deg: float) -> np.ndarray:
    """Flat-ended bar: pixels within width/2 of a segment (angle counter-clockwise on screen)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    a = math.radians(angle_deg)
    ux, uy = math.cos(a), -math.sin(a)  # screen y points down
    dy, dx = yy - centre[0], xx - centre[1]
    along = dx * ux + dy * uy
    across = -dx * uy + dy * ux
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def test_horizontal_bar_200x5():
    mask = np.zeros((64, 260), bool)
    mask[30:35, 30:230] = True  # 200 × 5 px
    report = measure_cracks(mask)
    assert report.count == 1
    crack = report.cracks[0]
    assert crack.length_px == pytest.approx(200, rel=0.03)
    assert crack.mean_width_px == pytest.approx(5, abs=1)
    assert crack.max_width_px == pytest.approx(5, abs=1)
    assert crack.orientation_deg == pytest.approx(0, abs=1)
    assert crack.bbox == (30, 30, 230, 35)
    assert crack.area_px == 1000
    assert report.area_fraction == pytest.approx(1000 / (64 * 260))
    assert report.total_length_px == crack.length_px


@pytest.mark.parametrize("angle", [45.0, -45.0, 30.0, 67.5, 90.0])
def test_oblique_bar_length_width_orientation(angle):
    mask = bar(240, 240, centre=(120, 120), length=200, width=5, angle_deg=angle)
    crack = measure_cracks(mask).cracks[0]
    assert crack.length_px == pytest.approx(200, rel=0.03)
    assert crack.mean_width_px == pytest.approx(5, abs=1)
    assert crack.max_width_px == pytest.approx(5, abs=1)
    assert crack.orientation_deg == pytest.approx(angle, abs=1)


def test_thin_line_and_ring():
    line = np.zeros((20, 150), bool)
    line[10, 20:120] = True  # 1 px wide, 100 px long
    crack = measure_cracks(line).cracks[0]
    assert crack.length_px == pytest.approx(100, rel=0.03)
    assert crack.max_width_px == pytest.approx(1, abs=0.5)
    yy, xx = np.mgrid[0:200, 0:200]
    r = np.hypot(yy - 100, xx - 100)
    ring = (r >= 47.5) & (r <= 52.5)  # closed loop, no tips
    crack = measure_cracks(ring).cracks[0]
    assert crack.length_px == pytest.approx(2 * math.pi * 50, rel=0.03)
    assert crack.mean_width_px == pytest.approx(5, abs=1)


def test_two_separate_cracks_and_totals():
    mask = np.zeros((200, 260), bool)
    mask[20:23, 10:110] = True  # 100 × 3, horizontal
    mask[60:180, 200:207] = True  # 120 × 7, vertical
    report = measure_cracks(mask)
    assert report.count == 2
    first, second = report.cracks
    assert first.bbox == (10, 20, 110, 23) and second.bbox == (200, 60, 207, 180)
    assert first.length_px == pytest.approx(100, rel=0.03)
    assert second.length_px == pytest.approx(120, rel=0.03)
    assert first.max_width_px == pytest.approx(3, abs=1)
    assert second.max_width_px == pytest.approx(7, abs=1)
    assert second.orientation_deg == pytest.approx(90, abs=1)
    assert report.total_length_px == pytest.approx(first.length_px + second.length_px)
    assert report.max_width_px == second.max_width_px
    assert report.crack_area_px == 300 + 840


def test_branching_crack_is_one_crack():
    mask = np.zeros((200, 200), bool)
    mask[98:102, 20:180] = True  # 160 px horizontal
    mask[20:98, 98:102] = True  # 78 px branch up from its middle
    report = measure_cracks(mask)
    assert report.count == 1
    assert report.cracks[0].length_px == pytest.approx(160 + 80, rel=0.03)


def test_empty_mask():
    report = measure_cracks(np.zeros((50, 60), bool), mm_per_px=0.1)
    assert report.count == 0 and report.cracks == []
    assert report.total_length_px == 0 and report.max_width_px == 0 and report.area_fraction == 0
    d = json.loads(json.dumps(report.to_dict()))
    assert d["count"] == 0 and d["total_length_mm"] == 0 and d["height"] == 50 and d["width"] == 60


def test_mm_conversion_halves_lengths():
    mask = np.zeros((64, 260), bool)
    mask[30:35, 30:230] = True
    px = measure_cracks(mask)
    mm = measure_cracks(mask, mm_per_px=0.5)
    c_px, c_mm = px.cracks[0], mm.cracks[0]
    assert c_px.length_mm is None and px.total_length_mm is None and "length_mm" not in c_px.to_dict()
    assert c_mm.length_mm == pytest.approx(c_px.length_px / 2)
    assert c_mm.max_width_mm == pytest.approx(c_px.max_width_px / 2)
    assert c_mm.mean_width_mm == pytest.approx(c_px.mean_width_px / 2)
    assert c_mm.area_mm2 == pytest.approx(1000 / 4)
    assert mm.total_length_mm == pytest.approx(px.total_length_px / 2)
    d = json.loads(json.dumps(mm.to_dict()))
    assert d["cracks"][0]["length_mm"] == pytest.approx(c_px.length_px / 2, abs=1e-3)
    assert d["max_width_mm"] == pytest.approx(c_px.max_width_px / 2, abs=1e-3)


def test_min_area_filtering():
    mask = np.zeros((100, 100), bool)
    mask[10:13, 10:90] = True  # 240 px crack
    mask[50:54, 50:54] = True  # 16 px speck
    assert measure_cracks(mask).count == 1  # default min_area=20
    report = measure_cracks(mask, min_area=10)
    assert report.count == 2
    assert measure_cracks(mask, min_area=300).count == 0
    assert measure_cracks(mask).area_fraction == pytest.approx(240 / 10_000)


def test_inputs_torch_and_validation():
    mask = torch.zeros(1, 40, 120, dtype=torch.bool)
    mask[0, 10:14, 10:110] = True
    assert measure_cracks(mask).cracks[0].length_px == pytest.approx(100, rel=0.03)
    assert measure_cracks(mask.numpy()[0].astype(np.uint8) * 255).count == 1
    with pytest.raises(CracklocError, match="threshold"):
        measure_cracks(np.full((10, 10), 0.7))
    with pytest.raises(CracklocError, match="mm_per_px"):
        measure_cracks(mask, mm_per_px=0.0)
    with pytest.raises(CracklocError, match=r"\[H,W\]"):
        measure_cracks(np.zeros((2, 5, 5), bool))


def test_draw_geometry():
    mask = np.zeros((80, 200), bool)
    mask[40:45, 20:180] = True
    report = measure_cracks(mask, mm_per_px=0.25)
    image = np.full((80, 200, 3), 30, np.uint8)
    out = draw_geometry(image, report, skeleton_color=(255, 255, 0), box_color=(0, 200, 255))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 30).all()  # input untouched
    ys, xs = report.cracks[0].skeleton.T
    assert (out[ys[5:-5], xs[5:-5]] == (255, 255, 0)).all()
    assert (out[44, 20] == (0, 200, 255)).all()  # box outline (bottom-left corner)
    label = out[25:40, 20:120]  # text above the box (y0 = 40 leaves room)
    assert (label[..., 2] > 150).sum() > 20 and (label == 0).all(axis=-1).any()  # text on black
    with pytest.raises(CracklocError):
        draw_geometry(np.zeros((10, 10, 3), np.uint8), report)
