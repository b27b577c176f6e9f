"""Backbones that return a list of multi-scale feature maps, described by one table, `BACKBONES`.

Each `BackboneSpec` holds all a model needs to know about a backbone: its stages (channels,
stride), default scales, deepest stage, input normalisation, builder, and where its ImageNet
weights come from and how their keys map. Adding a backbone means adding one entry (and the
name to `crackloc.config.BackboneName`).

`resnet18` comes from torchvision (output stride set by un-striding the last stages);
`lite0` is timm's `tf_efficientnet_lite0` (ImageNet weights shipped as a lukemelas-style file).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from crackloc.errors import CracklocError
from crackloc.models.weights import KeyMap, StateDict, hub_checkpoint, load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of the table: read by the builders, the models and the weight loader."""

    name: str
    stages: Mapping[str, tuple[int, int]]  # stage → (channels, output stride), shallow to deep
    default_scales: tuple[str, ...]  # stages MS-RFE fuses when the config names none
    mean: tuple[float, float, float]  # input normalisation the weights expect
    std: tuple[float, float, float]
    build: Callable[..., Backbone]  # (spec, *, scales, output_stride) → Backbone (random init)
    hub_files: tuple[str, ...] = ()  # ImageNet weight files 'auto' looks for in the torch hub cache
    weights_env: str | None = None  # environment variable naming a weights file ('auto' prefers it)
    key_map: KeyMap | None = None  # published file's keys → this backbone's state-dict keys
    cell_phase: float = 0.0  # cell i of a stride-s map sits on pixel s·i + phase·(s−1) (see tensors.upsample_cells)

    @property
    def deepest(self) -> str:
        """The deepest stage (the single scale of plain CAM)."""
        return list(self.stages)[-1]

    def weight_candidates(self) -> list[Path]:
        """Files 'auto' tries, in order: $weights_env if set, else the hub-cache files."""
        env = os.environ.get(self.weights_env) if self.weights_env else None
        return [Path(env)] if env else [hub_checkpoint(f) for f in self.hub_files]


class Backbone(nn.Module):
    """Feature extractor: normalised image [B,3,H,W] → list of maps, one per requested scale.

    Attributes:
        spec: the table entry it was built from (`name` is `spec.name`).
        channels: channel count of each returned map (heads read these).
        strides: output stride of each returned map.
        mean, std: the input normalisation the weights expect.
        pretrained_source: where its weights came from ('none' = random init).
    """

    def __init__(self, spec: BackboneSpec, *, scales: list[str] | None = None, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise CracklocError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.spec, self.name = spec, spec.name
        self.scales = list(scales or spec.default_scales)
        unknown = [s for s in self.scales if s not in spec.stages]
        if unknown:
            raise CracklocError(f"unknown scales {unknown} for {spec.name}; choose from {list(spec.stages)}")
        self.channels = [spec.stages[s][0] for s in self.scales]
        self.strides = [min(spec.stages[s][1], output_stride) for s in self.scales]
        self.mean, self.std = spec.mean, spec.std
        self.cell_phase = spec.cell_phase
        self.pretrained_source = "none"

    def stage(self, name: str) -> nn.Module:
        """The module whose output is stage `name` (one of `scales`), e.g. for Grad-CAM hooks."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B,3,H,W] (normalised) → [F_s [B,C_s,H/stride_s,W/stride_s] for s in scales]."""
        raise NotImplementedError


class ResNetBackbone(Backbone):
    """torchvision ResNet-18 as `stem` + `body[layer1..4]` (keys `stem.*`, `body.layerN.*`)."""

    def __init__(self, spec: BackboneSpec, *, scales: list[str] | None = None, output_stride: int = 32) -> None:
        from torchvision.models import resnet18

        super().__init__(spec, scales=scales, output_stride=output_stride)
        net = resnet18(weights=None)
        # Output stride 16/8: the first block of layer4 (and layer3) keeps resolution. BasicBlock
        # has no dilation, so we set stride 1 on its conv and shortcut (weights stay compatible).
        flat = {32: [], 16: ["layer4"], 8: ["layer3", "layer4"]}[output_stride]
        for key in flat:
            block = getattr(net, key)[0]
            block.conv1.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.body = nn.ModuleDict({k: getattr(net, k) for k in spec.stages})
        self.depth = max(list(spec.stages).index(s) for s in self.scales) + 1

    def stage(self, name: str) -> nn.Module:
        return self.body[name]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, x = {}, self.stem(x)  # [B,64,H/4,W/4]
        for i, (key, stage) in enumerate(self.body.items()):
            if i >= self.depth:
                break
            x = stage(x)  # [B,C_i,H/s_i,W/s_i]
            feats[key] = x
        return [feats[s] for s in self.scales]


class TimmBackbone(Backbone):
    """A timm `features_only` model as `net` (keys `net.*`); stage i of the spec is feature index i + 1."""

    def __init__(self, spec: BackboneSpec, *, scales: list[str] | None = None, output_stride: int = 32,
                 model_name: str) -> None:
        import timm

        super().__init__(spec, scales=scales, output_stride=output_stride)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        idx = [list(spec.stages).index(s) + 1 for s in self.scales]  # timm feature index 1..4
        self.net = timm.create_model(model_name, pretrained=False, features_only=True,
                                     out_indices=tuple(idx), output_stride=output_stride)

    def stage(self, name: str) -> nn.Module:
        modules = dict(zip(self.scales, self.net.feature_info.module_name(), strict=True))
        return self.net.get_submodule(modules[name])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x)


