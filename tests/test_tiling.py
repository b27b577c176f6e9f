"""Tiled inference: grid, blend weights, coverage, stitching, scale and gating."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crackloc.inference.tiling import (
    WEIGHT_FLOOR,
    blend_weight,
    check_coverage,
    predict_tiled,
    tile_grid,
    weight_sum_map,
)


class ConstantModel(nn.Module):
    """Contract-following stub: heatmap `value` everywhere, logits `logit` for every tile."""

    def __init__(self, value: float = 0.7, logit: float = 0.0) -> None:
        super().__init__()
        self.value, self.logit = value, logit
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(tuple(x.shape))
        b, _, h, w = x.shape
        return torch.full((b,), self.logit), torch.full((b, 1, h, w), self.value)


class BrightnessModel(nn.Module):
    """Heatmap = the tile's red channel, logits = mean red − 0.5: position-equivariant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, 0].mean(dim=(1, 2)) - 0.5, x[:, :1]


def test_tile_grid_clamps_last_window_to_border() -> None:
    # h=500, tile=224, overlap 0.25 → stride 168: starts 0, 168, then 336 would end at 560 > 500,
    # so range gives [0, 168] and the clamped last start 500 − 224 = 276 is appended.
    grid = tile_grid(500, 224, tile=224, overlap=0.25)
    assert grid == [(0, 0), (168, 0), (276, 0)]
    # exact fit: 224 + 168 = 392 → no extra window
    assert tile_grid(392, 392, tile=224, overlap=0.25) == [(0, 0), (0, 168), (168, 0), (168, 168)]


def test_tile_grid_small_image_and_bad_args() -> None:
    assert tile_grid(50, 60, tile=224, overlap=0.25) == [(0, 0)]
    assert tile_grid(1, 1, tile=224, overlap=0.0) == [(0, 0)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, tile=64, overlap=1.0)
    with pytest.raises(ValueError, match="size"):
        tile_grid(0, 100, tile=64, overlap=0.5)


def test_blend_weight_is_smooth_and_positive() -> None:
    w = blend_weight(16)
    assert w.shape == (16, 16)
    assert float(w.min()) > WEIGHT_FLOOR**2 * 0.99 and float(w.max()) <= 1.0
    assert torch.allclose(w, w.T) and torch.allclose(w, w.flip(0))  # symmetric window
    assert float(w[8, 8]) > float(w[0, 0])  # centre weighs more than the corner


@pytest.mark.parametrize("h,w", [(225, 333), (500, 77), (50, 60), (1, 1), (224, 224)])
def test_weight_sum_covers_every_pixel(h: int, w: int) -> None:
    total = weight_sum_map(h, w, tile=224, overlap=0.25)[:h, :w]
    check_coverage(total)
    assert float(total.min()) > 0


def test_check_coverage_raises_on_a_hole() -> None:
    total = torch.ones(4, 5)
    total[2, 3] = 0
    with pytest.raises(RuntimeError, match="1 of 20 pixels"):
        check_coverage(total)


@pytest.mark.parametrize("h,w", [(225, 333), (500, 77), (50, 60), (1, 1)])
def test_constant_model_stitches_to_constant_map(h: int, w: int) -> None:
    model = ConstantModel(0.7)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    out = predict_tiled(model, image, tile=64, overlap=0.25, batch_size=4)
    assert out.heatmap.shape == (h, w)
    flat = h * w == 1  # one pixel, padded to a tile by replication: a flat window, gated to 0
    assert torch.allclose(out.heatmap, torch.full((h, w), 0.0 if flat else 0.7), atol=1e-5)
    assert len(out.tile_boxes) == len(out.tile_probs) == len(tile_grid(max(h, 64), max(w, 64),
                                                                       tile=64, overlap=0.25))
    assert all(s == (min(4, s[0]), 3, 64, 64) for s in model.calls)  # batches of ≤ 4 tiles
    assert out.probability == pytest.approx(0.0 if flat else 0.5)  # sigmoid(0)


