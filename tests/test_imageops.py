"""Image operations: bit for bit the scipy references, Otsu by hand, the crack width on drawn bars."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.morphology import disk, skeletonize

from crackloc.imageops import dilate_square, disk_max, grey_closing, square_max
from crackloc.imageops.morphology import component_spans
from crackloc.imageops.threshold import otsu_threshold
from crackloc.imageops.width import local_width_map, skeleton_widths


def _noise(seed: int, shape: tuple[int, ...] = (2, 1, 50, 61)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))  # float32


@pytest.mark.parametrize("size", [3, 5, 7, 19, 37, 45])
def test_square_max_is_scipy_maximum_filter(size):
    g = _noise(size)  # [2,1,50,61]
    ref = ndi.maximum_filter(g.numpy(), size=(1, 1, size, size), mode="nearest")
    assert torch.equal(square_max(g, size), torch.from_numpy(ref))


@pytest.mark.parametrize("size", [3, 7, 15])
def test_grey_closing_is_scipy_grey_closing(size):
    g = _noise(100 + size)  # [2,1,50,61]
    ref = ndi.grey_closing(g.numpy(), size=(1, 1, size, size), mode="nearest")
    assert torch.equal(grey_closing(g, size), torch.from_numpy(ref))


@pytest.mark.parametrize("radius", [0, 1, 2, 12])
def test_dilate_square_is_scipy_binary_dilation(radius):
    mask = _noise(200 + radius) > 0.97  # [2,1,50,61] sparse bool
    k = 2 * radius + 1
    ref = ndi.binary_dilation(mask.numpy(), structure=np.ones((1, 1, k, k), bool))
    out = dilate_square(mask, radius)
    assert out.dtype == torch.bool and torch.equal(out, torch.from_numpy(ref))


@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_disk_max_is_scipy_grey_dilation_by_a_disk(radius):
    x = _noise(300 + radius, (40, 53))  # [H,W]
    ref = ndi.grey_dilation(x.numpy(), footprint=disk(radius).astype(bool), mode="constant", cval=-np.inf)
    assert torch.equal(disk_max(x, radius), torch.from_numpy(ref))


def test_component_spans_by_hand():
    mask = np.zeros((20, 20), bool)
    mask[2, 3:13] = True  # a 1×10 line
    mask[10:13, 10:13] = True  # a 3×3 block ...
    mask[13, 13] = True  # ... with a pixel touching its corner (8-connected: same component)
    labels, diag, area = component_spans(mask)
    assert labels.max() == 2 and diag[0] == 0.0
    assert diag[1] == math.hypot(1, 10) and area[1] == 10
    assert diag[2] == math.hypot(4, 4) and area[2] == 10


def test_otsu_on_three_levels_by_hand():
    """60 × 0.2, 30 × 0.5, 10 × 0.9: splitting after 0.2 gives between-class variance
    0.6·0.4·(0.2 − 0.6)² = 0.0384, after 0.5 only 0.9·0.1·(0.3 − 0.9)² = 0.0324. So the threshold
    lies in 0.2's bin (the first of 128 over [0.2, 0.9]) and `≥ t` keeps 0.5 and 0.9 only."""
    values = torch.tensor([0.2] * 60 + [0.5] * 30 + [0.9] * 10)
    t, bin_px = otsu_threshold(values), (0.9 - 0.2) / 128
    assert 0.2 < t <= 0.2 + bin_px and int((values >= t).sum()) == 40


def test_otsu_is_within_one_bin_of_the_exact_split():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.7, 0.08, 100)]).astype(np.float32)
    v = np.sort(values.astype(np.float64))
    w0 = np.arange(1, len(v)) / len(v)  # [n−1] weight of the lower class, splitting after each value
    m0 = np.cumsum(v)[:-1] / np.arange(1, len(v))
    m1 = (v.sum() - np.cumsum(v)[:-1]) / np.arange(len(v) - 1, 0, -1)
    exact = v[int(np.argmax(w0 * (1 - w0) * (m0 - m1) ** 2))]  # the last value of the lower class
    t = otsu_threshold(torch.from_numpy(values))
    assert abs(t - exact) <= (v[-1] - v[0]) / 128
    assert otsu_threshold(torch.full((10,), 0.3)) == pytest.approx(0.3)  # constant input: its value


def _axis_bar(width: int, *, vertical: bool) -> np.ndarray:
    mask = np.zeros((64, 96), bool)
    mask[20:20 + width, 10:86] = True  # 76 px long
    return mask.T.copy() if vertical else mask


@pytest.mark.parametrize("vertical", [False, True])
@pytest.mark.parametrize(("drawn", "reads"), [(1, 1), (2, 2), (3, 3), (4, 4), (7, 7), (8, 8), (15, 15)])
def test_width_of_axis_aligned_bars(drawn, reads, vertical):
    """Every width reads exactly, even ones too (measured on the 2× grid: crackloc/imageops/width.py)."""
    mask = _axis_bar(drawn, vertical=vertical)
    skel = skeletonize(mask)
    along = np.nonzero(skel)[0 if vertical else 1]  # position of each skeleton pixel along the bar
    inner = (along >= 10 + drawn) & (along < 86 - drawn)  # away from the bar's ends
    widths = skeleton_widths(mask)  # [N], raster order, as np.nonzero
    assert inner.sum() > 20 and np.all(widths[inner] == reads)
    assert np.all(local_width_map(mask)[~mask] == 0.0)


def test_width_of_an_oblique_3px_bar_is_about_3():
    yy, xx = np.mgrid[0:80, 0:120].astype(float)
    a = math.radians(30)
    dy, dx = yy - 40.3, xx - 60.2
    along, across = dx * math.cos(a) - dy * math.sin(a), dx * math.sin(a) + dy * math.cos(a)
    mask = (np.abs(along) <= 40) & (np.abs(across) <= 1.5)  # 80 px long, 3 px wide, rising at 30°
    skel = skeletonize(mask)
    ys, xs = np.nonzero(skel)
    inner = np.abs((xs - 60.2) * math.cos(a) - (ys - 40.3) * math.sin(a)) <= 30
    assert np.median(skeleton_widths(mask)[inner]) == pytest.approx(3.0, abs=0.5)
