"""Training-free floors: no weights, the model contract, and maps that find a drawn dark line."""

from __future__ import annotations

import pytest
import torch

from crackloc.config import ModelConfig
from crackloc.data.synthetic import make_crack_image
from crackloc.imageops import grey_closing, ridge_response
from crackloc.models import build_model
from crackloc.models.filters import keep_thin_components

FLOORS = ("darkness", "blackhat", "ridge", "blackhat_ridge_shape")


@pytest.mark.parametrize("name", FLOORS)
def test_floors_have_no_weights_and_find_the_crack(name):
    model = build_model(ModelConfig(name=name)).eval()
    assert not list(model.parameters()) and model.trainable is False
    img, mask = make_crack_image(96, 128, crack=True, seed=3, width=2.5)
    with torch.no_grad():
        logits, heat = model(img[None])
    assert logits.shape == (1,) and heat.shape == (1, 1, 96, 128)
    on, off = heat[0, 0][mask[0] > 0], heat[0, 0][mask[0] == 0]
    assert on.mean() > off.mean() + 0.2, (on.mean(), off.mean())
    assert torch.sigmoid(logits)[0] == pytest.approx(float(heat.max()), abs=1e-3)


def test_grey_closing_fills_a_dark_line_narrower_than_the_window():
    g = torch.ones(1, 1, 20, 20)
    g[..., 9:11, :] = 0.2  # a dark line 2 px wide
    assert torch.allclose(grey_closing(g, 5), torch.ones_like(g))


def test_ridge_responds_to_dark_lines_not_bright_ones():
    g = torch.full((1, 1, 40, 40), 0.6)
    g[..., 10:13, :] = 0.2  # dark line
    g[..., 26:29, :] = 1.0  # bright line
    r = ridge_response(g, width=3.0)[0, 0]
    assert r[11].mean() > 10 * r[27].mean()


def test_shape_filter_keeps_a_long_thin_line_and_damps_a_blob():
    heat = torch.zeros(1, 1, 64, 64)
    heat[..., 30:32, 2:62] = 0.9  # a line 60 px long, 2 px wide
    heat[..., 5:17, 5:17] = 0.9  # a 12×12 blob
    out = keep_thin_components(heat, width=2.0)  # keeps: span ≥ 8 px, mean width ≤ 6 px
    assert torch.allclose(out[..., 30:32, 2:62], heat[..., 30:32, 2:62])
    assert torch.allclose(out[..., 5:17, 5:17], 0.25 * heat[..., 5:17, 5:17])

