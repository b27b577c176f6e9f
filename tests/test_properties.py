"""Property tests (hypothesis): the tiler covers every pixel, and the pixel metrics stay sane.

Big sizes (up to 5000 px) exercise the grid arithmetic only; weight maps and stitching run
on small images so the suite stays fast.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from crackloc.evaluation.localization import PxAPEvaluator, ThresholdEvaluator
from crackloc.inference.tiling import (
    WEIGHT_FLOOR,
    check_coverage,
    predict_tiled,
    tile_grid,
    weight_sum_map,
)

FAST = settings(max_examples=50, deadline=None)
tiles = st.integers(16, 512)
overlaps = st.floats(0.0, 0.9, allow_nan=False)


def _axis_starts(corners: list[tuple[int, int]], axis: int) -> list[int]:
    return sorted({c[axis] for c in corners})


@FAST
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), tile=tiles, overlap=overlaps)
def test_tile_grid_covers_the_padded_image(h, w, tile, overlap):
    corners = tile_grid(max(h, tile), max(w, tile), tile=tile, overlap=overlap)
    stride = max(1, round(tile * (1 - overlap)))
    for axis, size in ((0, max(h, tile)), (1, max(w, tile))):
        starts = _axis_starts(corners, axis)
        assert starts[0] == 0 and starts[-1] + tile == size  # first and last window touch the borders
        assert all(0 < b - a <= min(stride, tile) for a, b in zip(starts[:-1], starts[1:], strict=True))
    assert len(corners) == len(_axis_starts(corners, 0)) * len(_axis_starts(corners, 1))


@FAST
@given(h=st.integers(1, 300), w=st.integers(1, 300), tile=st.integers(16, 128), overlap=overlaps)
def test_weight_sum_map_is_positive_everywhere(h, w, tile, overlap):
    total = weight_sum_map(h, w, tile=tile, overlap=overlap)
    assert total.shape == (max(h, tile), max(w, tile))
    check_coverage(total[:h, :w])
    assert float(total.min()) >= WEIGHT_FLOOR**2 * (1 - 1e-6)


class _Constant(nn.Module):
    """Model contract with a constant heatmap: logits [B], heatmap [B,1,t,t] = c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return x.new_zeros(len(x)), torch.full_like(x[:, :1], self.c)


@FAST
@given(h=st.integers(1, 160), w=st.integers(1, 160), tile=st.integers(16, 64), overlap=overlaps,
       scale=st.sampled_from([0.5, 1.0, 1.7]), c=st.floats(0.0, 1.0))
def test_stitching_a_constant_map_gives_the_constant(h, w, tile, overlap, scale, c):
    assume(min(h, w) * scale >= 4)  # shrunk to a sliver, noise averages out flat: gated to 0 (test_tiling)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))
    res = predict_tiled(_Constant(c), image, tile=tile, overlap=overlap, scale=scale, batch_size=7)
    assert res.heatmap.shape == (h, w)
    assert torch.allclose(res.heatmap, torch.full((h, w), c), atol=1e-5)


@st.composite
def _pairs(draw, max_side: int = 24):
    """(heatmap [N,H,W] in [0,1], mask [N,H,W] bool with ≥ 1 crack pixel)."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, h, w, generator=gen) < draw(st.floats(0.01, 0.9))
    mask.view(-1)[draw(st.integers(0, n * h * w - 1))] = True
    return torch.rand(n, h, w, generator=gen), mask


@FAST
@given(_pairs(), st.sampled_from([10, 100, 1000]))
def test_pxap_bounds_perfect_and_inverted_maps(pair, bins):
    heatmap, mask = pair
    prevalence = mask.sum().item() / mask.numel()
    scores = {}
    for name, hm in (("random", heatmap), ("perfect", mask.float()), ("inverted", 1 - mask.float())):
        ev = PxAPEvaluator(num_thresholds=bins)
        ev.accumulate(hm, mask)
        scores[name] = ev.compute()
    assert 0.0 <= scores["random"] <= 1.0
    assert abs(scores["perfect"] - 1.0) < 1e-9
    assert scores["inverted"] <= prevalence + 1e-9


@FAST
@given(_pairs())
def test_streaming_equals_one_shot_and_tolerance_only_helps(pair):
    heatmap, mask = pair
    one, many = PxAPEvaluator(num_thresholds=100), PxAPEvaluator(num_thresholds=100)
    one.accumulate(heatmap, mask)
    for hm, m in zip(heatmap, mask, strict=True):
        many.accumulate(hm, m)
    assert one.compute() == many.compute()
    exact, tolerant = ThresholdEvaluator(num_thresholds=100), ThresholdEvaluator(num_thresholds=100, tolerance=1)
    exact.accumulate(heatmap, mask)
    tolerant.accumulate(heatmap, mask)
    f0, f1 = exact.compute().f1, tolerant.compute().f1
    assert bool((f1 >= f0 - 1e-12).all()) and bool(((f0 >= 0) & (f1 <= 1)).all())
