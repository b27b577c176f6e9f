"""Registration: a map's ridge lies on the line it marks, whatever the stride, tiling and scale.

A torchvision CNN puts cell i of a stride-s map on pixel s·i (every stride-2 conv or pool has
k//2 padding); `F.interpolate(align_corners=False)` assumes s·i + (s−1)/2 and so drew every
map (s−1)/2 px down and right: the 7–12 px offset seen under drawn lines (issue #12).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from crackloc.config import InferenceConfig
from crackloc.data.synthetic import draw_line
from crackloc.evaluation.registration import ridge_offsets
from crackloc.imageops import gauss_kernels, separable
from crackloc.inference.predictor import Predictor
from crackloc.models.backbone import BACKBONES, build_backbone
from crackloc.models.base import LocalizationModel
from crackloc.models.fusion import align_to
from crackloc.tensors import upsample_cells


def test_upsample_cells_keeps_a_cell_on_its_pixel():
    x = torch.zeros(1, 1, 14, 14)
    x[..., 5, :] = 1.0
    for phase, row in ((0.0, 80), (0.5, 87.5), (1.0, 95)):
        y = upsample_cells(x, (224, 224), stride=16, phase=phase)[0, 0, :, 3]  # [224]
        assert float((y * torch.arange(224.0)).sum() / y.sum()) == pytest.approx(row, abs=1e-4)
    assert torch.allclose(upsample_cells(x, (224, 224), stride=16, phase=0.5),
                          F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False), atol=1e-6)


@pytest.mark.parametrize("phase", [0.0, 0.75])
def test_align_to_reads_each_target_cell_at_its_own_pixel(phase):
    """Shrinking 28 → 14 and growing 7 → 14: an impulse stays on its pixel (stride-8/16/32 grids)."""
    fine = torch.zeros(1, 1, 28, 28)
    fine[..., 10, 10] = 1.0  # stride 8: pixel 80 + 7·phase
    coarse = torch.zeros(1, 1, 7, 7)
    coarse[..., 3, 3] = 1.0  # stride 32: pixel 96 + 31·phase
    down, up = align_to(fine, (14, 14), phase=phase), align_to(coarse, (14, 14), phase=phase)
    assert down.shape == up.shape == (1, 1, 14, 14)
    grid = 16 * torch.arange(14.0) + 15 * phase  # pixel of each stride-16 cell
    for m, pixel in ((down, 80 + 7 * phase), (up, 96 + 31 * phase)):
        prof = m[0, 0].sum(dim=1)  # [14] along y
        assert float((prof * grid).sum() / prof.sum()) == pytest.approx(pixel, abs=3.0)


@pytest.mark.parametrize("name", ["resnet18"])
def test_declared_cell_phase_matches_the_network(name):
    """The receptive-field centre (gradient centroid) of a middle cell of each stage, random weights.

    lite0's declared phase (TF "same" padding) is approximate: its measured centroid moves
    between 0.4 and 1.3 of (s−1) from stage to stage and with the input size.
    """
    spec = BACKBONES[name]
    torch.manual_seed(0)
    net = build_backbone(name, scales=list(spec.stages), output_stride=32, pretrained="none").eval()
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    feats = net(x)
    for (stage, (_, s)), f in zip(spec.stages.items(), feats, strict=True):
        i = 128 // s  # the cell whose nominal pixel s·i is the image centre: borders cut both sides alike
        (g,) = torch.autograd.grad(f[0, :, i, i].abs().sum(), x, retain_graph=True)
        a = g.abs().sum(dim=(0, 1))  # [H,W]
        centre = float((a.sum(dim=0) * torch.arange(256.0)).sum() / a.sum())  # x centroid
        phase = (centre - s * i) / (s - 1)
        assert abs(phase - spec.cell_phase) < 0.2, f"{name} {stage}: measured phase {phase:.2f}"


class StridedDarkness(LocalizationModel):
    """Darkness, Gaussian-blurred (σ 10 px, centred), sampled on pixels 16·i: a stride-16, phase-0 map."""

    def __init__(self) -> None:
        super().__init__(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.eval()

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g0, _, _ = gauss_kernels(10.0)
        d = separable(1.0 - x.mean(dim=1, keepdim=True), g0, g0)[..., ::16, ::16]  # [B,1,⌈H/16⌉,⌈W/16⌉]
        d = d - d.amin(dim=(2, 3), keepdim=True)
        return d.flatten(1).amax(1), d / d.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 120, 150])
def test_map_lies_on_drawn_lines_across_tiles_and_scales(angle):
    """A phase-0 stride-16 map, tiled (224 px, overlap 0.25) over 520×600 px at scales 1 and 0.5."""
    model = StridedDarkness()
    for scale in (1.0, 0.5):
        for offset in (0.0, 7.0, 13.5):  # the line at several phases of the cell grid
            img, _, dist = draw_line(520, 600, angle_deg=angle, offset=offset)
            pred = Predictor.from_model(model, InferenceConfig(gate=False, scale=scale, precision="32")).predict(img)
            off = ridge_offsets(pred.heatmap, dist)
            assert len(off) > 20
            assert abs(float(off.median())) <= 1.0, (angle, scale, offset, float(off.median()))


class ShiftedDarkness(StridedDarkness):
    """StridedDarkness drawn 4 px down and 6 px left of the line: a learned shift, as stage 1 has."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, heat = super().forward(x)
        return logits, torch.roll(heat, shifts=(4, -6), dims=(-2, -1))


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 120])  # at 150° this shift runs along the line
def test_two_views_cancel_a_learned_shift(angle):
    """Averaging the map with that of the photo turned 180° (turned back) puts it back on the line."""
    model = ShiftedDarkness()
    img, _, dist = draw_line(520, 600, angle_deg=angle, offset=7.0)
    cfg = InferenceConfig(gate=False, precision="32", line_guide=0.0)  # the model's own maps
    shifted = ridge_offsets(Predictor.from_model(model, cfg).predict(img).heatmap, dist).median()
    fixed = ridge_offsets(Predictor.from_model(model, dataclasses.replace(cfg, views=2))
                          .predict(img).heatmap, dist).median()
    assert abs(float(shifted)) >= 2.5, float(shifted)  # the shift shows: 4·cos θ + 6·sin θ across the line
    assert abs(float(fixed)) <= 1.0, (angle, float(fixed))