def test_scale_halves_the_tiled_image_and_restores_size() -> None:
    model = ConstantModel(0.7)
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)  # textured: flat windows are gated
    out = predict_tiled(model, image, tile=64, overlap=0.0, scale=0.5)
    # the model sees a 100×150 image: starts y {0, 36}, x {0, 64, 86} → 6 tiles
    assert len(out.tile_probs) == 6
    assert out.heatmap.shape == (200, 300)
    assert torch.allclose(out.heatmap, torch.full((200, 300), 0.7), atol=1e-5)
    assert out.tile_boxes[-1] == (72, 172, 200, 300)  # (36, 86) scaled ×2, clipped to the image


def test_position_equivariant_model_reproduces_its_input() -> None:
    # heatmap = red channel: each tile's map equals the image under it, so any weighted blend of
    # the overlapping tiles must return the red channel exactly (at scale 1).
    image = torch.randint(0, 256, (3, 130, 97), dtype=torch.uint8)
    out = predict_tiled(BrightnessModel(), image, tile=48, overlap=0.5, batch_size=5)
    assert torch.allclose(out.heatmap, image[0].float() / 255, atol=1e-5)


def test_gate_multiplies_by_tile_probability() -> None:
    logit = 1.0  # sigmoid(1) = 0.7310586
    image = torch.randint(0, 256, (3, 90, 90), dtype=torch.uint8)
    plain = predict_tiled(ConstantModel(0.5, logit), image, tile=64)
    gated = predict_tiled(ConstantModel(0.5, logit), image, tile=64, gate=True)
    assert torch.allclose(plain.heatmap, torch.full((90, 90), 0.5), atol=1e-5)
    assert torch.allclose(gated.heatmap, torch.full((90, 90), 0.5 * 0.7310586), atol=1e-5)


@pytest.mark.parametrize("level", [0, 10, 128, 255])
def test_a_flat_window_has_no_crack_evidence_whatever_the_model_says(level: int) -> None:
    """Uniform black, near-black, grey and saturated areas: probability 0 and an empty map."""
    sure = ConstantModel(1.0, logit=20.0)  # a model that calls everything a crack
    image = torch.full((3, 100, 300), level, dtype=torch.uint8)
    image[:, :, 200:] = torch.randint(0, 256, (3, 100, 100), dtype=torch.uint8)  # one textured third
    image[:, 50, 20] = level ^ 64  # a single odd pixel (64 levels off) leaves an area flat
    out = predict_tiled(sure, image, tile=100, overlap=0.0)
    assert out.tile_probs.tolist() == [0.0, 0.0, 1.0] and out.probability == 1.0
    assert float(out.heatmap[:, :200].max()) == 0.0 and float(out.heatmap[:, 200:].min()) == 1.0
    flat = predict_tiled(sure, torch.full((3, 64, 64), level, dtype=torch.uint8), tile=64)
    assert flat.probability == 0.0 and float(flat.heatmap.max()) == 0.0
    noisy = torch.full((3, 64, 64), level, dtype=torch.uint8)
    noisy[:, ::2] = noisy[:, ::2] ^ 8  # grey levels spread 4/255: faint texture, not flat
    assert predict_tiled(sure, noisy, tile=64).probability == 1.0


def test_bf16_autocast_and_channels_last_run() -> None:
    image = torch.randint(0, 256, (3, 70, 70), dtype=torch.uint8)
    out = predict_tiled(BrightnessModel(), image, tile=64, amp_dtype=torch.bfloat16,
                        channels_last=True)
    assert out.heatmap.dtype == torch.float32
    assert torch.allclose(out.heatmap, image[0].float() / 255, atol=1e-5)


def test_real_model_contract_and_mode_restored() -> None:
    from crackloc.config import ModelConfig
    from crackloc.models import build_model

    model = build_model(ModelConfig(pretrained="none"))
    model.train()
    out = predict_tiled(model, torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8), tile=64)
    assert model.training  # restored after running in eval mode
    assert out.heatmap.shape == (80, 100)
    assert 0.0 <= float(out.heatmap.min()) <= float(out.heatmap.max()) <= 1.0
    assert out.probability == pytest.approx(float(out.tile_probs.max()))


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match=r"\[3,H,W\]"):
        predict_tiled(ConstantModel(), torch.zeros(1, 3, 64, 64, dtype=torch.uint8), tile=64)
    with pytest.raises(ValueError, match="scale"):
        predict_tiled(ConstantModel(), torch.zeros(3, 64, 64, dtype=torch.uint8), scale=0)