def torchvision_resnet_keys(sd: StateDict) -> StateDict:
    """torchvision ResNet file keys (`conv1.*`, `bn1.*`, `layerN.*`) → `ResNetBackbone` keys."""
    stem = {"conv1": "stem.0", "bn1": "stem.1"}
    out = {}
    for key, value in sd.items():
        head, _, rest = key.partition(".")
        if head in stem:
            out[f"{stem[head]}.{rest}"] = value
        elif re.fullmatch(r"layer\d", head):
            out[f"body.{key}"] = value
    return out


LITE0_DEPTHS = [1, 2, 2, 3, 3, 4, 1]  # blocks per stage of EfficientNet-Lite0
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_REST = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _lite0_key(key: str) -> str:
    """lukemelas EfficientNet key → timm `tf_efficientnet_lite0` key (others unchanged)."""
    m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.*)", key)
    if m is None:
        head, _, rest = key.partition(".")
        return f"{_LITE0_TOP[head]}.{rest}" if head in _LITE0_TOP else key
    flat = [(s, j) for s, d in enumerate(LITE0_DEPTHS) for j in range(d)]
    block = int(m.group(1))
    names = _LITE0_FIRST if block == 0 else _LITE0_REST
    if block >= len(flat) or m.group(2) not in names:
        return key
    stage, j = flat[block]
    return f"blocks.{stage}.{j}.{names[m.group(2)]}.{m.group(3)}"


def lukemelas_lite0_keys(sd: StateDict) -> StateDict:
    """lukemelas (or timm) EfficientNet-Lite0 file keys → `TimmBackbone` keys (`net.*`)."""
    return {f"net.{_lite0_key(k) if k.startswith('_') else k}": v for k, v in sd.items()}


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        name="resnet18",
        stages={"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16), "layer4": (512, 32)},
        default_scales=("layer2", "layer3", "layer4"),
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        build=ResNetBackbone,
        hub_files=("resnet18-f37072fd.pth",),
        key_map=torchvision_resnet_keys,
    ),
    "lite0": BackboneSpec(
        name="lite0",
        stages={"blocks1": (24, 4), "blocks2": (40, 8), "blocks3": (112, 16), "blocks4": (320, 32)},
        default_scales=("blocks2", "blocks3", "blocks4"),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        build=functools.partial(TimmBackbone, model_name="tf_efficientnet_lite0"),
        hub_files=("efficientnet-lite0-57934424.pth",),
        weights_env="CRACKLOC_LITE0_WEIGHTS",
        key_map=lukemelas_lite0_keys,
        cell_phase=0.75,  # TF "same" pads bottom/right (a stride-2 window on 2i..2i+2); its gradient centroid: 0.4–0.9
    ),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The table entry of backbone `name`; a CracklocError listing the choices if unknown."""
    if name not in BACKBONES:
        raise CracklocError(f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})")
    return BACKBONES[name]


def build_backbone(name: str, *, scales: list[str] | None = None, output_stride: int = 32,
                   pretrained: str = "auto") -> Backbone:
    """Build backbone `name` and load its ImageNet weights.

    `pretrained` is 'none', 'auto' (the spec's weight candidates: torch hub cache, or
    $CRACKLOC_LITE0_WEIGHTS for lite0) or a path. 'auto' warns and keeps random init when
    nothing is cached; an explicit path that fails is an error.
    """
    spec = backbone_spec(name)
    backbone = spec.build(spec, scales=scales, output_stride=output_stride)
    backbone.pretrained_source = load_weights(backbone, pretrained, candidates=spec.weight_candidates(),
                                              what=f"the {name} backbone", key_map=spec.key_map)
    return backbone
