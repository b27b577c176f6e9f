"""Backbones that return a list of multi-scale feature maps, with pretrained-weight loading.

`resnet18` comes from torchvision (output stride set by dilating the last stages);
`lite0` is timm's `tf_efficientnet_lite0` (ImageNet weights shipped as a lukemelas-style file).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from crackloc.errors import CracklocError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_STAGES = {"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16), "layer4": (512, 32)}
LITE0_STAGES = {"blocks1": (24, 4), "blocks2": (40, 8), "blocks3": (112, 16), "blocks4": (320, 32)}
DEFAULT_SCALES = {"resnet18": ["layer2", "layer3", "layer4"], "lite0": ["blocks2", "blocks3", "blocks4"]}
LITE0_DEPTHS = [1, 2, 2, 3, 3, 4, 1]  # blocks per stage of EfficientNet-Lite0


class Backbone(nn.Module):
    """Feature extractor: normalised image [B,3,H,W] → list of maps, one per requested scale.

    Attributes:
        channels: channel count of each returned map (heads read these).
        strides: output stride of each returned map.
        mean, std: the input normalisation the weights expect.
    """

    def __init__(self, name: str, *, scales: list[str] | None = None, output_stride: int = 32,
                 pretrained: str = "auto") -> None:
        super().__init__()
        if name not in DEFAULT_SCALES:
            raise CracklocError(f"unknown backbone {name!r} (choose resnet18 or lite0)")
        if output_stride not in (8, 16, 32):
            raise CracklocError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.name = name
        self.scales = list(scales or DEFAULT_SCALES[name])
        stages = RESNET_STAGES if name == "resnet18" else LITE0_STAGES
        unknown = [s for s in self.scales if s not in stages]
        if unknown:
            raise CracklocError(f"unknown scales {unknown} for {name}; choose from {list(stages)}")
        self.channels = [stages[s][0] for s in self.scales]
        self.strides = [min(stages[s][1], output_stride) for s in self.scales]
        if name == "resnet18":
            self._build_resnet(output_stride)
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        else:
            self._build_lite0(output_stride)
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.pretrained_source = load_pretrained(self, pretrained)

    def _build_resnet(self, output_stride: int) -> None:
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        # Output stride 16/8: the first block of layer4 (and layer3) keeps resolution. BasicBlock
        # has no dilation, so we set stride 1 on its conv and shortcut (weights stay compatible).
        flat = {32: [], 16: ["layer4"], 8: ["layer3", "layer4"]}[output_stride]
        for key in flat:
            block = getattr(net, key)[0]
            block.conv1.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.body = nn.ModuleDict({k: getattr(net, k) for k in RESNET_STAGES})
        self.depth = max(list(RESNET_STAGES).index(s) for s in self.scales) + 1

    def _build_lite0(self, output_stride: int) -> None:
        import timm

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        idx = [list(LITE0_STAGES).index(s) + 1 for s in self.scales]  # timm feature index 1..4
        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                                     out_indices=tuple(idx), output_stride=output_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B,3,H,W] (normalised) → [F_s [B,C_s,H/stride_s,W/stride_s] for s in scales]."""
        if self.name == "lite0":
            return self.net(x)
        feats, x = {}, self.stem(x)
        for i, (key, stage) in enumerate(self.body.items()):
            if i >= self.depth:
                break
            x = stage(x)
            feats[key] = x
        return [feats[s] for s in self.scales]


def _lite0_key(key: str) -> str:
    """lukemelas EfficientNet key → timm `tf_efficientnet_lite0` key."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.*)", key)
    if m is None:
        head, rest = key.split(".", 1)
        return f"{top[head]}.{rest}"
    block = int(m.group(1))
    flat = [(s, j) for s, d in enumerate(LITE0_DEPTHS) for j in range(d)]
    stage, j = flat[block]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    rest = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
    return f"blocks.{stage}.{j}.{(first if block == 0 else rest)[m.group(2)]}.{m.group(3)}"


def _hub_candidates(name: str) -> list[Path]:
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    if name == "resnet18":
        return [ckpt / "resnet18-f37072fd.pth"]
    env = os.environ.get("CRACKLOC_LITE0_WEIGHTS")
    return [Path(env)] if env else [ckpt / "efficientnet-lite0-57934424.pth"]


def resolve_weights(pretrained: str, candidates: list[Path], what: str) -> Path | None:
    """The weights file `pretrained` names: None for 'none' (or 'auto' with nothing cached).

    'auto' takes the first existing file of `candidates` and warns when there is none; an
    explicit path that does not exist is an error.
    """
    if pretrained == "none":
        return None
    if pretrained == "auto":
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            warnings.warn(f"no cached ImageNet weights for {what}; starting from random init "
                          "(pass --pretrained PATH to use a weights file)", stacklevel=3)
        return path
    path = Path(pretrained)
    if not path.is_file():
        raise CracklocError(f"{path}: pretrained weights file not found")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a weights file safely (tensors only); unwraps a {'state_dict': ...} payload."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CracklocError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def load_pretrained(backbone: Backbone, pretrained: str) -> str:
    """Load ImageNet weights into `backbone`; returns where they came from ('none' if random).

    `pretrained` is 'none', 'auto' (torch hub cache: torchvision's ResNet-18 file, or the
    Lite0 file, also via $CRACKLOC_LITE0_WEIGHTS) or a path. 'auto' warns and keeps random
    init when nothing is cached; an explicit path that fails is an error.
    """
    path = resolve_weights(pretrained, _hub_candidates(backbone.name), backbone.name)
    if path is None:
        return "none"
    sd = read_state_dict(path)
    if backbone.name == "resnet18":
        target = {f"stem.{i}.{k.split('.', 1)[1]}": v for i, pre in ((0, "conv1"), (1, "bn1"))
                  for k, v in sd.items() if k.startswith(pre + ".")}
        target.update({f"body.{k}": v for k, v in sd.items() if k.split(".")[0] in RESNET_STAGES})
    else:
        conv = {(_lite0_key(k) if k.startswith("_") else k): v for k, v in sd.items()}
        target = {f"net.{k}": v for k, v in conv.items()}
    own = backbone.state_dict()
    usable = {k: v for k, v in target.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if not usable or missing:
        raise CracklocError(f"{path}: does not match the {backbone.name} backbone "
                            f"({len(missing)} of {len(own)} tensors missing)")
    backbone.load_state_dict(usable, strict=False)
    return str(path)
