"""The line guide (`--line-guide`): the map onto the photo's own dark-line pixels, the crack mask kept."""

from __future__ import annotations

import pytest
import torch

from crackloc.cli import main
from crackloc.config import InferenceConfig
from crackloc.data.synthetic import concrete_texture, draw_line
from crackloc.inference.autoscale import TRAIN_CRACK_WIDTH
from crackloc.inference.guide import MASK_LEVEL, guide_map, line_evidence
from crackloc.inference.predictor import Predictor


def _line_photo(h: int, w: int, *, width: float, angle: float = 0.0, seed: int = 0):
    """uint8 [3,H,W] mottled concrete with one dark line (+5 px off centre), and its signed distance [H,W]."""
    base = concrete_texture(h, w, generator=torch.Generator().manual_seed(seed)) * 255  # [3,H,W]
    img, _, dist = draw_line(h, w, angle_deg=angle, offset=5.0, width=width)
    return torch.where(img[:1] < 100, base * 0.45, base).to(torch.uint8), dist


def test_the_guide_keeps_the_crack_mask_and_reorders_each_band():
    g = torch.Generator().manual_seed(1)
    heat, evidence = torch.rand(40, 50, generator=g), torch.rand(40, 50, generator=g)
    heat[0, :4] = torch.tensor([0.0, 0.5, 1.0, 0.4999])
    out = guide_map(heat, evidence, weight=0.9)
    assert torch.equal(out >= MASK_LEVEL, heat >= MASK_LEVEL)  # widths and lengths are measured on this mask
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(guide_map(heat, evidence, weight=0.0), heat)
    # same model value, stronger line evidence → ranks higher, in either band
    for level in (0.2, 0.8):
        h = torch.full((2,), level)
        pair = guide_map(h, torch.tensor([0.1, 0.9]), weight=0.9)
        assert float(pair[1]) > float(pair[0])
    # where the model sees nothing, the photo's lines add nothing
    assert float(guide_map(torch.zeros(5, 5), torch.ones(5, 5), weight=0.9).max()) == 0.0
    with pytest.raises(ValueError):
        guide_map(heat, evidence, weight=1.5)


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_line_evidence_peaks_on_the_drawn_line(angle):
    img, dist = _line_photo(160, 180, width=3.0, angle=angle)
    ev = line_evidence(img, scale=TRAIN_CRACK_WIDTH / 3.0)  # cracks expected 3 px wide
    assert ev.shape == (160, 180) and float(ev.min()) >= 0.0 and float(ev.max()) <= 1.0
    near = dist.abs() <= 12
    peak_dist = torch.where(near, ev.double(), torch.tensor(-1.0, dtype=torch.double))
    along = 1 if angle == 0.0 else 0  # one peak per column (horizontal line) or per row
    idx = peak_dist.argmax(dim=1 - along, keepdim=True)
    offsets = dist.gather(1 - along, idx).abs().flatten()[20:-20]  # away from the image border
    assert float(offsets.max()) <= 1.0
    assert float(ev[dist.abs() <= 1].mean()) > 3 * float(ev[dist.abs() > 12].mean())


def test_line_evidence_of_plain_grey_is_empty_and_wide_cracks_use_a_shrunk_copy():
    flat = torch.full((3, 90, 120), 128, dtype=torch.uint8)
    assert float(line_evidence(flat, scale=1.0).max()) < 1e-4
    img, dist = _line_photo(240, 260, width=20.0)
    ev = line_evidence(img, scale=TRAIN_CRACK_WIDTH / 20.0)  # 20 px cracks: filtered at a quarter size
    assert ev.shape == (240, 260)
    assert float(ev[dist.abs() <= 4].mean()) > 3 * float(ev[dist.abs() > 40].mean())


def test_predictor_applies_the_guide_after_stitching(model_file):
    img, _ = _line_photo(120, 150, width=3.0)
    plain = Predictor(model_file, InferenceConfig(tile=64, precision="32", line_guide=0.0)).predict(img)
    guided = Predictor(model_file, InferenceConfig(tile=64, precision="32", line_guide=0.9)).predict(img)
    expected = guide_map(plain.heatmap, line_evidence(img, scale=1.0), weight=0.9)
    assert torch.allclose(guided.heatmap, expected, atol=1e-6)
    assert guided.probability == pytest.approx(plain.probability, abs=1e-6)  # decisions are the model's
    assert torch.equal(guided.heatmap >= 0.5, plain.heatmap >= 0.5)


def test_line_guide_option_is_offered_and_checked(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--line-guide" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["predict", "/no/such/photo.jpg", "--line-guide", "0.99"])
    assert exc.value.code == 2 and "line-guide" in capsys.readouterr().err


def test_an_empty_map_skips_the_evidence(monkeypatch):
    """A map that is 0 everywhere (every window gated off, or nothing found) stays 0 without filtering the photo."""
    from crackloc.config import ModelConfig
    from crackloc.models.registry import build_model

    def no_evidence(*args, **kwargs):
        raise AssertionError("line evidence computed for an empty map")

    monkeypatch.setattr("crackloc.inference.predictor.line_evidence", no_evidence)
    predictor = Predictor.from_model(build_model(ModelConfig(name="ridge", pretrained="none")),
                                     InferenceConfig(tile=64, line_guide=0.9), name="floor:ridge")
    heatmap = predictor.predict(torch.full((3, 100, 120), 128, dtype=torch.uint8)).heatmap  # plain grey: no line
    assert heatmap.shape == (100, 120) and not bool(heatmap.any())
