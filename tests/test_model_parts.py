"""Model parts: the backbone table, the CAM head, the weight loader, pseudo-mask defaults, the bundled file."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
import torch

import crackloc.models
from crackloc.config import BackboneName, ModelConfig
from crackloc.errors import CracklocError
from crackloc.models import available_models, build_model
from crackloc.models.backbone import BACKBONES, backbone_spec, build_backbone, lukemelas_lite0_keys
from crackloc.models.checkpoint import load_model, read_model_file
from crackloc.models.heads import CamHead
from crackloc.models.net import ABLATION_ROWS, ablation_config
from crackloc.models.weights import load_weights

MODELS_DIR = Path(crackloc.models.__file__).parent
BUNDLED = MODELS_DIR.parent / "assets" / "crackloc_resnet18.pt"


def test_backbone_table_covers_the_config_names():
    assert set(BACKBONES) == set(typing.get_args(BackboneName))
    for name, spec in BACKBONES.items():
        assert spec.name == name and backbone_spec(name) is spec
        assert set(spec.default_scales) <= set(spec.stages)
        assert spec.deepest == list(spec.stages)[-1] == spec.default_scales[-1]
    with pytest.raises(CracklocError, match="unknown backbone 'vgg'"):
        backbone_spec("vgg")


@pytest.mark.parametrize("name", typing.get_args(BackboneName))
def test_backbone_maps_have_the_tabled_channels_and_strides(name):
    spec = BACKBONES[name]
    backbone = build_backbone(name, scales=list(spec.stages), pretrained="none").eval()
    seen = {}
    hook = backbone.stage(spec.deepest).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, 64, 64))
    hook.remove()
    assert [(f.shape[1], 64 // f.shape[-1]) for f in feats] == list(spec.stages.values())
    assert seen["out"].shape == feats[-1].shape  # stage(): the module Grad-CAM hooks on
    assert (backbone.mean, backbone.std) == (spec.mean, spec.std)


def test_cam_head_by_hand():
    head = CamHead(2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 1.0]]))
        head.bias.fill_(0.5)
    feats = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # [1,2,1,2]
    cam = head.cam(feats)  # 2·1 + 3 + 0.5, 2·2 + 4 + 0.5
    assert cam.shape == (1, 1, 1, 2) and cam.flatten().tolist() == [5.5, 8.5]
    assert head.logits(feats).tolist() == [7.0]  # GAP then FC = mean of the CAM
    assert list(head.state_dict()) == ["weight", "bias"]


def test_weight_loader_round_trip_and_torchvision_layout(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet18", pretrained="none")
    torch.save(source.state_dict(), tmp_path / "own.pth")
    loaded = build_backbone("resnet18", pretrained=str(tmp_path / "own.pth"))
    assert loaded.pretrained_source == str(tmp_path / "own.pth")
    for (k, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    from torchvision.models import resnet18

    tv = resnet18(weights=None)
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "tv.pth")  # wrapped, with fc.* extra
    from_tv = build_backbone("resnet18", pretrained=str(tmp_path / "tv.pth"))
    assert torch.equal(from_tv.stem[0].weight, tv.conv1.weight)
    assert torch.equal(from_tv.body["layer4"][1].bn2.running_var, tv.layer4[1].bn2.running_var)


def test_weight_loader_errors_are_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    cases = [("junk.pth", "not a readable weights file"), ("other.pth", "does not match the resnet18 backbone"),
             ("absent.pth", "not found")]
    for name, message in cases:
        with pytest.raises(CracklocError, match=message) as err:
            build_backbone("resnet18", pretrained=str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    part = torch.nn.Sequential(torch.nn.Linear(2, 2))
    torch.save({"features.0.weight": torch.ones(2, 2), "features.0.bias": torch.ones(2)}, tmp_path / "f.pth")
    assert load_weights(part, str(tmp_path / "f.pth"), candidates=[], what="part", prefix="features.")
    assert torch.equal(part[0].weight, torch.ones(2, 2))
    with pytest.warns(UserWarning, match="no cached ImageNet weights for part"):
        assert load_weights(part, "auto", candidates=[tmp_path / "absent.pth"], what="part") == "none"


def test_lite0_key_map_reaches_timm_keys():
    own = build_backbone("lite0", pretrained="none").state_dict()
    published = ["_conv_stem.weight", "_bn0.running_mean", "_blocks.0._depthwise_conv.weight",
                 "_blocks.1._expand_conv.weight", "_blocks.15._project_conv.weight", "_blocks.15._bn2.bias"]
    mapped = lukemelas_lite0_keys({k: torch.zeros(1) for k in published})
    assert all(k in own for k in mapped), sorted(set(mapped) - set(own))


PSEUDO_DEFAULTS = {"crackloc": True, "resnet18_cam": False, "cam_vgg16": False, "wsol_crack": False,
                   "ts_cam": False, "psol": True, "crackseg": True, "darkness": False, "blackhat": False,
                   "ridge": False, "blackhat_ridge_shape": False}
PSEUDO_SOURCES = {"psol": "ddt", "crackseg": "refined"}  # the others: the teacher's CAM


def test_pseudo_defaults_cover_every_model():
    assert set(PSEUDO_DEFAULTS) == set(available_models())


@pytest.mark.parametrize("name", sorted(PSEUDO_DEFAULTS))
def test_uses_pseudo_masks_default_and_override(name):
    default = build_model(ModelConfig(name=name, pretrained="none"))
    assert default.uses_pseudo_masks is PSEUDO_DEFAULTS[name]
    assert default.pseudo_source == PSEUDO_SOURCES.get(name, "cam")
    flipped = build_model(ModelConfig(name=name, pretrained="none", uses_pseudo_masks=not PSEUDO_DEFAULTS[name]))
    assert flipped.uses_pseudo_masks is (not PSEUDO_DEFAULTS[name])
    assert type(flipped).uses_pseudo_masks is type(default).uses_pseudo_masks  # the class default is untouched


def test_ablation_rows_keep_the_l1_term():
    for variant in ABLATION_ROWS:
        assert build_model(ablation_config(ModelConfig(pretrained="none"), variant)).uses_pseudo_masks


def _expected_bundled_keys() -> list[str]:
    """The proposed model's state-dict keys, spelled from torchvision's ResNet-18 names."""
    from torchvision.models import resnet18

    stem = {"conv1": "backbone.stem.0", "bn1": "backbone.stem.1"}
    keys = []
    for key in resnet18(weights=None).state_dict():
        head, _, rest = key.partition(".")
        if head in stem:
            keys.append(f"{stem[head]}.{rest}")
        elif head.startswith("layer"):
            keys.append(f"backbone.body.{key}")
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    return [*keys, "fusion.project.0.weight", *(f"fusion.project.1.{k}" for k in bn),
            "fusion.se.fc1.weight", "fusion.se.fc1.bias", "fusion.se.fc2.weight", "fusion.se.fc2.bias",
            "ahr.attention.weight", "ahr.attention.bias", "fc.weight", "fc.bias"]


def test_bundled_model_loads_strict_with_its_keys_and_head():
    model, payload = load_model(BUNDLED)  # load_state_dict(strict=True) inside
    sd = read_model_file(BUNDLED)["state_dict"]
    assert list(model.state_dict()) == list(sd) == _expected_bundled_keys()
    assert model.uses_pseudo_masks and payload["model_config"].uses_pseudo_masks is None
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, heatmap = model(x)
        attended = model.ahr.attend(model.features(x))  # [B,C,14,14]
    assert torch.isfinite(logits).all() and heatmap.shape == (2, 1, 224, 224)
    assert 0 <= heatmap.min() and heatmap.max() <= 1
    by_hand = attended.mean(dim=(2, 3)) @ sd["fc.weight"].float().T + sd["fc.bias"].float()  # [B,1]
    assert torch.allclose(logits, by_hand[:, 0], atol=1e-4)


def test_wsol_crack_gradcam_hooks_the_deepest_lite0_stage():
    model = build_model(ModelConfig(name="wsol_crack", backbone="lite0", pretrained="none")).eval()
    logits, heat = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2,) and heat.shape == (2, 1, 64, 64)


FORBIDDEN = ("crackloc.training", "crackloc.inference", "crackloc.evaluation", "crackloc.experiments",
             "crackloc.cli")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_models_import_only_downwards_and_registry_imports_no_model():
    for path in MODELS_DIR.rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(FORBIDDEN)]
        assert not bad, f"{path}: {bad}"
    assert not [m for m in _imports(MODELS_DIR / "registry.py") if m.startswith("crackloc.models")]
