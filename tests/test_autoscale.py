"""Automatic scale: the crack width estimated from the image, and the scale it gives."""

from __future__ import annotations

import math

import pytest
import torch

from crackloc.config import InferenceConfig, ModelConfig
from crackloc.inference.autoscale import (
    MAX_SCALE,
    MIN_SCALE,
    TRAIN_CRACK_WIDTH,
    auto_scale,
    estimate_crack_width,
)
from crackloc.inference.predictor import Predictor
from crackloc.models.registry import build_model


def bar_image(width: float, *, h: int = 300, w: int = 360, contrast: float = 80.0, seed: int = 0) -> torch.Tensor:
    """uint8 [3,H,W]: noisy grey with one oblique dark bar `width` px wide."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((3, h, w), 170.0) + 6 * torch.randn(1, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    dist = (yy - 0.4 * xx - h / 4).abs() / math.hypot(1, 0.4)
    img[:, dist < width / 2] -= contrast
    return img.clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("width", [2, 3, 5, 9, 15, 25])
def test_estimated_width_of_a_bar(width):
    assert estimate_crack_width(bar_image(width)) == pytest.approx(width, rel=0.25)


def test_large_photo_is_estimated_on_a_shrunk_copy_in_its_own_pixels():
    img = bar_image(12, h=1500, w=1800)
    assert estimate_crack_width(img) == pytest.approx(12, rel=0.25)


def test_plain_texture_has_no_width_and_keeps_scale_1():
    g = torch.Generator().manual_seed(1)
    noise = (torch.full((3, 300, 300), 150.0) + 6 * torch.randn(1, 300, 300, generator=g)).clamp(0, 255)
    assert estimate_crack_width(noise.to(torch.uint8)) is None
    assert auto_scale(noise.to(torch.uint8)) == 1.0


def test_scale_makes_cracks_training_width_and_is_clipped():
    assert auto_scale(bar_image(4)) == pytest.approx(TRAIN_CRACK_WIDTH / 4, rel=0.25)
    assert auto_scale(bar_image(3), target=100.0) == MAX_SCALE
    assert auto_scale(bar_image(25), target=1.0) == MIN_SCALE


def test_predictor_uses_and_reports_the_chosen_scale():
    model = build_model(ModelConfig(name="darkness", pretrained="none"))
    img = bar_image(4)
    fixed = Predictor.from_model(model, InferenceConfig(precision="32")).predict(img)
    auto = Predictor.from_model(model, InferenceConfig(precision="32", auto_scale=True)).predict(img)
    assert fixed.scale == 1.0
    assert auto.scale == pytest.approx(auto_scale(img))
    assert auto.heatmap.shape == fixed.heatmap.shape == img.shape[-2:]
    assert auto.n_tiles > fixed.n_tiles  # the photo was tiled at the chosen (larger) scale
