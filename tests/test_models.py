import dataclasses

import pytest
import torch

from crackloc.config import ModelConfig
from crackloc.models import available_models, build_model
from crackloc.models.net import ablation_config
from crackloc.models.refine import normalize_heatmap, percentile_threshold


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_keeps_the_contract(name):
    model = build_model(ModelConfig(name=name, pretrained="none")).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        logits, heatmap = model(x)
    assert logits.shape == (2,) and heatmap.shape == (2, 1, 96, 128)
    assert heatmap.min() >= 0 and heatmap.max() <= 1 and torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", ["single_scale", "msrfe_concat", "msrfe_attention", "ahr",
                                     "full_concat", "full_attention"])
def test_ablation_rows_build_from_config(variant):
    cfg = ablation_config(ModelConfig(pretrained="none"), variant)
    model = build_model(cfg).eval()
    with torch.no_grad():
        _, low = model.forward_lowres(torch.rand(1, 3, 224, 224))
    assert low.shape == (1, 1, 14, 14)
    assert (model.ahr is not None) == ("ahr" in variant or "full" in variant)


def test_proposed_fuses_three_scales_on_a_14x14_grid():
    model = build_model(ModelConfig(pretrained="none")).eval()
    feats = model.backbone(torch.rand(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 28, 28), (256, 14, 14), (512, 7, 7)]
    assert model.fusion(feats, (14, 14)).shape == (1, 512, 14, 14)
    literal = build_model(ModelConfig(pretrained="none", scales=["layer1", "layer2", "layer3"])).eval()
    assert literal.forward_lowres(torch.rand(1, 3, 224, 224))[1].shape == (1, 1, 14, 14)


def test_ahr_threshold_matches_hand_computed_values():
    cam = torch.arange(20, dtype=torch.float32).view(1, 1, 4, 5)
    # 90th percentile of 0..19 (linear): position 0.9 * 19 = 17.1 → T = 17.1
    t = percentile_threshold(cam, 90.0)
    assert t.item() == pytest.approx(17.1, abs=1e-5)
    heat = normalize_heatmap(cam, mode="max", threshold=t).flatten()
    # kept: 18 - 17.1 = 0.9 and 19 - 17.1 = 1.9, divided by the max 1.9
    assert heat[18].item() == pytest.approx(0.9 / 1.9, abs=1e-5)
    assert heat[19].item() == pytest.approx(1.0, abs=1e-5)
    assert (heat[:18] == 0).all()


def test_ahr_keeps_at_most_the_top_decile():
    model = build_model(ModelConfig(pretrained="none")).eval()
    with torch.no_grad():
        _, low = model.forward_lowres(torch.rand(3, 3, 224, 224))
    kept = (low > 0).flatten(1).float().mean(1)
    assert (kept <= 20 / 196 + 1e-6).all()  # 196 cells above the p90 position 175.5: at most 20


def test_sigmoid_norm_lets_a_crack_free_image_stay_dark():
    cam = torch.full((1, 1, 4, 4), -8.0)
    assert normalize_heatmap(cam, mode="sigmoid").max() < 1e-3
    assert normalize_heatmap(cam, mode="max").max() < 1e-3  # flat map: min-max gives 0


def test_lite0_backbone_reads_its_channels():
    model = build_model(ModelConfig(pretrained="none", backbone="lite0")).eval()
    assert model.backbone.channels == [40, 112, 320]
    with torch.no_grad():
        logits, heat = model(torch.rand(1, 3, 224, 224))
    assert heat.shape == (1, 1, 224, 224)


def test_teacher_is_plain_cam():
    cfg = dataclasses.replace(ModelConfig(pretrained="none"), name="resnet18_cam", output_stride=32)
    teacher = build_model(cfg)
    assert teacher.ahr is None and teacher.fusion.mode == "none" and not teacher.uses_pseudo_masks
