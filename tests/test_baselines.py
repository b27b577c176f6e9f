"""Baselines of Table I: shapes on their grids, Grad-CAM++ plumbing, TS-CAM attention, DDT maps."""

import pytest
import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.errors import CracklocError
from crackloc.models import build_model
from crackloc.models.baselines.ts_cam import cls_attention
from crackloc.training.ddt import ddt_pseudo_masks


@pytest.mark.parametrize(("name", "grid"), [("cam_vgg16", (14, 14)), ("psol", (14, 14)), ("ts_cam", (14, 14)),
                                            ("wsol_crack", (7, 7))])
def test_baselines_work_on_their_grid_at_224(name, grid):
    model = build_model(ModelConfig(name=name, pretrained="none")).eval()
    with torch.no_grad():
        logits, low = model.forward_lowres(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1,) and tuple(low.shape) == (1, 1, *grid)
    assert model.uses_pseudo_masks == (name == "psol")
    assert model.pseudo_source == ("ddt" if name == "psol" else "cam")


def test_vgg16_loads_torchvision_conv_weights(tmp_path):
    model = build_model(ModelConfig(name="cam_vgg16", pretrained="none"))
    sd = {f"features.{k}": torch.full_like(v, 0.5) for k, v in model.features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's file also holds the classifier
    torch.save(sd, tmp_path / "vgg16.pth")
    loaded = build_model(ModelConfig(name="cam_vgg16", pretrained=str(tmp_path / "vgg16.pth")))
    assert loaded.pretrained_source.endswith("vgg16.pth")
    assert torch.equal(loaded.features[0].weight, torch.full((64, 3, 3, 3), 0.5))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CracklocError, match="does not match VGG-16"):
        build_model(ModelConfig(name="cam_vgg16", pretrained=str(tmp_path / "bad.pth")))


def test_wsol_crack_gradcam_under_inference_mode_releases_hooks():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="wsol_crack", pretrained="none")).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():  # as predict_batches: weights converted there become inference tensors
        model = model.to(memory_format=torch.channels_last)
        logits, heat = model(x)
        plain_logits, _ = model.forward_lowres(x)
    assert torch.allclose(logits, plain_logits, atol=1e-4)  # Grad-CAM++ pass gives the same logits
    assert heat.shape == (3, 1, 64, 64) and heat.max() <= 1 and heat.min() >= 0
    kept = (heat > 0).flatten(1).float().mean(1)
    assert (kept <= 0.1 + 1e-3).all() and (kept > 0).all()  # cut at the per-image 90th percentile
    layer = model.target_layer(model.net)
    assert not layer._forward_hooks and not layer._backward_hooks  # the library's hooks are gone
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_ts_cam_attention_matches_timm_softmax_and_rejects_odd_sizes():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="ts_cam", pretrained="none")).eval()
    attn = model.vit.blocks[0].attn
    x = torch.randn(2, 5, attn.qkv.in_features)  # 1 class token + 4 patches
    captured = {}
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.no_grad():
        attn(x)
        ours = cls_attention(attn, attn.qkv(x), num_prefix=1)  # [2,heads,4]
    handle.remove()
    assert torch.allclose(ours, captured["a"][:, :, 0, 1:], atol=1e-5)
    with torch.no_grad():
        patches, attention = model.tokens_and_attention(torch.rand(1, 3, 64, 96))
    assert patches.shape == (1, 192, 4, 6) and attention.shape == (1, 1, 4, 6)
    assert 0 < float(attention.sum()) <= 1 + 1e-5  # a softmax row, minus the class token's share
    assert not any(b.attn.qkv._forward_hooks for b in model.vit.blocks)
    with pytest.raises(CracklocError, match="divisible by 16"):
        model(torch.rand(1, 3, 100, 96))


class _FakeTeacher(nn.Module):
    """features(x): 2-D descriptors, [9, 9] where the image's red channel is > 0.5, else [1, 1] + noise."""

    def forward(self, x):  # unused
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        crack = (x[:, :1] > 0.5).float()  # [B,1,4,4]
        noise = torch.stack([torch.linspace(-0.1, 0.1, 16).view(4, 4)] * 2)[None]  # [1,2,4,4]
        return 1 + 8 * crack.repeat(1, 2, 1, 1) + noise


def test_ddt_pseudo_masks_find_the_minority_region_by_hand():
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    images[0, 0, 1, :] = 255  # positive: crack row 1 (4 of 16 cells)
    images[1, 0, :, 2] = 255  # positive: crack column 2
    images[2, 0, 0, 0] = 255  # negative image: masked to zero
    labels = torch.tensor([1.0, 1.0, 0.0])
    masks = ddt_pseudo_masks(_FakeTeacher(), images, labels, grid=(4, 4), progress=False)
    # First principal direction ≈ (1, 1)/√2 (crack vs background); the positive side is the minority
    # (8 of 32 positive-image cells), so crack cells get 1, background 0, the negative image all 0.
    expected = torch.zeros(3, 1, 4, 4)
    expected[0, 0, 1, :] = 1
    expected[1, 0, :, 2] = 1
    assert masks.dtype == torch.float16 and torch.equal(masks.float(), expected)
    pooled = ddt_pseudo_masks(_FakeTeacher(), images, labels, grid=(2, 2), progress=False)
    # crack fraction of the 3×3 box around the pixel each stride-2 cell sits on (rows 0–1, then rows 1–3)
    assert torch.allclose(pooled[0, 0].float(), torch.tensor([[0.5, 0.5], [1 / 3, 1 / 3]]), atol=1e-3)


def test_ts_cam_loads_a_deit_state_dict(tmp_path):
    model = build_model(ModelConfig(name="ts_cam", pretrained="none"))
    sd = {k: torch.full_like(v, 0.25) for k, v in model.vit.state_dict().items()}
    torch.save(sd, tmp_path / "deit.pth")
    loaded = build_model(ModelConfig(name="ts_cam", pretrained=str(tmp_path / "deit.pth")))
    assert loaded.pretrained_source.endswith("deit.pth")
    assert torch.equal(loaded.vit.cls_token, torch.full_like(loaded.vit.cls_token, 0.25))
